/*
 * The built-in handlers (echo, sha256, sleep), and the dispatch to exec
 * (exec.c) and module (module.c) handlers.
 *
 *   echo    result = payload
 *   sha256  d = SHA-256(payload), then rounds-1 times d = SHA-256(d);
 *           result = the 32 raw bytes (param rounds, default 1)
 *   sleep   sleeps ms milliseconds in `steps` steps, reporting PROGRESS
 *           after each step but the last; result empty (params ms, steps)
 */
#include "workers/handler.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/process.h"
#include "core/utf8.h"
#include "workers/exec.h"
#include "workers/module.h"

#define SHA256_ROUNDS_MAX 100000000ull
#define SLEEP_MS_MAX      86400000ull
#define SLEEP_STEPS_MAX   100000ull

struct param_rule {
    const char *name;
    uint64_t min;
    uint64_t max;
    uint64_t fallback;
};

static const struct param_rule sha256_params[] = {
    { "rounds", 1, SHA256_ROUNDS_MAX, 1 },
    { NULL, 0, 0, 0 },
};

static const struct param_rule sleep_params[] = {
    { "ms", 0, SLEEP_MS_MAX, 0 },
    { "steps", 1, SLEEP_STEPS_MAX, 1 },
    { NULL, 0, 0, 0 },
};

static const struct param_rule no_params[] = {
    { NULL, 0, 0, 0 },
};

static const struct param_rule *
rules_for(enum ds_handler_type type)
{
    switch (type) {
    case DS_HANDLER_SHA256: return sha256_params;
    case DS_HANDLER_SLEEP: return sleep_params;
    default: return no_params;
    }
}

static int
parse_uint(const char *text, uint64_t *value)
{
    if (*text < '0' || *text > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *value = v;
    return 0;
}

/* The value of param NAME by RULE, or its default. Assumes handler_check passed. */
static uint64_t
param_value(const wire_work_item *item, const struct param_rule *rule)
{
    for (size_t i = 0; i < item->n_params; i++) {
        uint64_t v;
        if (strcmp(item->params[i]->key, rule->name) == 0 &&
            parse_uint(item->params[i]->value, &v) == 0)
            return v;
    }
    return rule->fallback;
}

int
handler_check(const struct ds_handler_config *handler, const wire_work_item *item,
              char *err, size_t err_size)
{
    if (handler->type == DS_HANDLER_EXEC)
        return exec_check(handler, item, err, err_size);
    if (handler->type != DS_HANDLER_ECHO && handler->type != DS_HANDLER_SHA256 &&
        handler->type != DS_HANDLER_SLEEP)
        return 0;
    const struct param_rule *rules = rules_for(handler->type);
    for (size_t i = 0; i < item->n_params; i++) {
        const char *key = item->params[i]->key, *value = item->params[i]->value;
        const struct param_rule *r = rules;
        while (r->name != NULL && strcmp(r->name, key) != 0)
            r++;
        if (r->name == NULL) {
            snprintf(err, err_size, "kind \"%s\" takes no param \"%.*s\"", handler->kind,
                     (int)utf8_prefix(key, strlen(key), 64), key);
            return -1;
        }
        uint64_t v;
        if (parse_uint(value, &v) == -1 || v < r->min || v > r->max) {
            snprintf(err, err_size, "param %s of kind \"%s\" must be an integer %llu..%llu, "
                     "got \"%.*s\"", key, handler->kind, (unsigned long long)r->min,
                     (unsigned long long)r->max, (int)utf8_prefix(value, strlen(value), 64),
                     value);
            return -1;
        }
    }
    return 0;
}

int
handler_is_quick(const struct ds_handler_config *handler, const wire_work_item *item)
{
    switch (handler->type) {
    case DS_HANDLER_ECHO:
        return 1;
    case DS_HANDLER_SHA256:
        return param_value(item, &sha256_params[0]) * (item->payload.len / 64 + 1) <= 256;
    case DS_HANDLER_MODULE:
        return module_is_quick(handler);
    default:
        return 0;
    }
}

static int
run_sha256(const wire_work_item *item, struct handler_output *out)
{
    /* OpenSSL 3's one-shot SHA256() looks the algorithm up on every call,
     * which costs more than hashing 32 bytes: fetch it once, reuse one
     * context (measured: ~5x faster per round). */
    static EVP_MD *md;
    static EVP_MD_CTX *ctx;
    if (md == NULL) {
        md = EVP_MD_fetch(NULL, "SHA256", NULL);
        ctx = EVP_MD_CTX_new();
        if (md == NULL || ctx == NULL)
            fatal(DS_EXIT_FATAL, "OpenSSL has no SHA-256 here");
    }
    uint64_t rounds = param_value(item, &sha256_params[0]);
    uint8_t *digest = ds_malloc(SHA256_DIGEST_LENGTH);
    unsigned int len;
    EVP_DigestInit_ex(ctx, md, NULL);
    EVP_DigestUpdate(ctx, item->payload.data, item->payload.len);
    EVP_DigestFinal_ex(ctx, digest, &len);
    for (uint64_t i = 1; i < rounds; i++) {
        EVP_DigestInit_ex(ctx, md, NULL);
        EVP_DigestUpdate(ctx, digest, SHA256_DIGEST_LENGTH);
        EVP_DigestFinal_ex(ctx, digest, &len);
    }
    out->result = digest;
    out->result_len = SHA256_DIGEST_LENGTH;
    out->release = free;
    return 0;
}

/* Sleep until DEADLINE_NS on the monotonic clock. */
static void
sleep_until_ns(uint64_t deadline_ns)
{
    struct timespec ts = { .tv_sec = (time_t)(deadline_ns / 1000000000u),
                           .tv_nsec = (long)(deadline_ns % 1000000000u) };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/*
 * Each step ends at an absolute deadline from one start, so the time spent
 * reporting and the oversleep of each step (timer slack: ~50 us) do not add
 * up over many steps: with 100000 steps of relative sleeps, ms=1000 took
 * over 4 s. A step whose deadline has passed does not sleep at all. The
 * worker coalesces the progress reports.
 */
static int
run_sleep(const wire_work_item *item, struct handler_output *out)
{
    uint64_t ms = param_value(item, &sleep_params[0]);
    uint64_t steps = param_value(item, &sleep_params[1]);
    uint64_t start = clock_monotonic_ns(), total_ns = ms * 1000000u;    /* < 2^47 */
    for (uint64_t i = 1; i <= steps; i++) {
        uint64_t deadline = start + total_ns / steps * i + total_ns % steps * i / steps;
        if (clock_monotonic_ns() < deadline)
            sleep_until_ns(deadline);
        if (i < steps && out->progress != NULL)
            out->progress(out->progress_arg, (float)i / (float)steps);
    }
    return 0;
}

void
handler_clean_text(char *s)
{
    unsigned char *p = (unsigned char *)s;
    size_t left = strlen(s);
    while (left > 0) {
        size_t len = utf8_decode((const char *)p, left, NULL);
        left -= len == 0 ? 1 : len;
        if (len == 0) {
            *p++ = '?';
        } else if (len == 1) {
            if (*p < 0x20 || *p == 0x7f)
                *p = ' ';
            p++;
        } else {
            p += len;
        }
    }
}

int
handler_run(const struct ds_handler_config *handler, const wire_work_item *item,
            struct handler_output *out)
{
    switch (handler->type) {
    case DS_HANDLER_ECHO:
        /* The payload lives as long as the item, which outlives the send. */
        out->result_len = item->payload.len;
        out->result = item->payload.data;
        return 0;
    case DS_HANDLER_SHA256:
        return run_sha256(item, out);
    case DS_HANDLER_SLEEP:
        return run_sleep(item, out);
    case DS_HANDLER_EXEC:
        return exec_run(handler, item, out);
    case DS_HANDLER_MODULE:
        return module_run(handler, item, out);
    default:
        snprintf(out->error, sizeof out->error, "handler of kind \"%s\" is not supported by "
                 "this build", handler->kind);
        return -1;
    }
}
