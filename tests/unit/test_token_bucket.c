/*
 * The token bucket of handlers.<kind>.rate (src/grpc/token_bucket.c)
 * alone, on made-up times: the burst, the refill, never more than
 * COUNT + COUNT x elapsed / INTERVAL, the wait it announces, a reload that
 * keeps or resets it, the largest rate without overflow, and a token given
 * back (never above COUNT).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "grpc/token_bucket.h"

#define MS 1000000ull
#define S  (1000 * MS)

static void
test_unlimited(void **state)
{
    struct token_bucket b = { 0 };
    token_bucket_set(&b, 0, 0, 5);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(token_bucket_take(&b, 5), 1);
    assert_int_equal(token_bucket_wait_ns(&b, 5), 0);
}

static void
test_burst_then_rate(void **state)
{
    struct token_bucket b = { 0 };
    uint64_t t0 = 10 * S;
    token_bucket_set(&b, 20, 1000, t0);         /* 20/s */
    for (int i = 0; i < 20; i++)
        assert_int_equal(token_bucket_take(&b, t0), 1);
    assert_int_equal(token_bucket_take(&b, t0), 0);
    assert_int_equal(token_bucket_wait_ns(&b, t0), 50 * MS);
    assert_int_equal(token_bucket_take(&b, t0 + 50 * MS - 1), 0);   /* never early */
    assert_int_equal(token_bucket_take(&b, t0 + 50 * MS), 1);
    assert_int_equal(token_bucket_take(&b, t0 + 50 * MS), 0);
    assert_int_equal(token_bucket_wait_ns(&b, t0 + 60 * MS), 40 * MS);
    /* Idle for longer than an interval: full again, no more. */
    uint64_t t1 = t0 + 5 * S;
    int n = 0;
    while (token_bucket_take(&b, t1))
        n++;
    assert_int_equal(n, 20);
}

static void
test_bound_over_time(void **state)
{
    /* Taking whenever possible, every 1 ms for 10 s at 7/s: never more
     * than 7 + 7 x elapsed. */
    struct token_bucket b = { 0 };
    token_bucket_set(&b, 7, 1000, 0);
    uint64_t taken = 0;
    for (uint64_t t = 0; t <= 10 * S; t += MS) {
        while (token_bucket_take(&b, t))
            taken++;
        assert_true(taken * S <= 7 * S + 7 * t);
    }
    assert_int_equal(taken, 7 + 70);
}

static void
test_per_minute(void **state)
{
    struct token_bucket b = { 0 };
    token_bucket_set(&b, 6000, 60000, 0);       /* 6000/m = 100/s, burst 6000 */
    for (int i = 0; i < 6000; i++)
        assert_int_equal(token_bucket_take(&b, 0), 1);
    assert_int_equal(token_bucket_take(&b, 0), 0);
    assert_int_equal(token_bucket_wait_ns(&b, 0), 10 * MS);
    assert_int_equal(token_bucket_take(&b, 10 * MS), 1);
}

static void
test_reload_keeps_or_resets(void **state)
{
    struct token_bucket b = { 0 };
    token_bucket_set(&b, 2, 1000, 0);
    assert_int_equal(token_bucket_take(&b, 0), 1);
    assert_int_equal(token_bucket_take(&b, 0), 1);
    token_bucket_set(&b, 2, 1000, 0);           /* the same rate: still empty */
    assert_int_equal(token_bucket_take(&b, 0), 0);
    token_bucket_set(&b, 3, 1000, 0);           /* a new rate: full */
    assert_int_equal(token_bucket_take(&b, 0), 1);
    token_bucket_set(&b, 0, 0, 0);              /* off */
    assert_int_equal(token_bucket_take(&b, 0), 1);
}

static void
test_largest_rate_no_overflow(void **state)
{
    /* 1e6 per hour: count x interval_ns = 3.6e18 < 2^64. */
    struct token_bucket b = { 0 };
    token_bucket_set(&b, 1000000, 3600 * 1000, 1);
    assert_int_equal(token_bucket_take(&b, 1), 1);
    uint64_t wait = token_bucket_wait_ns(&b, 1);
    assert_int_equal(wait, 0);
    for (int i = 0; i < 999999; i++)
        token_bucket_take(&b, 1);
    assert_int_equal(token_bucket_take(&b, 1), 0);
    assert_int_equal(token_bucket_wait_ns(&b, 1), 3600 * S / 1000000);
    assert_int_equal(token_bucket_take(&b, 1 + 3599 * S), 1);  /* long but < an interval */
    assert_true(token_bucket_take(&b, 1 + 3599 * S));
}

static void
test_clock_going_back_adds_nothing(void **state)
{
    struct token_bucket b = { 0 };
    token_bucket_set(&b, 1, 1000, 5 * S);
    assert_int_equal(token_bucket_take(&b, 5 * S), 1);
    assert_int_equal(token_bucket_take(&b, 1 * S), 0);
    assert_int_equal(token_bucket_take(&b, 6 * S), 1);
}

static void
test_give_back(void **state)
{
    struct token_bucket b = { 0 };
    token_bucket_set(&b, 2, 1000, 0);
    assert_int_equal(token_bucket_take(&b, 0), 1);
    assert_int_equal(token_bucket_take(&b, 0), 1);
    assert_int_equal(token_bucket_take(&b, 0), 0);
    token_bucket_give_back(&b, 0);              /* one unused: it is there again */
    assert_int_equal(token_bucket_take(&b, 0), 1);
    assert_int_equal(token_bucket_take(&b, 0), 0);
    /* Never above the burst: full, a give-back adds nothing. */
    token_bucket_give_back(&b, 5 * S);
    int n = 0;
    while (token_bucket_take(&b, 5 * S))
        n++;
    assert_int_equal(n, 2);
    /* Half a token refilled plus one given back: one and a half. */
    token_bucket_give_back(&b, 5 * S + 250 * MS);
    assert_int_equal(token_bucket_take(&b, 5 * S + 250 * MS), 1);
    assert_int_equal(token_bucket_take(&b, 5 * S + 250 * MS), 0);
    assert_int_equal(token_bucket_wait_ns(&b, 5 * S + 250 * MS), 250 * MS);
    /* Unlimited: nothing to give back. */
    token_bucket_set(&b, 0, 0, 0);
    token_bucket_give_back(&b, 0);
    assert_int_equal(b.units, 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unlimited),
        cmocka_unit_test(test_burst_then_rate),
        cmocka_unit_test(test_bound_over_time),
        cmocka_unit_test(test_per_minute),
        cmocka_unit_test(test_reload_keeps_or_resets),
        cmocka_unit_test(test_largest_rate_no_overflow),
        cmocka_unit_test(test_clock_going_back_adds_nothing),
        cmocka_unit_test(test_give_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
