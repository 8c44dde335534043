/*
 * gRPC server reflection (grpc.reflection.v1 and v1alpha ServerReflection),
 * so that grpcurl and similar tools work without the .proto file: it lists
 * the service and serves the FileDescriptorProto of do_something.proto,
 * which protoc-c writes at build time (descriptor.c under build/gen).
 *
 * The messages are encoded and decoded here by hand; only the requests a
 * client can make of this server get a real answer:
 *
 *   ServerReflectionRequest { string host = 1; oneof { string
 *     file_by_filename = 3; string file_containing_symbol = 4;
 *     ExtensionRequest file_containing_extension = 5; string
 *     all_extension_numbers_of_type = 6; string list_services = 7; } }
 *   ServerReflectionResponse { string valid_host = 1;
 *     ServerReflectionRequest original_request = 2; oneof {
 *     FileDescriptorResponse file_descriptor_response = 4;
 *     ListServiceResponse list_services_response = 6;
 *     ErrorResponse error_response = 7; } }
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "grpc/grpc_process.h"

/* build/gen/descriptor.c: a FileDescriptorSet holding one file. */
extern const unsigned char ds_descriptor_set[];
extern const size_t ds_descriptor_set_len;

#define PACKAGE      "com.agrounds.dosomething.v1"
#define SERVICE_NAME PACKAGE ".DoSomethingService"
#define FILE_NAME    "com/agrounds/dosomething/v1/do_something.proto"

struct reflection_call {
    grpc_call *call;
    int refs;
    struct tag recv_tag;
    struct tag send_tag;
    struct tag done_tag;
    struct tag close_tag;
    grpc_byte_buffer *recv_buffer;
    grpc_byte_buffer *send_buffer;
    int cancelled;
    uint64_t started_ms;
};

/* ---- encoding ------------------------------------------------------------ */

struct out {
    uint8_t *data;
    size_t len;
    size_t cap;
};

static void
out_bytes(struct out *o, const void *p, size_t n)
{
    if (o->cap - o->len < n) {
        o->cap = (o->len + n) * 2 + 64;
        o->data = ds_realloc(o->data, o->cap);
    }
    memcpy(o->data + o->len, p, n);
    o->len += n;
}

static void
out_varint(struct out *o, uint64_t v)
{
    uint8_t b[10];
    size_t n = 0;
    do {
        b[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v != 0);
    out_bytes(o, b, n);
}

/* A length-delimited field. */
static void
out_field(struct out *o, unsigned field, const void *p, size_t n)
{
    out_varint(o, (uint64_t)field << 3 | 2);
    out_varint(o, n);
    out_bytes(o, p, n);
}

/* The file descriptor: the set's first (only) `file` field. */
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

/* ---- decoding ------------------------------------------------------------ */

/* The request's oneof: which field, and its string. -1: malformed. */
static int
decode_request(const uint8_t *p, size_t n, unsigned *field, const uint8_t **value,
               size_t *value_len)
{
    const uint8_t *end = p + n;
    *field = 0;
    while (p < end) {
        uint64_t key = 0, len = 0;
        int shift;
        for (shift = 0; p < end && shift < 64; shift += 7) {
            key |= (uint64_t)(*p & 0x7f) << shift;
            if (!(*p++ & 0x80))
                break;
        }
        if ((key & 7) != 2)
            return -1;      /* every field of the request is length-delimited */
        for (shift = 0; p < end && shift < 64; shift += 7) {
            len |= (uint64_t)(*p & 0x7f) << shift;
            if (!(*p++ & 0x80))
                break;
        }
        if (len > (uint64_t)(end - p))
            return -1;
        if ((key >> 3) >= 3 && (key >> 3) <= 7) {
            *field = (unsigned)(key >> 3);
            *value = p;
            *value_len = (size_t)len;
        }
        p += len;
    }
    return 0;
}

static int
symbol_is_ours(const uint8_t *s, size_t n)
{
    size_t plen = strlen(PACKAGE);
    return n > plen && memcmp(s, PACKAGE ".", plen + 1) == 0;
}

/* The response to one request (its raw bytes). */
static void
answer(struct out *o, const uint8_t *req, size_t req_len)
{
    unsigned field;
    const uint8_t *value = NULL;
    size_t value_len = 0;
    struct out inner = { 0 };
    int error_code = 0;
    const char *error = NULL;

    out_field(o, 2, req, req_len);
    if (decode_request(req, req_len, &field, &value, &value_len) == -1) {
        error_code = 3;
        error = "malformed ServerReflectionRequest";
    } else if (field == 7) {
        struct out service = { 0 };
        out_field(&service, 1, SERVICE_NAME, strlen(SERVICE_NAME));
        out_field(&inner, 1, service.data, service.len);
        out_field(o, 6, inner.data, inner.len);
        free(service.data);
    } else if ((field == 3 && value_len == strlen(FILE_NAME) &&
                memcmp(value, FILE_NAME, value_len) == 0) ||
               (field == 4 && symbol_is_ours(value, value_len))) {
        const uint8_t *fd;
        size_t fd_len;
        if (file_descriptor(&fd, &fd_len) == 0) {
            out_field(&inner, 1, fd, fd_len);
            out_field(o, 4, inner.data, inner.len);
        } else {
            error_code = 13;
            error = "the embedded descriptor is damaged";
        }
    } else if (field == 3 || field == 4 || field == 5 || field == 6) {
        error_code = 5;
        error = "not found: this server describes " SERVICE_NAME " only";
    } else {
        error_code = 3;
        error = "the request asks for nothing";
    }
    if (error != NULL) {
        out_varint(&inner, 1 << 3 | 0);
        out_varint(&inner, (uint64_t)error_code);
        out_field(&inner, 2, error, strlen(error));
        out_field(o, 7, inner.data, inner.len);
    }
    free(inner.data);
}

/* ---- the call -------------------------------------------------------------- */

static void
call_unref(struct reflection_call *r)
{
    if (--r->refs > 0)
        return;
    if (r->recv_buffer != NULL)
        grpc_byte_buffer_destroy(r->recv_buffer);
    if (r->send_buffer != NULL)
        grpc_byte_buffer_destroy(r->send_buffer);
    access_log_call(r->call, "ServerReflectionInfo",
                    r->cancelled ? GRPC_STATUS_CANCELLED : GRPC_STATUS_OK, "-", r->started_ms);
    grpc_call_unref(r->call);
    free(r);
    grpc_process_call_ended();
}

#define CALL_OF(tag, field) \
    ((struct reflection_call *)((char *)(tag) - offsetof(struct reflection_call, field)))

static void
post_receive(struct reflection_call *r)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &r->recv_buffer;
    r->refs++;
    call_start_batch(r->call, &op, 1, &r->recv_tag);
}

static void
on_done(struct tag *tag, int ok)
{
    call_unref(CALL_OF(tag, done_tag));
}

static void
on_send(struct tag *tag, int ok)
{
    struct reflection_call *r = CALL_OF(tag, send_tag);
    grpc_byte_buffer_destroy(r->send_buffer);
    r->send_buffer = NULL;
    if (ok)
        post_receive(r);
    call_unref(r);
}

static void
on_recv(struct tag *tag, int ok)
{
    struct reflection_call *r = CALL_OF(tag, recv_tag);
    grpc_byte_buffer *bb = r->recv_buffer;
    r->recv_buffer = NULL;
    if (!ok) {
        call_unref(r);
        return;
    }
    if (bb == NULL) {       /* the client is done asking */
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        op.data.send_status_from_server.status = GRPC_STATUS_OK;
        r->refs++;
        call_start_batch(r->call, &op, 1, &r->done_tag);
        call_unref(r);
        return;
    }
    grpc_byte_buffer_reader reader;
    grpc_slice req = grpc_empty_slice();
    if (grpc_byte_buffer_reader_init(&reader, bb)) {
        req = grpc_byte_buffer_reader_readall(&reader);
        grpc_byte_buffer_reader_destroy(&reader);
    }
    grpc_byte_buffer_destroy(bb);
    struct out o = { 0 };
    answer(&o, GRPC_SLICE_START_PTR(req), GRPC_SLICE_LENGTH(req));
    grpc_slice_unref(req);
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)o.data, o.len);
    free(o.data);
    r->send_buffer = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = r->send_buffer;
    r->refs++;
    call_start_batch(r->call, &op, 1, &r->send_tag);
    call_unref(r);
}

static void
on_close(struct tag *tag, int ok)
{
    call_unref(CALL_OF(tag, close_tag));
}

void
reflection_call_start(grpc_call *call, grpc_byte_buffer *unused)
{
    struct reflection_call *r = ds_calloc(1, sizeof *r);
    r->call = call;
    r->refs = 1;                /* the close operation */
    r->started_ms = clock_monotonic_ms();
    r->recv_tag.done = on_recv;
    r->send_tag.done = on_send;
    r->done_tag.done = on_done;
    r->close_tag.done = on_close;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[0].data.recv_close_on_server.cancelled = &r->cancelled;
    call_start_batch(call, ops, 1, &r->close_tag);
    ops[1].op = GRPC_OP_SEND_INITIAL_METADATA;
    r->refs++;
    call_start_batch(call, &ops[1], 1, &r->done_tag);
    post_receive(r);
}
