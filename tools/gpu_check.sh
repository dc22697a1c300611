#!/usr/bin/env bash
# gpu_check.sh — everything the GPU test machine must run, in one go (GPU time
# is scarce): the kernel-vs-CPU tests, the fixture score checks against the
# goldens on --device cuda, compute-sanitizer memcheck on a fixture run, and
# the benchmarks. Build here first (make -j2 qchat build/tests/test_kernels);
# the machine only runs. Results: $OUT/summary.txt and $OUT/logs.tgz (default
# OUT=/tmp/gpu_check).
#
#   tools/gpu_check.sh [kernels] [score] [sanitize] [bench] [bench-quick] [bench-q]   (default: the first four)
#
# Environment: BENCH_SIZES (default "0.8b 9b 27b"), QCHAT_FIXTURES (default .gpu/fixtures: copy the BF16 fixture
# models there), LD_LIBRARY_PATH gets .gpu/lib (cJSON for the GPU machine).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
# Logs go to $LOGS and are packed into $OUT/logs.tgz at the end (the device
# tool brings back at most 8 files); summary.txt stays beside it.
LOGS=$(mktemp -d /tmp/gpu_logs.XXXXXX)
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export QCHAT_FIXTURES=${QCHAT_FIXTURES:-$PWD/.gpu/fixtures}
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
sections=${*:-kernels score sanitize bench}
summary=$LOGS/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.mem --format=csv >"$LOGS/gpu.txt" 2>&1
note "# $(tail -1 "$LOGS/gpu.txt")"

# The dense fixtures with goldens the CUDA backend must match: BF16, and every
# quantized one (kept quantized on the GPU, decoded by the quantized GEMVs).
# The MoE fixtures run on the CPU only (the CUDA backend has no MoE path).
BF16_MODELS="tiny-qwen35 tiny-qwen36-text"
QUANT_MODELS="tiny-qwen35-fp8 tiny-qwen35-int4-autoround tiny-qwen35-int4-awq tiny-qwen35-nvfp4
              tiny-qwen35-nvfp4-modelopt tiny-qwen36-text-fp8"

for sec in $sections; do
    case $sec in
    kernels)
        # every kernel test binary that was built (and carried); their "# " lines are timings
        for t in ${KERNEL_TESTS:-test_kernels test_kernels_quant test_attn_flash test_gemm_lt}; do
            [ -x "build/tests/$t" ] || { note "skip $t: build/tests/$t not built"; continue; }
            "build/tests/$t" >"$LOGS/$t.log" 2>&1
            note "$t: rc=$? $(grep -c '^ok ' "$LOGS/$t.log") ok, $(grep -c '^FAIL ' "$LOGS/$t.log") FAIL, $(grep -c '^skip ' "$LOGS/$t.log") skip"
            grep -E '^FAIL |^# ' "$LOGS/$t.log" | tee -a "$summary"
        done
        ;;
    score)
        # Every dense fixture must meet 3e-2 with --chunk 200, 1, 37, and greedy
        # tokens must match the goldens and the CPU engine where the margin > 0.05.
        for m in $BF16_MODELS $QUANT_MODELS; do
            d=$QCHAT_FIXTURES/models/$m
            [ -d "$d" ] || { note "skip score $m: $d missing"; continue; }
            python3 tools/cuda_score_check.py ./qchat "$d" --device cuda --chunks 200,1,37 >"$LOGS/score_$m.log" 2>&1
            note "score $m: rc=$? $(grep -c '^ok ' "$LOGS/score_$m.log") ok $(grep -c '^FAIL ' "$LOGS/score_$m.log") FAIL"
            grep -E '^(# |FAIL)' "$LOGS/score_$m.log" | tee -a "$summary"
        done
        ;;
    sanitize)
        d=$QCHAT_FIXTURES/models/tiny-qwen35
        if [ -x "$SAN" ] && [ -d "$d" ]; then
            python3 -c "import sys; sys.path.insert(0, 'tools'); import cuda_score_check as c; g = c.read_st('$d/golden.safetensors'); print(' '.join(map(str, g['tokens'][:80])))" >/tmp/san_ids.txt
            for c in 37 1; do # 37: the prefill kernels; 1: the graph-replayed decode step
                "$SAN" --tool memcheck --error-exitcode 9 ./qchat score "$d" --device cuda --chunk $c \
                    --ids /tmp/san_ids.txt --out /tmp/san_out.safetensors >"$LOGS/memcheck_$c.log" 2>&1
                note "memcheck score tiny-qwen35 chunk $c: rc=$? $(grep -E 'ERROR SUMMARY' "$LOGS/memcheck_$c.log")"
            done
        else
            note "skip sanitize: compute-sanitizer or $d missing"
        fi
        ;;
    bench)
        for s in ${BENCH_SIZES:-0.8b 9b 27b}; do
            ./qchat bench --synthetic "$s:bf16" --json >"$LOGS/bench_$s.json" 2>"$LOGS/bench_$s.err"
            note "bench $s: rc=$?"
            cat "$LOGS/bench_$s.err" >>"$summary"
        done
        ;;
    bench-quick)
        ./qchat bench --synthetic 27b:bf16 --quick >"$LOGS/bench_quick.txt" 2>&1
        note "bench-quick: rc=$?"
        cat "$LOGS/bench_quick.txt" >>"$summary"
        ;;
    bench-q)
        # every format mix at 27B, quick (BENCH_FORMATS to choose)
        for f in ${BENCH_FORMATS:-fp8 int4 nvfp4 nvfp4-mixed bf16}; do
            ./qchat bench --synthetic "27b:$f" --quick --no-profile >"$LOGS/bench_q_$f.txt" 2>&1
            note "bench-q 27b:$f: rc=$?"
            cat "$LOGS/bench_q_$f.txt" >>"$summary"
        done
        ;;
    *) note "unknown section $sec" ;;
    esac
done
cp "$summary" "$OUT/summary.txt"
tar czf "$OUT/logs.tgz" -C "$LOGS" .
cat "$summary"
