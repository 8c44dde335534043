/*
 * cancel: a unary call, CancelRequest{item_ids, batches, reason} ->
 * CancelReply{cancelled, already_final, not_found}.
 *
 * What it asks of items goes through store_cancel(): one walk over what
 * this process holds, matching the ids (sorted, found by bsearch) and the
 * batches. A waiting item ends CANCELLED at once; a running one once its
 * worker has stopped it (store.h says how), and it counts as cancelled now.
 *
 * An id this process does not hold but knows as final (the index of known
 * items, store_known_final()) counts in already_final; any other is
 * not_found.
 *
 * In cluster mode the items are the backend's (store_items_remote()):
 * the call asks store_act(), which cancels an item wherever it is (queued
 * in Redis, or held by any instance) and knows which are final.
 *
 * With grpc.tls.scope_ids a client cancels only in its scope: its ids are
 * scoped as at submit ("IDENTITY/ID"), and a batch matches only its items.
 */
#include "grpc/cancel.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "com/agrounds/dosomething/v1/do_something.pb-c.h"
#include "core/alloc.h"
#include "core/config.h"
#include "core/utf8.h"
#include "grpc/call.h"
#include "grpc/grpc_process.h"
#include "grpc/item.h"
#include "grpc/items.h"
#include "grpc/scope.h"
#include "grpc/store.h"
#include "grpc/unary.h"

typedef Com__Agrounds__Dosomething__V1__CancelRequest cancel_request;
typedef Com__Agrounds__Dosomething__V1__CancelReply cancel_reply;

/* Freed by cancel_destroy() when the call's last reference goes (call.h). */
struct cancel_call {
    struct unary_call u;
    uint64_t cancelled;
    uint64_t not_found;
    /* cluster mode: what the store's question borrows */
    cancel_request *request;
    char **ids;                 /* scoped */
};

/* One requested id: as the client sent it, and as the store knows it. */
struct wanted {
    size_t index;               /* in the request */
    char *id;                   /* scoped; ours */
    int found;
};

struct cancel_match {
    struct wanted *ids;         /* sorted by id, duplicates kept (all marked found) */
    size_t id_count;
    char **batches;             /* sorted */
    size_t batch_count;
    const char *scope;
    size_t scope_len;
};

static void
cancel_counts(struct call *call, char *buf, size_t size)
{
    struct cancel_call *c = CALL_OF(call, struct cancel_call, u.base);
    snprintf(buf, size, "cancelled=%llu not_found=%llu", (unsigned long long)c->cancelled,
             (unsigned long long)c->not_found);
}

static void
cancel_destroy(struct call *call)
{
    struct cancel_call *c = CALL_OF(call, struct cancel_call, u.base);
    if (c->request != NULL) {
        for (size_t i = 0; i <= c->request->n_item_ids; i++)
            free(c->ids[i]);    /* the last: the scope, or NULL */
        free(c->ids);
        com__agrounds__dosomething__v1__cancel_request__free_unpacked(c->request, NULL);
    }
    unary_call_free(&c->u);
    free(c);
}

static const struct call_kind cancel_kind = {
    .method = "cancel",
    .counts = cancel_counts,
    .closed = unary_act_closed,
    .destroy = cancel_destroy,
};

/* Is the request acceptable? If not, why (naming the field) into ERR. */
static int
check_request(const cancel_request *req, char *err, size_t err_size)
{
    if (req->n_item_ids > CANCEL_IDS_MAX) {
        snprintf(err, err_size, "item_ids: %zu ids, at most %u per call", req->n_item_ids,
                 CANCEL_IDS_MAX);
        return -1;
    }
    if (req->n_batches > CANCEL_BATCHES_MAX) {
        snprintf(err, err_size, "batches: %zu batches, at most %u per call", req->n_batches,
                 CANCEL_BATCHES_MAX);
        return -1;
    }
    if (req->n_item_ids == 0 && req->n_batches == 0) {
        snprintf(err, err_size, "item_ids and batches are both empty: nothing to cancel");
        return -1;
    }
    if (unary_check_strings("item_ids", req->item_ids, req->n_item_ids, DS_ITEM_ID_MAX, err,
                            err_size) == -1 ||
        unary_check_strings("batches", req->batches, req->n_batches, DS_ITEM_ID_MAX, err,
                            err_size) == -1)
        return -1;
    size_t len = strlen(req->reason);
    if (!utf8_valid(req->reason, len)) {
        snprintf(err, err_size, "reason is not valid UTF-8");
        return -1;
    }
    if (len > CANCEL_REASON_MAX) {
        snprintf(err, err_size, "reason is %zu bytes, at most %u", len, CANCEL_REASON_MAX);
        return -1;
    }
    return 0;
}

static int
compare_wanted(const void *a, const void *b)
{
    return strcmp(((const struct wanted *)a)->id, ((const struct wanted *)b)->id);
}

static int
compare_string(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
match(const struct item *item, void *arg)
{
    struct cancel_match *m = arg;
    if (m->id_count > 0) {
        struct wanted key = { .id = (char *)item->id };
        struct wanted *w = bsearch(&key, m->ids, m->id_count, sizeof *m->ids, compare_wanted);
        if (w != NULL) {
            /* Every copy of a repeated id is found. */
            for (struct wanted *p = w; p >= m->ids && strcmp(p->id, item->id) == 0; p--)
                p->found = 1;
            for (struct wanted *p = w + 1; p < m->ids + m->id_count &&
                 strcmp(p->id, item->id) == 0; p++)
                p->found = 1;
            return 1;
        }
    }
    if (m->batch_count > 0 && item->batch != NULL && item->batch[0] != '\0' &&
        strncmp(item->id, m->scope, m->scope_len) == 0) {
        const char *b = item->batch;
        if (bsearch(&b, m->batches, m->batch_count, sizeof *m->batches, compare_string) != NULL)
            return 1;
    }
    return 0;
}

/* A known final item of a named batch (in scope) that is not also named by
 * id (counted there): already final. */
static int
final_in_batches(const struct known_item *k, void *arg)
{
    const struct cancel_match *m = arg;
    if (!items_is_final(k->state) || strncmp(k->id, m->scope, m->scope_len) != 0)
        return 0;
    const char *b = known_batch(k);
    if (b[0] == '\0' ||
        bsearch(&b, m->batches, m->batch_count, sizeof *m->batches, compare_string) == NULL)
        return 0;
    struct wanted key = { .id = (char *)k->id };
    return m->id_count == 0 ||
           bsearch(&key, m->ids, m->id_count, sizeof *m->ids, compare_wanted) == NULL;
}

static int
count_one(const struct known_item *k, void *arg)
{
    (void)k;
    (*(uint64_t *)arg)++;
    return 0;
}

static void
answer(struct cancel_call *c, const cancel_request *req, const char *scope)
{
    struct cancel_match m = { .id_count = req->n_item_ids, .batch_count = req->n_batches,
                              .scope = scope, .scope_len = strlen(scope) };
    m.ids = ds_calloc(m.id_count + 1, sizeof *m.ids);
    for (size_t i = 0; i < m.id_count; i++) {
        const char *id = req->item_ids[i];
        m.ids[i].index = i;
        size_t len = strlen(id) + m.scope_len + 1;
        m.ids[i].id = ds_malloc(len);
        snprintf(m.ids[i].id, len, "%s%s", scope, id);     /* always the scope's */
    }
    qsort(m.ids, m.id_count, sizeof *m.ids, compare_wanted);
    m.batches = ds_calloc(m.batch_count + 1, sizeof *m.batches);
    for (size_t i = 0; i < m.batch_count; i++)
        m.batches[i] = req->batches[i];
    qsort(m.batches, m.batch_count, sizeof *m.batches, compare_string);

    /* The batches' items already final: counted before store_cancel() makes
     * the waiting ones final. */
    uint64_t batch_finals = 0;
    if (m.batch_count > 0) {
        int more;
        items_list(0, (1u << STATE_SUCCEEDED) | (1u << STATE_FAILED) | (1u << STATE_CANCELLED),
                   final_in_batches, &m, SIZE_MAX, count_one, &batch_finals, &more);
    }
    const char *reason = req->reason[0] != '\0' ? req->reason : NULL;
    c->cancelled = store_cancel(match, &m, reason);

    /* Ids not held here: already_final if known final (an id sent twice
     * counts once), else not_found (in the order sent, as sent). */
    cancel_reply reply = COM__AGROUNDS__DOSOMETHING__V1__CANCEL_REPLY__INIT;
    reply.cancelled = c->cancelled;
    reply.already_final = batch_finals;
    reply.not_found = ds_calloc(m.id_count + 1, sizeof *reply.not_found);
    uint8_t *found = ds_calloc(m.id_count + 1, 1);
    for (size_t j = 0; j < m.id_count; j++) {
        if (m.ids[j].found) {
            found[m.ids[j].index] = 1;
        } else if (store_known_final(m.ids[j].id)) {
            found[m.ids[j].index] = 2;
            if (j == 0 || strcmp(m.ids[j].id, m.ids[j - 1].id) != 0)
                reply.already_final++;
        }
    }
    for (size_t i = 0; i < req->n_item_ids; i++)
        if (!found[i])
            reply.not_found[reply.n_not_found++] = req->item_ids[i];
    free(found);
    c->not_found = reply.n_not_found;
    grpc_byte_buffer *packed = unary_pack(&reply.base);
    free(reply.not_found);
    for (size_t i = 0; i < m.id_count; i++)
        free(m.ids[i].id);
    free(m.ids);
    free(m.batches);
    unary_finish(&c->u, GRPC_STATUS_OK, NULL, packed);
}

/* ---- cluster mode: the backend keeps the items (store_act) ---------------- */

static grpc_byte_buffer *
act_reply(struct unary_call *u, const struct store_act_result *r)
{
    struct cancel_call *c = CALL_OF(u, struct cancel_call, u);
    const cancel_request *req = c->request;
    cancel_reply reply = COM__AGROUNDS__DOSOMETHING__V1__CANCEL_REPLY__INIT;
    reply.cancelled = c->cancelled = r->done;
    reply.already_final = r->skipped;
    reply.not_found = ds_calloc(req->n_item_ids + 1, sizeof *reply.not_found);
    for (size_t i = 0; i < req->n_item_ids; i++)
        if (r->not_found[i])
            reply.not_found[reply.n_not_found++] = req->item_ids[i];
    c->not_found = reply.n_not_found;
    grpc_byte_buffer *packed = unary_pack(&reply.base);
    free(reply.not_found);
    return packed;
}

/* REQ is the call's from now on. */
static void
ask_store(struct cancel_call *c, cancel_request *req, const char *scope)
{
    size_t scope_len = strlen(scope);
    c->request = req;
    c->ids = ds_calloc(req->n_item_ids + 1, sizeof *c->ids);
    for (size_t i = 0; i < req->n_item_ids; i++) {
        const char *id = req->item_ids[i];
        size_t len = strlen(id) + scope_len + 1;
        c->ids[i] = ds_malloc(len);
        snprintf(c->ids[i], len, "%s%s", scope, id);        /* always the scope's */
    }
    struct store_act_query q = {
        .act = STORE_ACT_CANCEL, .ids = c->ids, .n_ids = req->n_item_ids,
        .batches = req->batches, .n_batches = req->n_batches,
        .scope = scope_len > 0 ? ds_strdup(scope) : "",
        .reason = req->reason[0] != '\0' ? req->reason : NULL,
    };
    if (scope_len > 0) {
        /* The scope outlives this frame: keep it with the ids. */
        c->ids[req->n_item_ids] = (char *)q.scope;
    }
    unary_ask_act(&c->u, &q, act_reply);
}

void
cancel_call_start(grpc_call *call, grpc_byte_buffer *request)
{
    struct cancel_call *c = ds_calloc(1, sizeof *c);
    call_init(&c->u.base, call, &cancel_kind);
    unary_send_metadata(&c->u);

    cancel_request *req =
        unary_decode(request, &com__agrounds__dosomething__v1__cancel_request__descriptor);
    char err[160], scope[SCOPE_IDENTITY_MAX + 2];
    if (req == NULL) {
        unary_finish(&c->u, GRPC_STATUS_INVALID_ARGUMENT,
                     "the request is not a valid CancelRequest", NULL);
        return;
    }
    const char *why;
    if (check_request(req, err, sizeof err) == -1) {
        unary_finish(&c->u, GRPC_STATUS_INVALID_ARGUMENT, err, NULL);
    } else if (scope_of_call(call, scope, sizeof scope) == -1) {
        unary_finish(&c->u, GRPC_STATUS_PERMISSION_DENIED, scope, NULL);
    } else if (!store_available(&why)) {
        unary_finish(&c->u, GRPC_STATUS_UNAVAILABLE, why, NULL);
    } else if (store_items_remote()) {
        ask_store(c, req, scope);   /* the items may run on another instance */
        return;
    } else {
        answer(c, req, scope);
    }
    com__agrounds__dosomething__v1__cancel_request__free_unpacked(req, NULL);
}
