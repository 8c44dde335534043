/*
 * getUpdates: the request, initial metadata as the "subscribed" signal,
 * one receive in flight at a time, resume after a cut-off.
 */
#include "cli/subscription.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

#define GET_UPDATES "/com.agrounds.dosomething.v1.DoSomethingService/getUpdates"
#define RESUMES_MAX 1000
#define FINISH_MS   5000

static int call_start(struct subscription *s);

static char **
copy_strings(char **strings, size_t count)
{
    if (count == 0)
        return NULL;
    char **copy = ds_malloc(count * sizeof *copy);
    for (size_t i = 0; i < count; i++)
        copy[i] = ds_strdup(strings[i]);
    return copy;
}

static void
free_strings(char **strings, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(strings[i]);
    free(strings);
}

/* Once the status and every batch are in: resume, or end for good. */
static void
check_end(struct subscription *s)
{
    if (!s->call.ended || s->call.pending > 0 || s->ended)
        return;
    grpc_metadata_array_destroy(&s->initial_metadata);
    if (s->call.status == GRPC_STATUS_RESOURCE_EXHAUSTED && !s->cancelled &&
        s->received > 0 && s->resumes < RESUMES_MAX) {
        fprintf(stderr, "dosomething: the server cut this subscriber off (%.*s); "
                "resuming after seq %llu\n", (int)GRPC_SLICE_LENGTH(s->call.details),
                (const char *)GRPC_SLICE_START_PTR(s->call.details),
                (unsigned long long)s->last_seq);
        rpc_call_free(&s->call);
        s->resumes++;
        s->request.replay = 1;
        if (s->last_seq > s->request.after_seq)
            s->request.after_seq = s->last_seq;
        if (call_start(s) == 0)
            return;
        s->call.status = GRPC_STATUS_INTERNAL;
    }
    s->ended = 1;
}

static void
on_call_end(struct rpc_call *c)
{
    check_end(c->owner);
}

static void
on_sent(struct rpc_tag *tag, int ok)
{
    struct subscription *s = tag->call->owner;
    grpc_byte_buffer_destroy(s->send_buffer);
    s->send_buffer = NULL;
    check_end(s);
}

static void
receive(struct subscription *s)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &s->recv_buffer;
    if (rpc_batch(&s->call, &op, 1, &s->recv_tag) == -1)
        rpc_call_cancel(&s->call);
}

static void
on_ready(struct rpc_tag *tag, int ok)
{
    struct subscription *s = tag->call->owner;
    if (ok) {
        s->ready = 1;
        receive(s);
    }
    check_end(s);
}

static void
on_received(struct rpc_tag *tag, int ok)
{
    struct subscription *s = tag->call->owner;
    grpc_byte_buffer *bb = s->recv_buffer;
    s->recv_buffer = NULL;

    if (!ok || bb == NULL) {
        /* The stream is over; the status says why. */
        if (bb != NULL)
            grpc_byte_buffer_destroy(bb);
        check_end(s);
        return;
    }
    grpc_slice slice = rpc_buffer_slice(bb);
    grpc_byte_buffer_destroy(bb);
    wire_update *u = wire_update_unpack(NULL, GRPC_SLICE_LENGTH(slice),
                                        GRPC_SLICE_START_PTR(slice));
    grpc_slice_unref(slice);
    if (u == NULL) {
        cli_error("getUpdates: the server sent a message that is not an Update");
        s->cancelled = 1;
        rpc_call_cancel(&s->call);
        check_end(s);
        return;
    }
    s->received++;
    if (u->seq > s->last_seq)
        s->last_seq = u->seq;
    if (!s->cancelled)
        s->on_update(s->arg, u);
    wire_update_free(u, NULL);
    if (!s->cancelled)
        receive(s);
    check_end(s);
}

static int
call_start(struct subscription *s)
{
    s->call.on_end = on_call_end;
    s->call.owner = s;
    s->received = 0;
    if (rpc_call_start(s->rpc, &s->call, GET_UPDATES, "getUpdates", s->deadline_ms) == -1)
        return -1;
    grpc_metadata_array_init(&s->initial_metadata);

    grpc_slice slice = grpc_slice_malloc(wire_updates_request_size(&s->request));
    wire_updates_request_pack(&s->request, GRPC_SLICE_START_PTR(slice));
    s->send_buffer = rpc_buffer_take(slice);

    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_MESSAGE;
    ops[0].data.send_message.send_message = s->send_buffer;
    ops[1].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[2].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[2].data.recv_initial_metadata.recv_initial_metadata = &s->initial_metadata;
    s->send_tag.done = on_sent;
    s->ready_tag.done = on_ready;
    s->recv_tag.done = on_received;
    if (rpc_batch(&s->call, ops, 2, &s->send_tag) == -1 ||
        rpc_batch(&s->call, &ops[2], 1, &s->ready_tag) == -1)
        rpc_call_cancel(&s->call);
    return 0;
}

int
subscription_start(struct subscription *s, struct rpc *r, const wire_updates_request *request,
                   int64_t deadline_ms, void (*on_update)(void *, const wire_update *), void *arg)
{
    memset(s, 0, sizeof *s);
    s->rpc = r;
    s->deadline_ms = deadline_ms;
    s->on_update = on_update;
    s->arg = arg;

    wire_updates_request_init(&s->request);
    s->request.replay = request->replay;
    s->request.after_seq = request->after_seq;
    s->request.n_item_ids = request->n_item_ids;
    s->request.item_ids = copy_strings(request->item_ids, request->n_item_ids);
    s->request.n_kinds = request->n_kinds;
    s->request.kinds = copy_strings(request->kinds, request->n_kinds);
    s->request.n_batches = request->n_batches;
    s->request.batches = copy_strings(request->batches, request->n_batches);
    s->request.n_states = request->n_states;
    if (request->n_states > 0) {
        s->request.states = ds_malloc(request->n_states * sizeof *s->request.states);
        memcpy(s->request.states, request->states, request->n_states * sizeof *s->request.states);
    }
    if (call_start(s) == -1) {
        subscription_finish(s);
        return -1;
    }
    return 0;
}

void
subscription_cancel(struct subscription *s)
{
    s->cancelled = 1;
    rpc_call_cancel(&s->call);
}

void
subscription_finish(struct subscription *s)
{
    if (s->call.call != NULL) {
        subscription_cancel(s);
        rpc_call_finish(s->rpc, &s->call, FINISH_MS);
        rpc_call_free(&s->call);
    }
    free_strings(s->request.item_ids, s->request.n_item_ids);
    free_strings(s->request.kinds, s->request.n_kinds);
    free_strings(s->request.batches, s->request.n_batches);
    free(s->request.states);
    s->request.item_ids = s->request.kinds = s->request.batches = NULL;
    s->request.states = NULL;
}
