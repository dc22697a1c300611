/* shared_tensors.c — see shared_tensors.h. A linked list under one mutex:
 * the entries are few (an embedding, a head, some norms per model), and
 * lookups happen only while a model loads. */
#include "shared_tensors.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>


typedef struct sh_holder {
    const void *holder;
    const void *src; /* that holder's source bytes, for confirming later matches */
} sh_holder;

typedef struct sh_entry {
    struct sh_entry *next;
    qc_shared_key key;
    void *buf;
    size_t buf_bytes;
    int tag;
    void (*free_fn)(void *);
    sh_holder *h; /* [nh], oldest first; h[0] is the one the bytes are attributed to */
    int nh, caph;
} sh_entry;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static sh_entry *g_list;

static inline uint64_t rd64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* Four independent multiply-rotate lanes over 32-byte blocks (several GB/s),
 * then the tail: the digest of one piece. */
static uint64_t hash_piece(const unsigned char *b, size_t n)
{
    const uint64_t M = 0x9e3779b97f4a7c15ull;
    uint64_t a0 = M, a1 = M ^ 1, a2 = M ^ 2, a3 = M ^ 3;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = ((a0 ^ rd64(b + i)) * M);
        a1 = ((a1 ^ rd64(b + i + 8)) * M);
        a2 = ((a2 ^ rd64(b + i + 16)) * M);
        a3 = ((a3 ^ rd64(b + i + 24)) * M);
        a0 = (a0 << 31) | (a0 >> 33);
        a1 = (a1 << 29) | (a1 >> 35);
        a2 = (a2 << 27) | (a2 >> 37);
        a3 = (a3 << 25) | (a3 >> 39);
    }
    uint64_t h = mix(a0) ^ mix(a1 + 1) ^ mix(a2 + 2) ^ mix(a3 + 3) ^ (uint64_t)n;
    for (; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return mix(h);
}

/* Sources are hashed, and compared, in pieces of SH_PIECE bytes on several
 * threads. A 27B model's embedding and BF16 head are 2.5 GB each; hashed on
 * the loading thread alone, first page faults of the mapped file included,
 * they took ~0.9 s of a ~2.2 s load (H100 host, 27B NVFP4), before the
 * loader's pool had started. */
#define SH_PIECE ((size_t)32 << 20)

enum { SH_MAXPIECES = 256 };

typedef struct sh_par {
    const unsigned char *a, *b; /* b NULL: hash a's pieces into out; else compare a and b */
    size_t n, piece, npieces;
    uint64_t out[SH_MAXPIECES];
    atomic_size_t next;
    atomic_int differ;
} sh_par;

/* n bytes at a (and b) in pieces of SH_PIECE, or of a multiple of it above
 * 8 GiB so there are at most SH_MAXPIECES: a function of n alone. */
static void sh_par_init(sh_par *p, const void *a, const void *b, size_t n)
{
    const size_t k = (n + SH_PIECE * SH_MAXPIECES - 1) / (SH_PIECE * SH_MAXPIECES);
    p->a = a;
    p->b = b;
    p->n = n;
    p->piece = SH_PIECE * (k ? k : 1);
    p->npieces = (n + p->piece - 1) / p->piece;
    atomic_init(&p->next, 0);
    atomic_init(&p->differ, 0);
}

static void *sh_par_work(void *arg)
{
    sh_par *p = arg;
    for (;;) {
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->npieces || atomic_load(&p->differ))
            break;
        size_t off = i * p->piece, len = p->n - off < p->piece ? p->n - off : p->piece;
        if (!p->b)
            p->out[i] = hash_piece(p->a + off, len);
        else if (memcmp(p->a + off, p->b + off, len))
            atomic_store(&p->differ, 1);
    }
    return NULL;
}

/* Runs p's pieces on up to `threads` threads, this one included; a thread
 * that cannot be started leaves its pieces to the others. */
static void sh_par_run(sh_par *p, int threads)
{
    enum { MAXT = 64 };
    pthread_t t[MAXT];
    int nt = 0;
    if (threads > MAXT)
        threads = MAXT;
    if ((size_t)threads > p->npieces)
        threads = (int)p->npieces;
    while (nt + 1 < threads && !pthread_create(&t[nt], NULL, sh_par_work, p))
        nt++;
    sh_par_work(p);
    for (int i = 0; i < nt; i++)
        pthread_join(t[i], NULL);
}

uint64_t qc_shared_hash_threads(const void *p, size_t n, int threads)
{
    if (n <= SH_PIECE)
        return hash_piece(p, n);
    sh_par par;
    sh_par_init(&par, p, NULL, n);
    sh_par_run(&par, threads);
    /* the pieces' digests in order, and the length: never the thread count */
    return hash_piece((const unsigned char *)par.out, par.npieces * sizeof *par.out) ^ mix((uint64_t)n);
}

uint64_t qc_shared_hash(const void *p, size_t n) { return qc_shared_hash_threads(p, n, qc_load_default_threads()); }

/* Whether n bytes at a and b are equal, compared on the loader's threads. */
static int bytes_equal(const void *a, const void *b, size_t n)
{
    if (n <= SH_PIECE)
        return !memcmp(a, b, n);
    sh_par par;
    sh_par_init(&par, a, b, n);
    sh_par_run(&par, qc_load_default_threads());
    return !atomic_load(&par.differ);
}

void qc_shared_key_make(qc_shared_key *k, int kind, int dtype, int ndim, const int64_t *shape, const void *src,
                        size_t nbytes)
{
    memset(k, 0, sizeof *k);
    k->kind = kind;
    k->dtype = dtype;
    k->ndim = ndim < 0 ? 0 : ndim > 4 ? 4 : ndim;
    for (int i = 0; i < k->ndim; i++)
        k->shape[i] = shape[i];
    k->nbytes = nbytes;
    k->hash = qc_shared_hash(src, nbytes);
}

static int key_eq(const qc_shared_key *a, const qc_shared_key *b)
{
    if (a->kind != b->kind || a->dtype != b->dtype || a->ndim != b->ndim || a->nbytes != b->nbytes ||
        a->hash != b->hash)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

static int holder_add(sh_entry *e, const void *holder, const void *src)
{
    if (e->nh == e->caph) {
        int nc = e->caph ? 2 * e->caph : 4;
        sh_holder *nh = realloc(e->h, (size_t)nc * sizeof *nh);
        if (!nh)
            return 0;
        e->h = nh;
        e->caph = nc;
    }
    e->h[e->nh++] = (sh_holder){holder, src};
    return 1;
}

void *qc_shared_acquire(const qc_shared_key *k, const void *src, const void *holder)
{
    void *out = NULL;
    pthread_mutex_lock(&g_mu);
    for (sh_entry *e = g_list; e && !out; e = e->next) {
        if (!key_eq(&e->key, k) || !e->nh)
            continue;
        /* Same key: share only if the bytes really are the same. Any holder's
         * source is alive (it has not released), the oldest will do. */
        if (src != e->h[0].src && !bytes_equal(src, e->h[0].src, k->nbytes))
            continue;
        if (holder_add(e, holder, src))
            out = e->buf;
    }
    pthread_mutex_unlock(&g_mu);
    return out;
}

int qc_shared_publish(const qc_shared_key *k, const void *src, const void *holder, void *buf, size_t buf_bytes,
                      int tag, void (*free_fn)(void *), qc_err *err)
{
    sh_entry *e = calloc(1, sizeof *e);
    if (!e || !holder_add(e, holder, src)) {
        free(e);
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory registering a shared tensor");
    }
    e->key = *k;
    e->buf = buf;
    e->buf_bytes = buf_bytes;
    e->tag = tag;
    e->free_fn = free_fn;
    pthread_mutex_lock(&g_mu);
    e->next = g_list;
    g_list = e;
    pthread_mutex_unlock(&g_mu);
    return QC_OK;
}

void qc_shared_release(void *buf, const void *holder)
{
    sh_entry *dead = NULL;
    pthread_mutex_lock(&g_mu);
    for (sh_entry **pp = &g_list; *pp; pp = &(*pp)->next) {
        sh_entry *e = *pp;
        if (e->buf != buf)
            continue;
        int i = e->nh - 1; /* the newest reference of this holder: keeps attribution with the oldest */
        while (i >= 0 && e->h[i].holder != holder)
            i--;
        if (i < 0)
            break;
        memmove(&e->h[i], &e->h[i + 1], (size_t)(e->nh - i - 1) * sizeof *e->h);
        e->nh--;
        if (!e->nh) {
            *pp = e->next;
            dead = e;
        }
        break;
    }
    pthread_mutex_unlock(&g_mu);
    if (dead) {
        if (dead->free_fn)
            dead->free_fn(dead->buf);
        free(dead->h);
        free(dead);
    }
}

uint64_t qc_shared_owned_bytes(const void *holder, int tag)
{
    uint64_t b = 0;
    pthread_mutex_lock(&g_mu);
    for (sh_entry *e = g_list; e; e = e->next)
        if (e->nh && e->h[0].holder == holder && e->tag == tag)
            b += e->buf_bytes;
    pthread_mutex_unlock(&g_mu);
    return b;
}

uint64_t qc_shared_borrowed_bytes(const void *holder)
{
    uint64_t b = 0;
    pthread_mutex_lock(&g_mu);
    for (sh_entry *e = g_list; e; e = e->next)
        if (e->nh && e->h[0].holder != holder)
            for (int i = 1; i < e->nh; i++)
                if (e->h[i].holder == holder) {
                    b += e->buf_bytes;
                    break;
                }
    pthread_mutex_unlock(&g_mu);
    return b;
}

void qc_shared_stats(int kind, int *entries, uint64_t *bytes)
{
    int n = 0;
    uint64_t b = 0;
    pthread_mutex_lock(&g_mu);
    for (sh_entry *e = g_list; e; e = e->next)
        if (e->key.kind == kind) {
            n++;
            b += e->buf_bytes;
        }
    pthread_mutex_unlock(&g_mu);
    if (entries)
        *entries = n;
    if (bytes)
        *bytes = b;
}
