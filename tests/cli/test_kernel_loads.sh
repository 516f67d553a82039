#!/usr/bin/env bash
# The memory-bound kernels' 16-byte paths really load 16 bytes: compile kernels/layernorm.cu and
# kernels/convert.cu to PTX (sm_90) and check, per kernel, the width of its global loads. (They
# once unpacked through a __nv_bfloat162 pointer into the loaded uint4 and nvcc split every
# "16-byte" load into 4-byte ld.global.v2.u16: half the bandwidth, found only by reading the PTX.)
# Also the mma attention kernel: its global reads are cp.async of 16 bytes, its stores 16 bytes.
# Needs nvcc (skips, 77, without the CUDA toolkit). Usage: bash tests/cli/test_kernel_loads.sh [BIN]
set -uo pipefail

src=${BERTSTREAM_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
nvcc=${CUDACXX:-/usr/local/cuda/bin/nvcc}
command -v "$nvcc" >/dev/null 2>&1 || [ -x "$nvcc" ] || { echo "skip: no nvcc"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }

for f in layernorm convert attention_mma; do
    if ! "$nvcc" -std=c++17 -arch=sm_90 -ptx "$src/kernels/$f.cu" -o "$tmp/$f.ptx" 2>"$tmp/$f.err"; then
        bad "nvcc -ptx kernels/$f.cu: $(head -3 "$tmp/$f.err")"
    fi
done

# body NAME_PATTERN FILE: the PTX of the first .entry whose mangled name matches
body() { awk -v pat="$1" '$0 ~ /^\.visible \.entry/ && $0 ~ pat {on = 1} on {print} on && /^}/ {exit}' "$2"; }
# count OPCODE_REGEX TEXT
count() { grep -cE "^[[:space:]]*$1[[:space:]]" <<<"$2" || true; }

# kernel pattern, file, the 16-byte load opcode that must be there
check_vec() {
    local name=$1 pat=$2 file=$3 body16 narrow wide
    body16=$(body "$pat" "$tmp/$file.ptx")
    if [ -z "$body16" ]; then
        bad "$name: kernel not found in the PTX of kernels/$file.cu"
        return
    fi
    narrow=$(count 'ld\.global(\.nc)?\.(v2\.u16|u16|v2\.b16|b16)' "$body16")
    wide=$(count 'ld\.global(\.nc)?\.v4\.(u32|b32|f32)' "$body16")
    if [ "$narrow" -eq 0 ] && [ "$wide" -gt 0 ]; then
        ok "$name: $wide 16-byte global loads, no 2/4-byte ones"
    else
        bad "$name: $narrow narrow (16-bit) global loads, $wide 16-byte ones"
    fi
}

for t in __half __nv_bfloat16; do
    for nv in 1 3 4; do
        check_vec "residual_layernorm_vec_kernel<$t, $nv>" "residual_layernorm_vec_kernel.*${#t}${t}Li${nv}E" layernorm
        check_vec "embedding_layernorm_vec_kernel<$t, $nv>" "embedding_layernorm_vec_kernel.*${#t}${t}Li${nv}E" layernorm
    done
    check_vec "amax_vec_kernel<$t>" "amax_vec_kernel.*${#t}${t}" convert
    check_vec "quantize_fp8_vec_kernel<$t>" "quantize_fp8_vec_kernel.*${#t}${t}" convert
    check_vec "quantize_fp8_static_vec_kernel<$t>" "quantize_fp8_static_vec_kernel.*${#t}${t}" convert
done

for hs in 32 64 128; do
    b=$(body "attention_mma_kernel.*13__nv_bfloat16Li${hs}E" "$tmp/attention_mma.ptx")
    cp=$(count 'cp\.async\.cg\.shared\.global' "$b")
    narrow=$(count 'ld\.global(\.nc)?\.(v2\.u16|u16)' "$b")
    st=$(count 'st\.global\.v4\.(u32|b32)' "$b")
    if [ -n "$b" ] && [ "$cp" -gt 0 ] && [ "$narrow" -eq 0 ] && [ "$st" -gt 0 ]; then
        ok "attention_mma_kernel<bf16, $hs>: $cp cp.async (16 B), 16-byte stores, no narrow loads"
    else
        bad "attention_mma_kernel<bf16, $hs>: cp.async $cp, narrow loads $narrow, 16-byte stores $st"
    fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
