/* shared_tensors.h — a process-wide registry of resident weight buffers that
 * several loaded models can hold at once (issue 6: a BF16 embedding shared
 * between the BF16, FP8, INT4 and NVFP4 checkpoints of one model).
 *
 * A buffer is keyed by what it was made from: the backend kind, the source
 * tensor's dtype, shape and byte length and a 64-bit hash of its bytes. A hash
 * match is confirmed with memcmp against the source bytes of a holder still
 * alive before anything is shared; never on the hash alone.
 *
 * Ownership: the registry owns a published buffer; every holder (a backend's
 * model state) takes one reference per acquire/publish and gives it back with
 * qc_shared_release; the last release calls the buffer's free function.
 *
 * Accounting: each entry is attributed to exactly one of its holders at a time
 * (the first; when that one releases, the oldest remaining holder), so summing
 * qc_shared_owned_bytes over every resident model counts each buffer once.
 *
 * Thread-safe (one mutex). Plain C11. */
#ifndef QC_SHARED_TENSORS_H
#define QC_SHARED_TENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

enum { QC_SHARED_CPU = 1, QC_SHARED_CUDA = 2 };

typedef struct qc_shared_key {
    int kind;  /* QC_SHARED_* */
    int dtype; /* source dtype (format.h qc_dtype) */
    int ndim;
    int64_t shape[4];
    size_t nbytes; /* source bytes */
    uint64_t hash; /* qc_shared_hash of the source bytes */
} qc_shared_key;

/* A fast 64-bit hash of n bytes (not cryptographic; equality is confirmed),
 * on the loader's threads (qc_load_default_threads, util.h) where n is large. */
uint64_t qc_shared_hash(const void *p, size_t n);
/* The same hash on at most `threads` threads: the value depends on the bytes
 * only, never on the thread count. */
uint64_t qc_shared_hash_threads(const void *p, size_t n, int threads);

/* Fills k for nbytes of src (hashing them). */
void qc_shared_key_make(qc_shared_key *k, int kind, int dtype, int ndim, const int64_t *shape, const void *src,
                        size_t nbytes);

/* The buffer made from bytes equal to src's under key k, with one more
 * reference for holder (src must stay valid until holder releases); NULL when
 * there is none. */
void *qc_shared_acquire(const qc_shared_key *k, const void *src, const void *holder);

/* Hands a filled buffer (buf_bytes resident bytes, memory category tag of
 * qchat.h's QC_MEM_*) to the registry with one reference for holder; free_fn
 * frees it after the last release. */
int qc_shared_publish(const qc_shared_key *k, const void *src, const void *holder, void *buf, size_t buf_bytes,
                      int tag, void (*free_fn)(void *), qc_err *err);

/* Gives back one reference of holder on buf (ignored when holder holds none). */
void qc_shared_release(void *buf, const void *holder);

/* Bytes of category tag attributed to holder (see Accounting above). */
uint64_t qc_shared_owned_bytes(const void *holder, int tag);

/* Bytes of the entries holder references while another holder is charged
 * for them: what holder's own footprint would add if it were alone. */
uint64_t qc_shared_borrowed_bytes(const void *holder);

/* Process totals: live entries and their resident bytes (tests, stats). */
void qc_shared_stats(int kind, int *entries, uint64_t *bytes);

#endif
