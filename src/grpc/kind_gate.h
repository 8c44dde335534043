/*
 * kind_gate.c: per-kind limits and pause (handlers.<kind>.concurrency,
 * rate and paused), asked by dispatch before an item goes to a worker.
 *
 * Dispatch (queue.c) takes the first waiting item and asks
 * kind_gate_admit(). While no kind is limited that is a flag check; else a
 * scan of the limited kinds (a few pointers). An item whose kind is paused,
 * at its concurrency, out of rate tokens, or has items parked already is
 * parked in its kind's list here, in acceptance order (item->key), and
 * leaves the queue: other kinds go on, and dispatch never walks parked
 * items. When the kind has room again (an item of it left its worker, its
 * bucket refilled: one timer for the earliest refill, or a reload raised a
 * limit or unpaused it), the next dispatch first gives its parked items
 * back to the queue through ops->release, each already holding its slot
 * and the token it took, and admit lets them through at once.
 *
 * "Running", what concurrency bounds, is counted from admission (handed to
 * a worker: a prefetched item counts) or from release, until
 * kind_gate_leave(), which queue.c calls wherever an item leaves a
 * worker's list (every end of an attempt: success, failure, its worker's
 * death, a cancel, a timeout) and where a held-back item leaves the queue
 * other than to a worker (a cancel, a handover, a stop).
 *
 * Per process: in cluster mode each instance applies its limits to the
 * items it pulled. The gate owns no item: parked items belong to the
 * store as queued ones do; the gate holds them in its lists (item->next).
 */
#ifndef DS_GRPC_KIND_GATE_H
#define DS_GRPC_KIND_GATE_H

#include <stdint.h>

struct ds_config;
struct event_base;
struct item;

/* What the gate asks of the queue (static, given to kind_gate_init). */
struct kind_gate_ops {
    /* FIRST and the items linked after it by next (one kind's, in
     * acceptance order) may run: back to the queue, ahead of the items
     * accepted after them. A dispatch is running or follows. */
    void (*release)(struct item *first);
    /* Run a dispatch (a refill timer fired). */
    void (*dispatch)(void);
    /* Call FN for every item held by a worker. */
    void (*for_each_held)(void (*fn)(struct item *item, void *arg), void *arg);
};

void kind_gate_init(struct event_base *base, const struct kind_gate_ops *ops);
/* CONFIG's limits, applied in place: a limit lowered below what runs stops
 * new starts until enough end; one raised or lifted, or an unpause, lets
 * parked items go at the next dispatch (the caller dispatches). */
void kind_gate_configure(const struct ds_config *config);
/* Frees the gate; parked items must have been taken (kind_gate_take_parked). */
void kind_gate_shutdown(void);

/* May ITEM, out of the queue, go to a worker now? 1: yes (it is counted
 * as running of its kind if limited); 0: it is parked here. */
int kind_gate_admit(struct item *item);
/* Called first by every dispatch: parked items whose kind has room again
 * go back to the queue (ops->release). */
void kind_gate_release_ready(void);
/* ITEM's attempt ended, or ITEM left the queue other than to a worker: the
 * slot it held, if any, is given back (once: it is then cleared). */
void kind_gate_leave(struct item *item);

/* ITEM leaves the queue before a worker got it (a re-time that makes it
 * wait again, a cancel, a handover, a stop): as kind_gate_leave(), and if
 * the gate had released it, the rate token it took then goes back to its
 * kind's bucket: it did not start, and when it is let through again it
 * takes one then. So an item spends one token per start, however often it
 * was released and taken back. */
void kind_gate_leave_unstarted(struct item *item);

/* Parked items, in all kinds. */
uint64_t kind_gate_parked(void);
/* The oldest parked item (lowest key), out of the gate, or NULL; WITH_KEPT
 * 0: not one with item->kept_here (those wait in lists of their own, so
 * that a handover never walks them). */
struct item *kind_gate_take_parked(int with_kept);
void kind_gate_for_each(void (*fn)(const struct item *item, void *arg), void *arg);
/* Parked items MATCH accepts leave the gate, appended to the chain whose
 * last next pointer is *TAIL (which then points at the new last one's). */
void kind_gate_take_matching(int (*match)(const struct item *item, void *arg), void *arg,
                             struct item ***tail);

/* What /status and /metrics show of KIND (an interned kind: item->kind). */
struct kind_gate_state {
    int limited;                /* concurrency, rate or paused set */
    int paused;
    uint64_t running;           /* at workers (and released, for a limited kind) */
    uint64_t parked;            /* waiting here at its limit */
};
void kind_gate_state(const char *kind, struct kind_gate_state *out);

#endif
