/* test_cuda_load.c — the parallel loader (engine/cuda_load.c) against the
 * single-threaded repacking: every Linear of the quantized fixtures and of a
 * synthetic tiny int4-ct (asymmetric) checkpoint is packed whole by
 * qc_qweight_pack and, split into small row ranges, by the thread pool
 * through a ring of staging buffers whose copies complete late (as a DMA
 * would); the bytes must be identical. BF16 rows (straight or dequantized),
 * conversions, copy failures and a ring without pinned memory are checked
 * too. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "cuda_repack.h"
#include "dequant.h"
#include "harness.h"
#include "cuda_load.h"
#include "synth.h"

/* ---- host "device": a copy lands only when its slot is waited for ---- */

typedef struct pend {
    void *dst;
    const void *src;
    size_t n;
} pend;

typedef struct fake_dev {
    pthread_mutex_t mu;
    pend slot[64];
    int allocs, frees, copies, fail_at; /* fail_at: the copy call that fails (0: none) */
} fake_dev;

static void *fd_alloc(void *ctx, size_t n)
{
    fake_dev *d = ctx;
    pthread_mutex_lock(&d->mu);
    d->allocs++;
    pthread_mutex_unlock(&d->mu);
    return malloc(n);
}

static void fd_free(void *ctx, void *p)
{
    fake_dev *d = ctx;
    pthread_mutex_lock(&d->mu);
    d->frees++;
    pthread_mutex_unlock(&d->mu);
    free(p);
}

static int fd_copy(void *ctx, int s, void *dst, const void *src, size_t n)
{
    fake_dev *d = ctx;
    pthread_mutex_lock(&d->mu);
    int c = ++d->copies, bad = d->slot[s].src != NULL; /* a slot reused before its copy finished */
    d->slot[s] = (pend){dst, src, n};
    pthread_mutex_unlock(&d->mu);
    return bad || (d->fail_at && c == d->fail_at) ? -1 : 0;
}

static int fd_wait(void *ctx, int s)
{
    fake_dev *d = ctx;
    pthread_mutex_lock(&d->mu);
    pend p = d->slot[s];
    d->slot[s] = (pend){0};
    pthread_mutex_unlock(&d->mu);
    if (p.src)
        memcpy(p.dst, p.src, p.n);
    return 0;
}

static int fd_copy_sync(void *ctx, void *dst, const void *src, size_t n)
{
    (void)ctx;
    memcpy(dst, src, n);
    return 0;
}

/* ---- one checkpoint ---- */

typedef struct lin_case {
    const qc_linear *l;
    qk_qweight ref; /* qc_qweight_pack */
    qk_qweight plan;
    unsigned char *w, *s, *perm, *bf; /* pool outputs */
    uint16_t *bf_ref;
    int64_t bf_rows, bf_ld;
    bool packed;
} lin_case;

static unsigned char *poisoned(size_t n)
{
    unsigned char *p = malloc(n ? n : 1);
    memset(p, 0xA5, n ? n : 1); /* bytes a job forgets to write show up */
    return p;
}

static void check_ckpt(const char *label, const char *dir)
{
    char name[256];
    qc_err err = {0};
    qc_ckpt *ck = NULL;
    snprintf(name, sizeof name, "load_pool_%s", label);
    if (qc_ckpt_open(dir, &ck, &err)) {
        CHECK(name, 0, "open %s: %s", dir, err.msg);
        return;
    }
    size_t n = qc_ckpt_module_count(ck);
    lin_case *cs = calloc(n, sizeof *cs);
    qc_load_plan plan;
    qc_load_plan_init(&plan, 4096); /* tiny chunks: many row ranges, and rows larger than a chunk */
    int rc = QC_OK, npacked = 0, nrefused = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        lin_case *c = &cs[i];
        c->l = &qc_ckpt_module_at(ck, i)->lin;
        qc_err e1 = {0}, e2 = {0};
        int r1 = qc_qweight_pack(c->l, &c->ref, &e1), r2 = qc_qweight_plan(c->l, &c->plan, &e2);
        if (r1 != r2) {
            rc = qc_err_set(&err, QC_EXIT_RUNTIME, "%s: pack rc %d, plan rc %d", c->l->name, r1, r2);
            break;
        }
        if (!r1) {
            c->packed = true;
            npacked++;
            c->w = poisoned(c->plan.w_bytes);
            c->s = poisoned(c->plan.s_bytes);
            c->perm = poisoned(c->plan.perm_bytes);
            rc = qc_load_add_qweight(&plan, c->l, &c->plan, c->w, c->s, c->perm, &err);
        } else {
            nrefused++;
        }
        /* BF16 rows (the fallback and the all-BF16 groups): padded like a qweight. */
        c->bf_rows = (c->l->n + 3) / 4 * 4;
        c->bf_ld = (c->l->k + 31) / 32 * 32;
        c->bf = poisoned((size_t)(c->bf_rows * c->bf_ld) * 2);
        c->bf_ref = calloc((size_t)(c->bf_rows * c->bf_ld), 2);
        float *f = malloc((size_t)(c->l->n * c->l->k) * sizeof *f);
        qc_linear_dequant_rows(c->l, 0, c->l->n, f);
        for (int64_t r = 0; r < c->l->n; r++)
            for (int64_t k = 0; k < c->l->k; k++) c->bf_ref[r * c->bf_ld + k] = qc_f32_to_bf16(f[r * c->l->k + k]);
        free(f);
        if (!rc)
            rc = qc_load_add_bf16_rows(&plan, c->l, c->bf_rows, c->bf_ld, c->bf, &err);
    }
    /* The embedding, converted to BF16 (a BF16 one is a straight copy). */
    const qc_tensor *emb = qc_ckpt_embed(ck);
    unsigned char *eb = poisoned((size_t)emb->numel * 2);
    if (!rc)
        rc = qc_load_add_to_bf16(&plan, emb, eb, &err);

    fake_dev d = {.mu = PTHREAD_MUTEX_INITIALIZER};
    qc_load_ops ops = {&d, fd_alloc, fd_free, fd_copy, fd_wait, fd_copy_sync};
    qc_load_stats st;
    if (!rc)
        rc = qc_load_run(&plan, 4, 3, &ops, &st, &err);
    int bad = 0;
    char first[200] = "";
    for (size_t i = 0; i < n && !rc; i++) {
        lin_case *c = &cs[i];
        bool same = true;
        if (c->packed) {
            qk_qweight a = c->ref, b = c->plan;
            a.w = a.s = b.w = b.s = NULL;
            a.perm = b.perm = NULL;
            same = !memcmp(&a, &b, sizeof a) && !memcmp(c->ref.w, c->w, c->ref.w_bytes) &&
                   (!c->ref.s_bytes || !memcmp(c->ref.s, c->s, c->ref.s_bytes)) &&
                   (!c->ref.perm_bytes || !memcmp(c->ref.perm, c->perm, c->ref.perm_bytes));
        }
        if (same)
            same = !memcmp(c->bf_ref, c->bf, (size_t)(c->bf_rows * c->bf_ld) * 2);
        if (!same && !bad++)
            snprintf(first, sizeof first, "%s", c->l->name);
    }
    bool emb_ok = true;
    for (int64_t i = 0; i < emb->numel && !rc; i++) {
        uint16_t v;
        memcpy(&v, eb + 2 * i, 2);
        if (v != qc_f32_to_bf16(qc_tensor_get_f32(emb, i))) {
            emb_ok = false;
            break;
        }
    }
    printf("# %s: %d linears packed, %d refused (bf16 fallback), %llu jobs, %.1f MB, %d threads, %d buffers\n",
           label, npacked, nrefused, rc ? 0ULL : (unsigned long long)st.jobs, rc ? 0 : st.bytes / 1e6,
           rc ? 0 : st.threads, rc ? 0 : st.buffers);
    CHECK(name, !rc && !bad && emb_ok && npacked > 0 && d.allocs == d.frees,
          "rc %d (%s); %d linears differ from the single-threaded repack (first %s); embedding %s; %d of %d "
          "staging buffers freed",
          rc, err.msg, bad, first, emb_ok ? "same" : "differs", d.frees, d.allocs);

    /* Error path: the 7th copy fails; the run stops, says which tensor, frees its ring. */
    if (!rc) {
        fake_dev f2 = {.mu = PTHREAD_MUTEX_INITIALIZER, .fail_at = 7};
        qc_load_ops o2 = {&f2, fd_alloc, fd_free, fd_copy, fd_wait, fd_copy_sync};
        qc_err e = {0};
        int r = qc_load_run(&plan, 4, 3, &o2, NULL, &e);
        snprintf(name, sizeof name, "load_pool_copy_error_%s", label);
        CHECK(name, r == QC_EXIT_RUNTIME && strstr(e.msg, "failed") && f2.allocs == f2.frees && f2.allocs == 3,
              "rc %d, \"%s\", %d of %d buffers freed", r, e.msg, f2.frees, f2.allocs);
        /* No pinned ring: synchronous copies, same bytes. */
        for (size_t i = 0; i < n; i++)
            if (cs[i].packed)
                memset(cs[i].w, 0xA5, cs[i].plan.w_bytes);
        qc_load_ops o3 = {&f2, NULL, fd_free, fd_copy, fd_wait, fd_copy_sync};
        r = qc_load_run(&plan, 2, 0, &o3, NULL, &e);
        int bad3 = 0;
        for (size_t i = 0; i < n && !r; i++)
            if (cs[i].packed && memcmp(cs[i].ref.w, cs[i].w, cs[i].ref.w_bytes))
                bad3++;
        snprintf(name, sizeof name, "load_pool_unpinned_%s", label);
        CHECK(name, !r && !bad3, "rc %d (%s), %d linears differ", r, e.msg, bad3);
    }

    for (size_t i = 0; i < n; i++) {
        lin_case *c = &cs[i];
        if (c->packed)
            qc_qweight_free_host(&c->ref);
        free(c->plan.perm);
        free(c->w);
        free(c->s);
        free(c->perm);
        free(c->bf);
        free(c->bf_ref);
    }
    free(eb);
    free(cs);
    qc_load_plan_free(&plan);
    qc_ckpt_free(ck);
}

int main(void)
{
    static const char *const models[] = {"tiny-qwen35-fp8", "tiny-qwen35-int4-autoround", "tiny-qwen35-int4-awq",
                                         "tiny-qwen35-nvfp4", "tiny-qwen35-nvfp4-modelopt", "tiny-qwen36-text-fp8"};
    char dir[512];
    for (size_t i = 0; i < sizeof models / sizeof *models; i++)
        check_ckpt(models[i], th_model_dir(dir, sizeof dir, models[i]));

    /* compressed-tensors int4, asymmetric: not among the fixtures. */
    const char *t = getenv("TMPDIR");
    char root[400];
    snprintf(root, sizeof root, "%s/qchat-loadpool.XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(root)) {
        CHECK("load_pool_tmpdir", 0, "mkdtemp failed");
        return th_exit();
    }
    snprintf(dir, sizeof dir, "%s/int4-ct", root);
    qc_synth_opts o = {.shape = qc_synth_size_find("tiny"), .format = QC_SYNTH_INT4_CT, .asym = true};
    qc_synth_report rep;
    qc_err err = {0};
    int rc = qc_synth_write(dir, &o, &rep, &err);
    CHECK("load_pool_synth_write", !rc, "%s", err.msg);
    if (!rc)
        check_ckpt("synth_int4_ct_asym", dir);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        fprintf(stderr, "# could not remove %s\n", root);
    return th_exit();
}
