/*
 * store.c: the one place that decides what happens to an item between its
 * acceptance and its final update, whichever backend keeps it.
 *
 *   accept    submit.c hands a valid item to store_accept(); the backend
 *             writes it (memory: nothing to write; journal: an ACCEPT
 *             record; Redis: the work stream), then the caller's callback
 *             hears the verdict, and an accepted item is published QUEUED
 *             and queued (Redis: it is in the shared stream, and comes back
 *             to some instance through store_take()).
 *   run       queue.c dispatches it and reports what its worker says
 *             (struct queue_events, wired here): STARTED and PROGRESS are
 *             published, an attempt's end goes through store_outcome().
 *   retry     the retry-or-fail rule (store_attempts_left) is written once,
 *             here: an attempt that failed for want of a worker (a crash, a
 *             timeout, a lost instance) runs again until max_attempts.
 *   final     the backend records it (journal: a FINAL record; Redis: the
 *             final script), then it is published and the item freed.
 *
 * Backends: store_memory.c (no backend: everything happens at once),
 * journal.c (queue.journal) and cluster.c (cluster:, Redis). Which one is
 * chosen once, at start (a reload cannot switch: it would strand items).
 * A backend answers through the store_*() calls below marked "backend",
 * never by calling submit.c, queue.c or updates.c itself.
 *
 * Ownership: the store owns every item handed to it and frees it
 * (item_free is called here only).
 */
#ifndef DS_GRPC_STORE_H
#define DS_GRPC_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/config.h"
#include "core/wire.h"
#include "grpc/item.h"

struct evbuffer;
struct item;

/* What became of an item handed to store_accept(). */
enum store_verdict {
    STORE_ACCEPTED,
    STORE_REJECTED,             /* WHY: this item is not accepted (a write failed) */
    STORE_UNAVAILABLE,          /* WHY: the backend cannot be reached: end the call */
    STORE_UNCERTAIN,            /* the same, and whether it took the item is unknown */
    STORE_DUPLICATE,            /* its id is known (live, or final and retained): not queued */
};

/* The caller's callback: INDEX (its own) and the ITEM (read-only; the
 * store keeps or frees it after the callback returns). */
typedef void store_accept_fn(void *arg, uint32_t index, const struct item *item,
                             enum store_verdict verdict, const char *why);

/* An accept in flight, held by value by the backend until it answers. */
struct acceptance {
    struct item *item;
    store_accept_fn *done;
    void *arg;
    uint32_t index;
};

/* ---- known items a backend keeps itself (Redis) ---------------------------- */

/* A getItems question: REQUEST as the client sent it, IDS its item_ids as
 * known here (a scope's prefix added: request->n_item_ids of them), and
 * SCOPE ("" none): a listing shows only the ids that start with it. All
 * borrowed until the answer comes or the question is given up. */
struct store_items_query {
    const wire_items_request *request;
    char *const *ids;
    const char *scope;
};

enum store_items_status {
    STORE_ITEMS_OK,
    STORE_ITEMS_INVALID,        /* WHY: the request cannot be answered (a bad page token) */
    STORE_ITEMS_UNAVAILABLE,    /* WHY: the backend cannot be reached */
    STORE_ITEMS_TOO_LARGE,      /* WHY: the reply would be more than a client takes */
};

/* The answer: REPLY (with STORE_ITEMS_OK; else NULL) is valid during the
 * call only. */
typedef void store_items_fn(void *arg, enum store_items_status status, const char *why,
                            const wire_items_reply *reply);

/* A question in flight, owned by the backend. */
struct store_items_ask;

/* cancel or retry asked of such a backend: IDS (as known here, N_IDS of
 * them) and every item of BATCHES (whose id starts with SCOPE) that it
 * applies to; REASON for a cancel (NULL: the default). All borrowed until
 * the answer comes or the question is given up. */
enum store_act { STORE_ACT_CANCEL, STORE_ACT_RETRY };
struct store_act_query {
    enum store_act act;
    char *const *ids;
    size_t n_ids;
    char *const *batches;
    size_t n_batches;
    const char *scope;
    const char *reason;
};

/* DONE: cancelled or requeued; SKIPPED: already final (cancel) or not
 * retryable (retry); NOT_FOUND[i]: ids[i] is not known. Valid during the
 * answer's call only. */
struct store_act_result {
    uint64_t done;
    uint64_t skipped;
    const uint8_t *not_found;
};
typedef void store_act_fn(void *arg, enum store_items_status status, const char *why,
                          const struct store_act_result *result);
struct store_act_ask;

/*
 * A backend. Every function may complete at once (calling the store_*
 * answer from inside) or later from the loop.
 */
struct store_backend {
    const char *name;
    /* At start, before the update log: *SEQ_START moves past what it used. */
    void (*open)(uint64_t *seq_start);
    /* After the update log: recover what it holds, connect. */
    void (*start)(void);
    /* Updates get their seq from the backend and reach the update log
     * through updates_deliver(), not from this process's publishing. */
    int shared_log;
    /* Items left at a graceful stop's deadline stay in the backend for the
     * next start (RETRYING now), instead of FAILED. */
    int keeps_abandoned;
    /* Write A.item; answer with store_accepted(). */
    void (*accept)(struct acceptance a);
    /* shared_log: publish STARTED or PROGRESS of ITEM. */
    void (*publish)(struct item *item, const struct outcome *o);
    /* Record that ITEM is final as O says; answer with store_final_written()
     * (O's pointers are borrowed for the call only) or store_dropped(). */
    void (*final)(struct item *item, const struct outcome *o);
    /* ITEM (at its failed attempt) runs again: record RETRYING for O and
     * when the next attempt is due (item->due_ns, set by the retry's
     * backoff; 0: at once), then store_retried() (item->attempt not yet
     * bumped) or store_dropped(). NULL: nothing to record but the next
     * attempt (attempt, below). */
    void (*retry)(struct item *item, const struct outcome *o);
    /* ITEM's next attempt is item->attempt (synchronous retries). */
    void (*attempt)(const struct item *item);
    /* ITEM is no longer ours (handed to another instance). */
    void (*forget)(const struct item *item);
    /* keeps_abandoned: a graceful stop leaves ITEM, whose attempt
     * (item->attempt) has not started: taking it over spends none. NULL:
     * nothing to record. */
    void (*unstarted)(const struct item *item);
    /* Update seqs up to SEQ may be used (for a restart of the whole daemon). */
    void (*seq_reserved)(uint64_t seq);
    /* Room for one more item? NULL: this process's queue.capacity. */
    int (*has_room)(void);
    /* Too many writes in flight to the backend: read no more items from
     * the calls (backpressure, not a rejection) until the backend calls
     * store_room_available(). NULL: never. */
    int (*busy)(void);
    /* Can calls be served at all? If not, *WHY says why (calls end UNAVAILABLE). */
    int (*available)(const char **why);
    /* Can items be accepted now? (health, /healthz) The backend calls
     * store_serving_changed() whenever the answer may have changed. */
    int (*serving)(const char **why);
    /* Not serving yet, and its first attempt to (a Redis session) has no
     * outcome yet: the process waits for it before it tells the master
     * that it listens without serving. NULL: never. */
    int (*starting)(void);
    /* Nothing is waiting for the backend: a drain may end. */
    int (*idle)(void);
    /* A graceful stop began: take no more items (Redis: end the pull that
     * blocks on the work stream now, not at its timeout). NULL: nothing. */
    void (*drain)(void);
    /* A take is in flight (Redis: a pull or a claim) whose answer may
     * bring items here: a drain keeps its workers, and does not end,
     * until it came. NULL: never. */
    int (*taking)(void);
    /* shared_log: a graceful stop's deadline stops this instance fast: give
     * the items waiting here (none of them started here) back to the other
     * instances at once, at the attempt they are at; handing_back() says
     * while the answer is awaited (grpc_process_check_done() is called once
     * it came). NULL: nothing to give back. */
    void (*hand_back)(void);
    int (*handing_back)(void);
    /* Local room may have appeared: take more items (Redis). */
    void (*pull)(void);
    /* A subscriber whose filter lets STARTED through came while there
     * was none (Redis: say so at once to every instance). NULL: nothing. */
    void (*want_started)(void);
    void (*configure)(const struct ds_config *old);
    void (*shutdown)(void);
    /* Known items kept by the backend (NULL: items.c keeps them here).
     * DONE runs later, from the loop, once, unless the question is given
     * up with items_abort() first. */
    struct store_items_ask *(*get_items)(const struct store_items_query *q,
                                         store_items_fn *done, void *arg);
    void (*items_abort)(struct store_items_ask *ask);
    struct store_act_ask *(*act)(const struct store_act_query *q, store_act_fn *done,
                                 void *arg);
    void (*act_abort)(struct store_act_ask *ask);
    void (*status_json)(struct evbuffer *b);
    void (*metrics)(struct evbuffer *b);
};

/* Choose the backend for this config (memory, journal or Redis), open it
 * (*SEQ_START moves past what a journal used) and wire the queue. */
void store_init(uint64_t *seq_start);
/* After updates_init(): recover (journal) or connect (Redis). */
void store_start(void);
void store_configure(const struct ds_config *old);
void store_shutdown(void);
/* Told when room frees up (submit.c resumes blocked calls). */
void store_on_room(void (*fn)(void));
/* Told when store_serving() may have changed (after health watchers):
 * the process binds its listeners, or tells the master it serves, only
 * once the backend can take items (a Redis session is open and its update
 * stream read; a journal is open). */
void store_on_serving_changed(void (*fn)(void));

/* ---- for submit.c, health, status, the process -------------------------- */

/* Take ITEM (valid, checked against the config): DONE(ARG, INDEX, ...)
 * hears the verdict, maybe before this returns. */
void store_accept(struct item *item, store_accept_fn *done, void *arg, uint32_t index);
int store_has_room(void);
/* The backend has too much in flight: read no more items for now (it says
 * when through the store_on_room() callback). */
int store_busy(void);
/* The first subscriber that wants STARTED updates came (subscribe.c). */
void store_subscribers_want_started(void);
/* Items accepted (or being written) and not final. */
uint64_t store_count(void);
/* Items handed to store_accept() whose verdict has not come yet (a journal
 * write, a Redis accept): accepted, they are queued here (not with Redis). */
int store_accepting(void);
int store_available(const char **why);
int store_serving(const char **why);
int store_starting(void);
int store_idle(void);
/* A graceful stop began (store_backend's drain). */
void store_drain(void);
/* Can a take in flight still bring items here (store_backend's taking)? */
int store_taking(void);
/* Does the backend keep what a graceful stop leaves (journal, while it
 * serves: not while its directory is removed and cannot be made again)? */
int store_keeps_abandoned(void);
/* Does the backend own the update log (Redis)? */
int store_shared_log(void);
/* A graceful stop's deadline (WHY): every item not final, now or accepted
 * later, gets its last update (FAILED, or RETRYING if the backend keeps
 * it): at once, or for one at a worker once the worker has stopped it
 * (queue_stop_all(): as a cancel stops it, the worker killed if it has not
 * within QUEUE_STOP_WAIT_MS; one that ends by itself first keeps its end).
 * Not with a shared backend: other instances take them. */
void store_abandon(const char *why);
/* A shared backend's part of a graceful stop's deadline (store_backend's
 * hand_back), and whether it still awaits its answer. */
void store_hand_back(void);
int store_handing_back(void);
/*
 * Cancel every item held here that MATCH(item, ARG) accepts, for REASON
 * (NULL: a default naming a client; the caller checked it is UTF-8 of a
 * bounded size). A waiting item ends CANCELLED now; one at a worker when
 * the worker has stopped it (or was killed for not stopping), and
 * whatever that attempt's end says, it is CANCELLED with REASON, never
 * retried. Returns how many were cancelled (or asked again). Every
 * backend records the final like any other; an item not held by this
 * process (being written, or final) is not seen. MATCH must not change
 * what the store holds.
 */
uint64_t store_cancel(int (*match)(const struct item *item, void *arg), void *arg,
                      const char *reason);
void store_status_json(struct evbuffer *b);
void store_metrics(struct evbuffer *b);

/* ---- known items (items.c keeps them; this is the way to them) ---------- */

/* Is an item with this id known (accepted or being written, live, or final
 * and retained)? Not in cluster mode: there store_accept() says
 * STORE_DUPLICATE. */
int store_known(const char *id);
/* Is ID known and final (SUCCEEDED, FAILED, CANCELLED)? As store_known(). */
int store_known_final(const char *id);
/* A resent known id was not queued again (metrics). */
void store_count_duplicate(void);
/* An item was queued again by a retry that a backend carried out (metrics). */
void store_count_retry(void);
/* What store_retry() did. */
enum store_retry_result {
    STORE_RETRY_REQUEUED,
    STORE_RETRY_NOT_RETRYABLE,  /* not FAILED or CANCELLED */
    STORE_RETRY_NOT_FOUND,
};
/* Run the FAILED or CANCELLED item ID again from attempt 1, with its kind's
 * handler as configured now: a new item made from its WorkItem, published
 * QUEUED and queued. */
enum store_retry_result store_retry(const char *id);
/* The item a retry of ID (in BATCH, of KIND, sent as RAW) runs: made as
 * submit.c makes one, with the config of now, at attempt 1; NULL if it
 * cannot run now (its kind is gone, or no longer takes it: logged). For a
 * backend that keeps the items (Redis). */
struct item *store_item_again(const char *id, const char *batch, const char *kind,
                              const uint8_t *raw, size_t raw_len);

/* Are the known items the backend's (cluster mode)? Then getItems asks
 * store_get_items(), not items.c. */
int store_items_remote(void);
/* The backend's answer to Q comes to DONE(ARG, ...) later, from the loop,
 * unless store_items_abort() gives the returned question up first. */
struct store_items_ask *store_get_items(const struct store_items_query *q, store_items_fn *done,
                                        void *arg);
void store_items_abort(struct store_items_ask *ask);
/* cancel or retry in such a backend: the same contract. A cancel reaches
 * the instance that holds the item. */
struct store_act_ask *store_act(const struct store_act_query *q, store_act_fn *done, void *arg);
void store_act_abort(struct store_act_ask *ask);

/* ---- the handover of an upgrade (handover.c) ----------------------------- */

/* The first waiting item, out of the queue but still counted, or NULL.
 * store_take_sendable(): the same, never one kept by store_keep_here(). */
struct item *store_take_waiting(void);
struct item *store_take_sendable(void);
/* Back to the front of the queue (call in reverse order). */
void store_give_back(struct item *item);
/* The same, for good: the new instance refused ITEM, it runs here, and
 * store_take_sendable() never returns it again. */
void store_keep_here(struct item *item);
/* The new instance has it: published RETRYING with NOTE, forgotten here. */
void store_handed_over(struct item *item, const char *note);

/* ---- the retry-or-fail rule ---------------------------------------------- */

/* ITEM's attempt FAILED_ATTEMPT was spent without an answer (a worker
 * death, a timeout, a lost instance): may it run again? Every such path
 * asks this, and only this. */
int store_may_retry(const struct item *item, uint32_t failed_attempt);

/* ---- answers of a backend ------------------------------------------------ */

void store_accepted(struct acceptance a, enum store_verdict verdict, const char *why);
/* O as given to backend->final(); the store publishes it (unless the
 * backend's log is shared) and frees the item. */
void store_final_written(struct item *item, const struct outcome *o);
/* RETRYING is recorded: ITEM runs again, first in line. */
void store_retried(struct item *item);
/* ITEM is no longer ours (another instance has it, or its attempt was
 * superseded): forget it without an update. */
void store_dropped(struct item *item);
/* An item the backend brings (pulled from Redis, taken over from a dead
 * instance's journal), already published QUEUED or RETRYING: queue it. */
void store_take(struct item *item);
/* The same without dispatching, for many at once (so that they run by
 * priority, not in the order they came): then store_dispatch(). */
void store_take_quietly(struct item *item);
void store_dispatch(void);
/* The same for an item that cannot run: it is FAILED with ERROR (recorded
 * in the backend like any final). */
void store_fail(struct item *item, const char *error);
/* Publish O for ITEM in this process's update log (a backend's recovery). */
void store_publish_local(struct item *item, const struct outcome *o);
/* Free an item the store never counted (a backend's recovery gave up on
 * it, or the process exits with it still in a backend's hands). */
void store_discard(struct item *item);
/* Local room for items in weight units (ITEM_WEIGHT_*), beside those queued. */
uint32_t store_local_room(void);
/* The item with KEY if it is held here (queued, at a worker or merged),
 * else NULL; it stays the store's. Call FN for each held. */
struct item *store_held(uint64_t key);
/* The pid of the worker that holds ITEM (one of store_held()'s), 0 if none. */
pid_t store_worker_pid(const struct item *item);
/* ITEM's attempt (one of store_held()'s) moved on: a copy not started runs as
 * that one (queue_reattempt()). */
void store_reattempt(struct item *item);
/* ITEM (one of store_held()'s) is not to start before its due_ns, which
 * moved: if it waits here, it waits for that (queue_retime()). */
void store_retime(struct item *item);
/* ITEM's (one of store_held()'s) entry is no longer ours (another instance
 * took it over, or it ended there): a copy waiting here is forgotten
 * (store_dropped(); returns 1). One at a worker runs on: its updates are
 * dropped as superseded. */
int store_lost(struct item *item);
void store_for_each(void (*fn)(const struct item *item, void *arg), void *arg);
/* Room may have appeared (a backend's capacity poll). */
void store_room_available(void);
/* The backend's serving() may answer otherwise now (a session opened or
 * was lost, a journal opened or was removed): health watchers and the
 * store_on_serving_changed() callback hear it. */
void store_serving_changed(void);

#endif
