/* layout.h — where each pane goes for a terminal size. Pure arithmetic, so it
 * is unit-tested at many sizes; the drawing code only fills the rectangles.
 *
 *   bar        row 0: model, formats ([ACTIVE]), device
 *   conv       Conversation (title row + text)
 *   reason     Reasoning (title row + text); one row when collapsed
 *   lat/tok/vram  the meters (label column + values)
 *   input      the prompt (grows with multi-line entry)
 *   status     last row: key hints or a message
 * Wide terminals put Conversation and Reasoning side by side; narrow ones
 * stack them. Every rectangle lies inside the screen and none overlap; when
 * the screen is too small a pane gets height 0 and is not drawn. */
#ifndef TUI_LAYOUT_H
#define TUI_LAYOUT_H

#include <stdbool.h>

typedef struct rect {
    int y, x, h, w;
} rect;

typedef struct layout {
    int rows, cols;
    rect bar, conv, reason, rule1, lat, tok, vram, rule2, input, status;
    bool side_by_side; /* conv | reason in columns (a divider column between) */
    int divider_x;     /* column of the divider when side_by_side */
} layout;

/* Columns from which Conversation and Reasoning sit side by side. */
#define LAYOUT_SIDE_MIN_COLS 100

void layout_compute(layout *L, int rows, int cols, bool reason_collapsed, int input_lines);

/* Rectangles of L in a fixed order, for tests and drawing loops. */
int layout_rects(const layout *L, const rect **out, const char **names, int max);

#endif
