/*
 * The life of a server call, shared by every RPC (call.h).
 */
#include "core/clock.h"
#include "core/log.h"
#include "grpc/call.h"
#include "grpc/grpc_process.h"
#include "grpc/access_log.h"

void
call_start_batch(grpc_call *call, const grpc_op *ops, size_t count, struct tag *tag)
{
    grpc_call_error err = grpc_call_start_batch(call, ops, count, tag, NULL);
    if (err != GRPC_CALL_OK)
        fatal(1, "grpc_call_start_batch() failed: %s (a bug in dosomethingd)",
              grpc_call_error_to_string(err));
}

void
call_ref(struct call *call)
{
    call->refs++;
}

void
call_unref(struct call *call)
{
    if (--call->refs > 0)
        return;
    if (call->kind->method != NULL) {
        char counts[64] = "-";
        if (call->kind->counts != NULL)
            call->kind->counts(call, counts, sizeof counts);
        access_log_call(call->call, call->kind->method,
                        call->status >= 0 ? call->status : GRPC_STATUS_CANCELLED, counts,
                        call->started_ms,
                        call->kind->traceparent != NULL ? call->kind->traceparent(call) : NULL);
    }
    grpc_call *grpc_call = call->call;
    call->kind->destroy(call);
    grpc_call_unref(grpc_call);
    grpc_process_call_ended();
}

void
call_batch(struct call *call, const grpc_op *ops, size_t count, struct tag *tag)
{
    call->refs++;
    call_start_batch(call->call, ops, count, tag != NULL ? tag : &call->unref_tag);
}

static void
on_unref(struct tag *tag, int ok)
{
    call_unref(CALL_OF(tag, struct call, unref_tag));
}

static void
on_close(struct tag *tag, int ok)
{
    struct call *call = CALL_OF(tag, struct call, close_tag);
    call->closed = 1;
    if (call->kind->closed != NULL)
        call->kind->closed(call);
    call_unref(call);
}

void
call_init(struct call *call, grpc_call *grpc_call, const struct call_kind *kind)
{
    call->call = grpc_call;
    call->kind = kind;
    call->status = -1;
    call->started_ms = clock_monotonic_ms();
    call->close_tag.done = on_close;
    call->unref_tag.done = on_unref;
    gp.calls++;                 /* grpc_process_call_ended() takes it back */
    grpc_op op = { .op = GRPC_OP_RECV_CLOSE_ON_SERVER };
    op.data.recv_close_on_server.cancelled = &call->cancelled;
    call_batch(call, &op, 1, &call->close_tag);
}
