/* worker.h — the engine thread of the TUI. The UI thread never calls the
 * engine: it submits one job at a time (generate, swap, rebuild, reset) and
 * reads the live state below under its mutex; the worker wakes the UI through
 * a pipe, at most one pending byte, so bursts of tokens coalesce into one
 * redraw.
 *
 * The worker owns every qc_model (the checkpoints, several resident at once
 * within a memory budget, least recently used evicted) and the one
 * qc_session of the conversation. Swaps and rebuilds are transactional: a new
 * session is prefilled on the target and only then replaces the old one. */
#ifndef TUI_WORKER_H
#define TUI_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "chat.h"
#include "drift.h"
#include "qchat.h"
#include "sampler.h"

#define WORKER_MAX_CKPT 16
#define WORKER_MAX_ITL 4096 /* inter-token latencies kept per reply */

typedef struct worker_ckpt {
    char *dir;
    char label[24];   /* family, "#n" appended when two share one */
    char family[16];
    char name[64];    /* last path component */
    qc_model *model;  /* NULL when not resident */
    double last_used; /* qc_now() of the last activation (LRU) */
    uint64_t weight_bytes;
} worker_ckpt;

typedef enum worker_job_kind {
    WJOB_NONE = 0,
    WJOB_GENERATE, /* render chat + generation prompt, prefill, decode */
    WJOB_SWAP,     /* make ckpt `target` active and re-prefill the history */
    WJOB_REBUILD,  /* replace the history with `ids` (from /load) on the active model */
    WJOB_RESET,    /* empty history (/clear) */
    WJOB_COMPARE,  /* run `chat` on targets[0] then targets[1] in scratch sessions (/compare) */
    WJOB_DRIFT,    /* teacher-forced drift of the last reply against `target` (/drift) */
} worker_job_kind;

typedef enum worker_phase {
    WPH_IDLE = 0, WPH_LOADING, WPH_PREFILL, WPH_DECODE
} worker_phase;

typedef struct worker_job {
    worker_job_kind kind;
    qc_chat chat; /* GENERATE: owned by the job */
    int think;    /* QC_THINK_ON / QC_THINK_OFF */
    qc_sample_params sp;
    int max_tokens; /* 0: until the context is full */
    int target;     /* SWAP; DRIFT: the reference */
    int targets[2]; /* COMPARE */
    int32_t *ids;   /* REBUILD: owned by the job */
    int n_ids;
} worker_job;

/* One column of a /compare: the prompt run on one checkpoint in a scratch
 * session (the conversation's session is not touched). */
typedef enum worker_cmp_state {
    WCMP_WAITING = 0, WCMP_RUNNING, WCMP_DONE, WCMP_STOPPED, WCMP_FAILED
} worker_cmp_state;

typedef struct worker_cmp_col {
    int ck;
    char label[24];
    worker_cmp_state state;
    char *reasoning, *answer; /* grow during the run; reset when a compare starts */
    size_t n_reasoning_b, n_answer_b, cap_reasoning, cap_answer;
    int n_reasoning, n_answer, n_gen, n_prompt;
    double t_start, t_first, t_last; /* t_start: the model resident, before the prompt */
    uint64_t peak_mem;               /* this model alone: its weights (shared ones too), KV, state, scratch */
    char msg[256];                   /* FAILED: why */
} worker_cmp_col;

/* Drift of the last reply's tokens (teacher-forced /drift) or of the reply
 * under way (live, `/drift on`) against a reference checkpoint. */
typedef struct worker_drift {
    bool valid, live;
    drift_stats st;
    char ref_label[24], act_label[24];
    int from, n_reply; /* position of the reply's first token; tokens it has */
    char first_ref_text[48], first_act_text[48];
    char msg[256];     /* live drift turned itself off: why */
} worker_drift;

/* What the UI reads (under mu). Text buffers only grow during a reply. */
typedef struct worker_live {
    worker_phase phase;
    worker_job_kind job;
    bool busy;
    int active; /* checkpoint index */
    bool resident[WORKER_MAX_CKPT];
    char loading_label[24];
    double t_phase; /* qc_now() when the phase began */
    int prefill_done, prefill_total;
    /* the reply under way (or the last one) */
    char *reasoning, *answer;
    size_t n_reasoning_b, n_answer_b, cap_reasoning, cap_answer;
    int n_reasoning, n_answer; /* tokens */
    int n_prompt;              /* tokens prefilled for it */
    /* t_first, t_last and t_reason_end run on the reply's own clock:
     * qc_now() less t_shift, the seconds live drift's reference work took
     * (left out of the format's timings). */
    double t_submit, t_first, t_last;
    double t_reason_end; /* when the last reasoning token came (0: none yet) */
    double t_shift;
    double itl_ms[WORKER_MAX_ITL];
    int n_itl;
    int32_t gen_ids[256]; /* the last generated ids, for the loop meter (ring) */
    int n_gen;
    bool stopped, user_stopped, ended_eos; /* stopped: by the user, the token limit or a full context */
    bool ctx_full;                         /* stopped: the context had no room for the next token */
    bool refused;                          /* the prompt did not fit the context: nothing ran */
    char reply_format[24];
    int ctx_len; /* tokens in the session */
    qc_mem_report mem; /* the device: every resident model and its sessions (worker_mem_add_model) */
    bool mem_valid;
    /* set when a job finishes: */
    unsigned done_seq;
    worker_job_kind done_kind;
    int done_rc;
    char done_msg[1024];
    worker_cmp_col cmp[2]; /* the last /compare */
    worker_drift drift;    /* the last drift result (or the live one) */
    int32_t *history; /* the session's tokens after the job (malloc'd; UI may take it) */
    int n_history;
} worker_live;

typedef struct worker {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool started, started_sync, quit;
    worker_job job; /* pending when job.kind != NONE */
    atomic_bool stop; /* Ctrl-C: stop generation / prefill */
    atomic_bool wake_pending;
    int wake_fd[2];
    worker_live live;
    /* The checkpoint list. Fixed capacity, so an entry never moves. Only the
     * UI thread appends (worker_add_ckpt): it fills ck[n_ck] and bumps n_ck
     * under mu. An entry's dir/label/family/name/weight_bytes never change
     * once counted; model and last_used belong to the worker thread while it
     * runs. The worker reads n_ck only under mu (worker_ckpt_count), the UI
     * thread, its only writer, reads it freely. */
    worker_ckpt ck[WORKER_MAX_CKPT];
    int n_ck;
    /* owned by the worker thread while running */
    qc_session *sess;
    qc_load_opts lopts;
    int max_ctx;
    uint64_t budget; /* bytes of weights kept resident */
    /* the last reply as token ids (prompt then every sampled id) for /drift */
    int32_t *last_ids;
    int n_last_ids, last_from, last_ck;
    /* live drift: the reference's session kept in step with the conversation */
    int drift_live_ref; /* checkpoint index, -1 off (set through worker_set_live_drift) */
    qc_session *ref_sess;
    int ref_sess_ck;
} worker;

/* Describes a checkpoint dir (reads its config and tensor headers, loads
 * nothing) and appends it to ck[] with its label. QC_EXIT_CHECKPOINT with a
 * message naming the directory when it is unusable; the list is then
 * unchanged. Call from the UI thread WITHOUT holding mu: the disk reads run
 * unlocked and only the append takes mu. */
int worker_add_ckpt(worker *w, const char *dir, qc_err *err);
/* Takes back the last entry worker_add_ckpt appended, when the swap to it
 * failed and it never became resident (a failed swap leaves the session as
 * it was, the list included). Returns false, changing nothing, otherwise.
 * UI thread, with the worker idle. */
bool worker_drop_last_ckpt(worker *w, int idx);
/* Initialises mu and cv once (worker_start calls it; worker_shutdown
 * destroys them). */
void worker_init_sync(worker *w);
/* n_ck read under mu: what code on the worker thread (or any thread other
 * than the one adding checkpoints) uses to bound a walk of ck[]. */
int worker_ckpt_count(worker *w);
/* Adds another resident model's report into rep (the active model's): its
 * weights, KV, state and scratch, taken out of rep's RUNTIME, which held
 * them as memory the active model does not count (qchat.h). */
void worker_mem_add_model(qc_mem_report *rep, const qc_mem_report *other);
/* Loads checkpoint `first`, creates the session, starts the thread. */
int worker_start(worker *w, int first, const qc_load_opts *lo, int max_ctx, uint64_t budget,
                 qc_err *err);
/* Queues a job (takes ownership of job->chat / job->ids). Returns false when
 * busy (the job is then freed). */
bool worker_submit(worker *w, worker_job *job);
void worker_request_stop(worker *w);
/* Live drift against checkpoint ref for the next replies; -1 turns it off. */
void worker_set_live_drift(worker *w, int ref);
/* Stops the thread, frees models and session. */
void worker_shutdown(worker *w);
/* Reads (and clears) the wake pipe. */
void worker_drain_wake(worker *w);
/* Worker side: makes wake_fd[0] readable unless a wake is already pending
 * (call after publishing under mu). */
void worker_wake(worker *w);
/* Finds a checkpoint by family/label (case-insensitive), 1-based number or
 * directory; -1 when none. */
int worker_find_ckpt(const worker *w, const char *spec);
void worker_job_free(worker_job *job);

#endif
