/* Redis command arguments (redis_args.h). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "core/alloc.h"
#include "core/log.h"
#include "grpc/redis_args.h"

void
redis_args_init(struct redis_args *a, const char *name)
{
    a->argc = 0;
    a->overflow = 0;
    a->text_used = 0;
    redis_args_str(a, name);
}

void
redis_args_mem(struct redis_args *a, const void *p, size_t len)
{
    if (a->argc == REDIS_ARGS_MAX) {
        a->overflow = 1;
        return;
    }
    /* hiredis copies LEN bytes from the pointer: never hand it NULL. */
    a->argv[a->argc] = len > 0 ? p : "";
    a->len[a->argc] = len;
    a->argc++;
}

void
redis_args_str(struct redis_args *a, const char *s)
{
    redis_args_mem(a, s, strlen(s));
}

/* An argument formatted into A's text (including a NUL, handy in a debugger
 * and for the tests, not sent). */
static void __attribute__((format(printf, 2, 3)))
add_text(struct redis_args *a, const char *fmt, ...)
{
    size_t room = sizeof a->text - a->text_used;
    char *at = a->text + a->text_used;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(at, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= room || a->argc == REDIS_ARGS_MAX) {
        a->overflow = 1;
        return;
    }
    a->text_used += (size_t)n + 1;
    redis_args_mem(a, at, (size_t)n);
}

/* N in decimal at the end of BUF[24]: returns where it starts. Every
 * batch script formats a dozen numbers an item: printf was a tenth of the
 * grpc process's time in cluster mode. */
static char *
decimal(char buf[24], uint64_t n)
{
    char *p = buf + 24;
    do {
        *--p = (char)('0' + n % 10);
        n /= 10;
    } while (n != 0);
    return p;
}

void
redis_args_u64(struct redis_args *a, uint64_t n)
{
    add_text(a, "%" PRIu64, n);
}

void
redis_args_stream_id(struct redis_args *a, uint64_t ms, uint64_t seq)
{
    add_text(a, "%" PRIu64 "-%" PRIu64, ms, seq);
}

int
redis_args_send(struct redis_args *a, redisAsyncContext *ac, redisCallbackFn *fn, void *arg)
{
    if (a->overflow) {
        log_error("redis: not sending %.*s: over %d arguments or %d bytes of numbers",
                  a->len[0] < 32 ? (int)a->len[0] : 32, a->argv[0], REDIS_ARGS_MAX,
                  REDIS_ARGS_TEXT);
        return -1;
    }
    if (redisAsyncCommandArgv(ac, fn, arg, a->argc, a->argv, a->len) != REDIS_OK)
        return -1;
    return 0;
}

/* ---- commands of any size ------------------------------------------------ */

#define HEAD_ROOM 16            /* "*" and up to 10 digits and "\r\n" */

static void
cmd_reserve(struct redis_cmd *c, size_t more)
{
    if (c->cap - c->len >= more)
        return;
    size_t cap = c->cap ? c->cap : 4096;
    while (cap - c->len < more)
        cap *= 2;
    c->buf = ds_realloc(c->buf, cap);
    c->cap = cap;
}

void
redis_cmd_init(struct redis_cmd *c, const char *name)
{
    cmd_reserve(c, HEAD_ROOM);
    c->len = HEAD_ROOM;
    c->argc = 0;
    redis_cmd_str(c, name);
}

void
redis_cmd_mem(struct redis_cmd *c, const void *p, size_t len)
{
    cmd_reserve(c, len + 32);
    char digits[24];
    char *d = decimal(digits, len);
    size_t dn = (size_t)(digits + sizeof digits - d);
    c->buf[c->len++] = '$';
    memcpy(c->buf + c->len, d, dn);
    c->len += dn;
    c->buf[c->len++] = '\r';
    c->buf[c->len++] = '\n';
    if (len > 0)
        memcpy(c->buf + c->len, p, len);
    c->len += len;
    c->buf[c->len++] = '\r';
    c->buf[c->len++] = '\n';
    c->argc++;
}

void
redis_cmd_str(struct redis_cmd *c, const char *s)
{
    redis_cmd_mem(c, s, strlen(s));
}

void
redis_cmd_u64(struct redis_cmd *c, uint64_t n)
{
    char buf[24];
    char *d = decimal(buf, n);
    redis_cmd_mem(c, d, (size_t)(buf + sizeof buf - d));
}

const char *
redis_cmd_bytes(struct redis_cmd *c, size_t *len)
{
    char head[HEAD_ROOM + 1];
    int n = snprintf(head, sizeof head, "*%" PRIu32 "\r\n", c->argc);
    memcpy(c->buf + HEAD_ROOM - n, head, (size_t)n);
    *len = c->len - (HEAD_ROOM - (size_t)n);
    return c->buf + HEAD_ROOM - n;
}

int
redis_cmd_send(struct redis_cmd *c, redisAsyncContext *ac, redisCallbackFn *fn, void *arg)
{
    size_t len;
    const char *bytes = redis_cmd_bytes(c, &len);
    return redisAsyncFormattedCommand(ac, fn, arg, bytes, len) == REDIS_OK ? 0 : -1;
}

void
redis_cmd_free(struct redis_cmd *c)
{
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
    c->argc = 0;
}
