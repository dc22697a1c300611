#!/usr/bin/env bash
# Encode-speed benchmark of qchat's tokenizer (not a test). Builds
# build/bench_tokenizer and runs it pinned to one core.
#   tools/bench_tokenizer.sh [TOKENIZER_JSON_OR_DIR] [TEXT_FILES...]
# Defaults: the real Qwen3 tokenizer from the fixtures (decompressed to a temp
# dir) and a mix of the project docs (English), C sources (code) and the
# tokenizer fixture strings (CJK, Thai, Arabic, emoji, ...).
set -eu
cd "$(dirname "$0")/.."
FIX=${QCHAT_FIXTURES:-../shared/fixtures}
mkdir -p build
# Only the tokenizer's own sources: the benchmark does not need the engine.
cc -O2 -g -std=c11 -D_GNU_SOURCE -pthread -Iengine -o build/bench_tokenizer tools/bench_tokenizer.c \
    engine/tokenizer.c engine/detok.c engine/util.c \
    -lcjson -lm -pthread -Wl,-Bstatic -lpcre2-8 -lutf8proc -Wl,-Bdynamic
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
tok=${1:-}
if [ -z "$tok" ]; then
    gzip -dc "$FIX/tokenizer/qwen3/tokenizer.json.gz" > "$tmp/tokenizer.json"; tok=$tmp/tokenizer.json
fi
[ $# -gt 0 ] && shift
if [ $# -eq 0 ]; then
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["cases"]["qwen3"]; print("\n".join(c["text"] for c in d))' \
        "$FIX/tokenizer/tokenizer_cases.json" > "$tmp/multilingual.txt"
    set -- ../shared/docs/*.md engine/*.c "$tmp/multilingual.txt"
fi
taskset -c 0 build/bench_tokenizer "$tok" "$@" 2>/dev/null || build/bench_tokenizer "$tok" "$@"
