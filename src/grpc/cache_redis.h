/*
 * cache_redis.c: the result cache's backing in cluster mode: every result
 * kept is also SET as {NAME}:cache:HEX (HEX: the key, cache_key.h) with
 * its kind's ttl (PX), the value being the 8-byte big-endian unix ms it
 * was stored at, then the result. An item taken by an instance whose own
 * cache misses asks Redis (GET) before it runs; meanwhile it is held here
 * (its lease renewed like any held item's) and identical items merge into
 * it. Redis unreachable: a miss (the item runs). In-flight merging is per
 * instance: an identical item another instance runs is not waited for.
 */
#ifndef DS_GRPC_CACHE_REDIS_H
#define DS_GRPC_CACHE_REDIS_H

#include "grpc/cache_backing.h"

extern const struct cache_backing cache_redis;

#endif
