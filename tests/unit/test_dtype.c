/* The CPU twins of the device roundings in kernels/dtype.h, which the GPU tests build their
 * expected values from: checked here against E4M3's definition (the fn variant: 4 exponent bits,
 * bias 7, 3 mantissa bits, no infinities, S.1111.111 NaN), every one of its 256 codes. */
#include <math.h>

#include "../kernels/dtype.h"
#include "test.h"

/* Every finite code decodes to the value the format defines, and rounds to itself. */
static void e4m3_decode_is_the_format_and_round_keeps_its_values(void) {
    int finite = 0;
    for (int b = 0; b < 256; b++) {
        const float v = bs_e4m3_decode((uint8_t)b);
        const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
        if (e == 15 && m == 7) {
            CHECK(isnan(v));
            continue;
        }
        finite++;
        const double want = (s ? -1 : 1) * (e ? ldexp(1 + m / 8.0, e - 7) : ldexp(m / 8.0, -6));
        CHECK(v == (float)want);
        CHECK(bs_round_e4m3(v) == v);
    }
    CHECK_INT(finite, 254);
    CHECK(bs_e4m3_decode(0x7E) == BS_E4M3_MAX);
    CHECK(bs_e4m3_decode(0x01) == ldexpf(1, -9)); /* the smallest subnormal */
}

/* bs_e4m3_ulp(x) is the distance from the code at x to the next one up, over the finite positive
 * codes; rounding sends a midpoint to the even code, a value past 448 to 448 (saturating). */
static void e4m3_ulp_is_the_step_between_codes_and_rounding_is_nearest_even(void) {
    for (int b = 0; b < 0x7E; b++) {
        const float v = bs_e4m3_decode((uint8_t)b), next = bs_e4m3_decode((uint8_t)(b + 1));
        CHECK(bs_e4m3_ulp(v) == next - v);
        CHECK(bs_e4m3_ulp(-v) == next - v);
        const float mid = v + 0.5f * (next - v);
        CHECK(bs_round_e4m3(mid) == ((b & 1) ? next : v));   /* a tie goes to the even mantissa */
        CHECK(bs_round_e4m3(nextafterf(mid, 0)) == v);       /* just below: down */
        CHECK(bs_round_e4m3(nextafterf(mid, 1000)) == next); /* just above: up */
        CHECK(bs_round_e4m3(-mid) == -bs_round_e4m3(mid));
    }
    CHECK(bs_e4m3_ulp(BS_E4M3_MAX) == 32.0f);
    CHECK(bs_round_e4m3(1e6f) == BS_E4M3_MAX);
    CHECK(bs_round_e4m3(-465.0f) == -BS_E4M3_MAX);
    CHECK(bs_round_e4m3(ldexpf(1, -11)) == 0.0f); /* below half the smallest subnormal */
}

int main(void) {
    RUN(e4m3_decode_is_the_format_and_round_keeps_its_values);
    RUN(e4m3_ulp_is_the_step_between_codes_and_rounding_is_nearest_even);
    return bs_test_done();
}
