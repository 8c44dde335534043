/*
 * cluster_write.c: what this instance writes into Redis for its items
 * (cluster mode; cluster.h has the contract, cluster.c the session).
 * Accepts gather into one accept script per turn of the loop (a verdict
 * each), updates into one update script; finals and retries go the same
 * way and end the item here when they land; a quick item's STARTED is
 * folded into its next update. Backpressure: past INFLIGHT_MAX items
 * with a script in flight, submit.c reads no more.
 */
#ifndef DS_GRPC_CLUSTER_WRITE_H
#define DS_GRPC_CLUSTER_WRITE_H

#include <stdint.h>

#include <event2/util.h>
#include <hiredis/async.h>

#include "grpc/item.h"
#include "grpc/store.h"

/* The store's backend calls (store_redis): accept an item (its verdict
 * comes through store_accepted()), publish an update, end an item with
 * its final update or a RETRYING. */
void cluster_accept(struct acceptance a);
void cluster_publish(struct item *item, const struct outcome *o);
void cluster_final(struct item *item, const struct outcome *o);
void cluster_retry(struct item *item, const struct outcome *o);
/* Too much in flight to Redis: submit.c reads no more items until
 * cluster_backpressure_check() finds it drained below half. */
int cluster_busy(void);
void cluster_backpressure_check(void);
/* Tell every instance a subscriber here wants STARTED ({NAME}:want_started). */
void cluster_publish_want_started(void);

/* Add ITEM's update to the next update script (MODE u/r/f, the entry's
 * count CHECK_ATTEMPT, ...: see the definition); FN(ARG) hears its seq,
 * 0 (superseded), or an error or NULL. -1: the session is down, FN will
 * not run. */
int cluster_send_update(const struct item *item, char mode, uint32_t check_attempt,
                        enum wire_state state, const uint8_t *encoded, size_t encoded_len,
                        uint64_t ts, const uint8_t *s0, size_t s0_len, redisCallbackFn *fn,
                        void *arg);
/* The callback of an update of a running item, and what a lost one logs. */
void cluster_on_published(redisAsyncContext *ac, void *reply, void *arg);
void cluster_note_lost_update(void);
/* The delivery count ITEM's entry has while this copy of it runs. */
uint32_t cluster_entry_count(const struct item *item);
/* Is the final or retry of the item with KEY on its way? */
int cluster_ending_holds(uint64_t key);

/* The session went (on_reset()): the accepts not sent hear UNAVAILABLE;
 * the updates gathered are sent or, unsendable, kept for
 * cluster_fail_unsent_updates(), which tells those never sent a NULL
 * reply. */
void cluster_fail_accepts(void);
void cluster_flush_updates(void);
void cluster_fail_unsent_updates(void);
/* cl.flush_event: send the accepts and updates of this turn of the loop. */
void cluster_on_flush(evutil_socket_t fd, short what, void *arg);

#endif
