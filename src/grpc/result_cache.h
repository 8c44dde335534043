/*
 * result_cache.c: the results of the kinds configured with
 * handlers.<kind>.cache {size, ttl}, by cache key (cache_key.h), in this
 * process's memory.
 *
 * Each cached kind has its own budget: the bytes of its entries (the
 * result plus the entry's bookkeeping, sizeof(struct cache_entry)) stay at
 * most its size, the least recently used going first; an entry older than
 * its kind's ttl is never served and is dropped when seen (a lookup, a
 * store, and a sweep every few seconds). A reload applies at once: a
 * smaller size evicts, a changed ttl applies to the entries already held,
 * a kind whose cache is off (or gone) or whose handler definition changed
 * is emptied, a lowered handlers.max_result_size drops the entries over it.
 *
 * What to do with an item (serve it, merge it with a run in flight, run
 * it) is merge.c's; where entries survive the process (the journal's
 * directory, Redis) is the backing's (cache_backing.h).
 *
 * Ownership: the entries are this file's; a result returned by a lookup
 * is valid until the next call into this file.
 */
#ifndef DS_GRPC_RESULT_CACHE_H
#define DS_GRPC_RESULT_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "grpc/cache_key.h"

struct event_base;
struct evbuffer;

/* A cached kind: this file's, never freed before result_cache_shutdown()
 * (a kind turned off keeps its counters). */
struct cache_kind;

/* The counters and gauges of a kind, for /metrics and /status. */
struct cache_kind_stats {
    uint64_t hits;              /* items served from the cache */
    uint64_t misses;            /* items that ran (led a run others could merge into) */
    uint64_t merges;            /* items that waited for an identical run in flight */
    uint64_t stored;            /* results kept */
    uint64_t evictions;         /* entries dropped for room (size, a reload) */
    uint64_t expired;           /* entries dropped for their ttl */
    uint64_t bytes;             /* held now */
    uint64_t entries;
};

void result_cache_init(struct event_base *base);
/* The kinds of C: see above. Call at start and after every reload. */
void result_cache_configure(const struct ds_config *c);
void result_cache_shutdown(void);

/* KIND's cache (KIND interned, as item->kind), or NULL when the config
 * in force does not cache it. Cheap: no kind cached is one test. */
struct cache_kind *result_cache_kind(const char *kind);
/* The digest of K's handler definition (cache_key_handler). */
const uint8_t *result_cache_handler_digest(const struct cache_kind *k);
uint64_t result_cache_ttl_ms(const struct cache_kind *k);
const char *result_cache_kind_name(const struct cache_kind *k);

/* The result held for KEY, fresh at NOW_MS (unix ms): *RESULT and *LEN,
 * and 1 (it becomes the most recently used); else 0. */
int result_cache_get(struct cache_kind *k, const uint8_t key[CACHE_KEY_SIZE], uint64_t now_ms,
                     const void **result, size_t *len);
/* Keep RESULT (LEN bytes) for KEY, as stored at STORED_MS (unix ms):
 * replaces what KEY held, evicts for room. 0, or -1 if it is not kept
 * (larger than the kind's size or than handlers.max_result_size, or
 * already expired). */
int result_cache_put(struct cache_kind *k, const uint8_t key[CACHE_KEY_SIZE], const void *result,
                     size_t len, uint64_t stored_ms);
/* Count an item served, run or merged. */
void result_cache_count_hit(struct cache_kind *k);
void result_cache_count_miss(struct cache_kind *k);
void result_cache_count_merge(struct cache_kind *k);

/* FN for every entry held, each kind's oldest first. */
void result_cache_for_each(void (*fn)(const struct cache_kind *k,
                                      const uint8_t key[CACHE_KEY_SIZE], const void *result,
                                      size_t len, uint64_t stored_ms, void *arg),
                           void *arg);
/* handlers.max_result_size in force: no longer result is kept or served
 * (a reload that lowers it drops the entries over it). */
uint64_t result_cache_result_max(void);
/* The bytes of all entries held. */
uint64_t result_cache_bytes(void);
void result_cache_stats(const struct cache_kind *k, struct cache_kind_stats *out);

/* /metrics families (dosomething_cache_*, by kind) and the /status
 * "cache" member (with its trailing comma). */
void result_cache_metrics(struct evbuffer *b);
void result_cache_status_json(struct evbuffer *b);

#endif
