/*
 * Where cached results outlive this process: the seam between the result
 * cache (merge.c, result_cache.c) and the store's mode. Chosen once, at
 * start, like the store's backend:
 *
 *   memory    none: the cache is this process's, lost when it exits
 *   journal   cache_file.c: DIR/result-cache, an append-only file with a
 *             checksum per record, read back at start
 *   cluster   cache_redis.c: {NAME}:cache:KEY in Redis with the kind's ttl,
 *             shared by every instance
 *
 * A backing answers lookups through merge_looked_up() (merge.h), never by
 * calling the store.
 */
#ifndef DS_GRPC_CACHE_BACKING_H
#define DS_GRPC_CACHE_BACKING_H

#include <stddef.h>
#include <stdint.h>

#include "grpc/cache_key.h"

struct cache_backing {
    const char *name;
    /* At start, before the store's backend recovers items: bring what
     * survived into result_cache.c. */
    void (*start)(void);
    /* A result was kept here: KIND (interned), KEY, RESULT (LEN bytes,
     * borrowed for the call), stored at STORED_MS (unix ms), kept for
     * TTL_MS. */
    void (*stored)(const char *kind, const uint8_t key[CACHE_KEY_SIZE], const void *result,
                   size_t len, uint64_t stored_ms, uint64_t ttl_ms);
    /* NULL, or: ask for KEY of KIND; the answer comes later, from the loop,
     * through merge_looked_up(). -1: cannot ask now (a miss). */
    int (*lookup)(const char *kind, const uint8_t key[CACHE_KEY_SIZE]);
    /* After a reload has been applied to result_cache.c. */
    void (*configure)(void);
    void (*shutdown)(void);
};

#endif
