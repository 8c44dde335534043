/*
 * cluster_ack.c: an item counts as accepted only once cluster.min_replicas_ack
 * replicas have it (cluster mode).
 *
 * Redis replicates asynchronously: an item a master acknowledged and then
 * lost in a failover before any replica had it would be accepted and
 * gone. With min_replicas_ack N > 0, the accept scripts sent on the
 * command connection are followed by one WAIT N TIMEOUT (one per burst:
 * while a WAIT is out, the accepts sent meanwhile wait for the next one),
 * and their ACCEPTED verdicts are held until it answers. WAIT answers
 * after the writes of this connection before it are on N replicas, or at
 * cluster.replicas_ack_timeout with how many have them. Fewer than N: the
 * held items are not reported accepted; the call ends UNAVAILABLE naming
 * it, counting them as unknown (STORE_UNCERTAIN): they are in Redis and
 * may well run (unless a failover loses them); a resend with the same ids
 * is a duplicate if they survived, and runs them if not.
 *
 * Replies on one connection come in order, so when a WAIT answers, the
 * held verdicts are exactly those of the accepts sent before it.
 */
#ifndef DS_GRPC_CLUSTER_ACK_H
#define DS_GRPC_CLUSTER_ACK_H

#include <stddef.h>

#include "grpc/store.h"

struct event_base;

/* SETTLED runs when the last held verdict is given (a drain waits). */
void cluster_ack_start(struct event_base *base, void (*settled)(void));
/* Whether accepts sent now wait for replicas (min_replicas_ack > 0). */
int cluster_ack_wanted(void);
/* An accept script that waits went out on the command connection: a WAIT
 * follows it (sent from the loop, after the accepts of this turn). */
void cluster_ack_sent(void);
/* Redis took A (sent after cluster_ack_sent()): ACCEPTED once the WAIT
 * behind it says enough replicas have it. A is the ack's until then. */
void cluster_ack_hold(struct acceptance a);
/* The session was lost: what is held is told it is unknown (WHY). */
void cluster_ack_fail(const char *why);
/* Verdicts held now. */
size_t cluster_ack_held(void);
/* At exit: held items are discarded without a verdict. */
void cluster_ack_shutdown(void);
/* The ping timeout must allow for a WAIT ahead of the PING: ms. */
uint64_t cluster_ack_max_wait_ms(void);

#endif
