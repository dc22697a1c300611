/* tokenizer.h — byte-level BPE read from a checkpoint's tokenizer.json.
 *
 * What it implements (the Hugging Face `tokenizers` pipeline for Qwen-style
 * files, encode with add_special_tokens=False):
 *   1. added tokens (special or not) are cut out of the raw text first,
 *      leftmost match, longest first;
 *   2. every other segment is NFC-normalised (utf8proc) when the file asks;
 *   3. split by the file's own pre-tokenizer regex (PCRE2, UTF + UCP),
 *      "Isolated" behaviour: matches and the gaps between them are pieces;
 *   4. each piece is mapped byte -> printable char (GPT-2 byte-level table) and
 *      BPE-merged by rank with a heap;
 *   decode: ids -> token strings -> bytes (byte-level decoder); invalid UTF-8
 *   in the result is replaced by U+FFFD per maximal invalid subpart, as
 *   Rust's String::from_utf8_lossy does.
 *
 * There is no BOS: nothing is added around the text.
 *
 * Known limits: added tokens' lstrip/rstrip/single_word flags are ignored and
 * all added tokens are matched in the raw text (Qwen's are all plain, with
 * normalized: false); characters assigned after Unicode 14 (the tables of
 * PCRE2 10.42) may split differently from Hugging Face's newer tables.
 * Unsupported shapes (another model type, normalizer or decoder, BPE dropout,
 * byte fallback, subword affixes) are refused at load with a message.
 *
 * A loaded tokenizer is immutable apart from an internal word cache guarded by
 * a mutex, so one tokenizer may be shared by several threads. */
#ifndef QC_TOKENIZER_H
#define QC_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct qc_tokenizer qc_tokenizer;

/* Loads `path`/tokenizer.json; `path` may also name the JSON file itself.
 * A missing or malformed file gives QC_EXIT_CHECKPOINT with a message naming
 * the file and the fault (not JSON, no model.vocab, a merge whose parts or
 * result are not in the vocab, a regex PCRE2 rejects, ...). */
int qc_tokenizer_load(const char *path, qc_tokenizer **out, qc_err *err);
/* The same from JSON text in memory; `name` is used in error messages. */
int qc_tokenizer_load_json(const char *json, size_t len, const char *name, qc_tokenizer **out,
                           qc_err *err);
void qc_tokenizer_free(qc_tokenizer *tok);

/* text (len bytes, need not be NUL-terminated) -> *ids (malloc'd, caller
 * frees; NULL when *n is 0). Invalid UTF-8 gives QC_EXIT_USAGE and a message
 * with the byte offset. */
int qc_tokenizer_encode(const qc_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                        size_t *n, qc_err *err);

/* ids -> *text (malloc'd, NUL-terminated, caller frees). Special tokens are
 * kept as their text. An id that names no token gives QC_EXIT_USAGE. */
int qc_tokenizer_decode(const qc_tokenizer *tok, const int32_t *ids, size_t n, char **text,
                        size_t *len, qc_err *err);

/* One past the largest id of any token (vocab or added). Ids at or above it
 * are embedding padding and must never be sampled. Some ids below it may
 * still name no token (gaps); qc_tokenizer_token_bytes returns NULL there. */
int qc_tokenizer_n_tokens(const qc_tokenizer *tok);

/* Id of a token by its exact string: an added token's content ("<think>") or
 * a vocab entry as spelled in the file ("Ġthe"). -1 when there is none. */
int32_t qc_tokenizer_find(const qc_tokenizer *tok, const char *s);

/* The bytes one token decodes to (may be an incomplete UTF-8 sequence), or
 * NULL for an id that names no token. Not NUL-terminated. */
const char *qc_tokenizer_token_bytes(const qc_tokenizer *tok, int32_t id, size_t *len);
/* The token as spelled in tokenizer.json (NUL-terminated), or NULL. */
const char *qc_tokenizer_token_str(const qc_tokenizer *tok, int32_t id);
/* Added token (from added_tokens), and whether it is marked special. */
bool qc_tokenizer_is_added(const qc_tokenizer *tok, int32_t id);
bool qc_tokenizer_is_special(const qc_tokenizer *tok, int32_t id);

/* UTF-8 helpers shared with detok/chat/reply. */
/* true when s[0..len) is valid UTF-8; otherwise *bad_off (if not NULL) gets
 * the offset of the first invalid byte. */
bool qc_utf8_valid(const char *s, size_t len, size_t *bad_off);

#endif
