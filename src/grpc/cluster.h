/*
 * Cluster mode (cluster: {redis: URL, name: NAME}): the queue and the update
 * log of every instance live in Redis Streams, so instances on several
 * machines act as one service. docs/scaling.md has the whole story; the
 * contract in brief:
 *
 * - {NAME}:work is the queue: one entry per item not final yet, with IDs
 *   0-1, 0-2, ... (the item's key). Instances read it through the consumer
 *   group "dosomethingd", each only as much as its workers have room for.
 *   An item counts as accepted once a script has added its entry and its
 *   QUEUED update; its final update, XACK and XDEL happen in one script.
 * - {NAME}:updates is the update log: entry 0-SEQ holds the Update (its seq
 *   is the entry's position, counted by {NAME}:seq), trimmed to about
 *   updates.history. Every instance reads all of it and serves its
 *   subscribers from it: one order, replay from any instance.
 * - The attempt of an item is its entry's delivery count. A script
 *   publishes an item's update only while the entry is still pending at
 *   this instance with that count, so an update of a superseded attempt is
 *   dropped cluster-wide.
 * - An instance renews the items it holds every lease/3; an entry nobody
 *   renewed for cluster.lease is claimed by another instance (RETRYING,
 *   attempt + 1, FAILED past max_attempts).
 * - Redis unreachable: doSomething fails with UNAVAILABLE, health says
 *   NOT_SERVING, the connections come back with backoff; nothing is queued
 *   locally.
 *
 * Everything runs on the loop thread over hiredis's libevent adapter: no
 * call blocks (but the resolution of a host name when connecting).
 */
#ifndef DS_GRPC_CLUSTER_H
#define DS_GRPC_CLUSTER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/config.h"
#include "core/wire.h"

struct evbuffer;
struct item;
struct submit_call;

/* The consumer group every instance reads {NAME}:work through. */
#define CLUSTER_GROUP "dosomethingd"

int cluster_enabled(void);
/* After updates_init: connect (in the background) if cluster is set. */
void cluster_start(void);
/* A reload: apply cluster.lease; a changed redis or name needs a restart. */
void cluster_configure(const struct ds_config *old);
/* At exit: drop the connections; what is pending stays in Redis. */
void cluster_shutdown(void);

/* Connected, and the update stream read to its end once: calls are served.
 * If not, *why says so. */
int cluster_serving(const char **why);
/* Is there room for one more item in the shared queue (queue.capacity)? */
int cluster_has_room(void);
/* Nothing this instance wrote is waiting for Redis, and every update it
 * published has come back through the update stream: a drain may end. */
int cluster_idle(void);

/* submit.c: ITEM, the INDEX-th of CALL's stream, is valid. 0: no cluster.
 * 1: it is being written, and submit_item_journaled() (accepted or
 * rejected) or submit_item_unavailable() (Redis is unreachable) follows. */
int cluster_accept(struct item *item, struct submit_call *call, uint32_t index);
/* updates.c: publish an update of ITEM (STARTED, PROGRESS) through Redis. */
void cluster_publish(const struct item *item, enum wire_state state, pid_t worker_pid,
                     float progress);
/* queue.c: ITEM is final. 0: no cluster. 1: published through Redis, then
 * item_finished() (or item_dropped() if the attempt was superseded). */
int cluster_final(struct item *item, enum wire_state state, pid_t worker_pid,
                  const void *result, size_t result_len, const char *error);
/* queue.c: ITEM's attempt failed for REASON and it has attempts left. 0: no
 * cluster. 1: RETRYING is published through Redis, then the item is queued
 * again with the next attempt (queue_retry) or dropped if superseded. */
int cluster_retry(struct item *item, pid_t worker_pid, const char *reason);
/* queue.c: local room may have appeared: take more items from Redis. */
void cluster_pull(void);

/* status.c */
void cluster_status_json(struct evbuffer *b);
void cluster_metrics(struct evbuffer *b);

/* What cluster.c needs from queue.c and submit.c. */
struct item *item_make(const uint8_t *raw, size_t raw_len, const char *id, const char *batch,
                       const char *kind, uint32_t max_attempts, uint32_t timeout_ms, int quick);
/* Weight units (ITEM_WEIGHT_*) the workers could take beside what is
 * already queued locally. */
uint32_t queue_local_room(void);
/* Is an item with this key held here (queued or at a worker)? */
int queue_holds(uint64_t key);
/* Call FN for every item held here. */
void queue_for_each(void (*fn)(const struct item *item, void *arg), void *arg);
/* A retried ITEM (item->attempt already the next one) goes to the front. */
void queue_retry(struct item *item);
/* ITEM is no longer ours (another instance took it over): forget it. */
void item_dropped(struct item *item);
/* ITEM of CALL was not accepted because Redis is unreachable (UNCERTAIN: it
 * went away before saying whether it took ITEM): CALL ends with
 * UNAVAILABLE, saying so. */
void submit_item_unavailable(struct submit_call *call, struct item *item, const char *why,
                             int uncertain);
/* ITEM, made from a work stream entry that cannot run here, fails now. */
void queue_fail_now(struct item *item, const char *error);

#endif
