#!/usr/bin/env bash
# finish-msi.sh FILE.msi: sets in the tables of the installer wixl built
# what smtpq.wxs says but wixl 0.101 cannot write (msibuild, msitools).
# Run by "make msi" between wixl and check-msi.sh, which checks the result.
#  - Component SmtpqConfig (smtpq.yaml in ProgramData): Attributes 400 =
#    256 (64-bit, as wixl wrote) + 16 Permanent (uninstall leaves it) + 128
#    NeverOverwrite (an install or upgrade never replaces an existing one).
#  - CustomAction SmtpqDemandStart: type 3106 = 34 (an executable, the
#    command line in Target, run in the Directory named by Source:
#    System64Folder, "[System64Folder]sc.exe config smtpq start= demand")
#    + 1024 deferred + 2048 no impersonation (LocalSystem). wixl wrote 3122:
#    type 50, the executable's path taken from a property.
#  - SecureCustomProperties gets STARTTYPE, so that the value given on
#    msiexec's command line reaches the elevated part of the install.
set -euo pipefail
msi=$1
fail() { printf 'finish-msi: FAIL: %s\n' "$*" >&2; exit 1; }
value() { # TABLE KEY: column 2 of the row of TABLE whose first column is KEY
	msiinfo export "$msi" "$1" | tail -n +4 | tr -d '\r' | awk -F'\t' -v k="$2" '$1 == k { print $2 }'
}

[ "$(value CustomAction SmtpqDemandStart)" = 3122 ] || fail "CustomAction SmtpqDemandStart: type $(value CustomAction SmtpqDemandStart), want wixl's 3122 (finished already, or another wixl?)"
secure=$(value Property SecureCustomProperties)
case ";$secure;" in
*";STARTTYPE;"*) ;;
*) secure=${secure:+$secure;}STARTTYPE ;;
esac
msibuild "$msi" \
	-q "UPDATE \`Component\` SET \`Attributes\` = 400 WHERE \`Component\` = 'SmtpqConfig'" \
	-q "UPDATE \`CustomAction\` SET \`Type\` = 3106 WHERE \`Action\` = 'SmtpqDemandStart'" \
	-q "UPDATE \`Property\` SET \`Value\` = '$secure' WHERE \`Property\` = 'SecureCustomProperties'"
