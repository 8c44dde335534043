/*
 * Is a connection's peer gone? (tcp_peer.h says how it is told.)
 */
#include "grpc/tcp_peer.h"

/* Does INFO (LEN bytes) reach FIELD? */
#define HAS(len, field) \
    ((len) >= offsetof(struct tcp_info, field) + sizeof(((struct tcp_info *)0)->field))

int
tcp_peer_gone(struct tcp_peer *peer, const struct tcp_info *info, size_t len, uint64_t now_ms)
{
    if (!HAS(len, tcpi_bytes_acked))
        return 0;       /* before Linux 4.2: no way to see progress */
    /* The peer's window is closed (or too small to send into): nothing is
     * in flight though bytes wait, or the kernel probes, or the peer says
     * so (tcpi_snd_wnd, from Linux 6.2). */
    int window_closed = info->tcpi_unacked == 0 || info->tcpi_probes > 0 ||
                        (HAS(len, tcpi_snd_wnd) && info->tcpi_snd_wnd == 0);
    int alive = !peer->seen || info->tcpi_bytes_acked != peer->bytes_acked || window_closed;
    peer->seen = 1;
    peer->bytes_acked = info->tcpi_bytes_acked;
    if (alive) {
        peer->alive_ms = now_ms;
        return 0;
    }
    /* Retransmission timeouts since the last acknowledgement, the window
     * open: for that long, nothing came back. */
    return info->tcpi_retransmits > 0 && now_ms - peer->alive_ms >= TCP_PEER_SILENT_MS;
}
