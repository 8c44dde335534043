/*
 * The queue and dispatch: accepted items wait here until a worker has
 * room, run there, and leave when their final update is published.
 *
 * The queue's capacity counts every accepted item that is not final yet,
 * waiting or running. Each worker holds at most workers.prefetch items and
 * runs them in the order it got them; a new item goes to the worker
 * holding fewest. An item whose worker dies, or that outlives its timeout
 * (the worker is then killed), is RETRYING and queued again at the front,
 * until its max_attempts, then FAILED. An update from an attempt that is no
 * longer the item's is dropped.
 */
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
#include "grpc/cluster.h"
#include "grpc/grpc_process.h"
#include "grpc/journal.h"
#include "ipc/channel.h"

static struct {
    struct item *head, *tail;   /* waiting for a worker */
    uint64_t waiting;
    uint64_t waiting_weight;
    uint64_t count;             /* accepted and not final: waiting + held */
    uint64_t journaling;        /* valid, their ACCEPT being written (journal.c) */
    uint64_t next_key;
    struct worker *workers;
    const char *abandon_why;    /* set at a drain's deadline: see queue_abandon() */
} q;

/* ---- items --------------------------------------------------------------- */

struct item *
item_make(const uint8_t *raw, size_t raw_len, const char *id, const char *batch,
          const char *kind, uint32_t max_attempts, uint32_t timeout_ms, int quick)
{
    size_t id_len = strlen(id), batch_len = strlen(batch);
    struct item *item = ds_malloc(sizeof *item + raw_len + id_len + batch_len + 2);
    memset(item, 0, sizeof *item);
    char *p = item->data;
    if (raw_len > 0)
        memcpy(p, raw, raw_len);
    item->raw = (const uint8_t *)p;
    item->raw_len = (uint32_t)raw_len;
    p += raw_len;
    item->id = memcpy(p, id, id_len + 1);
    p += id_len + 1;
    item->batch = memcpy(p, batch, batch_len + 1);
    item->kind = metrics_kind(kind)->kind;
    item->key = ++q.next_key;
    item->attempt = 1;
    item->max_attempts = max_attempts;
    item->timeout_ms = timeout_ms;
    item->accepted_ns = clock_monotonic_ns();
    item->weight = quick ? ITEM_WEIGHT_QUICK : ITEM_WEIGHT_FULL;
    return item;
}

struct item *
item_new(const wire_work_item *msg, grpc_slice raw, const char *kind, uint32_t max_attempts,
         uint32_t timeout_ms, const char *assigned_id, int quick)
{
    /* Copied, not referenced: the slice gRPC received may be part of a
     * larger buffer, and its header costs as much as a small item. */
    struct item *item = item_make(GRPC_SLICE_START_PTR(raw), GRPC_SLICE_LENGTH(raw),
                                  assigned_id != NULL ? assigned_id : msg->id, msg->batch, kind,
                                  max_attempts, timeout_ms, quick);
    grpc_slice_unref(raw);
    return item;
}

void
item_free(struct item *item)
{
    free(item);
}

const struct worker *
workers_list(void)
{
    return q.workers;
}

uint64_t
queue_waiting(void)
{
    return q.waiting;
}

uint64_t
queue_count(void)
{
    return q.count + q.journaling;
}

int
queue_has_room(void)
{
    if (cluster_enabled())
        return cluster_has_room();
    return queue_count() < gp.config->queue.capacity;
}

void
queue_journaling(int delta)
{
    q.journaling += (uint64_t)(int64_t)delta;
}

void
queue_skip_keys(uint64_t key)
{
    if (key > q.next_key)
        q.next_key = key;
}

/* ---- workers ------------------------------------------------------------- */

static void dispatch(void);
static void queue_push_front(struct item *item);

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
    char id[300], short_id[48];
    log_warn("item \"%s\" (attempt %u) timed out after %u ms on worker %ld; killing it",
             utf8_escape(id, sizeof id, item->id), item->attempt, item->timeout_ms,
             (long)w->pid);
    /* The master logs this reason as it is. */
    char reason[96];
    int n = snprintf(reason, sizeof reason, "item \"%s\" timed out",
                     utf8_escape(short_id, sizeof short_id, item->id));
    struct ipc_worker msg = { .pid = w->pid, .slot = w->slot };
    char body[sizeof msg + sizeof reason];
    memcpy(body, &msg, sizeof msg);
    memcpy(body + sizeof msg, reason, (size_t)n);
    master_send(IPC_KILL_WORKER, body, sizeof msg + (size_t)n);
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
    struct ipc_item head = { .key = item->key, .attempt = item->attempt,
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
    w->held_weight -= item->weight;
    item->next = NULL;
    item->worker = NULL;
    if (prev == NULL) {
        w->timeout_key = 0;
        worker_arm_timer(w);
    }
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
    free(w);
}

/* A retired worker holding nothing is let go: closing its channel ends it. */
static void
worker_maybe_release(struct worker *w)
{
    /* While a handover is in flight its items may come back: keep workers. */
    if ((w->retiring || (gp.draining && q.waiting == 0 && !handover_active())) &&
        w->held == 0 && w->channel != NULL) {
        channel_free(w->channel);
        w->channel = NULL;
    }
}

void
item_finished(struct item *item, int succeeded)
{
    metrics_item_final(item->kind, succeeded, clock_monotonic_ns() - item->accepted_ns);
    item_free(item);
    q.count--;
    queue_room_available();
    grpc_process_check_done();
}

/* ITEM is final: with a journal or a cluster, published once written
 * there; else now. */
static void
item_final(struct item *item, enum wire_state state, pid_t worker_pid, const void *result,
           size_t result_len, const char *error)
{
    char too_large[128];
    if (result_len > DS_RESULT_SIZE_MAX) {
        /* Workers bound results by their handlers.max_result_size; this is
         * the bound under every config: no subscriber's client can take an
         * update with more. */
        snprintf(too_large, sizeof too_large, "result of %zu bytes exceeds %u bytes, the "
                 "most an update can carry", result_len, DS_RESULT_SIZE_MAX);
        state = STATE_FAILED;
        result = NULL;
        result_len = 0;
        error = too_large;
    }
    if (journal_final(item, state, worker_pid, result, result_len, error) ||
        cluster_final(item, state, worker_pid, result, result_len, error))
        return;
    updates_publish(item, state, worker_pid, result, result_len, error,
                    state == STATE_SUCCEEDED ? 1 : 0);
    item_finished(item, state == STATE_SUCCEEDED);
}

void
queue_fail_now(struct item *item, const char *error)
{
    q.count++;
    item_final(item, STATE_FAILED, 0, NULL, 0, error);
}

void
item_dropped(struct item *item)
{
    char id[300];
    log_debug("item \"%s\" (attempt %u) was taken over by another instance; dropping our copy",
              utf8_escape(id, sizeof id, item->id), item->attempt);
    item_free(item);
    q.count--;
    queue_room_available();
    grpc_process_check_done();
    dispatch();
}

/* Attempt failed for REASON: retry it or fail it. */
static void
item_attempt_failed(struct item *item, pid_t worker_pid, const char *reason)
{
    char error[512];
    if (item->attempt >= item->max_attempts) {
        snprintf(error, sizeof error, "%s (attempt %u of %u)", reason, item->attempt,
                 item->max_attempts);
        item_final(item, STATE_FAILED, worker_pid, NULL, 0, error);
        return;
    }
    metrics_kind(item->kind)->retried++;
    if (cluster_retry(item, worker_pid, reason))
        return;         /* queue_retry() follows once Redis has it */
    updates_publish(item, STATE_RETRYING, worker_pid, NULL, 0, reason, 0);
    item->attempt++;
    journal_attempt(item);
    queue_push_front(item);
}

/* Back to the front of the queue: its turn comes next. */
static void
queue_push_front(struct item *item)
{
    item->started = 0;
    item->next = q.head;
    q.head = item;
    if (q.tail == NULL)
        q.tail = item;
    q.waiting++;
    q.waiting_weight += item->weight;
}

void
queue_retry(struct item *item)
{
    queue_push_front(item);
    dispatch();
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

    struct item *item = w->head;
    while (item != NULL && item->key != u.key)
        item = item->next;
    if (item == NULL || item->attempt != u.attempt) {
        log_debug("worker %ld: dropping an update of a superseded attempt", (long)w->pid);
        return 0;
    }
    switch (u.state) {
    case STATE_STARTED:
        item->started = 1;
        updates_publish(item, STATE_STARTED, w->pid, NULL, 0, NULL, 0);
        return 0;
    case STATE_PROGRESS:
        updates_publish(item, STATE_PROGRESS, w->pid, NULL, 0, NULL, u.progress);
        return 0;
    case STATE_SUCCEEDED:
    case STATE_FAILED: {
        worker_remove(w, item);
        if (u.state == STATE_FAILED) {
            /* Where a handler's error enters this process: cut between
             * characters (updates.c replaces whatever else is not UTF-8). */
            char error[1024];
            const char *text = (const char *)rest;
            size_t n = utf8_prefix(text, strnlen(text, rest_len), sizeof error - 1);
            memcpy(error, text, n);
            error[n] = '\0';
            item_final(item, STATE_FAILED, w->pid, NULL, 0, error);
        } else {
            item_final(item, STATE_SUCCEEDED, w->pid, rest, rest_len, NULL);
        }
        w->items_done++;
        dispatch();
        worker_maybe_release(w);
        return 0;
    }
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
        struct ipc_worker msg = { .pid = w->pid, .slot = w->slot };
        char body[sizeof msg + 64];
        memcpy(body, &msg, sizeof msg);
        int n = snprintf(body + sizeof msg, 64, "it broke the IPC protocol");
        master_send(IPC_KILL_WORKER, body, sizeof msg + (size_t)n);
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
    w->timer = evtimer_new(gp.base, on_item_timeout, w);
    w->channel = channel_new(gp.base, fd, name, IPC_UPDATE_MAX, on_worker_frame,
                             on_worker_close, w);
    w->next = q.workers;
    q.workers = w;
    log_debug("worker %ld (slot %u) attached", (long)pid, slot);
    dispatch();
}

void
workers_exited(pid_t pid, const char *reason, uint64_t running_key, uint32_t running_attempt)
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
    /* Retry in reverse: each goes to the front of the queue, so they keep
     * their order there. prefetch bounds what a worker holds. */
    struct item **held = ds_malloc((w->held + 1) * sizeof *held), *item;
    uint32_t n = 0;
    while ((item = w->head) != NULL) {
        worker_remove(w, item);
        held[n++] = item;
    }
    while (n > 0) {
        item = held[--n];
        if (item->key == timeout_key)
            item_attempt_failed(item, pid, timed_out);
        else if (item->started ||
                 (item->key == running_key && item->attempt == running_attempt))
            item_attempt_failed(item, pid, reason);
        else
            queue_push_front(item);     /* prefetched, never run: no attempt spent */
    }
    free(held);
    worker_free(w);
    dispatch();
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

/* ---- dispatch ------------------------------------------------------------ */

/* The worker with most room for ITEM, or NULL if none has room. */
static struct worker *
least_loaded(const struct item *item)
{
    struct worker *best = NULL;
    uint32_t capacity = gp.config->workers.prefetch * ITEM_WEIGHT_FULL;
    for (struct worker *w = q.workers; w != NULL; w = w->next) {
        if (w->channel == NULL || w->retiring || w->held_weight + item->weight > capacity)
            continue;
        if (best == NULL || w->held_weight < best->held_weight)
            best = w;
    }
    return best;
}

static void
dispatch(void)
{
    struct worker *w;
    while (q.head != NULL && (w = least_loaded(q.head)) != NULL) {
        struct item *item = q.head;
        q.head = item->next;
        if (q.head == NULL)
            q.tail = NULL;
        q.waiting--;
        q.waiting_weight -= item->weight;
        worker_send_item(w, item);
    }
    if (gp.draining)
        workers_close_all();
    cluster_pull();
}

static void abandon(struct item *item, pid_t worker_pid);

void
queue_push(struct item *item)
{
    if (q.abandon_why != NULL) {
        q.count++;
        abandon(item, 0);   /* its ACCEPT was written after the deadline */
        return;
    }
    item->next = NULL;
    if (q.tail != NULL)
        q.tail->next = item;
    else
        q.head = item;
    q.tail = item;
    q.waiting++;
    q.waiting_weight += item->weight;
    q.count++;
    dispatch();
}

uint32_t
queue_local_room(void)
{
    uint64_t room = 0, capacity = gp.config->workers.prefetch * ITEM_WEIGHT_FULL;
    for (struct worker *w = q.workers; w != NULL; w = w->next)
        if (w->channel != NULL && !w->retiring && w->held_weight < capacity)
            room += capacity - w->held_weight;
    return room > q.waiting_weight ? (uint32_t)(room - q.waiting_weight) : 0;
}

void
queue_for_each(void (*fn)(const struct item *item, void *arg), void *arg)
{
    for (struct item *item = q.head; item != NULL; item = item->next)
        fn(item, arg);
    for (struct worker *w = q.workers; w != NULL; w = w->next)
        for (struct item *item = w->head; item != NULL; item = item->next)
            fn(item, arg);
}

static void
match_key(const struct item *item, void *arg)
{
    uint64_t *key = arg;
    if (item->key == *key)
        *key = 0;
}

int
queue_holds(uint64_t key)
{
    queue_for_each(match_key, &key);
    return key == 0;
}

/*
 * ITEM (counted in q.count, in no list) cannot run before the process
 * exits. With a journal it stays live there (no FINAL) and runs at the next
 * start, so it gets no final update now, only RETRYING saying so; without
 * one it is FAILED with the reason. Either way no subscriber is left
 * without word of it.
 */
static void
abandon(struct item *item, pid_t worker_pid)
{
    char reason[320];
    snprintf(reason, sizeof reason, "%s: %s", item->started ? "interrupted" : "not run",
             q.abandon_why);
    if (journal_enabled()) {
        char retry[400];
        snprintf(retry, sizeof retry, "%s; it stays in the queue journal and runs again at the "
                 "next start", reason);
        updates_publish(item, STATE_RETRYING, worker_pid, NULL, 0, retry, 0);
        item_free(item);
        q.count--;
        return;
    }
    item_final(item, STATE_FAILED, worker_pid, NULL, 0, reason);
}

struct item *
queue_take_waiting(void)
{
    struct item *item = q.head;
    if (item == NULL)
        return NULL;
    q.head = item->next;
    if (q.head == NULL)
        q.tail = NULL;
    q.waiting--;
    q.waiting_weight -= item->weight;
    item->next = NULL;
    return item;
}

void
queue_give_back(struct item *item)
{
    if (q.abandon_why != NULL) {
        abandon(item, 0);
        return;
    }
    queue_push_front(item);
    dispatch();
}

void
queue_handed_over(struct item *item, const char *note)
{
    journal_forget(item);
    updates_publish(item, STATE_RETRYING, 0, NULL, 0, note, 0);
    item_free(item);
    q.count--;
    queue_room_available();
    grpc_process_check_done();
}

void
queue_abandon(const char *why)
{
    if (cluster_enabled())
        return;     /* the cluster's items are in Redis: other instances claim them */
    q.abandon_why = why;
    struct item *item;
    while ((item = q.head) != NULL) {
        q.head = item->next;
        if (q.head == NULL)
            q.tail = NULL;
        q.waiting--;
        q.waiting_weight -= item->weight;
        abandon(item, 0);
    }
    for (struct worker *w = q.workers; w != NULL; w = w->next) {
        while ((item = w->head) != NULL) {
            worker_remove(w, item);
            abandon(item, item->started ? w->pid : 0);
        }
        worker_maybe_release(w);
    }
}

void
queue_init(void)
{
    memset(&q, 0, sizeof q);
}

void
queue_shutdown(void)
{
    struct item *item;
    while ((item = q.head) != NULL) {
        q.head = item->next;
        item_free(item);
    }
    while (q.workers != NULL) {
        struct worker *w = q.workers;
        while ((item = w->head) != NULL) {
            worker_remove(w, item);
            item_free(item);
        }
        worker_free(w);
    }
}
