#!/bin/bash
# moe_quant_check.sh QCHAT MOE_FIXTURE_DIR — the GPU engine's MoE layers with
# INT4 and NVFP4 experts against the CPU engine. No published fixture has such
# experts, so this quantizes the BF16 MoE fixture (`qchat quantize --to int4 |
# nvfp4`, every expert included) and runs tools/cuda_score_check.py --derived
# on each: the 200 golden tokens at chunks 200 / 1 / 37 (grouped GEMMs, the
# decode GEMVs, pair GEMVs), per-token median of the logits' rel L2 against
# the CPU engine within 3e-2, greedy steps with a clear CPU margin identical.
# Needs a CUDA device, python3 and numpy; exit status 1 when a check failed.
set -u
qchat=${1:?usage: moe_quant_check.sh QCHAT MOE_FIXTURE_DIR}
src=${2:?usage: moe_quant_check.sh QCHAT MOE_FIXTURE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rc=0
for fmt in int4 nvfp4; do
    dst=$tmp/$(basename "$src")-$fmt
    if ! "$qchat" quantize "$src" "$dst" --to $fmt > "$tmp/q.log" 2>&1; then
        echo "FAIL moe_quant_$fmt: qchat quantize: $(tail -1 "$tmp/q.log")"
        rc=1
        continue
    fi
    cp "$src/golden.safetensors" "$dst/"
    python3 "$here/cuda_score_check.py" "$qchat" "$dst" --device cuda --chunks 200,1,37 --cpu-median-tol 3e-2 \
        --derived || rc=1
done
exit $rc
