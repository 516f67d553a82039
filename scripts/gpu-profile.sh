#!/usr/bin/env bash
# gpu-profile.sh [BUNDLE_DIR] [PRECISION] [BATCH] [SEQ_LEN]: where one BERT-base forward spends
# its GPU time, per kernel, with Nsight Compute (ncu) on a GPU host: runs `bertstream bench` eagerly
# (CUDA graphs off, so every kernel is its own launch), records gpu__time_duration of the
# kernels, cuts them into forwards (from one embedding kernel to the next), takes the longest
# complete one (the bench's batch: the engine's start-up self-checks run small forwards of their
# own first), and prints the total per kernel name, largest first. The clocks and caches are left
# as the bench has them (ncu --clock-control none --cache-control none), so the times are close to
# a bench forward's, kernel by kernel, without the gaps between launches; GPU_PROFILE_CLOCKS=base
# gives ncu's defaults instead (base clocks, caches flushed before each kernel: the profiles of
# 2026-11-26 in docs/performance.md, whose shares, not times, are what to read). Needs ncu (the GPU image
# has it); a bundle made by scripts/bundle.sh (unpacked by gpu-check.sh or its unpack.sh).
# Defaults: build/bundle, bf16, 256 x 128. Writes ${OUT:-.}/gpu-profile${GPU_PROFILE_TAG:+-TAG}.csv too.
# The engine's environment (BERTSTREAM_FP8_SCALES, ...) passes through.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUNDLE=${1:-$HERE/../build/bundle}
PREC=${2:-bf16}
BATCH=${3:-256}
LEN=${4:-128}
BUNDLE=$(cd "$BUNDLE" && pwd)
[ -x "$BUNDLE/bertstream" ] || sh "$BUNDLE/unpack.sh" || exit 2
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "gpu-profile: ncu not found" >&2; exit 2; }
OUTDIR=${OUT:-.}
CSV="$OUTDIR/gpu-profile${GPU_PROFILE_TAG:+-$GPU_PROFILE_TAG}.csv"
# the engine at start runs kernels of its own (weight upload, attention probes, two small forwards
# of the CLS-rows self-check, ~250 kernels), then the bench's forwards (~100 kernels each): skip
# nothing, take enough kernels for the start and two bench forwards, attribute by name
ctl=(--clock-control none --cache-control none)
[ "${GPU_PROFILE_CLOCKS:-}" = base ] && ctl=()
BERTSTREAM_CUDA_GRAPHS=0 timeout 120 "$NCU" "${ctl[@]}" --metrics gpu__time_duration.sum --csv --print-units base \
    -c "${GPU_PROFILE_KERNELS:-700}" "$BUNDLE/bertstream" bench --preset base --device cuda --precision "$PREC" \
    --batch "$BATCH" --seq-len "$LEN" --seconds 0.1 >"$CSV" 2>"$CSV.err"
rc=$?
[ $rc -eq 0 ] || { echo "gpu-profile: ncu exit $rc"; tail -5 "$CSV.err"; }
python3 - "$CSV" <<'EOF'
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))  # bench's own output lines come first: find the header
head = [i for i, r in enumerate(rows) if "Kernel Name" in r and "Metric Value" in r]
if not head:
    print("gpu-profile: no kernel rows"); sys.exit(0)
hdr = rows[head[0]]
ki, vi = hdr.index("Kernel Name"), hdr.index("Metric Value")
body = [r for r in rows[head[0] + 1:] if len(r) == len(hdr)]
def ns(r):
    try:
        return float(r[vi].replace(",", ""))
    except ValueError:
        return 0.0
# forwards: from one embedding kernel to the next; the longest complete one is the bench's batch
# (the self-checks' forwards at start are small); the last one may be cut by ncu's kernel count
firsts = [i for i, r in enumerate(body) if "embedding_layernorm" in r[ki]]
segs = [(firsts[j], firsts[j + 1]) for j in range(len(firsts) - 1)]
if segs:
    a, b = max(segs, key=lambda s: sum(ns(r) for r in body[s[0]:s[1]]))
    print(f"forward {segs.index((a, b)) + 1} of {len(segs)} complete ones ({b - a} kernels), the longest")
    body = body[a:b]
elif firsts:
    print("gpu-profile: no complete forward (raise GPU_PROFILE_KERNELS): the last one, cut short")
    body = body[firsts[-1]:]
tot, cnt = collections.Counter(), collections.Counter()
for r in body:
    try:
        v = float(r[vi].replace(",", ""))
    except ValueError:
        continue
    name = r[ki].split("(")[0][:90]
    tot[name] += v
    cnt[name] += 1
all_ns = sum(tot.values())
print(f"{'kernel':90s} {'calls':>6s} {'ms':>9s} {'share':>6s}")
for name, v in tot.most_common(30):
    print(f"{name:90s} {cnt[name]:6d} {v / 1e6:9.3f} {100 * v / all_ns:5.1f}%")
print(f"total {all_ns / 1e6:.3f} ms over {sum(cnt.values())} kernels")
EOF
