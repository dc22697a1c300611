/* cpu_pool.c — a small persistent thread pool for the CPU backend's parallel
 * loops. Threads sleep on a condition variable between loops; the caller's
 * thread works as worker 0, so a pool of one thread starts no threads at all.
 * Tasks are claimed through an atomic counter, which balances uneven tasks. */
#include "cpu_ops.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

struct cpu_pool {
    int n;                 /* workers including the caller */
    pthread_t *threads;    /* n - 1 started threads */
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    unsigned long gen;     /* bumped for each loop */
    bool quit;
    int running;           /* started threads still in the current loop */
    /* the current loop */
    cpu_task_fn fn;
    void *ctx;
    int ntasks;
    atomic_int next;
    /* per-worker scratch */
    float **scratch;
    size_t *scratch_n;
};

typedef struct worker_arg {
    cpu_pool *p;
    int id;
} worker_arg;

static void pool_work(cpu_pool *p, int id)
{
    for (;;) {
        int t = atomic_fetch_add(&p->next, 1);
        if (t >= p->ntasks)
            break;
        p->fn(p->ctx, t, id);
    }
}

static void *pool_main(void *arg)
{
    worker_arg *wa = arg;
    cpu_pool *p = wa->p;
    int id = wa->id;
    free(wa);
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->gen == seen)
            pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit)
            break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        pool_work(p, id);
        pthread_mutex_lock(&p->mu);
        if (--p->running == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

cpu_pool *cpu_pool_new(int nthreads)
{
    if (nthreads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = c > 0 ? (int)c : 1;
    }
    if (nthreads > 256)
        nthreads = 256;
    cpu_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n = nthreads;
    p->scratch = calloc((size_t)nthreads, sizeof *p->scratch);
    p->scratch_n = calloc((size_t)nthreads, sizeof *p->scratch_n);
    p->threads = calloc((size_t)nthreads, sizeof *p->threads);
    if (!p->scratch || !p->scratch_n || !p->threads) {
        free(p->scratch);
        free(p->scratch_n);
        free(p->threads);
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    int started = 0;
    for (int i = 1; i < nthreads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa)
            break;
        wa->p = p;
        wa->id = i;
        if (pthread_create(&p->threads[i - 1], NULL, pool_main, wa) != 0) {
            free(wa);
            break;
        }
        started++;
    }
    p->n = started + 1; /* run with the threads we got */
    return p;
}

void cpu_pool_free(cpu_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n - 1; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    for (int i = 0; i < p->n; i++)
        free(p->scratch[i]);
    free(p->scratch);
    free(p->scratch_n);
    free(p->threads);
    free(p);
}

int cpu_pool_threads(const cpu_pool *p) { return p ? p->n : 1; }

void cpu_pool_run(cpu_pool *p, int ntasks, cpu_task_fn fn, void *ctx)
{
    if (ntasks <= 0)
        return;
    if (!p || p->n == 1 || ntasks == 1) {
        for (int t = 0; t < ntasks; t++)
            fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->ntasks = ntasks;
    atomic_store(&p->next, 0);
    p->running = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    pool_work(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->running > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

float *cpu_pool_scratch(cpu_pool *p, int worker, size_t nfloats)
{
    if (!p || worker < 0 || worker >= p->n)
        return NULL;
    if (p->scratch_n[worker] < nfloats) {
        float *b = realloc(p->scratch[worker], nfloats * sizeof(float));
        if (!b)
            return NULL;
        p->scratch[worker] = b;
        p->scratch_n[worker] = nfloats;
    }
    return p->scratch[worker];
}

size_t cpu_pool_scratch_bytes(const cpu_pool *p)
{
    size_t s = 0;
    for (int i = 0; p && i < p->n; i++)
        s += p->scratch_n[i] * sizeof(float);
    return s;
}

bool cpu_pool_reserve(cpu_pool *p, size_t nfloats)
{
    for (int i = 0; p && i < p->n; i++)
        if (!cpu_pool_scratch(p, i, nfloats))
            return false;
    return p != NULL;
}
