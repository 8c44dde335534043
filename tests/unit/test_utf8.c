/* The UTF-8 validator, prefix, sanitizer and log escaping (src/core/utf8.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/utf8.h"

#define VALID(lit)   assert_true(utf8_valid(lit, sizeof lit - 1))
#define INVALID(lit) assert_false(utf8_valid(lit, sizeof lit - 1))

static void
test_valid(void **state)
{
    VALID("");
    VALID("plain ascii");
    VALID("a\0b");                          /* NUL is a character */
    VALID("\xc2\x80");                      /* U+0080, the smallest 2-byte */
    VALID("\xdf\xbf");                      /* U+07FF */
    VALID("\xe0\xa0\x80");                  /* U+0800, the smallest 3-byte */
    VALID("\xed\x9f\xbf");                  /* U+D7FF, just below the surrogates */
    VALID("\xee\x80\x80");                  /* U+E000, just above them */
    VALID("\xef\xbf\xbf");                  /* U+FFFF */
    VALID("\xf0\x90\x80\x80");              /* U+10000, the smallest 4-byte */
    VALID("\xf0\x9f\x98\x80");              /* U+1F600, an emoji */
    VALID("\xf4\x8f\xbf\xbf");              /* U+10FFFF, the largest */
    VALID("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
}

static void
test_invalid(void **state)
{
    INVALID("\x80");                        /* a lone continuation byte */
    INVALID("a\xbf" "b");
    INVALID("\xc0\x80");                    /* overlong NUL */
    INVALID("\xc1\xbf");                    /* overlong 2-byte */
    INVALID("\xe0\x80\x80");                /* overlong 3-byte */
    INVALID("\xe0\x9f\xbf");                /* overlong U+07FF */
    INVALID("\xf0\x80\x80\x80");            /* overlong 4-byte */
    INVALID("\xf0\x8f\xbf\xbf");            /* overlong U+FFFF */
    INVALID("\xed\xa0\x80");                /* U+D800, a surrogate */
    INVALID("\xed\xbf\xbf");                /* U+DFFF */
    INVALID("\xf4\x90\x80\x80");            /* U+110000, over the top */
    INVALID("\xf5\x80\x80\x80");
    INVALID("\xff");
    INVALID("\xfe");
    INVALID("\xc3");                        /* truncated 2-byte */
    INVALID("\xe2\x82");                    /* truncated 3-byte */
    INVALID("\xf0\x9f\x98");                /* truncated 4-byte */
    INVALID("\xe2\x82" "a");                /* a truncated sequence in the middle */
    INVALID("ok\xf0\x9f\x98");
}

static void
test_decode(void **state)
{
    uint32_t cp = 0;
    assert_int_equal(utf8_decode("\xf0\x9f\x98\x80", 4, &cp), 4);
    assert_int_equal(cp, 0x1f600);
    assert_int_equal(utf8_decode("\xe2\x82\xac", 3, &cp), 3);
    assert_int_equal(cp, 0x20ac);
    assert_int_equal(utf8_decode("A", 1, &cp), 1);
    assert_int_equal(cp, 'A');
    /* Fewer bytes available than the sequence needs: not one. */
    assert_int_equal(utf8_decode("\xf0\x9f\x98\x80", 3, &cp), 0);
    assert_int_equal(utf8_decode("A", 0, &cp), 0);
}

static void
test_prefix(void **state)
{
    const char *s = "ab\xe2\x82\xac" "c";       /* a b € c: 6 bytes */
    assert_int_equal(utf8_prefix(s, 6, 10), 6);
    assert_int_equal(utf8_prefix(s, 6, 6), 6);
    assert_int_equal(utf8_prefix(s, 6, 5), 5);
    assert_int_equal(utf8_prefix(s, 6, 4), 2);  /* never half a € */
    assert_int_equal(utf8_prefix(s, 6, 3), 2);
    assert_int_equal(utf8_prefix(s, 6, 2), 2);
    assert_int_equal(utf8_prefix(s, 6, 0), 0);
    const char *emoji = "\xf0\x9f\x98\x80\xf0\x9f\x98\x80";
    assert_int_equal(utf8_prefix(emoji, 8, 7), 4);
    assert_int_equal(utf8_prefix(emoji, 8, 3), 0);
    /* Stray bytes are units of their own. */
    assert_int_equal(utf8_prefix("\xff\xff\xff", 3, 2), 2);
}

static void
test_sanitize(void **state)
{
    assert_null(utf8_sanitize("fine \xc3\xa9", 7));
    char *s = utf8_sanitize("a\xff" "b\xe2\x82", 5);
    assert_non_null(s);
    assert_string_equal(s, "a\xef\xbf\xbd" "b\xef\xbf\xbd\xef\xbf\xbd");
    assert_true(utf8_valid(s, strlen(s)));
    free(s);
    s = utf8_sanitize("\xed\xa0\x80", 3);       /* a surrogate: three bad bytes */
    assert_string_equal(s, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    free(s);
}

static void
test_escape(void **state)
{
    char buf[64];
    assert_string_equal(utf8_escape(buf, sizeof buf, "plain caf\xc3\xa9"), "plain caf\xc3\xa9");
    assert_string_equal(utf8_escape(buf, sizeof buf, "a\nb\rc\td"), "a\\nb\\rc\\td");
    assert_string_equal(utf8_escape(buf, sizeof buf, "q\"b\\"), "q\\\"b\\\\");
    assert_string_equal(utf8_escape(buf, sizeof buf, "\x1b[31m\x7f"), "\\x1b[31m\\x7f");
    assert_string_equal(utf8_escape(buf, sizeof buf, "\xff\xc3"), "\\xff\\xc3");
    assert_string_equal(utf8_escape(buf, sizeof buf, "\xc2\x85\xe2\x80\xa8"), "\\u0085\\u2028");
    /* Cut between characters, marked, still valid. */
    char small[10];
    utf8_escape(small, sizeof small, "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac");
    assert_string_equal(small, "\xe2\x82\xac\xe2\x82\xac...");
    assert_true(utf8_valid(small, strlen(small)));
    utf8_escape(small, sizeof small, "abcdefghijkl");
    assert_string_equal(small, "abcdef...");
    utf8_escape(small, sizeof small, "abcdefghi");      /* exactly fits */
    assert_string_equal(small, "abcdefghi");
    utf8_escape(small, sizeof small, "\n\n\n\n\n");
    assert_string_equal(small, "\\n\\n\\n...");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_prefix),
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
