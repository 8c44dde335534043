/*
 * grpc.health.v1.Health, the standard service that load balancers,
 * Kubernetes probes and grpc_health_probe ask: SERVING, or NOT_SERVING
 * while the process drains or its listener takes no connection.
 *
 * The messages come from grpc's health.proto (proto/grpc/health/v1),
 * compiled with protoc-c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>

#include "core/alloc.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/call.h"
#include "grpc/grpc_process.h"
#include "grpc/health.h"
#include "grpc/server.h"
#include "grpc/store.h"

enum serving_status {
    STATUS_SERVING = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING,
    STATUS_NOT_SERVING = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING,
    STATUS_SERVICE_UNKNOWN =
        GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN,
};

#define SERVICE_NAME "com.agrounds.dosomething.v1.DoSomethingService"

struct health_call {
    struct call base;
    struct health_call *prev, *next;    /* watchers */
    int watching;
    int known;                  /* the service asked about exists */
    int sent_status;            /* the last status sent to a watcher, -1: none */
    int sending;
    int ending;
    grpc_byte_buffer *buffer;
    grpc_slice details;
    int has_details;
    struct tag send_tag;
};

static struct health_call *watchers;

static int
current_status(const struct health_call *h)
{
    if (!h->known)
        return STATUS_SERVICE_UNKNOWN;
    return gp.draining || gp.stopping || !store_serving(NULL) ||
                   !server_listening()
               ? STATUS_NOT_SERVING : STATUS_SERVING;
}

/* Decode HealthCheckRequest: is the service one we serve? -1: malformed. */
static int
service_known(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader reader;
    if (bb == NULL)
        return 1;               /* an empty message: service "" */
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return -1;
    grpc_slice s = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    Grpc__Health__V1__HealthCheckRequest *req = grpc__health__v1__health_check_request__unpack(
        NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    if (req == NULL)
        return -1;
    int known = req->service[0] == '\0' || strcmp(req->service, SERVICE_NAME) == 0;
    grpc__health__v1__health_check_request__free_unpacked(req, NULL);
    return known;
}

static grpc_byte_buffer *
encode_response(int status)
{
    Grpc__Health__V1__HealthCheckResponse msg = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    msg.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
    uint8_t bytes[16];
    size_t len = grpc__health__v1__health_check_response__pack(&msg, bytes);
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)bytes, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static void
health_destroy(struct call *call)
{
    struct health_call *h = CALL_OF(call, struct health_call, base);
    if (h->buffer != NULL)
        grpc_byte_buffer_destroy(h->buffer);
    if (h->has_details)
        grpc_slice_unref(h->details);
    free(h);
}

static void
watcher_remove(struct health_call *h)
{
    if (!h->watching)
        return;
    h->watching = 0;
    if (h->prev != NULL)
        h->prev->next = h->next;
    else
        watchers = h->next;
    if (h->next != NULL)
        h->next->prev = h->prev;
}

static void
health_closed(struct call *call)
{
    watcher_remove(CALL_OF(call, struct health_call, base));
}

/* Health calls write no access log line. */
static const struct call_kind health_kind = {
    .closed = health_closed,
    .destroy = health_destroy,
};

static void watch_pump(struct health_call *h);

static void
on_send(struct tag *tag, int ok)
{
    struct health_call *h = CALL_OF(tag, struct health_call, send_tag);
    h->sending = 0;
    grpc_byte_buffer_destroy(h->buffer);
    h->buffer = NULL;
    if (ok)
        watch_pump(h);
    call_unref(&h->base);
}

static void
finish(struct health_call *h, grpc_status_code status, const char *details)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    op.data.send_status_from_server.status = status;
    if (details != NULL) {
        h->details = grpc_slice_from_copied_string(details);
        h->has_details = 1;
        op.data.send_status_from_server.status_details = &h->details;
    }
    call_batch(&h->base, &op, 1, NULL);
}

/* Send the status if it changed; end the stream when asked to. */
static void
watch_pump(struct health_call *h)
{
    if (h->sending || h->base.closed)
        return;
    int status = current_status(h);
    if (status != h->sent_status) {
        h->sent_status = status;
        h->buffer = encode_response(status);
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_SEND_MESSAGE;
        op.data.send_message.send_message = h->buffer;
        h->sending = 1;
        call_batch(&h->base, &op, 1, &h->send_tag);
        return;
    }
    if (h->ending && h->watching) {
        watcher_remove(h);
        finish(h, GRPC_STATUS_OK, NULL);
    }
}

static struct health_call *
health_call_new(grpc_call *call)
{
    struct health_call *h = ds_calloc(1, sizeof *h);
    h->sent_status = -1;
    h->send_tag.done = on_send;
    call_init(&h->base, call, &health_kind);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    call_batch(&h->base, &op, 1, NULL);
    return h;
}

/* A new Check or Watch call with its request decoded (and freed): NULL if
 * the request is malformed (the call is then answered INVALID_ARGUMENT). */
static struct health_call *
health_call_start(grpc_call *call, grpc_byte_buffer *request)
{
    struct health_call *h = health_call_new(call);
    int known = service_known(request);
    if (request != NULL)
        grpc_byte_buffer_destroy(request);
    if (known == -1) {
        finish(h, GRPC_STATUS_INVALID_ARGUMENT, "not a HealthCheckRequest");
        return NULL;
    }
    h->known = known;
    return h;
}

void
health_check_start(grpc_call *call, grpc_byte_buffer *request)
{
    struct health_call *h = health_call_start(call, request);
    if (h == NULL)
        return;
    if (!h->known) {
        finish(h, GRPC_STATUS_NOT_FOUND, "unknown service");
        return;
    }
    h->buffer = encode_response(current_status(h));
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_MESSAGE;
    ops[0].data.send_message.send_message = h->buffer;
    ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[1].data.send_status_from_server.status = GRPC_STATUS_OK;
    call_batch(&h->base, ops, 2, NULL);
}

void
health_watch_start(grpc_call *call, grpc_byte_buffer *request)
{
    struct health_call *h = health_call_start(call, request);
    if (h == NULL)
        return;
    h->watching = 1;
    h->next = watchers;
    if (watchers != NULL)
        watchers->prev = h;
    watchers = h;
    watch_pump(h);
}

void
health_changed(void)
{
    for (struct health_call *h = watchers, *next; h != NULL; h = next) {
        next = h->next;
        watch_pump(h);
    }
}

void
health_end_all(void)
{
    for (struct health_call *h = watchers, *next; h != NULL; h = next) {
        next = h->next;
        h->ending = 1;
        watch_pump(h);
    }
}
