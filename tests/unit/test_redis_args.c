/*
 * The Redis argument builder (src/grpc/redis_args.c): strings, binary
 * values, numbers and stream IDs at the u64 limits, both ways to overflow,
 * and what redis_args_send() hands hiredis, compared byte for byte with
 * hiredis's own encoding of the expected arguments.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/sds.h>

#include "grpc/redis_args.h"

/* Argument I of A is exactly the LEN bytes at WANT. */
static void
assert_arg(const struct redis_args *a, int i, const void *want, size_t len)
{
    assert_true(i < a->argc);
    assert_non_null(a->argv[i]);
    assert_int_equal(a->len[i], len);
    assert_memory_equal(a->argv[i], want, len);
}

#define assert_arg_str(a, i, s) assert_arg((a), (i), (s), strlen(s))

static void
test_strings_and_bytes(void **state)
{
    static struct redis_args a;
    static const unsigned char bytes[] = { 'x', 0, 0xff, '\r', '\n', 0x80, 0 };
    const char *key = "{q}:work";
    redis_args_init(&a, "EVALSHA");
    redis_args_str(&a, key);
    redis_args_str(&a, "");
    redis_args_mem(&a, bytes, sizeof bytes);
    redis_args_mem(&a, NULL, 0);
    redis_args_mem(&a, bytes, 1);
    assert_int_equal(a.argc, 6);
    assert_false(a.overflow);
    assert_arg_str(&a, 0, "EVALSHA");
    assert_arg_str(&a, 1, "{q}:work");
    assert_ptr_equal(a.argv[1], key);          /* not copied */
    assert_arg(&a, 2, "", 0);
    assert_arg(&a, 3, bytes, sizeof bytes);    /* NULs and all */
    assert_ptr_equal(a.argv[3], bytes);
    assert_arg(&a, 4, "", 0);                  /* a pointer hiredis may copy 0 bytes from */
    assert_arg(&a, 5, "x", 1);
}

static void
test_numbers(void **state)
{
    static struct redis_args a;
    redis_args_init(&a, "X");
    redis_args_u64(&a, 0);
    redis_args_u64(&a, 1);
    redis_args_u64(&a, UINT32_MAX);
    redis_args_u64(&a, (uint64_t)UINT32_MAX + 1);
    redis_args_u64(&a, UINT64_MAX - 1);
    redis_args_u64(&a, UINT64_MAX);
    redis_args_stream_id(&a, 0, 0);
    redis_args_stream_id(&a, 0, 1);
    redis_args_stream_id(&a, 0, UINT64_MAX);
    redis_args_stream_id(&a, UINT64_MAX, UINT64_MAX);
    assert_false(a.overflow);
    assert_int_equal(a.argc, 11);
    /* Each checked after all were added: later ones do not move earlier ones. */
    assert_arg_str(&a, 1, "0");
    assert_arg_str(&a, 2, "1");
    assert_arg_str(&a, 3, "4294967295");
    assert_arg_str(&a, 4, "4294967296");
    assert_arg_str(&a, 5, "18446744073709551614");
    assert_arg_str(&a, 6, "18446744073709551615");
    assert_arg_str(&a, 7, "0-0");
    assert_arg_str(&a, 8, "0-1");
    assert_arg_str(&a, 9, "0-18446744073709551615");
    assert_arg_str(&a, 10, "18446744073709551615-18446744073709551615");
}

static void
test_too_many_arguments(void **state)
{
    static struct redis_args a;
    redis_args_init(&a, "EVALSHA");
    for (int i = 1; i < REDIS_ARGS_MAX; i++)
        redis_args_u64(&a, (uint64_t)i);
    assert_int_equal(a.argc, REDIS_ARGS_MAX);
    assert_false(a.overflow);
    assert_arg_str(&a, REDIS_ARGS_MAX - 1, "511");

    redis_args_str(&a, "one too many");
    assert_true(a.overflow);
    assert_int_equal(a.argc, REDIS_ARGS_MAX);
    size_t used = a.text_used;
    redis_args_u64(&a, 7);
    redis_args_stream_id(&a, 0, 7);
    redis_args_mem(&a, "z", 1);
    assert_int_equal(a.argc, REDIS_ARGS_MAX);
    assert_int_equal(a.text_used, used);
    assert_arg_str(&a, REDIS_ARGS_MAX - 1, "511");
    /* Refused before hiredis is asked: the context is not even looked at. */
    assert_int_equal(redis_args_send(&a, NULL, NULL, NULL), -1);

    redis_args_init(&a, "PING");
    assert_false(a.overflow);
    assert_int_equal(a.argc, 1);
    assert_int_equal(a.text_used, 0);
}

static void
test_too_many_digits(void **state)
{
    static struct redis_args a;
    const char *widest = "18446744073709551615-18446744073709551615";
    size_t each = strlen(widest) + 1, fit = REDIS_ARGS_TEXT / each;
    redis_args_init(&a, "XACK");
    for (size_t i = 0; i < fit; i++)
        redis_args_stream_id(&a, UINT64_MAX, UINT64_MAX);
    assert_false(a.overflow);
    assert_int_equal(a.argc, 1 + fit);
    assert_arg_str(&a, (int)fit, widest);

    redis_args_stream_id(&a, UINT64_MAX, UINT64_MAX);
    assert_true(a.overflow);
    assert_int_equal(a.argc, 1 + fit);
    assert_true(a.text_used <= REDIS_ARGS_TEXT);
    assert_arg_str(&a, (int)fit, widest);
    assert_int_equal(redis_args_send(&a, NULL, NULL, NULL), -1);
}

/* ---- what hiredis gets ---- */

static int replies_seen;

static void
on_reply(redisAsyncContext *ac, void *reply, void *arg)
{
    assert_null(reply);     /* the context is freed before anything is read */
    assert_ptr_equal(arg, &replies_seen);
    replies_seen++;
}

/* A socket listening on 127.0.0.1 that never answers; its port in *PORT. */
static int
listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof sin;
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

static void
test_send(void **state)
{
    static struct redis_args a;
    static const unsigned char payload[] = { 0, 1, 2, 0xfe, 0xff, '\r', '\n', 0 };
    int port, fd = listener(&port);
    redisAsyncContext *ac = redisAsyncConnect("127.0.0.1", port);
    assert_non_null(ac);
    assert_int_equal(ac->err, 0);

    redis_args_init(&a, "EVALSHA");
    redis_args_str(&a, "abc");
    redis_args_mem(&a, payload, sizeof payload);
    redis_args_u64(&a, UINT64_MAX);
    redis_args_stream_id(&a, 0, 42);
    redis_args_mem(&a, NULL, 0);
    replies_seen = 0;
    assert_int_equal(redis_args_send(&a, ac, on_reply, &replies_seen), 0);

    /* No event loop is attached, so the command waits in the output buffer. */
    const char *want[] = { "EVALSHA", "abc", (const char *)payload, "18446744073709551615",
                           "0-42", "" };
    const size_t want_len[] = { 7, 3, sizeof payload, 20, 4, 0 };
    char *encoded;
    int n = redisFormatCommandArgv(&encoded, 6, want, want_len);
    assert_true(n > 0);
    assert_int_equal(sdslen(ac->c.obuf), (size_t)n);
    assert_memory_equal(ac->c.obuf, encoded, (size_t)n);
    free(encoded);

    /* A connection on its way out refuses commands: -1, no overflow. */
    redisAsyncDisconnect(ac);   /* waits for the reply owed */
    redis_args_init(&a, "PING");
    assert_int_equal(redis_args_send(&a, ac, on_reply, &replies_seen), -1);
    assert_false(a.overflow);

    redisAsyncFree(ac);
    assert_int_equal(replies_seen, 1);
    close(fd);
}

/* A command of any size: the same bytes as hiredis's own encoding, with
 * binary values, an empty one, one of 100 KB (past the first buffer) and
 * 2000 arguments (past redis_args' bound); started over, it forgets them. */
static void
test_cmd_any_size(void **state)
{
    enum { N = 2000 };
    static const char *argv[N + 4];
    static size_t argv_len[N + 4];
    static char numbers[N][24];
    static char big[100000];
    static const unsigned char bytes[] = { 'x', 0, 0xff, '\r', '\n' };
    memset(big, 'b', sizeof big);
    struct redis_cmd c = { 0 };
    for (int round = 0; round < 2; round++) {
        redis_cmd_init(&c, "EVALSHA");
        argv[0] = "EVALSHA";
        argv[1] = (const char *)bytes;
        argv[2] = "";
        argv[3] = big;
        redis_cmd_mem(&c, bytes, sizeof bytes);
        redis_cmd_str(&c, "");
        redis_cmd_mem(&c, big, sizeof big);
        argv_len[0] = 7;
        argv_len[1] = sizeof bytes;
        argv_len[2] = 0;
        argv_len[3] = sizeof big;
        for (int i = 0; i < N; i++) {
            uint64_t v = i == 0 ? UINT64_MAX : (uint64_t)i * 7919;
            snprintf(numbers[i], sizeof numbers[i], "%llu", (unsigned long long)v);
            redis_cmd_u64(&c, v);
            argv[4 + i] = numbers[i];
            argv_len[4 + i] = strlen(numbers[i]);
        }
        assert_int_equal(c.argc, N + 4);
        char *want;
        long long n = redisFormatCommandArgv(&want, N + 4, argv, argv_len);
        assert_true(n > 0);
        size_t len;
        const char *got = redis_cmd_bytes(&c, &len);
        assert_int_equal(len, (size_t)n);
        assert_memory_equal(got, want, len);
        redisFreeCommand(want);
    }
    redis_cmd_init(&c, "PING");
    size_t len;
    const char *got = redis_cmd_bytes(&c, &len);
    assert_int_equal(len, strlen("*1\r\n$4\r\nPING\r\n"));
    assert_memory_equal(got, "*1\r\n$4\r\nPING\r\n", len);
    redis_cmd_free(&c);
    assert_null(c.buf);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings_and_bytes),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_too_many_arguments),
        cmocka_unit_test(test_too_many_digits),
        cmocka_unit_test(test_send),
        cmocka_unit_test(test_cmd_any_size),
    };
    return cmocka_run_group_tests_name("redis_args", tests, NULL, NULL);
}
