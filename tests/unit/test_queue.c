/*
 * The queue and dispatch (src/grpc/queue.c) alone: a recording events
 * table stands in for the store, and fake workers (fake_worker.h) on
 * socketpairs read the IPC_ITEM frames and answer with IPC_UPDATE frames.
 * Prefetch weights, order, least loaded, retiring, a worker's exit, a
 * timeout, superseded updates, queue_stop_all and queue_local_room.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>

#include "core/clock.h"
#include "core/config.h"
#include "core/log.h"
#include "grpc/item.h"
#include "grpc/kind_gate.h"
#include "grpc/metrics.h"
#include "grpc/queue.h"

#include "fake_worker.h"

/* ---- the recording events table ------------------------------------------- */

enum rec_type { REC_UPDATE, REC_ENDED, REC_ATTEMPT_FAILED, REC_KILL, REC_TAKEN, REC_CANCELLED,
                REC_CANCEL_ASKED, REC_CANCEL_TAKEN, REC_RETRY_ASKED };

struct record {
    enum rec_type type;
    uint64_t key;
    uint32_t attempt;
    enum wire_state state;
    pid_t pid;
    uint32_t slot;
    float progress;
    char text[256];             /* error, reason, or the result as text */
    size_t result_len;
    int worker_listed;          /* PID was still in workers_list() then */
    uint64_t cpu_usec, max_rss_kib;
};

static struct {
    struct event_base *base;
    struct record r[256];
    size_t n;
    int draining;
    uint64_t dispatched;
    struct item *owned[256];    /* items the queue handed back: ours to free */
    size_t owned_n;
} rec;

static struct fake_worker w1, w2, w3;

static int
worker_listed(pid_t pid)
{
    for (const struct worker *w = workers_list(); w != NULL; w = w->next)
        if (w->pid == pid)
            return 1;
    return 0;
}

static struct record *
record_new(enum rec_type type, const struct item *item)
{
    assert_true(rec.n < sizeof rec.r / sizeof rec.r[0]);
    struct record *r = &rec.r[rec.n++];
    memset(r, 0, sizeof *r);
    r->type = type;
    if (item != NULL) {
        r->key = item->key;
        r->attempt = item->attempt;
    }
    return r;
}

static void
own(struct item *item)
{
    assert_true(rec.owned_n < sizeof rec.owned / sizeof rec.owned[0]);
    assert_null(item->worker);
    rec.owned[rec.owned_n++] = item;
}

static void
on_update(struct item *item, const struct outcome *o)
{
    struct record *r = record_new(REC_UPDATE, item);
    r->state = o->state;
    r->pid = o->worker_pid;
    r->progress = o->progress;
}

static void
on_ended(struct item *item, const struct outcome *o)
{
    struct record *r = record_new(REC_ENDED, item);
    r->state = o->state;
    r->cpu_usec = o->cpu_usec;
    r->max_rss_kib = o->max_rss_kib;
    r->pid = o->worker_pid;
    r->progress = o->progress;
    if (o->error != NULL)
        snprintf(r->text, sizeof r->text, "%s", o->error);
    if (o->result != NULL) {
        size_t n = o->result_len < sizeof r->text - 1 ? o->result_len : sizeof r->text - 1;
        memcpy(r->text, o->result, n);
        r->text[n] = '\0';
    }
    r->result_len = o->result_len;
    own(item);
}

static void
on_attempt_failed(struct item *item, pid_t worker_pid, const char *reason)
{
    struct record *r = record_new(REC_ATTEMPT_FAILED, item);
    r->pid = worker_pid;
    snprintf(r->text, sizeof r->text, "%s", reason);
    r->worker_listed = worker_listed(worker_pid);
    own(item);
}

static void
on_retry_asked(struct item *item, const struct outcome *o)
{
    struct record *r = record_new(REC_RETRY_ASKED, item);
    r->pid = o->worker_pid;
    r->cpu_usec = o->cpu_usec;
    r->max_rss_kib = o->max_rss_kib;
    snprintf(r->text, sizeof r->text, "%s", o->error);
    own(item);
}

static void
on_cancelled(struct item *item, pid_t worker_pid, const struct outcome *ran)
{
    struct record *r = record_new(REC_CANCELLED, item);
    r->pid = worker_pid;
    own(item);
}

static void
on_dispatched(void)
{
    rec.dispatched++;
}

static int
on_draining(void)
{
    return rec.draining;
}

static void
on_kill_worker(pid_t pid, uint32_t slot, const char *reason)
{
    struct record *r = record_new(REC_KILL, NULL);
    r->pid = pid;
    r->slot = slot;
    snprintf(r->text, sizeof r->text, "%s", reason);
}

static const struct queue_events events = {
    .update = on_update,
    .ended = on_ended,
    .attempt_failed = on_attempt_failed,
    .retry_asked = on_retry_asked,
    .cancelled = on_cancelled,
    .dispatched = on_dispatched,
    .draining = on_draining,
    .kill_worker = on_kill_worker,
};

/* The records of TYPE, in order, into OUT (at most MAX); how many. */
static size_t
records_of(enum rec_type type, struct record **out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < rec.n; i++)
        if (rec.r[i].type == type && n < max)
            out[n++] = &rec.r[i];
    return n;
}

static size_t
count_of(enum rec_type type)
{
    size_t n = 0;
    for (size_t i = 0; i < rec.n; i++)
        n += rec.r[i].type == type;
    return n;
}

struct count_arg {
    enum rec_type type;
    size_t count;
};

static int
has_records(void *arg)
{
    struct count_arg *a = arg;
    return count_of(a->type) >= a->count;
}

/* Run the loop until COUNT records of TYPE were made. */
static void
wait_records(struct fake_worker *w, enum rec_type type, size_t count)
{
    struct count_arg a = { .type = type, .count = count };
    fake_loop_until(rec.base, w, has_records, &a);
}

/* ---- fixtures ----------------------------------------------------------------- */

static struct item *
new_item(const char *id, int quick, uint32_t timeout_ms)
{
    static const uint8_t raw[] = { 0x0a, 0x01, 'x' };
    return item_make(raw, sizeof raw, id, "batch-1", "echo", 3, timeout_ms, quick);
}

static void
free_item(struct item *item)
{
    item_free(item);
}

static int
setup(void **state)
{
    log_open("stderr", DS_LOG_ERROR);
    memset(&rec, 0, sizeof rec);
    w1.fd = w2.fd = w3.fd = -1;
    rec.base = event_base_new();
    assert_non_null(rec.base);
    queue_init(rec.base, &events, 2);
    return 0;
}

static int
teardown(void **state)
{
    queue_shutdown(free_item);
    fake_close(&w1);
    fake_close(&w2);
    fake_close(&w3);
    for (size_t i = 0; i < rec.owned_n; i++)
        item_free(rec.owned[i]);
    event_base_free(rec.base);
    return 0;
}

/* ---- prefetch weights ------------------------------------------------------------ */

/* With prefetch 2 a worker holds 32 quick items (1/16 of a slot each). */
static void
test_prefetch_quick(void **state)
{
    fake_attach(&w1, 1001, 0);
    char id[32];
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof id, "q%d", i);
        queue_push(new_item(id, 1, 0));
    }
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 32);
    fake_settle(rec.base, &w1);
    assert_int_equal(w1.count, 32);
    assert_int_equal(queue_held(), 32);
    assert_int_equal(queue_waiting(), 8);
    assert_int_equal(queue_local_room(), 0);
    for (int i = 0; i < 32; i++) {
        snprintf(id, sizeof id, "q%d", i);
        assert_string_equal(w1.items[i].id, id);
        assert_string_equal(w1.items[i].kind, "echo");
        assert_int_equal(w1.items[i].attempt, 1);
        assert_int_equal(w1.items[i].raw_len, 3);
    }

    /* One ends: its room goes to the next waiting. */
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_SUCCEEDED, 0, "ok", 2);
    fake_wait_items(rec.base, &w1, 33);
    assert_string_equal(w1.items[32].id, "q32");
    assert_int_equal(count_of(REC_ENDED), 1);
    assert_int_equal(queue_waiting(), 7);
    assert_int_equal(queue_held(), 32);
}

/* With prefetch 2 a worker holds 2 full items. */
static void
test_prefetch_full(void **state)
{
    fake_attach(&w1, 1001, 0);
    queue_push(new_item("a", 0, 0));
    queue_push(new_item("b", 0, 0));
    queue_push(new_item("c", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 2);
    fake_settle(rec.base, &w1);
    assert_int_equal(w1.count, 2);
    assert_int_equal(queue_waiting(), 1);
    assert_int_equal(queue_held(), 2);

    /* A reload's prefetch applies at the next dispatch. */
    queue_set_prefetch(3);
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 3);
    assert_string_equal(w1.items[2].id, "c");
    assert_int_equal(queue_waiting(), 0);
}

/* A new item goes to the worker holding least. */
static void
test_least_loaded(void **state)
{
    fake_attach(&w1, 1001, 0);
    fake_attach(&w2, 1002, 1);
    queue_push(new_item("a", 0, 0));
    queue_dispatch();
    queue_push(new_item("b", 0, 0));
    queue_dispatch();
    fake_settle(rec.base, &w1);
    fake_settle(rec.base, &w2);
    assert_int_equal(w1.count, 1);
    assert_int_equal(w2.count, 1);
    struct fake_worker *has_a = strcmp(w1.items[0].id, "a") == 0 ? &w1 : &w2;
    struct fake_worker *has_b = has_a == &w1 ? &w2 : &w1;
    assert_string_equal(has_b->items[0].id, "b");

    /* a ends: its worker is the least loaded, c goes there. */
    fake_send_update(rec.base, has_a, has_a->items[0].key, 1, STATE_SUCCEEDED, 0, "", 0);
    wait_records(has_a, REC_ENDED, 1);
    queue_push(new_item("c", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, has_a, 2);
    assert_string_equal(has_a->items[1].id, "c");

    /* b ends: quick items go to its worker while it holds less. */
    fake_send_update(rec.base, has_b, has_b->items[0].key, 1, STATE_SUCCEEDED, 0, "", 0);
    wait_records(has_b, REC_ENDED, 2);
    queue_push(new_item("q1", 1, 0));
    queue_push(new_item("q2", 1, 0));
    queue_dispatch();
    fake_wait_items(rec.base, has_b, 3);
    fake_settle(rec.base, has_a);
    assert_string_equal(has_b->items[1].id, "q1");
    assert_string_equal(has_b->items[2].id, "q2");
    assert_int_equal(has_a->count, 2);
}

/* ---- order -------------------------------------------------------------------------- */

/* First in, first out; queue_push_front goes first. */
static void
test_order(void **state)
{
    /* Acceptance order (by key), also for an item pushed back: "d",
     * made (accepted) first and pushed back last, goes to the front. */
    queue_set_prefetch(4);
    struct item *d = new_item("d", 0, 0);
    queue_push(new_item("a", 0, 0));
    queue_push(new_item("b", 0, 0));
    queue_push(new_item("c", 0, 0));
    queue_push_front(d);
    assert_int_equal(queue_waiting(), 4);
    fake_attach(&w1, 1001, 0);      /* attaching dispatches */
    fake_wait_items(rec.base, &w1, 4);
    assert_string_equal(w1.items[0].id, "d");
    assert_string_equal(w1.items[1].id, "a");
    assert_string_equal(w1.items[2].id, "b");
    assert_string_equal(w1.items[3].id, "c");
    assert_int_equal(queue_waiting(), 0);
    assert_int_equal(queue_held(), 4);
    assert_true(rec.dispatched > 0);
}

/* ---- retiring ------------------------------------------------------------------------- */

static void
test_retire(void **state)
{
    queue_set_prefetch(1);
    fake_attach(&w1, 1001, 0);
    queue_push(new_item("a", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 1);

    /* Retiring: it keeps what it holds, and gets nothing new. */
    workers_retire(w1.pid);
    queue_push(new_item("b", 0, 0));
    queue_dispatch();
    fake_settle(rec.base, &w1);
    assert_false(w1.eof);
    assert_int_equal(w1.count, 1);
    assert_int_equal(queue_waiting(), 1);
    assert_int_equal(queue_local_room(), 0);

    fake_attach(&w2, 1002, 1);
    fake_wait_items(rec.base, &w2, 1);
    assert_string_equal(w2.items[0].id, "b");

    /* Once it holds nothing, its channel is closed (it exits). */
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_SUCCEEDED, 0, "r", 1);
    fake_wait_eof(rec.base, &w1);
    assert_int_equal(count_of(REC_ENDED), 1);
    const struct worker *w = workers_list();
    while (w != NULL && w->pid != w1.pid)
        w = w->next;
    assert_non_null(w);
    assert_null(w->channel);
    assert_int_equal(w->items_done, 1);

    /* Its exit then reports nothing, and forgets it. */
    workers_exited(w1.pid, "exited with status 0", 0, 0, NULL);
    assert_false(worker_listed(w1.pid));
    assert_int_equal(count_of(REC_ATTEMPT_FAILED), 0);

    /* An idle worker that retires is let go at once. */
    fake_attach(&w3, 1003, 2);
    workers_retire(w3.pid);
    fake_wait_eof(rec.base, &w3);
    assert_int_equal(w3.count, 0);
}

/* ---- a worker's exit -------------------------------------------------------------------- */

/* The item it ran spent its attempt; the ones it only held go back to the
 * front in their order; it is gone before anything is dispatched again. */
static void
test_exited(void **state)
{
    queue_set_prefetch(4);
    fake_attach(&w1, 1001, 0);
    const char *ids[] = { "a", "b", "c", "d", "e" };
    for (int i = 0; i < 5; i++)
        queue_push(new_item(ids[i], 0, 0));
    queue_push(new_item("f", 1, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 4);
    assert_int_equal(queue_waiting(), 2);

    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_STARTED, 0, NULL, 0);
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_PROGRESS, 0.25f, NULL, 0);
    wait_records(&w1, REC_UPDATE, 2);
    struct record *u[2];
    assert_int_equal(records_of(REC_UPDATE, u, 2), 2);
    assert_int_equal(u[0]->state, STATE_STARTED);
    assert_int_equal(u[0]->pid, w1.pid);
    assert_int_equal(u[1]->state, STATE_PROGRESS);
    assert_true(u[1]->progress > 0.24f && u[1]->progress < 0.26f);

    workers_exited(w1.pid, "killed by signal 9", 0, 0, NULL);
    struct record *f[4];
    assert_int_equal(records_of(REC_ATTEMPT_FAILED, f, 4), 1);
    assert_int_equal(f[0]->key, w1.items[0].key);
    assert_int_equal(f[0]->attempt, 1);
    assert_int_equal(f[0]->pid, w1.pid);
    assert_string_equal(f[0]->text, "killed by signal 9");
    assert_false(f[0]->worker_listed);
    assert_false(worker_listed(w1.pid));
    assert_int_equal(queue_held(), 0);
    assert_int_equal(queue_waiting(), 5);

    /* The next worker gets them in order, still at attempt 1. */
    fake_attach(&w2, 1002, 1);
    fake_wait_items(rec.base, &w2, 4);
    fake_settle(rec.base, &w2);
    assert_int_equal(w2.count, 4);
    for (int i = 0; i < 4; i++) {
        assert_string_equal(w2.items[i].id, ids[i + 1]);
        assert_int_equal(w2.items[i].attempt, 1);
        if (i < 3)
            assert_int_equal(w2.items[i].key, w1.items[i + 1].key);
    }
    assert_int_equal(queue_waiting(), 1);
}

/* The item the master says it was running spent its attempt, even without
 * a STARTED; what it wrote before it died counts. */
static void
test_exited_running_key(void **state)
{
    queue_set_prefetch(3);
    fake_attach(&w1, 1001, 0);
    queue_push(new_item("a", 0, 0));
    queue_push(new_item("b", 0, 0));
    queue_push(new_item("c", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 3);

    /* a's answer is in the socket, unread, when the exit is told. */
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_SUCCEEDED, 0, "done", 4);
    workers_exited(w1.pid, "killed by signal 11", w1.items[1].key, 1, NULL);
    struct record *e[2], *f[2];
    assert_int_equal(records_of(REC_ENDED, e, 2), 1);
    assert_int_equal(e[0]->key, w1.items[0].key);
    assert_int_equal(e[0]->state, STATE_SUCCEEDED);
    assert_string_equal(e[0]->text, "done");
    assert_int_equal(records_of(REC_ATTEMPT_FAILED, f, 2), 1);
    assert_int_equal(f[0]->key, w1.items[1].key);
    assert_string_equal(f[0]->text, "killed by signal 11");
    assert_int_equal(queue_waiting(), 1);

    /* A running key of another attempt spent nothing: c goes back. */
    fake_attach(&w2, 1002, 1);
    fake_wait_items(rec.base, &w2, 1);
    assert_string_equal(w2.items[0].id, "c");
    workers_exited(w2.pid, "killed by signal 9", w2.items[0].key, 2, NULL);
    assert_int_equal(count_of(REC_ATTEMPT_FAILED), 1);
    assert_int_equal(queue_waiting(), 1);
    assert_int_equal(queue_held(), 0);
}

/* ---- a timeout ------------------------------------------------------------------------------ */

static void
test_timeout(void **state)
{
    fake_attach(&w1, 1001, 3);
    queue_push(new_item("slow", 0, 20));
    queue_push(new_item("next", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 2);
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_STARTED, 0, NULL, 0);

    wait_records(&w1, REC_KILL, 1);
    struct record *k[2] = { NULL, NULL };
    assert_int_equal(records_of(REC_KILL, k, 2), 1);
    assert_int_equal(k[0]->pid, w1.pid);
    assert_int_equal(k[0]->slot, 3);
    assert_string_equal(k[0]->text, "item \"slow\" timed out");
    fake_settle(rec.base, &w1);
    assert_int_equal(count_of(REC_KILL), 1);    /* asked once */

    /* The master kills it and says so: the item timed out, whatever the
     * signal; the other goes back. */
    workers_exited(w1.pid, "killed by signal 9", 0, 0, NULL);
    struct record *f[2];
    assert_int_equal(records_of(REC_ATTEMPT_FAILED, f, 2), 1);
    assert_int_equal(f[0]->key, w1.items[0].key);
    assert_string_equal(f[0]->text, "timed out after 20 ms");
    assert_int_equal(queue_waiting(), 1);
}

/* ---- superseded updates ---------------------------------------------------------------------- */

static void
test_superseded_update_dropped(void **state)
{
    queue_set_prefetch(1);
    fake_attach(&w1, 1001, 0);
    queue_push(new_item("a", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 1);
    uint64_t key = w1.items[0].key;

    /* Another attempt's, or an item it does not hold: dropped. */
    fake_send_update(rec.base, &w1, key, 2, STATE_SUCCEEDED, 0, "old", 3);
    fake_send_update(rec.base, &w1, key, 0, STATE_STARTED, 0, NULL, 0);
    fake_send_update(rec.base, &w1, key + 1000, 1, STATE_FAILED, 0, "who?", 4);
    /* Then its own: a FAILED with its error. */
    fake_send_update(rec.base, &w1, key, 1, STATE_FAILED, 0, "handler said no", 15);
    wait_records(&w1, REC_ENDED, 1);
    fake_settle(rec.base, &w1);
    assert_int_equal(rec.n, 1);
    assert_int_equal(rec.r[0].type, REC_ENDED);
    assert_int_equal(rec.r[0].key, key);
    assert_int_equal(rec.r[0].state, STATE_FAILED);
    assert_string_equal(rec.r[0].text, "handler said no");
    assert_false(w1.eof);
    assert_int_equal(queue_held(), 0);
}

/* ---- queue_cancel ------------------------------------------------------------------------------ */

struct cancel_arg {
    const char *ids[8];
    int64_t grace_ms;
};

static int
cancel_match(const struct item *item, void *arg)
{
    struct cancel_arg *a = arg;
    for (size_t i = 0; i < 8 && a->ids[i] != NULL; i++)
        if (strcmp(a->ids[i], item->id) == 0)
            return 1;
    return 0;
}

static int64_t cancel_grace_value;

static int64_t
cancel_grace(const struct item *item)
{
    return cancel_grace_value;
}

static void
cancel_asked(const struct item *item, void *arg)
{
    record_new(REC_CANCEL_ASKED, item);
}

static void
cancel_taken(struct item *item, void *arg)
{
    assert_null(item->next);
    record_new(REC_CANCEL_TAKEN, item);
    own(item);
}

static const struct queue_cancel_ops cancel_ops = {
    .match = cancel_match, .grace_ms = cancel_grace, .asked = cancel_asked,
    .taken = cancel_taken,
};

static int
has_cancels(void *arg)
{
    struct fake_count_arg *a = arg;
    return a->w->cancel_count >= a->count;
}

/* ---- queue_reattempt ---------------------------------------------------------------------------- */

/*
 * A copy at a worker whose attempt moves on (cluster adoption) is renumbered
 * if not started: the worker is told (IPC_REATTEMPT naming the attempt it
 * was given), and its first update says which it ran: the new one (it had
 * not started), or the given one (it had), after which the other is
 * superseded; asked twice, the one it took before it started holds (a
 * second REATTEMPT it got after starting left an item stuck at its worker,
 * every update dropped). A cancel meanwhile names the given one; a worker's
 * death while it ran a renumbered one spends the attempt.
 */
static void
test_reattempt(void **state)
{
    queue_set_prefetch(6);
    fake_attach(&w1, 1001, 0);
    queue_push(new_item("a", 0, 0));
    queue_push(new_item("b", 0, 0));
    queue_push(new_item("c", 0, 0));
    queue_push(new_item("d", 0, 0));
    queue_push(new_item("e", 0, 0));
    queue_push(new_item("f", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 6);
    uint64_t ka = w1.items[0].key, kb = w1.items[1].key, kc = w1.items[2].key,
             kd = w1.items[3].key, ke = w1.items[4].key, kf = w1.items[5].key;

    /* d started (its STARTED came): nothing to tell; the same attempt: nothing. */
    fake_send_update(rec.base, &w1, kd, 1, STATE_STARTED, 0, NULL, 0);
    wait_records(&w1, REC_UPDATE, 1);
    struct item *d = queue_find(kd);
    d->attempt = 2;
    queue_reattempt(d);
    queue_reattempt(queue_find(kc));
    fake_settle(rec.base, &w1);
    assert_int_equal(w1.reattempt_count, 0);

    struct item *a = queue_find(ka), *b = queue_find(kb), *c = queue_find(kc);
    a->attempt = 3;
    queue_reattempt(a);
    b->attempt = 2;
    queue_reattempt(b);
    c->attempt = 2;
    queue_reattempt(c);
    fake_settle(rec.base, &w1);
    assert_int_equal(w1.reattempt_count, 3);
    assert_int_equal(w1.reattempts[0].key, ka);
    assert_int_equal(w1.reattempts[0].attempt, 1);
    assert_int_equal(w1.reattempts[0].new_attempt, 3);

    /* a had not started: it runs as 3; an update of 1 is then superseded. */
    fake_send_update(rec.base, &w1, ka, 3, STATE_STARTED, 0, NULL, 0);
    wait_records(&w1, REC_UPDATE, 2);
    fake_send_update(rec.base, &w1, ka, 1, STATE_FAILED, 0, "old", 3);
    fake_send_update(rec.base, &w1, ka, 3, STATE_SUCCEEDED, 0, "new", 3);
    wait_records(&w1, REC_ENDED, 1);
    struct record *e[4];
    assert_int_equal(records_of(REC_ENDED, e, 4), 1);
    assert_int_equal(e[0]->key, ka);
    assert_string_equal(e[0]->text, "new");

    /* b had started as given: it runs on as 1; an update of 2 is superseded. */
    fake_send_update(rec.base, &w1, kb, 1, STATE_STARTED, 0, NULL, 0);
    wait_records(&w1, REC_UPDATE, 3);
    fake_send_update(rec.base, &w1, kb, 2, STATE_FAILED, 0, "renumbered", 10);
    fake_send_update(rec.base, &w1, kb, 1, STATE_SUCCEEDED, 0, "given", 5);
    wait_records(&w1, REC_ENDED, 2);
    assert_int_equal(records_of(REC_ENDED, e, 4), 2);
    assert_int_equal(e[1]->key, kb);
    assert_string_equal(e[1]->text, "given");

    /* e, asked twice (1 -> 2, then 1 -> 3): the worker had taken the first
     * and started it before the second came. Its STARTED of 2 holds. */
    struct item *ei = queue_find(ke);
    ei->attempt = 2;
    queue_reattempt(ei);
    ei->attempt = 3;
    queue_reattempt(ei);
    fake_settle(rec.base, &w1);
    assert_int_equal(w1.reattempt_count, 5);
    assert_int_equal(w1.reattempts[4].attempt, 1);      /* named by the attempt given */
    assert_int_equal(w1.reattempts[4].new_attempt, 3);
    fake_send_update(rec.base, &w1, ke, 2, STATE_STARTED, 0, NULL, 0);
    wait_records(&w1, REC_UPDATE, 4);
    fake_send_update(rec.base, &w1, ke, 3, STATE_FAILED, 0, "not it", 6);
    fake_send_update(rec.base, &w1, ke, 2, STATE_SUCCEEDED, 0, "second", 6);
    wait_records(&w1, REC_ENDED, 3);
    assert_int_equal(records_of(REC_ENDED, e, 4), 3);
    assert_int_equal(e[2]->key, ke);
    assert_string_equal(e[2]->text, "second");

    /* f, asked 1 -> 2 and not answered: its worker's death running it as 2
     * spends the attempt (it ran), as one running as 1 would. */
    struct item *fi = queue_find(kf);
    fi->attempt = 2;
    queue_reattempt(fi);
    fake_settle(rec.base, &w1);

    /* c, asked and not answered: a cancel names the attempt given. */
    struct cancel_arg ca = { .ids = { "c" } };
    cancel_grace_value = 1000;
    queue_cancel(&cancel_ops, &ca);
    fake_settle(rec.base, &w1);
    assert_int_equal(w1.cancel_count, 1);
    assert_int_equal(w1.cancels[0].key, kc);
    assert_int_equal(w1.cancels[0].attempt, 1);

    /* The worker dies running f as renumbered: f and d (started) are spent,
     * c (asked to stop) is cancelled. */
    workers_exited(w1.pid, "killed by signal 9", kf, 2, NULL);
    assert_int_equal(count_of(REC_CANCELLED), 1);
    struct record *f[3];
    assert_int_equal(records_of(REC_ATTEMPT_FAILED, f, 3), 2);
    assert_true((f[0]->key == kd && f[1]->key == kf) || (f[0]->key == kf && f[1]->key == kd));
    assert_int_equal(queue_waiting(), 0);
    assert_int_equal(queue_held(), 0);
}

/* A waiting item whose due time moved waits for it; one that is due again
 * is ready; one at a worker is left where it is. queue_take() likewise. */
static void
test_retime(void **state)
{
    queue_set_prefetch(1);
    struct item *a = new_item("a", 0, 0), *b = new_item("b", 0, 0);
    queue_push(a);
    queue_push(b);
    assert_int_equal(queue_waiting(), 2);
    a->due_ns = (uint64_t)clock_wall_ns() + 3600ull * 1000000000;
    queue_retime(a);
    assert_int_equal(queue_waiting(), 1);
    assert_int_equal(queue_delayed(), 1);
    a->due_ns = (uint64_t)clock_wall_ns() - 1;
    queue_retime(a);
    assert_int_equal(queue_waiting(), 2);
    assert_int_equal(queue_delayed(), 0);

    fake_attach(&w1, 1001, 0);
    fake_wait_items(rec.base, &w1, 1);
    struct item *held = queue_find(w1.items[0].key);
    held->due_ns = (uint64_t)clock_wall_ns() + 3600ull * 1000000000;
    queue_retime(held);
    assert_int_equal(queue_held(), 1);
    assert_int_equal(queue_delayed(), 0);
    assert_ptr_equal(queue_find(w1.items[0].key)->worker, held->worker);

    /* queue_take: a waiting one (delayed too) is the caller's; a held one stays. */
    struct item *waiting = held == a ? b : a;
    waiting->due_ns = (uint64_t)clock_wall_ns() + 3600ull * 1000000000;
    queue_retime(waiting);
    assert_int_equal(queue_take(held), 0);
    assert_int_equal(queue_take(waiting), 1);
    own(waiting);
    assert_int_equal(queue_delayed(), 0);
    assert_int_equal(queue_waiting(), 0);
    assert_int_equal(queue_held(), 1);
}

/* The kind gate configured with HANDLERS for kind sleep (the previous
 * config freed); NULL: free it. */
static void
gate_configure(const char *handlers)
{
    static struct ds_config *config;
    if (config != NULL)
        config_free(config);
    config = NULL;
    if (handlers == NULL)
        return;
    char text[512], errors[1024];
    snprintf(text, sizeof text, "handlers:\n  echo: {builtin: echo}\n  sleep: {builtin: sleep, %s}\n",
             handlers);
    config = config_load_text("test.yaml", text, strlen(text), errors, sizeof errors);
    if (config == NULL)
        fail_msg("config: %s", errors);
    kind_gate_configure(config);
}

static uint64_t
sleep_parked(void)
{
    struct kind_gate_state s;
    kind_gate_state(metrics_kind("sleep")->kind, &s);
    return s.parked;
}

/* An item of a rate-limited kind that its gate released (taking the rate
 * token for it) but no worker took yet, re-timed to wait again
 * (queue_retime: cluster_take.c adopt_claimed()), gives that token back: once
 * due and let through again it takes one, one in all. Before, it had left
 * the first one spent and waited for a second (here a minute's refill).
 * The rate still holds: the next item of the kind finds no token. */
static void
test_retime_of_a_released_item_spends_one_token(void **state)
{
    static const uint8_t raw[] = { 0x0a, 0x01, 'x' };
    queue_set_prefetch(1);
    gate_configure("rate: 1/m, paused: on");    /* one token, the next a minute later */
    fake_attach(&w1, 1001, 0);
    struct item *a = item_make(raw, sizeof raw, "a", "batch-1", "sleep", 3, 0, 0);
    queue_push(a);
    queue_dispatch();
    assert_int_equal(sleep_parked(), 1);        /* paused */
    queue_push(new_item("e", 0, 0));            /* an echo fills w1 (prefetch 1) */
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 1);
    assert_string_equal(w1.items[0].id, "e");

    gate_configure("rate: 1/m");                /* unpaused; the same rate keeps its token */
    queue_dispatch();                           /* a is released with the token; w1 is full */
    assert_int_equal(sleep_parked(), 0);
    assert_int_equal(a->gate_slot, 1);
    assert_null(a->worker);

    a->due_ns = (uint64_t)clock_wall_ns() + 3600ull * 1000000000;
    queue_retime(a);                            /* it waits again */
    assert_int_equal(queue_delayed(), 1);
    assert_int_equal(a->gate_slot, 0);
    a->due_ns = (uint64_t)clock_wall_ns() - 1;
    queue_retime(a);                            /* due again */
    assert_int_equal(queue_delayed(), 0);

    /* e ends: a goes to w1 at once, on the token it gave back. */
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_SUCCEEDED, 0, "", 0);
    wait_records(&w1, REC_ENDED, 1);
    assert_int_equal(sleep_parked(), 0);
    assert_non_null(a->worker);
    fake_wait_items(rec.base, &w1, 2);
    assert_string_equal(w1.items[1].id, "a");

    /* One token spent in all: the next sleep item waits for the refill. */
    fake_send_update(rec.base, &w1, w1.items[1].key, 1, STATE_SUCCEEDED, 0, "", 0);
    wait_records(&w1, REC_ENDED, 2);
    queue_push(item_make(raw, sizeof raw, "b", "batch-1", "sleep", 3, 0, 0));
    queue_dispatch();
    assert_int_equal(sleep_parked(), 1);
    assert_int_equal(queue_held(), 0);
    gate_configure(NULL);
}

/* Highest priority first; a worker full of a low-priority item takes no
 * more, and the urgent item is next once it has room. */
static void
test_priority_dispatch(void **state)
{
    queue_set_prefetch(1);
    struct item *low = new_item("low", 0, 0), *high = new_item("high", 0, 0);
    struct item *mid = new_item("mid", 0, 0), *low2 = new_item("low2", 0, 0);
    low->priority = low2->priority = -1;
    high->priority = 10;
    mid->priority = 3;
    queue_push(low);
    queue_push(low2);
    queue_push(mid);
    fake_attach(&w1, 1001, 0);
    fake_wait_items(rec.base, &w1, 1);
    assert_string_equal(w1.items[0].id, "mid");
    queue_push(high);
    queue_dispatch();
    fake_settle(rec.base, &w1);
    assert_int_equal(w1.count, 1);              /* full: nothing more */
    fake_send_update(rec.base, &w1, mid->key, 1, STATE_SUCCEEDED, 1, "r", 1);
    fake_wait_items(rec.base, &w1, 2);
    assert_string_equal(w1.items[1].id, "high");
    assert_int_equal(queue_waiting(), 2);
}

/* What a handover refused is kept here (item->kept_here): it waits apart,
 * so that queue_take_waiting(0), a handover's take, never returns nor
 * walks it (ready or delayed), however often the handover takes; it is
 * still waiting (counted, found, cancelled, taken by a stop) and is
 * dispatched in its place among the items of its priority (acceptance
 * order: k is the oldest), as one given back to the queue was. */
static void
test_kept_items_wait_apart(void **state)
{
    queue_set_prefetch(1);
    struct item *k = new_item("k", 0, 0), *kd = new_item("kd", 0, 0);     /* the oldest */
    struct item *a = new_item("a", 0, 0), *b = new_item("b", 0, 0);
    struct item *h = new_item("h", 0, 0);
    queue_push(k);
    queue_push(kd);
    queue_push(a);
    queue_push(b);
    /* The handover takes k and kd, and the new instance refuses them. */
    assert_ptr_equal(queue_take_waiting(0), k);
    assert_ptr_equal(queue_take_waiting(0), kd);
    k->kept_here = kd->kept_here = 1;
    kd->due_ns = (uint64_t)clock_wall_ns() + 3600 * 1000000000ull;
    queue_push_front(kd);
    queue_push_front(k);
    assert_int_equal(queue_waiting(), 3);
    assert_int_equal(queue_delayed(), 1);
    assert_ptr_equal(queue_find(k->key), k);
    assert_ptr_equal(queue_find(kd->key), kd);
    /* Call after call, the take starts past them. */
    for (int round = 0; round < 3; round++) {
        assert_ptr_equal(queue_take_waiting(0), a);
        assert_ptr_equal(queue_take_waiting(0), b);
        assert_null(queue_take_waiting(0));
        queue_push_front(b);        /* a failed call gives them back */
        queue_push_front(a);
    }
    /* Workers take k first at its priority (the oldest), after a higher one. */
    h->priority = 1;
    queue_push(h);
    fake_attach(&w1, 1001, 0);
    fake_wait_items(rec.base, &w1, 1);
    assert_string_equal(w1.items[0].id, "h");
    fake_send_update(rec.base, &w1, h->key, 1, STATE_SUCCEEDED, 1, "r", 1);
    fake_wait_items(rec.base, &w1, 2);
    assert_string_equal(w1.items[1].id, "k");
    fake_send_update(rec.base, &w1, k->key, 1, STATE_SUCCEEDED, 1, "r", 1);
    fake_wait_items(rec.base, &w1, 3);
    assert_string_equal(w1.items[2].id, "a");
    /* A stop takes every waiting item, the kept too. */
    assert_ptr_equal(queue_take_waiting(1), b);
    assert_ptr_equal(queue_take_waiting(1), kd);
    assert_null(queue_take_waiting(1));
    own(b);
    own(kd);
}

/* A delayed item waits for its due time under the queue's one timer, then
 * is dispatched; a cancel finds delayed items too. */
static void
test_delayed(void **state)
{
    queue_set_prefetch(4);
    fake_attach(&w1, 1001, 0);
    struct item *later = new_item("later", 0, 0), *never = new_item("never", 0, 0);
    struct item *now = new_item("now", 0, 0), *past = new_item("past", 0, 0);
    uint64_t t = (uint64_t)clock_wall_ns();
    later->due_ns = t + 30 * 1000000ull;
    never->due_ns = t + 3600 * 1000000000ull;
    past->due_ns = t - 1;
    queue_push(later);
    queue_push(never);
    queue_push(now);
    queue_push(past);
    assert_int_equal(queue_delayed(), 2);
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 2);
    assert_string_equal(w1.items[0].id, "now");
    assert_string_equal(w1.items[1].id, "past");
    fake_wait_items(rec.base, &w1, 3);
    assert_string_equal(w1.items[2].id, "later");
    assert_true((uint64_t)clock_wall_ns() >= later->due_ns);
    assert_int_equal(queue_delayed(), 1);
    assert_non_null(queue_find(never->key));
    struct cancel_arg a = { .ids = { "never" } };
    queue_cancel(&cancel_ops, &a);
    assert_int_equal(queue_delayed(), 0);
    assert_int_equal(count_of(REC_CANCEL_TAKEN), 1);
    assert_int_equal(w1.count, 3);
}

/* Waiting items leave at once; held ones get IPC_CANCEL, their PROGRESS is
 * dropped and their end, whatever it says, is reported as cancelled. */
/* RETRYING from a worker: the handler asks for another attempt. The item
 * leaves the worker and is handed over with the error (up to its first
 * NUL); the next item is dispatched; a RETRYING
 * of a superseded attempt is dropped like any update; for an item being
 * cancelled it is an end like any other: CANCELLED. */
static void
test_retry_asked(void **state)
{
    queue_set_prefetch(1);
    fake_attach(&w1, 1001, 0);
    queue_push(new_item("a", 0, 0));
    queue_push(new_item("b", 0, 0));
    queue_push(new_item("c", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 1);
    uint64_t key = w1.items[0].key;

    fake_send_update(rec.base, &w1, key, 2, STATE_RETRYING, 0, "old", 3);
    fake_send_update(rec.base, &w1, key, 1, STATE_RETRYING, 0, "busy\0tail \xc3", 12);
    wait_records(&w1, REC_RETRY_ASKED, 1);
    fake_wait_items(rec.base, &w1, 2);
    fake_settle(rec.base, &w1);
    struct record *r[2];
    assert_int_equal(records_of(REC_RETRY_ASKED, r, 2), 1);
    assert_int_equal(r[0]->key, key);
    assert_int_equal(r[0]->attempt, 1);
    assert_int_equal(r[0]->pid, 1001);
    assert_string_equal(r[0]->text, "busy");
    assert_int_equal(count_of(REC_ENDED), 0);
    assert_int_equal(count_of(REC_ATTEMPT_FAILED), 0);
    assert_string_equal(w1.items[1].id, "b");
    assert_int_equal(queue_held(), 1);

    /* No error at all: still a retry, with an empty one. */
    fake_send_update(rec.base, &w1, w1.items[1].key, 1, STATE_RETRYING, 0, NULL, 0);
    wait_records(&w1, REC_RETRY_ASKED, 2);
    assert_int_equal(records_of(REC_RETRY_ASKED, r, 2), 2);
    assert_string_equal(r[1]->text, "");

    /* c, cancelled while it runs, then RETRYING: it ends CANCELLED. */
    fake_wait_items(rec.base, &w1, 3);
    cancel_grace_value = 60000;
    struct cancel_arg arg = { .ids = { "c" } };
    queue_cancel(&cancel_ops, &arg);
    fake_send_update(rec.base, &w1, w1.items[2].key, 1, STATE_RETRYING, 0, "busy", 4);
    wait_records(&w1, REC_CANCELLED, 1);
    assert_int_equal(count_of(REC_RETRY_ASKED), 2);
    assert_int_equal(queue_held(), 0);
    assert_false(w1.eof);
}

static void
test_cancel(void **state)
{
    fake_attach(&w1, 1001, 0);
    const char *ids[] = { "a", "b", "c", "d", "e" };
    for (int i = 0; i < 5; i++)
        queue_push(new_item(ids[i], 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 2);          /* a runs, b prefetched; c d e wait */
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_STARTED, 0, NULL, 0);
    wait_records(&w1, REC_UPDATE, 1);

    cancel_grace_value = 60000;
    struct cancel_arg arg = { .ids = { "a", "b", "c", "e", "nope" } };
    queue_cancel(&cancel_ops, &arg);
    assert_int_equal(count_of(REC_CANCEL_ASKED), 2);
    struct record *t[4];
    assert_int_equal(records_of(REC_CANCEL_TAKEN, t, 4), 2);
    assert_int_equal(queue_waiting(), 1);      /* d; the list is whole */
    assert_int_equal(queue_held(), 2);
    struct fake_count_arg ca = { .w = &w1, .count = 2 };
    fake_loop_until(rec.base, &w1, has_cancels, &ca);
    assert_int_equal(w1.cancels[0].key, w1.items[0].key);
    assert_int_equal(w1.cancels[1].key, w1.items[1].key);
    assert_int_equal(w1.cancels[0].attempt, 1);

    /* Asked again: no second frame, still counted as asked. */
    queue_cancel(&cancel_ops, &arg);
    assert_int_equal(count_of(REC_CANCEL_ASKED), 4);
    fake_settle(rec.base, &w1);
    assert_int_equal(w1.cancel_count, 2);

    /* a's PROGRESS is dropped; its SUCCEEDED ends it cancelled, as does
     * b's CANCELLED; then d is dispatched and runs as usual. */
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_PROGRESS, 0.5f, NULL, 0);
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_SUCCEEDED, 0, "late", 4);
    fake_send_update(rec.base, &w1, w1.items[1].key, 1, STATE_CANCELLED, 0, "dropped", 7);
    wait_records(&w1, REC_CANCELLED, 2);
    assert_int_equal(count_of(REC_UPDATE), 1);
    assert_int_equal(count_of(REC_ENDED), 0);
    fake_wait_items(rec.base, &w1, 3);
    assert_string_equal(w1.items[2].id, "d");
    fake_send_update(rec.base, &w1, w1.items[2].key, 1, STATE_SUCCEEDED, 0, "ok", 2);
    wait_records(&w1, REC_ENDED, 1);
    assert_int_equal(queue_held(), 0);
    assert_int_equal(queue_waiting(), 0);
    assert_false(w1.eof);
}

/* A handler that cannot be interrupted: its worker is killed at once; its
 * death ends the cancelled item (not a failed attempt), the prefetched one
 * goes back to the queue without spending an attempt. */
static void
test_cancel_kill(void **state)
{
    fake_attach(&w1, 1001, 2);
    queue_push(new_item("a", 0, 0));
    queue_push(new_item("b", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 2);
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_STARTED, 0, NULL, 0);
    wait_records(&w1, REC_UPDATE, 1);

    cancel_grace_value = -1;
    struct cancel_arg arg = { .ids = { "a" } };
    queue_cancel(&cancel_ops, &arg);
    struct record *k[2] = { NULL, NULL };
    assert_int_equal(records_of(REC_KILL, k, 2), 1);
    assert_int_equal(k[0]->pid, w1.pid);
    assert_int_equal(k[0]->slot, 2);
    fake_settle(rec.base, &w1);
    assert_int_equal(w1.cancel_count, 0);

    workers_exited(w1.pid, "killed by signal 9", w1.items[0].key, 1, NULL);
    struct record *c[2];
    assert_int_equal(records_of(REC_CANCELLED, c, 2), 1);
    assert_int_equal(c[0]->key, w1.items[0].key);
    assert_int_equal(count_of(REC_ATTEMPT_FAILED), 0);
    assert_int_equal(queue_waiting(), 1);
    fake_attach(&w2, 1002, 2);
    fake_wait_items(rec.base, &w2, 1);
    assert_string_equal(w2.items[0].id, "b");
    assert_int_equal(w2.items[0].attempt, 1);
}

/* ---- queue_stop_all, queue_local_room ---------------------------------------------------------- */

struct taken {
    char id[32];
    pid_t pid;
};
static struct taken taken[16];
static size_t taken_n;

static void
take_one(struct item *item, pid_t worker_pid)
{
    assert_true(taken_n < 16);
    assert_null(item->worker);
    snprintf(taken[taken_n].id, sizeof taken[taken_n].id, "%s", item->id);
    taken[taken_n++].pid = worker_pid;
    own(item);
}

static void
test_stop_all(void **state)
{
    taken_n = 0;
    queue_set_prefetch(2);
    fake_attach(&w1, 1001, 0);
    queue_push(new_item("a", 0, 0));
    queue_push(new_item("b", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 2);
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_STARTED, 0, NULL, 0);
    wait_records(&w1, REC_UPDATE, 1);
    fake_attach(&w2, 1002, 1);
    queue_push(new_item("c", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w2, 1);
    queue_push(new_item("d", 0, 0));
    queue_push(new_item("e", 1, 0));
    queue_dispatch();
    assert_int_equal(queue_waiting(), 1);       /* w2 holds c and d */

    /* A graceful stop's deadline: the waiting leave at once; what the
     * workers hold is asked to stop and stays until they answer. */
    rec.draining = 1;
    cancel_grace_value = 5000;
    queue_stop_all(take_one, cancel_grace, 300);
    assert_int_equal(taken_n, 1);
    assert_string_equal(taken[0].id, "e");
    assert_int_equal(taken[0].pid, 0);
    assert_int_equal(queue_waiting(), 0);
    assert_int_equal(queue_held(), 4);
    struct fake_count_arg ca = { .w = &w1, .count = 2 };
    fake_loop_until(rec.base, &w1, has_cancels, &ca);
    ca = (struct fake_count_arg){ .w = &w2, .count = 2 };
    fake_loop_until(rec.base, &w2, has_cancels, &ca);

    /* w1 answers: a was cancelled running, b before it started. */
    fake_send_update(rec.base, &w1, w1.items[0].key, 1, STATE_CANCELLED, 0, "x", 1);
    fake_send_update(rec.base, &w1, w1.items[1].key, 1, STATE_CANCELLED, 0, "y", 1);
    wait_records(&w1, REC_CANCELLED, 2);
    fake_wait_eof(rec.base, &w1);               /* holding nothing: let go */
    assert_int_equal(count_of(REC_KILL), 0);
    /* w2 does not answer: killed once the wait is over, not before. */
    wait_records(&w2, REC_KILL, 1);
    struct record *k[2];
    assert_int_equal(records_of(REC_KILL, k, 2), 1);
    assert_int_equal(k[0]->pid, 1002);
    assert_non_null(strstr(k[0]->text, "graceful stop's deadline"));
    workers_exited(1002, "killed", 0, 0, NULL);
    assert_int_equal(count_of(REC_CANCELLED), 4);
    assert_int_equal(queue_held(), 0);
    assert_int_equal(queue_waiting(), 0);       /* nothing went back to the queue */
}

static void
test_local_room(void **state)
{
    assert_int_equal(queue_local_room(), 0);        /* no worker */
    fake_attach(&w1, 1001, 0);
    assert_int_equal(queue_local_room(), 2 * ITEM_WEIGHT_FULL);
    /* What waits takes from the room. */
    struct item *q = new_item("q", 1, 0);
    uint64_t key = q->key;
    queue_push(q);
    assert_non_null(queue_find(key));
    assert_int_equal(queue_local_room(), 2 * ITEM_WEIGHT_FULL - ITEM_WEIGHT_QUICK);
    queue_push(new_item("f", 0, 0));
    assert_int_equal(queue_local_room(), ITEM_WEIGHT_FULL - ITEM_WEIGHT_QUICK);
    /* And so does what a worker holds. */
    queue_dispatch();
    assert_int_equal(queue_waiting(), 0);
    assert_int_equal(queue_held(), 2);
    assert_int_equal(queue_local_room(), ITEM_WEIGHT_FULL - ITEM_WEIGHT_QUICK);

    fake_attach(&w2, 1002, 1);
    assert_int_equal(queue_local_room(), 3 * ITEM_WEIGHT_FULL - ITEM_WEIGHT_QUICK);
    /* A retiring worker has no room. */
    workers_retire(w2.pid);
    assert_int_equal(queue_local_room(), ITEM_WEIGHT_FULL - ITEM_WEIGHT_QUICK);
    /* A reload's prefetch. */
    queue_set_prefetch(3);
    assert_int_equal(queue_local_room(), 2 * ITEM_WEIGHT_FULL - ITEM_WEIGHT_QUICK);
    /* More waiting than room: none. */
    for (int i = 0; i < 3; i++)
        queue_push(new_item("w", 0, 0));
    assert_int_equal(queue_local_room(), 0);
    /* queue_find sees waiting items and held ones alike. */
    assert_non_null(queue_find(key));
    assert_null(queue_find(key + 1000));
}

/* An end with a cost block carries it; a frame announcing one it is too
 * short for, or with unknown flags, is a protocol error: the worker is
 * killed. */
static void
test_update_cost(void **state)
{
    queue_set_prefetch(1);
    fake_attach(&w1, 1001, 0);
    queue_push(new_item("a", 0, 0));
    queue_push(new_item("b", 0, 0));
    queue_push(new_item("c", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w1, 1);

    uint8_t body[sizeof(struct ipc_cost) + 2];
    struct ipc_cost cost = { .cpu_usec = 1234567, .max_rss_kib = 89012 };
    memcpy(body, &cost, sizeof cost);
    memcpy(body + sizeof cost, "ok", 2);
    struct ipc_update u = { .key = w1.items[0].key, .attempt = 1, .state = STATE_SUCCEEDED,
                            .flags = IPC_UPDATE_COST, .progress = 1 };
    fake_send_update_frame(rec.base, &w1, &u, body, sizeof body);
    wait_records(&w1, REC_ENDED, 1);
    struct record *r[1] = { NULL };
    assert_int_equal(records_of(REC_ENDED, r, 1), 1);
    assert_string_equal(r[0]->text, "ok");
    assert_int_equal(r[0]->result_len, 2);
    assert_int_equal(r[0]->cpu_usec, 1234567);
    assert_int_equal(r[0]->max_rss_kib, 89012);

    fake_wait_items(rec.base, &w1, 2);
    memcpy(body + sizeof cost, "no", 2);
    u.key = w1.items[1].key;
    u.state = STATE_RETRYING;
    fake_send_update_frame(rec.base, &w1, &u, body, sizeof body);
    wait_records(&w1, REC_RETRY_ASKED, 1);
    assert_int_equal(records_of(REC_RETRY_ASKED, r, 1), 1);
    assert_string_equal(r[0]->text, "no");
    assert_int_equal(r[0]->cpu_usec, 1234567);

    /* The flag, and 8 bytes where 16 are announced. */
    fake_wait_items(rec.base, &w1, 3);
    u.key = w1.items[2].key;
    u.state = STATE_SUCCEEDED;
    fake_send_update_frame(rec.base, &w1, &u, body, 8);
    wait_records(&w1, REC_KILL, 1);
    assert_int_equal(records_of(REC_KILL, r, 1), 1);
    assert_int_equal(r[0]->pid, 1001);
    assert_string_equal(r[0]->text, "it broke the IPC protocol");
    assert_int_equal(count_of(REC_ENDED), 1);

    /* Flags nobody defined. */
    fake_attach(&w2, 1002, 1);
    queue_push(new_item("d", 0, 0));
    queue_dispatch();
    fake_wait_items(rec.base, &w2, 1);
    struct ipc_update odd = { .key = w2.items[0].key, .attempt = 1, .state = STATE_SUCCEEDED,
                              .flags = 0x80 };
    fake_send_update_frame(rec.base, &w2, &odd, "x", 1);
    wait_records(&w2, REC_KILL, 2);
    struct record *k[2] = { NULL, NULL };
    assert_int_equal(records_of(REC_KILL, k, 2), 2);
    assert_int_equal(k[1]->pid, 1002);
    assert_int_equal(count_of(REC_ENDED), 1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_prefetch_quick, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefetch_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_least_loaded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exited_running_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_superseded_update_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reattempt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retime, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retime_of_a_released_item_spends_one_token, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_retry_asked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_local_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_priority_dispatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delayed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kept_items_wait_apart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_cost, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
