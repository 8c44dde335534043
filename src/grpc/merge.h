/*
 * merge.c: what the result cache does with an item of a cached kind
 * (handlers.<kind>.cache), from the moment the store would queue it:
 *
 *   served    a fresh result is cached for its key (cache_key.h): it ends
 *             SUCCEEDED with it at once, cached: true, no worker involved
 *             (with a backing that can be asked, cluster mode, the shared
 *             cache is asked first, the item held here meanwhile);
 *   merged    an identical item (same key) is running or queued here, the
 *             leader: it waits for that run, out of the queue, and gets
 *             its result (SUCCEEDED, cached: true);
 *   run       else it is queued as usual and leads a run others may merge
 *             into (unless it is delayed: then it runs on its own, and no
 *             item waits for another's delay).
 *
 * When the leader ends:
 *   SUCCEEDED  the result is cached (unless larger than the kind's size)
 *              and every item that merged into it ends SUCCEEDED with it;
 *   FAILED     nothing is cached; the merged items end FAILED with the
 *              leader's error (the kind is declared deterministic: the
 *              same run fails the same way), and can be retried like any;
 *   CANCELLED, or it leaves otherwise (handed to another instance, taken
 *              by another instance): the merged items are released to run
 *              on their own, i.e. admitted again: the first leads a new
 *              run, the others merge into it.
 * RETRYING of the leader keeps them waiting. A merged item cancelled ends
 * CANCELLED; the leader runs on. A merged item's priority does not lift
 * its leader's.
 *
 * The store calls these and answers through the events given to
 * merge_init() (it ends and queues items; this file never does itself).
 * Items waiting here (merged, or held for a lookup) are the store's,
 * counted as not final; this file holds them in its lists (item->next)
 * and frees none.
 */
#ifndef DS_GRPC_MERGE_H
#define DS_GRPC_MERGE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/config.h"
#include "grpc/cache_key.h"

struct cache_backing;
struct item;
struct outcome;

struct merge_events {
    /* ITEM ends SUCCEEDED with RESULT (LEN bytes, borrowed), cached. */
    void (*served)(struct item *item, const void *result, size_t len);
    /* ITEM ends FAILED with ERROR: the run it waited for failed. */
    void (*failed)(struct item *item, const char *error);
    /* ITEM runs: queue it, without dispatching. */
    void (*run)(struct item *item);
    void (*dispatch)(void);
};

/* EVENTS (static); BACKING (static) or NULL (memory mode). */
void merge_init(const struct merge_events *events, const struct cache_backing *backing);
/* Bring back what the backing kept (before items are recovered). */
void merge_start(void);
/* The config in force (at start and after each reload). */
void merge_configure(const struct ds_config *c);
/* Every item held here is passed to FN (which frees it). */
void merge_shutdown(void (*fn)(struct item *item));

/* ITEM (counted by the store, in no list) would be queued: 1 if this file
 * took it (served, merged, or held for a lookup), 0 if the caller queues
 * it. */
int merge_admit(struct item *item);
/* ITEM's final is O (about to be recorded): if it led a run, the items
 * merged into it are settled now (see above). */
void merge_ended(struct item *item, const struct outcome *o);
/* ITEM leaves without a final of its own (dropped, handed over): if it
 * led a run, the merged items are released. */
void merge_gone(const struct item *item);

/* The item with KEY if it waits here, else NULL. (A queued or running
 * leader is the queue's.) */
struct item *merge_find(uint64_t key);
/* FN for every item waiting here. */
void merge_for_each(void (*fn)(const struct item *item, void *arg), void *arg);
/* Every item waiting here that MATCH(item, ARG) accepts leaves and is
 * passed to TAKEN(item, ARG) (which ends it), once the walk is over. */
void merge_cancel(int (*match)(const struct item *item, void *arg),
                  void (*taken)(struct item *item, void *arg), void *arg);
/* Every item waiting here leaves and is passed to FN(item, 0); the runs
 * in flight are forgotten (their leaders are the queue's). */
void merge_take_all(void (*fn)(struct item *item, pid_t worker_pid));
/* Items waiting here. */
uint64_t merge_waiting(void);

/* ---- for a backing -------------------------------------------------------- */

/* The answer to backing->lookup(KIND, KEY): FOUND, with RESULT (LEN
 * bytes, borrowed) stored at STORED_MS (unix ms), or not. */
void merge_looked_up(const char *kind, const uint8_t key[CACHE_KEY_SIZE], int found,
                     const void *result, size_t len, uint64_t stored_ms);

#endif
