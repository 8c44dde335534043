/*
 * The completion queue's hand-off to the libevent thread.
 *
 * gRPC has no public way to post to a completion queue from another thread,
 * nor a descriptor to poll. So a second thread blocks in
 * grpc_completion_queue_next() while the libevent thread is idle. When an
 * event comes, it hands it over under a mutex, wakes the libevent thread
 * with event_active(), and parks until that thread is idle again. The
 * libevent thread meanwhile takes every further event itself, with a zero
 * deadline, in rounds of at most ROUND events between which libevent runs
 * (worker channels, signals, timers). So under load the queue is drained by
 * one thread with no switch per event, and an idle process has one thread
 * blocked in gRPC and one in epoll: no polling anywhere.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <grpc/support/time.h>

#include "core/alloc.h"
#include "core/log.h"
#include "grpc/call.h"
#include "grpc/grpc_process.h"
#include "grpc/cq.h"

/* Events the libevent thread takes in one go before libevent runs again. */
#define ROUND 512

static struct {
    pthread_t thread;
    int running;
    pthread_mutex_t lock;
    pthread_cond_t idle;        /* the libevent thread stopped draining */
    grpc_event handed;          /* the event that woke the libevent thread */
    int has_handed;
    int draining;               /* the libevent thread owns the queue */
    int shutdown;               /* the queue is shut down */
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
    pthread_mutex_lock(&cq.lock);
    grpc_event first = cq.handed;
    int has_first = cq.has_handed;
    cq.has_handed = 0;
    pthread_mutex_unlock(&cq.lock);
    if (has_first)
        run_event(&first);

    for (int i = 0; i < ROUND && gp.cq != NULL; i++) {
        grpc_event ev = grpc_completion_queue_next(gp.cq, gpr_time_0(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type != GRPC_OP_COMPLETE) {
            /* Nothing ready: the queue goes back to the cq thread. */
            pthread_mutex_lock(&cq.lock);
            cq.draining = 0;
            if (ev.type == GRPC_QUEUE_SHUTDOWN)
                cq.shutdown = 1;
            pthread_cond_signal(&cq.idle);
            pthread_mutex_unlock(&cq.lock);
            return;
        }
        run_event(&ev);
    }
    /* More may be ready: let libevent run, then come back. */
    event_active(cq.wake, EV_READ, 0);
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
        cq.handed = ev;
        cq.has_handed = 1;
        cq.draining = 1;
        event_active(cq.wake, EV_READ, 0);
        while (cq.draining)
            pthread_cond_wait(&cq.idle, &cq.lock);
        int done = cq.shutdown;
        pthread_mutex_unlock(&cq.lock);
        if (done)
            break;
    }
    return NULL;
}

int
cq_start(void)
{
    pthread_mutex_init(&cq.lock, NULL);
    pthread_cond_init(&cq.idle, NULL);
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
    if (!cq.running) {
        /* Never started (a stop before the listeners were bound): the
         * queue must still be shut down before it is destroyed. */
        grpc_completion_queue_shutdown(gp.cq);
        return;
    }
    grpc_completion_queue_shutdown(gp.cq);
    /* The thread may be parked waiting for us: drain until it is free. */
    for (;;) {
        pthread_mutex_lock(&cq.lock);
        int parked = cq.draining;
        pthread_mutex_unlock(&cq.lock);
        if (!parked)
            break;
        on_wake(-1, 0, NULL);
    }
    pthread_join(cq.thread, NULL);
    cq.running = 0;
    if (cq.has_handed) {
        cq.has_handed = 0;
        run_event(&cq.handed);
    }
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(gp.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                                   NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        run_event(&ev);
    }
    event_free(cq.wake);
    pthread_cond_destroy(&cq.idle);
    pthread_mutex_destroy(&cq.lock);
}
