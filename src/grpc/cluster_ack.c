/*
 * Accepted once on cluster.min_replicas_ack replicas: WAIT after the accept
 * scripts (cluster_ack.h has the contract).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "core/alloc.h"
#include "core/log.h"
#include "grpc/cluster.h"
#include "grpc/cluster_ack.h"
#include "grpc/grpc_process.h"
#include "grpc/redis_args.h"
#include "grpc/store.h"

/* A verdict held until the WAIT behind its accept answers; owned by the
 * list, freed when the verdict is given. */
struct held {
    struct acceptance a;
    struct held *next;
};

static struct {
    void (*settled)(void);
    struct event *send_event;   /* sends the WAIT from the loop */
    size_t pending;             /* accepts sent that no WAIT sent yet covers */
    int waiting;                /* a WAIT is out */
    struct held *head, **tail;
    size_t held;
    uint32_t wait_n;            /* of the WAIT out */
    uint64_t wait_ms;
    uint64_t short_waits;       /* WAITs that came back with fewer replicas */
    int shutting_down;
} ack;

static void send_wait(void);

static void
give(enum store_verdict verdict, const char *why)
{
    struct held *h = ack.head;
    ack.head = NULL;
    ack.tail = &ack.head;
    ack.held = 0;
    while (h != NULL) {
        struct held *next = h->next;
        if (ack.shutting_down)
            store_discard(h->a.item);
        else
            store_accepted(h->a, verdict, why);
        free(h);
        h = next;
    }
    if (ack.settled != NULL && !ack.shutting_down)
        ack.settled();
}

static void
on_waited(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    ack.waiting = 0;
    if (ack.shutting_down) {
        give(STORE_UNCERTAIN, NULL);
        return;
    }
    if (r == NULL) {
        give(STORE_UNCERTAIN, "cluster: the connection to redis was lost before its replicas "
             "confirmed the item (cluster.min_replicas_ack); it may be in redis: resend it "
             "with the same id");
    } else if (r->type == REDIS_REPLY_INTEGER && r->integer >= (long long)ack.wait_n) {
        give(STORE_ACCEPTED, NULL);
    } else {
        char why[400];
        if (r->type == REDIS_REPLY_INTEGER)
            snprintf(why, sizeof why, "cluster: redis has the item but only %lld of the %u "
                     "replicas of cluster.min_replicas_ack confirmed it within "
                     "cluster.replicas_ack_timeout (%" PRIu64 " ms): not counted as accepted; "
                     "it may still run, or be lost if the master fails; resend it with the same "
                     "id (a duplicate if redis kept it)", r->integer, ack.wait_n, ack.wait_ms);
        else
            snprintf(why, sizeof why, "cluster: WAIT for the replicas of "
                     "cluster.min_replicas_ack failed (%.200s): not counted as accepted; it may "
                     "be in redis: resend it with the same id",
                     r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        if (ack.short_waits++ % 100 == 0)
            log_warn("%s (%" PRIu64 " times so far)", why, ack.short_waits);
        give(STORE_UNCERTAIN, why);
    }
    if (ack.pending > 0)
        send_wait();
}

static void
send_wait(void)
{
    if (ack.waiting || ack.pending == 0)
        return;
    const struct cluster_settings *set = cluster_settings();
    ack.wait_n = set->min_replicas_ack ? set->min_replicas_ack : 1;
    ack.wait_ms = set->replicas_ack_timeout_ms;
    struct redis_args a;
    redis_args_init(&a, "WAIT");
    redis_args_u64(&a, ack.wait_n);
    redis_args_u64(&a, ack.wait_ms);
    ack.pending = 0;
    if (cluster_send(&a, on_waited, NULL) == -1) {
        /* The session is going: the accepts sent get NULL replies. */
        give(STORE_UNCERTAIN, cluster_why());
        return;
    }
    ack.waiting = 1;
}

static void
on_send_event(evutil_socket_t fd, short what, void *arg)
{
    send_wait();
}

void
cluster_ack_start(struct event_base *base, void (*settled)(void))
{
    memset(&ack, 0, sizeof ack);
    ack.settled = settled;
    ack.tail = &ack.head;
    ack.send_event = event_new(base, -1, 0, on_send_event, NULL);
}

int
cluster_ack_wanted(void)
{
    return cluster_settings()->min_replicas_ack > 0;
}

void
cluster_ack_sent(void)
{
    if (ack.pending++ == 0 && !ack.waiting)
        event_active(ack.send_event, EV_TIMEOUT, 0);
}

void
cluster_ack_hold(struct acceptance a)
{
    /* No WAIT out and none to come: the session went between the accept
     * and its WAIT (the WAIT was refused). */
    if (!ack.waiting && ack.pending == 0) {
        store_accepted(a, STORE_UNCERTAIN, "cluster: the connection to redis was lost before "
                       "its replicas confirmed the item (cluster.min_replicas_ack); it may be in "
                       "redis: resend it with the same id");
        return;
    }
    struct held *h = ds_calloc(1, sizeof *h);
    h->a = a;
    *ack.tail = h;
    ack.tail = &h->next;
    ack.held++;
}

void
cluster_ack_fail(const char *why)
{
    ack.pending = 0;
    if (ack.held > 0)
        give(STORE_UNCERTAIN, why);
}

size_t
cluster_ack_held(void)
{
    return ack.held;
}

uint64_t
cluster_ack_max_wait_ms(void)
{
    const struct cluster_settings *set = cluster_settings();
    return set->min_replicas_ack > 0 ? set->replicas_ack_timeout_ms : 0;
}

void
cluster_ack_shutdown(void)
{
    ack.shutting_down = 1;
    give(STORE_UNCERTAIN, NULL);
    if (ack.send_event != NULL) {
        event_free(ack.send_event);
        ack.send_event = NULL;
    }
}
