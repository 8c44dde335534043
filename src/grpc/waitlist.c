/*
 * Ready items by priority, delayed ones by due time (waitlist.h says how).
 */
#include "grpc/waitlist.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "grpc/item.h"

/* ---- ready items: one list per priority ------------------------------------ */

/* The index of PRIORITY's level, or where it would go (*FOUND 0). */
static size_t
level_search(const struct waitlist *wl, int32_t priority, int *found)
{
    size_t lo = 0, hi = wl->level_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (wl->levels[mid].priority < priority)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < wl->level_count && wl->levels[lo].priority == priority;
    return lo;
}

static struct waitlist_level *
level_of(struct waitlist *wl, int32_t priority)
{
    size_t n = wl->level_count;
    /* Priority 0 only (or the highest in use): no search. */
    if (n > 0 && wl->levels[n - 1].priority == priority)
        return &wl->levels[n - 1];
    int found;
    size_t i = level_search(wl, priority, &found);
    if (found)
        return &wl->levels[i];
    if (n == wl->level_cap) {
        wl->level_cap = wl->level_cap ? wl->level_cap * 2 : 8;
        wl->levels = ds_realloc(wl->levels, wl->level_cap * sizeof *wl->levels);
    }
    memmove(&wl->levels[i + 1], &wl->levels[i], (n - i) * sizeof *wl->levels);
    wl->levels[i] = (struct waitlist_level){ .priority = priority };
    wl->level_count++;
    return &wl->levels[i];
}

static void
level_remove(struct waitlist *wl, size_t i)
{
    memmove(&wl->levels[i], &wl->levels[i + 1], (wl->level_count - i - 1) * sizeof *wl->levels);
    wl->level_count--;
}

static void
count_in(struct waitlist *wl, const struct item *item)
{
    wl->ready++;
    wl->ready_weight += item->weight;
}

void
waitlist_append(struct waitlist *wl, struct item *item)
{
    struct waitlist_level *l = level_of(wl, item->priority);
    item->next = NULL;
    if (l->tail != NULL)
        l->tail->next = item;
    else
        l->head = item;
    l->tail = item;
    count_in(wl, item);
}

void
waitlist_push(struct waitlist *wl, struct item *item, int front)
{
    struct waitlist_level *l = level_of(wl, item->priority);
    count_in(wl, item);
    if (l->head == NULL) {
        item->next = NULL;
        l->head = l->tail = item;
    } else if (!front && l->tail->key < item->key) {
        item->next = NULL;
        l->tail->next = item;
        l->tail = item;
    } else if (item->key < l->head->key) {
        item->next = l->head;
        l->head = item;
    } else if (l->tail->key < item->key) {
        item->next = NULL;
        l->tail->next = item;
        l->tail = item;
    } else {
        /* Somewhere inside (an item pushed back behind older ones, or keys
         * out of order): after the last one older than it. */
        struct item *prev = l->head;
        while (prev->next != NULL && prev->next->key < item->key)
            prev = prev->next;
        item->next = prev->next;
        prev->next = item;
        if (l->tail == prev)
            l->tail = item;
    }
}

struct item *
waitlist_peek(const struct waitlist *wl)
{
    return wl->level_count > 0 ? wl->levels[wl->level_count - 1].head : NULL;
}

struct item *
waitlist_pop(struct waitlist *wl)
{
    if (wl->level_count == 0)
        return NULL;
    struct waitlist_level *l = &wl->levels[wl->level_count - 1];
    struct item *item = l->head;
    l->head = item->next;
    if (l->head == NULL)
        wl->level_count--;      /* the last level: nothing to move */
    item->next = NULL;
    wl->ready--;
    wl->ready_weight -= item->weight;
    return item;
}

/* ---- delayed items: a min-heap -------------------------------------------- */

static int
earlier(const struct item *a, const struct item *b)
{
    return a->due_ns < b->due_ns || (a->due_ns == b->due_ns && a->key < b->key);
}

static void
sift_up(struct item **h, size_t i)
{
    struct item *item = h[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!earlier(item, h[parent]))
            break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = item;
}

static void
sift_down(struct item **h, size_t n, size_t i)
{
    struct item *item = h[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && earlier(h[child + 1], h[child]))
            child++;
        if (!earlier(h[child], item))
            break;
        h[i] = h[child];
        i = child;
    }
    h[i] = item;
}

void
waitlist_delay(struct waitlist *wl, struct item *item)
{
    if (wl->heap_count == wl->heap_cap) {
        wl->heap_cap = wl->heap_cap ? wl->heap_cap * 2 : 64;
        wl->heap = ds_realloc(wl->heap, wl->heap_cap * sizeof *wl->heap);
    }
    item->next = NULL;
    wl->heap[wl->heap_count] = item;
    sift_up(wl->heap, wl->heap_count++);
}

uint64_t
waitlist_next_due(const struct waitlist *wl)
{
    return wl->heap_count > 0 ? wl->heap[0]->due_ns : 0;
}

struct item *
waitlist_pop_delayed(struct waitlist *wl)
{
    if (wl->heap_count == 0)
        return NULL;
    struct item *item = wl->heap[0];
    if (--wl->heap_count > 0) {
        wl->heap[0] = wl->heap[wl->heap_count];
        sift_down(wl->heap, wl->heap_count, 0);
    }
    return item;
}

size_t
waitlist_release_due(struct waitlist *wl, uint64_t now_ns)
{
    size_t moved = 0;
    while (wl->heap_count > 0 && wl->heap[0]->due_ns <= now_ns) {
        waitlist_append(wl, waitlist_pop_delayed(wl));
        moved++;
    }
    return moved;
}

/* ---- all of them ---------------------------------------------------------- */

void
waitlist_for_each(const struct waitlist *wl, void (*fn)(const struct item *item, void *arg),
                  void *arg)
{
    for (size_t i = wl->level_count; i-- > 0;)
        for (const struct item *item = wl->levels[i].head; item != NULL; item = item->next)
            fn(item, arg);
    for (size_t i = 0; i < wl->heap_count; i++)
        fn(wl->heap[i], arg);
}

void
waitlist_take_matching(struct waitlist *wl, int (*match)(const struct item *item, void *arg),
                       void *arg, struct item **taken)
{
    struct item **taken_tail = taken;
    while (*taken_tail != NULL)
        taken_tail = &(*taken_tail)->next;
    for (size_t i = wl->level_count; i-- > 0;) {
        struct waitlist_level *l = &wl->levels[i];
        struct item **pp = &l->head, *prev = NULL;
        while (*pp != NULL) {
            struct item *item = *pp;
            if (!match(item, arg)) {
                prev = item;
                pp = &item->next;
                continue;
            }
            *pp = item->next;
            wl->ready--;
            wl->ready_weight -= item->weight;
            item->next = NULL;
            *taken_tail = item;
            taken_tail = &item->next;
        }
        l->tail = prev;
        if (l->head == NULL)
            level_remove(wl, i);
    }
    /* The heap: keep what stays in place, then heapify once (O(n)). */
    size_t kept = 0;
    for (size_t i = 0; i < wl->heap_count; i++) {
        struct item *item = wl->heap[i];
        if (!match(item, arg)) {
            wl->heap[kept++] = item;
            continue;
        }
        item->next = NULL;
        *taken_tail = item;
        taken_tail = &item->next;
    }
    if (kept != wl->heap_count) {
        wl->heap_count = kept;
        for (size_t i = kept / 2; i-- > 0;)
            sift_down(wl->heap, kept, i);
    }
}

void
waitlist_free(struct waitlist *wl)
{
    free(wl->levels);
    free(wl->heap);
    memset(wl, 0, sizeof *wl);
}
