/*
 * getUpdates: every subscriber receives every update its filter matches,
 * in seq order.
 *
 * A replaying subscriber reads the update log from after_seq with a cursor;
 * once the cursor reaches the newest update, it switches to live updates,
 * which are queued for it as they are published. Both happen on this one
 * thread, so the seam has no gap and no duplicate.
 *
 * A subscriber more than updates.subscriber_buffer updates behind (or whose
 * replay cursor falls out of the log) is ended with RESOURCE_EXHAUSTED
 * naming the last seq it was sent, so it can resume from there. The
 * workers never wait for a subscriber.
 *
 * Memory: each backlog holds at most updates.history_bytes, and all of
 * them together at most updates.subscribers_bytes; past that the
 * subscriber with the largest backlog is cut the same way. The total is
 * the plain sum of the backlogs' encoded bytes, although an update is
 * shared (refcounted) by the log and every queue holding it: what the
 * backlogs pin beyond the log would depend on what the log evicts when,
 * and the log has its own bound, so the two bounds simply add up (log +
 * backlogs <= history_bytes + subscribers_bytes) and a cut is predictable.
 *
 * During a graceful stop no subscriber is cut for being slow (the count
 * bound): it could not come back (the listeners are closed), and
 * shutdown_timeout bounds the wait. The byte bounds still apply then: a
 * subscriber cut by them during a drain gets the same RESOURCE_EXHAUSTED
 * and seq, and resumes where the work went (the new instance of an
 * upgrade, or the next start). Beyond updates.max_subscribers open
 * calls, a new one ends at once with RESOURCE_EXHAUSTED.
 *
 * One message is in flight per call. GRPC_WRITE_BUFFER_HINT lets gRPC
 * coalesce writes, and is set only while another message is already
 * waiting, so that the last one is always flushed.
 *
 * A clean end (OK, at the end of a drain) waits until END_QUIET_MS have
 * passed since the last update went to that subscriber. The drain's
 * GOAWAY is out, so gRPC shuts the connection down (shutdown(SHUT_RDWR),
 * close) the moment its last stream has written its trailers. A client
 * answers DATA frames (WINDOW_UPDATE, a BDP ping); such an answer that
 * arrives after that shutdown, or is still unread at the close, makes the
 * kernel reset the connection. The trailers are in the client's socket
 * before the reset, but a client that writes again before it has read
 * them fails the stream with UNAVAILABLE "Broken pipe" instead of OK
 * (grpcio under load, at the end of a USR2 drain: the last items' finals
 * went out, and the trailers less than a millisecond after them; the
 * reset came in most runs, the failure when the client's reading thread
 * was late). Once the client has answered the last update, and we have
 * read that, the trailers are the last thing either side sends and the
 * connection closes without a reset. A subscriber cut with an error
 * (RESOURCE_EXHAUSTED, a rejected request) ends at once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "grpc/call.h"
#include "grpc/filter.h"
#include "grpc/scope.h"
#include "grpc/grpc_process.h"
#include "grpc/subscribe.h"
#include "grpc/store.h"
#include "grpc/updates.h"

/* A clean end waits this long after the subscriber's last update (see above). */
#define END_QUIET_MS 200

struct subscriber {
    struct call base;
    struct subscriber *prev, *next;
    struct tag send_tag;
    wire_updates_request *request;
    struct filter filter;
    int replaying;
    uint64_t cursor;            /* while replaying: the next seq to look at */
    struct update **queue;      /* live updates waiting to be sent */
    uint64_t queue_size;        /* allocated */
    uint64_t queue_head;
    uint64_t queue_count;
    uint64_t queue_bytes;
    uint64_t last_sent;         /* the last seq sent (0: none yet) */
    uint64_t sending_seq;
    uint64_t last_send_ms;      /* monotonic: the last update handed to gRPC, or its end */
    struct event *quiet_timer;  /* a clean end waiting for END_QUIET_MS (holds a ref) */
    grpc_byte_buffer *send_buffer;
    int ending;                 /* the status goes once what must be sent is */
    int status_sent;
    grpc_status_code status;
    grpc_slice status_details;
    int has_details;
    uint64_t sent;
    int wants_started;          /* its filter lets STARTED through (counted) */
};

static struct {
    struct subscriber *list;
    uint64_t count;
    uint64_t cut_off;
    uint64_t bytes;             /* the sum of every queue_bytes */
    uint64_t want_started;      /* subscribers whose filter lets STARTED through */
} subs;

static void pump(struct subscriber *s);

static void
list_remove(struct subscriber *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else if (subs.list == s)
        subs.list = s->next;
    else
        return;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    subs.count--;
    if (s->wants_started)
        subs.want_started--;
}

static void
queue_clear(struct subscriber *s)
{
    while (s->queue_count > 0) {
        update_unref(s->queue[s->queue_head]);
        s->queue_head = (s->queue_head + 1) % s->queue_size;
        s->queue_count--;
    }
    subs.bytes -= s->queue_bytes;
    s->queue_bytes = 0;
}

static void
subscriber_counts(struct call *call, char *buf, size_t size)
{
    struct subscriber *s = CALL_OF(call, struct subscriber, base);
    snprintf(buf, size, "updates=%llu", (unsigned long long)s->sent);
}

static void
subscriber_destroy(struct call *call)
{
    struct subscriber *s = CALL_OF(call, struct subscriber, base);
    if (s->quiet_timer != NULL)
        event_free(s->quiet_timer);
    queue_clear(s);
    free(s->queue);
    filter_free(&s->filter);
    if (s->request != NULL)
        wire_updates_request_free(s->request, NULL);
    if (s->has_details)
        grpc_slice_unref(s->status_details);
    free(s);
}

static void
subscriber_closed(struct call *call)
{
    struct subscriber *s = CALL_OF(call, struct subscriber, base);
    list_remove(s);
    queue_clear(s);
}

static const struct call_kind subscriber_kind = {
    .method = "getUpdates",
    .counts = subscriber_counts,
    .closed = subscriber_closed,
    .destroy = subscriber_destroy,
};

/* Send the final status now if nothing else is in flight; else after it. */
static void
send_status(struct subscriber *s)
{
    if (s->status_sent || s->base.closed || s->send_buffer != NULL)
        return;
    s->status_sent = 1;
    s->base.status = s->status;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    op.data.send_status_from_server.status = s->status;
    op.data.send_status_from_server.status_details = s->has_details ? &s->status_details : NULL;
    call_batch(&s->base, &op, 1, NULL);
}

/* End the stream with STATUS once what must still be sent is (drop_queue:
 * nothing more is). */
static void
subscriber_end(struct subscriber *s, grpc_status_code status, const char *details,
               int drop_queue)
{
    if (s->ending)
        return;
    s->ending = 1;
    s->status = status;
    if (details != NULL) {
        s->status_details = grpc_slice_from_copied_string(details);
        s->has_details = 1;
    }
    if (drop_queue) {
        queue_clear(s);
        s->replaying = 0;
    }
    list_remove(s);
    if (!drop_queue)
        return;     /* pump() sends the status when the queue is empty */
    send_status(s);
}

/* End S with RESOURCE_EXHAUSTED: WHAT (e.g. "subscriber too slow: ...")
 * and where to resume. */
static void
end_resumable(struct subscriber *s, const char *what)
{
    /* The message in flight still reaches the client before the status. */
    uint64_t last = s->send_buffer != NULL ? s->sending_seq : s->last_sent;
    char text[640];
    snprintf(text, sizeof text, "%s; last seq sent %llu; resume with replay=true, "
             "after_seq=%llu", what, (unsigned long long)last, (unsigned long long)last);
    subscriber_end(s, GRPC_STATUS_RESOURCE_EXHAUSTED, text, 1);
}

static void
cut_off(struct subscriber *s, const char *why)
{
    char what[512];
    snprintf(what, sizeof what, "subscriber too slow: %s", why);
    log_notice("dropping a slow subscriber: %s (last seq sent %llu)", why,
               (unsigned long long)(s->send_buffer != NULL ? s->sending_seq : s->last_sent));
    subs.cut_off++;
    metrics.subscribers_dropped++;
    end_resumable(s, what);
}

static int
matches(const struct subscriber *s, const struct update *u)
{
    return filter_match(&s->filter, u->item_id, u->kind, u->batch, u->state);
}

/* The next update to send, with a reference for the caller, or NULL. */
static struct update *
next_update(struct subscriber *s, int *more)
{
    *more = 0;
    if (s->replaying) {
        if (s->cursor < updates_first_seq()) {
            char why[128];
            snprintf(why, sizeof why, "its replay fell out of the update log (history %llu)",
                     (unsigned long long)gp.config->updates.history);
            cut_off(s, why);
            return NULL;
        }
        uint64_t last = updates_last_seq();
        while (s->cursor <= last) {
            struct update *u = updates_get(s->cursor++);
            if (u == NULL || !matches(s, u))
                continue;
            /* Look ahead to the next match, so that the write-buffer hint
             * is only set when another message really follows. */
            while (s->cursor <= last) {
                struct update *next = updates_get(s->cursor);
                if (next != NULL && matches(s, next)) {
                    *more = 1;
                    return update_ref(u);
                }
                s->cursor++;
            }
            s->replaying = 0;
            return update_ref(u);
        }
        s->replaying = 0;
    }
    if (s->queue_count == 0)
        return NULL;
    struct update *u = s->queue[s->queue_head];
    s->queue_head = (s->queue_head + 1) % s->queue_size;
    s->queue_count--;
    s->queue_bytes -= GRPC_SLICE_LENGTH(u->encoded);
    subs.bytes -= GRPC_SLICE_LENGTH(u->encoded);
    *more = s->queue_count > 0;
    return u;
}

static void
on_quiet_timer(evutil_socket_t fd, short what, void *arg)
{
    struct subscriber *s = arg;
    pump(s);
    call_unref(&s->base);
}

/* Everything is sent: the status now, or (a clean end) once END_QUIET_MS
 * have passed since the last update. */
static void
end_when_quiet(struct subscriber *s)
{
    uint64_t now = clock_monotonic_ms();
    if (s->status != GRPC_STATUS_OK || s->last_send_ms == 0 ||
        now >= s->last_send_ms + END_QUIET_MS) {
        send_status(s);
        return;
    }
    if (s->quiet_timer == NULL)
        s->quiet_timer = evtimer_new(gp.base, on_quiet_timer, s);
    if (evtimer_pending(s->quiet_timer, NULL))
        return;
    struct timeval tv = clock_timeval_ms(s->last_send_ms + END_QUIET_MS - now);
    call_ref(&s->base);
    evtimer_add(s->quiet_timer, &tv);
}

static void
pump(struct subscriber *s)
{
    if (s->send_buffer != NULL || s->base.closed || s->status_sent)
        return;
    int more;
    struct update *u = next_update(s, &more);
    if (u == NULL) {
        if (s->ending)
            end_when_quiet(s);
        return;
    }
    s->send_buffer = grpc_raw_byte_buffer_create(&u->encoded, 1);
    s->sending_seq = u->seq;
    s->last_send_ms = clock_monotonic_ms();
    update_unref(u);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.flags = more ? GRPC_WRITE_BUFFER_HINT : 0;
    op.data.send_message.send_message = s->send_buffer;
    call_batch(&s->base, &op, 1, &s->send_tag);
}

static void
on_send_done(struct tag *tag, int ok)
{
    struct subscriber *s = CALL_OF(tag, struct subscriber, send_tag);
    grpc_byte_buffer_destroy(s->send_buffer);
    s->send_buffer = NULL;
    s->last_send_ms = clock_monotonic_ms();
    if (ok) {
        s->last_sent = s->sending_seq;
        s->sent++;
        pump(s);
    }
    call_unref(&s->base);
}

/* The backlogs together hold more than updates.subscribers_bytes: cut the
 * subscribers with the largest until they do not. */
static void
enforce_total_bytes(void)
{
    uint64_t limit = gp.config->updates.subscribers_bytes;
    while (subs.bytes > limit) {
        struct subscriber *big = NULL;
        for (struct subscriber *s = subs.list; s != NULL; s = s->next)
            if (big == NULL || s->queue_bytes > big->queue_bytes)
                big = s;
        if (big == NULL || big->queue_bytes == 0)
            return;
        char why[192];
        snprintf(why, sizeof why, "the backlogs of all subscribers held more than "
                 "updates.subscribers_bytes (%llu bytes), this one's the most (%llu bytes)",
                 (unsigned long long)limit, (unsigned long long)big->queue_bytes);
        cut_off(big, why);
    }
}

void
subscribers_publish(struct update *u)
{
    /* A drain never cuts for slowness: the byte bounds alone apply. */
    uint64_t limit = gp.draining ? UINT64_MAX : gp.config->updates.subscriber_buffer;
    size_t len = GRPC_SLICE_LENGTH(u->encoded);
    struct subscriber *s = subs.list, *next;
    for (; s != NULL; s = next) {
        next = s->next;
        if (s->replaying || !matches(s, u))
            continue;
        if (s->queue_count >= limit ||
            s->queue_bytes + len > gp.config->updates.history_bytes) {
            char why[128];
            if (s->queue_count >= limit)
                snprintf(why, sizeof why, "more than %llu updates waited for it",
                         (unsigned long long)limit);
            else
                snprintf(why, sizeof why, "more than updates.history_bytes (%llu bytes) of "
                         "updates waited for it",
                         (unsigned long long)gp.config->updates.history_bytes);
            cut_off(s, why);
            continue;
        }
        if (s->queue_count == s->queue_size) {
            /* Grow, unrolling the ring. */
            uint64_t size = s->queue_size ? s->queue_size * 2 : 16;
            struct update **q = ds_malloc(size * sizeof *q);
            for (uint64_t i = 0; i < s->queue_count; i++)
                q[i] = s->queue[(s->queue_head + i) % s->queue_size];
            free(s->queue);
            s->queue = q;
            s->queue_size = size;
            s->queue_head = 0;
        }
        s->queue[(s->queue_head + s->queue_count) % s->queue_size] = update_ref(u);
        s->queue_count++;
        s->queue_bytes += len;
        subs.bytes += len;
        pump(s);
    }
    enforce_total_bytes();
}

static void
reject_call(struct subscriber *s, grpc_status_code status, const char *details)
{
    s->ending = 1;
    s->status = status;
    s->status_details = grpc_slice_from_copied_string(details);
    s->has_details = 1;
    send_status(s);
}

static wire_updates_request *
decode_request(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    grpc_slice slice = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    wire_updates_request *r = wire_updates_request_unpack(NULL, GRPC_SLICE_LENGTH(slice),
                                                          GRPC_SLICE_START_PTR(slice));
    grpc_slice_unref(slice);
    return r;
}

void
subscribe_call_start(grpc_call *call, grpc_byte_buffer *request)
{
    struct subscriber *s = ds_calloc(1, sizeof *s);
    s->send_tag.done = on_send_done;
    call_init(&s->base, call, &subscriber_kind);

    grpc_op op;
    memset(&op, 0, sizeof op);
    /* Headers go alone: a later message may carry the write-buffer hint. */
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    call_batch(&s->base, &op, 1, NULL);

    char err[160];
    /* An empty message (a client that declares google.protobuf.Empty) may
     * come as no buffer at all: it is the default UpdatesRequest. */
    s->request = request != NULL ? decode_request(request)
                                 : wire_updates_request_unpack(NULL, 0, (const uint8_t *)"");
    if (request != NULL)
        grpc_byte_buffer_destroy(request);
    if (s->request == NULL) {
        reject_call(s, GRPC_STATUS_INVALID_ARGUMENT, "the request is not a valid UpdatesRequest");
        return;
    }
    if (filter_init(&s->filter, s->request, err, sizeof err) == -1) {
        reject_call(s, GRPC_STATUS_INVALID_ARGUMENT, err);
        return;
    }
    char scope[256];
    int scoped = scope_of_call(call, scope, sizeof scope);
    if (scoped == -1) {
        reject_call(s, GRPC_STATUS_PERMISSION_DENIED, scope);
        return;
    }
    if (scoped == 1)
        filter_set_scope(&s->filter, scope);
    if (gp.draining) {
        reject_call(s, GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
        return;
    }
    const char *why;
    if (!store_available(&why)) {
        reject_call(s, GRPC_STATUS_UNAVAILABLE, why);
        return;
    }
    if (subs.count >= gp.config->updates.max_subscribers) {
        char text[96];
        snprintf(text, sizeof text, "too many subscribers (max %llu)",
                 (unsigned long long)gp.config->updates.max_subscribers);
        reject_call(s, GRPC_STATUS_RESOURCE_EXHAUSTED, text);
        return;
    }
    if (s->request->replay) {
        uint64_t first = updates_first_seq();
        uint64_t after = s->request->after_seq;
        if (after > 0 && after + 1 < first && after + 1 >= updates_origin_seq()) {
            /* Updates this process published and no longer has: a replay
             * from there would skip them without a word. Seqs from before
             * this process (a restart, an upgrade) are not ours to judge. */
            char text[512];
            const char *lost = updates_lost(after + 1);
            if (lost != NULL)       /* not the history's doing: name the cause */
                snprintf(text, sizeof text, "replay after seq %llu: %s; the oldest retained "
                         "is %llu", (unsigned long long)after, lost, (unsigned long long)first);
            else
                snprintf(text, sizeof text, "replay after seq %llu: updates up to seq %llu are "
                         "no longer retained (updates.history %llu); the oldest retained is %llu",
                         (unsigned long long)after, (unsigned long long)first - 1,
                         (unsigned long long)gp.config->updates.history,
                         (unsigned long long)first);
            reject_call(s, GRPC_STATUS_OUT_OF_RANGE, text);
            return;
        }
        s->cursor = s->request->after_seq + 1 > first ? s->request->after_seq + 1 : first;
        s->replaying = 1;
    }
    s->next = subs.list;
    if (subs.list != NULL)
        subs.list->prev = s;
    subs.list = s;
    subs.count++;
    s->wants_started = s->filter.states == 0 || (s->filter.states & (1u << STATE_STARTED));
    if (s->wants_started && subs.want_started++ == 0)
        store_subscribers_want_started();
    pump(s);
}

void
subscribers_cut_all(const char *why)
{
    struct subscriber *s = subs.list, *next;
    for (; s != NULL; s = next) {
        next = s->next;
        end_resumable(s, why);
    }
}

void
subscribers_end_all(void)
{
    struct subscriber *s = subs.list, *next;
    for (; s != NULL; s = next) {
        next = s->next;
        subscriber_end(s, GRPC_STATUS_OK, NULL, 0);
        pump(s);
    }
}

int
subscribers_flushed(void)
{
    for (struct subscriber *s = subs.list; s != NULL; s = s->next)
        if (s->replaying || s->queue_count > 0 || s->send_buffer != NULL)
            return 0;
    return 1;
}

uint64_t
subscribers_active(void)
{
    return subs.count;
}

uint64_t
subscribers_wanting_started(void)
{
    return subs.want_started;
}
