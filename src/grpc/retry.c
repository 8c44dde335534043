/*
 * retry: the FAILED or CANCELLED items named (by id, or every one of the
 * batches named) run again from attempt 1, each a new item made from the
 * WorkItem the index kept, with its kind's handler as configured now (a
 * reload can fix what made them fail), through the store (store_retry):
 * published QUEUED and queued like a new one. Other known items count as
 * not_retryable; unknown ids are listed in not_found.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>

#include "core/alloc.h"
#include "core/utf8.h"
#include "grpc/call.h"
#include "grpc/items.h"
#include "grpc/retry.h"
#include "grpc/scope.h"
#include "grpc/store.h"

#define IDS_MAX 1000

struct retry_call {
    struct call base;
    wire_retry_request *request;
    uint64_t requeued, not_retryable;
    grpc_byte_buffer *reply_buffer;
    grpc_slice details;
    int has_details;
};

static void
retry_counts(struct call *call, char *buf, size_t size)
{
    struct retry_call *c = CALL_OF(call, struct retry_call, base);
    snprintf(buf, size, "items=%llu/%llu", (unsigned long long)c->requeued,
             (unsigned long long)c->not_retryable);
}

static void
retry_destroy(struct call *call)
{
    struct retry_call *c = CALL_OF(call, struct retry_call, base);
    if (c->request != NULL)
        wire_retry_request_free(c->request, NULL);
    if (c->reply_buffer != NULL)
        grpc_byte_buffer_destroy(c->reply_buffer);
    if (c->has_details)
        grpc_slice_unref(c->details);
    free(c);
}

static const struct call_kind retry_kind = {
    .method = "retry",
    .counts = retry_counts,
    .destroy = retry_destroy,
};

static void
finish(struct retry_call *c, grpc_status_code status, const char *details,
       grpc_byte_buffer *reply)
{
    c->base.status = status;
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (reply != NULL) {
        c->reply_buffer = reply;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = reply;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = status;
    if (details != NULL) {
        c->details = grpc_slice_from_copied_string(details);
        c->has_details = 1;
        ops[n].data.send_status_from_server.status_details = &c->details;
    }
    call_batch(&c->base, ops, n + 1, NULL);
}

static wire_retry_request *
decode(grpc_byte_buffer *bb)
{
    if (bb == NULL)
        return wire_retry_request_unpack(NULL, 0, (const uint8_t *)"");
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    grpc_slice slice = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    wire_retry_request *q = wire_retry_request_unpack(NULL, GRPC_SLICE_LENGTH(slice),
                                                      GRPC_SLICE_START_PTR(slice));
    grpc_slice_unref(slice);
    return q;
}

static int
check_strings(const char *name, char **strings, size_t n, char *err, size_t size)
{
    for (size_t i = 0; i < n; i++)
        if (!utf8_valid(strings[i], strlen(strings[i]))) {
            snprintf(err, size, "%s[%zu] is not valid UTF-8", name, i);
            return -1;
        }
    return 0;
}

struct batch_scan {
    const wire_retry_request *q;
    const char *scope;
    size_t scope_len;
    char **ids;
    size_t count, cap;
};

static int
in_batches(const struct known_item *k, void *arg)
{
    const struct batch_scan *s = arg;
    if (k->state != STATE_FAILED && k->state != STATE_CANCELLED)
        return 0;
    if (s->scope_len > 0 && strncmp(k->id, s->scope, s->scope_len) != 0)
        return 0;
    const char *batch = known_batch(k);
    for (size_t i = 0; i < s->q->n_batches; i++)
        if (strcmp(s->q->batches[i], batch) == 0)
            return 1;
    return 0;
}

/* Ids first, retried after the scan: a retry changes the index. */
static void
collect(const struct known_item *k, void *arg)
{
    struct batch_scan *s = arg;
    if (s->count == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->ids = ds_realloc(s->ids, s->cap * sizeof *s->ids);
    }
    s->ids[s->count++] = ds_strdup(k->id);
}

static void
count(struct retry_call *c, enum store_retry_result r)
{
    if (r == STORE_RETRY_REQUEUED)
        c->requeued++;
    else if (r == STORE_RETRY_NOT_RETRYABLE)
        c->not_retryable++;
}

void
retry_call_start(grpc_call *call, grpc_byte_buffer *request)
{
    struct retry_call *c = ds_calloc(1, sizeof *c);
    call_init(&c->base, call, &retry_kind);
    c->request = decode(request);
    if (request != NULL)
        grpc_byte_buffer_destroy(request);
    char err[256];
    if (c->request == NULL) {
        finish(c, GRPC_STATUS_INVALID_ARGUMENT, "the request is not a valid RetryRequest", NULL);
        return;
    }
    const wire_retry_request *q = c->request;
    if (check_strings("item_ids", q->item_ids, q->n_item_ids, err, sizeof err) == -1 ||
        check_strings("batches", q->batches, q->n_batches, err, sizeof err) == -1) {
        finish(c, GRPC_STATUS_INVALID_ARGUMENT, err, NULL);
        return;
    }
    if (q->n_item_ids > IDS_MAX) {
        snprintf(err, sizeof err, "%zu item_ids, more than %d", q->n_item_ids, IDS_MAX);
        finish(c, GRPC_STATUS_INVALID_ARGUMENT, err, NULL);
        return;
    }
    if (store_shared_log()) {
        finish(c, GRPC_STATUS_FAILED_PRECONDITION, "retry is not served in cluster mode yet",
               NULL);
        return;
    }
    const char *why;
    if (!store_available(&why)) {
        finish(c, GRPC_STATUS_UNAVAILABLE, why, NULL);
        return;
    }
    char scope[SCOPE_IDENTITY_MAX + 2];
    int scoped = scope_of_call(call, scope, sizeof scope);
    if (scoped == -1) {
        finish(c, GRPC_STATUS_PERMISSION_DENIED, scope, NULL);
        return;
    }
    size_t scope_len = scoped == 1 ? strlen(scope) : 0;

    char **not_found = ds_calloc(q->n_item_ids + 1, sizeof *not_found);
    size_t n_not_found = 0;
    for (size_t i = 0; i < q->n_item_ids; i++) {
        const char *id = q->item_ids[i];
        char *scoped_id = NULL;
        if (scope_len > 0 && strncmp(id, scope, scope_len) != 0) {
            scoped_id = ds_malloc(scope_len + strlen(id) + 1);
            memcpy(scoped_id, scope, scope_len);
            strcpy(scoped_id + scope_len, id);
            id = scoped_id;
        }
        enum store_retry_result r = store_retry(id);
        free(scoped_id);
        if (r == STORE_RETRY_NOT_FOUND)
            not_found[n_not_found++] = q->item_ids[i];
        count(c, r);
    }
    if (q->n_batches > 0) {
        struct batch_scan s = { .q = q, .scope = scope, .scope_len = scope_len };
        int more;
        items_list(0, in_batches, &s, SIZE_MAX, collect, &s, &more);
        for (size_t i = 0; i < s.count; i++) {
            count(c, store_retry(s.ids[i]));
            free(s.ids[i]);
        }
        free(s.ids);
    }

    wire_retry_reply msg;
    wire_retry_reply_init(&msg);
    msg.requeued = c->requeued;
    msg.not_retryable = c->not_retryable;
    msg.n_not_found = n_not_found;
    msg.not_found = not_found;
    grpc_slice slice = grpc_slice_malloc(wire_retry_reply_size(&msg));
    wire_retry_reply_pack(&msg, GRPC_SLICE_START_PTR(slice));
    grpc_byte_buffer *reply = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    free(not_found);
    finish(c, GRPC_STATUS_OK, NULL, reply);
}
