# tests/lib.bash — sourced by tests/t_*.sh: the same ok/FAIL/skip lines as harness.h.
QCHAT_BIN=${QCHAT_BIN:-./qchat}
FIX=${QCHAT_FIXTURES:-../shared/fixtures}
# QC_TEST_DEVICE=cuda runs the scripts that use $DEVICE_ARGS on the CUDA engine
# (the GPU machine); by default they run on the CPU engine with one thread.
DEVICE=${QC_TEST_DEVICE:-cpu}
case $DEVICE in
cpu) DEVICE_ARGS="--device cpu --threads 1" ;;
*) DEVICE_ARGS="--device $DEVICE" ;;
esac
TMP=$(mktemp -d "${TMPDIR:-/tmp}/qchat-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
ok()   { echo "ok $1"; }
fail() { echo "FAIL $1: $2"; }
skip() { echo "skip $1: $2"; }
# check NAME CONDITION-COMMAND... : ok when the command succeeds.
check() { local n=$1; shift; if "$@"; then ok "$n"; else fail "$n" "command failed: $*"; fi; }

# tmux helpers for the TUI tests. The script defines T() (tmux on its own
# socket) and runs qchat in a session named q.
screen() { T capture-pane -p -t q 2>/dev/null; }
# wait_for REGEX [SECONDS]: polls the screen until an extended regex matches.
# QC_TIME_SCALE stretches every timeout (the sanitizer build runs slower).
wait_for() {
    local re=$1 end=$((SECONDS + ${2:-10} * ${QC_TIME_SCALE:-1}))
    while [ $SECONDS -le "$end" ]; do
        screen | grep -Eq -- "$re" && return 0
        sleep 0.1
    done
    echo "--- screen while waiting for: $re"; screen | sed 's/^/    /'
    return 1
}
# wait_count REGEX N [SECONDS]: until N screen lines match
wait_count() {
    local end=$((SECONDS + ${3:-20} * ${QC_TIME_SCALE:-1}))
    while [ $SECONDS -le "$end" ]; do
        [ "$(screen | grep -Ec -- "$1")" -ge "$2" ] && return 0
        sleep 0.1
    done
    echo "--- screen while waiting for $2 x: $1"; screen | sed 's/^/    /'
    return 1
}
# until_ok SECONDS CMD...: polls CMD until it succeeds (the last try's status).
until_ok() {
    local end=$((SECONDS + $1 * ${QC_TIME_SCALE:-1})); shift
    while [ $SECONDS -le "$end" ]; do "$@" && return 0; sleep 0.1; done
    "$@"
}
# absent REGEX: the screen could be read and has no line matching REGEX.
absent() { local s; s=$(screen) && [ -n "$s" ] && ! grep -Eq -- "$1" <<<"$s"; }
send() { T send-keys -t q "$@"; }
# idle: the title bar carries a dot (●) while the engine is busy.
idle() { ! screen | head -1 | grep -q '●'; }
# line TEXT: types a line once the engine is idle (a reply, or a live-drift pass
# after it, may still be running under load). Not fatal: sends anyway after
# the timeout, and the check that follows reports what went wrong.
line() {
    local end=$((SECONDS + 20 * ${QC_TIME_SCALE:-1}))
    while [ $SECONDS -le "$end" ] && ! idle; do sleep 0.1; done
    send -l -- "$1"; send Enter
}
