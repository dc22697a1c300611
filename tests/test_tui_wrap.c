/* test_tui_wrap.c — display-width measurement and wrapping (tui/wrap.c):
 * ASCII, CJK (2 columns), emoji (2, ZWJ sequences one cluster), combining
 * marks (0), and the incremental cache against a from-scratch wrap. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "wrap.h"

/* Every wrapped line fits, and concatenating lines (plus the dropped break
 * spaces/newlines) loses no non-space byte. */
static int lines_ok(const wrap_cache *wc, const char *s, int cols)
{
    size_t nonspace = 0, seen = 0;
    for (size_t i = 0; s[i]; i++)
        nonspace += s[i] != ' ' && s[i] != '\n';
    for (int i = 0; i < wc->n; i++) {
        const wrap_line *l = &wc->lines[i];
        if (l->width > cols || wrap_width(s + l->off, l->len) != l->width)
            return 0;
        for (size_t k = 0; k < l->len; k++)
            seen += s[l->off + k] != ' ' && s[l->off + k] != '\n';
    }
    return seen == nonspace;
}

int main(void)
{
    CHECK("width_ascii", wrap_width("hello", 5) == 5, "got %d", wrap_width("hello", 5));
    const char *cjk = "\xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c"; /* 你好世界 */
    CHECK("width_cjk", wrap_width(cjk, strlen(cjk)) == 8, "got %d", wrap_width(cjk, strlen(cjk)));
    const char *comb = "e\xcc\x81" "a\xcc\x88\xcc\x81"; /* é (e + U+0301), a + two marks */
    CHECK("width_combining", wrap_width(comb, strlen(comb)) == 2, "got %d", wrap_width(comb, strlen(comb)));
    int w;
    size_t k = wrap_cluster(comb, strlen(comb), &w);
    CHECK("cluster_combining", k == 3 && w == 1, "len %zu width %d", k, w);
    const char *emoji = "\xf0\x9f\x98\x80"; /* 😀 */
    CHECK("width_emoji", wrap_width(emoji, 4) == 2, "got %d", wrap_width(emoji, 4));
    /* 👩‍💻 woman + ZWJ + laptop: one cluster, two columns */
    const char *zwj = "\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x92\xbb";
    k = wrap_cluster(zwj, strlen(zwj), &w);
    CHECK("cluster_zwj", k == strlen(zwj) && w == 2, "len %zu width %d", k, w);
    CHECK("width_invalid_byte", wrap_width("\xff" "a", 2) == 2, "got %d", wrap_width("\xff" "a", 2));

    size_t fit = wrap_fit(cjk, strlen(cjk), 5, &w);
    CHECK("fit_cjk_never_splits_wide", fit == 6 && w == 4, "fit %zu width %d", fit, w);

    wrap_cache wc = {0};
    const char *text = "the quick brown fox jumps over the lazy dog";
    wrap_cache_update(&wc, text, strlen(text), 10);
    CHECK("wrap_words", wc.n == 5 && wc.lines[0].len == 9 && !strncmp(text + wc.lines[1].off, "brown fox", 9),
          "n %d first len %zu", wc.n, wc.n ? wc.lines[0].len : 0);
    CHECK("wrap_words_fit", lines_ok(&wc, text, 10), "a line is too wide or text was lost");

    const char *longword = "abcdefghijklmnopqrstuvwxyz";
    wrap_cache_update(&wc, longword, strlen(longword), 10);
    CHECK("wrap_hard_break", wc.n == 3 && wc.lines[0].len == 10 && wc.lines[2].len == 6, "n %d", wc.n);

    const char *nl = "one\n\ntwo";
    wrap_cache_reset(&wc);
    wrap_cache_update(&wc, nl, strlen(nl), 20);
    CHECK("wrap_newlines", wc.n == 3 && wc.lines[1].len == 0 && wc.lines[2].len == 3, "n %d", wc.n);

    /* Mixed script at an odd width: no line exceeds it, no wide glyph split. */
    char mixed[512];
    snprintf(mixed, sizeof mixed, "Hi %s, %s ok %s caf%s %s%s%s end", cjk, emoji, zwj, "e\xcc\x81", cjk, cjk, emoji);
    for (int cols = 1; cols <= 13; cols++) {
        wrap_cache_reset(&wc);
        wrap_cache_update(&wc, mixed, strlen(mixed), cols);
        char name[64];
        snprintf(name, sizeof name, "wrap_mixed_cols_%d", cols);
        /* At width 1 a two-column glyph cannot fit: it goes alone on its line. */
        int ok = 1;
        for (int i = 0; i < wc.n; i++)
            if (wc.lines[i].width > (cols < 2 ? 2 : cols) || (wc.lines[i].width > cols && wc.lines[i].len > 4 + 7))
                ok = 0;
        CHECK(name, ok && (cols < 2 || lines_ok(&wc, mixed, cols)), "n %d", wc.n);
    }

    /* Streaming: appending piece by piece gives exactly the from-scratch result. */
    const char *para = "Streaming text \xe4\xbd\xa0\xe5\xa5\xbd arrives token by token; the cache "
                       "re-wraps only the last line.\nA new paragraph \xf0\x9f\x98\x80 follows here.";
    size_t n = strlen(para);
    wrap_cache inc = {0}, full = {0};
    int same = 1;
    for (size_t cut = 1; cut <= n; cut++) {
        /* Only cut at UTF-8 character starts, as the detokenizer guarantees. */
        if (cut < n && ((unsigned char)para[cut] & 0xC0) == 0x80)
            continue;
        wrap_cache_update(&inc, para, cut, 17);
        wrap_cache_reset(&full);
        wrap_cache_update(&full, para, cut, 17);
        if (inc.n != full.n)
            same = 0;
        for (int i = 0; same && i < inc.n; i++)
            if (inc.lines[i].off != full.lines[i].off || inc.lines[i].len != full.lines[i].len)
                same = 0;
        if (!same)
            break;
    }
    CHECK("wrap_incremental_matches_full", same, "incremental and full wraps differ");
    /* A width change re-wraps from scratch. */
    wrap_cache_update(&inc, para, n, 40);
    CHECK("wrap_resize", inc.cols == 40 && lines_ok(&inc, para, 40), "cols %d", inc.cols);
    wrap_cache_free(&inc);
    wrap_cache_free(&full);
    wrap_cache_free(&wc);
    return th_exit();
}
