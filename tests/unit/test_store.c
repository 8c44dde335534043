/*
 * The store over the memory backend (src/grpc/store.c, store_memory.c),
 * driven as the grpc process drives it: items go in through store_accept,
 * fake workers (fake_worker.h) run them through the real queue, and the
 * update log's listener hears what the store publishes. Accepting and
 * capacity, the retry-or-fail rule, a result too large for an update, a
 * handover, and a graceful stop's deadline (store_abandon).
 *
 * Runs with the real gp: gp.control is NULL, so what goes to the master
 * (a kill, a seq reservation) goes nowhere; gp.draining is 0.
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

#include "core/config.h"
#include "core/log.h"
#include "core/wire.h"
#include "grpc/grpc_process.h"
#include "grpc/item.h"
#include "grpc/queue.h"
#include "grpc/store.h"
#include "grpc/updates.h"

#include "fake_worker.h"

#define wire_update_unpack com__agrounds__dosomething__v1__update__unpack
#define wire_update_free   com__agrounds__dosomething__v1__update__free_unpacked

static const char config_yaml[] =
    "workers:\n"
    "  prefetch: 2\n"
    "queue:\n"
    "  capacity: 3\n"
    "  max_attempts: 2\n";

/* What the listener heard (a reference each) and the accept callbacks. */
static struct {
    struct update *updates[64];
    size_t n;
    struct {
        uint32_t index;
        enum store_verdict verdict;
        char id[64];
        uint64_t count_then;
    } accepts[16];
    size_t accepted;
    uint64_t rooms;
} heard;

static struct fake_worker w1, w2;

static void
listener(struct update *u)
{
    assert_true(heard.n < 64);
    heard.updates[heard.n++] = update_ref(u);
}

static void
on_room(void)
{
    heard.rooms++;
}

static void
accept_done(void *arg, uint32_t index, const struct item *item, enum store_verdict verdict,
            const char *why)
{
    assert_ptr_equal(arg, &heard);
    assert_true(heard.accepted < 16);
    heard.accepts[heard.accepted].index = index;
    heard.accepts[heard.accepted].verdict = verdict;
    heard.accepts[heard.accepted].count_then = store_count();
    snprintf(heard.accepts[heard.accepted].id, 64, "%s", item->id);
    heard.accepted++;
}

static int
setup(void **state)
{
    char errors[4096];
    log_open("stderr", DS_LOG_ERROR);
    memset(&heard, 0, sizeof heard);
    w1.fd = w2.fd = -1;
    gp.config = config_load_text("test.yaml", config_yaml, strlen(config_yaml), errors,
                                 sizeof errors);
    if (gp.config == NULL)
        fail_msg("config: %s", errors);
    gp.base = event_base_new();
    assert_non_null(gp.base);
    /* In the order grpc_process.c starts them. */
    store_on_room(on_room);
    updates_listen(listener);
    uint64_t seq_start = 0;
    store_init(&seq_start);
    updates_init(seq_start);
    store_start();
    return 0;
}

static int
teardown(void **state)
{
    store_shutdown();
    updates_shutdown();
    updates_listen(NULL);
    store_on_room(NULL);
    for (size_t i = 0; i < heard.n; i++)
        update_unref(heard.updates[i]);
    fake_close(&w1);
    fake_close(&w2);
    event_base_free(gp.base);
    gp.base = NULL;
    config_free(gp.config);
    gp.config = NULL;
    return 0;
}

/* ---- helpers ------------------------------------------------------------------ */

static struct item *
new_item(const char *id)
{
    static const uint8_t raw[] = { 0x0a, 0x01, 'x' };
    return item_make(raw, sizeof raw, id, "b", "echo", gp.config->queue.max_attempts, 0, 0);
}

static void
accept_item(const char *id, uint32_t index)
{
    store_accept(new_item(id), accept_done, &heard, index);
}

/* The Nth update heard, decoded: free with wire_update_free. */
static wire_update *
heard_update(size_t n)
{
    assert_true(n < heard.n);
    const struct update *u = heard.updates[n];
    wire_update *m = wire_update_unpack(NULL, GRPC_SLICE_LENGTH(u->encoded),
                                        GRPC_SLICE_START_PTR(u->encoded));
    assert_non_null(m);
    assert_int_equal(m->seq, u->seq);
    return m;
}

/* The Nth update heard is STATE for ID at ATTEMPT with ERROR (NULL: none). */
static void
assert_heard(size_t n, const char *id, enum wire_state state, uint32_t attempt,
             const char *error)
{
    wire_update *m = heard_update(n);
    assert_string_equal(m->item_id, id);
    assert_int_equal(m->state, state);
    assert_int_equal(m->attempt, attempt);
    assert_string_equal(m->error, error != NULL ? error : "");
    wire_update_free(m, NULL);
}

static int
heard_at_least(void *arg)
{
    return heard.n >= *(size_t *)arg;
}

/* Run the loop (W reading) until N updates were heard in all. */
static void
wait_heard(struct fake_worker *w, size_t n)
{
    fake_loop_until(gp.base, w, heard_at_least, &n);
}

/* ---- accepting, capacity, an item's life ------------------------------------------- */

static void
test_accept_and_run(void **state)
{
    assert_true(store_has_room());
    assert_false(store_shared_log());
    assert_false(store_keeps_abandoned());
    assert_true(store_idle());
    const char *why = NULL;
    assert_true(store_available(&why));
    assert_true(store_serving(&why));

    accept_item("a", 7);
    assert_int_equal(heard.accepted, 1);
    assert_int_equal(heard.accepts[0].index, 7);
    assert_int_equal(heard.accepts[0].verdict, STORE_ACCEPTED);
    assert_string_equal(heard.accepts[0].id, "a");
    /* Counted (as being written) when the caller hears it. */
    assert_int_equal(heard.accepts[0].count_then, 1);
    assert_int_equal(heard.n, 1);
    assert_heard(0, "a", STATE_QUEUED, 1, NULL);
    assert_int_equal(store_count(), 1);
    assert_int_equal(queue_waiting(), 1);

    accept_item("b", 8);
    accept_item("c", 9);
    assert_int_equal(store_count(), 3);
    assert_false(store_has_room());     /* queue.capacity 3 */
    assert_int_equal(heard.n, 3);

    fake_attach(&w1, 2001, 0);
    fake_wait_items(gp.base, &w1, 2);   /* prefetch 2 */
    assert_string_equal(w1.items[0].id, "a");
    assert_string_equal(w1.items[1].id, "b");
    assert_int_equal(store_local_room(), 0);
    assert_non_null(store_held(w1.items[0].key));

    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_STARTED, 0, NULL, 0);
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_PROGRESS, 0.5f, NULL, 0);
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_SUCCEEDED, 0, "out", 3);
    wait_heard(&w1, 6);
    assert_heard(3, "a", STATE_STARTED, 1, NULL);
    assert_heard(4, "a", STATE_PROGRESS, 1, NULL);
    wire_update *m = heard_update(5);
    assert_string_equal(m->item_id, "a");
    assert_int_equal(m->state, STATE_SUCCEEDED);
    assert_int_equal(m->worker_pid, w1.pid);
    assert_int_equal(m->result.len, 3);
    assert_memory_equal(m->result.data, "out", 3);
    assert_true(m->progress == 1.0f);
    wire_update_free(m, NULL);
    assert_int_equal(store_count(), 2);
    assert_true(store_has_room());
    assert_true(heard.rooms >= 1);
    assert_null(store_held(w1.items[0].key));

    /* c takes a's place; both end FAILED as their handler says. */
    fake_wait_items(gp.base, &w1, 3);
    fake_send_update(gp.base, &w1, w1.items[1].key, 1, STATE_FAILED, 0, "nope", 4);
    fake_send_update(gp.base, &w1, w1.items[2].key, 1, STATE_FAILED, 0, "nope", 4);
    wait_heard(&w1, 8);
    assert_heard(6, "b", STATE_FAILED, 1, "nope");
    assert_heard(7, "c", STATE_FAILED, 1, "nope");
    assert_int_equal(store_count(), 0);
    for (size_t i = 0; i < heard.n; i++)
        assert_int_equal(heard.updates[i]->seq, i + 1);
}

/* ---- the retry-or-fail rule ----------------------------------------------------------- */

static void
test_may_retry(void **state)
{
    struct item *item = item_make((const uint8_t *)"", 0, "r", "", "echo", 3, 0, 0);
    assert_true(store_may_retry(item, 1));
    assert_true(store_may_retry(item, 2));
    assert_false(store_may_retry(item, 3));
    assert_false(store_may_retry(item, 4));
    item_free(item);
}

/* An attempt spent without an answer runs again, first in line, until
 * max_attempts; then the item FAILED saying which attempt it was. */
static void
test_retry_then_fail(void **state)
{
    queue_set_prefetch(1);
    accept_item("a", 0);
    accept_item("b", 1);
    fake_attach(&w1, 2001, 0);
    fake_wait_items(gp.base, &w1, 1);
    assert_string_equal(w1.items[0].id, "a");
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_STARTED, 0, NULL, 0);
    wait_heard(&w1, 3);

    workers_exited(w1.pid, "killed by signal 9", 0, 0, NULL);
    fake_close(&w1);
    assert_int_equal(heard.n, 4);
    wire_update *m = heard_update(3);
    assert_string_equal(m->item_id, "a");
    assert_int_equal(m->state, STATE_RETRYING);
    assert_int_equal(m->attempt, 1);      /* the attempt that failed */
    assert_int_equal(m->worker_pid, 2001);
    assert_string_equal(m->error, "killed by signal 9");
    wire_update_free(m, NULL);
    assert_int_equal(store_count(), 2);
    assert_int_equal(queue_waiting(), 2);

    /* a runs again before b, at attempt 2. */
    fake_attach(&w2, 2002, 1);
    fake_wait_items(gp.base, &w2, 1);
    assert_string_equal(w2.items[0].id, "a");
    assert_int_equal(w2.items[0].attempt, 2);
    /* The master says it was running a (no STARTED came, lost with the
     * worker): its STARTED, then the last attempt's end. */
    workers_exited(w2.pid, "killed by signal 11", w2.items[0].key, 2, NULL);
    fake_close(&w2);
    assert_int_equal(heard.n, 6);
    assert_heard(4, "a", STATE_STARTED, 2, NULL);
    /* a poison item: every attempt's reason */
    assert_heard(5, "a", STATE_FAILED, 2,
                 "attempt 1: killed by signal 9; attempt 2: killed by signal 11 (attempt 2 of 2)");
    assert_int_equal(store_count(), 1);

    /* b never ran: its attempt is intact. */
    fake_attach(&w1, 2003, 0);
    fake_wait_items(gp.base, &w1, 1);
    assert_string_equal(w1.items[0].id, "b");
    assert_int_equal(w1.items[0].attempt, 1);
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_SUCCEEDED, 0, NULL, 0);
    wait_heard(&w1, 7);
    assert_heard(6, "b", STATE_SUCCEEDED, 1, NULL);
    assert_int_equal(store_count(), 0);
}

/* A result no update can carry fails its item. */
static void
test_result_too_large(void **state)
{
    accept_item("big", 0);
    fake_attach(&w1, 2001, 0);
    fake_wait_items(gp.base, &w1, 1);
    size_t len = DS_RESULT_SIZE_MAX + 1;
    char *result = calloc(1, len);
    assert_non_null(result);
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_SUCCEEDED, 0, result, len);
    free(result);
    wait_heard(&w1, 2);
    wire_update *m = heard_update(1);
    assert_int_equal(m->state, STATE_FAILED);
    assert_int_equal(m->result.len, 0);
    assert_int_equal(m->worker_pid, 2001);
    char expected[160];
    snprintf(expected, sizeof expected, "result of %zu bytes exceeds %u bytes, the most an "
             "update can carry", len, DS_RESULT_SIZE_MAX);
    assert_string_equal(m->error, expected);
    wire_update_free(m, NULL);
    assert_int_equal(store_count(), 0);
}

/* ---- a handover ------------------------------------------------------------------------------ */

static void
test_handover(void **state)
{
    accept_item("a", 0);
    accept_item("b", 1);
    uint64_t rooms = heard.rooms;

    /* Taken for the new instance: still counted until it has it. */
    struct item *a = store_take_waiting();
    assert_non_null(a);
    assert_string_equal(a->id, "a");
    assert_int_equal(store_count(), 2);
    assert_int_equal(queue_waiting(), 1);
    store_handed_over(a, "handed over to the new instance");
    assert_int_equal(heard.n, 3);
    assert_heard(2, "a", STATE_RETRYING, 1, "handed over to the new instance");
    assert_int_equal(store_count(), 1);
    assert_true(heard.rooms > rooms);

    /* Given back: first in line again. */
    accept_item("c", 2);
    struct item *b = store_take_waiting();
    assert_string_equal(b->id, "b");
    store_give_back(b);
    fake_attach(&w1, 2001, 0);
    fake_wait_items(gp.base, &w1, 2);
    assert_string_equal(w1.items[0].id, "b");
    assert_string_equal(w1.items[1].id, "c");
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_SUCCEEDED, 0, NULL, 0);
    fake_send_update(gp.base, &w1, w1.items[1].key, 1, STATE_SUCCEEDED, 0, NULL, 0);
    wait_heard(&w1, 6);
    assert_int_equal(store_count(), 0);
}

/* ---- a graceful stop's deadline ------------------------------------------------------------------ */

/*
 * Last: store_abandon() holds for the rest of the process (what is
 * accepted after it fails at once), and the store's state is the
 * process's own, not reset by store_init().
 */
static int
w1_has_cancels(void *arg)
{
    return w1.cancel_count >= *(size_t *)arg;
}

static void
test_abandon(void **state)
{
    accept_item("a", 0);
    accept_item("b", 1);
    accept_item("c", 2);
    fake_attach(&w1, 2001, 0);
    fake_wait_items(gp.base, &w1, 2);
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_STARTED, 0, NULL, 0);
    wait_heard(&w1, 4);

    store_abandon("the grpc process is stopping");
    /* The waiting one at once; what the worker holds is asked to stop
     * (IPC_CANCEL), and gets its last word once the worker answers. */
    assert_int_equal(store_count(), 2);
    assert_int_equal(queue_waiting(), 0);
    assert_int_equal(queue_held(), 2);
    assert_int_equal(heard.n, 5);
    assert_heard(4, "c", STATE_FAILED, 1, "not run: the grpc process is stopping");
    size_t cancels = 2;
    fake_loop_until(gp.base, &w1, w1_has_cancels, &cancels);
    assert_int_equal(w1.cancels[0].key, w1.items[0].key);
    assert_int_equal(w1.cancels[1].key, w1.items[1].key);
    /* A PROGRESS on the way is dropped; b was never started. */
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_PROGRESS, 0, NULL, 0);
    fake_send_update(gp.base, &w1, w1.items[1].key, 1, STATE_CANCELLED, 0,
                     "cancelled before it started", 27);
    wait_heard(&w1, 6);
    assert_heard(5, "b", STATE_FAILED, 1, "not run: the grpc process is stopping");
    assert_int_equal(store_count(), 1);
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_CANCELLED, 0,
                     "cancelled while running", 23);
    wait_heard(&w1, 7);
    assert_heard(6, "a", STATE_FAILED, 1, "interrupted: the grpc process is stopping");
    wire_update *m = heard_update(6);
    assert_int_equal(m->worker_pid, 2001);
    wire_update_free(m, NULL);
    assert_int_equal(store_count(), 0);
    assert_int_equal(queue_held(), 0);

    /* An item accepted after the deadline gets its last word at once. */
    accept_item("d", 3);
    assert_int_equal(heard.accepts[3].verdict, STORE_ACCEPTED);
    assert_int_equal(heard.n, 9);
    assert_heard(7, "d", STATE_QUEUED, 1, NULL);
    assert_heard(8, "d", STATE_FAILED, 1, "not run: the grpc process is stopping");
    assert_int_equal(store_count(), 0);

    /* A late answer of the worker finds nothing: dropped. */
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_SUCCEEDED, 0, NULL, 0);
    fake_settle(gp.base, &w1);
    assert_int_equal(heard.n, 9);
}

/* At a graceful stop's deadline, an item that ends by itself before the
 * stop reaches it keeps that end. */
static void
test_abandon_overtaken(void **state)
{
    accept_item("a", 0);
    fake_attach(&w1, 2001, 0);
    fake_wait_items(gp.base, &w1, 1);
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_STARTED, 0, NULL, 0);
    wait_heard(&w1, 2);
    store_abandon("the grpc process is stopping");
    assert_int_equal(store_count(), 1);
    fake_send_update(gp.base, &w1, w1.items[0].key, 1, STATE_SUCCEEDED, 0, "ok", 2);
    wait_heard(&w1, 3);
    wire_update *m = heard_update(2);
    assert_string_equal(m->item_id, "a");
    assert_int_equal(m->state, STATE_SUCCEEDED);
    assert_int_equal(m->result.len, 2);
    wire_update_free(m, NULL);
    assert_int_equal(store_count(), 0);
}

/* Known items: the store feeds the index, so a resent id is known while
 * queued and once final; retry runs a FAILED one again from attempt 1. */
static void
test_known_and_retry(void **state)
{
    assert_false(store_known("k1"));
    accept_item("k1", 0);
    assert_true(store_known("k1"));
    assert_int_equal(store_retry("k1"), STORE_RETRY_NOT_RETRYABLE);     /* queued */
    assert_int_equal(store_retry("nope"), STORE_RETRY_NOT_FOUND);
    store_fail(new_item("f1"), "boom");
    assert_true(store_known("f1"));
    size_t before = heard.n;
    assert_int_equal(store_retry("f1"), STORE_RETRY_REQUEUED);
    /* Published QUEUED like a new item, at attempt 1. */
    assert_int_equal(heard.n, before + 1);
    assert_int_equal(heard.updates[before]->state, STATE_QUEUED);
    assert_string_equal(heard.updates[before]->item_id, "f1");
    assert_int_equal(store_retry("f1"), STORE_RETRY_NOT_RETRYABLE);     /* queued again */
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_accept_and_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_may_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_then_fail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_result_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abandon, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abandon_overtaken, setup, teardown),
        cmocka_unit_test_setup_teardown(test_known_and_retry, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
