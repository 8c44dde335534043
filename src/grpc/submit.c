/*
 * doSomething: a client streams WorkItems and half-closes; the reply counts
 * what was accepted and what was rejected, and why.
 *
 * Backpressure: every call has one receive posted. An item that arrives
 * while the queue is full is parked with its call (one per call, not yet
 * accepted), and nothing more is read from that call until room frees up:
 * HTTP/2 flow control pushes back on the client. The same happens, whatever
 * queue.on_full says, while the store's backend has too many writes in
 * flight (store_busy(): cluster mode, Redis slower than the clients). A
 * half-close is still seen, so a call whose last item filled the queue
 * gets its reply at once.
 * With queue.on_full: reject, such items are rejected instead. Nothing is
 * ever dropped.
 *
 * A graceful stop takes no new calls (GOAWAY), but the calls under way are
 * read to their end and their items run: a client's stream is accepted
 * whole, so it never has to guess what to send again. shutdown_timeout
 * bounds a stream that does not end.
 *
 * A valid item goes to the store (store.h), which says whether it is
 * accepted, maybe later (with queue.journal, once its ACCEPT record is
 * written; in cluster mode, once Redis has it): the reply waits for the
 * call's items still being written.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/support/alloc.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/kind.h"
#include "core/log.h"
#include "core/trace.h"
#include "core/utf8.h"
#include "grpc/call.h"
#include "grpc/grpc_process.h"
#include "grpc/submit.h"
#include "grpc/item.h"
#include "grpc/metrics.h"
#include "grpc/scope.h"
#include "grpc/store.h"
#include "grpc/unary.h"

/* The reply lists at most this many rejections; `rejected` is exact. */
#define REJECTIONS_MAX 1000
#define ID_MAX         DS_ITEM_ID_MAX
#define BATCH_MAX      DS_ITEM_BATCH_MAX

/* Freed by submit_destroy() when the call's last reference goes (call.h). */
struct submit_call {
    struct unary_call u;        /* a reference per item in the journal, and while blocked */
    struct submit_call *prev, *next;    /* every live call */
    struct submit_call *next_blocked;
    struct tag recv_tag;
    grpc_byte_buffer *recv_buffer;
    int receiving;
    grpc_slice parked;          /* an item waiting for room in the queue */
    int has_parked;
    int blocked;
    uint32_t index;             /* of the next item in the stream */
    uint32_t writing;           /* items the store has not answered for yet */
    int reply_deferred;         /* the reply waits for them: it counts them */
    grpc_status_code deferred_status;
    uint32_t invalid_index;     /* of the item that was no WorkItem */
    char *unavailable;          /* cluster mode: why the call ends with UNAVAILABLE */
    uint32_t uncertain;         /* items Redis may or may not have taken */
    char scope[SCOPE_IDENTITY_MAX + 2];     /* grpc.tls.scope_ids: "IDENTITY/" or "" */
    size_t scope_len;
    uint64_t accepted;
    uint64_t rejected;
    uint64_t duplicates;        /* known ids: not queued again */
    /* The call's metadata traceparent and tracestate, checked; trace
     * points into them (parent_len 0: none). */
    struct trace_context trace;
    char traceparent[TRACE_PARENT_LEN + 1];
    char tracestate[TRACE_STATE_MAX + 1];
    wire_rejection *rejections;
    wire_rejection **rejection_ptrs;
    size_t rejection_count;
};

static struct {
    struct submit_call *list;
    struct submit_call *blocked_head, *blocked_tail;
    uint64_t active;
    uint64_t id_counter;
    char id_prefix[32];
} sub;

static void try_receive(struct submit_call *c);
static int take_parked_or(struct submit_call *c, grpc_slice raw);
static void block(struct submit_call *c);

static void
submit_counts(struct call *call, char *buf, size_t size)
{
    struct submit_call *c = CALL_OF(call, struct submit_call, u.base);
    if (c->duplicates > 0)
        snprintf(buf, size, "items=%llu/%llu/%llu", (unsigned long long)c->accepted,
                 (unsigned long long)c->rejected, (unsigned long long)c->duplicates);
    else
        snprintf(buf, size, "items=%llu/%llu", (unsigned long long)c->accepted,
                 (unsigned long long)c->rejected);
}

static void
submit_destroy(struct call *call)
{
    struct submit_call *c = CALL_OF(call, struct submit_call, u.base);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        sub.list = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    sub.active--;
    for (size_t i = 0; i < c->rejection_count; i++) {
        free(c->rejections[i].id);
        free(c->rejections[i].reason);
    }
    free(c->rejections);
    free(c->rejection_ptrs);
    free(c->unavailable);
    unary_call_free(&c->u);
    if (c->has_parked)
        grpc_slice_unref(c->parked);
    free(c);
}

static const char *
submit_traceparent(struct call *call)
{
    struct submit_call *c = CALL_OF(call, struct submit_call, u.base);
    return c->trace.parent_len > 0 ? c->traceparent : NULL;
}

static const struct call_kind submit_kind = {
    .method = "doSomething",
    .counts = submit_counts,
    .traceparent = submit_traceparent,
    .destroy = submit_destroy,
};

static void
add_rejection(struct submit_call *c, uint32_t index, const char *id, const char *reason)
{
    c->rejected++;
    if (c->rejection_count >= REJECTIONS_MAX)
        return;
    if (c->rejections == NULL) {
        c->rejections = ds_calloc(REJECTIONS_MAX, sizeof *c->rejections);
        c->rejection_ptrs = ds_calloc(REJECTIONS_MAX, sizeof *c->rejection_ptrs);
    }
    wire_rejection *r = &c->rejections[c->rejection_count];
    wire_rejection_init(r);
    /* The reply must parse: an id that is no UTF-8 is not echoed (the index
     * names the item), a long one is cut between characters. */
    size_t id_len = strlen(id);
    r->id = utf8_valid(id, id_len) ? ds_strndup(id, utf8_prefix(id, id_len, ID_MAX))
                                   : ds_strdup("");
    r->index = index;
    /* Reasons quote client strings cut between characters; a reason that
     * snprintf cut at its buffer's end may still end in half a character. */
    r->reason = utf8_sanitize(reason, strlen(reason));
    if (r->reason == NULL)
        r->reason = ds_strdup(reason);
    c->rejection_ptrs[c->rejection_count++] = r;
}

/* Send the reply and the status; the call ends when the client has them. */
static void
reply(struct submit_call *c, grpc_status_code status, const char *details)
{
    if (unary_is_over(&c->u))
        return;
    wire_submit_reply msg;
    wire_submit_reply_init(&msg);
    msg.accepted = c->accepted;
    msg.rejected = c->rejected;
    msg.duplicates = c->duplicates;
    msg.n_rejections = c->rejection_count;
    msg.rejections = c->rejection_ptrs;
    /* A status other than OK goes without the message: clients ignore it. */
    unary_finish(&c->u, status, details, status == GRPC_STATUS_OK ? unary_pack(&msg.base) : NULL);
}

/* The reply (on half-close, or after an item that is no WorkItem) counts
 * every item of the call: it waits for those still in the journal. */
static void
reply_when_written(struct submit_call *c, grpc_status_code status)
{
    if (c->writing > 0) {
        c->reply_deferred = 1;
        c->deferred_status = status;
        return;
    }
    c->reply_deferred = 0;
    if (c->unavailable != NULL) {
        char details[640];
        if (c->uncertain > 0)
            snprintf(details, sizeof details, "%s; %llu items of this call were accepted, and "
                     "whether the %u after them were is unknown (resend them: an item runs at "
                     "least once)", c->unavailable, (unsigned long long)c->accepted,
                     c->uncertain);
        else
            snprintf(details, sizeof details, "%s; %llu items of this call were accepted",
                     c->unavailable, (unsigned long long)c->accepted);
        reply(c, GRPC_STATUS_UNAVAILABLE, details);
        return;
    }
    if (status == GRPC_STATUS_OK) {
        reply(c, GRPC_STATUS_OK, NULL);
        return;
    }
    char details[160];
    snprintf(details, sizeof details, "item %u is not a valid WorkItem; %llu items of this "
             "call were accepted before it", c->invalid_index, (unsigned long long)c->accepted);
    reply(c, GRPC_STATUS_INVALID_ARGUMENT, details);
}

/* The store's verdict on an item of C (the INDEX-th of its stream). */
static void
on_verdict(void *arg, uint32_t index, const struct item *item, enum store_verdict verdict,
           const char *why)
{
    struct submit_call *c = arg;
    c->writing--;
    switch (verdict) {
    case STORE_ACCEPTED:
        c->accepted++;
        metrics_kind(item->kind)->accepted++;
        break;
    case STORE_DUPLICATE:       /* cluster mode: Redis knew the id */
        c->duplicates++;
        store_count_duplicate();
        break;
    case STORE_REJECTED:
        metrics_kind(item->kind)->rejected++;
        add_rejection(c, index, item->id, why);
        break;
    case STORE_UNAVAILABLE:
    case STORE_UNCERTAIN:
        if (verdict == STORE_UNCERTAIN)
            c->uncertain++;
        if (c->unavailable == NULL)
            c->unavailable = ds_strdup(why);
        reply_when_written(c, GRPC_STATUS_UNAVAILABLE);
        call_unref(&c->u.base);
        return;
    }
    if (c->writing == 0 && c->reply_deferred)
        reply_when_written(c, c->deferred_status);
    call_unref(&c->u.base);
}

static void
make_id(char *buf, size_t size)
{
    snprintf(buf, size, "%s-%llu", sub.id_prefix, (unsigned long long)++sub.id_counter);
}

/* Each params key and value valid UTF-8 and within its length limit. Keys
 * quoted in the reason are cut between characters: the reply must parse. */
static int
check_params(const wire_work_item *msg, char *reason, size_t size)
{
    for (size_t i = 0; i < msg->n_params; i++) {
        const char *key = msg->params[i]->key, *value = msg->params[i]->value;
        size_t key_len = strlen(key), value_len = strlen(value);
        if (!utf8_valid(key, key_len)) {
            snprintf(reason, size, "param key %zu (of %zu) is not valid UTF-8", i + 1,
                     msg->n_params);
            return -1;
        }
        if (key_len > DS_PARAM_KEY_MAX) {
            snprintf(reason, size, "param key \"%.*s...\" is %zu bytes, longer than %d",
                     (int)utf8_prefix(key, key_len, 32), key, key_len, DS_PARAM_KEY_MAX);
            return -1;
        }
        if (!utf8_valid(value, value_len)) {
            snprintf(reason, size, "param %s: value is not valid UTF-8", key);
            return -1;
        }
        if (value_len > DS_PARAM_VALUE_MAX) {
            snprintf(reason, size, "param %s: value is %zu bytes, longer than %d", key,
                     value_len, DS_PARAM_VALUE_MAX);
            return -1;
        }
    }
    return 0;
}

/* proto3 strings must be UTF-8: an item holding anything else would end
 * every subscriber's stream it reaches (stock clients fail to parse it).
 * The name of the first field that is not, or NULL. */
static const char *
invalid_utf8_field(const wire_work_item *msg)
{
    if (!utf8_valid(msg->id, strlen(msg->id)))
        return "id";
    if (!utf8_valid(msg->kind, strlen(msg->kind)))
        return "kind";
    if (!utf8_valid(msg->batch, strlen(msg->batch)))
        return "batch";
    return NULL;
}

/*
 * The item of MSG (which came as RAW, unref'ed here) with its trace: the
 * call's, or its params' (core/trace.h), kept in its WorkItem bytes. What
 * was malformed is ignored, with a debug line naming it.
 */
static struct item *
item_traced(struct submit_call *c, const wire_work_item *msg, grpc_slice raw,
            const struct ds_handler_config *handler, const char *id, uint32_t max_attempts,
            uint32_t timeout_ms)
{
    const char *assigned = msg->id[0] == '\0' || c->scope_len > 0 ? id : NULL;
    int quick = kind_is_quick(handler, msg);
    struct trace_context trace;
    char why[256];
    int rewrite = trace_choose(msg, GRPC_SLICE_START_PTR(raw), GRPC_SLICE_LENGTH(raw),
                               &c->trace, &trace, why, sizeof why);
    if (why[0] != '\0' && log_current_level >= DS_LOG_DEBUG) {
        char escaped[300];
        log_debug("item \"%s\": %s; ignored", utf8_escape(escaped, sizeof escaped, id), why);
    }
    if (!rewrite)
        return item_new(msg, raw, handler->kind, max_attempts, timeout_ms, assigned, quick);
    size_t len;
    uint8_t *bytes = trace_rewrite(GRPC_SLICE_START_PTR(raw), GRPC_SLICE_LENGTH(raw), &trace,
                                   &len);
    grpc_slice_unref(raw);
    struct item *item = item_make(bytes, len, assigned != NULL ? assigned : msg->id, msg->batch,
                                  handler->kind, max_attempts, timeout_ms, quick);
    free(bytes);
    return item;
}

/* Validate and take one item. Returns -1 if the bytes are no WorkItem. */
static int
take_item(struct submit_call *c, grpc_slice raw)
{
    wire_work_item *msg = wire_work_item_unpack(NULL, GRPC_SLICE_LENGTH(raw),
                                                GRPC_SLICE_START_PTR(raw));
    if (msg == NULL)
        return -1;

    const struct ds_config *config = gp.config;
    const char *kind = msg->kind[0] ? msg->kind : config->default_handler;
    const struct ds_handler_config *handler = config_handler(config, kind);
    char reason[512];
    reason[0] = '\0';
    const char *bad_field = invalid_utf8_field(msg);
    if (GRPC_SLICE_LENGTH(raw) > config->grpc.max_message_size)
        snprintf(reason, sizeof reason, "item is %zu bytes, over grpc.max_message_size (%llu)",
                 (size_t)GRPC_SLICE_LENGTH(raw),
                 (unsigned long long)config->grpc.max_message_size);
    else if (bad_field != NULL)
        snprintf(reason, sizeof reason, "%s is not valid UTF-8", bad_field);
    else if (handler == NULL)
        snprintf(reason, sizeof reason, "unknown kind \"%.*s\"",
                 (int)utf8_prefix(kind, strlen(kind), 64), kind);
    else if (strlen(msg->id) > ID_MAX - c->scope_len)
        snprintf(reason, sizeof reason, "id is longer than %zu bytes", ID_MAX - c->scope_len);
    else if (strlen(msg->batch) > BATCH_MAX)
        snprintf(reason, sizeof reason, "batch is longer than %d bytes", BATCH_MAX);
    else if (msg->max_attempts > 1000)
        snprintf(reason, sizeof reason, "max_attempts %u is over 1000", msg->max_attempts);
    else if (msg->delay_ms > DS_DELAY_MAX_MS)
        snprintf(reason, sizeof reason, "delay_ms %u is over %u (30 days)", msg->delay_ms,
                 (unsigned)DS_DELAY_MAX_MS);
    else if (msg->n_params > config->queue.max_params)
        snprintf(reason, sizeof reason, "%zu params, more than queue.max_params (%u)",
                 msg->n_params, (unsigned)config->queue.max_params);
    else if (check_params(msg, reason, sizeof reason) == 0)
        (void)kind_check(handler, msg, reason, sizeof reason);    /* sets the reason */

    if (reason[0] != '\0') {
        if (handler != NULL)
            metrics_kind(handler->kind)->rejected++;
        else
            metrics.rejected_unknown_kind++;
        add_rejection(c, c->index, msg->id, reason);
        wire_work_item_free(msg, NULL);
        grpc_slice_unref(raw);
        return 0;
    }
    /* In a scope, every id (ours too) is "IDENTITY/ID": within ID_MAX. */
    char id[ID_MAX + 1];
    memcpy(id, c->scope, c->scope_len);
    if (msg->id[0] == '\0')
        make_id(id + c->scope_len, sizeof id - c->scope_len);
    else
        snprintf(id + c->scope_len, sizeof id - c->scope_len, "%s", msg->id);
    /* A known id (queued, running, final and retained, or earlier in this
     * very call) is not queued again, and nothing is published for it.
     * Ids we assign are new by construction. It needs no room: checked
     * before the capacity. */
    if (msg->id[0] != '\0' && store_known(id)) {
        c->duplicates++;
        store_count_duplicate();
        wire_work_item_free(msg, NULL);
        grpc_slice_unref(raw);
        return 0;
    }
    if (!store_has_room()) {
        snprintf(reason, sizeof reason, "queue full (capacity %llu)",
                 (unsigned long long)config->queue.capacity);
        metrics_kind(handler->kind)->rejected++;
        add_rejection(c, c->index, msg->id, reason);
        wire_work_item_free(msg, NULL);
        grpc_slice_unref(raw);
        return 0;
    }
    uint32_t timeout_ms = msg->timeout_ms ? msg->timeout_ms : (uint32_t)handler->timeout_ms;
    uint32_t max_attempts = msg->max_attempts ? msg->max_attempts : config->queue.max_attempts;
    struct item *item = item_traced(c, msg, raw, handler, id, max_attempts, timeout_ms);
    if (msg->delay_ms > 0)
        item->due_ns = (uint64_t)clock_wall_ns() + (uint64_t)msg->delay_ms * 1000000u;
    wire_work_item_free(msg, NULL);
    c->writing++;
    call_ref(&c->u.base);
    store_accept(item, on_verdict, c, c->index);
    return 0;
}

/* The bytes of a received message, as one slice we hold a reference to. */
static grpc_slice
message_slice(grpc_byte_buffer *bb)
{
    if (bb->type == GRPC_BB_RAW && bb->data.raw.compression == GRPC_COMPRESS_NONE &&
        bb->data.raw.slice_buffer.count == 1)
        return grpc_slice_ref(bb->data.raw.slice_buffer.slices[0]);
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return grpc_empty_slice();
    grpc_slice s = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    return s;
}

static void
on_recv_done(struct tag *tag, int ok)
{
    struct submit_call *c = CALL_OF(tag, struct submit_call, recv_tag);
    grpc_byte_buffer *bb = c->recv_buffer;
    c->recv_buffer = NULL;
    c->receiving = 0;

    if (!ok || c->u.base.closed) {
        /* Cancelled or broken: what was accepted stays accepted. */
        if (bb != NULL)
            grpc_byte_buffer_destroy(bb);
        submit_resume_blocked();
        call_unref(&c->u.base);
        return;
    }
    if (bb == NULL) {
        reply_when_written(c, GRPC_STATUS_OK);    /* the client half-closed */
        submit_resume_blocked();
        call_unref(&c->u.base);
        return;
    }
    const char *why = c->unavailable;
    if (why != NULL || !store_available(&why)) {
        /* Never queued here instead: the client must know. */
        grpc_byte_buffer_destroy(bb);
        if (c->unavailable == NULL)
            c->unavailable = ds_strdup(why);
        reply_when_written(c, GRPC_STATUS_UNAVAILABLE);
        call_unref(&c->u.base);
        return;
    }
    grpc_slice raw = message_slice(bb);
    grpc_byte_buffer_destroy(bb);
    if (store_busy() || (gp.config->queue.on_full == DS_ON_FULL_BLOCK && !store_has_room())) {
        c->parked = raw;        /* taken when room frees up */
        c->has_parked = 1;
        block(c);
        call_unref(&c->u.base);
        return;
    }
    if (take_parked_or(c, raw) == -1)
        return;
    try_receive(c);
    call_unref(&c->u.base);
}

/* Take RAW as the call's next item. Returns -1 (the call unreferenced and
 * answered) if it is no WorkItem. */
static int
take_parked_or(struct submit_call *c, grpc_slice raw)
{
    if (take_item(c, raw) == -1) {
        grpc_slice_unref(raw);
        c->invalid_index = c->index;
        reply_when_written(c, GRPC_STATUS_INVALID_ARGUMENT);
        submit_resume_blocked();
        call_unref(&c->u.base);
        return -1;
    }
    c->index++;
    return 0;
}

static void
block(struct submit_call *c)
{
    if (c->blocked)
        return;
    c->blocked = 1;
    call_ref(&c->u.base);
    c->next_blocked = NULL;
    if (sub.blocked_tail != NULL)
        sub.blocked_tail->next_blocked = c;
    else
        sub.blocked_head = c;
    sub.blocked_tail = c;
}

/* Post the next receive, unless an item is parked or the call is over. */
static void
try_receive(struct submit_call *c)
{
    if (c->receiving || c->has_parked || c->u.replied || c->reply_deferred || c->u.base.closed ||
        c->unavailable != NULL)
        return;
    c->receiving = 1;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_buffer;
    call_batch(&c->u.base, &op, 1, &c->recv_tag);
}

/* Room in the queue: take the parked items, oldest call first, and let
 * those calls read again. */
void
submit_resume_blocked(void)
{
    static int running;
    if (running)
        return;         /* taking an item can free room and call us again */
    running = 1;
    while (sub.blocked_head != NULL && !store_busy() &&
           (store_has_room() || gp.config->queue.on_full == DS_ON_FULL_REJECT)) {
        struct submit_call *c = sub.blocked_head;
        sub.blocked_head = c->next_blocked;
        if (sub.blocked_head == NULL)
            sub.blocked_tail = NULL;
        c->blocked = 0;
        if (c->has_parked) {
            grpc_slice raw = c->parked;
            c->has_parked = 0;
            if (c->u.base.closed || c->u.replied) {
                grpc_slice_unref(raw);  /* the client gave up: never accepted */
            } else {
                call_ref(&c->u.base);   /* for take_parked_or's failure path */
                if (take_parked_or(c, raw) == -1) {
                    call_unref(&c->u.base); /* and the blocked list's */
                    continue;
                }
                call_unref(&c->u.base); /* the blocked list's is still held */
            }
        }
        try_receive(c);
        call_unref(&c->u.base);
    }
    running = 0;
}

/* The call's traceparent and tracestate from METADATA, if valid (a debug
 * line says why not). Several tracestate entries are one list, joined
 * with commas (as HTTP headers are); several traceparents are invalid. */
static void
call_trace(struct submit_call *c, const grpc_metadata_array *metadata)
{
    const grpc_slice *parent = NULL;
    size_t parents = 0, state_len = 0;
    int state_too_long = 0;
    for (size_t i = 0; i < metadata->count; i++) {
        const grpc_metadata *m = &metadata->metadata[i];
        if (grpc_slice_str_cmp(m->key, "traceparent") == 0) {
            parent = &m->value;
            parents++;
        } else if (grpc_slice_str_cmp(m->key, "tracestate") == 0) {
            size_t n = GRPC_SLICE_LENGTH(m->value);
            if (n == 0)
                continue;
            if (state_len + (state_len > 0) + n > TRACE_STATE_MAX) {
                state_too_long = 1;
                continue;
            }
            if (state_len > 0)
                c->tracestate[state_len++] = ',';
            memcpy(c->tracestate + state_len, GRPC_SLICE_START_PTR(m->value), n);
            state_len += n;
        }
    }
    c->tracestate[state_len] = '\0';
    if (parents == 0)
        return;
    size_t len = GRPC_SLICE_LENGTH(*parent);
    const char *bad = parents > 1 ? "appears more than once"
                                  : trace_parent_invalid((const char *)
                                                         GRPC_SLICE_START_PTR(*parent), len);
    if (bad != NULL) {
        if (log_current_level >= DS_LOG_DEBUG) {
            char *peer = grpc_call_get_peer(c->u.base.call), escaped[300];
            log_debug("doSomething from %s: traceparent %s; ignored (and its tracestate)",
                      utf8_escape(escaped, sizeof escaped, peer), bad);
            gpr_free(peer);
        }
        return;
    }
    memcpy(c->traceparent, GRPC_SLICE_START_PTR(*parent), len);
    c->traceparent[len] = '\0';
    c->trace.parent = c->traceparent;
    c->trace.parent_len = len;
    if (state_too_long)
        bad = "is longer than 512 bytes";
    else if (state_len > 0)
        bad = trace_state_invalid(c->tracestate, state_len);
    if (bad != NULL) {
        if (log_current_level >= DS_LOG_DEBUG) {
            char *peer = grpc_call_get_peer(c->u.base.call), escaped[300];
            log_debug("doSomething from %s: tracestate %s; ignored",
                      utf8_escape(escaped, sizeof escaped, peer), bad);
            gpr_free(peer);
        }
        return;
    }
    c->trace.state = c->tracestate;
    c->trace.state_len = state_len;
}

void
submit_call_start(grpc_call *call, const grpc_metadata_array *metadata)
{
    if (sub.id_prefix[0] == '\0')
        snprintf(sub.id_prefix, sizeof sub.id_prefix, "%llx%lx",
                 (unsigned long long)(clock_wall_ns() / 1000000), (long)getpid() & 0xfff);
    struct submit_call *c = ds_calloc(1, sizeof *c);
    c->recv_tag.done = on_recv_done;
    c->next = sub.list;
    if (sub.list != NULL)
        sub.list->prev = c;
    sub.list = c;
    sub.active++;
    call_init(&c->u.base, call, &submit_kind);
    call_trace(c, metadata);
    char why[256];
    int scoped = scope_of_call(call, why, sizeof why);
    if (scoped == -1) {
        reply(c, GRPC_STATUS_PERMISSION_DENIED, why);
        return;
    }
    if (scoped == 1) {
        c->scope_len = strlen(why);
        memcpy(c->scope, why, c->scope_len + 1);
    }
    try_receive(c);
}

uint64_t
submit_active(void)
{
    return sub.active;
}
