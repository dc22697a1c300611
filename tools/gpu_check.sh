#!/usr/bin/env bash
# gpu_check.sh — everything the GPU test machine must run, in one go (GPU time
# is scarce): the kernel-vs-CPU tests, the fixture score checks against the
# goldens on --device cuda, compute-sanitizer memcheck on a fixture run, and
# the benchmarks. Build here first (make -j2 qchat build/tests/test_kernels);
# the machine only runs. Logs go to $OUT (default /tmp/gpu_check).
#
#   tools/gpu_check.sh [kernels] [score] [sanitize] [bench] [bench-quick]   (default: all but bench-quick)
#
# Environment: QCHAT_FIXTURES (default .gpu/fixtures: copy the BF16 fixture
# models there), LD_LIBRARY_PATH gets .gpu/lib (cJSON for the GPU machine).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export QCHAT_FIXTURES=${QCHAT_FIXTURES:-$PWD/.gpu/fixtures}
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
sections=${*:-kernels score sanitize bench}
summary=$OUT/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.mem --format=csv >"$OUT/gpu.txt" 2>&1
note "# $(tail -1 "$OUT/gpu.txt")"

# The BF16 fixtures with goldens the CUDA backend must match.
BF16_MODELS="tiny-qwen35 tiny-qwen36-text"

for sec in $sections; do
    case $sec in
    kernels)
        build/tests/test_kernels >"$OUT/kernels.log" 2>&1
        note "kernels: rc=$? $(grep -c '^ok ' "$OUT/kernels.log") ok, $(grep -c '^FAIL ' "$OUT/kernels.log") FAIL, $(grep -c '^skip ' "$OUT/kernels.log") skip"
        grep '^FAIL ' "$OUT/kernels.log" | tee -a "$summary"
        ;;
    score)
        for m in $BF16_MODELS; do
            d=$QCHAT_FIXTURES/models/$m
            [ -d "$d" ] || { note "skip score $m: $d missing"; continue; }
            for c in 200 1 37; do
                ./qchat score "$d" --device cuda --chunk "$c" >"$OUT/score_${m}_$c.log" 2>&1
                note "score $m chunk $c: rc=$? $(grep -iE 'rel|greedy|FAIL|error' "$OUT/score_${m}_$c.log" | tr '\n' ' ' | cut -c1-300)"
            done
        done
        ;;
    sanitize)
        d=$QCHAT_FIXTURES/models/tiny-qwen35
        if [ -x "$SAN" ] && [ -d "$d" ]; then
            "$SAN" --tool memcheck --leak-check full --error-exitcode 9 ./qchat score "$d" --device cuda --chunk 37 \
                >"$OUT/memcheck.log" 2>&1
            note "memcheck score tiny-qwen35 chunk 37: rc=$? $(grep -E 'ERROR SUMMARY|LEAK SUMMARY' "$OUT/memcheck.log" | tr '\n' ' ')"
        else
            note "skip sanitize: compute-sanitizer or $d missing"
        fi
        ;;
    bench)
        for s in 0.8b 9b 27b; do
            ./qchat bench --synthetic "$s:bf16" --json >"$OUT/bench_$s.json" 2>"$OUT/bench_$s.err"
            note "bench $s: rc=$? $(tail -3 "$OUT/bench_$s.err" | tr '\n' ' ')"
        done
        ;;
    bench-quick)
        ./qchat bench --synthetic 27b:bf16 --quick >"$OUT/bench_quick.txt" 2>&1
        note "bench-quick: rc=$?"
        tail -30 "$OUT/bench_quick.txt"
        ;;
    *) note "unknown section $sec" ;;
    esac
done
cat "$summary"
