/*
 * The result cache's pure parts: the key (src/grpc/cache_key.c) and the
 * LRU + ttl table (src/grpc/result_cache.c), with a config made by hand.
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
#include "core/wire.h"
#include "grpc/cache_key.h"
#include "grpc/metrics.h"
#include "grpc/result_cache.h"

struct test_item {
    wire_work_item item;
    wire_param params[4];
    wire_param *ptrs[4];
};

static void
item_init(struct test_item *t, const char *payload)
{
    wire_work_item init = COM__AGROUNDS__DOSOMETHING__V1__WORK_ITEM__INIT;
    memset(t, 0, sizeof *t);
    t->item = init;
    t->item.payload.data = (uint8_t *)payload;
    t->item.payload.len = strlen(payload);
    t->item.params = t->ptrs;
}

static void
param(struct test_item *t, const char *key, const char *value)
{
    wire_param init = COM__AGROUNDS__DOSOMETHING__V1__WORK_ITEM__PARAMS_ENTRY__INIT;
    size_t i = t->item.n_params++;
    t->params[i] = init;
    t->params[i].key = (char *)key;
    t->params[i].value = (char *)value;
    t->ptrs[i] = &t->params[i];
}

static const uint8_t digest0[CACHE_KEY_SIZE];

static void
key(const char *kind, const struct test_item *t, uint8_t out[CACHE_KEY_SIZE])
{
    cache_key_item(kind, digest0, &t->item, out);
}

static void
test_key_param_order_and_ambiguity(void **state)
{
    (void)state;
    struct test_item a, b, c;
    uint8_t ka[32], kb[32], kc[32];
    item_init(&a, "x");
    param(&a, "ms", "10");
    param(&a, "steps", "2");
    item_init(&b, "x");
    param(&b, "steps", "2");
    param(&b, "ms", "10");
    key("sleep", &a, ka);
    key("sleep", &b, kb);
    assert_memory_equal(ka, kb, 32);            /* order does not matter */
    item_init(&c, "x");
    param(&c, "ms", "102");
    param(&c, "steps", "");
    key("sleep", &c, kc);
    assert_memory_not_equal(ka, kc, 32);        /* "10"+"2" is not "102"+"" */
    key("sleep2", &a, kc);
    assert_memory_not_equal(ka, kc, 32);        /* the kind */
    /* The payload and the kind do not run into each other. */
    struct test_item p1, p2;
    item_init(&p1, "bc");
    item_init(&p2, "c");
    uint8_t k1[32], k2[32];
    key("a", &p1, k1);
    key("ab", &p2, k2);
    assert_memory_not_equal(k1, k2, 32);
    /* Duplicate keys: the order among them is kept (the first is read). */
    item_init(&a, "x");
    param(&a, "ms", "1");
    param(&a, "ms", "2");
    item_init(&b, "x");
    param(&b, "ms", "2");
    param(&b, "ms", "1");
    key("sleep", &a, ka);
    key("sleep", &b, kb);
    assert_memory_not_equal(ka, kb, 32);
    char hex[65];
    cache_key_hex(ka, hex);
    assert_int_equal(strlen(hex), 64);
}

static void
test_key_handler_definition(void **state)
{
    (void)state;
    char *argv1[] = { (char *)"tr", (char *)"a-z", (char *)"A-Z", NULL };
    char *argv2[] = { (char *)"tr", (char *)"a-z", (char *)"B-Z", NULL };
    struct ds_handler_config h1 = { .kind = (char *)"k", .type = DS_HANDLER_EXEC, .argv = argv1,
                                    .argc = 3 };
    struct ds_handler_config h2 = h1;
    h2.argv = argv2;
    struct ds_handler_config h3 = h1;
    h3.timeout_ms = 5000;       /* not part of the definition */
    uint8_t d1[32], d2[32], d3[32];
    cache_key_handler(&h1, d1);
    cache_key_handler(&h2, d2);
    cache_key_handler(&h3, d3);
    assert_memory_not_equal(d1, d2, 32);
    assert_memory_equal(d1, d3, 32);
}

static struct ds_handler_config handler;
static struct ds_config config;

static void
configure(uint64_t size, uint64_t ttl_ms)
{
    handler.kind = (char *)"k";
    handler.type = DS_HANDLER_SHA256;
    handler.cache_size = size;
    handler.cache_ttl_ms = ttl_ms;
    config.handlers = &handler;
    config.handler_count = 1;
    config.max_result_size = DS_RESULT_SIZE_MAX;    /* config_load's default */
    result_cache_configure(&config);
}

static void
make_key(uint8_t out[CACHE_KEY_SIZE], int n)
{
    memset(out, 0, CACHE_KEY_SIZE);
    out[0] = (uint8_t)n;
    out[9] = (uint8_t)(n >> 8);
}

static void
test_lru_ttl_reload(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    result_cache_init(base);
    const char *kind = metrics_kind("k")->kind;
    configure(1000, 3600 * 1000);
    struct cache_kind *k = result_cache_kind(kind);
    assert_non_null(k);
    assert_null(result_cache_kind(metrics_kind("other")->kind));
    uint64_t now = (uint64_t)clock_wall_ns() / 1000000u;
    uint8_t kk[CACHE_KEY_SIZE];
    char result[32];
    memset(result, 'r', sizeof result);
    for (int n = 0; n < 20; n++) {
        make_key(kk, n);
        assert_int_equal(result_cache_put(k, kk, result, sizeof result, now), 0);
        if (n == 1) {           /* 0 is used: 1 becomes the least recently used */
            const void *r;
            size_t len;
            make_key(kk, 0);
            assert_true(result_cache_get(k, kk, now, &r, &len));
        }
    }
    struct cache_kind_stats st;
    result_cache_stats(k, &st);
    assert_true(st.bytes <= 1000);
    assert_int_equal(st.evictions, 20 - st.entries);
    const void *r;
    size_t len;
    make_key(kk, 19);
    assert_true(result_cache_get(k, kk, now, &r, &len));
    assert_int_equal(len, 32);
    make_key(kk, 1);
    assert_false(result_cache_get(k, kk, now, &r, &len));
    /* Too large for the kind: not kept. */
    char big[2000] = { 0 };
    assert_int_equal(result_cache_put(k, kk, big, sizeof big, now), -1);
    /* ttl: past it, not served. */
    make_key(kk, 19);
    assert_false(result_cache_get(k, kk, now + 3600 * 1000, &r, &len));
    result_cache_stats(k, &st);
    assert_true(st.expired >= 1);
    /* A reload: smaller evicts, off empties. */
    configure(300, 3600 * 1000);
    k = result_cache_kind(kind);
    result_cache_stats(k, &st);
    assert_true(st.bytes <= 300);
    configure(0, 0);
    assert_null(result_cache_kind(kind));
    assert_int_equal(result_cache_bytes(), 0);
    result_cache_shutdown();
    event_base_free(base);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_param_order_and_ambiguity),
        cmocka_unit_test(test_key_handler_definition),
        cmocka_unit_test(test_lru_ttl_reload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
