/* test_tui_worker_wake.c — the worker's wake pipe never loses a wakeup
 * (tui/worker.c worker_wake / worker_drain_wake). One thread publishes a
 * counter under the mutex and wakes, as the engine thread does per token;
 * this thread polls the pipe, drains it and reads the counter, as the UI
 * does. Every published value must become visible through a POLLIN: a poll
 * that times out while the counter moved on is a lost wakeup (the TUI then
 * freezes mid-reply). The wakes come back to back so that some land inside
 * a drain, the interleaving that once left the flag set over an empty pipe. */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "worker.h"

#define ROUNDS 2000000

typedef struct shared {
    worker *w;
    long value;       /* under w->mu; ROUNDS is the last one */
    atomic_bool done; /* set after the last wake */
} shared;

static void *producer(void *arg)
{
    shared *sh = arg;
    for (long i = 1; i <= ROUNDS; i++) {
        pthread_mutex_lock(&sh->w->mu);
        sh->value = i;
        pthread_mutex_unlock(&sh->w->mu);
        worker_wake(sh->w);
        if (i % 64 == 0)
            sched_yield(); /* vary the phase against the consumer */
    }
    atomic_store(&sh->done, true);
    return NULL;
}

int main(void)
{
    static worker w;
    memset(&w, 0, sizeof w);
    if (pipe(w.wake_fd) != 0) {
        CHECK("worker_wake_pipe", 0, "pipe failed");
        return th_exit();
    }
    for (int i = 0; i < 2; i++)
        fcntl(w.wake_fd[i], F_SETFL, fcntl(w.wake_fd[i], F_GETFL) | O_NONBLOCK);
    pthread_mutex_init(&w.mu, NULL);
    shared sh = {.w = &w};
    pthread_t th;
    if (pthread_create(&th, NULL, producer, &sh) != 0) {
        CHECK("worker_wake_thread", 0, "pthread_create failed");
        return th_exit();
    }
    long seen = 0, wakeups = 0;
    bool lost = false;
    for (;;) {
        struct pollfd pf = {.fd = w.wake_fd[0], .events = POLLIN};
        int pr = poll(&pf, 1, 2000);
        if (pr == 0) {
            /* A slow producer (a loaded machine) may simply not have woken
             * yet; once it has made its last wake, silence with the last
             * value unseen is a lost wakeup. */
            if (!atomic_load(&sh.done))
                continue;
            pthread_mutex_lock(&w.mu);
            lost = sh.value != seen;
            pthread_mutex_unlock(&w.mu);
            break;
        }
        if (pr < 0)
            continue;
        wakeups++;
        worker_drain_wake(&w);
        pthread_mutex_lock(&w.mu);
        seen = sh.value;
        pthread_mutex_unlock(&w.mu);
        if (seen == ROUNDS)
            break;
    }
    pthread_join(th, NULL);
    CHECK("worker_wake_no_lost_wakeup", !lost && seen == ROUNDS,
          "the pipe went quiet with value %ld unseen (last seen %ld after %ld wakeups)", (long)ROUNDS, seen,
          wakeups);
    /* Quiet afterwards: a drained pipe with nothing new is not readable. */
    worker_drain_wake(&w);
    struct pollfd pf = {.fd = w.wake_fd[0], .events = POLLIN};
    CHECK("worker_wake_drained_is_quiet", poll(&pf, 1, 0) == 0, "the pipe is readable after a drain");
    worker_wake(&w);
    CHECK("worker_wake_then_readable", poll(&pf, 1, 0) == 1, "a wake after a drain left the pipe empty");
    close(w.wake_fd[0]);
    close(w.wake_fd[1]);
    pthread_mutex_destroy(&w.mu);
    return th_exit();
}
