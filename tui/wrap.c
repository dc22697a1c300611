/* wrap.c — see wrap.h. */
#include "wrap.h"

#include <stdint.h>
#include <stdlib.h>
#include <utf8proc.h>

/* Decodes one code point; invalid bytes decode as U+FFFD of length 1. */
static size_t decode_one(const char *s, size_t n, int32_t *cp)
{
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)(n > 4 ? 4 : n), &c);
    if (k <= 0) {
        *cp = 0xFFFD;
        return 1;
    }
    *cp = c;
    return (size_t)k;
}

static int cp_width(int32_t cp)
{
    if (cp == '\n')
        return 0;
    if (cp < 0x20 || cp == 0x7f)
        return 1; /* shown as a placeholder by the drawing code */
    int w = utf8proc_charwidth(cp);
    return w < 0 ? 1 : w;
}

size_t wrap_cluster(const char *s, size_t n, int *width)
{
    if (n == 0) {
        *width = 0;
        return 0;
    }
    int32_t prev, cp;
    size_t i = decode_one(s, n, &prev);
    int w = cp_width(prev);
    if (prev == '\n') {
        *width = 0;
        return i;
    }
    utf8proc_int32_t state = 0;
    while (i < n) {
        size_t k = decode_one(s + i, n - i, &cp);
        if (cp == '\n' || utf8proc_grapheme_break_stateful(prev, cp, &state))
            break;
        int cw = cp_width(cp);
        /* U+FE0F asks for emoji presentation: terminals draw it two wide. */
        if (cp == 0xFE0F)
            cw = 2;
        if (cw > w)
            w = cw;
        prev = cp;
        i += k;
    }
    *width = w > 2 ? 2 : w;
    return i;
}

int wrap_width(const char *s, size_t n)
{
    int total = 0;
    size_t i = 0;
    while (i < n) {
        int w;
        i += wrap_cluster(s + i, n - i, &w);
        total += w;
    }
    return total;
}

size_t wrap_fit(const char *s, size_t n, int cols, int *width)
{
    int total = 0;
    size_t i = 0;
    while (i < n) {
        int w;
        size_t k = wrap_cluster(s + i, n - i, &w);
        if (s[i] == '\n' || total + w > cols)
            break;
        total += w;
        i += k;
    }
    *width = total;
    return i;
}

static int push_line(wrap_cache *wc, size_t off, size_t len, int width)
{
    if (wc->n == wc->cap) {
        int cap = wc->cap ? wc->cap * 2 : 64;
        wrap_line *p = realloc(wc->lines, (size_t)cap * sizeof *p);
        if (!p)
            return -1;
        wc->lines = p;
        wc->cap = cap;
    }
    wc->lines[wc->n++] = (wrap_line){off, len, width};
    return 0;
}

void wrap_cache_reset(wrap_cache *wc)
{
    wc->n = 0;
    wc->done = 0;
    wc->cols = 0;
}

void wrap_cache_free(wrap_cache *wc)
{
    free(wc->lines);
    *wc = (wrap_cache){0};
}

int wrap_cache_update(wrap_cache *wc, const char *s, size_t n, int cols)
{
    if (cols < 1)
        cols = 1;
    if (cols != wc->cols || n < wc->done) {
        wc->n = 0;
        wc->cols = cols;
    }
    /* Every line but the last is final: restart from the last line's start. */
    size_t p = 0;
    if (wc->n > 0)
        p = wc->lines[--wc->n].off;
    for (;;) {
        size_t ls = p, q = p, brk_end = 0, brk_next = 0;
        int w = 0, w_at_brk = 0;
        int have_brk = 0;
        for (;;) {
            if (q >= n || s[q] == '\n') {
                if (push_line(wc, ls, q - ls, w) < 0)
                    return -1;
                if (q >= n) {
                    wc->done = n;
                    return 0;
                }
                p = q + 1;
                break;
            }
            int cw;
            size_t k = wrap_cluster(s + q, n - q, &cw);
            if (w + cw > cols && q > ls) {
                if (have_brk) {
                    if (push_line(wc, ls, brk_end - ls, w_at_brk) < 0)
                        return -1;
                    p = brk_next;
                } else {
                    if (push_line(wc, ls, q - ls, w) < 0)
                        return -1;
                    p = q;
                }
                break;
            }
            if (s[q] == ' ') {
                /* A break candidate: the line would end before this space and
                 * the next start after the run of spaces. */
                have_brk = 1;
                brk_end = q;
                w_at_brk = w;
                size_t r = q;
                while (r < n && s[r] == ' ')
                    r++;
                brk_next = r;
            }
            w += cw;
            q += k;
        }
        /* Spaces carried over to a new line are dropped at its start. */
        while (p < n && s[p] == ' ' && p > 0 && s[p - 1] != '\n')
            p++;
    }
}
