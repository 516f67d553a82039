#!/usr/bin/env bash
# Fetches a Hugging Face BERT model directory (config.json, vocab.txt, and model.safetensors or a sharded
# model.safetensors.index.json + shards) into --out: from the Hugging Face hub or a mirror URL with curl, or from
# a local directory. The Kubernetes init Job runs it (deploy/k8s/base/model-fetch-job.yaml); so can developers.
#
# It never hangs: every download has a connect timeout and a total time limit, and any failure is one line on
# stderr and a non-zero exit. Files land in a staging directory first and move into --out only once all of them
# are verified; the marker file .fetch-complete is written last, so a reader that waits for the marker never
# sees a half-written model.
set -euo pipefail

prog=fetch-model
model=bert-base-uncased
revision=main
out=
from=
force=0

hf_endpoint=${HF_ENDPOINT:-https://huggingface.co}
connect_timeout=${FETCH_CONNECT_TIMEOUT:-10}
max_time=${FETCH_MAX_TIME:-1800}
retries=${FETCH_RETRIES:-2}

usage() {
    cat <<EOF
usage: scripts/fetch-model.sh [--model NAME] [--revision REV] [--out DIR] [--from DIR|URL] [--force]

Downloads config.json, vocab.txt and model.safetensors (or model.safetensors.index.json and its shards)
of a Hugging Face BERT model into DIR, verifies that each file exists and is non-empty, and writes
DIR/.fetch-complete last. Exits 0 at once when DIR already holds a complete copy of the same model
and revision (unless --force).

  --model NAME     Hugging Face model id (default bert-base-uncased; "org/name" works)
  --revision REV   branch, tag or commit on the hub (default main); pin a commit in production
  --out DIR        target directory (default models/<name>)
  --from DIR|URL   copy from a local directory, or download from a mirror whose files sit under URL/
  --force          fetch again even when DIR is complete

Environment: HF_TOKEN (gated or private models; sent as a header, never printed), HF_ENDPOINT
(default https://huggingface.co), FETCH_CONNECT_TIMEOUT (10 s), FETCH_MAX_TIME (1800 s per file),
FETCH_RETRIES (2).
EOF
}

die() {
    echo "$prog: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
    --model) model=${2:?--model needs a value}; shift 2 ;;
    --revision) revision=${2:?--revision needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --from) from=${2:?--from needs a value}; shift 2 ;;
    --force) force=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "$prog: unknown argument '$1' (--help lists the options)" >&2; exit 2 ;;
    esac
done

# The names end up in URLs and paths: refuse anything but the characters the hub itself allows.
[[ $model =~ ^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$ ]] || die "invalid --model '$model'"
[[ $revision =~ ^[A-Za-z0-9][A-Za-z0-9._/-]*$ ]] || die "invalid --revision '$revision'"
[[ $connect_timeout =~ ^[0-9]+$ && $max_time =~ ^[0-9]+$ && $retries =~ ^[0-9]+$ ]] ||
    die "FETCH_CONNECT_TIMEOUT, FETCH_MAX_TIME and FETCH_RETRIES must be whole numbers"
[ -n "$out" ] || out=models/${model##*/}

mode=hub
base=${hf_endpoint%/}/$model/resolve/$revision
if [ -n "$from" ]; then
    if [[ $from =~ ^https?:// ]]; then
        mode=url
        base=${from%/}
    else
        mode=dir
        [ -d "$from" ] || die "--from $from: no such directory"
        base=$from
    fi
fi
source_id="$model@$revision"
[ "$mode" = hub ] || source_id="$model@$revision from $from"

marker=$out/.fetch-complete

# Files a complete directory holds, read from the marker (one "file <name>" line each).
marker_files() {
    sed -n 's/^file //p' "$marker"
}

if [ "$force" -eq 0 ] && [ -f "$marker" ] && grep -qxF "source $source_id" "$marker"; then
    complete=1
    while IFS= read -r f; do
        [ -s "$out/$f" ] || complete=0
    done < <(marker_files)
    if [ "$complete" -eq 1 ]; then
        echo "$prog: $out already holds $source_id (--force fetches again)"
        exit 0
    fi
fi

command -v curl >/dev/null 2>&1 || [ "$mode" = dir ] || die "curl is not installed"
mkdir -p -- "$out" || die "cannot create $out"
stage=$(mktemp -d "$out/.fetch.XXXXXX") || die "cannot create a staging directory in $out"
trap 'rm -rf -- "$stage"' EXIT

# fetch NAME: copies or downloads NAME into the staging directory. Returns 0 on success, 3 when the source
# does not have the file (local: missing; HTTP: 404), and exits with one line for any other failure.
fetch() {
    local name=$1 dest=$stage/$1 err rc
    mkdir -p -- "$(dirname -- "$dest")"
    if [ "$mode" = dir ]; then
        [ -f "$base/$name" ] || return 3
        cp -- "$base/$name" "$dest" || die "cannot copy $base/$name"
        return 0
    fi
    local url=$base/$name
    local -a args=(--fail --silent --show-error --location --proto '=http,https'
        --connect-timeout "$connect_timeout" --max-time "$max_time"
        --retry "$retries" --retry-delay 2 --output "$dest" --write-out '%{http_code}')
    # The token goes in through stdin (-H @-), so it never shows in argv, ps or a log line.
    local code
    if [ -n "${HF_TOKEN:-}" ]; then
        code=$(printf 'Authorization: Bearer %s\n' "$HF_TOKEN" |
            curl "${args[@]}" -H @- "$url" 2>"$stage/.curl.err") && rc=0 || rc=$?
    else
        code=$(curl "${args[@]}" "$url" 2>"$stage/.curl.err" </dev/null) && rc=0 || rc=$?
    fi
    [ "$rc" -eq 0 ] && return 0
    [ "$rc" -eq 22 ] && [ "$code" = 404 ] && return 3
    err=$(tail -n 1 "$stage/.curl.err" | tr -d '\r')
    local hint=
    case "$rc" in
    6) hint=" (no network? copy a model with --from DIR)" ;;
    7) hint=" (nothing listens there; no network? copy a model with --from DIR)" ;;
    28) hint=" (timed out after FETCH_MAX_TIME=${max_time}s or FETCH_CONNECT_TIMEOUT=${connect_timeout}s)" ;;
    22) [ "$code" = 401 ] || [ "$code" = 403 ] && hint=" (gated or private model: set HF_TOKEN)" ;;
    esac
    die "cannot download $url: ${err:-curl exit $rc}$hint"
}

need() {
    local rc=0
    fetch "$1" || rc=$?
    [ "$rc" -eq 0 ] || die "$1 not found in $base"
}

files=(config.json vocab.txt)
need config.json
need vocab.txt
weights_rc=0
fetch model.safetensors || weights_rc=$?
if [ "$weights_rc" -eq 0 ]; then
    files+=(model.safetensors)
else
    # No single file: a sharded checkpoint names its shards in the index's weight_map.
    rc=0
    fetch model.safetensors.index.json || rc=$?
    [ "$rc" -eq 0 ] || die "neither model.safetensors nor model.safetensors.index.json found in $base"
    files+=(model.safetensors.index.json)
    mapfile -t shards < <(grep -o '"[^"/]*\.safetensors"' "$stage/model.safetensors.index.json" | tr -d '"' | sort -u)
    [ "${#shards[@]}" -gt 0 ] || die "model.safetensors.index.json names no .safetensors shard"
    for s in "${shards[@]}"; do
        need "$s"
        files+=("$s")
    done
fi

# Verify before anything reaches --out: non-empty, JSON where JSON is due, a BERT vocabulary, and
# safetensors files that start with their 8-byte header length and a JSON header (an HTML error page
# or a Git LFS pointer fails here rather than in the worker).
for f in "${files[@]}"; do
    [ -s "$stage/$f" ] || die "$f from $base is empty"
done
for f in config.json model.safetensors.index.json; do
    [ -f "$stage/$f" ] || continue
    [ "$(head -c 1 "$stage/$f")" = "{" ] || die "$f from $base is not a JSON object"
done
grep -qxF '[CLS]' "$stage/vocab.txt" || die "vocab.txt from $base has no [CLS] token"
for f in "${files[@]}"; do
    case "$f" in
    *.safetensors)
        if [ "$(wc -c <"$stage/$f")" -le 9 ] || [ "$(dd if="$stage/$f" bs=1 skip=8 count=1 2>/dev/null)" != "{" ]; then
            die "$f from $base is not a safetensors file"
        fi
        ;;
    esac
done

rm -f -- "$marker" "$stage/.curl.err"
{
    echo "source $source_id"
    echo "fetched $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    for f in "${files[@]}"; do
        echo "file $f"
    done
    (cd "$stage" && sha256sum -- "${files[@]}") | sed 's/^/sha256 /'
} >"$stage/.fetch-complete"
for f in "${files[@]}"; do
    mv -f -- "$stage/$f" "$out/$f"
done
mv -f -- "$stage/.fetch-complete" "$marker"

bytes=0
for f in "${files[@]}"; do
    bytes=$((bytes + $(wc -c <"$out/$f")))
done
echo "$prog: $source_id -> $out (${files[*]}; $(((bytes + 1048575) / 1048576)) MiB)"
