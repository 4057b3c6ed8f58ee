/* The peak of AVX2's byte products on one core (BENCHMARKS.md, run 8): 32-byte steps of
   vpmaddubsw, vpmaddwd and vpaddd, 32 byte products each, as the native step's int8 products do
   them without VNNI, over 8 independent sums (enough to hide each step's latency).

       gcc -O2 -mavx2 -o /tmp/peak bench/experiments/byte_product_peak.c && /tmp/peak */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define STEP(a, x) a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones))

int main(void) {
    const __m256i w = _mm256_set1_epi8(5), ones = _mm256_set1_epi16(1);
    __m256i a0 = _mm256_set1_epi32(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m256i x0 = _mm256_set1_epi8(1), x1 = _mm256_set1_epi8(2), x2 = _mm256_set1_epi8(3), x3 = _mm256_set1_epi8(4);
    __m256i x4 = _mm256_set1_epi8(5), x5 = _mm256_set1_epi8(6), x6 = _mm256_set1_epi8(7), x7 = _mm256_set1_epi8(8);
    const long rounds = 50000000;
    const double start = now();
    for (long i = 0; i < rounds; i++) {
        /* the compiler may not hoist the products: it must assume the operands change */
        __asm__ volatile("" : "+x"(x0), "+x"(x1), "+x"(x2), "+x"(x3), "+x"(x4), "+x"(x5), "+x"(x6), "+x"(x7));
        STEP(a0, x0); STEP(a1, x1); STEP(a2, x2); STEP(a3, x3);
        STEP(a4, x4); STEP(a5, x5); STEP(a6, x6); STEP(a7, x7);
    }
    const double seconds = now() - start;
    const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)),
                                         _mm256_add_epi32(_mm256_add_epi32(a4, a5), _mm256_add_epi32(a6, a7)));
    printf("{\"steps_of_32_byte_products_per_ns_one_core\": %.3f, \"checksum_bit\": %d}\n",
           8.0 * rounds / (seconds * 1e9), _mm256_extract_epi32(sum, 0) & 1);
    return 0;
}
