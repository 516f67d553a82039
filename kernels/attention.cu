// Fused padding-free attention (see attention.h).
//
// Block = 4 warps, 32 queries of one (sequence, head); warp w owns queries w, w+4, ..., w+28 so a
// short sequence still spreads over all warps. For each tile of 32 keys: lane j scores key j
// against the warp's 8 queries (Q broadcast from shared memory, K rows padded to HS+1 floats so
// the 32 lanes hit 32 banks), the online softmax rescales the running (max, sum, output), then
// P V accumulates with P broadcast by shuffles and lane owning head dims lane, lane+32, ...
// Scores live in the log2 domain (Q pre-scaled by log2(e)/sqrt(HS)) so exp2f does the work.
#include "attention.h"

#define ATT_BK 32
#define ATT_WARPS 4
#define ATT_QPW (BS_ATT_BQ / ATT_WARPS)

static size_t att_smem_bytes(int HS) {
    return sizeof(float) * ((size_t)BS_ATT_BQ * HS + (size_t)ATT_BK * (HS + 1) + (size_t)ATT_BK * HS);
}

template <typename T, int NPL>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_kernel(T *out, const T *qkv, const int32_t *cu, const int32_t *tiles, int NH, int HS, float qscale) {
    const int seq = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
    if (seq < 0) return;
    const int h = blockIdx.y;
    const int start = cu[seq], len = cu[seq + 1] - start;
    const int nq = min(BS_ATT_BQ, len - q0);
    const int C = NH * HS, HSP = HS + 1;
    const size_t ld = 3 * (size_t)C;
    extern __shared__ float smem[];
    float *sq = smem;                // (BQ, HS)   queries, pre-scaled
    float *sk = sq + BS_ATT_BQ * HS; // (BK, HS+1) keys, padded rows
    float *sv = sk + ATT_BK * HSP;   // (BK, HS)   values
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    for (int i = tid; i < BS_ATT_BQ * HS; i += blockDim.x) {
        const int r = i / HS, d = i - r * HS;
        sq[i] = r < nq ? bs_ld(qkv[(size_t)(start + q0 + r) * ld + h * HS + d]) * qscale : 0.0f;
    }

    float m[ATT_QPW], l[ATT_QPW], o[ATT_QPW][NPL];
#pragma unroll
    for (int qi = 0; qi < ATT_QPW; qi++) {
        m[qi] = -INFINITY;
        l[qi] = 0;
#pragma unroll
        for (int j = 0; j < NPL; j++) o[qi][j] = 0;
    }

    for (int k0 = 0; k0 < len; k0 += ATT_BK) {
        const int nk = min(ATT_BK, len - k0);
        __syncthreads(); // the previous tile is consumed (first pass: Q is stored)
        for (int i = tid; i < ATT_BK * HS; i += blockDim.x) {
            const int r = i / HS, d = i - r * HS;
            float kv = 0, vv = 0;
            if (r < nk) {
                const T *row = qkv + (size_t)(start + k0 + r) * ld + h * HS + d;
                kv = bs_ld(row[C]);
                vv = bs_ld(row[2 * C]);
            }
            sk[r * HSP + d] = kv;
            sv[r * HS + d] = vv;
        }
        __syncthreads();

        float s[ATT_QPW];
#pragma unroll
        for (int qi = 0; qi < ATT_QPW; qi++) s[qi] = 0;
        const float *kr = sk + lane * HSP;
        for (int d = 0; d < HS; d++) {
            const float kd = kr[d];
#pragma unroll
            for (int qi = 0; qi < ATT_QPW; qi++) s[qi] += sq[(warp + qi * ATT_WARPS) * HS + d] * kd;
        }
#pragma unroll
        for (int qi = 0; qi < ATT_QPW; qi++) {
            const float sc = lane < nk ? s[qi] : -INFINITY;
            const float mnew = fmaxf(m[qi], bs_warp_max(sc)); // finite: key 0 of the tile is real
            const float p = lane < nk ? exp2f(sc - mnew) : 0.0f;
            const float corr = exp2f(m[qi] - mnew); // 0 on the first tile (m = -inf)
            l[qi] = l[qi] * corr + bs_warp_sum(p);
            m[qi] = mnew;
            s[qi] = p;
#pragma unroll
            for (int j = 0; j < NPL; j++) o[qi][j] *= corr;
        }
        for (int kk = 0; kk < nk; kk++) {
            float v[NPL];
#pragma unroll
            for (int j = 0; j < NPL; j++) {
                const int d = lane + 32 * j;
                v[j] = d < HS ? sv[kk * HS + d] : 0.0f;
            }
#pragma unroll
            for (int qi = 0; qi < ATT_QPW; qi++) {
                const float pk = __shfl_sync(0xffffffffu, s[qi], kk);
#pragma unroll
                for (int j = 0; j < NPL; j++) o[qi][j] += pk * v[j];
            }
        }
    }

#pragma unroll
    for (int qi = 0; qi < ATT_QPW; qi++) {
        const int r = warp + qi * ATT_WARPS;
        if (r >= nq) continue;
        const float inv = 1.0f / l[qi];
        T *dst = out + (size_t)(start + q0 + r) * C + h * HS;
#pragma unroll
        for (int j = 0; j < NPL; j++) {
            const int d = lane + 32 * j;
            if (d < HS) dst[d] = bs_st<T>(o[qi][j] * inv);
        }
    }
}

template <typename T, int NPL> static cudaError_t att_set_smem(int HS) {
    const size_t bytes = att_smem_bytes(HS);
    if (bytes <= 48 * 1024) return cudaSuccess;
    return cudaFuncSetAttribute(attention_kernel<T, NPL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

template <int NPL> static cudaError_t att_setup_all(int HS) {
    cudaError_t e;
    if ((e = att_set_smem<float, NPL>(HS)) != cudaSuccess) return e;
    if ((e = att_set_smem<__half, NPL>(HS)) != cudaSuccess) return e;
    return att_set_smem<__nv_bfloat16, NPL>(HS);
}

extern "C" cudaError_t attention_setup(int HS) {
    if (HS < 1 || HS > BS_ATT_MAX_HS) return cudaErrorInvalidValue;
    if (HS <= 32) return att_setup_all<1>(HS);
    if (HS <= 64) return att_setup_all<2>(HS);
    if (HS <= 128) return att_setup_all<4>(HS);
    return att_setup_all<8>(HS);
}

template <typename T>
static cudaError_t att_launch(T *out, const T *qkv, const int32_t *cu, const int32_t *tiles, int n_tiles, int NH,
                              int HS, cudaStream_t s) {
    const dim3 grid((unsigned)n_tiles, (unsigned)NH);
    const size_t smem = att_smem_bytes(HS);
    const float qscale = 1.4426950408889634f / sqrtf((float)HS); // log2(e) / sqrt(HS)
    if (HS <= 32)
        attention_kernel<T, 1><<<grid, ATT_WARPS * 32, smem, s>>>(out, qkv, cu, tiles, NH, HS, qscale);
    else if (HS <= 64)
        attention_kernel<T, 2><<<grid, ATT_WARPS * 32, smem, s>>>(out, qkv, cu, tiles, NH, HS, qscale);
    else if (HS <= 128)
        attention_kernel<T, 4><<<grid, ATT_WARPS * 32, smem, s>>>(out, qkv, cu, tiles, NH, HS, qscale);
    else
        attention_kernel<T, 8><<<grid, ATT_WARPS * 32, smem, s>>>(out, qkv, cu, tiles, NH, HS, qscale);
    return cudaGetLastError();
}

extern "C" cudaError_t attention_forward(void *out, const void *qkv, const int32_t *cu_seqlens, const int32_t *tiles,
                                         int n_tiles, int NH, int HS, bs_dtype dt, cudaStream_t s) {
    if (HS < 1 || HS > BS_ATT_MAX_HS || NH < 1) return cudaErrorInvalidValue;
    if (n_tiles < 1) return cudaSuccess;
    BS_DISPATCH_ACT(dt, return att_launch((T *)out, (const T *)qkv, cu_seqlens, tiles, n_tiles, NH, HS, s));
    return cudaSuccess;
}
