/*
 * gRPC server reflection (grpc.reflection.v1 and v1alpha ServerReflection),
 * so that grpcurl and similar tools work without the .proto file: it lists
 * the service and serves the FileDescriptorProto of do_something.proto,
 * which protoc-c writes at build time (descriptor.c under build/gen).
 *
 * The messages come from grpc's reflection.proto (proto/grpc/reflection/v1),
 * compiled with protoc-c; v1alpha's are the same on the wire. Only the
 * requests a client can make of this server get a real answer: the service
 * list, and the file of our package by name or by one of its symbols.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>

#include "core/alloc.h"
#include "grpc/call.h"
#include "grpc/grpc_process.h"
#include "grpc/reflection.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

/* build/gen/descriptor.c: a FileDescriptorSet holding one file. */
extern const unsigned char ds_descriptor_set[];
extern const size_t ds_descriptor_set_len;

#define PACKAGE      "com.agrounds.dosomething.v1"
#define SERVICE_NAME PACKAGE ".DoSomethingService"
#define FILE_NAME    "com/agrounds/dosomething/v1/do_something.proto"

struct reflection_call {
    struct call base;
    struct tag recv_tag;
    struct tag send_tag;
    grpc_byte_buffer *recv_buffer;
    grpc_byte_buffer *send_buffer;
    grpc_slice details;         /* of a status we end the call with; ours */
    int refused;                /* ended RESOURCE_EXHAUSTED: a request too large */
    struct reflection_call *prev, *next;    /* in open_calls until destroyed */
};

/* Every reflection call not destroyed, for reflection_end_all(). */
static struct reflection_call *open_calls;

/* ---- the answer ------------------------------------------------------------ */

/* The file descriptor: the set's first (only) `file` field. The set is our
 * own, written by protoc-c at build time. */
static int
file_descriptor(const uint8_t **p, size_t *n)
{
    const uint8_t *s = ds_descriptor_set, *end = s + ds_descriptor_set_len;
    if (s >= end || *s++ != 0x0a)
        return -1;
    uint64_t len = 0;
    for (int shift = 0; s < end && shift < 64; shift += 7) {
        len |= (uint64_t)(*s & 0x7f) << shift;
        if (!(*s++ & 0x80))
            break;
    }
    if (len > (uint64_t)(end - s))
        return -1;
    *p = s;
    *n = (size_t)len;
    return 0;
}

static int
symbol_is_ours(const char *symbol)
{
    return strncmp(symbol, PACKAGE ".", strlen(PACKAGE) + 1) == 0 &&
           symbol[strlen(PACKAGE) + 1] != '\0';
}

/* The response to one request (its bytes): a slice the caller owns. */
static grpc_slice
answer(const uint8_t *bytes, size_t len)
{
    Grpc__Reflection__V1__ServerReflectionRequest *req =
        grpc__reflection__v1__server_reflection_request__unpack(NULL, len, bytes);
    Grpc__Reflection__V1__ServerReflectionResponse resp =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1__ServiceResponse service = GRPC__REFLECTION__V1__SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__ServiceResponse *services[] = { &service };
    Grpc__Reflection__V1__ListServiceResponse list =
        GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__FileDescriptorResponse files =
        GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    ProtobufCBinaryData file;
    Grpc__Reflection__V1__ErrorResponse error = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;

    int found = 0;
    resp.original_request = req;
    switch (req != NULL ? req->message_request_case
                        : GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST__NOT_SET) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        service.name = SERVICE_NAME;
        list.n_service = 1;
        list.service = services;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        resp.list_services_response = &list;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        found = strcmp(req->file_by_filename, FILE_NAME) == 0;
        /* fall through */
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        if (req->message_request_case ==
            GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL)
            found = symbol_is_ours(req->file_containing_symbol);
        /* fall through */
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        if (!found) {
            error.error_code = GRPC_STATUS_NOT_FOUND;
            error.error_message = "not found: this server describes " SERVICE_NAME " only";
        } else if (file_descriptor((const uint8_t **)&file.data, &file.len) == 0) {
            files.n_file_descriptor_proto = 1;
            files.file_descriptor_proto = &file;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
            resp.file_descriptor_response = &files;
        } else {
            error.error_code = GRPC_STATUS_INTERNAL;
            error.error_message = "the embedded descriptor is damaged";
        }
        break;
    default:
        error.error_code = GRPC_STATUS_INVALID_ARGUMENT;
        error.error_message = req == NULL ? "malformed ServerReflectionRequest"
                                          : "the request asks for nothing";
        break;
    }
    if (error.error_message != protobuf_c_empty_string) {
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        resp.error_response = &error;
    }
    grpc_slice out = grpc_slice_malloc(grpc__reflection__v1__server_reflection_response__get_packed_size(&resp));
    grpc__reflection__v1__server_reflection_response__pack(&resp, GRPC_SLICE_START_PTR(out));
    if (req != NULL)
        grpc__reflection__v1__server_reflection_request__free_unpacked(req, NULL);
    return out;
}

/* ---- the call -------------------------------------------------------------- */

static void
reflection_destroy(struct call *call)
{
    struct reflection_call *r = CALL_OF(call, struct reflection_call, base);
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        open_calls = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    if (r->recv_buffer != NULL)
        grpc_byte_buffer_destroy(r->recv_buffer);
    if (r->send_buffer != NULL)
        grpc_byte_buffer_destroy(r->send_buffer);
    grpc_slice_unref(r->details);
    free(r);
}

/* The access log says whether the client saw the stream through. */
static void
reflection_closed(struct call *call)
{
    struct reflection_call *r = CALL_OF(call, struct reflection_call, base);
    call->status = call->cancelled ? GRPC_STATUS_CANCELLED
                   : r->refused ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_OK;
}

static const struct call_kind reflection_kind = {
    .method = "ServerReflectionInfo",
    .closed = reflection_closed,
    .destroy = reflection_destroy,
};

static void
post_receive(struct reflection_call *r)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &r->recv_buffer;
    call_batch(&r->base, &op, 1, &r->recv_tag);
}

static void
on_send(struct tag *tag, int ok)
{
    struct reflection_call *r = CALL_OF(tag, struct reflection_call, send_tag);
    grpc_byte_buffer_destroy(r->send_buffer);
    r->send_buffer = NULL;
    if (ok)
        post_receive(r);
    call_unref(&r->base);
}

static void
on_recv(struct tag *tag, int ok)
{
    struct reflection_call *r = CALL_OF(tag, struct reflection_call, recv_tag);
    grpc_byte_buffer *bb = r->recv_buffer;
    r->recv_buffer = NULL;
    if (!ok) {
        call_unref(&r->base);
        return;
    }
    size_t len = bb != NULL ? grpc_byte_buffer_length(bb) : 0;
    if (len > gp.config->grpc.max_message_size) {
        /* gRPC reads up to twice the limit (server.c): the limit is ours. */
        char text[200];
        snprintf(text, sizeof text, "the request is %zu bytes, over grpc.max_message_size (%llu)",
                 len, (unsigned long long)gp.config->grpc.max_message_size);
        grpc_byte_buffer_destroy(bb);
        r->details = grpc_slice_from_copied_string(text);
        r->refused = 1;
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        op.data.send_status_from_server.status = GRPC_STATUS_RESOURCE_EXHAUSTED;
        op.data.send_status_from_server.status_details = &r->details;
        call_batch(&r->base, &op, 1, NULL);
        call_unref(&r->base);
        return;
    }
    if (bb == NULL) {       /* the client is done asking */
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        op.data.send_status_from_server.status = GRPC_STATUS_OK;
        call_batch(&r->base, &op, 1, NULL);
        call_unref(&r->base);
        return;
    }
    grpc_byte_buffer_reader reader;
    grpc_slice req = grpc_empty_slice();
    if (grpc_byte_buffer_reader_init(&reader, bb)) {
        req = grpc_byte_buffer_reader_readall(&reader);
        grpc_byte_buffer_reader_destroy(&reader);
    }
    grpc_byte_buffer_destroy(bb);
    grpc_slice s = answer(GRPC_SLICE_START_PTR(req), GRPC_SLICE_LENGTH(req));
    grpc_slice_unref(req);
    r->send_buffer = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = r->send_buffer;
    call_batch(&r->base, &op, 1, &r->send_tag);
    call_unref(&r->base);
}

void
reflection_call_start(grpc_call *call, grpc_byte_buffer *unused)
{
    struct reflection_call *r = ds_calloc(1, sizeof *r);
    r->recv_tag.done = on_recv;
    r->send_tag.done = on_send;
    call_init(&r->base, call, &reflection_kind);
    r->next = open_calls;
    if (open_calls != NULL)
        open_calls->prev = r;
    open_calls = r;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    call_batch(&r->base, &op, 1, NULL);
    post_receive(r);
}

void
reflection_end_all(void)
{
    for (struct reflection_call *r = open_calls; r != NULL; r = r->next)
        grpc_call_cancel_with_status(r->base.call, GRPC_STATUS_UNAVAILABLE,
                                     "the server is stopping", NULL);
}
