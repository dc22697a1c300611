/* test_tui_worker_ckpt.c — the checkpoint list of the TUI worker
 * (tui/worker.c worker_add_ckpt / worker_ckpt_count) under concurrency.
 *
 * 1. One thread appends checkpoints (as /swap DIR, /compare DIR, /drift DIR
 *    do on the UI thread) while another walks the list the way the engine
 *    thread does (bounded by worker_ckpt_count, touching the worker-owned
 *    last_used). Every entry it sees must be complete. Built with
 *    -fsanitize=thread this shows the data race the list once had.
 * 2. Opening a checkpoint reads the disk without the worker mutex: a
 *    checkpoint whose config.json is a FIFO blocks its open, and the mutex
 *    must stay free meanwhile. The open then fails and the list is unchanged.
 * 3. The list is full at WORKER_MAX_CKPT, with the same message as before. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "worker.h"

static const char *const models[] = {"tiny-qwen35", "tiny-qwen35-fp8", "tiny-qwen36-text",
                                     "tiny-qwen36-text-fp8"};

typedef struct shared {
    worker *w;
    atomic_bool done;
    long walks, bad; /* reader side */
    int add_fail;    /* adder side: first failing rc */
    char add_msg[1100];
} shared;

static void *adder(void *arg)
{
    shared *sh = arg;
    for (int i = 0; i < WORKER_MAX_CKPT; i++) {
        char dir[1024];
        th_model_dir(dir, sizeof dir, models[i % 4]);
        qc_err e = {0};
        int rc = worker_add_ckpt(sh->w, dir, &e);
        if (rc && !sh->add_fail) {
            sh->add_fail = rc;
            snprintf(sh->add_msg, sizeof sh->add_msg, "%s", e.msg);
        }
    }
    atomic_store(&sh->done, true);
    return NULL;
}

/* What the engine thread does: bound the walk under the mutex, then read the
 * published (immutable) fields and write its own last_used. */
static void walk(shared *sh)
{
    worker *w = sh->w;
    int n = worker_ckpt_count(w);
    for (int i = 0; i < n; i++) {
        const worker_ckpt *c = &w->ck[i];
        if (!c->dir || !c->label[0] || !c->family[0] || !c->name[0] || c->weight_bytes == 0 || c->model)
            sh->bad++;
        w->ck[i].last_used = (double)sh->walks;
    }
    sh->walks++;
}

static void *reader(void *arg)
{
    shared *sh = arg;
    while (!atomic_load(&sh->done))
        walk(sh);
    walk(sh);
    return NULL;
}

typedef struct fifo_add {
    worker *w;
    char dir[256];
    int rc;
    int n_before, n_after;
} fifo_add;

static void *fifo_adder(void *arg)
{
    fifo_add *fa = arg;
    qc_err e = {0};
    fa->rc = worker_add_ckpt(fa->w, fa->dir, &e);
    return NULL;
}

static void test_open_outside_lock(worker *w)
{
    fifo_add fa = {.w = w};
    snprintf(fa.dir, sizeof fa.dir, "/tmp/qchat_test_ckpt_XXXXXX");
    if (!mkdtemp(fa.dir)) {
        th_skip("worker_add_ckpt_unlocked_open", "mkdtemp failed");
        return;
    }
    char fifo[512];
    snprintf(fifo, sizeof fifo, "%s/config.json", fa.dir);
    if (mkfifo(fifo, 0600) != 0) {
        th_skip("worker_add_ckpt_unlocked_open", "mkfifo failed");
        rmdir(fa.dir);
        return;
    }
    fa.n_before = w->n_ck;
    pthread_t th;
    pthread_create(&th, NULL, fifo_adder, &fa);
    /* Give the adder time to block in the open of the FIFO. */
    struct timespec nap = {0, 100 * 1000 * 1000};
    nanosleep(&nap, NULL);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 2;
    int lk = pthread_mutex_timedlock(&w->mu, &dl);
    if (lk == 0)
        pthread_mutex_unlock(&w->mu);
    CHECK("worker_add_ckpt_unlocked_open", lk == 0, "the worker mutex was held during the checkpoint open (%s)",
          strerror(lk));
    /* Release the blocked open with an empty config: the add must fail. */
    int fd = open(fifo, O_WRONLY);
    if (fd >= 0)
        close(fd);
    pthread_join(th, NULL);
    fa.n_after = w->n_ck;
    CHECK("worker_add_ckpt_failure_unchanged", fa.rc != 0 && fa.n_after == fa.n_before,
          "rc %d, %d checkpoints before, %d after", fa.rc, fa.n_before, fa.n_after);
    unlink(fifo);
    rmdir(fa.dir);
}

/* Two resident models on one device: the active one's report holds the
 * other's weights in RUNTIME (used - counted); adding the other moves them
 * from RUNTIME into their families, so nothing counts twice and the parts
 * still add up to what is used. */
static void check_mem_add(void)
{
    const uint64_t MB = 1u << 20;
    qc_mem_report act, oth;
    memset(&act, 0, sizeof act);
    memset(&oth, 0, sizeof oth);
    act.bytes[QC_MEM_W_NVFP4] = 17000 * MB;
    act.bytes[QC_MEM_KV] = 500 * MB;
    act.bytes[QC_MEM_SCRATCH] = 3800 * MB;
    oth.bytes[QC_MEM_W_FP8] = 22000 * MB;
    oth.bytes[QC_MEM_W_BF16] = 4800 * MB;
    oth.bytes[QC_MEM_KV] = 100 * MB; /* (a live-drift session on it) */
    const uint64_t ctx = 600 * MB, others = 2000 * MB;
    uint64_t used = act.bytes[QC_MEM_W_NVFP4] + act.bytes[QC_MEM_KV] + act.bytes[QC_MEM_SCRATCH] + 26900 * MB + ctx + others;
    act.bytes[QC_MEM_RUNTIME] = used - others - (17000 + 500 + 3800) * MB;
    act.bytes[QC_MEM_OTHER_PROCS] = oth.bytes[QC_MEM_OTHER_PROCS] = others;
    oth.bytes[QC_MEM_RUNTIME] = used - others - 26900 * MB; /* (its own view: ignored) */
    worker_mem_add_model(&act, &oth);
    uint64_t sum = 0;
    for (int k = 0; k < QC_MEM_FREE; k++)
        sum += act.bytes[k];
    CHECK("mem_add_runtime_is_the_context", act.bytes[QC_MEM_RUNTIME] == ctx, "runtime %llu MB",
          (unsigned long long)(act.bytes[QC_MEM_RUNTIME] / MB));
    CHECK("mem_add_families", act.bytes[QC_MEM_W_FP8] == 22000 * MB && act.bytes[QC_MEM_W_BF16] == 4800 * MB &&
                                  act.bytes[QC_MEM_KV] == 600 * MB && act.bytes[QC_MEM_OTHER_PROCS] == others,
          "fp8 %llu bf16 %llu kv %llu others %llu MB", (unsigned long long)(act.bytes[QC_MEM_W_FP8] / MB),
          (unsigned long long)(act.bytes[QC_MEM_W_BF16] / MB), (unsigned long long)(act.bytes[QC_MEM_KV] / MB),
          (unsigned long long)(act.bytes[QC_MEM_OTHER_PROCS] / MB));
    CHECK("mem_add_parts_sum_to_used", sum == used, "%llu MB against %llu used", (unsigned long long)(sum / MB),
          (unsigned long long)(used / MB));
    qc_mem_report small;
    memset(&small, 0, sizeof small);
    small.bytes[QC_MEM_RUNTIME] = 100 * MB; /* (a CPU resident set smaller than the mapped weights) */
    worker_mem_add_model(&small, &oth);
    CHECK("mem_add_runtime_floor", small.bytes[QC_MEM_RUNTIME] == 0, "runtime %llu",
          (unsigned long long)small.bytes[QC_MEM_RUNTIME]);
}

int main(void)
{
    check_mem_add();
    char probe[1024];
    th_model_dir(probe, sizeof probe, models[0]);
    if (access(probe, R_OK) != 0) {
        th_skip("worker_ckpt_concurrent", "fixtures not found");
        return th_exit();
    }
    static worker w;
    memset(&w, 0, sizeof w);
    worker_init_sync(&w);

    test_open_outside_lock(&w);

    shared sh = {.w = &w};
    pthread_t ta, tr;
    pthread_create(&tr, NULL, reader, &sh);
    pthread_create(&ta, NULL, adder, &sh);
    pthread_join(ta, NULL);
    pthread_join(tr, NULL);
    CHECK("worker_ckpt_concurrent_add", sh.add_fail == 0 && w.n_ck == WORKER_MAX_CKPT,
          "%d checkpoints, first failure %d: %s", w.n_ck, sh.add_fail, sh.add_msg);
    CHECK("worker_ckpt_concurrent_walk", sh.bad == 0 && sh.walks > 0, "%ld incomplete entries seen in %ld walks",
          sh.bad, sh.walks);
    /* Labels: the family, then "#n" for the n-th of one family. */
    int bad_label = -1;
    char want[24] = "";
    for (int i = 0; i < w.n_ck && bad_label < 0; i++) {
        int same = 0;
        for (int j = 0; j < i; j++)
            same += !strcmp(w.ck[j].family, w.ck[i].family);
        if (same)
            snprintf(want, sizeof want, "%.12s#%d", w.ck[i].family, same + 1);
        else
            snprintf(want, sizeof want, "%s", w.ck[i].family);
        if (strcmp(w.ck[i].label, want))
            bad_label = i;
    }
    CHECK("worker_ckpt_labels", bad_label < 0 && w.n_ck > 4 && strchr(w.ck[4].label, '#'),
          "ck[%d] label '%s', want '%s'", bad_label, bad_label >= 0 ? w.ck[bad_label].label : "", want);
    CHECK("worker_ckpt_name", !strcmp(w.ck[1].name, models[1]), "name '%s'", w.ck[1].name);

    qc_err e = {0};
    int rc = worker_add_ckpt(&w, probe, &e);
    CHECK("worker_ckpt_full", rc == QC_EXIT_USAGE && strstr(e.msg, "at most 16 checkpoints") &&
                                  w.n_ck == WORKER_MAX_CKPT,
          "rc %d msg '%s' n %d", rc, e.msg, w.n_ck);

    worker_shutdown(&w);
    return th_exit();
}
