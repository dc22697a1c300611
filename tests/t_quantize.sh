#!/usr/bin/env bash
# t_quantize.sh — `qchat quantize` end to end through the binary: each target
# written from a BF16 fixture is classified by `qchat inspect --json` as that
# format for every converted Linear (in_proj_a/b and the tied lm_head stay
# bf16), and usage errors exit 2.
. "$(dirname "$0")/lib.bash"
if [ ! -x "$QCHAT_BIN" ]; then skip quantize_cli "qchat not built"; exit 0; fi
src=$FIX/models/tiny-qwen36-text
for to in fp8 int4 nvfp4; do
    want=$(case $to in fp8) echo fp8-block;; int4) echo gptq;; nvfp4) echo nvfp4-ct;; esac)
    if ! "$QCHAT_BIN" quantize "$src" "$TMP/$to" --to $to >"$TMP/$to.out" 2>&1; then
        fail quantize_cli_$to "exit $?: $(head -c 300 "$TMP/$to.out")"; continue
    fi
    "$QCHAT_BIN" inspect --json "$TMP/$to" >"$TMP/$to.json" 2>&1 || { fail quantize_inspect_$to "inspect failed: $(head -c 300 "$TMP/$to.json")"; continue; }
    # module formats, one per line
    tr -d '\t\n ' <"$TMP/$to.json" | grep -o '"name":"[^"]*","kind":"[^"]*","format":"[^"]*"' >"$TMP/$to.mods"
    nq=$(grep -c "\"format\":\"$want\"" "$TMP/$to.mods")
    n16=$(grep -c '"format":"bf16"' "$TMP/$to.mods")
    other=$(grep -v "\"format\":\"$want\"" "$TMP/$to.mods" | grep -v -e 'in_proj_[ab]"' -e '"name":"lm_head"')
    # tiny-qwen36-text: 4 layers, 3 GDN (qkv, z, out) + 1 attention (q, k, v, o), 4 MLPs (3 each)
    if [ "$nq" = 25 ] && [ "$n16" = 7 ] && [ -z "$other" ]; then ok quantize_inspect_$to
    else fail quantize_inspect_$to "$nq $want / $n16 bf16 modules (want 25 / 7); unexpected: $(echo "$other" | head -3)"; fi
done
"$QCHAT_BIN" quantize "$src" "$TMP/x" >/dev/null 2>&1; rc=$?
check quantize_requires_to test $rc = 2
"$QCHAT_BIN" quantize "$src" "$TMP/x" --to int3 >/dev/null 2>&1; rc=$?
check quantize_rejects_unknown_target test $rc = 2
"$QCHAT_BIN" quantize "$src" "$TMP/x" --to fp8 --act-order >/dev/null 2>&1; rc=$?
check quantize_act_order_is_int4_only test $rc = 2
"$QCHAT_BIN" quantize "$src" "$TMP/fp8" --to fp8 >/dev/null 2>&1; rc=$?
check quantize_refuses_existing_model test $rc = 2
