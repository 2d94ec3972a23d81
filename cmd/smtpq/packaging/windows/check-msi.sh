#!/usr/bin/env bash
# check-msi.sh FILE.msi [SMTPQ_EXE]: reads the installer back with msiinfo
# and msiextract (msitools) and checks what Windows would act on: the File
# rows (smtpq.exe in Program Files\smtpq, smtpq.yaml in ProgramData\smtpq),
# the ServiceInstall row (service smtpq, own process, automatic start, the
# command line) and the ServiceControl row (stopped on install and
# uninstall, removed on uninstall), and that the packed smtpq.exe is the one
# just built. Run by "make msi"; exits 1 naming the first difference.
set -euo pipefail
msi=$1
exe=${2:-$(dirname "$msi")/build/windows_amd64/smtpq.exe}
fail() { printf 'check-msi: FAIL: %s\n' "$*" >&2; exit 1; }

# row TABLE KEY: the row of TABLE whose first column is KEY, tab-separated,
# without the three header lines of msiinfo export.
row() { msiinfo export "$msi" "$1" | tail -n +4 | awk -F'\t' -v k="$2" '$1 == k' | tr -d '\r'; }
want() { # TABLE KEY EXPECTED-ROW
	got=$(row "$1" "$2")
	[ "$got" = "$3" ] || fail "$1 row $2: got [$got], want [$3]"
}

tables=$(msiinfo tables "$msi")
for t in File Component Directory ServiceInstall ServiceControl; do
	grep -qx "$t" <<<"$tables" || fail "no $t table"
done

size=$(stat -c %s "$exe")
want File SmtpqExeFile "SmtpqExeFile	SmtpqExe	smtpq.exe	$size			512	1"
got=$(row File SmtpqConfigFile | cut -f1-3)
[ "$got" = "SmtpqConfigFile	SmtpqConfig	smtpq.yaml" ] || fail "File row SmtpqConfigFile: got [$got]"
[ "$(row Component SmtpqExe | cut -f3)" = INSTALLDIR ] || fail "smtpq.exe is not in INSTALLDIR"
[ "$(row Component SmtpqConfig | cut -f3)" = DATADIR ] || fail "smtpq.yaml is not in DATADIR"
want Directory INSTALLDIR "INSTALLDIR	ProgramFiles64Folder	smtpq"
want Directory DATADIR "DATADIR	CommonAppDataFolder	smtpq"

# ServiceType 16: own process; StartType 2: automatic; ErrorControl 1: normal.
want ServiceInstall SmtpqService "SmtpqService	smtpq	smtpq mail queue	16	2	1					run --init --config \"[CommonAppDataFolder]smtpq\\smtpq.yaml\"	SmtpqExe	smtpq mail queue service: sends the mail queued by applications"
# Event 162 = 0x02 stop on install + 0x20 stop on uninstall + 0x80 delete
# on uninstall; Wait 1.
want ServiceControl SmtpqServiceControl "SmtpqServiceControl	smtpq	162		1	SmtpqExe"

seq=$(msiinfo export "$msi" InstallExecuteSequence | tr -d '\r')
for a in StopServices DeleteServices InstallServices; do
	grep -q "^$a	" <<<"$seq" || fail "InstallExecuteSequence has no $a"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
msiextract -C "$tmp" "$msi" >/dev/null
packed=$(find "$tmp" -name smtpq.exe | head -1)
[ -n "$packed" ] || fail "no smtpq.exe inside"
cmp -s "$packed" "$exe" || fail "the packed smtpq.exe differs from $exe"
cfg=$(find "$tmp" -name smtpq.yaml | head -1)
[ -n "$cfg" ] || fail "no smtpq.yaml inside"
# The configuration it installs loads (relative paths: any OS reads it).
if command -v go >/dev/null; then
	top=$(cd "$(dirname "$0")/../../../.." && pwd)
	(cd "$top" && go run ./cmd/smtpq config check --config "$cfg" >/dev/null) || fail "the installed smtpq.yaml does not load"
fi
echo "check-msi: $msi: File, ServiceInstall and ServiceControl as expected"
