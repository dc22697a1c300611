# tests/lib.bash — sourced by tests/t_*.sh: the same ok/FAIL/skip lines as harness.h.
QCHAT_BIN=${QCHAT_BIN:-./qchat}
FIX=${QCHAT_FIXTURES:-../shared/fixtures}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/qchat-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
ok()   { echo "ok $1"; }
fail() { echo "FAIL $1: $2"; }
skip() { echo "skip $1: $2"; }
# check NAME CONDITION-COMMAND... : ok when the command succeeds.
check() { local n=$1; shift; if "$@"; then ok "$n"; else fail "$n" "command failed: $*"; fi; }
