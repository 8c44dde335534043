/*
 * W3C trace context: the checks, and the trace fields of a WorkItem's bytes
 * (trace.h).
 */
#include "core/trace.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/pbwire.h"

static int
lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int
upper_hex(char c)
{
    return c >= 'A' && c <= 'F';
}

/* Are the N chars at S lower-case hex? (*upper set if some were upper case) */
static int
hex_run(const char *s, size_t n, int *upper)
{
    for (size_t i = 0; i < n; i++) {
        if (upper_hex(s[i]))
            *upper = 1;
        else if (!lower_hex(s[i]))
            return 0;
    }
    return 1;
}

static int
all_zeros(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != '0')
            return 0;
    return 1;
}

const char *
trace_parent_invalid(const char *s, size_t len)
{
    int upper = 0;
    if (len < 2 || !hex_run(s, 2, &upper))
        return "does not start with a version (2 hex digits)";
    if (upper)
        return "has upper-case hex digits";
    if (memcmp(s, "00", 2) != 0)
        return "has a version other than 00";
    if (len != TRACE_PARENT_LEN)
        return "is not 55 characters long (version 00)";
    if (s[2] != '-' || s[35] != '-' || s[52] != '-')
        return "is not VERSION-TRACEID-PARENTID-FLAGS";
    if (!hex_run(s + 3, 32, &upper) || !hex_run(s + 36, 16, &upper) ||
        !hex_run(s + 53, 2, &upper))
        return "has a character that is not a hex digit";
    if (upper)
        return "has upper-case hex digits";
    if (all_zeros(s + 3, 32))
        return "has an all-zero trace-id";
    if (all_zeros(s + 36, 16))
        return "has an all-zero parent-id";
    return NULL;
}

static int
key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
           c == '*' || c == '/';
}

/* simple-key = lcalpha 0*255(key char); multi-tenant-key = tenant-id "@"
 * system-id, tenant-id = (lcalpha / DIGIT) 0*240(key char), system-id =
 * lcalpha 0*13(key char). */
static int
valid_key(const char *k, size_t n)
{
    const char *at = memchr(k, '@', n);
    if (at == NULL) {
        if (n < 1 || n > 256 || !(k[0] >= 'a' && k[0] <= 'z'))
            return 0;
        for (size_t i = 1; i < n; i++)
            if (!key_char(k[i]))
                return 0;
        return 1;
    }
    size_t tenant = (size_t)(at - k), system = n - tenant - 1;
    if (tenant < 1 || tenant > 241 || system < 1 || system > 14)
        return 0;
    if (!((k[0] >= 'a' && k[0] <= 'z') || (k[0] >= '0' && k[0] <= '9')))
        return 0;
    for (size_t i = 1; i < tenant; i++)
        if (!key_char(k[i]))
            return 0;
    if (!(at[1] >= 'a' && at[1] <= 'z'))
        return 0;
    for (size_t i = 2; i <= system; i++)
        if (!key_char(at[i]))
            return 0;
    return 1;
}

/* value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr; nblk-chr = %x21-2B /
 * %x2D-3C / %x3E-7E (printable ASCII but ',' and '='). */
static int
valid_value(const char *v, size_t n)
{
    if (n < 1 || n > 256 || v[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] < 0x20 || v[i] > 0x7e || v[i] == ',' || v[i] == '=')
            return 0;
    return 1;
}

static int
ows(char c)
{
    return c == ' ' || c == '\t';
}

const char *
trace_state_invalid(const char *s, size_t len)
{
    if (len > TRACE_STATE_MAX)
        return "is longer than 512 bytes";
    struct {
        const char *key;
        size_t len;
    } keys[TRACE_STATE_MEMBERS_MAX];
    size_t members = 0, i = 0;
    while (i <= len) {
        size_t end = i;
        while (end < len && s[end] != ',')
            end++;
        size_t a = i, b = end;
        while (a < b && ows(s[a]))
            a++;
        while (b > a && ows(s[b - 1]))
            b--;
        if (a < b) {        /* empty members are allowed */
            const char *eq = memchr(s + a, '=', b - a);
            if (eq == NULL)
                return "has a list-member that is not KEY=VALUE";
            size_t key_len = (size_t)(eq - (s + a));
            if (!valid_key(s + a, key_len))
                return "has an invalid key";
            if (!valid_value(eq + 1, (size_t)(s + b - (eq + 1))))
                return "has an invalid value";
            if (members == TRACE_STATE_MEMBERS_MAX)
                return "has more than 32 list-members";
            for (size_t j = 0; j < members; j++)
                if (keys[j].len == key_len && memcmp(keys[j].key, s + a, key_len) == 0)
                    return "has a key twice";
            keys[members].key = s + a;
            keys[members].len = key_len;
            members++;
        }
        i = end + 1;
    }
    return NULL;
}

/* ---- the trace fields of WorkItem bytes ---------------------------------- */

int
trace_of_work_item(const uint8_t *raw, size_t len, struct trace_context *out)
{
    memset(out, 0, sizeof *out);
    int found = 0;
    size_t i = 0;
    struct pbwire_field f;
    while (pbwire_next(raw, len, &i, &f) == 1) {
        if (f.number == TRACE_FIELD_PARENT) {
            found = 1;
            if (f.type == PBWIRE_LEN) {
                out->parent = (const char *)f.bytes;
                out->parent_len = f.len;
            }
        } else if (f.number == TRACE_FIELD_STATE) {
            found = 1;
            if (f.type == PBWIRE_LEN) {
                out->state = (const char *)f.bytes;
                out->state_len = f.len;
            }
        }
    }
    return found;
}

/* The value of the last param KEY of MSG, or NULL. */
static const char *
param(const wire_work_item *msg, const char *key)
{
    const char *value = NULL;
    for (size_t i = 0; i < msg->n_params; i++)
        if (strcmp(msg->params[i]->key, key) == 0)
            value = msg->params[i]->value;
    return value;
}

static void
say(char *why, size_t size, const char *what, const char *reason)
{
    size_t used = strlen(why);
    if (used < size)
        snprintf(why + used, size - used, "%s%s %s", used ? "; " : "", what, reason);
}

int
trace_choose(const wire_work_item *msg, const uint8_t *raw, size_t raw_len,
             const struct trace_context *call, struct trace_context *out, char *why,
             size_t why_size)
{
    why[0] = '\0';
    memset(out, 0, sizeof *out);
    /* The common case, at no cost: no trace from the call, no params, and
     * no field the decoder did not know (the trace fields are such). */
    if ((call == NULL || call->parent_len == 0) && msg->n_params == 0 &&
        msg->base.n_unknown_fields == 0)
        return 0;
    struct trace_context fields;
    int in_raw = trace_of_work_item(raw, raw_len, &fields);
    const char *p = param(msg, "traceparent"), *s = param(msg, "tracestate"), *bad;

    if (p != NULL && (bad = trace_parent_invalid(p, strlen(p))) != NULL)
        say(why, why_size, "param traceparent", bad);
    else if (p != NULL)
        *out = (struct trace_context){ .parent = p, .parent_len = strlen(p) };
    if (out->parent_len == 0 && in_raw && fields.parent_len > 0) {
        if ((bad = trace_parent_invalid(fields.parent, fields.parent_len)) != NULL) {
            say(why, why_size, "the WorkItem's traceparent field", bad);
        } else {
            out->parent = fields.parent;
            out->parent_len = fields.parent_len;
            if (fields.state_len > 0 &&
                (bad = trace_state_invalid(fields.state, fields.state_len)) != NULL)
                say(why, why_size, "the WorkItem's tracestate field", bad);
            else if (fields.state_len > 0) {
                out->state = fields.state;
                out->state_len = fields.state_len;
            }
        }
    }
    if (out->parent_len == 0 && call != NULL && call->parent_len > 0)
        *out = *call;
    if (s != NULL && s[0] != '\0') {
        if ((bad = trace_state_invalid(s, strlen(s))) != NULL) {
            say(why, why_size, "param tracestate", bad);
        } else if (out->parent_len > 0) {
            out->state = s;
            out->state_len = strlen(s);
        }
    }
    if (out->parent_len == 0) {
        out->state = NULL;
        out->state_len = 0;
    }
    /* RAW already holds exactly what was chosen (a handover's item, no
     * params): kept as it is. */
    if (in_raw && out->parent == fields.parent && out->state == fields.state &&
        out->parent_len == fields.parent_len && out->state_len == fields.state_len)
        return 0;
    return in_raw || out->parent_len > 0;
}

static uint8_t *
put_string(uint8_t *p, uint32_t number, const char *s, size_t len)
{
    p = pbwire_put_varint(p, (uint64_t)number << 3 | 2);
    p = pbwire_put_varint(p, len);
    memcpy(p, s, len);
    return p + len;
}

uint8_t *
trace_rewrite(const uint8_t *raw, size_t len, const struct trace_context *ctx, size_t *out_len)
{
    size_t extra = 0;
    if (ctx->parent_len > 0)
        extra += pbwire_varint_size((uint64_t)TRACE_FIELD_PARENT << 3) +
                 pbwire_varint_size(ctx->parent_len) + ctx->parent_len;
    if (ctx->parent_len > 0 && ctx->state_len > 0)
        extra += pbwire_varint_size((uint64_t)TRACE_FIELD_STATE << 3) +
                 pbwire_varint_size(ctx->state_len) + ctx->state_len;
    uint8_t *buf = ds_malloc(len + extra + 1), *p = buf;
    size_t i = 0, from = 0;
    struct pbwire_field f;
    while (pbwire_next(raw, len, &i, &f) == 1) {
        if (f.number == TRACE_FIELD_PARENT || f.number == TRACE_FIELD_STATE) {
            /* from..here is copied; the field itself (its tag at `from`
             * onwards up to i) is not */
            from = i;
            continue;
        }
        memcpy(p, raw + from, i - from);
        p += i - from;
        from = i;
    }
    if (from < len) {           /* a malformed tail: kept as it came */
        memcpy(p, raw + from, len - from);
        p += len - from;
    }
    if (ctx->parent_len > 0) {
        p = put_string(p, TRACE_FIELD_PARENT, ctx->parent, ctx->parent_len);
        if (ctx->state_len > 0)
            p = put_string(p, TRACE_FIELD_STATE, ctx->state, ctx->state_len);
    }
    *out_len = (size_t)(p - buf);
    return buf;
}
