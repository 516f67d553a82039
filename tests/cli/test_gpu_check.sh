#!/usr/bin/env bash
# scripts/gpu-check.sh's own logic, where no GPU exists: it runs only on a lent GPU machine, whose
# minutes are few, so a slip in the script would cost a whole device session. Here it runs on a
# stub bundle: a `bertstream` that answers `init-model` and prints bench JSON lines (seq/s chosen
# per precision and setting, so every number of the report is known), one passing test program
# and one that fails, no ncu. Checked: the test verdicts, the table rows, the targets block, the
# variants against the default with their percentages (a setting of options and variables against
# the options alone), the profile's slot and its budget extension, a failed bench point counted as
# a failure, the time budget skipping points, our GEMM's failed test skipping its forms, and the exit status.
# Usage: bash tests/cli/test_gpu_check.sh [BIN]   (BIN unused)
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
has() { # LABEL FILE FIXED-STRING
    if grep -qF -- "$3" "$2"; then ok "$1"; else bad "$1 (no line with: $3)"; fi
}
matches() { # LABEL FILE EXTENDED-REGEX
    if grep -qE -- "$3" "$2"; then ok "$1"; else bad "$1 (no line matching: $3)"; fi
}
is() { # LABEL GOT WANT
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1 (got $2, want $3)"; fi
}

# the stub bundle
B=$tmp/bundle
mkdir -p "$B/tests"
printf '#!/bin/sh\nexit 0\n' >"$B/unpack.sh"
cat >"$B/bertstream" <<'EOF'
#!/usr/bin/env bash
# stub: init-model --out DIR; bench ... --precision P --batch N --seq-len L --lengths X [--inflight K] [--skip S]
cmd=$1; shift
if [ "$cmd" = init-model ]; then
    while [ $# -gt 0 ]; do [ "$1" = --out ] && mkdir -p "$2"; shift; done
    exit 0
fi
[ "$cmd" = bench ] || exit 2
prec="" batch="" len="" inflight=1 skip=none
while [ $# -gt 0 ]; do
    case $1 in
        --precision) prec=$2; shift ;;
        --batch) batch=$2; shift ;;
        --seq-len) len=$2; shift ;;
        --inflight) inflight=$2; shift ;;
        --skip) skip=$2; shift ;;
    esac
    shift
done
# seq/s: 10000 for bf16, 20000 for fp8, 1000 for fp32; each knob moves it by a known amount
sps=10000
[ "$prec" = fp8 ] && sps=20000
[ "$prec" = fp32 ] && sps=1000
[ "${BERTSTREAM_RESIDUAL:-}" = layernorm ] && sps=$((sps * 95 / 100))
[ "${BERTSTREAM_LAST_LAYER:-}" = full ] && sps=$((sps * 90 / 100))
[ "${BERTSTREAM_FP8_QKV:-}" = bf16 ] && sps=$((sps * 92 / 100))
[ "$inflight" = 2 ] && sps=$((sps * 110 / 100))
[ "$inflight" = 2 ] && [ "${BERTSTREAM_LANES:-2}" = 1 ] && sps=$((sps * 80 / 100))
[ "${BERTSTREAM_SPLIT:-}" = on ] && sps=$((sps * 105 / 100))
[ "${BERTSTREAM_GEMM_LN:-}" = fused ] && sps=$((sps * 112 / 100))
[ "${BERTSTREAM_GEMM_KERNEL:-}" = sm90 ] && sps=$((sps * 120 / 100))
[ "${BERTSTREAM_GEMM_KERNEL:-}" = sm90-coop ] && sps=$((sps * 125 / 100))
case $skip in
    attention,layernorm,other) sps=$((sps * 130 / 100)) ;;
    gemm) sps=$((sps * 3)) ;;
    none) ;;
    *) sps=$((sps * 105 / 100)) ;;
esac
if [ "${BERTSTREAM_ATTENTION:-}" = wmma ]; then echo "stub: wmma refused" >&2; exit 1; fi
ms=$(awk -v b="$batch" -v s="$sps" 'BEGIN { printf "%.3f", 1000 * b / s }')
echo "engine ready"
printf '{"device": "cuda", "engine": "cuda:0 STUB %s attention=kernel-mma gelu=tanh(cublaslt) residual=%s graphs=on mem=%dMiB", "last_layer": "cls-rows", "seq_per_s": %d, "ms_per_batch": %s, "tokens_per_s": %d}\n' \
    "$prec" "${BERTSTREAM_RESIDUAL:-gemm}" 796 "$sps" "$ms" $((sps * len))
EOF
chmod +x "$B/bertstream"
printf '#!/bin/sh\necho "stub test"\nexit 0\n' >"$B/tests/test_good"
printf '#!/bin/sh\necho "stub test failing"\nexit 1\n' >"$B/tests/test_bad"
# the parity test: gpu-check also runs it with BERTSTREAM_GEMM_LN=fused and BERTSTREAM_GEMM_KERNEL=sm90
# and counts the engines that used each
cat >"$B/tests/test_engine_cuda_parity" <<'EOF'
#!/bin/sh
if [ "${BERTSTREAM_GEMM_LN:-}" = fused ]; then
    echo 'level=info msg="the attention-output and FFN-down GEMMs run with the LayerNorm in their epilogue"'
    echo 'level=info msg="the attention-output and FFN-down GEMMs run with the LayerNorm in their epilogue"'
    echo 'level=warn msg="BERTSTREAM_GEMM_LN=fused: not used, cuBLASLt and the LayerNorm kernel run" reason="stub"'
fi
if [ "${BERTSTREAM_GEMM_KERNEL:-}" = sm90 ]; then
    for i in 1 2 3; do echo 'level=info msg="our Hopper GEMM runs in place of cuBLASLt" kernel=gemm_sm90 form=sm90 gemms=qkv'; done
    echo 'level=warn msg="BERTSTREAM_GEMM_KERNEL: cuBLASLt runs this GEMM" kernel=sm90 gemm=qkv reason="no variant for the qkv GEMM (576 x 192, bf16 in)"'
    echo 'level=warn msg="BERTSTREAM_GEMM_KERNEL: not used, cuBLASLt runs the GEMMs" kernel=sm90 reason="stub"'
fi
if [ "${BERTSTREAM_GEMM_KERNEL:-}" = sm90-coop ]; then
    echo 'level=info msg="our Hopper GEMM runs in place of cuBLASLt" kernel=gemm_sm90 form=sm90-coop gemms=ff1'
fi
echo "12 checks, 0 failed"
EOF
chmod +x "$B/tests/test_good" "$B/tests/test_bad" "$B/tests/test_engine_cuda_parity"

# no ncu and no nvidia-smi on the path this script sees (the profile must fail without counting)
bindir=$tmp/bin
mkdir -p "$bindir"
for t in bash sh env awk sed grep mktemp date tee cat rm mkdir sleep timeout ldd tail head sort printf \
    basename dirname kill python3 gzip; do
    p=$(command -v "$t") && ln -sf "$p" "$bindir/$t"
done

run() { # OUTFILE [VAR=VALUE...]: gpu-check on the stub bundle with a clean PATH
    local out=$1
    shift
    env -i PATH="$bindir" HOME="$tmp" OUT="$tmp/out" GPU_CHECK_WORKER=0 "$@" \
        bash "$SRC/scripts/gpu-check.sh" "$B" >"$out" 2>&1
}

run "$tmp/r1.txt" GPU_CHECK_PROFILE=1
rc=$?
is "a failing test program makes the exit status 1" "$rc" 1
has "the passing test program reported" "$tmp/r1.txt" "PASS test_good"
has "the failing test program reported" "$tmp/r1.txt" "FAIL test_bad (exit 1"
has "the bf16 256 x 128 target row" "$tmp/r1.txt" "bf16     256   128 fixed             10000.0"
has "a refused variant is a FAILED row" "$tmp/r1.txt" "[BERTSTREAM_ATTENTION=wmma] FAILED: stub: wmma refused"
has "the bf16 target line against 28000" "$tmp/r1.txt" "bf16 256 x 128, seq/s"
matches "the target says NOT met for 10000 seq/s" "$tmp/r1.txt" \
    "^bf16 256 x 128, seq/s +10000\.000 +\(target >= 28000 seq/s\) +NOT met$"
matches "the memory target at two in flight (no nvidia-smi: peak 0)" "$tmp/r1.txt" \
    "^the same, 2 in flight \(two lanes\) +0\.000 +\(target <= 2048 MiB\) +met$"
matches "the latency target says met for 1.6 ms" "$tmp/r1.txt" "^bf16 16 x 128, ms per batch +1\.600 +\(target <= 3 ms\) +met$"
matches "variants: bf16 residual=layernorm at -5 %" "$tmp/r1.txt" \
    "^bf16/256/128/fixed +\[BERTSTREAM_RESIDUAL=layernorm\] +9500\.0 vs +10000\.0 +\(-5\.0%\)$"
matches "variants: fp8 last layer full at -10 %" "$tmp/r1.txt" \
    "^fp8/256/128/fixed +\[BERTSTREAM_LAST_LAYER=full\] +18000\.0 vs +20000\.0 +\(-10\.0%\)$"
matches "variants: fp8 QKV in bf16 at -8 %" "$tmp/r1.txt" \
    "^fp8/256/128/fixed +\[BERTSTREAM_FP8_QKV=bf16\] +18400\.0 vs +20000\.0 +\(-8\.0%\)$"
matches "variants: bf16 two in flight at +10 %" "$tmp/r1.txt" "^bf16/256/128/fixed +\[--inflight 2\] +11000\.0 vs +10000\.0 +\(\+10\.0%\)$"
matches "variants: fp8 one lane against two in flight at -20 %" "$tmp/r1.txt" \
    "^fp8/256/128/fixed/--inflight 2 +\[--inflight 2 BERTSTREAM_LANES=1\] +17600\.0 vs +22000\.0 +\(-20\.0%\)$"
matches "variants: bf16 split at +5 %" "$tmp/r1.txt" \
    "^bf16/256/128/fixed +\[BERTSTREAM_SPLIT=on\] +10500\.0 vs +10000\.0 +\(\+5\.0%\)$"
matches "variants: bf16 16 x 128 split at +5 %" "$tmp/r1.txt" \
    "^bf16/16/128/fixed +\[BERTSTREAM_SPLIT=on\] +10500\.0 vs +10000\.0 +\(\+5\.0%\)$"
matches "variants: bf16 fused GEMM + LayerNorm at +12 %" "$tmp/r1.txt" \
    "^bf16/256/128/fixed +\[BERTSTREAM_GEMM_LN=fused\] +11200\.0 vs +10000\.0 +\(\+12\.0%\)$"
matches "variants: fp8 fused two in flight against two in flight" "$tmp/r1.txt" \
    "^fp8/256/128/fixed/--inflight 2 +\[--inflight 2 BERTSTREAM_GEMM_LN=fused\] +24640\.0 vs +22000\.0 +\(\+12\.0%\)$"
matches "the parity test with the fused GEMM + LayerNorm, engines counted" "$tmp/r1.txt" \
    "^PASS test_engine_cuda_parity with BERTSTREAM_GEMM_LN=fused \([0-9]+s\): fused in 2 engines, refused in 1$"
matches "the parity test with our GEMM, engines and refusals counted" "$tmp/r1.txt" \
    "^PASS test_engine_cuda_parity with BERTSTREAM_GEMM_KERNEL=sm90 \([0-9]+s\): sm90 in 3 engines, refused in 2$"
matches "the refusals' reasons counted, shapes left out" "$tmp/r1.txt" '^ +1 reason="no variant for the qkv GEMM"$'
matches "each reason once" "$tmp/r1.txt" '^ +1 reason="stub"$'
matches "variants: bf16 with our GEMM at +20 %" "$tmp/r1.txt" \
    "^bf16/256/128/fixed +\[BERTSTREAM_GEMM_KERNEL=sm90\] +12000\.0 vs +10000\.0 +\(\+20\.0%\)$"
matches "variants: our GEMMs alone against cuBLASLt's alone (a --skip with a variable: against the same --skip)" \
    "$tmp/r1.txt" \
    "^fp8/256/128/fixed/--skip attention,layernorm,other +\[--skip attention,layernorm,other BERTSTREAM_GEMM_KERNEL=sm90\] +31200\.0 vs +26000\.0 +\(\+20\.0%\)$"
matches "the parity test with the cooperative form, nothing refused" "$tmp/r1.txt" \
    "^PASS test_engine_cuda_parity with BERTSTREAM_GEMM_KERNEL=sm90-coop \([0-9]+s\): sm90-coop in 1 engines, refused in 0$"
matches "variants: fp8 with the cooperative form at +25 %" "$tmp/r1.txt" \
    "^fp8/256/128/fixed +\[BERTSTREAM_GEMM_KERNEL=sm90-coop\] +25000\.0 vs +20000\.0 +\(\+25\.0%\)$"
has "the cooperative form's own targets block" "$tmp/r1.txt" "== with our GEMM (BERTSTREAM_GEMM_KERNEL=sm90-coop), against the same targets"
matches "the cooperative form's GEMMs alone against the fp8 target" "$tmp/r1.txt" \
    "^fp8 256 x 128, its GEMMs alone, seq/s +32500\.000 +\(target >= 40000 seq/s\) +NOT met$"
matches "our GEMMs alone against the bf16 target" "$tmp/r1.txt" \
    "^bf16 256 x 128, its GEMMs alone, seq/s +15600\.000 +\(target >= 28000 seq/s\) +NOT met$"
matches "our GEMM two in flight against the fp8 target (after its whole-pass line)" "$tmp/r1.txt" \
    "^the same, 2 in flight +26400\.000 +\(target >= 40000 seq/s\) +NOT met$"
matches "the GEMMs alone against the bf16 target" "$tmp/r1.txt" \
    "^bf16 256 x 128, GEMMs alone, seq/s +13000\.000 +\(target >= 28000 seq/s\) +NOT met$"
matches "the GEMMs alone at two in flight against the fp8 target" "$tmp/r1.txt" \
    "^the same, 2 in flight +28600\.000 +\(target >= 40000 seq/s\) +NOT met$"
matches "variants: the GEMMs alone at two in flight against two in flight" "$tmp/r1.txt" \
    "^bf16/256/128/fixed/--inflight 2 +\[--inflight 2 --skip attention,layernorm,other\] +14300\.0 vs +11000\.0 +\(\+30\.0%\)$"
matches "variants: everything but the GEMMs against the default" "$tmp/r1.txt" \
    "^fp8/256/128/fixed +\[--skip gemm\] +60000\.0 vs +20000\.0 +\(\+200\.0%\)$"
has "an option and a variable reach the stub together" "$tmp/r1.txt" "[--inflight 2 BERTSTREAM_LANES=1] attention="
if grep -q "BERTSTREAM_ATTENTION=wmma\] .* vs " "$tmp/r1.txt"; then bad "a failed variant has no percentage"; else
    ok "a failed variant has no percentage"
fi
has "the profile ran after the variants and failed without counting" "$tmp/r1.txt" "gpu-profile failed (not counted)"
has "the profile's time extends the budget" "$tmp/r1.txt" "the bench budget moves to"
order=$(awk '/^== profile/ && !p { p = NR } /^== bench, the rest of the grid/ { g = NR } END { print (p && g && p < g) }' "$tmp/r1.txt")
is "the profile comes before the grid" "$order" 1
has "the report file" "$tmp/out/gpu-check.txt" "== results"
has "failures counted: the test and the refused variant points" "$tmp/r1.txt" "gpu-check: 3 failure(s)"

# a budget of 0 s: the targets and every other point are skipped, no bench runs, nothing fails but the test
rm -f "$B/tests/test_bad"
run "$tmp/r2.txt" GPU_CHECK_BUDGET_S=0
rc=$?
is "all passed: exit status 0" "$rc" 0
has "skipped points are counted" "$tmp/r2.txt" "bench point(s) skipped for the time budget (GPU_CHECK_BUDGET_S=0)"
has "a skipped target is not measured" "$tmp/r2.txt" "(target >= 28000 seq/s)  not measured"
has "all passed" "$tmp/r2.txt" "gpu-check: all passed"

# our GEMM's own test fails: its forms' parity reruns and bench points are skipped, not run (a
# hanging kernel would spend each one's timeout); the test is the one failure
printf '#!/bin/sh\necho "stub: gemm_sm90 wrong"\nexit 1\n' >"$B/tests/test_gemm_sm90"
chmod +x "$B/tests/test_gemm_sm90"
run "$tmp/r3.txt"
rc=$?
is "a failing test_gemm_sm90 makes the exit status 1" "$rc" 1
has "the failing GEMM test reported" "$tmp/r3.txt" "FAIL test_gemm_sm90 (exit 1"
has "its parity rerun skipped" "$tmp/r3.txt" "SKIP test_engine_cuda_parity with BERTSTREAM_GEMM_KERNEL=sm90: test_gemm_sm90 failed"
has "the cooperative form's rerun skipped" "$tmp/r3.txt" \
    "SKIP test_engine_cuda_parity with BERTSTREAM_GEMM_KERNEL=sm90-coop: test_gemm_sm90 failed"
has "the fused GEMM + LayerNorm rerun still runs" "$tmp/r3.txt" "PASS test_engine_cuda_parity with BERTSTREAM_GEMM_LN=fused"
has "its bench points skipped with the reason" "$tmp/r3.txt" "[BERTSTREAM_GEMM_KERNEL=sm90-coop] skipped: test_gemm_sm90 failed"
if grep -q "BERTSTREAM_GEMM_KERNEL=sm90.* vs " "$tmp/r3.txt"; then bad "no percentage for a skipped form"; else
    ok "no percentage for a skipped form"
fi
has "the default's points still measured" "$tmp/r3.txt" "bf16     256   128 fixed             10000.0"
has "failures: the test and the stub's two refused wmma points, no form point" "$tmp/r3.txt" "gpu-check: 3 failure(s)"

# GPU_CHECK_FOCUS=gemm: our GEMM's test alone, its parity reruns, its points and cuBLASLt's beside them
printf '#!/bin/sh\nexit 0\n' >"$B/tests/test_gemm_sm90"
run "$tmp/r4.txt" GPU_CHECK_FOCUS=gemm
rc=$?
is "focus: exit status 0" "$rc" 0
has "focus: our GEMM's test runs" "$tmp/r4.txt" "PASS test_gemm_sm90"
if grep -q "test_good\|GEMM_LN=fused\|BERTSTREAM_SPLIT\|fp32 " "$tmp/r4.txt"; then bad "focus: nothing else runs"; else
    ok "focus: nothing else runs"
fi
matches "focus: the parity rerun with the cooperative form" "$tmp/r4.txt" \
    "^PASS test_engine_cuda_parity with BERTSTREAM_GEMM_KERNEL=sm90-coop "
matches "focus: our GEMMs alone against cuBLASLt's alone" "$tmp/r4.txt" \
    "^fp8/256/128/fixed/--skip attention,layernorm,other +\[--skip attention,layernorm,other BERTSTREAM_GEMM_KERNEL=sm90\] +31200\.0 vs +26000\.0"
matches "focus: 16 x 128 with our GEMM against cuBLASLt" "$tmp/r4.txt" "^bf16/16/128/fixed +\[BERTSTREAM_GEMM_KERNEL=sm90\] "
is "focus: bench points run (10 cuBLASLt: the grid adds fp8 16 x 128; 14 ours)" "$(grep -c '^{' "$tmp/r4.txt")" 24
has "focus: all passed" "$tmp/r4.txt" "gpu-check: all passed"

echo "test_gpu_check: $passed passed, $failed failed"
[ $failed -eq 0 ]
