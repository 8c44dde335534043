/*
 * waitlist.c: the items that wait for a worker, by priority, and the
 * delayed ones, by due time. No I/O and no clock: queue.c asks it what is
 * due at a time it gives, and arms its one timer for waitlist_next_due().
 *
 * Ready items: one FIFO list per priority in use, the lists in an array
 * sorted by priority (highest last). A push finds its list by a binary
 * search (O(log P) for P priorities in use, O(1) when the item's priority
 * is that of the highest list, as it always is with priority 0 only); a
 * pop takes the head of the last list. Within a list, items keep their
 * acceptance order: an item goes in by its key (keys grow with
 * acceptance), which is the tail for a new item and the head for one
 * pushed back, and a short walk otherwise. An item that becomes due joins
 * the tail of its list, behind what was ready before it.
 *
 * Delayed items: a binary min-heap on (due_ns, key), an array of item
 * pointers: no allocation per item but the array's growth.
 *
 * Ownership: the lists and the heap hold items (linked by item->next, the
 * heap by pointer) and free none; the arrays are the waitlist's, freed by
 * waitlist_free().
 */
#ifndef DS_GRPC_WAITLIST_H
#define DS_GRPC_WAITLIST_H

#include <stddef.h>
#include <stdint.h>

struct item;

/* The items of one priority, in acceptance order. */
struct waitlist_level {
    int32_t priority;
    struct item *head, *tail;
};

struct waitlist {
    struct waitlist_level *levels;  /* ascending priority; none empty */
    size_t level_count, level_cap;
    struct item **heap;             /* delayed: a min-heap on (due_ns, key) */
    size_t heap_count, heap_cap;
    uint64_t ready;                 /* items in the levels */
    uint64_t ready_weight;          /* their item->weight */
};

/* A ready ITEM goes to its place in its priority's list by its key
 * (FRONT: look from the head first, for an item pushed back). */
void waitlist_push(struct waitlist *wl, struct item *item, int front);
/* The same, at the tail whatever its key (an item just due). */
void waitlist_append(struct waitlist *wl, struct item *item);
/* The first ready item (highest priority, oldest), or NULL; pop takes it out. */
struct item *waitlist_peek(const struct waitlist *wl);
struct item *waitlist_pop(struct waitlist *wl);

/* A delayed ITEM (item->due_ns set) into the heap. */
void waitlist_delay(struct waitlist *wl, struct item *item);
/* The earliest due time in the heap, or 0 if none. */
uint64_t waitlist_next_due(const struct waitlist *wl);
/* Move every delayed item due at NOW_NS or before to the ready lists (in
 * due order); return how many moved. */
size_t waitlist_release_due(struct waitlist *wl, uint64_t now_ns);
/* The earliest delayed item, out of the heap, or NULL. */
struct item *waitlist_pop_delayed(struct waitlist *wl);

/* Call FN for every item, ready (highest priority first) then delayed. */
void waitlist_for_each(const struct waitlist *wl, void (*fn)(const struct item *item, void *arg),
                       void *arg);
/* Take out every item MATCH accepts, ready and delayed, linked by ->next
 * in *TAKEN's list (ready ones first, in order); one pass over each. */
void waitlist_take_matching(struct waitlist *wl, int (*match)(const struct item *item, void *arg),
                            void *arg, struct item **taken);

void waitlist_free(struct waitlist *wl);

#endif
