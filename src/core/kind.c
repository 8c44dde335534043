/*
 * What each kind of handler asks of an item (see kind.h).
 *
 *   every   traceparent, tracestate: the item's W3C trace context (core/trace.h)
 *   echo    no other params; always quick
 *   sha256  rounds 1..KIND_SHA256_ROUNDS_MAX (default 1); quick while
 *           rounds x (payload / 64 + 1) <= 256 compressions
 *   sleep   ms 0..KIND_SLEEP_MS_MAX (default 0), steps 1..KIND_SLEEP_STEPS_MAX
 *           (default 1); never quick
 *   exec    any params whose DS_PARAM_ names differ; never quick (its
 *           STARTED goes before the program runs)
 *   module  any params; quick if the module says so (DS_MODULE_QUICK)
 */
#include "core/kind.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dosomething/handler.h"

#include "core/alloc.h"
#include "core/utf8.h"

/* sha256 items up to this many SHA-256 compressions take microseconds. */
#define KIND_QUICK_COMPRESSIONS 256

struct param_rule {
    const char *name;
    uint64_t min;
    uint64_t max;
    uint64_t fallback;
};

static const struct param_rule sha256_params[] = {
    { "rounds", 1, KIND_SHA256_ROUNDS_MAX, 1 },
    { NULL, 0, 0, 0 },
};

static const struct param_rule sleep_params[] = {
    { "ms", 0, KIND_SLEEP_MS_MAX, 0 },
    { "steps", 1, KIND_SLEEP_STEPS_MAX, 1 },
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

/* The value of the param RULE names, or its default. Assumes kind_check passed. */
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

uint64_t
kind_param(const struct ds_handler_config *handler, const wire_work_item *item,
           const char *name)
{
    for (const struct param_rule *r = rules_for(handler->type); r->name != NULL; r++)
        if (strcmp(r->name, name) == 0)
            return param_value(item, r);
    return 0;
}

/* ---- exec: params become environment variables ------------------------ */

static char
env_char(char c)
{
    if (c >= 'a' && c <= 'z')
        return (char)(c - 'a' + 'A');
    if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')
        return c;
    return '_';
}

size_t
kind_exec_env_name(const char *param, char *buf, size_t size)
{
    static const char prefix[] = "DS_PARAM_";
    size_t n = 0;
    for (const char *p = prefix; *p != '\0'; p++, n++)
        if (n + 1 < size)
            buf[n] = *p;
    for (const char *p = param; *p != '\0'; p++, n++)
        if (n + 1 < size)
            buf[n] = env_char(*p);
    if (size > 0)
        buf[n < size ? n : size - 1] = '\0';
    return n;
}

static int
compare_env_names(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    for (;; x++, y++) {
        char cx = *x == '\0' ? '\0' : env_char(*x), cy = *y == '\0' ? '\0' : env_char(*y);
        if (cx != cy)
            return (unsigned char)cx < (unsigned char)cy ? -1 : 1;
        if (cx == '\0')
            return 0;
    }
}

/* Two params that would be one environment variable: the program could
 * not tell which value it got. */
static int
check_exec(const struct ds_handler_config *handler, const wire_work_item *item, char *err,
           size_t err_size)
{
    if (item->n_params < 2)
        return 0;
    const char **keys = ds_malloc(item->n_params * sizeof *keys);
    for (size_t i = 0; i < item->n_params; i++)
        keys[i] = item->params[i]->key;
    qsort(keys, item->n_params, sizeof *keys, compare_env_names);
    int r = 0;
    for (size_t i = 1; i < item->n_params && r == 0; i++) {
        if (compare_env_names(&keys[i - 1], &keys[i]) == 0) {
            char name[96];
            kind_exec_env_name(keys[i], name, sizeof name);
            snprintf(err, err_size, "params \"%.*s\" and \"%.*s\" of kind \"%s\" would both "
                     "be %s", (int)utf8_prefix(keys[i - 1], strlen(keys[i - 1]), 64), keys[i - 1],
                     (int)utf8_prefix(keys[i], strlen(keys[i]), 64), keys[i], handler->kind,
                     name);
            r = -1;
        }
    }
    free(keys);
    return r;
}

/* ---- the checks ------------------------------------------------------- */

static int
check_builtin(const struct ds_handler_config *handler, const wire_work_item *item, char *err,
              size_t err_size)
{
    const struct param_rule *rules = rules_for(handler->type);
    for (size_t i = 0; i < item->n_params; i++) {
        const char *key = item->params[i]->key, *value = item->params[i]->value;
        /* Every kind takes an item's trace context (core/trace.h). */
        if (strcmp(key, "traceparent") == 0 || strcmp(key, "tracestate") == 0)
            continue;
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
kind_check(const struct ds_handler_config *handler, const wire_work_item *item, char *err,
           size_t err_size)
{
    switch (handler->type) {
    case DS_HANDLER_ECHO:
    case DS_HANDLER_SHA256:
    case DS_HANDLER_SLEEP:
        return check_builtin(handler, item, err, err_size);
    case DS_HANDLER_EXEC:
        return check_exec(handler, item, err, err_size);
    default:
        return 0;
    }
}

int
kind_is_quick(const struct ds_handler_config *handler, const wire_work_item *item)
{
    /* A limited attempt is watched on its own (workers/limits.c), not
     * measured in a batch. */
    if (handler->memory_limit != 0 || handler->cpu_limit_ms != 0)
        return 0;
    switch (handler->type) {
    case DS_HANDLER_ECHO:
        return 1;
    case DS_HANDLER_SHA256:
        return param_value(item, &sha256_params[0]) * (item->payload.len / 64 + 1) <=
               KIND_QUICK_COMPRESSIONS;
    case DS_HANDLER_MODULE:
        return (handler->module_flags & DS_MODULE_QUICK) != 0;
    default:
        return 0;
    }
}
