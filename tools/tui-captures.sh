#!/usr/bin/env bash
# tools/tui-captures.sh — regenerates tests/captures/tui-80x24.txt and
# tui-160x48.txt: the real TUI in tmux on the demo model (`qchat` with no
# directory, CPU engine), one reply in BF16, then F5 (NVFP4) and a second reply.
set -eu
cd "$(dirname "$0")/.."
XDG_STATE_HOME=$(mktemp -d)
export LC_ALL=C.UTF-8 XDG_STATE_HOME XDG_CONFIG_HOME=$XDG_STATE_HOME
mkdir -p tests/captures
for size in 80x24 160x48; do
    w=${size%x*} h=${size#*x}
    S=qchat-capture-$$-$w
    T() { tmux -L "$S" -f /dev/null "$@"; }
    wait_screen() { for _ in $(seq 300); do T capture-pane -p -t c | grep -Eq -- "$1" && return 0; sleep 0.1; done; return 1; }
    T new-session -d -s c -x "$w" -y "$h" "env TERM=tmux-256color ./qchat --device cpu --seed 7; sleep 60"
    wait_screen 'Conversation'
    T send-keys -t c -l "What is 4821 + 397?"; T send-keys -t c Enter
    wait_screen '^qwen · BF16 · [0-9]'
    T send-keys -t c F5
    wait_screen 'now on NVFP4'
    T send-keys -t c -l "What is 9051 - 2877?"; T send-keys -t c Enter
    wait_screen '^qwen · NVFP4 · [0-9]'
    sleep 0.3
    T capture-pane -p -t c >"tests/captures/tui-$size.txt"
    T kill-server
done
rm -rf "$XDG_STATE_HOME"
echo "wrote tests/captures/tui-80x24.txt tests/captures/tui-160x48.txt"
