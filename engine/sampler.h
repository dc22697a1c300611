/* sampler.h — picks the next token from a row of logits.
 *
 * Pipeline, in this order (the order of Hugging Face generate):
 *   1. ids >= n_tokens (embedding padding) and NaN logits are removed;
 *   2. penalties over the tokens generated so far (qc_sampler_accept):
 *        repetition r (CTRL / HF): a seen token's logit l becomes l / r if
 *          l > 0, else l * r (once per distinct token);
 *        presence p: l -= p for every seen token (once);
 *        frequency f: l -= f * count;
 *   3. greedy when temperature <= 0 or top_k == 1: the largest logit (lowest
 *      id on ties) — penalties still apply;
 *   4. else l / temperature, softmax, then the truncations:
 *        top_k > 0:   keep the k most probable;
 *        top_p < 1:   keep the smallest most-probable-first prefix whose mass
 *                     is >= top_p (at least one token);
 *        min_p > 0:   drop tokens with probability < min_p * max probability;
 *      renormalise and draw by inverse CDF over the kept tokens: ordered by
 *      decreasing probability (ties: lower id first) when top-k or top-p is
 *      on, else by id (no sort of the whole vocabulary per token).
 * Randomness: xoshiro256** seeded through splitmix64 from the 64-bit seed, one
 * 53-bit uniform per draw; the same seed, logits and history give the same
 * tokens on every machine. */
#ifndef QC_SAMPLER_H
#define QC_SAMPLER_H

#include <stdint.h>

#include "util.h"

typedef struct qc_sample_params {
    float temperature;        /* <= 0: greedy */
    int top_k;                /* <= 0: off */
    float top_p;              /* >= 1: off */
    float min_p;              /* <= 0: off */
    float repetition_penalty; /* 1: off; must be > 0 */
    float presence_penalty;   /* 0: off */
    float frequency_penalty;  /* 0: off */
    uint64_t seed;
} qc_sample_params;

/* Neutral defaults: temperature 1, no truncation, no penalty, seed 0.
 * Callers overlay generation_config.json values (do_sample false means
 * temperature 0) and then command-line flags. */
void qc_sample_params_init(qc_sample_params *p);

/* Overlays a checkpoint's generation_config.json: every value it gives, and
 * temperature 0 (greedy) where do_sample is false or absent, as transformers
 * reads it. One rule for `run` and the TUI. */
struct qc_gen_config;
void qc_sample_params_apply_gen(qc_sample_params *p, const struct qc_gen_config *g);

/* Range checks with a message naming the option (QC_EXIT_USAGE on failure):
 * temperature finite >= 0, top_p in (0, 1], min_p in [0, 1],
 * repetition_penalty > 0, penalties finite. */
int qc_sample_params_check(const qc_sample_params *p, qc_err *err);

typedef struct qc_sampler qc_sampler;

/* n_tokens: the tokenizer's id count; ids at or above it are never drawn. */
int qc_sampler_new(const qc_sample_params *p, int n_tokens, qc_sampler **out, qc_err *err);
void qc_sampler_free(qc_sampler *s);

/* Forgets the history and restarts the random stream from seed. */
void qc_sampler_reset(qc_sampler *s, uint64_t seed);

/* Records a generated token for the penalties (ids outside [0, n_tokens) are
 * ignored). */
void qc_sampler_accept(qc_sampler *s, int32_t id);

/* Draws one id from logits[0..vocab) (vocab may exceed n_tokens). Does not
 * record it; qc_sampler_next does both. Returns -1 only when no id below
 * min(vocab, n_tokens) has a finite logit. */
int32_t qc_sampler_sample(qc_sampler *s, const float *logits, int vocab);
int32_t qc_sampler_next(qc_sampler *s, const float *logits, int vocab);

/* A model's logits are finite; a NaN or infinite one means a damaged weight
 * or an overflow, and sampling around it would hide that. The sampler itself
 * takes NaN as -inf (callers that mask ids use -inf); sessions and `score`
 * refuse such rows instead: qc_logits_count_nonfinite counts them in row[0,
 * n), qc_logits_nonfinite_error sets the error (QC_EXIT_RUNTIME) for
 * `count` of them among the first n logits of the row at position pos (the
 * 0-based position of the token whose row it is). */
int64_t qc_logits_count_nonfinite(const float *row, int64_t n);
int qc_logits_nonfinite_error(qc_err *err, int64_t count, int64_t n, int pos);

/* The exact distribution the next draw uses: probs[0..vocab) (zero for
 * removed ids; one-hot when greedy). Returns the number of ids with nonzero
 * probability, or -1 as qc_sampler_sample. For tests and `--json` details. */
int qc_sampler_probs(qc_sampler *s, const float *logits, int vocab, float *probs);

/* ---- sampling from a candidate set (device sampling, engine/session.c) ----
 * A GPU keeps the logits row on the device, applies the penalties there,
 * selects the largest penalised logits (ties: lower id first) and copies
 * back only those; the draw then runs here on that set and gives the token
 * qc_sampler_sample would give on the full row. */

#include <stdbool.h>

#define QC_SAMPLER_MAX_TOPK 1024
#define QC_SAMPLER_UNDECIDED 1000 /* the candidate set cannot prove the full row's answer */

const qc_sample_params *qc_sampler_params(const qc_sampler *s);
int qc_sampler_n_tokens(const qc_sampler *s);
/* The generated-token history the penalties use: *ids the distinct ids (the
 * return value is their number), (*counts)[id] how often each was accepted. */
int qc_sampler_history(const qc_sampler *s, const int32_t **ids, const int32_t **counts);
/* True when the penalties change any logit now. */
bool qc_sampler_has_penalties(const qc_sampler *s);
/* How many of the largest logits the next draw needs: 1 when greedy, else
 * max(64, 2 * top_k) when 1 < top_k <= QC_SAMPLER_MAX_TOPK, else 0 (top-k
 * off or very wide: every nonzero probability may matter, so the full row is
 * needed). */
int qc_sampler_candidates_wanted(const qc_sampler *s);
/* Draws (without recording) from vals[0..n), the penalised logits of ids
 * ids[0..n) (distinct, any order; NaN counts as -inf). partial: these are the
 * n largest of the full row (by value, then lower id), every other id's value
 * being <= their smallest; false: they are all its finite entries. Returns
 * QC_OK with *out the id (-1 when nothing can be drawn) — the one
 * qc_sampler_sample draws from the full row, random stream included — or
 * QC_SAMPLER_UNDECIDED, consuming nothing, when a partial set cannot prove
 * that answer (ties at its edge; top-k not narrower than the set): then
 * sample from the full row. */
int qc_sampler_sample_candidates(qc_sampler *s, const float *vals, const int32_t *ids, int n,
                                 bool partial, int32_t *out);

#endif
