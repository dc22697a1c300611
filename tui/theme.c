/* theme.c — see theme.h. */
#include "theme.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THEME_NAME_(e, s) s,
static const char *const key_names[TH_COUNT] = {THEME_KEYS(THEME_NAME_)};
#undef THEME_NAME_

const char *theme_key_name(theme_key k) { return (unsigned)k < TH_COUNT ? key_names[k] : "?"; }

int theme_key_from_name(const char *s)
{
    for (int i = 0; i < TH_COUNT; i++)
        if (!strcmp(s, key_names[i]))
            return i;
    return -1;
}

/* xterm's 16 base colours (its default palette). */
static const uint32_t ansi_rgb[16] = {
    0x000000, 0xcd0000, 0x00cd00, 0xcdcd00, 0x0000ee, 0xcd00cd, 0x00cdcd, 0xe5e5e5,
    0x7f7f7f, 0xff0000, 0x00ff00, 0xffff00, 0x5c5cff, 0xff00ff, 0x00ffff, 0xffffff,
};

static const char *const color_names[16] = {
    "black", "red", "green", "yellow", "blue", "magenta", "cyan", "white",
    "bright-black", "bright-red", "bright-green", "bright-yellow", "bright-blue", "bright-magenta",
    "bright-cyan", "bright-white",
};

uint32_t theme_index_rgb(int idx)
{
    if (idx < 0 || idx > 255)
        return 0;
    if (idx < 16)
        return ansi_rgb[idx];
    if (idx < 232) {
        static const int lv[6] = {0, 95, 135, 175, 215, 255};
        int i = idx - 16;
        return (uint32_t)(lv[i / 36] << 16 | lv[(i / 6) % 6] << 8 | lv[i % 6]);
    }
    int g = 8 + 10 * (idx - 232);
    return (uint32_t)(g << 16 | g << 8 | g);
}

static long dist2(uint32_t a, uint32_t b)
{
    long dr = (long)((a >> 16) & 255) - (long)((b >> 16) & 255);
    long dg = (long)((a >> 8) & 255) - (long)((b >> 8) & 255);
    long db = (long)(a & 255) - (long)(b & 255);
    /* Weighted toward green as the eye is: good enough for picking a palette entry. */
    return 3 * dr * dr + 4 * dg * dg + 2 * db * db;
}

int theme_rgb_to_256(uint32_t rgb)
{
    /* Only the cube and the grey ramp: entries 0-15 vary between terminals. */
    int best = 16;
    long bd = -1;
    for (int i = 16; i < 256; i++) {
        long d = dist2(rgb, theme_index_rgb(i));
        if (bd < 0 || d < bd) {
            bd = d;
            best = i;
        }
    }
    return best;
}

int theme_rgb_to_ansi(uint32_t rgb, int n)
{
    int best = 0;
    long bd = -1;
    for (int i = 0; i < n && i < 16; i++) {
        long d = dist2(rgb, ansi_rgb[i]);
        if (bd < 0 || d < bd) {
            bd = d;
            best = i;
        }
    }
    return best;
}

int32_t theme_color_resolve(color_spec c, theme_depth depth)
{
    if (depth == THEME_DEPTH_NONE || c.kind == COLOR_SPEC_DEFAULT)
        return -1;
    if (c.kind == COLOR_SPEC_INDEX) {
        int idx = (int)c.value;
        if (depth == THEME_DEPTH_TRUE)
            return (int32_t)theme_index_rgb(idx);
        if (idx < (int)depth)
            return idx;
        /* An index the terminal lacks: go through its RGB value. */
        return theme_rgb_to_ansi(theme_index_rgb(idx), (int)depth);
    }
    switch (depth) {
    case THEME_DEPTH_TRUE:
        return (int32_t)c.value;
    case THEME_DEPTH_256:
        return theme_rgb_to_256(c.value);
    default:
        return theme_rgb_to_ansi(c.value, (int)depth);
    }
}

theme_depth theme_depth_detect(int ncolors, const char *no_color, int forced)
{
    if (no_color && *no_color)
        return THEME_DEPTH_NONE;
    if (forced > 0 || forced == -1)
        ncolors = forced == -1 ? 0 : forced;
    if (ncolors >= (1 << 24))
        return THEME_DEPTH_TRUE;
    if (ncolors >= 256)
        return THEME_DEPTH_256;
    if (ncolors >= 16)
        return THEME_DEPTH_16;
    if (ncolors >= 8)
        return THEME_DEPTH_8;
    return THEME_DEPTH_NONE;
}

static int parse_color(const char *w, color_spec *c)
{
    if (!strcmp(w, "default")) {
        *c = (color_spec){COLOR_SPEC_DEFAULT, 0};
        return 0;
    }
    if (w[0] == '#') {
        if (strlen(w) != 7)
            return -1;
        for (int i = 1; i < 7; i++)
            if (!isxdigit((unsigned char)w[i]))
                return -1;
        *c = (color_spec){COLOR_SPEC_RGB, (uint32_t)strtoul(w + 1, NULL, 16)};
        return 0;
    }
    if (isdigit((unsigned char)w[0])) {
        char *end;
        long v = strtol(w, &end, 10);
        if (*end || v < 0 || v > 255)
            return -1;
        *c = (color_spec){COLOR_SPEC_INDEX, (uint32_t)v};
        return 0;
    }
    if (!strcmp(w, "grey") || !strcmp(w, "gray")) {
        *c = (color_spec){COLOR_SPEC_INDEX, 8};
        return 0;
    }
    for (int i = 0; i < 16; i++)
        if (!strcmp(w, color_names[i])) {
            *c = (color_spec){COLOR_SPEC_INDEX, (uint32_t)i};
            return 0;
        }
    return -1;
}

void theme_builtin(theme *t)
{
    static const char text[] =
        "normal = default\n"
        "bar = #d0d0d0 on #303040\n"
        "bar-active = #101010 on #87d75f bold\n"
        "bar-resident = #87afd7 on #303040\n"
        "title = #87afff bold\n"
        "border = #585858\n"
        "dim = #808080\n"
        "user = #ffd75f bold\n"
        "assistant = #87d787 bold\n"
        "tag = #afafd7\n"
        "reasoning = #9e9e9e\n"
        "info = #5fafaf\n"
        "error = #ff5f5f bold\n"
        "prompt = #87afff bold\n"
        "value = #ffffff bold\n"
        "spark = #5fd7ff\n"
        "loop-ok = #5fd75f\n"
        "loop-warn = #ff875f bold\n"
        "progress = #d7af5f\n"
        "mem-bf16 = #5f87d7\n"
        "mem-fp8 = #af87d7\n"
        "mem-int4 = #d7875f\n"
        "mem-nvfp4 = #87d75f\n"
        "mem-other = #d7d75f\n"
        "mem-kv = #d75f87\n"
        "mem-gdn = #5fd7d7\n"
        "mem-scratch = #afaf87\n"
        "mem-runtime = #878787\n"
        "mem-free = #3a3a3a\n";
    char msg[128];
    if (theme_parse(t, "dark", text, msg, sizeof msg) != 0)
        abort(); /* the built-in text is a compile-time constant: a failure is a bug */
}

int theme_parse(theme *t, const char *name, const char *text, char *msg, int msglen)
{
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    int lineno = 0;
    const char *p = text;
    while (*p) {
        lineno++;
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char line[512];
        if (len >= sizeof line) {
            snprintf(msg, (size_t)msglen, "%s:%d: line too long", name, lineno);
            return -1;
        }
        memcpy(line, p, len);
        line[len] = 0;
        p += len + (e ? 1 : 0);
        char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        if (!*s || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(msg, (size_t)msglen, "%s:%d: expected 'element = colour'", name, lineno);
            return -1;
        }
        *eq = 0;
        char *k = s, *kend = eq;
        while (kend > k && isspace((unsigned char)kend[-1]))
            *--kend = 0;
        int key = theme_key_from_name(k);
        if (key < 0) {
            snprintf(msg, (size_t)msglen, "%s:%d: unknown element '%s'", name, lineno, k);
            return -1;
        }
        theme_style st = {.set = 1};
        int nwords = 0, want_bg = 0;
        for (char *w = strtok(eq + 1, " \t\r"); w; w = strtok(NULL, " \t\r")) {
            color_spec c;
            if (!strcmp(w, "on")) {
                want_bg = 1;
            } else if (!strcmp(w, "bold")) {
                st.attrs |= THEME_A_BOLD;
            } else if (!strcmp(w, "dim")) {
                st.attrs |= THEME_A_DIM;
            } else if (!strcmp(w, "underline")) {
                st.attrs |= THEME_A_UNDERLINE;
            } else if (!strcmp(w, "reverse")) {
                st.attrs |= THEME_A_REVERSE;
            } else if (parse_color(w, &c) == 0 && (want_bg || nwords == 0)) {
                if (want_bg) {
                    st.bg = c;
                    want_bg = 0;
                } else {
                    st.fg = c;
                }
                nwords++;
            } else {
                snprintf(msg, (size_t)msglen, "%s:%d: bad colour or attribute '%s'", name, lineno, w);
                return -1;
            }
        }
        if (want_bg) {
            snprintf(msg, (size_t)msglen, "%s:%d: 'on' without a background colour", name, lineno);
            return -1;
        }
        t->st[key] = st;
    }
    /* Elements the file leaves out look like normal text. */
    for (int i = 0; i < TH_COUNT; i++)
        if (!t->st[i].set)
            t->st[i] = (theme_style){t->st[TH_NORMAL].fg, t->st[TH_NORMAL].bg, 0, 0};
    return 0;
}

int theme_load_file(theme *t, const char *path, char *msg, int msglen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(msg, (size_t)msglen, "%s: cannot open theme", path);
        return -1;
    }
    char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int big = !feof(f);
    fclose(f);
    if (big) {
        snprintf(msg, (size_t)msglen, "%s: theme file larger than 16 KiB", path);
        return -1;
    }
    buf[n] = 0;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char name[64];
    snprintf(name, sizeof name, "%s", base);
    char *dot = strstr(name, ".theme");
    if (dot)
        *dot = 0;
    /* Parse under the path so error messages name the file. */
    int rc = theme_parse(t, path, buf, msg, msglen);
    snprintf(t->name, sizeof t->name, "%s", name);
    return rc;
}
