#!/usr/bin/env bash
# `bertstream tokenize`: exact JSONL output for good and bad lines (in order, one per line), truncation,
# exit statuses, --help. Uses a tiny vocabulary written here, plus bert-base-uncased when the data is there.
# Usage: bash tests/cli/test_tokenize.sh BIN
set -uo pipefail

bin=${1:-${BERTSTREAM_BIN:-}}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "test_tokenize: usage: test_tokenize.sh BIN" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
# check NAME EXPECTED ACTUAL
check() {
    if [ "$2" == "$3" ]; then ok "$1"; else
        bad "$1"
        diff <(printf '%s\n' "$2") <(printf '%s\n' "$3") | sed 's/^/    /'
    fi
}

# Special tokens at unusual ids, so nothing can assume bert's 101/102.
printf '%s\n' hello '[SEP]' '##ing' '[CLS]' play , '!' '[UNK]' '[PAD]' >"$tmp/vocab.txt"

input='{"text": "Hello, playing!"}
not json
{"text": 42}
{"text": "HELLO\u0000hello \u00e9"}
[1, 2]

{"id": 7, "text": "play play play"}'
want='{"ids": [3, 0, 5, 4, 2, 6, 1]}
{"error": "line 2: not JSON: '"'"'['"'"' or '"'"'{'"'"' expected near '"'"'not'"'"' (column 3)"}
{"error": "line 3: no \"text\" string"}
{"ids": [3, 7, 7, 1]}
{"error": "line 5: not a JSON object"}
{"error": "line 6: not JSON: '"'"'['"'"' or '"'"'{'"'"' expected near end of file (column 0)"}
{"ids": [3, 4, 4, 4, 1]}'
out=$(printf '%s\n' "$input" | "$bin" tokenize --vocab "$tmp/vocab.txt")
rc=$?
check "good and bad lines, in order" "$want" "$out"
check "exit 0 once stdin is read, bad lines included" 0 "$rc"

out=$(printf '%s\n' "$input" | "$bin" tokenize --vocab "$tmp/vocab.txt" --max-len 4 | sed -n '1p;7p')
check "--max-len 4 keeps [CLS] 2 pieces [SEP]" '{"ids": [3, 0, 5, 1]}
{"ids": [3, 4, 4, 1]}' "$out"

out=$(printf '{"text": "a"}' | "$bin" tokenize --vocab "$tmp/vocab.txt")
check "last line without newline" '{"ids": [3, 7, 1]}' "$out"

out=$(printf '{"text": "hello"}\r\n{"text": ""}\r\n' | "$bin" tokenize --vocab "$tmp/vocab.txt")
check "CRLF input, empty text" '{"ids": [3, 0, 1]}
{"ids": [3, 1]}' "$out"

out=$(printf '' | "$bin" tokenize --vocab "$tmp/vocab.txt")
check "empty input, empty output" "" "$out"

err=$("$bin" tokenize --vocab "$tmp/missing.txt" </dev/null 2>&1 >/dev/null)
rc=$?
check "missing vocab: exit 2" 2 "$rc"
check "missing vocab: one line naming the file" "bertstream tokenize: $tmp/missing.txt: No such file or directory" "$err"

printf 'hello\n[CLS]\n[SEP]\n[PAD]\n' >"$tmp/nounk.txt"
err=$("$bin" tokenize --vocab "$tmp/nounk.txt" </dev/null 2>&1 >/dev/null)
rc=$?
check "vocab without [UNK]: exit 2 and one line" "2 bertstream tokenize: $tmp/nounk.txt: vocabulary has no [UNK] token" "$rc $err"

"$bin" tokenize </dev/null >/dev/null 2>&1
check "no --vocab: exit 2" 2 $?
"$bin" tokenize --vocab "$tmp/vocab.txt" --max-len 1 </dev/null >/dev/null 2>&1
check "--max-len 1: exit 2" 2 $?
"$bin" tokenize --vocab "$tmp/vocab.txt" --max-len x </dev/null >/dev/null 2>&1
check "--max-len x: exit 2" 2 $?
"$bin" tokenize --vocab "$tmp/vocab.txt" --frobnicate </dev/null >/dev/null 2>&1
check "unknown flag: exit 2" 2 $?

help=$("$bin" tokenize --help)
rc=$?
check "--help exits 0" 0 "$rc"
case $help in
usage:\ bertstream\ tokenize\ --vocab\ FILE*) ok "--help prints usage" ;;
*) bad "--help prints usage" ;;
esac

# bert-base-uncased itself, when the reference data is present.
vocab=${BERTSTREAM_DATA:-}/bert-base-uncased/vocab.txt
if [ -n "${BERTSTREAM_DATA:-}" ] && [ -f "$vocab" ]; then
    out=$(printf '%s\n' '{"text": "This movie was amazing, loved every minute!"}' \
        '{"text": "r\u00e9sum\u00e9 caf\u00e9 \u6771\u4eac"}' '{"text": "\u0085next\u0096line\u0097"}' |
        "$bin" tokenize --vocab "$vocab" --max-len 128)
    check "bert-base-uncased ids" '{"ids": [101, 2023, 3185, 2001, 6429, 1010, 3866, 2296, 3371, 999, 102]}
{"ids": [101, 13746, 7668, 1879, 1755, 102]}
{"ids": [101, 2279, 4179, 102]}' "$out"
elif [ "${CI:-}" = true ]; then
    bad "bert-base-uncased vocabulary missing under \$BERTSTREAM_DATA (CI=true)"
else
    echo "skip bert-base-uncased ids (no \$BERTSTREAM_DATA)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
