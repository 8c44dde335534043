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
 * In a scope (grpc.tls.scope_ids) ids are the scope's, as in getUpdates:
 * a requested id gets the scope's prefix, a listing shows only the scope's
 * items, and replies name items by their whole id ("IDENTITY/ID").
 * In cluster mode the backend keeps the items (Redis) and answers through
 * store_get_items(): the same reply, whichever instance is asked.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/config.h"
#include "core/log.h"
#include "core/utf8.h"
#include "grpc/call.h"
#include "grpc/get_items.h"
#include "grpc/grpc_process.h"
#include "grpc/items.h"
#include "grpc/scope.h"
#include "grpc/store.h"
#include "grpc/unary.h"

#define LIMIT_DEFAULT 100
#define LIMIT_MAX     GET_ITEMS_LIMIT_MAX
#define IDS_MAX       1000

/* Freed by items_destroy() when the call's last reference goes (call.h). */
struct items_call {
    struct unary_call u;
    struct items_call *prev, *next;     /* waiting calls */
    int waiting;
    wire_items_request *request;
    char **ids;                 /* the requested ids, scoped; owned */
    size_t id_count;
    char scope[SCOPE_IDENTITY_MAX + 2];
    size_t scope_len;
    size_t found;               /* for the access log */
    struct store_items_ask *ask;    /* cluster mode: the store's question in flight */
};

static struct {
    struct items_call *waiting;
    int listening;
} gi;

static void
items_counts(struct call *call, char *buf, size_t size)
{
    struct items_call *c = CALL_OF(call, struct items_call, u.base);
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
    call_unref(&c->u.base);
}

static void
items_closed(struct call *call)
{
    struct items_call *c = CALL_OF(call, struct items_call, u.base);
    unwait(c);      /* the deadline passed, say */
    if (c->ask != NULL) {
        store_items_abort(c->ask);
        c->ask = NULL;
        call_unref(&c->u.base); /* the question's */
    }
}

static void
items_destroy(struct call *call)
{
    struct items_call *c = CALL_OF(call, struct items_call, u.base);
    if (c->request != NULL)
        wire_items_request_free(c->request, NULL);
    for (size_t i = 0; i < c->id_count; i++)
        free(c->ids[i]);
    free(c->ids);
    unary_call_free(&c->u);
    free(c);
}

static const struct call_kind items_call_kind = {
    .method = "getItems",
    .counts = items_counts,
    .closed = items_closed,
    .destroy = items_destroy,
};

/* ---- the reply ----------------------------------------------------------------- */

struct reply_builder {
    wire_known_item *items;
    wire_known_item **ptrs;
    size_t count, cap;
    int with_results;
    size_t bytes;               /* an estimate of the reply's size, from above */
};

/* A reply is at most what a stock client accepts (DS_UPDATE_SIZE_MAX, as
 * every Update): one item always fits (results are bounded below it). */
static size_t
item_bytes(const struct known_item *k, int with_results)
{
    size_t n = 128 + strlen(k->id) + strlen(known_batch(k)) + strlen(items_kind(k)) +
               strlen(known_traceparent(k)) + strlen(known_tracestate(k));
    if (k->extra != NULL) {
        n += k->extra->error_len;
        if (with_results && k->state == STATE_SUCCEEDED)
            n += k->extra->result_len;
    }
    return n;
}

static int
fits(const struct reply_builder *r, const struct known_item *k)
{
    return r->count == 0 || r->bytes + item_bytes(k, r->with_results) <= DS_UPDATE_SIZE_MAX;
}

static void
add_item(const struct known_item *k, void *arg)
{
    struct reply_builder *r = arg;
    if (r->count == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->items = ds_realloc(r->items, r->cap * sizeof *r->items);
    }
    wire_known_item *m = &r->items[r->count++];
    r->bytes += item_bytes(k, r->with_results);
    wire_known_item_init(m);
    /* The strings are borrowed from the index: packed before it changes. */
    m->id = (char *)k->id;
    m->kind = (char *)items_kind(k);
    m->batch = (char *)known_batch(k);
    m->state = k->state;
    m->attempt = k->attempt;
    m->max_attempts = k->max_attempts;
    m->progress = items_progress(k);
    m->worker_pid = k->worker_pid;
    m->priority = k->priority;
    m->accepted_unix_nano = k->accepted_ns;
    m->started_unix_nano = k->started_ns;
    m->finished_unix_nano = k->finished_ns;
    m->last_seq = k->last_seq;
    m->traceparent = (char *)known_traceparent(k);
    m->tracestate = (char *)known_tracestate(k);
    m->cpu_usec = items_cpu_usec(k);
    m->max_rss_kib = items_max_rss_kib(k);
    if (k->extra != NULL) {
        if (k->extra->error_len > 0)
            m->error = (char *)k->extra->data;
        if (r->with_results && k->state == STATE_SUCCEEDED) {
            m->result.data = (uint8_t *)k->extra->data + k->extra->error_len + 1;
            m->result.len = k->extra->result_len;
        }
    }
}

/* MSG packed and sent, unless the call is over. */
static void
send_packed(struct items_call *c, const wire_items_reply *msg)
{
    if (unary_is_over(&c->u))
        return;
    c->found = msg->n_items;
    unary_finish(&c->u, GRPC_STATUS_OK, NULL, unary_pack(&msg->base));
}

/* R as a reply (and the builder's memory freed): DONE hears it. */
static void
finish_reply(struct reply_builder *r, char **not_found, size_t n_not_found,
             const char *next_token, store_items_fn *done, void *arg)
{
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
    done(arg, STORE_ITEMS_OK, NULL, &msg);
    free(r->ptrs);
    free(r->items);
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

/* Q's item_ids, known here as IDS, from the index. */
static void
answer_by_ids(const wire_items_request *q, char *const *ids, store_items_fn *done, void *arg)
{
    struct reply_builder r = { .with_results = q->with_results };
    char **not_found = ds_calloc(q->n_item_ids + 1, sizeof *not_found);
    size_t n_not_found = 0;
    for (size_t i = 0; i < q->n_item_ids; i++) {
        const struct known_item *k = items_find(ids[i]);
        if (k != NULL && !fits(&r, k)) {
            char details[200];
            snprintf(details, sizeof details, "the results of these items are more than a "
                     "reply carries (%u bytes): the first %zu fit; ask for fewer ids at once",
                     DS_UPDATE_SIZE_MAX, r.count);
            free(r.items);
            free(not_found);
            done(arg, STORE_ITEMS_TOO_LARGE, details, NULL);
            return;
        }
        if (k != NULL)
            add_item(k, &r);
        else
            not_found[n_not_found++] = q->item_ids[i];    /* as the client sent it */
    }
    finish_reply(&r, not_found, n_not_found, NULL, done, arg);
    free(not_found);
}

static void on_answer(void *arg, enum store_items_status status, const char *why,
                      const wire_items_reply *reply);

static void
reply_by_ids(struct items_call *c)
{
    answer_by_ids(c->request, c->ids, on_answer, c);
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

void
get_items_end_all(void)
{
    while (gi.waiting != NULL) {
        struct items_call *c = gi.waiting;
        unary_finish(&c->u, GRPC_STATUS_UNAVAILABLE, "the server is shutting down before "
                     "these items are final; ask again (after a binary upgrade, the new "
                     "instance knows the items it was handed)", NULL);
        unwait(c);
    }
}

/* ---- by filter ------------------------------------------------------------------- */

/* A listing's filter: the request's lists, and the scope ("" none). */
struct listing {
    const wire_items_request *q;
    const char *scope;
    size_t scope_len;
};

static int
matches(const struct known_item *k, void *arg)
{
    const struct listing *l = arg;
    const wire_items_request *q = l->q;
    if (l->scope_len > 0 && strncmp(k->id, l->scope, l->scope_len) != 0)
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

struct page {
    struct reply_builder r;
    uint64_t last_order;
};

/* The page ends early when the next item would not fit in the reply. */
static int
add_to_page(const struct known_item *k, void *arg)
{
    struct page *p = arg;
    if (!fits(&p->r, k))
        return -1;
    add_item(k, &p->r);
    p->last_order = (uint64_t)k->accepted_ns;
    return 0;
}

/* Q's listing in SCOPE from the index: a page token is "p" and the
 * acceptance order the next page starts below (items_token_*). */
static void
answer_listing(const wire_items_request *q, const char *scope, store_items_fn *done, void *arg)
{
    uint64_t before = 0;
    if (q->page_token[0] != '\0' &&
        (items_token_decode(q->page_token, 'p', &before) == -1 ||
         before > items_last_order() + 1)) {
        char shown[64], err[160];
        snprintf(err, sizeof err, "page_token \"%s\" is not one this server gave (or it has "
                 "restarted since)", utf8_escape(shown, sizeof shown, q->page_token));
        done(arg, STORE_ITEMS_INVALID, err, NULL);
        return;
    }
    struct listing l = { .q = q, .scope = scope, .scope_len = strlen(scope) };
    struct page p = { .r = { .with_results = q->with_results } };
    int more;
    unsigned states = 0;
    for (size_t i = 0; i < q->n_states; i++)
        if ((unsigned)q->states[i] <= STATE_MAX)
            states |= 1u << q->states[i];
    items_list(before, states, matches, &l, q->limit ? q->limit : LIMIT_DEFAULT, add_to_page,
               &p, &more);
    char token[ITEMS_TOKEN_SIZE];
    if (more)
        items_token_encode(token, 'p', p.last_order);
    finish_reply(&p.r, NULL, 0, more ? token : NULL, done, arg);
}

/* ---- the answer, from here or from the backend ------------------------------------ */

static void
on_answer(void *arg, enum store_items_status status, const char *why,
          const wire_items_reply *reply)
{
    struct items_call *c = arg;
    if (status == STORE_ITEMS_OK) {
        send_packed(c, reply);
    } else {
        unary_finish(&c->u, status == STORE_ITEMS_INVALID ? GRPC_STATUS_INVALID_ARGUMENT
                     : status == STORE_ITEMS_TOO_LARGE ? GRPC_STATUS_RESOURCE_EXHAUSTED
                     : GRPC_STATUS_UNAVAILABLE, why, NULL);
    }
}

static void
on_store_answer(void *arg, enum store_items_status status, const char *why,
                const wire_items_reply *reply)
{
    struct items_call *c = arg;
    c->ask = NULL;
    on_answer(c, status, why, reply);
    call_unref(&c->u.base);     /* the question's */
}

static void
ask_store(struct items_call *c)
{
    struct store_items_query q = { .request = c->request, .ids = c->ids, .scope = c->scope };
    call_ref(&c->u.base);       /* the question's: on_store_answer or items_closed drops it */
    c->ask = store_get_items(&q, on_store_answer, c);
}

struct store_items_ask *
get_items_ask(const wire_items_request *q, char *const *ids, store_items_fn *done, void *arg)
{
    if (store_items_remote()) {
        struct store_items_query sq = { .request = q, .ids = ids, .scope = "" };
        return store_get_items(&sq, done, arg);
    }
    if (q->n_item_ids > 0)
        answer_by_ids(q, ids, done, arg);
    else
        answer_listing(q, "", done, arg);
    return NULL;
}

/* ---- the request ------------------------------------------------------------------- */

int
get_items_check(const wire_items_request *q, char *err, size_t size)
{
    if (unary_check_strings("item_ids", q->item_ids, q->n_item_ids, 0, err, size) == -1 ||
        unary_check_strings("kinds", q->kinds, q->n_kinds, 0, err, size) == -1 ||
        unary_check_strings("batches", q->batches, q->n_batches, 0, err, size) == -1)
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

void
get_items_call_start(grpc_call *call, grpc_byte_buffer *request)
{
    struct items_call *c = ds_calloc(1, sizeof *c);
    call_init(&c->u.base, call, &items_call_kind);
    if (!gi.listening) {
        items_on_change(on_change);
        gi.listening = 1;
    }
    c->request =
        unary_decode(request, &com__agrounds__dosomething__v1__items_request__descriptor);
    char err[512];
    if (c->request == NULL) {
        unary_finish(&c->u, GRPC_STATUS_INVALID_ARGUMENT,
                     "the request is not a valid ItemsRequest", NULL);
        return;
    }
    if (get_items_check(c->request, err, sizeof err) == -1) {
        unary_finish(&c->u, GRPC_STATUS_INVALID_ARGUMENT, err, NULL);
        return;
    }
    char scope[SCOPE_IDENTITY_MAX + 2];
    int scoped = scope_of_call(call, scope, sizeof scope);
    if (scoped == -1) {
        unary_finish(&c->u, GRPC_STATUS_PERMISSION_DENIED, scope, NULL);
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
            /* As getUpdates: an id asked for in a scope is always the
             * scope's (bob's "alice/x" is "bob/alice/x"). */
            char *s = ds_malloc(c->scope_len + n + 1);
            memcpy(s, c->scope, c->scope_len);
            memcpy(s + c->scope_len, id, n + 1);
            c->ids[c->id_count++] = s;
        }
        if (store_items_remote()) {
            ask_store(c);
            return;
        }
        if (q->wait && !all_final(c)) {
            c->waiting = 1;
            call_ref(&c->u.base);       /* the waiting list's */
            c->next = gi.waiting;
            if (gi.waiting != NULL)
                gi.waiting->prev = c;
            gi.waiting = c;
            return;
        }
        reply_by_ids(c);
        return;
    }
    if (store_items_remote()) {
        ask_store(c);
        return;
    }
    answer_listing(q, c->scope, on_answer, c);
}
