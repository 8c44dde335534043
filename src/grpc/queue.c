/*
 * The queue and dispatch (queue.h says what it is). An item whose worker
 * dies, or that outlives its timeout (the worker is then killed), is
 * reported to the owner as a failed attempt; an update from an attempt
 * that is no longer the item's is dropped.
 */
#include "grpc/queue.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/utf8.h"
#include "core/wire.h"
#include "grpc/item.h"
#include "grpc/kind_gate.h"
#include "grpc/metrics.h"
#include "grpc/waitlist.h"
#include "ipc/channel.h"
#include "ipc/frame.h"

static struct {
    struct event_base *base;
    const struct queue_events *ev;
    uint32_t prefetch;          /* workers.prefetch */
    struct waitlist wait;       /* waiting for a worker, or for their due time */
    struct waitlist kept;       /* the same, of items kept here (item->kept_here): a
                                 * handover's take never walks them (queue_take_waiting) */
    struct event *due_timer;    /* one, for the earliest due time */
    uint64_t due_armed;         /* the due time it is armed for; 0: none */
    uint64_t held;              /* at workers */
    struct worker *workers;
    struct event *stop_timer;   /* a graceful stop's deadline: workers not done are killed */
    uint32_t stop_wait_ms;
} q;

const struct worker *
workers_list(void)
{
    return q.workers;
}

/* Parked items (at their kind's limit) wait too: for a drain, a handover
 * and /status they are queued items. */
uint64_t
queue_waiting(void)
{
    return q.wait.ready + q.kept.ready + kind_gate_parked();
}

uint64_t
queue_delayed(void)
{
    return q.wait.heap_count + q.kept.heap_count;
}

uint64_t
queue_held(void)
{
    return q.held;
}

/* ---- workers ------------------------------------------------------------- */

static struct worker *
worker_find(pid_t pid)
{
    for (struct worker *w = q.workers; w != NULL; w = w->next)
        if (w->pid == pid)
            return w;
    return NULL;
}

static void
on_item_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct item *item = w->head;
    if (item == NULL || w->timeout_key != 0)
        return;
    w->timeout_key = item->key;
    w->timeout_ms = item->timeout_ms;
    char id[300], short_id[48], trace[80];
    log_warn("item \"%s\" (attempt %u) timed out after %u ms on worker %ld; killing it%s",
             utf8_escape(id, sizeof id, item->id), item->attempt, item->timeout_ms,
             (long)w->pid, item_trace_note(item, trace, sizeof trace));
    /* The master logs this reason as it is. */
    char reason[96];
    snprintf(reason, sizeof reason, "item \"%s\" timed out",
             utf8_escape(short_id, sizeof short_id, item->id));
    q.ev->kill_worker(w->pid, w->slot, reason);
}

/* The worker's first item is the one running (or about to): time it. */
static void
worker_arm_timer(struct worker *w)
{
    evtimer_del(w->timer);
    if (w->head == NULL || w->head->timeout_ms == 0 || w->timeout_key != 0)
        return;
    struct timeval tv = clock_timeval_ms(w->head->timeout_ms);
    evtimer_add(w->timer, &tv);
}

static void
worker_send_item(struct worker *w, struct item *item)
{
    item->run_attempt = item->attempt;
    item->asked_attempt = 0;
    struct ipc_item head = { .key = item->key, .attempt = item->run_attempt,
                             .kind_len = (uint16_t)strlen(item->kind),
                             .id_len = (uint16_t)strlen(item->id) };
    struct iovec parts[4] = {
        { .iov_base = &head, .iov_len = sizeof head },
        { .iov_base = (void *)item->kind, .iov_len = head.kind_len },
        { .iov_base = (void *)item->id, .iov_len = head.id_len },
        { .iov_base = (void *)item->raw, .iov_len = item->raw_len },
    };
    channel_sendv(w->channel, IPC_ITEM, parts, 4);
    item->worker = w;
    item->next = NULL;
    if (w->tail != NULL)
        w->tail->next = item;
    else
        w->head = item;
    w->tail = item;
    w->held_weight += item->weight;
    q.held++;
    if (w->held++ == 0)
        worker_arm_timer(w);
}

/* Unlink ITEM from W's list; it must be there. */
static void
worker_remove(struct worker *w, struct item *item)
{
    struct item **pp = &w->head, *prev = NULL;
    while (*pp != item) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    *pp = item->next;
    if (w->tail == item)
        w->tail = prev;
    w->held--;
    q.held--;
    w->held_weight -= item->weight;
    item->next = NULL;
    item->worker = NULL;
    kind_gate_leave(item);      /* every end of an attempt passes here */
    if (prev == NULL) {
        w->timeout_key = 0;
        worker_arm_timer(w);
    }
}

/* Is W still asked to stop an item by a cancel? (What a graceful stop
 * asked has its own bound: q.stop_timer.) */
static int
worker_cancel_pending(const struct worker *w)
{
    for (const struct item *item = w->head; item != NULL; item = item->next)
        if (item->cancelling && !item->stop_asked)
            return 1;
    return 0;
}

/* W answered a cancel: the next one it owes gets a full wait again. */
static void
worker_cancel_answered(struct worker *w)
{
    evtimer_del(w->cancel_timer);
    if (!worker_cancel_pending(w)) {
        w->cancel_wait_ms = 0;
        return;
    }
    struct timeval tv = clock_timeval_ms(w->cancel_wait_ms);
    evtimer_add(w->cancel_timer, &tv);
}

static void
on_cancel_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    if (!worker_cancel_pending(w) || w->channel == NULL)
        return;
    log_warn("worker %ld did not stop a cancelled item within %u ms; killing it",
             (long)w->pid, w->cancel_wait_ms);
    q.ev->kill_worker(w->pid, w->slot, "a cancelled item did not stop");
}

static void
worker_free(struct worker *w)
{
    for (struct worker **pp = &q.workers; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    if (w->channel != NULL)
        channel_free(w->channel);
    event_free(w->timer);
    event_free(w->cancel_timer);
    free(w);
}

/* A retired worker holding nothing is let go: closing its channel ends it. */
static void
worker_maybe_release(struct worker *w)
{
    if ((w->retiring || (queue_waiting() == 0 && queue_delayed() == 0 &&
                         q.ev->draining())) && w->held == 0 &&
        w->channel != NULL) {
        channel_free(w->channel);
        w->channel = NULL;
    }
}

/*
 * Does ATTEMPT name ITEM's attempt at its worker? run_attempt, or, while it
 * was asked to renumber it (queue_reattempt: asked_attempt), any number
 * from run_attempt to asked_attempt: the worker took each REATTEMPT that
 * came before it started the item (a second one may have come after), and
 * attempts only grow. Its first update says which, and the worker renumbers
 * nothing it started: that one holds from then on.
 */
static int
worker_may_run(const struct item *item, uint32_t attempt)
{
    return attempt == item->run_attempt ||
           (item->asked_attempt != 0 && attempt > item->run_attempt &&
            attempt <= item->asked_attempt);
}

/* The same, for an update of ATTEMPT: from then on, the one it runs. */
static int
worker_runs(struct item *item, uint32_t attempt)
{
    if (!worker_may_run(item, attempt))
        return 0;
    item->run_attempt = attempt;
    item->asked_attempt = 0;
    return 1;
}

static int
on_worker_frame(void *arg, struct ipc_channel *ch, const struct ipc_header *h,
                const uint8_t *body, int fd)
{
    struct worker *w = arg;
    if (fd != -1)
        close(fd);
    struct ipc_update u;
    if (h->type != IPC_UPDATE || h->length < sizeof u) {
        log_error("worker %ld: unexpected %s frame of %u bytes", (long)w->pid,
                  ipc_type_name(h->type), h->length);
        return -1;
    }
    memcpy(&u, body, sizeof u);
    const uint8_t *rest = body + sizeof u;
    size_t rest_len = h->length - sizeof u;
    struct ipc_cost cost = { 0, 0 };
    if (u.flags & ~IPC_UPDATE_COST) {
        log_error("worker %ld: UPDATE frame with unknown flags 0x%x", (long)w->pid, u.flags);
        return -1;
    }
    if (u.flags & IPC_UPDATE_COST) {
        if (rest_len < sizeof cost) {
            log_error("worker %ld: UPDATE frame of %u bytes is too short for its cost block",
                      (long)w->pid, h->length);
            return -1;
        }
        memcpy(&cost, rest, sizeof cost);
        rest += sizeof cost;
        rest_len -= sizeof cost;
    }

    struct item *item = w->head;
    while (item != NULL && item->key != u.key)
        item = item->next;
    if (item == NULL || !worker_runs(item, u.attempt)) {
        log_debug("worker %ld: dropping an update of a superseded attempt", (long)w->pid);
        return 0;
    }
    struct outcome o = { .state = (enum wire_state)u.state, .worker_pid = w->pid,
                         .cpu_usec = cost.cpu_usec, .max_rss_kib = cost.max_rss_kib };
    char error[1024];
    if (u.state == STATE_SUCCEEDED) {
        o.result = rest;
        o.result_len = rest_len;
        o.progress = 1;
    } else if (u.state == STATE_FAILED || u.state == STATE_RETRYING ||
               u.state == STATE_CANCELLED) {
        /* Where a handler's error enters this process: cut between
         * characters (updates.c replaces whatever else is not UTF-8). */
        const char *text = (const char *)rest;
        size_t n = utf8_prefix(text, strnlen(text, rest_len), sizeof error - 1);
        memcpy(error, text, n);
        error[n] = '\0';
        o.error = error;
    }
    if (item->cancelling) {
        /* Asked to stop: its PROGRESS is dropped, and its end, whatever it
         * says, is CANCELLED (a graceful stop's: the store decides, see
         * queue_stop_all). Its STARTED is not: the handler did start (the
         * stop crossed it, or a quick item's STARTED waited in its
         * worker's batch), and a subscriber sees QUEUED, STARTED, then
         * the end, never an end after a start it was not told of. */
        switch (u.state) {
        case STATE_STARTED:
            item->started = 1;
            w->head_started_ms = clock_monotonic_ms();
            q.ev->update(item, &o);
            return 0;
        case STATE_PROGRESS:
            return 0;
        case STATE_SUCCEEDED:
        case STATE_FAILED:
        case STATE_CANCELLED:
        case STATE_RETRYING:
            worker_remove(w, item);
            worker_cancel_answered(w);
            q.ev->cancelled(item, w->pid, &o);
            w->items_done++;
            queue_dispatch();
            worker_maybe_release(w);
            return 0;
        default:
            log_error("worker %ld: update with invalid state %u", (long)w->pid, u.state);
            return -1;
        }
    }
    switch (u.state) {
    case STATE_STARTED:
        item->started = 1;
        w->head_started_ms = clock_monotonic_ms();
        q.ev->update(item, &o);
        return 0;
    case STATE_PROGRESS:
        o.progress = u.progress;
        q.ev->update(item, &o);
        return 0;
    case STATE_SUCCEEDED:
    case STATE_FAILED:
    case STATE_RETRYING: {
        worker_remove(w, item);
        if (u.state == STATE_RETRYING)
            q.ev->retry_asked(item, &o);        /* an attempt spent */
        else
            q.ev->ended(item, &o);
        w->items_done++;
        queue_dispatch();
        worker_maybe_release(w);
        return 0;
    }
    case STATE_CANCELLED:
        /* Only ever sent for an item it was asked to cancel. */
        log_error("worker %ld: CANCELLED for an item nobody cancelled", (long)w->pid);
        return -1;
    default:
        log_error("worker %ld: update with invalid state %u", (long)w->pid, u.state);
        return -1;
    }
}

static void
on_worker_close(void *arg, struct ipc_channel *ch, const char *reason)
{
    struct worker *w = arg;
    if (reason != NULL) {
        log_error("worker %ld: data channel closed: %s; killing it", (long)w->pid, reason);
        q.ev->kill_worker(w->pid, w->slot, "it broke the IPC protocol");
    }
    /* Its items wait for WORKER_EXITED, which says how it died. */
    channel_free(ch);
    w->channel = NULL;
}

void
workers_attach(pid_t pid, uint32_t slot, int fd)
{
    struct worker *w = ds_calloc(1, sizeof *w);
    char name[64];
    snprintf(name, sizeof name, "worker %ld", (long)pid);
    w->pid = pid;
    w->slot = slot;
    w->attached_ms = clock_monotonic_ms();
    w->timer = evtimer_new(q.base, on_item_timeout, w);
    w->cancel_timer = evtimer_new(q.base, on_cancel_timeout, w);
    w->channel = channel_new(q.base, fd, name, IPC_UPDATE_MAX, on_worker_frame,
                             on_worker_close, w);
    w->next = q.workers;
    q.workers = w;
    log_debug("worker %ld (slot %u) attached", (long)pid, slot);
    queue_dispatch();
}

void
workers_exited(pid_t pid, const char *reason, uint64_t running_key, uint32_t running_attempt,
               const struct ipc_cost *limit_cost)
{
    struct worker *w = worker_find(pid);
    if (w == NULL)
        return;
    metrics.worker_exits++;
    /* What it wrote before it died counts: read it first. */
    if (w->channel != NULL)
        channel_read_now(w->channel);
    char timed_out[96];
    snprintf(timed_out, sizeof timed_out, "timed out after %u ms", w->timeout_ms);
    uint64_t timeout_key = w->timeout_key;
    /* Reported in reverse: a retried item goes to the front of the queue,
     * so they keep their order there. prefetch bounds what a worker holds.
     * The worker is gone from the list before anything can dispatch. */
    struct item **held = ds_malloc((w->held + 1) * sizeof *held), *item;
    uint32_t n = 0;
    while ((item = w->head) != NULL) {
        worker_remove(w, item);
        held[n++] = item;
    }
    worker_free(w);
    while (n > 0) {
        item = held[--n];
        int running = item->key == running_key && worker_may_run(item, running_attempt);
        if (running && !item->started) {
            /* Its STARTED did not come (a quick item's waits in its
             * worker's batch, lost with it), but it ran: published before
             * its end or its RETRYING, as the worker would have. */
            struct outcome started = { .state = STATE_STARTED, .worker_pid = pid };
            item->started = 1;
            q.ev->update(item, &started);
        }
        if (item->cancelling) {
            q.ev->cancelled(item, pid, NULL);   /* asked to stop: it did, one way or another */
        } else if (running && limit_cost != NULL) {
            /* As exec's limits end an attempt: FAILED, not retried. */
            struct outcome o = { .state = STATE_FAILED, .worker_pid = pid, .error = reason,
                                 .cpu_usec = limit_cost->cpu_usec,
                                 .max_rss_kib = limit_cost->max_rss_kib };
            q.ev->ended(item, &o);
        } else if (item->key == timeout_key) {
            q.ev->attempt_failed(item, pid, timed_out);
        } else if (item->started || running) {
            q.ev->attempt_failed(item, pid, reason);
        } else {
            queue_push_front(item);     /* prefetched, never run: no attempt spent */
        }
    }
    free(held);
    queue_dispatch();
}

void
workers_retire(pid_t pid)
{
    struct worker *w = worker_find(pid);
    if (w == NULL)
        return;
    w->retiring = 1;
    worker_maybe_release(w);
}

void
workers_close_all(void)
{
    for (struct worker *w = q.workers; w != NULL; w = w->next)
        worker_maybe_release(w);
}

/* ---- the waiting list and dispatch ---------------------------------------- */

/* Is W running a full-weight item (for how long, nobody knows)? */
static int
busy_with_full(const struct worker *w)
{
    return w->head != NULL && w->head->started && w->head->weight == ITEM_WEIGHT_FULL;
}

/* The worker with most room for ITEM, or NULL if none has room. One running
 * a full-weight item comes last: what it is given waits for that item's
 * end, however long, while another worker may be emptying a batch of quick
 * ones. */
static struct worker *
least_loaded(const struct item *item)
{
    struct worker *best = NULL;
    int best_busy = 0;
    uint32_t capacity = q.prefetch * ITEM_WEIGHT_FULL;
    for (struct worker *w = q.workers; w != NULL; w = w->next) {
        if (w->channel == NULL || w->retiring || w->held_weight + item->weight > capacity)
            continue;
        int busy = busy_with_full(w);
        if (best == NULL || busy < best_busy ||
            (busy == best_busy && w->held_weight < best->held_weight)) {
            best = w;
            best_busy = busy;
        }
    }
    return best;
}

/* The list whose first item runs next: the highest priority, and at the
 * same priority the one accepted first (the smaller key), as if the kept
 * ones waited among the others. */
static struct waitlist *
next_list(void)
{
    struct item *a = waitlist_peek(&q.kept), *b = waitlist_peek(&q.wait);
    if (a == NULL || b == NULL)
        return a != NULL ? &q.kept : &q.wait;
    return a->priority > b->priority || (a->priority == b->priority && a->key < b->key) ?
           &q.kept : &q.wait;
}

void
queue_dispatch(void)
{
    struct worker *w;
    struct item *item;
    struct waitlist *from;
    kind_gate_release_ready();
    /* Highest priority first, and nothing of a lower one while it waits:
     * a worker with room for something else but not for it gets nothing.
     * An item its kind's limit holds back is parked by the gate, and the
     * next one is looked at. */
    while ((item = waitlist_peek(from = next_list())) != NULL &&
           (w = least_loaded(item)) != NULL) {
        item = waitlist_pop(from);
        if (kind_gate_admit(item))
            worker_send_item(w, item);
    }
    if (q.ev->draining())
        workers_close_all();
    q.ev->dispatched();
}

/* The timer is armed for the earliest due time (only when that changes:
 * a million delayed items are one timer). */
static void
arm_due_timer(void)
{
    uint64_t due = waitlist_next_due(&q.wait), kept_due = waitlist_next_due(&q.kept);
    if (kept_due != 0 && (due == 0 || kept_due < due))
        due = kept_due;
    if (due == q.due_armed)
        return;
    q.due_armed = due;
    if (due == 0) {
        evtimer_del(q.due_timer);
        return;
    }
    uint64_t now = (uint64_t)clock_wall_ns();
    /* Rounded up: a timer that fires a little early finds nothing due. */
    uint64_t ms = due > now ? (due - now + 999999) / 1000000 : 0;
    struct timeval tv = clock_timeval_ms(ms);
    evtimer_add(q.due_timer, &tv);
}

static void
on_due(evutil_socket_t fd, short what, void *arg)
{
    q.due_armed = 0;
    uint64_t now = (uint64_t)clock_wall_ns();
    size_t moved = waitlist_release_due(&q.wait, now) + waitlist_release_due(&q.kept, now);
    arm_due_timer();
    if (moved > 0)
        queue_dispatch();
}

/* ITEM waits for its due time, or for a worker. */
static void
wait_for(struct item *item, int front)
{
    struct waitlist *wl = item->kept_here ? &q.kept : &q.wait;
    if (item->due_ns != 0 && item->due_ns > (uint64_t)clock_wall_ns()) {
        waitlist_delay(wl, item);
        if (q.due_armed == 0 || item->due_ns < q.due_armed)
            arm_due_timer();
        return;
    }
    waitlist_push(wl, item, front);
}

void
queue_push(struct item *item)
{
    wait_for(item, 0);
}

void
queue_push_front(struct item *item)
{
    item->started = 0;
    wait_for(item, 1);
}

/* Then the parked ones, then the delayed: they leave without running (a
 * handover, a stop). Kept ones wait apart, so that a handover, which
 * leaves them here, never walks them: each call of one is O(1) (O(log n)
 * for a delayed item) however many are kept. */
struct item *
queue_take_waiting(int with_kept)
{
    struct item *item = waitlist_pop(&q.wait);
    if (item == NULL && with_kept)
        item = waitlist_pop(&q.kept);
    if (item == NULL)
        item = kind_gate_take_parked(with_kept);
    if (item == NULL) {
        item = waitlist_pop_delayed(&q.wait);
        if (item == NULL && with_kept)
            item = waitlist_pop_delayed(&q.kept);
        arm_due_timer();
    }
    if (item != NULL)
        kind_gate_leave_unstarted(item);
    return item;
}

/* Ask W to stop ITEM without waiting for it (GRACE_MS < 0: kill W now,
 * for KILL_WHY). */
static void
worker_ask_stop(struct worker *w, struct item *item, int64_t grace_ms, const char *kill_why)
{
    item->cancelling = 1;
    if (w->channel == NULL)
        return;         /* going already: its death ends the item (workers_exited) */
    if (grace_ms < 0) {
        q.ev->kill_worker(w->pid, w->slot, kill_why);
        return;
    }
    struct ipc_cancel c = { .key = item->key, .attempt = item->run_attempt };
    channel_send(w->channel, IPC_CANCEL, &c, sizeof c);
}

static void
on_stop_timeout(evutil_socket_t fd, short what, void *arg)
{
    for (struct worker *w = q.workers; w != NULL; w = w->next) {
        if (w->head == NULL)
            continue;
        log_warn("worker %ld did not stop its items within %u ms of the graceful stop's "
                 "deadline; killing it", (long)w->pid, q.stop_wait_ms);
        q.ev->kill_worker(w->pid, w->slot, "it did not stop its items at the graceful stop's "
                          "deadline");
    }
}

void
queue_stop_all(void (*taken)(struct item *item, pid_t worker_pid),
               int64_t (*grace_ms)(const struct item *item), uint32_t wait_ms)
{
    struct item *item;
    while ((item = queue_take_waiting(1)) != NULL)
        taken(item, 0);
    int held = 0;
    for (struct worker *w = q.workers; w != NULL; w = w->next) {
        int killed = 0;
        for (item = w->head; item != NULL; item = item->next) {
            held = 1;
            if (item->cancelling)
                continue;       /* a cancel asked it already: it ends CANCELLED */
            item->stop_asked = 1;
            if (killed) {
                item->cancelling = 1;   /* its worker's death ends it */
                continue;
            }
            int64_t grace = grace_ms(item);
            worker_ask_stop(w, item, grace, "its item cannot be interrupted and a graceful "
                            "stop reached its deadline");
            killed = grace < 0;
        }
    }
    if (held) {
        q.stop_wait_ms = wait_ms;
        struct timeval tv = clock_timeval_ms(wait_ms);
        evtimer_add(q.stop_timer, &tv);
    }
}

uint32_t
queue_local_room(void)
{
    uint64_t room = 0, capacity = q.prefetch * ITEM_WEIGHT_FULL;
    for (struct worker *w = q.workers; w != NULL; w = w->next)
        if (w->channel != NULL && !w->retiring && w->held_weight < capacity)
            room += capacity - w->held_weight;
    uint64_t ready_weight = q.wait.ready_weight + q.kept.ready_weight;
    return room > ready_weight ? (uint32_t)(room - ready_weight) : 0;
}

void
queue_for_each(void (*fn)(const struct item *item, void *arg), void *arg)
{
    waitlist_for_each(&q.kept, fn, arg);
    waitlist_for_each(&q.wait, fn, arg);
    kind_gate_for_each(fn, arg);
    for (struct worker *w = q.workers; w != NULL; w = w->next)
        for (struct item *item = w->head; item != NULL; item = item->next)
            fn(item, arg);
}

struct find {
    uint64_t key;
    struct item *found;
};

static void
match_key(const struct item *item, void *arg)
{
    struct find *f = arg;
    if (item->key == f->key)
        f->found = (struct item *)item;     /* ours: const only for the walkers */
}

struct item *
queue_find(uint64_t key)
{
    struct find f = { key, NULL };
    queue_for_each(match_key, &f);
    return f.found;
}

static int
is_item(const struct item *item, void *arg)
{
    return item == arg;
}

int
queue_take(struct item *item)
{
    struct item *taken = NULL, **tail = &taken;
    waitlist_take_matching(item->kept_here ? &q.kept : &q.wait, is_item, item, &taken);
    if (taken == NULL)
        kind_gate_take_matching(is_item, item, &tail);
    if (taken == NULL)
        return 0;       /* at a worker */
    arm_due_timer();
    kind_gate_leave_unstarted(item);    /* queue_retime(): its next release takes one */
    item->next = NULL;
    return 1;
}

void
queue_retime(struct item *item)
{
    if (!queue_take(item))
        return;
    wait_for(item, 1);  /* it passes its kind's gate again when due */
    queue_dispatch();   /* if it is due already */
}

void
queue_reattempt(struct item *item)
{
    struct worker *w = item->worker;
    if (w == NULL || w->channel == NULL || item->started || item->cancelling ||
        item->attempt == item->run_attempt)
        return;
    /* Named by the attempt given: a worker that renumbered it keeps that too. */
    struct ipc_reattempt r = { .key = item->key, .attempt = item->run_attempt,
                               .new_attempt = item->attempt };
    channel_send(w->channel, IPC_REATTEMPT, &r, sizeof r);
    item->asked_attempt = item->attempt;
}

/* Ask W to stop ITEM (GRACE_MS < 0: kill W now). */
static void
worker_cancel(struct worker *w, struct item *item, int64_t grace_ms)
{
    /* Its handler cannot be interrupted (or the worker is already going):
     * the worker's death ends it (workers_exited). */
    worker_ask_stop(w, item, grace_ms, "its item was cancelled and cannot be interrupted");
    if (grace_ms < 0 || w->channel == NULL)
        return;
    uint32_t wait_ms = (uint32_t)grace_ms + QUEUE_CANCEL_MARGIN_MS;
    if (wait_ms > w->cancel_wait_ms)
        w->cancel_wait_ms = wait_ms;
    if (!evtimer_pending(w->cancel_timer, NULL)) {
        struct timeval tv = clock_timeval_ms(w->cancel_wait_ms);
        evtimer_add(w->cancel_timer, &tv);
    }
}

void
queue_cancel(const struct queue_cancel_ops *ops, void *arg)
{
    for (struct worker *w = q.workers; w != NULL; w = w->next) {
        for (struct item *item = w->head; item != NULL; item = item->next) {
            if (!ops->match(item, arg))
                continue;
            if (!item->cancelling)
                worker_cancel(w, item, ops->grace_ms(item));
            ops->asked(item, arg);
        }
    }
    /* One sweep of the waiting and the delayed, then the parked; the
     * taken are ended after it, when the lists are whole again (ending
     * one may queue and dispatch more). */
    struct item *taken = NULL, **taken_tail = &taken;
    waitlist_take_matching(&q.kept, ops->match, arg, &taken);
    waitlist_take_matching(&q.wait, ops->match, arg, &taken);
    arm_due_timer();
    for (; *taken_tail != NULL; taken_tail = &(*taken_tail)->next)
        kind_gate_leave_unstarted(*taken_tail);     /* released by its kind's gate */
    kind_gate_take_matching(ops->match, arg, &taken_tail);     /* and the parked */
    while (taken != NULL) {
        struct item *item = taken;
        taken = item->next;
        item->next = NULL;
        ops->taken(item, arg);
    }
}

/* ---- the kind gate's way back ------------------------------------------------ */

/* FIRST.. (parked, in acceptance order) may run: each goes back to its
 * place among the items of its priority, by its key (ahead of those
 * accepted after it). In reverse, so that each lands at the head. */
static void
gate_released(struct item *first)
{
    struct item *chain[64], *item = first;
    while (item != NULL) {
        size_t n = 0;
        while (item != NULL && n < sizeof chain / sizeof chain[0]) {
            chain[n++] = item;
            item = item->next;
        }
        while (n > 0) {
            struct item *back = chain[--n];
            back->started = 0;
            waitlist_push(back->kept_here ? &q.kept : &q.wait, back, 1);
        }
    }
}

static void
for_each_held(void (*fn)(struct item *item, void *arg), void *arg)
{
    for (struct worker *w = q.workers; w != NULL; w = w->next)
        for (struct item *item = w->head; item != NULL; item = item->next)
            fn(item, arg);
}

static const struct kind_gate_ops gate_ops = {
    .release = gate_released,
    .dispatch = queue_dispatch,
    .for_each_held = for_each_held,
};

void
queue_init(struct event_base *base, const struct queue_events *events, uint32_t prefetch)
{
    memset(&q, 0, sizeof q);
    q.base = base;
    q.due_timer = evtimer_new(base, on_due, NULL);
    q.stop_timer = evtimer_new(base, on_stop_timeout, NULL);
    q.ev = events;
    q.prefetch = prefetch;
    kind_gate_init(base, &gate_ops);
}

void
queue_set_prefetch(uint32_t prefetch)
{
    q.prefetch = prefetch;
}

void
queue_shutdown(void (*fn)(struct item *item))
{
    struct item *item;
    while ((item = queue_take_waiting(1)) != NULL)
        fn(item);
    while (q.workers != NULL) {
        struct worker *w = q.workers;
        while ((item = w->head) != NULL) {
            worker_remove(w, item);
            fn(item);
        }
        worker_free(w);
    }
    kind_gate_shutdown();
    if (q.due_timer != NULL)
        event_free(q.due_timer);
    q.due_timer = NULL;
    if (q.stop_timer != NULL)
        event_free(q.stop_timer);
    q.stop_timer = NULL;
    waitlist_free(&q.wait);
    waitlist_free(&q.kept);
}
