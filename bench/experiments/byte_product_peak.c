/* The peak of AVX2's byte products on one core (BENCHMARKS.md, runs 8 and 11): 32-byte steps of
   vpmaddubsw, vpmaddwd and vpaddd, 32 byte products each, as the native step's int8 products do
   them without VNNI. Eight independent sums (enough to hide each step's latency) in the native
   rows step's shape, four rows times two outputs, all in registers: 8 sums, 4 rows, 2 codes and
   the ones make 15 of AVX2's 16, the sums pinned there (gcc would otherwise spill some).
   Run 8's version had eight rows of its own beside eight sums, and gcc kept the sums on the
   stack: it measured the stores and reloads, 1.9-2.0 steps per ns here, not the peak.

       gcc -O2 -mavx2 -o /tmp/peak bench/experiments/byte_product_peak.c && /tmp/peak

   (gcc -S shows its loop: 24 vector instructions, no access to the stack.) */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define STEP(a, x, w) a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones))

int main(void) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i w0 = _mm256_set1_epi8(5), w1 = _mm256_set1_epi8(-3);
    __m256i x0 = _mm256_set1_epi8(1), x1 = _mm256_set1_epi8(2), x2 = _mm256_set1_epi8(3), x3 = _mm256_set1_epi8(4);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    const long rounds = 100000000;
    for (int run = 0; run < 3; run++) {
        const double start = now();
        for (long i = 0; i < rounds; i++) {
            /* the compiler may not hoist the products: it must assume the operands change */
            __asm__ volatile("" : "+x"(x0), "+x"(x1), "+x"(x2), "+x"(x3), "+x"(w0), "+x"(w1));
            STEP(a0, x0, w0); STEP(a1, x0, w1); STEP(a2, x1, w0); STEP(a3, x1, w1);
            STEP(a4, x2, w0); STEP(a5, x2, w1); STEP(a6, x3, w0); STEP(a7, x3, w1);
            /* and must keep the sums in registers, as the native step's int8_rows does */
            __asm__("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5), "+x"(a6), "+x"(a7));
        }
        const double seconds = now() - start;
        const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)),
                                             _mm256_add_epi32(_mm256_add_epi32(a4, a5), _mm256_add_epi32(a6, a7)));
        printf("{\"steps_of_32_byte_products_per_ns_one_core\": %.3f, \"checksum_bit\": %d}\n",
               8.0 * rounds / (seconds * 1e9), _mm256_extract_epi32(sum, 0) & 1);
    }
    return 0;
}
