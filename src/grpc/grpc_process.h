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

/* Send frames to the master. */
void master_send(unsigned type, const void *body, size_t len);
void master_send_now(unsigned type, const void *body, size_t len);

/* A call is gone: the process may be done stopping. */
void grpc_process_call_ended(void);
/* Something a stop waits for happened. */
void grpc_process_check_done(void);
/* Can items still come to this process? A submit call under way (a drain
 * reads it to its end), one matched just before the server's shutdown, an
 * accept still being written (a retry's too), or a take from a shared
 * backend in flight (store_taking()) may bring more:
 * a drain keeps its workers (and an upgrade its handover) until none can. */
int grpc_process_items_may_come(void);

#endif
