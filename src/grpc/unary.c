/*
 * The request, the reply and the end of a call answered by one message
 * (unary.h).
 */
#include "grpc/unary.h"

#include <stdio.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>

#include "core/utf8.h"

void *
unary_decode(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *descriptor)
{
    if (bb == NULL)
        return protobuf_c_message_unpack(descriptor, NULL, 0, (const uint8_t *)"");
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb)) {
        grpc_byte_buffer_destroy(bb);
        return NULL;
    }
    grpc_slice slice = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    grpc_byte_buffer_destroy(bb);
    ProtobufCMessage *msg = protobuf_c_message_unpack(descriptor, NULL, GRPC_SLICE_LENGTH(slice),
                                                      GRPC_SLICE_START_PTR(slice));
    grpc_slice_unref(slice);
    return msg;
}

int
unary_check_strings(const char *name, char *const *strings, size_t n, size_t max, char *err,
                    size_t err_size)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(strings[i]);
        if (!utf8_valid(strings[i], len)) {
            snprintf(err, err_size, "%s[%zu] is not valid UTF-8", name, i);
            return -1;
        }
        if (max > 0 && (len == 0 || len > max)) {
            snprintf(err, err_size, "%s[%zu] is %zu bytes: must be 1..%zu", name, i, len, max);
            return -1;
        }
    }
    return 0;
}

grpc_byte_buffer *
unary_pack(const ProtobufCMessage *msg)
{
    grpc_slice slice = grpc_slice_malloc(protobuf_c_message_get_packed_size(msg));
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return bb;
}

void
unary_send_metadata(struct unary_call *u)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    u->sent_metadata = 1;
    call_batch(&u->base, &op, 1, NULL);
}

int
unary_is_over(const struct unary_call *u)
{
    return u->replied || u->base.closed;
}

void
unary_finish(struct unary_call *u, grpc_status_code status, const char *details,
             grpc_byte_buffer *reply)
{
    if (unary_is_over(u)) {
        if (reply != NULL)
            grpc_byte_buffer_destroy(reply);
        return;
    }
    u->replied = 1;
    u->base.status = (int)status;
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!u->sent_metadata) {
        u->sent_metadata = 1;
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    }
    if (reply != NULL) {
        u->reply = reply;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = reply;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = status;
    if (details != NULL) {
        u->details = grpc_slice_from_copied_string(details);
        u->has_details = 1;
        ops[n].data.send_status_from_server.status_details = &u->details;
    }
    call_batch(&u->base, ops, n + 1, NULL);
}

static void
on_act_answer(void *arg, enum store_items_status status, const char *why,
              const struct store_act_result *result)
{
    struct unary_call *u = arg;
    u->act = NULL;
    if (status != STORE_ITEMS_OK)
        unary_finish(u, status == STORE_ITEMS_INVALID ? GRPC_STATUS_INVALID_ARGUMENT
                                                      : GRPC_STATUS_UNAVAILABLE, why, NULL);
    else
        unary_finish(u, GRPC_STATUS_OK, NULL, u->act_reply(u, result));
    call_unref(&u->base);       /* the question's */
}

void
unary_ask_act(struct unary_call *u, const struct store_act_query *q, unary_act_reply_fn *reply)
{
    u->act_reply = reply;
    call_ref(&u->base);         /* the question's: on_act_answer or unary_act_closed drops it */
    u->act = store_act(q, on_act_answer, u);
}

void
unary_act_closed(struct call *call)
{
    struct unary_call *u = CALL_OF(call, struct unary_call, base);
    if (u->act != NULL) {
        store_act_abort(u->act);
        u->act = NULL;
        call_unref(&u->base);   /* the question's */
    }
}

void
unary_call_free(struct unary_call *u)
{
    if (u->reply != NULL)
        grpc_byte_buffer_destroy(u->reply);
    if (u->has_details)
        grpc_slice_unref(u->details);
}
