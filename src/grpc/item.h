/*
 * item.c: one accepted item, as the grpc process holds it from acceptance
 * to its final update.
 *
 * Ownership: an item is made by the store's callers (submit.c for a
 * client's, a backend for one it recovers or pulls) and handed to the
 * store (store_accept, store_take); from then on the store owns it and is
 * the only one that frees it (store.c, item_free). Between, it lives in
 * the queue's lists (queue.c) or in a backend's pending writes; whoever
 * holds it never frees it.
 */
#ifndef DS_GRPC_ITEM_H
#define DS_GRPC_ITEM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <grpc/slice.h>

#include "core/wire.h"

struct known_item;
struct worker;

/*
 * One allocation holding the struct, the WorkItem as the client sent it,
 * the id and the batch (a million queued items are a million of these, so
 * every byte counts). The kind is interned.
 */
struct item {
    struct item *next;          /* in the queue, or in its worker's list */
    struct worker *worker;      /* while dispatched */
    /* Its entry in the index of known items (items.c sets it; the entry
     * outlives the item: only finals are forgotten, and a final item is
     * freed). NULL: not looked up yet. */
    struct known_item *known;
    const char *id;             /* these point into data[] */
    const char *batch;
    const uint8_t *raw;         /* the WorkItem as the client sent it */
    const char *kind;           /* interned: never freed */
    uint64_t key;               /* unique in this process (and in the cluster); it
                                 * grows with acceptance: the queue keeps each
                                 * priority's items in key order */
    uint64_t accepted_ns;       /* monotonic */
    /* Not to start before this (unix ns; 0: at once): WorkItem.delay_ms
     * from its acceptance, or a retry's backoff. Absolute, so that it
     * survives a journal and means the same on every instance. */
    uint64_t due_ns;
    uint32_t raw_len;
    uint32_t attempt;           /* the attempt running, or the next one */
    uint32_t run_attempt;       /* the attempt its worker runs (the IPC's: attempt may
                                 * move on while it runs, cluster_take.c adopt_claimed()) */
    uint32_t asked_attempt;     /* its worker was asked to run it as this instead, if not
                                 * started (queue_reattempt); its next update says; 0: not */
    uint32_t max_attempts;
    uint32_t timeout_ms;        /* 0: none */
    uint8_t started;            /* its worker said STARTED for this attempt */
    uint8_t weight;             /* of a worker's prefetch: ITEM_WEIGHT_QUICK or _FULL */
    uint8_t cancelling;         /* its worker was asked to stop it: it ends CANCELLED */
    uint8_t stop_asked;         /* ... by a graceful stop's deadline (queue_stop_all), not
                                 * by a cancel: its end is the stop's (store.c) */
    uint8_t gate_slot;          /* counted as running by its kind's limit (kind_gate.c) */
    uint8_t started_unsent;     /* cluster: this attempt's STARTED went with its next update */
    uint8_t claimed_past_max;   /* cluster: taken over past max_attempts: its entry's delivery
                                 * count is attempt + 1 (its FAILED names the last attempt) */
    uint8_t kept_here;          /* a binary upgrade's new instance refused it: it runs here,
                                 * and waits where no handover takes it (queue.c q.kept) */
    int32_t priority;           /* WorkItem.priority: higher runs first */
    char data[];
};

/*
 * An item that takes microseconds (a quick kind) fills 1/16 of a prefetch
 * slot: a worker then holds up to 16 x workers.prefetch of them, so quick
 * items travel in batches instead of costing a round trip (two context
 * switches) each, while heavy items still balance 2 at a time.
 */
#define ITEM_WEIGHT_QUICK 1
#define ITEM_WEIGHT_FULL  16

/* How an attempt of an item went, or an update it sent: one struct for the
 * state, worker, result, error and progress that every path carries. The
 * pointers are borrowed: whoever keeps them copies. */
struct outcome {
    enum wire_state state;
    pid_t worker_pid;           /* 0: no worker involved */
    const void *result;         /* SUCCEEDED */
    size_t result_len;
    const char *error;          /* FAILED, RETRYING; NULL otherwise */
    float progress;             /* PROGRESS; 1 for SUCCEEDED */
    /* What the attempt cost (the worker measured it): on the end of an
     * attempt that ran (SUCCEEDED, FAILED, CANCELLED, RETRYING); 0 and 0:
     * not known (it did not run, or its worker died). */
    uint64_t cpu_usec;
    uint64_t max_rss_kib;
    uint8_t cached;             /* SUCCEEDED from the result cache or a merged run (merge.h) */
};

/* A new item at attempt 1 with the next key; RAW (RAW_LEN bytes), ID and
 * BATCH are copied, KIND is interned; its priority is read from RAW, its
 * due time is 0 (the caller sets one). */
struct item *item_make(const uint8_t *raw, size_t raw_len, const char *id, const char *batch,
                       const char *kind, uint32_t max_attempts, uint32_t timeout_ms, int quick);
/* The same from a decoded WorkItem and the slice it came in (unref'ed
 * here); ASSIGNED_ID, if not NULL, replaces the message's id. */
struct item *item_new(const wire_work_item *msg, grpc_slice raw, const char *kind,
                      uint32_t max_attempts, uint32_t timeout_ms, const char *assigned_id,
                      int quick);
/* " traceparent=TP" for a log line about ITEM, or "" when it has no trace
 * (its WorkItem bytes hold it: core/trace.h); into BUF, which it returns. */
const char *item_trace_note(const struct item *item, char *buf, size_t size);
/* Keys up to KEY are used (by a journal this process took over). */
void item_skip_keys(uint64_t key);
/* Only the store calls this. */
void item_free(struct item *item);

#endif
