/*
 * The result cache as the store sees it (merge.h says what happens to an
 * item of a cached kind).
 *
 * A run in flight is a struct run: its key, its leader, the items merged
 * into it. Runs are found by key (a chained table) and every item this
 * file knows of, leader or merged, by item key (an open-addressing map),
 * so that a leader's end, a cancel and the cluster's "is it ours?" cost
 * one lookup each. With no cached kind nothing here is ever looked at: a
 * kind's test is result_cache_kind(), one comparison when none is cached.
 */
#include "grpc/merge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/utf8.h"
#include "grpc/cache_backing.h"
#include "grpc/item.h"
#include "grpc/result_cache.h"

/* A run in flight: this file's, freed when its leader ends or leaves. */
struct run {
    struct run *next;           /* in its bucket */
    uint8_t key[CACHE_KEY_SIZE];
    const char *kind;           /* interned */
    struct item *leader;        /* queued or running (the queue's), or held here */
    struct item *head, *tail;   /* merged into it, in order (item->next) */
    uint64_t merged;
    int looking_up;             /* the backing is asked: the leader is held here */
};

static struct {
    const struct merge_events *ev;
    const struct cache_backing *backing;
    struct run **buckets;       /* by cache key */
    size_t nbuckets;            /* a power of 2, or 0 */
    size_t runs;
    /* item key -> its run, for leaders and merged items: open addressing,
     * linear probing, key 0 free (no item has key 0). */
    uint64_t *keys;
    struct run **vals;
    size_t cap, used;
    uint64_t waiting;           /* merged items and leaders held for a lookup */
} mg;

/* ---- item key -> run ------------------------------------------------------------ */

static size_t
slot_of(uint64_t key)
{
    key ^= key >> 33;
    key *= UINT64_C(0xff51afd7ed558ccd);
    key ^= key >> 33;
    return (size_t)key & (mg.cap - 1);
}

static void map_put(uint64_t key, struct run *r);

static void
map_grow(void)
{
    uint64_t *keys = mg.keys;
    struct run **vals = mg.vals;
    size_t cap = mg.cap;
    mg.cap = cap ? cap * 2 : 64;
    mg.keys = ds_calloc(mg.cap, sizeof *mg.keys);
    mg.vals = ds_calloc(mg.cap, sizeof *mg.vals);
    mg.used = 0;
    for (size_t i = 0; i < cap; i++)
        if (keys[i] != 0)
            map_put(keys[i], vals[i]);
    free(keys);
    free(vals);
}

static void
map_put(uint64_t key, struct run *r)
{
    if ((mg.used + 1) * 2 > mg.cap)
        map_grow();
    size_t i = slot_of(key);
    while (mg.keys[i] != 0 && mg.keys[i] != key)
        i = (i + 1) & (mg.cap - 1);
    if (mg.keys[i] == 0)
        mg.used++;
    mg.keys[i] = key;
    mg.vals[i] = r;
}

static struct run *
map_get(uint64_t key)
{
    if (mg.used == 0)
        return NULL;
    for (size_t i = slot_of(key); mg.keys[i] != 0; i = (i + 1) & (mg.cap - 1))
        if (mg.keys[i] == key)
            return mg.vals[i];
    return NULL;
}

/* Backward-shift deletion: no tombstones. */
static void
map_del(uint64_t key)
{
    if (mg.used == 0)
        return;
    size_t i = slot_of(key);
    while (mg.keys[i] != key) {
        if (mg.keys[i] == 0)
            return;
        i = (i + 1) & (mg.cap - 1);
    }
    mg.keys[i] = 0;
    mg.used--;
    for (size_t j = (i + 1) & (mg.cap - 1); mg.keys[j] != 0; j = (j + 1) & (mg.cap - 1)) {
        size_t home = slot_of(mg.keys[j]);
        /* May the entry at J move to the hole at I? Only if its home is
         * not between the hole and it (cyclically). */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            mg.keys[i] = mg.keys[j];
            mg.vals[i] = mg.vals[j];
            mg.keys[j] = 0;
            i = j;
        }
    }
}

/* ---- runs by cache key ------------------------------------------------------------ */

static size_t
bucket_of(const uint8_t key[CACHE_KEY_SIZE])
{
    uint64_t h;
    memcpy(&h, key, sizeof h);
    return (size_t)h & (mg.nbuckets - 1);
}

static struct run *
run_find(const uint8_t key[CACHE_KEY_SIZE])
{
    if (mg.runs == 0)
        return NULL;
    for (struct run *r = mg.buckets[bucket_of(key)]; r != NULL; r = r->next)
        if (memcmp(r->key, key, CACHE_KEY_SIZE) == 0)
            return r;
    return NULL;
}

static struct run *
run_new(const uint8_t key[CACHE_KEY_SIZE], struct item *leader)
{
    if (mg.runs + 1 > mg.nbuckets) {
        size_t n = mg.nbuckets ? mg.nbuckets * 2 : 64;
        struct run **b = ds_calloc(n, sizeof *b);
        for (size_t i = 0; i < mg.nbuckets; i++) {
            for (struct run *r = mg.buckets[i], *next; r != NULL; r = next) {
                next = r->next;
                uint64_t h;
                memcpy(&h, r->key, sizeof h);
                r->next = b[h & (n - 1)];
                b[h & (n - 1)] = r;
            }
        }
        free(mg.buckets);
        mg.buckets = b;
        mg.nbuckets = n;
    }
    struct run *r = ds_calloc(1, sizeof *r);
    memcpy(r->key, key, CACHE_KEY_SIZE);
    r->kind = leader->kind;
    r->leader = leader;
    size_t b = bucket_of(key);
    r->next = mg.buckets[b];
    mg.buckets[b] = r;
    mg.runs++;
    map_put(leader->key, r);
    return r;
}

/* R leaves the tables (its items are the caller's now) and is freed. */
static void
run_free(struct run *r)
{
    struct run **pp = &mg.buckets[bucket_of(r->key)];
    while (*pp != r)
        pp = &(*pp)->next;
    *pp = r->next;
    mg.runs--;
    if (r->leader != NULL && map_get(r->leader->key) == r)
        map_del(r->leader->key);
    if (r->looking_up && r->leader != NULL)
        mg.waiting--;
    for (struct item *it = r->head; it != NULL; it = it->next) {
        map_del(it->key);
        mg.waiting--;
    }
    free(r);
}

static void
merge_into(struct run *r, struct item *item)
{
    item->next = NULL;
    if (r->tail != NULL)
        r->tail->next = item;
    else
        r->head = item;
    r->tail = item;
    r->merged++;
    mg.waiting++;
    map_put(item->key, r);
}

/* ---- admission --------------------------------------------------------------- */

static uint64_t
now_ms(void)
{
    return (uint64_t)clock_wall_ns() / 1000000u;
}

/* ITEM's cache key into KEY; -1 if its WorkItem cannot be read (it then
 * runs as any item: the worker reports what is wrong with it). */
static int
key_of(const struct item *item, struct cache_kind *k, uint8_t key[CACHE_KEY_SIZE])
{
    wire_work_item *msg = wire_work_item_unpack(NULL, item->raw_len, item->raw);
    if (msg == NULL)
        return -1;
    cache_key_item(item->kind, result_cache_handler_digest(k), msg, key);
    wire_work_item_free(msg, NULL);
    return 0;
}

/* As merge_admit(); COUNT: counted in the metrics (not for an item
 * released by a leader that left, counted when it first came). */
static int
admit(struct item *item, int count)
{
    struct cache_kind *k = result_cache_kind(item->kind);
    if (k == NULL)
        return 0;
    uint8_t key[CACHE_KEY_SIZE];
    if (key_of(item, k, key) == -1) {
        if (count)
            result_cache_count_miss(k);
        return 0;
    }
    const void *result;
    size_t len;
    if (result_cache_get(k, key, now_ms(), &result, &len)) {
        if (count)
            result_cache_count_hit(k);
        mg.ev->served(item, result, len);
        return 1;
    }
    struct run *r = run_find(key);
    if (r != NULL) {
        if (count)
            result_cache_count_merge(k);
        merge_into(r, item);
        return 1;
    }
    if (item->due_ns > (uint64_t)clock_wall_ns()) {
        if (count)
            result_cache_count_miss(k);
        return 0;       /* delayed: it runs on its own; nobody waits for its delay */
    }
    r = run_new(key, item);
    if (mg.backing != NULL && mg.backing->lookup != NULL) {
        r->looking_up = 1;
        mg.waiting++;
        if (mg.backing->lookup(r->kind, key) == 0)
            return 1;   /* counted when the answer comes */
        r->looking_up = 0;
        mg.waiting--;
    }
    if (count)
        result_cache_count_miss(k);
    return 0;
}

int
merge_admit(struct item *item)
{
    return admit(item, 1);
}

/* Items released by a leader that left: each admitted again (the first
 * leads a new run, the others merge into it), or run. */
static void
release(struct item *head)
{
    while (head != NULL) {
        struct item *item = head;
        head = item->next;
        item->next = NULL;
        if (!admit(item, 0))
            mg.ev->run(item);
    }
    mg.ev->dispatch();
}

/* Take R's merged items out of it: a list (item->next) for the caller. */
static struct item *
detach(struct run *r)
{
    struct item *head = r->head;
    for (struct item *it = head; it != NULL; it = it->next) {
        map_del(it->key);
        mg.waiting--;
    }
    r->head = r->tail = NULL;
    r->merged = 0;
    return head;
}

void
merge_looked_up(const char *kind, const uint8_t key[CACHE_KEY_SIZE], int found,
                const void *result, size_t len, uint64_t stored_ms)
{
    struct cache_kind *k = result_cache_kind(kind);
    if (found && len > result_cache_result_max())
        found = 0;      /* kept under a larger handlers.max_result_size: a run fails it */
    if (found && k != NULL && result_cache_put(k, key, result, len, stored_ms) == -1 &&
        now_ms() >= stored_ms + result_cache_ttl_ms(k))
        found = 0;      /* expired on the way */
    struct run *r = run_find(key);
    if (r == NULL || !r->looking_up)
        return;         /* its items left meanwhile, or it runs already */
    r->looking_up = 0;
    mg.waiting--;
    if (!found || k == NULL) {
        if (k != NULL)
            result_cache_count_miss(k);
        mg.ev->run(r->leader);
        mg.ev->dispatch();
        return;
    }
    result_cache_count_hit(k);
    struct item *leader = r->leader;
    struct item *head = detach(r);
    r->leader = NULL;
    map_del(leader->key);
    run_free(r);
    /* The result is the caller's: it stays valid through these ends. */
    mg.ev->served(leader, result, len);
    for (struct item *it = head, *next; it != NULL; it = next) {
        next = it->next;
        it->next = NULL;
        mg.ev->served(it, result, len);
    }
}

/* ---- ends ---------------------------------------------------------------------- */

void
merge_ended(struct item *item, const struct outcome *o)
{
    if (mg.used == 0)
        return;
    struct run *r = map_get(item->key);
    if (r == NULL || r->leader != item)
        return;
    struct item *head = detach(r);
    r->leader = NULL;
    map_del(item->key);
    uint8_t key[CACHE_KEY_SIZE];
    memcpy(key, r->key, sizeof key);
    const char *kind = r->kind;
    run_free(r);
    if (o->state == STATE_SUCCEEDED) {
        /* A copy: the leader's result lives in its worker's message, and
         * ending the merged items may read more of them. */
        void *result = o->result_len > 0 ? ds_malloc(o->result_len) : NULL;
        if (o->result_len > 0)
            memcpy(result, o->result, o->result_len);
        size_t len = o->result_len;
        struct cache_kind *k = result_cache_kind(kind);
        uint64_t stored = now_ms();
        if (k != NULL && result_cache_put(k, key, result, len, stored) == 0 &&
            mg.backing != NULL && mg.backing->stored != NULL)
            mg.backing->stored(kind, key, result, len, stored, result_cache_ttl_ms(k));
        for (struct item *it = head, *next; it != NULL; it = next) {
            next = it->next;
            it->next = NULL;
            mg.ev->served(it, result, len);
        }
        free(result);
        return;
    }
    if (o->state == STATE_FAILED && head != NULL) {
        char id[300], error[DS_UPDATE_ERROR_MAX + 400];
        snprintf(error, sizeof error, "the identical run it waited for (item \"%s\") failed: %s",
                 utf8_escape(id, sizeof id, item->id), o->error != NULL ? o->error : "");
        for (struct item *it = head, *next; it != NULL; it = next) {
            next = it->next;
            it->next = NULL;
            mg.ev->failed(it, error);
        }
        return;
    }
    release(head);      /* CANCELLED: they run on their own */
}

/* Not with its own final: a leader that leaves, or (never, but safe) a
 * merged item. */
void
merge_gone(const struct item *item)
{
    if (mg.used == 0)
        return;
    struct run *r = map_get(item->key);
    if (r == NULL)
        return;
    if (r->leader != item) {
        /* A merged item: out of its run's list. */
        struct item **pp = &r->head, *prev = NULL;
        while (*pp != NULL && *pp != item) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (*pp == item) {
            *pp = item->next;
            if (r->tail == item)
                r->tail = prev;
            r->merged--;
            mg.waiting--;
        }
        map_del(item->key);
        return;
    }
    struct item *head = detach(r);
    map_del(item->key);
    r->leader = NULL;
    if (r->looking_up)
        mg.waiting--;
    r->looking_up = 0;
    run_free(r);
    release(head);
}

/* ---- what the store asks ------------------------------------------------------------ */

struct item *
merge_find(uint64_t key)
{
    struct run *r = map_get(key);
    if (r == NULL)
        return NULL;
    if (r->leader != NULL && r->leader->key == key)
        return r->looking_up ? r->leader : NULL;
    for (struct item *it = r->head; it != NULL; it = it->next)
        if (it->key == key)
            return it;
    return NULL;
}

void
merge_for_each(void (*fn)(const struct item *item, void *arg), void *arg)
{
    for (size_t b = 0; b < mg.nbuckets && mg.runs > 0; b++) {
        for (struct run *r = mg.buckets[b]; r != NULL; r = r->next) {
            if (r->looking_up)
                fn(r->leader, arg);
            for (struct item *it = r->head; it != NULL; it = it->next)
                fn(it, arg);
        }
    }
}

/* Every run, so that a walk may free the one it stands on. */
static struct run **
all_runs(size_t *n)
{
    struct run **list = ds_malloc((mg.runs + 1) * sizeof *list);
    size_t count = 0;
    for (size_t b = 0; b < mg.nbuckets; b++)
        for (struct run *r = mg.buckets[b]; r != NULL; r = r->next)
            list[count++] = r;
    *n = count;
    return list;
}

void
merge_cancel(int (*match)(const struct item *item, void *arg),
             void (*taken)(struct item *item, void *arg), void *arg)
{
    if (mg.waiting == 0)
        return;
    struct item *out = NULL, **tail = &out;
    size_t n;
    struct run **runs = all_runs(&n);
    for (size_t i = 0; i < n; i++) {
        struct run *r = runs[i];
        struct item **pp = &r->head, *prev = NULL;
        while (*pp != NULL) {
            struct item *it = *pp;
            if (!match(it, arg)) {
                prev = it;
                pp = &it->next;
                continue;
            }
            *pp = it->next;
            if (r->tail == it)
                r->tail = prev;
            r->merged--;
            mg.waiting--;
            map_del(it->key);
            it->next = NULL;
            *tail = it;
            tail = &it->next;
        }
        if (r->looking_up && match(r->leader, arg)) {
            /* The next merged item, if any, is the one the answer is for. */
            struct item *leader = r->leader;
            map_del(leader->key);
            mg.waiting--;
            leader->next = NULL;
            *tail = leader;
            tail = &leader->next;
            if (r->head != NULL) {
                r->leader = r->head;
                r->head = r->head->next;
                if (r->head == NULL)
                    r->tail = NULL;
                r->leader->next = NULL;
                r->merged--;
                map_put(r->leader->key, r);     /* it stays counted in waiting */
            } else {
                r->leader = NULL;
                r->looking_up = 0;
                run_free(r);
            }
        }
    }
    free(runs);
    for (struct item *it = out, *next; it != NULL; it = next) {
        next = it->next;
        it->next = NULL;
        taken(it, arg);
    }
}

static void
take_all(void (*fn)(struct item *item, pid_t worker_pid), void (*free_fn)(struct item *item))
{
    size_t n;
    struct run **runs = all_runs(&n);
    struct item *out = NULL, **tail = &out;
    for (size_t i = 0; i < n; i++) {
        struct run *r = runs[i];
        struct item *head = detach(r);
        if (r->looking_up) {
            struct item *leader = r->leader;
            leader->next = head;
            head = leader;
        }
        /* run_free() drops the leader's entry too: a running leader is
         * the queue's to end, and its end must find no run here (it was
         * read after the free). */
        run_free(r);
        *tail = head;
        while (*tail != NULL)
            tail = &(*tail)->next;
    }
    free(runs);
    mg.waiting = 0;
    for (struct item *it = out, *next; it != NULL; it = next) {
        next = it->next;
        it->next = NULL;
        if (fn != NULL)
            fn(it, 0);
        else
            free_fn(it);
    }
}

void
merge_take_all(void (*fn)(struct item *item, pid_t worker_pid))
{
    take_all(fn, NULL);
}

uint64_t
merge_waiting(void)
{
    return mg.waiting;
}

/* ---- start, reload, exit ---------------------------------------------------------- */

void
merge_init(const struct merge_events *events, const struct cache_backing *backing)
{
    memset(&mg, 0, sizeof mg);
    mg.ev = events;
    mg.backing = backing;
}

void
merge_start(void)
{
    if (mg.backing != NULL && mg.backing->start != NULL)
        mg.backing->start();
}

void
merge_configure(const struct ds_config *c)
{
    result_cache_configure(c);
    if (mg.backing != NULL && mg.backing->configure != NULL)
        mg.backing->configure();
}

void
merge_shutdown(void (*fn)(struct item *item))
{
    take_all(NULL, fn);
    if (mg.backing != NULL && mg.backing->shutdown != NULL)
        mg.backing->shutdown();
    free(mg.buckets);
    free(mg.keys);
    free(mg.vals);
    const struct merge_events *ev = mg.ev;
    memset(&mg, 0, sizeof mg);
    mg.ev = ev;
}
