#!/usr/bin/env bash
# tools/man-commands.sh — regenerates the COMMANDS section of man/qchat.1 from
# the slash-command table (tui/commands.c, via `qchat --help-commands=man`),
# between the BEGIN/END COMMANDS markers. tests/test_tui_commands checks that
# the page and the table agree.
set -eu
cd "$(dirname "$0")/.."
page=man/qchat.1
body=$(./qchat --help-commands=man)
awk -v body="$body" '
    /^\.\\" BEGIN COMMANDS/ { print; print body; skip = 1; next }
    /^\.\\" END COMMANDS/   { skip = 0 }
    !skip { print }
' "$page" >"$page.tmp"
mv "$page.tmp" "$page"
echo "updated the COMMANDS section of $page"
