/*
 * hiredis's replies built in a pool (src/grpc/redis_reply.c): every reply
 * type, nesting as deep as hiredis reads, a reply fed a byte at a time,
 * strings bigger than a block, many replies one after the other (the
 * blocks come back), a reader freed with a reply half read, and a protocol
 * error. Each reply is compared with what hiredis's own functions build
 * from the same bytes. Run under valgrind by `make valgrind`: no block
 * leaks and nothing is read past its object.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>

#include "grpc/redis_reply.h"

/* A and B are the same tree. */
static void
assert_same(const redisReply *a, const redisReply *b)
{
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(a->type, b->type);
    switch (a->type) {
    case REDIS_REPLY_INTEGER:
        assert_int_equal(a->integer, b->integer);
        break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        assert_int_equal(a->len, b->len);
        assert_memory_equal(a->str, b->str, a->len);
        assert_int_equal(a->str[a->len], '\0');
        break;
    case REDIS_REPLY_ARRAY:
        assert_int_equal(a->elements, b->elements);
        for (size_t i = 0; i < a->elements; i++)
            assert_same(a->element[i], b->element[i]);
        break;
    default:
        break;
    }
}

/* The reply of BYTES from a pooled reader (fed STEP bytes at a time, 0:
 * all at once) is what a plain reader makes of them. */
static void
check(struct reply_pool *pool, const char *bytes, size_t len, size_t step)
{
    redisReader *plain = redisReaderCreate();
    redisReader *pooled = redisReaderCreate();
    redis_reply_install(pooled, pool);
    void *want = NULL, *got = NULL;
    assert_int_equal(redisReaderFeed(plain, bytes, len), REDIS_OK);
    assert_int_equal(redisReaderGetReply(plain, &want), REDIS_OK);
    for (size_t at = 0; at < len; at += step ? step : len) {
        size_t n = step && len - at > step ? step : len - at;
        assert_null(got);
        assert_int_equal(redisReaderFeed(pooled, bytes + at, n), REDIS_OK);
        assert_int_equal(redisReaderGetReply(pooled, &got), REDIS_OK);
    }
    assert_same(want, got);
    freeReplyObject(want);
    pooled->fn->freeObject(got);
    redisReaderFree(plain);
    redisReaderFree(pooled);
}

#define CHECK(pool, s) check((pool), (s), sizeof(s) - 1, 0)

static void
test_every_type(void **state)
{
    static struct reply_pool pool;
    CHECK(&pool, ":42\r\n");
    CHECK(&pool, ":-9223372036854775808\r\n");
    CHECK(&pool, "+OK\r\n");
    CHECK(&pool, "-ERR no such key\r\n");
    CHECK(&pool, "$0\r\n\r\n");
    CHECK(&pool, "$-1\r\n");
    CHECK(&pool, "*-1\r\n");
    CHECK(&pool, "*0\r\n");
    CHECK(&pool, "$5\r\na\0b\r\n\r\n");
    CHECK(&pool, "*3\r\n:1\r\n$-1\r\n*2\r\n+a\r\n-b\r\n");
    /* an XREADGROUP reply: [[stream, [[id, [f, v, ...]]]]] */
    CHECK(&pool, "*1\r\n*2\r\n$4\r\nwork\r\n*2\r\n*2\r\n$3\r\n0-1\r\n*4\r\n$1\r\ni\r\n$2\r\nid\r\n"
          "$1\r\nw\r\n$3\r\nxyz\r\n*2\r\n$3\r\n0-2\r\n*0\r\n");
    /* as deep as hiredis reads (7 levels of arrays) */
    CHECK(&pool, "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:7\r\n");
    redis_reply_pool_free(&pool);
    (void)state;
}

static void
test_byte_at_a_time(void **state)
{
    static struct reply_pool pool;
    static const char s[] = "*3\r\n$3\r\nabc\r\n*2\r\n:1\r\n$-1\r\n+done\r\n";
    check(&pool, s, sizeof s - 1, 1);
    check(&pool, s, sizeof s - 1, 7);
    redis_reply_pool_free(&pool);
    (void)state;
}

/* Strings and arrays over a block, among small ones; then the blocks of
 * many replies come back to the pool (valgrind: none lost). */
static void
test_big_and_many(void **state)
{
    static struct reply_pool pool;
    size_t big = 300 * 1024;
    size_t cap = big + 4096 * 64;
    char *s = malloc(cap);
    assert_non_null(s);
    int n = snprintf(s, cap, "*3\r\n$3\r\nabc\r\n$%zu\r\n", big);
    memset(s + n, 'x', big);
    size_t len = (size_t)n + big;
    len += (size_t)snprintf(s + len, cap - len, "\r\n*4000\r\n");
    for (int i = 0; i < 4000; i++)
        len += (size_t)snprintf(s + len, cap - len, ":%d\r\n", i);
    check(&pool, s, len, 0);
    check(&pool, s, len, 65536);
    for (int i = 0; i < 200; i++)
        check(&pool, s, len, 0);
    assert_true(pool.free_n <= REDIS_REPLY_KEEP / (64 * 1024));
    free(s);
    redis_reply_pool_free(&pool);
    assert_int_equal(pool.free_n, 0);
    (void)state;
}

/* A reader freed with a reply half read frees it into the pool; a
 * protocol error is hiredis's error, with no reply. */
static void
test_half_read_and_errors(void **state)
{
    static struct reply_pool pool;
    redisReader *r = redisReaderCreate();
    redis_reply_install(r, &pool);
    void *got = NULL;
    static const char half[] = "*3\r\n$3\r\nabc\r\n*2\r\n:1\r\n";
    assert_int_equal(redisReaderFeed(r, half, sizeof half - 1), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &got), REDIS_OK);
    assert_null(got);
    redisReaderFree(r);
    assert_null(pool.building);

    r = redisReaderCreate();
    redis_reply_install(r, &pool);
    static const char bad[] = "*2\r\n:1\r\n?what\r\n";
    assert_int_equal(redisReaderFeed(r, bad, sizeof bad - 1), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &got), REDIS_ERR);
    assert_null(got);
    redisReaderFree(r);
    redis_reply_pool_free(&pool);
    (void)state;
}

/* Numbers read strictly: only 1 to max digits, nothing around them. */
static void
test_u64(void **state)
{
    struct { const char *s; size_t max; int ok; uint64_t v; } cases[] = {
        { "0", 15, 0, 0 },
        { "1765000000000", 15, 0, 1765000000000ull },
        { "999999999999999", 15, 0, 999999999999999ull },
        { "1000000000000000", 15, -1, 0 },              /* 16 digits */
        { "18446744073709551615", 20, -1, 0 },          /* 20: over 19 */
        { "9999999999999999999", 19, 0, 9999999999999999999ull },
        { "", 15, -1, 0 },
        { "-1", 15, -1, 0 },
        { "+1", 15, -1, 0 },
        { " 1", 15, -1, 0 },
        { "1 ", 15, -1, 0 },
        { "1e9", 15, -1, 0 },
        { "not-a-time", 15, -1, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        redisReply r = { .type = REDIS_REPLY_STRING, .str = (char *)cases[i].s,
                         .len = strlen(cases[i].s) };
        uint64_t v = 42;
        assert_int_equal(redis_reply_u64(&r, cases[i].max, &v), cases[i].ok);
        assert_true(v == (cases[i].ok == 0 ? cases[i].v : 42));
    }
    redisReply n = { .type = REDIS_REPLY_INTEGER, .integer = 5 };
    uint64_t v = 42;
    assert_int_equal(redis_reply_u64(&n, 15, &v), -1);
    assert_int_equal(redis_reply_u64(NULL, 15, &v), -1);
    assert_true(v == 42);
    (void)state;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_type),
        cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_big_and_many),
        cmocka_unit_test(test_half_read_and_errors),
        cmocka_unit_test(test_u64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
