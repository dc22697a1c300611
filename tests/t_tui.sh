#!/usr/bin/env bash
# t_tui.sh — drives the real qchat TUI in tmux on the CPU engine with two
# fixture formats (BF16 + FP8) and asserts on `tmux capture-pane` text:
# panes, a reply with reasoning and answer counts, /swap keeping the transcript
# and tagging the next reply, a failed swap leaving the session intact, Ctrl-C,
# resize to 60x20 and 200x60, /save + /clear + /load, and quitting.
. "$(dirname "$0")/lib.bash"
command -v tmux >/dev/null || { skip tui "tmux not installed"; exit 0; }
M=$FIX/models
[ -d "$M/tiny-qwen35" ] && [ -d "$M/tiny-qwen35-fp8" ] || { skip tui "fixtures not found"; exit 0; }
export LC_ALL=C.UTF-8 XDG_STATE_HOME=$TMP/state XDG_CONFIG_HOME=$TMP/config
# One tmux server per start: restarting a server on the same socket races.
N=0
SOCK=qchat-test-$$-$N
T() { tmux -L "$SOCK" -f /dev/null "$@"; }
trap 'for i in $(seq 0 $N); do tmux -L qchat-test-$$-$i kill-server 2>/dev/null; done; rm -rf "$TMP"' EXIT
start() { # start W H ENV... -- ARGS...: qchat in a fresh tmux window
    local w=$1 h=$2; shift 2
    T kill-server 2>/dev/null
    N=$((N + 1)); SOCK=qchat-test-$$-$N
    T new-session -d -s q -x "$w" -y "$h" "env TERM=tmux-256color $* ; echo QCHAT-EXIT \$?; sleep 60"
}
QC="$QCHAT_BIN $DEVICE_ARGS --seed 1"

start 100 30 $QC --max-tokens 12 "$M/tiny-qwen35" "$M/tiny-qwen35-fp8"
check tui_starts wait_for 'Conversation' 20
s=$(screen)
for p in Conversation Reasoning Latency Tokens VRAM; do
    check "tui_pane_$p" grep -q "$p" <<<"$s"
done
check tui_format_bar grep -Eq '\[BF16\] +FP8' <<<"$s"

# A thinking reply: reasoning streams into its pane, counted.
line "hello there"
check tui_reply_tagged wait_for '^qwen · BF16 · [0-9]+\+[0-9]+ tok' 20
check tui_reasoning_count grep -Eq 'Reasoning · [1-9][0-9]* tok' <<<"$(screen)"
check tui_tokens_reasoning grep -Eq 'reasoning [1-9][0-9]* · answer' <<<"$(screen)"
# A non-thinking reply: every token is answer.
line "/think off"
line "and now?"
check tui_answer_reply wait_for 'qwen · BF16 · 0\+[1-9][0-9]* tok' 20
check tui_tokens_answer grep -Eq 'answer [1-9][0-9]* · this turn' <<<"$(screen)"

# Hot-swap keeps the transcript; the next reply carries the new format.
line "/swap FP8"
check tui_swap_active wait_for 'BF16 +\[FP8\]' 20
check tui_swap_message wait_for 'now on FP8' 5
check tui_swap_keeps_transcript grep -q 'hello there' <<<"$(screen)"
line "third question"
check tui_swap_reply_tagged wait_for '^qwen · FP8 · [0-9]+\+' 20
# A reply cut at the token limit says so; one that ended on its own does not.
cut_tag_right() {
    local h n
    h=$(screen | grep '^qwen · FP8 · ' | tail -1)
    n=$(sed -E 's/.* ([0-9]+)\+([0-9]+) tok.*/\1 \2/' <<<"$h" | awk '{ print $1 + $2 }')
    if [ "$n" = 12 ]; then grep -Eq ' · max_tokens( |│|$)' <<<"$h"; else ! grep -Eq ' · (max_tokens|stopped)( |│|$)' <<<"$h"; fi
}
check tui_max_tokens_tagged cut_tag_right
# A missing checkpoint, and a directory that is not one: session untouched.
line "/swap $TMP/no-such-checkpoint"
check tui_swap_missing_message wait_for 'no checkpoint' 5
mkdir -p "$TMP/empty"
line "/swap $TMP/empty"
check tui_swap_bad_dir_message wait_for 'swap failed, still on FP8' 10
s=$(screen)
check tui_swap_failed_still_active grep -Eq 'BF16 +\[FP8\]' <<<"$s"
check tui_swap_failed_transcript grep -q 'third question' <<<"$s"

# Ctrl-C stops a long reply and keeps it; the UI stays usable.
line "/set max_tokens=0"
line "/think on"
line "go on forever"
if [ "$DEVICE" = cpu ]; then
    check tui_generating wait_for 'thinking…|answering…' 10
    send C-c
    check tui_ctrl_c_stops wait_for 'partial reply is kept' 10
    check tui_ctrl_c_reply_kept grep -Eq 'qwen · FP8 · [0-9]+\+[0-9]+ tok · [0-9.]+ s · stopped' <<<"$(screen)"
else
    # The GPU writes this model's ~700 tokens before its end-of-text in 0.1 s,
    # so the key would find the reply over; one CPU thread is slow enough.
    skip tui_generating "on $DEVICE the tiny model's reply ends before the key arrives"
    skip tui_ctrl_c_stops "on $DEVICE the tiny model's reply ends before the key arrives"
    skip tui_ctrl_c_reply_kept "on $DEVICE the tiny model's reply ends before the key arrives"
fi
line "/stats"
check tui_usable_after_stop wait_for '^  #[0-9]+ FP8' 5

# Resize: every pane still there, the prompt on the second-last row, and the
# bar's right end (the device) whole. (capture-pane never returns more
# columns than the pane has, so the width itself cannot be checked that way.)
layout_ok() { # ROWS PANE...
    local rows=$1 s p; shift
    s=$(screen)
    for p in "$@"; do grep -Eq -- "$p" <<<"$s" || return 1; done
    [ "$(sed -n "$((rows - 1))p" <<<"$s" | cut -c1)" = ">" ] || return 1
    head -1 <<<"$s" | grep -Eq '(cpu \([0-9]+ threads\)|cuda:.*[^ ]) *$'
}
T resize-window -t q -x 60 -y 20
check tui_resize_60x20_layout until_ok 5 layout_ok 20 Conversation Reasoning Latency Tokens VRAM
T resize-window -t q -x 200 -y 60
check tui_resize_200x60_layout until_ok 5 layout_ok 60 '^Conversation +│Reasoning' ^Latency ^Tokens ^VRAM

# Save, clear, load: the conversation comes back.
line "/save $TMP/s.json"
check tui_save wait_for 'saved [0-9]+ turns' 5
check tui_save_file grep -q '"qchat_session":1' "$TMP/s.json"
line "/clear"
check tui_clear wait_for 'new conversation' 5
check tui_clear_empties absent 'hello there'
line "/load $TMP/s.json"
check tui_load_restores wait_for 'hello there' 10
check tui_load_context wait_for 'context [1-9]' 10
# Tokens the model does not have: rejected by the engine thread, nothing changes.
echo '{"qchat_session":1,"turns":[{"role":"user","text":"bogus turn"}],"tokens":[999999]}' >"$TMP/bad.json"
line "/load $TMP/bad.json"
check tui_load_bad_tokens wait_for 'load failed, conversation unchanged: token 999999' 10
s=$(screen)
kept=0; grep -q 'hello there' <<<"$s" && ! grep -q 'bogus turn' <<<"$s" && kept=1
check tui_load_bad_keeps_transcript test $kept = 1
line "/load $TMP/missing.json"
check tui_load_missing wait_for 'load failed, conversation unchanged: .*missing\.json' 5
check tui_history_file test -s "$XDG_STATE_HOME/qchat/history"
line "/quit"
check tui_quit wait_for 'QCHAT-EXIT 0' 5

# NO_COLOR: no colour in the screen's escapes (and colour without it).
# A colour is SGR 30-38, 40-48, 90-97 or 100-107; 39 and 49 only reset to the
# terminal's default colours, which ncurses writes either way.
sgr_colour() { T capture-pane -p -e -t q | grep -Eq $'\e\\[([0-9;]*;)?(3[0-8]|4[0-8]|9[0-7]|10[0-7])(;[0-9;]*)?m'; }
start 80 24 NO_COLOR=1 $QC "$M/tiny-qwen35"
check tui_nocolor_starts wait_for 'Conversation' 20
check tui_nocolor_no_colour sh -c "$(declare -f T sgr_colour); SOCK=$SOCK; ! sgr_colour"
send C-d
check tui_ctrl_d_quits wait_for 'QCHAT-EXIT 0' 5
start 80 24 $QC "$M/tiny-qwen35"
check tui_colour_starts wait_for 'Conversation' 20
check tui_colour_present sgr_colour
send C-c
send C-c
check tui_double_ctrl_c_quits wait_for 'QCHAT-EXIT 0' 5

# A reply that fills the context stops there and is kept, tagged, and the
# next prompt still gets a reply (the template drops old reasoning).
start 100 30 $QC --ctx 48 "$M/tiny-qwen35"
check tui_ctx_starts wait_for 'Conversation' 20
line "hello there"
check tui_ctx_full_tagged wait_for '^qwen · BF16 · [0-9]+\+[0-9]+ tok · [0-9.]+ s · context full' 20
check tui_ctx_full_status wait_for 'the context is full \(48 tokens\): the reply is kept' 5
check tui_ctx_full_not_failed absent ' · failed'
# The next prompt still gets a reply: the template drops the old reasoning.
line "/think off"
line "again"
check tui_ctx_next_reply wait_count '^qwen · BF16 · ' 2
# A prompt the context cannot hold: refused with the sizes and what to do,
# taken off the conversation and put back in the input line.
line "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
check tui_ctx_prompt_too_long wait_for 'the conversation with this prompt is [0-9]+ tokens, the context 48: /clear' 10
check tui_ctx_prompt_back wait_for '^> one two three four five six' 5
check tui_ctx_prompt_not_in_conversation absent '^  one two three four'
check tui_ctx_no_failed_reply absent ' · failed'
send C-u
line "/quit"
check tui_ctx_quit wait_for 'QCHAT-EXIT 0' 5

# Usage errors: a missing directory, and no terminal.
$QCHAT_BIN "$TMP/nope" </dev/null >/dev/null 2>"$TMP/err"; rc=$?
check tui_not_a_tty_exit_2 test $rc = 2
