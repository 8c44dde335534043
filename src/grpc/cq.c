/*
 * The completion queue's hand-off to the libevent thread.
 *
 * gRPC has no public way to post to a completion queue from another thread,
 * nor a descriptor to poll. So one thread blocks in
 * grpc_completion_queue_next() and passes each event to the libevent thread
 * under a mutex, waking it with event_active() only when it is not already
 * awake. The woken thread then also drains the queue itself with a zero
 * deadline, so under load most events cost no thread switch at all.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <grpc/support/time.h>

#include "core/alloc.h"
#include "core/log.h"
#include "grpc/grpc_process.h"

static struct {
    pthread_t thread;
    int running;
    pthread_mutex_t lock;
    grpc_event *events;         /* handed over, not yet run */
    size_t count;
    size_t capacity;
    int wake_pending;
    struct event *wake;
} cq;

static void
run_event(const grpc_event *ev)
{
    if (ev->type != GRPC_OP_COMPLETE)
        return;
    struct tag *tag = ev->tag;
    tag->done(tag, ev->success);
}

static void
on_wake(evutil_socket_t fd, short what, void *arg)
{
    grpc_event batch[64];
    for (;;) {
        pthread_mutex_lock(&cq.lock);
        size_t n = cq.count < 64 ? cq.count : 64;
        memcpy(batch, cq.events, n * sizeof *batch);
        memmove(cq.events, cq.events + n, (cq.count - n) * sizeof *batch);
        cq.count -= n;
        if (n == 0)
            cq.wake_pending = 0;
        pthread_mutex_unlock(&cq.lock);
        if (n == 0)
            break;
        for (size_t i = 0; i < n; i++)
            run_event(&batch[i]);
    }
    /* Take what is ready right now without a thread switch. */
    if (gp.cq == NULL)
        return;
    for (int i = 0; i < 4096; i++) {
        grpc_event ev = grpc_completion_queue_next(gp.cq, gpr_time_0(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            break;
        run_event(&ev);
    }
}

static void *
cq_thread(void *arg)
{
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(gp.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                                   NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        pthread_mutex_lock(&cq.lock);
        if (cq.count == cq.capacity) {
            cq.capacity = cq.capacity ? cq.capacity * 2 : 256;
            cq.events = ds_realloc(cq.events, cq.capacity * sizeof *cq.events);
        }
        cq.events[cq.count++] = ev;
        int wake = !cq.wake_pending;
        cq.wake_pending = 1;
        pthread_mutex_unlock(&cq.lock);
        if (wake)
            event_active(cq.wake, EV_READ, 0);
    }
    return NULL;
}

int
cq_start(void)
{
    pthread_mutex_init(&cq.lock, NULL);
    cq.wake = event_new(gp.base, -1, 0, on_wake, NULL);
    int err = pthread_create(&cq.thread, NULL, cq_thread, NULL);
    if (err != 0) {
        log_error("pthread_create() failed: %s", strerror(err));
        return -1;
    }
    cq.running = 1;
    return 0;
}

/* Shut the queue down, run what is left, and join the thread. */
void
cq_stop(void)
{
    if (!cq.running)
        return;
    grpc_completion_queue_shutdown(gp.cq);
    pthread_join(cq.thread, NULL);
    cq.running = 0;
    on_wake(-1, 0, NULL);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(gp.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                                   NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        run_event(&ev);
    }
    event_free(cq.wake);
    free(cq.events);
    pthread_mutex_destroy(&cq.lock);
}
