/*
 * tcp_peer.c: is the peer of a TCP connection still there, to acknowledge
 * the bytes we hold for it? A graceful stop waits for the clients to
 * acknowledge every byte written on their connections before it closes
 * them (server_connections_unacked(), grpc_process.c says why); it must not
 * wait for a client that will never acknowledge anything: its machine
 * powered off, its NAT mapping expired, its cable pulled. Nothing tells us
 * it is gone (no reset, no FIN); what the kernel does with the connection
 * (TCP_INFO) does:
 *
 * - a live client acknowledges what reaches it: bytes_acked moves;
 * - a live client that does not read (its process stopped, or slow)
 *   closes its window: nothing we hold can be sent, the kernel probes the
 *   window (tcpi_probes; or, with a segment out when the window shrank,
 *   resends it as a probe, in TCP_CA_Loss but without counting
 *   tcpi_retransmits), and it answers, however long it does not read;
 * - a gone client answers nothing: with its window open, the kernel's
 *   retransmission timer fires again and again (tcpi_retransmits counts
 *   the timeouts since the last acknowledgement).
 *
 * So a peer is gone once bytes_acked has not moved for TCP_PEER_SILENT_MS
 * while its window is open and the kernel retransmits to it. The silence
 * alone would not do: a client whose RTT is longer than that (a congested
 * mobile link) acks late but acks, before the kernel's timer gives up a
 * packet. A connection whose window is closed is waited for: a client
 * that does not read for a while is whom the wait is for (test_drain.py:
 * a stopped client gets its tail). One that went away while not reading
 * (rare: it had to stop reading first) keeps the stop until
 * shutdown_timeout: its probes go unanswered, but a live client does not
 * answer every probe either (not one carrying data it has no room for:
 * seen on loopback), so they are not taken as a sign.
 *
 * Pure: the caller looks (getsockopt(TCP_INFO)) and owns struct tcp_peer.
 */
#ifndef DS_GRPC_TCP_PEER_H
#define DS_GRPC_TCP_PEER_H

#include <stddef.h>
#include <stdint.h>

#include <linux/tcp.h>

#define TCP_PEER_SILENT_MS 2000

/* One connection as last looked at (zeroed before its first look). */
struct tcp_peer {
    int seen;                   /* looked at before */
    uint64_t bytes_acked;       /* tcpi_bytes_acked then */
    uint64_t alive_ms;          /* the last sign of life (monotonic ms) */
};

/* Look at PEER's connection again at NOW_MS (monotonic ms): INFO is what
 * getsockopt(TCP_INFO) filled, LEN bytes of it (an older kernel fills
 * less). 1 if the peer looks gone, else 0 (and always 0 if the kernel
 * does not say enough to tell: then the stop waits, as it did). */
int tcp_peer_gone(struct tcp_peer *peer, const struct tcp_info *info, size_t len,
                  uint64_t now_ms);

#endif
