/*
 * cluster_state.h: what the cluster files share (cluster.c, cluster_write.c,
 * cluster_take.c, cluster_read.c; cluster.h is the contract the rest of
 * the process uses, and its overview). One session's state, `cl`, defined
 * in cluster.c; the constants more than one of them uses; and cluster.c's
 * helpers the others call (the command connection, session_fail, reply
 * and argument helpers). Each part's own functions are in its header:
 * cluster_write.h, cluster_take.h, cluster_read.h.
 *
 * Everything runs on the grpc process's loop thread: no locking.
 */
#ifndef DS_GRPC_CLUSTER_STATE_H
#define DS_GRPC_CLUSTER_STATE_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "grpc/cluster.h"
#include "grpc/cluster_scripts.h"
#include "grpc/item.h"
#include "grpc/redis_args.h"
#include "grpc/redis_reply.h"
#include "grpc/store.h"

struct event;
struct item_op;
struct resolve_request;

#define PING_EVERY_MS       1000
#define PING_TIMEOUT_MS     3000    /* no answer: the session is dropped */
#define BACKOFF_MIN_MS      100
#define BACKOFF_MAX_MS      5000
#define BLOCK_MS            "1000"  /* XREAD(GROUP) BLOCK: an idle round trip a second */
/* The entries of {NAME}:pwork have IDs 1-N: an item's key is N with this
 * bit set, so that keys stay unique across the two streams. */
#define PWORK_BIT           (UINT64_C(1) << 63)
#define CONTROL_REASON_MAX  1024    /* bytes of a cancel's reason (cancel.c's bound) */

/* One of the session's three connections: a member of cl (cmd, work, upd),
 * never allocated apart. ac is hiredis's: free_conn() frees it (hiredis
 * itself when connecting fails); replies are kept across sessions and
 * freed by cluster_shutdown(). */
struct conn {
    redisAsyncContext *ac;      /* NULL once hiredis freed it, or before connecting */
    const char *name;
    int connected;
    struct reply_pool replies;  /* its replies are built in it (kept across sessions) */
};

/* One update's callback in the next update script (cluster_write.c's
 * cluster_send_update()): a plain value in cl.ucbs or cl.unsent, arrays cl
 * owns (cluster_write.c grows and empties them, cluster_shutdown() frees
 * them). */
struct update_cb {
    redisCallbackFn *fn;
    void *arg;
};

/*
 * The cluster session of this grpc process: one, `cl`, static storage in
 * cluster.c. cluster_start() zeroes and fills it; what its pointers own
 * (the events, the accepts and update buffers, the connections and their
 * reply pools, the resolve in flight) is freed by cluster_shutdown(), and
 * by on_reset() for what a session alone holds. The item_ops in cl.ending
 * are cluster_write.c's (freed by their replies' callbacks).
 */
struct cluster_state {
    int enabled;
    int shutting_down;
    char consumer[160];
    /* The settings this process runs with, from its start: a reload
     * changes lease, min_replicas_ack and replicas_ack_timeout at once and
     * the rest at the next start; one that turns cluster: off changes none
     * (its defaults would have shortened the lease, dropped the WAIT). */
    struct cluster_settings set;
    char key_work[96], key_updates[96], key_seq[96], key_origin[96];
    char key_items[96], key_finals[96], key_finals_bytes[96], key_item_prefix[96];
    char key_control[96], key_want_started[96], key_layout[96], key_seq_jump[96];
    char key_lease_prefix[96], key_lease[256];   /* {NAME}:lease:, and ours */
    char key_pwork[96], key_delayed[96], key_prio[96], key_latest[96];
    char control_last[48];      /* the last {NAME}:control entry read */
    uint64_t floor_start;       /* updates_last_seq() when we started */
    char floor[24];             /* the seq counter starts no lower than this: cluster_floor_arg() */
    struct conn cmd, work, upd;
    /* The master: cluster.redis's host, or what the sentinels named. */
    int sentinels;              /* cluster.redis is sentinel://: sentinel.c finds it */
    char master_name[128];
    char master_host[256];
    int master_port;
    char address[64];           /* master_host resolved: what hiredis connects to */
    struct resolve_request *resolving;
    int up;                     /* connected and set up */
    int failing;                /* the session is being dropped */
    int caught_up;              /* the update stream was read to its end */
    int setup_pending;
    char sha[SCRIPT_COUNT][48];
    struct event *reset_event, *retry_timer, *setup_timer, *ping_timer;
    struct event *renew_timer, *claim_timer, *poll_timer;
    struct event *due_timer;
    struct event *pull_timer;   /* a failed pull script is tried again */
    int64_t due_at_ms;          /* the due timer is armed for then (unix ms); 0: not armed */
    int due_running;
    uint64_t backoff_ms;
    /* the update stream */
    int reading;
    uint64_t last_seq;          /* delivered; 0: none yet */
    uint64_t origin;
    uint64_t seq_reported;      /* to the master */
    /* the work stream */
    int pulling;                /* an XREADGROUP (work) or a pull script (cmd) is out */
    int pull_blocked;           /* it is the XREADGROUP */
    int prio_waiting;           /* prioritized items may wait in their lanes: pull by script */
    int pull_paused;            /* a pull script failed: none until pull_timer (XREADGROUP goes on) */
    uint64_t wakes;             /* cluster_prio_wake() calls: one during a pull script keeps it
                                 * set */
    uint64_t wakes_at_pull;     /* ... as the pull script in flight was sent */
    int unblocking;             /* a CLIENT UNBLOCK for the XREADGROUP is out */
    long long work_client_id;   /* of the work connection, for CLIENT UNBLOCK */
    uint32_t pull_unit;         /* weight of the items lately taken */
    uint32_t pull_count;        /* the COUNT of the XREADGROUP in flight */
    int pull_backlog;           /* the last XREADGROUP got all it asked for: more wait */
    int claiming;
    int taking;                 /* the entries of a pull's or claim's reply are being taken:
                                 * a drain's workers stay until the last is (cluster_taking) */
    int trimming;               /* a trim (chain) is in flight: cluster_take.c trim() */
    int handing_back;           /* hand-back scripts out (a graceful stop's deadline) */
    int polling;
    uint64_t xlen;              /* items not final, cluster-wide, as last seen */
    uint64_t accepts_sent, accepts_at_poll;
    /* the accepts of this turn of the loop, sent by flush_accepts() */
    struct acceptance *accepts;
    size_t accepts_n, accepts_cap;
    int accepts_ahead;          /* accept scripts in flight */
    uint64_t accept_batches;    /* accept scripts sent, for /status */
    struct redis_cmd batch_cmd; /* reused for every batch script */
    /* the finals and retries sent and not answered (ending_op()) */
    struct item_op *ending;
    /* the updates of this turn of the loop (cluster_send_update(), cluster_flush_updates()) */
    struct redis_cmd ucmd;
    struct update_cb *ucbs;
    size_t ucbs_n, ucbs_cap;
    struct update_cb *unsent;   /* never sent: told from the loop */
    size_t unsent_n;
    uint64_t update_batches;
    struct event *flush_event;
    int was_busy;               /* inflight reached INFLIGHT_MAX: see cluster_busy() */
    uint64_t busy_spells;       /* times it did, for /status */
    /* a drain waits for these */
    uint64_t inflight;
    uint64_t max_published_seq;
    /* for /status and the log */
    uint64_t ping_sent_ms;
    int ping_outstanding;
    uint64_t reconnects, claimed, lost_updates, superseded, sessions;
    uint64_t failures;          /* sessions that failed (or never came up) */
    uint64_t started_folded;    /* STARTED of quick items not sent on their own */
    uint64_t cancels;           /* cancel requests for items held here */
    uint64_t known[3];          /* items known, finals retained, their bytes: as last polled */
    char last_error[256];
    char why[400];
};
extern struct cluster_state cl;

/* ---- cluster.c's helpers for the other cluster files ------------------------ */

/* Drop the session (logged with the reason), start a new one with backoff. */
void cluster_session_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* R says the node is a replica now: the session goes (1), else 0. */
int cluster_demoted(const redisReply *r);
/* Send A on CONN; -1: not sent (the session is down or going, or A
 * overflowed), FN will not run. */
int cluster_command(struct conn *conn, redisCallbackFn *fn, void *arg, struct redis_args *a);
/* R is an error reply starting with PREFIX. */
int cluster_is_error(const redisReply *r, const char *prefix);
/* The "N" of a stream ID "0-N" (LEN bytes), or 0. */
uint64_t cluster_id_number(const char *s, size_t len);
/* The stream that holds the entry of KEY ({NAME}:work or {NAME}:pwork),
 * and that entry's ID as an argument. */
const char *cluster_stream_of(uint64_t key);
void cluster_entry_arg(struct redis_args *a, uint64_t key);
/* The floor for a seq counter Redis lost, as an argument (in cl.floor). */
const char *cluster_floor_arg(void);
/* WorkItem.priority of ITEM's WorkItem (0: none), and the same as the
 * scripts' argument in BUF (16 bytes; "" for 0). */
int32_t cluster_raw_priority(const struct item *item);
const char *cluster_priority_arg(const struct item *item, char *buf);
/* The retention's arguments of LUA_TRIM. */
void cluster_retention_args(struct redis_args *a);
/* Log the items a script left alone (BAD), and LUA_TRIM's bad counts. */
void cluster_log_bad_items(const redisReply *bad, const char *head, const char *tail);
void cluster_log_bad_counts(const redisReply *bad, const redisReply *bytes_bad);
/* The value of field NAME of a stream entry's FIELDS, or NULL; as a
 * NUL-terminated string of at most MAX bytes in BUF. */
const redisReply *cluster_field(const redisReply *fields, const char *name);
const char *cluster_field_string(const redisReply *fields, const char *name, size_t max,
                                 char *buf);
/* Draining and idle now: tell the grpc process. */
void cluster_check_done(void);

#endif
