/*
 * The kind gate (kind_gate.h says what it is and when it is asked).
 *
 * A kind has an entry here while it is limited, or while items counted or
 * parked under a limit it had remain; entries without either are dropped
 * by the next reload. Kinds are interned (metrics_kind), so an entry is
 * found by comparing pointers.
 */
#include "grpc/kind_gate.h"

#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "grpc/item.h"
#include "grpc/metrics.h"
#include "grpc/token_bucket.h"

/* Parked items by key, linked by item->next. */
struct park_list {
    struct item *head, *tail;
};

/* One kind's limits and lists: the gate's, in gate.kinds. */
struct gate_kind {
    const char *kind;           /* interned: item->kind */
    int limited;                /* by the config in force */
    int paused;
    uint32_t concurrency;       /* 0: unlimited */
    struct token_bucket bucket; /* count 0: no rate */
    uint64_t running;           /* items holding a slot (item->gate_slot) */
    struct park_list list;      /* parked */
    struct park_list kept;      /* parked, item->kept_here: a handover does not take them */
    uint64_t parked;
};

static struct {
    struct event_base *base;
    const struct kind_gate_ops *ops;
    struct gate_kind *kinds;    /* ours: grown by ds_realloc, freed at shutdown */
    size_t count, size;
    uint64_t parked;
    int ready;                  /* some kind may have room for its parked items */
    struct event *timer;        /* the earliest refill a parked kind waits for */
    uint64_t timer_due_ns;      /* 0: not armed */
} gate;

static struct gate_kind *
find(const char *kind)
{
    for (size_t i = 0; i < gate.count; i++)
        if (gate.kinds[i].kind == kind)
            return &gate.kinds[i];
    return NULL;
}

static int
has_room(const struct gate_kind *k)
{
    return !k->paused && (k->concurrency == 0 || k->running < k->concurrency);
}

/* K waits for a token: the timer fires when the first one is there. */
static void
arm_refill(struct gate_kind *k, uint64_t now_ns)
{
    uint64_t due = now_ns + token_bucket_wait_ns(&k->bucket, now_ns);
    if (gate.timer_due_ns != 0 && gate.timer_due_ns <= due)
        return;
    gate.timer_due_ns = due;
    uint64_t wait_ms = (due - now_ns + 999999) / 1000000;   /* never early */
    struct timeval tv = clock_timeval_ms(wait_ms);
    evtimer_add(gate.timer, &tv);
}

static void
on_refill(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    gate.timer_due_ns = 0;
    gate.ready = 1;
    gate.ops->dispatch();
}

static int
has_parked(const struct gate_kind *k)
{
    return k->list.head != NULL || k->kept.head != NULL;
}

/* Into its list of K by key: at the tail unless it is older (a retry, an
 * item given back by a worker that died or by a handover). */
static void
park(struct gate_kind *k, struct item *item)
{
    struct park_list *l = item->kept_here ? &k->kept : &k->list;
    item->next = NULL;
    if (l->tail == NULL) {
        l->head = l->tail = item;
    } else if (l->tail->key < item->key) {
        l->tail->next = item;
        l->tail = item;
    } else {
        struct item **pp = &l->head;
        while ((*pp)->key < item->key)
            pp = &(*pp)->next;
        item->next = *pp;
        *pp = item;
    }
    k->parked++;
    gate.parked++;
}

/* The list of K whose head is oldest (WITH_KEPT 0: the kept one is not
 * looked at), or NULL if they are empty. */
static struct park_list *
oldest_list(struct gate_kind *k, int with_kept)
{
    struct park_list *l = k->list.head != NULL ? &k->list : NULL;
    if (with_kept && k->kept.head != NULL && (l == NULL || k->kept.head->key < l->head->key))
        l = &k->kept;
    return l;
}

static struct item *
unpark(struct gate_kind *k, struct park_list *l)
{
    struct item *item = l->head;
    l->head = item->next;
    if (l->head == NULL)
        l->tail = NULL;
    item->next = NULL;
    k->parked--;
    gate.parked--;
    return item;
}

int
kind_gate_admit(struct item *item)
{
    if (item->gate_slot || gate.count == 0)
        return 1;               /* released holding its slot, or no kind limited */
    struct gate_kind *k = find(item->kind);
    if (k == NULL)
        return 1;
    if (has_parked(k) || !has_room(k)) {
        park(k, item);
        return 0;
    }
    uint64_t now = clock_monotonic_ns();
    if (!token_bucket_take(&k->bucket, now)) {
        park(k, item);
        arm_refill(k, now);
        return 0;
    }
    item->gate_slot = 1;
    k->running++;
    return 1;
}

void
kind_gate_release_ready(void)
{
    if (!gate.ready)
        return;
    gate.ready = 0;
    uint64_t now = clock_monotonic_ns();
    for (size_t i = 0; i < gate.count; i++) {
        struct gate_kind *k = &gate.kinds[i];
        struct item *first = NULL, **tail = &first;
        while (has_parked(k) && has_room(k)) {
            if (!token_bucket_take(&k->bucket, now)) {
                arm_refill(k, now);
                break;
            }
            struct item *item = unpark(k, oldest_list(k, 1));
            item->gate_slot = 1;
            k->running++;
            *tail = item;
            tail = &item->next;
        }
        if (first != NULL)
            gate.ops->release(first);
    }
}

void
kind_gate_leave(struct item *item)
{
    if (!item->gate_slot)
        return;
    item->gate_slot = 0;
    struct gate_kind *k = find(item->kind);
    if (k == NULL)
        return;
    k->running--;
    if (has_parked(k))
        gate.ready = 1;
}

void
kind_gate_leave_unstarted(struct item *item)
{
    if (!item->gate_slot)
        return;         /* parked, or never limited: it took no token */
    struct gate_kind *k = find(item->kind);
    if (k != NULL)
        token_bucket_give_back(&k->bucket, clock_monotonic_ns());
    kind_gate_leave(item);
}

/* ---- reload ---------------------------------------------------------------- */

/* A kind limited now for the first time counts what its workers hold. */
static void
count_held(struct item *item, void *arg)
{
    struct gate_kind *k = arg;
    if (item->kind == k->kind && !item->gate_slot) {
        item->gate_slot = 1;
        k->running++;
    }
}

void
kind_gate_configure(const struct ds_config *c)
{
    uint64_t now = clock_monotonic_ns();
    for (size_t i = 0; i < gate.count; i++)
        gate.kinds[i].limited = 0;
    for (size_t i = 0; i < c->handler_count; i++) {
        const struct ds_handler_config *h = &c->handlers[i];
        if (h->concurrency == 0 && h->rate_count == 0 && !h->paused)
            continue;
        const char *kind = metrics_kind(h->kind)->kind;
        struct gate_kind *k = find(kind);
        if (k == NULL) {
            if (gate.count == gate.size) {
                gate.size = gate.size ? gate.size * 2 : 8;
                gate.kinds = ds_realloc(gate.kinds, gate.size * sizeof *gate.kinds);
            }
            k = &gate.kinds[gate.count++];
            memset(k, 0, sizeof *k);
            k->kind = kind;
            gate.ops->for_each_held(count_held, k);
        }
        k->limited = 1;
        k->paused = h->paused;
        k->concurrency = h->concurrency;
        token_bucket_set(&k->bucket, h->rate_count, h->rate_interval_ms, now);
    }
    /* Kinds no longer limited: their parked items go; their entries too
     * once nothing of them is counted. */
    size_t kept = 0;
    for (size_t i = 0; i < gate.count; i++) {
        struct gate_kind *k = &gate.kinds[i];
        if (!k->limited) {
            k->paused = 0;
            k->concurrency = 0;
            token_bucket_set(&k->bucket, 0, 0, now);
            if (k->running == 0 && !has_parked(k))
                continue;
        }
        gate.kinds[kept++] = *k;
    }
    gate.count = kept;
    gate.ready = 1;
}

void
kind_gate_init(struct event_base *base, const struct kind_gate_ops *ops)
{
    memset(&gate, 0, sizeof gate);
    gate.base = base;
    gate.ops = ops;
    gate.timer = evtimer_new(base, on_refill, NULL);
}

void
kind_gate_shutdown(void)
{
    if (gate.timer != NULL)
        event_free(gate.timer);
    free(gate.kinds);
    memset(&gate, 0, sizeof gate);
}

/* ---- the parked items --------------------------------------------------------- */

uint64_t
kind_gate_parked(void)
{
    return gate.parked;
}

struct item *
kind_gate_take_parked(int with_kept)
{
    struct gate_kind *oldest = NULL;
    struct park_list *oldest_l = NULL;
    for (size_t i = 0; i < gate.count; i++) {
        struct gate_kind *k = &gate.kinds[i];
        struct park_list *l = oldest_list(k, with_kept);
        if (l != NULL && (oldest_l == NULL || l->head->key < oldest_l->head->key)) {
            oldest = k;
            oldest_l = l;
        }
    }
    return oldest != NULL ? unpark(oldest, oldest_l) : NULL;
}

void
kind_gate_for_each(void (*fn)(const struct item *item, void *arg), void *arg)
{
    for (size_t i = 0; i < gate.count; i++) {
        for (const struct item *item = gate.kinds[i].list.head; item != NULL; item = item->next)
            fn(item, arg);
        for (const struct item *item = gate.kinds[i].kept.head; item != NULL; item = item->next)
            fn(item, arg);
    }
}

static void
take_matching_from(struct gate_kind *k, struct park_list *l,
                   int (*match)(const struct item *item, void *arg), void *arg,
                   struct item ***tail)
{
    struct item **pp = &l->head, *prev = NULL;
    while (*pp != NULL) {
        struct item *item = *pp;
        if (!match(item, arg)) {
            prev = item;
            pp = &item->next;
            continue;
        }
        *pp = item->next;
        item->next = NULL;
        k->parked--;
        gate.parked--;
        **tail = item;
        *tail = &item->next;
    }
    l->tail = prev;
}

void
kind_gate_take_matching(int (*match)(const struct item *item, void *arg), void *arg,
                        struct item ***tail)
{
    for (size_t i = 0; i < gate.count; i++) {
        take_matching_from(&gate.kinds[i], &gate.kinds[i].list, match, arg, tail);
        take_matching_from(&gate.kinds[i], &gate.kinds[i].kept, match, arg, tail);
    }
}

/* ---- /status ---------------------------------------------------------------------- */

struct held_count {
    const char *kind;
    uint64_t n;
};

static void
count_kind(struct item *item, void *arg)
{
    struct held_count *hc = arg;
    if (item->kind == hc->kind)
        hc->n++;
}

void
kind_gate_state(const char *kind, struct kind_gate_state *out)
{
    memset(out, 0, sizeof *out);
    const struct gate_kind *k = find(kind);
    if (k != NULL) {
        out->limited = k->limited;
        out->paused = k->paused;
        out->running = k->running;
        out->parked = k->parked;
        return;
    }
    /* Not counted here: what the workers hold (a few thousand at most). */
    struct held_count hc = { .kind = kind };
    gate.ops->for_each_held(count_kind, &hc);
    out->running = hc.n;
}
