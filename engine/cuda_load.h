/* cuda_load.h — the parallel weight loader: a list of jobs, each producing
 * at most one staging buffer of bytes bound for one destination address
 * (a slice of a raw tensor, a row range of a repacked quantized weight or of
 * its scales, rows rounded to BF16), run by a pool of CPU threads that fill a
 * ring of staging buffers while earlier ones are being copied out.
 *
 * The copying is the caller's (qc_load_ops): the CUDA backend passes pinned
 * buffers and cudaMemcpyAsync + an event per buffer; tests pass host memory
 * and a deferred memcpy, so the ring's reuse rules are checked without a GPU.
 * Every job writes all of its bytes (padding zeros included) and depends on
 * no other, so the result is the same for any number of threads and order.
 *
 * Plain C, compiled in every build. */
#ifndef QC_CUDA_LOAD_H
#define QC_CUDA_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "quant.h"
#include "util.h"

typedef enum qc_load_kind {
    QC_LJ_BYTES = 0, /* src[0, bytes) as it is */
    QC_LJ_QW,        /* rows [r0, r0 + nr) of q's weight or scales (what: QC_QW_*), cuda_repack.h */
    QC_LJ_BF16_ROWS, /* rows [r0, r0 + nr) of l as bf16 rows of ld elements: a copy of BF16 weights or
                        the exact dequantization rounded to BF16; columns >= k and rows >= n zero */
    QC_LJ_TO_BF16,   /* elements [r0, r0 + nr) of tensor t (F16, F32 or BF16) rounded to bf16 */
} qc_load_kind;

typedef struct qc_load_job {
    int kind; /* qc_load_kind */
    int what; /* QC_LJ_QW: QC_QW_WEIGHT or QC_QW_SCALES */
    const qc_linear *l;
    const qk_qweight *q; /* host descriptor from qc_qweight_plan */
    const qc_tensor *t;
    const void *src;
    int64_t r0, nr, ld;
    void *dst;    /* destination address (the ops' address space) */
    size_t bytes; /* bytes the job produces */
    const char *name;
} qc_load_job;

/* A growable job list; add functions split their work into jobs of at most
 * chunk bytes (whole rows, multiples of 8 rows where a row is smaller than a
 * chunk / 8). */
typedef struct qc_load_plan {
    qc_load_job *jobs;
    size_t n, cap;
    size_t chunk;
} qc_load_plan;

/* 4 MiB. Measured on the H100 host (16 threads, 27B files in the page cache,
 * 2026-11-23): against 16 MiB, a ring of 32 x 4 MiB is pinned and freed in
 * ~0.1 s instead of 0.23-0.55 s, and a thread's staging buffers stay in the
 * caches while it packs them (INT4 repack 0.9 -> 0.6-0.7 s per thread): loads
 * of 1.0-1.4 s instead of 1.4-1.5 (INT4) and 1.0-1.4 (NVFP4). 2 MiB is no
 * faster and 1 MiB is slower (one madvise and one copy per job: 18,000 jobs). */
#define QC_LOAD_CHUNK ((size_t)4 << 20)

void qc_load_plan_init(qc_load_plan *p, size_t chunk);
void qc_load_plan_free(qc_load_plan *p);
int qc_load_add_bytes(qc_load_plan *p, void *dst, const void *src, size_t bytes, const char *name, qc_err *err);
/* The weight, scales and g_idx permutation of a planned qweight q (host
 * descriptor; q->perm stays the caller's until the run is over) into dst_w,
 * dst_s, dst_perm (NULL: the permutation is another part's, not uploaded). */
int qc_load_add_qweight(qc_load_plan *p, const qc_linear *l, const qk_qweight *q, void *dst_w, void *dst_s,
                        void *dst_perm, qc_err *err);
/* rows [0, nrows) of l as bf16 rows of ld elements (nrows >= l->n). */
int qc_load_add_bf16_rows(qc_load_plan *p, const qc_linear *l, int64_t nrows, int64_t ld, void *dst, qc_err *err);
int qc_load_add_to_bf16(qc_load_plan *p, const qc_tensor *t, void *dst, qc_err *err);

/* Produces job j's bytes into buf (j->bytes long). */
int qc_load_fill(const qc_load_job *j, void *buf, qc_err *err);

/* Where bytes go. Each callback returns 0 on success. slot is 0..nslots-1. */
typedef struct qc_load_ops {
    void *ctx;
    /* nslots staging buffers of bytes each (pinned); NULL: plain malloc'ed
     * buffers and copy_sync instead of copy. */
    void *(*host_alloc)(void *ctx, size_t bytes);
    void (*host_free)(void *ctx, void *p);
    /* Starts copying n bytes from slot's buffer src to dst; the buffer is
     * not touched again until wait(slot) returned. */
    int (*copy)(void *ctx, int slot, void *dst, const void *src, size_t n);
    int (*wait)(void *ctx, int slot);
    /* Copies n bytes now (src may be reused when it returns). */
    int (*copy_sync)(void *ctx, void *dst, const void *src, size_t n);
} qc_load_ops;

typedef struct qc_load_stats {
    int threads, buffers;
    size_t buffer_bytes;
    bool pinned;
    uint64_t jobs, bytes;
    double wall_s;                         /* of qc_load_run */
    double read_s, fill_s, wait_s, copy_s; /* summed over the threads */
    double ring_s;                         /* allocating and freeing the staging ring (one thread) */
} qc_load_stats;

/* Runs every job on threads threads (<= 0: qc_load_default_threads(), util.h) through
 * nbuf staging buffers (<= 0: two per thread, at most 32) and waits until all
 * copies are done. On the first error the others stop; err names the tensor.
 * The source ranges are advised sequential + will-need (a helper thread
 * walks them ahead) and each job pre-faults its range (MADV_POPULATE_READ). */
int qc_load_run(const qc_load_plan *p, int threads, int nbuf, const qc_load_ops *ops, qc_load_stats *st,
                qc_err *err);

#endif
