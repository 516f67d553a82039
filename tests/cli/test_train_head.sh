#!/usr/bin/env bash
# `bertstream train-head` end to end: the golden PyTorch run (tiny-bert trainer_golden) reproduced
# from the command line: 20 JSON step lines whose losses and the saved head match PyTorch within
# 1e-5; seeded runs repeat exactly; bad invocations fail with one line on stderr.
set -u
BIN=${1:?usage: test_train_head.sh BIN}
DATA=${BERTSTREAM_DATA:-$(dirname "$0")/../../../shared/data}
GOLDEN=$DATA/golden/tiny-bert/trainer_golden.safetensors
PY=/usr/bin/python3

if [ ! -f "$GOLDEN" ]; then
    if [ "${CI:-}" = "true" ]; then
        echo "FAIL: $GOLDEN is missing (CI=true: a missing file is a failure)" >&2
        exit 1
    fi
    echo "SKIP: $GOLDEN is missing (clone ../shared/data beside the repo)" >&2
    exit 77
fi

TMP=$(mktemp -d /tmp/bertstream-train-head-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() {
    echo "FAIL: $*" >&2
    fails=$((fails + 1))
}

# 1. The golden recipe: --init from the same file, 5 epochs x 4 batches, in order.
if ! "$BIN" train-head --features "$GOLDEN" --init "$GOLDEN" --epochs 5 --batch 4 --no-shuffle --lr 2e-4 \
    --out "$TMP/head.safetensors" >"$TMP/steps.jsonl" 2>"$TMP/stderr"; then
    fail "golden run exited non-zero: $(cat "$TMP/stderr")"
fi
lines=$(wc -l <"$TMP/steps.jsonl")
[ "$lines" -eq 20 ] || fail "expected 20 step lines, got $lines"

$PY - "$GOLDEN" "$TMP/steps.jsonl" "$TMP/head.safetensors" <<'EOF' || fails=$((fails + 1))
import json, struct, sys
import numpy as np

def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    hdr = json.loads(b[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (path, k, v["dtype"])
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=np.float32).reshape(v["shape"])
    return out

golden = load(sys.argv[1])
steps = [json.loads(line) for line in open(sys.argv[2])]
ok = True
if abs(steps[0]["loss"] - float(golden["step_loss"][0])) > 1e-5:
    print(f"FAIL: first loss {steps[0]['loss']} vs golden {golden['step_loss'][0]}", file=sys.stderr)
    ok = False
for i, s in enumerate(steps):
    if set(s) != {"epoch", "step", "loss"} or s["step"] != i + 1 or s["epoch"] != i // 4 + 1:
        print(f"FAIL: line {i + 1} is {s}", file=sys.stderr)
        ok = False
    elif abs(s["loss"] - float(golden["step_loss"][i])) > 1e-5:
        print(f"FAIL: step {i + 1} loss {s['loss']} vs golden {golden['step_loss'][i]}", file=sys.stderr)
        ok = False
head = load(sys.argv[3])
for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
    d = np.abs(head[k] - golden["final." + k]).max() if k in head and head[k].shape == golden["final." + k].shape else None
    if d is None or not d <= 1e-5:
        print(f"FAIL: saved {k} differs from PyTorch's final weights (max |diff| {d})", file=sys.stderr)
        ok = False
sys.exit(0 if ok else 1)
EOF

# 2. Seeded shuffling and the default init repeat exactly; another seed gives another run.
"$BIN" train-head --features "$GOLDEN" --epochs 2 --batch 5 --seed 7 --out "$TMP/a.safetensors" >"$TMP/a.jsonl" 2>/dev/null ||
    fail "seeded run exited non-zero"
"$BIN" train-head --features "$GOLDEN" --epochs 2 --batch 5 --seed 7 --out "$TMP/b.safetensors" >"$TMP/b.jsonl" 2>/dev/null ||
    fail "seeded rerun exited non-zero"
"$BIN" train-head --features "$GOLDEN" --epochs 2 --batch 5 --seed 8 --out "$TMP/c.safetensors" >"$TMP/c.jsonl" 2>/dev/null ||
    fail "second seed exited non-zero"
[ "$(wc -l <"$TMP/a.jsonl")" -eq 8 ] || fail "16 rows, batch 5, 2 epochs: expected 8 steps (partial batches kept)"
cmp -s "$TMP/a.jsonl" "$TMP/b.jsonl" || fail "same seed, different step losses"
cmp -s "$TMP/a.safetensors" "$TMP/b.safetensors" || fail "same seed, different saved heads"
cmp -s "$TMP/a.jsonl" "$TMP/c.jsonl" && fail "seeds 7 and 8 gave identical runs"

# 3. Bad invocations: non-zero exit, nothing on stdout, exactly one line on stderr.
bad() {
    local want=$1
    shift
    "$BIN" train-head "$@" >"$TMP/bad.out" 2>"$TMP/bad.err"
    local rc=$?
    [ "$rc" -ne 0 ] || fail "train-head $* exited 0"
    [ ! -s "$TMP/bad.out" ] || fail "train-head $* wrote to stdout"
    [ "$(wc -l <"$TMP/bad.err")" -eq 1 ] || fail "train-head $* printed $(wc -l <"$TMP/bad.err") lines on stderr"
    grep -q -- "$want" "$TMP/bad.err" || fail "train-head $*: stderr '$(cat "$TMP/bad.err")' lacks '$want'"
}
bad "--out" --features "$GOLDEN"
bad "--batch" --features "$GOLDEN" --batch 0 --out "$TMP/x.safetensors"
bad "--lr" --features "$GOLDEN" --lr abc --out "$TMP/x.safetensors"
bad "unknown argument '--frobnicate'" --features "$GOLDEN" --frobnicate --out "$TMP/x.safetensors"
bad "$TMP/missing.safetensors" --features "$TMP/missing.safetensors" --out "$TMP/x.safetensors"
bad "no tensor 'features'" --features "$DATA/golden/tiny-bert/head.safetensors" --out "$TMP/x.safetensors"
[ ! -e "$TMP/x.safetensors" ] || fail "a failed run left an output file"

"$BIN" train-head --help >"$TMP/help" 2>&1 || fail "--help exited non-zero"
grep -q -- "--no-shuffle" "$TMP/help" || fail "--help does not list --no-shuffle"

if [ "$fails" -ne 0 ]; then
    echo "$fails check(s) failed" >&2
    exit 1
fi
echo "ok: train-head matches the PyTorch golden run" >&2
