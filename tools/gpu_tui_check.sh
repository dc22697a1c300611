#!/usr/bin/env bash
# gpu_tui_check.sh — on the GPU machine: device sampling against the CPU
# sampler, run/score on --device cuda vs --device cpu, compute-sanitizer on the
# sampling path, and the TUI driven through tmux on --device cuda (the VRAM pane
# must show weights, KV and linear-attention state). Build here first:
#   make -j2 qchat build/tests/test_gpu_sample
# then run with the fixtures in $QCHAT_FIXTURES (default .gpu2/fixtures) and
# cJSON in .gpu/lib. Logs go to $OUT (default /tmp/gpu_tui_check).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_tui_check}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
FX=${QCHAT_FIXTURES:-$PWD/.gpu2/fixtures}/models
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

build/tests/test_gpu_sample >"$OUT/gpu_sample.log" 2>&1
echo "test_gpu_sample rc=$?"; grep -E '^(ok|FAIL|skip|#)' "$OUT/gpu_sample.log"
if [ -x build/tests/test_shared_tensors ]; then
    QCHAT_FIXTURES=${QCHAT_FIXTURES:-$PWD/.gpu2/fixtures} build/tests/test_shared_tensors >"$OUT/shared.log" 2>&1
    echo "test_shared_tensors rc=$?"; grep -E '^(FAIL|skip)|cuda' "$OUT/shared.log"
fi

for m in tiny-qwen35 tiny-qwen36-text tiny-qwen35-nvfp4 tiny-qwen35-fp8; do
    [ -d "$FX/$m" ] || { echo "score $m: not carried, skipped"; continue; }
    python3 tools/cuda_score_check.py ./qchat "$FX/$m" --device cuda --chunks 200,1,37 >"$OUT/score_$m.log" 2>&1
    echo "score $m rc=$? ok=$(grep -c '^ok' "$OUT/score_$m.log") fail=$(grep -c '^FAIL' "$OUT/score_$m.log")"
    grep -E '^(FAIL|# )' "$OUT/score_$m.log" | head -8
done

# Same seed, same sampling: the device sampler must draw what the CPU sampler draws.
for args in "--seed 1" "--temperature 0" "--seed 1 --repetition-penalty 1.3 --presence-penalty 0.5"; do
    for d in cuda cpu; do
        ids=$(./qchat run "$FX/tiny-qwen35" -p hi --max-tokens 20 $args --device $d --json 2>/dev/null |
              python3 -c 'import json,sys; print(json.load(sys.stdin)["ids"])')
        echo "run [$args] $d: $ids"
    done
done
./qchat run -p "What is 738 + 496?" --device cuda 2>&1 | tail -3

"$SAN" --tool memcheck --error-exitcode 9 ./qchat run "$FX/tiny-qwen35" -p hi --max-tokens 8 --seed 1 \
    --device cuda >"$OUT/memcheck_run.log" 2>&1
echo "memcheck run (device sampling) rc=$? $(grep 'ERROR SUMMARY' "$OUT/memcheck_run.log")"

if command -v tmux >/dev/null; then
    T() { tmux -L gpucheck -f /dev/null "$@"; }
    T new-session -d -s q -x 160 -y 48 "env TERM=tmux-256color LC_ALL=C.UTF-8 ./qchat --device cuda --max-tokens 40 $FX/tiny-qwen35 $FX/tiny-qwen35-nvfp4; sleep 60"
    sleep 6; T send-keys -t q -l "hello there"; T send-keys -t q Enter; sleep 6
    T send-keys -t q -l "/swap NVFP4"; T send-keys -t q Enter; sleep 5
    T send-keys -t q -l "and again"; T send-keys -t q Enter; sleep 6
    T capture-pane -p -t q >"$OUT/tui_gpu_160x48.txt"; T kill-server
    cat "$OUT/tui_gpu_160x48.txt"
    T new-session -d -s q -x 120 -y 32 "env TERM=tmux-256color LC_ALL=C.UTF-8 ./qchat --device cuda; sleep 60"
    sleep 8; T send-keys -t q -l "What is 738 + 496?"; T send-keys -t q Enter; sleep 6
    T capture-pane -p -t q >"$OUT/tui_demo_gpu.txt"; T kill-server
    cat "$OUT/tui_demo_gpu.txt"
else
    echo "tmux missing: TUI not checked"
fi
