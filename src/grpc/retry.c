/*
 * retry: the FAILED or CANCELLED items named (by id, or every one of the
 * batches named) run again from attempt 1, each a new item made from the
 * WorkItem the index kept, with its kind's handler as configured now (a
 * reload can fix what made them fail), through the store (store_retry):
 * published QUEUED and queued like a new one. Other known items count as
 * not_retryable; unknown ids are listed in not_found. In cluster mode
 * the items are the backend's: store_act() does the same in Redis.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "grpc/call.h"
#include "grpc/items.h"
#include "grpc/retry.h"
#include "grpc/scope.h"
#include "grpc/store.h"
#include "grpc/unary.h"

#define IDS_MAX 1000

/* Freed by retry_destroy() when the call's last reference goes (call.h). */
struct retry_call {
    struct unary_call u;
    wire_retry_request *request;
    uint64_t requeued, not_retryable;
    /* cluster mode: what the store's question borrows */
    char **ids;                 /* scoped, then the scope (or NULL) */
};

static void
retry_counts(struct call *call, char *buf, size_t size)
{
    struct retry_call *c = CALL_OF(call, struct retry_call, u.base);
    snprintf(buf, size, "items=%llu/%llu", (unsigned long long)c->requeued,
             (unsigned long long)c->not_retryable);
}

static void
retry_destroy(struct call *call)
{
    struct retry_call *c = CALL_OF(call, struct retry_call, u.base);
    if (c->ids != NULL) {
        for (size_t i = 0; i <= c->request->n_item_ids; i++)
            free(c->ids[i]);
        free(c->ids);
    }
    if (c->request != NULL)
        wire_retry_request_free(c->request, NULL);
    unary_call_free(&c->u);
    free(c);
}

static const struct call_kind retry_kind = {
    .method = "retry",
    .counts = retry_counts,
    .closed = unary_act_closed,
    .destroy = retry_destroy,
};

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
static int
collect(const struct known_item *k, void *arg)
{
    struct batch_scan *s = arg;
    if (s->count == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->ids = ds_realloc(s->ids, s->cap * sizeof *s->ids);
    }
    s->ids[s->count++] = ds_strdup(k->id);
    return 0;
}

static void
count(struct retry_call *c, enum store_retry_result r)
{
    if (r == STORE_RETRY_REQUEUED)
        c->requeued++;
    else if (r == STORE_RETRY_NOT_RETRYABLE)
        c->not_retryable++;
}

/* ---- cluster mode: the backend keeps the items (store_act) ---------------- */

static grpc_byte_buffer *
act_reply(struct unary_call *u, const struct store_act_result *r)
{
    struct retry_call *c = CALL_OF(u, struct retry_call, u);
    const wire_retry_request *q = c->request;
    wire_retry_reply msg;
    wire_retry_reply_init(&msg);
    msg.requeued = c->requeued = r->done;
    msg.not_retryable = c->not_retryable = r->skipped;
    char **not_found = ds_calloc(q->n_item_ids + 1, sizeof *not_found);
    for (size_t i = 0; i < q->n_item_ids; i++)
        if (r->not_found[i])
            not_found[msg.n_not_found++] = q->item_ids[i];
    msg.not_found = not_found;
    grpc_byte_buffer *reply = unary_pack(&msg.base);
    free(not_found);
    return reply;
}

static void
ask_store(struct retry_call *c, const char *scope, size_t scope_len)
{
    const wire_retry_request *q = c->request;
    c->ids = ds_calloc(q->n_item_ids + 1, sizeof *c->ids);
    for (size_t i = 0; i < q->n_item_ids; i++) {
        const char *id = q->item_ids[i];
        size_t len = strlen(id) + scope_len + 1;
        c->ids[i] = ds_malloc(len);
        snprintf(c->ids[i], len, "%.*s%s", (int)scope_len, scope, id);  /* always the scope's */
    }
    c->ids[q->n_item_ids] = ds_strndup(scope, scope_len);   /* outlives this frame */
    struct store_act_query aq = {
        .act = STORE_ACT_RETRY, .ids = c->ids, .n_ids = q->n_item_ids,
        .batches = q->batches, .n_batches = q->n_batches, .scope = c->ids[q->n_item_ids],
    };
    unary_ask_act(&c->u, &aq, act_reply);
}

void
retry_call_start(grpc_call *call, grpc_byte_buffer *request)
{
    struct retry_call *c = ds_calloc(1, sizeof *c);
    call_init(&c->u.base, call, &retry_kind);
    c->request =
        unary_decode(request, &com__agrounds__dosomething__v1__retry_request__descriptor);
    char err[256];
    if (c->request == NULL) {
        unary_finish(&c->u, GRPC_STATUS_INVALID_ARGUMENT,
                     "the request is not a valid RetryRequest", NULL);
        return;
    }
    const wire_retry_request *q = c->request;
    if (unary_check_strings("item_ids", q->item_ids, q->n_item_ids, 0, err, sizeof err) == -1 ||
        unary_check_strings("batches", q->batches, q->n_batches, 0, err, sizeof err) == -1) {
        unary_finish(&c->u, GRPC_STATUS_INVALID_ARGUMENT, err, NULL);
        return;
    }
    if (q->n_item_ids > IDS_MAX) {
        snprintf(err, sizeof err, "%zu item_ids, more than %d", q->n_item_ids, IDS_MAX);
        unary_finish(&c->u, GRPC_STATUS_INVALID_ARGUMENT, err, NULL);
        return;
    }
    const char *why;
    if (!store_available(&why)) {
        unary_finish(&c->u, GRPC_STATUS_UNAVAILABLE, why, NULL);
        return;
    }
    char scope[SCOPE_IDENTITY_MAX + 2];
    int scoped = scope_of_call(call, scope, sizeof scope);
    if (scoped == -1) {
        unary_finish(&c->u, GRPC_STATUS_PERMISSION_DENIED, scope, NULL);
        return;
    }
    size_t scope_len = scoped == 1 ? strlen(scope) : 0;
    if (store_items_remote()) {
        ask_store(c, scope, scope_len);
        return;
    }

    char **not_found = ds_calloc(q->n_item_ids + 1, sizeof *not_found);
    size_t n_not_found = 0;
    for (size_t i = 0; i < q->n_item_ids; i++) {
        const char *id = q->item_ids[i];
        char *scoped_id = NULL;
        if (scope_len > 0) {        /* always the scope's, as in getItems */
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
        items_list(0, (1u << STATE_FAILED) | (1u << STATE_CANCELLED), in_batches, &s, SIZE_MAX,
                   collect, &s, &more);
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
    grpc_byte_buffer *reply = unary_pack(&msg.base);
    free(not_found);
    unary_finish(&c->u, GRPC_STATUS_OK, NULL, reply);
}
