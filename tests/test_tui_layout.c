/* test_tui_layout.c — pane rectangles at many terminal sizes (tui/layout.c):
 * inside the screen, no overlaps, every pane present on usable sizes, side by
 * side when wide, stacked when narrow, and the status line on the last row. */
#include "harness.h"
#include "layout.h"

static int overlap(const rect *a, const rect *b)
{
    if (a->h <= 0 || a->w <= 0 || b->h <= 0 || b->w <= 0)
        return 0;
    return a->y < b->y + b->h && b->y < a->y + a->h && a->x < b->x + b->w && b->x < a->x + a->w;
}

int main(void)
{
    static const int sizes[][2] = {{24, 80}, {48, 160}, {20, 60}, {60, 200}, {12, 40}, {30, 99},
                                   {30, 100}, {8, 30}, {2, 10}, {1, 5}, {100, 300}, {16, 70}};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        for (int collapsed = 0; collapsed < 2; collapsed++) {
            for (int inl = 1; inl <= 3; inl += 2) {
                int rows = sizes[si][0], cols = sizes[si][1];
                layout L;
                layout_compute(&L, rows, cols, collapsed, inl);
                const rect *r[16];
                const char *nm[16];
                int n = layout_rects(&L, r, nm, 16);
                char name[96];
                int inside = 1, disjoint = 1;
                for (int i = 0; i < n; i++) {
                    if (r[i]->h > 0 && (r[i]->y < 0 || r[i]->x < 0 || r[i]->y + r[i]->h > rows ||
                                        r[i]->x + r[i]->w > cols))
                        inside = 0;
                    for (int j = i + 1; j < n; j++)
                        if (overlap(r[i], r[j]))
                            disjoint = 0;
                }
                snprintf(name, sizeof name, "layout_%dx%d_c%d_i%d_inside", cols, rows, collapsed, inl);
                CHECK(name, inside, "a pane leaves the screen");
                snprintf(name, sizeof name, "layout_%dx%d_c%d_i%d_disjoint", cols, rows, collapsed, inl);
                CHECK(name, disjoint, "two panes overlap");
                if (rows >= 16 && cols >= 40) {
                    int all = L.bar.h == 1 && L.conv.h >= 2 && L.reason.h >= 1 && L.lat.h >= 1 &&
                              L.tok.h >= 1 && L.vram.h >= 1 && L.input.h >= 1 && L.status.h == 1 &&
                              L.status.y == rows - 1 && L.input.y + L.input.h == rows - 1;
                    snprintf(name, sizeof name, "layout_%dx%d_c%d_i%d_all_panes", cols, rows, collapsed, inl);
                    CHECK(name, all, "conv h %d reason h %d lat %d vram %d status y %d", L.conv.h,
                          L.reason.h, L.lat.h, L.vram.h, L.status.y);
                    /* Rows are fully used: nothing left blank between panes. */
                    int used = L.bar.h + L.conv.h + L.rule1.h + L.lat.h + L.tok.h + L.vram.h +
                               L.rule2.h + L.input.h + L.status.h + (L.side_by_side ? 0 : L.reason.h);
                    snprintf(name, sizeof name, "layout_%dx%d_c%d_i%d_rows_used", cols, rows, collapsed, inl);
                    CHECK(name, used == rows, "used %d of %d rows", used, rows);
                }
            }
        }
    }
    layout L;
    layout_compute(&L, 48, 160, false, 1);
    CHECK("layout_wide_side_by_side", L.side_by_side && L.reason.x > L.conv.x + L.conv.w - 1 &&
          L.reason.y == L.conv.y && L.conv.w > L.reason.w, "side %d", L.side_by_side);
    layout_compute(&L, 24, 80, false, 1);
    CHECK("layout_narrow_stacked", !L.side_by_side && L.reason.y > L.conv.y && L.reason.w == 80,
          "side %d", L.side_by_side);
    layout_compute(&L, 48, 160, true, 1);
    CHECK("layout_collapsed_reasoning_one_row", !L.side_by_side && L.reason.h == 1 && L.conv.w == 160,
          "reason h %d", L.reason.h);
    layout_compute(&L, 1, 5, false, 1);
    CHECK("layout_tiny_only_input", L.input.h == 1 && L.conv.h == 0, "input %d", L.input.h);
    return th_exit();
}
