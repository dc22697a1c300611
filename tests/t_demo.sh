#!/usr/bin/env bash
# t_demo.sh — the shipped demo model answers held-out task questions correctly
# through the real CPU engine: `qchat run -p Q` with no directory (the demo),
# greedy, in BF16 with visible reasoning, one no-think answer, and one question
# for each quantized format. Questions and expected values: demo/heldout.tsv
# (never seen in training; tools/demo_task.py).
. "$(dirname "$0")/lib.bash"
cd "$(dirname "$0")/.."
if [ ! -x "$QCHAT_BIN" ]; then skip demo_run "qchat not built"; exit 0; fi
for f in bf16 fp8 int4 nvfp4; do
    if [ ! -f demo/$f/model.safetensors ]; then fail demo_files "demo/$f/model.safetensors missing"; exit 0; fi
done
ok demo_files

value() { # the number after the last '=' of the JSON answer field
    sed -n 's/^.*"answer":"\([^"]*\)".*$/\1/p' | head -1 | sed -n 's/^.*= *\(-\{0,1\}[0-9][0-9]*\) *$/\1/p'
}
reasoning() { sed -n 's/^.*"reasoning":"\([^"]*\)".*$/\1/p' | head -1; }

# `qchat run` without a directory opens demo/bf16.
nodir=( )
if ! "$QCHAT_BIN" run -p "What is 2 + 3?" --json --temperature 0 --device cpu >"$TMP/probe" 2>"$TMP/probe.err"; then
    fail demo_run_without_directory "qchat run without a checkpoint directory fails: $(head -1 "$TMP/probe.err" | head -c 200)"
elif [ "$(value <"$TMP/probe")" = 5 ]; then
    ok demo_run_without_directory
else
    fail demo_run_without_directory "2 + 3 answered: $(head -c 300 "$TMP/probe")"
fi

n=0 good=0 bad=""
while IFS=$'\t' read -r q want; do
    n=$((n + 1)); [ $n -gt 8 ] && break
    js=$("$QCHAT_BIN" run "${nodir[@]}" -p "$q" --json --temperature 0 --device cpu 2>"$TMP/err") || { bad="$bad [$q: exit $?]"; continue; }
    got=$(printf '%s' "$js" | value)
    r=$(printf '%s' "$js" | reasoning)
    if [ "$got" = "$want" ] && [ -n "$r" ]; then good=$((good + 1)); else bad="$bad [$q -> ${got:-?}, want $want]"; fi
done <demo/heldout.tsv
if [ "$good" = 8 ]; then ok demo_bf16_heldout_thinking; else fail demo_bf16_heldout_thinking "$good/8 correct:$bad"; fi

js=$("$QCHAT_BIN" run "${nodir[@]}" -p "What is 7 + 5?" --no-think --json --temperature 0 --device cpu 2>/dev/null)
if [ "$(printf '%s' "$js" | value)" = 12 ] && [ -z "$(printf '%s' "$js" | reasoning)" ]; then ok demo_bf16_no_think
else fail demo_bf16_no_think "7 + 5 without thinking: $(printf '%s' "$js" | head -c 300)"; fi

for f in fp8 int4 nvfp4; do
    q=$(sed -n 9p demo/heldout.tsv | cut -f1); want=$(sed -n 9p demo/heldout.tsv | cut -f2)
    js=$("$QCHAT_BIN" run demo/$f -p "$q" --json --temperature 0 --device cpu 2>&1)
    got=$(printf '%s' "$js" | value)
    fmt=$(printf '%s' "$js" | sed -n 's/^.*"format":"\([^"]*\)".*$/\1/p')
    want_fmt=$(case $f in fp8) echo FP8;; int4) echo INT4;; nvfp4) echo NVFP4;; esac)
    if [ "$got" = "$want" ] && [ "$fmt" = "$want_fmt" ]; then ok demo_${f}_answers
    else fail demo_${f}_answers "$q -> ${got:-?} (want $want), format ${fmt:-?}: $(printf '%s' "$js" | head -c 200)"; fi
done

# The README's run command: `qchat` with no directory opens the TUI on the demo
# with all four formats; a task question gets the right answer with visible
# reasoning, and F3 hot-swaps to FP8 for the next one.
if command -v tmux >/dev/null; then
    S=qchat-demo-$$
    T() { tmux -L "$S" -f /dev/null "$@"; }
    export XDG_STATE_HOME=$TMP/state XDG_CONFIG_HOME=$TMP/config
    T new-session -d -s q -x 120 -y 32 "env TERM=tmux-256color LC_ALL=C.UTF-8 $QCHAT_BIN --device cpu; sleep 30"
    check demo_tui_four_formats wait_for '\[BF16\] +FP8 +INT4 +NVFP4' 20
    T send-keys -t q -l "What is 738 + 496?"; T send-keys -t q Enter
    check demo_tui_answer wait_for '738 \+ 496 = 1234' 20
    check demo_tui_reasoning_visible wait_for 'answer 1234' 5
    T send-keys -t q F3
    check demo_tui_swap_fp8 wait_for 'BF16 +\[FP8\]' 20
    T send-keys -t q -l "What is 9051 - 2877?"; T send-keys -t q Enter
    check demo_tui_fp8_answer wait_for 'qwen · FP8 · [0-9]+\+[0-9]+ tok' 20
    check demo_tui_fp8_correct wait_for '9051 - 2877 = 6174' 5
    T kill-server 2>/dev/null
else
    skip demo_tui "tmux not installed"
fi
