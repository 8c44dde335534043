/*
 * server.c: the gRPC servers on grpc.listen, their methods, reloads that
 * rebind, and the listener gRPC abandons at the descriptor limit.
 */
#ifndef DS_GRPC_SERVER_H
#define DS_GRPC_SERVER_H

#include <stdint.h>

#include "core/config.h"

int server_start(void);
void server_reconfigure(const struct ds_config *old);
void server_shutdown(int cancel_calls);
int server_is_shut_down(void);
/* After server_shutdown(): 1 while a request posted to gRPC has not come
 * back, through which a call can still arrive (gRPC fails them all soon
 * after the shutdown). */
int server_requests_pending(void);
/* The bytes the kernel holds on the servers' connections that their
 * clients have not acknowledged yet (SIOCOUTQ; on a unix socket, not read
 * yet): written by gRPC, not yet in the client's hands. Closing such a
 * connection loses them if the client sends anything afterwards (a ping,
 * a WINDOW_UPDATE): the kernel answers with a reset and drops what it had
 * not delivered (on a unix socket the client gets EPIPE, and grpcio fails
 * its streams before reading what waits). Those of TCP clients that look
 * gone (tcp_peer.h) are counted apart: no one will take them. */
struct unacked {
    uint64_t bytes;             /* on connections of live clients */
    uint64_t gone_bytes;        /* on those of clients that look gone */
    uint64_t gone;              /* how many connections those are */
    uint64_t descriptors;       /* how many descriptors were looked at */
};
/* Fills OUT; -1 if /proc/self/fd cannot be read (logged once): then what
 * the clients hold is not known. It tells gone clients from live ones by
 * how their connections moved since the last call: call it at a steady
 * pace while waiting. */
int server_connections_unacked(struct unacked *out);
/* Open /proc/self/fd now, to read it later even with no descriptor left
 * (the start of a graceful stop). */
void server_connections_watch(void);
/* 0 while gRPC accepts no connection (its listener died at the descriptor
 * limit), until it listens again. */
int server_listening(void);
/* How many times the listener was started again after that. */
uint64_t server_listener_restarts(void);
/* Any thread: gRPC logged that accept4() failed (its listener is dead). */
void server_accept_failed(void);
void server_destroy(void);

#endif
