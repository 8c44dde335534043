/*
 * One getUpdates stream, kept going: a subscriber the server cut off for
 * reading too slowly (RESOURCE_EXHAUSTED) comes back with replay after the
 * last seq it saw, as DESIGN.md intends.
 */
#ifndef DS_CLI_SUBSCRIPTION_H
#define DS_CLI_SUBSCRIPTION_H

#include <stdint.h>

#include "cli/rpc.h"

struct subscription {
    struct rpc *rpc;
    wire_updates_request request;   /* a deep copy: owned */
    int64_t deadline_ms;            /* -1: none */
    void (*on_update)(void *arg, const wire_update *update);
    void *arg;

    struct rpc_call call;
    struct rpc_tag send_tag, ready_tag, recv_tag;
    grpc_byte_buffer *send_buffer;
    grpc_byte_buffer *recv_buffer;
    grpc_metadata_array initial_metadata;

    /* The server answered the call (its initial metadata): from here on it
     * sends this subscriber every update it publishes. */
    int ready;
    int ended;                      /* for good; call.status says how */
    int cancelled;                  /* by us */
    uint64_t last_seq;
    uint64_t received;              /* since the call (re)started */
    unsigned resumes;
};

/* Start the stream. Returns 0, or -1 (nothing to finish then). */
int subscription_start(struct subscription *s, struct rpc *r, const wire_updates_request *request,
                       int64_t deadline_ms, void (*on_update)(void *, const wire_update *),
                       void *arg);
void subscription_cancel(struct subscription *s);
/* Cancel, wait for the call to end (bounded), release everything. */
void subscription_finish(struct subscription *s);

#endif
