/*
 * The index of known items (src/grpc/items.c), fed as store.c feeds it:
 * retention by count, by age and by bytes forgets the oldest finals and
 * never a live item; a retried item is live again; listing pages in
 * acceptance order, newest first, while items come and go.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/log.h"
#include "core/wire.h"
#include "grpc/item.h"
#include "grpc/items.h"

static int64_t fake_now;
static uint64_t seq;
static struct item *live[256];

static int64_t
clock_fake(void)
{
    return fake_now;
}

static int
setup(void **state)
{
    (void)state;
    log_open("stderr", DS_LOG_ERROR);
    items_init(NULL);
    fake_now = 1000000000;
    items_set_clock(clock_fake);
    seq = 0;
    memset(live, 0, sizeof live);
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < 256; i++)
        if (live[i] != NULL)
            item_free(live[i]);
    items_shutdown();
    return 0;
}

/* Item I ("i<I>", batch B), accepted and queued. Its WorkItem carries
 * priority I (field 8). */
static struct item *
accept_one(int i, const char *batch)
{
    char id[32];
    snprintf(id, sizeof id, "i%d", i);
    uint8_t raw[] = { 0x0a, 0x01, 'x', 0x40, (uint8_t)(i & 0x7f) };
    struct item *item = item_make(raw, sizeof raw, id, batch, "echo", 3, 0, 0);
    items_accepting(item);
    struct outcome o = { .state = STATE_QUEUED };
    items_updated(item, &o, ++seq);
    live[i] = item;
    return item;
}

static void
finish(int i, enum wire_state state, const char *result)
{
    struct outcome o = { .state = state, .result = result,
                         .result_len = result != NULL ? strlen(result) : 0,
                         .error = state == STATE_FAILED ? "it broke" : NULL };
    items_updated(live[i], &o, ++seq);
    item_free(live[i]);
    live[i] = NULL;
}

static int
known(int i)
{
    char id[32];
    snprintf(id, sizeof id, "i%d", i);
    return items_find(id) != NULL;
}

static void
test_accept_and_states(void **state)
{
    (void)state;
    accept_one(1, "b");
    const struct known_item *k = items_find("i1");
    assert_non_null(k);
    assert_int_equal(k->state, STATE_QUEUED);
    assert_int_equal(k->priority, 1);
    assert_string_equal(known_batch(k), "b");
    assert_int_equal(k->last_seq, 1);
    struct outcome o = { .state = STATE_STARTED, .worker_pid = 42 };
    items_updated(live[1], &o, ++seq);
    assert_int_equal(k->worker_pid, 42);
    assert_int_equal(k->started_ns, fake_now);
    finish(1, STATE_SUCCEEDED, "hello");
    k = items_find("i1");
    assert_int_equal(k->state, STATE_SUCCEEDED);
    assert_int_equal(k->worker_pid, 0);
    assert_int_equal(k->extra->result_len, 5);
    assert_memory_equal(k->extra->data + k->extra->error_len + 1, "hello", 5);
    assert_int_equal(k->last_seq, 3);
    assert_int_equal(items_stats()->by_state[STATE_SUCCEEDED], 1);
    assert_null(items_find("i2"));
    /* The rejection of a pending accept forgets it. */
    struct item *p = accept_one(2, "b");
    items_forget(p);
    assert_null(items_find("i2"));
    assert_int_equal(items_stats()->known, 1);
}

static void
test_retention_by_count(void **state)
{
    (void)state;
    items_configure(3600000, 3, 1 << 30);
    for (int i = 0; i < 10; i++)
        accept_one(i, "b");
    for (int i = 0; i < 6; i++)
        finish(i, STATE_SUCCEEDED, NULL);
    /* The 3 newest finals stay; the 4 live ones stay whatever the bound. */
    for (int i = 0; i < 3; i++)
        assert_false(known(i));
    for (int i = 3; i < 10; i++)
        assert_true(known(i));
    items_configure(3600000, 0, 1 << 30);
    for (int i = 0; i < 6; i++)
        assert_false(known(i));
    for (int i = 6; i < 10; i++)
        assert_true(known(i));
    assert_int_equal(items_stats()->retained_bytes, 0);
    assert_int_equal(items_stats()->forgotten, 6);
}

static void
test_retention_by_age(void **state)
{
    (void)state;
    items_configure(1000, 1000, 1 << 30);
    for (int i = 0; i < 4; i++)
        accept_one(i, "b");
    finish(0, STATE_FAILED, NULL);
    fake_now += 600 * 1000000ll;
    finish(1, STATE_SUCCEEDED, "r");
    fake_now += 600 * 1000000ll;
    items_expire();
    assert_false(known(0));
    assert_true(known(1));
    fake_now += 24ll * 3600 * 1000000000;
    items_expire();
    assert_false(known(1));
    assert_true(known(2) && known(3));      /* live: never forgotten */
}

static void
test_retention_by_bytes(void **state)
{
    (void)state;
    char big[1000];
    memset(big, 'r', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    size_t one = items_overhead_bytes() + 1000;
    items_configure(3600000, 1000, 3 * one);
    for (int i = 0; i < 8; i++)
        accept_one(i, "b");
    for (int i = 0; i < 6; i++)
        finish(i, STATE_SUCCEEDED, big);
    assert_true(items_stats()->retained_bytes <= 3 * one);
    assert_false(known(0));
    assert_true(known(5));
    assert_true(known(6) && known(7));
    uint64_t finals = items_stats()->by_state[STATE_SUCCEEDED];
    assert_true(finals >= 2 && finals <= 3);
}

static void
test_retry_is_live_again(void **state)
{
    (void)state;
    items_configure(3600000, 1, 1 << 30);
    accept_one(0, "b");
    accept_one(1, "b");
    finish(0, STATE_FAILED, NULL);
    const struct known_item *k = items_find("i0");
    assert_non_null(k->extra);
    assert_int_equal(k->extra->raw_len, 5);
    assert_string_equal((const char *)k->extra->data, "it broke");
    /* Retry: the same id accepted again, live; then i1 ends: i0 is not
     * forgotten for i1's sake while live. */
    const uint8_t *raw = k->extra->data + k->extra->error_len + 1;
    struct item *again = item_make(raw, k->extra->raw_len, "i0", "b", "echo", 3, 0, 0);
    items_accepting(again);
    live[0] = again;
    finish(1, STATE_SUCCEEDED, NULL);
    assert_true(known(0));
    assert_true(known(1));
    finish(0, STATE_SUCCEEDED, NULL);   /* now the oldest final is i1 */
    assert_false(known(1));
    assert_true(known(0));
    assert_int_equal(items_stats()->known, 1);
    /* A retried item that leaves (handed over) takes its ring entries. */
    k = items_find("i0");
    again = item_make((const uint8_t *)"", 0, "i0", "b", "echo", 3, 0, 0);
    items_accepting(again);
    items_forget(again);
    item_free(again);
    assert_false(known(0));
    items_configure(3600000, 0, 1 << 30);
}

static int
in_batch(const struct known_item *k, void *arg)
{
    return strcmp(known_batch(k), arg) == 0;
}

static uint64_t page_orders[64];
static size_t page_n;

static int
collect(const struct known_item *k, void *arg)
{
    (void)arg;
    page_orders[page_n++] = (uint64_t)k->accepted_ns;
    return 0;
}

static void
test_paging(void **state)
{
    (void)state;
    items_configure(3600000, 1000, 1 << 30);
    for (int i = 0; i < 20; i++)
        accept_one(i, i % 2 ? "odd" : "even");
    int more;
    page_n = 0;
    size_t n = items_list(0, 0, in_batch, "odd", 4, collect, NULL, &more);
    assert_int_equal(n, 4);
    assert_true(more);
    assert_true(page_orders[0] > page_orders[1]);   /* newest first */
    assert_true(known(19));
    uint64_t seen[64];
    size_t seen_n = 0;
    for (size_t i = 0; i < n; i++)
        seen[seen_n++] = page_orders[i];
    /* Items come and go between pages: new ones, and some forgotten. */
    while (more) {
        uint64_t token = page_orders[page_n - 1];
        for (int i = 20; i < 24; i++)
            if (live[i] == NULL)
                accept_one(i, "odd");
        if (live[1] != NULL)
            finish(1, STATE_SUCCEEDED, NULL);
        items_configure(3600000, 0, 1 << 30);
        items_configure(3600000, 1000, 1 << 30);
        page_n = 0;
        n = items_list(token, 0, in_batch, "odd", 4, collect, NULL, &more);
        for (size_t i = 0; i < n; i++) {
            assert_true(page_orders[i] < token);
            seen[seen_n++] = page_orders[i];
        }
    }
    /* The odd items that existed throughout (3..19 odd) were all listed. */
    for (int i = 3; i < 20; i += 2)
        assert_true(live[i] != NULL);
    assert_int_equal(seen_n, 9);    /* 19..3; i1 was forgotten before its page */
    for (size_t i = 1; i < seen_n; i++)
        assert_true(seen[i] < seen[i - 1]);
}

static void
test_many_tombstones(void **state)
{
    (void)state;
    items_configure(3600000, 10, 1 << 30);
    /* Far more items than the arrays' first sizes, most forgotten. */
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 200; i++) {
            struct item *item;
            char id[32];
            snprintf(id, sizeof id, "r%d-%d", round, i);
            item = item_make((const uint8_t *)"", 0, id, "b", "echo", 1, 0, 0);
            items_accepting(item);
            struct outcome o = { .state = STATE_SUCCEEDED };
            items_updated(item, &o, ++seq);
            item_free(item);
        }
    }
    assert_int_equal(items_stats()->known, 10);
    int more;
    page_n = 0;
    assert_int_equal(items_list(0, 0, NULL, NULL, 64, collect, NULL, &more), 10);
    assert_false(more);
    assert_non_null(items_find("r19-199"));
    assert_null(items_find("r19-189"));
}

/* The rare states (FAILED, CANCELLED) are listed from their own arrays:
 * the same items, in the same order, as a walk of every item would give,
 * through pages, retries (FAILED -> QUEUED leaves the list) and the
 * retention forgetting them; and a listing by a state none is in. */
static int
any_item(const struct known_item *k, void *arg)
{
    (void)k;
    (void)arg;
    return 1;
}

static size_t
list_all(uint64_t before, unsigned states, size_t limit, int *more)
{
    page_n = 0;
    return items_list(before, states, any_item, NULL, limit, collect, NULL, more);
}

static void
test_rare_states_listed_from_their_arrays(void **state)
{
    (void)state;
    unsigned failed = 1u << STATE_FAILED, cancelled = 1u << STATE_CANCELLED;
    items_configure(3600000, 1000, 1 << 30);
    for (int i = 0; i < 60; i++)
        accept_one(i, "b");
    /* Final out of acceptance order: 59 first, then down. */
    for (int i = 59; i >= 0; i--)
        if (i % 7 == 0)
            finish(i, STATE_FAILED, NULL);
        else if (i % 11 == 0)
            finish(i, STATE_CANCELLED, NULL);
        else if (i % 2 == 0)
            finish(i, STATE_SUCCEEDED, "ok");
    int more;
    /* 0, 7, ..., 56: 9 FAILED; 11, 22, 33, 44, 55: 5 CANCELLED. */
    assert_int_equal(list_all(0, failed, 64, &more), 9);
    assert_false(more);
    for (size_t i = 1; i < page_n; i++)
        assert_true(page_orders[i] < page_orders[i - 1]);
    assert_int_equal(list_all(0, failed | cancelled, 64, &more), 14);
    /* Pages of 4 over both: the same 14, newest first. */
    uint64_t all[64];
    size_t all_n = page_n;
    memcpy(all, page_orders, sizeof all);
    size_t seen = 0;
    uint64_t token = 0;
    do {
        size_t n = list_all(token, failed | cancelled, 4, &more);
        for (size_t i = 0; i < n; i++)
            assert_true(page_orders[i] == all[seen++]);
        token = page_orders[n - 1];
    } while (more);
    assert_int_equal(seen, all_n);
    /* No item is STARTED: nothing to list, and no walk needed to know. */
    assert_int_equal(list_all(0, 1u << STATE_STARTED, 64, &more), 0);
    /* Live ones (the odd, never finished, not 7s or 11s): the walk. */
    size_t queued = list_all(0, 1u << STATE_QUEUED, 64, &more);
    assert_int_equal(queued, 60 - 9 - 5 - 23);
    /* A retried FAILED item is live again and leaves the FAILED list. */
    const struct known_item *k = items_find("i14");
    assert_non_null(k);
    assert_int_equal(k->state, STATE_FAILED);
    struct item *again = item_make((const uint8_t *)"", 0, "i14", "b", "echo", 3, 0, 0);
    items_accepting(again);
    live[14] = again;
    assert_int_equal(list_all(0, failed, 64, &more), 8);
    finish(14, STATE_CANCELLED, NULL);
    assert_int_equal(list_all(0, cancelled, 64, &more), 6);
    /* The retention forgets the oldest finals: they leave the lists. */
    items_configure(3600000, 3, 1 << 30);
    size_t left = list_all(0, failed | cancelled, 64, &more);
    assert_true(left <= 3);
    assert_int_equal(items_stats()->by_state[STATE_FAILED] +
                     items_stats()->by_state[STATE_CANCELLED], left);
}

/* By id, through growth and removals in every position of a probe run:
 * 20000 items, every third forgotten, then the older finals forgotten by
 * the retention; each lookup finds exactly the items still known. */
static void
test_lookup_through_growth_and_removal(void **state)
{
    (void)state;
    enum { N = 20000 };
    static struct item *all[N];
    char id[32];
    items_configure(24ull * 3600 * 1000, N, 1u << 30);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "x-%d", i);
        uint8_t raw[] = { 0x0a, 0x01, 'x' };
        all[i] = item_make(raw, sizeof raw, id, "", "echo", 3, 0, 0);
        items_accepting(all[i]);
    }
    for (int i = 0; i < N; i += 3) {
        items_forget(all[i]);
        item_free(all[i]);
        all[i] = NULL;
    }
    struct outcome done = { .state = STATE_SUCCEEDED };
    for (int i = 1; i < N; i += 3) {
        items_updated(all[i], &done, ++seq);
        item_free(all[i]);
        all[i] = NULL;
    }
    items_configure(24ull * 3600 * 1000, N / 6, 1u << 30);     /* keeps the newest N/6 finals */
    uint64_t found = 0, finals = 0;
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "x-%d", i);
        const struct known_item *k = items_find(id);
        if (i % 3 == 0 && k != NULL)
            fail_msg("%s: forgotten, yet found", id);
        if (i % 3 == 2 && k == NULL)
            fail_msg("%s: live, yet not found", id);
        if (k != NULL) {
            assert_string_equal(k->id, id);
            found++;
            finals += i % 3 == 1;
        }
    }
    assert_int_equal(found, items_stats()->known);
    assert_int_equal(finals, N / 6);
    for (int i = 0; i < N; i++)
        if (all[i] != NULL)
            item_free(all[i]);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_accept_and_states, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_by_count, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_by_age, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_by_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_is_live_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_paging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_tombstones, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rare_states_listed_from_their_arrays, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lookup_through_growth_and_removal, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
