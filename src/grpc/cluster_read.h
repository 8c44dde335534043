/*
 * cluster_read.c: reading the cluster's update stream (cluster mode;
 * cluster.h has the contract, cluster.c the session). One XREAD on the
 * update connection, always out, reads {NAME}:updates (every instance's
 * updates, in seq order: delivered to updates.c and the subscribers) and
 * {NAME}:control (cancel requests for the items held here, and wakes for
 * the prioritized lanes); the seq read is reported to the master.
 */
#ifndef DS_GRPC_CLUSTER_READ_H
#define DS_GRPC_CLUSTER_READ_H

#include <stdint.h>

/* Read on (unless a read is out already). */
void cluster_read_updates(void);
/* A cancel for the item with KEY, not taken here yet: applied when it is
 * (cluster_apply_pending_cancel(), from take_entry()), forgotten after a
 * while. */
void cluster_remember_cancel(uint64_t key, const char *reason);
void cluster_apply_pending_cancel(uint64_t key);

#endif
