#!/usr/bin/env bash
# test-msi-wine.sh [BINDIR]: installs, upgrades and uninstalls the .msi in a
# fresh Wine prefix of its own (removed at the end) and checks what Windows
# Installer did there. Wine's msi is not Windows', so this is evidence, not
# proof (README.md, Install). BINDIR holds the smtpq.exe to pack (default
# dist/build/windows_amd64, as "make msi" leaves it); two installers,
# versions 0.0.1 and 0.0.2, are built from smtpq.wxs the way "make msi"
# does. The service is never started (the installer does not start it).
#
#  1. install 0.0.1: the service is registered, automatic (Start 2), with
#     its command line; smtpq.exe and smtpq.yaml are in place
#  2. install 0.0.2 with STARTTYPE=bogus: refused by the launch condition,
#     0.0.1 stays
#  3. upgrade to 0.0.2 with an edited smtpq.yaml: the edit is kept
#  4. uninstall: service and smtpq.exe gone, the edited smtpq.yaml kept
#  5. install 0.0.1 with STARTTYPE=demand: the custom action runs
#     "sc.exe config smtpq start= demand" once, and the kept smtpq.yaml is
#     not replaced; uninstall runs it no more. Wine's own sc.exe has no
#     "config" command, so a stand-in (built with MinGW, loaded instead of
#     Wine's with WINEDLLOVERRIDES) records its command line.
#
# Needs wine64, wixl, msitools and gcc-mingw-w64-x86-64; about 30 s. Not
# part of CI. Its prefix's wineserver is stopped with "wineserver -k".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../../.." && pwd)
bindir=${1:-$top/dist/build/windows_amd64}
say() { printf 'test-msi-wine: %s\n' "$*"; }
fail() { printf 'test-msi-wine: FAIL: %s\n' "$*" >&2; exit 1; }
for c in wine wineboot wineserver wixl msibuild x86_64-w64-mingw32-gcc; do
	command -v "$c" >/dev/null || fail "$c is missing"
done
[ -f "$bindir/smtpq.exe" ] || fail "no $bindir/smtpq.exe (make msi builds it)"

work=$(mktemp -d /tmp/smtpq-msitest.XXXXXX)
export WINEPREFIX=$work/prefix WINEDEBUG=-all WINEARCH=win64
export WINEDLLOVERRIDES="mscoree,mshtml="
cleanup() {
	status=$?
	set +e
	[ ! -d "$WINEPREFIX" ] || wineserver -k 2>/dev/null # this prefix's only
	rm -rf "$work"
	if [ $status = 0 ]; then say PASS; else say "FAILED (status $status)"; fi
	exit $status
}
trap cleanup EXIT

# wixl takes the folders relative to where it runs, as "make msi" gives them.
for v in 0.0.1 0.0.2; do
	(cd "$top" && wixl -a x64 -D Version=$v -D BinDir="$(realpath --relative-to=. "$bindir")" \
		-D PkgDir="$(realpath --relative-to=. "$here")" -o "$work/smtpq-$v.msi" "$here/smtpq.wxs")
	"$here/finish-msi.sh" "$work/smtpq-$v.msi"
done
say "a Wine prefix in $WINEPREFIX"
wineboot -i >/dev/null 2>&1
c=$WINEPREFIX/drive_c
exe="$c/Program Files/smtpq/smtpq.exe" yaml=$c/ProgramData/smtpq/smtpq.yaml

# The stand-in for sc.exe: appends its command line to C:\sc-calls.txt.
cat >"$work/sc.c" <<'EOF'
#include <windows.h>
#include <stdio.h>
int main(void) {
	FILE *f = fopen("C:\\sc-calls.txt", "a");
	if (f == NULL)
		return 2;
	fprintf(f, "%s\n", GetCommandLineA());
	return fclose(f) == 0 ? 0 : 2;
}
EOF
x86_64-w64-mingw32-gcc -o "$c/windows/system32/sc.exe" "$work/sc.c"
export WINEDLLOVERRIDES="$WINEDLLOVERRIDES;sc.exe=n"
sc_calls() { if [ -f "$c/sc-calls.txt" ]; then tr -d '\r' <"$c/sc-calls.txt"; fi; }

msiexec() { # ARGS...: exit status of Wine's msiexec (only its low byte)
	local rc=0
	wine msiexec "$@" /qn || rc=$?
	return $rc
}
svc() { # the value of the service's registry key VALUE, or nothing
	wine reg query 'HKLM\System\CurrentControlSet\Services\smtpq' /v "$1" 2>/dev/null | tr -d '\r' |
		awk -v v="$1" '$1 == v { $1 = ""; $2 = ""; sub(/^  /, ""); print }'
}
msi() { printf 'Z:%s' "${work//\//\\}\\smtpq-$1.msi"; }

say "1. install 0.0.1"
msiexec /i "$(msi 0.0.1)" || fail "install 0.0.1: exit $?"
[ -f "$exe" ] || fail "no smtpq.exe in Program Files"
cmp -s "$yaml" "$here/smtpq.yaml" || fail "smtpq.yaml in ProgramData is not the packaged one"
[ "$(svc Start)" = 0x2 ] || fail "service start type [$(svc Start)], want 0x2 (automatic)"
case "$(svc ImagePath)" in
*'smtpq.exe run --init --config "C:\ProgramData\smtpq\smtpq.yaml"') ;;
*) fail "service command line [$(svc ImagePath)]" ;;
esac
[ -z "$(sc_calls)" ] || fail "sc.exe ran without STARTTYPE=demand: $(sc_calls)"

say "2. STARTTYPE=bogus is refused"
if msiexec /i "$(msi 0.0.2)" STARTTYPE=bogus; then fail "STARTTYPE=bogus was accepted"; fi
[ -f "$exe" ] && [ "$(svc Start)" = 0x2 ] || fail "the refused install changed the installed one"

say "3. upgrade to 0.0.2 keeps an edited smtpq.yaml"
echo "# edited by test-msi-wine" >>"$yaml"
edited=$(cat "$yaml")
msiexec /i "$(msi 0.0.2)" || fail "upgrade to 0.0.2: exit $?"
[ "$(cat "$yaml")" = "$edited" ] || fail "the upgrade replaced the edited smtpq.yaml"
[ -f "$exe" ] && [ "$(svc Start)" = 0x2 ] || fail "after the upgrade: smtpq.exe or the service missing"
products=$(wine reg query 'HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall' 2>/dev/null | grep -c '{' || true)
[ "$products" = 1 ] || fail "$products products installed after the upgrade, want 1"

say "4. uninstall keeps smtpq.yaml"
msiexec /x "$(msi 0.0.2)" || fail "uninstall: exit $?"
[ ! -e "$exe" ] || fail "smtpq.exe left after uninstall"
[ -z "$(svc Start)" ] || fail "the service is still registered after uninstall"
[ "$(cat "$yaml" 2>/dev/null)" = "$edited" ] || fail "uninstall removed or changed smtpq.yaml"

say "5. STARTTYPE=demand"
msiexec /i "$(msi 0.0.1)" STARTTYPE=demand || fail "install with STARTTYPE=demand: exit $?"
want='"C:\windows\system32\sc.exe" config smtpq start= demand'
[ "$(sc_calls)" = "$want" ] || fail "sc.exe calls [$(sc_calls)], want [$want]"
[ "$(cat "$yaml")" = "$edited" ] || fail "the install replaced the kept smtpq.yaml"
msiexec /x "$(msi 0.0.1)" || fail "uninstall: exit $?"
[ "$(sc_calls)" = "$want" ] || fail "sc.exe ran on uninstall: $(sc_calls)"
