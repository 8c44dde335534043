/*
 * The store (store.h says what it decides). It counts the items accepted
 * and not final (queue.capacity), holds the retry-or-fail rule, publishes
 * what a backend with a local update log needs published, and frees every
 * item.
 */
#include "grpc/store.h"
#include "grpc/store_memory.h"

#include "dosomething/handler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/kind.h"
#include "core/log.h"
#include "core/utf8.h"
#include "grpc/attempts.h"
#include "grpc/backoff.h"
#include "grpc/cluster.h"
#include "grpc/grpc_process.h"
#include "grpc/handover.h"
#include "grpc/health.h"
#include "grpc/item.h"
#include "grpc/items.h"
#include "grpc/journal.h"
#include "grpc/kind_gate.h"
#include "grpc/merge.h"
#include "grpc/cache_file.h"
#include "grpc/cache_redis.h"
#include "grpc/result_cache.h"
#include "grpc/metrics.h"
#include "grpc/queue.h"
#include "grpc/updates.h"
#include "ipc/frame.h"

/* The reason of a cancel asked of a worker, until the item's end comes
 * (few at a time: a list). The store's; freed when the item leaves. */
struct cancel_reason {
    struct cancel_reason *next;
    uint64_t key;
    char reason[];
};

static struct {
    const struct store_backend *b;
    struct cancel_reason *cancels;  /* of the items being cancelled at a worker */
    uint64_t count;             /* accepted and not final: queued, at a worker, or ending */
    uint64_t pending;           /* handed to store_accept, the backend not done yet */
    const char *abandon_why;    /* set at a drain's deadline: see store_abandon() */
    void (*serving_changed)(void);  /* store_on_serving_changed() */
    void (*room)(void);
} st;

/* ---- the index of known items -------------------------------------------------- */

/*
 * Every update published here reaches the index (items.c) with its seq:
 * this is the one place that feeds it. With a shared log (Redis) items
 * leave this instance once accepted: the cluster keeps them, not us.
 */
static int
indexed(void)
{
    return !st.b->shared_log;
}

static void
publish(struct item *item, const struct outcome *o)
{
    uint64_t seq = updates_publish(item, o);
    if (indexed())
        items_updated(item, o, seq);
}

static void
forget(struct item *item)
{
    if (indexed())
        items_forget(item);
}

int
store_known(const char *id)
{
    return indexed() && items_find(id) != NULL;
}

int
store_known_final(const char *id)
{
    const struct known_item *k = indexed() ? items_find(id) : NULL;
    return k != NULL && items_is_final(k->state);
}

void
store_count_duplicate(void)
{
    items_count_duplicate();
}

void
store_count_retry(void)
{
    items_count_retry();
}

static void on_retry_verdict(void *arg, uint32_t index, const struct item *item,
                             enum store_verdict verdict, const char *why);

/* A pending accept was refused: a new item is forgotten; a retried one is
 * final again as it was (FAILED, with why its retry was refused), so that
 * it can be retried later. Nothing is published: its last update stands. */
static void
refused(struct acceptance a, const char *why)
{
    if (!indexed())
        return;
    const struct known_item *k = items_find(a.item->id);
    if (a.done != on_retry_verdict || k == NULL) {
        items_forget(a.item);
        return;
    }
    char error[320];
    snprintf(error, sizeof error, "its retry was not accepted: %s",
             why != NULL ? why : "no reason given");
    struct outcome o = { .state = STATE_FAILED, .error = error };
    items_updated(a.item, &o, k->last_seq);
}

static void
on_retry_verdict(void *arg, uint32_t index, const struct item *item,
                 enum store_verdict verdict, const char *why)
{
    (void)arg;
    (void)index;
    if (verdict != STORE_ACCEPTED) {
        char id[300], trace[80];
        log_warn("retry of item \"%s\" not accepted: %s%s", utf8_escape(id, sizeof id, item->id),
                 why != NULL ? why : "no reason given", item_trace_note(item, trace, sizeof trace));
    }
}

struct item *
store_item_again(const char *id, const char *batch, const char *kind, const uint8_t *raw,
                 size_t raw_len)
{
    wire_work_item *msg = wire_work_item_unpack(NULL, raw_len, raw);
    const struct ds_handler_config *handler = config_handler(gp.config, kind);
    char reason[256], escaped[300];
    if (msg == NULL || handler == NULL || kind_check(handler, msg, reason, sizeof reason) == -1) {
        if (msg != NULL)
            log_info("retry of item \"%s\" refused: %s", utf8_escape(escaped, sizeof escaped, id),
                     handler == NULL ? "its kind is no longer configured" : reason);
        if (msg != NULL)
            wire_work_item_free(msg, NULL);
        return NULL;
    }
    /* As submit.c makes it, with the config of now; the id as known (a
     * scope's prefix, or one we assigned). */
    uint32_t timeout_ms = msg->timeout_ms ? msg->timeout_ms : (uint32_t)handler->timeout_ms;
    uint32_t max_attempts = msg->max_attempts ? msg->max_attempts
                                              : gp.config->queue.max_attempts;
    struct item *item = item_make(raw, raw_len, id, batch, handler->kind, max_attempts,
                                  timeout_ms, kind_is_quick(handler, msg));
    wire_work_item_free(msg, NULL);
    return item;
}

enum store_retry_result
store_retry(const char *id)
{
    const struct known_item *k = indexed() ? items_find(id) : NULL;
    if (k == NULL)
        return STORE_RETRY_NOT_FOUND;
    if ((k->state != STATE_FAILED && k->state != STATE_CANCELLED) || k->extra == NULL ||
        k->extra->raw_len == 0)
        return STORE_RETRY_NOT_RETRYABLE;
    const uint8_t *raw = k->extra->data + k->extra->error_len + 1 + k->extra->result_len;
    /* Made before accepting: that replaces what K holds. */
    struct item *item = store_item_again(k->id, known_batch(k), items_kind(k), raw,
                                         k->extra->raw_len);
    if (item == NULL)
        return STORE_RETRY_NOT_RETRYABLE;
    items_count_retry();
    store_accept(item, on_retry_verdict, NULL, 0);
    return STORE_RETRY_REQUEUED;
}

/* ---- the queue's events ---------------------------------------------------- */

static void final(struct item *item, const struct outcome *o);

static void
on_update(struct item *item, const struct outcome *o)
{
    if (o->state == STATE_STARTED)
        metrics_kind(item->kind)->started++;
    if (st.b->shared_log)
        st.b->publish(item, o);
    else
        publish(item, o);
}

static void abandon(struct item *item, pid_t worker_pid);

/* Back to the front of the queue; the caller dispatches. */
static void
requeue(struct item *item)
{
    item->started = 0;              /* its next attempt has not started */
    if (st.abandon_why != NULL)
        abandon(item, 0);
    else
        queue_push_front(item);
}

/* queue.retry_backoff: ITEM's next attempt waits (item->due_ns) after its
 * attempt FAILED_ATTEMPT failed; off, it runs again at once. */
static void
retry_backoff(struct item *item, uint32_t failed_attempt)
{
    const struct ds_config *c = gp.config;
    uint64_t ms = backoff_ms(c->queue.retry_backoff_min_ms, c->queue.retry_backoff_max_ms,
                             failed_attempt, backoff_random());
    if (ms > 0)
        item->due_ns = (uint64_t)clock_wall_ns() + ms * 1000000u;
}

int
store_may_retry(const struct item *item, uint32_t failed_attempt)
{
    return failed_attempt < item->max_attempts;
}

/* ITEM's attempt failed for REASON; RAN: its end, for what it cost (NULL:
 * not known, its worker died or it timed out). */
static void
attempt_failed(struct item *item, pid_t worker_pid, const char *reason,
               const struct outcome *ran)
{
    uint64_t cpu_usec = ran != NULL ? ran->cpu_usec : 0;
    uint64_t max_rss_kib = ran != NULL ? ran->max_rss_kib : 0;
    if (!store_may_retry(item, item->attempt)) {
        char error[ATTEMPTS_TEXT_MAX + 1200];
        const char *before = attempts_of(item->key);
        if (before != NULL)
            snprintf(error, sizeof error, "%s; attempt %u: %.1100s (attempt %u of %u)", before,
                     item->attempt, reason, item->attempt, item->max_attempts);
        else
            snprintf(error, sizeof error, "%.1100s (attempt %u of %u)", reason, item->attempt,
                     item->max_attempts);
        struct outcome o = { .state = STATE_FAILED, .worker_pid = worker_pid, .error = error,
                             .cpu_usec = cpu_usec, .max_rss_kib = max_rss_kib };
        final(item, &o);
        return;
    }
    attempts_note(item->key, item->attempt, reason);
    metrics_attempt_cost(item->kind, cpu_usec, max_rss_kib);
    metrics_kind(item->kind)->retried++;
    struct outcome o = { .state = STATE_RETRYING, .worker_pid = worker_pid, .error = reason,
                         .cpu_usec = cpu_usec, .max_rss_kib = max_rss_kib };
    if (st.b->retry != NULL) {
        retry_backoff(item, item->attempt);
        st.b->retry(item, &o);      /* store_retried() follows */
        return;
    }
    publish(item, &o);
    retry_backoff(item, item->attempt);
    item->attempt++;
    if (st.b->attempt != NULL)
        st.b->attempt(item);
    requeue(item);      /* workers_exited() dispatches once all are back */
}

static void
on_attempt_failed(struct item *item, pid_t worker_pid, const char *reason)
{
    attempt_failed(item, worker_pid, reason, NULL);
}

/* The handler failed and asked for another attempt: spent like a worker
 * death (the same rule, the same RETRYING path in every backend); its last
 * FAILED says that no attempt was left. */
static void
on_retry_asked(struct item *item, const struct outcome *ran)
{
    if (!store_may_retry(item, item->attempt)) {
        char why[ATTEMPTS_TEXT_MAX + 1200];
        const char *before = attempts_of(item->key);
        if (before != NULL)
            snprintf(why, sizeof why, "%s; attempt %u: %.1100s (attempt %u of %u: no attempts "
                     "left)", before, item->attempt, ran->error, item->attempt,
                     item->max_attempts);
        else
            snprintf(why, sizeof why, "%.1100s (attempt %u of %u: no attempts left)", ran->error,
                     item->attempt, item->max_attempts);
        struct outcome o = *ran;
        o.state = STATE_FAILED;
        o.error = why;
        final(item, &o);
        return;
    }
    metrics_kind(item->kind)->retried_asked++;
    attempt_failed(item, ran->worker_pid, ran->error, ran);
}

/* ---- cancel ------------------------------------------------------------------ */

#define CANCEL_DEFAULT_REASON "cancelled by a client"

/* The reason given for KEY's cancel, out of the list (free it), or NULL. */
static struct cancel_reason *
cancel_reason_take(uint64_t key)
{
    for (struct cancel_reason **pp = &st.cancels; *pp != NULL; pp = &(*pp)->next) {
        struct cancel_reason *c = *pp;
        if (c->key == key) {
            *pp = c->next;
            return c;
        }
    }
    return NULL;
}

/* ITEM ends CANCELLED for REASON (its final goes through the backend like
 * any other: the journal records it, a restart does not run it again). */
static void
cancel_final(struct item *item, pid_t worker_pid, const char *reason, const struct outcome *ran)
{
    struct outcome o = { .state = STATE_CANCELLED, .worker_pid = worker_pid,
                         .error = reason != NULL ? reason : CANCEL_DEFAULT_REASON };
    if (ran != NULL) {
        o.cpu_usec = ran->cpu_usec;
        o.max_rss_kib = ran->max_rss_kib;
    }
    final(item, &o);
}

/*
 * A graceful stop's deadline asked ITEM's worker to stop it (store_abandon),
 * and its handler has stopped: only now does it get its last update, so
 * nothing it runs outlives that. RAN: how its attempt ended (NULL: its
 * worker died). One that ended by itself before the stop reached it keeps
 * that end; one that asked for another attempt spent this one, and the
 * next is not run (requeue() abandons it).
 */
static void
stopped(struct item *item, pid_t worker_pid, const struct outcome *ran)
{
    if (ran != NULL && (ran->state == STATE_SUCCEEDED || ran->state == STATE_FAILED)) {
        final(item, ran);
        return;
    }
    if (ran != NULL && ran->state == STATE_RETRYING) {
        on_retry_asked(item, ran);
        return;
    }
    abandon(item, item->started ? worker_pid : 0);
}

static void
on_cancelled(struct item *item, pid_t worker_pid, const struct outcome *ran)
{
    struct cancel_reason *c = cancel_reason_take(item->key);
    item->cancelling = 0;
    if (c == NULL && item->stop_asked) {
        item->stop_asked = 0;
        stopped(item, worker_pid, ran);
        return;
    }
    item->stop_asked = 0;
    cancel_final(item, worker_pid, c != NULL ? c->reason : NULL, ran);
    free(c);
}

struct cancel_walk {
    int (*match)(const struct item *item, void *arg);
    void *arg;
    const char *reason;
    uint64_t count;
};

static int
cancel_match(const struct item *item, void *arg)
{
    struct cancel_walk *cw = arg;
    return cw->match(item, cw->arg);
}

/* How long ITEM's handler gets to stop; -1: it cannot be interrupted (a
 * module without DS_MODULE_CANCELLABLE), its worker is killed. */
static int64_t
cancel_grace(const struct item *item)
{
    const struct ds_handler_config *h = config_handler(gp.config, item->kind);
    if (h == NULL)
        return CONFIG_CANCEL_GRACE_DEFAULT_MS;
    if (h->type == DS_HANDLER_MODULE && !(h->module_flags & DS_MODULE_CANCELLABLE))
        return -1;
    return (int64_t)h->cancel_grace_ms;
}

static void
cancel_asked(const struct item *item, void *arg)
{
    struct cancel_walk *cw = arg;
    cw->count++;
    for (const struct cancel_reason *c = st.cancels; c != NULL; c = c->next)
        if (c->key == item->key)
            return;             /* asked before: the first reason stands */
    const char *reason = cw->reason != NULL ? cw->reason : CANCEL_DEFAULT_REASON;
    size_t n = strlen(reason);
    struct cancel_reason *keep = ds_malloc(sizeof *keep + n + 1);
    keep->key = item->key;
    memcpy(keep->reason, reason, n + 1);
    keep->next = st.cancels;
    st.cancels = keep;
}

static void
cancel_taken(struct item *item, void *arg)
{
    struct cancel_walk *cw = arg;
    cw->count++;
    cancel_final(item, 0, cw->reason, NULL);
}

uint64_t
store_cancel(int (*match)(const struct item *item, void *arg), void *arg, const char *reason)
{
    struct cancel_walk cw = { .match = match, .arg = arg, .reason = reason };
    static const struct queue_cancel_ops ops = {
        .match = cancel_match, .grace_ms = cancel_grace, .asked = cancel_asked,
        .taken = cancel_taken,
    };
    /* Merged items first: a cancelled leader releases those left, and
     * one of them may then lead a run that this cancel matches too. */
    merge_cancel(cancel_match, cancel_taken, &cw);
    queue_cancel(&ops, &cw);
    queue_dispatch();
    return cw.count;
}

static void
on_dispatched(void)
{
    if (st.b->pull != NULL)
        st.b->pull();
    /* An item that came late to a drain (and found no worker with room)
     * is handed over too, while the handover waits for such. */
    if (gp.draining)
        handover_poll();
}

/* May the queue release its idle workers? While a handover is in flight its
 * items may come back, and while items may still come (a call under way, a
 * pull in flight) they must find a worker: keep them. */
static int
draining(void)
{
    return gp.draining && !handover_active() && !grpc_process_items_may_come();
}

static void
kill_worker(pid_t pid, uint32_t slot, const char *reason)
{
    struct ipc_worker msg = { .pid = pid, .slot = slot };
    size_t n = strnlen(reason, 96);
    char body[sizeof msg + 96];
    memcpy(body, &msg, sizeof msg);
    memcpy(body + sizeof msg, reason, n);
    master_send(IPC_KILL_WORKER, body, sizeof msg + n);
}

/* ---- the result cache's events (merge.h) -------------------------------------- */

static void
merge_served(struct item *item, const void *result, size_t len)
{
    struct outcome o = { .state = STATE_SUCCEEDED, .result = result, .result_len = len,
                         .progress = 1, .cached = 1 };
    final(item, &o);
}

static void
merge_failed(struct item *item, const char *error)
{
    struct outcome o = { .state = STATE_FAILED, .error = error };
    final(item, &o);
}

static void
merge_run(struct item *item)
{
    if (st.abandon_why != NULL)
        abandon(item, 0);
    else
        queue_push(item);
}

static const struct merge_events merge_ev = {
    .served = merge_served,
    .failed = merge_failed,
    .run = merge_run,
    .dispatch = queue_dispatch,
};

static const struct queue_events events = {
    .update = on_update,
    .ended = final,             /* SUCCEEDED or FAILED, as the handler said */
    .attempt_failed = on_attempt_failed,
    .retry_asked = on_retry_asked,
    .cancelled = on_cancelled,
    .dispatched = on_dispatched,
    .draining = draining,
    .kill_worker = kill_worker,
};

/* ---- accepting -------------------------------------------------------------- */

void
store_accept(struct item *item, store_accept_fn *done, void *arg, uint32_t index)
{
    struct acceptance a = { .item = item, .done = done, .arg = arg, .index = index };
    st.pending++;
    if (indexed())
        items_accepting(item);      /* known while written: a resend now is a duplicate */
    if (st.b->accept != NULL)
        st.b->accept(a);
    else
        store_accepted(a, STORE_ACCEPTED, NULL);
}

void
store_accepted(struct acceptance a, enum store_verdict verdict, const char *why)
{
    struct item *item = a.item;
    /* Still counted while the caller hears it: a capacity check or a
     * drain's end (store_count() == 0) from inside DONE must see it. */
    a.done(a.arg, a.index, item, verdict, why);
    st.pending--;
    if (verdict != STORE_ACCEPTED) {
        refused(a, why);
        item_free(item);
        if (verdict == STORE_REJECTED || verdict == STORE_DUPLICATE)
            store_room_available();
        return;
    }
    if (st.b->shared_log) {
        item_free(item);        /* it is in the shared queue, with its QUEUED update */
        return;
    }
    struct outcome o = { .state = STATE_QUEUED };
    publish(item, &o);
    st.count++;
    if (st.abandon_why != NULL) {
        abandon(item, 0);       /* written after the deadline */
        return;
    }
    if (merge_admit(item))
        return;                 /* served from the cache, or waits for an identical run */
    queue_push(item);
    queue_dispatch();
}

void
store_take_quietly(struct item *item)
{
    if (indexed() && items_find(item->id) == NULL)
        items_accepting(item);
    st.count++;
    if (st.abandon_why != NULL) {
        abandon(item, 0);
        return;
    }
    if (merge_admit(item))
        return;
    queue_push(item);
}

void
store_dispatch(void)
{
    queue_dispatch();
}

void
store_take(struct item *item)
{
    store_take_quietly(item);
    queue_dispatch();
}

uint64_t
store_count(void)
{
    return st.count + st.pending;
}

int
store_accepting(void)
{
    return st.pending > 0;
}

int
store_has_room(void)
{
    if (st.b->has_room != NULL)
        return st.b->has_room();
    return store_count() < gp.config->queue.capacity;
}

int
store_busy(void)
{
    return st.b->busy != NULL && st.b->busy();
}

void
store_subscribers_want_started(void)
{
    if (st.b->want_started != NULL)
        st.b->want_started();
}

/* ---- ending ------------------------------------------------------------------ */

/* ITEM leaves: nothing more is published for it. */
static void
release(struct item *item)
{
    merge_gone(item);           /* a leader leaving: its merged items run on their own */
    if (item->cancelling)       /* it left another way (a drain's deadline) */
        free(cancel_reason_take(item->key));
    item_free(item);
    st.count--;
    store_room_available();
    grpc_process_check_done();
}

static void
final(struct item *item, const struct outcome *o)
{
    char too_large[128];
    struct outcome bounded;
    if (o->result_len > DS_RESULT_SIZE_MAX) {
        /* Workers bound results by their handlers.max_result_size; this is
         * the bound under every config: no subscriber's client can take an
         * update with more. */
        snprintf(too_large, sizeof too_large, "result of %zu bytes exceeds %u bytes, the "
                 "most an update can carry", o->result_len, DS_RESULT_SIZE_MAX);
        bounded = (struct outcome){ .state = STATE_FAILED, .worker_pid = o->worker_pid,
                                    .error = too_large, .cpu_usec = o->cpu_usec,
                                    .max_rss_kib = o->max_rss_kib };
        o = &bounded;
    }
    metrics_attempt_cost(item->kind, o->cpu_usec, o->max_rss_kib);
    merge_ended(item, o);       /* items merged into its run: served, failed or released */
    if (st.b->final != NULL)
        st.b->final(item, o);   /* store_final_written() or store_dropped() follows */
    else
        store_final_written(item, o);
}

void
store_final_written(struct item *item, const struct outcome *o)
{
    if (!st.b->shared_log)
        publish(item, o);
    metrics_item_final(item->kind, o->state,
                       clock_monotonic_ns() - item->accepted_ns);
    release(item);
}

void
store_fail(struct item *item, const char *error)
{
    st.count++;
    struct outcome o = { .state = STATE_FAILED, .error = error };
    final(item, &o);
}

void
store_retried(struct item *item)
{
    item->attempt++;            /* due when the backend was told (retry_backoff()) */
    requeue(item);
    queue_dispatch();
}

void
store_dropped(struct item *item)
{
    char id[300], trace[80];
    log_debug("item \"%s\" (attempt %u) is no longer ours; forgetting it%s",
              utf8_escape(id, sizeof id, item->id), item->attempt,
              item_trace_note(item, trace, sizeof trace));
    forget(item);
    release(item);
    queue_dispatch();
}

void
store_publish_local(struct item *item, const struct outcome *o)
{
    publish(item, o);
}

void
store_discard(struct item *item)
{
    item_free(item);
}

/* ---- a graceful stop's deadline ----------------------------------------------- */

/*
 * ITEM (counted, in no list; if it was running, its handler has stopped)
 * cannot run before the process exits. If the backend keeps it (the
 * journal: no FINAL) it runs at the next start, so it gets no final update
 * now, only RETRYING saying so; else it is FAILED with the reason. Either
 * way no subscriber is left without word of it.
 */
static void
abandon(struct item *item, pid_t worker_pid)
{
    if (item->cancelling) {
        /* Its cancel was asked: it ends CANCELLED, never to run again. */
        on_cancelled(item, worker_pid, NULL);
        return;
    }
    char reason[320];
    snprintf(reason, sizeof reason, "%s: %s", item->started ? "interrupted" : "not run",
             st.abandon_why);
    if (store_keeps_abandoned()) {
        char retry[400];
        snprintf(retry, sizeof retry, "%s; it stays in the queue journal and runs again at the "
                 "next start", reason);
        struct outcome o = { .state = STATE_RETRYING, .worker_pid = worker_pid, .error = retry };
        publish(item, &o);
        /* One that never started keeps its attempt: it was not run. One
         * interrupted spent it, as in a worker's death. */
        if (!item->started && st.b->unstarted != NULL)
            st.b->unstarted(item);
        item_free(item);
        st.count--;
        return;
    }
    struct outcome o = { .state = STATE_FAILED, .worker_pid = worker_pid, .error = reason };
    final(item, &o);
}

void
store_abandon(const char *why)
{
    if (st.b->shared_log)
        return;     /* the items are in the shared store: other instances take them */
    st.abandon_why = why;
    merge_take_all(abandon);    /* first: then no leader's end releases anything */
    /* What waits goes now; what runs is stopped first, as a cancel stops
     * it (its worker killed if it has not within QUEUE_STOP_WAIT_MS), and
     * goes when it has (on_cancelled). */
    queue_stop_all(abandon, cancel_grace, QUEUE_STOP_WAIT_MS);
}

void
store_hand_back(void)
{
    if (st.b->hand_back != NULL)
        st.b->hand_back();
}

int
store_handing_back(void)
{
    return st.b->handing_back != NULL && st.b->handing_back();
}

/* ---- the handover of an upgrade ------------------------------------------------ */

struct item *
store_take_waiting(void)
{
    return queue_take_waiting(1);
}

struct item *
store_take_sendable(void)
{
    return queue_take_waiting(0);
}

void
store_give_back(struct item *item)
{
    requeue(item);
    queue_dispatch();
}

void
store_keep_here(struct item *item)
{
    item->kept_here = 1;
    store_give_back(item);
}

void
store_handed_over(struct item *item, const char *note)
{
    if (st.b->forget != NULL)
        st.b->forget(item);
    struct outcome o = { .state = STATE_RETRYING, .error = note };
    publish(item, &o);
    forget(item);
    release(item);
}

/* ---- what backends ask ------------------------------------------------------------ */

uint32_t
store_local_room(void)
{
    return queue_local_room();
}

struct item *
store_held(uint64_t key)
{
    struct item *item = queue_find(key);
    return item != NULL ? item : merge_find(key);
}

pid_t
store_worker_pid(const struct item *item)
{
    return item->worker != NULL ? item->worker->pid : 0;
}

void
store_reattempt(struct item *item)
{
    queue_reattempt(item);
}

void
store_retime(struct item *item)
{
    queue_retime(item);
}

int
store_lost(struct item *item)
{
    if (!queue_take(item))
        return 0;
    store_dropped(item);
    return 1;
}

void
store_for_each(void (*fn)(const struct item *item, void *arg), void *arg)
{
    queue_for_each(fn, arg);
    merge_for_each(fn, arg);
}

void
store_room_available(void)
{
    if (st.room != NULL)
        st.room();
}

void
store_serving_changed(void)
{
    health_changed();
    if (st.serving_changed != NULL)
        st.serving_changed();
}

/* ---- state ---------------------------------------------------------------------- */

int
store_available(const char **why)
{
    return st.b->available == NULL || st.b->available(why);
}

int
store_serving(const char **why)
{
    return st.b->serving == NULL || st.b->serving(why);
}

int
store_starting(void)
{
    return st.b->starting != NULL && st.b->starting();
}

int
store_idle(void)
{
    return st.b->idle == NULL || st.b->idle();
}

void
store_drain(void)
{
    if (st.b->drain != NULL)
        st.b->drain();
}

int
store_taking(void)
{
    return st.b->taking != NULL && st.b->taking();
}

/* Not while the backend does not serve: a journal whose directory was
 * removed keeps nothing for the next start. */
int
store_keeps_abandoned(void)
{
    return st.b->keeps_abandoned && store_serving(NULL);
}

int
store_shared_log(void)
{
    return st.b->shared_log;
}

void
store_status_json(struct evbuffer *b)
{
    if (st.b->status_json != NULL)
        st.b->status_json(b);
    else
        evbuffer_add_printf(b, "\"cluster\":null,");  /* /status always names it */
}

void
store_metrics(struct evbuffer *b)
{
    if (st.b->metrics != NULL)
        st.b->metrics(b);
}

/* ---- known items a backend keeps --------------------------------------------------- */

int
store_items_remote(void)
{
    return st.b->get_items != NULL;
}

struct store_items_ask *
store_get_items(const struct store_items_query *q, store_items_fn *done, void *arg)
{
    return st.b->get_items(q, done, arg);
}

void
store_items_abort(struct store_items_ask *ask)
{
    st.b->items_abort(ask);
}

struct store_act_ask *
store_act(const struct store_act_query *q, store_act_fn *done, void *arg)
{
    return st.b->act(q, done, arg);
}

void
store_act_abort(struct store_act_ask *ask)
{
    st.b->act_abort(ask);
}

/* ---- start, reload, exit ---------------------------------------------------------- */

void
store_on_room(void (*fn)(void))
{
    st.room = fn;
}

void
store_on_serving_changed(void (*fn)(void))
{
    st.serving_changed = fn;
}

void
store_init(uint64_t *seq_start)
{
    const struct ds_config *c = gp.config;
    st.count = st.pending = 0;
    st.abandon_why = NULL;
    st.b = c->cluster.redis != NULL ? &store_redis
           : c->queue.journal != NULL ? &store_journal : &store_memory;
    queue_init(gp.base, &events, c->workers.prefetch);
    kind_gate_configure(c);
    items_init(gp.base);
    items_configure(c->items.retention_age_ms, c->items.retention_count,
                    c->items.retention_bytes);
    result_cache_init(gp.base);
    merge_init(&merge_ev, st.b == &store_redis ? &cache_redis
                          : st.b == &store_journal ? &cache_file : NULL);
    merge_configure(c);
    if (st.b->open != NULL)
        st.b->open(seq_start);
    if (st.b->seq_reserved != NULL)
        updates_on_reserve(st.b->seq_reserved);
}

void
store_start(void)
{
    merge_start();              /* cached results first: recovered items may hit them */
    if (st.b->start != NULL)
        st.b->start();
}

void
store_configure(const struct ds_config *old)
{
    const struct ds_config *c = gp.config;
    queue_set_prefetch(c->workers.prefetch);
    items_configure(c->items.retention_age_ms, c->items.retention_count,
                    c->items.retention_bytes);
    /* A backend is chosen once: switching would strand what the old one holds. */
    if (st.b != &store_journal && c->queue.journal != NULL)
        log_warn("queue.journal: set by this reload; it takes effect when the grpc process "
                 "next starts");
    if (st.b != &store_redis && c->cluster.redis != NULL)
        log_warn("cluster: set by this reload; it takes effect when the grpc process next "
                 "starts");
    if (st.b->configure != NULL)
        st.b->configure(old);
    merge_configure(c);         /* cache sizes and ttls, in place */
    kind_gate_configure(c);     /* per-kind limits and pause, in place */
    queue_dispatch();           /* what a raised limit or an unpause lets go */
}

void
store_shutdown(void)
{
    if (st.b->shutdown != NULL)
        st.b->shutdown();
    queue_shutdown(item_free);
    merge_shutdown(item_free);
    result_cache_shutdown();
    items_shutdown();
}
