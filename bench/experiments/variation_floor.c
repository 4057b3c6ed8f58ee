/* What one more variation costs the rows step in arithmetic alone, with its data in cache
   (BENCHMARKS.md, run 13). On one thread, with every byte it reads hot in L1/L2:
   - the cross-attend's attention (attention_rows_part over one head of the primer's shared
     int8 K/V, the first argument's slots, default 2,048, plus 32 own slots) at 1 and 4 rows;
   - a latent layer's attention (one head over each row's own int8 K/V, the second argument's
     slots, default 448) at 1 and 4 rows;
   - the rows' int8 products (rows_product_part over one weight of N 1,024 x K 384, 384 KB) at 1
     and 4 rows.
   Each row adds (T4 - T1) / 3. Scaled to the default model's step (6 heads, 6 latent layers,
   4,095 shared slots, 12.54 M byte products a row: run 11) and halved for two threads, as if
   they split it with no loss, this is the least each variation can add to a step with these
   kernels on this CPU: a floor, since a step's data is not all in cache. It prints JSON.

       gcc -O3 -mavx2 -mfma -mf16c -pthread -I. -DSRC='"perceiver_music/native/decode_step.c"' \
           -o /tmp/floor bench/experiments/variation_floor.c -lm && /tmp/floor */
#include SRC
#include <stdio.h>
#include <time.h>

enum { HD = 64, HEADS = 6, LAYERS = 6, ROWS = 4, STEP_SHARED = 4095, OWN = 32 };
static const double ROW_PRODUCTS = 12.54e6;  /* byte products of one row's weights a step (run 11) */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *random_codes(size_t n) {
    int8_t *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    for (size_t i = 0; i < n; i++)
        p[i] = (int8_t)(rand() % 255 - 127);
    return p;
}

static float *filled(size_t n, float lo, float hi) {
    float *p = aligned_alloc(64, ((n * sizeof(float)) + 63) & ~(size_t)63);
    for (size_t i = 0; i < n; i++)
        p[i] = lo + (hi - lo) * (float)rand() / (float)RAND_MAX;
    return p;
}

/* One head's attention for `rows` rows: `shared` slots every row reads (0: none) and `own` slots
   of each row's own. Two heads, of which part 0 does the first: one head's data, kept hot. */
static RowsAttention one_head(int32_t rows, int32_t shared, int32_t own) {
    const int32_t H = 2, width = H * HD;
    RowsAttention a = {.rows = rows, .heads = H, .head_dim = HD, .kind = CACHE_I8, .write = -1};
    a.q = filled((size_t)rows * MAX_WIDTH, -1.0f, 1.0f);
    a.k_new = filled((size_t)rows * width, -1.0f, 1.0f);
    a.v_new = filled((size_t)rows * width, -1.0f, 1.0f);
    a.y = filled((size_t)rows * MAX_WIDTH, 0.0f, 0.0f);
    a.shared_slots = a.shared_used = shared;
    if (shared) {
        a.shared_k_t = random_codes((size_t)H * HD * shared);
        a.shared_v = random_codes((size_t)H * HD * shared);
        a.shared_k_scale = filled((size_t)H * shared, 0.01f, 0.02f);
        a.shared_v_scale = filled((size_t)H * shared, 0.01f, 0.02f);
        a.shared_mask = filled(shared, 0.0f, 0.0f);
    }
    a.slots = a.used = own;
    a.k_t = random_codes((size_t)rows * H * HD * own);
    a.v = random_codes((size_t)rows * H * HD * own);
    a.k_scale = filled((size_t)rows * H * own, 0.01f, 0.02f);
    a.v_scale = filled((size_t)rows * H * own, 0.01f, 0.02f);
    a.mask = filled(own, 0.0f, 0.0f);
    return a;
}

/* Best of 3 runs of `calls` calls of once(c, arg), in us a call */
static double best_us(Context *c, void (*once)(Context *, const void *), const void *arg, int calls) {
    double best = 1e30;
    for (int run = 0; run < 3; run++) {
        const double start = now();
        for (int i = 0; i < calls; i++)
            once(c, arg);
        const double seconds = now() - start;
        best = seconds < best ? seconds : best;
    }
    return best / calls * 1e6;
}

/* one thread's share of a head's attention: part 0 does the first of one_head's two heads */
static void first_head(Context *c, const void *attention) {
    attention_rows_part(c, attention, 0);
}

/* both threads' shares of a product, one after the other */
static void whole_product(Context *c, const void *product) {
    rows_product_part(c, product, 0);
    rows_product_part(c, product, 1);
}

/* us a call of the rows' products over one weight of 1,024 x 384 random 7-bit codes */
static double products_us(Context *c, int32_t rows, int calls) {
    enum { N = 1024, K = 384 };
    static Weight w;
    if (!w.codes) {
        int32_t *colsum = calloc(N, sizeof(int32_t));
        int8_t *codes = aligned_alloc(64, (size_t)N * K);
        for (long i = 0; i < (long)N * K; i++)
            codes[i] = (int8_t)(rand() % 127 - 63);
        w = (Weight){K, N, codes, filled(N, 0.01f, 0.01f), colsum, NULL};
        for (int i = 0; i < ROWS * MAX_WIDTH; i++)  /* ensure_rows made ROWS rows of bytes */
            c->row_xq[i] = rand() & 255;
    }
    float *y = filled((size_t)rows * N, 0.0f, 0.0f);
    const RowsProduct p = {&w, NULL, y, rows, N, KEEP, NULL};
    const double us = best_us(c, whole_product, &p, calls);
    free(y);
    return us;
}

static int by_value(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { ROUNDS = 21 };

int main(int argc, char **argv) {
    const int32_t shared = argc > 1 ? atoi(argv[1]) : 2048, latent = argc > 2 ? atoi(argv[2]) : 448;
    srand(1);
    Context *c = create_context(1);
    if (shared < 64 || latent < 32 || ensure_rows(c, ROWS, shared + OWN > latent ? shared + OWN : latent)) {
        fprintf(stderr, "usage: floor [shared slots >= 64] [latent slots >= 32]\n");
        return 2;
    }
    const RowsAttention cross1 = one_head(1, shared, OWN), cross4 = one_head(ROWS, shared, OWN);
    const RowsAttention latent1 = one_head(1, 0, latent), latent4 = one_head(ROWS, 0, latent);
    /* us a call of each, round after round, so that 1 and 4 rows are timed side by side */
    double t[6][ROUNDS], adds[4][ROUNDS];
    const int cross_calls = 40 * 4096 / shared, latent_calls = 400;
    for (int round = 0; round < ROUNDS; round++) {
        t[0][round] = best_us(c, first_head, &cross1, cross_calls);
        t[1][round] = best_us(c, first_head, &cross4, cross_calls);
        t[2][round] = best_us(c, first_head, &latent1, latent_calls);
        t[3][round] = best_us(c, first_head, &latent4, latent_calls);
        t[4][round] = products_us(c, 1, 60);
        t[5][round] = products_us(c, ROWS, 60);
        /* each row adds (T4 - T1) / 3, scaled to the default model's step and halved for two threads:
           the cross-attend's 6 heads over 4,095 slots, 6 latent layers of 6 heads, 12.54 M products */
        adds[0][round] = (t[1][round] - t[0][round]) / 3 * HEADS * ((double)STEP_SHARED / shared) / 2;
        adds[1][round] = (t[3][round] - t[2][round]) / 3 * HEADS * LAYERS / 2;
        adds[2][round] = (t[5][round] - t[4][round]) / 3 * (ROW_PRODUCTS / (1024.0 * 384)) / 2;
        adds[3][round] = adds[0][round] + adds[1][round] + adds[2][round];
    }
    for (int i = 0; i < 6; i++)
        qsort(t[i], ROUNDS, sizeof(double), by_value);
    for (int i = 0; i < 4; i++)
        qsort(adds[i], ROUNDS, sizeof(double), by_value);
    const int lo = ROUNDS / 4, mid = ROUNDS / 2, hi = ROUNDS - 1 - ROUNDS / 4;
    printf("{\"shared_slots_timed\": %d, \"latent_slots\": %d, \"rounds\": %d,\n", shared, latent, ROUNDS);
    printf(" \"one_head_us_median\": {\"cross_1_row\": %.3f, \"cross_4_rows\": %.3f, \"latent_1_row\": %.3f, "
           "\"latent_4_rows\": %.3f},\n", t[0][mid], t[1][mid], t[2][mid], t[3][mid]);
    printf(" \"products_1024x384_us_median\": {\"1_row\": %.3f, \"4_rows\": %.3f},\n", t[4][mid], t[5][mid]);
    const char *names[4] = {"cross_attend", "latent_attention", "products", "sum"};
    printf(" \"each_row_adds_to_a_step_us_two_threads\": {");
    for (int i = 0; i < 4; i++)
        printf("%s\"%s\": {\"median\": %.1f, \"quartiles\": [%.1f, %.1f]}", i ? ", " : "", names[i], adds[i][mid],
               adds[i][lo], adds[i][hi]);
    printf("}}\n");
    destroy_context(c);
    return 0;
}
