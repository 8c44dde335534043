/*
 * What every server call of the grpc process shares (call.c): the tags the
 * completion queue hands back (cq.c runs tag->done on the libevent thread),
 * the reference count, the close operation, and the end of a call: its
 * access log line, grpc_call_unref() and gp.calls.
 *
 * An RPC embeds a struct call and keeps only its protocol: which ops it
 * starts and what their completions do. Each op in flight holds a
 * reference (call_batch takes it, the op's done drops it); the close op
 * holds the first. When the last goes, the call ends.
 */
#ifndef DS_GRPC_CALL_H
#define DS_GRPC_CALL_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>

/* Every operation's tag: the completion calls done(tag, ok). */
struct tag {
    void (*done)(struct tag *tag, int ok);
};

/* The struct of type TYPE whose member FIELD is at PTR. */
#define CALL_OF(ptr, type, field) ((type *)((char *)(ptr) - offsetof(type, field)))

struct call;

/* What one RPC does at the common points of its calls' lives. */
struct call_kind {
    const char *method;         /* in the access log; NULL: not logged */
    /* The access log's counts ("items=3/0"); NULL: "-". */
    void (*counts)(struct call *call, char *buf, size_t size);
    /* The call's W3C traceparent, for the access log; NULL (or returning
     * NULL): none. */
    const char *(*traceparent)(struct call *call);
    /* The close op completed (call->closed is set); NULL: nothing to do. */
    void (*closed)(struct call *call);
    /* Free what the RPC holds and the struct embedding CALL. */
    void (*destroy)(struct call *call);
};

/*
 * Embedded in each RPC's struct, which call.c frees through kind->destroy
 * when the last reference goes. The grpc_call is the call's (it unrefs it).
 */
struct call {
    grpc_call *call;
    const struct call_kind *kind;
    uint32_t refs;              /* one per op in flight, and any the RPC takes */
    int status;                 /* as sent, for the access log; -1: none (CANCELLED) */
    int closed;                 /* the close op completed: the call is over */
    int cancelled;              /* from the close op */
    uint64_t started_ms;
    struct tag close_tag;
    struct tag unref_tag;       /* for ops whose completion only drops their reference */
};

/* Start CALL (embedded in the RPC's zeroed struct) on GRPC_CALL, a call of
 * KIND taken by server.c: it counts in gp.calls and its close op is posted. */
void call_init(struct call *call, grpc_call *grpc_call, const struct call_kind *kind);
void call_ref(struct call *call);
/* Drop a reference; the last ends the call and frees it. */
void call_unref(struct call *call);
/* Start COUNT ops on CALL with a reference that TAG's done must drop with
 * call_unref(); TAG NULL: the completion only drops it. */
void call_batch(struct call *call, const grpc_op *ops, size_t count, struct tag *tag);

/* Start a batch on any gRPC call (a client call, say); a failure to start
 * is a bug in this process (logged, and fatal). */
void call_start_batch(grpc_call *call, const grpc_op *ops, size_t count, struct tag *tag);

#endif
