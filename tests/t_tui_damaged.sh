#!/usr/bin/env bash
# t_tui_damaged.sh — the TUI with damaged checkpoints beside a good one (CPU
# engine, tmux): a reply that fails on non-finite logits is marked failed with
# the whole error in the conversation and in /save, not as a stopped reply; a
# /swap to a directory whose load fails leaves the session and the format list
# as they were; /drift against a model without finite logits says nothing was
# scored rather than "KL 0".
. "$(dirname "$0")/lib.bash"
command -v tmux >/dev/null || { skip tui-damaged "tmux not installed"; exit 0; }
M=$FIX/models
[ -d "$M/tiny-qwen35" ] && [ -d "$M/tiny-qwen35-fp8" ] || { skip tui-damaged "fixtures not found"; exit 0; }
export LC_ALL=C.UTF-8 XDG_STATE_HOME=$TMP/state XDG_CONFIG_HOME=$TMP/config
SOCK=qchat-dmg-$$
T() { tmux -L "$SOCK" -f /dev/null "$@"; }
trap 'T kill-server 2>/dev/null; rm -rf "$TMP"' EXIT

# poke FILE TENSOR BYTE_OFFSET BYTES: overwrites bytes of a tensor's data
# (safetensors: 8-byte header length, JSON header, then the data).
poke() {
    local f=$1 t=$2 hl beg
    hl=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
    beg=$(head -c $((8 + hl)) "$f" | tail -c "$hl" | grep -ao "\"$t\":{[^}]*}" |
        sed -E 's/.*"data_offsets":\[([0-9]+),.*/\1/')
    printf "$4" | dd of="$f" bs=1 seek=$((8 + hl + beg + $3)) conv=notrunc status=none
}
G=model.language_model.layers.0.mlp.gate_proj
cp -r "$M/tiny-qwen35-fp8" "$TMP/nanweight"
poke "$TMP/nanweight/model.safetensors" "$G.weight" 700 '\x7f'          # an E4M3 NaN code
cp -r "$M/tiny-qwen35-fp8" "$TMP/nanscale"
poke "$TMP/nanscale/model.safetensors" "$G.weight_scale_inv" 2 '\xc0\x7f' # a BF16 NaN scale

T new-session -d -s q -x 120 -y 34 \
    "env TERM=tmux-256color $QCHAT_BIN $DEVICE_ARGS --seed 1 --max-tokens 8 $M/tiny-qwen35 $TMP/nanweight; echo QCHAT-EXIT \$?; sleep 60"
check tui_damaged_starts wait_for 'Conversation' 20
line "/think off"
line "first question"
check tui_damaged_good_reply wait_for '^qwen · BF16 · 0\+[1-9][0-9]* tok' 20

# The NaN model loads, then its logits are refused: the reply is marked
# failed, the whole message is in the conversation, the transcript stays.
line "/swap FP8"
check tui_damaged_swap wait_for 'now on FP8' 20
line "second question"
check tui_damaged_failed_header wait_for '^qwen · FP8 · 0\+0 tok · [0-9.]+ s · failed' 20
s=$(screen)
check tui_damaged_whole_error grep -q 'the computation overflowed' <<<"$s"
check tui_damaged_transcript_kept grep -q 'first question' <<<"$s"

# Back to BF16: chat goes on; drift against the NaN model scores nothing.
line "/swap BF16"
check tui_damaged_swap_back wait_for 'now on BF16' 20
line "third question"
check tui_damaged_reply_after wait_count '^qwen · BF16 · 0\+[1-9][0-9]* tok' 2
line "/drift FP8"
check tui_damaged_drift_nothing wait_for 'nothing scored' 30
check tui_damaged_drift_no_kl absent 'KL mean 0'

# A directory whose load fails: the session and the list stay as they were.
line "/swap $TMP/nanscale"
check tui_damaged_swap_refused wait_for 'swap to nanscale failed \(taken off the list\), still on BF16' 20
check tui_damaged_swap_whole_error wait_for 'file is damaged' 5
line "/models"
check tui_damaged_models_listed wait_for '^  2  FP8 ' 5
check tui_damaged_list_unchanged absent '^  3 '   # two checkpoints listed, no third
# the bar: the two formats, then only the device (cpu (N threads) or cuda:NAME)
check tui_damaged_bar_unchanged grep -Eq '\[BF16\] +FP8 +(cpu \(|cuda:)' <<<"$(screen)"

# /save keeps the failure as such.
line "/save $TMP/s.json"
check tui_damaged_save wait_for 'saved [0-9]+ turns' 5
check tui_damaged_save_error grep -q '"error":"the model.s logits at position' "$TMP/s.json"
line "/quit"
check tui_damaged_quit wait_for 'QCHAT-EXIT 0' 5
