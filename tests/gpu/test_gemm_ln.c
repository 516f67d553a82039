/* The Hopper GEMM with the LayerNorm in its epilogue (kernels/gemm_ln.h) against its CPU twin:
 * out = LN(X W^T (x sa sb) + bias + res) * gamma + beta, the product and statistics in double. On
 * an H100/H200 every variant runs: bf16, f16, E4M3 in with bf16 out and the E4M3 copy; BN 256
 * clusters of 3 (BERT-base's 768) and 4 (1024), BN 128 clusters of 1 (128: the golden tiny model)
 * and 3 (384); the attention-output (K = C) and FFN-down (K = 4C) shapes; row counts that leave the
 * last 128-row tile partial, and one row; out over res and the E4M3 copy over X, as the engine
 * calls it. Every row and column is compared: within |y| / 256 + 1/256 for 16-bit inputs (fp32
 * accumulation against double, the output's rounding), |y| / 128 + 1/32 for E4M3 (Hopper's fp8
 * accumulation keeps fewer bits), where a wrong layout, a lost k-step or a row statistic summed
 * over part of the row is off by the size of y. The E4M3 copy must be exactly E4M3(y / scale) of
 * the stored y; the 16 rows after M must keep what they held. On any other GPU the kernel has no
 * code: the launch must fail with an error, not crash or write (the engine then keeps cuBLASLt).
 * Shape and pointer refusals are checked everywhere. (tests/emu runs the engine's use of it on
 * the CPU; tests/unit/test_wgmma_layout.c the layouts.) */
#include <cuda_runtime_api.h>
#include <math.h>
#include <string.h>

#include "common.h"
#include "convert.h"
#include "dtype.h"
#include "gemm_ln.h"
#include "cuda_test.h"
#include "test.h"

#define TAIL 16 /* rows after M that must stay as they were */

typedef struct {
    int M, K, C;
    bs_dtype in, act;
    int q8;       /* also the E4M3 copy */
    int q8_on_x;  /* ... written over X (K == C, E4M3 in: the attention-output GEMM) */
    int out_on_r; /* out written over res */
    int raw;      /* BS_GEMM_LN_DEBUG=gemm: the kernel stores v (gamma 1, beta 0): the GEMM part alone */
} shape;

/* one case: checks it, prints the worst difference and the first mismatches */
static int gemm_ln_bn(int C);
static void run_case(const shape *sh) {
    const int M = sh->M, K = sh->K, C = sh->C, e8 = sh->in == BS_DT_E4M3;
    const size_t as = bs_dtype_size(sh->act);
    bs_rng r = {(uint64_t)(M * 7919 + K * 31 + C + sh->in * 3 + sh->q8)};
    float *x = malloc(sizeof(float) * (size_t)M * K), *w = malloc(sizeof(float) * (size_t)C * K);
    float *res = malloc(sizeof(float) * (size_t)M * C), *bias = malloc(sizeof(float) * C);
    float *g = malloc(sizeof(float) * C), *b = malloc(sizeof(float) * C);
    float *got = malloc(sizeof(float) * (size_t)(M + TAIL) * C);
    uint8_t *qx = malloc((size_t)M * K), *qw = malloc((size_t)C * K), *qb = malloc((size_t)M * C);
    uint8_t *tailb = malloc((size_t)TAIL * C * as);
    CHECK(x && w && res && bias && g && b && got && qx && qw && qb && tailb);
    const float sx = e8 ? 1.0f / 16 : 1.0f, sw = e8 ? 1.0f / 256 : 1.0f, sq = 1.0f / 64;
    for (size_t i = 0; i < (size_t)M * K; i++) {
        if (e8) { /* random finite codes, |x| <= 7.5 */
            const uint64_t u = bs_rng_next(&r);
            qx[i] = bs_e4m3_random_code(u, 10);
            x[i] = bs_e4m3_decode(qx[i]) * sx;
        } else {
            x[i] = bs_round_dtype((float)(2 * bs_rng_uniform(&r) - 1), sh->in);
        }
    }
    const double wa = 2.0 / sqrt((double)K);
    for (size_t i = 0; i < (size_t)C * K; i++) {
        if (e8) {
            const uint64_t u = bs_rng_next(&r);
            qw[i] = bs_e4m3_random_code(u, 12);
            w[i] = bs_e4m3_decode(qw[i]) * sw;
        } else {
            w[i] = bs_round_dtype((float)(wa * (2 * bs_rng_uniform(&r) - 1)), sh->in);
        }
    }
    for (size_t i = 0; i < (size_t)M * C; i++) res[i] = bs_round_dtype((float)(4 * bs_rng_uniform(&r) - 2), sh->act);
    for (int c = 0; c < C; c++) {
        bias[c] = (float)(0.2 * bs_rng_uniform(&r) - 0.1);
        g[c] = sh->raw ? 1.0f : (float)(0.8 + 0.4 * bs_rng_uniform(&r));
        b[c] = sh->raw ? 0.0f : (float)(0.2 * bs_rng_uniform(&r) - 0.1);
    }

    /* device: X, W in their type; out with TAIL more rows set to 0x5a bytes */
    void *dx, *dw;
    if (e8) {
        CKC(cudaMalloc(&dx, (size_t)M * (K > C ? K : C) + 256));
        CKC(cudaMalloc(&dw, (size_t)C * K + 256));
        CKC(cudaMemcpy(dx, qx, (size_t)M * K, cudaMemcpyHostToDevice));
        CKC(cudaMemcpy(dw, qw, (size_t)C * K, cudaMemcpyHostToDevice));
    } else {
        dx = bs_gpu_test_to_device(x, (size_t)M * K, sh->in);
        dw = bs_gpu_test_to_device(w, (size_t)C * K, sh->in);
    }
    void *dres = bs_gpu_test_to_device(res, (size_t)M * C, sh->act), *dout = dres;
    if (!sh->out_on_r)
        CKC(cudaMalloc(&dout, (size_t)(M + TAIL) * C * as));
    else { /* res itself needs the TAIL rows */
        void *big = NULL;
        CKC(cudaMalloc(&big, (size_t)(M + TAIL) * C * as));
        CKC(cudaMemcpy(big, dres, (size_t)M * C * as, cudaMemcpyDeviceToDevice));
        cudaFree(dres);
        dres = dout = big;
    }
    CKC(cudaMemset((char *)dout + (size_t)M * C * as, 0x5a, (size_t)TAIL * C * as));
    if (!sh->out_on_r) CKC(cudaMemset(dout, 0, (size_t)M * C * as));
    float *dv = NULL; /* bias, gamma, beta, sa, sb, sq */
    CKC(cudaMalloc((void **)&dv, sizeof(float) * (3 * (size_t)C + 64)));
    const float scales[3] = {sw, sx, sq};
    CKC(cudaMemcpy(dv, bias, sizeof(float) * C, cudaMemcpyHostToDevice));
    CKC(cudaMemcpy(dv + C, g, sizeof(float) * C, cudaMemcpyHostToDevice));
    CKC(cudaMemcpy(dv + 2 * C, b, sizeof(float) * C, cudaMemcpyHostToDevice));
    CKC(cudaMemcpy(dv + 3 * C, scales, sizeof scales, cudaMemcpyHostToDevice));
    void *dq = NULL;
    if (sh->q8) {
        if (sh->q8_on_x)
            dq = dx;
        else
            CKC(cudaMalloc(&dq, (size_t)M * C + 256));
    }
    const float eps = 1e-12f;
    if (sh->raw) setenv("BS_GEMM_LN_DEBUG", "gemm", 1);
    cudaError_t ce =
        gemm_ln_sm90_forward(dout, dq, sh->q8 ? dv + 3 * C + 2 : NULL, dx, dw, M, K, C, sh->in, sh->act,
                             e8 ? dv + 3 * C : NULL, e8 ? dv + 3 * C + 1 : NULL, dv, dres, dv + C, dv + 2 * C, eps, 0);
    if (ce == cudaSuccess) ce = cudaDeviceSynchronize();
    unsetenv("BS_GEMM_LN_DEBUG");
    if (!bs_gpu_test_hopper()) {
        /* no sm_90a code here: an error, and nothing written */
        CHECK(ce != cudaSuccess);
        cudaGetLastError();
        fprintf(stderr, "  M=%d K=%d C=%d %s: not Hopper, the launch says \"%s\"\n", M, K, C, bs_dtype_name(sh->in),
                cudaGetErrorString(ce));
    } else {
        CHECK(ce == cudaSuccess);
        if (ce != cudaSuccess) fprintf(stderr, "  launch: %s\n", cudaGetErrorString(ce));
        bs_gpu_test_from_device(got, dout, (size_t)M * C, sh->act);
        CKC(cudaMemcpy(tailb, (char *)dout + (size_t)M * C * as, (size_t)TAIL * C * as, cudaMemcpyDeviceToHost));
        if (sh->q8) CKC(cudaMemcpy(qb, dq, (size_t)M * C, cudaMemcpyDeviceToHost));
        size_t bad = 0, badq = 0, past = 0;
        double worst = 0, wy = 0, wg = 0;
        /* which 8 x 8 blocks of the first 128 x BN tile are off: a layout slip shows as a pattern */
        char map[16][33];
        memset(map, '.', sizeof map);
        for (int i = 0; i < 16; i++) map[i][32] = 0;
        double *v = malloc(sizeof(double) * C);
        const double sc = (double)sx * sw;
        for (int t = 0; t < M; t++) {
            double mean = 0, var = 0;
            for (int c = 0; c < C; c++) {
                double acc = 0;
                const float *xr = x + (size_t)t * K, *wr = w + (size_t)c * K;
                if (e8)
                    for (int k = 0; k < K; k++)
                        acc += (double)bs_e4m3_decode(qx[(size_t)t * K + k]) * bs_e4m3_decode(qw[(size_t)c * K + k]);
                else
                    for (int k = 0; k < K; k++) acc += (double)xr[k] * wr[k];
                v[c] = (e8 ? acc * sc : acc) + bias[c] + res[(size_t)t * C + c];
                mean += v[c];
            }
            mean /= C;
            for (int c = 0; c < C; c++) var += (v[c] - mean) * (v[c] - mean);
            const double rstd = sh->raw ? 1.0 : 1.0 / sqrt(var / C + eps);
            if (sh->raw) mean = 0;
            for (int c = 0; c < C; c++) {
                const double y = (v[c] - mean) * rstd * g[c] + b[c];
                const float o = got[(size_t)t * C + c];
                const double d = fabs(o - y), tol = e8 ? fabs(y) / 128 + 1.0 / 32 : fabs(y) / 256 + 1.0 / 256;
                if (!(d <= tol) && t < 128 && c < gemm_ln_bn(C)) map[t / 8][c / 8] = 'X';
                if (!(d <= tol) && bad++ < 4) /* where a layout slip shows: the first few, with their place */
                    fprintf(stderr, "    row %d (tile row %d) col %d (of BN %d): got %.5g, want %.5g\n", t, t % 128, c,
                            gemm_ln_bn(C), o, y);
                if (!(d <= worst)) worst = d, wy = y, wg = o;
                if (sh->q8 && bs_e4m3_decode(qb[(size_t)t * C + c]) != bs_round_e4m3(o / sq)) badq++;
            }
        }
        free(v);
        for (size_t i = 0; i < (size_t)TAIL * C * as; i++) past += tailb[i] != 0x5a;
        fprintf(
            stderr,
            "  M=%d K=%d C=%d %s->%s%s%s%s%s: worst |dy| %.3g (y %.4g, got %.4g), %zu over tol, %zu E4M3, %zu past\n",
            M, K, C, bs_dtype_name(sh->in), bs_dtype_name(sh->act), sh->q8 ? " +e4m3" : "",
            sh->q8_on_x ? " over X" : "", sh->out_on_r ? " out=res" : "", sh->raw ? " (GEMM part only)" : "", worst, wy,
            wg, bad, badq, past);
        if (bad) {
            fprintf(stderr, "    the first tile, 8 x 8 blocks (X: off), rows down, columns across:\n");
            for (int i = 0; i < (M < 128 ? (M + 7) / 8 : 16); i++)
                fprintf(stderr, "      %.*s\n", gemm_ln_bn(C) / 8, map[i]);
        }
        CHECK_INT(bad, 0);
        CHECK_INT(badq, 0);
        CHECK_INT(past, 0);
    }
    cudaFree(dx), cudaFree(dw), cudaFree(dout), cudaFree(dv);
    if (sh->q8 && !sh->q8_on_x) cudaFree(dq);
    if (!sh->out_on_r) cudaFree(dres);
    free(x), free(w), free(res), free(bias), free(g), free(b), free(got), free(qx), free(qw), free(qb), free(tailb);
}

/* the tile width the kernel uses for C (gemm_ln_sm90.cu): for the messages */
static int gemm_ln_bn(int C) {
    return C % 256 == 0 && C / 256 <= 8 ? 256 : 128;
}

/* first the GEMM part alone (BS_GEMM_LN_DEBUG=gemm: v = X W^T + bias + res stored as it is), so a
 * failure below says whether the product or the row statistics are wrong */
static void gemm_ln_gemm_part_matches_cpu(void) {
    const shape cases[] = {
        {300, 768, 768, BS_DT_BF16, BS_DT_BF16, 0, 0, 0, 1},
        {300, 3072, 768, BS_DT_BF16, BS_DT_BF16, 0, 0, 0, 1},
        {300, 768, 768, BS_DT_E4M3, BS_DT_BF16, 0, 0, 0, 1},
        {130, 512, 128, BS_DT_BF16, BS_DT_BF16, 0, 0, 0, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
}

static void gemm_ln_matches_cpu_twin(void) {
    const shape cases[] = {
        {300, 768, 768, BS_DT_BF16, BS_DT_BF16, 0, 0, 0, 0},   /* BERT-base attention output, BN 256 x 3 */
        {300, 3072, 768, BS_DT_BF16, BS_DT_BF16, 0, 0, 0, 0},  /* FFN down */
        {300, 768, 768, BS_DT_BF16, BS_DT_BF16, 0, 0, 1, 0},   /* out over res (the last layer's CLS rows) */
        {200, 768, 768, BS_DT_F16, BS_DT_F16, 0, 0, 0, 0},     /* f16 */
        {300, 768, 768, BS_DT_E4M3, BS_DT_BF16, 1, 1, 0, 0},   /* fp8: E4M3 copy over X */
        {300, 3072, 768, BS_DT_E4M3, BS_DT_BF16, 1, 0, 0, 0},  /* fp8 FFN down */
        {130, 512, 128, BS_DT_BF16, BS_DT_BF16, 0, 0, 0, 0},   /* the golden tiny model: BN 128 x 1 */
        {129, 384, 384, BS_DT_BF16, BS_DT_BF16, 0, 0, 0, 0},   /* BN 128 x 3 */
        {257, 1024, 1024, BS_DT_BF16, BS_DT_BF16, 0, 0, 0, 0}, /* BERT-large: BN 256 x 4 */
        {1, 768, 768, BS_DT_BF16, BS_DT_BF16, 0, 0, 0, 0},     /* one row */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
}

static void gemm_ln_refuses_what_it_has_no_variant_for(void) {
    CHECK(gemm_ln_sm90_shape_ok(768, 768, BS_DT_BF16, BS_DT_BF16));
    CHECK(gemm_ln_sm90_shape_ok(768, 3072, BS_DT_E4M3, BS_DT_BF16));
    CHECK(gemm_ln_sm90_shape_ok(128, 512, BS_DT_F16, BS_DT_F16));
    CHECK(!gemm_ln_sm90_shape_ok(100, 768, BS_DT_BF16, BS_DT_BF16));  /* C: no 128-multiple */
    CHECK(!gemm_ln_sm90_shape_ok(1152, 768, BS_DT_BF16, BS_DT_BF16)); /* 9 x 128: a cluster of 9 */
    CHECK(!gemm_ln_sm90_shape_ok(768, 100, BS_DT_BF16, BS_DT_BF16));  /* K: not 64-multiple */
    CHECK(!gemm_ln_sm90_shape_ok(768, 64, BS_DT_E4M3, BS_DT_BF16));   /* K: less than 128 E4M3 */
    CHECK(!gemm_ln_sm90_shape_ok(768, 768, BS_DT_F32, BS_DT_F32));    /* fp32 */
    CHECK(!gemm_ln_sm90_shape_ok(768, 768, BS_DT_BF16, BS_DT_F16));   /* mixed 16-bit */
    void *p = NULL;
    CKC(cudaMalloc(&p, 1 << 22));
    float *f = (float *)p;
    /* C = 100: refused before any launch */
    CHECK_INT(gemm_ln_sm90_forward(p, NULL, NULL, p, p, 4, 768, 100, BS_DT_BF16, BS_DT_BF16, NULL, NULL, f, p, f, f,
                                   1e-12f, 0),
              cudaErrorInvalidValue);
    /* E4M3 without its scales */
    CHECK_INT(gemm_ln_sm90_forward(p, NULL, NULL, p, p, 4, 768, 768, BS_DT_E4M3, BS_DT_BF16, NULL, NULL, f, p, f, f,
                                   1e-12f, 0),
              cudaErrorInvalidValue);
    /* X not 16-byte aligned (TMA) */
    CHECK_INT(gemm_ln_sm90_forward(p, NULL, NULL, (char *)p + 2, p, 4, 768, 768, BS_DT_BF16, BS_DT_BF16, NULL, NULL, f,
                                   p, f, f, 1e-12f, 0),
              cudaErrorMisalignedAddress);
    /* no rows: nothing to do */
    CHECK_INT(gemm_ln_sm90_forward(p, NULL, NULL, p, p, 0, 768, 768, BS_DT_BF16, BS_DT_BF16, NULL, NULL, f, p, f, f,
                                   1e-12f, 0),
              cudaSuccess);
    cudaFree(p);
}

int main(void) {
    if (bs_gpu_test_need_device()) return 1;
    RUN(gemm_ln_refuses_what_it_has_no_variant_for);
    RUN(gemm_ln_gemm_part_matches_cpu);
    RUN(gemm_ln_matches_cpu_twin);
    return bs_test_done();
}
