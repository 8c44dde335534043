/*
 * The gRPC server: listeners, and the requests that take each new call.
 *
 * A few requests are kept posted per method so that new calls never wait
 * for the application; every method this server does not know is answered
 * UNIMPLEMENTED at once (without a posted generic request, such a call
 * would hang until its deadline).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>

#include "core/alloc.h"
#include "core/log.h"
#include "grpc/grpc_process.h"

#define REQUESTS_PER_METHOD 4

#define METHOD_SUBMIT  "/com.agrounds.dosomething.v1.DoSomethingService/doSomething"
#define METHOD_UPDATES "/com.agrounds.dosomething.v1.DoSomethingService/getUpdates"

enum request_kind {
    REQUEST_SUBMIT,
    REQUEST_UPDATES,
    REQUEST_OTHER,
};

/* One posted request for a new call. */
struct request {
    struct tag tag;
    enum request_kind kind;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array metadata;
    grpc_call_details details;      /* REQUEST_OTHER */
    grpc_byte_buffer *payload;      /* REQUEST_UPDATES: the UpdatesRequest */
};

/* A call answered UNIMPLEMENTED. */
struct unimplemented_call {
    struct tag tag;
    grpc_call *call;
    grpc_slice details;
    int cancelled;
};

static struct {
    grpc_server *server;
    void *method_submit;
    void *method_updates;
    int shutting_down;
    int shut_down;
    struct tag shutdown_tag;
    uint32_t requests_posted;
} srv;

static void post_request(enum request_kind kind);

void
call_start_batch(grpc_call *call, const grpc_op *ops, size_t count, struct tag *tag)
{
    grpc_call_error err = grpc_call_start_batch(call, ops, count, tag, NULL);
    if (err != GRPC_CALL_OK)
        fatal(1, "grpc_call_start_batch() failed: %s (a bug in dosomethingd)",
              grpc_call_error_to_string(err));
}

static void
on_unimplemented_done(struct tag *tag, int ok)
{
    struct unimplemented_call *u = (struct unimplemented_call *)tag;
    grpc_slice_unref(u->details);
    grpc_call_unref(u->call);
    free(u);
    grpc_process_call_ended();
}

static void
answer_unimplemented(grpc_call *call, const grpc_call_details *details)
{
    struct unimplemented_call *u = ds_calloc(1, sizeof *u);
    u->tag.done = on_unimplemented_done;
    u->call = call;
    char text[300];
    snprintf(text, sizeof text, "method %.*s is not implemented by dosomethingd",
             (int)GRPC_SLICE_LENGTH(details->method), (const char *)GRPC_SLICE_START_PTR(details->method));
    u->details = grpc_slice_from_copied_string(text);
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[1].data.send_status_from_server.status = GRPC_STATUS_UNIMPLEMENTED;
    ops[1].data.send_status_from_server.status_details = &u->details;
    ops[2].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[2].data.recv_close_on_server.cancelled = &u->cancelled;
    call_start_batch(call, ops, 3, &u->tag);
}

static void
on_request(struct tag *tag, int ok)
{
    struct request *r = (struct request *)tag;
    srv.requests_posted--;
    if (ok) {
        gp.calls++;
        if (r->kind == REQUEST_SUBMIT) {
            char *peer = grpc_call_get_peer(r->call);
            submit_call_start(r->call, peer);
            gpr_free(peer);
        } else if (r->kind == REQUEST_UPDATES) {
            subscribe_call_start(r->call, r->payload);
            r->payload = NULL;
        } else {
            answer_unimplemented(r->call, &r->details);
        }
    }
    if (r->payload != NULL)
        grpc_byte_buffer_destroy(r->payload);
    grpc_metadata_array_destroy(&r->metadata);
    if (r->kind == REQUEST_OTHER)
        grpc_call_details_destroy(&r->details);
    enum request_kind kind = r->kind;
    free(r);
    /* ok == 0: the server is shutting down; post no more. */
    if (ok && !srv.shutting_down)
        post_request(kind);
}

static void
post_request(enum request_kind kind)
{
    struct request *r = ds_calloc(1, sizeof *r);
    r->tag.done = on_request;
    r->kind = kind;
    grpc_metadata_array_init(&r->metadata);
    grpc_call_error err;
    switch (kind) {
    case REQUEST_SUBMIT:
        err = grpc_server_request_registered_call(srv.server, srv.method_submit, &r->call,
                                                  &r->deadline, &r->metadata, NULL, gp.cq,
                                                  gp.cq, &r->tag);
        break;
    case REQUEST_UPDATES:
        err = grpc_server_request_registered_call(srv.server, srv.method_updates, &r->call,
                                                  &r->deadline, &r->metadata, &r->payload,
                                                  gp.cq, gp.cq, &r->tag);
        break;
    default:
        grpc_call_details_init(&r->details);
        err = grpc_server_request_call(srv.server, &r->call, &r->details, &r->metadata, gp.cq,
                                       gp.cq, &r->tag);
        break;
    }
    if (err != GRPC_CALL_OK) {
        log_error("grpc_server_request_call() failed: %s", grpc_call_error_to_string(err));
        grpc_metadata_array_destroy(&r->metadata);
        if (kind == REQUEST_OTHER)
            grpc_call_details_destroy(&r->details);
        free(r);
        return;
    }
    srv.requests_posted++;
}

int
server_start(void)
{
    char max_size[32];
    snprintf(max_size, sizeof max_size, "%llu", (unsigned long long)gp.config->grpc.max_message_size);
    grpc_arg args[] = {
        { .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
          .value.integer = (int)gp.config->grpc.max_message_size },
        { .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, .value.integer = -1 },
    };
    grpc_channel_args channel_args = { .num_args = 2, .args = args };

    srv.server = grpc_server_create(&channel_args, NULL);
    srv.method_submit = grpc_server_register_method(srv.server, METHOD_SUBMIT, NULL,
                                                    GRPC_SRM_PAYLOAD_NONE, 0);
    srv.method_updates = grpc_server_register_method(srv.server, METHOD_UPDATES, NULL,
                                                     GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    grpc_server_register_completion_queue(srv.server, gp.cq, NULL);

    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    int failed = 0;
    for (size_t i = 0; i < gp.config->grpc.listen_count; i++) {
        const char *addr = gp.config->grpc.listen[i];
        if (grpc_server_add_http2_port(srv.server, addr, creds) == 0) {
            char msg[512];
            int n = snprintf(msg, sizeof msg, "cannot listen on %s (in use, or not an address "
                             "of this machine?)", addr);
            log_error("%s", msg);
            master_send_now(IPC_FATAL, msg, (size_t)n);
            failed = 1;
        }
    }
    grpc_server_credentials_release(creds);
    if (failed)
        return -1;
    grpc_server_start(srv.server);
    for (int i = 0; i < REQUESTS_PER_METHOD; i++) {
        post_request(REQUEST_SUBMIT);
        post_request(REQUEST_UPDATES);
        post_request(REQUEST_OTHER);
    }
    for (size_t i = 0; i < gp.config->grpc.listen_count; i++)
        log_info("listening on %s", gp.config->grpc.listen[i]);
    return 0;
}

static void
on_shutdown(struct tag *tag, int ok)
{
    srv.shut_down = 1;
    grpc_process_check_done();
}

/* Stop taking calls (GOAWAY); with cancel_calls, end every call now
 * (clients see UNAVAILABLE). */
void
server_shutdown(int cancel_calls)
{
    if (srv.server == NULL)
        return;
    if (!srv.shutting_down) {
        srv.shutting_down = 1;
        srv.shutdown_tag.done = on_shutdown;
        grpc_server_shutdown_and_notify(srv.server, gp.cq, &srv.shutdown_tag);
    }
    if (cancel_calls)
        grpc_server_cancel_all_calls(srv.server);
}

int
server_is_shut_down(void)
{
    return srv.server == NULL || srv.shut_down;
}

void
server_destroy(void)
{
    if (srv.server != NULL)
        grpc_server_destroy(srv.server);
    srv.server = NULL;
}
