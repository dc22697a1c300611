/* test_tui_commands.c — the slash-command table (tui/commands.c): lookup,
 * prefixes, argument checks, /help and man output generated from the table
 * (and man/qchat.1 in sync with it); the session JSON (tui/convo.c) round trip
 * and rejection of bad files; the meters (tui/meters.c). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "convo.h"
#include "harness.h"
#include "meters.h"

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *b = malloc(1 << 20);
    size_t n = b ? fread(b, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (b)
        b[n] = 0;
    return b;
}

int main(void)
{
    const char *args;
    char msg[256];
    const cmd_def *c = cmd_parse("/swap FP8", &args, msg, sizeof msg);
    CHECK("parse_swap", c && c->id == CMD_SWAP && !strcmp(args, "FP8"), "%s", c ? args : msg);
    c = cmd_parse("/sw   ./dir  ", &args, msg, sizeof msg);
    CHECK("parse_prefix", c && c->id == CMD_SWAP && !strcmp(args, "./dir  "), "%s", c ? args : msg);
    c = cmd_parse("/s x", &args, msg, sizeof msg);
    CHECK("parse_ambiguous", !c && strstr(msg, "ambiguous"), "%s", msg);
    c = cmd_parse("/nope", &args, msg, sizeof msg);
    CHECK("parse_unknown", !c && strstr(msg, "unknown"), "%s", msg);
    c = cmd_parse("/load", &args, msg, sizeof msg);
    CHECK("parse_missing_arg", !c && strstr(msg, "usage: /load FILE"), "%s", msg);
    c = cmd_parse("/save", &args, msg, sizeof msg);
    CHECK("parse_optional_arg", c && c->id == CMD_SAVE && !*args, "%s", msg);
    int ids_ok = 1;
    for (int i = 0; i < CMD_COUNT; i++)
        if ((int)cmd_table[i].id != i || !cmd_table[i].help[0])
            ids_ok = 0;
    CHECK("table_ids_in_order", ids_ok, "cmd_table rows must follow cmd_id order");
    static const char *const required[] = {"swap", "models", "think", "regen", "clear", "system",
                                           "set", "save", "load", "stats", "quit", "help",
                                           "compare", "drift"};
    int have = 1;
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        char line[32];
        snprintf(line, sizeof line, "/%s x", required[i]);
        c = cmd_parse(line, &args, msg, sizeof msg);
        if (!c || strcmp(c->name, required[i]))
            have = 0;
    }
    CHECK("table_has_issue_commands", have, "a command of issue 6 or product.md is missing");
    c = cmd_parse("/drift on BF16", &args, msg, sizeof msg);
    CHECK("parse_drift_args", c && c->id == CMD_DRIFT && !strcmp(args, "on BF16"), "%s", c ? args : msg);
    c = cmd_parse("/c", &args, msg, sizeof msg);
    CHECK("parse_clear_compare_ambiguous", !c && strstr(msg, "ambiguous"), "%s", msg);

    char key[32], val[32];
    CHECK("assign", cmd_split_assign(" temperature = 0.7 ", key, 32, val, 32) == 0 && !strcmp(key, "temperature") &&
          !strcmp(val, "0.7"), "%s=%s", key, val);
    CHECK("assign_bad", cmd_split_assign("temperature", key, 32, val, 32) != 0 &&
          cmd_split_assign("=3", key, 32, val, 32) != 0, "accepted");

    char *buf = NULL;
    size_t blen = 0;
    FILE *m = open_memstream(&buf, &blen);
    cmd_write_help(m);
    fclose(m);
    int lines = 0;
    for (size_t i = 0; i < blen; i++)
        lines += buf[i] == '\n';
    CHECK("help_one_line_per_command", lines == CMD_COUNT && strstr(buf, "/swap FAMILY|DIR"), "%d lines", lines);
    free(buf);
    m = open_memstream(&buf, &blen);
    cmd_write_man(m);
    fclose(m);
    CHECK("man_markup", strstr(buf, ".BI \"/swap \" \"FAMILY|DIR\"") && strstr(buf, ".B \"/quit\""), "%s", buf);
    /* The man page carries exactly the generated COMMANDS body. */
    char *page = slurp("man/qchat.1");
    if (!page) {
        th_skip("man_commands_in_sync", "man/qchat.1 not found (run from the project root)");
    } else {
        CHECK("man_commands_in_sync", strstr(page, buf) != NULL,
              "man/qchat.1 COMMANDS differ from the table: run tools/man-commands.sh");
        free(page);
    }
    free(buf);

    /* Session JSON round trip. */
    convo a, b;
    convo_init(&a);
    convo_set_text(&a.system, "be brief", 8);
    a.think = false;
    a.sampling.temperature = 0.25;
    a.sampling.seed = 42;
    convo_add(&a, CONVO_USER, "h\xc3\xa9llo \"q\"\n", NULL);
    convo_turn *t = convo_add(&a, CONVO_ASSISTANT, "answer", "thought");
    snprintf(t->format, sizeof t->format, "FP8");
    t->n_reasoning = 12;
    t->n_answer = 3;
    t->secs = 1.25;
    t->stopped = t->full = true; /* (a reply that filled the context) */
    t = convo_add(&a, CONVO_ASSISTANT, "cut", ""); /* a reply cut at max_tokens */
    t->stopped = t->cut = true;
    t = convo_add(&a, CONVO_ASSISTANT, "", ""); /* a reply the engine failed */
    convo_set_text(&t->error, "logits not finite", 17);
    int32_t ids[] = {1001, 5, 6, 1002, 0, 1023};
    convo_set_tokens(&a, ids, 6);
    char path[] = "/tmp/qchat-test-convoXXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0)
        close(fd);
    char sub[512];
    snprintf(sub, sizeof sub, "%s.d/nested/s.json", path);
    int rc = convo_save(&a, sub, msg, sizeof msg);
    CHECK("save_creates_dirs", rc == 0, "%s", msg);
    rc = convo_load(sub, &b, msg, sizeof msg);
    int same = rc == 0 && !strcmp(b.system, "be brief") && !b.think && b.sampling.temperature == 0.25 &&
               b.sampling.seed == 42 && b.n == 4 && b.turns[0].role == CONVO_USER &&
               !strcmp(b.turns[0].text, "h\xc3\xa9llo \"q\"\n") && !strcmp(b.turns[1].reasoning, "thought") &&
               !strcmp(b.turns[1].format, "FP8") && b.turns[1].n_reasoning == 12 && b.turns[1].stopped && b.turns[1].secs == 1.25 &&
               !b.turns[1].cut && b.turns[1].full && b.turns[2].stopped && b.turns[2].cut && !b.turns[2].full && !b.turns[1].error &&
               b.turns[3].error && !strcmp(b.turns[3].error, "logits not finite") &&
               b.n_tokens == 6 && !memcmp(b.tokens, ids, sizeof ids);
    CHECK("save_load_round_trip", same, "%s", rc ? msg : "fields differ");
    if (rc == 0)
        convo_free(&b);
    char tmpname[600];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", sub, (long)getpid());
    CHECK("save_leaves_no_temp", access(tmpname, F_OK) != 0, "temp file left behind");
    unlink(sub);
    snprintf(sub, sizeof sub, "%s.d/nested", path);
    rmdir(sub);
    snprintf(sub, sizeof sub, "%s.d", path);
    rmdir(sub);
    unlink(path);

    convo_init(&b);
    b.n_tokens = 7;
    static const char *const bad[] = {"{", "{\"turns\":[],\"tokens\":[]}",
                                      "{\"qchat_session\":1,\"turns\":[{\"role\":\"x\",\"text\":\"a\"}],\"tokens\":[]}",
                                      "{\"qchat_session\":1,\"turns\":[],\"tokens\":[1.5]}",
                                      "{\"qchat_session\":1,\"turns\":[],\"tokens\":[-1]}"};
    int rejected = 1;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (convo_from_json(bad[i], strlen(bad[i]), &b, msg, sizeof msg) == 0 || b.n_tokens != 7)
            rejected = 0;
    CHECK("load_rejects_bad_json", rejected, "a malformed session was accepted or clobbered the target");
    b.n_tokens = 0;
    convo_free(&b);
    rc = convo_load("/nonexistent/qchat.json", &b, msg, sizeof msg);
    CHECK("load_missing_file", rc != 0 && strstr(msg, "/nonexistent/qchat.json"), "%s", msg);
    rc = convo_load("/tmp", &b, msg, sizeof msg);
    CHECK("load_directory", rc != 0 && strstr(msg, "/tmp: is a directory"), "%s", msg);
    convo_free(&a);

    /* Meters. */
    double v[] = {5, 1, 4, 2, 3};
    CHECK("percentile_p50", meter_percentile(v, 5, 50) == 3, "got %g", meter_percentile(v, 5, 50));
    CHECK("percentile_p99", meter_percentile(v, 5, 99) > 4.95 && meter_percentile(v, 5, 99) < 5, "got %g",
          meter_percentile(v, 5, 99));
    char spark[64];
    int g = meter_sparkline(v, 5, 3, spark, sizeof spark);
    CHECK("sparkline", g == 3 && !strcmp(spark, "\xe2\x96\x88\xe2\x96\x81\xe2\x96\x85"), "%d %s", g, spark);
    int32_t loop[64], fresh[64];
    for (int i = 0; i < 64; i++) {
        loop[i] = i % 5;
        fresh[i] = i;
    }
    double ls = meter_loop_score(loop, 64, 4, 64), fs = meter_loop_score(fresh, 64, 4, 64);
    CHECK("loop_score", ls > 0.9 && fs == 0, "loop %g fresh %g", ls, fs);
    uint64_t mem[] = {1000, 0, 1, 500};
    int cells[4];
    meter_split(mem, 4, 20, cells);
    CHECK("split", cells[0] + cells[1] + cells[2] + cells[3] == 20 && cells[1] == 0 && cells[2] == 1 &&
          cells[0] > cells[3], "%d %d %d %d", cells[0], cells[1], cells[2], cells[3]);
    char num[32];
    meter_fmt_count(1234567, num, sizeof num);
    CHECK("fmt_count", !strcmp(num, "1,234,567"), "%s", num);
    meter_fmt_bytes(19100000000ull, num, sizeof num);
    CHECK("fmt_bytes", !strcmp(num, "19.1 GB"), "%s", num);
    return th_exit();
}
