/* detok.c — streaming detokenizer; see detok.h.
 *
 * A small UTF-8 state machine: `pend` holds a valid prefix of one character.
 * A byte that cannot continue it turns the prefix into one U+FFFD and is then
 * looked at afresh — the "maximal subpart" rule of Unicode §3.9, which is also
 * what Rust's from_utf8_lossy (and so Hugging Face's decoder) applies. */
#include "detok.h"

#include <stdlib.h>
#include <string.h>

void qc_detok_init(qc_detok *d, const qc_tokenizer *tok)
{
    memset(d, 0, sizeof *d);
    d->tok = tok;
}

void qc_detok_free(qc_detok *d)
{
    free(d->buf);
    memset(d, 0, sizeof *d);
}

void qc_detok_reset(qc_detok *d) { d->npend = 0; }

static int reserve(qc_detok *d, size_t extra, qc_err *err)
{
    if (d->len + extra <= d->cap)
        return QC_OK;
    size_t nc = d->cap ? d->cap : 64;
    while (nc < d->len + extra)
        nc *= 2;
    char *nb = realloc(d->buf, nc);
    if (!nb)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory in the detokenizer");
    d->buf = nb;
    d->cap = nc;
    return QC_OK;
}

static void put_fffd(qc_detok *d)
{
    memcpy(d->buf + d->len, "\xEF\xBF\xBD", 3);
    d->len += 3;
}

/* Total length of the character a lead byte starts, 0 when it starts none. */
static int seq_len(unsigned c)
{
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF)
        return 3;
    if (c >= 0xF0 && c <= 0xF4)
        return 4;
    return 0;
}

/* Whether byte c may follow pend[0..npend) inside one character. */
static bool continues(const qc_detok *d, unsigned c)
{
    unsigned lo = 0x80, hi = 0xBF;
    if (d->npend == 1) {
        switch (d->pend[0]) {
        case 0xE0: lo = 0xA0; break;
        case 0xED: hi = 0x9F; break;
        case 0xF0: lo = 0x90; break;
        case 0xF4: hi = 0x8F; break;
        default: break;
        }
    }
    return c >= lo && c <= hi;
}

/* Appends the complete UTF-8 that bytes p[0..n) yield after the held ones. */
static int feed(qc_detok *d, const unsigned char *p, size_t n, qc_err *err)
{
    /* Worst case every byte becomes U+FFFD, plus the held bytes. */
    if (reserve(d, 3 * n + 8, err))
        return QC_EXIT_RUNTIME;
    for (size_t i = 0; i < n; i++) {
        unsigned c = p[i];
        if (d->npend) {
            if (continues(d, c)) {
                d->pend[d->npend++] = (unsigned char)c;
                if (d->npend == seq_len(d->pend[0])) {
                    memcpy(d->buf + d->len, d->pend, (size_t)d->npend);
                    d->len += (size_t)d->npend;
                    d->npend = 0;
                }
                continue;
            }
            put_fffd(d); /* the held prefix can never complete */
            d->npend = 0;
        }
        if (c < 0x80)
            d->buf[d->len++] = (char)c;
        else if (seq_len(c))
            d->pend[d->npend++] = (unsigned char)c;
        else
            put_fffd(d);
    }
    return QC_OK;
}

int qc_detok_push_bytes(qc_detok *d, const char *bytes, size_t n, const char **text, size_t *len,
                        qc_err *err)
{
    d->len = 0;
    int rc = feed(d, (const unsigned char *)bytes, n, err);
    *text = d->buf ? d->buf : "";
    *len = rc ? 0 : d->len;
    return rc;
}

int qc_detok_push(qc_detok *d, int32_t id, const char **text, size_t *len, qc_err *err)
{
    size_t n = 0;
    const char *b = qc_tokenizer_token_bytes(d->tok, id, &n);
    return qc_detok_push_bytes(d, b ? b : "", b ? n : 0, text, len, err);
}

int qc_detok_flush(qc_detok *d, const char **text, size_t *len, qc_err *err)
{
    d->len = 0;
    if (reserve(d, 3, err)) {
        *text = "";
        *len = 0;
        return QC_EXIT_RUNTIME;
    }
    if (d->npend) {
        put_fffd(d);
        d->npend = 0;
    }
    *text = d->buf;
    *len = d->len;
    return QC_OK;
}
