/* Our persistent Hopper GEMM (kernels/gemm_sm90.h) against the CPU: Y = epi(X W^T (x sa sb) + bias)
 * with the product in double. On an H100/H200 every variant runs, in both forms (ping-pong 128 x 128
 * tiles, cooperative 128 x 256): bf16, f16, E4M3 in (bf16 or E4M3 out through the D scale); the three epilogues (bias;
 * bias + GELU, tanh form; bias + residual); BERT- base's four GEMM shapes (QKV 2304 x 768, FFN up 3072 x 768, attention
 * output 768 x 768, FFN down 768 x 3072), the golden tiny model's, one row, row counts that leave the last 128-row tile
 * partial, and a grid that takes more tiles than the H100 has SMs. The CTA count varies (0: one per SM; 1, 2, 3, 5:
 * each CTA loops over many tiles, so both consumer warpgroups, their hand-overs and the stage ring's wrap-around run).
 * Every row and column is compared: within |y| / 256 + 1/512 for 16-bit inputs (the output's rounding, fp32
 * accumulation, the SFU's tanh), |y| / 128 + 1/32 for E4M3 inputs (Hopper's fp8 accumulation keeps fewer bits); an E4M3
 * output within one E4M3 step
 * (|y| / 8 + 2^-9 / scale) of y on top. A wrong layout, tile, stage or k-step is off by the size
 * of y. The 16 rows after M must keep what they held. On any other GPU the kernel has no code:
 * the launch must fail with an error (the engine then keeps cuBLASLt). Shape and pointer refusals
 * are checked everywhere. (tests/emu runs the engine's use of it on the CPU.) */
#include <cuda_runtime_api.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "convert.h"
#include "dtype.h"
#include "gemm_sm90.h"
#include "cuda_test.h"
#include "test.h"

#define TAIL 16 /* rows after M that must stay as they were */

typedef struct {
    int M, N, K;
    bs_dtype in, act;
    int epi;  /* bs_gs_epilogue */
    int q8;   /* E4M3 output through the D scale */
    int ctas; /* 0: one per SM */
    int form; /* bs_gs_form */
} shape;

static double gelu_tanh(double v) {
    return 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
}

/* Waits for the launch on the default stream. A persistent kernel whose pipeline deadlocks never
 * returns: after HANG_S seconds this says which case hung and exits, so a GPU run loses seconds on
 * it, not the check's whole timeout (the process's end takes the kernel down with its context). */
#define HANG_S 10.0
static cudaError_t finish_or_exit(const shape *sh) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        const cudaError_t e = cudaStreamQuery(0);
        if (e != cudaErrorNotReady) return e == cudaSuccess ? cudaDeviceSynchronize() : e;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec) > HANG_S) {
            fprintf(stderr, "FAIL M=%d N=%d K=%d %s epi=%d ctas=%d %s: still running after %.0f s, hung; exiting\n",
                    sh->M, sh->N, sh->K, bs_dtype_name(sh->in), sh->epi, sh->ctas,
                    sh->form == BS_GS_COOPERATIVE ? "cooperative" : "ping-pong", HANG_S);
            fflush(stderr);
            _exit(1);
        }
        const struct timespec nap = {0, 1000000};
        nanosleep(&nap, NULL);
    }
}

static void run_case(const shape *sh) {
    const int M = sh->M, N = sh->N, K = sh->K, e8 = sh->in == BS_DT_E4M3;
    const bs_dtype out = sh->q8 ? BS_DT_E4M3 : sh->act;
    const size_t os = bs_dtype_size(out);
    bs_rng r = {(uint64_t)(M * 7919 + N * 131 + K * 31 + sh->in * 3 + sh->epi * 5 + sh->q8)};
    float *x = malloc(sizeof(float) * (size_t)M * K), *w = malloc(sizeof(float) * (size_t)N * K);
    float *res = malloc(sizeof(float) * (size_t)M * N), *bias = malloc(sizeof(float) * N);
    float *got = malloc(sizeof(float) * (size_t)M * N);
    uint8_t *qx = malloc((size_t)M * K), *qw = malloc((size_t)N * K), *qy = malloc((size_t)M * N);
    uint8_t *tailb = malloc((size_t)TAIL * N * os);
    CHECK(x && w && res && bias && got && qx && qw && qy && tailb);
    const float sx = e8 ? 1.0f / 16 : 1.0f, sw = e8 ? 1.0f / 256 : 1.0f, sd = 32.0f;
    for (size_t i = 0; i < (size_t)M * K; i++) {
        if (e8) { /* random finite codes, |x| <= 7.5 */
            qx[i] = bs_e4m3_random_code(bs_rng_next(&r), 10);
            x[i] = bs_e4m3_decode(qx[i]) * sx;
        } else {
            x[i] = bs_round_dtype((float)(2 * bs_rng_uniform(&r) - 1), sh->in);
        }
    }
    const double wa = 2.0 / sqrt((double)K);
    for (size_t i = 0; i < (size_t)N * K; i++) {
        if (e8) {
            qw[i] = bs_e4m3_random_code(bs_rng_next(&r), 12);
            w[i] = bs_e4m3_decode(qw[i]) * sw;
        } else {
            w[i] = bs_round_dtype((float)(wa * (2 * bs_rng_uniform(&r) - 1)), sh->in);
        }
    }
    for (size_t i = 0; i < (size_t)M * N; i++) res[i] = bs_round_dtype((float)(4 * bs_rng_uniform(&r) - 2), sh->act);
    for (int c = 0; c < N; c++) bias[c] = bs_round_dtype((float)(0.2 * bs_rng_uniform(&r) - 0.1), sh->act);

    void *dx, *dw;
    if (e8) {
        CKC(cudaMalloc(&dx, (size_t)M * K + 256));
        CKC(cudaMalloc(&dw, (size_t)N * K + 256));
        CKC(cudaMemcpy(dx, qx, (size_t)M * K, cudaMemcpyHostToDevice));
        CKC(cudaMemcpy(dw, qw, (size_t)N * K, cudaMemcpyHostToDevice));
    } else {
        dx = bs_gpu_test_to_device(x, (size_t)M * K, sh->in);
        dw = bs_gpu_test_to_device(w, (size_t)N * K, sh->in);
    }
    void *dres = bs_gpu_test_to_device(res, (size_t)M * N, sh->act),
         *dbias = bs_gpu_test_to_device(bias, (size_t)N, sh->act), *dy = NULL;
    CKC(cudaMalloc(&dy, (size_t)(M + TAIL) * N * os));
    CKC(cudaMemset(dy, 0, (size_t)M * N * os));
    CKC(cudaMemset((char *)dy + (size_t)M * N * os, 0x5a, (size_t)TAIL * N * os));
    float *dv = NULL; /* sa, sb, the D scale */
    CKC(cudaMalloc((void **)&dv, 64 * sizeof(float)));
    const float scales[3] = {sw, sx, sd};
    CKC(cudaMemcpy(dv, scales, sizeof scales, cudaMemcpyHostToDevice));
    cudaError_t ce =
        gemm_sm90_forward(dy, dx, dw, M, N, K, sh->in, sh->act, e8 ? dv : NULL, e8 ? dv + 1 : NULL, dbias, sh->epi,
                          sh->epi == BS_GS_BIAS_RES ? dres : NULL, sh->q8 ? dv + 2 : NULL, sh->ctas, sh->form, 0);
    if (ce == cudaSuccess) ce = finish_or_exit(sh);
    if (!bs_gpu_test_hopper()) {
        /* no sm_90a code here: an error, and nothing written */
        CHECK(ce != cudaSuccess);
        cudaGetLastError();
        fprintf(stderr, "  M=%d N=%d K=%d %s: not Hopper, the launch says \"%s\"\n", M, N, K, bs_dtype_name(sh->in),
                cudaGetErrorString(ce));
    } else {
        CHECK(ce == cudaSuccess);
        if (ce != cudaSuccess) fprintf(stderr, "  launch: %s\n", cudaGetErrorString(ce));
        if (sh->q8) {
            CKC(cudaMemcpy(qy, dy, (size_t)M * N, cudaMemcpyDeviceToHost));
            for (size_t i = 0; i < (size_t)M * N; i++) got[i] = bs_e4m3_decode(qy[i]) / sd;
        } else {
            bs_gpu_test_from_device(got, dy, (size_t)M * N, sh->act);
        }
        CKC(cudaMemcpy(tailb, (char *)dy + (size_t)M * N * os, (size_t)TAIL * N * os, cudaMemcpyDeviceToHost));
        size_t bad = 0, past = 0;
        double worst = 0, wy = 0, wg = 0;
        /* which 8 x 8 blocks of the first 128 x 128 tile are off: a layout slip shows as a pattern */
        char map[16][17];
        memset(map, '.', sizeof map);
        for (int i = 0; i < 16; i++) map[i][16] = 0;
        for (int t = 0; t < M; t++)
            for (int c = 0; c < N; c++) {
                /* x and w hold the decoded codes times their power-of-two scales: each product is
                 * exact in double, as the decoded codes' product times sx * sw would be */
                double acc = 0;
                for (int k = 0; k < K; k++) acc += (double)x[(size_t)t * K + k] * w[(size_t)c * K + k];
                double y = acc + bias[c];
                if (sh->epi == BS_GS_BIAS_GELU) y = gelu_tanh(y);
                if (sh->epi == BS_GS_BIAS_RES) y += res[(size_t)t * N + c];
                const float o = got[(size_t)t * N + c];
                double tol = e8 ? fabs(y) / 128 + 1.0 / 32 : fabs(y) / 256 + 1.0 / 512;
                if (sh->q8) tol += fabs(y) / 8 + 1.0 / 512 / sd;
                const double d = fabs(o - y);
                if (!(d <= tol) && t < 128 && c < 128) map[t / 8][c / 8] = 'X';
                if (!(d <= tol) && bad++ < 4) /* where a layout slip shows: the first few, with their place */
                    fprintf(stderr, "    row %d (tile row %d) col %d (tile col %d): got %.5g, want %.5g\n", t, t % 128,
                            c, c % 128, o, y);
                if (!(d <= worst)) worst = d, wy = y, wg = o;
            }
        for (size_t i = 0; i < (size_t)TAIL * N * os; i++) past += tailb[i] != 0x5a;
        fprintf(
            stderr,
            "  M=%d N=%d K=%d %s->%s epi=%d ctas=%d %s: worst |dy| %.3g (y %.4g, got %.4g), %zu over tol, %zu past\n",
            M, N, K, bs_dtype_name(sh->in), bs_dtype_name(out), sh->epi, sh->ctas,
            sh->form == BS_GS_COOPERATIVE ? "cooperative" : "ping-pong", worst, wy, wg, bad, past);
        if (bad) {
            fprintf(stderr, "    the first tile, 8 x 8 blocks (X: off), rows down, columns across:\n");
            for (int i = 0; i < (M < 128 ? (M + 7) / 8 : 16); i++) fprintf(stderr, "      %s\n", map[i]);
        }
        CHECK_INT(bad, 0);
        CHECK_INT(past, 0);
    }
    cudaFree(dx), cudaFree(dw), cudaFree(dres), cudaFree(dbias), cudaFree(dy), cudaFree(dv);
    free(x), free(w), free(res), free(bias), free(got), free(qx), free(qw), free(qy), free(tailb);
}

/* BERT-base's shapes in the given form */
static void bert_shapes(int form) {
    const shape cases[] = {
        {300, 2304, 768, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS, 0, 0, form},      /* QKV */
        {300, 3072, 768, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS_GELU, 0, 0, form}, /* FFN up */
        {300, 768, 768, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS_RES, 0, 0, form},   /* attention output */
        {300, 768, 3072, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS_RES, 0, 3, form},  /* FFN down, 3 CTAs */
        {200, 768, 768, BS_DT_F16, BS_DT_F16, BS_GS_BIAS, 0, 0, form},         /* f16 */
        {300, 2304, 768, BS_DT_E4M3, BS_DT_BF16, BS_GS_BIAS, 1, 0, form},      /* fp8 QKV, E4M3 out */
        {300, 3072, 768, BS_DT_E4M3, BS_DT_BF16, BS_GS_BIAS_GELU, 1, 5, form}, /* fp8 FFN up, E4M3 out, 5 CTAs */
        {300, 768, 3072, BS_DT_E4M3, BS_DT_BF16, BS_GS_BIAS_RES, 0, 0, form},  /* fp8 FFN down */
        {300, 768, 768, BS_DT_E4M3, BS_DT_BF16, BS_GS_BIAS, 0, 2, form},       /* fp8, bf16 out, 2 CTAs */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
}
static void gemm_sm90_pingpong_matches_cpu_on_bert_shapes(void) {
    bert_shapes(BS_GS_PINGPONG);
}
static void gemm_sm90_cooperative_matches_cpu_on_bert_shapes(void) {
    bert_shapes(BS_GS_COOPERATIVE);
}

static void gemm_sm90_matches_cpu_on_edges(void) {
    const shape cases[] = {
        {130, 512, 128, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS_GELU, 0, 1, BS_GS_PINGPONG},     /* golden tiny, one CTA */
        {130, 512, 128, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS_GELU, 0, 1, BS_GS_COOPERATIVE},  /* the same */
        {1, 384, 128, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS, 0, 0, BS_GS_PINGPONG},            /* one row */
        {1, 512, 128, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS, 0, 0, BS_GS_COOPERATIVE},         /* one row */
        {1000, 768, 768, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS_GELU, 0, 2, BS_GS_PINGPONG},    /* 48 tiles, 2 CTAs */
        {1000, 768, 768, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS_GELU, 0, 2, BS_GS_COOPERATIVE}, /* 24 tiles, 2 CTAs */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
}

/* more tiles than an H100 (132 SMs) or H200 has SMs, one CTA per SM, as a batch of 256 x 128 runs
 * it (tests/emu leaves it out: its CPU twin ignores the CTA count) */
static void gemm_sm90_takes_more_tiles_than_sms(void) {
    const shape cases[] = {
        {4100, 768, 768, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS_RES, 0, 0, BS_GS_PINGPONG},    /* 198 tiles */
        {8200, 768, 768, BS_DT_BF16, BS_DT_BF16, BS_GS_BIAS_RES, 0, 0, BS_GS_COOPERATIVE}, /* 195 tiles */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
}

static void gemm_sm90_refuses_what_it_has_no_variant_for(void) {
    CHECK(gemm_sm90_shape_ok(2304, 768, BS_DT_BF16, BS_DT_BF16, 0, BS_GS_BIAS, BS_GS_PINGPONG));
    CHECK(gemm_sm90_shape_ok(3072, 768, BS_DT_E4M3, BS_DT_BF16, 1, BS_GS_BIAS_GELU, BS_GS_PINGPONG));
    CHECK(gemm_sm90_shape_ok(768, 3072, BS_DT_F16, BS_DT_F16, 0, BS_GS_BIAS_RES, BS_GS_PINGPONG));
    CHECK(
        !gemm_sm90_shape_ok(312, 312, BS_DT_BF16, BS_DT_BF16, 0, BS_GS_BIAS, BS_GS_PINGPONG)); /* N: no 128-multiple */
    CHECK(!gemm_sm90_shape_ok(768, 100, BS_DT_BF16, BS_DT_BF16, 0, BS_GS_BIAS,
                              BS_GS_PINGPONG)); /* K: not a 64-multiple */
    CHECK(!gemm_sm90_shape_ok(768, 64, BS_DT_E4M3, BS_DT_BF16, 0, BS_GS_BIAS, BS_GS_PINGPONG)); /* K: under 128 E4M3 */
    CHECK(!gemm_sm90_shape_ok(768, 768, BS_DT_F32, BS_DT_F32, 0, BS_GS_BIAS, BS_GS_PINGPONG));  /* fp32 */
    CHECK(!gemm_sm90_shape_ok(768, 768, BS_DT_BF16, BS_DT_F16, 0, BS_GS_BIAS, BS_GS_PINGPONG)); /* mixed 16-bit */
    CHECK(!gemm_sm90_shape_ok(768, 768, BS_DT_E4M3, BS_DT_F16, 0, BS_GS_BIAS, BS_GS_PINGPONG)); /* E4M3 in, f16 act */
    CHECK(!gemm_sm90_shape_ok(768, 768, BS_DT_E4M3, BS_DT_BF16, 1, BS_GS_BIAS_RES,
                              BS_GS_PINGPONG)); /* E4M3 out + residual */
    CHECK(!gemm_sm90_shape_ok(768, 768, BS_DT_BF16, BS_DT_BF16, 1, BS_GS_BIAS, BS_GS_PINGPONG)); /* E4M3 out, bf16 in */
    CHECK(!gemm_sm90_shape_ok(768, 768, BS_DT_BF16, BS_DT_BF16, 0, 7, BS_GS_PINGPONG));          /* no such epilogue */
    CHECK(gemm_sm90_shape_ok(2304, 768, BS_DT_BF16, BS_DT_BF16, 0, BS_GS_BIAS, BS_GS_COOPERATIVE)); /* 9 x 256 */
    CHECK(!gemm_sm90_shape_ok(384, 128, BS_DT_BF16, BS_DT_BF16, 0, BS_GS_BIAS, BS_GS_COOPERATIVE)); /* N: 1.5 x 256 */
    CHECK(!gemm_sm90_shape_ok(768, 768, BS_DT_BF16, BS_DT_BF16, 0, BS_GS_BIAS, 2));                 /* no such form */
    void *p = NULL;
    CKC(cudaMalloc(&p, 1 << 22));
    float *f = (float *)p;
    CHECK_INT(gemm_sm90_forward(p, p, p, 4, 100, 768, BS_DT_BF16, BS_DT_BF16, NULL, NULL, p, BS_GS_BIAS, NULL, NULL, 0,
                                BS_GS_PINGPONG, 0),
              cudaErrorInvalidValue); /* N = 100: refused before any launch */
    CHECK_INT(gemm_sm90_forward(p, p, p, 4, 768, 768, BS_DT_E4M3, BS_DT_BF16, NULL, NULL, p, BS_GS_BIAS, NULL, NULL, 0,
                                BS_GS_PINGPONG, 0),
              cudaErrorInvalidValue); /* E4M3 without its scales */
    CHECK_INT(gemm_sm90_forward(p, p, p, 4, 768, 768, BS_DT_BF16, BS_DT_BF16, NULL, NULL, p, BS_GS_BIAS_RES, NULL, NULL,
                                0, BS_GS_PINGPONG, 0),
              cudaErrorInvalidValue); /* a residual epilogue without the residual */
    CHECK_INT(gemm_sm90_forward(p, (char *)p + 2, p, 4, 768, 768, BS_DT_BF16, BS_DT_BF16, NULL, NULL, p, BS_GS_BIAS,
                                NULL, NULL, 0, BS_GS_PINGPONG, 0),
              cudaErrorMisalignedAddress); /* X not 16-byte aligned (TMA) */
    CHECK_INT(gemm_sm90_forward(p, p, p, 0, 768, 768, BS_DT_BF16, BS_DT_BF16, NULL, NULL, f, BS_GS_BIAS, NULL, NULL, 0,
                                BS_GS_PINGPONG, 0),
              cudaSuccess); /* no rows: nothing to do */
    CHECK_INT(gemm_sm90_forward(p, p, p, 4, 384, 128, BS_DT_BF16, BS_DT_BF16, NULL, NULL, p, BS_GS_BIAS, NULL, NULL, 0,
                                BS_GS_COOPERATIVE, 0),
              cudaErrorInvalidValue); /* cooperative: N = 384 is no multiple of 256 */
    cudaFree(p);
}

int main(void) {
    if (bs_gpu_test_need_device()) return 1;
    RUN(gemm_sm90_refuses_what_it_has_no_variant_for);
    RUN(gemm_sm90_matches_cpu_on_edges);
    RUN(gemm_sm90_takes_more_tiles_than_sms);
    RUN(gemm_sm90_pingpong_matches_cpu_on_bert_shapes);
    RUN(gemm_sm90_cooperative_matches_cpu_on_bert_shapes);
    return bs_test_done();
}
