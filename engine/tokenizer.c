/* tokenizer.c — byte-level BPE from tokenizer.json; see tokenizer.h.
 *
 * Layout: every token (vocab and added) lives in toks[id] with its spelling
 * and the bytes it decodes to. Two open-addressing tables serve encoding:
 * spelling -> id and (left id, right id) -> (rank, merged id). BPE on one
 * pre-tokenized piece starts from one symbol per byte and repeatedly merges
 * the adjacent pair of lowest rank (leftmost on ties), popping candidates
 * from a binary heap and discarding stale ones — the order Hugging Face's
 * Word::merge_all uses, so the ids are identical. A small cache maps pieces
 * already seen to their ids; it is the one mutable part, behind a mutex. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "detok.h"

/* Ids above this are refused: the token table is indexed by id. */
#define QC_TOK_MAX_ID (1 << 24)

typedef struct tok_entry {
    char *str;      /* spelling in the file, NUL-terminated; NULL for a gap */
    char *bytes;    /* what it decodes to */
    uint32_t nbytes;
    uint8_t added, special;
} tok_entry;

typedef struct added_tok {
    const char *s; /* points into toks[id].str */
    size_t len;
    int32_t id;
} added_tok;

typedef struct merge_slot {
    uint64_t key; /* (left << 32) | right; MERGE_EMPTY when free */
    uint32_t rank;
    int32_t new_id;
} merge_slot;
#define MERGE_EMPTY UINT64_MAX

/* Piece -> ids cache. Entries live in one arena; when it fills up the whole
 * cache is dropped (cheap and good enough: text re-warms it at once). */
#define CACHE_SLOTS 65536 /* power of two; at most half used */
#define CACHE_ARENA (4u << 20)
#define CACHE_MAX_PIECE 48
typedef struct cache_slot {
    uint64_t hash;
    uint32_t off; /* arena offset of: u8 piece len, piece, u8 n ids, ids (int32, aligned) */
    uint32_t used;
} cache_slot;

struct qc_tokenizer {
    char name[512];
    tok_entry *toks;
    int n_tokens;
    int32_t *vhash; /* spelling -> id, for model.vocab entries; -1 free */
    size_t vhash_mask;
    merge_slot *mtab;
    size_t mtab_mask;
    int32_t byte_id[256]; /* id of the one-byte token of each byte, or -1 */
    added_tok *added;     /* longest first */
    size_t n_added;
    uint8_t added_first[256]; /* 1 when some added token starts with this byte */
    bool nfc, ignore_merges;
    pcre2_code *re;
    pcre2_code *re_ws; /* re with U+180E treated as Unicode does; see rewrite_white_space */
    pthread_mutex_t lock;
    cache_slot *cache;
    unsigned char *arena;
    size_t arena_used, cache_count;
};

/* ---------------------------------------------------------------- bytes */

/* GPT-2 byte-level table: printable bytes stand for themselves, the other
 * 68 (0..32, 127..160, 173) are shifted to U+0100.. in byte order. */
static bool bl_printable(int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174; }

static int bl_cp_of_byte(int b)
{
    if (bl_printable(b))
        return b;
    if (b <= 32)
        return 256 + b;
    if (b <= 160)
        return 256 + 33 + (b - 127);
    return 256 + 33 + 34; /* 173 */
}

/* Code point -> byte, or -1 when the code point is not in the table. */
static int bl_byte_of_cp(int32_t cp)
{
    if (cp >= 0 && cp < 256)
        return bl_printable(cp) ? cp : -1;
    if (cp >= 256 && cp < 256 + 33)
        return cp - 256;
    if (cp >= 256 + 33 && cp < 256 + 67)
        return cp - 256 - 33 + 127;
    return cp == 256 + 67 ? 173 : -1;
}

static size_t utf8_put(char *o, int cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2; /* table code points are < 0x800 */
}

bool qc_utf8_valid(const char *s, size_t len, size_t *bad_off)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        } else
            goto bad;
        if ((size_t)need >= len - i)
            goto bad;
        if (p[i + 1] < lo || p[i + 1] > hi)
            goto bad;
        for (int k = 2; k <= need; k++)
            if ((p[i + k] & 0xC0) != 0x80)
                goto bad;
        i += (size_t)need + 1;
    }
    return true;
bad:
    if (bad_off)
        *bad_off = i;
    return false;
}

/* ---------------------------------------------------------------- hashing */

static uint64_t hash_bytes(const void *s, size_t n)
{
    const unsigned char *p = s;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t key)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ull;
    key ^= key >> 33;
    return key;
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

static int32_t vocab_lookup(const qc_tokenizer *t, const char *s, size_t n)
{
    if (!t->vhash)
        return -1;
    for (size_t i = hash_bytes(s, n) & t->vhash_mask;; i = (i + 1) & t->vhash_mask) {
        int32_t id = t->vhash[i];
        if (id < 0)
            return -1;
        const char *ts = t->toks[id].str;
        if (strncmp(ts, s, n) == 0 && ts[n] == '\0')
            return id;
    }
}

static void vocab_insert(qc_tokenizer *t, int32_t id)
{
    const char *s = t->toks[id].str;
    size_t i = hash_bytes(s, strlen(s)) & t->vhash_mask;
    while (t->vhash[i] >= 0)
        i = (i + 1) & t->vhash_mask;
    t->vhash[i] = id;
}

static const merge_slot *merge_lookup(const qc_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = hash_pair(key) & t->mtab_mask;; i = (i + 1) & t->mtab_mask) {
        const merge_slot *m = &t->mtab[i];
        if (m->key == key)
            return m;
        if (m->key == MERGE_EMPTY)
            return NULL;
    }
}

/* Later duplicates overwrite earlier ones, as a HashMap built in file order. */
static void merge_insert(qc_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = hash_pair(key) & t->mtab_mask;
    while (t->mtab[i].key != MERGE_EMPTY && t->mtab[i].key != key)
        i = (i + 1) & t->mtab_mask;
    t->mtab[i].key = key;
    t->mtab[i].rank = rank;
    t->mtab[i].new_id = new_id;
}

/* ---------------------------------------------------------------- loading */

static int load_fail(qc_tokenizer *t, qc_err *err, const char *fmt, const char *detail)
{
    qc_err_set(err, QC_EXIT_CHECKPOINT, fmt, t->name, detail ? detail : "");
    return QC_EXIT_CHECKPOINT;
}

/* Spelling -> decoded bytes: every char through the byte table, or, when a
 * char is not in it, the spelling's own bytes (Hugging Face's ByteLevel
 * decoder does the same per token). */
static int token_set_bytes(tok_entry *e)
{
    size_t n = strlen(e->str);
    e->bytes = malloc(n ? n : 1);
    if (!e->bytes)
        return -1;
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)e->str;
    size_t i = 0, o = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(n - i), &cp);
        int b = k > 0 ? bl_byte_of_cp(cp) : -1;
        if (b < 0) {
            memcpy(e->bytes, e->str, n);
            e->nbytes = (uint32_t)n;
            return 0;
        }
        e->bytes[o++] = (char)b;
        i += (size_t)k;
    }
    e->nbytes = (uint32_t)o;
    return 0;
}

static int json_bool(const cJSON *o, const char *key, bool dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v);
    return dflt;
}

static const char *json_type(const cJSON *o)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The GPT-2 split pattern, used by a ByteLevel pre-tokenizer with use_regex. */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* PCRE2 (its \h list) counts U+180E MONGOLIAN VOWEL SEPARATOR as white
 * space; Unicode's White_Space property, which the Rust regex engines behind
 * Hugging Face tokenizers use, has not since Unicode 6.3. Rewrite every \s and
 * \S (alone or inside a character class) so U+180E falls on the same side:
 *   \s -> (?:(?!\x{180E})\s)      \S -> (?:\x{180E}|\S)
 *   [..\s..] -> (?:(?!\x{180E})[..\s..])   [^..\s..] -> (?:\x{180E}|[^..\s..])
 *   and the mirror images for \S. Returns a malloc'd pattern or NULL. */
#define WS_NOT180E "(?!\\x{180E})"
static char *rewrite_white_space(const char *pat)
{
    size_t n = strlen(pat);
    char *out = malloc(n * 24 + 1); /* each char grows at most ~20x */
    if (!out)
        return NULL;
    size_t o = 0, i = 0;
#define EMIT(str) (memcpy(out + o, (str), strlen(str)), o += strlen(str))
    while (i < n) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            if (pat[i + 1] == 's')
                EMIT("(?:" WS_NOT180E "\\s)");
            else if (pat[i + 1] == 'S')
                EMIT("(?:\\x{180E}|\\S)");
            else {
                out[o++] = c;
                out[o++] = pat[i + 1];
            }
            i += 2;
            continue;
        }
        if (c != '[') {
            out[o++] = c;
            i++;
            continue;
        }
        /* A character class: find its end, note \s / \S inside. */
        size_t j = i + 1;
        bool neg = j < n && pat[j] == '^';
        if (neg)
            j++;
        if (j < n && pat[j] == ']')
            j++; /* a leading ] is literal */
        bool has_s = false, has_S = false;
        while (j < n && pat[j] != ']') {
            if (pat[j] == '\\' && j + 1 < n) {
                has_s |= pat[j + 1] == 's';
                has_S |= pat[j + 1] == 'S';
                j += 2;
            } else if (pat[j] == '[' && j + 1 < n && pat[j + 1] == ':') {
                const char *e = strstr(pat + j + 2, ":]");
                j = e ? (size_t)(e - pat) + 2 : j + 1;
            } else
                j++;
        }
        size_t end = j < n ? j + 1 : n;
        /* Whether U+180E must be added to (+1) or removed from (-1) the class. */
        int fix = has_s == has_S ? 0 : ((has_s != neg) ? -1 : +1);
        if (fix < 0)
            EMIT("(?:" WS_NOT180E);
        else if (fix > 0)
            EMIT("(?:\\x{180E}|");
        memcpy(out + o, pat + i, end - i);
        o += end - i;
        if (fix)
            out[o++] = ')';
        i = end;
    }
#undef EMIT
    out[o] = '\0';
    return out;
}

static int compile_regex(qc_tokenizer *t, const char *pat, uint32_t extra, qc_err *err)
{
    int ec;
    PCRE2_SIZE eoff;
    char *fixed = extra & PCRE2_LITERAL ? NULL : rewrite_white_space(pat);
    if (!(extra & PCRE2_LITERAL) && !fixed)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory compiling the regex of %s", t->name);
    /* The rewritten pattern is slower (lookaheads in hot loops), so it is only
     * used on text that contains U+180E at all. */
    t->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | extra,
                          &ec, &eoff, NULL);
    if (t->re && fixed && strcmp(fixed, pat) != 0) {
        t->re_ws = pcre2_compile((PCRE2_SPTR)fixed, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                 &ec, &eoff, NULL);
        if (!t->re_ws) {
            pcre2_code_free(t->re);
            t->re = NULL;
        } else
            (void)pcre2_jit_compile(t->re_ws, PCRE2_JIT_COMPLETE);
    }
    free(fixed);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: pre_tokenizer regex does not compile at offset %zu: %s", t->name,
                          (size_t)eoff, (const char *)msg);
    }
    /* JIT is several times faster; without it (no JIT support) matching still works. */
    (void)pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);
    return QC_OK;
}

static int parse_split(qc_tokenizer *t, const cJSON *pt, qc_err *err)
{
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
    const cJSON *beh = cJSON_GetObjectItemCaseSensitive(pt, "behavior");
    if (!cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated") != 0)
        return load_fail(t, err, "%s: unsupported Split behavior (only \"Isolated\")%s", NULL);
    if (json_bool(pt, "invert", false))
        return load_fail(t, err, "%s: unsupported Split with invert: true%s", NULL);
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
    if (t->re)
        return load_fail(t, err, "%s: more than one split pattern in pre_tokenizer%s", NULL);
    if (cJSON_IsString(re))
        return compile_regex(t, re->valuestring, 0, err);
    if (cJSON_IsString(lit))
        return compile_regex(t, lit->valuestring, PCRE2_LITERAL, err);
    return load_fail(t, err, "%s: Split pre_tokenizer without a pattern.Regex string%s", NULL);
}

static int parse_byte_level_pre(qc_tokenizer *t, const cJSON *pt, qc_err *err)
{
    if (json_bool(pt, "add_prefix_space", false))
        return load_fail(t, err, "%s: unsupported ByteLevel pre_tokenizer with add_prefix_space%s",
                         NULL);
    if (json_bool(pt, "use_regex", true)) {
        if (t->re)
            return load_fail(t, err, "%s: more than one split pattern in pre_tokenizer%s", NULL);
        return compile_regex(t, GPT2_PATTERN, 0, err);
    }
    return QC_OK;
}

static int parse_pre_tokenizer(qc_tokenizer *t, const cJSON *pt, qc_err *err)
{
    const char *type = json_type(pt);
    bool have_byte_level = false;
    if (!type)
        return load_fail(t, err, "%s: missing or untyped pre_tokenizer%s", NULL);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
        if (!cJSON_IsArray(list))
            return load_fail(t, err, "%s: pre_tokenizer Sequence without pretokenizers%s", NULL);
        const cJSON *it;
        cJSON_ArrayForEach(it, list)
        {
            const char *ty = json_type(it);
            int rc;
            if (ty && !strcmp(ty, "Split")) {
                if (have_byte_level)
                    return load_fail(t, err, "%s: unsupported pre_tokenizer order (Split after ByteLevel)%s", NULL);
                rc = parse_split(t, it, err);
            } else if (ty && !strcmp(ty, "ByteLevel")) {
                have_byte_level = true;
                rc = parse_byte_level_pre(t, it, err);
            } else
                return load_fail(t, err, "%s: unsupported pre_tokenizer %s", ty ? ty : "(untyped)");
            if (rc)
                return rc;
        }
    } else if (!strcmp(type, "ByteLevel")) {
        have_byte_level = true;
        int rc = parse_byte_level_pre(t, pt, err);
        if (rc)
            return rc;
    } else
        return load_fail(t, err, "%s: unsupported pre_tokenizer %s", type);
    if (!have_byte_level)
        return load_fail(t, err, "%s: pre_tokenizer has no ByteLevel step (not a byte-level BPE)%s",
                         NULL);
    return QC_OK;
}

static int parse_normalizer(qc_tokenizer *t, const cJSON *n, qc_err *err)
{
    if (!n || cJSON_IsNull(n))
        return QC_OK;
    const char *type = json_type(n);
    if (type && !strcmp(type, "NFC")) {
        t->nfc = true;
        return QC_OK;
    }
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(n, "normalizers"))
        {
            int rc = parse_normalizer(t, it, err);
            if (rc)
                return rc;
        }
        return QC_OK;
    }
    return load_fail(t, err, "%s: unsupported normalizer %s", type ? type : "(untyped)");
}

static int parse_decoder(qc_tokenizer *t, const cJSON *d, qc_err *err)
{
    const char *type = json_type(d);
    if (type && !strcmp(type, "ByteLevel"))
        return QC_OK;
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        if (cJSON_GetArraySize(list) == 1)
            return parse_decoder(t, cJSON_GetArrayItem(list, 0), err);
    }
    return load_fail(t, err, "%s: unsupported decoder %s (only ByteLevel)",
                     type ? type : "(missing)");
}

static int parse_vocab(qc_tokenizer *t, const cJSON *vocab, const cJSON *added, qc_err *err)
{
    int max_id = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab)
    {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= QC_TOK_MAX_ID ||
            it->valuedouble != (double)(int)it->valuedouble)
            return load_fail(t, err, "%s: model.vocab entry \"%s\" has no valid id", it->string);
        if (it->valueint > max_id)
            max_id = it->valueint;
    }
    cJSON_ArrayForEach(it, added)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= QC_TOK_MAX_ID ||
            !cJSON_IsString(content) || !content->valuestring[0])
            return load_fail(t, err, "%s: added_tokens entry without a valid id and content%s",
                             NULL);
        if (id->valueint > max_id)
            max_id = id->valueint;
    }
    if (max_id < 0)
        return load_fail(t, err, "%s: model.vocab is empty%s", NULL);
    t->n_tokens = max_id + 1;
    t->toks = qc_calloc((size_t)t->n_tokens, sizeof *t->toks, err, "token table");
    size_t nv = (size_t)cJSON_GetArraySize(vocab);
    t->vhash_mask = pow2_at_least(nv * 2 + 1) - 1;
    t->vhash = qc_malloc((t->vhash_mask + 1) * sizeof *t->vhash, err, "vocab table");
    if (!t->toks || !t->vhash)
        return QC_EXIT_RUNTIME;
    memset(t->vhash, 0xff, (t->vhash_mask + 1) * sizeof *t->vhash);
    cJSON_ArrayForEach(it, vocab)
    {
        tok_entry *e = &t->toks[it->valueint];
        if (e->str)
            return load_fail(t, err, "%s: model.vocab gives one id to two tokens (\"%s\")",
                             it->string);
        if (vocab_lookup(t, it->string, strlen(it->string)) >= 0)
            return load_fail(t, err, "%s: model.vocab lists \"%s\" twice", it->string);
        e->str = strdup(it->string);
        if (!e->str || token_set_bytes(e))
            return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory loading %s", t->name);
        vocab_insert(t, it->valueint);
    }
    size_t na = (size_t)cJSON_GetArraySize(added);
    t->added = qc_calloc(na, sizeof *t->added, err, "added tokens");
    if (!t->added)
        return QC_EXIT_RUNTIME;
    cJSON_ArrayForEach(it, added)
    {
        int id = cJSON_GetObjectItemCaseSensitive(it, "id")->valueint;
        const char *content = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        tok_entry *e = &t->toks[id];
        if (e->str && strcmp(e->str, content) != 0)
            return load_fail(t, err, "%s: added token \"%s\" reuses the id of another token",
                             content);
        if (!e->str) {
            e->str = strdup(content);
            if (!e->str || token_set_bytes(e))
                return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory loading %s", t->name);
        }
        e->added = 1;
        e->special = (uint8_t)json_bool(it, "special", false);
        added_tok *a = &t->added[t->n_added++];
        a->s = e->str;
        a->len = strlen(e->str);
        a->id = id;
        t->added_first[(unsigned char)a->s[0]] = 1;
    }
    /* Longest first: at one position the longest added token wins. */
    for (size_t i = 1; i < t->n_added; i++)
        for (size_t j = i; j > 0 && t->added[j - 1].len < t->added[j].len; j--) {
            added_tok tmp = t->added[j];
            t->added[j] = t->added[j - 1];
            t->added[j - 1] = tmp;
        }
    return QC_OK;
}

static int parse_merges(qc_tokenizer *t, const cJSON *merges, qc_err *err)
{
    size_t nm = (size_t)cJSON_GetArraySize(merges);
    t->mtab_mask = pow2_at_least(nm * 2 + 1) - 1;
    t->mtab = qc_malloc((t->mtab_mask + 1) * sizeof *t->mtab, err, "merge table");
    if (!t->mtab)
        return QC_EXIT_RUNTIME;
    for (size_t i = 0; i <= t->mtab_mask; i++)
        t->mtab[i].key = MERGE_EMPTY;
    char *cat = NULL;
    size_t catcap = 0;
    uint32_t rank = 0;
    const cJSON *it;
    int rc = QC_OK;
    cJSON_ArrayForEach(it, merges)
    {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(it)) {
            a = it->valuestring;
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' ') || sp == a || !sp[1]) {
                rc = qc_err_set(err, QC_EXIT_CHECKPOINT,
                                "%s: merge %u \"%.80s\" is not two tokens separated by one space",
                                t->name, rank, a);
                break;
            }
            la = (size_t)(sp - a);
            b = sp + 1;
            lb = strlen(b);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            a = cJSON_GetArrayItem(it, 0)->valuestring;
            b = cJSON_GetArrayItem(it, 1)->valuestring;
            la = strlen(a);
            lb = strlen(b);
        } else {
            rc = qc_err_set(err, QC_EXIT_CHECKPOINT,
                            "%s: merge %u is neither \"a b\" nor [\"a\", \"b\"]", t->name, rank);
            break;
        }
        if (la + lb + 1 > catcap) {
            catcap = (la + lb + 1) * 2;
            char *nc = realloc(cat, catcap);
            if (!nc) {
                rc = qc_err_set(err, QC_EXIT_RUNTIME, "out of memory loading %s", t->name);
                break;
            }
            cat = nc;
        }
        memcpy(cat, a, la);
        memcpy(cat + la, b, lb);
        cat[la + lb] = '\0';
        int32_t ia = vocab_lookup(t, a, la), ib = vocab_lookup(t, b, lb);
        int32_t im = vocab_lookup(t, cat, la + lb);
        if (ia < 0 || ib < 0 || im < 0) {
            rc = qc_err_set(err, QC_EXIT_CHECKPOINT,
                            "%s: merge %u (\"%.*s\" + \"%.*s\"): %s is not in model.vocab",
                            t->name, rank, (int)(la > 60 ? 60 : la), a, (int)(lb > 60 ? 60 : lb),
                            b, ia < 0 ? "the left part" : ib < 0 ? "the right part" : "the result");
            break;
        }
        merge_insert(t, ia, ib, rank, im);
        rank++;
    }
    free(cat);
    return rc;
}

static int parse_model(qc_tokenizer *t, const cJSON *root, qc_err *err)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model))
        return load_fail(t, err, "%s: no \"model\" object%s", NULL);
    const char *type = json_type(model);
    if (type && strcmp(type, "BPE") != 0)
        return load_fail(t, err, "%s: model type %s is not BPE", type);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(vocab))
        return load_fail(t, err, "%s: no model.vocab object%s", NULL);
    if (!cJSON_IsArray(merges))
        return load_fail(t, err, "%s: no model.merges array%s", NULL);
    if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added))
        return load_fail(t, err, "%s: added_tokens is not an array%s", NULL);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble != 0)
        return load_fail(t, err, "%s: unsupported BPE dropout%s", NULL);
    if (json_bool(model, "byte_fallback", false))
        return load_fail(t, err, "%s: unsupported BPE byte_fallback%s", NULL);
    const char *affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, affix[i]);
        if (cJSON_IsString(v) && v->valuestring[0])
            return load_fail(t, err, "%s: unsupported BPE %s", affix[i]);
    }
    t->ignore_merges = json_bool(model, "ignore_merges", false);
    int rc = parse_vocab(t, vocab, cJSON_IsArray(added) ? added : NULL, err);
    if (!rc)
        rc = parse_merges(t, merges, err);
    if (rc)
        return rc;
    for (int b = 0; b < 256; b++) {
        char s[3];
        size_t n = utf8_put(s, bl_cp_of_byte(b));
        t->byte_id[b] = vocab_lookup(t, s, n);
    }
    return QC_OK;
}

int qc_tokenizer_load_json(const char *json, size_t len, const char *name, qc_tokenizer **out,
                           qc_err *err)
{
    *out = NULL;
    qc_tokenizer *t = qc_calloc(1, sizeof *t, err, "tokenizer");
    if (!t)
        return QC_EXIT_RUNTIME;
    snprintf(t->name, sizeof t->name, "%s", name ? name : "tokenizer.json");
    pthread_mutex_init(&t->lock, NULL);
    int rc;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        rc = load_fail(t, err, "%s: not a JSON object (cannot parse)%s", NULL);
    } else {
        rc = parse_model(t, root, err);
        if (!rc)
            rc = parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err);
        if (!rc)
            rc = parse_pre_tokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                                     err);
        if (!rc)
            rc = parse_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), err);
    }
    cJSON_Delete(root);
    if (rc) {
        qc_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return QC_OK;
}

int qc_tokenizer_load(const char *path, qc_tokenizer **out, qc_err *err)
{
    *out = NULL;
    struct stat st;
    char *file;
    if (stat(path, &st) != 0)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: not found (want a checkpoint directory or its tokenizer.json)",
                          path);
    if (S_ISDIR(st.st_mode))
        file = qc_path_join(path, "tokenizer.json");
    else
        file = strdup(path);
    if (!file)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    char *json;
    size_t len;
    int rc = qc_read_file(file, &json, &len, QC_EXIT_CHECKPOINT, err);
    if (!rc) {
        rc = qc_tokenizer_load_json(json, len, file, out, err);
        free(json);
    }
    free(file);
    return rc;
}

void qc_tokenizer_free(qc_tokenizer *t)
{
    if (!t)
        return;
    for (int i = 0; t->toks && i < t->n_tokens; i++) {
        free(t->toks[i].str);
        free(t->toks[i].bytes);
    }
    free(t->toks);
    free(t->vhash);
    free(t->mtab);
    free(t->added);
    free(t->cache);
    free(t->arena);
    if (t->re)
        pcre2_code_free(t->re);
    if (t->re_ws)
        pcre2_code_free(t->re_ws);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* ---------------------------------------------------------------- queries */

int qc_tokenizer_n_tokens(const qc_tokenizer *t) { return t->n_tokens; }

int32_t qc_tokenizer_find(const qc_tokenizer *t, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].s, s, n))
            return t->added[i].id;
    return vocab_lookup(t, s, n);
}

const char *qc_tokenizer_token_bytes(const qc_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_tokens || !t->toks[id].str)
        return NULL;
    *len = t->toks[id].nbytes;
    return t->toks[id].bytes;
}

const char *qc_tokenizer_token_str(const qc_tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->n_tokens)
        return NULL;
    return t->toks[id].str;
}

bool qc_tokenizer_is_added(const qc_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_tokens && t->toks[id].added;
}

bool qc_tokenizer_is_special(const qc_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_tokens && t->toks[id].special;
}

/* ---------------------------------------------------------------- encoding */

typedef struct bpe_sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    bool alive;
} bpe_sym;

typedef struct heap_ent {
    uint32_t rank;
    int32_t pos;         /* left symbol of the pair */
    int32_t left, right; /* the pair's ids when queued */
    int32_t new_id;
} heap_ent;

typedef struct enc_ctx {
    qc_tokenizer *t;
    int32_t *ids;
    size_t n, cap;
    bpe_sym *sym;
    size_t symcap;
    heap_ent *heap;
    size_t nheap, heapcap;
    char *bl; /* byte-level spelling of a piece (ignore_merges lookups) */
    size_t blcap;
    char *norm; /* NFC of the current segment */
    size_t normcap;
    utf8proc_int32_t *cps; /* code points of one non-ASCII run */
    size_t cpscap;
    pcre2_match_data *md;
    qc_err *err;
} enc_ctx;

static int enc_oom(enc_ctx *c)
{
    return qc_err_set(c->err, QC_EXIT_RUNTIME, "out of memory while tokenizing");
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need)
        nc *= 2;
    void *np = realloc(*p, nc * elem);
    if (!np)
        return -1;
    *p = np;
    *cap = nc;
    return 0;
}

static int enc_push(enc_ctx *c, int32_t id)
{
    if (c->n == c->cap && grow((void **)&c->ids, &c->cap, c->n + 1, sizeof *c->ids))
        return enc_oom(c);
    c->ids[c->n++] = id;
    return QC_OK;
}

static bool heap_less(const heap_ent *a, const heap_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(enc_ctx *c, heap_ent e)
{
    size_t i = c->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &c->heap[p]))
            break;
        c->heap[i] = c->heap[p];
        i = p;
    }
    c->heap[i] = e;
}

static heap_ent heap_pop(enc_ctx *c)
{
    heap_ent top = c->heap[0], last = c->heap[--c->nheap];
    size_t i = 0, n = c->nheap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const heap_ent *best = &last;
        if (l < n && heap_less(&c->heap[l], best))
            m = l, best = &c->heap[l];
        if (r < n && heap_less(&c->heap[r], best))
            m = r;
        if (m == i)
            break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (n)
        c->heap[i] = last;
    return top;
}

static void push_pair(enc_ctx *c, int32_t pos)
{
    int32_t nx = c->sym[pos].next;
    if (nx < 0)
        return;
    const merge_slot *m = merge_lookup(c->t, c->sym[pos].id, c->sym[nx].id);
    if (m)
        heap_push(c, (heap_ent){m->rank, pos, c->sym[pos].id, c->sym[nx].id, m->new_id});
}

/* Looks a piece up in the cache; on a hit its ids are appended. */
static bool cache_get(enc_ctx *c, const unsigned char *p, size_t n, uint64_t h)
{
    qc_tokenizer *t = c->t;
    if (!t->cache)
        return false;
    for (size_t i = h & (CACHE_SLOTS - 1); t->cache[i].used; i = (i + 1) & (CACHE_SLOTS - 1)) {
        if (t->cache[i].hash != h)
            continue;
        const unsigned char *e = t->arena + t->cache[i].off;
        uint32_t np, ni;
        memcpy(&np, e, 4);
        memcpy(&ni, e + 4, 4);
        if (np != n || memcmp(e + 8, p, n) != 0)
            continue;
        if (grow((void **)&c->ids, &c->cap, c->n + ni, sizeof *c->ids))
            return false; /* recomputed below, which reports the failure */
        memcpy(c->ids + c->n, e + 8 + ((n + 3) & ~(size_t)3), ni * sizeof(int32_t));
        c->n += ni;
        return true;
    }
    return false;
}

static void cache_put(enc_ctx *c, const unsigned char *p, size_t n, uint64_t h,
                      const int32_t *ids, size_t ni)
{
    qc_tokenizer *t = c->t;
    if (!t->cache) {
        t->cache = calloc(CACHE_SLOTS, sizeof *t->cache);
        t->arena = malloc(CACHE_ARENA);
        if (!t->cache || !t->arena) {
            free(t->cache);
            free(t->arena);
            t->cache = NULL;
            t->arena = NULL;
            return; /* no cache: slower, still correct */
        }
    }
    size_t need = 8 + ((n + 3) & ~(size_t)3) + ni * sizeof(int32_t);
    if (t->cache_count >= CACHE_SLOTS / 2 || t->arena_used + need > CACHE_ARENA) {
        memset(t->cache, 0, CACHE_SLOTS * sizeof *t->cache);
        t->arena_used = 0;
        t->cache_count = 0;
    }
    size_t i = h & (CACHE_SLOTS - 1);
    while (t->cache[i].used)
        i = (i + 1) & (CACHE_SLOTS - 1);
    unsigned char *e = t->arena + t->arena_used;
    uint32_t np = (uint32_t)n, nn = (uint32_t)ni;
    memcpy(e, &np, 4);
    memcpy(e + 4, &nn, 4);
    memcpy(e + 8, p, n);
    memcpy(e + 8 + ((n + 3) & ~(size_t)3), ids, ni * sizeof(int32_t));
    t->cache[i] = (cache_slot){h, (uint32_t)t->arena_used, 1};
    t->arena_used += need;
    t->cache_count++;
}

/* BPE of one pre-tokenized piece (raw bytes). */
static int bpe_piece(enc_ctx *c, const unsigned char *p, size_t n)
{
    const qc_tokenizer *t = c->t;
    if (n == 0)
        return QC_OK;
    if (n == 1) {
        int32_t id = t->byte_id[p[0]];
        return id >= 0 ? enc_push(c, id) : QC_OK;
    }
    uint64_t h = 0;
    bool cacheable = n <= CACHE_MAX_PIECE;
    if (cacheable) {
        h = hash_bytes(p, n);
        if (cache_get(c, p, n, h))
            return QC_OK;
    }
    if (t->ignore_merges) {
        /* The whole piece as one token when the vocab has it. */
        if (grow((void **)&c->bl, &c->blcap, 2 * n, 1))
            return enc_oom(c);
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            k += utf8_put(c->bl + k, bl_cp_of_byte(p[i]));
        int32_t id = vocab_lookup(t, c->bl, k);
        if (id >= 0)
            return enc_push(c, id);
    }
    if (grow((void **)&c->sym, &c->symcap, n, sizeof *c->sym) ||
        grow((void **)&c->heap, &c->heapcap, 3 * n + 1, sizeof *c->heap))
        return enc_oom(c);
    /* One symbol per byte; a byte without a token is dropped, as Hugging
     * Face does when there is no unk token. */
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[p[i]];
        if (id < 0)
            continue;
        c->sym[m] = (bpe_sym){id, m - 1, -1, true};
        if (m > 0)
            c->sym[m - 1].next = m;
        m++;
    }
    c->nheap = 0;
    for (int32_t i = 0; i + 1 < m; i++)
        push_pair(c, i);
    while (c->nheap) {
        heap_ent e = heap_pop(c);
        bpe_sym *s = &c->sym[e.pos];
        if (!s->alive || s->next < 0)
            continue;
        bpe_sym *r = &c->sym[s->next];
        if (s->id != e.left || r->id != e.right)
            continue; /* stale: one side merged since this pair was queued */
        s->id = e.new_id;
        r->alive = false;
        s->next = r->next;
        if (r->next >= 0)
            c->sym[r->next].prev = e.pos;
        if (s->prev >= 0)
            push_pair(c, s->prev);
        push_pair(c, e.pos);
    }
    size_t first = c->n;
    for (int32_t i = m ? 0 : -1; i >= 0; i = c->sym[i].next)
        if (enc_push(c, c->sym[i].id))
            return QC_EXIT_RUNTIME;
    if (cacheable)
        cache_put(c, p, n, h, c->ids + first, c->n - first);
    return QC_OK;
}

/* NFC of s[0..n) into c->norm (*out_len bytes). Only runs of non-ASCII
 * characters, with the ASCII character before each (it may be the starter a
 * following mark composes with), go through utf8proc: ASCII never composes
 * onto a preceding character and has combining class 0, so every other
 * boundary is stable and plain ASCII is copied as is. */
static int nfc(enc_ctx *c, const char *s, size_t n, size_t *out_len)
{
    if (grow((void **)&c->norm, &c->normcap, n + 1, 1))
        return enc_oom(c);
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0, i = 0;
    while (i < n) {
        size_t a = i;
        while (i < n && u[i] < 0x80)
            i++;
        if (i == n) {
            memcpy(c->norm + o, s + a, i - a);
            o += i - a;
            break;
        }
        size_t start = i > a ? i - 1 : i; /* keep the starter with the run */
        memcpy(c->norm + o, s + a, start - a);
        o += start - a;
        while (i < n && u[i] >= 0x80)
            i++;
        /* Decompose into code points, compose, re-encode in place. */
        for (;;) {
            utf8proc_ssize_t k = utf8proc_decompose(u + start, (utf8proc_ssize_t)(i - start), c->cps,
                                                    (utf8proc_ssize_t)c->cpscap,
                                                    UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (k < 0)
                return qc_err_set(c->err, QC_EXIT_USAGE, "NFC normalisation failed: %s",
                                  utf8proc_errmsg(k));
            if ((size_t)k + 1 <= c->cpscap) {
                k = utf8proc_reencode(c->cps, k, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
                if (k < 0)
                    return qc_err_set(c->err, QC_EXIT_USAGE, "NFC normalisation failed: %s",
                                      utf8proc_errmsg(k));
                if (grow((void **)&c->norm, &c->normcap, o + (size_t)k + (n - i) + 1, 1))
                    return enc_oom(c);
                memcpy(c->norm + o, c->cps, (size_t)k);
                o += (size_t)k;
                break;
            }
            if (grow((void **)&c->cps, &c->cpscap, (size_t)k + 1, sizeof *c->cps))
                return enc_oom(c);
        }
    }
    *out_len = o;
    return QC_OK;
}

/* Normalises one segment (text between added tokens), splits it with the
 * pre-tokenizer regex and BPE-encodes every piece. */
static int encode_segment(enc_ctx *c, const char *s, size_t n)
{
    const qc_tokenizer *t = c->t;
    if (n == 0)
        return QC_OK;
    if (t->nfc) {
        size_t k = 0;
        int rc = nfc(c, s, n, &k);
        if (rc)
            return rc;
        s = c->norm;
        n = k;
    }
    int rc = QC_OK;
    const unsigned char *u = (const unsigned char *)s;
    if (!t->re)
        return bpe_piece(c, u, n);
    const pcre2_code *re = t->re_ws && memmem(s, n, "\xE1\xA0\x8E", 3) ? t->re_ws : t->re;
    PCRE2_SIZE pos = 0, gap = 0;
    while (pos < n) {
        int m = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, c->md, NULL);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            rc = qc_err_set(c->err, QC_EXIT_RUNTIME, "%s: pre_tokenizer regex failed: %s",
                            t->name, (const char *)msg);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        PCRE2_SIZE ms = ov[0], me = ov[1];
        if (me <= ms) {
            /* An empty match splits nothing: step over one character. */
            pos = ms + 1;
            while (pos < n && (u[pos] & 0xC0) == 0x80)
                pos++;
            continue;
        }
        if (ms > gap && (rc = bpe_piece(c, u + gap, ms - gap)))
            break;
        if ((rc = bpe_piece(c, u + ms, me - ms)))
            break;
        gap = pos = me;
    }
    if (!rc && gap < n)
        rc = bpe_piece(c, u + gap, n - gap);
    return rc;
}

int qc_tokenizer_encode(const qc_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                        size_t *n, qc_err *err)
{
    *ids = NULL;
    *n = 0;
    size_t bad;
    if (!qc_utf8_valid(text, len, &bad))
        return qc_err_set(err, QC_EXIT_USAGE, "text is not valid UTF-8 (byte %zu)", bad);
    /* The cache and the match data are the mutable parts; one encode at a time. */
    qc_tokenizer *t = (qc_tokenizer *)tok;
    enc_ctx c = {.t = t, .err = err};
    if (t->re) {
        c.md = pcre2_match_data_create_from_pattern(t->re, NULL);
        if (!c.md)
            return enc_oom(&c);
    }
    pthread_mutex_lock(&t->lock);
    int rc = QC_OK;
    const unsigned char *u = (const unsigned char *)text;
    size_t seg = 0, i = 0;
    while (i < len && !rc) {
        if (!t->added_first[u[i]]) {
            i++;
            continue;
        }
        const added_tok *hit = NULL;
        for (size_t k = 0; k < t->n_added; k++) {
            const added_tok *a = &t->added[k];
            if (a->len <= len - i && !memcmp(text + i, a->s, a->len)) {
                hit = a;
                break;
            }
        }
        if (!hit) {
            i++;
            continue;
        }
        rc = encode_segment(&c, text + seg, i - seg);
        if (!rc)
            rc = enc_push(&c, hit->id);
        i += hit->len;
        seg = i;
    }
    if (!rc)
        rc = encode_segment(&c, text + seg, len - seg);
    pthread_mutex_unlock(&t->lock);
    if (c.md)
        pcre2_match_data_free(c.md);
    free(c.sym);
    free(c.heap);
    free(c.bl);
    free(c.norm);
    free(c.cps);
    if (rc) {
        free(c.ids);
        return rc;
    }
    *ids = c.ids;
    *n = c.n;
    return QC_OK;
}

/* ---------------------------------------------------------------- decoding */

int qc_tokenizer_decode(const qc_tokenizer *t, const int32_t *ids, size_t n, char **text,
                        size_t *len, qc_err *err)
{
    *text = NULL;
    if (len)
        *len = 0;
    qc_detok d;
    qc_detok_init(&d, t);
    char *out = NULL;
    size_t nout = 0, cap = 0;
    int rc = QC_OK;
    for (size_t i = 0; i <= n && !rc; i++) {
        const char *piece;
        size_t np;
        if (i < n) {
            const char *b = qc_tokenizer_token_bytes(t, ids[i], &np);
            if (!b) {
                rc = qc_err_set(err, QC_EXIT_USAGE, "id %d is not a token (n_tokens %d)",
                                (int)ids[i], t->n_tokens);
                break;
            }
            rc = qc_detok_push_bytes(&d, b, np, &piece, &np, err);
        } else
            rc = qc_detok_flush(&d, &piece, &np, err);
        if (rc)
            break;
        if (grow((void **)&out, &cap, nout + np + 1, 1)) {
            rc = qc_err_set(err, QC_EXIT_RUNTIME, "out of memory decoding %zu ids", n);
            break;
        }
        memcpy(out + nout, piece, np);
        nout += np;
    }
    qc_detok_free(&d);
    if (rc) {
        free(out);
        return rc;
    }
    if (!out && !(out = malloc(1)))
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory decoding");
    out[nout] = '\0';
    *text = out;
    if (len)
        *len = nout;
    return QC_OK;
}
