/*
 * submit --wait: which sent items still owe a final update, and what
 * became of the others.
 */
#ifndef DS_CLI_WAIT_H
#define DS_CLI_WAIT_H

#include <stdint.h>
#include <stdio.h>

#include "cli/idset.h"
#include "cli/subscription.h"

struct failure {
    char *id;
    char *error;
    uint32_t attempt;
};

struct waiter {
    struct subscription sub;
    struct idset ids;               /* sent items without their final update */
    uint64_t accepted;              /* from the reply */
    int have_reply;
    uint64_t succeeded;
    uint64_t failed;
    struct failure *failures;       /* the first FAILURES_KEPT */
    size_t failure_count;
    int results;                    /* print each final update (submit --results) */
};

/*
 * Subscribe to the final updates (SUCCEEDED, FAILED, CANCELLED) of the
 * items in batch,
 * or of ids[0..id_count) when batch is NULL. Returns 0 or -1.
 */
int waiter_start(struct waiter *w, struct rpc *r, const char *batch, char **ids,
                 size_t id_count, int64_t deadline_ms);
/* An item is about to be sent. */
void waiter_expect(struct waiter *w, const char *id);
/* The reply came: accepted items, and the rejected ones it lists. */
void waiter_reply(struct waiter *w, const wire_submit_reply *reply);
/* Every accepted item has its final update. */
int waiter_done(const struct waiter *w);
/* "succeeded N", "failed N" and each failure. */
void waiter_print(const struct waiter *w, FILE *out);
void waiter_finish(struct waiter *w);

#endif
