/* protobuf's wire format by hand (src/core/pbwire.c): every wire type, and
 * bytes that are no field: cut short at each point, a field number 0 or
 * too large, a group, a varint of 11 bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/pbwire.h"

#define B(...) ((const uint8_t[]){ __VA_ARGS__ })

static void
test_each_wire_type(void **state)
{
    (void)state;
    /* 1: varint 300; 2: "hi"; 3: fixed64; 4: fixed32; 536870911: varint 0 */
    const uint8_t msg[] = { 0x08, 0xac, 0x02, 0x12, 0x02, 'h', 'i', 0x19, 1, 2, 3, 4, 5, 6, 7, 8,
                            0x25, 1, 2, 3, 4, 0xf8, 0xff, 0xff, 0xff, 0x0f, 0x00 };
    size_t i = 0;
    struct pbwire_field f;
    assert_int_equal(pbwire_next(msg, sizeof msg, &i, &f), 1);
    assert_true(f.number == 1 && f.type == PBWIRE_VARINT && f.value == 300);
    assert_int_equal(pbwire_next(msg, sizeof msg, &i, &f), 1);
    assert_true(f.number == 2 && f.type == PBWIRE_LEN && f.len == 2);
    assert_memory_equal(f.bytes, "hi", 2);
    assert_int_equal(pbwire_next(msg, sizeof msg, &i, &f), 1);
    assert_true(f.number == 3 && f.type == PBWIRE_I64);
    assert_int_equal(pbwire_next(msg, sizeof msg, &i, &f), 1);
    assert_true(f.number == 4 && f.type == PBWIRE_I32);
    assert_int_equal(pbwire_next(msg, sizeof msg, &i, &f), 1);
    assert_true(f.number == 536870911 && f.value == 0);
    assert_int_equal(pbwire_next(msg, sizeof msg, &i, &f), 0);
    assert_int_equal(i, sizeof msg);
    /* every prefix that cuts a field short is refused */
    const size_t whole[] = { 0, 3, 7, 16, 21, sizeof msg };
    for (size_t n = 1; n < sizeof msg; n++) {
        int at_boundary = 0;
        for (size_t k = 0; k < sizeof whole / sizeof whole[0]; k++)
            at_boundary |= whole[k] == n;
        size_t j = 0;
        int r;
        while ((r = pbwire_next(msg, n, &j, &f)) == 1)
            ;
        assert_int_equal(r, at_boundary ? 0 : -1);
    }
}

static void
test_no_field(void **state)
{
    (void)state;
    struct pbwire_field f;
    size_t i = 0;
    assert_int_equal(pbwire_next(B(0x00, 0x01), 2, &i, &f), -1);            /* field 0 */
    i = 0;
    assert_int_equal(pbwire_next(B(0x80, 0x80, 0x80, 0x80, 0x10), 5, &i, &f), -1); /* 2^29 */
    i = 0;
    assert_int_equal(pbwire_next(B(0x0b), 1, &i, &f), -1);                  /* a group */
    i = 0;
    assert_int_equal(pbwire_next(B(0x0e), 1, &i, &f), -1);                  /* type 6 */
    i = 0;
    assert_int_equal(pbwire_next(B(0x12, 0x05, 'a'), 3, &i, &f), -1);       /* past the end */
    i = 0;
    assert_int_equal(pbwire_next(B(0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                   0x01), 11, &i, &f), -1);                 /* 2^64 - 1 long */
}

static void
test_varints(void **state)
{
    (void)state;
    uint8_t buf[16];
    const uint64_t values[] = { 0, 1, 127, 128, 300, UINT32_MAX, UINT64_MAX };
    for (size_t k = 0; k < sizeof values / sizeof values[0]; k++) {
        uint8_t *end = pbwire_put_varint(buf, values[k]);
        assert_int_equal((size_t)(end - buf), pbwire_varint_size(values[k]));
        size_t i = 0;
        uint64_t v;
        assert_int_equal(pbwire_varint(buf, (size_t)(end - buf), &i, &v), 0);
        assert_true(v == values[k] && i == (size_t)(end - buf));
    }
    assert_int_equal(pbwire_varint_size(UINT64_MAX), 10);
    size_t i = 0;
    uint64_t v;
    memset(buf, 0x80, 11);
    buf[10] = 0x01;
    assert_int_equal(pbwire_varint(buf, 11, &i, &v), -1);                   /* 11 bytes */
    i = 0;
    assert_int_equal(pbwire_varint(buf, 3, &i, &v), -1);                    /* cut short */
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_wire_type),
        cmocka_unit_test(test_no_field),
        cmocka_unit_test(test_varints),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
