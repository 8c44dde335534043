/*
 * What an item must be for its kind (src/core/kind.c): the built-ins'
 * params and limits, exec's DS_PARAM_ names, and which items are quick.
 * Pure functions on a handler config and a WorkItem; no process is started.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dosomething/handler.h"

#include "core/config.h"
#include "core/kind.h"
#include "core/wire.h"

#define PARAMS_MAX 8

struct test_item {
    wire_work_item item;
    wire_param params[PARAMS_MAX];
    wire_param *param_ptrs[PARAMS_MAX];
};

static void
item_init(struct test_item *t, const void *payload, size_t len)
{
    wire_work_item init = COM__AGROUNDS__DOSOMETHING__V1__WORK_ITEM__INIT;
    memset(t, 0, sizeof *t);
    t->item = init;
    t->item.id = (char *)"x";
    t->item.kind = (char *)"";
    t->item.payload.data = (uint8_t *)payload;
    t->item.payload.len = len;
    t->item.params = t->param_ptrs;
}

static void
add_param(struct test_item *t, const char *key, const char *value)
{
    wire_param init = COM__AGROUNDS__DOSOMETHING__V1__WORK_ITEM__PARAMS_ENTRY__INIT;
    size_t n = t->item.n_params++;
    assert_true(n < PARAMS_MAX);
    t->params[n] = init;
    t->params[n].key = (char *)key;
    t->params[n].value = (char *)value;
    t->param_ptrs[n] = &t->params[n];
}

static struct ds_handler_config
handler(enum ds_handler_type type, const char *kind)
{
    struct ds_handler_config h;
    memset(&h, 0, sizeof h);
    h.kind = (char *)kind;
    h.type = type;
    return h;
}

/* kind_check of one param KEY=VALUE against H: its result, err in ERR. */
static int
check_one(const struct ds_handler_config *h, const char *key, const char *value, char *err,
          size_t err_size)
{
    struct test_item t;
    item_init(&t, "", 0);
    add_param(&t, key, value);
    err[0] = '\0';
    return kind_check(h, &t.item, err, err_size);
}

static void
test_builtin_params(void **state)
{
    struct ds_handler_config sha = handler(DS_HANDLER_SHA256, "hash"),
                             sleep = handler(DS_HANDLER_SLEEP, "nap"),
                             echo = handler(DS_HANDLER_ECHO, "echo");
    char err[512];

    assert_int_equal(check_one(&sha, "rounds", "1", err, sizeof err), 0);
    assert_int_equal(check_one(&sha, "rounds", "100000000", err, sizeof err), 0);
    assert_int_equal(check_one(&sha, "rounds", "100000001", err, sizeof err), -1);
    assert_string_equal(err, "param rounds of kind \"hash\" must be an integer 1..100000000, "
                        "got \"100000001\"");
    assert_int_equal(check_one(&sha, "rounds", "0", err, sizeof err), -1);
    /* Only plain decimal digits: no sign, no space, no hex, nothing after. */
    const char *bad[] = { "", "-1", "+1", " 1", "1 ", "0x10", "1e3", "2.0",
                          "99999999999999999999999" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(check_one(&sha, "rounds", bad[i], err, sizeof err), -1);

    assert_int_equal(check_one(&sleep, "ms", "0", err, sizeof err), 0);
    assert_int_equal(check_one(&sleep, "ms", "86400000", err, sizeof err), 0);
    assert_int_equal(check_one(&sleep, "ms", "86400001", err, sizeof err), -1);
    assert_int_equal(check_one(&sleep, "steps", "0", err, sizeof err), -1);
    assert_int_equal(check_one(&sleep, "steps", "100000", err, sizeof err), 0);
    assert_int_equal(check_one(&sleep, "steps", "100001", err, sizeof err), -1);

    /* A param of another built-in, or of none. */
    assert_int_equal(check_one(&sleep, "rounds", "1", err, sizeof err), -1);
    assert_string_equal(err, "kind \"nap\" takes no param \"rounds\"");
    assert_int_equal(check_one(&echo, "ms", "1", err, sizeof err), -1);
    assert_string_equal(err, "kind \"echo\" takes no param \"ms\"");

    /* A long key or value is quoted cut to 64 bytes, never mid-character. */
    char key[200];
    memset(key, 'k', sizeof key);
    memcpy(key + 63, "\xc3\xa9", 2);
    key[sizeof key - 1] = '\0';
    assert_int_equal(check_one(&echo, key, "1", err, sizeof err), -1);
    char want[128];
    snprintf(want, sizeof want, "kind \"echo\" takes no param \"%.63s\"", key);
    assert_string_equal(err, want);

    /* No params at all suits every built-in. */
    struct test_item t;
    item_init(&t, "", 0);
    assert_int_equal(kind_check(&echo, &t.item, err, sizeof err), 0);
    assert_int_equal(kind_check(&sha, &t.item, err, sizeof err), 0);
    assert_int_equal(kind_check(&sleep, &t.item, err, sizeof err), 0);
}

/* A module checks its own params when it runs. */
static void
test_module_params_unchecked(void **state)
{
    struct ds_handler_config m = handler(DS_HANDLER_MODULE, "mod");
    char err[256];
    assert_int_equal(check_one(&m, "anything", "at all", err, sizeof err), 0);
    assert_int_equal(check_one(&m, "rounds", "-1", err, sizeof err), 0);
}

static void
test_param_values(void **state)
{
    struct ds_handler_config sha = handler(DS_HANDLER_SHA256, "hash"),
                             sleep = handler(DS_HANDLER_SLEEP, "nap");
    struct test_item t;
    item_init(&t, "", 0);
    assert_int_equal(kind_param(&sha, &t.item, "rounds"), 1);
    assert_int_equal(kind_param(&sleep, &t.item, "ms"), 0);
    assert_int_equal(kind_param(&sleep, &t.item, "steps"), 1);
    assert_int_equal(kind_param(&sleep, &t.item, "rounds"), 0);     /* not sleep's */

    add_param(&t, "steps", "40");
    add_param(&t, "ms", "1500");
    assert_int_equal(kind_param(&sleep, &t.item, "ms"), 1500);
    assert_int_equal(kind_param(&sleep, &t.item, "steps"), 40);
}

static void
test_exec_param_names(void **state)
{
    char buf[64];
    assert_int_equal(kind_exec_env_name("my-key.x", buf, sizeof buf), 17);
    assert_string_equal(buf, "DS_PARAM_MY_KEY_X");
    kind_exec_env_name("\xc3\x9cn\xc3\xaf", buf, sizeof buf);        /* "Ünï" */
    assert_string_equal(buf, "DS_PARAM___N__");     /* two bytes each for Ü and ï */
    assert_int_equal(kind_exec_env_name("abc", buf, 12), 12);
    assert_string_equal(buf, "DS_PARAM_AB");
    assert_int_equal(kind_exec_env_name("abc", NULL, 0), 12);

    struct ds_handler_config h = handler(DS_HANDLER_EXEC, "run");
    struct test_item t;
    char err[256];
    item_init(&t, "", 0);
    add_param(&t, "a", "1");
    add_param(&t, "b-c", "2");
    add_param(&t, "d", "3");
    assert_int_equal(kind_check(&h, &t.item, err, sizeof err), 0);
    add_param(&t, "B_C", "4");
    assert_int_equal(kind_check(&h, &t.item, err, sizeof err), -1);
    assert_non_null(strstr(err, "would both be DS_PARAM_B_C"));
    assert_non_null(strstr(err, "of kind \"run\""));

    /* Any value goes: the program gets it as it is. */
    item_init(&t, "", 0);
    add_param(&t, "rounds", "-1");
    assert_int_equal(kind_check(&h, &t.item, err, sizeof err), 0);
}

static void
test_quick(void **state)
{
    struct ds_handler_config echo = handler(DS_HANDLER_ECHO, "echo"),
                             sha = handler(DS_HANDLER_SHA256, "hash"),
                             sleep = handler(DS_HANDLER_SLEEP, "nap"),
                             exec = handler(DS_HANDLER_EXEC, "run"),
                             module = handler(DS_HANDLER_MODULE, "mod");
    static uint8_t payload[64 * 300];
    struct test_item t;

    item_init(&t, payload, sizeof payload);
    assert_true(kind_is_quick(&echo, &t.item));
    assert_false(kind_is_quick(&sleep, &t.item));
    assert_false(kind_is_quick(&exec, &t.item));

    /* sha256: up to 256 compressions, rounds x (payload / 64 + 1). */
    item_init(&t, payload, 64 * 255);               /* 256 blocks, 1 round */
    assert_true(kind_is_quick(&sha, &t.item));
    item_init(&t, payload, 64 * 256);               /* 257 blocks */
    assert_false(kind_is_quick(&sha, &t.item));
    item_init(&t, payload, 63);                     /* 1 block */
    add_param(&t, "rounds", "256");
    assert_true(kind_is_quick(&sha, &t.item));
    item_init(&t, payload, 64);                     /* 2 blocks */
    add_param(&t, "rounds", "129");
    assert_false(kind_is_quick(&sha, &t.item));

    /* A module: as its flags say, as the master read them; the item does
     * not matter (and may be NULL). */
    assert_false(kind_is_quick(&module, NULL));
    module.module_flags = DS_MODULE_QUICK;
    assert_true(kind_is_quick(&module, NULL));
    item_init(&t, payload, sizeof payload);
    assert_true(kind_is_quick(&module, &t.item));
    module.module_flags = ~DS_MODULE_QUICK;         /* flags of a later ABI, not quick */
    assert_false(kind_is_quick(&module, &t.item));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin_params),
        cmocka_unit_test(test_module_params_unchecked),
        cmocka_unit_test(test_param_values),
        cmocka_unit_test(test_exec_param_names),
        cmocka_unit_test(test_quick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
