/* The user file of status.auth (src/core/auth_file.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <crypt.h>

#include "core/auth_file.h"

static char *
hash_of(const char *prefix, unsigned long cost, const char *password)
{
    const char *salt = crypt_gensalt(prefix, cost, NULL, 0);
    assert_non_null(salt);
    const char *h = crypt(password, salt);
    assert_non_null(h);
    return strdup(h);
}

static char path[64];

static void
write_file(const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int
setup(void **state)
{
    snprintf(path, sizeof path, "/tmp/ds-auth-%ld", (long)getpid());
    return 0;
}

static int
teardown(void **state)
{
    unlink(path);
    return 0;
}

static void
test_load_and_verify(void **state)
{
    char *b = hash_of("$2b$", 4, "secret"), *s = hash_of("$6$", 5000, "other");
    char text[512];
    snprintf(text, sizeof text, "# users\n\nalice:%s\r\nbob:%s:comment\n", b, s);
    write_file(text);
    struct auth_file f = { NULL, 0 };
    char err[600];
    assert_int_equal(auth_file_load(path, &f, err, sizeof err), 0);
    assert_int_equal(f.count, 2);
    const struct auth_user *a = auth_file_find(&f, "alice", 5);
    assert_non_null(a);
    assert_null(auth_file_find(&f, "alic", 4));
    assert_true(auth_password_matches(a->hash, "secret", 6));
    assert_false(auth_password_matches(a->hash, "secreT", 6));
    assert_false(auth_password_matches(a->hash, "secret\0x", 8));
    assert_false(auth_password_matches(a->hash, "", 0));
    const struct auth_user *u = auth_file_find(&f, "bob", 3);
    assert_true(auth_password_matches(u->hash, "other", 5));
    assert_false(auth_password_matches(u->hash, "secret", 6));
    auth_file_free(&f);
    free(b);
    free(s);
}

static void
expect_error(const char *text, const char *what)
{
    write_file(text);
    struct auth_file f = { NULL, 0 };
    char err[600];
    assert_int_equal(auth_file_load(path, &f, err, sizeof err), -1);
    if (strstr(err, what) == NULL)
        fail_msg("\"%s\" does not say \"%s\"", err, what);
    assert_int_equal(f.count, 0);
}

static void
test_errors(void **state)
{
    char *b = hash_of("$2b$", 4, "x");
    char text[600];
    expect_error("alice\n", ":1: is not user:hash");
    expect_error("", "names no user");
    snprintf(text, sizeof text, "a:%s\na:%s\n", b, b);
    expect_error(text, ":2: user \"a\" again (first on line 1)");
    expect_error("a:$1$salt$hash\n", ":1: the hash of user \"a\" is not a supported hash");
    expect_error("a:$2b$03$0123456789012345678901234567890123456789012345678901a\n",
                 "cost outside 04..31");
    expect_error("a:$2b$13$0123456789012345678901234567890123456789012345678901a\n",
                 "cost over 12");
    expect_error("a:$2b$10$01234567890123456789012345678901234567890123456789!!a\n",
                 "a character outside");
    expect_error("a:$6$rounds=x$salt$h\n", "malformed rounds=");
    expect_error("a:$6$$abc\n", "salt of 1..16");
    expect_error("a:$6$saltsaltsaltsaltsalt$abc\n", "salt of 1..16");
    expect_error("a:$6$salt$abc\n", "86 characters");
    snprintf(text, sizeof text, "a:%s\n\x01:%s\n", b, b);
    expect_error(text, ":2: has a control character");
    unlink(path);
    struct auth_file f = { NULL, 0 };
    char err[600];
    assert_int_equal(auth_file_load(path, &f, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open: No such file"));
    free(b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_and_verify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
