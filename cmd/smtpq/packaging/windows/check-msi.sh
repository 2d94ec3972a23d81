#!/usr/bin/env bash
# check-msi.sh FILE.msi [SMTPQ_EXE]: reads the installer back with msiinfo
# and msiextract (msitools) and checks what Windows would act on: the File
# rows (smtpq.exe in Program Files\smtpq, smtpq.yaml in ProgramData\smtpq),
# the configuration's component (Permanent, NeverOverwrite), the
# ServiceInstall row (service smtpq, own process, automatic start, the
# command line), the ServiceControl row (stopped on install and uninstall,
# removed on uninstall), the STARTTYPE property (auto by default, checked
# by a launch condition, secure) and the custom action that makes the
# start manual with STARTTYPE=demand, and that the packed smtpq.exe is the
# one just built. Run by "make msi"; exits 1 naming the first difference.
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
for t in File Component Directory ServiceInstall ServiceControl Property LaunchCondition CustomAction; do
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
want Directory System64Folder "System64Folder	TARGETDIR	."

# Component attributes: 256 64-bit; the configuration also 16 Permanent
# (kept on uninstall) and 128 NeverOverwrite (an upgrade or reinstall keeps
# an existing smtpq.yaml), set by finish-msi.sh. smtpq.exe is neither.
[ "$(row Component SmtpqConfig | cut -f4)" = 400 ] || fail "Component SmtpqConfig: attributes $(row Component SmtpqConfig | cut -f4), want 400 (64-bit, Permanent, NeverOverwrite; finish-msi.sh not run?)"
[ "$(row Component SmtpqExe | cut -f4)" = 256 ] || fail "Component SmtpqExe: attributes $(row Component SmtpqExe | cut -f4), want 256"

# ServiceType 16: own process; StartType 2: automatic; ErrorControl 1: normal.
want ServiceInstall SmtpqService "SmtpqService	smtpq	smtpq mail queue	16	2	1					run --init --config \"[CommonAppDataFolder]smtpq\\smtpq.yaml\"	SmtpqExe	smtpq mail queue service: sends the mail queued by applications"
# Event 162 = 0x02 stop on install + 0x20 stop on uninstall + 0x80 delete
# on uninstall; Wait 1.
want ServiceControl SmtpqServiceControl "SmtpqServiceControl	smtpq	162		1	SmtpqExe"

seq=$(msiinfo export "$msi" InstallExecuteSequence | tr -d '\r')
for a in StopServices DeleteServices InstallServices; do
	grep -q "^$a	" <<<"$seq" || fail "InstallExecuteSequence has no $a"
done

# STARTTYPE: auto unless given; any other value than auto or demand stops
# a first install (LaunchConditions); secure, so msiexec's value reaches the
# elevated part. With demand, after InstallServices and before the end,
# SmtpqDemandStart runs "sc.exe config smtpq start= demand": type 3106 =
# 34 (executable in Target, run in the Directory of Source) + 1024
# deferred + 2048 no impersonation.
want Property STARTTYPE "STARTTYPE	auto"
grep -q ';STARTTYPE;' <<<";$(row Property SecureCustomProperties | cut -f2);" || fail "STARTTYPE is not in SecureCustomProperties"
want LaunchCondition 'Installed OR STARTTYPE = "auto" OR STARTTYPE = "demand"' 'Installed OR STARTTYPE = "auto" OR STARTTYPE = "demand"	STARTTYPE must be auto or demand.'
want CustomAction SmtpqDemandStart 'SmtpqDemandStart	3106	System64Folder	"[System64Folder]sc.exe" config smtpq start= demand	'
step() { awk -F'\t' -v a="$1" '$1 == a { print $3 }' <<<"$seq"; }
[ "$(awk -F'\t' '$1 == "SmtpqDemandStart" { print $2 }' <<<"$seq")" = 'STARTTYPE = "demand" AND NOT REMOVE' ] || fail "SmtpqDemandStart: wrong condition in InstallExecuteSequence"
[ "$(step SmtpqDemandStart)" -gt "$(step InstallServices)" ] && [ "$(step SmtpqDemandStart)" -lt "$(step InstallFinalize)" ] ||
	fail "SmtpqDemandStart is not between InstallServices and InstallFinalize"

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
echo "check-msi: $msi: File, Component, ServiceInstall, ServiceControl, STARTTYPE and its custom action as expected"
