/*
 * One unary call, start to end: used by get, list, cancel and retry.
 */
#include "cli/unary.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/alloc.h"

struct unary {
    struct rpc_call call;
    struct rpc_tag tag;
    grpc_byte_buffer *send_buffer;
    grpc_byte_buffer *recv_buffer;
    grpc_metadata_array initial_metadata;
};

static void
on_done(struct rpc_tag *tag, int ok)
{
}

int
unary_call(struct rpc *r, const char *path, const char *method, const ProtobufCMessage *request,
           const ProtobufCMessageDescriptor *descriptor, int64_t deadline_ms,
           ProtobufCMessage **reply)
{
    struct unary u;

    *reply = NULL;
    memset(&u, 0, sizeof u);
    if (rpc_call_start(r, &u.call, path, method, deadline_ms) == -1)
        return CLI_EXIT_RPC;

    size_t len = protobuf_c_message_get_packed_size(request);
    grpc_slice slice = grpc_slice_malloc(len);
    protobuf_c_message_pack(request, GRPC_SLICE_START_PTR(slice));
    u.send_buffer = rpc_buffer_take(slice);
    grpc_metadata_array_init(&u.initial_metadata);

    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_MESSAGE;
    ops[0].data.send_message.send_message = u.send_buffer;
    ops[1].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[2].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[2].data.recv_initial_metadata.recv_initial_metadata = &u.initial_metadata;
    ops[3].op = GRPC_OP_RECV_MESSAGE;
    ops[3].data.recv_message.recv_message = &u.recv_buffer;
    u.tag.done = on_done;
    if (rpc_batch(&u.call, ops, 4, &u.tag) == -1)
        rpc_call_cancel(&u.call);

    while (!u.call.ended || u.call.pending > 0) {
        if (rpc_interrupted)
            rpc_call_cancel(&u.call);
        rpc_poll(r, 100);
    }

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
    rpc_call_free(&u.call);
    grpc_byte_buffer_destroy(u.send_buffer);
    if (u.recv_buffer != NULL)
        grpc_byte_buffer_destroy(u.recv_buffer);
    grpc_metadata_array_destroy(&u.initial_metadata);
    return rc;
}
