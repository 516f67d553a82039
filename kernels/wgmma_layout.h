/* Layouts of the Hopper GEMM with the LayerNorm in its epilogue (gemm_ln_sm90.cu): where TMA puts
 * a tile in shared memory with the 128-byte swizzle, the wgmma shared-memory matrix descriptor that
 * reads it back, and which accumulator element of wgmma.mma_async m64nNk16/k32 (f32 accumulators)
 * holds which (row, column). The kernel takes every one of these from here, and
 * tests/unit/test_wgmma_layout.c checks them on the CPU against an emulation of TMA and wgmma
 * written from the PTX ISA's and the CUDA driver API's descriptions, so a wrong map fails CI
 * without a GPU.
 *
 * Tiles are K-major: row r of a tile (a row of X or of W, the GEMM's M or N index) holds 128 bytes
 * of K (64 16-bit or 128 8-bit elements) and rows follow each other every 128 bytes; with the
 * 128-byte swizzle the 16-byte chunk c of row r sits at chunk c ^ (r % 8). The tile's base is
 * 1024-byte aligned (the swizzle works on address bits 4..9).
 * Plain C: usable from host code and from nvcc. */
#ifndef BS_KERNELS_WGMMA_LAYOUT_H
#define BS_KERNELS_WGMMA_LAYOUT_H

#include <stdint.h>

#ifdef __CUDACC__
#define BS_WG_HD __host__ __device__ __forceinline__
#else
#define BS_WG_HD static inline
#endif

#define BS_WG_ROW_BYTES 128u   /* one tile row: the swizzle span */
#define BS_WG_ATOM_BYTES 1024u /* 8 rows: one swizzle pattern, the descriptor's stride (SBO) */

/* Byte offset within a tile of byte b (0..127) of row r, as TMA writes it with
 * CU_TENSOR_MAP_SWIZZLE_128B and a 128-byte inner box. */
BS_WG_HD uint32_t wg_sw128_offset(uint32_t r, uint32_t b) {
    return r * BS_WG_ROW_BYTES + ((((b >> 4) ^ (r & 7u)) << 4) | (b & 15u));
}

/* The wgmma shared-memory matrix descriptor of a K-major operand with the 128-byte swizzle that
 * starts at shared address `addr` (a tile's base plus 64-row and k-step offsets, below): bits 0-13
 * addr >> 4, 16-29 the leading-dimension byte offset >> 4 (unused by K-major swizzled layouts:
 * 1), 32-45 the stride byte offset >> 4 (1024: the next 8 rows), 49-51 the base offset (0: tiles
 * are 1024-byte aligned), 62-63 the swizzle mode (1: 128 bytes). */
BS_WG_HD uint64_t wg_desc_sw128(uint32_t addr) {
    return (uint64_t)((addr >> 4) & 0x3fffu) | (uint64_t)1u << 16 | (uint64_t)(BS_WG_ATOM_BYTES >> 4) << 32 |
           (uint64_t)1u << 62;
}

/* Where one wgmma's operand starts within its tile: rows row0.. (a multiple of 8; for A the
 * warpgroup's 64 rows) and k-step s of 32 bytes (16 16-bit or 32 8-bit elements; 4 per tile row).
 * Advancing the start by 32 bytes inside the swizzle span is how the k-steps are addressed: the
 * hardware applies the swizzle to the final address, so chunk 2s + j of row r is read from chunk
 * (2s + j) ^ (r % 8), where TMA put it. */
BS_WG_HD uint32_t wg_operand_offset(uint32_t row0, uint32_t s) {
    return row0 * BS_WG_ROW_BYTES + 32u * s;
}

/* Accumulator element i (0 .. N/2 - 1) of thread `lane` of warp w (0..3) of the warpgroup in
 * wgmma m64nN with f32 accumulators: row 16w + lane/4 + 8 ((i/2) % 2), column 8 (i/4) + 2 (lane%4)
 * + i%2 (each 8-column slice is laid out as mma.sync's m16n8 accumulator). */
BS_WG_HD int wg_acc_row(int w, int lane, int i) {
    return 16 * w + (lane >> 2) + 8 * ((i >> 1) & 1);
}
BS_WG_HD int wg_acc_col(int lane, int i) {
    return 8 * (i >> 2) + 2 * (lane & 3) + (i & 1);
}

#undef BS_WG_HD
#endif
