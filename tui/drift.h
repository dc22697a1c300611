/* drift.h — how far a quantized format's next-token distributions drift from
 * a reference format's on the same token history (product.md "Drift").
 *
 * Per scored position, with P = softmax(reference logits) and Q =
 * softmax(active logits) over the real tokenizer ids only (ids >= n_tokens are
 * embedding padding and excluded), computed as log-softmax in double:
 *   KL(P || Q) = sum_i P_i (log P_i - log Q_i)   in nats,
 * top-1 agreement (both argmaxes equal; the lowest id wins a tie), and the
 * first position where the two argmaxes differ.
 *
 * The maths (drift_kl_row, drift_stats_add) is pure and unit-tested on
 * hand-made logits; drift_score_ids runs it teacher-forced over two engine
 * sessions (used by /drift in the TUI and by `qchat drift`). */
#ifndef TUI_DRIFT_H
#define TUI_DRIFT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "qchat.h"

typedef struct drift_stats {
    int n;              /* positions scored */
    int n_bad;          /* positions skipped: no finite logit on one side */
    double kl_sum, kl_max;
    int kl_max_pos;     /* position of kl_max (-1 before any) */
    int agree;          /* positions whose top-1 ids agree */
    int first_div;      /* position of the first top-1 disagreement, -1 when none */
    int32_t first_ref, first_act; /* the two top-1 ids there */
} drift_stats;

void drift_stats_init(drift_stats *s);

/* KL(P_ref || Q_act) of one row over ids [0, n_tokens). NaN logits count as
 * -inf (probability 0). Returns +inf when Q gives probability 0 to an id P
 * does not, NaN when either row has no finite logit. *top_ref / *top_act get
 * the argmax ids (-1 when the row has no finite logit). */
double drift_kl_row(const float *ref, const float *act, int n_tokens, int32_t *top_ref, int32_t *top_act);

/* Scores one position (pos is only recorded: first_div, kl_max_pos). */
void drift_stats_add(drift_stats *s, const float *ref, const float *act, int n_tokens, int pos);

double drift_stats_kl_mean(const drift_stats *s);   /* 0 when nothing scored */
double drift_stats_agree_pct(const drift_stats *s); /* 100 * agree / n; 0 when nothing scored */

/* Progress: positions fed so far out of n. */
typedef void (*drift_progress_fn)(void *user, int done, int n);

/* Teacher-forced scoring. Feeds ids[0..n) to two fresh (empty) sessions, the
 * reference's and the active format's, and scores every position predicting
 * ids[from..n) (1 <= from <= n): the logits after ids[0..p) against each other
 * for p = from..n-1, recorded as position p. The rows come chunk tokens at a
 * time (all logits of a chunk kept, 2 x chunk x vocab floats), so memory stays
 * bounded for long histories. `stop` (may be NULL) is polled between chunks:
 * a stop returns -1 with the positions scored so far in *s. Both models must
 * share the tokenizer size; ids must lie below it. */
int drift_score_ids(qc_session *ref, const qc_model *ref_model, qc_session *act, const qc_model *act_model,
                    const int32_t *ids, int n, int from, int chunk, atomic_bool *stop, drift_progress_fn progress,
                    void *user, drift_stats *s, qc_err *err);

/* A token as short display text: its bytes with newlines, tabs, other
 * control bytes and invalid UTF-8 escaped (\n, \t, \xNN), in double quotes;
 * "<id N>" for an id that names no token. Always NUL-terminated. */
struct qc_tokenizer;
void drift_token_text(const struct qc_tokenizer *tok, int32_t id, char *out, size_t n);

#endif
