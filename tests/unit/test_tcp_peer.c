/*
 * Telling a gone client from a live one by its connection's TCP_INFO
 * (src/grpc/tcp_peer.c), on made-up looks: what the kernel shows for a
 * client that acknowledges, one that does not read (zero window, probes
 * answered, or the segment it has no room for resent), one on a slow
 * link, and one that is gone (retransmission timeouts, nothing acked), on
 * this kernel's struct and older, shorter ones.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "grpc/tcp_peer.h"

#define FULL sizeof(struct tcp_info)
/* A kernel before tcpi_snd_wnd (6.2), and one before tcpi_bytes_acked (4.2). */
#define NO_SND_WND offsetof(struct tcp_info, tcpi_snd_wnd)
#define NO_BYTES_ACKED offsetof(struct tcp_info, tcpi_bytes_acked)

/* Data in flight, the peer's window open. */
static struct tcp_info
sending(uint64_t acked)
{
    struct tcp_info i;
    memset(&i, 0, sizeof i);
    i.tcpi_ca_state = TCP_CA_Open;
    i.tcpi_unacked = 4;
    i.tcpi_snd_wnd = 65536;
    i.tcpi_bytes_acked = acked;
    return i;
}

/* Retransmitting after RTOs: nothing came back. */
static struct tcp_info
retransmitting(uint64_t acked, unsigned rtos)
{
    struct tcp_info i = sending(acked);
    i.tcpi_ca_state = TCP_CA_Loss;
    i.tcpi_retransmits = (uint8_t)rtos;
    i.tcpi_backoff = (uint8_t)rtos;
    return i;
}

/* The peer's window closed: nothing in flight, the kernel probes it. */
static struct tcp_info
probing(uint64_t acked, unsigned unanswered, unsigned backoff)
{
    struct tcp_info i = sending(acked);
    i.tcpi_unacked = 0;
    i.tcpi_snd_wnd = 0;
    i.tcpi_probes = (uint8_t)unanswered;
    i.tcpi_backoff = (uint8_t)backoff;
    return i;
}

static void
test_first_look_is_never_gone(void **state)
{
    struct tcp_peer p = { 0 };
    struct tcp_info i = retransmitting(100, 6);
    assert_int_equal(tcp_peer_gone(&p, &i, FULL, 50000), 0);
    assert_int_equal(p.alive_ms, 50000);
}

static void
test_acknowledging_peer_is_alive(void **state)
{
    struct tcp_peer p = { 0 };
    for (uint64_t t = 0; t < 60000; t += 100) {
        /* Slow, with losses now and then, but progressing. */
        struct tcp_info i = t % 1000 == 0 ? retransmitting(1000 + t, 1) : sending(1000 + t);
        assert_int_equal(tcp_peer_gone(&p, &i, FULL, t), 0);
    }
}

static void
test_gone_peer_retransmitting(void **state)
{
    struct tcp_peer p = { 0 };
    struct tcp_info i = sending(500);
    assert_int_equal(tcp_peer_gone(&p, &i, FULL, 1000), 0);
    i = retransmitting(500, 1);
    assert_int_equal(tcp_peer_gone(&p, &i, FULL, 1400), 0);
    i = retransmitting(500, 3);
    assert_int_equal(tcp_peer_gone(&p, &i, FULL, 2999), 0);
    assert_int_equal(tcp_peer_gone(&p, &i, FULL, 1000 + TCP_PEER_SILENT_MS), 1);
    assert_int_equal(tcp_peer_gone(&p, &i, FULL, 9000), 1);
}

static void
test_slow_link_without_loss_is_waited_for(void **state)
{
    /* Nothing acknowledged for long, but the kernel has not declared
     * anything lost (its RTO is longer still): a long RTT, not a death. */
    struct tcp_peer p = { 0 };
    struct tcp_info i = sending(500);
    for (uint64_t t = 0; t <= 10000; t += 100)
        assert_int_equal(tcp_peer_gone(&p, &i, FULL, t), 0);
}

static void
test_stopped_reader_answering_probes_is_alive(void **state)
{
    /* A stopped client: zero window for a minute, its probes answered
     * (tcpi_probes back to 0 at each answer, 1 while one is out), the
     * backoff growing all along. */
    struct tcp_peer p = { 0 };
    for (uint64_t t = 0; t < 60000; t += 100) {
        struct tcp_info i = probing(777, t % 700 == 0 ? 1 : 0, (unsigned)(t / 5000) + 1);
        assert_int_equal(tcp_peer_gone(&p, &i, FULL, t), 0);
        assert_int_equal(tcp_peer_gone(&p, &i, NO_SND_WND, t), 0);
    }
}

static void
test_closed_window_is_waited_for(void **state)
{
    /* Its window closed, then (maybe) it went: its probes unanswered. A
     * live client leaves some unanswered too: the stop waits (until
     * shutdown_timeout, its caller's bound). */
    struct tcp_peer p = { 0 };
    for (uint64_t t = 0; t <= 60000; t += 100) {
        struct tcp_info i = probing(777, (unsigned)(t / 5000), (unsigned)(t / 5000) + 3);
        assert_int_equal(tcp_peer_gone(&p, &i, FULL, t), 0);
    }
}

static void
test_shrunk_window_resending_as_probe_is_alive(void **state)
{
    /* A client that cannot take the segment out (its buffer full, its
     * window shrank to 0 behind it): the kernel resends that segment as a
     * probe from its retransmission timer, in TCP_CA_Loss, backing off,
     * without counting tcpi_retransmits (seen on loopback, Linux 6.18). */
    struct tcp_peer p = { 0 };
    struct tcp_info i = sending(32768);
    i.tcpi_unacked = 1;
    i.tcpi_snd_wnd = 0;
    i.tcpi_ca_state = TCP_CA_Loss;
    for (uint64_t t = 0; t <= 30000; t += 100) {
        i.tcpi_backoff = (uint8_t)(t / 5000 + 1);
        assert_int_equal(tcp_peer_gone(&p, &i, FULL, t), 0);
    }
    /* Without tcpi_snd_wnd to say the window is closed: still no
     * retransmission counted, still waited for. */
    struct tcp_peer q = { 0 };
    for (uint64_t t = 0; t <= 30000; t += 100)
        assert_int_equal(tcp_peer_gone(&q, &i, NO_SND_WND, t), 0);
}

static void
test_closed_window_seen_without_snd_wnd(void **state)
{
    /* An older kernel (no tcpi_snd_wnd): nothing in flight while bytes
     * wait says the window is closed. */
    struct tcp_peer p = { 0 };
    struct tcp_info i = probing(10, 1, 6);
    i.tcpi_snd_wnd = 12345;    /* not filled by such a kernel: not read */
    for (uint64_t t = 0; t <= 10000; t += 100)
        assert_int_equal(tcp_peer_gone(&p, &i, NO_SND_WND, t), 0);
}

static void
test_gone_peer_comes_back(void **state)
{
    struct tcp_peer p = { 0 };
    struct tcp_info i = retransmitting(500, 4);
    assert_int_equal(tcp_peer_gone(&p, &i, FULL, 0), 0);
    assert_int_equal(tcp_peer_gone(&p, &i, FULL, 3000), 1);
    i = sending(900);       /* the path healed */
    assert_int_equal(tcp_peer_gone(&p, &i, FULL, 3100), 0);
    i = retransmitting(900, 1);
    assert_int_equal(tcp_peer_gone(&p, &i, FULL, 3100 + TCP_PEER_SILENT_MS - 1), 0);
}

static void
test_kernel_too_old_to_tell(void **state)
{
    struct tcp_peer p = { 0 };
    struct tcp_info i = retransmitting(500, 9);
    for (uint64_t t = 0; t <= 60000; t += 1000)
        assert_int_equal(tcp_peer_gone(&p, &i, NO_BYTES_ACKED, t), 0);
    assert_int_equal(tcp_peer_gone(&p, &i, 0, 60000), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_look_is_never_gone),
        cmocka_unit_test(test_acknowledging_peer_is_alive),
        cmocka_unit_test(test_gone_peer_retransmitting),
        cmocka_unit_test(test_slow_link_without_loss_is_waited_for),
        cmocka_unit_test(test_stopped_reader_answering_probes_is_alive),
        cmocka_unit_test(test_closed_window_is_waited_for),
        cmocka_unit_test(test_shrunk_window_resending_as_probe_is_alive),
        cmocka_unit_test(test_closed_window_seen_without_snd_wnd),
        cmocka_unit_test(test_gone_peer_comes_back),
        cmocka_unit_test(test_kernel_too_old_to_tell),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
