/*
 * queue.c: the waiting items (waitlist.c), the worker connections and
 * dispatch.
 *
 * Accepted items wait here until a worker has room, run there, and leave
 * when their attempt ends. Each worker holds at most workers.prefetch
 * items (a quick item weighs ITEM_WEIGHT_QUICK of ITEM_WEIGHT_FULL) and
 * runs them in the order it got them; a new item goes to the worker
 * holding least (one running a full-weight item last), if its kind's
 * limits let it (kind_gate.h: an item at its kind's limit is parked
 * there, out of the queue, until its kind has room). An item that
 * outlives its timeout gets its worker killed.
 *
 * The queue knows no backend and no caller: it reports through the events
 * table given to queue_init() (the store's). It owns the items only while
 * they are in its lists, and frees none.
 */
#ifndef DS_GRPC_QUEUE_H
#define DS_GRPC_QUEUE_H

#include <stdint.h>
#include <sys/types.h>

struct event_base;
struct ipc_channel;
struct item;
struct outcome;

/* One attached worker: the queue's own, freed when the worker is gone. */
struct worker {
    struct worker *next;
    pid_t pid;
    uint32_t slot;
    struct ipc_channel *channel;    /* NULL once closed */
    struct item *head, *tail;       /* held, in the order it runs them */
    uint32_t held;
    uint32_t held_weight;
    int retiring;
    uint64_t attached_ms;
    uint64_t items_done;
    uint64_t head_started_ms;       /* monotonic: when its running item said STARTED */
    uint64_t timeout_key;           /* the item it is being killed for */
    uint32_t timeout_ms;
    struct event *timer;            /* the running item's timeout */
    struct event *cancel_timer;     /* a cancel it has not answered: then it is killed */
    uint32_t cancel_wait_ms;        /* the longest grace + margin of those asked */
};

/* What the queue tells its owner. Every item passed leaves the queue's
 * lists first (but update, which leaves it where it is). */
struct queue_events {
    /* STARTED or PROGRESS from ITEM's worker. */
    void (*update)(struct item *item, const struct outcome *o);
    /* ITEM's attempt ended: SUCCEEDED or FAILED (the handler said so). */
    void (*ended)(struct item *item, const struct outcome *o);
    /* ITEM's attempt was spent without an answer (its worker died, or it
     * timed out) for REASON. */
    void (*attempt_failed)(struct item *item, pid_t worker_pid, const char *reason);
    /* ITEM's handler failed and asked for another attempt (RETRYING from
     * its worker, O: its error, worker and cost): an attempt spent, like
     * attempt_failed. */
    void (*retry_asked)(struct item *item, const struct outcome *o);
    /* ITEM, whose cancel was asked (queue_cancel), has left its worker:
     * whatever its attempt's end said (SUCCEEDED, FAILED, CANCELLED, its
     * worker's death), it ends CANCELLED. RAN: that end, for what the
     * attempt cost (and its result or error); NULL if there was none
     * (never started, worker died). The same for an item a graceful
     * stop's deadline asked to stop (queue_stop_all: item->stop_asked),
     * whose end is the owner's to decide. item->started says whether it
     * started (its worker said so, or died running it). */
    void (*cancelled)(struct item *item, pid_t worker_pid, const struct outcome *ran);
    /* Dispatch ran: workers may have room for more (cluster pulls). */
    void (*dispatched)(void);
    /* A graceful stop: once nothing waits, idle workers are let go (unless
     * items may still come back, e.g. from a handover in flight). */
    int (*draining)(void);
    /* Ask the master to kill worker PID (SLOT) for REASON. */
    void (*kill_worker)(pid_t pid, uint32_t slot, const char *reason);
};

/* EVENTS (static) on BASE; PREFETCH is workers.prefetch. */
void queue_init(struct event_base *base, const struct queue_events *events, uint32_t prefetch);
/* A reload's workers.prefetch; the next dispatch uses it. */
void queue_set_prefetch(uint32_t prefetch);
/* Every item left is passed to FN (which frees it); workers are freed. */
void queue_shutdown(void (*fn)(struct item *item));

/*
 * ITEM waits for a worker among the items of its priority (item->priority:
 * higher first) in acceptance order (by item->key): at the end (accepted),
 * or, looking from the front, at its place among older ones (a retry, a
 * handover given back, an item held back and pushed again). An item whose
 * due_ns is still ahead waits for it first (waitlist.c; one timer for the
 * earliest), then joins the end of its priority's items. Neither
 * dispatches: queue_dispatch().
 *
 * Dispatch gives the first item of the highest priority to the worker with
 * most room for it, and nothing of a lower priority while it waits: an
 * urgent item waits at most for what the workers already hold (a worker
 * holds up to workers.prefetch items, ITEM_WEIGHT_FULL each).
 */
void queue_push(struct item *item);
void queue_push_front(struct item *item);
void queue_dispatch(void);
/* The first waiting item, out of the queue, or else the oldest parked at
 * its kind's limit (kind_gate.h), or else the first delayed one, or NULL.
 * WITH_KEPT 0: none with item->kept_here (what a handover refused), which
 * wait apart and are not walked: O(1) a call however many they are. */
struct item *queue_take_waiting(int with_kept);
/*
 * A graceful stop's deadline: every item waiting (parked and delayed too)
 * leaves the queue through TAKEN(item, 0); every item a worker holds is
 * asked to stop as a cancel asks it (IPC_CANCEL, or its worker killed at
 * once if GRACE_MS(item) is negative), with item->stop_asked set, and
 * stays until its worker answers: then it ends through events->cancelled
 * (RAN: what it ended with, maybe by itself before the stop reached it;
 * NULL: its worker died). One whose cancel was asked before is left to
 * that cancel. A worker still holding items WAIT_MS later is killed, and
 * with it whatever it runs.
 */
#define QUEUE_STOP_WAIT_MS 2000u
void queue_stop_all(void (*taken)(struct item *item, pid_t worker_pid),
                    int64_t (*grace_ms)(const struct item *item), uint32_t wait_ms);

/* Items waiting: in the queue or parked at their kind's limit; items
 * waiting for their due time (delay_ms, retry backoff). */
uint64_t queue_waiting(void);
uint64_t queue_delayed(void);
/* Items held by workers. */
uint64_t queue_held(void);
/* Weight units (ITEM_WEIGHT_*) the workers could take beside what waits. */
uint32_t queue_local_room(void);
/* Call FN for every item waiting (parked too) or at a worker. */
void queue_for_each(void (*fn)(const struct item *item, void *arg), void *arg);
/* The item with KEY if it waits (parked too) or is at a worker, else NULL. */
struct item *queue_find(uint64_t key);
/* ITEM's attempt moved on (item->attempt): if a worker holds it and has not
 * said STARTED, it is asked to run it as that one (IPC_REATTEMPT). One that
 * started runs on as it was given; one waiting here is sent as attempt. */
void queue_reattempt(struct item *item);
/* ITEM's due_ns moved: if it waits here (not at a worker), it waits for
 * that. One walk over the waiting items: for the rare event (cluster_take.c
 * adopt_claimed()), not for a hot path. */
void queue_retime(struct item *item);
/* Take ITEM out of the queue if it waits there (parked or delayed too):
 * 1, and it is the caller's; 0 if it is at a worker. One walk, as
 * queue_retime(). */
int queue_take(struct item *item);

/*
 * A cancel. One walk over the workers' lists and then the waiting and
 * delayed items:
 * for each item MATCH(item, ARG) accepts,
 *   - at a worker: unless asked before, item->cancelling is set and the
 *     worker is sent IPC_CANCEL, or killed at once if GRACE_MS(item) is
 *     negative (a handler that cannot be interrupted); a worker that has
 *     not answered GRACE_MS + QUEUE_CANCEL_MARGIN_MS later is killed. Then
 *     ASKED(item, ARG); the item stays until its end (events->cancelled).
 *   - waiting, or parked at its kind's limit: it leaves the queue (the
 *     gate) and is passed to TAKEN(item, ARG) (which ends it), once the
 *     walk is over.
 */
struct queue_cancel_ops {
    int (*match)(const struct item *item, void *arg);
    int64_t (*grace_ms)(const struct item *item);
    void (*asked)(const struct item *item, void *arg);
    void (*taken)(struct item *item, void *arg);
};
#define QUEUE_CANCEL_MARGIN_MS 2000u
void queue_cancel(const struct queue_cancel_ops *ops, void *arg);

struct ipc_cost;
void workers_attach(pid_t pid, uint32_t slot, int fd);
/* The workers attached now, for /status. */
const struct worker *workers_list(void);
/* Worker PID is gone, for REASON. The item it was running (RUNNING_KEY at
 * RUNNING_ATTEMPT, as the master read it from the worker; 0 if none) spent
 * that attempt even if its STARTED never arrived (a quick item's waits for
 * the next batch); the items it only held go back to the queue. LIMIT_COST
 * not NULL: that item went over its kind's memory_limit or cpu_limit (the
 * worker killed itself): its attempt ends FAILED with REASON and this cost,
 * not retried. */
void workers_exited(pid_t pid, const char *reason, uint64_t running_key,
                    uint32_t running_attempt, const struct ipc_cost *limit_cost);
void workers_retire(pid_t pid);
/* Close every idle worker's channel (it exits): a graceful stop. */
void workers_close_all(void);

#endif
