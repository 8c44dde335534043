/*
 * getItems: what became of items, from the index of known items (items.c).
 *
 *   by ids     each known item's latest state (with its result if asked);
 *              unknown ids in not_found. With wait, the reply waits until
 *              every requested known item is final: the index tells us of
 *              each final (items_on_change), nothing polls; the call's
 *              deadline ends the wait (gRPC cancels the call: the client
 *              sees DEADLINE_EXCEEDED).
 *   by filter  kinds, states, batches (every list given must match),
 *              newest accepted first, paged: a page token is the acceptance
 *              order of the page's last item, so the next page starts below
 *              it whatever came or went meanwhile.
 *
 * In a scope (grpc.tls.scope_ids) ids are the scope's: a requested id
 * without the scope's prefix gets it, and a listing shows only the scope's.
 * Cluster mode is not served yet (the cluster keeps its items in Redis).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/utf8.h"
#include "grpc/call.h"
#include "grpc/get_items.h"
#include "grpc/grpc_process.h"
#include "grpc/items.h"
#include "grpc/scope.h"
#include "grpc/store.h"

#define LIMIT_DEFAULT 100
#define LIMIT_MAX     1000
#define IDS_MAX       1000

struct items_call {
    struct call base;
    struct items_call *prev, *next;     /* waiting calls */
    int waiting;
    int replied;
    wire_items_request *request;
    char **ids;                 /* the requested ids, scoped; owned */
    size_t id_count;
    char scope[SCOPE_IDENTITY_MAX + 2];
    size_t scope_len;
    size_t found;               /* for the access log */
    grpc_byte_buffer *reply_buffer;
    grpc_slice details;
    int has_details;
};

static struct {
    struct items_call *waiting;
    int listening;
} gi;

static void
items_counts(struct call *call, char *buf, size_t size)
{
    struct items_call *c = CALL_OF(call, struct items_call, base);
    snprintf(buf, size, "items=%zu", c->found);
}

static void
unwait(struct items_call *c)
{
    if (!c->waiting)
        return;
    c->waiting = 0;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        gi.waiting = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    call_unref(&c->base);
}

static void
items_closed(struct call *call)
{
    unwait(CALL_OF(call, struct items_call, base));     /* the deadline passed, say */
}

static void
items_destroy(struct call *call)
{
    struct items_call *c = CALL_OF(call, struct items_call, base);
    if (c->request != NULL)
        wire_items_request_free(c->request, NULL);
    for (size_t i = 0; i < c->id_count; i++)
        free(c->ids[i]);
    free(c->ids);
    if (c->reply_buffer != NULL)
        grpc_byte_buffer_destroy(c->reply_buffer);
    if (c->has_details)
        grpc_slice_unref(c->details);
    free(c);
}

static const struct call_kind items_call_kind = {
    .method = "getItems",
    .counts = items_counts,
    .closed = items_closed,
    .destroy = items_destroy,
};

static void
fail(struct items_call *c, grpc_status_code status, const char *details)
{
    if (c->replied || c->base.closed)
        return;
    c->replied = 1;
    c->base.status = status;
    c->details = grpc_slice_from_copied_string(details);
    c->has_details = 1;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[1].data.send_status_from_server.status = status;
    ops[1].data.send_status_from_server.status_details = &c->details;
    call_batch(&c->base, ops, 2, NULL);
}

/* ---- the reply ----------------------------------------------------------------- */

struct reply_builder {
    wire_known_item *items;
    wire_known_item **ptrs;
    size_t count, cap;
    int with_results;
};

static void
add_item(const struct known_item *k, void *arg)
{
    struct reply_builder *r = arg;
    if (r->count == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->items = ds_realloc(r->items, r->cap * sizeof *r->items);
    }
    wire_known_item *m = &r->items[r->count++];
    wire_known_item_init(m);
    /* The strings are borrowed from the index: packed before it changes. */
    m->id = (char *)k->id;
    m->kind = (char *)items_kind(k);
    m->batch = (char *)known_batch(k);
    m->state = k->state;
    m->attempt = k->attempt;
    m->max_attempts = k->max_attempts;
    m->progress = k->progress;
    m->worker_pid = k->worker_pid;
    m->priority = k->priority;
    m->accepted_unix_nano = k->accepted_ns;
    m->started_unix_nano = k->started_ns;
    m->finished_unix_nano = k->finished_ns;
    m->last_seq = k->last_seq;
    if (k->extra != NULL) {
        if (k->extra->error_len > 0)
            m->error = (char *)k->extra->data;
        if (r->with_results && k->state == STATE_SUCCEEDED) {
            m->result.data = (uint8_t *)k->extra->data + k->extra->error_len + 1;
            m->result.len = k->extra->result_len;
        }
    }
}

static void
send_reply(struct items_call *c, struct reply_builder *r, char **not_found, size_t n_not_found,
           const char *next_token)
{
    if (c->replied || c->base.closed)
        return;
    c->replied = 1;
    c->base.status = GRPC_STATUS_OK;
    c->found = r->count;
    r->ptrs = ds_calloc(r->count + 1, sizeof *r->ptrs);
    for (size_t i = 0; i < r->count; i++)
        r->ptrs[i] = &r->items[i];
    wire_items_reply msg;
    wire_items_reply_init(&msg);
    msg.n_items = r->count;
    msg.items = r->ptrs;
    msg.n_not_found = n_not_found;
    msg.not_found = not_found;
    if (next_token != NULL)
        msg.next_page_token = (char *)next_token;
    grpc_slice slice = grpc_slice_malloc(wire_items_reply_size(&msg));
    wire_items_reply_pack(&msg, GRPC_SLICE_START_PTR(slice));
    c->reply_buffer = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    free(r->ptrs);
    free(r->items);

    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = c->reply_buffer;
    ops[2].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[2].data.send_status_from_server.status = GRPC_STATUS_OK;
    call_batch(&c->base, ops, 3, NULL);
}

/* ---- by ids ------------------------------------------------------------------- */

static int
all_final(const struct items_call *c)
{
    for (size_t i = 0; i < c->id_count; i++) {
        const struct known_item *k = items_find(c->ids[i]);
        if (k != NULL && !items_is_final(k->state))
            return 0;
    }
    return 1;
}

static void
reply_by_ids(struct items_call *c)
{
    struct reply_builder r = { .with_results = c->request->with_results };
    char **not_found = ds_calloc(c->id_count + 1, sizeof *not_found);
    size_t n_not_found = 0;
    for (size_t i = 0; i < c->id_count; i++) {
        const struct known_item *k = items_find(c->ids[i]);
        if (k != NULL)
            add_item(k, &r);
        else
            not_found[n_not_found++] = c->request->item_ids[i];   /* as the client sent it */
    }
    send_reply(c, &r, not_found, n_not_found, NULL);
    free(not_found);
}

/* An item became final or was forgotten: answer the waiting calls that
 * have everything they wait for. */
static void
on_change(const char *id)
{
    (void)id;
    for (struct items_call *c = gi.waiting, *next; c != NULL; c = next) {
        next = c->next;
        if (all_final(c)) {
            reply_by_ids(c);
            unwait(c);
        }
    }
}

/* ---- by filter ------------------------------------------------------------------- */

static int
matches(const struct known_item *k, void *arg)
{
    const struct items_call *c = arg;
    const wire_items_request *q = c->request;
    if (c->scope_len > 0 && strncmp(k->id, c->scope, c->scope_len) != 0)
        return 0;
    size_t i;
    if (q->n_kinds > 0) {
        for (i = 0; i < q->n_kinds && strcmp(q->kinds[i], items_kind(k)) != 0; i++)
            ;
        if (i == q->n_kinds)
            return 0;
    }
    if (q->n_states > 0) {
        for (i = 0; i < q->n_states && (int)q->states[i] != k->state; i++)
            ;
        if (i == q->n_states)
            return 0;
    }
    if (q->n_batches > 0) {
        const char *batch = known_batch(k);
        for (i = 0; i < q->n_batches && strcmp(q->batches[i], batch) != 0; i++)
            ;
        if (i == q->n_batches)
            return 0;
    }
    return 1;
}

/* "p" and the acceptance order the next page starts below. */
static int
parse_token(const char *token, uint64_t *before)
{
    if (token[0] != 'p' || token[1] == '\0' || strlen(token) > 21)
        return -1;
    uint64_t v = 0;
    for (const char *p = token + 1; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v == 0 || v > items_last_order() + 1)
        return -1;
    *before = v;
    return 0;
}

struct page {
    struct reply_builder r;
    uint64_t last_order;
};

static void
add_to_page(const struct known_item *k, void *arg)
{
    struct page *p = arg;
    add_item(k, &p->r);
    p->last_order = (uint64_t)k->accepted_ns;
}

/* ---- the request ------------------------------------------------------------------- */

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

static int
check_request(const wire_items_request *q, char *err, size_t size)
{
    if (check_strings("item_ids", q->item_ids, q->n_item_ids, err, size) == -1 ||
        check_strings("kinds", q->kinds, q->n_kinds, err, size) == -1 ||
        check_strings("batches", q->batches, q->n_batches, err, size) == -1)
        return -1;
    if (!utf8_valid(q->page_token, strlen(q->page_token))) {
        snprintf(err, size, "page_token is not valid UTF-8");
        return -1;
    }
    for (size_t i = 0; i < q->n_states; i++)
        if ((int)q->states[i] <= STATE_UNSPECIFIED || (int)q->states[i] > STATE_MAX) {
            snprintf(err, size, "states[%zu]: %d is not a state an item can have", i,
                     (int)q->states[i]);
            return -1;
        }
    if (q->n_item_ids > IDS_MAX) {
        snprintf(err, size, "%zu item_ids, more than %d", q->n_item_ids, IDS_MAX);
        return -1;
    }
    if (q->limit > LIMIT_MAX) {
        snprintf(err, size, "limit %u is over %d", q->limit, LIMIT_MAX);
        return -1;
    }
    if (q->wait && q->n_item_ids == 0) {
        snprintf(err, size, "wait needs item_ids");
        return -1;
    }
    return 0;
}

static wire_items_request *
decode(grpc_byte_buffer *bb)
{
    if (bb == NULL)
        return wire_items_request_unpack(NULL, 0, (const uint8_t *)"");
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    grpc_slice slice = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    wire_items_request *q = wire_items_request_unpack(NULL, GRPC_SLICE_LENGTH(slice),
                                                      GRPC_SLICE_START_PTR(slice));
    grpc_slice_unref(slice);
    return q;
}

void
get_items_call_start(grpc_call *call, grpc_byte_buffer *request)
{
    struct items_call *c = ds_calloc(1, sizeof *c);
    call_init(&c->base, call, &items_call_kind);
    if (!gi.listening) {
        items_on_change(on_change);
        gi.listening = 1;
    }
    c->request = decode(request);
    if (request != NULL)
        grpc_byte_buffer_destroy(request);
    char err[512];
    if (c->request == NULL) {
        fail(c, GRPC_STATUS_INVALID_ARGUMENT, "the request is not a valid ItemsRequest");
        return;
    }
    if (check_request(c->request, err, sizeof err) == -1) {
        fail(c, GRPC_STATUS_INVALID_ARGUMENT, err);
        return;
    }
    if (store_shared_log()) {
        fail(c, GRPC_STATUS_FAILED_PRECONDITION, "getItems is not served in cluster mode yet");
        return;
    }
    char scope[SCOPE_IDENTITY_MAX + 2];
    int scoped = scope_of_call(call, scope, sizeof scope);
    if (scoped == -1) {
        fail(c, GRPC_STATUS_PERMISSION_DENIED, scope);
        return;
    }
    if (scoped == 1) {
        c->scope_len = strlen(scope);
        memcpy(c->scope, scope, c->scope_len + 1);
    }
    const wire_items_request *q = c->request;
    if (q->n_item_ids > 0) {
        c->ids = ds_calloc(q->n_item_ids, sizeof *c->ids);
        for (size_t i = 0; i < q->n_item_ids; i++) {
            const char *id = q->item_ids[i];
            size_t n = strlen(id);
            char *s = ds_malloc(c->scope_len + n + 1);
            size_t at = 0;
            if (c->scope_len > 0 && strncmp(id, c->scope, c->scope_len) != 0) {
                memcpy(s, c->scope, c->scope_len);
                at = c->scope_len;
            }
            memcpy(s + at, id, n + 1);
            c->ids[c->id_count++] = s;
        }
        if (q->wait && !all_final(c)) {
            c->waiting = 1;
            call_ref(&c->base);         /* the waiting list's */
            c->next = gi.waiting;
            if (gi.waiting != NULL)
                gi.waiting->prev = c;
            gi.waiting = c;
            return;
        }
        reply_by_ids(c);
        return;
    }
    uint64_t before = 0;
    if (q->page_token[0] != '\0' && parse_token(q->page_token, &before) == -1) {
        char shown[64];
        snprintf(err, sizeof err, "page_token \"%s\" is not one this server gave (or it has "
                 "restarted since)", utf8_escape(shown, sizeof shown, q->page_token));
        fail(c, GRPC_STATUS_INVALID_ARGUMENT, err);
        return;
    }
    struct page p = { .r = { .with_results = q->with_results } };
    int more;
    items_list(before, matches, c, q->limit ? q->limit : LIMIT_DEFAULT, add_to_page, &p,
               &more);
    char token[32];
    if (more)
        snprintf(token, sizeof token, "p%llu", (unsigned long long)p.last_order);
    send_reply(c, &p.r, NULL, 0, more ? token : NULL);
}
