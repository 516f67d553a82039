#!/usr/bin/env bash
# `bertstream score` end to end: the golden tiny-bert and head give Hugging Face's probabilities
# for the 16 golden texts; bad lines give an error object in place; order is kept; features;
# --device cuda without a GPU and a broken model are one-line errors.
set -u
BIN=${1:?usage: test_score.sh BIN}
DATA=${BERTSTREAM_DATA:-$(dirname "$0")/../../../shared/data}
GOLD=$DATA/golden/tiny-bert
if [ ! -f "$GOLD/golden.safetensors" ] || [ ! -f "$DATA/bert-base-uncased/vocab.txt" ]; then
  if [ "${CI:-}" = true ]; then echo "FAIL: $GOLD missing (CI=true)"; exit 1; fi
  echo "SKIP: $GOLD missing"; exit 77
fi
PY=/usr/bin/python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

# 16 golden texts, with a bad line (not JSON) and a line without text in between
"$PY" - "$GOLD/golden_texts.json" >"$TMP/in.jsonl" <<'PYEOF'
import json, sys
texts = json.load(open(sys.argv[1]))
for i, t in enumerate(texts):
    print(json.dumps({"id": i, "text": t}))
    if i == 3:
        print("{not json")
    if i == 7:
        print(json.dumps({"id": "no-text"}))
PYEOF
"$BIN" score --model "$GOLD" --vocab "$DATA/bert-base-uncased/vocab.txt" --head "$GOLD/head.safetensors" \
  --device cpu --batch 5 <"$TMP/in.jsonl" >"$TMP/out.jsonl" 2>"$TMP/err.txt"
check "score exits 0" "[ $? -eq 0 ]"
check "one output line per input line" "[ \$(wc -l <'$TMP/out.jsonl') -eq 18 ]"

"$PY" - "$TMP/out.jsonl" "$GOLD/golden.safetensors" <<'PYEOF'
import json, struct, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
raw = open(sys.argv[2], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
def tensor(name):
    t = hdr[name]; b, e = t["data_offsets"]
    return struct.unpack(f"<{(e - b) // 4}f", raw[8 + n + b:8 + n + e])
prob, logit, ids, mask = tensor("head_prob"), tensor("head_logit"), tensor("input_ids"), None
L = hdr["attention_mask"]["shape"][1]
b, e = hdr["attention_mask"]["data_offsets"]
mask = struct.unpack(f"<{(e - b) // 4}i", raw[8 + n + b:8 + n + e])
bad = 0
errors = [r for r in rows if "error" in r]
assert [r["id"] for r in errors] == [None, "no-text"], errors
assert errors[0]["error"].startswith("invalid JSON"), errors[0]
scored = [r for r in rows if "error" not in r]
assert [r["id"] for r in scored] == list(range(16)), [r["id"] for r in scored]
for r in scored:
    i = r["id"]
    tokens = sum(mask[i * L:(i + 1) * L])
    if abs(r["probability"] - prob[i]) > 1e-5 or abs(r["logit"] - logit[i]) > 1e-5 or r["tokens"] != tokens:
        print(f"row {i}: got p={r['probability']} logit={r['logit']} tokens={r['tokens']}, "
              f"golden p={prob[i]} logit={logit[i]} tokens={tokens}")
        bad += 1
    want = "positive" if prob[i] > 0.5 else "negative"
    if r["label"] != want:
        print(f"row {i}: label {r['label']}, want {want}"); bad += 1
sys.exit(1 if bad else 0)
PYEOF
check "probabilities, logits, token counts and labels equal the golden head (1e-5)" "[ $? -eq 0 ]"
check "errors are in input order with their ids" "sed -n 5p '$TMP/out.jsonl' | grep -q '\"error\"'"

# features only (no head): the golden pooler_output within 1e-4 for the first text
head -n 1 "$TMP/in.jsonl" | "$BIN" score --model "$GOLD" --vocab "$DATA/bert-base-uncased/vocab.txt" \
  --device cpu --feature cls >"$TMP/feat.jsonl" 2>/dev/null
check "without a head: features only" "grep -q '\"features\"' '$TMP/feat.jsonl' && ! grep -q '\"label\"' '$TMP/feat.jsonl'"
"$PY" - "$TMP/feat.jsonl" "$GOLD/golden.safetensors" <<'PYEOF'
import json, struct, sys
f = json.loads(open(sys.argv[1]).readline())["features"]
raw = open(sys.argv[2], "rb").read(); n = struct.unpack("<Q", raw[:8])[0]; hdr = json.loads(raw[8:8 + n])
b, e = hdr["cls"]["data_offsets"]; C = hdr["cls"]["shape"][1]
ref = struct.unpack(f"<{C}f", raw[8 + n + b:8 + n + b + 4 * C])
d = max(abs(x - y) for x, y in zip(f, ref))
sys.exit(0 if len(f) == C and d <= 1e-4 else 1)
PYEOF
check "--feature cls equals the golden [CLS] hidden state (1e-4)" "[ $? -eq 0 ]"

# errors: one line on stderr, non-zero exit
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo '{"id":1,"text":"x"}' | "$BIN" score --model "$GOLD" --vocab "$DATA/bert-base-uncased/vocab.txt" \
    --device cuda >/dev/null 2>"$TMP/cuda.txt"
  rc=$?
  check "--device cuda without a GPU is a one-line error" "[ $rc -ne 0 ] && [ \$(wc -l <'$TMP/cuda.txt') -eq 1 ]"
fi
mkdir -p "$TMP/broken"
cp "$GOLD/config.json" "$TMP/broken/"
head -c 1000 "$GOLD/model-00002-of-00002.safetensors" >"$TMP/broken/model.safetensors"
echo '{"id":1,"text":"x"}' | "$BIN" score --model "$TMP/broken" --vocab "$DATA/bert-base-uncased/vocab.txt" \
  >/dev/null 2>"$TMP/broken.txt"
rc=$?
check "a truncated model file is a one-line error naming the file" \
  "[ $rc -ne 0 ] && [ \$(wc -l <'$TMP/broken.txt') -eq 1 ] && grep -q 'model.safetensors' '$TMP/broken.txt'"
"$BIN" score --model "$GOLD" --batch 0 </dev/null 2>"$TMP/usage.txt"
rc=$?
check "a bad flag value exits 2 naming the flag" "[ $rc -eq 2 ] && grep -q -- '--batch' '$TMP/usage.txt'"
"$BIN" score --help | grep -q "usage: bertstream score"
check "--help" "[ $? -eq 0 ]"
exit $fail
