/*
 * Call plumbing over the gRPC C core: one channel, one completion queue
 * driven by this (the only) thread, calls with their status.
 */
#ifndef DS_CLI_RPC_H
#define DS_CLI_RPC_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>

#include "cli/cli.h"

/* Set by SIGINT/SIGTERM; every loop checks it at least every 100 ms. */
extern volatile sig_atomic_t rpc_interrupted;

struct rpc {
    grpc_channel *channel;
    grpc_completion_queue *cq;
    const char *target;
};

struct rpc_call;

/* What every batch completes with. done runs on this thread, from rpc_poll. */
struct rpc_tag {
    void (*done)(struct rpc_tag *tag, int ok);
    struct rpc_call *call;
};

/*
 * One call. The status batch is started with the call, so `ended` tells
 * when the call is over whatever else is pending; `pending` counts the
 * batches not yet completed (the call may be freed at 0).
 */
struct rpc_call {
    grpc_call *call;
    const char *method_name;        /* "doSomething", for messages */
    const char *target;
    unsigned pending;
    int ended;
    grpc_status_code status;
    grpc_slice details;
    const char *error_string;       /* gRPC's own debug text, gpr_malloc'ed */
    grpc_metadata_array trailing_metadata;
    struct rpc_tag status_tag;
    struct rpc_tag metadata_tag;    /* send initial metadata */
    void (*on_end)(struct rpc_call *call);  /* optional: when the status arrives */
    void *owner;
};

/* grpc_init, credentials (TLS per options) and the channel. Returns 0, or
 * the exit status after printing why: CLI_EXIT_USAGE for a TLS file that
 * cannot be read (the user named it), CLI_EXIT_RPC for the channel. */
int rpc_open(struct rpc *r, const struct cli_options *options);
/* Shut the queue down and release everything; no call may be left. */
void rpc_close(struct rpc *r);

/* Wait up to timeout_ms for a completion and run it, and then every
 * completion already queued. */
void rpc_poll(struct rpc *r, int timeout_ms);

/* An absolute deadline for gRPC: deadline_ms on clock_now_ms()'s clock,
 * or -1 for none. */
gpr_timespec rpc_deadline(int64_t deadline_ms);

/*
 * Create a call to method (a full path, "/pkg.Service/Method"), start its
 * status batch and, in a batch of its own, its initial metadata. Returns
 * 0, or -1 (then nothing is left to free).
 */
int rpc_call_start(struct rpc *r, struct rpc_call *c, const char *method,
                   const char *method_name, int64_t deadline_ms);
/* Start a batch on c; tag->call is set here. Returns 0 or -1. */
int rpc_batch(struct rpc_call *c, const grpc_op *ops, size_t count, struct rpc_tag *tag);
void rpc_call_cancel(struct rpc_call *c);
/* Cancel if needed, then wait (at most timeout_ms) for every batch. */
void rpc_call_finish(struct rpc *r, struct rpc_call *c, int timeout_ms);
/* After rpc_call_finish, or once pending is 0. */
void rpc_call_free(struct rpc_call *c);

/* "UNAVAILABLE", "DEADLINE_EXCEEDED", ... */
const char *rpc_status_name(grpc_status_code code);
/* "dosomething: doSomething (to 127.0.0.1:8080): UNAVAILABLE: details" on stderr. */
void rpc_report(const struct rpc_call *c);

/* A message to send, made of slice (filled; its reference is taken over).
 * Fill a slice before this: a small one is inline, copied here. */
grpc_byte_buffer *rpc_buffer_take(grpc_slice slice);
/* A received message as one slice (the caller unrefs it). */
grpc_slice rpc_buffer_slice(grpc_byte_buffer *bb);

#endif
