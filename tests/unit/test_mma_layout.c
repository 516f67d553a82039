/* The lane maps of kernels/mma_layout.h (what the mma attention kernel feeds ldmatrix and
 * mma.sync with) against an emulation of the two instructions written here from the PTX ISA's
 * tables, independently of the header:
 *   ldmatrix.sync.aligned.m8n8.x4[.trans].b16: lanes 8i..8i+7 give the row addresses of matrix i
 *     (8 consecutive 16-bit elements each); register i of lane l receives, of matrix i, the pair
 *     (row l/4, cols 2(l%4), 2(l%4)+1), the first in the low half; .trans: (rows 2(l%4), 2(l%4)+1,
 *     col l/4).
 *   mma.sync.aligned.m16n8k16.row.col.f32 with 16-bit A, B: (g = l/4, t = l%4)
 *     A element i (i = 0..7, register i/2, half i%2): row g + 8 * ((i/2) % 2), col 2t + i%2 + 8 * (i/4)
 *     B element i (0..3, register i/2):                row (k) 2t + i%2 + 8 * (i/2), col (n) g
 *     C/D element i (0..3):                            row g + 8 * (i/2), col 2t + i%2
 * Values are small integers, so every product and sum is exact: a wrong map shows as a mismatch.
 * This is what the kernel computes per warp: S = Q K^T for 16 queries x 16 keys x 16 dims, then
 * O = P V with P taken from S's accumulators. (No GPU needed; the kernel itself is tested against
 * the CPU twin in tests/gpu/test_kernels.c.) */
#include <stdint.h>
#include <string.h>

#include "../kernels/mma_layout.h"
#include "test.h"

typedef struct {
    double lo, hi;
} pair; /* one 32-bit register: two 16-bit elements */

/* ldmatrix.x4: src is a 16 x 16 block (row-major); lane l points at (row[l], col[l]) */
static void ldmatrix_x4(pair reg[32][4], const double src[16][16], const int row[32], const int col[32], int trans) {
    double m[4][8][8];
    for (int i = 0; i < 4; i++)
        for (int r = 0; r < 8; r++) {
            const int l = 8 * i + r;
            for (int c = 0; c < 8; c++) m[i][r][c] = src[row[l]][col[l] + c];
        }
    for (int l = 0; l < 32; l++) {
        const int g = l / 4, t = l % 4;
        for (int i = 0; i < 4; i++)
            reg[l][i] = trans ? (pair){m[i][2 * t][g], m[i][2 * t + 1][g]} : (pair){m[i][g][2 * t], m[i][g][2 * t + 1]};
    }
}

static double half_of(pair p, int h) {
    return h ? p.hi : p.lo;
}

/* d += A B for one m16n8k16 */
static void mma(double d[32][4], const pair a[32][4], const pair b0[32], const pair b1[32]) {
    double A[16][16], B[16][8], D[16][8];
    memset(A, 0, sizeof A), memset(B, 0, sizeof B);
    for (int l = 0; l < 32; l++) {
        const int g = l / 4, t = l % 4;
        for (int i = 0; i < 8; i++) A[g + 8 * ((i / 2) % 2)][2 * t + i % 2 + 8 * (i / 4)] = half_of(a[l][i / 2], i % 2);
        for (int i = 0; i < 4; i++) B[2 * t + i % 2 + 8 * (i / 2)][g] = half_of(i < 2 ? b0[l] : b1[l], i % 2);
        for (int i = 0; i < 4; i++) D[g + 8 * (i / 2)][2 * t + i % 2] = d[l][i];
    }
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++)
            for (int k = 0; k < 16; k++) D[m][n] += A[m][k] * B[k][n];
    for (int l = 0; l < 32; l++) {
        const int g = l / 4, t = l % 4;
        for (int i = 0; i < 4; i++) d[l][i] = D[g + 8 * (i / 2)][2 * t + i % 2];
    }
}

static void lane_maps(int row[32], int col[32], int (*r)(int), int (*c)(int)) {
    for (int l = 0; l < 32; l++) row[l] = r(l), col[l] = c(l);
}
static int a_row(int l) {
    return ldsm_a_row(l);
}
static int a_col(int l) {
    return ldsm_a_col(l);
}
static int bn_row(int l) {
    return ldsm_bn_row(l);
}
static int bn_col(int l) {
    return ldsm_bn_col(l);
}
static int bk_row(int l) {
    return ldsm_bk_row(l);
}
static int bk_col(int l) {
    return ldsm_bk_col(l);
}

static double Q[16][16], K[16][16], V[16][16], S[16][16];

static void fill(void) {
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            Q[i][j] = (double)((i * 7 + j * 3) % 11 - 5);
            K[i][j] = (double)((i * 5 + j * 11) % 13 - 6);
            V[i][j] = (double)((i * 3 + j * 7) % 9 - 4);
        }
    for (int q = 0; q < 16; q++) /* S[q][key] = sum_d Q[q][d] K[key][d] */
        for (int k = 0; k < 16; k++) {
            S[q][k] = 0;
            for (int d = 0; d < 16; d++) S[q][k] += Q[q][d] * K[k][d];
        }
}

/* S = Q K^T: Q through the A map, K through the (non-transposed) B map, results read back
 * through the accumulator map. Returns the number of wrong elements. */
static int scores(double s[2][32][4]) {
    int row[32], col[32];
    pair qa[32][4], kb[32][4];
    lane_maps(row, col, a_row, a_col);
    ldmatrix_x4(qa, Q, row, col, 0);
    lane_maps(row, col, bn_row, bn_col);
    ldmatrix_x4(kb, K, row, col, 0);
    memset(s, 0, sizeof(double) * 2 * 32 * 4);
    pair b[4][32];
    for (int l = 0; l < 32; l++)
        for (int i = 0; i < 4; i++) b[i][l] = kb[l][i];
    mma(s[0], (const pair(*)[4])qa, b[0], b[1]); /* keys 0..7 */
    mma(s[1], (const pair(*)[4])qa, b[2], b[3]); /* keys 8..15 */
    int bad = 0;
    for (int tile = 0; tile < 2; tile++)
        for (int l = 0; l < 32; l++)
            for (int i = 0; i < 4; i++) bad += s[tile][l][i] != S[mma_c_row(l, i)][8 * tile + mma_c_col(l, i)];
    return bad;
}

static void mma_lane_maps_compute_q_kt(void) {
    fill();
    double s[2][32][4];
    CHECK_INT(scores(s), 0);
}

static void mma_scores_accumulators_feed_p_v_as_a_fragment(void) {
    fill();
    double s[2][32][4];
    CHECK_INT(scores(s), 0);
    /* P = S as the A operand, from the accumulators (what the kernel packs), V through .trans */
    pair pa[32][4];
    for (int l = 0; l < 32; l++)
        for (int r = 0; r < 4; r++) {
            const double *c = s[mma_a_from_c_tile(r)][l] + mma_a_from_c_elem(r);
            pa[l][r] = (pair){c[0], c[1]};
        }
    int row[32], col[32];
    pair vb[32][4];
    lane_maps(row, col, bk_row, bk_col);
    ldmatrix_x4(vb, V, row, col, 1);
    pair b[4][32];
    for (int l = 0; l < 32; l++)
        for (int i = 0; i < 4; i++) b[i][l] = vb[l][i];
    double o[2][32][4];
    memset(o, 0, sizeof o);
    mma(o[0], (const pair(*)[4])pa, b[0], b[1]); /* dims 0..7 */
    mma(o[1], (const pair(*)[4])pa, b[2], b[3]); /* dims 8..15 */
    int bad = 0;
    for (int tile = 0; tile < 2; tile++)
        for (int l = 0; l < 32; l++)
            for (int i = 0; i < 4; i++) {
                const int q = mma_c_row(l, i), d = 8 * tile + mma_c_col(l, i);
                double want = 0;
                for (int k = 0; k < 16; k++) want += S[q][k] * V[k][d];
                bad += o[tile][l][i] != want;
            }
    CHECK_INT(bad, 0);
}

/* The maps themselves: every lane of an accumulator holds distinct cells covering the tile once;
 * every ldmatrix map points 8 lanes at 8 distinct rows of one 8-column half, 16-byte aligned. */
static void mma_lane_maps_cover_each_cell_once(void) {
    int seen[16][8];
    memset(seen, 0, sizeof seen);
    for (int l = 0; l < 32; l++)
        for (int i = 0; i < 4; i++) seen[mma_c_row(l, i)][mma_c_col(l, i)]++;
    int once = 0;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 8; c++) once += seen[r][c] == 1;
    CHECK_INT(once, 128);
    int (*maps[3][2])(int) = {{a_row, a_col}, {bn_row, bn_col}, {bk_row, bk_col}};
    for (int m = 0; m < 3; m++) {
        int hit[16][2];
        memset(hit, 0, sizeof hit);
        for (int l = 0; l < 32; l++) {
            const int r = maps[m][0](l), c = maps[m][1](l);
            CHECK(r >= 0 && r < 16 && (c == 0 || c == 8));
            if (r >= 0 && r < 16 && (c == 0 || c == 8)) hit[r][c / 8]++;
        }
        int all = 0;
        for (int r = 0; r < 16; r++) all += hit[r][0] == 1 && hit[r][1] == 1;
        CHECK_INT(all, 16);
    }
}

/* The E4M3 form of S = Q K^T (the attention kernel with E4M3 Q, K, V): rows of 32 one-byte codes,
 * read with the same ldmatrix lane maps at byte columns 2 x the 16-bit ones, feed
 * mma.sync.m16n8k32 .e4m3, whose fragments per the PTX ISA's 8-bit tables are (g = l/4, t = l%4):
 *   A element i (0..15, byte i%4 of register i/4): row g + 8 ((i/4) % 2), col 4t + i%4 + 16 (i >= 8)
 *   B element i (0..7, byte i%4 of b0, b1):         row (k) 4t + i%4 + 16 (i >= 4), col (n) g
 * Bytes stand for codes here (any 8-bit value): a wrong byte map shows as a wrong sum. */
static void ldmatrix_bytes(uint32_t reg[32][4], const uint8_t src[16][32], const int row[32], const int col16[32]) {
    uint8_t m[4][8][16]; /* matrix i, row r: 8 16-bit elements = 16 bytes from (row, 2 col16) */
    for (int i = 0; i < 4; i++)
        for (int r = 0; r < 8; r++) memcpy(m[i][r], &src[row[8 * i + r]][2 * col16[8 * i + r]], 16);
    for (int l = 0; l < 32; l++) { /* register i: (row g, 16-bit cols 2t, 2t+1) = bytes 4t..4t+3 */
        const int g = l / 4, t = l % 4;
        for (int i = 0; i < 4; i++)
            reg[l][i] = (uint32_t)m[i][g][4 * t] | (uint32_t)m[i][g][4 * t + 1] << 8 |
                        (uint32_t)m[i][g][4 * t + 2] << 16 | (uint32_t)m[i][g][4 * t + 3] << 24;
    }
}
static void mma_e4m3_lane_maps_compute_q_kt(void) {
    uint8_t q[16][32], k[16][32];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 32; j++)
            q[i][j] = (uint8_t)((i * 7 + j * 3) % 11), k[i][j] = (uint8_t)((i * 5 + j * 11) % 13);
    int row[32], col[32];
    uint32_t qa[32][4], kb[32][4];
    lane_maps(row, col, a_row, a_col);
    ldmatrix_bytes(qa, (const uint8_t(*)[32])q, row, col);
    lane_maps(row, col, bn_row, bn_col);
    ldmatrix_bytes(kb, (const uint8_t(*)[32])k, row, col);
    int bad = 0;
    for (int tile = 0; tile < 2; tile++) { /* keys 8 tile..: b0, b1 = registers 2 tile, 2 tile + 1 */
        long A[16][32], B[32][8];
        for (int l = 0; l < 32; l++) {
            const int g = l / 4, t = l % 4;
            for (int i = 0; i < 16; i++)
                A[g + 8 * ((i / 4) % 2)][4 * t + i % 4 + 16 * (i >= 8)] = (qa[l][i / 4] >> (8 * (i % 4))) & 0xff;
            for (int i = 0; i < 8; i++)
                B[4 * t + i % 4 + 16 * (i >= 4)][g] = (kb[l][2 * tile + i / 4] >> (8 * (i % 4))) & 0xff;
        }
        for (int l = 0; l < 32; l++)
            for (int i = 0; i < 4; i++) {
                const int r = mma_c_row(l, i), c = mma_c_col(l, i);
                long got = 0, want = 0;
                for (int d = 0; d < 32; d++) got += A[r][d] * B[d][c], want += (long)q[r][d] * k[8 * tile + c][d];
                bad += got != want;
            }
    }
    CHECK_INT(bad, 0);
}

int main(void) {
    RUN(mma_lane_maps_cover_each_cell_once);
    RUN(mma_e4m3_lane_maps_compute_q_kt);
    RUN(mma_lane_maps_compute_q_kt);
    RUN(mma_scores_accumulators_feed_p_v_as_a_fragment);
    return bs_test_done();
}
