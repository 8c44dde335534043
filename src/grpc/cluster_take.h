/*
 * cluster_take.c: how items come to this instance (cluster mode; cluster.h
 * has the contract, cluster.c the session). Pulling from the work stream
 * (XREADGROUP, or the pull script while prioritized items may wait in
 * their lanes), an entry becoming an item here (take_entry), renewing
 * what we hold and publishing our lease, claiming the items of instances
 * that stopped renewing theirs (adopting a copy we still hold), moving
 * delayed items on when due, and the capacity poll (queue.capacity).
 */
#ifndef DS_GRPC_CLUSTER_TAKE_H
#define DS_GRPC_CLUSTER_TAKE_H

#include <stdint.h>

#include <event2/util.h>

/* Local room may have appeared: take more items from Redis. */
void cluster_pull(void);
/* Prioritized items may be waiting: pull by script from now on. */
void cluster_prio_wake(void);
/* A graceful stop began: the XREADGROUP blocked on the work stream ends
 * now (none is sent again); cluster_taking() says while a pull or a claim
 * whose answer may bring items here is out, or its entries being taken. */
void cluster_drain(void);
int cluster_taking(void);
/* A delayed item is due at DUE_MS (unix ms): the due timer fires by then. */
void cluster_arm_due(int64_t due_ms);
/* Room for one more item in the shared queue (queue.capacity)? And the
 * items not final cluster-wide, as last polled (plus the accepts since). */
int cluster_has_room(void);
uint64_t cluster_outstanding(void);
/* A graceful stop's deadline: the items waiting here go back to the other
 * instances at their attempt (script_hand_back), and while its answer is
 * awaited, cluster_handing_back() says so. */
void cluster_hand_back(void);
int cluster_handing_back(void);

/* The timers cluster.c creates and arms (cl.pull_timer, renew_timer,
 * claim_timer, poll_timer, due_timer). */
void cluster_on_pull_timer(evutil_socket_t fd, short what, void *arg);
void cluster_on_renew_timer(evutil_socket_t fd, short what, void *arg);
void cluster_on_claim_timer(evutil_socket_t fd, short what, void *arg);
void cluster_on_poll_timer(evutil_socket_t fd, short what, void *arg);
void cluster_on_due_timer(evutil_socket_t fd, short what, void *arg);

#endif
