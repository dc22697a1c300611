#!/usr/bin/env bash
# Runs every test binary (build/tests/test_*) and every tests/t_*.sh script,
# shows their output, and ends with "N passed, N failed, N skipped".
# Exits non-zero when anything failed or a test program crashed.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export QCHAT_BIN=${QCHAT_BIN:-$PWD/qchat}
export QCHAT_FIXTURES=${QCHAT_FIXTURES:-$PWD/../shared/fixtures}
logdir=$BUILD/tests/logs
mkdir -p "$logdir"
pass=0 fail=0 skip=0
if [ ! -d "$QCHAT_FIXTURES/models" ]; then
    echo "FAIL fixtures: $QCHAT_FIXTURES/models not found (set QCHAT_FIXTURES)"
    fail=$((fail + 1))
fi
run_one() { # name, command...
    local name=$1; shift
    local log=$logdir/$name.log
    local t0=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    grep -E '^(ok|FAIL|skip) ' "$log"
    local p f s
    p=$(grep -c '^ok ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^skip ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $name: exited with status $rc (see $log)"; tail -5 "$log" | sed 's/^/    /'
        f=1
    fi
    [ $((SECONDS - t0)) -gt 30 ] && echo "# $name took $((SECONDS - t0)) s"
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
}
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.d|*.o) continue ;; esac
    run_one "$(basename "$t")" "$t"
done
for t in tests/t_*.sh; do
    [ -f "$t" ] || continue
    run_one "$(basename "$t" .sh)" bash "$t"
done
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
