/* detok.h — streaming detokenizer: token ids in one at a time, only complete
 * UTF-8 out.
 *
 * A token may end inside a multi-byte character (byte-level BPE splits
 * emoji and CJK across tokens); those bytes are held until the character is
 * complete. Bytes that can never become valid UTF-8 come out as U+FFFD, one
 * per maximal invalid subpart — the same rule qc_tokenizer_decode uses — so
 * the concatenation of every push plus the final flush equals
 * qc_tokenizer_decode of all the ids, byte for byte. */
#ifndef QC_DETOK_H
#define QC_DETOK_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

typedef struct qc_detok {
    const qc_tokenizer *tok;
    unsigned char pend[4]; /* a valid prefix of one UTF-8 character */
    int npend;
    char *buf; /* output of the last call */
    size_t len, cap;
} qc_detok;

void qc_detok_init(qc_detok *d, const qc_tokenizer *tok);
void qc_detok_free(qc_detok *d);
/* Drops held bytes (start of a new reply). */
void qc_detok_reset(qc_detok *d);

/* Adds one id. *text and *len receive the complete UTF-8 that came out (possibly
 * empty); valid until the next call on d. Ids that name no token add
 * nothing. Returns QC_OK or QC_EXIT_RUNTIME (out of memory). */
int qc_detok_push(qc_detok *d, int32_t id, const char **text, size_t *len, qc_err *err);
/* Adds raw bytes (what a token decodes to); same contract as push. */
int qc_detok_push_bytes(qc_detok *d, const char *bytes, size_t n, const char **text, size_t *len,
                        qc_err *err);
/* End of stream: held bytes of an unfinished character come out as U+FFFD. */
int qc_detok_flush(qc_detok *d, const char **text, size_t *len, qc_err *err);

#endif
