#!/usr/bin/env bash
# t_tokenize.sh — `qchat tokenize`: ids match Hugging Face's (fixture cases of
# the real Qwen3 tokenizer), stdin is read byte for byte, --json and --decode
# work, and bad input gives a clear error with the documented exit status.
. "$(dirname "$0")/lib.bash"

gzip -dc "$FIX/tokenizer/qwen3/tokenizer.json.gz" > "$TMP/tokenizer.json" || { fail tokenize_fixture "cannot decompress"; exit 1; }
D=$TMP   # a "checkpoint" holding nothing but tokenizer.json

out=$("$QCHAT_BIN" tokenize "$D" "Hello world!")
check tokenize_plain [ "$out" = "9707 1879 0" ]

out=$("$QCHAT_BIN" tokenize "$D" --json "The capital of France is")
check tokenize_json [ "$out" = '{"ids": [785, 6722, 315, 9625, 374]}' ]

# stdin byte for byte: the trailing newline is part of the text (id 198).
out=$(printf 'def f(x):\n    return x * 2\n' | "$QCHAT_BIN" tokenize "$D" -)
check tokenize_stdin_bytes [ "$out" = "750 282 2075 982 262 470 856 353 220 17 198" ]

# Added tokens in the text are single tokens (ids from the fixture cases);
# decode gives the text back exactly.
printf '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n' > "$TMP/prompt.txt"
ids=$("$QCHAT_BIN" tokenize "$D" - < "$TMP/prompt.txt")
check tokenize_special_tokens [ "$ids" = "151644 872 198 13048 151645 198 151644 77091 198 151667 198" ]
"$QCHAT_BIN" tokenize "$D" --decode "$ids" > "$TMP/back.txt"
check tokenize_decode_roundtrip cmp -s "$TMP/prompt.txt" "$TMP/back.txt"

out=$("$QCHAT_BIN" tokenize "$D" --decode --json "[9707, 1879, 0]")
check tokenize_decode_json [ "$out" = '{"text": "Hello world!"}' ]

# The tokenizer file itself may be named instead of its directory.
out=$("$QCHAT_BIN" tokenize "$D/tokenizer.json" "12345")
check tokenize_json_path [ "$out" = "16 17 18 19 20" ]

printf 'ok \xc3\x28 bad' | "$QCHAT_BIN" tokenize "$D" - 2> "$TMP/err" > /dev/null
rc=$?
if [ "$rc" -eq 2 ] && grep -qF "not valid UTF-8 (byte 3)" "$TMP/err"; then ok tokenize_invalid_utf8; else fail tokenize_invalid_utf8 "exit $rc: $(cat "$TMP/err")"; fi

"$QCHAT_BIN" tokenize "$D" --decode "9707 99999999" 2> "$TMP/err" > /dev/null
rc=$?
if [ "$rc" -eq 2 ] && grep -qF "99999999" "$TMP/err"; then ok tokenize_decode_bad_id; else fail tokenize_decode_bad_id "exit $rc: $(cat "$TMP/err")"; fi

"$QCHAT_BIN" tokenize "$TMP/nonexistent" "x" 2> "$TMP/err" > /dev/null
rc=$?
if [ "$rc" -eq 3 ] && grep -qF "nonexistent" "$TMP/err"; then ok tokenize_missing_dir; else fail tokenize_missing_dir "exit $rc: $(cat "$TMP/err")"; fi

mkdir "$TMP/broken" && echo '{"model": {"vocab": ' > "$TMP/broken/tokenizer.json"
"$QCHAT_BIN" tokenize "$TMP/broken" "x" 2> "$TMP/err" > /dev/null
rc=$?
if [ "$rc" -eq 3 ] && grep -qF "broken/tokenizer.json: not a JSON" "$TMP/err"; then ok tokenize_broken_file; else fail tokenize_broken_file "exit $rc: $(cat "$TMP/err")"; fi

"$QCHAT_BIN" tokenize "$D" > /dev/null 2>&1
check tokenize_usage [ $? -eq 2 ]
