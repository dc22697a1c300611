/* layout.c — see layout.h. */
#include "layout.h"

#include <string.h>

static int imax(int a, int b) { return a > b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }

void layout_compute(layout *L, int rows, int cols, bool reason_collapsed, int input_lines)
{
    memset(L, 0, sizeof *L);
    rows = imax(rows, 0);
    cols = imax(cols, 0);
    L->rows = rows;
    L->cols = cols;
    if (rows < 3 || cols < 10) {
        /* Too small for anything but the prompt. */
        if (rows >= 1)
            L->input = (rect){rows - 1, 0, 1, cols};
        return;
    }
    input_lines = imax(1, imin(input_lines, imax(1, rows / 4)));

    /* Meter heights shrink first on short screens, then disappear. */
    int lat_h = 1, tok_h = 1, vram_h = 2, rules = 1;
    if (cols < 100 && rows >= 22)
        tok_h = 2; /* narrow: the loop meter gets its own row */
    if (cols < 90 && rows >= 30)
        lat_h = 2; /* and the sparkline */
    if (rows >= 24 && cols < 140)
        vram_h = 3; /* the legend needs two rows below the bar */
    if (rows < 16) {
        vram_h = 1;
        rules = 0;
    }
    if (rows < 11) {
        lat_h = tok_h = vram_h = 0;
        rules = 0;
    }
    int bottom = input_lines + 1; /* input + status */
    int stats = lat_h + tok_h + vram_h + (rules ? 2 : 0);
    int top_h = rows - 1 - stats - bottom;
    if (top_h < 2) {
        stats = 0;
        lat_h = tok_h = vram_h = rules = 0;
        top_h = rows - 1 - bottom;
    }

    int y = 0;
    L->bar = (rect){y++, 0, 1, cols};
    int top_y = y;
    if (!reason_collapsed && cols >= LAYOUT_SIDE_MIN_COLS && top_h >= 2) {
        L->side_by_side = true;
        int cw = (cols * 11) / 20; /* 55 % for the conversation */
        L->divider_x = cw;
        L->conv = (rect){top_y, 0, top_h, cw};
        L->reason = (rect){top_y, cw + 1, top_h, cols - cw - 1};
    } else {
        int rh;
        if (reason_collapsed)
            rh = 1;
        else
            rh = imax(2, top_h * 2 / 5);
        if (top_h - rh < 2)
            rh = imax(top_h - 2, 0);
        L->conv = (rect){top_y, 0, top_h - rh, cols};
        L->reason = (rect){top_y + top_h - rh, 0, rh, cols};
    }
    y = top_y + top_h;
    if (rules)
        L->rule1 = (rect){y++, 0, 1, cols};
    L->lat = (rect){y, 0, lat_h, cols};
    y += lat_h;
    L->tok = (rect){y, 0, tok_h, cols};
    y += tok_h;
    L->vram = (rect){y, 0, vram_h, cols};
    y += vram_h;
    if (rules)
        L->rule2 = (rect){y++, 0, 1, cols};
    L->input = (rect){y, 0, input_lines, cols};
    y += input_lines;
    L->status = (rect){y, 0, 1, cols};
}

int layout_rects(const layout *L, const rect **out, const char **names, int max)
{
    const rect *all[] = {&L->bar, &L->conv, &L->reason, &L->rule1, &L->lat,
                         &L->tok, &L->vram, &L->rule2, &L->input, &L->status};
    static const char *const nm[] = {"bar", "conv", "reason", "rule1", "lat",
                                     "tok", "vram", "rule2", "input", "status"};
    int n = (int)(sizeof all / sizeof all[0]);
    for (int i = 0; i < n && i < max; i++) {
        out[i] = all[i];
        if (names)
            names[i] = nm[i];
    }
    return imin(n, max);
}
