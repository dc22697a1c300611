#!/usr/bin/env bash
# t_tui_compare.sh — /compare and /drift in the real qchat TUI (tmux, CPU
# engine, FP8 active and BF16 as the second checkpoint): the compare view's
# two columns and its table, the conversation left as it was, Esc / q /
# Ctrl-C, the stacked view on a narrow terminal; /drift's KL, agreement and
# first-divergence lines, live drift (/drift on) agreeing with the
# teacher-forced score of the same reply, and the refusals.
. "$(dirname "$0")/lib.bash"
command -v tmux >/dev/null || { skip tui_compare "tmux not installed"; exit 0; }
M=$FIX/models
[ -d "$M/tiny-qwen35" ] && [ -d "$M/tiny-qwen35-fp8" ] || { skip tui_compare "fixtures not found"; exit 0; }
export LC_ALL=C.UTF-8 XDG_STATE_HOME=$TMP/state XDG_CONFIG_HOME=$TMP/config
SOCK=qchat-cmp-$$
T() { tmux -L "$SOCK" -f /dev/null "$@"; }
trap 'T kill-server 2>/dev/null; rm -rf "$TMP"' EXIT

T new-session -d -s q -x 120 -y 40 "env TERM=tmux-256color $QCHAT_BIN $DEVICE_ARGS --seed 1 \
    --max-tokens 12 $M/tiny-qwen35-fp8 $M/tiny-qwen35; echo QCHAT-EXIT \$?; sleep 60"
check cmp_starts wait_for '\[FP8\] +BF16' 20
line "/compare"
check cmp_needs_prompt wait_for 'compare: no prompt yet' 5

line "hello there"
check cmp_first_reply wait_for '^qwen · FP8 · [0-9]+\+[0-9]+ tok' 20
before=$(screen | grep -o 'session [0-9]*+[0-9]* · context [0-9]*')

# Default: the active format (FP8) against the next one (BF16), side by side.
line "/compare"
check cmp_done wait_for 'compare done' 20
s=$(screen)
check cmp_columns_side_by_side grep -Eq '^FP8 · tiny-qwen35-fp8 · [0-9]+\+[0-9]+ tok · done +│BF16 · tiny-qwen35 · [0-9]+\+[0-9]+ tok · done' <<<"$s"
check cmp_table_names grep -Eq '^measure +FP8 +BF16' <<<"$s"
check cmp_table_reasoning grep -Eq '^reasoning tok +[1-9][0-9]* +[1-9][0-9]*' <<<"$s"
check cmp_table_answer grep -Eq '^answer tok +[0-9]+ +[0-9]+' <<<"$s"
check cmp_table_ttft grep -Eq '^TTFT +[0-9]+ ms +[0-9]+ ms' <<<"$s"
check cmp_table_tok_s grep -Eq '^tok/s +[0-9.]+ +[0-9.]+' <<<"$s"
check cmp_table_peak_mem grep -Eq '^peak mem +[0-9.]+ [kMG]B +[0-9.]+ [kMG]B' <<<"$s"
# Same seed and sampling on the active format: its column is the reply itself.
reply=$(screen | sed -n 's/^ \(.*\) *│.*/\1/p' | head -1 | sed 's/ *$//')
send q
check cmp_q_closes wait_for 'compare closed; the conversation is as it was' 5
check cmp_conversation_back grep -q '^you' <<<"$(screen)"
check cmp_conversation_unchanged test "$before" = "$(screen | grep -o 'session [0-9]*+[0-9]* · context [0-9]*')"
check cmp_same_seed_same_reply sh -c '[ ${#1} -ge 3 ] && printf "%s\n" "$2" | grep -qF -- "$1"' _ "${reply:0:20}" "$(screen | grep -v '^Compare')"
line "/stats"
check cmp_stats_one_reply wait_for '#1 FP8 +prompt' 5
check cmp_no_new_turn absent '#2 '

# Ctrl-C stops a long compare; Esc closes it.
line "/set max_tokens=0"
line "/compare BF16 FP8"
check cmp_running wait_for ' · [0-9]+\+[0-9]+ tok · (thinking|answering)…' 10
send C-c
check cmp_ctrl_c_stops wait_for 'compare stopped' 10
check cmp_stopped_column grep -Eq ' · [0-9]+\+[0-9]+ tok · stopped' <<<"$(screen)"
send Escape
check cmp_esc_closes wait_for 'compare closed' 5
line "/set max_tokens=12"

# Narrow terminal: the two runs stacked, one above the other.
T resize-window -t q -x 60 -y 30
sleep 0.3
line "/compare 2"
check cmp_narrow_done wait_for 'compare done' 20
s=$(screen)
st=0; grep -Eq '^FP8 · tiny-qwen35-fp8 ·' <<<"$s" && grep -Eq '^BF16 · tiny-qwen35 ·' <<<"$s" && st=1
check cmp_narrow_stacked test $st = 1
# (capture-pane cuts lines at the pane's width, so check the headers are whole)
check cmp_narrow_headers_whole grep -Eq '^BF16 · tiny-qwen35 · [0-9]+\+[0-9]+ tok · done' <<<"$s"
send q
T resize-window -t q -x 120 -y 40
sleep 0.3

# /drift: the last (FP8) reply scored under BF16, teacher-forced.
line "/drift"
check drift_report wait_for 'drift · FP8 against BF16 · [1-9][0-9]* tokens of the last reply' 20
s=$(screen)
check drift_kl_line grep -Eq 'KL\(ref‖active\) mean [0-9.e+-]+ · max [0-9.e+-]+ nats \(token [0-9]+\)' <<<"$s"
check drift_agreement_line grep -Eq 'top-1 agreement [0-9.]+ % \([0-9]+/[1-9][0-9]*\)' <<<"$s"
check drift_first_divergence grep -Eq 'first divergent token: (#[0-9]+ · BF16 ".*" · FP8 ".*"|none)' <<<"$s"
check drift_fp8_nonzero absent 'KL\(ref‖active\) mean 0 '

# Live drift scores the next reply as it streams; scoring the same reply
# teacher-forced afterwards gives the same numbers.
line "/drift on"
check drift_on wait_for 'live drift on' 5
line "one more"
check drift_live_report wait_for 'tokens of the last reply \(live\)' 20
check drift_live_tokens_pane grep -Eq 'drift vs BF16 KL [0-9.e+-]+' <<<"$(screen)"
# The KL line of the newest drift report on screen, and a wait until the
# newest report is of a kind (the first /drift's report is still on screen).
# (a header may wrap: its kind then stands on the next line)
last_report() { screen | awk 'nx { r = r " " $0; nx = 0 } /tokens of the last reply/ { r = $0; nx = 1 } END { print r }'; }
last_report_kl() {
    screen | awk '/tokens of the last reply/ { kl = ""; on = 1 }
        on && kl == "" && match($0, /KL\(ref‖active\) mean [0-9.e+-]*/) { kl = substr($0, RSTART, RLENGTH) }
        END { print kl }'
}
wait_last_report() {
    local end=$((SECONDS + $2 * ${QC_TIME_SCALE:-1}))
    while [ $SECONDS -le "$end" ]; do last_report | grep -q -- "$1" && return 0; sleep 0.1; done
    echo "--- screen while waiting for a newest report with: $1"; screen | sed 's/^/    /'
    return 1
}
live_kl=$(last_report_kl)
line "/drift off"
line "/drift"
check drift_second_report wait_last_report '(teacher-forced)' 20
sleep 0.3
tf_kl=$(last_report | grep -q '(teacher-forced)' && last_report_kl)
# The CPU engine computes a token the same way in a reply and in a chunk, so
# the two agree to the digit. On CUDA the live figures come from the decode
# kernels and the teacher-forced ones from the prefill kernels, whose logits
# differ by the engine's precision: there they must agree within 5 %.
same_kl() {
    [ -n "$live_kl" ] && [ -n "$tf_kl" ] || return 1
    [ "$DEVICE" = cpu ] && { [ "$live_kl" = "$tf_kl" ]; return; }
    awk -v a="${live_kl##* }" -v b="${tf_kl##* }" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b > 0 && d <= 0.05 * b) }'
}
check drift_live_equals_teacher_forced same_kl

# Refusals: a reply of the reference itself, an unknown reference.
line "/swap BF16"
check drift_swap wait_for 'FP8 +\[BF16\]' 20
line "/think off"
line "from bf16"
check drift_bf16_reply wait_for '^qwen · BF16 · [0-9]+\+[0-9]+ tok' 20
line "/drift"
check drift_refuses_self wait_for 'came from BF16 itself' 10
line "/drift NVFP4"
check drift_unknown_ref wait_for "drift: no checkpoint 'NVFP4'" 5
line "/quit"
check cmp_quit wait_for 'QCHAT-EXIT 0' 5

# `qchat drift`: the same measure from the command line.
seq 1 3 180 | tr '\n' ' ' >"$TMP/ids"
out=$($QCHAT_BIN drift "$M/tiny-qwen35" "$M/tiny-qwen35" --ids "$TMP/ids" $DEVICE_ARGS --json); rc=$?
check drift_cli_self_exit_0 test $rc = 0
check drift_cli_self_zero grep -Eq '"positions":59,.*"kl_mean":0,"kl_max":0,.*"top1_agreement_pct":100,"first_divergence":null' <<<"$out"
out=$($QCHAT_BIN drift "$M/tiny-qwen35" "$M/tiny-qwen35-fp8" --ids "$TMP/ids" $DEVICE_ARGS --json)
check drift_cli_fp8 grep -Eq '"reference_family":"BF16",.*"active_family":"FP8","positions":59,"skipped":0,"kl_mean":0\.0[0-9]*[1-9]' <<<"$out"
out=$($QCHAT_BIN drift "$M/tiny-qwen35" "$M/tiny-qwen35-fp8" --ids - $DEVICE_ARGS <"$TMP/ids")
check drift_cli_text grep -Eq '^top-1 agreement +[0-9.]+ % \([0-9]+/59\)' <<<"$out"
echo "1 2 999999" >"$TMP/bad"
$QCHAT_BIN drift "$M/tiny-qwen35" "$M/tiny-qwen35-fp8" --ids "$TMP/bad" $DEVICE_ARGS 2>"$TMP/err" >/dev/null; rc=$?
check drift_cli_bad_id test $rc = 2 -a -n "$(grep 999999 "$TMP/err")"
$QCHAT_BIN drift "$M/tiny-qwen35" --ids "$TMP/ids" 2>/dev/null; rc=$?
check drift_cli_usage test $rc = 2
