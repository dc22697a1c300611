#!/usr/bin/env bash
# t_synth.sh — `qchat synth` through the binary:
#   * tiny in every format: `qchat inspect --json` classifies every Linear as
#     the format's mix says, and `qchat run` generates 3 tokens on the CPU;
#   * 27b --dry-run: the tensor bytes equal the sum computed here from the
#     model's shapes and each format's tensor layout (checkpoint-formats.md),
#     shard sizes add up, and the totals sit in the doc's size ranges;
#   * refusing to overwrite, bad flags (exit 2), too little disk space (exit 1).
. "$(dirname "$0")/lib.bash"
if [ ! -x "$QCHAT_BIN" ]; then skip synth_cli "qchat not built"; exit 0; fi

# ---- tiny: classification and a CPU run ---------------------------------
# tiny: 3 GDN layers (qkv, z, out + a, b), 1 attention layer (q, k, v, o),
# 4 MLPs, lm_head, and an MTP head (fc + 4 attention + 3 MLP) where kept.
expect() { # format -> "fmt:count ..." over all modules
    case $1 in
    bf16) echo "bf16:40";;
    fp8) echo "fp8-block:32 bf16:8";;
    int4-gptq) echo "gptq:25 bf16:15";;
    int4-ct) echo "ct-int:25 bf16:7";;
    nvfp4) echo "nvfp4-ct:25 bf16:7";;
    nvfp4-modelopt) echo "nvfp4-modelopt:12 fp8-tensor:13 bf16:15";;
    esac
}
for f in bf16 fp8 int4-gptq int4-ct nvfp4 nvfp4-modelopt; do
    d=$TMP/$f
    if ! "$QCHAT_BIN" synth "$d" --size tiny --format $f >"$TMP/$f.out" 2>&1; then
        fail synth_cli_$f "exit $?: $(head -c 300 "$TMP/$f.out")"; continue
    fi
    "$QCHAT_BIN" inspect --json "$d" >"$TMP/$f.json" 2>&1 || { fail synth_inspect_$f "inspect failed: $(head -c 300 "$TMP/$f.json")"; continue; }
    tr -d '\t\n ' <"$TMP/$f.json" | grep -o '"name":"[^"]*","kind":"[^"]*","format":"[^"]*"' >"$TMP/$f.mods"
    got=""
    for fmt in $(sed 's/.*"format":"\([^"]*\)"/\1/' "$TMP/$f.mods" | sort | uniq); do
        got="$got $fmt:$(grep -c "\"format\":\"$fmt\"" "$TMP/$f.mods")"
    done
    want=$(for x in $(expect $f); do echo $x; done | sort | tr '\n' ' ')
    got=$(for x in $got; do echo $x; done | sort | tr '\n' ' ')
    # the 16-bit ones must be exactly in_proj_a/b, lm_head and (where kept 16-bit) the MTP head
    odd16=$(grep '"format":"bf16"' "$TMP/$f.mods" | grep -v -e 'in_proj_[ab]"' -e '"name":"lm_head"' -e '"name":"mtp\.')
    [ $f = bf16 ] && odd16=""
    [ $f = fp8 ] && odd16=$(grep '"format":"bf16"' "$TMP/$f.mods" | grep -v -e 'in_proj_[ab]"' -e '"name":"lm_head"' -e '"name":"mtp.fc"')
    if [ "$got" = "$want" ] && [ -z "$odd16" ]; then ok synth_inspect_$f
    else fail synth_inspect_$f "modules: got $got, want $want; unexpected 16-bit: $(echo "$odd16" | head -2)"; fi
    # random weights: a sampled EOS may end the reply early (seen once in CI
    # on nvfp4-modelopt without a seed), which is a complete run too
    if timeout 120 "$QCHAT_BIN" run "$d" -p "Hello" --max-tokens 3 --seed 7 --device cpu --json >"$TMP/$f.run" 2>&1 &&
        grep -q -e '"generated":3' -e '"stop_reason":"eos"' "$TMP/$f.run"; then ok synth_run_$f
    else fail synth_run_$f "$(head -c 300 "$TMP/$f.run")"; fi
done

# ---- 27b: the file plan against the shapes -------------------------------
D=5120 L=64 I=17408 H=24 KV=4 HD=256 HK=16 HV=48 DK=128 DV=128 V=248320
CONV=$((2 * HK * DK + HV * DV)) VD=$((HV * DV))
cdiv() { echo $((($1 + $2 - 1) / $2)); }
lin() { # N K layout -> bytes of the module's tensors
    local N=$1 K=$2
    case $3 in
    bf16) echo $((2 * N * K));;
    fp8) echo $((N * K + 2 * $(cdiv $N 128) * $(cdiv $K 128)));;
    gptq) echo $((4 * K / 8 * N + 4 * K / 128 * N / 8 + 2 * K / 128 * N));;
    ct) echo $((4 * N * K / 8 + 2 * N * K / 128 + 16));;
    nvfp4) echo $((N * K / 2 + N * K / 16 + 8));;   # + global scale + input global scale
    mo-fp8) echo $((N * K + 8));;                  # + weight_scale + input_scale
    esac
}
layer() { # full(1/0) attn-layout mlp-layout
    local b=$((2 * 2 * D))
    if [ $1 = 1 ]; then
        b=$((b + $(lin $((2 * H * HD)) $D $2) + 2 * $(lin $((KV * HD)) $D $2) + $(lin $D $((H * HD)) $2) + 2 * 2 * HD))
    else
        b=$((b + $(lin $CONV $D $2) + $(lin $VD $D $2) + 2 * $(lin $HV $D bf16) + CONV * 4 * 2 + HV * 2 + HV * 4 + DV * 4 + $(lin $D $VD $2)))
    fi
    echo $((b + 2 * $(lin $I $D $3) + $(lin $D $I $3)))
}
expected_bytes() {
    local a m mtp=1 mtpl=bf16
    case $1 in
    bf16) a=bf16; m=bf16;;
    fp8) a=fp8; m=fp8; mtpl=fp8;;
    int4-gptq) a=gptq; m=gptq;;
    int4-ct) a=ct; m=ct; mtp=0;;
    nvfp4) a=nvfp4; m=nvfp4; mtp=0;;
    nvfp4-modelopt) a=mo-fp8; m=nvfp4;;
    esac
    local b=$((2 * V * D + 2 * D + 2 * V * D))       # embed, norm, lm_head (27b is untied)
    b=$((b + 16 * $(layer 1 $a $m) + 48 * $(layer 0 $a $m)))
    [ $mtp = 1 ] && b=$((b + $(lin $D $((2 * D)) bf16) + $(layer 1 $mtpl $mtpl) + 3 * 2 * D))
    echo $b
}
range() { # format -> min max (GB), checkpoint-formats.md's 27B sizes less vision
    case $1 in
    bf16) echo 52 55;; fp8) echo 28.5 31;; int4-gptq) echo 17 19.5;;
    int4-ct) echo 16 20;; nvfp4) echo 17 22;; nvfp4-modelopt) echo 19 23.5;;
    esac
}
for f in bf16 fp8 int4-gptq int4-ct nvfp4 nvfp4-modelopt; do
    if ! "$QCHAT_BIN" synth --dry-run --size 27b --format $f >"$TMP/dry.$f" 2>&1; then
        fail synth_dry_run_27b_$f "exit $?: $(head -c 200 "$TMP/dry.$f")"; continue
    fi
    got=$(awk '$1 == "tensor_bytes" {print $2}' "$TMP/dry.$f")
    files=$(awk '$1 == "file_bytes" {print $2}' "$TMP/dry.$f")
    sum=$(awk '$1 == "shard" {s += $3} END {printf "%.0f", s}' "$TMP/dry.$f")
    big=$(awk '$1 == "shard" && $3 > 5001000000' "$TMP/dry.$f")
    nsh=$(grep -c '^shard model-.*-of-' "$TMP/dry.$f")
    want=$(expected_bytes $f)
    read -r lo hi <<<"$(range $f)"
    inr=$(awk -v b="$got" -v lo="$lo" -v hi="$hi" 'BEGIN {print (b / 1e9 >= lo && b / 1e9 <= hi) ? 1 : 0}')
    if [ "$got" = "$want" ] && [ "$sum" = "$files" ] && [ -z "$big" ] && [ "$nsh" -ge 4 ] && [ "$inr" = 1 ]; then
        ok synth_dry_run_27b_$f
    else
        fail synth_dry_run_27b_$f "tensor bytes $got, want $want; shards sum $sum vs $files; $nsh shards; over 5 GB: $big; ${lo}-${hi} GB: $inr"
    fi
done
# With an OUTDIR named, --dry-run still writes nothing there.
"$QCHAT_BIN" synth "$TMP/27b" --dry-run --size 27b --format bf16 >"$TMP/dry.out" 2>&1; rc=$?
if [ $rc = 0 ] && [ ! -e "$TMP/27b" ] && grep -q '^tensor_bytes' "$TMP/dry.out"; then ok synth_dry_run_writes_nothing
else fail synth_dry_run_writes_nothing "exit $rc; $([ -e "$TMP/27b" ] && echo "$TMP/27b appeared")"; fi

# ---- refusals and usage errors -------------------------------------------
"$QCHAT_BIN" synth "$TMP/bf16" --size tiny --format bf16 >/dev/null 2>&1; rc=$?
check synth_refuses_existing test $rc = 2
mkdir -p "$TMP/notckpt" && echo keep >"$TMP/notckpt/file"
"$QCHAT_BIN" synth "$TMP/notckpt" --size tiny --format bf16 --force >/dev/null 2>&1; rc=$?
check synth_force_refuses_non_checkpoint test $rc = 2 -a -f "$TMP/notckpt/file"
"$QCHAT_BIN" synth "$TMP/bf16" --size tiny --format fp8 --force >/dev/null 2>&1; rc=$?
check synth_force_replaces test $rc = 0 -a "$(grep -c '"quant_method"' "$TMP/bf16/config.json")" = 1
bad=""
for args in "--size tiny" "--format bf16" "--size 13b --format bf16" "--size tiny --format int3" \
    "--size tiny --format fp8 --asym" "--size tiny --format bf16 --shard-size 0" \
    "--size tiny --format bf16 --shard-size 5X" "--size tiny --format bf16 --bogus" \
    "--size tiny --format bf16 --seed -1" "--size" ; do
    "$QCHAT_BIN" synth "$TMP/bad" $args >/dev/null 2>&1; rc=$?
    [ $rc = 2 ] || bad="$bad [$args: exit $rc]"
done
"$QCHAT_BIN" synth --size tiny --format bf16 >/dev/null 2>&1; rc=$?
[ $rc = 2 ] || bad="$bad [no OUTDIR: exit $rc]"
[ -z "$bad" ] && [ ! -e "$TMP/bad" ] && ok synth_bad_flags_exit_2 || fail synth_bad_flags_exit_2 "$bad"

# ---- not enough disk: checked before writing, exit 1 ----------------------
need=$(awk '$1 == "file_bytes" {print $2}' "$TMP/dry.bf16")
dir=""
for cand in "$TMP" /dev/shm; do
    avail=$(df -B1 --output=avail "$cand" 2>/dev/null | tail -1)
    if [ -n "$avail" ] && [ -n "$need" ] && [ "$avail" -lt "$need" ]; then dir=$cand; break; fi
done
if [ -z "$dir" ]; then
    skip synth_disk_space "every candidate filesystem has room for 27b bf16"
else
    out="$dir/qchat-synth-nospace.$$"
    "$QCHAT_BIN" synth "$out" --size 27b --format bf16 >/dev/null 2>"$TMP/nospace.err"; rc=$?
    left=$(ls -a "$dir" | grep -c "qchat-synth-nospace.$$")
    if [ $rc = 1 ] && [ "$left" = 0 ] && grep -q "not enough free disk space" "$TMP/nospace.err"; then ok synth_disk_space
    else fail synth_disk_space "exit $rc, $left leftovers: $(head -c 200 "$TMP/nospace.err")"; rm -rf "$out"; fi
fi
