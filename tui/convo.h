/* convo.h — the conversation as the TUI keeps it, and its JSON file form.
 *
 * The token history (tokens) is the source of truth for the model: hot-swap
 * and /load re-prefill exactly these ids. The turns carry what the user sees
 * (text, reasoning, which format produced a reply, its statistics). Files are
 * written atomically: a temporary file in the same directory, fsync, rename. */
#ifndef TUI_CONVO_H
#define TUI_CONVO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum convo_role { CONVO_USER = 0, CONVO_ASSISTANT } convo_role;

typedef struct convo_turn {
    convo_role role;
    char *text;      /* user text, or the answer; never NULL */
    char *reasoning; /* assistant reasoning; never NULL ("" when none) */
    char format[24]; /* assistant: label of the checkpoint that produced it ("FP8") */
    int n_reasoning, n_answer; /* tokens */
    int n_prompt;              /* tokens prefilled for this reply */
    double ttft_ms, tok_s, itl_p50_ms, itl_p99_ms;
    double secs; /* from the prompt's Enter to the reply's last token (prefill included) */
    bool stopped; /* ended by Ctrl-C or the token limit, not by an eos */
    bool cut;     /* stopped by the token limit (max_tokens), not by the user */
    bool full;    /* stopped by a full context (--ctx) */
    char *error;  /* assistant: why the reply failed (the engine's message); NULL when it did not */
} convo_turn;

typedef struct convo_sampling {
    double temperature, top_p, min_p, repetition_penalty, presence_penalty;
    int top_k;
    uint64_t seed;
    int max_tokens; /* per reply; 0 = until the context is full */
} convo_sampling;

typedef struct convo {
    char *system;           /* never NULL ("" when none) */
    convo_turn *turns;
    int n, cap;
    int32_t *tokens;        /* what the model has seen */
    int n_tokens, cap_tokens;
    bool think;
    convo_sampling sampling;
} convo;

void convo_init(convo *c);
void convo_free(convo *c);
/* Drops turns and tokens; keeps system, think and sampling. */
void convo_clear(convo *c);
/* Appends a turn with copies of text/reasoning; returns it or NULL (no memory). */
convo_turn *convo_add(convo *c, convo_role role, const char *text, const char *reasoning);
void convo_pop(convo *c);
int convo_set_text(char **dst, const char *s, size_t n); /* replaces a string; 0 or -1 */
int convo_set_tokens(convo *c, const int32_t *ids, int n);

/* JSON: {"qchat_session":1,"system":..,"think":..,"sampling":{..},
 *        "turns":[{"role":"user"|"assistant","text":..,"reasoning":..,"format":..,...}],
 *        "tokens":[...]} */
char *convo_to_json(const convo *c); /* malloc'd */
/* Parses into *out (initialised here). Returns 0, or -1 with msg naming what
 * is wrong; *out is untouched on failure. */
int convo_from_json(const char *text, size_t len, convo *out, char *msg, int msglen);
/* Writes atomically; creates missing parent directories. 0 or -1 with msg. */
int convo_save(const convo *c, const char *path, char *msg, int msglen);
int convo_load(const char *path, convo *out, char *msg, int msglen);

/* mkdir -p of the directory part of path. 0 or -1. */
int convo_mkdir_parents(const char *path);

#endif
