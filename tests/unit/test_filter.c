/* Subscriber filters: empty lists match all; every list must match. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "grpc/filter.h"

static wire_updates_request
request(char **ids, size_t n_ids, char **kinds, size_t n_kinds, int *states, size_t n_states,
        char **batches, size_t n_batches)
{
    wire_updates_request r;
    com__agrounds__dosomething__v1__updates_request__init(&r);
    r.item_ids = ids;
    r.n_item_ids = n_ids;
    r.kinds = kinds;
    r.n_kinds = n_kinds;
    r.states = (Com__Agrounds__Dosomething__V1__State *)states;
    r.n_states = n_states;
    r.batches = batches;
    r.n_batches = n_batches;
    return r;
}

static void
test_empty_matches_everything(void **state)
{
    wire_updates_request r = request(NULL, 0, NULL, 0, NULL, 0, NULL, 0);
    struct filter f;
    char err[128];
    assert_int_equal(filter_init(&f, &r, err, sizeof err), 0);
    assert_true(filter_match(&f, "a", "echo", "", STATE_QUEUED));
    assert_true(filter_match(&f, "", "", "", STATE_FAILED));
    filter_free(&f);
}

static void
test_every_list_must_match(void **state)
{
    char *ids[] = { "z", "a", "m" };
    char *kinds[] = { "sha256" };
    int states[] = { STATE_SUCCEEDED, STATE_FAILED };
    char *batches[] = { "b1", "b2" };
    wire_updates_request r = request(ids, 3, kinds, 1, states, 2, batches, 2);
    struct filter f;
    char err[128];
    assert_int_equal(filter_init(&f, &r, err, sizeof err), 0);
    assert_true(filter_match(&f, "a", "sha256", "b2", STATE_SUCCEEDED));
    assert_true(filter_match(&f, "z", "sha256", "b1", STATE_FAILED));
    assert_false(filter_match(&f, "b", "sha256", "b1", STATE_FAILED));       /* id */
    assert_false(filter_match(&f, "a", "echo", "b1", STATE_FAILED));         /* kind */
    assert_false(filter_match(&f, "a", "sha256", "b3", STATE_FAILED));       /* batch */
    assert_false(filter_match(&f, "a", "sha256", "b1", STATE_QUEUED));       /* state */
    assert_false(filter_match(&f, "a", "sha256", "", STATE_SUCCEEDED));
    filter_free(&f);
}

static void
test_many_ids(void **state)
{
    static char names[1000][16];
    static char *ids[1000];
    for (int i = 0; i < 1000; i++) {
        snprintf(names[i], sizeof names[i], "i%d", 999 - i);
        ids[i] = names[i];
    }
    wire_updates_request r = request(ids, 1000, NULL, 0, NULL, 0, NULL, 0);
    struct filter f;
    char err[128];
    assert_int_equal(filter_init(&f, &r, err, sizeof err), 0);
    for (int i = 0; i < 1000; i += 37) {
        char id[16];
        snprintf(id, sizeof id, "i%d", i);
        assert_true(filter_match(&f, id, "k", "", STATE_STARTED));
    }
    assert_false(filter_match(&f, "i1000", "k", "", STATE_STARTED));
    filter_free(&f);
}

static void
test_bad_state_rejected(void **state)
{
    int states[] = { STATE_QUEUED, 42 };
    wire_updates_request r = request(NULL, 0, NULL, 0, states, 2, NULL, 0);
    struct filter f;
    char err[128];
    assert_int_equal(filter_init(&f, &r, err, sizeof err), -1);
    assert_non_null(strstr(err, "states[1]: 42"));
    int unspecified[] = { STATE_UNSPECIFIED };
    r = request(NULL, 0, NULL, 0, unspecified, 1, NULL, 0);
    assert_int_equal(filter_init(&f, &r, err, sizeof err), -1);
}

static void
test_invalid_utf8_rejected(void **state)
{
    char *batches[] = { "ok", "bad\xff" };
    wire_updates_request r = request(NULL, 0, NULL, 0, NULL, 0, batches, 2);
    struct filter f;
    char err[128];
    assert_int_equal(filter_init(&f, &r, err, sizeof err), -1);
    assert_string_equal(err, "batches[1] is not valid UTF-8");
}

static void
test_scope(void **state)
{
    char *ids[] = { "job", "alice/x", "bob/job" };
    wire_updates_request r = request(ids, 3, NULL, 0, NULL, 0, NULL, 0);
    struct filter f;
    char err[128];
    assert_int_equal(filter_init(&f, &r, err, sizeof err), 0);
    filter_set_scope(&f, "alice/");
    /* Ids without the scope are the client's own; one with it stays. */
    assert_true(filter_match(&f, "alice/job", "k", "", STATE_QUEUED));
    assert_true(filter_match(&f, "alice/x", "k", "", STATE_QUEUED));
    assert_true(filter_match(&f, "alice/bob/job", "k", "", STATE_QUEUED));
    assert_false(filter_match(&f, "bob/job", "k", "", STATE_QUEUED));
    assert_false(filter_match(&f, "job", "k", "", STATE_QUEUED));
    filter_free(&f);
    r = request(NULL, 0, NULL, 0, NULL, 0, NULL, 0);
    assert_int_equal(filter_init(&f, &r, err, sizeof err), 0);
    filter_set_scope(&f, "alice/");
    assert_true(filter_match(&f, "alice/anything", "k", "", STATE_QUEUED));
    assert_false(filter_match(&f, "alicex/y", "k", "", STATE_QUEUED));
    filter_free(&f);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_matches_everything),
        cmocka_unit_test(test_every_list_must_match),
        cmocka_unit_test(test_many_ids),
        cmocka_unit_test(test_bad_state_rejected),
        cmocka_unit_test(test_invalid_utf8_rejected),
        cmocka_unit_test(test_scope),
    };
    return cmocka_run_group_tests_name("filter", tests, NULL, NULL);
}
