/*
 * sentinel.c: where the Redis master is, from Redis Sentinel
 * (cluster.redis: "sentinel://H1:P1,H2:P2/MASTER").
 *
 * A question (sentinel_find) asks the sentinels in turn, starting with
 * the one that answered last, SENTINEL get-master-addr-by-name MASTER,
 * each within SENTINEL_ASK_TIMEOUT_MS (resolving its host name, connecting
 * and answering), and answers with the first address one gives. The
 * caller connects there and checks with ROLE that it is a master; if it is
 * not, or cannot be reached, sentinel_distrust() makes the next question
 * start with the next sentinel, so a sentinel with a stale or wrong answer
 * cannot keep the instance away from the master.
 *
 * A watch stays subscribed to +switch-master on one sentinel (the next one
 * after a lost connection, with backoff 500 ms to 5 s) and tells the
 * caller when the sentinels moved MASTER elsewhere.
 *
 * Everything runs on the loop over hiredis's libevent adapter; nothing
 * blocks (host names go through resolve.c).
 */
#ifndef DS_GRPC_SENTINEL_H
#define DS_GRPC_SENTINEL_H

#include "core/config.h"

struct event_base;

#define SENTINEL_ASK_TIMEOUT_MS 2000

/* The answer of a question: the master at HOST (a name or an address, as
 * the sentinel said it; valid during the call) and PORT, or HOST NULL and
 * WHY (every sentinel asked, and what each said). */
typedef void sentinel_found_fn(const char *host, int port, const char *why);
/* The sentinels moved the master to HOST:PORT (+switch-master). */
typedef void sentinel_switched_fn(const char *host, int port);

/* The sentinels and the master's name of C (copied), on BASE; the watch
 * starts with the first question's answer. */
void sentinel_start(struct event_base *base, const struct ds_config *c,
                    sentinel_switched_fn *switched);
/* Ask; FN runs once, later, from the loop. A question under way is
 * dropped first (its FN does not run). */
void sentinel_find(sentinel_found_fn *fn);
/* Drop the question under way, if any: its FN does not run. */
void sentinel_cancel(void);
/* The last answer was wrong (no master there, or unreachable). */
void sentinel_distrust(void);
/* HOST:PORT of the sentinel that answered last ("" before any), and
 * whether the watch is subscribed: for /status. */
const char *sentinel_last(void);
int sentinel_watching(void);
/* At exit: every connection closed, nothing runs any more. */
void sentinel_shutdown(void);

#endif
