#!/bin/sh
# The -exec program of "GOOS=windows go test" (testdata/windows/test-windows.sh):
# runs a Windows test binary, and its arguments, under Wine, in the prefix
# that test-windows.sh prepared (WINEPREFIX) and without Wine's own debug
# lines. Wine maps the Linux paths go test gives it to Z:\.
: "${WINEPREFIX:?set by testdata/windows/test-windows.sh}"
export WINEDEBUG=-all
exec wine "$@"
