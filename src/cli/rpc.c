/*
 * Call plumbing: the channel, the completion queue, calls and their status.
 */
#include "cli/rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "core/alloc.h"

/* Certificates and keys are small; this only stops a wrong path at /dev/zero. */
#define PEM_FILE_MAX (1024 * 1024)

volatile sig_atomic_t rpc_interrupted;

static const char *const status_names[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *
rpc_status_name(grpc_status_code code)
{
    if ((unsigned)code < sizeof status_names / sizeof status_names[0])
        return status_names[code];
    return "UNKNOWN_STATUS";
}

static grpc_channel_credentials *
tls_credentials(const struct cli_options *o)
{
    char *ca = NULL, *cert = NULL, *key = NULL;
    grpc_channel_credentials *creds = NULL;

    if (o->ca_file != NULL && (ca = read_text_file(o->ca_file, PEM_FILE_MAX)) == NULL)
        goto out;
    if (o->cert_file != NULL && (cert = read_text_file(o->cert_file, PEM_FILE_MAX)) == NULL)
        goto out;
    if (o->key_file != NULL && (key = read_text_file(o->key_file, PEM_FILE_MAX)) == NULL)
        goto out;
    grpc_ssl_pem_key_cert_pair pair = { .private_key = key, .cert_chain = cert };
    creds = grpc_ssl_credentials_create(ca, cert != NULL ? &pair : NULL, NULL, NULL);
    if (creds == NULL)
        cli_error("cannot set up TLS (grpc_ssl_credentials_create failed)");
out:
    /* gRPC copied what it needs. */
    free(ca);
    free(cert);
    if (key != NULL) {
        memset(key, 0, strlen(key));
        free(key);
    }
    return creds;
}

int
rpc_open(struct rpc *r, const struct cli_options *o)
{
    memset(r, 0, sizeof *r);
    r->target = o->target;
    grpc_init();

    grpc_channel_credentials *creds = o->tls ? tls_credentials(o)
                                             : grpc_insecure_credentials_create();
    if (creds == NULL) {
        grpc_shutdown();
        return CLI_EXIT_USAGE;      /* a TLS file the user named */
    }
    char agent[64];
    snprintf(agent, sizeof agent, "dosomething/%s", DS_VERSION);
    grpc_arg args[] = {
        /* Results can be as large as the server allows. */
        { .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
          .value.integer = -1 },
        /* No transparent retries: they would copy every streamed item into
         * a retry buffer, and a resubmitted stream is not what the user asked. */
        { .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ENABLE_RETRIES, .value.integer = 0 },
        { .type = GRPC_ARG_STRING, .key = GRPC_ARG_PRIMARY_USER_AGENT_STRING,
          .value.string = agent },
    };
    grpc_channel_args channel_args = { .num_args = sizeof args / sizeof args[0], .args = args };
    r->channel = grpc_channel_create(o->target, creds, &channel_args);
    grpc_channel_credentials_release(creds);
    if (r->channel == NULL) {
        cli_error("cannot create a channel to %s", o->target);
        grpc_shutdown();
        return CLI_EXIT_RPC;
    }
    r->cq = grpc_completion_queue_create_for_next(NULL);
    return 0;
}

void
rpc_close(struct rpc *r)
{
    if (r->cq != NULL) {
        grpc_completion_queue_shutdown(r->cq);
        /* Nothing should be pending; if something is, do not wait for ever. */
        gpr_timespec deadline = rpc_deadline(clock_now_ms() + 5000);
        for (;;) {
            grpc_event ev = grpc_completion_queue_next(r->cq, deadline, NULL);
            if (ev.type != GRPC_OP_COMPLETE)
                break;
        }
        grpc_completion_queue_destroy(r->cq);
    }
    if (r->channel != NULL)
        grpc_channel_destroy(r->channel);
    grpc_shutdown();
    memset(r, 0, sizeof *r);
}

gpr_timespec
rpc_deadline(int64_t deadline_ms)
{
    if (deadline_ms < 0)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    int64_t left = deadline_ms - clock_now_ms();
    if (left < 0)
        left = 0;
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(left, GPR_TIMESPAN));
}

static void
run_event(const grpc_event *ev)
{
    struct rpc_tag *tag = ev->tag;
    if (tag->call != NULL)
        tag->call->pending--;
    if (tag->done != NULL)
        tag->done(tag, ev->success);
}

void
rpc_poll(struct rpc *r, int timeout_ms)
{
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
    grpc_event ev = grpc_completion_queue_next(r->cq, deadline, NULL);
    /* Then what is ready now, but not for ever: the caller has work too. */
    for (int n = 0; ev.type == GRPC_OP_COMPLETE && n < 4096; n++) {
        run_event(&ev);
        ev = grpc_completion_queue_next(r->cq, gpr_time_0(GPR_CLOCK_MONOTONIC), NULL);
    }
    if (ev.type == GRPC_OP_COMPLETE)
        run_event(&ev);
}

static void
on_status(struct rpc_tag *tag, int ok)
{
    struct rpc_call *c = tag->call;
    c->ended = 1;
    if (c->on_end != NULL)
        c->on_end(c);
}

int
rpc_batch(struct rpc_call *c, const grpc_op *ops, size_t count, struct rpc_tag *tag)
{
    tag->call = c;
    grpc_call_error err = grpc_call_start_batch(c->call, ops, count, tag, NULL);
    if (err != GRPC_CALL_OK) {
        cli_error("%s: grpc_call_start_batch() failed: error %d", c->method_name, (int)err);
        return -1;
    }
    c->pending++;
    return 0;
}

int
rpc_call_start(struct rpc *r, struct rpc_call *c, const char *method, const char *method_name,
               int64_t deadline_ms)
{
    void (*on_end)(struct rpc_call *) = c->on_end;
    void *owner = c->owner;

    memset(c, 0, sizeof *c);
    c->on_end = on_end;
    c->owner = owner;
    c->method_name = method_name;
    c->target = r->target;
    c->status = GRPC_STATUS_UNKNOWN;
    c->details = grpc_empty_slice();
    grpc_metadata_array_init(&c->trailing_metadata);
    grpc_slice path = grpc_slice_from_static_string(method);
    c->call = grpc_channel_create_call(r->channel, NULL, GRPC_PROPAGATE_DEFAULTS, r->cq, path,
                                       NULL, rpc_deadline(deadline_ms), NULL);
    if (c->call == NULL) {
        cli_error("%s: cannot create the call", method_name);
        grpc_metadata_array_destroy(&c->trailing_metadata);
        return -1;
    }

    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &c->trailing_metadata;
    ops[0].data.recv_status_on_client.status = &c->status;
    ops[0].data.recv_status_on_client.status_details = &c->details;
    ops[0].data.recv_status_on_client.error_string = &c->error_string;
    c->status_tag.done = on_status;
    /* The headers go alone: the first message may carry the write-buffer
     * hint, and the server should see the call at once. */
    ops[1].op = GRPC_OP_SEND_INITIAL_METADATA;
    c->metadata_tag.done = NULL;
    if (rpc_batch(c, &ops[0], 1, &c->status_tag) == -1)
        goto fail;
    if (rpc_batch(c, &ops[1], 1, &c->metadata_tag) == -1) {
        rpc_call_cancel(c);
        return 0;       /* the status tells the rest */
    }
    return 0;
fail:
    grpc_call_unref(c->call);
    c->call = NULL;
    grpc_metadata_array_destroy(&c->trailing_metadata);
    return -1;
}

void
rpc_call_cancel(struct rpc_call *c)
{
    if (c->call != NULL && !c->ended)
        grpc_call_cancel(c->call, NULL);
}

void
rpc_call_finish(struct rpc *r, struct rpc_call *c, int timeout_ms)
{
    if (c->call == NULL)
        return;
    rpc_call_cancel(c);
    int64_t deadline = clock_now_ms() + timeout_ms;
    while (c->pending > 0 && clock_now_ms() < deadline)
        rpc_poll(r, 100);
}

void
rpc_call_free(struct rpc_call *c)
{
    if (c->call == NULL)
        return;
    if (c->pending > 0)
        return;         /* a tag still points here: leak rather than corrupt */
    grpc_call_unref(c->call);
    c->call = NULL;
    grpc_slice_unref(c->details);
    grpc_metadata_array_destroy(&c->trailing_metadata);
    if (c->error_string != NULL)
        gpr_free((void *)c->error_string);
    c->error_string = NULL;
}

void
rpc_report(const struct rpc_call *c)
{
    size_t len = GRPC_SLICE_LENGTH(c->details);
    const char *details = (const char *)GRPC_SLICE_START_PTR(c->details);

    if (len == 0) {
        details = "no details";
        len = strlen(details);
    }
    cli_error("%s (to %s): %s: %.*s", c->method_name, c->target, rpc_status_name(c->status),
              (int)len, details);
    if (c->status == GRPC_STATUS_DEADLINE_EXCEEDED)
        cli_error("the deadline is --timeout: raise it, or 0 for none");
}

grpc_byte_buffer *
rpc_buffer_take(grpc_slice slice)
{
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return bb;
}

grpc_slice
rpc_buffer_slice(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return grpc_empty_slice();
    grpc_slice s = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    return s;
}
