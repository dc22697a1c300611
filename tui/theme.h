/* theme.h — colour themes keyed by semantic element (never raw colours in the
 * drawing code), parsed from themes/NAME.theme files and resolved for what the
 * terminal can show: truecolor -> 256 -> 16 -> 8 -> none.
 *
 * File format, one element per line, '#' starts a comment at line start:
 *     element = FG [on BG] [bold] [dim] [underline] [reverse]
 * where a colour is #rrggbb, an index 0-255, a name (black red green yellow
 * blue magenta cyan white, "bright-" forms, grey) or "default". */
#ifndef TUI_THEME_H
#define TUI_THEME_H

#include <stdint.h>

/* The semantic elements; THEME_KEYS expands to one X(enum, "file-key") each. */
#define THEME_KEYS(X)                                                                              \
    X(TH_NORMAL, "normal")                                                                         \
    X(TH_BAR, "bar")                                                                               \
    X(TH_BAR_ACTIVE, "bar-active")                                                                 \
    X(TH_BAR_RESIDENT, "bar-resident")                                                             \
    X(TH_TITLE, "title")                                                                           \
    X(TH_BORDER, "border")                                                                         \
    X(TH_DIM, "dim")                                                                               \
    X(TH_USER, "user")                                                                             \
    X(TH_ASSISTANT, "assistant")                                                                   \
    X(TH_TAG, "tag")                                                                               \
    X(TH_REASONING, "reasoning")                                                                   \
    X(TH_INFO, "info")                                                                             \
    X(TH_ERROR, "error")                                                                           \
    X(TH_PROMPT, "prompt")                                                                         \
    X(TH_VALUE, "value")                                                                           \
    X(TH_SPARK, "spark")                                                                           \
    X(TH_LOOP_OK, "loop-ok")                                                                       \
    X(TH_LOOP_WARN, "loop-warn")                                                                   \
    X(TH_PROGRESS, "progress")                                                                     \
    X(TH_MEM_BF16, "mem-bf16")                                                                     \
    X(TH_MEM_FP8, "mem-fp8")                                                                       \
    X(TH_MEM_INT4, "mem-int4")                                                                     \
    X(TH_MEM_NVFP4, "mem-nvfp4")                                                                   \
    X(TH_MEM_OTHER, "mem-other")                                                                   \
    X(TH_MEM_KV, "mem-kv")                                                                         \
    X(TH_MEM_GDN, "mem-gdn")                                                                       \
    X(TH_MEM_SCRATCH, "mem-scratch")                                                               \
    X(TH_MEM_RUNTIME, "mem-runtime")                                                               \
    X(TH_MEM_FREE, "mem-free")

#define THEME_ENUM_(e, s) e,
typedef enum theme_key { THEME_KEYS(THEME_ENUM_) TH_COUNT } theme_key;
#undef THEME_ENUM_

/* A colour as written: none (terminal default), an index, or 24-bit RGB. */
typedef enum { COLOR_SPEC_DEFAULT = 0, COLOR_SPEC_INDEX, COLOR_SPEC_RGB } color_spec_kind;
typedef struct color_spec {
    color_spec_kind kind;
    uint32_t value; /* index 0-255, or 0xRRGGBB */
} color_spec;

enum { THEME_A_BOLD = 1, THEME_A_DIM = 2, THEME_A_UNDERLINE = 4, THEME_A_REVERSE = 8 };

typedef struct theme_style {
    color_spec fg, bg;
    int attrs; /* THEME_A_* */
    int set;   /* given in the file (else inherited from "normal") */
} theme_style;

typedef struct theme {
    char name[64];
    theme_style st[TH_COUNT];
} theme;

/* What the terminal can show. */
typedef enum theme_depth {
    THEME_DEPTH_NONE = 0,
    THEME_DEPTH_8 = 8,
    THEME_DEPTH_16 = 16,
    THEME_DEPTH_256 = 256,
    THEME_DEPTH_TRUE = 1 << 24
} theme_depth;

const char *theme_key_name(theme_key k);
int theme_key_from_name(const char *s); /* -1 if unknown */

/* Parses theme text. Unknown keys and malformed lines are errors: the message
 * names the line. Returns 0 or -1 with msg filled. */
int theme_parse(theme *t, const char *name, const char *text, char *msg, int msglen);
/* Reads a file and parses it. */
int theme_load_file(theme *t, const char *path, char *msg, int msglen);
/* The built-in theme used when no file is found (same as themes/dark.theme). */
void theme_builtin(theme *t);

/* Resolves one colour for a terminal depth: -1 is the terminal default;
 * otherwise an index below depth, or the 24-bit value for THEME_DEPTH_TRUE. */
int32_t theme_color_resolve(color_spec c, theme_depth depth);
/* Nearest xterm-256 index of an RGB colour, and nearest of the first n (8 or
 * 16) ANSI colours. */
int theme_rgb_to_256(uint32_t rgb);
int theme_rgb_to_ansi(uint32_t rgb, int n);
/* RGB of an xterm-256 index. */
uint32_t theme_index_rgb(int idx);

/* Depth from the environment: NO_COLOR set and non-empty -> NONE; else the
 * terminal's colour count from terminfo (a direct-colour terminfo such as
 * xterm-direct reports 2^24 and gets RGB; tmux-256color gets 256). A forced
 * depth (--colors) of 0 means "detect". */
theme_depth theme_depth_detect(int ncolors, const char *no_color, int forced);

#endif
