/*
 * The waiting items' structure (src/grpc/waitlist.c) and the retry backoff
 * rule (src/grpc/backoff.c) alone: priorities, acceptance order for items
 * pushed back, the due heap, taking matching items out, and many random
 * operations checked against a plain model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "grpc/backoff.h"
#include "grpc/item.h"
#include "grpc/waitlist.h"

static struct item *
make(int32_t priority, uint64_t key, uint64_t due_ns)
{
    struct item *item = item_make(NULL, 0, "i", "", "echo", 1, 0, 1);
    item->priority = priority;
    item->key = key;
    item->due_ns = due_ns;
    return item;
}

/* Pop everything: the keys in the order they come, freed. */
static size_t
drain(struct waitlist *wl, uint64_t *keys, size_t max)
{
    size_t n = 0;
    struct item *item;
    while ((item = waitlist_pop(wl)) != NULL) {
        assert_true(n < max);
        keys[n++] = item->key;
        item_free(item);
    }
    assert_int_equal(wl->ready, 0);
    assert_int_equal(wl->ready_weight, 0);
    assert_int_equal(wl->level_count, 0);
    return n;
}

static void
test_priority_then_acceptance_order(void **state)
{
    struct waitlist wl = { 0 };
    waitlist_push(&wl, make(0, 1, 0), 0);
    waitlist_push(&wl, make(5, 2, 0), 0);
    waitlist_push(&wl, make(INT32_MIN, 3, 0), 0);
    waitlist_push(&wl, make(0, 4, 0), 0);
    waitlist_push(&wl, make(INT32_MAX, 5, 0), 0);
    waitlist_push(&wl, make(5, 6, 0), 0);
    waitlist_push(&wl, make(-1, 7, 0), 0);
    assert_int_equal(wl.ready, 7);
    assert_int_equal(wl.level_count, 5);
    assert_int_equal(waitlist_peek(&wl)->key, 5);
    uint64_t keys[16];
    size_t n = drain(&wl, keys, 16);
    uint64_t want[] = { 5, 2, 6, 1, 4, 7, 3 };
    assert_int_equal(n, 7);
    assert_memory_equal(keys, want, sizeof want);
    assert_null(waitlist_peek(&wl));
    waitlist_free(&wl);
}

static void
test_pushed_back_by_key(void **state)
{
    struct waitlist wl = { 0 };
    /* 2, 4, 6 wait; 1 comes back (front), 5 comes back (inside), 3 is
     * pushed again at the end (a parked item): each to its place. */
    waitlist_push(&wl, make(0, 2, 0), 0);
    waitlist_push(&wl, make(0, 4, 0), 0);
    waitlist_push(&wl, make(0, 6, 0), 0);
    waitlist_push(&wl, make(0, 1, 0), 1);
    waitlist_push(&wl, make(0, 5, 0), 1);
    waitlist_push(&wl, make(0, 3, 0), 0);
    waitlist_push(&wl, make(0, 7, 0), 1);    /* newer than all: the tail */
    /* An item just due joins the tail whatever its key. */
    waitlist_append(&wl, make(0, 0, 0));
    uint64_t keys[16];
    size_t n = drain(&wl, keys, 16);
    uint64_t want[] = { 1, 2, 3, 4, 5, 6, 7, 0 };
    assert_int_equal(n, 8);
    assert_memory_equal(keys, want, sizeof want);
    waitlist_free(&wl);
}

static void
test_due_heap(void **state)
{
    struct waitlist wl = { 0 };
    assert_int_equal(waitlist_next_due(&wl), 0);
    waitlist_delay(&wl, make(0, 1, 300));
    waitlist_delay(&wl, make(9, 2, 100));
    waitlist_delay(&wl, make(0, 3, 200));
    waitlist_delay(&wl, make(0, 4, 100));      /* same due as 2: by key after it */
    assert_int_equal(waitlist_next_due(&wl), 100);
    assert_int_equal(wl.heap_count, 4);
    assert_int_equal(waitlist_release_due(&wl, 99), 0);
    assert_int_equal(waitlist_release_due(&wl, 150), 2);
    assert_int_equal(wl.ready, 2);
    assert_int_equal(waitlist_next_due(&wl), 200);
    /* Due items join their priority: 2 (priority 9) first. */
    struct item *item = waitlist_pop(&wl);
    assert_int_equal(item->key, 2);
    item_free(item);
    assert_int_equal(waitlist_release_due(&wl, 1000), 2);
    assert_int_equal(waitlist_next_due(&wl), 0);
    uint64_t keys[8];
    size_t n = drain(&wl, keys, 8);
    uint64_t want[] = { 4, 3, 1 };
    assert_int_equal(n, 3);
    assert_memory_equal(keys, want, sizeof want);
    /* pop_delayed takes the earliest (the handover). */
    waitlist_delay(&wl, make(0, 8, 50));
    waitlist_delay(&wl, make(0, 9, 40));
    item = waitlist_pop_delayed(&wl);
    assert_int_equal(item->key, 9);
    item_free(item);
    item = waitlist_pop_delayed(&wl);
    assert_int_equal(item->key, 8);
    item_free(item);
    assert_null(waitlist_pop_delayed(&wl));
    waitlist_free(&wl);
}

static int
odd_key(const struct item *item, void *arg)
{
    (*(int *)arg)++;
    return item->key & 1;
}

static void
count_item(const struct item *item, void *arg)
{
    (*(size_t *)arg)++;
}

static void
test_take_matching(void **state)
{
    struct waitlist wl = { 0 };
    for (uint64_t k = 1; k <= 20; k++) {
        if (k % 3 == 0)
            waitlist_delay(&wl, make(0, k, 1000 - k));
        else
            waitlist_push(&wl, make((int32_t)(k % 4), k, 0), 0);
    }
    size_t all = 0;
    waitlist_for_each(&wl, count_item, &all);
    assert_int_equal(all, 20);
    int calls = 0;
    struct item *taken = NULL;
    waitlist_take_matching(&wl, odd_key, &calls, &taken);
    assert_int_equal(calls, 20);
    size_t n = 0;
    while (taken != NULL) {
        struct item *item = taken;
        taken = item->next;
        assert_true(item->key & 1);
        item_free(item);
        n++;
    }
    assert_int_equal(n, 10);
    all = 0;
    waitlist_for_each(&wl, count_item, &all);
    assert_int_equal(all, 10);
    /* The heap is still a heap: the even multiples of 3, latest key first due. */
    uint64_t due[] = { 1000 - 18, 1000 - 12, 1000 - 6 };
    for (size_t i = 0; i < 3; i++) {
        struct item *item = waitlist_pop_delayed(&wl);
        assert_int_equal(item->due_ns, due[i]);
        item_free(item);
    }
    uint64_t keys[16];
    n = drain(&wl, keys, 16);
    assert_int_equal(n, 7);
    for (size_t i = 0; i < n; i++)
        assert_false(keys[i] & 1);
    waitlist_free(&wl);
}

/* Random pushes (back, front, appends), pops, delays and releases, checked
 * against the rule: a popped item has the highest priority of those ready,
 * and within a priority the smallest key unless it was appended. */
static void
test_random_against_model(void **state)
{
    struct waitlist wl = { 0 };
    srandom(17);
    uint64_t next_key = 1, now = 0;
    size_t live = 0;
    for (int step = 0; step < 200000; step++) {
        long r = random() % 100;
        if (r < 40) {
            struct item *item = make((int32_t)(random() % 5) - 2, next_key++, 0);
            waitlist_push(&wl, item, 0);
            live++;
        } else if (r < 50) {
            uint64_t due = now + (uint64_t)(random() % 1000) + 1;
            waitlist_delay(&wl, make((int32_t)(random() % 5) - 2, next_key++, due));
            live++;
        } else if (r < 55) {
            now += (uint64_t)(random() % 300);
            waitlist_release_due(&wl, now);
        } else if (wl.ready > 0) {
            struct item *top = waitlist_peek(&wl);
            /* Nothing ready has a higher priority: the top is the head of
             * the highest level. The whole walk (levels in order, each
             * non-empty, the count) is linear: every 1000th step, or the
             * test turns quadratic (21 s, and minutes under valgrind). */
            assert_ptr_equal(top, wl.levels[wl.level_count - 1].head);
            if (step % 1000 == 0) {
                size_t count = 0;
                for (size_t i = 0; i < wl.level_count; i++) {
                    assert_true(wl.levels[i].priority <= top->priority);
                    assert_non_null(wl.levels[i].head);
                    if (i > 0)
                        assert_true(wl.levels[i - 1].priority < wl.levels[i].priority);
                    for (struct item *it = wl.levels[i].head; it != NULL; it = it->next)
                        count++;
                }
                assert_int_equal(count, wl.ready);
            }
            struct item *item = waitlist_pop(&wl);
            assert_ptr_equal(item, top);
            if (random() % 4 == 0) {
                waitlist_push(&wl, item, 1);        /* back again, still the top priority */
                assert_int_equal(waitlist_peek(&wl)->priority, item->priority);
            } else {
                item_free(item);
                live--;
            }
        }
        assert_int_equal(wl.ready + wl.heap_count, live);
    }
    waitlist_release_due(&wl, UINT64_MAX);
    uint64_t *keys = malloc(live * sizeof *keys);
    assert_int_equal(drain(&wl, keys, live), live);
    free(keys);
    waitlist_free(&wl);
}

static void
test_backoff(void **state)
{
    assert_int_equal(backoff_ms(0, 0, 1, 12345), 0);                /* off */
    for (uint64_t r = 0; r < 1000; r++) {
        uint64_t first = backoff_ms(1000, 300000, 1, r * 7919);
        assert_true(first >= 1000 && first <= 1250);
        uint64_t third = backoff_ms(1000, 300000, 3, r * 104729);
        assert_true(third >= 4000 && third <= 5000);
        uint64_t capped = backoff_ms(1000, 300000, 20, r);
        assert_true(capped == 300000);
        uint64_t huge = backoff_ms(1000, 300000, UINT32_MAX, r);
        assert_true(huge == 300000);
    }
    assert_int_equal(backoff_ms(5000, 1000, 1, 0), 5000);          /* max below min: min */
    assert_true(backoff_random() != backoff_random());
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_priority_then_acceptance_order),
        cmocka_unit_test(test_pushed_back_by_key),
        cmocka_unit_test(test_due_heap),
        cmocka_unit_test(test_take_matching),
        cmocka_unit_test(test_random_against_model),
        cmocka_unit_test(test_backoff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
