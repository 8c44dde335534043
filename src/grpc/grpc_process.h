/*
 * The grpc process: the only process that calls gRPC. It owns the servers,
 * the store and queue (store.h, queue.h), the update log (updates.h) and
 * the subscribers.
 *
 * Threads: the libevent thread owns every structure here and issues every
 * gRPC operation. A second thread only blocks in grpc_completion_queue_next()
 * and hands what it gets to the libevent thread (cq.c); nothing else crosses
 * threads.
 */
#ifndef DS_GRPC_GRPC_PROCESS_H
#define DS_GRPC_GRPC_PROCESS_H

#include <stdint.h>

#include <grpc/grpc.h>

#include "core/config.h"
#include "core/wire.h"
#include "ipc/frame.h"
#include "grpc/metrics.h"

struct event_base;
struct ipc_channel;
struct update;

/* ---- the handover of a binary upgrade (handover.c) --------------------- */

/* Start handing the waiting items to the new instance (idempotent). */
void handover_start(void);
/* Stop: give back what is in flight once its call ends (cancelled now). */
void handover_cancel(void);
/* Is a handover call in flight? The process waits for it before exiting. */
int handover_active(void);
/* At exit, after the last call: release the channel. */
void handover_shutdown(void);

/* ---- calls (submit.c, subscribe.c, server.c) --------------------------- */

void submit_call_start(grpc_call *call, grpc_byte_buffer *unused);
void submit_resume_blocked(void);
uint64_t submit_active(void);

void subscribe_call_start(grpc_call *call, grpc_byte_buffer *request);
/* Deliver an update to every subscriber whose filter matches. */
void subscribers_publish(struct update *update);
/* End every subscriber stream with RESOURCE_EXHAUSTED for WHY, naming the
 * last seq each was sent. */
void subscribers_cut_all(const char *why);
/* End every subscriber stream with OK once it has been sent all it holds. */
void subscribers_end_all(void);
int subscribers_flushed(void);
uint64_t subscribers_active(void);

/* reflection.c: grpc.reflection ServerReflection, for grpcurl and friends */
void reflection_call_start(grpc_call *call, grpc_byte_buffer *unused);

/* health.c: grpc.health.v1.Health */
void health_check_start(grpc_call *call, grpc_byte_buffer *request);
void health_watch_start(grpc_call *call, grpc_byte_buffer *request);
/* Tell watchers the serving status changed (draining: NOT_SERVING). */
void health_changed(void);
/* End every Watch stream with OK (the end of a graceful stop). */
void health_end_all(void);

int server_start(void);
void server_reconfigure(const struct ds_config *old);
void server_shutdown(int cancel_calls);
int server_is_shut_down(void);
/* 0 while gRPC accepts no connection (its listener died at the descriptor
 * limit), until it listens again. */
int server_listening(void);
/* How many times the listener was started again after that. */
uint64_t server_listener_restarts(void);
/* Any thread: gRPC logged that accept4() failed (its listener is dead). */
void server_accept_failed(void);
void server_destroy(void);

/* access_log.c: log.access, one line per RPC */
void access_log_open(void);
void access_log_close(void);
/* COUNTS: e.g. "items=10/0" or "updates=42". */
void access_log_call(grpc_call *call, const char *method, int status, const char *counts,
                     uint64_t started_ms);

/* status.c: status.listen, HTTP on the loop: /metrics, /status, /healthz */
/* Bind status.listen if set; -1: it cannot (logged, told to the master). */
int status_start(void);
/* After a reload: rebind a changed status.listen (new socket first); on
 * failure the old one keeps serving. */
void status_reconfigure(void);
void status_shutdown(void);

/* ---- the process (grpc_process.c) -------------------------------------- */

struct grpc_process {
    struct event_base *base;
    struct ds_config *config;
    uint64_t generation;
    grpc_completion_queue *cq;
    struct ipc_channel *control;
    int draining;               /* graceful stop under way */
    int stopping;               /* fast stop under way */
    uint64_t calls;             /* gRPC calls alive: the process waits for 0 */
};

extern struct grpc_process gp;

/* The cq thread's events reach the loop here (cq.c). */
int cq_start(void);
void cq_stop(void);

/* Send frames to the master. */
void master_send(unsigned type, const void *body, size_t len);
void master_send_now(unsigned type, const void *body, size_t len);

/* A call is gone: the process may be done stopping. */
void grpc_process_call_ended(void);
/* Something a stop waits for happened. */
void grpc_process_check_done(void);

#endif
