/*
 * The result cache's table (result_cache.h says what it keeps and for how
 * long).
 *
 * One hash table of entries by key for all kinds (a key already names its
 * kind: the kind is hashed into it), and per kind two lists: by use (the
 * LRU, most recent first) and by age (oldest first, which is also the
 * order they expire in, the ttl being the kind's), so that eviction and
 * expiry only ever look at the ends.
 */
#include "grpc/result_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "grpc/metrics.h"
#include "grpc/status.h"

#define SWEEP_MS 5000   /* expired entries are freed at least this often */

/* One result: the table's, freed when evicted, expired or replaced. */
struct cache_entry {
    struct cache_entry *hash_next;
    struct cache_entry *lru_prev, *lru_next;
    struct cache_entry *age_prev, *age_next;
    struct cache_kind *kind;
    uint64_t stored_ms;         /* unix ms */
    uint32_t len;
    uint8_t key[CACHE_KEY_SIZE];
    uint8_t result[];
};

struct cache_kind {
    const char *kind;           /* interned (metrics_kind) */
    uint64_t size;              /* 0: off in the config in force */
    uint64_t ttl_ms;
    uint8_t handler_digest[CACHE_KEY_SIZE];
    struct cache_entry *lru_head, *lru_tail;
    struct cache_entry *age_head, *age_tail;
    struct cache_kind_stats stats;
};

static struct {
    struct cache_kind *kinds;   /* ours: grown by ds_realloc */
    size_t count;
    size_t enabled;             /* kinds with size > 0 */
    struct cache_entry **buckets;
    size_t nbuckets;            /* a power of 2, or 0 */
    size_t entries;
    uint64_t bytes;
    uint64_t result_max;        /* handlers.max_result_size in force */
    struct event *sweep;
} rc;

static size_t
bucket_of(const uint8_t key[CACHE_KEY_SIZE])
{
    uint64_t h;
    memcpy(&h, key, sizeof h);      /* a SHA-256: any 8 bytes are a hash */
    return (size_t)h & (rc.nbuckets - 1);
}

static void
grow(void)
{
    size_t n = rc.nbuckets ? rc.nbuckets * 2 : 256;
    struct cache_entry **b = ds_calloc(n, sizeof *b);
    for (size_t i = 0; i < rc.nbuckets; i++) {
        for (struct cache_entry *e = rc.buckets[i], *next; e != NULL; e = next) {
            next = e->hash_next;
            uint64_t h;
            memcpy(&h, e->key, sizeof h);
            size_t j = (size_t)h & (n - 1);
            e->hash_next = b[j];
            b[j] = e;
        }
    }
    free(rc.buckets);
    rc.buckets = b;
    rc.nbuckets = n;
}

static struct cache_entry *
find(const uint8_t key[CACHE_KEY_SIZE])
{
    if (rc.nbuckets == 0)
        return NULL;
    for (struct cache_entry *e = rc.buckets[bucket_of(key)]; e != NULL; e = e->hash_next)
        if (memcmp(e->key, key, CACHE_KEY_SIZE) == 0)
            return e;
    return NULL;
}

static uint64_t
entry_bytes(const struct cache_entry *e)
{
    return sizeof *e + e->len;
}

static void
lru_unlink(struct cache_entry *e)
{
    struct cache_kind *k = e->kind;
    if (e->lru_prev != NULL)
        e->lru_prev->lru_next = e->lru_next;
    else
        k->lru_head = e->lru_next;
    if (e->lru_next != NULL)
        e->lru_next->lru_prev = e->lru_prev;
    else
        k->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void
lru_push_front(struct cache_entry *e)
{
    struct cache_kind *k = e->kind;
    e->lru_prev = NULL;
    e->lru_next = k->lru_head;
    if (k->lru_head != NULL)
        k->lru_head->lru_prev = e;
    else
        k->lru_tail = e;
    k->lru_head = e;
}

/* Out of everything and freed. */
static void
drop(struct cache_entry *e)
{
    struct cache_kind *k = e->kind;
    struct cache_entry **pp = &rc.buckets[bucket_of(e->key)];
    while (*pp != e)
        pp = &(*pp)->hash_next;
    *pp = e->hash_next;
    lru_unlink(e);
    if (e->age_prev != NULL)
        e->age_prev->age_next = e->age_next;
    else
        k->age_head = e->age_next;
    if (e->age_next != NULL)
        e->age_next->age_prev = e->age_prev;
    else
        k->age_tail = e->age_prev;
    k->stats.bytes -= entry_bytes(e);
    k->stats.entries--;
    rc.bytes -= entry_bytes(e);
    rc.entries--;
    free(e);
}

static int
expired(const struct cache_kind *k, const struct cache_entry *e, uint64_t now_ms)
{
    return now_ms >= e->stored_ms + k->ttl_ms || k->size == 0;
}

/* The oldest entries of K that are past its ttl. */
static void
expire(struct cache_kind *k, uint64_t now_ms)
{
    while (k->age_head != NULL && expired(k, k->age_head, now_ms)) {
        k->stats.expired++;
        drop(k->age_head);
    }
}

/* Least recently used first, until K holds at most LIMIT bytes. */
static void
evict_to(struct cache_kind *k, uint64_t limit)
{
    while (k->lru_tail != NULL && k->stats.bytes > limit) {
        k->stats.evictions++;
        drop(k->lru_tail);
    }
}

static void
on_sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    uint64_t now_ms = (uint64_t)clock_wall_ns() / 1000000u;
    for (size_t i = 0; i < rc.count; i++)
        expire(&rc.kinds[i], now_ms);
}

void
result_cache_init(struct event_base *base)
{
    memset(&rc, 0, sizeof rc);
    rc.sweep = event_new(base, -1, EV_PERSIST, on_sweep, NULL);
    struct timeval tv = clock_timeval_ms(SWEEP_MS);
    event_add(rc.sweep, &tv);
}

static struct cache_kind *
kind_slot(const char *kind)
{
    for (size_t i = 0; i < rc.count; i++)
        if (rc.kinds[i].kind == kind)
            return &rc.kinds[i];
    return NULL;
}

void
result_cache_configure(const struct ds_config *c)
{
    /* Entries point at their kind: grow first, then fill in. */
    size_t want = rc.count;
    for (size_t i = 0; i < c->handler_count; i++)
        if (c->handlers[i].cache_size != 0 && kind_slot(metrics_kind(c->handlers[i].kind)->kind)
                                              == NULL)
            want++;
    if (want > rc.count) {
        struct cache_kind *old = rc.kinds;
        rc.kinds = ds_realloc(rc.kinds, want * sizeof *rc.kinds);
        if (old != rc.kinds && old != NULL) {
            /* Moved: the entries' kind pointers follow. */
            for (size_t i = 0; i < rc.count; i++)
                for (struct cache_entry *e = rc.kinds[i].lru_head; e != NULL; e = e->lru_next)
                    e->kind = &rc.kinds[i];
        }
    }
    for (size_t i = 0; i < c->handler_count; i++) {
        const struct ds_handler_config *h = &c->handlers[i];
        if (h->cache_size == 0)
            continue;
        const char *kind = metrics_kind(h->kind)->kind;
        struct cache_kind *k = kind_slot(kind);
        if (k == NULL) {
            k = &rc.kinds[rc.count++];
            memset(k, 0, sizeof *k);
            k->kind = kind;
        }
    }
    uint64_t now_ms = (uint64_t)clock_wall_ns() / 1000000u;
    rc.enabled = 0;
    rc.result_max = c->max_result_size;
    for (size_t i = 0; i < rc.count; i++) {
        struct cache_kind *k = &rc.kinds[i];
        /* A result longer than handlers.max_result_size is not served: a
         * run of the item would fail it (the bound was lowered). */
        for (struct cache_entry *e = k->age_head, *next; e != NULL; e = next) {
            next = e->age_next;
            if (e->len > rc.result_max) {
                k->stats.evictions++;
                drop(e);
            }
        }
        const struct ds_handler_config *h = config_handler(c, k->kind);
        uint8_t digest[CACHE_KEY_SIZE];
        if (h == NULL || h->cache_size == 0) {
            if (k->size != 0)
                log_info("cache of kind \"%s\": off; %llu entries dropped", k->kind,
                         (unsigned long long)k->stats.entries);
            k->size = 0;
            evict_to(k, 0);
            continue;
        }
        cache_key_handler(h, digest);
        if (k->size != 0 && memcmp(digest, k->handler_digest, sizeof digest) != 0 &&
            k->stats.entries > 0) {
            log_info("cache of kind \"%s\": its handler changed; %llu entries dropped",
                     k->kind, (unsigned long long)k->stats.entries);
            evict_to(k, 0);
        }
        memcpy(k->handler_digest, digest, sizeof digest);
        k->size = h->cache_size;
        k->ttl_ms = h->cache_ttl_ms;
        expire(k, now_ms);
        evict_to(k, k->size);
        rc.enabled++;
    }
}

void
result_cache_shutdown(void)
{
    for (size_t i = 0; i < rc.count; i++)
        while (rc.kinds[i].lru_head != NULL)
            drop(rc.kinds[i].lru_head);
    free(rc.buckets);
    free(rc.kinds);
    if (rc.sweep != NULL)
        event_free(rc.sweep);
    memset(&rc, 0, sizeof rc);
}

struct cache_kind *
result_cache_kind(const char *kind)
{
    if (rc.enabled == 0)
        return NULL;
    struct cache_kind *k = kind_slot(kind);
    return k != NULL && k->size != 0 ? k : NULL;
}

const uint8_t *
result_cache_handler_digest(const struct cache_kind *k)
{
    return k->handler_digest;
}

uint64_t
result_cache_ttl_ms(const struct cache_kind *k)
{
    return k->ttl_ms;
}

const char *
result_cache_kind_name(const struct cache_kind *k)
{
    return k->kind;
}

int
result_cache_get(struct cache_kind *k, const uint8_t key[CACHE_KEY_SIZE], uint64_t now_ms,
                 const void **result, size_t *len)
{
    expire(k, now_ms);
    struct cache_entry *e = find(key);
    if (e == NULL || e->kind != k)
        return 0;
    if (expired(k, e, now_ms)) {
        k->stats.expired++;
        drop(e);
        return 0;
    }
    lru_unlink(e);
    lru_push_front(e);
    *result = e->result;
    *len = e->len;
    return 1;
}

int
result_cache_put(struct cache_kind *k, const uint8_t key[CACHE_KEY_SIZE], const void *result,
                 size_t len, uint64_t stored_ms)
{
    uint64_t now_ms = (uint64_t)clock_wall_ns() / 1000000u;
    if (k->size == 0 || sizeof(struct cache_entry) + len > k->size || len > UINT32_MAX ||
        len > rc.result_max || now_ms >= stored_ms + k->ttl_ms)
        return -1;
    struct cache_entry *old = find(key);
    if (old != NULL)
        drop(old);
    expire(k, now_ms);
    struct cache_entry *e = ds_malloc(sizeof *e + len);
    e->kind = k;
    e->stored_ms = stored_ms;
    e->len = (uint32_t)len;
    memcpy(e->key, key, CACHE_KEY_SIZE);
    if (len > 0)
        memcpy(e->result, result, len);
    evict_to(k, k->size - entry_bytes(e));
    if (rc.entries + 1 > rc.nbuckets)
        grow();
    size_t b = bucket_of(key);
    e->hash_next = rc.buckets[b];
    rc.buckets[b] = e;
    lru_push_front(e);
    e->age_next = NULL;
    e->age_prev = k->age_tail;
    if (k->age_tail != NULL)
        k->age_tail->age_next = e;
    else
        k->age_head = e;
    k->age_tail = e;
    k->stats.bytes += entry_bytes(e);
    k->stats.entries++;
    k->stats.stored++;
    rc.bytes += entry_bytes(e);
    rc.entries++;
    return 0;
}

void
result_cache_count_hit(struct cache_kind *k)
{
    k->stats.hits++;
}

void
result_cache_count_miss(struct cache_kind *k)
{
    k->stats.misses++;
}

void
result_cache_count_merge(struct cache_kind *k)
{
    k->stats.merges++;
}

void
result_cache_for_each(void (*fn)(const struct cache_kind *k, const uint8_t key[CACHE_KEY_SIZE],
                                 const void *result, size_t len, uint64_t stored_ms, void *arg),
                      void *arg)
{
    for (size_t i = 0; i < rc.count; i++)
        for (const struct cache_entry *e = rc.kinds[i].age_head; e != NULL; e = e->age_next)
            fn(&rc.kinds[i], e->key, e->result, e->len, e->stored_ms, arg);
}

uint64_t
result_cache_result_max(void)
{
    return rc.result_max;
}

uint64_t
result_cache_bytes(void)
{
    return rc.bytes;
}

void
result_cache_stats(const struct cache_kind *k, struct cache_kind_stats *out)
{
    *out = k->stats;
}

/* ---- /metrics and /status ---------------------------------------------------- */

static const struct {
    const char *name;
    const char *type;
    const char *help;
    size_t offset;
} families[] = {
    { "cache_hits_total", "counter", "Items served from the result cache (handlers.<kind>.cache), "
      "by kind.", offsetof(struct cache_kind_stats, hits) },
    { "cache_misses_total", "counter", "Items of a cached kind that ran (no result cached, no "
      "identical run in flight), by kind.", offsetof(struct cache_kind_stats, misses) },
    { "cache_merges_total", "counter", "Items of a cached kind that waited for an identical run "
      "in flight and got its result, by kind.", offsetof(struct cache_kind_stats, merges) },
    { "cache_stored_total", "counter", "Results kept in the result cache, by kind.",
      offsetof(struct cache_kind_stats, stored) },
    { "cache_evictions_total", "counter", "Cached results dropped for room (the kind's size, a "
      "reload), by kind.", offsetof(struct cache_kind_stats, evictions) },
    { "cache_expired_total", "counter", "Cached results dropped for their ttl, by kind.",
      offsetof(struct cache_kind_stats, expired) },
    { "cache_bytes", "gauge", "Bytes the result cache holds (results and their bookkeeping), "
      "by kind.", offsetof(struct cache_kind_stats, bytes) },
    { "cache_entries", "gauge", "Results the result cache holds, by kind.",
      offsetof(struct cache_kind_stats, entries) },
};

void
result_cache_metrics(struct evbuffer *b)
{
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        evbuffer_add_printf(b, "# HELP dosomething_%s %s\n# TYPE dosomething_%s %s\n",
                            families[f].name, families[f].help, families[f].name,
                            families[f].type);
        for (size_t i = 0; i < rc.count; i++) {
            uint64_t v = *(const uint64_t *)((const char *)&rc.kinds[i].stats +
                                             families[f].offset);
            evbuffer_add_printf(b, "dosomething_%s{kind=\"", families[f].name);
            status_label_value(b, rc.kinds[i].kind);
            evbuffer_add_printf(b, "\"} %llu\n", (unsigned long long)v);
        }
    }
}

void
result_cache_status_json(struct evbuffer *b)
{
    evbuffer_add_printf(b, "\"cache\":{");
    for (size_t i = 0; i < rc.count; i++) {
        const struct cache_kind *k = &rc.kinds[i];
        evbuffer_add_printf(b, "%s\"", i > 0 ? "," : "");
        status_label_value(b, k->kind);  /* a config key: JSON-safe as a label is */
        evbuffer_add_printf(b, "\":{\"size\":%llu,\"ttl_ms\":%llu,\"bytes\":%llu,"
                            "\"entries\":%llu,\"hits\":%llu,\"misses\":%llu,\"merges\":%llu,"
                            "\"evictions\":%llu,\"expired\":%llu}",
                            (unsigned long long)k->size, (unsigned long long)k->ttl_ms,
                            (unsigned long long)k->stats.bytes,
                            (unsigned long long)k->stats.entries,
                            (unsigned long long)k->stats.hits,
                            (unsigned long long)k->stats.misses,
                            (unsigned long long)k->stats.merges,
                            (unsigned long long)k->stats.evictions,
                            (unsigned long long)k->stats.expired);
    }
    evbuffer_add_printf(b, "},");
}
