/* app.c — the qchat TUI (see product.md "The screen"): ncurses wide-char
 * drawing, readline input through its callback interface, slash commands from
 * the command table, everything engine-side on the worker thread.
 *
 * Frame model: the main loop polls the terminal and the worker's wake pipe;
 * anything that changes marks the screen dirty and a frame is drawn at most
 * every 33 ms (token bursts coalesce). A frame erases and redraws every pane
 * from state; ncurses sends only the changed cells, and wrapped text comes
 * from incremental caches (wrap.h), so a frame costs O(visible text). */
#include "app.h"

#include <ctype.h>
#include <curses.h>
#include <errno.h>
#include <locale.h>
#include <math.h>
#include <poll.h>
#include <readline/history.h>
#include <readline/readline.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "config.h"
#include "convo.h"
#include "layout.h"
#include "meters.h"
#include "theme.h"
#include "tokenizer.h"
#include "worker.h"
#include "wrap.h"

enum { DB_USER, DB_ASSISTANT, DB_INFO, DB_ERROR };

typedef struct dblock {
    int kind;
    char *text;
    size_t n;
    char header[160];
    wrap_cache wc;
} dblock;

typedef struct textbuf {
    char *s;
    size_t n, cap;
} textbuf;

typedef struct app {
    app_opts o;
    worker w;
    theme th;
    theme_depth depth;
    attr_t attr[TH_COUNT];
    layout L;
    convo cv;
    dblock *blocks;
    int n_blocks, cap_blocks;
    /* the reply under way, copied from the worker */
    textbuf rtext, atext;
    wrap_cache r_wc, a_wc;
    worker_live snap; /* numbers only (text pointers unused) */
    unsigned seen_seq;
    bool generating;
    char gen_format[24];
    int swap_target; /* the pending swap's checkpoint */
    int swap_added;  /* the same when its /swap DIR appended it to the list, else -1 */
    int scroll; /* conversation lines scrolled up from the bottom */
    bool reason_collapsed;
    /* input */
    textbuf pending; /* earlier lines of a multi-line entry */
    int feed_ch;
    bool feed_ready;
    bool quit;
    bool ctrl_c_armed; /* the last key was a Ctrl-C that did not exit */
    char *restore_line;
    char status[1280]; /* holds an engine message (qc_err, 1024) with its prefix */
    bool status_error;
    double status_t;
    bool dirty;
    char hist_path[4096];
    char device[96];
    char model_name[64];
    convo loading;     /* /load: applied when the worker has prefilled it */
    bool have_loading;
    /* /compare: a view over the conversation, which it never changes */
    bool cmp_view, cmp_running;
    textbuf cmp_r[2], cmp_a[2];
    wrap_cache cmp_rwc[2], cmp_awc[2];
    uint64_t cmp_seed;
    /* /drift */
    bool drift_running;
    int drift_live; /* checkpoint index of the live reference, -1 off */
} app;

static app *g_app; /* readline's callbacks carry no user pointer */

/* The engine thread is working for us: a reply, a swap or load, a /compare
 * or a /drift (Ctrl-C stops any of them). */
static bool engine_busy(const app *a) { return a->generating || a->cmp_running || a->drift_running; }

/* ---- small helpers ---------------------------------------------------------------- */

static int tb_append(textbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 1024;
        while (b->n + n + 1 > c)
            c *= 2;
        char *p = realloc(b->s, c);
        if (!p)
            return -1;
        b->s = p;
        b->cap = c;
    }
    /* Control characters would draw as ^X and break the width accounting. */
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        b->s[b->n + i] = (ch < 0x20 && ch != '\n') || ch == 0x7f ? ' ' : (char)ch;
    }
    b->n += n;
    b->s[b->n] = 0;
    return 0;
}

static void tb_clear(textbuf *b)
{
    b->n = 0;
    if (b->s)
        b->s[0] = 0;
}

static dblock *add_block(app *a, int kind, const char *text, const char *header);

static void set_status(app *a, bool error, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_status(app *a, bool error, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->status, sizeof a->status, fmt, ap);
    va_end(ap);
    for (char *p = a->status; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    a->status_error = error;
    a->status_t = qc_now();
    a->dirty = true;
    /* An error longer than the status line would lose its cause (the
     * engine's messages name the tensor and the fault at the end): it goes
     * into the conversation pane too, wrapped, whole. */
    if (error && (int)strlen(a->status) > a->L.status.w)
        add_block(a, DB_ERROR, a->status, "");
}

static dblock *add_block(app *a, int kind, const char *text, const char *header)
{
    if (a->n_blocks == a->cap_blocks) {
        int cap = a->cap_blocks ? a->cap_blocks * 2 : 32;
        dblock *p = realloc(a->blocks, (size_t)cap * sizeof *p);
        if (!p)
            return NULL;
        a->blocks = p;
        a->cap_blocks = cap;
    }
    dblock *b = &a->blocks[a->n_blocks];
    memset(b, 0, sizeof *b);
    textbuf tb = {0};
    if (tb_append(&tb, text ? text : "", text ? strlen(text) : 0) != 0) {
        free(tb.s);
        return NULL;
    }
    /* Trailing blank lines only waste rows. */
    while (tb.n > 0 && (tb.s[tb.n - 1] == '\n' || tb.s[tb.n - 1] == ' '))
        tb.s[--tb.n] = 0;
    b->kind = kind;
    b->text = tb.s;
    b->n = tb.n;
    snprintf(b->header, sizeof b->header, "%s", header ? header : "");
    a->n_blocks++;
    a->scroll = 0;
    a->dirty = true;
    return b;
}

static void clear_blocks(app *a)
{
    for (int i = 0; i < a->n_blocks; i++) {
        free(a->blocks[i].text);
        wrap_cache_free(&a->blocks[i].wc);
    }
    a->n_blocks = 0;
    a->scroll = 0;
    a->dirty = true;
}

/* Takes the last block off when it is of that kind (a reply to regenerate,
 * a prompt taken back). */
static void pop_block(app *a, int kind)
{
    if (!a->n_blocks || a->blocks[a->n_blocks - 1].kind != kind)
        return;
    a->n_blocks--;
    free(a->blocks[a->n_blocks].text);
    wrap_cache_free(&a->blocks[a->n_blocks].wc);
    a->dirty = true;
}

static void info(app *a, const char *text) { add_block(a, DB_INFO, text, ""); }

/* How an assistant turn ended, for its header and /stats: failed (the
 * engine's error, e.g. non-finite logits), max_tokens (cut at the token
 * limit), context full (no room for the next token), stopped (Ctrl-C), or
 * nothing (an eos). */
static const char *turn_end_note(const convo_turn *t)
{
    return t->error  ? " \xc2\xb7 failed"
           : t->full ? " \xc2\xb7 context full"
           : t->cut  ? " \xc2\xb7 max_tokens"
           : t->stopped ? " \xc2\xb7 stopped"
                        : "";
}

static void assistant_header(const convo_turn *t, char *out, size_t n)
{
    double secs = t->secs;
    snprintf(out, n, "qwen \xc2\xb7 %s \xc2\xb7 %d+%d tok \xc2\xb7 %.2f s%s", t->format[0] ? t->format : "?",
             t->n_reasoning, t->n_answer, secs, turn_end_note(t));
}

/* Rebuilds the display from the conversation (after /load). */
static void blocks_from_convo(app *a)
{
    clear_blocks(a);
    for (int i = 0; i < a->cv.n; i++) {
        const convo_turn *t = &a->cv.turns[i];
        if (t->role == CONVO_USER) {
            add_block(a, DB_USER, t->text, "you");
        } else {
            char h[160];
            assistant_header(t, h, sizeof h);
            add_block(a, DB_ASSISTANT, t->text, h);
        }
    }
}

/* ---- theme ---------------------------------------------------------------------- */

static void theme_apply(app *a)
{
    for (int k = 0; k < TH_COUNT; k++) {
        const theme_style *st = &a->th.st[k];
        attr_t at = 0;
        if (st->attrs & THEME_A_BOLD)
            at |= A_BOLD;
        if (st->attrs & THEME_A_DIM)
            at |= A_DIM;
        if (st->attrs & THEME_A_UNDERLINE)
            at |= A_UNDERLINE;
        if (st->attrs & THEME_A_REVERSE)
            at |= A_REVERSE;
        if (a->depth != THEME_DEPTH_NONE) {
            int fg = theme_color_resolve(st->fg, a->depth);
            int bg = theme_color_resolve(st->bg, a->depth);
            if (init_extended_pair(k + 1, fg, bg) == OK)
                at |= COLOR_PAIR(k + 1);
        }
        a->attr[k] = at;
    }
}

/* --theme NAME|PATH: a path, else $XDG_CONFIG_HOME/qchat/themes/NAME.theme,
 * else themes/NAME.theme next to the executable or in the current directory. */
static int theme_find(app *a, const char *name, char *msg, int msglen)
{
    if (!name || !*name) {
        theme_builtin(&a->th);
        return 0;
    }
    if (strchr(name, '/'))
        return theme_load_file(&a->th, name, msg, msglen);
    char path[4200];
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    char base[4096] = "";
    if (xdg && *xdg)
        snprintf(base, sizeof base, "%s/qchat/themes", xdg);
    else if (home && *home)
        snprintf(base, sizeof base, "%s/.config/qchat/themes", home);
    char exe[4096] = "";
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el > 0) {
        exe[el] = 0;
        char *sl = strrchr(exe, '/');
        if (sl)
            *sl = 0;
    }
    const char *dirs[] = {base, exe, "."};
    for (int i = 0; i < 3; i++) {
        if (!dirs[i][0])
            continue;
        snprintf(path, sizeof path, i == 0 ? "%s/%s.theme" : "%s/themes/%s.theme", dirs[i], name);
        if (access(path, R_OK) == 0)
            return theme_load_file(&a->th, path, msg, msglen);
    }
    if (!strcmp(name, "dark")) {
        theme_builtin(&a->th);
        return 0;
    }
    snprintf(msg, (size_t)msglen, "theme '%s' not found (looked in %s, themes/)", name, base[0] ? base : "~/.config/qchat/themes");
    return -1;
}

/* ---- drawing -------------------------------------------------------------------- */

/* Draws at most maxw columns of s at (y, x); returns the columns used. */
static int put(app *a, int y, int x, int maxw, theme_key k, const char *s, size_t n)
{
    if (maxw <= 0 || y < 0 || y >= a->L.rows)
        return 0;
    int w;
    size_t fit = wrap_fit(s, n, maxw, &w);
    attrset(a->attr[k]);
    mvaddnstr(y, x, s, (int)fit);
    return w;
}

static int puts_(app *a, int y, int x, int maxw, theme_key k, const char *s)
{
    return put(a, y, x, maxw, k, s, strlen(s));
}

static int putf(app *a, int y, int x, int maxw, theme_key k, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int putf(app *a, int y, int x, int maxw, theme_key k, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return puts_(a, y, x, maxw, k, buf);
}

static void fill_row(app *a, int y, int x, int w, theme_key k, const char *glyph)
{
    attrset(a->attr[k]);
    for (int i = 0; i < w; i++)
        mvaddstr(y, x + i, glyph);
}

static void draw_bar(app *a)
{
    rect r = a->L.bar;
    if (r.h <= 0)
        return;
    fill_row(a, r.y, 0, r.w, TH_BAR, " ");
    int x = 1, end = r.w - 1;
    char right[160];
    /* A dot while the engine works (a reply, a swap, a compare or drift pass):
     * the one place that always says whether input will be taken now. */
    snprintf(right, sizeof right, "%s%s", engine_busy(a) ? "\xe2\x97\x8f " : "", a->device);
    int rw = wrap_width(right, strlen(right));
    int avail = end - x - rw - 2;
    x += putf(a, r.y, x, avail, TH_BAR, "qchat \xc2\xb7 %s \xc2\xb7 ", a->model_name);
    for (int i = 0; i < a->w.n_ck && x < avail; i++) {
        char lab[40];
        bool active = i == a->snap.active;
        snprintf(lab, sizeof lab, active ? "[%s]" : " %s ", a->w.ck[i].label);
        theme_key k = active ? TH_BAR_ACTIVE : a->snap.resident[i] ? TH_BAR_RESIDENT : TH_BAR;
        x += put(a, r.y, x, avail - x, k, lab, strlen(lab));
        x += put(a, r.y, x, avail - x, TH_BAR, " ", 1);
    }
    if (rw < r.w - 2)
        puts_(a, r.y, r.w - rw - 1, rw, TH_BAR, right);
}

/* Lines of a block as drawn: a header row (if any), then its wrapped text. */
static int block_lines(dblock *b, int width)
{
    wrap_cache_update(&b->wc, b->text, b->n, width);
    return (b->header[0] ? 1 : 0) + (b->n ? b->wc.n : 0);
}

static theme_key block_text_key(int kind)
{
    return kind == DB_INFO ? TH_INFO : kind == DB_ERROR ? TH_ERROR : TH_NORMAL;
}

static theme_key block_header_key(int kind)
{
    return kind == DB_USER ? TH_USER : kind == DB_ASSISTANT ? TH_ASSISTANT : TH_INFO;
}

/* Draws line `li` of a block (0 = header) at row y. */
static void block_draw_line(app *a, const dblock *b, const char *text, const wrap_cache *wc, int li, int y,
                            rect r)
{
    int indent = 2;
    if (b->header[0]) {
        if (li == 0) {
            /* "qwen · FP8 · …": name in the role colour, the rest as a tag. */
            const char *dot = strstr(b->header, " \xc2\xb7 ");
            size_t nl = dot ? (size_t)(dot - b->header) : strlen(b->header);
            int used = put(a, y, r.x, r.w, block_header_key(b->kind), b->header, nl);
            if (dot)
                puts_(a, y, r.x + used, r.w - used, TH_TAG, dot);
            return;
        }
        li--;
    }
    if (li < wc->n) {
        const wrap_line *l = &wc->lines[li];
        put(a, y, r.x + indent, r.w - indent, block_text_key(b->kind), text + l->off, l->len);
    }
}

static void draw_conversation(app *a)
{
    rect r = a->L.conv;
    if (r.h <= 0)
        return;
    char title[128];
    snprintf(title, sizeof title, "Conversation%s", a->scroll ? " \xc2\xb7 scrolled (PgDn)" : "");
    puts_(a, r.y, r.x, r.w, TH_TITLE, title);
    int body_y = r.y + 1, body_h = r.h - 1;
    if (body_h <= 0)
        return;
    int width = r.w - 2 > 1 ? r.w - 2 : 1;
    /* The live reply is a virtual last block. */
    dblock live = {0};
    bool have_live = a->generating;
    if (have_live) {
        live.kind = DB_ASSISTANT;
        live.text = a->atext.s ? a->atext.s : "";
        live.n = a->atext.n;
        snprintf(live.header, sizeof live.header, "qwen \xc2\xb7 %s \xc2\xb7 %s", a->gen_format,
                 a->snap.phase == WPH_PREFILL ? "reading the prompt\xe2\x80\xa6" :
                 a->snap.n_answer ? "answering\xe2\x80\xa6" : "thinking\xe2\x80\xa6");
        wrap_cache_update(&a->a_wc, live.text, live.n, width);
    }
    int nb = a->n_blocks + (have_live ? 1 : 0);
    /* Total lines, blocks separated by one blank row. */
    long total = 0;
    for (int i = 0; i < nb; i++) {
        int bl;
        if (i < a->n_blocks)
            bl = block_lines(&a->blocks[i], width);
        else
            bl = 1 + (live.n ? a->a_wc.n : 0);
        total += bl + (i ? 1 : 0);
    }
    long max_scroll = total > body_h ? total - body_h : 0;
    if (a->scroll > max_scroll)
        a->scroll = (int)max_scroll;
    long first = total - body_h - a->scroll; /* index of the top visible line */
    if (first < 0)
        first = 0;
    long line = 0;
    for (int i = 0; i < nb; i++) {
        dblock *b = i < a->n_blocks ? &a->blocks[i] : &live;
        const wrap_cache *wc = i < a->n_blocks ? &b->wc : &a->a_wc;
        int bl = (b->header[0] ? 1 : 0) + (b->n ? wc->n : 0);
        if (i) {
            line++; /* the blank separator */
        }
        if (line + bl <= first) {
            line += bl;
            continue;
        }
        for (int li = 0; li < bl; li++, line++) {
            long row = line - first;
            if (row < 0)
                continue;
            if (row >= body_h)
                return;
            block_draw_line(a, b, b->text, wc, li, body_y + (int)row, r);
        }
    }
}

static void draw_reasoning(app *a)
{
    rect r = a->L.reason;
    if (r.h <= 0)
        return;
    /* The reasoning's own time: from the first token to the last reasoning
     * one (to now while it still reasons), not the whole reply's. */
    double secs = 0;
    if (a->snap.t_first > 0 && a->snap.n_reasoning > 0) {
        bool reasoning_now = a->generating && a->snap.n_answer == 0;
        secs = (reasoning_now ? qc_now() - a->snap.t_shift : a->snap.t_reason_end) - a->snap.t_first;
    }
    char n[32];
    meter_fmt_count(a->snap.n_reasoning, n, sizeof n);
    if (a->reason_collapsed) {
        putf(a, r.y, r.x, r.w, TH_TITLE, "Reasoning \xc2\xb7 %s tok \xc2\xb7 %.2f s \xc2\xb7 hidden (Tab shows)", n,
             secs);
        return;
    }
    putf(a, r.y, r.x, r.w, TH_TITLE, "Reasoning \xc2\xb7 %s tok \xc2\xb7 %.2f s", n, secs);
    int h = r.h - 1;
    if (h <= 0)
        return;
    int width = r.w > 1 ? r.w : 1;
    wrap_cache_update(&a->r_wc, a->rtext.s ? a->rtext.s : "", a->rtext.n, width);
    int nl = a->rtext.n ? a->r_wc.n : 0;
    int start = nl > h ? nl - h : 0; /* follow the tail: it is live */
    for (int i = start; i < nl; i++) {
        const wrap_line *l = &a->r_wc.lines[i];
        put(a, r.y + 1 + (i - start), r.x, r.w, TH_REASONING, a->rtext.s + l->off, l->len);
    }
}

static void draw_divider(app *a)
{
    if (!a->L.side_by_side)
        return;
    for (int y = a->L.conv.y; y < a->L.conv.y + a->L.conv.h; y++)
        puts_(a, y, a->L.divider_x, 1, TH_BORDER, "\xe2\x94\x82");
}

static void draw_rule(app *a, rect r)
{
    if (r.h > 0)
        fill_row(a, r.y, r.x, r.w, TH_BORDER, "\xe2\x94\x80");
}

#define LABEL_W 9

static void draw_latency(app *a)
{
    rect r = a->L.lat;
    if (r.h <= 0)
        return;
    puts_(a, r.y, r.x, LABEL_W, TH_TITLE, "Latency");
    int x = r.x + LABEL_W, y = r.y, w = r.w - LABEL_W;
    const worker_live *s = &a->snap;
    if (engine_busy(a) && s->phase == WPH_LOADING) {
        putf(a, y, x, w, TH_PROGRESS, "loading %s \xe2\x80\xa6 %.1f s", s->loading_label, qc_now() - s->t_phase);
        return;
    }
    if (engine_busy(a) && s->phase == WPH_PREFILL && s->prefill_total > 0) {
        double el = qc_now() - s->t_phase;
        double frac = (double)s->prefill_done / s->prefill_total;
        double eta = frac > 0 ? el / frac - el : 0;
        int used = putf(a, y, x, w, TH_PROGRESS, "prefill %d/%d tok ", s->prefill_done, s->prefill_total);
        int bw = w - used - 24;
        if (bw > 30)
            bw = 30;
        if (bw > 4) {
            int fill = (int)(frac * bw);
            for (int i = 0; i < bw; i++)
                puts_(a, y, x + used + i, 1, i < fill ? TH_PROGRESS : TH_DIM, i < fill ? "\xe2\x96\x88" : "\xe2\x96\x91");
            used += bw;
        }
        putf(a, y, x + used, w - used, TH_PROGRESS, " %3.0f%% \xc2\xb7 ETA %.1f s", frac * 100, eta);
        return;
    }
    double ttft = s->t_first > 0 ? (s->t_first - s->t_submit) * 1e3 : 0;
    double p50 = meter_percentile(s->itl_ms, s->n_itl, 50), p99 = meter_percentile(s->itl_ms, s->n_itl, 99);
    double tps = s->n_gen > 1 && s->t_last > s->t_first ? (s->n_gen - 1) / (s->t_last - s->t_first) : 0;
    int used = putf(a, y, x, w, TH_VALUE, "TTFT %.0f ms \xc2\xb7 ITL p50 %.1f p99 %.1f ms \xc2\xb7 %.1f tok/s", ttft,
                    p50, p99, tps);
    char spark[3 * 256 + 4];
    if (r.h >= 2) {
        y++;
        used = 0;
    } else {
        used += 2;
    }
    int sw = w - used;
    if (sw > 64)
        sw = 64;
    if (sw > 0 && s->n_itl > 0) {
        meter_sparkline(s->itl_ms, s->n_itl, sw, spark, sizeof spark);
        puts_(a, y, x + used, sw, TH_SPARK, spark);
    }
}

static void draw_tokens(app *a)
{
    rect r = a->L.tok;
    if (r.h <= 0)
        return;
    puts_(a, r.y, r.x, LABEL_W, TH_TITLE, "Tokens");
    int x = r.x + LABEL_W, y = r.y, w = r.w - LABEL_W;
    long sr = 0, sa = 0;
    for (int i = 0; i < a->cv.n; i++)
        if (a->cv.turns[i].role == CONVO_ASSISTANT) {
            sr += a->cv.turns[i].n_reasoning;
            sa += a->cv.turns[i].n_answer;
        }
    if (a->generating) {
        sr += a->snap.n_reasoning;
        sa += a->snap.n_answer;
    }
    char r1[32], a1[32], t1[32], s1[32], s2[32], c1[32];
    meter_fmt_count(a->snap.n_reasoning, r1, sizeof r1);
    meter_fmt_count(a->snap.n_answer, a1, sizeof a1);
    meter_fmt_count(a->snap.n_reasoning + a->snap.n_answer, t1, sizeof t1);
    meter_fmt_count(sr, s1, sizeof s1);
    meter_fmt_count(sa, s2, sizeof s2);
    meter_fmt_count(a->snap.ctx_len, c1, sizeof c1);
    int used = putf(a, y, x, w, TH_VALUE,
                    "reasoning %s \xc2\xb7 answer %s \xc2\xb7 this turn %s \xc2\xb7 session %s+%s \xc2\xb7 context %s", r1,
                    a1, t1, s1, s2, c1);
    /* Loop meter: n-gram repetition of the last 128 generated ids. */
    int n = a->snap.n_gen < 256 ? a->snap.n_gen : 256;
    int32_t ids[256];
    for (int i = 0; i < n; i++)
        ids[i] = a->snap.gen_ids[(a->snap.n_gen - n + i) % 256];
    double loop = meter_loop_score(ids, n, 4, 128);
    if (r.h >= 2) {
        y++;
        used = 0;
    } else {
        used += put(a, y, x + used, w - used, TH_VALUE, " \xc2\xb7 ", 4);
    }
    used += puts_(a, y, x + used, w - used, TH_VALUE, "loop ");
    theme_key lk = loop > 0.5 ? TH_LOOP_WARN : TH_LOOP_OK;
    for (int i = 0; i < 6 && used < w; i++) {
        double lv = loop * 6 - i;
        const char *g = lv >= 1 ? "\xe2\x96\x88" : lv > 0.5 ? "\xe2\x96\x84" : "\xe2\x96\x81";
        used += puts_(a, y, x + used, w - used, lk, g);
    }
    used += putf(a, y, x + used, w - used, lk, " %.0f%%%s", loop * 100,
                 loop > 0.5 && a->generating ? " looping? Ctrl-C stops" : "");
    /* Live drift of the reply under way (or the last one) against the reference. */
    const worker_drift *d = &a->snap.drift;
    if (a->drift_live >= 0 && d->valid && d->live && d->st.n > 0)
        putf(a, y, x + used, w - used, TH_VALUE, " \xc2\xb7 drift vs %s KL %.3g max %.3g \xc2\xb7 top-1 %.0f%%",
             d->ref_label, drift_stats_kl_mean(&d->st), d->st.kl_max, drift_stats_agree_pct(&d->st));
}

static const theme_key mem_keys[QC_MEM_COUNT] = {TH_MEM_BF16, TH_MEM_FP8, TH_MEM_INT4, TH_MEM_NVFP4, TH_MEM_OTHER,
                                                 TH_MEM_KV, TH_MEM_GDN, TH_MEM_SCRATCH, TH_MEM_RUNTIME,
                                                 TH_DIM, TH_MEM_FREE};
/* Distinct glyphs keep the segments apart without colour. */
static const char *const mem_glyph[QC_MEM_COUNT] = {
    "\xe2\x96\x88", "\xe2\x96\x88", "\xe2\x96\x88", "\xe2\x96\x88", "\xe2\x96\x88",
    "\xe2\x96\x93", "\xe2\x96\x92", "\xe2\x96\x9e", "\xe2\x96\x96", "\xe2\x96\x9a", "\xe2\x96\x91"};
static const char *const fam_name[5] = {"BF16", "FP8", "INT4", "NVFP4", "other"};

/* The VRAM legend: weights by family, then the other categories (short
 * names when narrow; other processes only when there are some) and, with
 * total, the whole of the device (or the host's RAM). */
static void vram_legend(const app *a, const qc_mem_report *m, bool narrow, bool total, char *buf, size_t cap)
{
    char t[32];
    size_t o = 0;
    uint64_t wsum = 0;
    for (int k = 0; k <= QC_MEM_W_OTHER; k++)
        wsum += m->bytes[k];
    meter_fmt_bytes(wsum, t, sizeof t);
    o += (size_t)snprintf(buf + o, cap - o, "weights %s (", t);
    int first = 1;
    for (int k = 0; k <= QC_MEM_W_OTHER && o < cap; k++)
        if (m->bytes[k]) {
            meter_fmt_bytes(m->bytes[k], t, sizeof t);
            /* The CPU engine keeps float32 copies of dequantized weights; they are
             * what W_OTHER holds there (qchat.h), so name them. */
            const char *fam = k == QC_MEM_W_OTHER && !strncmp(a->device, "cpu", 3) ? "f32 copies" : fam_name[k];
            o += (size_t)snprintf(buf + o, cap - o, "%s%s %s", first ? "" : ", ", fam, t);
            first = 0;
        }
    static const char *const rest_long[] = {"KV", "GDN state", "scratch", "runtime", "other processes", "free"};
    static const char *const rest_short[] = {"KV", "GDN", "scratch", "rt", "others", "free"};
    const char *const *rest = narrow ? rest_short : rest_long;
    if (o < cap)
        o += (size_t)snprintf(buf + o, cap - o, ")");
    for (int k = QC_MEM_KV; k < QC_MEM_COUNT && o < cap; k++) {
        if (k == QC_MEM_OTHER_PROCS && !m->bytes[k])
            continue; /* named only when another process holds memory here */
        meter_fmt_bytes(m->bytes[k], t, sizeof t);
        o += (size_t)snprintf(buf + o, cap - o, " \xc2\xb7 %s %s", rest[k - QC_MEM_KV], t);
    }
    if (o < cap && m->total && total) {
        meter_fmt_bytes(m->total, t, sizeof t);
        snprintf(buf + o, cap - o, " of %s%s", t, strncmp(a->device, "cpu", 3) ? "" : " (host RAM)");
    }
}

static void draw_vram(app *a)
{
    rect r = a->L.vram;
    if (r.h <= 0)
        return;
    puts_(a, r.y, r.x, LABEL_W, TH_TITLE, "VRAM");
    int x = r.x + LABEL_W, w = r.w - LABEL_W;
    if (!a->snap.mem_valid || w < 4)
        return;
    const qc_mem_report *m = &a->snap.mem;
    int bw = r.h >= 2 ? w : w / 3;
    if (bw > 48)
        bw = 48;
    int cells[QC_MEM_COUNT];
    meter_split(m->bytes, QC_MEM_COUNT, bw, cells);
    int cx = x;
    for (int k = 0; k < QC_MEM_COUNT; k++)
        for (int c = 0; c < cells[k]; c++)
            puts_(a, r.y, cx++, 1, mem_keys[k], mem_glyph[k]);
    /* The legend in the rows under the bar: names in full while it fits,
     * else short ones, else without the total (a cut legend lost free). */
    char buf[512];
    int rows = r.h >= 2 ? r.h - 1 : 1, avail = r.h >= 2 ? w : w - bw - 1;
    wrap_cache wc = {0};
    for (int v = r.w < 120 ? 1 : 0; v < 3; v++) {
        vram_legend(a, m, v >= 1, v < 2, buf, sizeof buf);
        wrap_cache_reset(&wc); /* (another text: not a grown one) */
        wrap_cache_update(&wc, buf, strlen(buf), avail > 1 ? avail : 1);
        if (wc.n <= rows)
            break;
    }
    if (r.h >= 2) /* the legend wraps onto the rows under the bar */
        for (int i = 0; i < wc.n && i < rows; i++)
            put(a, r.y + 1 + i, x, w, TH_VALUE, buf + wc.lines[i].off, wc.lines[i].len);
    else
        puts_(a, r.y, cx + 1, w - bw - 1, TH_VALUE, buf);
    wrap_cache_free(&wc);
}

/* The input text as drawn: earlier lines of a multi-line entry, then
 * readline's buffer. Returns its byte length and where the cursor is. */
static size_t input_text(app *a, textbuf *out, size_t *cursor)
{
    tb_clear(out);
    if (a->pending.n)
        tb_append(out, a->pending.s, a->pending.n);
    *cursor = out->n + (size_t)(rl_point > 0 ? rl_point : 0);
    tb_append(out, rl_line_buffer ? rl_line_buffer : "", rl_line_buffer ? strlen(rl_line_buffer) : 0);
    return out->n;
}

static int input_lines_needed(app *a, int cols)
{
    textbuf t = {0};
    size_t cur;
    input_text(a, &t, &cur);
    wrap_cache wc = {0};
    wrap_cache_update(&wc, t.s ? t.s : "", t.n, cols - 2 > 1 ? cols - 2 : 1);
    int n = wc.n;
    wrap_cache_free(&wc);
    free(t.s);
    return n < 1 ? 1 : n > 5 ? 5 : n;
}

static void draw_input(app *a)
{
    rect r = a->L.input;
    if (r.h <= 0)
        return;
    textbuf t = {0};
    size_t cur;
    input_text(a, &t, &cur);
    int width = r.w - 2 > 1 ? r.w - 2 : 1;
    wrap_cache wc = {0};
    wrap_cache_update(&wc, t.s ? t.s : "", t.n, width);
    /* The line holding the cursor, and the rows shown around it. */
    int cl = 0;
    for (int i = 0; i < wc.n; i++)
        if (wc.lines[i].off <= cur)
            cl = i;
    int top = cl - r.h + 1 > 0 ? cl - r.h + 1 : 0;
    int cy = r.y, cx = r.x + 2;
    for (int i = top; i < wc.n && i - top < r.h; i++) {
        int y = r.y + (i - top);
        puts_(a, y, r.x, 2, TH_PROMPT, i == 0 ? "> " : "\xe2\x80\xa6 ");
        put(a, y, r.x + 2, width, TH_NORMAL, t.s + wc.lines[i].off, wc.lines[i].len);
        if (i == cl) {
            size_t k = cur - wc.lines[i].off;
            if (k > wc.lines[i].len)
                k = wc.lines[i].len;
            cy = y;
            cx = r.x + 2 + wrap_width(t.s + wc.lines[i].off, k);
        }
    }
    if (wc.n == 0)
        puts_(a, r.y, r.x, 2, TH_PROMPT, "> ");
    wrap_cache_free(&wc);
    free(t.s);
    if (cx >= r.x + r.w)
        cx = r.x + r.w - 1;
    move(cy, cx);
}

static void draw_status(app *a)
{
    rect r = a->L.status;
    if (r.h <= 0)
        return;
    if (a->status[0] && (a->status_error || qc_now() - a->status_t < 8)) {
        puts_(a, r.y, r.x, r.w, a->status_error ? TH_ERROR : TH_INFO, a->status);
        return;
    }
    if (a->cmp_view) {
        puts_(a, r.y, r.x, r.w, TH_DIM,
              a->cmp_running ? "Ctrl-C stop Â· Esc or q close" : "Esc or q close Â· the conversation is unchanged");
        return;
    }
    puts_(a, r.y, r.x, r.w, TH_DIM,
          engine_busy(a) ? "Ctrl-C stop \xc2\xb7 Tab reasoning \xc2\xb7 PgUp/PgDn scroll \xc2\xb7 F1 help"
                        : "F1 help \xc2\xb7 F2\xe2\x80\x93" "F5 format \xc2\xb7 Tab reasoning \xc2\xb7 PgUp/PgDn scroll \xc2\xb7 "
                          "Alt-Enter newline \xc2\xb7 /quit");
}

/* ---- the /compare view -------------------------------------------------------------- */

static const char *cmp_state_text(const app *a, const worker_cmp_col *col, char *buf, size_t n)
{
    switch (col->state) {
    case WCMP_WAITING:
        return a->cmp_running ? "waiting" : "not run";
    case WCMP_RUNNING:
        if (a->snap.phase == WPH_LOADING)
            return "loading\xe2\x80\xa6";
        if (a->snap.phase == WPH_PREFILL) {
            snprintf(buf, n, "reading the prompt %d/%d\xe2\x80\xa6", a->snap.prefill_done, a->snap.prefill_total);
            return buf;
        }
        return col->n_answer ? "answering\xe2\x80\xa6" : "thinking\xe2\x80\xa6";
    case WCMP_DONE:
        return "done";
    case WCMP_STOPPED:
        return "stopped";
    case WCMP_FAILED:
        snprintf(buf, n, "failed: %s", col->msg);
        return buf;
    }
    return "";
}

/* One column: a header, then its reasoning (dim) and answer, following the tail. */
static void draw_cmp_col(app *a, int c, rect r)
{
    if (r.h <= 0 || r.w <= 2)
        return;
    const worker_cmp_col *col = &a->snap.cmp[c];
    char st[320];
    const char *state = cmp_state_text(a, col, st, sizeof st);
    const char *name = col->ck >= 0 && col->ck < a->w.n_ck ? a->w.ck[col->ck].name : "";
    int used = puts_(a, r.y, r.x, r.w, TH_ASSISTANT, col->label);
    putf(a, r.y, r.x + used, r.w - used, col->state == WCMP_FAILED ? TH_ERROR : TH_TAG,
         " \xc2\xb7 %s \xc2\xb7 %d+%d tok \xc2\xb7 %s", name, col->n_reasoning, col->n_answer, state);
    int h = r.h - 1, width = r.w - 1 > 1 ? r.w - 1 : 1;
    if (h <= 0)
        return;
    textbuf *rt = &a->cmp_r[c], *at = &a->cmp_a[c];
    wrap_cache_update(&a->cmp_rwc[c], rt->s ? rt->s : "", rt->n, width);
    wrap_cache_update(&a->cmp_awc[c], at->s ? at->s : "", at->n, width);
    int nr = rt->n ? a->cmp_rwc[c].n : 0, na = at->n ? a->cmp_awc[c].n : 0;
    int total = nr + na, start = total > h ? total - h : 0;
    for (int i = start; i < total; i++) {
        int y = r.y + 1 + (i - start);
        if (i < nr) {
            const wrap_line *l = &a->cmp_rwc[c].lines[i];
            put(a, y, r.x + 1, width, TH_REASONING, rt->s + l->off, l->len);
        } else {
            const wrap_line *l = &a->cmp_awc[c].lines[i - nr];
            put(a, y, r.x + 1, width, TH_NORMAL, at->s + l->off, l->len);
        }
    }
}

#define CMP_TABLE_ROWS 7 /* a rule, the header, five measures */

static void draw_cmp_table(app *a, int y, int cols)
{
    fill_row(a, y, 0, cols, TH_BORDER, "\xe2\x94\x80");
    int lw = 16, cw = (cols - lw) / 2 > 20 ? 20 : (cols - lw) / 2;
    if (cw < 6)
        return;
    puts_(a, y + 1, 0, lw, TH_TITLE, "measure");
    for (int c = 0; c < 2; c++)
        puts_(a, y + 1, lw + c * cw, cw - 1, TH_TITLE, a->snap.cmp[c].label);
    static const char *const names[5] = {"reasoning tok", "answer tok", "TTFT", "tok/s", "peak mem"};
    for (int k = 0; k < 5; k++) {
        puts_(a, y + 2 + k, 0, lw, TH_DIM, names[k]);
        for (int c = 0; c < 2; c++) {
            const worker_cmp_col *col = &a->snap.cmp[c];
            char v[40] = "-";
            bool started = col->state != WCMP_WAITING && col->t_start > 0;
            if (started) {
                switch (k) {
                case 0: meter_fmt_count(col->n_reasoning, v, sizeof v); break;
                case 1: meter_fmt_count(col->n_answer, v, sizeof v); break;
                case 2:
                    if (col->t_first > 0)
                        snprintf(v, sizeof v, "%.0f ms", (col->t_first - col->t_start) * 1e3);
                    break;
                case 3:
                    if (col->n_gen > 1 && col->t_last > col->t_first)
                        snprintf(v, sizeof v, "%.1f", (col->n_gen - 1) / (col->t_last - col->t_first));
                    break;
                case 4:
                    if (col->peak_mem)
                        meter_fmt_bytes(col->peak_mem, v, sizeof v);
                    break;
                }
            }
            puts_(a, y + 2 + k, lw + c * cw, cw - 1, TH_VALUE, v);
        }
    }
}

/* Replaces everything between the format bar and the status line. Wide
 * terminals get the two runs side by side, narrow ones stacked. */
static void draw_compare(app *a)
{
    int rows = a->L.rows, cols = a->L.cols, y0 = 1, h = rows - 2;
    if (h <= 0)
        return;
    putf(a, y0, 0, cols, TH_TITLE,
         "Compare \xc2\xb7 %s vs %s \xc2\xb7 the last prompt \xc2\xb7 seed %llu \xc2\xb7 temperature %g \xc2\xb7 "
         "Esc or q closes",
         a->snap.cmp[0].label, a->snap.cmp[1].label, (unsigned long long)a->cmp_seed, a->cv.sampling.temperature);
    int th = h - 1 >= CMP_TABLE_ROWS ? CMP_TABLE_ROWS : 0;
    int ch = h - 1 - th;
    if (th)
        draw_cmp_table(a, y0 + 1 + ch, cols);
    if (ch < 2)
        return;
    if (cols >= LAYOUT_SIDE_MIN_COLS) {
        int w0 = (cols - 1) / 2;
        draw_cmp_col(a, 0, (rect){y0 + 1, 0, ch, w0});
        for (int y = y0 + 1; y < y0 + 1 + ch; y++)
            puts_(a, y, w0, 1, TH_BORDER, "\xe2\x94\x82");
        draw_cmp_col(a, 1, (rect){y0 + 1, w0 + 1, ch, cols - w0 - 1});
    } else {
        int h0 = ch / 2;
        draw_cmp_col(a, 0, (rect){y0 + 1, 0, h0, cols});
        draw_cmp_col(a, 1, (rect){y0 + 1 + h0, 0, ch - h0, cols});
    }
}

static double g_draw_s, g_draw_max;
static long g_draws;

static void draw(app *a)
{
    double t0 = qc_now();
    int rows, cols;
    getmaxyx(stdscr, rows, cols);
    int inl = input_lines_needed(a, cols);
    layout_compute(&a->L, rows, cols, a->reason_collapsed, inl);
    erase();
    draw_bar(a);
    if (a->cmp_view) {
        draw_compare(a);
        draw_status(a);
        move(rows - 1, cols - 1);
        attrset(A_NORMAL);
        refresh();
        a->dirty = false;
        return;
    }
    draw_conversation(a);
    draw_divider(a);
    draw_reasoning(a);
    draw_rule(a, a->L.rule1);
    draw_latency(a);
    draw_tokens(a);
    draw_vram(a);
    draw_rule(a, a->L.rule2);
    draw_status(a);
    draw_input(a); /* last: it leaves the cursor in the prompt */
    attrset(A_NORMAL);
    refresh();
    a->dirty = false;
    double dt = qc_now() - t0;
    g_draw_s += dt;
    g_draws++;
    if (dt > g_draw_max)
        g_draw_max = dt;
}

/* ---- the worker's results --------------------------------------------------------- */

static void finish_reply(app *a)
{
    convo_turn *t = convo_add(&a->cv, CONVO_ASSISTANT, a->atext.s ? a->atext.s : "", a->rtext.s ? a->rtext.s : "");
    if (!t)
        return;
    const worker_live *s = &a->snap;
    snprintf(t->format, sizeof t->format, "%s", s->reply_format);
    t->n_reasoning = s->n_reasoning;
    t->n_answer = s->n_answer;
    t->n_prompt = s->n_prompt;
    t->ttft_ms = s->t_first > 0 ? (s->t_first - s->t_submit) * 1e3 : 0;
    t->secs = s->t_last > 0 ? s->t_last - s->t_submit : 0;
    t->tok_s = s->n_gen > 1 && s->t_last > s->t_first ? (s->n_gen - 1) / (s->t_last - s->t_first) : 0;
    t->itl_p50_ms = meter_percentile(s->itl_ms, s->n_itl, 50);
    t->itl_p99_ms = meter_percentile(s->itl_ms, s->n_itl, 99);
    t->stopped = !s->done_rc && (s->stopped || !s->ended_eos);
    t->full = t->stopped && s->ctx_full;
    t->cut = t->stopped && s->stopped && !s->user_stopped && !s->ctx_full;
    if (s->done_rc) /* (out of memory: no note, the status line still says why) */
        convo_set_text(&t->error, s->done_msg, strlen(s->done_msg));
    char h[160];
    assistant_header(t, h, sizeof h);
    add_block(a, DB_ASSISTANT, t->text, h);
}

static void drift_report(app *a, const worker_drift *d);

/* Copies what the worker produced since the last look. */
static void pull_live(app *a)
{
    worker_drain_wake(&a->w);
    worker *w = &a->w;
    pthread_mutex_lock(&w->mu);
    worker_live *L = &w->live;
    if (a->generating && L->job == WJOB_GENERATE) {
        if (L->n_reasoning_b > a->rtext.n)
            tb_append(&a->rtext, L->reasoning + a->rtext.n, L->n_reasoning_b - a->rtext.n);
        if (L->n_answer_b > a->atext.n)
            tb_append(&a->atext, L->answer + a->atext.n, L->n_answer_b - a->atext.n);
    }
    if (a->cmp_running && L->job == WJOB_COMPARE)
        for (int c = 0; c < 2; c++) {
            const worker_cmp_col *col = &L->cmp[c];
            if (col->n_reasoning_b > a->cmp_r[c].n)
                tb_append(&a->cmp_r[c], col->reasoning + a->cmp_r[c].n, col->n_reasoning_b - a->cmp_r[c].n);
            if (col->n_answer_b > a->cmp_a[c].n)
                tb_append(&a->cmp_a[c], col->answer + a->cmp_a[c].n, col->n_answer_b - a->cmp_a[c].n);
        }
    /* Numbers only: the text pointers stay the worker's. */
    memcpy(&a->snap, L, sizeof *L);
    a->snap.reasoning = a->snap.answer = NULL;
    a->snap.history = NULL;
    int32_t *hist = NULL;
    int nhist = 0;
    bool done = L->done_seq != a->seen_seq;
    if (done) {
        a->seen_seq = L->done_seq;
        hist = L->history;
        nhist = L->n_history;
        L->history = NULL;
        L->n_history = 0;
    }
    pthread_mutex_unlock(&w->mu);
    a->dirty = true;
    if (!done)
        return;
    bool was = a->generating;
    a->generating = false;
    if (hist) {
        convo_set_tokens(&a->cv, hist, nhist);
        free(hist);
    }
    const worker_live *s = &a->snap;
    switch (s->done_kind) {
    case WJOB_GENERATE:
        if (s->refused) {
            /* The prompt did not fit: it leaves the conversation (which
             * would otherwise be refused on every later prompt) and goes
             * back to the input line when that is empty. */
            if (a->cv.n && a->cv.turns[a->cv.n - 1].role == CONVO_USER) {
                if (rl_end == 0 && a->cv.turns[a->cv.n - 1].text) {
                    rl_replace_line(a->cv.turns[a->cv.n - 1].text, 0);
                    rl_point = rl_end;
                }
                convo_pop(&a->cv);
                pop_block(a, DB_USER);
            }
            set_status(a, true, "%s (the prompt is back in the input line)", s->done_msg);
            break;
        }
        if (was)
            finish_reply(a);
        if (s->done_rc)
            set_status(a, true, "generation failed: %s", s->done_msg);
        else if (s->user_stopped)
            set_status(a, false, "stopped: the partial reply is kept (Ctrl-C again quits)");
        else if (s->ctx_full)
            set_status(a, true, "the context is full (%d tokens): the reply is kept; /clear starts over, --ctx N "
                       "sets a larger context", a->o.ctx);
        else if (s->stopped)
            set_status(a, false, "reply cut at max_tokens=%d (/set max_tokens=N changes it)",
                       a->cv.sampling.max_tokens);
        if (was && s->drift.valid && s->drift.live)
            drift_report(a, &s->drift);
        if (s->drift.msg[0]) {
            set_status(a, true, "%s", s->drift.msg);
            if (!strncmp(s->drift.msg, "live drift off", 14))
                a->drift_live = -1;
        }
        break;
    case WJOB_COMPARE:
        a->cmp_running = false;
        if (s->done_rc && strcmp(s->done_msg, "compare stopped"))
            set_status(a, true, "compare failed: %s", s->done_msg);
        else
            set_status(a, false, "compare %s: Esc or q closes the view",
                       s->done_rc ? "stopped" : "done");
        break;
    case WJOB_DRIFT:
        a->drift_running = false;
        if (s->done_rc)
            set_status(a, true, "drift: %s", s->done_msg);
        else {
            drift_report(a, &s->drift);
            if (s->drift.st.n == 0)
                set_status(a, s->drift.st.n_bad > 0, "drift of %s against %s: nothing scored%s",
                           s->drift.act_label, s->drift.ref_label,
                           s->drift.st.n_bad ? " (no finite logit on one side at every position)" : "");
            else
                set_status(a, false, "drift of %s against %s: KL mean %.4g, top-1 agreement %.1f %%",
                           s->drift.act_label, s->drift.ref_label, drift_stats_kl_mean(&s->drift.st),
                           drift_stats_agree_pct(&s->drift.st));
        }
        break;
    case WJOB_SWAP:
        if (s->done_rc) {
            /* the target, named by its directory (the engine's message names a tensor) */
            const int t = a->swap_target;
            char dir[96] = "";
            if (t >= 0 && t < a->w.n_ck)
                snprintf(dir, sizeof dir, "%.95s", a->w.ck[t].name);
            const bool dropped = a->swap_added >= 0 && worker_drop_last_ckpt(&a->w, a->swap_added);
            set_status(a, true, "swap to %s failed%s, still on %s: %s", dir,
                       dropped ? " (taken off the list)" : "", a->w.ck[s->active].label, s->done_msg);
        } else
            set_status(a, false, "now on %s (%s); %d tokens re-prefilled", a->w.ck[s->active].label,
                       a->w.ck[s->active].name, s->ctx_len);
        snprintf(a->model_name, sizeof a->model_name, "%.63s", a->w.ck[s->active].name);
        a->swap_added = -1;
        break;
    case WJOB_REBUILD:
        if (a->have_loading) {
            if (s->done_rc) {
                convo_free(&a->loading);
                set_status(a, true, "load failed, conversation unchanged: %s", s->done_msg);
            } else {
                convo_free(&a->cv);
                a->cv = a->loading;
                blocks_from_convo(a);
                tb_clear(&a->rtext);
                tb_clear(&a->atext);
                set_status(a, false, "loaded %d turns, %d tokens", a->cv.n, a->cv.n_tokens);
            }
            a->have_loading = false;
        }
        break;
    default:
        break;
    }
}

/* ---- commands --------------------------------------------------------------------- */

static bool busy(app *a, const char *what)
{
    if (engine_busy(a)) {
        set_status(a, true, "%s: wait for the reply or press Ctrl-C", what);
        return true;
    }
    return false;
}

/* The system prompt and the first n turns as a chat for the engine; false
 * (status set) on failure. */
static bool build_chat(app *a, int n, qc_chat *chat)
{
    qc_chat_init(chat);
    qc_err err = {0};
    int rc = 0;
    if (a->cv.system[0])
        rc = qc_chat_add(chat, QC_ROLE_SYSTEM, a->cv.system, NULL, &err);
    for (int i = 0; i < n && !rc; i++) {
        const convo_turn *t = &a->cv.turns[i];
        rc = qc_chat_add(chat, t->role == CONVO_USER ? QC_ROLE_USER : QC_ROLE_ASSISTANT, t->text,
                         t->role == CONVO_ASSISTANT ? t->reasoning : NULL, &err);
    }
    if (rc) {
        qc_chat_free(chat);
        set_status(a, true, "%s", err.msg);
        return false;
    }
    return true;
}

/* The conversation's sampling settings as the sampler's. */
static void sampling_to_params(const convo_sampling *s, qc_sample_params *sp)
{
    qc_sample_params_init(sp);
    sp->temperature = (float)s->temperature;
    sp->top_p = (float)s->top_p;
    sp->top_k = s->top_k;
    sp->min_p = (float)s->min_p;
    sp->repetition_penalty = (float)s->repetition_penalty;
    sp->presence_penalty = (float)s->presence_penalty;
    sp->seed = s->seed;
}

/* Thinking, sampling and the token limit of the conversation, for a reply
 * to the first n turns: the seed depends on n, so every reply draws a new
 * stream, and rerunning a prompt (/compare) draws the same one. */
static void job_params(app *a, int n, worker_job *job)
{
    job->think = a->cv.think ? QC_THINK_ON : QC_THINK_OFF;
    sampling_to_params(&a->cv.sampling, &job->sp);
    job->sp.seed = a->cv.sampling.seed + (uint64_t)n;
    job->max_tokens = a->cv.sampling.max_tokens;
}

static void start_generate(app *a)
{
    worker_job job = {.kind = WJOB_GENERATE};
    if (!build_chat(a, a->cv.n, &job.chat))
        return;
    job_params(a, a->cv.n, &job);
    tb_clear(&a->rtext);
    tb_clear(&a->atext);
    wrap_cache_reset(&a->r_wc);
    wrap_cache_reset(&a->a_wc);
    snprintf(a->gen_format, sizeof a->gen_format, "%s", a->w.ck[a->snap.active].label);
    if (worker_submit(&a->w, &job)) {
        a->generating = true;
        a->scroll = 0;
    } else {
        set_status(a, true, "the engine is busy");
    }
}

/* A checkpoint by family, number or directory; a directory not on the
 * command line joins the list if it opens. -1 with the status set (prefixed
 * by `what`) when there is none. */
static int resolve_ckpt(app *a, const char *spec, const char *what)
{
    int idx = worker_find_ckpt(&a->w, spec);
    if (idx >= 0)
        return idx;
    struct stat st;
    if (stat(spec, &st) != 0 || !S_ISDIR(st.st_mode)) {
        set_status(a, true, "%s: no checkpoint '%s' (a family, a number 1-%d or a directory); still on %s", what,
                   spec, a->w.n_ck, a->w.ck[a->snap.active].label);
        return -1;
    }
    qc_err err = {0};
    /* Not under a->w.mu: opening the checkpoint reads the disk, and
     * worker_add_ckpt takes the mutex itself just to publish the entry. */
    int rc = worker_add_ckpt(&a->w, spec, &err);
    if (rc) {
        set_status(a, true, "%s failed, still on %s: %s", what, a->w.ck[a->snap.active].label, err.msg);
        return -1;
    }
    return a->w.n_ck - 1; /* this thread is the list's only writer */
}

static void do_swap(app *a, const char *spec)
{
    if (busy(a, "swap"))
        return;
    const int n_before = a->w.n_ck;
    int idx = resolve_ckpt(a, spec, "swap");
    if (idx < 0)
        return;
    if (idx == a->snap.active) {
        set_status(a, false, "already on %s", a->w.ck[idx].label);
        return;
    }
    worker_job job = {.kind = WJOB_SWAP, .target = idx};
    if (!worker_submit(&a->w, &job)) {
        if (a->w.n_ck > n_before)
            worker_drop_last_ckpt(&a->w, idx);
        set_status(a, true, "the engine is busy");
        return;
    }
    a->swap_target = idx;
    a->swap_added = a->w.n_ck > n_before ? idx : -1;
    a->generating = true; /* shows load / prefill progress */
    tb_clear(&a->rtext);
    tb_clear(&a->atext);
    snprintf(a->gen_format, sizeof a->gen_format, "%s", a->w.ck[idx].label);
    set_status(a, false, "swapping to %s\xe2\x80\xa6", a->w.ck[idx].label);
}

static void default_session_path(char *out, size_t n)
{
    const char *st = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    if (st && *st)
        snprintf(out, n, "%s/qchat/session.json", st);
    else
        snprintf(out, n, "%s/.local/state/qchat/session.json", home && *home ? home : ".");
}

static void cmd_models(app *a)
{
    textbuf t = {0};
    char line[4400], b[32];
    for (int i = 0; i < a->w.n_ck; i++) {
        meter_fmt_bytes(a->w.ck[i].weight_bytes, b, sizeof b);
        snprintf(line, sizeof line, "%d %s%s%s%s  weights %s  %s%s\n", i + 1, i == a->snap.active ? "[" : " ",
                 a->w.ck[i].label, i == a->snap.active ? "]" : " ", a->snap.resident[i] ? " resident" : "",
                 b, a->w.ck[i].dir, i < 4 ? "" : "");
        tb_append(&t, line, strlen(line));
    }
    snprintf(line, sizeof line, "F2-F5 or /swap FAMILY|N|DIR switches; resident weights kept within %.1f GB",
             (double)a->w.budget / 1e9);
    tb_append(&t, line, strlen(line));
    info(a, t.s);
    free(t.s);
}

static void cmd_stats(app *a)
{
    textbuf t = {0};
    char line[512];
    int k = 0;
    for (int i = 0; i < a->cv.n; i++) {
        const convo_turn *u = &a->cv.turns[i];
        if (u->role != CONVO_ASSISTANT)
            continue;
        snprintf(line, sizeof line,
                 "#%d %-6s prompt %d \xc2\xb7 reasoning %d \xc2\xb7 answer %d \xc2\xb7 TTFT %.0f ms \xc2\xb7 ITL p50 %.1f p99 %.1f ms \xc2\xb7 %.1f tok/s%s\n",
                 ++k, u->format, u->n_prompt, u->n_reasoning, u->n_answer, u->ttft_ms, u->itl_p50_ms,
                 u->itl_p99_ms, u->tok_s, turn_end_note(u));
        tb_append(&t, line, strlen(line));
    }
    snprintf(line, sizeof line, "context %d tokens", a->cv.n_tokens);
    tb_append(&t, line, strlen(line));
    info(a, k ? t.s : "no replies yet");
    free(t.s);
}

static const char keys_help[] =
    "Enter send \xc2\xb7 Alt-Enter or a trailing \\ new line \xc2\xb7 Up/Down history \xc2\xb7 emacs editing keys\n"
    "Ctrl-C stop the reply (again: quit) \xc2\xb7 Ctrl-D on an empty line quit \xc2\xb7 Ctrl-L redraw\n"
    "Tab show/hide reasoning \xc2\xb7 PgUp/PgDn scroll \xc2\xb7 F1 help \xc2\xb7 F2-F5 switch to checkpoint 1-4";

static void cmd_help(app *a)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        return;
    cmd_write_help(f);
    fputs(keys_help, f);
    fclose(f);
    info(a, buf);
    free(buf);
}

static int set_sampling(app *a, const char *arg)
{
    if (!*arg) {
        const convo_sampling *s = &a->cv.sampling;
        char buf[400];
        snprintf(buf, sizeof buf,
                 "temperature=%g top_p=%g top_k=%d min_p=%g repetition_penalty=%g presence_penalty=%g seed=%llu "
                 "max_tokens=%d think=%s",
                 s->temperature, s->top_p, s->top_k, s->min_p, s->repetition_penalty, s->presence_penalty,
                 (unsigned long long)s->seed, s->max_tokens, a->cv.think ? "on" : "off");
        info(a, buf);
        return 0;
    }
    char key[64], val[64];
    if (cmd_split_assign(arg, key, sizeof key, val, sizeof val) != 0) {
        set_status(a, true, "usage: /set KEY=VALUE (e.g. /set temperature=0.7)");
        return -1;
    }
    char *end;
    double v = strtod(val, &end);
    if (*end || !isfinite(v)) {
        set_status(a, true, "/set %s: '%s' is not a number", key, val);
        return -1;
    }
    convo_sampling s = a->cv.sampling;
    if (!strcmp(key, "temperature"))
        s.temperature = v;
    else if (!strcmp(key, "top_p"))
        s.top_p = v;
    else if (!strcmp(key, "top_k"))
        s.top_k = (int)v;
    else if (!strcmp(key, "min_p"))
        s.min_p = v;
    else if (!strcmp(key, "repetition_penalty"))
        s.repetition_penalty = v;
    else if (!strcmp(key, "presence_penalty"))
        s.presence_penalty = v;
    else if (!strcmp(key, "seed") && v >= 0)
        s.seed = (uint64_t)v;
    else if (!strcmp(key, "max_tokens") && v >= 0)
        s.max_tokens = (int)v;
    else {
        set_status(a, true,
                   "/set: unknown key '%s' (temperature top_p top_k min_p repetition_penalty presence_penalty seed "
                   "max_tokens)",
                   key);
        return -1;
    }
    qc_sample_params sp;
    sampling_to_params(&s, &sp);
    qc_err err = {0};
    if (qc_sample_params_check(&sp, &err) != 0) {
        set_status(a, true, "/set: %s", err.msg);
        return -1;
    }
    a->cv.sampling = s;
    set_status(a, false, "%s = %s", key, val);
    return 0;
}

/* ---- /compare and /drift ------------------------------------------------------------ */

/* Splits up to two blank-separated words of arg. Returns how many (3: too many). */
static int split_words(const char *arg, char w[2][4096])
{
    int n = 0;
    const char *p = arg;
    w[0][0] = w[1][0] = 0;
    for (;;) {
        while (*p && isspace((unsigned char)*p))
            p++;
        if (!*p)
            return n;
        if (n == 2)
            return 3;
        size_t k = 0;
        while (p[k] && !isspace((unsigned char)p[k]))
            k++;
        snprintf(w[n], 4096, "%.*s", (int)(k < 4095 ? k : 4095), p);
        n++;
        p += k;
    }
}

static void cmd_compare(app *a, const char *arg)
{
    if (busy(a, "compare"))
        return;
    if (a->w.n_ck < 2) {
        set_status(a, true, "compare needs two checkpoints: give two on the command line (or /compare A DIR)");
        if (!*arg)
            return;
    }
    int last_user = -1;
    for (int i = 0; i < a->cv.n; i++)
        if (a->cv.turns[i].role == CONVO_USER)
            last_user = i;
    if (last_user < 0) {
        set_status(a, true, "compare: no prompt yet; send one first");
        return;
    }
    char words[2][4096];
    int nw = split_words(arg, words);
    if (nw > 2) {
        set_status(a, true, "usage: /compare [A [B]]");
        return;
    }
    int act = a->snap.active, t[2] = {act, -1};
    if (nw == 0) {
        /* The next resident checkpoint after the active one, else the next one. */
        for (int k = 1; k < a->w.n_ck && t[1] < 0; k++)
            if (a->snap.resident[(act + k) % a->w.n_ck])
                t[1] = (act + k) % a->w.n_ck;
        if (t[1] < 0)
            t[1] = (act + 1) % a->w.n_ck;
    } else {
        for (int i = 0; i < nw; i++) {
            int idx = resolve_ckpt(a, words[i], "compare");
            if (idx < 0)
                return;
            t[nw == 1 ? 1 : i] = idx;
        }
    }
    if (t[0] == t[1]) {
        set_status(a, true, "compare: both sides are %s; name two formats", a->w.ck[t[0]].label);
        return;
    }
    worker_job job = {.kind = WJOB_COMPARE, .targets = {t[0], t[1]}};
    /* The chat up to the last prompt, sampled as its reply was. */
    if (!build_chat(a, last_user + 1, &job.chat))
        return;
    job_params(a, last_user + 1, &job);
    a->cmp_seed = job.sp.seed;
    if (!worker_submit(&a->w, &job)) {
        set_status(a, true, "the engine is busy");
        return;
    }
    for (int c = 0; c < 2; c++) {
        tb_clear(&a->cmp_r[c]);
        tb_clear(&a->cmp_a[c]);
        wrap_cache_reset(&a->cmp_rwc[c]);
        wrap_cache_reset(&a->cmp_awc[c]);
        /* Until the worker's first report: labels and nothing counted. */
        memset(&a->snap.cmp[c], 0, sizeof a->snap.cmp[c]);
        a->snap.cmp[c].ck = t[c];
        snprintf(a->snap.cmp[c].label, sizeof a->snap.cmp[c].label, "%s", a->w.ck[t[c]].label);
    }
    a->cmp_view = a->cmp_running = true;
    set_status(a, false, "comparing %s and %s on the last prompt\xe2\x80\xa6 (Ctrl-C stops, Esc or q closes)",
               a->w.ck[t[0]].label, a->w.ck[t[1]].label);
}

/* The reference for /drift: a named one, else the BF16 checkpoint. */
static int drift_ref(app *a, const char *spec)
{
    if (spec && *spec)
        return resolve_ckpt(a, spec, "drift");
    for (int i = 0; i < a->w.n_ck; i++)
        if (!strcmp(a->w.ck[i].family, "BF16"))
            return i;
    set_status(a, true, "drift: no BF16 checkpoint on the command line; name the reference: /drift FAMILY|N|DIR");
    return -1;
}

static void drift_report(app *a, const worker_drift *d)
{
    const drift_stats *st = &d->st;
    char buf[1200];
    int o = snprintf(buf, sizeof buf, "drift \xc2\xb7 %s against %s \xc2\xb7 %d token%s of the last reply (%s)\n",
                     d->act_label, d->ref_label, st->n, st->n == 1 ? "" : "s", d->live ? "live" : "teacher-forced");
    if (st->n == 0) {
        snprintf(buf + o, sizeof buf - (size_t)o, "nothing scored%s",
                 st->n_bad ? ": no finite logit on one side at every position (a damaged checkpoint?)" : "");
        info(a, buf);
        return;
    }
    o += snprintf(buf + o, sizeof buf - (size_t)o,
                  "KL(ref\xe2\x80\x96" "active) mean %.4g \xc2\xb7 max %.4g nats (token %d)\n"
                  "top-1 agreement %.1f %% (%d/%d)\n",
                  drift_stats_kl_mean(st), st->kl_max, st->kl_max_pos - d->from + 1, drift_stats_agree_pct(st),
                  st->agree, st->n);
    if (st->n_bad)
        o += snprintf(buf + o, sizeof buf - (size_t)o, "%d position%s skipped: no finite logit on one side\n",
                      st->n_bad, st->n_bad == 1 ? "" : "s");
    if (st->first_div >= 0)
        snprintf(buf + o, sizeof buf - (size_t)o, "first divergent token: #%d \xc2\xb7 %s %s \xc2\xb7 %s %s",
                 st->first_div - d->from + 1, d->ref_label, d->first_ref_text, d->act_label, d->first_act_text);
    else
        snprintf(buf + o, sizeof buf - (size_t)o, "first divergent token: none (the top-1 tokens agree everywhere)");
    info(a, buf);
}

static void cmd_drift(app *a, const char *arg)
{
    char words[2][4096];
    int nw = split_words(arg, words);
    if (nw > 2 || (nw == 2 && strcmp(words[0], "on"))) {
        set_status(a, true, "usage: /drift [REF|on [REF]|off]");
        return;
    }
    if (nw >= 1 && !strcmp(words[0], "off")) {
        worker_set_live_drift(&a->w, -1);
        a->drift_live = -1;
        set_status(a, false, "live drift off");
        return;
    }
    if (nw >= 1 && !strcmp(words[0], "on")) {
        int ref = drift_ref(a, nw == 2 ? words[1] : NULL);
        if (ref < 0)
            return;
        worker_set_live_drift(&a->w, ref);
        a->drift_live = ref;
        set_status(a, false, "live drift on: every reply is scored under %s as it streams (the reference's steps "
                   "count in the latency)%s", a->w.ck[ref].label,
                   ref == a->snap.active ? "; replies from the reference itself are not scored" : "");
        return;
    }
    if (busy(a, "drift"))
        return;
    int ref = drift_ref(a, nw ? words[0] : NULL);
    if (ref < 0)
        return;
    if (a->cv.n == 0 || a->cv.turns[a->cv.n - 1].role != CONVO_ASSISTANT) {
        set_status(a, true, "drift: no reply to score yet; send a prompt first");
        return;
    }
    worker_job job = {.kind = WJOB_DRIFT, .target = ref};
    if (!worker_submit(&a->w, &job)) {
        set_status(a, true, "the engine is busy");
        return;
    }
    a->drift_running = true;
    set_status(a, false, "scoring the last reply under %s\xe2\x80\xa6", a->w.ck[ref].label);
}

static void run_command(app *a, const char *line)
{
    const char *arg;
    char msg[256];
    const cmd_def *c = cmd_parse(line, &arg, msg, sizeof msg);
    if (!c) {
        set_status(a, true, "%s", msg);
        return;
    }
    char path[4200];
    switch (c->id) {
    case CMD_HELP:
        cmd_help(a);
        break;
    case CMD_SWAP: {
        char spec[4096];
        snprintf(spec, sizeof spec, "%s", arg);
        size_t l = strlen(spec);
        while (l && isspace((unsigned char)spec[l - 1]))
            spec[--l] = 0;
        do_swap(a, spec);
        break;
    }
    case CMD_MODELS:
        cmd_models(a);
        break;
    case CMD_THINK:
        if (!strncmp(arg, "on", 2))
            a->cv.think = true;
        else if (!strncmp(arg, "off", 3))
            a->cv.think = false;
        else {
            set_status(a, true, "usage: /think on|off");
            break;
        }
        set_status(a, false, "thinking %s for the next reply", a->cv.think ? "on" : "off");
        break;
    case CMD_REGEN:
        if (busy(a, "regen"))
            break;
        if (a->cv.n == 0 || a->cv.turns[a->cv.n - 1].role != CONVO_ASSISTANT) {
            set_status(a, true, "regen: no reply to regenerate");
            break;
        }
        convo_pop(&a->cv);
        pop_block(a, DB_ASSISTANT);
        start_generate(a);
        break;
    case CMD_CLEAR: {
        if (busy(a, "clear"))
            break;
        worker_job job = {.kind = WJOB_RESET};
        if (worker_submit(&a->w, &job)) {
            convo_clear(&a->cv);
            clear_blocks(a);
            tb_clear(&a->rtext);
            tb_clear(&a->atext);
            memset(a->snap.gen_ids, 0, sizeof a->snap.gen_ids);
            set_status(a, false, "new conversation");
        }
        break;
    }
    case CMD_SYSTEM:
        if (!*arg) {
            info(a, a->cv.system[0] ? a->cv.system : "(no system prompt)");
            break;
        }
        convo_set_text(&a->cv.system, arg, strlen(arg));
        set_status(a, false, "system prompt set; it applies from the next reply");
        break;
    case CMD_SET:
        set_sampling(a, arg);
        break;
    case CMD_SAVE:
        if (*arg)
            snprintf(path, sizeof path, "%s", arg);
        else
            default_session_path(path, sizeof path);
        if (convo_save(&a->cv, path, msg, sizeof msg) == 0)
            set_status(a, false, "saved %d turns, %d tokens to %s", a->cv.n, a->cv.n_tokens, path);
        else
            set_status(a, true, "save failed: %s", msg);
        break;
    case CMD_LOAD: {
        if (busy(a, "load"))
            break;
        convo nc;
        snprintf(path, sizeof path, "%s", arg);
        if (convo_load(path, &nc, msg, sizeof msg) != 0) {
            set_status(a, true, "load failed, conversation unchanged: %s", msg);
            break;
        }
        worker_job job = {.kind = WJOB_REBUILD, .n_ids = nc.n_tokens};
        job.ids = malloc((size_t)(nc.n_tokens ? nc.n_tokens : 1) * sizeof *job.ids);
        if (!job.ids) {
            convo_free(&nc);
            break;
        }
        if (nc.n_tokens)
            memcpy(job.ids, nc.tokens, (size_t)nc.n_tokens * sizeof *job.ids);
        if (!worker_submit(&a->w, &job)) {
            convo_free(&nc);
            break;
        }
        /* Applied only once the worker has prefilled its tokens: a rejected
         * file leaves the conversation as it was. */
        a->loading = nc;
        a->have_loading = true;
        a->generating = true;
        set_status(a, false, "loading %d turns from %s; re-prefilling %d tokens", nc.n, path, nc.n_tokens);
        break;
    }
    case CMD_STATS:
        cmd_stats(a);
        break;
    case CMD_COMPARE:
        cmd_compare(a, arg);
        break;
    case CMD_DRIFT:
        cmd_drift(a, arg);
        break;
    case CMD_QUIT:
        a->quit = true;
        break;
    default:
        break;
    }
}

static void submit_text(app *a, const char *text)
{
    const char *p = text;
    while (*p && isspace((unsigned char)*p))
        p++;
    if (!*p)
        return;
    if (*p == '/' ) {
        run_command(a, p);
        return;
    }
    if (engine_busy(a)) {
        set_status(a, true, "a reply is under way: wait or press Ctrl-C");
        free(a->restore_line);
        a->restore_line = strdup(text);
        return;
    }
    if (!convo_add(&a->cv, CONVO_USER, text, NULL))
        return;
    add_block(a, DB_USER, text, "you");
    start_generate(a);
}

/* ---- readline --------------------------------------------------------------------- */

static int rl_getc_cb(FILE *f)
{
    (void)f;
    app *a = g_app;
    if (!a->feed_ready)
        return EOF; /* callback mode reads exactly the byte we hand it */
    a->feed_ready = false;
    return a->feed_ch;
}

static int rl_avail_cb(void) { return g_app->feed_ready; }
static void rl_redisplay_cb(void) { g_app->dirty = true; }
static void rl_prep_cb(int meta) { (void)meta; }
static void rl_deprep_cb(void) {}

static int rl_newline_cb(int count, int key)
{
    (void)count;
    (void)key;
    return rl_insert_text("\n") >= 0 ? 0 : 1;
}

static void line_cb(char *line)
{
    app *a = g_app;
    if (!line) {
        /* Ctrl-D on an empty line. */
        a->quit = true;
        return;
    }
    size_t n = strlen(line);
    if (n && line[n - 1] == '\\') {
        /* A trailing backslash continues the entry on the next line. */
        tb_append(&a->pending, line, n - 1);
        tb_append(&a->pending, "\n", 1);
        free(line);
        a->dirty = true;
        return;
    }
    textbuf full = {0};
    if (a->pending.n)
        tb_append(&full, a->pending.s, a->pending.n);
    tb_append(&full, line, n);
    tb_clear(&a->pending);
    free(line);
    if (full.s && full.n) {
        add_history(full.s);
        if (a->hist_path[0]) {
            convo_mkdir_parents(a->hist_path);
            if (append_history(1, a->hist_path) != 0)
                write_history(a->hist_path);
            history_truncate_file(a->hist_path, 1000);
        }
        submit_text(a, full.s);
    }
    free(full.s);
    a->dirty = true;
}

static void feed_bytes(app *a, const char *s, size_t n)
{
    for (size_t i = 0; i < n && !a->quit; i++) {
        a->feed_ch = (unsigned char)s[i];
        a->feed_ready = true;
        rl_callback_read_char();
    }
    if (a->restore_line) {
        rl_replace_line(a->restore_line, 0);
        rl_point = rl_end;
        free(a->restore_line);
        a->restore_line = NULL;
    }
}

static void history_setup(app *a)
{
    const char *st = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    if (st && *st)
        snprintf(a->hist_path, sizeof a->hist_path, "%s/qchat/history", st);
    else if (home && *home)
        snprintf(a->hist_path, sizeof a->hist_path, "%s/.local/state/qchat/history", home);
    using_history();
    if (a->hist_path[0])
        read_history(a->hist_path);
}

/* ---- keys ------------------------------------------------------------------------- */

static void on_key(app *a, int ch)
{
    if (a->cmp_view && ch != KEY_RESIZE && ch != 12) {
        /* The compare view owns the keys: nothing reaches the input line. */
        a->ctrl_c_armed = false;
        if (ch == 3 && a->cmp_running) {
            worker_request_stop(&a->w);
            set_status(a, false, "stopping the compareâ¦");
        } else if (ch == 3 || ch == 27 || ch == 'q' || ch == 'Q') {
            if (a->cmp_running)
                worker_request_stop(&a->w);
            a->cmp_view = false;
            set_status(a, false, "compare closed; the conversation is as it was");
        }
        a->dirty = true;
        return;
    }
    bool was_armed = a->ctrl_c_armed;
    a->ctrl_c_armed = false;
    switch (ch) {
    case 3: /* Ctrl-C */
        if (engine_busy(a)) {
            worker_request_stop(&a->w);
            set_status(a, false, "stopping\xe2\x80\xa6");
            a->ctrl_c_armed = true;
        } else if (was_armed || (rl_end == 0 && a->pending.n == 0 && a->status[0] &&
                                 strstr(a->status, "Ctrl-C again"))) {
            a->quit = true;
        } else {
            rl_replace_line("", 0);
            rl_point = 0;
            tb_clear(&a->pending);
            set_status(a, false, "press Ctrl-C again (or Ctrl-D) to quit");
            a->ctrl_c_armed = true;
        }
        a->dirty = true;
        return;
    case 4: /* Ctrl-D: quit on an empty entry, else delete a character */
        if (rl_end == 0 && a->pending.n == 0) {
            a->quit = true;
            return;
        }
        break;
    case 12: /* Ctrl-L */
        clearok(curscr, TRUE);
        a->dirty = true;
        return;
    case '\t':
        a->reason_collapsed = !a->reason_collapsed;
        a->dirty = true;
        return;
    case KEY_RESIZE:
        a->dirty = true;
        return;
    case KEY_PPAGE:
        a->scroll += a->L.conv.h > 3 ? a->L.conv.h - 2 : 1;
        a->dirty = true;
        return;
    case KEY_NPAGE:
        a->scroll -= a->L.conv.h > 3 ? a->L.conv.h - 2 : 1;
        if (a->scroll < 0)
            a->scroll = 0;
        a->dirty = true;
        return;
    case KEY_F(1):
        cmd_help(a);
        return;
    case KEY_F(2):
    case KEY_F(3):
    case KEY_F(4):
    case KEY_F(5): {
        int idx = ch - KEY_F(2);
        if (idx >= a->w.n_ck) {
            set_status(a, true, "F%d: only %d checkpoint%s on the command line", idx + 2, a->w.n_ck,
                       a->w.n_ck == 1 ? "" : "s");
            return;
        }
        char spec[16];
        snprintf(spec, sizeof spec, "%d", idx + 1);
        do_swap(a, spec);
        return;
    }
    default:
        break;
    }
    /* Everything else is editing: translate curses keys into what readline's
     * emacs keymap expects. */
    const char *seq = NULL;
    switch (ch) {
    case KEY_LEFT: seq = "\x02"; break;
    case KEY_RIGHT: seq = "\x06"; break;
    case KEY_UP: seq = "\x10"; break;
    case KEY_DOWN: seq = "\x0e"; break;
    case KEY_HOME: seq = "\x01"; break;
    case KEY_END: seq = "\x05"; break;
    case KEY_BACKSPACE: seq = "\x7f"; break;
    case KEY_DC: seq = "\x1b[3~"; break;
    case KEY_ENTER: seq = "\r"; break;
    default: break;
    }
    if (seq) {
        feed_bytes(a, seq, strlen(seq));
    } else if (ch >= 0 && ch < 256) {
        char b = (char)ch;
        feed_bytes(a, &b, 1);
    }
    a->dirty = true;
}

/* ---- setup and main loop ---------------------------------------------------------- */

static void sampling_defaults(app *a)
{
    const qc_config *cfg = qc_model_config(a->w.ck[a->w.live.active].model);
    convo_sampling *s = &a->cv.sampling;
    if (cfg && cfg->gen.present) {
        /* generation_config.json over Qwen's recommended settings, by the
         * rule `run` follows, back as the decimals written (the defaults
         * are short decimals too, so they come back unchanged) */
        qc_sample_params sp;
        sampling_to_params(s, &sp);
        qc_sample_params_apply_gen(&sp, &cfg->gen);
        s->temperature = qc_float_decimal(sp.temperature);
        s->top_p = qc_float_decimal(sp.top_p);
        s->top_k = sp.top_k;
        s->min_p = qc_float_decimal(sp.min_p);
        s->repetition_penalty = qc_float_decimal(sp.repetition_penalty);
        s->presence_penalty = qc_float_decimal(sp.presence_penalty);
    }
    if (a->o.temperature >= 0)
        s->temperature = a->o.temperature;
    if (a->o.seed >= 0)
        s->seed = (uint64_t)a->o.seed;
    s->max_tokens = a->o.max_tokens;
    qc_model_info info;
    qc_model_get_info(a->w.ck[a->w.live.active].model, &info);
    a->cv.think = a->o.think < 0 ? info.thinking_default : a->o.think == 1;
    snprintf(a->device, sizeof a->device, "%s", info.device);
}

int app_run(const app_opts *o)
{
    static app A;
    app *a = &A;
    memset(a, 0, sizeof *a);
    a->o = *o;
    g_app = a;
    convo_init(&a->cv);
    a->drift_live = -1;
    a->swap_target = a->swap_added = -1;
    char msg[512];
    if (theme_find(a, o->theme, msg, sizeof msg) != 0) {
        fprintf(stderr, "qchat: %s\n", msg);
        return QC_EXIT_USAGE;
    }
    qc_err err = {0};
    for (int i = 0; i < o->n_dirs; i++) {
        int rc = worker_add_ckpt(&a->w, o->dirs[i], &err);
        if (rc) {
            fprintf(stderr, "qchat: %s\n", err.msg);
            worker_shutdown(&a->w);
            return rc;
        }
    }
    qc_load_opts lo = {.device = o->device, .threads = o->threads};
    uint64_t budget = (uint64_t)(o->budget_gb * 1e9);
    if (budget == 0) {
        /* Automatic: the weights of every checkpoint when they fit in 60 % of
         * the device (or host) memory, else that 60 %. */
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        budget = (uint64_t)((double)pages * (double)psz * 0.6);
    }
    fprintf(stderr, "qchat: loading %s\xe2\x80\xa6\n", o->dirs[0]);
    int rc = worker_start(&a->w, 0, &lo, o->ctx, budget, &err);
    if (rc) {
        fprintf(stderr, "qchat: %s\n", err.msg);
        worker_shutdown(&a->w);
        return rc;
    }
    if (o->budget_gb <= 0 && a->w.live.mem.total) {
        /* On a GPU the device total is the better bound. */
        qc_model_info info;
        qc_model_get_info(a->w.ck[0].model, &info);
        if (!strncmp(info.device, "cuda", 4))
            a->w.budget = (uint64_t)((double)a->w.live.mem.total * 0.6);
    }
    sampling_defaults(a);
    snprintf(a->model_name, sizeof a->model_name, "%.63s", a->w.ck[0].name);
    pthread_mutex_lock(&a->w.mu);
    memcpy(&a->snap, &a->w.live, sizeof a->snap);
    a->snap.reasoning = a->snap.answer = NULL;
    a->snap.history = NULL;
    a->seen_seq = a->w.live.done_seq;
    pthread_mutex_unlock(&a->w.mu);

    /* Wide characters need the user's (UTF-8) locale before initscr. */
    setlocale(LC_ALL, "");
    /* Terminal: raw so Ctrl-C arrives as a key; no mouse capture, so the
     * terminal keeps its own selection. */
    if (!initscr()) {
        fprintf(stderr, "qchat: cannot initialise the terminal (TERM=%s)\n", getenv("TERM") ? getenv("TERM") : "");
        worker_shutdown(&a->w);
        return QC_EXIT_RUNTIME;
    }
    raw();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    nodelay(stdscr, TRUE);
    set_escdelay(25);
    /* ncurses sets COLORS in start_color(), not in initscr(): read before it,
     * COLORS is 0 and every terminal looked colourless. */
    const char *no_color = getenv("NO_COLOR");
    bool colour_ok = has_colors() && !(no_color && *no_color);
    if (colour_ok)
        start_color();
    a->depth = theme_depth_detect(colour_ok ? COLORS : 0, no_color, o->colors);
    if (a->depth != THEME_DEPTH_NONE) {
        if (!colour_ok)
            start_color(); /* --colors N on a terminal that does not say it has them */
        use_default_colors();
        if (a->depth > (theme_depth)COLORS && COLORS > 0)
            a->depth = theme_depth_detect(COLORS, NULL, 0);
    }
    theme_apply(a);

    /* readline in callback mode: we hand it one byte at a time and draw its
     * buffer ourselves. */
    rl_catch_signals = 0;
    rl_catch_sigwinch = 0;
    rl_change_environment = 0;
    rl_prep_term_function = rl_prep_cb;
    rl_deprep_term_function = rl_deprep_cb;
    rl_getc_function = rl_getc_cb;
    rl_input_available_hook = rl_avail_cb;
    rl_redisplay_function = rl_redisplay_cb;
    FILE *devnull = fopen("/dev/null", "w");
    rl_outstream = devnull;
    rl_bind_key('\t', rl_insert); /* never reached: Tab is ours */
    rl_callback_handler_install("", line_cb);
    rl_bind_keyseq("\\e\\r", rl_newline_cb);
    rl_bind_keyseq("\\e\\n", rl_newline_cb);
    history_setup(a);
    if (o->n_dirs > 1)
        set_status(a, false, "%d checkpoints: F2-F%d or /swap switch; /help lists the commands", o->n_dirs,
                   o->n_dirs + 1 > 5 ? 5 : o->n_dirs + 1);

    double last_draw = 0;
    a->dirty = true;
    while (!a->quit) {
        double now = qc_now();
        int timeout = 250;
        /* 10 frames a second while the engine works (token bursts coalesce into
         * one frame): a 160x48 frame costs ~0.7 ms, so drawing stays under 1 %
         * of the time the engine spends decoding; 30 a second when idle, for typing. */
        double frame = engine_busy(a) ? 0.1 : 0.033;
        if (a->dirty) {
            double wait = frame - (now - last_draw);
            timeout = wait > 0 ? (int)(wait * 1000) + 1 : 0;
        } else if (engine_busy(a)) {
            timeout = 100; /* clocks in the panes keep moving */
        }
        struct pollfd pf[2] = {{.fd = 0, .events = POLLIN}, {.fd = a->w.wake_fd[0], .events = POLLIN}};
        int pr = poll(pf, 2, timeout);
        if (pr < 0 && errno != EINTR)
            break;
        int ch;
        while ((ch = getch()) != ERR && !a->quit)
            on_key(a, ch);
        if (pr > 0 && (pf[1].revents & POLLIN))
            pull_live(a);
        if (engine_busy(a) && !a->dirty)
            a->dirty = true;
        now = qc_now();
        if (a->dirty && now - last_draw >= frame) {
            draw(a);
            last_draw = now;
        }
    }
    rl_callback_handler_remove();
    endwin();
    if (getenv("QCHAT_TUI_PROFILE")) {
        /* Drawing cost against decode time: the issue asks for under 1 %. */
        double dec = 0;
        for (int i = 0; i < a->cv.n; i++)
            if (a->cv.turns[i].tok_s > 0)
                dec += (a->cv.turns[i].n_reasoning + a->cv.turns[i].n_answer) / a->cv.turns[i].tok_s;
        fprintf(stderr, "qchat: %ld frames, %.3f ms mean, %.3f ms max, %.3f s drawing, %.3f s decoding\n", g_draws,
                g_draws ? g_draw_s / g_draws * 1e3 : 0, g_draw_max * 1e3, g_draw_s, dec);
    }
    if (devnull)
        fclose(devnull);
    worker_shutdown(&a->w);
    convo_free(&a->cv);
    if (a->have_loading)
        convo_free(&a->loading);
    clear_blocks(a);
    free(a->blocks);
    free(a->rtext.s);
    free(a->atext.s);
    free(a->pending.s);
    wrap_cache_free(&a->r_wc);
    wrap_cache_free(&a->a_wc);
    for (int c = 0; c < 2; c++) {
        free(a->cmp_r[c].s);
        free(a->cmp_a[c].s);
        wrap_cache_free(&a->cmp_rwc[c]);
        wrap_cache_free(&a->cmp_awc[c]);
    }
    return 0;
}
