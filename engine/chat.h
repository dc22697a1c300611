/* chat.h — Qwen3.5 chat prompts, rendered natively.
 *
 * qchat does not interpret Jinja. It recognises the official Qwen3.5 chat
 * templates in a checkpoint (chat_template.jinja, or tokenizer_config.json's
 * "chat_template") and renders their output in C, byte for byte:
 *
 *   [<|im_start|>system\n{system|trim}<|im_end|>\n]
 *   <|im_start|>user\n{content|trim}<|im_end|>\n
 *   <|im_start|>assistant\n{content}<|im_end|>\n            (before the last user turn:
 *                                                           reasoning dropped)
 *   <|im_start|>assistant\n<think>\n{r}\n</think>\n\n{content}<|im_end|>\n  (after it)
 *   generation prompt: <|im_start|>assistant\n<think>\n          (thinking)
 *                      <|im_start|>assistant\n<think>\n\n</think>\n\n  (not thinking)
 *
 * Two variants exist: 4B and larger think by default; the 0.8B/2B template
 * inverts the default. A template that is neither gets a warning (rendered as
 * the default variant); the override is the environment variable
 * QCHAT_CHAT_TEMPLATE=qwen35|qwen35-small, or the `override` argument (which
 * front ends fill from an option). */
#ifndef QC_CHAT_H
#define QC_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

typedef enum qc_role { QC_ROLE_SYSTEM, QC_ROLE_USER, QC_ROLE_ASSISTANT, QC_ROLE_TOOL } qc_role;

typedef struct qc_chat_msg {
    qc_role role;
    char *content;   /* never NULL */
    char *reasoning; /* assistant reasoning_content; NULL = not given (then a
                        "<think>...</think>" inside content is split off) */
} qc_chat_msg;

/* A conversation; owns copies of every string. */
typedef struct qc_chat {
    qc_chat_msg *msgs;
    size_t n, cap;
} qc_chat;

void qc_chat_init(qc_chat *c);
void qc_chat_free(qc_chat *c);
void qc_chat_clear(qc_chat *c);
/* Appends a copy. content NULL counts as "". Invalid UTF-8 in content or
 * reasoning gives QC_EXIT_USAGE with the offset; nothing is appended. */
int qc_chat_add(qc_chat *c, qc_role role, const char *content, const char *reasoning, qc_err *err);
/* Removes the last message (no-op when empty). */
void qc_chat_pop(qc_chat *c);
const char *qc_role_name(qc_role r);

typedef enum qc_template_kind {
    QC_TEMPLATE_QWEN35 = 0,    /* 4B and larger: thinking by default */
    QC_TEMPLATE_QWEN35_SMALL,  /* 0.8B / 2B: non-thinking by default */
} qc_template_kind;

typedef struct qc_chat_template {
    qc_template_kind kind;
    bool thinking_default;
    bool recognised;      /* the checkpoint's template (or an override) was recognised */
    char source[64];      /* "chat_template.jinja", "tokenizer_config.json", "override", "none" */
    char how[32];         /* "exact", "markers", "override", "fallback" */
    char warning[512];    /* non-empty when not recognised: one line for the user */
} qc_chat_template;

/* Finds and classifies the template of checkpoint `dir`. `override` (may be
 * NULL; else QCHAT_CHAT_TEMPLATE is consulted) names a variant: "qwen35" or
 * "qwen35-small". A missing or unknown template is not an error: the result
 * is the default variant with recognised = false and a warning. A bad
 * override name gives QC_EXIT_USAGE. */
int qc_chat_template_detect(const char *dir, const char *override, qc_chat_template *tpl,
                            qc_err *err);
/* Classifies template text (the Jinja source) directly. */
void qc_chat_template_classify(const char *text, qc_chat_template *tpl);
/* "qwen35" / "qwen35-small" -> tpl; QC_EXIT_USAGE for another name. */
int qc_chat_template_named(const char *name, qc_chat_template *tpl, qc_err *err);

enum { QC_THINK_DEFAULT = -1, QC_THINK_OFF = 0, QC_THINK_ON = 1 };

/* Renders the conversation. think: QC_THINK_DEFAULT uses the template's
 * default. *out is malloc'd and NUL-terminated. The template's own errors are
 * reported the same way (QC_EXIT_USAGE): no messages, system message not
 * first, no user message. */
int qc_chat_render(const qc_chat_template *tpl, const qc_chat *c, bool add_generation_prompt,
                   int think, char **out, size_t *len, qc_err *err);

/* True when a rendered prompt leaves the model inside the reasoning
 * (ends with "<think>\n"): the reply starts as reasoning. */
bool qc_chat_prompt_in_reasoning(const char *prompt, size_t len);

#endif
