/* cuda_load.c — the parallel weight loader (see cuda_load.h).
 *
 * Why this shape: a checkpoint in the page cache can be read far faster than
 * one thread repacks it (3-4 GB/s NVFP4, 1 GB/s AWQ on one core) or than one
 * thread page-faults it in, and the host-to-device DMA only runs at full
 * speed from pinned memory. So the work is cut into independent jobs of at
 * most one staging buffer (QC_LOAD_CHUNK, 4 MiB: ~5000 jobs for a 27B model
 * to balance over the threads; see cuda_load.h for why not larger or
 * smaller); each thread takes the next job, takes a free buffer of the ring
 * (or waits for the oldest in-flight copy to finish), pre-faults the job's
 * source range with one madvise, packs into the buffer and queues the copy.
 * Two buffers per thread let every thread fill one while another is being
 * copied. */
#include "cuda_load.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cuda_repack.h"
#include "dequant.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14 */
#endif

/* ---- the plan --------------------------------------------------------------- */

void qc_load_plan_init(qc_load_plan *p, size_t chunk)
{
    memset(p, 0, sizeof *p);
    p->chunk = chunk ? chunk : QC_LOAD_CHUNK;
}

void qc_load_plan_free(qc_load_plan *p)
{
    free(p->jobs);
    memset(p, 0, sizeof *p);
}

static qc_load_job *plan_push(qc_load_plan *p, qc_err *err)
{
    if (p->n == p->cap) {
        size_t nc = p->cap ? 2 * p->cap : 256;
        qc_load_job *nj = realloc(p->jobs, nc * sizeof *nj);
        if (!nj) {
            qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory planning the weight upload");
            return NULL;
        }
        p->jobs = nj;
        p->cap = nc;
    }
    qc_load_job *j = &p->jobs[p->n++];
    memset(j, 0, sizeof *j);
    return j;
}

int qc_load_add_bytes(qc_load_plan *p, void *dst, const void *src, size_t bytes, const char *name, qc_err *err)
{
    for (size_t off = 0; off < bytes; off += p->chunk) {
        qc_load_job *j = plan_push(p, err);
        if (!j)
            return QC_EXIT_RUNTIME;
        j->kind = QC_LJ_BYTES;
        j->src = (const char *)src + off;
        j->dst = (char *)dst + off;
        j->bytes = bytes - off < p->chunk ? bytes - off : p->chunk;
        j->name = name;
    }
    return QC_OK;
}

/* Rows per job for rows of row_bytes: whole multiples of 8 (AWQ packs 8 rows
 * per source word) that fit a chunk, at least 8. */
static int64_t rows_per_job(const qc_load_plan *p, size_t row_bytes)
{
    int64_t r = row_bytes ? (int64_t)(p->chunk / row_bytes) / 8 * 8 : INT64_MAX / 2;
    return r < 8 ? 8 : r;
}

static int add_rows(qc_load_plan *p, const qc_load_job *tmpl, int64_t nrows, size_t row_bytes, qc_err *err)
{
    const int64_t step = rows_per_job(p, row_bytes);
    for (int64_t r0 = 0; r0 < nrows; r0 += step) {
        qc_load_job *j = plan_push(p, err);
        if (!j)
            return QC_EXIT_RUNTIME;
        *j = *tmpl;
        j->r0 = r0;
        j->nr = nrows - r0 < step ? nrows - r0 : step;
        j->dst = (char *)tmpl->dst + (size_t)r0 * row_bytes;
        j->bytes = (size_t)j->nr * row_bytes;
    }
    return QC_OK;
}

int qc_load_add_qweight(qc_load_plan *p, const qc_linear *l, const qk_qweight *q, void *dst_w, void *dst_s,
                        void *dst_perm, qc_err *err)
{
    qc_load_job t = {.kind = QC_LJ_QW, .what = QC_QW_WEIGHT, .l = l, .q = q, .dst = dst_w, .name = l->name};
    int rc = add_rows(p, &t, q->n_pad, qc_qweight_row_bytes(q), err);
    if (!rc && q->s_bytes) {
        t.what = QC_QW_SCALES;
        t.dst = dst_s;
        size_t sr = qc_qweight_srow_bytes(q);
        if (sr) {
            rc = add_rows(p, &t, q->n_pad, sr, err);
        } else { /* one grid, packed whole */
            qc_load_job *j = plan_push(p, err);
            if (!j)
                return QC_EXIT_RUNTIME;
            *j = t;
            j->nr = q->n_pad;
            j->bytes = q->s_bytes;
        }
    }
    if (!rc && q->perm_bytes && dst_perm) /* NULL: shared with another part, uploaded there */
        rc = qc_load_add_bytes(p, dst_perm, q->perm, q->perm_bytes, l->name, err);
    return rc;
}

int qc_load_add_bf16_rows(qc_load_plan *p, const qc_linear *l, int64_t nrows, int64_t ld, void *dst, qc_err *err)
{
    qc_load_job t = {.kind = QC_LJ_BF16_ROWS, .l = l, .ld = ld, .dst = dst, .name = l->name};
    return add_rows(p, &t, nrows, (size_t)ld * 2, err);
}

int qc_load_add_to_bf16(qc_load_plan *p, const qc_tensor *t, void *dst, qc_err *err)
{
    if (t->dtype == QC_DT_BF16)
        return qc_load_add_bytes(p, dst, t->data, (size_t)t->numel * 2, t->name, err);
    if (t->dtype != QC_DT_F16 && t->dtype != QC_DT_F32)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: %s cannot be converted to BF16", t->name,
                          qc_dtype_name(t->dtype));
    qc_load_job tm = {.kind = QC_LJ_TO_BF16, .t = t, .dst = dst, .name = t->name};
    const int64_t step = (int64_t)(p->chunk / 2);
    for (int64_t i0 = 0; i0 < t->numel; i0 += step) {
        qc_load_job *j = plan_push(p, err);
        if (!j)
            return QC_EXIT_RUNTIME;
        *j = tm;
        j->r0 = i0;
        j->nr = t->numel - i0 < step ? t->numel - i0 : step;
        j->dst = (char *)dst + (size_t)i0 * 2;
        j->bytes = (size_t)j->nr * 2;
    }
    return QC_OK;
}

/* ---- filling ------------------------------------------------------------ */

static int fill_bf16_rows(const qc_load_job *j, uint16_t *out, qc_err *err)
{
    const qc_linear *l = j->l;
    const int64_t K = l->k, r1 = j->r0 + j->nr < l->n ? j->r0 + j->nr : l->n;
    memset(out, 0, j->bytes);
    if (r1 <= j->r0)
        return QC_OK;
    if (l->format == QC_FMT_BF16 && l->weight && l->weight->dtype == QC_DT_BF16) {
        const uint16_t *src = l->weight->data;
        for (int64_t n = j->r0; n < r1; n++) memcpy(out + (n - j->r0) * j->ld, src + n * K, (size_t)K * 2);
        return QC_OK;
    }
    /* Exact dequantization, a few rows at a time (16 MiB of floats at most),
     * of a layout without a GPU kernel (8-bit integers, E5M2, ...): its
     * scales checked here, as the packers check theirs (dequant.h). */
    int rc = qc_linear_check_scales(l, j->r0, r1 - j->r0, err);
    if (rc)
        return rc;
    int64_t step = (int64_t)(((size_t)16 << 20) / ((size_t)K * 4));
    if (step < 1)
        step = 1;
    float *f = malloc((size_t)step * (size_t)K * sizeof *f);
    if (!f)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory dequantizing %s", l->name);
    for (int64_t a = j->r0; a < r1; a += step) {
        int64_t nr = r1 - a < step ? r1 - a : step;
        qc_linear_dequant_rows(l, a, nr, f);
        for (int64_t r = 0; r < nr; r++)
            for (int64_t k = 0; k < K; k++) out[(a - j->r0 + r) * j->ld + k] = qc_f32_to_bf16(f[r * K + k]);
    }
    free(f);
    return QC_OK;
}

int qc_load_fill(const qc_load_job *j, void *buf, qc_err *err)
{
    switch (j->kind) {
    case QC_LJ_BYTES: memcpy(buf, j->src, j->bytes); return QC_OK;
    case QC_LJ_QW: return qc_qweight_pack_rows(j->l, j->q, j->what, j->r0, j->nr, buf, err);
    case QC_LJ_BF16_ROWS: return fill_bf16_rows(j, buf, err);
    case QC_LJ_TO_BF16: {
        uint16_t *o = buf;
        const qc_tensor *t = j->t;
        for (int64_t i = 0; i < j->nr; i++) {
            int64_t e = j->r0 + i;
            float v = t->dtype == QC_DT_F32 ? ((const float *)t->data)[e] : qc_f16_to_f32(((const uint16_t *)t->data)[e]);
            o[i] = qc_f32_to_bf16(v);
        }
        return QC_OK;
    }
    default: return qc_err_set(err, QC_EXIT_RUNTIME, "%s: unknown load job", j->name ? j->name : "?");
    }
}

/* The bytes of the mapped source a job reads, for madvise: the rows it packs
 * where the published layout is row-major, else the whole tensor. */
static void job_source(const qc_load_job *j, const void **p, size_t *n)
{
    *p = NULL;
    *n = 0;
    const qc_linear *l = j->l;
    switch (j->kind) {
    case QC_LJ_BYTES: *p = j->src; *n = j->bytes; return;
    case QC_LJ_TO_BF16: {
        size_t es = j->t->dtype == QC_DT_F32 ? 4 : 2;
        *p = (const char *)j->t->data + (size_t)j->r0 * es;
        *n = (size_t)j->nr * es;
        return;
    }
    case QC_LJ_QW:
    case QC_LJ_BF16_ROWS: {
        if (!l->weight || (j->kind == QC_LJ_QW && j->what != QC_QW_WEIGHT))
            return; /* scales: small, faulted in as read */
        const qc_tensor *w = l->weight;
        bool rowwise = l->format == QC_FMT_BF16 || l->format == QC_FMT_F16 || l->format == QC_FMT_F32 ||
                       l->format == QC_FMT_FP8_BLOCK || l->format == QC_FMT_FP8_TENSOR ||
                       l->format == QC_FMT_FP8_CHANNEL || l->format == QC_FMT_NVFP4_CT ||
                       l->format == QC_FMT_NVFP4_MODELOPT || l->format == QC_FMT_MXFP4_CT ||
                       (l->format == QC_FMT_CT_INT && !l->g_idx);
        if (!rowwise || l->n <= 0) {
            *p = w->data;
            *n = w->nbytes;
            return;
        }
        size_t rb = w->nbytes / (size_t)l->n;
        int64_t r1 = j->r0 + j->nr < l->n ? j->r0 + j->nr : l->n;
        if (r1 <= j->r0)
            return;
        *p = (const char *)w->data + (size_t)j->r0 * rb;
        *n = (size_t)(r1 - j->r0) * rb;
        return;
    }
    default: return;
    }
}

static void page_range(const void *p, size_t n, void **a, size_t *len)
{
    static size_t pg;
    if (!pg)
        pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t s = (uintptr_t)p & ~(uintptr_t)(pg - 1), e = ((uintptr_t)p + n + pg - 1) & ~(uintptr_t)(pg - 1);
    *a = (void *)s;
    *len = e - s;
}

/* ---- the run ------------------------------------------------------------ */

typedef struct load_run {
    const qc_load_plan *p;
    const qc_load_ops *ops;
    void **buf;
    size_t buf_bytes;
    int nbuf;
    bool pinned;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int *free_slots, nfree;
    int *fifo, fhead, fn; /* in-flight slots, oldest first */
    atomic_size_t next;
    atomic_int stop;
    atomic_int populate_ok;
    qc_err err; /* the first error (under mu) */
    int rc;
    double read_s, fill_s, wait_s, copy_s; /* summed (under mu) */
} load_run;

static void run_fail(load_run *r, const qc_err *e, int rc)
{
    pthread_mutex_lock(&r->mu);
    if (!r->rc) {
        r->rc = rc ? rc : QC_EXIT_RUNTIME;
        r->err = *e;
        r->err.code = r->rc;
    }
    atomic_store(&r->stop, 1);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* A buffer nobody is filling and no copy is reading: a free one, else the
 * oldest in flight once its copy is done. -1 when stopping. */
static int ring_acquire(load_run *r, double *wait_s, qc_err *e, int *rc)
{
    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (atomic_load(&r->stop)) {
            pthread_mutex_unlock(&r->mu);
            return -1;
        }
        if (r->nfree) {
            int s = r->free_slots[--r->nfree];
            pthread_mutex_unlock(&r->mu);
            return s;
        }
        if (r->fn) {
            int s = r->fifo[r->fhead];
            r->fhead = (r->fhead + 1) % r->nbuf;
            r->fn--;
            pthread_mutex_unlock(&r->mu);
            double t0 = qc_now();
            int w = r->ops->wait(r->ops->ctx, s);
            *wait_s += qc_now() - t0;
            if (w) {
                *rc = qc_err_set(e, QC_EXIT_RUNTIME, "copying the weights to the device failed");
                return -2;
            }
            return s;
        }
        pthread_cond_wait(&r->cv, &r->mu);
    }
}

static void ring_queue(load_run *r, int s)
{
    pthread_mutex_lock(&r->mu);
    r->fifo[(r->fhead + r->fn) % r->nbuf] = s;
    r->fn++;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void ring_release(load_run *r, int s)
{
    pthread_mutex_lock(&r->mu);
    r->free_slots[r->nfree++] = s;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void prefault(load_run *r, const qc_load_job *j)
{
    if (!atomic_load(&r->populate_ok))
        return;
    const void *p;
    size_t n;
    job_source(j, &p, &n);
    if (!p || !n)
        return;
    void *a;
    size_t len;
    page_range(p, n, &a, &len);
    if (madvise(a, len, MADV_POPULATE_READ) != 0 && (errno == EINVAL || errno == ENOSYS))
        atomic_store(&r->populate_ok, 0); /* older kernel: plain page faults */
}

static void *run_worker(void *arg)
{
    load_run *r = arg;
    double read_s = 0, fill_s = 0, wait_s = 0, copy_s = 0;
    for (;;) {
        if (atomic_load(&r->stop))
            break;
        size_t i = atomic_fetch_add(&r->next, 1);
        if (i >= r->p->n)
            break;
        const qc_load_job *j = &r->p->jobs[i];
        qc_err e = {0};
        int rc = 0;
        double t0 = qc_now();
        prefault(r, j);
        double t1 = qc_now();
        read_s += t1 - t0;
        if (j->bytes > r->buf_bytes || !r->pinned) {
            /* larger than a staging buffer (rows over 2 MiB), or no pinned ring */
            void *b = malloc(j->bytes ? j->bytes : 1);
            if (!b) {
                rc = qc_err_set(&e, QC_EXIT_RUNTIME, "out of host memory staging %s", j->name);
            } else {
                rc = qc_load_fill(j, b, &e);
                double t2 = qc_now();
                fill_s += t2 - t1;
                if (!rc && r->ops->copy_sync(r->ops->ctx, j->dst, b, j->bytes))
                    rc = qc_err_set(&e, QC_EXIT_RUNTIME, "copying %s to the device failed", j->name);
                copy_s += qc_now() - t2;
                free(b);
            }
        } else {
            int s = ring_acquire(r, &wait_s, &e, &rc);
            if (s == -1)
                break;
            if (s >= 0) {
                double t2 = qc_now();
                rc = qc_load_fill(j, r->buf[s], &e);
                double t3 = qc_now();
                fill_s += t3 - t2;
                if (!rc && r->ops->copy(r->ops->ctx, s, j->dst, r->buf[s], j->bytes))
                    rc = qc_err_set(&e, QC_EXIT_RUNTIME, "copying %s to the device failed", j->name);
                copy_s += qc_now() - t3;
                if (rc)
                    ring_release(r, s);
                else
                    ring_queue(r, s);
            }
        }
        if (rc) {
            run_fail(r, &e, rc);
            break;
        }
    }
    pthread_mutex_lock(&r->mu);
    r->read_s += read_s;
    r->fill_s += fill_s;
    r->wait_s += wait_s;
    r->copy_s += copy_s;
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Advises the kernel of the whole source in job order, ahead of the workers:
 * on a cold page cache the reads start before the jobs reach them. */
static void *run_advise(void *arg)
{
    load_run *r = arg;
    for (size_t i = 0; i < r->p->n && !atomic_load(&r->stop); i++) {
        const void *p;
        size_t n;
        job_source(&r->p->jobs[i], &p, &n);
        if (!p || !n)
            continue;
        void *a;
        size_t len;
        page_range(p, n, &a, &len);
        madvise(a, len, MADV_SEQUENTIAL);
        madvise(a, len, MADV_WILLNEED);
    }
    return NULL;
}

int qc_load_run(const qc_load_plan *p, int threads, int nbuf, const qc_load_ops *ops, qc_load_stats *st,
                qc_err *err)
{
    double t_start = qc_now();
    if (threads <= 0)
        threads = qc_load_default_threads();
    if ((size_t)threads > p->n)
        threads = p->n ? (int)p->n : 1;
    if (nbuf <= 0)
        nbuf = 2 * threads > 32 ? 32 : 2 * threads;
    if (nbuf < 2)
        nbuf = 2;
    load_run *r = calloc(1, sizeof *r);
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    if (!r || !th) {
        free(r);
        free(th);
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory starting the weight upload");
    }
    r->p = p;
    r->ops = ops;
    r->nbuf = nbuf;
    r->buf_bytes = p->chunk;
    atomic_init(&r->next, 0);
    atomic_init(&r->stop, 0);
    const char *pe = getenv("QCHAT_LOAD_POPULATE");
    atomic_init(&r->populate_ok, !(pe && !strcmp(pe, "0")));
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->buf = calloc((size_t)nbuf, sizeof *r->buf);
    r->free_slots = calloc((size_t)nbuf, sizeof *r->free_slots);
    r->fifo = calloc((size_t)nbuf, sizeof *r->fifo);
    int rc = QC_OK;
    if (!r->buf || !r->free_slots || !r->fifo)
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory starting the weight upload");
    /* The ring: all pinned, or none (then every job is staged in malloc'ed
     * memory and copied synchronously; slower, still correct). */
    r->pinned = !rc && ops->host_alloc;
    double t_ring = qc_now();
    for (int i = 0; !rc && r->pinned && i < nbuf; i++) {
        r->buf[i] = ops->host_alloc(ops->ctx, r->buf_bytes);
        if (!r->buf[i])
            r->pinned = false;
        r->free_slots[r->nfree++] = i;
    }
    t_ring = qc_now() - t_ring;
    pthread_t adv;
    bool adv_ok = false;
    int started = 0;
    if (!rc) {
        const char *we = getenv("QCHAT_LOAD_WILLNEED");
        if (!(we && !strcmp(we, "0")))
            adv_ok = pthread_create(&adv, NULL, run_advise, r) == 0;
        for (; started < threads; started++)
            if (pthread_create(&th[started], NULL, run_worker, r) != 0)
                break;
        if (!started) {
            run_worker(r); /* no threads: do it here */
        }
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    atomic_store(&r->stop, 1);
    if (adv_ok)
        pthread_join(adv, NULL);
    /* Every queued copy must finish before its buffer is freed. */
    for (int k = 0; k < r->fn; k++)
        if (ops->wait(ops->ctx, r->fifo[(r->fhead + k) % nbuf]) && !r->rc) {
            r->rc = QC_EXIT_RUNTIME;
            qc_err_set(&r->err, QC_EXIT_RUNTIME, "copying the weights to the device failed");
        }
    if (!rc && r->rc) {
        rc = r->rc;
        if (err)
            *err = r->err;
    }
    double t_free = qc_now();
    for (int i = 0; r->buf && i < nbuf; i++)
        if (r->buf[i])
            ops->host_free(ops->ctx, r->buf[i]);
    t_ring += qc_now() - t_free;
    if (st) {
        memset(st, 0, sizeof *st);
        st->threads = started ? started : 1;
        st->buffers = r->pinned ? nbuf : 0;
        st->buffer_bytes = r->buf_bytes;
        st->pinned = r->pinned;
        st->jobs = p->n;
        for (size_t i = 0; i < p->n; i++) st->bytes += p->jobs[i].bytes;
        st->read_s = r->read_s;
        st->fill_s = r->fill_s;
        st->wait_s = r->wait_s;
        st->copy_s = r->copy_s;
        st->ring_s = t_ring;
        st->wall_s = qc_now() - t_start;
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->buf);
    free(r->free_slots);
    free(r->fifo);
    free(r);
    free(th);
    return rc;
}
