#!/usr/bin/env bash
# t_tui_formats.sh — the TUI with one checkpoint of each family (BF16, FP8,
# INT4 AWQ, NVFP4) in tmux: F2–F5 hot-swap through all four with the
# conversation kept and every reply tagged with the format that wrote it,
# the VRAM pane counting each resident family, /compare of two quantized
# formats, /drift of the active one against BF16, /stats listing each
# reply's format. CPU engine by default; QC_TEST_DEVICE=cuda runs the same
# script on the GPU machine, where the quantized GEMVs and GEMMs do the work.
. "$(dirname "$0")/lib.bash"
command -v tmux >/dev/null || { skip tui-formats "tmux not installed"; exit 0; }
M=$FIX/models
for m in tiny-qwen35 tiny-qwen35-fp8 tiny-qwen35-int4-awq tiny-qwen35-nvfp4; do
    [ -d "$M/$m" ] || { skip tui-formats "fixture $m not found"; exit 0; }
done
export LC_ALL=C.UTF-8 XDG_STATE_HOME=$TMP/state XDG_CONFIG_HOME=$TMP/config
SOCK=qchat-fmt-$$
T() { tmux -L "$SOCK" -f /dev/null "$@"; }
trap 'T kill-server 2>/dev/null; rm -rf "$TMP"' EXIT

T new-session -d -s q -x 140 -y 44 "env TERM=tmux-256color $QCHAT_BIN $DEVICE_ARGS --seed 1 --max-tokens 10 \
    $M/tiny-qwen35 $M/tiny-qwen35-fp8 $M/tiny-qwen35-int4-awq $M/tiny-qwen35-nvfp4; echo QCHAT-EXIT \$?; sleep 60"
check fmt_bar_four wait_for '\[BF16\] +FP8 +INT4 +NVFP4' 30
line "/think off"
line "first question"
check fmt_reply_bf16 wait_for '^qwen · BF16 · 0\+[0-9]+ tok' 20

# Each function key makes its checkpoint active; the next reply carries it.
n=1
for k in "F4 INT4 BF16 +FP8 +\[INT4\] +NVFP4" "F5 NVFP4 BF16 +FP8 +INT4 +\[NVFP4\]" "F3 FP8 BF16 +\[FP8\] +INT4 +NVFP4"; do
    read -r key fam bar <<<"$k"
    while ! idle; do sleep 0.1; done
    send "$key"
    check "fmt_swap_${fam}_bar" wait_for "$bar" 20
    check "fmt_swap_${fam}_message" wait_for "now on $fam" 10
    n=$((n + 1))
    line "question $n on $fam"
    # 0 tokens is a reply too: the tiny models' end-of-text id is among the
    # likeliest (p ~ 0.1 at some positions), and a seeded draw may pick it.
    check "fmt_reply_$fam" wait_for "^qwen · $fam · 0\+[0-9]+ tok" 20
done
s=$(screen)
check fmt_transcript_kept grep -q 'first question' <<<"$s"
# Every family that has been active stays resident and is counted.
w=$(grep -o 'weights [0-9.]* [kMG]*B ([^)]*)' <<<"$s")
st=1
for f in BF16 FP8 INT4 NVFP4; do grep -Eq "[(, ]$f [0-9.]+ [kMG]?B" <<<"$w" || st=0; done
check fmt_vram_families test $st = 1
line "/stats"
check fmt_stats_formats wait_for '#4 FP8 ' 5
s=$(screen)
st=1
for f in "#1 BF16" "#2 INT4" "#3 NVFP4" "#4 FP8"; do grep -q "$f " <<<"$s" || st=0; done
check fmt_stats_each_reply test $st = 1

# Two quantized formats side by side, neither of them the active one.
line "/compare INT4 NVFP4"
check fmt_compare_done wait_for 'compare done' 30
s=$(screen)
check fmt_compare_columns grep -Eq '^INT4 · tiny-qwen35-int4-awq · [0-9]+\+[0-9]+ tok · done +│NVFP4 · tiny-qwen35-nvfp4 · [0-9]+\+[0-9]+ tok · done' <<<"$s"
check fmt_compare_table grep -Eq '^answer tok +[0-9]+ +[0-9]+' <<<"$s"
send q
check fmt_compare_closes wait_for 'compare closed; the conversation is as it was' 5
check fmt_still_fp8 grep -Eq 'BF16 +\[FP8\] +INT4 +NVFP4' <<<"$(screen)"

# The FP8 reply scored under BF16, teacher-forced; the KL of a quantized
# format against its BF16 original is small but not zero.
line "/drift BF16"
check fmt_drift_report wait_for 'drift · FP8 against BF16 · [1-9][0-9]* tokens of the last reply' 30
check fmt_drift_kl grep -Eq 'KL\(ref‖active\) mean [0-9.e+-]+ · max' <<<"$(screen)"
check fmt_drift_nonzero absent 'KL\(ref‖active\) mean 0 '
line "/quit"
check fmt_quit wait_for 'QCHAT-EXIT 0' 10
