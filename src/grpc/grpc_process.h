/*
 * The grpc process: the only process that calls gRPC. It owns the servers,
 * the queue, dispatch to the workers, the update log and the subscribers.
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
struct worker;

/* ---- items and the queue (queue.c) ------------------------------------ */

/*
 * One accepted item: a single allocation holding the struct, the WorkItem
 * as the client sent it, the id and the batch (a million queued items are
 * a million of these, so every byte counts). The kind is interned.
 */
struct item {
    struct item *next;          /* in the queue, or in its worker's list */
    struct worker *worker;      /* while dispatched */
    const char *id;             /* these point into data[] */
    const char *batch;
    const uint8_t *raw;         /* the WorkItem as the client sent it */
    const char *kind;           /* interned: never freed */
    uint64_t key;
    uint64_t accepted_ns;       /* monotonic */
    uint32_t raw_len;
    uint32_t attempt;           /* the attempt running, or the next one */
    uint32_t max_attempts;
    uint32_t timeout_ms;        /* 0: none */
    uint8_t started;            /* its worker said STARTED for this attempt */
    uint8_t weight;             /* of a worker's prefetch: ITEM_WEIGHT_QUICK or _FULL */
    char data[];
};

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
    uint64_t timeout_key;           /* the item it is being killed for */
    uint32_t timeout_ms;
    struct event *timer;            /* the running item's timeout */
};

void queue_init(void);
void queue_shutdown(void);
/* Is there room for one more accepted item? */
int queue_has_room(void);
/* Take ITEM (accepted, QUEUED published) into the queue and dispatch. */
void queue_push(struct item *item);
uint64_t queue_count(void);
/* Called when room frees up: the submit side resumes blocked calls. */
void queue_room_available(void);

void workers_attach(pid_t pid, uint32_t slot, int fd);
/* The workers attached now, for /status. */
const struct worker *workers_list(void);
uint64_t queue_waiting(void);
/* Worker PID is gone, for REASON. The item it was running (RUNNING_KEY at
 * RUNNING_ATTEMPT, as the master read it from the worker; 0 if none) spent
 * that attempt even if its STARTED never arrived (a quick item's waits for
 * the next batch); the items it only held go back to the queue. */
void workers_exited(pid_t pid, const char *reason, uint64_t running_key,
                    uint32_t running_attempt);
void workers_retire(pid_t pid);
/* Close every worker channel (they exit): the end of a graceful stop. */
void workers_close_all(void);
/* A graceful stop's deadline (WHY, e.g. "graceful stop reached
 * shutdown_timeout (30000 ms)"): every item not final, now or accepted
 * later, gets its last update now: FAILED, or with the journal RETRYING
 * (it stays there for the next start). Not in cluster mode. */
void queue_abandon(const char *why);
/* The handover of an upgrade (handover.c): the first waiting item, out of
 * the queue but still counted, or NULL; it comes back with
 * queue_give_back() (to the front: call in reverse order), or leaves with
 * queue_handed_over() (published RETRYING with NOTE, forgotten here). */
struct item *queue_take_waiting(void);
void queue_give_back(struct item *item);
void queue_handed_over(struct item *item, const char *note);

/* ---- the handover of a binary upgrade (handover.c) --------------------- */

/* Start handing the waiting items to the new instance (idempotent). */
void handover_start(void);
/* Stop: give back what is in flight once its call ends (cancelled now). */
void handover_cancel(void);
/* Is a handover call in flight? The process waits for it before exiting. */
int handover_active(void);
/* At exit, after the last call: release the channel. */
void handover_shutdown(void);

/*
 * An item that takes microseconds (kind_is_quick) fills 1/16 of a
 * prefetch slot: a worker then holds up to 16 x workers.prefetch of them,
 * so quick items travel in batches instead of costing a round trip (two
 * context switches) each, while heavy items still balance 2 at a time.
 */
#define ITEM_WEIGHT_QUICK 1
#define ITEM_WEIGHT_FULL  16

struct item *item_new(const wire_work_item *msg, grpc_slice raw, const char *kind,
                      uint32_t max_attempts, uint32_t timeout_ms, const char *assigned_id,
                      int quick);
void item_free(struct item *item);

/* ---- updates (updates.c) ----------------------------------------------- */

/* One update, encoded once and shared by the log and every subscriber
 * queue that holds it. */
struct update {
    uint32_t refs;
    uint8_t state;
    uint64_t seq;
    grpc_slice encoded;         /* the Update message */
    const char *item_id;        /* these point into strings */
    const char *kind;
    const char *batch;
    char strings[];
};

struct update *update_ref(struct update *update);
void update_unref(struct update *update);
/* The retained update with this seq, or NULL. */
struct update *updates_get(uint64_t seq);
/* The oldest seq retained (updates_last_seq() + 1 when none is). */
uint64_t updates_first_seq(void);
/* The first seq this process could use: older ones were another's. */
uint64_t updates_origin_seq(void);

void updates_init(uint64_t seq_start);
void updates_shutdown(void);
/* Publish one update of ITEM to the log and every subscriber. */
void updates_publish(const struct item *item, enum wire_state state, pid_t worker_pid,
                     const void *result, size_t result_len, const char *error, float progress);
uint64_t updates_last_seq(void);
/* Cluster mode: ITEM's Update encoded without its seq (ds_malloc'ed, *len
 * bytes), and an update from the cluster's stream, delivered as if
 * published here: seq is the stream's. */
uint8_t *updates_encode(const struct item *item, enum wire_state state, pid_t worker_pid,
                        const void *result, size_t result_len, const char *error,
                        float progress, size_t *len);
void updates_deliver(uint64_t seq, enum wire_state state, const uint8_t *encoded, size_t len,
                     const char *id, size_t id_len, const char *kind, size_t kind_len,
                     const char *batch, size_t batch_len);
/* Forget the retained updates: the next one delivered has seq LAST_SEQ + 1.
 * Seqs from ORIGIN on are this log's to judge (a replay from an evicted one
 * is refused). LOST, if not NULL, says why updates up to LAST_SEQ are
 * missing (a replay from one of them is refused with it). */
void updates_restart(uint64_t last_seq, uint64_t origin, const char *lost);
/* Why updates up to SEQ are missing, if a restart said so; else NULL. */
const char *updates_lost(uint64_t seq);
/* Apply a new updates.history. */
void updates_configure(void);

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
