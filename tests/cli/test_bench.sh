#!/usr/bin/env bash
# `bertstream bench` on a model of shapes BERT-base never has: intermediate smaller than three
# times hidden (the cblas_sgemm reference once wrote past its buffers there and crashed in free())
# and a 50-word vocabulary (the random ids must stay inside it). Also: one JSON line with the
# fields docs/performance.md quotes, and one-line errors for bad arguments.
# Usage: bash tests/cli/test_bench.sh BIN
set -uo pipefail

bin=${1:-${BERTSTREAM_BIN:-}}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "test_bench: usage: test_bench.sh BIN" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }

# hidden 32, 2 heads, 1 layer, intermediate 48 (< 3 x 32), vocabulary 50, 64 positions
"$py" - "$tmp/m" <<'EOF'
import json, os, random, struct, sys
out = sys.argv[1]
os.makedirs(out)
C, L, H, I, V, P = 32, 1, 2, 48, 50, 64
json.dump({"model_type": "bert", "hidden_size": C, "num_hidden_layers": L, "num_attention_heads": H,
           "intermediate_size": I, "vocab_size": V, "max_position_embeddings": P, "type_vocab_size": 2,
           "layer_norm_eps": 1e-12, "hidden_act": "gelu"}, open(os.path.join(out, "config.json"), "w"))
t = [("embeddings.word_embeddings.weight", [V, C]), ("embeddings.position_embeddings.weight", [P, C]),
     ("embeddings.token_type_embeddings.weight", [2, C]), ("embeddings.LayerNorm.weight", [C]),
     ("embeddings.LayerNorm.bias", [C])]
for l in range(L):
    p = f"encoder.layer.{l}."
    for q in ("query", "key", "value"):
        t += [(p + f"attention.self.{q}.weight", [C, C]), (p + f"attention.self.{q}.bias", [C])]
    t += [(p + "attention.output.dense.weight", [C, C]), (p + "attention.output.dense.bias", [C]),
          (p + "attention.output.LayerNorm.weight", [C]), (p + "attention.output.LayerNorm.bias", [C]),
          (p + "intermediate.dense.weight", [I, C]), (p + "intermediate.dense.bias", [I]),
          (p + "output.dense.weight", [C, I]), (p + "output.dense.bias", [C]),
          (p + "output.LayerNorm.weight", [C]), (p + "output.LayerNorm.bias", [C])]
t += [("pooler.dense.weight", [C, C]), ("pooler.dense.bias", [C])]
rng = random.Random(7)
header, blobs, off = {}, [], 0
for name, shape in t:
    n = 1
    for d in shape:
        n *= d
    vals = [1.0] * n if name.endswith("LayerNorm.weight") else [rng.gauss(0, 0.05) for _ in range(n)]
    b = struct.pack(f"<{n}f", *vals)
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(os.path.join(out, "model.safetensors"), "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
EOF

out=$("$bin" bench --model "$tmp/m" --device cpu --batch 8 --seq-len 40 --lengths uniform:3:40 --seconds 0.2 2>"$tmp/err")
rc=$?
if [ $rc -eq 0 ]; then ok "bench runs a model with intermediate < 3 x hidden and a 50-word vocabulary"; else
    bad "bench exit $rc: $(tail -3 "$tmp/err")"
fi
fields=$(printf '%s\n' "$out" | "$py" -c '
import json, sys
r = json.loads(sys.stdin.readline())
need = ["device", "engine", "precision", "batch", "seq_len", "lengths", "tokens_per_batch", "iterations",
        "seq_per_s", "ms_per_batch", "tokens_per_s", "gflops", "gflop_per_batch", "sgemm_gflops", "ratio_to_sgemm",
        "last_layer", "head_ms_per_batch"]
missing = [k for k in need if k not in r]
print("missing " + ",".join(missing) if missing else "%s %d %d %s %s %s %s %s" % (
    r["device"], r["batch"], r["seq_len"], r["lengths"], r["seq_per_s"] > 0, r["sgemm_gflops"] > 0, r["last_layer"],
    0 < r["head_ms_per_batch"] < r["ms_per_batch"]))
' 2>&1)
if [ "$fields" == "cpu 8 40 uniform:3:40 True True cls-rows True" ]; then ok "one JSON line with the documented fields"; else
    bad "bench JSON: $fields"
fi

err=$("$bin" bench --model "$tmp/m" --device cpu --seq-len 65 --seconds 0.1 2>&1 >/dev/null)
rc=$?
if [ $rc -ne 0 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] &&
    [[ $err == *"exceeds the model's max_position_embeddings 64"* ]]; then
    ok "--seq-len past the model's positions is a one-line error"
else
    bad "--seq-len 65: rc $rc: $err"
fi

# BERTSTREAM_LAST_LAYER=full: every row through the last layer, and the JSON says so; the FLOPs per
# batch it reports (gflop_per_batch; gflops x ms_per_batch, rounded to 0.1 GFLOP/s, was too coarse
# on a loaded machine) are those of the full pass, more than the CLS rows' (the same batch: 8 x 40
# tokens, 1 layer)
args=(bench --model "$tmp/m" --device cpu --batch 8 --seq-len 40 --seconds 0.2)
out_cls=$("$bin" "${args[@]}" 2>"$tmp/err")
out_full=$(BERTSTREAM_LAST_LAYER=full "$bin" "${args[@]}" 2>>"$tmp/err")
rc=$?
fields=$(printf '%s\n%s\n' "$out_cls" "$out_full" | "$py" -c '
import json, sys
c, f = json.loads(sys.stdin.readline()), json.loads(sys.stdin.readline())
work = lambda r: r["gflop_per_batch"]
print(c["last_layer"], f["last_layer"], work(f) > 1.5 * work(c))
' 2>&1)
if [ $rc -eq 0 ] && [ "$fields" == "cls-rows all-rows True" ]; then
    ok "BERTSTREAM_LAST_LAYER=full runs every row, says so and counts that work"
else
    bad "BERTSTREAM_LAST_LAYER=full: rc $rc: $fields $(tail -1 "$tmp/err")"
fi

# --inflight 2: the engine_submit/engine_wait loop (the CPU engine computes in submit: same work),
# reported as such, at least 3 batches counted after the first completion
out=$("$bin" bench --model "$tmp/m" --device cpu --batch 4 --seq-len 16 --seconds 0.2 --inflight 2 2>"$tmp/err")
rc=$?
fields=$(printf '%s\n' "$out" | "$py" -c '
import json, sys
r = json.loads(sys.stdin.readline())
print(r["inflight"], r["iterations"] >= 3, r["seq_per_s"] > 0, abs(r["seq_per_s"] * r["ms_per_batch"] / 1000 - r["batch"]) < 0.01 * r["batch"])
' 2>&1)
if [ $rc -eq 0 ] && [ "$fields" == "2 True True True" ]; then ok "--inflight 2 runs two slots and says so"; else
    bad "--inflight 2: rc $rc: $fields $(tail -1 "$tmp/err")"
fi
err=$("$bin" bench --model "$tmp/m" --device cpu --inflight 3 2>&1 >/dev/null)
rc=$?
if [ $rc -eq 2 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && [[ $err == *"--inflight: expected an integer in 1..2, got '3'"* ]]; then
    ok "--inflight 3 is a one-line usage error"
else
    bad "--inflight 3: rc $rc: $err"
fi

# --skip (timing the CUDA engine's parts, tests/cli/test_cuda_cli_on_emu.sh) is refused on the CPU in
# one line, a part it does not know is a usage error, and the JSON says what was skipped
err=$("$bin" bench --model "$tmp/m" --device cpu --seq-len 16 --skip gemm --seconds 0.1 2>&1 >/dev/null)
rc=$?
if [ $rc -eq 1 ] && [ "$err" == "bertstream bench: --skip times the CUDA engine's parts: it needs a CUDA device (--device cpu)" ]; then
    ok "--skip on the CPU is refused in one line"
else
    bad "--skip on the CPU: rc $rc: $err"
fi
err=$("$bin" bench --model "$tmp/m" --device cpu --skip gemm,softmax 2>&1 >/dev/null)
rc=$?
if [ $rc -eq 2 ] && [ "$err" == "bertstream bench: --skip: unknown part 'softmax' in 'gemm,softmax' (gemm, attention, layernorm, other, or none)" ]; then
    ok "--skip with an unknown part is a one-line usage error"
else
    bad "--skip gemm,softmax: rc $rc: $err"
fi
skip=$("$bin" bench --model "$tmp/m" --device cpu --batch 2 --seq-len 8 --seconds 0.05 --skip none 2>/dev/null |
    "$py" -c 'import json, sys; print(json.loads(sys.stdin.readline())["skip"])' 2>&1)
if [ "$skip" == "none" ]; then ok "--skip none runs everything and says so"; else bad "--skip none: $skip"; fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
