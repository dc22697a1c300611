#!/usr/bin/env bash
# demo_eval.sh — the accuracy-and-length table of the demo model, per format.
#
#   tools/demo_eval.sh [--n N] [--formats "bf16 fp8 int4 nvfp4"] [--device cpu|cuda]
#                      [--readme]
#
# Asks every held-out problem of demo/heldout.tsv (question TAB expected value;
# written by tools/demo_task.py, never seen in training) of each shipped
# checkpoint with the real binary — `qchat run demo/FMT -p Q --json`, greedy
# (temperature 0) — with thinking on and off, and prints a Markdown table:
# accuracy, mean reasoning tokens, mean answer tokens, and how many replies hit
# the token limit. No Python: the JSON is one line and the fields read here
# (answer, tokens.reasoning, tokens.answer, stop_reason) are plain.
# --readme also rewrites the table between the demo-table markers in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
QCHAT=${QCHAT_BIN:-./qchat}
N=0
FORMATS="bf16 fp8 int4 nvfp4"
DEVICE=cpu
README=0
MAXTOK=256
while [ $# -gt 0 ]; do
    case $1 in
    --n) N=$2; shift 2 ;;
    --formats) FORMATS=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --readme) README=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "demo_eval.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$QCHAT" ] || { echo "demo_eval.sh: $QCHAT not built (run make)" >&2; exit 1; }
# a private copy, so a rebuild while the table runs cannot pull the binary away
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$QCHAT" "$work/qchat"
QCHAT=$work/qchat
HELD=demo/heldout.tsv
[ -f "$HELD" ] || { echo "demo_eval.sh: $HELD missing" >&2; exit 1; }
total=$(wc -l <"$HELD")
[ "$N" -gt 0 ] && [ "$N" -lt "$total" ] && total=$N

# One format x mode: prints "correct reasoning_tokens answer_tokens limit_hits".
eval_one() { # dir think|no-think
    local dir=$1 mode=$2 ok=0 rsum=0 asum=0 hits=0 i=0 q want js ans got rt at stop
    while IFS=$'\t' read -r q want; do
        i=$((i + 1))
        [ "$i" -gt "$total" ] && break
        js=$("$QCHAT" run "$dir" -p "$q" --"$mode" --json --temperature 0 --device "$DEVICE" \
            --max-tokens "$MAXTOK" 2>/dev/null) || { echo "demo_eval.sh: qchat run failed on $dir: $q" >&2; exit 1; }
        ans=$(printf '%s' "$js" | sed -n 's/^.*"answer":"\([^"]*\)".*$/\1/p' | head -1)
        # the value after the last '=' of "A op B = C"
        got=$(printf '%s' "$ans" | sed -n 's/^.*= *\(-\{0,1\}[0-9][0-9]*\) *$/\1/p')
        [ "$got" = "$want" ] && ok=$((ok + 1))
        rt=$(printf '%s' "$js" | sed -n 's/^.*"tokens":{[^}]*"reasoning":\([0-9]*\).*$/\1/p')
        at=$(printf '%s' "$js" | sed -n 's/^.*"tokens":{[^}]*"answer":\([0-9]*\).*$/\1/p')
        stop=$(printf '%s' "$js" | sed -n 's/^.*"stop_reason":"\([^"]*\)".*$/\1/p')
        rsum=$((rsum + ${rt:-0}))
        asum=$((asum + ${at:-0}))
        [ "$stop" = "eos" ] || hits=$((hits + 1))
    done <"$HELD"
    echo "$ok $rsum $asum $hits"
}

table=$work/table.md
{
    echo "| format | size | thinking: accuracy | reasoning tokens | answer tokens | no-think: accuracy | answer tokens |"
    echo "|---|---|---|---|---|---|---|"
    for f in $FORMATS; do
        dir=demo/$f
        [ -f "$dir/model.safetensors" ] || { echo "demo_eval.sh: $dir/model.safetensors missing" >&2; exit 1; }
        size=$(du -k "$dir/model.safetensors" | awk '{printf "%.1f MB", $1 * 1024 / 1e6}')
        res=$(eval_one "$dir" think) || exit 1
        read -r ok rs as hits <<<"$res"
        res=$(eval_one "$dir" no-think) || exit 1
        read -r ok2 _ as2 hits2 <<<"$res"
        awk -v f="$f" -v sz="$size" -v n="$total" -v ok="$ok" -v rs="$rs" -v as="$as" -v h="$hits" \
            -v ok2="$ok2" -v as2="$as2" -v h2="$hits2" 'BEGIN {
            lim = h ? sprintf(" (%d hit the limit)", h) : ""
            lim2 = h2 ? sprintf(" (%d hit the limit)", h2) : ""
            printf "| %s | %s | %.1f %% (%d/%d)%s | %.1f | %.1f | %.1f %% (%d/%d)%s | %.1f |\n",
                f, sz, 100 * ok / n, ok, n, lim, rs / n, as / n, 100 * ok2 / n, ok2, n, lim2, as2 / n }'
    done
} >"$table"
cat "$table"
echo
echo "$total held-out problems (demo/heldout.tsv), greedy, $("$QCHAT" --version), device $DEVICE"

if [ "$README" = 1 ]; then
    grep -q '<!-- demo-table:begin -->' README.md || { echo "demo_eval.sh: README.md has no demo-table markers" >&2; exit 1; }
    awk -v tf="$table" -v note="$total held-out problems, greedy decoding, regenerated with \`tools/demo_eval.sh --readme\`." '
        /<!-- demo-table:begin -->/ { print; while ((getline l < tf) > 0) print l; print ""; print note; skip = 1; next }
        /<!-- demo-table:end -->/ { skip = 0 }
        !skip { print }' README.md >README.md.tmp && mv README.md.tmp README.md
    echo "README.md updated"
fi
