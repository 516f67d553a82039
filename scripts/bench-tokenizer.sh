#!/usr/bin/env bash
# Tokenizer throughput, one thread: every IMDb review of ../shared/data/imdb/reviews.tsv (split on '\n' only,
# header skipped, text after the first TAB) through `bertstream tokenize --bench`, at max_len 128 and with no
# truncation. Builds bertstream first when the binary is missing. Prints one JSON line per setting
# (reviews_per_s, tokens_per_s, mean_ids).
# Usage: scripts/bench-tokenizer.sh [--seconds S] [--max-len N]...   (env: BUILD_DIR, BERTSTREAM_DATA)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=3
lens=()
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --max-len) lens+=("$2"); shift 2 ;;
    -h | --help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-tokenizer: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ ${#lens[@]} -gt 0 ] || lens=(128 0)

build=${BUILD_DIR:-build}
data=${BERTSTREAM_DATA:-$(pwd)/../shared/data}
vocab=$data/bert-base-uncased/vocab.txt
reviews=$data/imdb/reviews.tsv
for f in "$vocab" "$reviews"; do
    [ -f "$f" ] || { echo "bench-tokenizer: $f is missing (set BERTSTREAM_DATA)" >&2; exit 1; }
done

if [ ! -x "$build/bertstream" ]; then
    echo "bench-tokenizer: building $build/bertstream" >&2
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$build" -j"$(nproc)" --target bertstream >/dev/null
fi

echo "bench-tokenizer: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), 1 thread" >&2
for n in "${lens[@]}"; do
    "$build/bertstream" tokenize --vocab "$vocab" --bench "$reviews" --max-len "$n" --seconds "$seconds"
done
