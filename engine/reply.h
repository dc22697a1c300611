/* reply.h — splits a streamed reply into reasoning and answer.
 *
 * Qwen3.5 prompts end inside the reasoning ("<think>\n"), so the model writes
 * reasoning, then </think>, then the answer, then an eos id. The splitter takes
 * the sampled ids one at a time, hides the tags (<think>, </think>) and the
 * newlines that surround them (the template trims them too), turns the rest
 * into complete UTF-8 (qc_detok) and says which side it belongs to. Every eos
 * id given (generation_config.json's eos_token_id list) ends the reply.
 *
 * Hidden whitespace: the reasoning's leading and trailing newlines and the
 * answer's leading newlines are not emitted (trailing newlines of the
 * reasoning are held until more reasoning text shows they were inner ones).
 * Everything else comes out exactly. */
#ifndef QC_REPLY_H
#define QC_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "detok.h"
#include "tokenizer.h"

typedef enum qc_reply_kind {
    QC_REPLY_NONE = 0,  /* nothing visible came out of this id */
    QC_REPLY_REASONING,
    QC_REPLY_ANSWER,
} qc_reply_kind;

/* What one fed id produced. text is valid until the next call on the
 * splitter; it is complete UTF-8 and belongs to `kind`. */
typedef struct qc_reply_piece {
    qc_reply_kind kind;
    const char *text;
    size_t len;
    bool end; /* this id was an eos (or the reply had already ended) */
} qc_reply_piece;

#define QC_REPLY_MAX_EOS 8

typedef struct qc_reply {
    const qc_tokenizer *tok;
    int32_t eos[QC_REPLY_MAX_EOS];
    int n_eos;
    int32_t think_open, think_close; /* -1 when the tokenizer lacks them */
    bool in_reasoning, ended, seen_text; /* seen_text: the current side has emitted text */
    qc_detok dt;
    char *held; size_t nheld, capheld;  /* reasoning newlines held back */
    char *out; size_t nout, capout;     /* text of the last piece */
    char *reasoning; size_t nreasoning, capreasoning; /* whole reply so far */
    char *answer; size_t nanswer, capanswer;
    /* Token counts: reasoning / answer ids (tags and eos count in n_other). */
    int n_reasoning, n_answer, n_other;
} qc_reply;

/* in_reasoning: the prompt ended inside <think> (qc_chat_prompt_in_reasoning).
 * At most QC_REPLY_MAX_EOS eos ids (extra ones give QC_EXIT_USAGE). */
int qc_reply_init(qc_reply *r, const qc_tokenizer *tok, const int32_t *eos, int n_eos,
                  bool in_reasoning, qc_err *err);
void qc_reply_free(qc_reply *r);

/* Feeds one sampled id. Returns QC_OK or QC_EXIT_RUNTIME (out of memory). */
int qc_reply_feed(qc_reply *r, int32_t id, qc_reply_piece *piece, qc_err *err);
/* Ends the reply without an eos (token limit, user stop): flushes held bytes. */
int qc_reply_finish(qc_reply *r, qc_reply_piece *piece, qc_err *err);

/* The whole reasoning / answer emitted so far (NUL-terminated; "" when none). */
const char *qc_reply_reasoning(const qc_reply *r, size_t *len);
const char *qc_reply_answer(const qc_reply *r, size_t *len);

#endif
