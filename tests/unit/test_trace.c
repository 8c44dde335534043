/* W3C trace context: the checks, and the trace fields of WorkItem bytes
 * (src/core/trace.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/trace.h"

#define TP  "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
#define TP2 "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"

#define PARENT_OK(lit)       assert_null(trace_parent_invalid(lit, sizeof lit - 1))
#define PARENT_BAD(lit, why) assert_non_null(strstr(trace_parent_invalid(lit, sizeof lit - 1), why))
#define STATE_OK(s)          assert_null(trace_state_invalid(s, strlen(s)))
#define STATE_BAD(s, why)    assert_non_null(strstr(trace_state_invalid(s, strlen(s)), why))

static void
test_traceparent(void **state)
{
    PARENT_OK(TP);
    PARENT_OK(TP2);
    PARENT_BAD("", "version");
    PARENT_BAD("0", "version");
    PARENT_BAD("0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "version");
    PARENT_BAD("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "other than 00");
    PARENT_BAD("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "other than 00");
    PARENT_BAD("FF-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "upper-case");
    PARENT_BAD("00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01", "upper-case");
    PARENT_BAD("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0", "55");
    PARENT_BAD("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-011", "55");
    PARENT_BAD("00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01", "VERSION-TRACEID");
    PARENT_BAD("00-0af7651916cd43dd8448eb211c80319 -b7ad6b7169203331-01", "hex digit");
    PARENT_BAD("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x", "hex digit");
    PARENT_BAD("00-00000000000000000000000000000000-b7ad6b7169203331-01", "all-zero trace-id");
    PARENT_BAD("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", "all-zero parent-id");
    /* a NUL inside is not a hex digit */
    char nul[] = TP;
    nul[10] = '\0';
    assert_non_null(trace_parent_invalid(nul, sizeof nul - 1));
}

static void
test_tracestate(void **state)
{
    STATE_OK("");
    STATE_OK("congo=t61rcWkgMzE");
    STATE_OK("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    STATE_OK(" rojo=1 ,\t, congo=2\t");             /* OWS and empty members */
    STATE_OK("tenant1@system=x,a_b-c*d/e=v v");      /* multi-tenant; a space inside */
    STATE_OK("1tenant@sys=x");                        /* a tenant may start with a digit */
    STATE_BAD("Upper=v", "invalid key");
    STATE_BAD("1abc=v", "invalid key");
    STATE_BAD("t@Sys=v", "invalid key");
    STATE_BAD("t@systemnameislong=v", "invalid key");    /* system-id over 14 */
    STATE_BAD("@s=v", "invalid key");
    STATE_BAD("k=", "invalid value");
    STATE_BAD("k=a=b", "invalid value");
    STATE_BAD("k=\x7f", "invalid value");
    STATE_BAD("k=\x01", "invalid value");
    STATE_BAD("k", "KEY=VALUE");
    STATE_BAD("a=1,a=2", "twice");

    /* 32 members: kept; 33: not. */
    char list[512];
    size_t n = 0;
    for (int i = 0; i < 32; i++)
        n += (size_t)snprintf(list + n, sizeof list - n, "%sk%d=v", i ? "," : "", i);
    STATE_OK(list);
    snprintf(list + n, sizeof list - n, ",k32=v");
    STATE_BAD(list, "more than 32");

    /* 512 bytes: kept; 513: not. A value of 256: kept; 257: not. */
    char big[600];
    memset(big, 'x', sizeof big);
    memcpy(big, "a=", 2);
    big[258] = ',';
    memcpy(big + 259, "b=", 2);
    big[512] = '\0';
    STATE_OK(big);
    big[512] = 'x';
    big[513] = '\0';
    STATE_BAD(big, "512");
    big[258] = '\0';
    STATE_OK(big);
    big[258] = 'x';
    big[259] = '\0';
    STATE_BAD(big, "invalid value");
    /* a key of 256: kept, 257: not */
    memset(big, 'k', 257);
    big[256] = '=';
    big[257] = 'v';
    big[258] = '\0';
    STATE_OK(big);
    memset(big, 'k', 257);
    big[257] = '=';
    big[258] = 'v';
    big[259] = '\0';
    STATE_BAD(big, "invalid key");
}

/* A WorkItem: id (1) "i", params (4) {KEY: VALUE} if KEY, then EXTRA. */
static size_t
work_item(uint8_t *buf, const char *key, const char *value, const uint8_t *extra,
          size_t extra_len)
{
    size_t n = 0;
    buf[n++] = 0x0a;
    buf[n++] = 1;
    buf[n++] = 'i';
    if (key != NULL) {
        size_t kl = strlen(key), vl = strlen(value);
        buf[n++] = 0x22;
        buf[n++] = (uint8_t)(2 + kl + 2 + vl);
        buf[n++] = 0x0a;
        buf[n++] = (uint8_t)kl;
        memcpy(buf + n, key, kl);
        n += kl;
        buf[n++] = 0x12;
        buf[n++] = (uint8_t)vl;
        memcpy(buf + n, value, vl);
        n += vl;
    }
    if (extra_len > 0)
        memcpy(buf + n, extra, extra_len);
    return n + extra_len;
}

static void
test_rewrite_and_find(void **state)
{
    uint8_t raw[256];
    size_t len = work_item(raw, NULL, NULL, NULL, 0);
    struct trace_context t, got;
    assert_int_equal(trace_of_work_item(raw, len, &got), 0);

    t = (struct trace_context){ TP, 55, "a=1", 3 };
    size_t out_len;
    uint8_t *out = trace_rewrite(raw, len, &t, &out_len);
    assert_true(out_len > len);
    assert_memory_equal(out, raw, len);
    assert_int_equal(trace_of_work_item(out, out_len, &got), 1);
    assert_int_equal(got.parent_len, 55);
    assert_memory_equal(got.parent, TP, 55);
    assert_int_equal(got.state_len, 3);
    assert_memory_equal(got.state, "a=1", 3);

    /* Rewritten again with another trace: the old fields are gone. */
    struct trace_context t2 = { TP2, 55, NULL, 0 };
    size_t out2_len;
    uint8_t *out2 = trace_rewrite(out, out_len, &t2, &out2_len);
    assert_int_equal(trace_of_work_item(out2, out2_len, &got), 1);
    assert_memory_equal(got.parent, TP2, 55);
    assert_int_equal(got.state_len, 0);
    /* and with none: back to the original bytes */
    struct trace_context none = { NULL, 0, NULL, 0 };
    size_t out3_len;
    uint8_t *out3 = trace_rewrite(out2, out2_len, &none, &out3_len);
    assert_int_equal(out3_len, len);
    assert_memory_equal(out3, raw, len);
    assert_int_equal(trace_of_work_item(out3, out3_len, &got), 0);
    free(out);
    free(out2);
    free(out3);

    /* Malformed bytes: a length past the end is not read past. */
    uint8_t bad[] = { 0x0a, 0x7f, 'x' };
    assert_int_equal(trace_of_work_item(bad, sizeof bad, &got), 0);
    uint8_t *kept = trace_rewrite(bad, sizeof bad, &t2, &out_len);
    assert_memory_equal(kept, bad, sizeof bad);
    free(kept);
}

static wire_work_item *
unpack(const uint8_t *raw, size_t len)
{
    wire_work_item *msg = wire_work_item_unpack(NULL, len, raw);
    assert_non_null(msg);
    return msg;
}

static void
test_choose(void **state)
{
    uint8_t raw[256];
    char why[256];
    struct trace_context call = { TP, 55, "c=1", 3 }, out;

    /* The call's, into plain bytes: a rewrite. */
    size_t len = work_item(raw, NULL, NULL, NULL, 0);
    wire_work_item *msg = unpack(raw, len);
    assert_int_equal(trace_choose(msg, raw, len, &call, &out, why, sizeof why), 1);
    assert_ptr_equal(out.parent, call.parent);
    assert_ptr_equal(out.state, call.state);
    assert_string_equal(why, "");
    /* No call trace, nothing: no rewrite. */
    assert_int_equal(trace_choose(msg, raw, len, NULL, &out, why, sizeof why), 0);
    assert_int_equal(out.parent_len, 0);
    wire_work_item_free(msg, NULL);

    /* A param wins; the call's tracestate does not go with it. */
    len = work_item(raw, "traceparent", TP2, NULL, 0);
    msg = unpack(raw, len);
    assert_int_equal(trace_choose(msg, raw, len, &call, &out, why, sizeof why), 1);
    assert_memory_equal(out.parent, TP2, 55);
    assert_int_equal(out.state_len, 0);
    wire_work_item_free(msg, NULL);

    /* A malformed param: the call's, and WHY says so. */
    len = work_item(raw, "traceparent", "00-zz", NULL, 0);
    msg = unpack(raw, len);
    assert_int_equal(trace_choose(msg, raw, len, &call, &out, why, sizeof why), 1);
    assert_ptr_equal(out.parent, call.parent);
    assert_non_null(strstr(why, "param traceparent is not 55"));
    wire_work_item_free(msg, NULL);

    /* A tracestate param alone replaces the call's tracestate, and without
     * any traceparent is dropped. */
    len = work_item(raw, "tracestate", "p=2", NULL, 0);
    msg = unpack(raw, len);
    assert_int_equal(trace_choose(msg, raw, len, &call, &out, why, sizeof why), 1);
    assert_ptr_equal(out.parent, call.parent);
    assert_memory_equal(out.state, "p=2", 3);
    assert_int_equal(trace_choose(msg, raw, len, NULL, &out, why, sizeof why), 0);
    assert_int_equal(out.parent_len + out.state_len, 0);
    wire_work_item_free(msg, NULL);

    /* Trace fields already in the bytes (a handover): kept as they are,
     * over the call's; malformed ones are dropped (a rewrite). */
    struct trace_context t = { TP2, 55, "h=1", 3 };
    size_t traced_len;
    len = work_item(raw, NULL, NULL, NULL, 0);
    uint8_t *traced = trace_rewrite(raw, len, &t, &traced_len);
    msg = unpack(traced, traced_len);
    assert_int_equal(trace_choose(msg, traced, traced_len, &call, &out, why, sizeof why), 0);
    assert_memory_equal(out.parent, TP2, 55);
    assert_memory_equal(out.state, "h=1", 3);
    wire_work_item_free(msg, NULL);
    free(traced);
    t = (struct trace_context){ "00-bad", 6, "h=1", 3 };
    traced = trace_rewrite(raw, len, &t, &traced_len);
    msg = unpack(traced, traced_len);
    assert_int_equal(trace_choose(msg, traced, traced_len, NULL, &out, why, sizeof why), 1);
    assert_int_equal(out.parent_len, 0);
    assert_non_null(strstr(why, "the WorkItem's traceparent field"));
    wire_work_item_free(msg, NULL);
    free(traced);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traceparent),
        cmocka_unit_test(test_tracestate),
        cmocka_unit_test(test_rewrite_and_find),
        cmocka_unit_test(test_choose),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
