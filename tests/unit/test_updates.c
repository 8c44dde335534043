/*
 * The update log (src/grpc/updates.c): seqs, the ring bounded by
 * updates.history and updates.history_bytes, replay (updates_get,
 * updates_first_seq), a restart and what it lost, the listener, a new
 * updates.history, the seq reservation ahead of use, and what every
 * encoded Update holds (an error made valid UTF-8 and cut to
 * DS_UPDATE_ERROR_MAX). Runs with the real gp: gp.control is NULL, so
 * the reservation sent to the master goes nowhere.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/config.h"
#include "core/log.h"
#include "core/process.h"
#include "core/utf8.h"
#include "core/wire.h"
#include "grpc/grpc_process.h"
#include "grpc/item.h"
#include "grpc/updates.h"

#define wire_update_unpack com__agrounds__dosomething__v1__update__unpack
#define wire_update_free   com__agrounds__dosomething__v1__update__free_unpacked

static struct {
    uint64_t seqs[256];
    uint8_t states[256];
    size_t n;
    uint64_t reserved[8];
    uint64_t last_seq_at_reserve[8];
    size_t reserves;
} heard;

static struct item *item_a;

static void
listener(struct update *u)
{
    if (heard.n < 256) {
        heard.seqs[heard.n] = u->seq;
        heard.states[heard.n] = u->state;
    }
    heard.n++;
}

static void
on_reserve(uint64_t seq)
{
    assert_true(heard.reserves < 8);
    heard.reserved[heard.reserves] = seq;
    heard.last_seq_at_reserve[heard.reserves++] = updates_last_seq();
}

static int
setup(void **state)
{
    char errors[4096];
    log_open("stderr", DS_LOG_ERROR);
    gp.config = config_load_text("test.yaml", "", 0, errors, sizeof errors);
    if (gp.config == NULL)
        fail_msg("config: %s", errors);
    memset(&heard, 0, sizeof heard);
    updates_listen(listener);
    updates_on_reserve(on_reserve);
    static const uint8_t raw[] = { 0x0a, 0x01, 'a' };
    item_a = item_make(raw, sizeof raw, "item-a", "batch-a", "echo", 3, 0, 0);
    return 0;
}

static int
teardown(void **state)
{
    updates_shutdown();
    updates_listen(NULL);
    updates_on_reserve(NULL);
    item_free(item_a);
    config_free(gp.config);
    gp.config = NULL;
    return 0;
}

/* The Update as a subscriber would parse it: free with wire_update_free. */
static wire_update *
decode(const struct update *u)
{
    wire_update *m = wire_update_unpack(NULL, GRPC_SLICE_LENGTH(u->encoded),
                                        GRPC_SLICE_START_PTR(u->encoded));
    assert_non_null(m);
    return m;
}

static void
publish(enum wire_state state, const char *error)
{
    struct outcome o = { .state = state, .worker_pid = 42, .error = error };
    updates_publish(item_a, &o);
}

static void
publish_result(size_t len)
{
    uint8_t *result = calloc(1, len);
    assert_non_null(result);
    struct outcome o = { .state = STATE_SUCCEEDED, .result = result, .result_len = len,
                         .progress = 1 };
    updates_publish(item_a, &o);
    free(result);
}

/* The seqs retained are exactly FIRST..LAST, and updates_get finds each. */
static void
assert_retained(uint64_t first, uint64_t last)
{
    assert_int_equal(updates_first_seq(), first);
    assert_int_equal(updates_last_seq(), last);
    for (uint64_t s = first; s <= last; s++) {
        struct update *u = updates_get(s);
        assert_non_null(u);
        assert_int_equal(u->seq, s);
    }
    assert_null(updates_get(first - 1));
    assert_null(updates_get(last + 1));
}

/* ---- seqs, replay, the listener ------------------------------------------- */

static void
test_seqs_from_start(void **state)
{
    updates_init(100);
    assert_int_equal(updates_last_seq(), 100);
    assert_int_equal(updates_origin_seq(), 101);
    assert_int_equal(updates_first_seq(), 101);     /* none retained */
    assert_null(updates_get(100));
    assert_null(updates_get(101));

    const enum wire_state states[] = { STATE_QUEUED, STATE_STARTED, STATE_PROGRESS,
                                       STATE_RETRYING, STATE_SUCCEEDED };
    for (int i = 0; i < 5; i++)
        publish(states[i], states[i] == STATE_RETRYING ? "worker died" : NULL);
    assert_retained(101, 105);

    /* The listener heard each, in order. */
    assert_int_equal(heard.n, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(heard.seqs[i], 101 + i);
        assert_int_equal(heard.states[i], states[i]);
    }

    /* What a replay sends is the Update as published. */
    struct update *u = updates_get(104);
    assert_string_equal(u->item_id, "item-a");
    assert_string_equal(u->kind, "echo");
    assert_string_equal(u->batch, "batch-a");
    wire_update *m = decode(u);
    assert_int_equal(m->seq, 104);
    assert_string_equal(m->item_id, "item-a");
    assert_string_equal(m->kind, "echo");
    assert_string_equal(m->batch, "batch-a");
    assert_int_equal(m->state, STATE_RETRYING);
    assert_string_equal(m->error, "worker died");
    assert_int_equal(m->attempt, 1);
    assert_int_equal(m->worker_pid, 42);
    assert_true(m->time_unix_nano > 0);
    wire_update_free(m, NULL);

    /* A reference outlives the ring's. */
    struct update *kept = update_ref(updates_get(101));
    updates_shutdown();
    updates_init(0);
    assert_int_equal(kept->seq, 101);
    assert_int_equal(kept->refs, 1);
    update_unref(kept);
}

/* ---- the ring's bounds ---------------------------------------------------------- */

static void
test_ring_history(void **state)
{
    gp.config->updates.history = 3;
    updates_init(0);
    for (int i = 0; i < 5; i++)
        publish(STATE_PROGRESS, NULL);
    assert_retained(3, 5);
    assert_int_equal(heard.n, 5);
    publish(STATE_SUCCEEDED, NULL);
    assert_retained(4, 6);
}

static void
test_ring_history_bytes(void **state)
{
    gp.config->updates.history_bytes = 10000;
    updates_init(0);
    for (int i = 0; i < 6; i++)
        publish_result(3000);
    /* Three of about 3 KB fit in 10000 bytes, four do not. */
    assert_retained(4, 6);
    size_t bytes = 0;
    for (uint64_t s = 4; s <= 6; s++)
        bytes += GRPC_SLICE_LENGTH(updates_get(s)->encoded);
    assert_true(bytes <= 10000);
    assert_true(bytes + GRPC_SLICE_LENGTH(updates_get(6)->encoded) > 10000);

    /* One larger than the bound alone: the newest is always kept. */
    publish_result(20000);
    assert_retained(7, 7);
    assert_true(GRPC_SLICE_LENGTH(updates_get(7)->encoded) > 20000);
    /* And a small one after it drops it only if both do not fit. */
    publish(STATE_QUEUED, NULL);
    assert_retained(8, 8);
    publish(STATE_QUEUED, NULL);
    assert_retained(8, 9);
    assert_int_equal(heard.n, 9);
}

/* A new updates.history keeps the newest. */
static void
test_configure(void **state)
{
    gp.config->updates.history = 5;
    updates_init(0);
    for (int i = 0; i < 5; i++)
        publish(STATE_PROGRESS, NULL);
    assert_retained(1, 5);

    gp.config->updates.history = 2;
    updates_configure();
    assert_retained(4, 5);
    publish(STATE_PROGRESS, NULL);
    assert_retained(5, 6);

    gp.config->updates.history = 10;
    updates_configure();
    assert_retained(5, 6);
    for (int i = 0; i < 10; i++)
        publish(STATE_PROGRESS, NULL);
    assert_retained(7, 16);

    /* The same size again changes nothing. */
    updates_configure();
    assert_retained(7, 16);

    /* Growing a ring that wrapped keeps the order. */
    gp.config->updates.history = 3;
    updates_configure();
    publish(STATE_PROGRESS, NULL);
    publish(STATE_PROGRESS, NULL);     /* the ring of 3 has wrapped */
    assert_retained(16, 18);
    gp.config->updates.history = 7;
    updates_configure();
    assert_retained(16, 18);
    for (uint64_t s = 16; s <= 18; s++)
        assert_int_equal(updates_get(s)->seq, s);
    assert_int_equal(heard.n, 18);
}

/* ---- a restart ------------------------------------------------------------------- */

static void
test_restart_and_lost(void **state)
{
    updates_init(0);
    publish(STATE_QUEUED, NULL);
    publish(STATE_QUEUED, NULL);
    publish(STATE_QUEUED, NULL);
    assert_null(updates_lost(2));

    updates_restart(1000, 500, "the stream was trimmed");
    assert_int_equal(updates_last_seq(), 1000);
    assert_int_equal(updates_origin_seq(), 500);
    assert_int_equal(updates_first_seq(), 1001);
    assert_null(updates_get(3));
    assert_null(updates_get(1000));
    assert_string_equal(updates_lost(1), "the stream was trimmed");
    assert_string_equal(updates_lost(1000), "the stream was trimmed");
    assert_null(updates_lost(1001));

    publish(STATE_STARTED, NULL);
    assert_retained(1001, 1001);
    assert_int_equal(heard.seqs[3], 1001);

    /* A restart that lost nothing says nothing of the seqs past the old loss. */
    updates_restart(2000, 1, NULL);
    assert_null(updates_lost(1500));
    assert_int_equal(updates_first_seq(), 2001);
}

/* Seqs are reserved at the master before they are used. */
static void
test_reserve_ahead(void **state)
{
    gp.config->updates.history = 4;
    updates_init(7);
    for (uint64_t i = 0; i < SEQ_RESERVE_CHUNK / 2; i++)
        publish(STATE_PROGRESS, NULL);
    assert_int_equal(heard.reserves, 0);
    publish(STATE_PROGRESS, NULL);
    assert_int_equal(heard.reserves, 1);
    assert_int_equal(heard.reserved[0], 7 + 2 * SEQ_RESERVE_CHUNK);
    /* Reserved while the newest seq used was still half a chunk short. */
    assert_int_equal(heard.last_seq_at_reserve[0], 7 + SEQ_RESERVE_CHUNK / 2);
    assert_retained(7 + SEQ_RESERVE_CHUNK / 2 - 2, 7 + SEQ_RESERVE_CHUNK / 2 + 1);
}

/* ---- what is encoded -------------------------------------------------------------- */

static char *
error_of(uint64_t seq)
{
    wire_update *m = decode(updates_get(seq));
    char *error = strdup(m->error);
    wire_update_free(m, NULL);
    return error;
}

static void
test_error_sanitized_and_cut(void **state)
{
    updates_init(0);

    /* Invalid bytes become U+FFFD: a stock client could not parse them. */
    publish(STATE_FAILED, "bad \xff\xfe byte \xc3");
    char *e = error_of(1);
    assert_string_equal(e, "bad \xef\xbf\xbd\xef\xbf\xbd byte \xef\xbf\xbd");
    free(e);

    /* Longer than DS_UPDATE_ERROR_MAX: cut between characters. */
    size_t n = 1 + 2 * 3000;
    char *long_error = malloc(n + 1);
    long_error[0] = 'a';
    for (size_t i = 1; i < n; i += 2) {
        long_error[i] = (char)0xc3;     /* e acute */
        long_error[i + 1] = (char)0xa9;
    }
    long_error[n] = '\0';
    publish(STATE_FAILED, long_error);
    e = error_of(2);
    assert_int_equal(strlen(e), DS_UPDATE_ERROR_MAX - 1);
    assert_true(utf8_valid(e, strlen(e)));
    assert_memory_equal(e, long_error, DS_UPDATE_ERROR_MAX - 1);
    free(e);

    /* Both: made valid, then cut. */
    for (size_t i = 1; i < n; i += 2)
        long_error[i + 1] = 'x';        /* 0xc3 'x': the 0xc3 is invalid */
    publish(STATE_FAILED, long_error);
    e = error_of(3);
    assert_true(strlen(e) <= DS_UPDATE_ERROR_MAX);
    assert_true(strlen(e) > DS_UPDATE_ERROR_MAX - 4);
    assert_true(utf8_valid(e, strlen(e)));
    assert_memory_equal(e, "a\xef\xbf\xbdx\xef\xbf\xbdx", 9);
    free(e);

    /* Exactly DS_UPDATE_ERROR_MAX bytes stay whole. */
    memset(long_error, 'z', DS_UPDATE_ERROR_MAX);
    long_error[DS_UPDATE_ERROR_MAX] = '\0';
    publish(STATE_RETRYING, long_error);
    e = error_of(4);
    assert_int_equal(strlen(e), DS_UPDATE_ERROR_MAX);
    free(e);
    free(long_error);

    /* updates_encode holds the same rule, and no seq. */
    struct outcome o = { .state = STATE_FAILED, .error = "x\x80y" };
    size_t len;
    uint8_t *bytes = updates_encode(item_a, &o, &len);
    wire_update *m = wire_update_unpack(NULL, len, bytes);
    assert_non_null(m);
    assert_int_equal(m->seq, 0);
    assert_string_equal(m->error, "x\xef\xbf\xbdy");
    assert_string_equal(m->item_id, "item-a");
    wire_update_free(m, NULL);

    /* updates_deliver puts its seq in front, and hands it on like the rest
     * (a stream that jumps ahead restarts the log first, as cluster_read.c does). */
    updates_restart(76, 1, NULL);
    updates_deliver(77, STATE_FAILED, bytes, len, "item-a", 6, "echo", 4, "batch-a", 7);
    free(bytes);
    assert_int_equal(updates_last_seq(), 77);
    assert_int_equal(heard.seqs[heard.n - 1], 77);
    struct update *u = updates_get(77);
    assert_non_null(u);
    assert_string_equal(u->batch, "batch-a");
    m = decode(u);
    assert_int_equal(m->seq, 77);
    assert_int_equal(m->state, STATE_FAILED);
    assert_string_equal(m->error, "x\xef\xbf\xbdy");
    wire_update_free(m, NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_seqs_from_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ring_history, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ring_history_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_configure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_and_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve_ahead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_sanitized_and_cut, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
