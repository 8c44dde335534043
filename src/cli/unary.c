/*
 * One unary call, start to end: used by get, list, cancel and retry, and
 * (its bytes made by hand) health.
 */
#include "cli/unary.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/alloc.h"

static void
on_done(struct rpc_tag *tag, int ok)
{
}

void
unary_exchange(struct rpc *r, struct unary_exchange *x, grpc_slice request)
{
    x->send_buffer = rpc_buffer_take(request);
    grpc_metadata_array_init(&x->initial_metadata);

    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_MESSAGE;
    ops[0].data.send_message.send_message = x->send_buffer;
    ops[1].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[2].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[2].data.recv_initial_metadata.recv_initial_metadata = &x->initial_metadata;
    ops[3].op = GRPC_OP_RECV_MESSAGE;
    ops[3].data.recv_message.recv_message = &x->recv_buffer;
    x->tag.done = on_done;
    if (rpc_batch(&x->call, ops, 4, &x->tag) == -1)
        rpc_call_cancel(&x->call);

    while (!x->call.ended || x->call.pending > 0) {
        if (rpc_interrupted)
            rpc_call_cancel(&x->call);
        rpc_poll(r, 100);
    }
}

void
unary_exchange_free(struct unary_exchange *x)
{
    rpc_call_free(&x->call);
    grpc_byte_buffer_destroy(x->send_buffer);
    if (x->recv_buffer != NULL)
        grpc_byte_buffer_destroy(x->recv_buffer);
    grpc_metadata_array_destroy(&x->initial_metadata);
}

int
unary_call(struct rpc *r, const char *path, const char *method, const ProtobufCMessage *request,
           const ProtobufCMessageDescriptor *descriptor, int64_t deadline_ms,
           ProtobufCMessage **reply)
{
    struct unary_exchange u;

    *reply = NULL;
    memset(&u, 0, sizeof u);
    if (rpc_call_start(r, &u.call, path, method, deadline_ms) == -1)
        return CLI_EXIT_RPC;

    size_t len = protobuf_c_message_get_packed_size(request);
    grpc_slice slice = grpc_slice_malloc(len);
    protobuf_c_message_pack(request, GRPC_SLICE_START_PTR(slice));
    unary_exchange(r, &u, slice);

    int rc = CLI_EXIT_OK;
    if (rpc_interrupted && u.call.status == GRPC_STATUS_CANCELLED) {
        rc = CLI_EXIT_INTERRUPTED;
    } else if (u.call.status != GRPC_STATUS_OK) {
        rpc_report(&u.call);
        rc = CLI_EXIT_RPC;
    } else {
        grpc_slice got = u.recv_buffer != NULL ? rpc_buffer_slice(u.recv_buffer)
                                               : grpc_empty_slice();
        *reply = protobuf_c_message_unpack(descriptor, NULL, GRPC_SLICE_LENGTH(got),
                                           GRPC_SLICE_START_PTR(got));
        grpc_slice_unref(got);
        if (*reply == NULL) {
            cli_error("%s (to %s): the reply is not a %s", method, u.call.target,
                      descriptor->short_name);
            rc = CLI_EXIT_RPC;
        }
    }
    unary_exchange_free(&u);
    return rc;
}
