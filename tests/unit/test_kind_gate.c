/*
 * The kind gate (src/grpc/kind_gate.c) alone: a fake queue stands in for
 * queue.c (it records what the gate releases and when it asks for a
 * dispatch, and lists the items "held by workers"). Concurrency, pause,
 * order by key, a slot given back once only, reloads that raise, lower,
 * lift and first set a limit, cancel and take of parked items, and the
 * rate's refill timer.
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

static struct {
    struct event_base *base;
    struct ds_config *config;
    struct item *released[64];
    size_t released_n;
    int dispatches;
    struct item *held[16];
    size_t held_n;
} fq;

static void
fake_release(struct item *first)
{
    for (struct item *item = first, *next; item != NULL; item = next) {
        next = item->next;
        item->next = NULL;
        assert_true(fq.released_n < 64);
        fq.released[fq.released_n++] = item;
    }
}

static void
fake_dispatch(void)
{
    fq.dispatches++;
}

static void
fake_for_each_held(void (*fn)(struct item *item, void *arg), void *arg)
{
    for (size_t i = 0; i < fq.held_n; i++)
        fn(fq.held[i], arg);
}

static const struct kind_gate_ops ops = {
    .release = fake_release,
    .dispatch = fake_dispatch,
    .for_each_held = fake_for_each_held,
};

static void
configure(const char *handlers)
{
    char text[1024], errors[1024];
    snprintf(text, sizeof text,
             "handlers:\n  echo: {builtin: echo}\n  sleep: {builtin: sleep%s}\n", handlers);
    struct ds_config *c = config_load_text("test.yaml", text, strlen(text), errors,
                                           sizeof errors);
    if (c == NULL)
        fail_msg("config: %s", errors);
    kind_gate_configure(c);
    if (fq.config != NULL)
        config_free(fq.config);
    fq.config = c;
}

static struct item *
make(const char *id, const char *kind)
{
    return item_make((const uint8_t *)"", 0, id, "", kind, 3, 0, 0);
}

static uint64_t
running(const char *kind)
{
    struct kind_gate_state s;
    kind_gate_state(metrics_kind(kind)->kind, &s);
    return s.running;
}

static uint64_t
parked(const char *kind)
{
    struct kind_gate_state s;
    kind_gate_state(metrics_kind(kind)->kind, &s);
    return s.parked;
}

static int
setup(void **state)
{
    log_open("stderr", DS_LOG_ERROR);
    memset(&fq, 0, sizeof fq);
    fq.base = event_base_new();
    kind_gate_init(fq.base, &ops);
    return 0;
}

static int
teardown(void **state)
{
    struct item *item;
    while ((item = kind_gate_take_parked(1)) != NULL)
        item_free(item);
    kind_gate_shutdown();
    if (fq.config != NULL)
        config_free(fq.config);
    event_base_free(fq.base);
    return 0;
}

static void
test_no_limit_is_a_pass(void **state)
{
    configure("");
    struct item *a = make("a", "sleep");
    assert_int_equal(kind_gate_admit(a), 1);
    assert_int_equal(a->gate_slot, 0);
    kind_gate_leave(a);
    kind_gate_release_ready();
    assert_int_equal(fq.released_n, 0);
    item_free(a);
}

static void
test_concurrency_parks_and_gives_back_once(void **state)
{
    configure(", concurrency: 2");
    struct item *it[5], *e = make("e", "echo");
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "s%d", i);
        it[i] = make(id, "sleep");
    }
    assert_int_equal(kind_gate_admit(it[0]), 1);
    assert_int_equal(kind_gate_admit(it[1]), 1);
    assert_int_equal(kind_gate_admit(it[2]), 0);
    assert_int_equal(kind_gate_admit(it[3]), 0);
    assert_int_equal(kind_gate_admit(e), 1);          /* other kinds go on */
    assert_int_equal(e->gate_slot, 0);
    assert_int_equal(running("sleep"), 2);
    assert_int_equal(parked("sleep"), 2);
    assert_int_equal(kind_gate_parked(), 2);

    /* Nothing ended: nothing released. */
    kind_gate_release_ready();
    assert_int_equal(fq.released_n, 0);

    kind_gate_leave(it[0]);
    kind_gate_leave(it[0]);                         /* twice: counted once */
    assert_int_equal(running("sleep"), 1);
    /* A new one while others are parked waits behind them. */
    assert_int_equal(kind_gate_admit(it[4]), 0);
    kind_gate_release_ready();
    assert_int_equal(fq.released_n, 1);
    assert_ptr_equal(fq.released[0], it[2]);
    assert_int_equal(it[2]->gate_slot, 1);          /* released with its slot */
    assert_int_equal(running("sleep"), 2);
    assert_int_equal(kind_gate_admit(it[2]), 1);    /* through at once */
    assert_int_equal(running("sleep"), 2);

    kind_gate_leave(it[1]);
    kind_gate_leave(it[2]);
    kind_gate_release_ready();
    assert_int_equal(fq.released_n, 3);
    assert_ptr_equal(fq.released[1], it[3]);
    assert_ptr_equal(fq.released[2], it[4]);
    assert_int_equal(parked("sleep"), 0);
    for (int i = 3; i < 5; i++)
        kind_gate_leave(it[i]);
    assert_int_equal(running("sleep"), 0);
    for (int i = 0; i < 5; i++)
        item_free(it[i]);
    item_free(e);
}

static void
test_parked_in_key_order(void **state)
{
    configure(", paused: on");
    struct item *a = make("a", "sleep"), *b = make("b", "sleep"), *c = make("c", "sleep");
    assert_int_equal(kind_gate_admit(b), 0);
    assert_int_equal(kind_gate_admit(c), 0);
    assert_int_equal(kind_gate_admit(a), 0);        /* older: a retry, a give-back */
    configure("");                                  /* unpaused, no limit left */
    kind_gate_release_ready();
    assert_int_equal(fq.released_n, 3);
    assert_ptr_equal(fq.released[0], a);
    assert_ptr_equal(fq.released[1], b);
    assert_ptr_equal(fq.released[2], c);
    for (int i = 0; i < 3; i++)
        kind_gate_leave(fq.released[i]);
    item_free(a);
    item_free(b);
    item_free(c);
}

static void
test_reload_lowers_raises_and_counts_held(void **state)
{
    /* Two sleep items at workers before any limit: counted when it comes. */
    struct item *h1 = make("h1", "sleep"), *h2 = make("h2", "sleep"), *n = make("n", "sleep");
    fq.held[fq.held_n++] = h1;
    fq.held[fq.held_n++] = h2;
    configure(", concurrency: 2");
    assert_int_equal(running("sleep"), 2);
    assert_int_equal(kind_gate_admit(n), 0);
    configure(", concurrency: 1");                  /* lower than what runs */
    kind_gate_leave(h1);
    kind_gate_release_ready();
    assert_int_equal(fq.released_n, 0);             /* still 1 running: at the limit */
    configure(", concurrency: 3");                  /* raised: n goes */
    kind_gate_release_ready();
    assert_int_equal(fq.released_n, 1);
    assert_ptr_equal(fq.released[0], n);
    kind_gate_leave(h2);
    kind_gate_leave(n);
    assert_int_equal(running("sleep"), 0);
    configure("");                                  /* the entry goes */
    assert_int_equal(kind_gate_admit(h1), 1);
    assert_int_equal(h1->gate_slot, 0);
    item_free(h1);
    item_free(h2);
    item_free(n);
}

static int
match_odd(const struct item *item, void *arg)
{
    (void)arg;
    return (item->id[1] - '0') % 2 == 1;
}

static int
count_each_n;

static void
count_each(const struct item *item, void *arg)
{
    (void)item;
    (void)arg;
    count_each_n++;
}

static void
test_cancel_and_take_parked(void **state)
{
    configure(", paused: on");
    struct item *it[6];
    for (int i = 0; i < 6; i++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", i);
        it[i] = make(id, "sleep");
        assert_int_equal(kind_gate_admit(it[i]), 0);
    }
    count_each_n = 0;
    kind_gate_for_each(count_each, NULL);
    assert_int_equal(count_each_n, 6);
    struct item *taken = NULL, **tail = &taken;
    kind_gate_take_matching(match_odd, NULL, &tail);
    int n = 0;
    for (struct item *item = taken, *next; item != NULL; item = next, n++) {
        next = item->next;
        assert_int_equal((item->id[1] - '0') % 2, 1);
        item_free(item);
    }
    assert_int_equal(n, 3);
    assert_int_equal(kind_gate_parked(), 3);
    /* The tail is right after taking the last one: one more parks after. */
    struct item *late = make("p8", "sleep");
    assert_int_equal(kind_gate_admit(late), 0);
    const char *expect[] = { "p0", "p2", "p4", "p8" };
    for (int i = 0; i < 4; i++) {
        struct item *item = kind_gate_take_parked(1);
        assert_non_null(item);
        assert_string_equal(item->id, expect[i]);
        item_free(item);
    }
    assert_null(kind_gate_take_parked(1));
    assert_int_equal(kind_gate_parked(), 0);
}

/* Items kept here by a handover (item->kept_here) park in lists of their
 * own: take_parked(0) never returns (nor walks) them, take_parked(1) and a
 * release take every parked item by key, kept or not. */
static void
test_kept_parked_apart(void **state)
{
    configure(", paused: on");
    struct item *it[5];
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", i);
        it[i] = make(id, "sleep");
        it[i]->kept_here = i % 2 == 0;      /* p0, p2, p4 */
        assert_int_equal(kind_gate_admit(it[i]), 0);
    }
    assert_int_equal(kind_gate_parked(), 5);
    assert_int_equal(parked("sleep"), 5);
    count_each_n = 0;
    kind_gate_for_each(count_each, NULL);
    assert_int_equal(count_each_n, 5);
    struct item *item = kind_gate_take_parked(0);
    assert_string_equal(item->id, "p1");
    item_free(item);
    item = kind_gate_take_parked(0);
    assert_string_equal(item->id, "p3");
    item_free(item);
    assert_null(kind_gate_take_parked(0));
    assert_int_equal(kind_gate_parked(), 3);
    /* A kept one given back parks among the kept, by key. */
    item = kind_gate_take_parked(1);
    assert_string_equal(item->id, "p0");
    assert_int_equal(kind_gate_admit(item), 0);
    /* Unpaused: released by key, the kept too. */
    configure("");
    kind_gate_release_ready();
    const char *expect[] = { "p0", "p2", "p4" };
    assert_int_equal(fq.released_n, 3);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(fq.released[i]->id, expect[i]);
        kind_gate_leave(fq.released[i]);
        item_free(fq.released[i]);
    }
    assert_int_equal(kind_gate_parked(), 0);
}

static void
test_rate_refill_timer(void **state)
{
    configure(", rate: 20/s");
    struct item *it[22];
    for (int i = 0; i < 22; i++) {
        char id[16];
        snprintf(id, sizeof id, "r%d", i);
        it[i] = make(id, "sleep");
    }
    for (int i = 0; i < 20; i++)
        assert_int_equal(kind_gate_admit(it[i]), 1);     /* the burst */
    assert_int_equal(kind_gate_admit(it[20]), 0);
    assert_int_equal(kind_gate_admit(it[21]), 0);
    uint64_t t0 = clock_monotonic_ns();
    /* One timer: it asks for a dispatch once a token is there (bounded wait). */
    while (fq.dispatches == 0 && clock_monotonic_ns() - t0 < 5000000000ull)
        event_base_loop(fq.base, EVLOOP_ONCE);
    assert_int_equal(fq.dispatches, 1);
    assert_true(clock_monotonic_ns() - t0 >= 45000000ull);  /* not before the refill */
    kind_gate_release_ready();
    assert_true(fq.released_n >= 1);
    assert_ptr_equal(fq.released[0], it[20]);
    for (int i = 0; i < 20; i++)
        kind_gate_leave(it[i]);
    for (size_t i = 0; i < fq.released_n; i++)
        kind_gate_leave(fq.released[i]);
    /* What is still parked is freed by teardown. */
    for (int i = 0; i < 20; i++)
        item_free(it[i]);
    for (size_t i = 0; i < fq.released_n; i++)
        item_free(fq.released[i]);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_no_limit_is_a_pass, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrency_parks_and_gives_back_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_parked_in_key_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_lowers_raises_and_counts_held, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_and_take_parked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kept_parked_apart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_refill_timer, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
