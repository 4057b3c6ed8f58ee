/* How fast two threads read a working set again and again, by its size (BENCHMARKS.md, run 11):
   as a decode step reads its weights and caches once a step, every step. Each thread reads its
   own half with 32-byte loads, the two meeting at a barrier after every pass, as the step's two
   threads split each product and attention. Prints GB/s for each size (MB): where the sizes
   outgrow what this machine keeps cached, the rate falls to what memory gives.

       gcc -O2 -mavx2 -pthread -o /tmp/cyclic bench/experiments/cyclic_read.c && /tmp/cyclic */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct {
    const __m256i *p;
    long vectors, passes;
    pthread_barrier_t *barrier;
    __m256i sink;
} Half;

static void *read_half(void *arg) {
    Half *h = arg;
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (long pass = 0; pass < h->passes; pass++) {
        for (long i = 0; i < h->vectors; i += 4) {
            a = _mm256_xor_si256(a, _mm256_load_si256(h->p + i));
            b = _mm256_xor_si256(b, _mm256_load_si256(h->p + i + 1));
            c = _mm256_xor_si256(c, _mm256_load_si256(h->p + i + 2));
            d = _mm256_xor_si256(d, _mm256_load_si256(h->p + i + 3));
        }
        pthread_barrier_wait(h->barrier);
    }
    h->sink = _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, d));
    return NULL;
}

int main(void) {
    const int sizes_mb[] = {2, 4, 8, 12, 16, 18, 20, 24, 28, 32, 48, 128};
    printf("{\"gb_per_s_by_working_set_mb\": {");
    for (unsigned k = 0; k < sizeof sizes_mb / sizeof *sizes_mb; k++) {
        const size_t bytes = (size_t)sizes_mb[k] << 20;
        __m256i *buffer = aligned_alloc(64, bytes);
        memset(buffer, 1, bytes);
        const long passes = (long)(4096.0 / sizes_mb[k]) + 2;  /* about 4 GB read a size */
        double best = 0;
        for (int run = 0; run < 3; run++) {
            pthread_barrier_t barrier;
            pthread_barrier_init(&barrier, NULL, 2);
            Half halves[2];
            pthread_t other;
            for (int t = 0; t < 2; t++)
                halves[t] = (Half){buffer + t * (bytes / 64), (long)(bytes / 64), passes, &barrier,
                                   _mm256_setzero_si256()};
            const double start = now();
            pthread_create(&other, NULL, read_half, &halves[1]);
            read_half(&halves[0]);
            pthread_join(other, NULL);
            const double rate = (double)bytes * passes / (now() - start) / 1e9;
            best = rate > best ? rate : best;
            pthread_barrier_destroy(&barrier);
        }
        printf("%s\"%d\": %.1f", k ? ", " : "", sizes_mb[k], best);
        fflush(stdout);
        free(buffer);
    }
    printf("}}\n");
    return 0;
}
