/*
 * Cluster mode: what this instance writes into Redis for its items
 * (cluster.h has the contract, cluster.c the session, cluster_write.h
 * this file's part), all on the command connection.
 *
 * Accepting: the items accepted in one turn of the loop go in one accept
 * script (their entries and QUEUED updates), each hearing its own verdict
 * from its reply (held for the replicas by cluster_ack.c when
 * min_replicas_ack asks). Publishing: the updates of one turn go in one
 * update script, which checks that each item's attempt is still ours;
 * a final's also acks and deletes its entry, a RETRYING queues it again,
 * and either ends the item here when its reply comes (cl.ending until
 * then). A quick item's STARTED is folded into its next update while no
 * subscriber here wants it. Past INFLIGHT_MAX items with a script in
 * flight, submit.c reads no more (backpressure).
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/trace.h"
#include "core/utf8.h"
#include "grpc/cluster.h"
#include "grpc/cluster_ack.h"
#include "grpc/cluster_scripts.h"
#include "grpc/cluster_state.h"
#include "grpc/cluster_take.h"
#include "grpc/cluster_write.h"
#include "grpc/grpc_process.h"
#include "grpc/item.h"
#include "grpc/redis_args.h"
#include "grpc/store.h"
#include "grpc/subscribe.h"
#include "grpc/updates.h"

/* Items in one accept script at most, and accept scripts in flight at once
 * before the next batch waits for a reply (it grows meanwhile). */
#define ACCEPT_BATCH_MAX    512
#define ACCEPTS_AHEAD       2
#define UPDATE_BATCH_MAX    512     /* updates in one update script at most */
/* Items with a script in flight (accepts, updates, finals) past which
 * submit.c reads no more items (backpressure): memory stays bounded when
 * Redis is slower than the clients. */
#define INFLIGHT_MAX        8192
/* {NAME}:want_started lives this long unless the instance with a
 * subscriber that wants STARTED renews it (every PING_EVERY_MS). */
#define WANT_TTL_MS         5000

/* A script in flight for an item: the store's acceptance, or the item
 * and the state of its final update. Freed by the reply's callback (a
 * final's or retry's by ending_free()). */
struct item_op {
    struct acceptance a;        /* accept */
    struct item *item;          /* final, retry */
    enum wire_state state;      /* final */
    struct item_op *prev, *next;    /* final, retry: in cl.ending */
};

/* ---- publishing ---------------------------------------------------------- */

/*
 * The updates of one turn of the loop go to Redis in one script
 * (script_update): cluster_send_update() adds one to cl.ucmd and its callback to
 * cl.ucbs, cluster_flush_updates() sends them (from the same flush as the
 * accepts, or at once when UPDATE_BATCH_MAX gathered), and each callback
 * hears its own element of the reply, as it would the reply of a script
 * of its own. (struct update_cb is in cluster_state.h: cl holds them.)
 */

/* A batch of updates in flight: owned by its callback, which frees it. */
struct update_batch {
    size_t n;
    struct update_cb cb[];
};

static void
inflight_done(void)
{
    cl.inflight--;
    cluster_backpressure_check();
    cluster_check_done();
}

static void
on_updated(redisAsyncContext *ac, void *reply, void *arg)
{
    struct update_batch *b = arg;
    redisReply *r = reply;
    int each = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == b->n + 2;
    if (r != NULL && !each && r->type != REDIS_REPLY_ERROR && !cl.shutting_down)
        log_error("cluster: the update script answered %zu updates with an unexpected reply",
                  b->n);
    if (each && !cl.shutting_down)
        cluster_log_bad_counts(r->element[b->n], r->element[b->n + 1]);
    /* An error for the whole script (OOM, READONLY, NOSCRIPT) is logged and
     * acted on once, not once per update; each update is then as unknown
     * as one whose reply was lost. */
    if (r != NULL && r->type == REDIS_REPLY_ERROR && !cl.shutting_down &&
        !cluster_demoted(r)) {
        log_error("cluster: the update script failed for %zu updates: %s", b->n, r->str);
        if (cluster_is_error(r, "NOSCRIPT"))
            cluster_session_fail("redis forgot our scripts (SCRIPT FLUSH?)");
    }
    for (size_t i = 0; i < b->n; i++)
        b->cb[i].fn(ac, each ? r->element[i] : NULL, b->cb[i].arg);
    free(b);
}

void
cluster_flush_updates(void)
{
    if (cl.ucbs_n == 0)
        return;
    struct update_batch *b = ds_malloc(sizeof *b + cl.ucbs_n * sizeof b->cb[0]);
    b->n = cl.ucbs_n;
    memcpy(b->cb, cl.ucbs, b->n * sizeof b->cb[0]);
    cl.ucbs_n = 0;
    if (cl.up && !cl.failing && cl.cmd.ac != NULL &&
        redis_cmd_send(&cl.ucmd, cl.cmd.ac, on_updated, b) == 0) {
        cl.update_batches++;
        return;
    }
    if (cl.up && !cl.failing)
        cluster_session_fail("command connection: cannot send a command");
    /* Never sent: each hears "no reply" (unknown), from the loop. */
    cl.unsent = ds_realloc(cl.unsent, (cl.unsent_n + b->n) * sizeof cl.unsent[0]);
    memcpy(cl.unsent + cl.unsent_n, b->cb, b->n * sizeof b->cb[0]);
    cl.unsent_n += b->n;
    free(b);
    event_active(cl.flush_event, EV_TIMEOUT, 0);
}

/* The callbacks of updates that were never sent hear a NULL reply. */
void
cluster_fail_unsent_updates(void)
{
    while (cl.unsent_n > 0) {
        size_t n = cl.unsent_n;
        struct update_cb *cbs = cl.unsent;
        cl.unsent = NULL;
        cl.unsent_n = 0;
        for (size_t i = 0; i < n; i++)
            cbs[i].fn(NULL, NULL, cbs[i].arg);
        free(cbs);
    }
}

/*
 * The update of ITEM for the next update script: MODE u/r/f, the attempt
 * the entry must be at (CHECK_ATTEMPT), the update encoded without its
 * seq, TS the start time of its attempt (unix ns, 0: that of its last
 * update; for a retry, when its next attempt is due: unix ms, 0 at once), S0 (S0_LEN bytes) NULL or the STARTED folded into it
 * (take_folded_started()). FN(ARG) hears its seq, 0 (superseded) or an
 * error or NULL (unknown). -1: the session is down, FN will not run.
 */
int
cluster_send_update(const struct item *item, char mode, uint32_t check_attempt,
                    enum wire_state state, const uint8_t *encoded, size_t encoded_len, uint64_t ts,
                    const uint8_t *s0, size_t s0_len, redisCallbackFn *fn, void *arg)
{
    if (!cl.up || cl.failing || cl.cmd.ac == NULL)
        return -1;
    struct redis_cmd *c = &cl.ucmd;
    if (cl.ucbs_n == 0) {
        redis_cmd_init(c, "EVALSHA");
        redis_cmd_str(c, cl.sha[SCRIPT_UPDATE]);
        redis_cmd_str(c, "9");
        redis_cmd_str(c, cl.key_work);
        redis_cmd_str(c, cl.key_updates);
        redis_cmd_str(c, cl.key_seq);
        redis_cmd_str(c, cl.key_origin);
        redis_cmd_str(c, cl.key_pwork);
        redis_cmd_str(c, cl.key_items);
        redis_cmd_str(c, cl.key_finals);
        redis_cmd_str(c, cl.key_finals_bytes);
        redis_cmd_str(c, cl.key_want_started);
        redis_cmd_str(c, cluster_floor_arg());
        redis_cmd_u64(c, gp.config->updates.history);
        redis_cmd_str(c, CLUSTER_GROUP);
        redis_cmd_str(c, cl.consumer);
        const struct ds_config *cf = gp.config;
        redis_cmd_u64(c, clock_wall_ns() / 1000000);
        redis_cmd_u64(c, cf->items.retention_age_ms);
        redis_cmd_u64(c, cf->items.retention_count);
        redis_cmd_u64(c, cf->items.retention_bytes);
        redis_cmd_str(c, cl.key_item_prefix);
        redis_cmd_str(c, cl.key_latest);
    }
    redis_cmd_str(c, item->key & PWORK_BIT ? "1" : "0");
    char entry[48];
    snprintf(entry, sizeof entry, "%d-%" PRIu64, item->key & PWORK_BIT ? 1 : 0,
             item->key & ~PWORK_BIT);
    redis_cmd_str(c, entry);
    redis_cmd_mem(c, &mode, 1);
    redis_cmd_u64(c, check_attempt);
    redis_cmd_mem(c, encoded, encoded_len);
    redis_cmd_str(c, item->id);
    redis_cmd_u64(c, (uint64_t)state);
    if (ts != 0)
        redis_cmd_u64(c, ts);
    else
        redis_cmd_str(c, "");
    redis_cmd_mem(c, s0 != NULL ? s0 : (const uint8_t *)"", s0 != NULL ? s0_len : 0);
    if (cl.ucbs_n == cl.ucbs_cap) {
        cl.ucbs_cap = cl.ucbs_cap ? cl.ucbs_cap * 2 : 256;
        cl.ucbs = ds_realloc(cl.ucbs, cl.ucbs_cap * sizeof cl.ucbs[0]);
    }
    cl.ucbs[cl.ucbs_n++] = (struct update_cb){ fn, arg };
    cl.inflight++;
    if (cl.ucbs_n >= UPDATE_BATCH_MAX)
        cluster_flush_updates();
    else if (cl.ucbs_n == 1)
        event_active(cl.flush_event, EV_TIMEOUT, 0);
    return 0;
}

/* The delivery count ITEM's entry has while this copy of it is the one
 * that runs (the update script's check): its attempt, one more when it
 * was taken over past max_attempts (its updates name the last attempt). */
uint32_t
cluster_entry_count(const struct item *item)
{
    return item->attempt + item->claimed_past_max;
}

/* The reply of the update script: the seq used, 0 if superseded, -1 if
 * unknown (no reply, or an error: logged). */
static int64_t
update_result(const redisReply *r, const char *what)
{
    if (r == NULL)
        return -1;
    if (r->type == REDIS_REPLY_INTEGER) {
        if (r->integer == 0) {
            cl.superseded++;
            return 0;
        }
        if ((uint64_t)r->integer > cl.max_published_seq)
            cl.max_published_seq = (uint64_t)r->integer;
        return r->integer;
    }
    if (cluster_demoted(r))
        return -1;
    log_error("cluster: publishing %s failed: %s", what,
              r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    if (cluster_is_error(r, "NOSCRIPT"))
        cluster_session_fail("redis forgot our scripts (SCRIPT FLUSH?)");
    return -1;
}

void
cluster_note_lost_update(void)
{
    if (cl.lost_updates++ == 0 || cl.lost_updates % 1000 == 0)
        log_warn("cluster: %" PRIu64 " updates of running items could not be published "
                 "(redis unreachable); their final updates still will be", cl.lost_updates);
}

void
cluster_on_published(redisAsyncContext *ac, void *reply, void *arg)
{
    if (cl.shutting_down)
        return;
    if (update_result(reply, "an update") == -1)
        cluster_note_lost_update();
    inflight_done();
}

/* The STARTED of ITEM's attempt if it was folded (cluster_publish()),
 * encoded for the update that follows it (*LEN bytes; the caller frees
 * it), once: NULL if there is none. */
static uint8_t *
take_folded_started(struct item *item, pid_t worker_pid, size_t *len)
{
    if (!item->started_unsent)
        return NULL;
    item->started_unsent = 0;
    if (!item->started)
        return NULL;            /* requeued since: that attempt never went on */
    struct outcome started = { .state = STATE_STARTED, .worker_pid = worker_pid };
    return updates_encode(item, &started, len);
}

/* STARTED or PROGRESS: every update comes back through the cluster's
 * stream, in its order. The STARTED of a quick item is folded (as on one
 * machine) while no subscriber of this instance lets STARTED through: not
 * sent now, but with the item's next update (its final, within
 * microseconds), and written by that update's script just before it only
 * if a subscriber of another instance wants STARTED then
 * ({NAME}:want_started): nobody who wants STARTED misses it, it is only
 * as late as the item is quick (getItems elsewhere shows it QUEUED
 * meanwhile), and the final carries its start time either way. */
void
cluster_publish(struct item *item, const struct outcome *o)
{
    if (o->state == STATE_STARTED) {
        item->started_unsent = item->weight == ITEM_WEIGHT_QUICK &&
                               subscribers_wanting_started() == 0;
        if (item->started_unsent) {
            cl.started_folded++;
            return;
        }
    }
    size_t len, s0_len = 0;
    uint8_t *s0 = take_folded_started(item, o->worker_pid, &s0_len);
    uint8_t *encoded = updates_encode(item, o, &len);
    uint64_t ts = o->state == STATE_STARTED || s0 != NULL ? clock_wall_ns() : 0;
    if (cluster_send_update(item, 'u', cluster_entry_count(item), o->state, encoded, len, ts, s0,
                            s0_len, cluster_on_published, NULL) == -1)
        cluster_note_lost_update();
    free(encoded);
    free(s0);
}

/* Tell every instance that a subscriber here wants STARTED updates: the
 * key lives WANT_TTL_MS beyond the longest our connection may be held up
 * (a WAIT for the replicas, cluster_ack.c, ahead of the SET; longer, and
 * the session fails anyway), refreshed every second while one is
 * connected. */
void
cluster_publish_want_started(void)
{
    if (subscribers_wanting_started() == 0 || !cl.up || cl.failing)
        return;
    struct redis_args a;
    redis_args_init(&a, "SET");
    redis_args_str(&a, cl.key_want_started);
    redis_args_str(&a, cl.consumer);
    redis_args_str(&a, "PX");
    redis_args_u64(&a, WANT_TTL_MS + PING_TIMEOUT_MS + cluster_ack_max_wait_ms());
    cluster_command(&cl.cmd, NULL, NULL, &a);
}

/* Run FN(ARG) from the loop, not from inside the caller. */
static void
later(void (*fn)(evutil_socket_t, short, void *), void *arg)
{
    struct timeval now = { 0, 0 };
    event_base_once(gp.base, -1, EV_TIMEOUT, fn, arg, &now);
}

/* The op of ITEM's final or retry, in cl.ending until its reply (its
 * item is no longer the store's meanwhile: cluster_ending_holds()). */
static struct item_op *
ending_op(struct item *item)
{
    struct item_op *op = ds_calloc(1, sizeof *op);
    op->item = item;
    op->next = cl.ending;
    if (cl.ending != NULL)
        cl.ending->prev = op;
    cl.ending = op;
    return op;
}

static void
ending_free(struct item_op *op)
{
    if (op->prev != NULL)
        op->prev->next = op->next;
    else
        cl.ending = op->next;
    if (op->next != NULL)
        op->next->prev = op->prev;
    free(op);
}

/* Is the final or retry of the item with KEY on its way? (A walk: only
 * claims ask, and they are rare.) */
int
cluster_ending_holds(uint64_t key)
{
    for (const struct item_op *op = cl.ending; op != NULL; op = op->next)
        if (op->item->key == key)
            return 1;
    return 0;
}

static void
drop_later(evutil_socket_t fd, short what, void *arg)
{
    struct item_op *op = arg;
    store_dropped(op->item);
    ending_free(op);
}

static void
on_final(redisAsyncContext *ac, void *reply, void *arg)
{
    struct item_op *op = arg;
    if (cl.shutting_down) {
        store_discard(op->item);
        ending_free(op);
        return;
    }
    int64_t seq = update_result(reply, "a final update");
    if (seq > 0) {
        struct outcome o = { .state = op->state };     /* published through the stream */
        store_final_written(op->item, &o);
    } else {
        char id[300], trace[80];
        if (seq == -1)
            log_warn("cluster: item \"%s\" (attempt %u) finished, but whether redis has its "
                     "final update is unknown; if not, another instance runs it again after "
                     "the lease%s", utf8_escape(id, sizeof id, op->item->id), op->item->attempt,
                     item_trace_note(op->item, trace, sizeof trace));
        store_dropped(op->item);
    }
    ending_free(op);
    inflight_done();
}

/* The final update, XACK and XDEL in one script; then the item is done
 * here (or dropped if its attempt was superseded). */
void
cluster_final(struct item *item, const struct outcome *o)
{
    struct item_op *op = ending_op(item);
    op->state = o->state;
    /* A quick item's STARTED may have been folded (cluster_publish): its
     * start time comes with the final, taken before the final's own. */
    uint64_t ts = item->weight == ITEM_WEIGHT_QUICK ? clock_wall_ns() : 0;
    size_t len, s0_len = 0;
    uint8_t *s0 = take_folded_started(item, o->worker_pid, &s0_len);
    uint8_t *encoded = updates_encode(item, o, &len);
    if (cluster_send_update(item, 'f', cluster_entry_count(item), o->state, encoded, len, ts, s0,
                            s0_len, on_final, op) == -1) {
        char id[300], trace[80];
        log_warn("cluster: item \"%s\" finished while redis is unreachable; another instance "
                 "runs it again after the lease%s", utf8_escape(id, sizeof id, item->id),
                 item_trace_note(item, trace, sizeof trace));
        later(drop_later, op);
    }
    free(encoded);
    free(s0);
}

static void
on_retried(redisAsyncContext *ac, void *reply, void *arg)
{
    struct item_op *op = arg;
    if (cl.shutting_down) {
        store_discard(op->item);
        ending_free(op);
        return;
    }
    if (update_result(reply, "a RETRYING update") > 0)
        store_retried(op->item);
    else
        store_dropped(op->item);    /* another instance retries it, after the lease */
    ending_free(op);
    inflight_done();
}

/* RETRYING through Redis, then the item is queued again with the next
 * attempt (or dropped if superseded). */
void
cluster_retry(struct item *item, const struct outcome *o)
{
    struct item_op *op = ending_op(item);
    size_t len, s0_len = 0;
    uint8_t *s0 = take_folded_started(item, o->worker_pid, &s0_len);
    uint8_t *encoded = updates_encode(item, o, &len);
    uint64_t due_ms = item->due_ns > (uint64_t)clock_wall_ns() ?
                      item->due_ns / 1000000 + (item->due_ns % 1000000 != 0) : 0; /* never early */
    if (cluster_send_update(item, 'r', cluster_entry_count(item), STATE_RETRYING, encoded, len,
                            due_ms, s0, s0_len, on_retried, op) == -1)
        later(drop_later, op);
    free(encoded);
    free(s0);
}

/* ---- accepting ----------------------------------------------------------- */

/*
 * The items accepted in one turn of the loop go to Redis in one script
 * (script_accepts): they gather in cl.accepts, and a flush runs once the
 * turn's other callbacks have (an event made active). While ACCEPTS_AHEAD
 * batches are already in flight, a flush waits for a reply instead: under
 * load the next batch gathers meanwhile, so a batch grows with the load
 * (up to ACCEPT_BATCH_MAX) and Redis runs one script for many items.
 * Every item of a batch hears its own verdict, from the script's reply.
 */

/* A batch in flight: owned by its callback, which frees it. */
struct accept_batch {
    int wait;                   /* ACCEPTED only after the replicas (cluster_ack.c) */
    size_t n;
    struct acceptance a[];
};

static void
unavailable_later(evutil_socket_t fd, short what, void *arg)
{
    struct item_op *op = arg;
    store_accepted(op->a, STORE_UNAVAILABLE, cl.why);
    free(op);
}

static void flush_accepts(void);

/* The verdict of item I of BATCH from R, the script's whole reply (NULL:
 * the connection went first). */
static void
accept_verdict(const struct acceptance *a, int wait, const redisReply *r, const redisReply *e)
{
    char why[300];
    if (r == NULL) {
        store_accepted(*a, STORE_UNCERTAIN, "cluster: the connection to redis was lost");
    } else if (e != NULL && e->type == REDIS_REPLY_INTEGER && e->integer == 0) {
        store_accepted(*a, STORE_DUPLICATE, NULL);
    } else if (e != NULL && e->type == REDIS_REPLY_INTEGER && e->integer > 0) {
        if ((uint64_t)e->integer > cl.max_published_seq)
            cl.max_published_seq = (uint64_t)e->integer;
        if (wait)
            cluster_ack_hold(*a);
        else
            store_accepted(*a, STORE_ACCEPTED, NULL);
    } else if (cluster_is_error(r, "READONLY") || (e != NULL && cluster_is_error(e, "READONLY")) ||
               cluster_is_error(r, "NOSCRIPT")) {     /* the session goes (on_accepted) */
        store_accepted(*a, STORE_UNAVAILABLE, cl.why);
    } else {
        const redisReply *err = e != NULL ? e : r;
        snprintf(why, sizeof why, "cluster: redis refused the item: %.200s",
                 err->type == REDIS_REPLY_ERROR ? err->str : "unexpected reply");
        store_accepted(*a, STORE_REJECTED, why);
    }
}

static void
on_accepted(redisAsyncContext *ac, void *reply, void *arg)
{
    struct accept_batch *b = arg;
    redisReply *r = reply;
    cl.accepts_ahead--;
    if (cl.shutting_down) {
        for (size_t i = 0; i < b->n; i++)
            store_discard(b->a[i].item);
        free(b);
        return;
    }
    if (r != NULL && cluster_is_error(r, "NOSCRIPT"))
        cluster_session_fail("redis forgot our scripts (SCRIPT FLUSH?)");
    else if (r != NULL && r->type == REDIS_REPLY_ERROR && !cluster_demoted(r))
        log_error("cluster: redis refused a batch of %zu items: %s", b->n, r->str);
    int each = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == b->n;
    for (size_t i = 0; each && i < b->n; i++) {
        if (cluster_is_error(r->element[i], "READONLY")) {
            cluster_demoted(r->element[i]);     /* a replica now: the session goes */
            break;
        }
    }
    if (r != NULL && r->type != REDIS_REPLY_ERROR && !each)
        log_error("cluster: the accept script answered %zu items with an unexpected reply",
                  b->n);
    for (size_t i = 0; i < b->n; i++)
        accept_verdict(&b->a[i], b->wait, r, each ? r->element[i] : NULL);
    cl.inflight -= b->n;
    free(b);
    cluster_backpressure_check();
    flush_accepts();
    cluster_check_done();
}

/* Item I's ACCEPT_FIELDS arguments; NOW the wall clock and MONO the
 * monotonic one. */
static void
accept_args(struct redis_cmd *c, const struct item *item, uint64_t now, uint64_t mono)
{
    size_t len;
    struct outcome queued = { .state = STATE_QUEUED };
    uint8_t *encoded = updates_encode(item, &queued, &len);
    redis_cmd_mem(c, encoded, len);
    free(encoded);
    redis_cmd_str(c, item->id);
    redis_cmd_str(c, item->kind);
    redis_cmd_str(c, item->batch);
    redis_cmd_u64(c, STATE_QUEUED);
    redis_cmd_u64(c, item->max_attempts);
    redis_cmd_u64(c, item->timeout_ms);
    redis_cmd_str(c, item->weight == ITEM_WEIGHT_QUICK ? "1" : "0");
    redis_cmd_mem(c, item->raw, item->raw_len);
    char priority[16];
    redis_cmd_str(c, cluster_priority_arg(item, priority));
    /* Accepted when it arrived (its due time counts from then), not when
     * its batch is sent: that may be later (ACCEPTS_AHEAD), and getItems's
     * accepted + delay would then be after its start. */
    uint64_t waited = mono > item->accepted_ns ? mono - item->accepted_ns : 0;
    redis_cmd_u64(c, waited < now ? now - waited : now);
    if (item->due_ns > now)
        redis_cmd_u64(c, item->due_ns / 1000000 + (item->due_ns % 1000000 != 0)); /* never early */
    else
        redis_cmd_str(c, "");
    struct trace_context trace;
    if (trace_of_work_item(item->raw, item->raw_len, &trace) && trace.parent_len > 0) {
        redis_cmd_mem(c, trace.parent, trace.parent_len);
        redis_cmd_mem(c, trace.state, trace.state_len);
    } else {
        redis_cmd_str(c, "");
        redis_cmd_str(c, "");
    }
}

/* Send what gathered in cl.accepts as one script, unless ACCEPTS_AHEAD
 * batches are in flight (a reply flushes again). */
static void
flush_accepts(void)
{
    if (cl.accepts_n == 0 || cl.accepts_ahead >= ACCEPTS_AHEAD)
        return;
    size_t n = cl.accepts_n > ACCEPT_BATCH_MAX ? ACCEPT_BATCH_MAX : cl.accepts_n;
    struct accept_batch *b = ds_malloc(sizeof *b + n * sizeof b->a[0]);
    b->n = n;
    b->wait = cluster_ack_wanted();
    memcpy(b->a, cl.accepts, n * sizeof b->a[0]);
    cl.accepts_n -= n;
    memmove(cl.accepts, cl.accepts + n, cl.accepts_n * sizeof cl.accepts[0]);
    struct redis_cmd *c = &cl.batch_cmd;
    redis_cmd_init(c, "EVALSHA");
    redis_cmd_str(c, cl.sha[SCRIPT_ACCEPTS]);
    redis_cmd_str(c, "7");
    redis_cmd_str(c, cl.key_work);
    redis_cmd_str(c, cl.key_updates);
    redis_cmd_str(c, cl.key_seq);
    redis_cmd_str(c, cl.key_origin);
    redis_cmd_str(c, cl.key_items);
    redis_cmd_str(c, cl.key_delayed);
    redis_cmd_str(c, cl.key_prio);
    redis_cmd_str(c, cluster_floor_arg());
    redis_cmd_u64(c, gp.config->updates.history);
    redis_cmd_str(c, cl.key_item_prefix);
    uint64_t now = clock_wall_ns(), mono = clock_monotonic_ns();
    for (size_t i = 0; i < n; i++)
        accept_args(c, b->a[i].item, now, mono);
    if (cl.up && !cl.failing && cl.cmd.ac != NULL &&
        redis_cmd_send(c, cl.cmd.ac, on_accepted, b) == 0) {
        cl.accepts_ahead++;
        cl.accept_batches++;
        if (b->wait)
            cluster_ack_sent();
    } else {
        if (cl.up && !cl.failing)
            cluster_session_fail("command connection: cannot send a command");
        /* Never sent: each item hears UNAVAILABLE (from the loop). */
        for (size_t i = 0; i < n; i++) {
            struct item_op *op = ds_calloc(1, sizeof *op);
            op->a = b->a[i];
            later(unavailable_later, op);
        }
        cl.inflight -= n;
        free(b);
        cluster_check_done();
    }
    if (cl.accepts_n > 0)
        flush_accepts();
}

void
cluster_on_flush(evutil_socket_t fd, short what, void *arg)
{
    flush_accepts();
    cluster_flush_updates();
    cluster_fail_unsent_updates();
}

/* The session went: the accepts not sent yet hear UNAVAILABLE (certain:
 * Redis never saw them). */
void
cluster_fail_accepts(void)
{
    for (size_t i = 0; i < cl.accepts_n; i++) {
        struct item_op *op = ds_calloc(1, sizeof *op);
        op->a = cl.accepts[i];
        later(unavailable_later, op);
    }
    cl.inflight -= cl.accepts_n;
    cl.accepts_n = 0;
}

/* The entry and its QUEUED update in one script (with the others of this
 * turn of the loop): accepted once Redis has both. The item comes back to
 * some instance through the work stream. */
void
cluster_accept(struct acceptance a)
{
    if (!cl.up || cl.failing || cl.cmd.ac == NULL) {
        struct item_op *op = ds_calloc(1, sizeof *op);
        op->a = a;
        later(unavailable_later, op);
        return;
    }
    if (cl.accepts_n == cl.accepts_cap) {
        cl.accepts_cap = cl.accepts_cap ? cl.accepts_cap * 2 : 256;
        cl.accepts = ds_realloc(cl.accepts, cl.accepts_cap * sizeof cl.accepts[0]);
    }
    cl.accepts[cl.accepts_n++] = a;
    cl.inflight++;
    cl.accepts_sent++;
    uint64_t now = clock_wall_ns();
    if (a.item->due_ns > now)
        cluster_arm_due((int64_t)(a.item->due_ns / 1000000 + (a.item->due_ns % 1000000 != 0)));
    if (cl.accepts_n == 1)
        event_active(cl.flush_event, EV_TIMEOUT, 0);
}

/* Too much in flight to Redis (INFLIGHT_MAX): submit.c reads no more items
 * until it drains below half of it (cluster_backpressure_check()). */
int
cluster_busy(void)
{
    if (cl.inflight >= INFLIGHT_MAX && !cl.was_busy) {
        cl.was_busy = 1;
        cl.busy_spells++;
    }
    return cl.was_busy;
}

void
cluster_backpressure_check(void)
{
    if (cl.was_busy && cl.inflight < INFLIGHT_MAX / 2) {
        cl.was_busy = 0;
        store_room_available();
    }
}
