/* test_tui_theme.c — theme parsing (every shipped themes/NAME.theme), error
 * messages, and colour degradation truecolor -> 256 -> 16 -> 8 -> none. */
#include <dirent.h>
#include <string.h>

#include "harness.h"
#include "theme.h"

int main(void)
{
    theme t;
    char msg[256];
    int rc = theme_parse(&t, "x", "# c\nnormal = default\nuser = #ff0000 on 17 bold underline\nerror = bright-red\n",
                         msg, sizeof msg);
    CHECK("parse_ok", rc == 0, "%s", msg);
    CHECK("parse_rgb_fg", t.st[TH_USER].fg.kind == COLOR_SPEC_RGB && t.st[TH_USER].fg.value == 0xff0000, "kind %d",
          t.st[TH_USER].fg.kind);
    CHECK("parse_index_bg", t.st[TH_USER].bg.kind == COLOR_SPEC_INDEX && t.st[TH_USER].bg.value == 17, "bg");
    CHECK("parse_attrs", t.st[TH_USER].attrs == (THEME_A_BOLD | THEME_A_UNDERLINE), "attrs %d", t.st[TH_USER].attrs);
    CHECK("parse_named", t.st[TH_ERROR].fg.kind == COLOR_SPEC_INDEX && t.st[TH_ERROR].fg.value == 9, "named");
    CHECK("parse_unset_inherits_normal", t.st[TH_SPARK].fg.kind == COLOR_SPEC_DEFAULT, "spark");

    rc = theme_parse(&t, "bad.theme", "normal = default\nfrobnicate = red\n", msg, sizeof msg);
    CHECK("parse_unknown_key", rc != 0 && strstr(msg, "bad.theme:2") && strstr(msg, "frobnicate"), "%s", msg);
    rc = theme_parse(&t, "bad.theme", "user = #12345\n", msg, sizeof msg);
    CHECK("parse_bad_colour", rc != 0 && strstr(msg, ":1:"), "%s", msg);
    rc = theme_parse(&t, "bad.theme", "user = red on\n", msg, sizeof msg);
    CHECK("parse_on_without_bg", rc != 0, "accepted");
    rc = theme_parse(&t, "bad.theme", "user red\n", msg, sizeof msg);
    CHECK("parse_no_equals", rc != 0, "accepted");

    /* Degradation of one colour through every depth. */
    color_spec red = {COLOR_SPEC_RGB, 0xff0000};
    CHECK("resolve_true", theme_color_resolve(red, THEME_DEPTH_TRUE) == 0xff0000, "");
    CHECK("resolve_256", theme_color_resolve(red, THEME_DEPTH_256) == 196, "got %d",
          theme_color_resolve(red, THEME_DEPTH_256));
    CHECK("resolve_16", theme_color_resolve(red, THEME_DEPTH_16) == 9, "got %d", theme_color_resolve(red, THEME_DEPTH_16));
    CHECK("resolve_8", theme_color_resolve(red, THEME_DEPTH_8) == 1, "got %d", theme_color_resolve(red, THEME_DEPTH_8));
    CHECK("resolve_none", theme_color_resolve(red, THEME_DEPTH_NONE) == -1, "");
    color_spec grey = {COLOR_SPEC_RGB, 0x808080};
    int g = theme_color_resolve(grey, THEME_DEPTH_256);
    CHECK("resolve_grey_ramp", g == 244, "got %d", g);
    color_spec idx = {COLOR_SPEC_INDEX, 208}; /* orange, above 16 */
    int o16 = theme_color_resolve(idx, THEME_DEPTH_16);
    CHECK("resolve_index_down", o16 == 9 || o16 == 11 || o16 == 3, "got %d", o16);
    CHECK("resolve_index_true", theme_color_resolve(idx, THEME_DEPTH_TRUE) == 0xff8700, "got %x",
          theme_color_resolve(idx, THEME_DEPTH_TRUE));
    CHECK("resolve_default", theme_color_resolve((color_spec){COLOR_SPEC_DEFAULT, 0}, THEME_DEPTH_256) == -1, "");
    /* Index <-> RGB round trip on the cube and ramp. */
    int rt = 1;
    for (int i = 16; i < 256; i++)
        if (theme_rgb_to_256(theme_index_rgb(i)) != i)
            rt = 0;
    CHECK("rgb_256_round_trip", rt, "an xterm-256 entry does not map to itself");

    CHECK("depth_no_color", theme_depth_detect(256, "1", 0) == THEME_DEPTH_NONE, "");
    CHECK("depth_empty_no_color_ignored", theme_depth_detect(256, "", 0) == THEME_DEPTH_256, "");
    CHECK("depth_direct", theme_depth_detect(1 << 24, NULL, 0) == THEME_DEPTH_TRUE, "");
    CHECK("depth_8", theme_depth_detect(8, NULL, 0) == THEME_DEPTH_8, "");
    CHECK("depth_forced_16", theme_depth_detect(256, NULL, 16) == THEME_DEPTH_16, "");
    CHECK("depth_forced_none", theme_depth_detect(256, NULL, -1) == THEME_DEPTH_NONE, "");

    theme_builtin(&t);
    CHECK("builtin", t.st[TH_BAR_ACTIVE].set && t.st[TH_MEM_FREE].set, "");

    /* Every shipped theme parses and sets every element. */
    const char *dir = "themes";
    DIR *d = opendir(dir);
    int count = 0;
    if (!d) {
        th_skip("shipped_themes", "themes/ not found (run from the project root)");
    } else {
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t l = strlen(e->d_name);
            if (l < 7 || strcmp(e->d_name + l - 6, ".theme"))
                continue;
            char path[512], name[300];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            rc = theme_load_file(&t, path, msg, sizeof msg);
            int all = 1;
            for (int k = 0; k < TH_COUNT; k++)
                if (!t.st[k].set)
                    all = 0;
            snprintf(name, sizeof name, "theme_file_%s", e->d_name);
            CHECK(name, rc == 0 && all, "%s", rc ? msg : "an element is missing");
            count++;
        }
        closedir(d);
        CHECK("shipped_themes_at_least_3", count >= 3, "found %d", count);
    }
    return th_exit();
}
