/* The layouts of kernels/wgmma_layout.h (what the Hopper GEMM + LayerNorm kernel,
 * gemm_ln_sm90.cu, hands TMA and wgmma) against emulations of the two written here from their
 * documentation, independently of the header:
 *   TMA with CU_TENSOR_MAP_SWIZZLE_128B (CUDA driver API, cuTensorMapEncodeTiled): the box is
 *     written row after row, 128 bytes each, and within every 1024-byte span the 16-byte unit at
 *     address bits 4..6 is exchanged by XOR with address bits 7..9 (the row within the span).
 *   wgmma shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address
 *     >> 4 in bits 0-13, leading byte offset >> 4 in 16-29, stride byte offset >> 4 in 32-45,
 *     swizzle mode in 62-63 (1: 128 bytes). A K-major operand with the 128-byte swizzle is read
 *     as 8-row groups SBO bytes apart, rows 128 bytes apart within a group, K bytes in order, and
 *     the same XOR applied to the final address.
 *   wgmma m64nNk16 f32 accumulators (PTX ISA, "Register Fragments"): warp w of the warpgroup owns
 *     rows 16w..16w+15; each 8-column slice j of N is mma.sync's m16n8 accumulator in registers
 *     4j..4j+3.
 * Then the use the kernel makes of them: every operand element of every k-step is where TMA put
 * it, for bf16 and E4M3 tiles, the consumer warpgroups' row offsets and both BN; the accumulator
 * map is a bijection onto the 64 x N tile; the four lanes of a quad cover a row's N columns exactly
 * once (the epilogue's row sums reduce over them); a whole 64 x BN x K product assembled from the
 * emulated instructions equals the plain product. (No GPU needed; tests/gpu/test_gemm_ln.c runs
 * the kernel itself against the CPU twin.) */
#include <stdlib.h>
#include <string.h>

#include "../kernels/wgmma_layout.h"
#include "test.h"

#define TILE_ROWS 256
static uint8_t smem[2048 + TILE_ROWS * 128]; /* a tile at a 1024-aligned offset within it */

/* TMA: row r's bytes src[r][0..127] into the tile at `base` (1024-aligned), 128-byte swizzle */
static void tma_store(uint32_t base, const uint8_t (*src)[128], int rows) {
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < 128; b++) {
            const uint32_t lin = base + (uint32_t)r * 128 + (uint32_t)b;
            smem[lin ^ (((lin >> 7) & 7u) << 4)] = src[r][b];
        }
}

/* wgmma: byte kb (0..31) of the k-step of operand row m, through descriptor d */
static uint8_t wgmma_read(uint64_t d, int m, int kb) {
    const uint32_t start = (uint32_t)(d & 0x3fff) << 4, sbo = (uint32_t)((d >> 32) & 0x3fff) << 4;
    const uint32_t lin = start + (uint32_t)(m / 8) * sbo + (uint32_t)(m % 8) * 128 + (uint32_t)kb;
    return smem[lin ^ (((lin >> 7) & 7u) << 4)];
}

static uint8_t src[TILE_ROWS][128];
static const uint32_t base = 1024;

static void fill_src(void) {
    for (int r = 0; r < TILE_ROWS; r++)
        for (int b = 0; b < 128; b++) src[r][b] = (uint8_t)(r * 131 + b * 7 + (r >> 3));
    memset(smem, 0, sizeof smem);
    tma_store(base, (const uint8_t(*)[128])src, TILE_ROWS);
}

/* the header's TMA placement is the emulated one */
static void wgmma_tma_placement_matches(void) {
    fill_src();
    int bad = 0;
    for (int r = 0; r < TILE_ROWS; r++)
        for (int b = 0; b < 128; b++) bad += smem[base + wg_sw128_offset((uint32_t)r, (uint32_t)b)] != src[r][b];
    CHECK_INT(bad, 0);
}

static void wgmma_descriptor_fields(void) {
    const uint64_t d0 = wg_desc_sw128(base + 0x1230);
    CHECK((d0 & 0x3fff) == ((base + 0x1230) >> 4));
    CHECK(((d0 >> 16) & 0x3fff) == 1);
    CHECK(((d0 >> 32) & 0x3fff) == 1024 >> 4);
    CHECK(((d0 >> 49) & 7) == 0);
    CHECK((d0 >> 62) == 1);
    CHECK((d0 & 0x3ff1c000c000c000ull) == 0); /* bits 14-15, 30-31, 46-48, 52-61: reserved */
}

/* every k-step's operand, read through the descriptor, is the tile's rows row0.. and the step's 32
 * bytes of K: A (64 rows at 0 and 64: the consumer warpgroups), B (BN up to 256) */
static void wgmma_operands_read_what_tma_wrote(void) {
    fill_src();
    const int row0s[2] = {0, 64}, heights[3] = {64, 64, 256};
    for (int o = 0; o < 3; o++) {
        const int row0 = o < 2 ? row0s[o] : 0, h = heights[o];
        for (uint32_t s = 0; s < 4; s++) {
            const uint64_t d = wg_desc_sw128(base + wg_operand_offset((uint32_t)row0, s));
            int wrong = 0;
            for (int m = 0; m < h; m++)
                for (int kb = 0; kb < 32; kb++) wrong += wgmma_read(d, m, kb) != src[row0 + m][32 * s + kb];
            CHECK_INT(wrong, 0);
        }
    }
}

/* the accumulator map: a bijection of (warp, lane, i) onto 64 x N, and per quad and row the N columns
 * once */
static void wgmma_accumulator_map(void) {
    for (int N = 128; N <= 256; N += 128) {
        static int seen[64][256];
        memset(seen, 0, sizeof seen);
        int quad_bad = 0;
        for (int w = 0; w < 4; w++)
            for (int lane = 0; lane < 32; lane++)
                for (int i = 0; i < N / 2; i++) {
                    const int r = wg_acc_row(w, lane, i), c = wg_acc_col(lane, i);
                    if (r >= 0 && r < 64 && c >= 0 && c < N) seen[r][c]++;
                    /* the PTX ISA's form: row 16w + lane/4 (+8 for registers 2, 3 of a slice),
                     * column 8 x slice + 2 (lane % 4) + register % 2 */
                    const int slice = i / 4, reg = i % 4;
                    if (r != 16 * w + lane / 4 + (reg >= 2 ? 8 : 0) || c != 8 * slice + 2 * (lane % 4) + reg % 2)
                        quad_bad++;
                }
        int once = 1;
        for (int r = 0; r < 64; r++)
            for (int c = 0; c < N; c++) once &= seen[r][c] == 1;
        CHECK(once);
        CHECK_INT(quad_bad, 0);
        /* the epilogue: lanes 4q..4q+3 of warp w, elements with (i & 2) == 0, cover row 16w + q */
        int cover_bad = 0;
        for (int w = 0; w < 4; w++)
            for (int q = 0; q < 8; q++)
                for (int half = 0; half < 2; half++) {
                    int cols[256] = {0};
                    for (int l = 4 * q; l < 4 * q + 4; l++)
                        for (int i = 0; i < N / 2; i++) {
                            if (((i & 2) != 0) != half) continue;
                            cover_bad += wg_acc_row(w, l, i) != 16 * w + q + 8 * half;
                            cols[wg_acc_col(l, i)]++;
                        }
                    for (int c = 0; c < N; c++) cover_bad += cols[c] != 1;
                }
        CHECK_INT(cover_bad, 0);
    }
}

/* a 64 x 128 x 64 (16-bit elements) product built from the emulated pieces: A and B tiles through
 * TMA, the four k-steps through the descriptors, the result through the accumulator map; small
 * integers, so every sum is exact */
static void wgmma_product_from_emulated_pieces(void) {
    {
        enum { M = 64, N = 128, KE = 64 };
        static uint8_t a_src[M][128], b_src[N][128];
        static int16_t A[M][KE], B[N][KE];
        for (int m = 0; m < M; m++)
            for (int k = 0; k < KE; k++) A[m][k] = (int16_t)((m * 3 + k * 5) % 7 - 3);
        for (int n = 0; n < N; n++)
            for (int k = 0; k < KE; k++) B[n][k] = (int16_t)((n * 2 + k) % 5 - 2);
        memcpy(a_src, A, sizeof A);
        memcpy(b_src, B, sizeof B);
        const uint32_t abase = 1024, bbase = 1024 + M * 128;
        memset(smem, 0, sizeof smem);
        tma_store(abase, (const uint8_t(*)[128])a_src, M);
        tma_store(bbase, (const uint8_t(*)[128])b_src, N);
        static long D[M][N];
        memset(D, 0, sizeof D);
        for (uint32_t s = 0; s < 4; s++) {
            const uint64_t da = wg_desc_sw128(abase + wg_operand_offset(0, s));
            const uint64_t db = wg_desc_sw128(bbase + wg_operand_offset(0, s));
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++)
                    for (int k = 0; k < 16; k++) { /* element k: bytes 2k, 2k + 1, little-endian */
                        const int16_t av = (int16_t)(wgmma_read(da, m, 2 * k) | wgmma_read(da, m, 2 * k + 1) << 8);
                        const int16_t bv = (int16_t)(wgmma_read(db, n, 2 * k) | wgmma_read(db, n, 2 * k + 1) << 8);
                        D[m][n] += (long)av * bv;
                    }
        }
        int wrong = 0;
        for (int w = 0; w < 4; w++)
            for (int lane = 0; lane < 32; lane++)
                for (int i = 0; i < N / 2; i++) {
                    const int r = wg_acc_row(w, lane, i), c = wg_acc_col(lane, i);
                    long want = 0;
                    for (int k = 0; k < KE; k++) want += (long)A[r][k] * B[c][k];
                    wrong += D[r][c] != want;
                }
        CHECK_INT(wrong, 0);
    }
}

int main(void) {
    RUN(wgmma_tma_placement_matches);
    RUN(wgmma_descriptor_fields);
    RUN(wgmma_operands_read_what_tma_wrote);
    RUN(wgmma_accumulator_map);
    RUN(wgmma_product_from_emulated_pieces);
    return bs_test_done();
}
