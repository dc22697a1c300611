/* test_shared_tensors.c — identical weight tensors of resident checkpoints
 * share one buffer (engine/shared_tensors.h): the registry's own rules, then
 * tiny-qwen35 (BF16) and tiny-qwen35-fp8 (same random weights; their BF16
 * lm_head and embedding bytes are identical) loaded together on the CPU and,
 * when a CUDA device is present, on the GPU. */
#include <math.h>

#include "backend.h"
#include "harness.h"
#include "qchat.h"
#include "shared_tensors.h"
#ifdef QC_HAVE_CUDA
#include "cuda_backend.h"
#endif

static int g_freed;
static void count_free(void *p)
{
    g_freed++;
    free(p);
}

static void test_registry(void)
{
    enum { N = 4096 };
    unsigned char *a = malloc(N), *a2 = malloc(N), *b = malloc(N);
    for (int i = 0; i < N; i++)
        a[i] = a2[i] = b[i] = (unsigned char)(i * 7 + 3);
    b[N / 2] ^= 1; /* same shape and dtype, one bit different */
    int64_t shp[2] = {64, 32};
    qc_shared_key ka, ka2, kb;
    qc_shared_key_make(&ka, QC_SHARED_CPU, 1, 2, shp, a, N);
    qc_shared_key_make(&ka2, QC_SHARED_CPU, 1, 2, shp, a2, N);
    qc_shared_key_make(&kb, QC_SHARED_CPU, 1, 2, shp, b, N);
    CHECK("hash_equal_bytes", ka.hash == ka2.hash, "%llx vs %llx", (unsigned long long)ka.hash,
          (unsigned long long)ka2.hash);
    CHECK("hash_one_bit", ka.hash != kb.hash, "a one-bit change kept the hash");

    int h1, h2, h3; /* holders: any distinct addresses */
    float *buf = malloc(1000);
    qc_err err = {0};
    CHECK("acquire_empty", qc_shared_acquire(&ka, a, &h3) == NULL, "found a buffer nobody published");
    CHECK("publish", qc_shared_publish(&ka, a, &h1, buf, 1000, QC_MEM_W_OTHER, count_free, &err) == 0, "%s",
          err.msg);
    void *got = qc_shared_acquire(&ka2, a2, &h2);
    CHECK("acquire_equal_bytes", got == buf, "got %p, want %p", got, (void *)buf);
    CHECK("acquire_different_bytes", qc_shared_acquire(&kb, b, &h3) == NULL, "shared different bytes");
    /* A forged hash match must still be refused by the byte comparison. */
    qc_shared_key forged = kb;
    forged.hash = ka.hash;
    CHECK("acquire_forged_hash", qc_shared_acquire(&forged, b, &h3) == NULL, "shared on hash alone");
    qc_shared_key other_kind = ka2;
    other_kind.kind = QC_SHARED_CUDA;
    CHECK("acquire_other_backend", qc_shared_acquire(&other_kind, a2, &h3) == NULL, "shared across backends");
    CHECK("owned_first", qc_shared_owned_bytes(&h1, QC_MEM_W_OTHER) == 1000 &&
                             qc_shared_owned_bytes(&h2, QC_MEM_W_OTHER) == 0,
          "h1 %llu h2 %llu", (unsigned long long)qc_shared_owned_bytes(&h1, QC_MEM_W_OTHER),
          (unsigned long long)qc_shared_owned_bytes(&h2, QC_MEM_W_OTHER));
    CHECK("borrowed_by_the_second", qc_shared_borrowed_bytes(&h2) == 1000 && qc_shared_borrowed_bytes(&h1) == 0 &&
                                        qc_shared_borrowed_bytes(&h3) == 0,
          "h1 %llu h2 %llu h3 %llu", (unsigned long long)qc_shared_borrowed_bytes(&h1),
          (unsigned long long)qc_shared_borrowed_bytes(&h2), (unsigned long long)qc_shared_borrowed_bytes(&h3));
    qc_shared_release(buf, &h1);
    CHECK("borrowed_becomes_owned", qc_shared_borrowed_bytes(&h2) == 0, "h2 still borrows %llu",
          (unsigned long long)qc_shared_borrowed_bytes(&h2));
    CHECK("owned_moves", qc_shared_owned_bytes(&h2, QC_MEM_W_OTHER) == 1000 && g_freed == 0,
          "h2 owns %llu, freed %d", (unsigned long long)qc_shared_owned_bytes(&h2, QC_MEM_W_OTHER), g_freed);
    qc_shared_release(buf, &h3); /* holds nothing: ignored */
    CHECK("release_nonholder", g_freed == 0, "freed by a non-holder");
    qc_shared_release(buf, &h2);
    CHECK("last_release_frees", g_freed == 1, "freed %d times", g_freed);
    int ne;
    uint64_t nb;
    qc_shared_stats(QC_SHARED_CPU, &ne, &nb);
    CHECK("registry_empty", ne == 0 && nb == 0, "%d entries, %llu bytes", ne, (unsigned long long)nb);
    free(a);
    free(a2);
    free(b);
}

/* Sources of several 32 MiB pieces are hashed and compared on many threads:
 * the hash must not depend on the thread count, and a difference in any
 * piece (the last, short one included) must change it and refuse a share. */
static void test_large_sources(void)
{
    const size_t n = ((size_t)32 << 20) * 3 + 12345; /* three whole pieces and a short one */
    unsigned char *a = malloc(n), *b = malloc(n);
    if (!a || !b) {
        CHECK("large_alloc", 0, "no memory for 2 x %zu bytes", n);
        free(a);
        free(b);
        return;
    }
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        a[i] = (unsigned char)x;
    }
    memcpy(b, a, n);
    const uint64_t h1 = qc_shared_hash_threads(a, n, 1), h3 = qc_shared_hash_threads(a, n, 3),
                   h8 = qc_shared_hash_threads(b, n, 8);
    CHECK("large_hash_thread_count", h1 == h3 && h1 == h8, "%llx / %llx / %llx", (unsigned long long)h1,
          (unsigned long long)h3, (unsigned long long)h8);
    const size_t flips[] = {0, ((size_t)32 << 20) + 77, n - 1};
    for (int f = 0; f < 3; f++) {
        b[flips[f]] ^= 0x10;
        CHECK("large_hash_one_bit", qc_shared_hash_threads(b, n, 4) != h1, "a bit at %zu kept the hash", flips[f]);
        b[flips[f]] ^= 0x10;
    }
    int64_t shp[1] = {(int64_t)n};
    qc_shared_key ka, kb;
    qc_shared_key_make(&ka, QC_SHARED_CPU, 1, 1, shp, a, n);
    qc_shared_key_make(&kb, QC_SHARED_CPU, 1, 1, shp, b, n);
    CHECK("large_key_hash", ka.hash == h1 && kb.hash == h1, "key %llx, want %llx", (unsigned long long)ka.hash,
          (unsigned long long)h1);
    int h_a, h_b, h_c;
    float *buf = malloc(64);
    qc_err err = {0};
    CHECK("large_publish", qc_shared_publish(&ka, a, &h_a, buf, 64, QC_MEM_W_OTHER, free, &err) == 0, "%s", err.msg);
    b[n - 1] ^= 1; /* a forged match on the hash, different in the last piece only */
    CHECK("large_refuse_last_piece", qc_shared_acquire(&ka, b, &h_c) == NULL, "shared bytes that differ at the end");
    b[n - 1] ^= 1;
    CHECK("large_share_equal", qc_shared_acquire(&kb, b, &h_b) == buf, "equal bytes not shared");
    qc_shared_release(buf, &h_b);
    qc_shared_release(buf, &h_a);
    free(a);
    free(b);
}

enum { NTOK = 6 };
static const int32_t k_ids[NTOK] = {1, 17, 42, 5, 300, 77};

/* Logits of every position of k_ids (caller frees), NULL on error. */
static float *score(qc_model *m)
{
    qc_model_info info;
    qc_model_get_info(m, &info);
    float *lg = malloc(sizeof(float) * NTOK * (size_t)info.vocab_size);
    qc_session *s = NULL;
    qc_err err = {0};
    if (!lg || qc_session_new(m, 0, &s, &err) || qc_session_prefill(s, k_ids, NTOK, 0, lg, &err)) {
        fprintf(stderr, "score: %s\n", err.msg);
        free(lg);
        lg = NULL;
    }
    qc_session_free(s);
    return lg;
}

static size_t logits_bytes(qc_model *m)
{
    qc_model_info info;
    qc_model_get_info(m, &info);
    return sizeof(float) * NTOK * (size_t)info.vocab_size;
}

static qc_model *load(const char *name, qc_device dev)
{
    char dir[1024];
    th_model_dir(dir, sizeof dir, name);
    qc_load_opts o = {.device = dev, .threads = 2};
    qc_model *m = NULL;
    qc_err err = {0};
    if (qc_model_load(dir, &o, &m, &err)) {
        fprintf(stderr, "load %s: %s\n", name, err.msg);
        return NULL;
    }
    return m;
}

static uint64_t weights_of(qc_model *m, int tag)
{
    qc_mem_report r;
    qc_model_mem(m, NULL, &r);
    return r.bytes[tag];
}

/* Loads A = tiny-qwen35 and B = tiny-qwen35-fp8 alone, then together, on dev. */
static void test_pair(qc_device dev, const char *p, int kind, int tag)
{
    char nm[128];
#define NAME(s) (snprintf(nm, sizeof nm, "%s_%s", p, s), nm)
    qc_model *a = load("tiny-qwen35", dev);
    float *la = a ? score(a) : NULL;
    uint64_t wa = a ? weights_of(a, tag) : 0;
    size_t nla = a ? logits_bytes(a) : 0;
    qc_model_free(a);
    qc_model *b = load("tiny-qwen35-fp8", dev);
    float *lb = b ? score(b) : NULL;
    uint64_t wb = b ? weights_of(b, tag) : 0;
    size_t nlb = b ? logits_bytes(b) : 0;
    qc_model_free(b);
    int ne;
    uint64_t nb;
    qc_shared_stats(kind, &ne, &nb);
    CHECK(NAME("alone_released"), ne == 0 && nb == 0, "%d entries left", ne);
    if (!la || !lb) {
        CHECK(NAME("load_alone"), 0, "a model failed to load or score");
        free(la);
        free(lb);
        return;
    }

    a = load("tiny-qwen35", dev);
    b = load("tiny-qwen35-fp8", dev);
    if (!a || !b) {
        CHECK(NAME("load_both"), 0, "a model failed to load");
        qc_model_free(a);
        qc_model_free(b);
        free(la);
        free(lb);
        return;
    }
    const size_t head_bytes = (size_t)a->w.lm_head->n * a->w.lm_head->k * (kind == QC_SHARED_CPU ? 4 : 2);
    if (kind == QC_SHARED_CPU)
        CHECK(NAME("lm_head_same_copy"), a->w.lm_head->weight->data == b->w.lm_head->weight->data &&
                                             a->w.lm_head->weight->dtype == QC_DT_F32,
              "%p vs %p", a->w.lm_head->weight->data, b->w.lm_head->weight->data);
    qc_shared_stats(kind, &ne, &nb);
    CHECK(NAME("registry_holds"), ne > 0 && nb >= head_bytes, "%d entries, %llu bytes", ne,
          (unsigned long long)nb);
    /* Accounting: A (first holder) reports what it reports alone; B reports
     * at least the shared head less than alone, so the sum counts it once. */
    uint64_t wa2 = weights_of(a, tag), wb2 = weights_of(b, tag);
    CHECK(NAME("mem_first_holder"), wa2 == wa, "%llu vs alone %llu", (unsigned long long)wa2,
          (unsigned long long)wa);
    CHECK(NAME("mem_counted_once"), wb2 + head_bytes <= wb, "B %llu with A, %llu alone, head %zu",
          (unsigned long long)wb2, (unsigned long long)wb, head_bytes);
    float *la2 = score(a), *lb2 = score(b);
    CHECK(NAME("logits_a_shared"), la2 && !memcmp(la, la2, nla), "A's logits changed while sharing");
    CHECK(NAME("logits_b_shared"), lb2 && !memcmp(lb, lb2, nlb), "B's logits changed while sharing");
    free(la2);
    free(lb2);

    qc_model_free(a); /* B keeps working on the buffers A made */
    lb2 = score(b);
    CHECK(NAME("logits_b_after_free"), lb2 && !memcmp(lb, lb2, nlb), "B's logits changed after freeing A");
    free(lb2);
    uint64_t wb3 = weights_of(b, tag);
    CHECK(NAME("mem_moves_to_survivor"), wb3 == wb, "%llu vs alone %llu", (unsigned long long)wb3,
          (unsigned long long)wb);
    qc_model_free(b);
    qc_shared_stats(kind, &ne, &nb);
    CHECK(NAME("all_released"), ne == 0 && nb == 0, "%d entries, %llu bytes left", ne, (unsigned long long)nb);
    free(la);
    free(lb);
#undef NAME
}

int main(void)
{
    test_registry();
    test_large_sources();
    test_pair(QC_DEVICE_CPU, "cpu", QC_SHARED_CPU, QC_MEM_W_OTHER);
#ifdef QC_HAVE_CUDA
    if (qc_cuda_available())
        test_pair(QC_DEVICE_CUDA, "cuda", QC_SHARED_CUDA, QC_MEM_W_BF16);
    else
        th_skip("cuda_shared", "no CUDA device");
#else
    th_skip("cuda_shared", "built without CUDA");
#endif
    return th_exit();
}
