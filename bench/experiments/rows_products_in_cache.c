/* The native rows step's int8 products alone, in cache, on one thread (BENCHMARKS.md, run 11):
   rows_product_part over random 7-bit codes of one weight (N outputs of K codes) for 1 to 4 rows,
   in steps of 32 byte products per ns, to set beside byte_product_peak.c's peak. SRC names the
   decode_step.c to time, so that two versions of it can be compared:

       gcc -O3 -mavx2 -mfma -mf16c -pthread -I. -DSRC='"perceiver_music/native/decode_step.c"' \
           -o /tmp/rows bench/experiments/rows_products_in_cache.c -lm && /tmp/rows 1024 384
       (N 1024 x K 384: 384 KB of codes, within this EPYC's 512 KB L2 a core) */
#include SRC
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    const int N = argc > 1 ? atoi(argv[1]) : 1024, K = argc > 2 ? atoi(argv[2]) : 384;
    if (N < 8 || K < 32 || K % 32 || K > MAX_WIDTH) {
        fprintf(stderr, "N >= 8, K a multiple of 32 up to %d\n", MAX_WIDTH);
        return 2;
    }
    Context *c = create_context(1);
    c->row_xq = aligned_alloc(32, MAX_ROWS * MAX_WIDTH);
    int8_t *codes = aligned_alloc(32, (size_t)K * N);
    float *scale = malloc(N * sizeof(float)), *y = malloc((size_t)4 * N * sizeof(float));
    int32_t *colsum = calloc(N, sizeof(int32_t));
    srand(1);
    for (int i = 0; i < MAX_ROWS * MAX_WIDTH; i++)
        c->row_xq[i] = rand() & 255;
    for (long i = 0; i < (long)K * N; i++)
        codes[i] = (int8_t)(rand() % 127 - 63);
    for (int n = 0; n < N; n++)
        scale[n] = 0.01f;
    for (int r = 0; r < MAX_ROWS; r++) {
        c->row_xscale[r] = 0.5f;
        c->row_xzero[r] = 3;
    }
    Weight w = {K, N, codes, scale, colsum, NULL};
    const long repeats = 2000L * 1024 * 384 / ((long)N * K) + 1;
    printf("{\"N\": %d, \"K\": %d, \"steps_per_ns_best_of_5\": {", N, K);
    for (int rows = 1; rows <= 4; rows++) {
        RowsProduct p = {&w, NULL, y, rows, N, KEEP, NULL};
        double best = 1e30;
        for (int run = 0; run < 5; run++) {
            const double start = now();
            for (long i = 0; i < repeats; i++) {
                rows_product_part(c, &p, 0);
                rows_product_part(c, &p, 1);
            }
            const double seconds = now() - start;
            best = seconds < best ? seconds : best;
        }
        printf("%s\"%d_rows\": %.3f", rows > 1 ? ", " : "", rows, (double)rows * N * (K / 32) * repeats / (best * 1e9));
    }
    printf("}, \"y0\": %g}\n", (double)y[0]);
    destroy_context(c);
    return 0;
}
