#!/usr/bin/env bash
# tools/tui-captures.sh — regenerates tests/captures/tui-80x24.txt and
# tui-160x48.txt: the real TUI in tmux on two fixture checkpoints after one
# reply (the text is gibberish: the fixture weights are random).
set -eu
cd "$(dirname "$0")/.."
FIX=${QCHAT_FIXTURES:-../shared/fixtures}
M=$FIX/models
XDG_STATE_HOME=$(mktemp -d)
export LC_ALL=C.UTF-8 XDG_STATE_HOME XDG_CONFIG_HOME=$XDG_STATE_HOME
mkdir -p tests/captures
for size in 80x24 160x48; do
    w=${size%x*} h=${size#*x}
    S=qchat-capture-$$-$w
    tmux -L "$S" -f /dev/null new-session -d -s c -x "$w" -y "$h" \
        "env TERM=tmux-256color ./qchat --device cpu --threads 1 --seed 7 --max-tokens 48 $M/tiny-qwen35 $M/tiny-qwen35-fp8 $M/tiny-qwen35-int4-autoround $M/tiny-qwen35-nvfp4; sleep 30"
    for _ in $(seq 100); do tmux -L "$S" capture-pane -p -t c | grep -q Conversation && break; sleep 0.1; done
    tmux -L "$S" send-keys -t c -l "What is the derivative of x^x?"; tmux -L "$S" send-keys -t c Enter
    for _ in $(seq 200); do tmux -L "$S" capture-pane -p -t c | grep -q '^qwen · ' && break; sleep 0.1; done
    sleep 0.3
    tmux -L "$S" capture-pane -p -t c >"tests/captures/tui-$size.txt"
    tmux -L "$S" kill-server
done
rm -rf "$XDG_STATE_HOME"
echo "wrote tests/captures/tui-80x24.txt tests/captures/tui-160x48.txt"
