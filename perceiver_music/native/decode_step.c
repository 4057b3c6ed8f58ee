/* The decode step in kernels of our own (perceiver_music/native_step.py builds and loads it;
   decode_onnx.OnnxDecoder runs it in place of onnxruntime's step): step() for one row,
   step_rows() for 1 to MAX_ROWS rows, each weight read once for all of them.

   On a 2-core CPU onnxruntime's step took 1.5-1.9 ms at batch 1 (default model, 4,096 cached
   inputs), most of it outside the arithmetic; this one takes 0.5-1.0 ms in int8 (BENCHMARKS.md).
   It computes what decode_onnx.StepGraph computes, from the same weights (query weights carrying
   the attention scale; RoPE as x * cos + rotated(x) * sin, where the graph's rotated weight rows
   give rotated(x) by a product and rope() by moving and negating x's values) and the same
   caches (the cross-attend ring, keys transposed, with its additive mask; the latent caches
   likewise), and writes the same outputs.

   Weight products are int8 or float32 (FMA), both over weights stored output after output, as
   torch's Linear stores them. int8: 7-bit codes with one scale per output; the row quantised to
   bytes with a scale and zero point (onnxruntime's dynamic quantisation); vpmaddubsw multiplies
   bytes pairwise into 16 bits (at most 2 * 255 * 63 = 32130: 7-bit codes keep it from
   saturating), vpmaddwd adds pairs into 32 bits, and
   y[n] = scale_x * scale[n] * (sum_k xq[k] code[n][k] - zero_x * colsum[n]).
   Attention is one pass of scores over the ring, a softmax with an exp of our own, and one pass
   over the values; it reads only the slots a cache has ever written. The caches are float32,
   float16 (F16C converts them as they are loaded) or int8: each head's key or value at a slot as
   hd codes round(x / scale) with scale = max|x| / 127 (the slot's scale multiplies its score,
   and its softmax weight before the values are summed). With int8 caches the query is coded the
   same way, and its scores are sums of byte products (byte_scores): exact integers, the same
   on every CPU. Each head's attention, once done, stores the head's new K/V into the slots the
   caller names (cross_write, latent_write), in the caches' kind: nothing later in the step reads
   that head of those caches, and so both threads store their own heads.

   AVX2, FMA and F16C (every x86-64 laptop since 2013-2015), and VNNI's byte products where the
   CPU has them (dot_bytes); with AVX-512 VNNI also 512-bit kernels for the rows' int8 products
   and int8 values (int8_rows_512, weighted_codes_512, shared_codes_512: the same sums, so every
   build gives the same logits). Two threads: the caller's and a worker
   that spins between tasks and sleeps when idle; each task is split in two (outputs of a
   product, heads of an attention). */

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t K, N;
    const int8_t *codes;    /* int8: N outputs of K codes, else NULL */
    const float *scale;     /* int8: N */
    const int32_t *colsum;  /* int8: N, each output's sum of codes */
    const float *w;         /* float32: N outputs of K weights, else NULL */
} Weight;

typedef struct {
    const float *weight, *bias;
} Norm;

typedef struct {
    Norm norm1, norm2;
    Weight qkv, out, fc, proj;  /* qkv: q, k, v */
} Block;

typedef struct {
    int32_t d, cross_heads, cross_head_dim, heads, head_dim;  /* heads * head_dim = d, both kinds */
    int32_t vocab, layers, latent_slots, positions;  /* positions: the tables' rows */
    int32_t cross_half, half;     /* RoPE: per head, dims [0, half) pair with [half, 2 half); the rest stay */
    const float *embedding;       /* vocab x d */
    const float *cross_cos, *cross_sin;  /* positions x cross_head_dim */
    const float *self_cos, *self_sin;    /* positions x head_dim */
    Norm q_norm, kv_norm, mlp_norm, final_norm;
    Weight cross_q, cross_kv, cross_out, cross_fc, cross_proj, head;  /* cross_kv: k, v */
    const Block *blocks;
} Model;

typedef struct {
    int64_t token, pos;
    /* Rings hold `slots` slots of which the first `used` may hold inputs (the rest never written,
       masked): attention reads those only. */
    int32_t slots, cross_used, latent_used;
    /* Where the step stores its new K/V once a head's attention is done (-1: nowhere): a slot of
       the ring and a slot of every layer's latent cache, so that the caller need not copy them in. */
    int32_t cross_write, latent_write;
    int32_t cross_kind;                /* the ring's: CACHE_F32, CACHE_F16 or CACHE_I8 */
    void *cross_k_t, *cross_v;         /* (Hc, hdc, slots), (Hc, slots, hdc) */
    float *cross_k_scale, *cross_v_scale;  /* int8: (Hc, slots) each, else NULL */
    const float *cross_mask;           /* (slots) */
    const float *latent_mask;          /* (latent_slots) */
    int32_t latent_kind;               /* the latent caches', as cross_kind */
    void *const *latent_k_t;           /* per layer (H, hd, latent_slots) */
    void *const *latent_v;             /* per layer (H, latent_slots, hd) */
    float *const *latent_k_scale, *const *latent_v_scale;  /* int8: per layer (H, latent_slots) */
    float *logits, *new_cross_k, *new_cross_v;
    float *const *new_latent_k, *const *new_latent_v;  /* per layer (H, hd) */
} Step;

/* A step of several rows (variations of one primer, or several prompts): each row its own token,
   all at one position. The cross-attend reads the inputs every row has once (`shared`: the
   primer under its variations; shared_slots 0 if none) beside each row's own: shared_used slots
   from slot shared_from on (the primer slides out from its first slot, and the slots it left
   are not read). */
typedef struct {
    int32_t rows;
    const int64_t *tokens;             /* (rows) */
    int64_t pos;
    int32_t shared_slots, shared_used;  /* as Step's slots and cross_used */
    int32_t cross_kind;                /* both rings', as Step's */
    const void *shared_k_t, *shared_v;  /* (Hc, hdc, S1), (Hc, S1, hdc) */
    const float *shared_k_scale, *shared_v_scale;  /* int8: (Hc, S1) each */
    const float *shared_mask;          /* (S1) */
    int32_t slots, cross_used, latent_used;
    int32_t cross_write, latent_write;  /* as Step's: each row's own ring and latent caches */
    void *cross_k_t, *cross_v;         /* (rows, Hc, hdc, S2), (rows, Hc, S2, hdc) */
    float *cross_k_scale, *cross_v_scale;  /* int8: (rows, Hc, S2) each */
    const float *cross_mask;           /* (S2) */
    const float *latent_mask;
    int32_t latent_kind;                               /* as Step's */
    void *const *latent_k_t, *const *latent_v;         /* per layer (rows, H, hd, N), (rows, H, N, hd) */
    float *const *latent_k_scale, *const *latent_v_scale;  /* int8: per layer (rows, H, N) */
    float *logits, *new_cross_k, *new_cross_v;         /* (rows, vocab), (rows, Hc, hdc) x 2 */
    float *const *new_latent_k, *const *new_latent_v;  /* per layer (rows, H, hd) */
    int32_t shared_from;
} RowsStep;

#define MAX_ROWS 16
/* CALL(R) with R the constant 4, 3, 2 or 1 for `left` rows (from 1 on): kernels take up to four
   rows at a time, their count a constant so that their sums stay in registers */
#define BY_ROWS(left, CALL)          \
    do {                             \
        if ((left) >= 4) CALL(4);    \
        else if ((left) == 3) CALL(3); \
        else if ((left) == 2) CALL(2); \
        else CALL(1);                \
    } while (0)
enum { CACHE_F32 = 0, CACHE_F16 = 1, CACHE_I8 = 2 };  /* what a cache holds per value */
#define MAX_WIDTH 8192
#define MAX_SLOTS 65536
#define MAX_HEAD_DIM 128
#define SPIN_LIMIT 20000  /* pauses (about 1-3 ms) before an idle worker sleeps */

typedef struct Context Context;
typedef void (*TaskFn)(Context *c, const void *arg, int part);

/* Everything one step owner needs: its buffers, and its worker thread, which spins between
   tasks and sleeps when idle for longer. One per decoder, so that steps of different decoders
   can run at the same time. */
struct Context {
    float scores[2][MAX_SLOTS + 8] __attribute__((aligned(32)));  /* one per thread */
    uint8_t xq[MAX_WIDTH] __attribute__((aligned(32)));
    float x[MAX_WIDTH], a[MAX_WIDTH], b[MAX_WIDTH], wide[MAX_WIDTH], y[MAX_WIDTH], q[MAX_WIDTH];
    /* Each thread spins on a cache line of its own, apart from what the caller writes per task:
       a write to a line that the other thread spins on costs both of them. */
    _Alignas(64) atomic_int posted;  /* the worker spins on this line */
    atomic_int stopping, sleeping, resting;  /* resting: sleep now, no spin (rest()) */
    _Alignas(64) atomic_int finished;  /* the caller spins on this one */
    _Alignas(64) TaskFn task_fn;
    const void *task_arg;
    int generation, two_threads;
    float xscale;
    int32_t xzero;
    /* step_rows' buffers, made on its first call and grown as needed: rows x MAX_WIDTH for each
       of x, a, b, wide, y, q and the bytes; scores, rows x score_stride per thread */
    int32_t work_rows, score_stride;
    float *work, *row_scores[2];
    uint8_t *row_xq;
    float row_xscale[MAX_ROWS];
    int32_t row_xzero[MAX_ROWS];
    _Alignas(64) pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t worker;
};

/* ---- two threads: tasks split in two halves ---- */

static void *work(void *arg) {
    Context *c = arg;
    int seen = 0;
    for (;;) {
        int now, spins = 0;
        while ((now = atomic_load_explicit(&c->posted, memory_order_acquire)) == seen) {
            if (atomic_load(&c->stopping))
                return 0;
            if (++spins < SPIN_LIMIT && !atomic_load_explicit(&c->resting, memory_order_relaxed)) {
                _mm_pause();
                continue;
            }
            /* Asleep: the poster signals when it sees `sleeping` (both sides seq_cst, so it
               either sees it or this thread sees the new task before waiting). */
            pthread_mutex_lock(&c->lock);
            atomic_store(&c->sleeping, 1);
            while (atomic_load(&c->posted) == seen && !atomic_load(&c->stopping))
                pthread_cond_wait(&c->wake, &c->lock);
            atomic_store(&c->sleeping, 0);
            pthread_mutex_unlock(&c->lock);
            spins = 0;
        }
        seen = now;
        c->task_fn(c, c->task_arg, 1);
        atomic_store_explicit(&c->finished, seen, memory_order_release);
    }
}

static void wake_worker(Context *c) {
    if (atomic_load(&c->sleeping)) {
        pthread_mutex_lock(&c->lock);
        pthread_cond_signal(&c->wake);
        pthread_mutex_unlock(&c->lock);
    }
}

/* A context with two threads (the caller's and a worker) or one. NULL if out of memory. */
Context *create_context(int32_t threads) {
    Context *c = aligned_alloc(_Alignof(Context), sizeof(Context));
    if (!c)
        return 0;
    memset(c, 0, sizeof(Context));
    pthread_mutex_init(&c->lock, 0);
    pthread_cond_init(&c->wake, 0);
    c->two_threads = threads == 2 && pthread_create(&c->worker, 0, work, c) == 0;
    return c;
}

int context_threads(const Context *c) {
    return c->two_threads ? 2 : 1;
}

/* The worker sleeps now instead of spinning until its next task: the caller is about to hand
   both cores to other work (an onnxruntime reset), which a spinning worker would slow down. */
void rest(Context *c) {
    atomic_store(&c->resting, 1);
}

void destroy_context(Context *c) {
    if (!c)
        return;
    if (c->two_threads) {
        atomic_store(&c->stopping, 1);
        pthread_mutex_lock(&c->lock);
        pthread_cond_signal(&c->wake);
        pthread_mutex_unlock(&c->lock);
        pthread_join(c->worker, 0);
    }
    pthread_cond_destroy(&c->wake);
    pthread_mutex_destroy(&c->lock);
    free(c->work);
    free(c->row_xq);
    free(c->row_scores[0]);
    free(c->row_scores[1]);
    free(c);
}

static void run_task(Context *c, TaskFn fn, const void *arg) {
    if (!c->two_threads) {
        fn(c, arg, 0);
        fn(c, arg, 1);
        return;
    }
    c->task_fn = fn;
    c->task_arg = arg;
    atomic_store(&c->resting, 0);
    atomic_store(&c->posted, ++c->generation);
    wake_worker(c);
    fn(c, arg, 0);
    while (atomic_load_explicit(&c->finished, memory_order_acquire) != c->generation)
        _mm_pause();
}

/* ---- small pieces ---- */

static float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    return _mm_cvtss_f32(s);
}

/* The sums of eight vectors' lanes, as one vector: lane i holds a_i's (integer sums: the same
   whatever the order). Nine instructions where eight hsum_epi32 take about 56. */
static inline __m256i hsum8_epi32(__m256i a0, __m256i a1, __m256i a2, __m256i a3, __m256i a4, __m256i a5,
                                  __m256i a6, __m256i a7) {
    const __m256i s0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    const __m256i s1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a4, a5), _mm256_hadd_epi32(a6, a7));
    /* s0: a0..a3's low-lane sums, then their high-lane sums; s1 the same of a4..a7 */
    return _mm256_add_epi32(_mm256_permute2x128_si256(s0, s1, 0x20), _mm256_permute2x128_si256(s0, s1, 0x31));
}

static float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

/* max |x[i]| over n (a multiple of 8) floats */
static float max_abs(const float *x, int32_t n) {
    __m256 top = _mm256_setzero_ps();
    for (int32_t i = 0; i < n; i += 8)
        top = _mm256_max_ps(top, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_loadu_ps(x + i)));
    return hmax_ps(top);
}

static int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* e^x for 8 floats: x = n ln2 + r, e^r by a degree-6 polynomial (Cephes' expf coefficients),
   2^n through the exponent bits. -inf and anything below -87 give 0. */
static __m256 exp_ps(__m256 x) {
    const __m256 low = _mm256_set1_ps(-87.0f);
    __m256 zero_mask = _mm256_cmp_ps(x, low, _CMP_LT_OQ);
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), low);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero_mask, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

/* d a multiple of 8 (supported()) */
static void layer_norm(const float *x, int32_t d, Norm norm, float *y) {
    __m256 sum = _mm256_setzero_ps();
    for (int32_t i = 0; i < d; i += 8)
        sum = _mm256_add_ps(sum, _mm256_loadu_ps(x + i));
    const __m256 mean = _mm256_set1_ps(hsum_ps(sum) / (float)d);
    __m256 squares = _mm256_setzero_ps();
    for (int32_t i = 0; i < d; i += 8) {
        const __m256 centred = _mm256_sub_ps(_mm256_loadu_ps(x + i), mean);
        squares = _mm256_fmadd_ps(centred, centred, squares);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sqrtf(hsum_ps(squares) / (float)d + 1e-5f));
    for (int32_t i = 0; i < d; i += 8) {
        const __m256 normed = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mean), inv);
        const __m256 weight = _mm256_loadu_ps(norm.weight + i), bias = _mm256_loadu_ps(norm.bias + i);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(normed, weight, bias));
    }
}

/* The row to bytes, as onnxruntime's dynamic quantisation does: one scale and zero point over
   [min(x, 0), max(x, 0)], xq = round(x / scale) + zero in 0..255. */
static void quantize_into(const float *x, int32_t K, uint8_t *xq, float *scale, int32_t *zero) {
    __m256 top = _mm256_setzero_ps(), bottom = _mm256_setzero_ps();
    for (int32_t k = 0; k < K; k += 8) {
        __m256 v = _mm256_loadu_ps(x + k);
        top = _mm256_max_ps(top, v);
        bottom = _mm256_min_ps(bottom, v);
    }
    __m128 hi = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
    hi = _mm_max_ps(hi, _mm_shuffle_ps(hi, hi, 0x4e));
    hi = _mm_max_ps(hi, _mm_shuffle_ps(hi, hi, 0xb1));
    __m128 lo = _mm_min_ps(_mm256_castps256_ps128(bottom), _mm256_extractf128_ps(bottom, 1));
    lo = _mm_min_ps(lo, _mm_shuffle_ps(lo, lo, 0x4e));
    lo = _mm_min_ps(lo, _mm_shuffle_ps(lo, lo, 0xb1));
    float range = _mm_cvtss_f32(hi) - _mm_cvtss_f32(lo);
    *scale = range > 0.0f ? range / 255.0f : 1.0f;
    *zero = (int32_t)nearbyintf(-_mm_cvtss_f32(lo) / *scale);
    const __m256 inverse = _mm256_set1_ps(1.0f / *scale);
    const __m256i offset = _mm256_set1_epi32(*zero);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  /* undo the packs' lane interleave */
    for (int32_t k = 0; k < K; k += 32) {
        __m256i v0 = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), inverse)), offset);
        __m256i v1 = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), inverse)), offset);
        __m256i v2 = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 16), inverse)), offset);
        __m256i v3 = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 24), inverse)), offset);
        __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(v0, v1), _mm256_packus_epi32(v2, v3));
        _mm256_store_si256((__m256i *)(xq + k), _mm256_permutevar8x32_epi32(bytes, order));
    }
}

static void quantize(Context *c, const float *x, int32_t K) {
    quantize_into(x, K, c->xq, &c->xscale, &c->xzero);
}

/* ---- weight products: y = W x, split by outputs ---- */

/* What each thread does to its share of a product's outputs once they are computed, so that the
   MLP's activation and the residual sums run on both threads, not after the task on one. */
typedef enum { KEEP, RELU_SQUARED, ADD_INTO } Finish;

/* y[first..last) squared where positive, else 0 (RELU_SQUARED), or added into to[] (ADD_INTO) */
static void finish_outputs(float *y, float *to, int32_t first, int32_t last, Finish finish) {
    int32_t i = first;
    if (finish == RELU_SQUARED) {
        for (; i + 8 <= last; i += 8) {
            const __m256 v = _mm256_max_ps(_mm256_loadu_ps(y + i), _mm256_setzero_ps());
            _mm256_storeu_ps(y + i, _mm256_mul_ps(v, v));
        }
        for (; i < last; i++) {
            const float v = y[i] > 0.0f ? y[i] : 0.0f;
            y[i] = v * v;
        }
    } else if (finish == ADD_INTO) {
        for (; i + 8 <= last; i += 8)
            _mm256_storeu_ps(to + i, _mm256_add_ps(_mm256_loadu_ps(to + i), _mm256_loadu_ps(y + i)));
        for (; i < last; i++)
            to[i] += y[i];
    }
}

typedef struct {
    const Weight *w;
    const float *x;
    float *y;
    Finish finish;
    float *to;  /* ADD_INTO's */
} Product;

/* acc + the byte products of x (unsigned) and w (signed), summed in fours into 8 ints. With VNNI
   (built so where the CPU has it: native_step.py) one instruction; else vpmaddubsw's pairs in 16
   bits, which 7-bit codes keep from saturating, and vpmaddwd's sums of pairs: the same sums. */
static inline __m256i dot_bytes(__m256i acc, __m256i x, __m256i w) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, x, w);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, x, w);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), _mm256_set1_epi16(1)));
#endif
}

static inline __m256i add_products(__m256i acc, __m256i x, const int8_t *codes) {
    return dot_bytes(acc, x, _mm256_loadu_si256((const __m256i *)codes));
}

static void int8_outputs(const Context *ctx, const Weight *w, float *y, int32_t first, int32_t last) {
    const int32_t K = w->K;
    int32_t n = first;
    for (; n + 4 <= last; n += 4) {  /* four outputs share each load of the row */
        const int8_t *c = w->codes + (int64_t)n * K;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int32_t k = 0; k < K; k += 32) {
            __m256i x = _mm256_load_si256((const __m256i *)(ctx->xq + k));
            a0 = add_products(a0, x, c + k);
            a1 = add_products(a1, x, c + K + k);
            a2 = add_products(a2, x, c + 2 * K + k);
            a3 = add_products(a3, x, c + 3 * K + k);
        }
        int32_t sums[4] = {hsum_epi32(a0), hsum_epi32(a1), hsum_epi32(a2), hsum_epi32(a3)};
        for (int j = 0; j < 4; j++)
            y[n + j] = ctx->xscale * w->scale[n + j] * (float)(sums[j] - ctx->xzero * w->colsum[n + j]);
    }
    for (; n < last; n++) {
        const int8_t *c = w->codes + (int64_t)n * K;
        __m256i a = _mm256_setzero_si256();
        for (int32_t k = 0; k < K; k += 32)
            a = add_products(a, _mm256_load_si256((const __m256i *)(ctx->xq + k)), c + k);
        y[n] = ctx->xscale * w->scale[n] * (float)(hsum_epi32(a) - ctx->xzero * w->colsum[n]);
    }
}

static void float_outputs(const Weight *w, const float *x, float *y, int32_t first, int32_t last) {
    const int32_t K = w->K;
    int32_t n = first;
    for (; n + 4 <= last; n += 4) {
        const float *r = w->w + (int64_t)n * K;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int32_t k = 0; k < K; k += 8) {
            __m256 v = _mm256_loadu_ps(x + k);
            a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(r + k), a0);
            a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(r + K + k), a1);
            a2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(r + 2 * K + k), a2);
            a3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(r + 3 * K + k), a3);
        }
        y[n] = hsum_ps(a0);
        y[n + 1] = hsum_ps(a1);
        y[n + 2] = hsum_ps(a2);
        y[n + 3] = hsum_ps(a3);
    }
    for (; n < last; n++) {
        const float *r = w->w + (int64_t)n * K;
        __m256 a = _mm256_setzero_ps();
        for (int32_t k = 0; k < K; k += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(r + k), a);
        y[n] = hsum_ps(a);
    }
}

static void product_part(Context *c, const void *arg, int part) {
    const Product *p = arg;
    int32_t split = (p->w->N / 2) & ~3;
    int32_t first = part ? split : 0, last = part ? p->w->N : split;
    if (p->w->codes)
        int8_outputs(c, p->w, p->y, first, last);
    else
        float_outputs(p->w, p->x, p->y, first, last);
    finish_outputs(p->y, p->to, first, last, p->finish);
}

static void product(Context *c, const Weight *w, const float *x, float *y, Finish finish, float *to) {
    Product p = {w, x, y, finish, to};
    if (w->codes)
        quantize(c, x, w->K);
    run_task(c, product_part, &p);
}

/* ---- attention of one query per head over cached keys/values and its own new key/value ---- */

typedef struct {
    int32_t heads, head_dim, slots, used;  /* slots read: the first `used` */
    const float *q, *k_new, *v_new;     /* (H, hd) */
    int32_t kind;                       /* the caches': CACHE_F32, CACHE_F16 or CACHE_I8 */
    void *k_t, *v;                      /* (H, hd, slots), (H, slots, hd) */
    float *k_scale, *v_scale;           /* int8: (H, slots) */
    const float *mask;                  /* (slots) */
    float *y;                           /* (H, hd) */
    int32_t write;                      /* the slot each head stores its new K/V into (-1: none) */
} Attention;

static inline int64_t cache_bytes(int kind) {
    return kind == CACHE_F32 ? 4 : kind == CACHE_F16 ? 2 : 1;
}

/* Eight values from element `index` on of a cache of KIND (a constant): float32, float16 or
   int8 codes (their scale applied by the caller). */
static inline __attribute__((always_inline)) __m256 load8(const void *p, int64_t index, const int KIND) {
    if (KIND == CACHE_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + index)));
    if (KIND == CACHE_I8)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)p + index))));
    return _mm256_loadu_ps((const float *)p + index);
}

static inline __attribute__((always_inline)) float load1(const void *p, int64_t index, const int KIND) {
    if (KIND == CACHE_F16)
        return _cvtsh_ss(((const uint16_t *)p)[index]);
    if (KIND == CACHE_I8)
        return (float)((const int8_t *)p)[index];
    return ((const float *)p)[index];
}

/* hd values as int8 codes at `stride` apart, and their scale: code = round(x / scale) (to even,
   as torch rounds; decode_onnx quantises a reset's K/V the same way), scale = max|x| / 127. */
static float quantize_slot(const float *x, int32_t hd, int8_t *codes, int64_t stride) {
    const float scale = max_abs(x, hd) / 127.0f;
    const __m256 divisor = _mm256_set1_ps(scale > 0.0f ? scale : 1.0f), limit = _mm256_set1_ps(127.0f);
    for (int32_t i = 0; i < hd; i += 8) {  /* a division, as numpy's round(x / scale): the same codes */
        __m256 code = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + i), divisor),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        code = _mm256_max_ps(_mm256_min_ps(code, limit), _mm256_sub_ps(_mm256_setzero_ps(), limit));
        int32_t lanes[8];
        _mm256_storeu_si256((__m256i *)lanes, _mm256_cvtps_epi32(code));
        for (int j = 0; j < 8; j++)
            codes[(i + j) * stride] = (int8_t)lanes[j];
    }
    return scale;
}

/* The caches one step stores its new K/V into: keys (rows, H, hd, slots), values
   (rows, H, slots, hd), of KIND, with int8's scales (rows, H, slots). */
typedef struct {
    int32_t kind, slots;
    void *k_t, *v;
    float *k_scale, *v_scale;
} Stored;

/* Stores the new K/V (hd values each) of head rh (row * H + head) into slot `slot` of `to`, as
   float16 (rounded to nearest, as numpy casts), int8 codes or float32. */
static void store_head(const float *k, const float *v, int32_t hd, Stored to, int64_t rh, int32_t slot) {
    const int64_t slots = to.slots;
    if (to.kind == CACHE_I8) {
        int8_t *k_codes = (int8_t *)to.k_t + rh * hd * slots + slot;
        int8_t *v_codes = (int8_t *)to.v + (rh * slots + slot) * hd;
        to.k_scale[rh * slots + slot] = quantize_slot(k, hd, k_codes, slots);
        to.v_scale[rh * slots + slot] = quantize_slot(v, hd, v_codes, 1);
        return;
    }
    for (int32_t i = 0; i < hd; i++) {
        const int64_t key = (rh * hd + i) * slots + slot, value = (rh * slots + slot) * hd + i;
        if (to.kind == CACHE_F16) {
            ((uint16_t *)to.k_t)[key] = _cvtss_sh(k[i], _MM_FROUND_TO_NEAREST_INT);
            ((uint16_t *)to.v)[value] = _cvtss_sh(v[i], _MM_FROUND_TO_NEAREST_INT);
        } else {
            ((float *)to.k_t)[key] = k[i];
            ((float *)to.v)[value] = v[i];
        }
    }
}

/* w[j] *= scale[j]: softmax weights times an int8 cache's value scales */
static void scale_weights(float *w, const float *scale, int32_t S) {
    int32_t j = 0;
    for (; j + 8 <= S; j += 8)
        _mm256_storeu_ps(w + j, _mm256_mul_ps(_mm256_loadu_ps(w + j), _mm256_loadu_ps(scale + j)));
    for (; j < S; j++)
        w[j] *= scale[j];
}

/* The largest of `start` and s[0..S-1] */
static float max_of(const float *s, int32_t S, float start) {
    __m256 top = _mm256_set1_ps(start);
    int32_t j = 0;
    for (; j + 8 <= S; j += 8)
        top = _mm256_max_ps(top, _mm256_loadu_ps(s + j));
    float best = hmax_ps(top);
    for (; j < S; j++)
        best = s[j] > best ? s[j] : best;
    return best;
}

/* s[j] = exp(s[j] - top) over s[0..S-1]; returns their sum */
static float exp_minus(float *s, int32_t S, float top) {
    const __m256 vtop = _mm256_set1_ps(top);
    __m256 vsum = _mm256_setzero_ps();
    int32_t j = 0;
    for (; j + 8 <= S; j += 8) {
        const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), vtop));
        _mm256_storeu_ps(s + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum_ps(vsum);
    for (; j < S; j++) {
        s[j] = expf(s[j] - top);
        sum += s[j];
    }
    return sum;
}

/* The caches' values are read as one stream a row-head (28 KB of int8 at 448 slots), but the
   hardware prefetchers stop at each 4 KB page; so the readers ask for the line a page ahead
   (with the keys' prefetch in byte_scores, the 4-variation step 0.91-0.96x on the AVX2 EPYC:
   BENCHMARKS.md, run 12). The AVX-512 values kernels below do not: no AVX-512 CPU has measured it. */
#define PAGE 4096

/* Asks for the line a page past byte `at` of a stream of `bytes`, if it lies within it */
static inline void prefetch_page_ahead(const void *stream, int64_t at, int64_t bytes) {
    if (at + PAGE < bytes)
        _mm_prefetch((const char *)stream + at + PAGE, _MM_HINT_T0);
}

/* y = inv * sum_j w[j] v[j, :] over S rows of `vectors` * 8 values */
static inline __attribute__((always_inline)) void weighted_values(const float *w, const void *v, int32_t S,
                                                                  int32_t vectors, float inv, float *y,
                                                                  const int KIND) {
    __m256 acc[MAX_HEAD_DIM / 8];
    for (int i = 0; i < vectors; i++)
        acc[i] = _mm256_setzero_ps();
    const int64_t row_bytes = (int64_t)vectors * 8 * cache_bytes(KIND);
    for (int32_t j = 0; j < S; j++) {
        const __m256 wj = _mm256_set1_ps(w[j]);
        const int64_t row = (int64_t)j * vectors * 8;
        prefetch_page_ahead(v, j * row_bytes, S * row_bytes);
        for (int i = 0; i < vectors; i++)
            acc[i] = _mm256_fmadd_ps(wj, load8(v, row + 8 * i, KIND), acc[i]);
    }
    for (int i = 0; i < vectors; i++)
        _mm256_storeu_ps(y + 8 * i, _mm256_mul_ps(acc[i], _mm256_set1_ps(inv)));
}

#if defined(__AVX512F__)
/* 16 int8 codes as floats */
static inline __m512 codes16(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* weighted_values of int8 codes, 16 values an instruction where the CPU has AVX-512: each value
   sums the same products in the same order, so the result is the same to the bit. */
static inline __attribute__((always_inline)) void weighted_codes_512(const float *w, const int8_t *v, int32_t S,
                                                                     int32_t vectors, float inv, float *y) {
    __m512 acc[MAX_HEAD_DIM / 16];
    for (int i = 0; i < vectors; i++)
        acc[i] = _mm512_setzero_ps();
    for (int32_t j = 0; j < S; j++) {
        const __m512 wj = _mm512_set1_ps(w[j]);
        const int8_t *row = v + (int64_t)j * vectors * 16;
        for (int i = 0; i < vectors; i++)
            acc[i] = _mm512_fmadd_ps(wj, codes16(row + 16 * i), acc[i]);
    }
    for (int i = 0; i < vectors; i++)
        _mm512_storeu_ps(y + 16 * i, _mm512_mul_ps(acc[i], _mm512_set1_ps(inv)));
}
#endif

/* weighted_values with a constant count where hd is the default model's 64 (the sums stay in
   registers), for each kind of cache */
static void values_of(const float *w, const void *v, int32_t S, int32_t hd, float inv, float *y, int kind) {
#if defined(__AVX512F__)
    if (kind == CACHE_I8 && hd % 16 == 0) {
        if (hd == 64)
            weighted_codes_512(w, v, S, 4, inv, y);
        else
            weighted_codes_512(w, v, S, hd / 16, inv, y);
        return;
    }
#endif
#define VALUES(KIND) hd == 64 ? weighted_values(w, v, S, 8, inv, y, KIND) : weighted_values(w, v, S, hd / 8, inv, y, KIND)
    if (kind == CACHE_F16)
        VALUES(CACHE_F16);
    else if (kind == CACHE_I8)
        VALUES(CACHE_I8);
    else
        VALUES(CACHE_F32);
#undef VALUES
}

/* s[j] += sum_i q[i] k_t[i, j] over slots 0..S-1 of rows `stride` apart, four of the head's dims
   per pass: one load and store of the scores per four products (hd is a multiple of 8). */
static inline __attribute__((always_inline)) void add_scores_of(float *s, const float *q, const void *kt, int32_t S,
                                                                int32_t stride, int32_t hd, const int KIND) {
    for (int32_t i = 0; i < hd; i += 4) {
        const __m256 q0 = _mm256_set1_ps(q[i]), q1 = _mm256_set1_ps(q[i + 1]);
        const __m256 q2 = _mm256_set1_ps(q[i + 2]), q3 = _mm256_set1_ps(q[i + 3]);
        const int64_t k0 = (int64_t)i * stride, k1 = k0 + stride, k2 = k1 + stride, k3 = k2 + stride;
        int32_t j = 0;
        for (; j + 8 <= S; j += 8) {
            __m256 a = _mm256_fmadd_ps(q0, load8(kt, k0 + j, KIND), _mm256_loadu_ps(s + j));
            a = _mm256_fmadd_ps(q1, load8(kt, k1 + j, KIND), a);
            a = _mm256_fmadd_ps(q2, load8(kt, k2 + j, KIND), a);
            _mm256_storeu_ps(s + j, _mm256_fmadd_ps(q3, load8(kt, k3 + j, KIND), a));
        }
        for (; j < S; j++)
            s[j] += q[i] * load1(kt, k0 + j, KIND) + q[i + 1] * load1(kt, k1 + j, KIND) +
                    q[i + 2] * load1(kt, k2 + j, KIND) + q[i + 3] * load1(kt, k3 + j, KIND);
    }
}

static void add_scores(float *s, const float *q, const void *kt, int32_t S, int32_t stride, int32_t hd, int kind) {
    if (kind == CACHE_F16)
        add_scores_of(s, q, kt, S, stride, hd, CACHE_F16);
    else
        add_scores_of(s, q, kt, S, stride, hd, CACHE_F32);
}

/* ---- an int8 cache's scores in byte products ---- */

#define SCORE_BLOCK 512  /* slots per pass over the heads' dims: the rows' scores stay in L1 */

/* A head's query as int8 codes with one scale, as a cache codes its keys (max|q| / 127;
   quantize_query), four dims to an int (one broadcast feeds four byte products), and the value
   its sums of products start from. */
typedef struct {
    int8_t codes[MAX_HEAD_DIM];
    int32_t fours[MAX_HEAD_DIM / 4];
    float scale;
    int32_t start;
} QueryCodes;

/* Four byte products of key codes and query codes summed into each int of acc, exactly. The
   byte products take one unsigned operand: with VNNI, the key codes plus 128 (key_operand), so
   the sums start at -128 * the query's sum of codes; without, |k| times q with k's sign (the
   pairs' 16-bit sums stay within 2 * 127 * 127). Both give sum q k, so every CPU computes the
   same scores. k: key codes, four dims of a slot to an int; key: key_operand(k). */
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
#define KEY_OFFSET 128
static inline __m256i key_operand(__m256i k) {
    return _mm256_xor_si256(k, _mm256_set1_epi8((char)0x80));
}
static inline __m256i add_key_products(__m256i acc, __m256i key, __m256i k, __m256i q) {
    (void)k;
    return dot_bytes(acc, key, q);
}
#else
#define KEY_OFFSET 0
static inline __m256i key_operand(__m256i k) {
    return _mm256_abs_epi8(k);
}
static inline __m256i add_key_products(__m256i acc, __m256i key, __m256i k, __m256i q) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(key, _mm256_sign_epi8(q, k)),
                                                   _mm256_set1_epi16(1)));
}
#endif

/* hd (a multiple of 8) dims of a query to codes: round(q * 127 / max|q|), to even */
static void quantize_query(const float *q, int32_t hd, QueryCodes *out) {
    const float largest = max_abs(q, hd);
    out->scale = largest / 127.0f;
    const __m256 inverse = _mm256_set1_ps(largest > 0.0f ? 127.0f / largest : 0.0f);
    int32_t total = 0;
    for (int32_t i = 0; i < hd; i += 8) {
        int32_t codes[8];
        _mm256_storeu_si256((__m256i *)codes, _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(q + i), inverse)));
        for (int k = 0; k < 8; k++) {
            const int32_t code = codes[k] > 127 ? 127 : codes[k] < -127 ? -127 : codes[k];
            out->codes[i + k] = (int8_t)code;
            total += code;
        }
    }
    memcpy(out->fours, out->codes, hd);
    out->start = -KEY_OFFSET * total;
}

/* Slots j..j+7 of four dims' rows of keys (`stride` apart) as one vector: slot after slot, each
   slot's four codes in one int. */
static inline __m256i four_dims_of_8(const int8_t *k, int64_t stride) {
    const __m128i a = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)k),
                                        _mm_loadl_epi64((const __m128i *)(k + stride)));
    const __m128i b = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(k + 2 * stride)),
                                        _mm_loadl_epi64((const __m128i *)(k + 3 * stride)));
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi16(a, b)), _mm_unpackhi_epi16(a, b), 1);
}

/* The codes of dims i..i+3 at slots j..j+31 of keys (transposed, rows `stride` apart), four dims
   of a slot to an int: t[0] holds slots 0-3 and 16-19, t[1] 4-7 and 20-23, t[2] 8-11 and
   24-27, t[3] 12-15 and 28-31 (the unpacks work within 128-bit lanes). */
static inline __attribute__((always_inline)) void four_dims_of_32(const int8_t *k, int64_t stride, __m256i *t) {
    const __m256i k0 = _mm256_loadu_si256((const __m256i *)k);
    const __m256i k1 = _mm256_loadu_si256((const __m256i *)(k + stride));
    const __m256i k2 = _mm256_loadu_si256((const __m256i *)(k + 2 * stride));
    const __m256i k3 = _mm256_loadu_si256((const __m256i *)(k + 3 * stride));
    const __m256i a = _mm256_unpacklo_epi8(k0, k1), b = _mm256_unpackhi_epi8(k0, k1);
    const __m256i c = _mm256_unpacklo_epi8(k2, k3), d = _mm256_unpackhi_epi8(k2, k3);
    t[0] = _mm256_unpacklo_epi16(a, c);
    t[1] = _mm256_unpackhi_epi16(a, c);
    t[2] = _mm256_unpacklo_epi16(b, d);
    t[3] = _mm256_unpackhi_epi16(b, d);
}

/* s_r[j] = q_r's scale * sum_i q_r[i] k_t[i, j] * k_scale[j] + mask[j] for ROWS rows (a
   constant) over slots 0..S-1 of int8 keys (transposed, rows `stride` apart). Eight dims per
   pass over a block of slots, the sums kept as ints in s_r itself (in four_dims_of_32's order),
   so that the keys are read as eight streams: reading all 64 rows (4,096 bytes apart) at once,
   slot block after slot block, thrashes the L1 cache (measured: slower than float products).
   Each load and shuffle serves all the rows. */
static inline __attribute__((always_inline)) void byte_scores(float *const *s, const QueryCodes *const *q,
                                                              const int8_t *kt, const float *k_scale,
                                                              const float *mask, int32_t S, int32_t stride,
                                                              int32_t hd, const int ROWS) {
    const int32_t S32 = S & ~31;
    for (int32_t jb = 0; jb < S32; jb += SCORE_BLOCK) {
        const int32_t je = jb + SCORE_BLOCK < S32 ? jb + SCORE_BLOCK : S32;
        for (int32_t i = 0; i < hd; i += 8) {
            for (int32_t j = jb; j < je; j += 32) {
                __m256i t[4], u[4];
                /* a pass reads eight rows of keys a block long, streams too short for the hardware
                   prefetcher to catch: ask for the next pass's rows a line ahead */
                if (!(j & 63) && i + 8 < hd)
                    for (int m = 0; m < 8; m++)
                        _mm_prefetch((const char *)(kt + (int64_t)(i + 8 + m) * stride + j), _MM_HINT_T0);
                four_dims_of_32(kt + (int64_t)i * stride + j, stride, t);
                four_dims_of_32(kt + (int64_t)(i + 4) * stride + j, stride, u);
                for (int r = 0; r < ROWS; r++) {
                    __m256i *sums = (__m256i *)(s[r] + j);
                    const __m256i qt = _mm256_set1_epi32(q[r]->fours[i / 4]);
                    const __m256i qu = _mm256_set1_epi32(q[r]->fours[i / 4 + 1]);
                    for (int m = 0; m < 4; m++) {
                        __m256i acc = i ? _mm256_loadu_si256(sums + m) : _mm256_set1_epi32(q[r]->start);
                        acc = add_key_products(acc, key_operand(t[m]), t[m], qt);
                        _mm256_storeu_si256(sums + m, add_key_products(acc, key_operand(u[m]), u[m], qu));
                    }
                }
            }
        }
        for (int r = 0; r < ROWS; r++) {  /* the sums in slot order, as scores */
            const __m256 scale = _mm256_set1_ps(q[r]->scale);
            for (int32_t j = jb; j < je; j += 32) {
                __m256i *sums = (__m256i *)(s[r] + j);
                const __m256i a0 = _mm256_loadu_si256(sums), a1 = _mm256_loadu_si256(sums + 1);
                const __m256i a2 = _mm256_loadu_si256(sums + 2), a3 = _mm256_loadu_si256(sums + 3);
/* lanes 0x20: x's and y's low halves, 0x31: their high halves */
#define PUT(at, x, y, lanes)                                                                       \
    _mm256_storeu_ps(s[r] + j + (at), _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(            \
                                                          _mm256_permute2x128_si256(x, y, lanes)), \
                                                      scale),                                      \
                                                      _mm256_loadu_ps(k_scale + j + (at)),         \
                                                      _mm256_loadu_ps(mask + j + (at))))
                PUT(0, a0, a1, 0x20);
                PUT(8, a2, a3, 0x20);
                PUT(16, a0, a1, 0x31);
                PUT(24, a2, a3, 0x31);
#undef PUT
            }
        }
    }
    int32_t j = S32;
    for (; j + 8 <= S; j += 8) {
        __m256i acc[4];
        for (int r = 0; r < ROWS; r++)
            acc[r] = _mm256_set1_epi32(q[r]->start);
        for (int32_t i = 0; i < hd; i += 4) {
            const __m256i t = four_dims_of_8(kt + (int64_t)i * stride + j, stride), key = key_operand(t);
            for (int r = 0; r < ROWS; r++)
                acc[r] = add_key_products(acc[r], key, t, _mm256_set1_epi32(q[r]->fours[i / 4]));
        }
        for (int r = 0; r < ROWS; r++)
            _mm256_storeu_ps(s[r] + j, _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[r]),
                                                                     _mm256_set1_ps(q[r]->scale)),
                                                       _mm256_loadu_ps(k_scale + j), _mm256_loadu_ps(mask + j)));
    }
    for (; j < S; j++)
        for (int r = 0; r < ROWS; r++) {
            int32_t sum = 0;
            for (int32_t i = 0; i < hd; i++)
                sum += q[r]->codes[i] * kt[(int64_t)i * stride + j];
            s[r][j] = fmaf((float)sum * q[r]->scale, k_scale[j], mask[j]);
        }
}

/* byte_scores for any number of rows, four at a time */
static void byte_scores_of(float *const *s, const QueryCodes *const *q, const int8_t *kt, const float *k_scale,
                           const float *mask, int32_t S, int32_t stride, int32_t hd, int32_t rows) {
#define SCORES(ROWS) byte_scores(s + r, q + r, kt, k_scale, mask, S, stride, hd, ROWS)
    for (int32_t r = 0; r < rows; r += 4)
        BY_ROWS(rows - r, SCORES);
#undef SCORES
}

/* Scores s[0..S-1] of a query over S cached keys (transposed, `stride` slots a row): the mask
   plus q . k; for an int8 cache the query's codes (qc) times the keys' codes, times both
   scales. */
static void scores_of(float *s, const float *q, const QueryCodes *qc, const void *kt, const float *k_scale,
                      const float *mask, int32_t S, int32_t stride, int32_t hd, int kind) {
    if (kind == CACHE_I8) {
        byte_scores_of(&s, &qc, kt, k_scale, mask, S, stride, hd, 1);
        return;
    }
    memcpy(s, mask, S * sizeof(float));
    add_scores(s, q, kt, S, stride, hd, kind);
}

static void attention_part(Context *c, const void *arg, int part) {
    const Attention *a = arg;
    const int32_t hd = a->head_dim, S = a->used, half = a->heads / 2;
    const int i8 = a->kind == CACHE_I8;
    float *s = c->scores[part];
    for (int32_t h = part ? half : 0; h < (part ? a->heads : half); h++) {
        const int64_t elements = (int64_t)h * hd * a->slots, size = cache_bytes(a->kind);  /* the head's K and V */
        const float *q = a->q + h * hd;
        const char *kt = (const char *)a->k_t + elements * size, *v = (const char *)a->v + elements * size;
        QueryCodes qc;
        if (i8)
            quantize_query(q, hd, &qc);
        scores_of(s, q, &qc, kt, i8 ? a->k_scale + (int64_t)h * a->slots : NULL, a->mask, S, a->slots, hd, a->kind);
        float own = 0.0f;
        for (int32_t i = 0; i < hd; i++)
            own += q[i] * a->k_new[h * hd + i];
        const float top = max_of(s, S, own);
        const float w_own = expf(own - top);
        const float inv = 1.0f / (exp_minus(s, S, top) + w_own);
        if (i8)
            scale_weights(s, a->v_scale + (int64_t)h * a->slots, S);
        float *y = a->y + h * hd;
        values_of(s, v, S, hd, inv, y, a->kind);
        for (int32_t i = 0; i < hd; i++)
            y[i] += w_own * inv * a->v_new[h * hd + i];
        if (a->write >= 0)  /* nothing reads this head's caches after this point of the step */
            store_head(a->k_new + h * hd, a->v_new + h * hd, hd,
                       (Stored){a->kind, a->slots, a->k_t, a->v, a->k_scale, a->v_scale}, h, a->write);
    }
}

/* y = x * cos + rotated(x) * sin, per head: rotated(x) = (-x2, x1, x3) of the head's (x1, x2, x3) =
   (dims [0, half), [half, 2 half), the rest; sin is 0 over the rest). The ONNX step gets rotated(x)
   from a product by rotated weight rows (decode_onnx._rotated_rows); those rows are the q or k rows
   negated or as they are, so their int8 codes and float sums are too: this is the same value, with
   no extra weights to read (a seventh of them). */
static void rope(const float *x, const float *cos, const float *sin, int32_t heads, int32_t hd, int32_t half,
                 float *y) {
    for (int32_t h = 0; h < heads; h++) {
        const float *xh = x + h * hd;
        float *yh = y + h * hd;
        for (int32_t i = 0; i < half; i++)
            yh[i] = xh[i] * cos[i] + -xh[i + half] * sin[i];
        for (int32_t i = half; i < 2 * half; i++)
            yh[i] = xh[i] * cos[i] + xh[i - half] * sin[i];
        for (int32_t i = 2 * half; i < hd; i++)
            yh[i] = xh[i] * cos[i] + xh[i] * sin[i];
    }
}

static void mlp(Context *c, const Weight *fc, const Weight *proj, Norm norm, float *h, int32_t d) {
    layer_norm(h, d, norm, c->a);
    product(c, fc, c->a, c->wide, RELU_SQUARED, NULL);
    product(c, proj, c->wide, c->y, ADD_INTO, h);
}

/* Every block's qkv gives q, k and v (d outputs each) */
static int qkv_sizes(const Model *m) {
    for (int32_t l = 0; l < m->layers; l++)
        if (m->blocks[l].qkv.N != 3 * m->d)
            return 0;
    return 1;
}

/* Whether this code handles a model of these sizes (native_step.py asks before building a step). */
int supported(const Model *m) {
    const int32_t d = m->d;
    return m->heads > 0 && m->cross_heads > 0 && m->heads * m->head_dim == d && m->cross_heads * m->cross_head_dim == d &&
           m->head_dim % 8 == 0 && m->cross_head_dim % 8 == 0 && m->head_dim <= MAX_HEAD_DIM &&
           m->cross_head_dim <= MAX_HEAD_DIM && d % 32 == 0 && 3 * d <= MAX_WIDTH && m->cross_fc.N <= MAX_WIDTH &&
           m->cross_fc.N % 32 == 0 && m->latent_slots <= MAX_SLOTS && m->vocab > 0 && m->cross_half >= 0 &&
           2 * m->cross_half <= m->cross_head_dim && m->half >= 0 && 2 * m->half <= m->head_dim &&
           m->cross_q.N == d && m->cross_kv.N == 2 * d && qkv_sizes(m);
}

/* One step. Returns -1 if the model's sizes or the ring's are beyond this code's buffers (see
   supported()), or the token or position is outside the model's tables. */
int step(Context *c, const Model *m, const Step *in) {
    const int32_t d = m->d, H = m->heads, hd = m->head_dim, Hc = m->cross_heads, hdc = m->cross_head_dim;
    if (!supported(m) || in->slots > MAX_SLOTS || in->cross_used < 0 || in->cross_used > in->slots ||
        in->latent_used < 0 || in->latent_used > m->latent_slots || in->cross_write >= in->slots ||
        in->latent_write >= m->latent_slots)
        return -1;
    if (in->token < 0 || in->token >= m->vocab || in->pos < 0 || in->pos >= m->positions)
        return -1;
    float *h = c->x;
    memcpy(h, m->embedding + in->token * d, d * sizeof(float));
    const float *cc = m->cross_cos + in->pos * hdc, *cs = m->cross_sin + in->pos * hdc;
    layer_norm(h, d, m->q_norm, c->a);
    layer_norm(h, d, m->kv_norm, c->b);
    product(c, &m->cross_q, c->a, c->wide, KEEP, NULL);
    rope(c->wide, cc, cs, Hc, hdc, m->cross_half, c->q);
    product(c, &m->cross_kv, c->b, c->wide, KEEP, NULL);
    rope(c->wide, cc, cs, Hc, hdc, m->cross_half, in->new_cross_k);
    memcpy(in->new_cross_v, c->wide + d, d * sizeof(float));
    Attention cross = {Hc, hdc, in->slots, in->cross_used, c->q, in->new_cross_k, in->new_cross_v, in->cross_kind,
                       in->cross_k_t, in->cross_v, in->cross_k_scale, in->cross_v_scale, in->cross_mask, c->y,
                       in->cross_write};
    run_task(c, attention_part, &cross);
    product(c, &m->cross_out, c->y, c->a, ADD_INTO, h);
    mlp(c, &m->cross_fc, &m->cross_proj, m->mlp_norm, h, d);
    const float *sc = m->self_cos + in->pos * hd, *ss = m->self_sin + in->pos * hd;
    for (int32_t l = 0; l < m->layers; l++) {
        const Block *b = m->blocks + l;
        layer_norm(h, d, b->norm1, c->a);
        product(c, &b->qkv, c->a, c->wide, KEEP, NULL);
        rope(c->wide, sc, ss, H, hd, m->half, c->q);
        rope(c->wide + d, sc, ss, H, hd, m->half, in->new_latent_k[l]);
        memcpy(in->new_latent_v[l], c->wide + 2 * d, d * sizeof(float));
        const int i8 = in->latent_kind == CACHE_I8;
        Attention self = {H, hd, m->latent_slots, in->latent_used, c->q, in->new_latent_k[l], in->new_latent_v[l],
                          in->latent_kind, in->latent_k_t[l], in->latent_v[l], i8 ? in->latent_k_scale[l] : NULL,
                          i8 ? in->latent_v_scale[l] : NULL, in->latent_mask, c->y, in->latent_write};
        run_task(c, attention_part, &self);
        product(c, &b->out, c->y, c->a, ADD_INTO, h);
        mlp(c, &b->fc, &b->proj, b->norm2, h, d);
    }
    layer_norm(h, d, m->final_norm, c->a);
    product(c, &m->head, c->a, in->logits, KEEP, NULL);
    return 0;
}

/* ---- several rows at once: each weight read once for all rows ---- */

/* Buffers for `rows` rows whose attention scores span `slots` slots; 0, or -1 out of memory. */
static int ensure_rows(Context *c, int32_t rows, int32_t slots) {
    if (rows > c->work_rows) {
        free(c->work);
        free(c->row_xq);
        c->work = aligned_alloc(32, (size_t)rows * 6 * MAX_WIDTH * sizeof(float));
        c->row_xq = aligned_alloc(32, (size_t)rows * MAX_WIDTH);
        c->work_rows = c->work && c->row_xq ? rows : 0;
        if (!c->work_rows)
            return -1;
        c->score_stride = 0;  /* their size depends on the rows too */
    }
    int32_t stride = (slots + 15) & ~7;
    if (stride > c->score_stride) {
        for (int t = 0; t < 2; t++) {
            free(c->row_scores[t]);
            c->row_scores[t] = aligned_alloc(32, (size_t)c->work_rows * stride * sizeof(float));
        }
        c->score_stride = c->row_scores[0] && c->row_scores[1] ? stride : 0;
        if (!c->score_stride)
            return -1;
    }
    return 0;
}

typedef struct {
    const Weight *w;
    const float *x;  /* rows x MAX_WIDTH */
    float *y;        /* rows x y_stride */
    int32_t rows, y_stride;
    Finish finish;
    float *to;       /* ADD_INTO's: rows x MAX_WIDTH */
} RowsProduct;

/* ROWS rows (a constant) times outputs first..last, two outputs at a time: each 32 codes loaded
   once for all rows. The next outputs' codes are prefetched as these are read: at four rows the
   products take long enough per byte that the hardware's prefetching alone leaves the loads
   waiting (BENCHMARKS.md, run 6). Each pass's int32 sums go into y as they are, and are scaled
   into floats eight outputs to a vector after the last pass, not one by one after each pass
   (BENCHMARKS.md, run 11). */
static inline __attribute__((always_inline)) void int8_rows(const Context *ctx, const RowsProduct *p, int32_t r0,
                                                            const int ROWS, int32_t first, int32_t last) {
    const Weight *w = p->w;
    const int32_t K = w->K;
    const uint8_t *xq = ctx->row_xq + (int64_t)r0 * MAX_WIDTH;
    for (int32_t n = first; n < last; n += 2) {
        const int two = n + 1 < last;
        const int8_t *c0 = w->codes + (int64_t)n * K, *c1 = two ? c0 + K : c0;
        /* row r's sums of outputs n and n + 1: named, not an array, so that they stay in registers */
        __m256i s00 = _mm256_setzero_si256(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00, s30 = s00,
                s31 = s00;
        for (int32_t k = 0; k < K; k += 32) {
            if (!(k & 63)) {  /* one line of each of the next two outputs (a prefetch never faults) */
                _mm_prefetch((const char *)(c0 + 2 * K + k), _MM_HINT_T0);
                _mm_prefetch((const char *)(c0 + 3 * K + k), _MM_HINT_T0);
            }
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(c0 + k));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(c1 + k));
#define ROW_PRODUCTS(r, S0, S1)                                                                   \
            if (ROWS > r) {                                                                       \
                const __m256i x = _mm256_load_si256((const __m256i *)(xq + (int64_t)r * MAX_WIDTH + k)); \
                S0 = dot_bytes(S0, x, w0);                                                        \
                S1 = dot_bytes(S1, x, w1);                                                        \
            }
            ROW_PRODUCTS(0, s00, s01)
            ROW_PRODUCTS(1, s10, s11)
            ROW_PRODUCTS(2, s20, s21)
            ROW_PRODUCTS(3, s30, s31)
#undef ROW_PRODUCTS
            /* Keeps all eight sums in registers across passes: without it gcc 12 keeps one on the
               stack, and its store and reload each pass hold the loop back (run 11). */
            __asm__("" : "+x"(s00), "+x"(s01), "+x"(s10), "+x"(s11), "+x"(s20), "+x"(s21), "+x"(s30), "+x"(s31));
        }
        int64_t pairs[4];  /* row r's two sums, side by side */
        _mm256_storeu_si256((__m256i *)pairs, hsum8_epi32(s00, s01, s10, s11, s20, s21, s30, s31));
        for (int r = 0; r < ROWS; r++)
            memcpy(p->y + (int64_t)(r0 + r) * p->y_stride + n, &pairs[r], two ? 8 : 4);
    }
    for (int r = 0; r < ROWS; r++) {  /* y[n] = scale_x * scale[n] * (sum - zero_x * colsum[n]) */
        float *y = p->y + (int64_t)(r0 + r) * p->y_stride;
        const float xs = ctx->row_xscale[r0 + r];
        const int32_t xz = ctx->row_xzero[r0 + r];
        int32_t n = first;
        for (; n + 8 <= last; n += 8) {
            const __m256i sum = _mm256_sub_epi32(
                _mm256_loadu_si256((const __m256i *)(y + n)),
                _mm256_mullo_epi32(_mm256_set1_epi32(xz), _mm256_loadu_si256((const __m256i *)(w->colsum + n))));
            _mm256_storeu_ps(y + n, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(xs), _mm256_loadu_ps(w->scale + n)),
                                                  _mm256_cvtepi32_ps(sum)));
        }
        for (; n < last; n++) {
            int32_t sum;
            memcpy(&sum, y + n, 4);
            y[n] = xs * w->scale[n] * (float)(sum - xz * w->colsum[n]);
        }
    }
}

#if defined(__AVX512VNNI__)
/* 64 codes of a row, zero-padded where only 32 are left (K is a multiple of 32) */
static inline __m512i load64(const void *p, int32_t left) {
    return left >= 64 ? _mm512_loadu_si512(p) : _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_loadu_si256(p), 0);
}

static inline __m256i halves_added(__m512i a) {
    return _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
}

/* int8_rows with AVX-512's byte products (built where the CPU has AVX-512 VNNI): 64 bytes an
   instruction, four outputs at a time. At four rows the products are bound by arithmetic, not by
   reading the weights, and a 512-bit instruction does twice the products of a 256-bit one at
   less than twice its cost (BENCHMARKS.md, native_step_parts). The sums are the same integers. */
static inline __attribute__((always_inline)) void int8_rows_512(const Context *ctx, const RowsProduct *p, int32_t r0,
                                                                const int ROWS, int32_t first, int32_t last) {
    const Weight *w = p->w;
    const int32_t K = w->K;
    for (int32_t n = first; n < last; n += 4) {
        const int32_t outputs = last - n < 4 ? last - n : 4;
        const int8_t *c[4];
        for (int o = 0; o < 4; o++)
            c[o] = w->codes + (int64_t)(n + (o < outputs ? o : 0)) * K;
        __m512i acc[4][4];
        for (int r = 0; r < ROWS; r++)
            for (int o = 0; o < 4; o++)
                acc[r][o] = _mm512_setzero_si512();
        for (int32_t k = 0; k < K; k += 64) {
            for (int o = 0; o < 4; o++)  /* the next four outputs' line, as int8_rows does */
                _mm_prefetch((const char *)(c[0] + (4 + o) * K + k), _MM_HINT_T0);
            __m512i codes[4];
            for (int o = 0; o < 4; o++)
                codes[o] = load64(c[o] + k, K - k);
            for (int r = 0; r < ROWS; r++) {
                const __m512i x = load64(ctx->row_xq + (int64_t)(r0 + r) * MAX_WIDTH + k, K - k);
                for (int o = 0; o < 4; o++)
                    acc[r][o] = _mm512_dpbusd_epi32(acc[r][o], x, codes[o]);
            }
        }
        for (int r = 0; r < ROWS; r += 2) {  /* two rows' four outputs in one hsum8 */
            const int two = r + 1 < ROWS;
            int32_t sums[8];  /* row r's outputs at 0..3, row r + 1's at 4..7 */
            _mm256_storeu_si256((__m256i *)sums,
                                hsum8_epi32(halves_added(acc[r][0]), halves_added(acc[r][1]), halves_added(acc[r][2]),
                                            halves_added(acc[r][3]), halves_added(acc[two ? r + 1 : r][0]),
                                            halves_added(acc[two ? r + 1 : r][1]),
                                            halves_added(acc[two ? r + 1 : r][2]),
                                            halves_added(acc[two ? r + 1 : r][3])));
            for (int half = 0; half <= two; half++) {
                const float xs = ctx->row_xscale[r0 + r + half];
                const int32_t xz = ctx->row_xzero[r0 + r + half];
                float *y = p->y + (int64_t)(r0 + r + half) * p->y_stride;
                for (int o = 0; o < outputs; o++)
                    y[n + o] = xs * w->scale[n + o] * (float)(sums[4 * half + o] - xz * w->colsum[n + o]);
            }
        }
    }
}
#define INT8_ROWS int8_rows_512
#else
#define INT8_ROWS int8_rows
#endif

static inline __attribute__((always_inline)) void float_rows(const RowsProduct *p, int32_t r0, const int ROWS,
                                                             int32_t first, int32_t last) {
    const Weight *w = p->w;
    const int32_t K = w->K;
    int32_t n = first;
    for (; n < last; n += 2) {
        const int two = n + 1 < last;
        const float *c0 = w->w + (int64_t)n * K, *c1 = two ? c0 + K : c0;
        __m256 acc[4][2];
        for (int r = 0; r < ROWS; r++)
            acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        for (int32_t k = 0; k < K; k += 8) {
            const __m256 w0 = _mm256_loadu_ps(c0 + k), w1 = _mm256_loadu_ps(c1 + k);
            for (int r = 0; r < ROWS; r++) {
                const __m256 x = _mm256_loadu_ps(p->x + (int64_t)(r0 + r) * MAX_WIDTH + k);
                acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
            }
        }
        for (int r = 0; r < ROWS; r++) {
            float *y = p->y + (int64_t)(r0 + r) * p->y_stride;
            y[n] = hsum_ps(acc[r][0]);
            if (two)
                y[n + 1] = hsum_ps(acc[r][1]);
        }
    }
}

static void rows_product_part(Context *c, const void *arg, int part) {
    const RowsProduct *p = arg;
    int32_t split = (p->w->N / 2) & ~3;
    int32_t first = part ? split : 0, last = part ? p->w->N : split;
#define CODES(ROWS) INT8_ROWS(c, p, r0, ROWS, first, last)
#define FLOATS(ROWS) float_rows(p, r0, ROWS, first, last)
    for (int32_t r0 = 0; r0 < p->rows; r0 += 4) {
        if (p->w->codes)
            BY_ROWS(p->rows - r0, CODES);
        else
            BY_ROWS(p->rows - r0, FLOATS);
    }
#undef CODES
#undef FLOATS
    for (int32_t r = 0; r < p->rows; r++)
        finish_outputs(p->y + (int64_t)r * p->y_stride, p->to ? p->to + (int64_t)r * MAX_WIDTH : NULL, first, last,
                       p->finish);
}

/* y (rows x y_stride) = W x (rows x MAX_WIDTH); int8 quantises each row with its own scale, so
   that a row's result does not depend on the others. */
static void product_rows(Context *c, const Weight *w, const float *x, int32_t rows, float *y, int32_t y_stride,
                         Finish finish, float *to) {
    if (w->codes)
        for (int32_t r = 0; r < rows; r++)
            quantize_into(x + (int64_t)r * MAX_WIDTH, w->K, c->row_xq + (int64_t)r * MAX_WIDTH, c->row_xscale + r,
                          c->row_xzero + r);
    RowsProduct p = {w, x, y, rows, y_stride, finish, to};
    run_task(c, rows_product_part, &p);
}

typedef struct {
    int32_t rows, heads, head_dim;
    const float *q;                       /* (rows, MAX_WIDTH): H x hd each */
    const float *k_new, *v_new;           /* (rows, H, hd) */
    int32_t shared_slots, shared_used;    /* read once for all rows: the first shared_used slots */
    const void *shared_k_t, *shared_v;    /* (H, hd, S1), (H, S1, hd) */
    const float *shared_k_scale, *shared_v_scale;  /* int8: (H, S1) */
    const float *shared_mask;             /* (S1) */
    int32_t slots, used;                  /* each row's own */
    int32_t kind;                         /* both rings' */
    void *k_t, *v;                        /* (rows, H, hd, S2), (rows, H, S2, hd) */
    float *k_scale, *v_scale;             /* int8: (rows, H, S2) */
    const float *mask;                    /* (S2) */
    float *y;                             /* (rows, MAX_WIDTH) */
    int32_t write;                        /* the slot of each row's own caches for its new K/V (-1: none) */
} RowsAttention;

/* s_r[j] += sum_i q_r[i] k_t[i, j] for ROWS rows (a constant) over slots 0..S-1 of one shared
   head, two of the head's dims per pass: each key loaded once for all rows. */
static inline __attribute__((always_inline)) void shared_scores(float *const *s, const float *const *q,
                                                                const void *kt, int32_t S, int32_t stride,
                                                                int32_t hd, const int ROWS, const int KIND) {
    for (int32_t jb = 0; jb < S; jb += SCORE_BLOCK) {
        const int32_t je = jb + SCORE_BLOCK < S ? jb + SCORE_BLOCK : S;
        for (int32_t i = 0; i < hd; i += 2) {
            const int64_t k0 = (int64_t)i * stride, k1 = k0 + stride;
            __m256 q0[4], q1[4];
            for (int r = 0; r < ROWS; r++) {
                q0[r] = _mm256_set1_ps(q[r][i]);
                q1[r] = _mm256_set1_ps(q[r][i + 1]);
            }
            int32_t j = jb;
            for (; j + 8 <= je; j += 8) {
                const __m256 a = load8(kt, k0 + j, KIND), b = load8(kt, k1 + j, KIND);
                for (int r = 0; r < ROWS; r++)
                    _mm256_storeu_ps(s[r] + j, _mm256_fmadd_ps(q1[r], b, _mm256_fmadd_ps(q0[r], a,
                                                                                         _mm256_loadu_ps(s[r] + j))));
            }
            for (; j < je; j++)
                for (int r = 0; r < ROWS; r++)
                    s[r][j] += q[r][i] * load1(kt, k0 + j, KIND) + q[r][i + 1] * load1(kt, k1 + j, KIND);
        }
    }
}

/* y_r += sum_j w_r[j] v[j, :] for ROWS rows over S slots of one shared head, 16 of the head's
   dims at a time (8 at the end if hd is not a multiple of 16): each value loaded once for all
   rows. */
static inline __attribute__((always_inline)) void shared_values(float *const *y, const float *const *w,
                                                                const void *v, int32_t S, int32_t hd,
                                                                const int ROWS, const int KIND) {
    int32_t t = 0;
    for (; t + 16 <= hd; t += 16) {
        __m256 acc[4][2];
        for (int r = 0; r < ROWS; r++)
            acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        for (int32_t j = 0; j < S; j++) {
            if (t == 0)
                prefetch_page_ahead(v, (int64_t)j * hd * cache_bytes(KIND), (int64_t)S * hd * cache_bytes(KIND));
            const __m256 a = load8(v, (int64_t)j * hd + t, KIND), b = load8(v, (int64_t)j * hd + t + 8, KIND);
            for (int r = 0; r < ROWS; r++) {
                const __m256 wj = _mm256_set1_ps(w[r][j]);
                acc[r][0] = _mm256_fmadd_ps(wj, a, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(wj, b, acc[r][1]);
            }
        }
        for (int r = 0; r < ROWS; r++) {
            _mm256_storeu_ps(y[r] + t, _mm256_add_ps(_mm256_loadu_ps(y[r] + t), acc[r][0]));
            _mm256_storeu_ps(y[r] + t + 8, _mm256_add_ps(_mm256_loadu_ps(y[r] + t + 8), acc[r][1]));
        }
    }
    for (; t < hd; t += 8) {
        __m256 acc[4];
        for (int r = 0; r < ROWS; r++)
            acc[r] = _mm256_setzero_ps();
        for (int32_t j = 0; j < S; j++) {
            const __m256 vj = load8(v, (int64_t)j * hd + t, KIND);
            for (int r = 0; r < ROWS; r++)
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(w[r][j]), vj, acc[r]);
        }
        for (int r = 0; r < ROWS; r++)
            _mm256_storeu_ps(y[r] + t, _mm256_add_ps(_mm256_loadu_ps(y[r] + t), acc[r]));
    }
}

/* float caches' shared scores (an int8 cache's are byte_scores_of) */
static void shared_scores_of(float *const *s, const float *const *q, const void *kt, int32_t S, int32_t stride,
                             int32_t hd, int32_t left, int kind) {
#define HALVES(ROWS) shared_scores(s, q, kt, S, stride, hd, ROWS, CACHE_F16)
#define SINGLES(ROWS) shared_scores(s, q, kt, S, stride, hd, ROWS, CACHE_F32)
    if (kind == CACHE_F16)
        BY_ROWS(left, HALVES);
    else
        BY_ROWS(left, SINGLES);
#undef HALVES
#undef SINGLES
}

#if defined(__AVX512F__)
/* shared_values of int8 codes where hd is 64, 16 values an instruction where the CPU has AVX-512:
   every value sums the same products in the same order (the same result to the bit). */
static inline __attribute__((always_inline)) void shared_codes_512(float *const *y, const float *const *w,
                                                                   const int8_t *v, int32_t S, const int ROWS) {
    __m512 acc[4][4];
    for (int r = 0; r < ROWS; r++)
        for (int i = 0; i < 4; i++)
            acc[r][i] = _mm512_setzero_ps();
    for (int32_t j = 0; j < S; j++) {
        __m512 values[4];
        for (int i = 0; i < 4; i++)
            values[i] = codes16(v + (int64_t)j * 64 + 16 * i);
        for (int r = 0; r < ROWS; r++) {
            const __m512 wj = _mm512_set1_ps(w[r][j]);
            for (int i = 0; i < 4; i++)
                acc[r][i] = _mm512_fmadd_ps(wj, values[i], acc[r][i]);
        }
    }
    for (int r = 0; r < ROWS; r++)
        for (int i = 0; i < 4; i++)
            _mm512_storeu_ps(y[r] + 16 * i, _mm512_add_ps(_mm512_loadu_ps(y[r] + 16 * i), acc[r][i]));
}
#endif

static void shared_values_of(float *const *y, const float *const *w, const void *v, int32_t S, int32_t hd,
                             int32_t left, int kind) {
#if defined(__AVX512F__)
#define WIDE_CODES(ROWS) shared_codes_512(y, w, v, S, ROWS)
    if (kind == CACHE_I8 && hd == 64) {
        BY_ROWS(left, WIDE_CODES);
        return;
    }
#undef WIDE_CODES
#endif
#define HALVES(ROWS) shared_values(y, w, v, S, hd, ROWS, CACHE_F16)
#define CODES(ROWS) shared_values(y, w, v, S, hd, ROWS, CACHE_I8)
#define SINGLES(ROWS) shared_values(y, w, v, S, hd, ROWS, CACHE_F32)
    if (kind == CACHE_F16)
        BY_ROWS(left, HALVES);
    else if (kind == CACHE_I8)
        BY_ROWS(left, CODES);
    else
        BY_ROWS(left, SINGLES);
#undef HALVES
#undef CODES
#undef SINGLES
}

static void attention_rows_part(Context *c, const void *arg, int part) {
    const RowsAttention *a = arg;
    /* S1, S2: the shared and own slots read (the first ones used); P1, P2: the rings' strides */
    const int32_t hd = a->head_dim, S1 = a->shared_used, S2 = a->used, half = a->heads / 2;
    const int32_t P1 = a->shared_slots, P2 = a->slots;
    const int i8 = a->kind == CACHE_I8;
    const int64_t size = cache_bytes(a->kind);  /* bytes per value */
    for (int32_t h = part ? half : 0; h < (part ? a->heads : half); h++) {
        float *s[MAX_ROWS], *y[MAX_ROWS];
        const float *q[MAX_ROWS];
        float own[MAX_ROWS], sum[MAX_ROWS];
        QueryCodes codes[MAX_ROWS];
        const QueryCodes *qc[MAX_ROWS];
        for (int32_t r = 0; r < a->rows; r++) {
            s[r] = c->row_scores[part] + (int64_t)r * c->score_stride;
            q[r] = a->q + (int64_t)r * MAX_WIDTH + h * hd;
            y[r] = a->y + (int64_t)r * MAX_WIDTH + h * hd;
            qc[r] = codes + r;
            if (i8)
                quantize_query(q[r], hd, codes + r);
            else if (S1)
                memcpy(s[r], a->shared_mask, S1 * sizeof(float));
            memset(y[r], 0, hd * sizeof(float));
        }
        if (S1) {
            const char *kt = (const char *)a->shared_k_t + (int64_t)h * hd * P1 * size;
            if (i8) {
                byte_scores_of(s, qc, (const int8_t *)kt, a->shared_k_scale + (int64_t)h * P1, a->shared_mask, S1, P1,
                               hd, a->rows);
            } else {
                for (int32_t r0 = 0; r0 < a->rows; r0 += 4)
                    shared_scores_of(s + r0, q + r0, kt, S1, P1, hd, a->rows - r0, a->kind);
            }
        }
        for (int32_t r = 0; r < a->rows; r++) {  /* each row's own inputs, its new one, the softmax */
            const int64_t rh = (int64_t)r * a->heads + h;
            scores_of(s[r] + S1, q[r], qc[r], (const char *)a->k_t + rh * hd * P2 * size,
                      i8 ? a->k_scale + rh * P2 : NULL, a->mask, S2, P2, hd, a->kind);
            const float *k_new = a->k_new + rh * hd;
            own[r] = 0.0f;
            for (int32_t i = 0; i < hd; i++)
                own[r] += q[r][i] * k_new[i];
            const float top = max_of(s[r], S1 + S2, own[r]);
            sum[r] = exp_minus(s[r], S1 + S2, top);
            own[r] = expf(own[r] - top);  /* now its weight */
            if (i8) {
                if (S1)
                    scale_weights(s[r], a->shared_v_scale + (int64_t)h * P1, S1);
                scale_weights(s[r] + S1, a->v_scale + rh * P2, S2);
            }
        }
        if (S1) {
            const char *v = (const char *)a->shared_v + (int64_t)h * P1 * hd * size;
            for (int32_t r0 = 0; r0 < a->rows; r0 += 4)
                shared_values_of(y + r0, (const float *const *)s + r0, v, S1, hd, a->rows - r0, a->kind);
        }
        for (int32_t r = 0; r < a->rows; r++) {
            const int64_t rh = (int64_t)r * a->heads + h;
            float own_values[MAX_HEAD_DIM];
            values_of(s[r] + S1, (const char *)a->v + rh * P2 * hd * size, S2, hd, 1.0f, own_values, a->kind);
            for (int32_t i = 0; i < hd; i++)
                y[r][i] += own_values[i];
            const float inv = 1.0f / (sum[r] + own[r]);
            const float *v_new = a->v_new + rh * hd;
            for (int32_t i = 0; i < hd; i++)
                y[r][i] = (y[r][i] + own[r] * v_new[i]) * inv;
            if (a->write >= 0)  /* nothing reads the row's caches of this head after this point of the step */
                store_head(a->k_new + rh * hd, v_new, hd, (Stored){a->kind, P2, a->k_t, a->v, a->k_scale, a->v_scale},
                           rh, a->write);
        }
    }
}

static void mlp_rows(Context *c, const Weight *fc, const Weight *proj, Norm norm, float *h, float *a, float *wide,
                     float *y, int32_t rows, int32_t d) {
    for (int32_t r = 0; r < rows; r++)
        layer_norm(h + (int64_t)r * MAX_WIDTH, d, norm, a + (int64_t)r * MAX_WIDTH);
    product_rows(c, fc, a, rows, wide, MAX_WIDTH, RELU_SQUARED, NULL);
    product_rows(c, proj, wide, rows, y, MAX_WIDTH, ADD_INTO, h);
}

/* One step of several rows. Returns -1 if the model's sizes, the rows or the rings are beyond
   this code's buffers, or a token or the position is outside the model's tables; -2 if out of
   memory. Rows are independent: each row's result is what step() gives it alone (to rounding). */
int step_rows(Context *c, const Model *m, const RowsStep *in) {
    const int32_t d = m->d, H = m->heads, hd = m->head_dim, Hc = m->cross_heads, hdc = m->cross_head_dim;
    const int32_t R = in->rows, S1 = in->shared_used, S2 = in->cross_used;
    if (!supported(m) || R < 1 || R > MAX_ROWS || S1 < 0 || S2 < 0 || in->shared_from < 0 ||
        (int64_t)in->shared_from + S1 > in->shared_slots || S2 > in->slots ||
        S1 + S2 > MAX_SLOTS || in->latent_used < 0 || in->latent_used > m->latent_slots ||
        in->cross_write >= in->slots || in->latent_write >= m->latent_slots)
        return -1;
    if (in->pos < 0 || in->pos >= m->positions)
        return -1;
    for (int32_t r = 0; r < R; r++)
        if (in->tokens[r] < 0 || in->tokens[r] >= m->vocab)
            return -1;
    if (ensure_rows(c, R, S1 + S2 > m->latent_slots ? S1 + S2 : m->latent_slots))
        return -2;
    const int64_t W = MAX_WIDTH;
    float *h = c->work, *a = h + R * W, *b = a + R * W, *wide = b + R * W, *y = wide + R * W, *q = y + R * W;
    for (int32_t r = 0; r < R; r++)
        memcpy(h + r * W, m->embedding + in->tokens[r] * d, d * sizeof(float));
    const float *cc = m->cross_cos + in->pos * hdc, *cs = m->cross_sin + in->pos * hdc;
    for (int32_t r = 0; r < R; r++) {
        layer_norm(h + r * W, d, m->q_norm, a + r * W);
        layer_norm(h + r * W, d, m->kv_norm, b + r * W);
    }
    product_rows(c, &m->cross_q, a, R, wide, W, KEEP, NULL);
    for (int32_t r = 0; r < R; r++)
        rope(wide + r * W, cc, cs, Hc, hdc, m->cross_half, q + r * W);
    product_rows(c, &m->cross_kv, b, R, wide, W, KEEP, NULL);
    for (int32_t r = 0; r < R; r++) {
        rope(wide + r * W, cc, cs, Hc, hdc, m->cross_half, in->new_cross_k + r * d);
        memcpy(in->new_cross_v + r * d, wide + r * W + d, d * sizeof(float));
    }
    /* the shared slots read start at slot F: keys are slot after slot within each dim's row, values
       a slot's hd values after another's */
    const int64_t F = in->shared_from, cross_size = cache_bytes(in->cross_kind);
    const int cross_i8 = in->cross_kind == CACHE_I8;
    const RowsAttention cross = {.rows = R, .heads = Hc, .head_dim = hdc, .q = q, .k_new = in->new_cross_k,
                                 .v_new = in->new_cross_v, .shared_slots = in->shared_slots, .shared_used = S1,
                                 .shared_k_t = (const char *)in->shared_k_t + F * cross_size,
                                 .shared_v = (const char *)in->shared_v + F * hdc * cross_size,
                                 .shared_k_scale = cross_i8 ? in->shared_k_scale + F : NULL,
                                 .shared_v_scale = cross_i8 ? in->shared_v_scale + F : NULL,
                                 .shared_mask = in->shared_mask + F, .slots = in->slots, .used = S2,
                                 .kind = in->cross_kind, .k_t = in->cross_k_t, .v = in->cross_v,
                                 .k_scale = in->cross_k_scale, .v_scale = in->cross_v_scale,
                                 .mask = in->cross_mask, .y = y, .write = in->cross_write};
    run_task(c, attention_rows_part, &cross);
    product_rows(c, &m->cross_out, y, R, a, W, ADD_INTO, h);
    mlp_rows(c, &m->cross_fc, &m->cross_proj, m->mlp_norm, h, a, wide, y, R, d);
    const float *sc = m->self_cos + in->pos * hd, *ss = m->self_sin + in->pos * hd;
    for (int32_t l = 0; l < m->layers; l++) {
        const Block *blk = m->blocks + l;
        for (int32_t r = 0; r < R; r++)
            layer_norm(h + r * W, d, blk->norm1, a + r * W);
        product_rows(c, &blk->qkv, a, R, wide, W, KEEP, NULL);
        for (int32_t r = 0; r < R; r++) {
            const float *x = wide + r * W;
            rope(x, sc, ss, H, hd, m->half, q + r * W);
            rope(x + d, sc, ss, H, hd, m->half, in->new_latent_k[l] + r * d);
            memcpy(in->new_latent_v[l] + r * d, x + 2 * d, d * sizeof(float));
        }
        const int i8 = in->latent_kind == CACHE_I8;
        const RowsAttention self = {.rows = R, .heads = H, .head_dim = hd, .q = q, .k_new = in->new_latent_k[l],
                                    .v_new = in->new_latent_v[l], .slots = m->latent_slots,
                                    .used = in->latent_used, .kind = in->latent_kind, .k_t = in->latent_k_t[l],
                                    .v = in->latent_v[l], .k_scale = i8 ? in->latent_k_scale[l] : NULL,
                                    .v_scale = i8 ? in->latent_v_scale[l] : NULL, .mask = in->latent_mask,
                                    .y = y, .write = in->latent_write};
        run_task(c, attention_rows_part, &self);
        product_rows(c, &blk->out, y, R, a, W, ADD_INTO, h);
        mlp_rows(c, &blk->fc, &blk->proj, blk->norm2, h, a, wide, y, R, d);
    }
    for (int32_t r = 0; r < R; r++)
        layer_norm(h + r * W, d, m->final_norm, a + r * W);
    product_rows(c, &m->head, a, R, in->logits, m->vocab, KEEP, NULL);
    return 0;
}

/* Weight products alone (bench/own_int8_products.py): every weights[i] times rows[i] into
   outputs[i], `repeats` times over. Returns -1 if a K is not a multiple of 32 or too wide. */
int run_products(Context *c, const Weight *weights, const float *const *rows, float *const *outputs,
                 int32_t count, int32_t repeats) {
    for (int32_t i = 0; i < count; i++)
        if (weights[i].K % 32 || weights[i].K > MAX_WIDTH)
            return -1;
    for (int32_t r = 0; r < repeats; r++)
        for (int32_t i = 0; i < count; i++)
            product(c, weights + i, rows[i], outputs[i], KEEP, NULL);
    return 0;
}
