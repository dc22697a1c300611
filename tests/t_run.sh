# t_run.sh — `qchat run` and `qchat score` driven as a user would: token
# limits, eos, --json structure, the pipe split (answer on stdout, reasoning
# and stats on stderr), seeds, SIGINT, --device cuda without a GPU backend,
# and score's argument errors.
source "$(dirname "$0")/lib.bash"
M=$FIX/models
Q=$QCHAT_BIN

jget() { # FILE EXPR: python-free JSON field check through the JSON itself
    grep -o "$2" "$1" >/dev/null
}

# --max-tokens 5 gives exactly 5 tokens, stop reason max_tokens, valid JSON fields
"$Q" run "$M/tiny-qwen35" -p "Hello there" --max-tokens 5 --seed 7 --json >"$TMP/j5" 2>"$TMP/e5"
rc=$?
check run_json_exit0 test $rc -eq 0
check run_json_generated5 jget "$TMP/j5" '"generated":5,'
check run_json_stop_max_tokens jget "$TMP/j5" '"stop_reason":"max_tokens"'
for f in reasoning answer ttft_ms tok_per_s format tokens; do
    check "run_json_has_$f" jget "$TMP/j5" "\"$f\":"
done
check run_json_one_line test "$(wc -l <"$TMP/j5")" -eq 1
n_ids=$(grep -o '"ids":\[[0-9,]*\]' "$TMP/j5" | tr -cd ',' | wc -c)
check run_json_ids5 test "$n_ids" -eq 4

# same seed, same tokens; another seed, (almost surely) other tokens
"$Q" run "$M/tiny-qwen35" -p "Hello there" --max-tokens 5 --seed 7 --json >"$TMP/j5b" 2>/dev/null
ids_a=$(grep -o '"ids":\[[0-9,]*\]' "$TMP/j5"); ids_b=$(grep -o '"ids":\[[0-9,]*\]' "$TMP/j5b")
check run_seed_reproducible test "$ids_a" = "$ids_b"
"$Q" run "$M/tiny-qwen35" -p "Hello there" --max-tokens 12 --seed 8 --temperature 1.5 --top-k 0 --json >"$TMP/j8" 2>/dev/null
"$Q" run "$M/tiny-qwen35" -p "Hello there" --max-tokens 12 --seed 9 --temperature 1.5 --top-k 0 --json >"$TMP/j9" 2>/dev/null
check run_seed_differs test "$(grep -o '"ids":\[[0-9,]*\]' "$TMP/j8")" != "$(grep -o '"ids":\[[0-9,]*\]' "$TMP/j9")"

# greedy on tiny-qwen35 ends at an eos id; the eos is counted but not shown
"$Q" run "$M/tiny-qwen35" -p "Hi" --temperature 0 --max-tokens 3000 --json >"$TMP/jeos" 2>/dev/null
check run_stops_at_eos jget "$TMP/jeos" '"stop_reason":"eos"'
check run_eos_counted_as_other jget "$TMP/jeos" '"other":1'

# pipe: answer on stdout, reasoning + stats on stderr (--no-think: all answer)
"$Q" run "$M/tiny-qwen35" -p "Hi" --no-think --max-tokens 8 --seed 2 >"$TMP/out" 2>"$TMP/err" </dev/null
rc=$?
check run_pipe_exit0 test $rc -eq 0
check run_pipe_answer_on_stdout test -s "$TMP/out"
check run_pipe_stats_on_stderr grep -q 'answer 8 tok.*TTFT .* ms.*tok/s.*stop: max_tokens' "$TMP/err"
"$Q" run "$M/tiny-qwen35" -p "Hi" --think --max-tokens 8 --seed 2 >"$TMP/out2" 2>"$TMP/err2" </dev/null
check run_pipe_reasoning_on_stderr grep -q 'reasoning 8 tok · answer 0 tok' "$TMP/err2"
check run_pipe_no_reasoning_on_stdout test "$(tr -d '\n' <"$TMP/out2")" = ""
# prompt from stdin, through a pipe on both ends
echo "What is two plus two?" | "$Q" run "$M/tiny-qwen35-moe" -p - --max-tokens 4 --seed 3 --json 2>/dev/null | cat >"$TMP/jp"
check run_stdin_prompt_in_pipe jget "$TMP/jp" '"generated":4,'

# SIGINT stops cleanly and keeps what was produced
"$Q" run "$M/tiny-qwen36-text" -p "Hi" --temperature 0 --max-tokens 1000000 --json >"$TMP/jint" 2>"$TMP/eint" &
pid=$!
sleep 0.7
kill -INT $pid
wait $pid
rc=$?
check run_sigint_exit0 test $rc -eq 0
check run_sigint_stop_reason jget "$TMP/jint" '"stop_reason":"interrupted"'
check run_sigint_kept_tokens grep -q '"generated":[1-9]' "$TMP/jint"

# errors
if [ ! -e /dev/nvidia0 ]; then
    # no GPU here: --device cuda is a clear runtime error, never a silent CPU run
    "$Q" run "$M/tiny-qwen35" -p "Hi" --device cuda >/dev/null 2>"$TMP/ecuda"
    rc=$?
    check run_cuda_unavailable_exit1 test $rc -eq 1
    check run_cuda_unavailable_message grep -qi 'cuda' "$TMP/ecuda"
else
    skip run_cuda_unavailable_exit1 "a GPU is present"
fi
"$Q" run "$M/tiny-qwen35" -p "Hi" --top-p 7 >/dev/null 2>&1
check run_bad_top_p_usage test $? -eq 2
# bench's --ctx list: refused before anything loads (a build without CUDA
# refuses every bench with its own runtime error)
"$Q" bench --help 2>"$TMP/bh"
check bench_help_ctx grep -q -- '--ctx N,N' "$TMP/bh"
for v in '1,,2' '1,2,' 'x' '-5' '2000000' '1,2,3,4,5,6,7,8,9' ''; do
    "$Q" bench --synthetic 27b:int4 --ctx "$v" >/dev/null 2>"$TMP/bc"
    rc=$?
    if grep -q 'without CUDA' "$TMP/bc" && [ $rc -eq 1 ]; then
        skip "bench_ctx_bad_${v:-empty}" "a build without CUDA refuses bench before it reads --ctx"
    else
        check "bench_ctx_bad_${v:-empty}" test $rc -eq 2 -a -n "$(grep -- '--ctx' "$TMP/bc")"
    fi
done
"$Q" run "$M/tiny-qwen35" >/dev/null 2>&1
check run_missing_prompt_usage test $? -eq 2
"$Q" run "$TMP/nowhere" -p "Hi" >/dev/null 2>&1
check run_missing_checkpoint_exit3 test $? -eq 3

# score: argument and id errors, output format
printf '1 2 3\n4 5' >"$TMP/ids"
"$Q" score "$M/tiny-qwen36-text" --ids "$TMP/ids" --out "$TMP/s.safetensors" --chunk 2
check score_exit0 test $? -eq 0
# 8-byte header length + JSON header + 5 x 1024 floats
size=$(stat -c %s "$TMP/s.safetensors")
hl=$(od -An -t u8 -N 8 "$TMP/s.safetensors" | tr -d ' ')
check score_file_size test "$size" -eq $((8 + hl + 5 * 1024 * 4))
check score_header_logits grep -q '"logits":{"dtype":"F32","shape":\[5,1024\]' "$TMP/s.safetensors"
check score_no_temp_left test "$(ls "$TMP" | grep -c 'tmp\.')" -eq 0
# QCHAT_CPU_XBF16=1 (a diagnostic): the same CPU scores with every matmul input
# rounded to bf16 are not the same bits as without
"$Q" score "$M/tiny-qwen36-text" --ids "$TMP/ids" --out "$TMP/c32.st" --device cpu
QCHAT_CPU_XBF16=1 "$Q" score "$M/tiny-qwen36-text" --ids "$TMP/ids" --out "$TMP/cx.st" --device cpu
check score_cpu_xbf16_exit0 test $? -eq 0
check score_cpu_xbf16_moves_logits test -s "$TMP/cx.st" -a -s "$TMP/c32.st" -a "$(cmp -s "$TMP/cx.st" "$TMP/c32.st"; echo $?)" = 1
printf '1 2 x3' >"$TMP/badids"
"$Q" score "$M/tiny-qwen36-text" --ids "$TMP/badids" --out "$TMP/b.st" 2>"$TMP/eb"
check score_bad_id_usage test $? -eq 2
printf '1 99999' >"$TMP/bigids"
"$Q" score "$M/tiny-qwen36-text" --ids "$TMP/bigids" --out "$TMP/b.st" 2>"$TMP/eb2"
check score_id_out_of_vocab_usage test $? -eq 2
check score_id_out_of_vocab_message grep -q '99999' "$TMP/eb2"
"$Q" score "$M/tiny-qwen36-text" --ids "$TMP/ids" 2>/dev/null
check score_missing_out_usage test $? -eq 2
"$Q" score "$M/tiny-qwen36-text" --ids "$TMP/ids" --out "$TMP/c.st" --chunk 0 2>/dev/null
check score_chunk0_usage test $? -eq 2
