/* wrap.h — display-width text measurement and line wrapping for the TUI.
 *
 * Text is UTF-8. Widths come from utf8proc (East Asian wide = 2, combining
 * marks and zero-width joiners = 0) and are measured per grapheme cluster, so
 * an emoji ZWJ sequence or a letter with combining accents is never split and
 * counts as the widest code point in it. Invalid bytes count as one column
 * (the drawing code shows them as U+FFFD). */
#ifndef TUI_WRAP_H
#define TUI_WRAP_H

#include <stddef.h>

/* One grapheme cluster starting at s (n bytes available): returns its length in
 * bytes (>= 1 when n > 0) and stores its display width in *width. */
size_t wrap_cluster(const char *s, size_t n, int *width);

/* Display width of n bytes of UTF-8 ('\n' counts 0). */
int wrap_width(const char *s, size_t n);

/* Longest prefix of s (n bytes) that fits in cols columns, cut between
 * clusters; returns its byte length and stores its width in *width. */
size_t wrap_fit(const char *s, size_t n, int cols, int *width);

typedef struct wrap_line {
    size_t off, len; /* bytes of the source text (without the newline) */
    int width;       /* display columns */
} wrap_line;

/* Wrapped lines of a growing text, kept incrementally: appending text re-wraps
 * only from the start of the last line, so a reply streaming token by token
 * costs O(new text) per update, not O(whole text). */
typedef struct wrap_cache {
    int cols;
    wrap_line *lines;
    int n, cap;
    size_t done; /* bytes of the text consumed so far */
} wrap_cache;

/* Brings the cache up to date with text s (n bytes) at width cols (> 0).
 * Text may only have grown since the last call unless wrap_cache_reset was
 * called. Breaks at spaces when a word fits, else between clusters; '\n'
 * forces a break. Returns 0, or -1 when out of memory (cache left valid). */
int wrap_cache_update(wrap_cache *wc, const char *s, size_t n, int cols);
void wrap_cache_reset(wrap_cache *wc);
void wrap_cache_free(wrap_cache *wc);

#endif
