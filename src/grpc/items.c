/*
 * The index of known items (items.h says what it keeps and for how long).
 *
 * Three structures, all of pointers into the same struct known_item:
 *   by id      an open-addressing table of tagged addresses (below)
 *   by order   an array in acceptance order (accepted_ns, unique); a
 *              forgotten item leaves a tombstone holding its accepted_ns
 *              ((ns << 1) | 1), so the array stays sorted and a page token
 *              (an accepted_ns) stays valid while
 *              items come and go; compacted when half are tombstones
 *   finals     a ring in the order items became final, which retention
 *              forgets from; an item that runs again (retry) and ends again
 *              has a second entry, and the older one is skipped
 *              (final_refs counts them)
 *   rare       the FAILED and the CANCELLED items, each an array in
 *              acceptance order: the dead-letter list is listed from there
 *              without walking every known item (few are in these states;
 *              an insert or removal is a binary search and a memmove)
 */
#include "grpc/items.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/trace.h"
#include "grpc/item.h"

static struct {
    uint64_t *slots;            /* by id (below) */
    size_t slot_count;          /* a power of 2 */
    uintptr_t *order;           /* pointers, or tombstones: (order << 1) | 1 */
    size_t order_len, order_cap, tombstones;
    int64_t last_accepted;      /* the newest accepted_ns given */
    const char **kinds;         /* interned kinds by known_item.kind_index */
    size_t kind_count;
    struct known_item **ring;   /* finals, oldest first */
    struct rare {               /* rare_of(): FAILED, CANCELLED */
        struct known_item **v;  /* by accepted_ns, oldest first */
        size_t len, cap;
    } rare[2];
    size_t ring_head, ring_len, ring_cap;
    uint64_t age_ns, max_count, max_bytes;
    int64_t (*now)(void);
    struct event *timer;
    void (*changed)(const char *id);
    void (*forgotten)(const char *id);
    struct items_stats stats;
    /* The id of the last lookup that found nothing, while nothing has been
     * added since: accepting an item just looked up (submit's duplicate
     * check) does not walk its chain again. */
    char miss_id[DS_ITEM_ID_MAX + 1];
    uint64_t miss_generation, generation;
    int miss_valid;
    int untagged;               /* slots are bare addresses (below) */
} ix;

static int64_t
wall_now(void)
{
    return clock_wall_ns();
}

int
items_is_final(enum wire_state state)
{
    return state == STATE_SUCCEEDED || state == STATE_FAILED || state == STATE_CANCELLED;
}

static uint64_t
hash_id(const char *id)
{
    uint64_t h = 1469598103934665603ull;
    for (; *id; id++)
        h = (h ^ (uint8_t)*id) * 1099511628211ull;
    return h;
}

static size_t
strings_len(const struct known_item *k)
{
    const char *end = known_next_string(known_tracestate(k));
    return (size_t)(end - k->id);
}

static size_t
extra_size(const struct known_extra *e)
{
    return e == NULL ? 0 : sizeof *e + e->error_len + 1 + e->result_len + e->raw_len;
}

/* What a final holds in memory, as items.retention.bytes counts it. */
static size_t
bytes_of(const struct known_item *k)
{
    return offsetof(struct known_item, id) + strings_len(k) + extra_size(k->extra) +
           3 * sizeof(void *);
}

/* ---- by id ------------------------------------------------------------------- */

/*
 * By id: open addressing with linear probing. A slot holds an entry's
 * address and, in the 16 bits above the 48 that user-space addresses use,
 * a tag from its id's hash: a lookup reads a run of slots (one cache line,
 * mostly) and an entry only when its tag matches, so one that finds
 * nothing costs about one cache miss. Should an address ever use those
 * bits, slots become bare addresses (untag_all). Load at most 3/4;
 * removal shifts the run back (no tombstones).
 */
#define TAG_SHIFT 48
#define ADDRESS_MASK ((UINT64_C(1) << TAG_SHIFT) - 1)

static uint64_t
tag_of(uint64_t hash)
{
    return hash >> TAG_SHIFT;   /* the home slot comes from the low bits */
}

static struct known_item *
entry_at(uint64_t slot)
{
    return (struct known_item *)(uintptr_t)(ix.untagged ? slot : slot & ADDRESS_MASK);
}

static uint64_t
slot_for(struct known_item *k, uint64_t hash)
{
    return ix.untagged ? (uint64_t)(uintptr_t)k
                       : (uint64_t)(uintptr_t)k | tag_of(hash) << TAG_SHIFT;
}

static void
untag_all(void)
{
    for (size_t i = 0; i < ix.slot_count; i++)
        ix.slots[i] &= ADDRESS_MASK;
    ix.untagged = 1;
}

/* The slot holding ID, or the empty one ending its run. */
static size_t
slot_of(const char *id, uint64_t h)
{
    size_t mask = ix.slot_count - 1, i = h & mask;
    uint64_t tag = tag_of(h);
    for (; ix.slots[i] != 0; i = (i + 1) & mask)
        if ((ix.untagged || ix.slots[i] >> TAG_SHIFT == tag) &&
            strcmp(entry_at(ix.slots[i])->id, id) == 0)
            break;
    return i;
}

static void
place(uint64_t *slots, size_t count, struct known_item *k, uint64_t h)
{
    size_t mask = count - 1, i = h & mask;
    while (slots[i] != 0)
        i = (i + 1) & mask;
    slots[i] = slot_for(k, h);
}

static void
grow_slots(void)
{
    size_t n = ix.slot_count ? ix.slot_count * 2 : 1024;
    uint64_t *slots = ds_calloc(n, sizeof *slots);
    for (size_t i = 0; i < ix.slot_count; i++)
        if (ix.slots[i] != 0) {
            struct known_item *k = entry_at(ix.slots[i]);
            place(slots, n, k, hash_id(k->id));
        }
    free(ix.slots);
    ix.slots = slots;
    ix.slot_count = n;
}

static void
index_add(struct known_item *k)
{
    if (!ix.untagged && (uint64_t)(uintptr_t)k >> TAG_SHIFT != 0)
        untag_all();
    if (4 * (ix.stats.known + 1) > 3 * ix.slot_count)
        grow_slots();
    place(ix.slots, ix.slot_count, k, hash_id(k->id));
    ix.generation++;
}

static void
index_remove(struct known_item *k)
{
    size_t mask = ix.slot_count - 1, i = hash_id(k->id) & mask;
    while (ix.slots[i] != 0 && entry_at(ix.slots[i]) != k)
        i = (i + 1) & mask;
    if (ix.slots[i] == 0)
        return;
    /* Shift back each later slot of the run whose home is not in (i, j]. */
    for (size_t j = (i + 1) & mask; ix.slots[j] != 0; j = (j + 1) & mask) {
        size_t home = hash_id(entry_at(ix.slots[j])->id) & mask;
        int stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            ix.slots[i] = ix.slots[j];
            i = j;
        }
    }
    ix.slots[i] = 0;
}

const struct known_item *
items_find(const char *id)
{
    if (ix.slots == NULL)
        return NULL;
    uint64_t slot = ix.slots[slot_of(id, hash_id(id))];
    struct known_item *k = slot != 0 ? entry_at(slot) : NULL;
    size_t len;
    if (k == NULL && (len = strlen(id)) < sizeof ix.miss_id) {
        memcpy(ix.miss_id, id, len + 1);
        ix.miss_generation = ix.generation;
        ix.miss_valid = 1;
    }
    return k;
}

const struct known_item *
items_of(const struct item *item)
{
    return item->known != NULL ? item->known : items_find(item->id);
}

/* Is ID surely not in the index (its last lookup missed, nothing added
 * since)? */
static int
surely_absent(const char *id)
{
    return ix.miss_valid && ix.miss_generation == ix.generation && strcmp(ix.miss_id, id) == 0;
}

/* ---- by order ------------------------------------------------------------------ */

static uint64_t
order_at(size_t i)
{
    uintptr_t e = ix.order[i];
    return (e & 1) ? (uint64_t)(e >> 1) : (uint64_t)((const struct known_item *)e)->accepted_ns;
}

/* The first index whose order is >= ORDER. */
static size_t
order_search(uint64_t order)
{
    size_t lo = 0, hi = ix.order_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (order_at(mid) < order)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void
order_compact(void)
{
    size_t j = 0;
    for (size_t i = 0; i < ix.order_len; i++)
        if (!(ix.order[i] & 1))
            ix.order[j++] = ix.order[i];
    ix.order_len = j;
    ix.tombstones = 0;
}

static void
order_remove(const struct known_item *k)
{
    size_t i = order_search((uint64_t)k->accepted_ns);
    if (i >= ix.order_len || ix.order[i] != (uintptr_t)k)
        return;
    ix.order[i] = ((uintptr_t)k->accepted_ns << 1) | 1;
    if (++ix.tombstones > 64 && ix.tombstones * 2 > ix.order_len)
        order_compact();
}

uint64_t
items_last_order(void)
{
    return (uint64_t)ix.last_accepted;
}

void
items_token_encode(char *buf, char prefix, uint64_t order)
{
    snprintf(buf, ITEMS_TOKEN_SIZE, "%c%llu", prefix, (unsigned long long)order);
}

int
items_token_decode(const char *token, char prefix, uint64_t *order)
{
    if (token[0] != prefix || token[1] == '\0' || strlen(token) > 21)
        return -1;
    uint64_t v = 0;
    for (const char *p = token + 1; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        uint64_t digit = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return -1;          /* over UINT64_MAX: not a token anyone gave */
        v = v * 10 + digit;
    }
    if (v == 0)
        return -1;
    *order = v;
    return 0;
}

static uint16_t
kind_index(const char *kind)
{
    for (size_t i = 0; i < ix.kind_count; i++)
        if (ix.kinds[i] == kind)
            return (uint16_t)i;
    if (ix.kind_count == UINT16_MAX)
        return 0;       /* 65535 kinds: not a config anyone runs */
    ix.kinds = ds_realloc(ix.kinds, (ix.kind_count + 1) * sizeof *ix.kinds);
    ix.kinds[ix.kind_count] = kind;
    return (uint16_t)ix.kind_count++;
}

const char *
items_kind(const struct known_item *k)
{
    return k->kind_index < ix.kind_count ? ix.kinds[k->kind_index] : "";
}

/* The CPU in 32 bits: microseconds below 2^31, else milliseconds with the
 * top bit set (up to 24 days; more is kept as that). */
#define CPU_MS_FLAG 0x80000000u

static uint32_t
cpu_code(uint64_t usec)
{
    if (usec < CPU_MS_FLAG)
        return (uint32_t)usec;
    uint64_t ms = usec / 1000;
    return CPU_MS_FLAG | (uint32_t)(ms < CPU_MS_FLAG ? ms : CPU_MS_FLAG - 1);
}

uint64_t
items_cpu_usec(const struct known_item *k)
{
    return k->cpu & CPU_MS_FLAG ? (uint64_t)(k->cpu & ~CPU_MS_FLAG) * 1000 : k->cpu;
}

static uint16_t
progress_code(float p)
{
    if (!(p > 0))
        return 0;
    if (p >= 1)
        return UINT16_MAX;
    return (uint16_t)(p * UINT16_MAX + 0.5f);
}

float
items_progress(const struct known_item *k)
{
    return k->progress == UINT16_MAX ? 1.0f : (float)k->progress / UINT16_MAX;
}

uint64_t
items_max_rss_kib(const struct known_item *k)
{
    return k->max_rss_kib;
}

/* What an attempt that ran cost; one that did not (0 and 0) leaves the
 * latest that did. */
static void
set_cost(struct known_item *k, uint64_t cpu_usec, uint64_t max_rss_kib)
{
    if (cpu_usec == 0 && max_rss_kib == 0)
        return;
    k->cpu = cpu_code(cpu_usec);
    k->max_rss_kib = max_rss_kib < UINT32_MAX ? (uint32_t)max_rss_kib : UINT32_MAX;
}

/* A unique, increasing accepted_ns: the listing's key. */
static int64_t
next_accepted(int64_t now)
{
    ix.last_accepted = now > ix.last_accepted ? now : ix.last_accepted + 1;
    return ix.last_accepted;
}

/* ---- the rare states' arrays ---------------------------------------------------- */

#define RARE_STATES ((1u << STATE_FAILED) | (1u << STATE_CANCELLED))

static struct rare *
rare_of(unsigned state)
{
    return state == STATE_FAILED ? &ix.rare[0] : state == STATE_CANCELLED ? &ix.rare[1] : NULL;
}

/* The index in R of the first entry with accepted_ns >= NS. */
static size_t
rare_search(const struct rare *r, int64_t ns)
{
    size_t lo = 0, hi = r->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->v[mid]->accepted_ns < ns)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void
rare_add(struct known_item *k)
{
    struct rare *r = rare_of(k->state);
    if (r == NULL)
        return;
    if (r->len == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->v = ds_realloc(r->v, r->cap * sizeof *r->v);
    }
    size_t i = rare_search(r, k->accepted_ns);
    memmove(r->v + i + 1, r->v + i, (r->len - i) * sizeof *r->v);
    r->v[i] = k;
    r->len++;
}

static void
rare_remove(const struct known_item *k)
{
    struct rare *r = rare_of(k->state);
    if (r == NULL)
        return;
    size_t i = rare_search(r, k->accepted_ns);
    if (i == r->len || r->v[i] != k)
        return;     /* not there: cannot happen (accepted_ns is unique) */
    memmove(r->v + i, r->v + i + 1, (r->len - i - 1) * sizeof *r->v);
    r->len--;
}

/* The newest of the rare arrays' next entries: the listing of rare states
 * merges them from their ends. */
static const struct known_item *
rare_next(unsigned states, size_t pos[2])
{
    const struct known_item *best = NULL;
    int from = -1;
    for (int a = 0; a < 2; a++) {
        unsigned state = a == 0 ? STATE_FAILED : STATE_CANCELLED;
        if (!(states & (1u << state)) || pos[a] == 0)
            continue;
        const struct known_item *k = ix.rare[a].v[pos[a] - 1];
        if (best == NULL || k->accepted_ns > best->accepted_ns) {
            best = k;
            from = a;
        }
    }
    if (from >= 0)
        pos[from]--;
    return best;
}

size_t
items_list(uint64_t before, unsigned states,
           int (*match)(const struct known_item *k, void *arg), void *match_arg, size_t limit,
           int (*fn)(const struct known_item *k, void *arg), void *fn_arg, int *more)
{
    int rare = states != 0 && (states & ~RARE_STATES) == 0;
    size_t pos[2] = { 0, 0 };
    size_t i = 0;
    if (rare) {
        for (int a = 0; a < 2; a++)
            pos[a] = before == 0 ? ix.rare[a].len : rare_search(&ix.rare[a], (int64_t)before);
    } else {
        i = before == 0 ? ix.order_len : order_search(before);
    }
    /* From the newest, once every item in STATES is seen, none is left. */
    uint64_t left = UINT64_MAX;
    if (states != 0 && before == 0) {
        left = 0;
        for (unsigned s = 0; s <= STATE_MAX; s++)
            if (states & (1u << s))
                left += ix.stats.by_state[s];
    }
    size_t n = 0;
    *more = 0;
    for (;;) {
        const struct known_item *k;
        if (left == 0)
            break;
        if (rare) {
            if ((k = rare_next(states, pos)) == NULL)
                break;
        } else {
            if (i == 0)
                break;
            uintptr_t e = ix.order[--i];
            if (e & 1)
                continue;
            k = (const struct known_item *)e;
        }
        if (states != 0) {
            if (!(states & (1u << k->state)))
                continue;
            if (left != UINT64_MAX)
                left--;
        }
        if (match != NULL && !match(k, match_arg))
            continue;
        if (n == limit) {
            *more = 1;
            break;
        }
        if (fn(k, fn_arg) == -1) {
            *more = 1;
            break;
        }
        n++;
    }
    return n;
}

/* ---- finals and their retention ------------------------------------------------- */

static void
ring_push(struct known_item *k)
{
    if (ix.ring_len == ix.ring_cap) {
        size_t cap = ix.ring_cap ? ix.ring_cap * 2 : 64;
        struct known_item **r = ds_calloc(cap, sizeof *r);
        for (size_t i = 0; i < ix.ring_len; i++)
            r[i] = ix.ring[(ix.ring_head + i) % ix.ring_cap];
        free(ix.ring);
        ix.ring = r;
        ix.ring_cap = cap;
        ix.ring_head = 0;
    }
    ix.ring[(ix.ring_head + ix.ring_len) % ix.ring_cap] = k;
    ix.ring_len++;
    k->final_refs++;
}

/* K leaves with entries in the ring (a retried item handed over): drop them. */
static void
ring_remove(const struct known_item *k)
{
    size_t j = 0;
    for (size_t i = 0; i < ix.ring_len; i++) {
        struct known_item *e = ix.ring[(ix.ring_head + i) % ix.ring_cap];
        if (e != k)
            ix.ring[(ix.ring_head + j++) % ix.ring_cap] = e;
    }
    ix.ring_len = j;
}

static void
free_known(struct known_item *k)
{
    if (k->final_refs > 0)
        ring_remove(k);
    index_remove(k);
    order_remove(k);
    rare_remove(k);
    ix.stats.known--;
    ix.stats.by_state[k->state]--;
    if (items_is_final(k->state))
        ix.stats.retained_bytes -= bytes_of(k);
    free(k->extra);
    free(k);
}

static void schedule_expiry(void);

/* Forget the oldest finals while a bound is passed. */
static void
enforce(int64_t now)
{
    while (ix.ring_len > 0) {
        struct known_item *k = ix.ring[ix.ring_head];
        int stale = k->final_refs > 1 || !items_is_final(k->state);
        uint64_t finals = ix.stats.by_state[STATE_SUCCEEDED] + ix.stats.by_state[STATE_FAILED] +
                          ix.stats.by_state[STATE_CANCELLED];
        if (!stale && finals <= ix.max_count && ix.stats.retained_bytes <= ix.max_bytes &&
            k->finished_ns + (int64_t)ix.age_ns > now)
            break;
        ix.ring_head = (ix.ring_head + 1) % ix.ring_cap;
        ix.ring_len--;
        k->final_refs--;
        if (stale)
            continue;
        if (ix.forgotten != NULL)
            ix.forgotten(k->id);
        free_known(k);
        ix.stats.forgotten++;
    }
    schedule_expiry();
}

void
items_expire(void)
{
    enforce(ix.now());
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    items_expire();
}

/* The timer fires when the oldest final passes the age bound. */
static void
schedule_expiry(void)
{
    if (ix.timer == NULL)
        return;
    if (ix.ring_len == 0) {
        evtimer_del(ix.timer);
        return;
    }
    const struct known_item *k = ix.ring[ix.ring_head];
    int64_t due = k->finished_ns + (int64_t)ix.age_ns - ix.now();
    uint64_t ms = due <= 0 ? 0 : (uint64_t)due / 1000000 + 1;
    struct timeval tv = clock_timeval_ms(ms);
    evtimer_add(ix.timer, &tv);
}

/* ---- feeding ------------------------------------------------------------------- */

/* TRACE: NULL or its trace context (checked where it came from). */
static struct known_item *
make_known(const char *id, const char *batch, const char *kind,
           const struct trace_context *trace)
{
    size_t id_len = strlen(id), batch_len = strlen(batch);
    size_t parent_len = trace != NULL ? trace->parent_len : 0;
    size_t state_len = parent_len > 0 ? trace->state_len : 0;
    struct known_item *k = ds_calloc(1, offsetof(struct known_item, id) + id_len + 1 +
                                        batch_len + 1 + parent_len + 1 + state_len + 1);
    char *p = k->id;
    memcpy(p, id, id_len);
    p += id_len + 1;
    memcpy(p, batch, batch_len);
    p += batch_len + 1;
    if (parent_len > 0)
        memcpy(p, trace->parent, parent_len);
    p += parent_len + 1;
    if (state_len > 0)
        memcpy(p, trace->state, state_len);
    k->kind_index = kind_index(kind);
    k->state = STATE_QUEUED;
    k->accepted_ns = next_accepted(ix.now());
    index_add(k);
    if (ix.order_len == ix.order_cap) {
        if (ix.tombstones > 0)
            order_compact();
        if (ix.order_len == ix.order_cap) {
            ix.order_cap = ix.order_cap ? ix.order_cap * 2 : 1024;
            ix.order = ds_realloc(ix.order, ix.order_cap * sizeof *ix.order);
        }
    }
    ix.order[ix.order_len++] = (uintptr_t)k;
    ix.stats.known++;
    ix.stats.by_state[STATE_QUEUED]++;
    return k;
}

static void
set_extra(struct known_item *k, const char *error, const void *result, size_t result_len,
          const uint8_t *raw, size_t raw_len)
{
    free(k->extra);
    k->extra = NULL;
    size_t error_len = error != NULL ? strlen(error) : 0;
    if (error_len == 0 && result_len == 0 && raw_len == 0)
        return;
    struct known_extra *e = ds_malloc(sizeof *e + error_len + 1 + result_len + raw_len);
    e->error_len = (uint32_t)error_len;
    e->result_len = (uint32_t)result_len;
    e->raw_len = (uint32_t)raw_len;
    if (error_len > 0)
        memcpy(e->data, error, error_len);
    e->data[error_len] = '\0';
    if (result_len > 0)
        memcpy(e->data + error_len + 1, result, result_len);
    if (raw_len > 0)
        memcpy(e->data + error_len + 1 + result_len, raw, raw_len);
    k->extra = e;
}

/* A change of K begins: a final's bytes leave the count until end_change(). */
static int
begin_change(struct known_item *k)
{
    int was_final = items_is_final(k->state);
    if (was_final)
        ix.stats.retained_bytes -= bytes_of(k);
    return was_final;
}

/* K's state is now STATE: a final counts in the bytes, and a new final
 * enters the ring. */
static void
end_change(struct known_item *k, enum wire_state state, int was_final)
{
    ix.stats.by_state[k->state]--;
    ix.stats.by_state[state]++;
    if (k->state != state) {
        rare_remove(k);
        k->state = (uint8_t)state;
        rare_add(k);
    }
    if (!items_is_final(state))
        return;
    ix.stats.retained_bytes += bytes_of(k);
    if (!was_final)
        ring_push(k);
}

/* ITEM's entry: the one it points to, else looked up (and remembered). */
static struct known_item *
entry_of(struct item *item)
{
    if (item->known == NULL && !surely_absent(item->id))
        item->known = (struct known_item *)items_find(item->id);
    return item->known;
}

/* ITEM's entry made: with the trace its WorkItem bytes hold. */
static struct known_item *
make_known_of(struct item *item)
{
    struct trace_context t;
    int traced = trace_of_work_item(item->raw, item->raw_len, &t) &&
                 t.parent_len == TRACE_PARENT_LEN && memchr(t.parent, '\0', t.parent_len) == NULL &&
                 (t.state_len == 0 || memchr(t.state, '\0', t.state_len) == NULL);
    return item->known = make_known(item->id, item->batch, item->kind, traced ? &t : NULL);
}

void
items_accepting(struct item *item)
{
    struct known_item *k = entry_of(item);
    if (k == NULL)
        k = make_known_of(item);
    int was_final = begin_change(k);    /* a retry: it runs again from attempt 1 */
    k->kind_index = kind_index(item->kind);
    set_extra(k, NULL, NULL, 0, NULL, 0);
    k->started_ns = k->finished_ns = 0;
    k->worker_pid = 0;
    k->progress = 0;
    k->priority = item->priority;
    k->attempt = (uint16_t)item->attempt;
    k->max_attempts = (uint16_t)item->max_attempts;
    end_change(k, STATE_QUEUED, was_final);
}

void
items_forget(struct item *item)
{
    struct known_item *k = entry_of(item);
    if (k == NULL || items_is_final(k->state))
        return;
    item->known = NULL;
    free_known(k);
    if (ix.changed != NULL)
        ix.changed(item->id);
}

void
items_updated(struct item *item, const struct outcome *o, uint64_t seq)
{
    struct known_item *k = entry_of(item);
    if (k == NULL) {
        k = make_known_of(item);
        k->priority = item->priority;
    }
    int was_final = begin_change(k);
    k->last_seq = seq;
    k->attempt = (uint16_t)item->attempt;
    k->max_attempts = (uint16_t)item->max_attempts;
    k->worker_pid = o->worker_pid;
    switch (o->state) {
    case STATE_STARTED:
        k->started_ns = ix.now();
        k->progress = 0;
        break;
    case STATE_PROGRESS:
        k->progress = progress_code(o->progress);
        if (k->started_ns == 0)
            k->started_ns = ix.now();
        break;
    case STATE_SUCCEEDED:
        k->progress = progress_code(1);
        break;
    default:
        break;
    }
    set_cost(k, o->cpu_usec, o->max_rss_kib);
    int final = items_is_final(o->state);
    if (final) {
        k->worker_pid = 0;
        k->finished_ns = ix.now();
        int succeeded = o->state == STATE_SUCCEEDED;
        set_extra(k, o->error, succeeded ? o->result : NULL, succeeded ? o->result_len : 0,
                  succeeded ? NULL : item->raw, succeeded ? 0 : item->raw_len);
    } else if (o->state != STATE_PROGRESS) {
        set_extra(k, o->error, NULL, 0, NULL, 0);
    }
    end_change(k, o->state, was_final);
    if (final) {
        item->known = NULL;     /* the retention may forget it now */
        enforce(ix.now());
        if (ix.changed != NULL)
            ix.changed(item->id);
    }
}

void
items_restore_final(const struct known_final *f)
{
    if (items_find(f->id) != NULL || !items_is_final(f->state))
        return;
    struct trace_context t = {
        .parent = f->traceparent, .parent_len = f->traceparent ? strlen(f->traceparent) : 0,
        .state = f->tracestate, .state_len = f->tracestate ? strlen(f->tracestate) : 0,
    };
    struct known_item *k = make_known(f->id, f->batch, f->kind, &t);
    k->attempt = (uint16_t)f->attempt;
    k->max_attempts = (uint16_t)f->max_attempts;
    k->priority = f->priority;
    /* Listed by when it is restored (accepted_ns orders the listing), its
     * own time kept when it is the newest. */
    if (f->accepted_ns >= k->accepted_ns)
        k->accepted_ns = ix.last_accepted = f->accepted_ns;
    k->started_ns = f->started_ns;
    k->finished_ns = f->finished_ns;
    k->last_seq = f->last_seq;
    k->progress = progress_code(f->state == STATE_SUCCEEDED ? 1 : 0);
    set_cost(k, f->cpu_usec, f->max_rss_kib);
    set_extra(k, f->error, f->result, f->result_len, f->raw, f->raw_len);
    end_change(k, f->state, 0);
    enforce(ix.now());
}

void
items_on_change(void (*fn)(const char *id))
{
    ix.changed = fn;
}

void
items_on_forgotten(void (*fn)(const char *id))
{
    ix.forgotten = fn;
}

/* ---- observability ------------------------------------------------------------- */

const struct items_stats *
items_stats(void)
{
    return &ix.stats;
}

void
items_count_duplicate(void)
{
    ix.stats.duplicates++;
}

void
items_count_retry(void)
{
    ix.stats.retries++;
}

size_t
items_overhead_bytes(void)
{
    /* The struct, its slot by id (load 3/8 to 3/4: about 1.5 slots), the
     * order array's entry, the finals ring's entry, the \0s of id, batch,
     * traceparent and tracestate. */
    return offsetof(struct known_item, id) + 3 * sizeof(uint64_t) / 2 + sizeof(uintptr_t) +
           sizeof(void *) + 4;
}

/* ---- start, reload, exit ----------------------------------------------------------- */

void
items_init(struct event_base *base)
{
    memset(&ix, 0, sizeof ix);
    ix.now = wall_now;
    ix.age_ns = 24ull * 3600 * 1000000000;
    ix.max_count = 1000000;
    ix.max_bytes = 256u << 20;
    if (base != NULL)
        ix.timer = evtimer_new(base, on_timer, NULL);
}

void
items_configure(uint64_t age_ms, uint64_t count, uint64_t bytes)
{
    ix.age_ns = age_ms * 1000000;
    ix.max_count = count;
    ix.max_bytes = bytes;
    enforce(ix.now());
}

void
items_set_clock(int64_t (*now)(void))
{
    ix.now = now != NULL ? now : wall_now;
}

void
items_shutdown(void)
{
    for (size_t i = 0; i < ix.slot_count; i++)
        if (ix.slots[i] != 0) {
            struct known_item *k = entry_at(ix.slots[i]);
            free(k->extra);
            free(k);
        }
    free(ix.slots);
    free(ix.order);
    free(ix.ring);
    free(ix.rare[0].v);
    free(ix.rare[1].v);
    free(ix.kinds);
    if (ix.timer != NULL)
        event_free(ix.timer);
    memset(&ix, 0, sizeof ix);
    ix.now = wall_now;
}
