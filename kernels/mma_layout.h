/* Lane maps of the warp-level tensor-core instructions the mma attention kernel uses
 * (attention_mma.cu): mma.sync.aligned.m16n8k16 with 16-bit inputs and f32 accumulators, and
 * ldmatrix.sync.aligned.m8n8.x4 (.trans). The kernel takes every lane -> (row, col) map from here,
 * and tests/unit/test_mma_layout.c checks them on the CPU against an emulation of the instructions
 * written from the PTX ISA's fragment tables, so a wrong map fails CI without a GPU.
 * Plain C: g = lane / 4, t = lane % 4 below. */
#ifndef BS_KERNELS_MMA_LAYOUT_H
#define BS_KERNELS_MMA_LAYOUT_H

#ifdef __CUDACC__
#define BS_HD __host__ __device__ __forceinline__
#else
#define BS_HD static inline
#endif

/* Accumulator (C/D) of one 16 x 8 tile: lane's element i (0..3) sits at row g + 8 * (i / 2),
 * column 2t + i % 2. */
BS_HD int mma_c_row(int lane, int i) {
    return (lane >> 2) + (i >> 1) * 8;
}
BS_HD int mma_c_col(int lane, int i) {
    return 2 * (lane & 3) + (i & 1);
}

/* ldmatrix.x4 of a 16 x 16 block whose rows are the A operand's rows (M) and columns its K:
 * the row (within the block) and first column whose address lane gives; registers 0..3 are then
 * the A fragment a0..a3. (Q in S = Q K^T.) */
BS_HD int ldsm_a_row(int lane) {
    return lane & 15;
}
BS_HD int ldsm_a_col(int lane) {
    return (lane >> 4) * 8;
}

/* ldmatrix.x4 (no .trans) of a 16 x 16 block whose rows are N and columns K: registers 0, 1 are
 * the B fragment (b0, b1) of n-tile 0 (block rows 0..7), registers 2, 3 that of n-tile 1 (rows
 * 8..15). (K in S = Q K^T: B[k][n] = K[n][k].) */
BS_HD int ldsm_bn_row(int lane) {
    return (lane & 7) + (lane >> 4) * 8;
}
BS_HD int ldsm_bn_col(int lane) {
    return ((lane >> 3) & 1) * 8;
}

/* ldmatrix.x4.trans of a 16 x 16 block whose rows are K and columns N: registers 0, 1 are the B
 * fragment of n-tile 0 (block columns 0..7), registers 2, 3 that of n-tile 1 (columns 8..15).
 * (V in O = P V.) */
BS_HD int ldsm_bk_row(int lane) {
    return (lane & 7) + ((lane >> 3) & 1) * 8;
}
BS_HD int ldsm_bk_col(int lane) {
    return (lane >> 4) * 8;
}

/* The A fragment of one 16-column k-step from the accumulators of its two 8-column n-tiles (the
 * k-step's columns 0..7 and 8..15): register r packs elements (e, e + 1) of tile
 * mma_a_from_c_tile(r), e = mma_a_from_c_elem(r), the first in the low 16 bits. (P in O = P V,
 * straight from the scores S.) */
BS_HD int mma_a_from_c_tile(int r) {
    return r >> 1;
}
BS_HD int mma_a_from_c_elem(int r) {
    return 2 * (r & 1);
}

#undef BS_HD
#endif
