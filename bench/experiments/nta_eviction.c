/* Does prefetchnta keep a stream from evicting the rest of the cache? (BENCHMARKS.md, run 8)
   Reads A (MB) until cached, streams B (MB) with plain loads or with prefetchnta ahead of them,
   or not at all, then times one more read of A: if NTA kept B out of the cache, A is read after
   it about as fast as when no B was read.

       gcc -O2 -o /tmp/nta bench/experiments/nta_eviction.c && /tmp/nta 8 16 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int64_t read_lines(const int64_t *p, long n, int nta) {  /* one value per 64-byte line */
    int64_t s = 0;
    for (long i = 0; i < n; i += 8) {
        if (nta)
            _mm_prefetch((const char *)(p + i + 256), _MM_HINT_NTA);  /* 2 KB ahead (never faults) */
        s += p[i];
    }
    return s;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    const long a_mb = atol(argv[1]), b_mb = atol(argv[2]), na = a_mb << 17, nb = b_mb << 17;
    int64_t *a = aligned_alloc(64, na * 8), *b = aligned_alloc(64, nb * 8);
    for (long i = 0; i < na; i++)
        a[i] = i;
    for (long i = 0; i < nb; i++)
        b[i] = i;
    const char *names[3] = {"after_b_plain_loads", "after_b_prefetchnta", "no_b"};
    double seconds[3] = {0, 0, 0};
    int64_t s = 0;
    for (int mode = 0; mode < 3; mode++)
        for (int rep = 0; rep < 20; rep++) {
            s += read_lines(a, na, 0) + read_lines(a, na, 0);
            if (mode < 2)
                s += read_lines(b, nb, mode == 1);
            const double start = now();
            s += read_lines(a, na, 0);
            if (rep >= 5)
                seconds[mode] += now() - start;
        }
    printf("{\"a_mb\": %ld, \"b_mb\": %ld", a_mb, b_mb);
    for (int mode = 0; mode < 3; mode++)
        printf(", \"a_gb_per_s_%s\": %.1f", names[mode], 15.0 * a_mb / 1024.0 / seconds[mode]);
    printf(", \"checksum_bit\": %d}\n", (int)(s & 1));
    return 0;
}
