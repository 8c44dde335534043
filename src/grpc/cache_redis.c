/*
 * The result cache shared through Redis (cache_redis.h).
 */
#include "grpc/cache_redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "grpc/cluster.h"
#include "grpc/grpc_process.h"
#include "grpc/merge.h"
#include "grpc/redis_args.h"

/* A GET in flight: ours until its reply. */
struct lookup {
    const char *kind;           /* interned */
    uint8_t key[CACHE_KEY_SIZE];
};

static void
key_name(const uint8_t key[CACHE_KEY_SIZE], char *out, size_t size)
{
    char hex[2 * CACHE_KEY_SIZE + 1];
    cache_key_hex(key, hex);
    snprintf(out, size, "{%s}:cache:%s", cluster_settings()->name, hex);
}

static void
on_get(redisAsyncContext *ac, void *reply, void *arg)
{
    (void)ac;
    struct lookup *l = arg;
    const redisReply *r = reply;
    if (r != NULL && r->type == REDIS_REPLY_STRING && r->len >= 8) {
        uint64_t stored_ms = 0;
        for (int i = 0; i < 8; i++)
            stored_ms = stored_ms << 8 | (uint8_t)r->str[i];
        merge_looked_up(l->kind, l->key, 1, r->str + 8, r->len - 8, stored_ms);
    } else {
        if (r != NULL && r->type == REDIS_REPLY_ERROR)
            log_warn("cluster: GET of a cached result failed: %s", r->str);
        merge_looked_up(l->kind, l->key, 0, NULL, 0, 0);
    }
    free(l);
}

static int
redis_lookup(const char *kind, const uint8_t key[CACHE_KEY_SIZE])
{
    char name[200];
    key_name(key, name, sizeof name);
    struct redis_args a;
    redis_args_init(&a, "GET");
    redis_args_str(&a, name);
    struct lookup *l = ds_malloc(sizeof *l);
    l->kind = kind;
    memcpy(l->key, key, CACHE_KEY_SIZE);
    if (cluster_send(&a, on_get, l) == -1) {
        free(l);
        return -1;
    }
    return 0;
}

static void
on_set(redisAsyncContext *ac, void *reply, void *arg)
{
    (void)ac;
    (void)arg;
    const redisReply *r = reply;
    if (r != NULL && r->type == REDIS_REPLY_ERROR)
        log_warn("cluster: SET of a cached result failed: %s", r->str);
}

static void
redis_stored(const char *kind, const uint8_t key[CACHE_KEY_SIZE], const void *result, size_t len,
             uint64_t stored_ms, uint64_t ttl_ms)
{
    (void)kind;
    char name[200];
    key_name(key, name, sizeof name);
    uint8_t *value = ds_malloc(8 + len);
    for (int i = 0; i < 8; i++)
        value[i] = (uint8_t)(stored_ms >> (56 - 8 * i));
    if (len > 0)
        memcpy(value + 8, result, len);
    struct redis_args a;
    redis_args_init(&a, "SET");
    redis_args_str(&a, name);
    redis_args_mem(&a, value, 8 + len);
    redis_args_str(&a, "PX");
    redis_args_u64(&a, ttl_ms);
    if (cluster_send(&a, on_set, NULL) == -1)
        log_debug("cluster: a cached result was not shared (redis unreachable)");
    free(value);
}

const struct cache_backing cache_redis = {
    .name = "redis",
    .stored = redis_stored,
    .lookup = redis_lookup,
};
