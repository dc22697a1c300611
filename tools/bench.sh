#!/usr/bin/env bash
# bench.sh — `make bench`: the benchmarks of BENCHMARKS.md this machine can
# run. Always the tokenizer's encode speed; with a CUDA device also
# `qchat bench --synthetic 27b:FMT` for every format mix (BENCH_SIZE and
# BENCH_FORMATS choose, BENCH_FLAGS defaults to --quick). Speed is reported,
# never asserted: this is not a test.
set -u
cd "$(dirname "$0")/.."
tools/bench_tokenizer.sh || exit
size=${BENCH_SIZE:-27b}
if ! ./qchat bench --synthetic "$size:bf16" --load-only >/dev/null 2>&1; then
    echo "bench: no CUDA device (or a CPU-only build): the GPU benchmarks are skipped"
    exit 0
fi
for f in ${BENCH_FORMATS:-bf16 fp8 int4 nvfp4 nvfp4-mixed}; do
    echo "== qchat bench --synthetic $size:$f ${BENCH_FLAGS:---quick}"
    # shellcheck disable=SC2086
    ./qchat bench --synthetic "$size:$f" ${BENCH_FLAGS:---quick} || exit
done
