/*
 * A JSON parser (RFC 8259) small enough to read: recursive descent into
 * struct json, a depth limit, UTF-8 checked, \u escapes with surrogate
 * pairs. Lines are short, so the tree is plain malloc'ed memory.
 */
#include "cli/json.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/utf8.h"

#define JSON_DEPTH_MAX 32

struct parser {
    const unsigned char *p;
    const unsigned char *start;
    const unsigned char *end;
    char *err;
    size_t err_size;
    int failed;
};

static void fail(struct parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
fail(struct parser *ps, const char *fmt, ...)
{
    if (ps->failed)
        return;
    ps->failed = 1;
    int n = snprintf(ps->err, ps->err_size, "at column %zu: ", (size_t)(ps->p - ps->start) + 1);
    if (n < 0 || (size_t)n >= ps->err_size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err + n, ps->err_size - (size_t)n, fmt, ap);
    va_end(ap);
}

static void
skip_space(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static size_t
utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12);
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18);
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

static int
hex4(struct parser *ps, uint32_t *out)
{
    uint32_t v = 0;

    if (ps->end - ps->p < 4) {
        fail(ps, "\\u needs four hex digits");
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        unsigned char c = *ps->p++;
        unsigned d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else {
            ps->p--;
            fail(ps, "\\u needs four hex digits");
            return -1;
        }
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

/* At the opening quote. The decoded string is never longer than the source. */
static int
parse_string(struct parser *ps, struct json *out)
{
    const unsigned char *q = ++ps->p;
    while (q < ps->end && *q != '"')
        q += *q == '\\' && q + 1 < ps->end ? 2 : 1;
    char *buf = ds_malloc((size_t)(q - ps->p) + 1);
    size_t n = 0;

    for (;;) {
        if (ps->p >= ps->end) {
            fail(ps, "unterminated string");
            break;
        }
        unsigned char c = *ps->p;
        if (c == '"') {
            ps->p++;
            buf[n] = '\0';
            out->type = JSON_STRING;
            out->text = buf;
            out->length = n;
            return 0;
        }
        if (c < 0x20) {
            fail(ps, "control character in a string (escape it)");
            break;
        }
        if (c != '\\') {
            size_t len = utf8_decode((const char *)ps->p, (size_t)(ps->end - ps->p), NULL);
            if (len == 0) {
                fail(ps, "invalid UTF-8 in a string");
                break;
            }
            memcpy(buf + n, ps->p, len);
            n += len;
            ps->p += len;
            continue;
        }
        ps->p++;
        if (ps->p >= ps->end) {
            fail(ps, "unterminated string");
            break;
        }
        c = *ps->p++;
        switch (c) {
        case '"': buf[n++] = '"'; continue;
        case '\\': buf[n++] = '\\'; continue;
        case '/': buf[n++] = '/'; continue;
        case 'b': buf[n++] = '\b'; continue;
        case 'f': buf[n++] = '\f'; continue;
        case 'n': buf[n++] = '\n'; continue;
        case 'r': buf[n++] = '\r'; continue;
        case 't': buf[n++] = '\t'; continue;
        case 'u': break;
        default:
            /* The reason goes to a terminal: a byte that is not printable
             * ASCII is said in hex, as in fail_unexpected(). */
            ps->p--;
            if (c > 0x20 && c < 0x7f)
                fail(ps, "unknown escape \\%c", c);
            else
                fail(ps, "unknown escape: byte 0x%02x after a backslash", c);
            free(buf);
            return -1;
        }
        uint32_t cp, low;
        if (hex4(ps, &cp) == -1)
            break;
        if (cp >= 0xdc00 && cp <= 0xdfff) {
            fail(ps, "lone low surrogate \\u%04X", (unsigned)cp);
            break;
        }
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                fail(ps, "high surrogate \\u%04X without its low half", (unsigned)cp);
                break;
            }
            ps->p += 2;
            if (hex4(ps, &low) == -1)
                break;
            if (low < 0xdc00 || low > 0xdfff) {
                fail(ps, "high surrogate \\u%04X without its low half", (unsigned)cp);
                break;
            }
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
        }
        n += utf8_put(buf + n, cp);
    }
    free(buf);
    return -1;
}

static int
parse_number(struct parser *ps, struct json *out)
{
    const unsigned char *s = ps->p;

    if (ps->p < ps->end && *ps->p == '-')
        ps->p++;
    if (ps->p < ps->end && *ps->p == '0') {
        ps->p++;
    } else if (ps->p < ps->end && *ps->p >= '1' && *ps->p <= '9') {
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    } else {
        fail(ps, "bad number");
        return -1;
    }
    if (ps->p < ps->end && *ps->p == '.') {
        ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') {
            fail(ps, "bad number");
            return -1;
        }
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') {
            fail(ps, "bad number");
            return -1;
        }
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    out->type = JSON_NUMBER;
    out->length = (size_t)(ps->p - s);
    out->text = ds_strndup((const char *)s, out->length);
    return 0;
}

/* At a byte that starts no value. */
static void
fail_unexpected(struct parser *ps)
{
    unsigned char c = *ps->p;
    if (c > 0x20 && c < 0x7f)
        fail(ps, "unexpected character '%c'", c);
    else
        fail(ps, "unexpected byte 0x%02x", c);
}

static int
parse_word(struct parser *ps, const char *word, enum json_type type, struct json *out)
{
    size_t len = strlen(word);

    if ((size_t)(ps->end - ps->p) < len || memcmp(ps->p, word, len) != 0) {
        fail_unexpected(ps);
        return -1;
    }
    ps->p += len;
    out->type = type;
    return 0;
}

static int parse_value(struct parser *ps, struct json *out, int depth);

static void
append(struct json *parent, size_t *capacity, const struct json *child)
{
    if (parent->count == *capacity) {
        *capacity = *capacity ? *capacity * 2 : 8;
        parent->items = ds_realloc(parent->items, *capacity * sizeof *parent->items);
    }
    parent->items[parent->count++] = *child;
}

/* At '[' or '{'. */
static int
parse_container(struct parser *ps, struct json *out, int depth)
{
    int object = *ps->p == '{';
    unsigned char close = object ? '}' : ']';
    size_t capacity = 0;
    struct json child;

    out->type = object ? JSON_OBJECT : JSON_ARRAY;
    ps->p++;
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return 0;
    }
    for (;;) {
        skip_space(ps);
        if (object) {
            if (ps->p >= ps->end || *ps->p != '"') {
                fail(ps, "expected a key in quotes");
                return -1;
            }
            memset(&child, 0, sizeof child);
            if (parse_string(ps, &child) == -1)
                return -1;
            append(out, &capacity, &child);
            skip_space(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                fail(ps, "expected ':' after a key");
                return -1;
            }
            ps->p++;
        }
        memset(&child, 0, sizeof child);
        if (parse_value(ps, &child, depth + 1) == -1) {
            json_free(&child);
            return -1;
        }
        append(out, &capacity, &child);
        skip_space(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return 0;
        }
        fail(ps, "expected ',' or '%c'", close);
        return -1;
    }
}

static int
parse_value(struct parser *ps, struct json *out, int depth)
{
    if (depth > JSON_DEPTH_MAX) {
        fail(ps, "nested more than %d deep", JSON_DEPTH_MAX);
        return -1;
    }
    skip_space(ps);
    if (ps->p >= ps->end) {
        fail(ps, "expected a value");
        return -1;
    }
    switch (*ps->p) {
    case '{':
    case '[':
        return parse_container(ps, out, depth);
    case '"':
        return parse_string(ps, out);
    case 't':
        return parse_word(ps, "true", JSON_TRUE, out);
    case 'f':
        return parse_word(ps, "false", JSON_FALSE, out);
    case 'n':
        return parse_word(ps, "null", JSON_NULL, out);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
            return parse_number(ps, out);
        fail_unexpected(ps);
        return -1;
    }
}

int
json_parse(const char *text, size_t len, struct json *out, char *err, size_t err_size)
{
    struct parser ps = {
        .p = (const unsigned char *)text, .start = (const unsigned char *)text,
        .end = (const unsigned char *)text + len, .err = err, .err_size = err_size,
    };

    memset(out, 0, sizeof *out);
    if (parse_value(&ps, out, 0) == -1) {
        json_free(out);
        return -1;
    }
    skip_space(&ps);
    if (ps.p < ps.end) {
        fail(&ps, "text after the value");
        json_free(out);
        return -1;
    }
    return 0;
}

void
json_free(struct json *v)
{
    for (size_t i = 0; i < v->count; i++)
        json_free(&v->items[i]);
    free(v->items);
    free(v->text);
    memset(v, 0, sizeof *v);
}

const char *
json_type_name(enum json_type type)
{
    switch (type) {
    case JSON_NULL: return "null";
    case JSON_FALSE:
    case JSON_TRUE: return "a boolean";
    case JSON_NUMBER: return "a number";
    case JSON_STRING: return "a string";
    case JSON_ARRAY: return "an array";
    default: return "an object";
    }
}

void
json_write_string(FILE *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;

    putc('"', out);
    while (p < end) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            putc('\\', out);
            putc(c, out);
            p++;
        } else if (c == '\n') {
            fputs("\\n", out);
            p++;
        } else if (c == '\t') {
            fputs("\\t", out);
            p++;
        } else if (c == '\r') {
            fputs("\\r", out);
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(out, "\\u%04x", c);
            p++;
        } else if (c < 0x80) {
            putc(c, out);
            p++;
        } else {
            uint32_t cp;
            size_t n = utf8_decode((const char *)p, (size_t)(end - p), &cp);
            if (n == 0) {
                fputs("\\ufffd", out);
                p++;
            } else if (cp >= 0x80 && cp <= 0x9f) {
                /* C1 controls (U+009B is a CSI): valid JSON raw, but they
                 * reach terminals; escaped like C0's. */
                fprintf(out, "\\u%04x", (unsigned)cp);
                p += n;
            } else {
                fwrite(p, 1, n, out);
                p += n;
            }
        }
    }
    putc('"', out);
}
