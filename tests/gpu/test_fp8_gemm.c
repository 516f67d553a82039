/* The fp8 GEMM as the engine configures it in cuBLASLt (worker/engine_cuda.c plan_setup): Y (n, m)
 * = X (n, k) W (m, k)^T with W and X in E4M3 and per-tensor dequantisation scales (A/B scale
 * pointers), "TN" layout, fp32 compute with fast accumulation (the default), bf16 output, with
 * and without the bias and GELU_BIAS epilogues; and the FFN-up GEMM of fp8 with static scales,
 * GELU_BIAS writing E4M3 through the D scale (bf16 bias, no C). It must run (on Ada and Hopper)
 * and match the product of the dequantised values.
 * The variants after it only report which neighbouring configurations cuBLASLt takes, to tell a
 * configuration problem from a missing kernel when the engine's own one is refused. */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <math.h>

#include "common.h"
#include "convert.h"
#include "dtype.h"
#include "twins.h"
#include "cuda_test.h"
#include "test.h"

enum { M = 192, K = 128, N = 48 }; /* all multiples of 16, as the engine's buckets are */

typedef struct {
    const char *name;
    cudaDataType_t out; /* C and D */
    int epilogue;       /* cublasLtEpilogue_t */
    int scales;         /* A/B scale pointers set */
    int fast_accum;     /* CUBLASLT_MATMUL_DESC_FAST_ACCUM */
    int bias_type_set;  /* CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = bf16 set explicitly */
    int scale_off;      /* scale pointers this many floats past a 256-byte boundary */
    int d_e4m3;         /* D in E4M3 through the D scale, C in bf16 and not given, bias type bf16 */
} variant;

typedef struct {
    cublasLtHandle_t lt;
    cudaStream_t s;
    void *qw, *qx, *y, *bias, *ws;
    float *sw, *sx, *sd;
} fixture;

/* Builds and launches one variant; returns the launch status, or the heuristic's when it offers
 * nothing (*offered = 0). */
static cublasStatus_t launch(fixture *f, const variant *v, int *offered) {
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t a = NULL, b = NULL, c = NULL, d = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasStatus_t st = cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = (cublasLtEpilogue_t)v->epilogue;
    const int8_t fast = (int8_t)v->fast_accum;
    const cudaDataType_t bt = CUDA_R_16BF;
    const void *sw = f->sw + v->scale_off, *sx = f->sx + v->scale_off, *sd = f->sd, *bias = f->bias;
    size_t wsb = 32 << 20;
    *offered = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof opT);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof opN);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    if (st == CUBLAS_STATUS_SUCCESS && v->epilogue != CUBLASLT_EPILOGUE_DEFAULT)
        st = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    if (st == CUBLAS_STATUS_SUCCESS && (v->bias_type_set || v->d_e4m3))
        st = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt);
    if (st == CUBLAS_STATUS_SUCCESS && v->scales)
        st = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof sw);
    if (st == CUBLAS_STATUS_SUCCESS && v->scales)
        st = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof sx);
    if (st == CUBLAS_STATUS_SUCCESS && v->fast_accum)
        st = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&a, CUDA_R_8F_E4M3, K, M, K);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&b, CUDA_R_8F_E4M3, K, N, K);
    if (st == CUBLAS_STATUS_SUCCESS && v->d_e4m3)
        st = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, &sd, sizeof sd);
    if (st == CUBLAS_STATUS_SUCCESS && v->d_e4m3) st = cublasLtMatrixLayoutCreate(&d, CUDA_R_8F_E4M3, M, N, M);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&c, v->out, M, N, M);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceCreate(&pref);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
    cublasLtMatmulHeuristicResult_t res[8];
    int n = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(f->lt, desc, a, b, c, d ? d : c, pref, 8, res, &n);
    *offered = n;
    if (st == CUBLAS_STATUS_SUCCESS && n == 0) st = CUBLAS_STATUS_NOT_SUPPORTED;
    const float alpha = 1.0f, beta = 0.0f;
    cublasStatus_t run = st;
    for (int i = 0; i < n && st == CUBLAS_STATUS_SUCCESS; i++) {
        run = cublasLtMatmul(f->lt, desc, &alpha, f->qw, a, f->qx, b, &beta, d ? NULL : f->y, c, f->y, d ? d : c,
                             &res[i].algo, f->ws, wsb, f->s);
        if (run == CUBLAS_STATUS_SUCCESS) break;
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (desc) cublasLtMatmulDescDestroy(desc);
    return run;
}

/* launch() and one report line */
static cublasStatus_t launch_report(fixture *f, const variant *v) {
    int offered = 0;
    cublasStatus_t st = launch(f, v, &offered);
    fprintf(stderr, "  %-44s heuristic offered %d, launch: %s\n", v->name, offered, cublasGetStatusString(st));
    return st;
}

static int has_fp8(void) {
    int dev = 0;
    struct cudaDeviceProp prop;
    CKC(cudaGetDevice(&dev));
    CKC(cudaGetDeviceProperties(&prop, dev));
    return bs_cc_has_fp8(prop.major, prop.minor);
}

static void engine_fp8_gemm_runs_and_matches_dequantised_product(void) {
    if (!has_fp8()) {
        fprintf(stderr, "  no fp8 on this GPU: not applicable\n");
        return;
    }
    fixture f = {0};
    CHECK(cublasLtCreate(&f.lt) == CUBLAS_STATUS_SUCCESS);
    CKC(cudaStreamCreate(&f.s));
    bs_rng r = {777};
    float *hw = malloc(sizeof(float) * M * K), *hx = malloc(sizeof(float) * N * K), *hb = malloc(sizeof(float) * M);
    for (int i = 0; i < M * K; i++) hw[i] = (float)(bs_rng_uniform(&r) * 2 - 1) * 0.05f;
    for (int i = 0; i < N * K; i++) hx[i] = (float)(bs_rng_uniform(&r) * 8 - 4);
    for (int i = 0; i < M; i++) hb[i] = bs_round_bf16((float)(bs_rng_uniform(&r) - 0.5));
    float *dw = NULL, *dx = NULL, *db = NULL, *parts = NULL, *y32 = NULL;
    CKC(cudaMalloc((void **)&dw, sizeof(float) * M * K));
    CKC(cudaMalloc((void **)&dx, sizeof(float) * N * K));
    CKC(cudaMalloc((void **)&db, sizeof(float) * M));
    CKC(cudaMalloc((void **)&parts, BS_AMAX_PARTS * 4));
    CKC(cudaMalloc((void **)&y32, sizeof(float) * M * N));
    CKC(cudaMalloc(&f.qw, M * K));
    CKC(cudaMalloc(&f.qx, N * K));
    CKC(cudaMalloc(&f.y, sizeof(float) * M * N)); /* room for an fp32 D */
    CKC(cudaMalloc(&f.bias, 2 * M));
    CKC(cudaMalloc(&f.ws, 32 << 20));
    CKC(cudaMalloc((void **)&f.sw, 256));
    CKC(cudaMalloc((void **)&f.sx, 256));
    CKC(cudaMalloc((void **)&f.sd, 256));
    CKC(cudaMemcpy(dw, hw, sizeof(float) * M * K, cudaMemcpyHostToDevice));
    CKC(cudaMemcpy(dx, hx, sizeof(float) * N * K, cudaMemcpyHostToDevice));
    CKC(cudaMemcpy(db, hb, sizeof(float) * M, cudaMemcpyHostToDevice));
    CKC(amax_forward(parts, dw, BS_DT_F32, (size_t)M * K, f.s));
    CKC(quantize_fp8_forward(f.qw, f.sw, dw, BS_DT_F32, (size_t)M * K, parts, f.s));
    CKC(amax_forward(parts, dx, BS_DT_F32, (size_t)N * K, f.s));
    CKC(quantize_fp8_forward(f.qx, f.sx, dx, BS_DT_F32, (size_t)N * K, parts, f.s));
    CKC(convert_forward(f.bias, BS_DT_BF16, db, BS_DT_F32, M, f.s));
    CKC(cudaMemcpyAsync(f.sw + 1, f.sw, 4, cudaMemcpyDeviceToDevice, f.s)); /* for the scale_off probe */
    CKC(cudaMemcpyAsync(f.sx + 1, f.sx, 4, cudaMemcpyDeviceToDevice, f.s));
    CKC(cudaStreamSynchronize(f.s));

    /* the reference: the dequantised operands, in double */
    uint8_t *qw = malloc(M * K), *qx = malloc(N * K);
    float sw = 0, sx = 0;
    CKC(cudaMemcpy(qw, f.qw, M * K, cudaMemcpyDeviceToHost));
    CKC(cudaMemcpy(qx, f.qx, N * K, cudaMemcpyDeviceToHost));
    CKC(cudaMemcpy(&sw, f.sw, 4, cudaMemcpyDeviceToHost));
    CKC(cudaMemcpy(&sx, f.sx, 4, cudaMemcpyDeviceToHost));
    double *want = malloc(sizeof(double) * M * N);
    for (int j = 0; j < N; j++)
        for (int i = 0; i < M; i++) {
            double acc = 0;
            for (int t = 0; t < K; t++)
                acc += (double)bs_e4m3_decode(qw[i * K + t]) * sw * bs_e4m3_decode(qx[j * K + t]) * sx;
            want[j * M + i] = acc;
        }

    /* the E4M3 output's scale: the largest |GELU(x W^T + b)| maps a little under 448 */
    double top = 0;
    for (int j = 0; j < N; j++)
        for (int i = 0; i < M; i++) {
            const double w = want[j * M + i] + hb[i];
            top = fmax(top, fabs(gelu_tanh_ref(w)));
        }
    const float dscale = (float)(BS_E4M3_MAX / (1.1 * top)); /* D scale: E4M3 = GELU(...) * dscale */
    CKC(cudaMemcpy(f.sd, &dscale, 4, cudaMemcpyHostToDevice));

    /* the engine's configurations (fast accumulation, its default). The engine falls back when
     * cuBLASLt refuses an epilogue or the E4M3 output (to our bias/GELU kernel, to a cast pass), so
     * it would still be right; this test holds the fast path to account: on an fp8 GPU every
     * configuration must run, or fp8 is slower than it should be and this says which one. */
    const variant engine[5] = {
        {"engine: bf16 out, scales, no epilogue", CUDA_R_16BF, CUBLASLT_EPILOGUE_DEFAULT, 1, 1, 0, 0, 0},
        {"engine: bf16 out, scales, BIAS", CUDA_R_16BF, CUBLASLT_EPILOGUE_BIAS, 1, 1, 0, 0, 0},
        {"engine: bf16 out, scales, GELU_BIAS", CUDA_R_16BF, CUBLASLT_EPILOGUE_GELU_BIAS, 1, 1, 0, 0, 0},
        {"engine: E4M3 out (D scale), GELU_BIAS", CUDA_R_16BF, CUBLASLT_EPILOGUE_GELU_BIAS, 1, 1, 0, 0, 1},
        {"engine: bf16 out, split accumulation", CUDA_R_16BF, CUBLASLT_EPILOGUE_DEFAULT, 1, 0, 0, 0, 0},
    };
    for (int k = 0; k < 5; k++) {
        const variant *v = &engine[k];
        cublasStatus_t st = launch_report(&f, v);
        CHECK(st == CUBLAS_STATUS_SUCCESS);
        if (st != CUBLAS_STATUS_SUCCESS) continue;
        float *got = malloc(sizeof(float) * M * N);
        if (v->d_e4m3) {
            uint8_t *q = malloc(M * N);
            CKC(cudaMemcpy(q, f.y, M * N, cudaMemcpyDeviceToHost));
            for (int i = 0; i < M * N; i++) got[i] = bs_e4m3_decode(q[i]) / dscale;
            free(q);
        } else {
            CKC(convert_forward(y32, BS_DT_F32, f.y, BS_DT_BF16, (size_t)M * N, f.s));
            CKC(cudaMemcpy(got, y32, sizeof(float) * M * N, cudaMemcpyDeviceToHost));
        }
        double worst = 0;
        for (int j = 0; j < N; j++)
            for (int i = 0; i < M; i++) {
                double w = want[j * M + i];
                if (v->epilogue != CUBLASLT_EPILOGUE_DEFAULT) w += hb[i];
                if (v->epilogue == CUBLASLT_EPILOGUE_GELU_BIAS) w = gelu_tanh_ref(w);
                /* bf16: its rounding (1/256) + accumulation; E4M3: half its step at w, + the same */
                double tol = v->d_e4m3 ? 0.5 * bs_e4m3_ulp((float)(fabs(w) * dscale * 1.004)) / dscale : 0;
                double d = (fabs(got[j * M + i] - w) - tol) / (fabs(w) + 0.05);
                if (!(d <= worst)) worst = d;
            }
        fprintf(stderr, "  %-44s worst relative error %.3g (beyond E4M3 rounding)\n", "", worst);
        CHECK(worst <= 1.0 / 128 + 1e-3); /* bf16 output rounding, fp32 accumulation */
        free(got);
    }

    /* neighbours, reported only */
    const variant probe[6] = {
        {"probe: bf16 out, no scale pointers", CUDA_R_16BF, CUBLASLT_EPILOGUE_DEFAULT, 0, 0, 0, 0, 0},
        {"probe: fp16 out, scales", CUDA_R_16F, CUBLASLT_EPILOGUE_DEFAULT, 1, 0, 0, 0, 0},
        {"probe: fp32 out, scales", CUDA_R_32F, CUBLASLT_EPILOGUE_DEFAULT, 1, 0, 0, 0, 0},
        {"probe: bf16 out, scales, BIAS, bias type set", CUDA_R_16BF, CUBLASLT_EPILOGUE_BIAS, 1, 0, 1, 0, 0},
        {"probe: bf16 out, no scales, GELU_BIAS", CUDA_R_16BF, CUBLASLT_EPILOGUE_GELU_BIAS, 0, 0, 0, 0, 0},
        {"probe: scale pointers 4 bytes off alignment", CUDA_R_16BF, CUBLASLT_EPILOGUE_DEFAULT, 1, 0, 0, 1, 0},
    };
    for (int k = 0; k < 6; k++) (void)launch_report(&f, &probe[k]);
    CKC(cudaStreamSynchronize(f.s));
    free(hw), free(hx), free(hb), free(qw), free(qx), free(want);
    cudaFree(dw), cudaFree(dx), cudaFree(db), cudaFree(parts), cudaFree(y32);
    cudaFree(f.qw), cudaFree(f.qx), cudaFree(f.y), cudaFree(f.bias), cudaFree(f.ws), cudaFree(f.sw), cudaFree(f.sx),
        cudaFree(f.sd);
    cudaStreamDestroy(f.s);
    cublasLtDestroy(f.lt);
}

int main(void) {
    if (bs_gpu_test_need_device()) return 1;
    RUN(engine_fp8_gemm_runs_and_matches_dequantised_product);
    return bs_test_done();
}
