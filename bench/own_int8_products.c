/* Own kernels for the decode step's weight products at one row (bench/own_int8_products.py).

   A probe, not the product: it asks how fast int8 weight products at one row can run on this
   CPU with AVX2 alone (no AVX-512, no VNNI: what every x86 laptop since 2013 has), two
   threads, against onnxruntime's DynamicQuantizeMatMul on the same shapes.

   Per product: the row x (K floats) is quantised to unsigned bytes, xq = round(x / sx) + 128
   with sx = max|x| / 127; the weights are 7-bit codes (|code| <= 63) with one scale per output
   column, stored column after column. vpmaddubsw multiplies bytes pairwise into 16 bits (at most
   2 * 255 * 63 = 32130: 7-bit codes keep it from saturating), vpmaddwd adds pairs into 32 bits.
   Then y[n] = sx * scale[n] * (sum_k xq[k] code[n][k] - 128 * colsum[n]).

   Two threads: the caller's and one worker that spins between products (as onnxruntime's
   threads do), each computing half of the columns. */

#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct {
    int32_t K, N;
    const int8_t *codes;    /* N columns of K codes */
    const float *scale;     /* N */
    const int32_t *colsum;  /* N: each column's sum of codes */
    const float *x;         /* K */
    float *y;               /* N */
} Product;

#define MAX_K 8192
static uint8_t xq[MAX_K] __attribute__((aligned(32)));
static float xscale;

static const Product *job;
static int32_t job_split;  /* the worker computes columns [job_split, N) */
static atomic_int posted, finished, stopping;
static pthread_t worker;

static int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static void quantize(const float *x, int32_t K) {
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 top = _mm256_setzero_ps();
    for (int32_t k = 0; k < K; k += 8)
        top = _mm256_max_ps(top, _mm256_and_ps(_mm256_loadu_ps(x + k), magnitude));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, 0x4e));
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, 0xb1));
    float largest = _mm_cvtss_f32(m);
    xscale = largest > 0.0f ? largest / 127.0f : 1.0f;
    const __m256 inverse = _mm256_set1_ps(1.0f / xscale);
    const __m256i offset = _mm256_set1_epi32(128);
    /* packs interleave 128-bit lanes; this puts the 32 bytes back in order */
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int32_t k = 0; k < K; k += 32) {
        __m256i a = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), inverse)), offset);
        __m256i b = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), inverse)), offset);
        __m256i c = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 16), inverse)), offset);
        __m256i d = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 24), inverse)), offset);
        __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(a, b), _mm256_packus_epi32(c, d));
        _mm256_store_si256((__m256i *)(xq + k), _mm256_permutevar8x32_epi32(bytes, order));
    }
}

static void columns(const Product *p, int32_t first, int32_t last) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int32_t K = p->K;
    int32_t n = first;
    for (; n + 4 <= last; n += 4) {
        const int8_t *w = p->codes + (int64_t)n * K;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int32_t k = 0; k < K; k += 32) {
            __m256i x = _mm256_load_si256((const __m256i *)(xq + k));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_maddubs_epi16(x, _mm256_loadu_si256((const __m256i *)(w + k))), ones));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_maddubs_epi16(x, _mm256_loadu_si256((const __m256i *)(w + K + k))), ones));
            a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_maddubs_epi16(x, _mm256_loadu_si256((const __m256i *)(w + 2 * K + k))), ones));
            a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_maddubs_epi16(x, _mm256_loadu_si256((const __m256i *)(w + 3 * K + k))), ones));
        }
        int32_t sums[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
        for (int j = 0; j < 4; j++)
            p->y[n + j] = xscale * p->scale[n + j] * (float)(sums[j] - 128 * p->colsum[n + j]);
    }
    for (; n < last; n++) {
        const int8_t *w = p->codes + (int64_t)n * K;
        __m256i a = _mm256_setzero_si256();
        for (int32_t k = 0; k < K; k += 32)
            a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(
                    _mm256_load_si256((const __m256i *)(xq + k)), _mm256_loadu_si256((const __m256i *)(w + k))), ones));
        p->y[n] = xscale * p->scale[n] * (float)(hsum(a) - 128 * p->colsum[n]);
    }
}

static void *work(void *unused) {
    (void)unused;
    int seen = 0;
    for (;;) {
        int now;
        while ((now = atomic_load_explicit(&posted, memory_order_acquire)) == seen) {
            if (atomic_load_explicit(&stopping, memory_order_relaxed))
                return 0;
            _mm_pause();
        }
        seen = now;
        columns(job, job_split, job->N);
        atomic_store_explicit(&finished, seen, memory_order_release);
    }
}

int start_worker(void) {
    atomic_store(&stopping, 0);
    atomic_store(&posted, 0);
    atomic_store(&finished, 0);
    return pthread_create(&worker, 0, work, 0);
}

void stop_worker(void) {
    atomic_store(&stopping, 1);
    pthread_join(worker, 0);
}

/* Every product once, `repeats` times over; with the worker started, on two threads. Returns
   -1 if a K is not a multiple of 32 or too large, else 0. */
int run_products(const Product *products, int32_t count, int32_t repeats, int32_t two_threads) {
    for (int32_t i = 0; i < count; i++)
        if (products[i].K % 32 || products[i].K > MAX_K)
            return -1;
    int generation = atomic_load(&posted);
    for (int32_t r = 0; r < repeats; r++) {
        for (int32_t i = 0; i < count; i++) {
            const Product *p = products + i;
            quantize(p->x, p->K);
            if (!two_threads) {
                columns(p, 0, p->N);
                continue;
            }
            job = p;
            job_split = (p->N / 2) & ~3;
            atomic_store_explicit(&posted, ++generation, memory_order_release);
            columns(p, 0, job_split);
            while (atomic_load_explicit(&finished, memory_order_acquire) != generation)
                _mm_pause();
        }
    }
    return 0;
}
