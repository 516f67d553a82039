#!/usr/bin/env bash
# scripts/fetch-model.sh: copies and downloads (from an HTTP server on loopback) a model directory, verifies it,
# is idempotent, and fails fast with one line when the source is missing, broken, unreachable or silent.
# Usage: bash tests/cli/test_fetch_model.sh [BIN]   (BIN unused: the script needs no bertstream binary)
set -euo pipefail

root=${BERTSTREAM_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
fetch=$root/scripts/fetch-model.sh
py=/usr/bin/python3
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1: $2"; }

for tool in curl "$py"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        if [ "${CI:-}" = true ]; then echo "test_fetch_model: $tool missing" >&2; exit 1; fi
        echo "test_fetch_model: $tool missing, skipped"
        exit 77
    fi
done

# A tiny model directory: valid JSON config, a vocabulary with [CLS], and safetensors files whose header
# (8-byte little-endian length + JSON) is what fetch-model.sh checks.
make_safetensors() {
    "$py" -c 'import json, struct, sys
h = json.dumps({"__metadata__": {"format": "pt"}}).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h)' "$1"
}
src=$tmp/src
mkdir -p "$src"
echo '{"hidden_size": 4, "model_type": "bert"}' >"$src/config.json"
printf '[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n' >"$src/vocab.txt"
make_safetensors "$src/model.safetensors"

sharded=$tmp/sharded
mkdir -p "$sharded"
cp "$src/config.json" "$src/vocab.txt" "$sharded/"
make_safetensors "$sharded/model-00001-of-00002.safetensors"
make_safetensors "$sharded/model-00002-of-00002.safetensors"
cat >"$sharded/model.safetensors.index.json" <<'EOF'
{"metadata": {"total_size": 8}, "weight_map": {"pooler.dense.weight": "model-00002-of-00002.safetensors",
 "embeddings.word_embeddings.weight": "model-00001-of-00002.safetensors",
 "pooler.dense.bias": "model-00002-of-00002.safetensors"}}
EOF

# run NAME EXPECTED_RC ARGS...: runs fetch-model.sh, keeps stdout+stderr in $tmp/NAME.log, checks the status.
run() {
    local name=$1 want=$2 rc=0
    shift 2
    "$fetch" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || rc=$?
    if [ "$rc" -ne "$want" ]; then
        bad "$name" "exit $rc, expected $want; stderr: $(cat "$tmp/$name.err")"
        return 1
    fi
}
# one_line NAME WORD: stderr is exactly one line and contains WORD.
one_line() {
    local name=$1 word=$2 lines
    lines=$(wc -l <"$tmp/$name.err")
    if [ "$lines" -ne 1 ]; then bad "$name" "stderr has $lines lines: $(cat "$tmp/$name.err")"; return 1; fi
    if ! grep -qF -- "$word" "$tmp/$name.err"; then
        bad "$name" "stderr lacks '$word': $(cat "$tmp/$name.err")"
        return 1
    fi
}

if run help 0 --help && grep -q -- '--from DIR|URL' "$tmp/help.out"; then ok fetch_model_prints_help; fi

out=$tmp/out
if run copy 0 --from "$src" --out "$out" &&
    cmp -s "$src/model.safetensors" "$out/model.safetensors" && cmp -s "$src/vocab.txt" "$out/vocab.txt" &&
    grep -qx 'file model.safetensors' "$out/.fetch-complete" &&
    grep -q "^sha256 $(sha256sum <"$src/model.safetensors" | cut -d' ' -f1)  model.safetensors$" \
        "$out/.fetch-complete" &&
    [ -z "$(find "$out" -name '.fetch.*')" ]; then
    ok fetch_model_copies_local_dir_and_writes_marker_with_sha256
fi

if run again 0 --from "$src" --out "$out" && grep -q 'already holds' "$tmp/again.out"; then
    ok fetch_model_skips_a_complete_directory
fi
if run force 0 --from "$src" --out "$out" --force && grep -q -- '-> ' "$tmp/force.out"; then
    ok fetch_model_force_fetches_again
fi
if run other_revision 0 --from "$src" --out "$out" --revision v2 &&
    ! grep -q 'already holds' "$tmp/other_revision.out" &&
    grep -qx "source bert-base-uncased@v2 from $src" "$out/.fetch-complete"; then
    ok fetch_model_refetches_when_the_marker_names_another_revision
fi

if run sharded 0 --from "$sharded" --out "$tmp/out-sharded" &&
    [ -s "$tmp/out-sharded/model-00001-of-00002.safetensors" ] &&
    [ -s "$tmp/out-sharded/model-00002-of-00002.safetensors" ] &&
    [ -s "$tmp/out-sharded/model.safetensors.index.json" ] && [ ! -e "$tmp/out-sharded/model.safetensors" ]; then
    ok fetch_model_copies_sharded_checkpoint_named_by_index
fi

broken=$tmp/broken
mkdir -p "$broken"
cp "$src/config.json" "$src/model.safetensors" "$broken/"
if run missing 1 --from "$broken" --out "$tmp/out-missing" && one_line missing 'vocab.txt not found' &&
    [ ! -e "$tmp/out-missing/.fetch-complete" ] && [ -z "$(ls -A "$tmp/out-missing")" ]; then
    ok fetch_model_fails_on_missing_file_and_leaves_no_marker
fi
: >"$broken/vocab.txt"
if run empty 1 --from "$broken" --out "$tmp/out-empty" && one_line empty 'vocab.txt from'; then
    ok fetch_model_fails_on_empty_file
fi
cp "$src/vocab.txt" "$broken/vocab.txt"
printf 'version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 440473133\n' >"$broken/model.safetensors"
if run lfs 1 --from "$broken" --out "$tmp/out-lfs" && one_line lfs 'model.safetensors from'; then
    ok fetch_model_rejects_git_lfs_pointer_as_weights
fi
if run badname 1 --model '../etc' --from "$src" --out "$tmp/x" && one_line badname 'invalid --model'; then
    ok fetch_model_rejects_model_names_outside_the_hub_alphabet
fi

# HTTP mirror on loopback: python's http.server answers 404 for model.safetensors in the sharded tree, which
# sends fetch-model.sh to the index, as the hub does for sharded checkpoints.
serve() {
    local dir=$1 portfile=$2
    "$py" -c 'import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.log_message = lambda *a: None
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
open(sys.argv[2] + ".tmp", "w").write(str(srv.server_address[1]))
import os; os.rename(sys.argv[2] + ".tmp", sys.argv[2])
srv.timeout = 1
import time; end = time.time() + 120
while time.time() < end: srv.handle_request()' "$dir" "$portfile" </dev/null >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do [ -s "$portfile" ] && break; sleep 0.1; done
}
mirror=$tmp/mirror
mkdir -p "$mirror/single" "$mirror/sharded"
cp "$src"/* "$mirror/single/"
cp "$sharded"/* "$mirror/sharded/"
serve "$mirror" "$tmp/port"
port=$(cat "$tmp/port")
if run http 0 --from "http://127.0.0.1:$port/single" --out "$tmp/out-http" &&
    cmp -s "$src/model.safetensors" "$tmp/out-http/model.safetensors"; then
    ok fetch_model_downloads_from_mirror_url
fi
if run http_sharded 0 --from "http://127.0.0.1:$port/sharded/" --out "$tmp/out-http-sharded" &&
    [ -s "$tmp/out-http-sharded/model-00002-of-00002.safetensors" ]; then
    ok fetch_model_falls_back_to_sharded_index_on_404
fi
if HF_ENDPOINT="http://127.0.0.1:$port" run hub_404 1 --model nosuch/model --out "$tmp/out-404" &&
    one_line hub_404 'config.json not found'; then
    ok fetch_model_names_the_missing_file_on_404
fi

# No network: a closed loopback port fails at once; a server that accepts and never answers fails after
# FETCH_MAX_TIME. Neither may hang.
closed=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start=$SECONDS
if HF_ENDPOINT="http://127.0.0.1:$closed" run refused 1 --out "$tmp/out-refused" &&
    one_line refused 'cannot download' &&
    [ $((SECONDS - start)) -lt 15 ]; then
    ok fetch_model_fails_fast_with_one_line_without_network
fi
"$py" -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
open(sys.argv[1], "w").write(str(s.getsockname()[1])); time.sleep(60)' "$tmp/silent" </dev/null >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/silent" ] && break; sleep 0.1; done
start=$SECONDS
silent_port=$(cat "$tmp/silent")
if FETCH_MAX_TIME=2 FETCH_RETRIES=0 HF_ENDPOINT="http://127.0.0.1:$silent_port" run silent 1 --out "$tmp/out-silent" &&
    one_line silent 'timed out' && [ $((SECONDS - start)) -lt 15 ]; then
    ok fetch_model_gives_up_on_a_silent_server_after_max_time
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
