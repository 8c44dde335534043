/*
 * Cluster mode: the queue and the update log in Redis Streams (cluster.h
 * has the contract, docs/scaling.md the story).
 *
 * This file: the store's backend (store_redis) and what cluster.h offers
 * the rest of the process (settings, keys, sending on the command
 * connection, the cancel and retry scripts, /status and /metrics), the
 * session with Redis, and the helpers every part uses. The parts share
 * its state, `cl` (cluster_state.h):
 *
 *   cluster_write.c    accepting items and publishing their updates,
 *                      finals and retries (the accept and update
 *                      scripts); backpressure
 *   cluster_take.c     taking items: pulling, renewals and our lease,
 *                      claims, delayed items, the capacity poll
 *   cluster_read.c     reading the update stream and the control stream
 *   cluster_scripts.c  the Lua scripts; cluster_items.c getItems, cancel
 *                      and retry by id; cluster_ack.c min_replicas_ack
 *
 * Three connections, all on the loop through hiredis's libevent adapter:
 * `command` carries the scripts (accept, update, renew, claim) and the
 * capacity poll, in order; `work` blocks in XREADGROUP for new items;
 * `updates` blocks in XREAD on the update stream. They live and die
 * together as one session: any of them failing drops all three (every
 * reply still owed arrives as NULL and is handled as "unknown"), and a new
 * session is started with backoff. Items held here are never renewed
 * without a session, so another instance takes them over after the lease.
 *
 * The scripts (cluster_scripts.c) make every check-and-write atomic: a
 * seq and its update entry, an item's entry and its QUEUED update, an
 * update and the check that the attempt is still this instance's, a final
 * update and the XACK.
 *
 * The session (here): finding the master (through the sentinels when
 * cluster.redis names them; its host resolved off the loop), the three
 * connections, the setup pipelined once they are up (ROLE, the layout
 * check, SCRIPT LOAD, the groups, the seq fence), a ROLE every second,
 * and on_reset() dropping it all for a new one with backoff.
 */
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>

#include "core/clock.h"
#include "core/log.h"
#include "grpc/cluster.h"
#include "grpc/cluster_ack.h"
#include "grpc/cluster_items.h"
#include "grpc/cluster_read.h"
#include "grpc/cluster_scripts.h"
#include "grpc/cluster_state.h"
#include "grpc/cluster_take.h"
#include "grpc/cluster_write.h"
#include "grpc/grpc_process.h"
#include "grpc/item.h"
#include "grpc/redis_args.h"
#include "grpc/redis_reply.h"
#include "grpc/resolve.h"
#include "grpc/sentinel.h"
#include "grpc/status_http.h"
#include "grpc/store.h"
#include "grpc/updates.h"

#define CONNECT_TIMEOUT_MS  3000    /* for the three connections and the setup */
#define RESOLVE_TIMEOUT_MS  5000    /* finding the master: a DNS lookup (on top of the sentinels) */
#define POLL_MS             100     /* XLEN while submissions are under way */
#define READ_BUF_KEEP       (1u << 20)  /* hiredis's read buffer, kept when empty */

/* The session's state, shared by the cluster files (cluster_state.h). */
struct cluster_state cl;

/* "redis HOST:PORT", or "redis master NAME at HOST:PORT" (found through the
 * sentinels; "redis master NAME" before they named one): for messages. */
static const char *
where(void)
{
    static char buf[448];
    if (!cl.sentinels)
        snprintf(buf, sizeof buf, "redis %s:%d", cl.master_host, cl.master_port);
    else if (cl.master_host[0] == '\0')
        snprintf(buf, sizeof buf, "redis master %s", cl.master_name);
    else
        snprintf(buf, sizeof buf, "redis master %s at %s:%d", cl.master_name, cl.master_host,
                 cl.master_port);
    return buf;
}

/* An error reply saying the node is a replica now (a failover demoted
 * it): the session goes, to find the master again. 1 if R is one. */
int
cluster_demoted(const redisReply *r)
{
    if (r == NULL || !(r->type == REDIS_REPLY_ERROR && strncmp(r->str, "READONLY", 8) == 0))
        return 0;
    if (cl.sentinels)
        sentinel_distrust();
    cluster_session_fail("it refused a write: it is a replica now (%.120s); finding the master "
                         "again", r->str);
    return 1;
}

/* ---- commands ------------------------------------------------------------ */

/* Send A on CONN. -1: it cannot take commands (the session is down or
 * going), or A overflowed (logged): the callback will not run. */
int
cluster_command(struct conn *conn, redisCallbackFn *fn, void *arg, struct redis_args *a)
{
    if (!cl.up || cl.failing || conn->ac == NULL)
        return -1;
    if (redis_args_send(a, conn->ac, fn, arg) == -1) {
        if (!a->overflow)
            cluster_session_fail("%s connection: cannot send a command", conn->name);
        return -1;
    }
    return 0;
}

int
cluster_is_error(const redisReply *r, const char *prefix)
{
    return r->type == REDIS_REPLY_ERROR && strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* The "N" of a stream ID "0-N", or 0 if it is not one. */
uint64_t
cluster_id_number(const char *s, size_t len)
{
    if (len < 3 || len > 22 || s[0] != '0' || s[1] != '-')
        return 0;
    uint64_t n = 0;
    for (size_t i = 2; i < len; i++) {
        if (s[i] < '0' || s[i] > '9' || n > (UINT64_MAX - 9) / 10)
            return 0;
        n = n * 10 + (uint64_t)(s[i] - '0');
    }
    return n;
}

uint64_t
cluster_entry_key(const char *s, size_t len)
{
    if (len >= 3 && s[0] == '1' && s[1] == '-') {
        /* Its first entry is 1-0: that key is PWORK_BIT, not 0. */
        char buf[24];
        if (len >= sizeof buf)
            return 0;
        memcpy(buf, s, len);
        buf[0] = '0';
        uint64_t n = cluster_id_number(buf, len);
        if (n == 0 && !(len == 3 && s[2] == '0'))
            return 0;
        return n & PWORK_BIT ? 0 : n | PWORK_BIT;
    }
    uint64_t n = cluster_id_number(s, len);
    return n & PWORK_BIT ? 0 : n;
}

/* The stream that holds the entry of KEY. */
const char *
cluster_stream_of(uint64_t key)
{
    return key & PWORK_BIT ? cl.key_pwork : cl.key_work;
}

/* The entry ID of KEY. */
void
cluster_entry_arg(struct redis_args *a, uint64_t key)
{
    redis_args_stream_id(a, key & PWORK_BIT ? 1 : 0, key & ~PWORK_BIT);
}

/*
 * The floor for a seq counter that Redis lost (a restart without
 * persistence): past every seq this instance has seen, and not below the
 * wall clock in microseconds, as the master does for a fresh start, so that
 * no instance of the cluster sees seq go back whichever reconnects first.
 */
const char *
cluster_floor_arg(void)
{
    uint64_t floor = clock_wall_ns() / 1000;
    if (cl.floor_start > floor)
        floor = cl.floor_start;
    if (cl.last_seq > floor)
        floor = cl.last_seq;
    if (cl.max_published_seq > floor)
        floor = cl.max_published_seq;
    snprintf(cl.floor, sizeof cl.floor, "%" PRIu64, floor);
    return cl.floor;
}

/* ---- script arguments and replies, for every part ------------------------ */

/*
 * WorkItem.priority (field 8) of ITEM's WorkItem, 0 if it has none (or
 * does not parse). A walk over the top-level fields, cheaper than decoding
 * the message.
 */
int32_t
cluster_raw_priority(const struct item *item)
{
    const uint8_t *p = item->raw, *end = item->raw + item->raw_len;
    while (p < end) {
        uint64_t v = 0, tag = 0;
        for (int shift = 0; p < end && shift < 64; shift += 7) {
            tag |= (uint64_t)(*p & 0x7f) << shift;
            if (!(*p++ & 0x80))
                break;
        }
        switch (tag & 7) {
        case 0:
            for (int shift = 0; p < end && shift < 64; shift += 7) {
                v |= (uint64_t)(*p & 0x7f) << shift;
                if (!(*p++ & 0x80))
                    break;
            }
            if (tag >> 3 == 8)
                return (int32_t)v;
            break;
        case 1:
            if (end - p < 8)
                return 0;
            p += 8;
            break;
        case 2:
            for (int shift = 0; p < end && shift < 64; shift += 7) {
                v |= (uint64_t)(*p & 0x7f) << shift;
                if (!(*p++ & 0x80))
                    break;
            }
            if (v > (uint64_t)(end - p))
                return 0;
            p += v;
            break;
        case 5:
            if (end - p < 4)
                return 0;
            p += 4;
            break;
        default:
            return 0;
        }
    }
    return 0;
}

/* The same as a decimal in BUF (16 bytes), or "" for 0: the scripts' form
 * (the hash's p, the lane's name). */
const char *
cluster_priority_arg(const struct item *item, char *buf)
{
    int32_t p = cluster_raw_priority(item);
    buf[0] = '\0';
    if (p != 0)
        snprintf(buf, 16, "%d", (int)p);
    return buf;
}

/* The key of ITEM_ID's hash, in BUF (ITEM_KEY_SIZE bytes). */
#define ITEM_KEY_SIZE (96 + DS_ITEM_ID_MAX + 1)
static const char *
item_key(char *buf, const char *item_id)
{
    snprintf(buf, ITEM_KEY_SIZE, "%s%s", cl.key_item_prefix, item_id);
    return buf;
}

/*
 * The start of every script that publishes an update (LUA_NEXT_SEQ,
 * LUA_ADD_UPDATE): the keys (work, updates, seq, origin, the item's hash
 * in KEY_BUF, items, finals and finals_bytes; then for cancel control,
 * delayed and prio, for retry prio and latest), ARGV[1] floor, ARGV[2] maxlen, ARGV[3..7] the update encoded without
 * its seq, id, kind, batch, state.
 */
static void
publish_args(struct redis_args *a, enum script script, const struct item *item,
             enum wire_state state, const uint8_t *encoded, size_t encoded_len, char *key_buf)
{
    redis_args_init(a, "EVALSHA");
    redis_args_str(a, cl.sha[script]);
    redis_args_str(a, script == SCRIPT_CANCEL ? "11" : script == SCRIPT_RETRY ? "10" : "8");
    redis_args_str(a, script == SCRIPT_RETRY ? cl.key_work : cluster_stream_of(item->key));
    redis_args_str(a, cl.key_updates);
    redis_args_str(a, cl.key_seq);
    redis_args_str(a, cl.key_origin);
    redis_args_str(a, item_key(key_buf, item->id));
    redis_args_str(a, cl.key_items);
    redis_args_str(a, cl.key_finals);
    redis_args_str(a, cl.key_finals_bytes);
    if (script == SCRIPT_CANCEL) {
        redis_args_str(a, cl.key_control);
        redis_args_str(a, cl.key_delayed);
    }
    if (script == SCRIPT_CANCEL || script == SCRIPT_RETRY)
        redis_args_str(a, cl.key_prio);
    if (script == SCRIPT_RETRY)
        redis_args_str(a, cl.key_latest);
    redis_args_str(a, cluster_floor_arg());
    redis_args_u64(a, gp.config->updates.history);
    redis_args_mem(a, encoded, encoded_len);
    redis_args_str(a, item->id);
    redis_args_str(a, item->kind);
    redis_args_str(a, item->batch);
    redis_args_u64(a, (uint64_t)state);
}

/* The retention's arguments (LUA_TRIM): now, age, count, bytes, prefix,
 * {NAME}:latest. */
void
cluster_retention_args(struct redis_args *a)
{
    const struct ds_config *c = gp.config;
    redis_args_u64(a, clock_wall_ns() / 1000000);
    redis_args_u64(a, c->items.retention_age_ms);
    redis_args_u64(a, c->items.retention_count);
    redis_args_u64(a, c->items.retention_bytes);
    redis_args_str(a, cl.key_item_prefix);
    redis_args_str(a, cl.key_latest);
}

/*
 * BAD: the {id, reason, ...} of the items a script left alone for their
 * data, logged here, each as "KEY HEAD: REASON TAIL": those of waiting
 * items it could not move on (LUA_BAD_ENTRY_FN: HEAD "cannot run", TAIL
 * where it was taken out of), named once since they left it, their hash
 * left as it was, for a cancel or a repair; and item keys that are no hash
 * (LUA_TRIM's hash_call(): cluster_log_bad_counts()), named each time they are
 * met (rarely: an update of their item, its trim).
 */
void
cluster_log_bad_items(const redisReply *bad, const char *head, const char *tail)
{
    if (bad->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i + 1 < bad->elements; i += 2) {
        const redisReply *id = bad->element[i], *why = bad->element[i + 1];
        if (id->type != REDIS_REPLY_STRING || why->type != REDIS_REPLY_STRING)
            continue;
        log_error("cluster: %s%.*s %s: %.*s%s", cl.key_item_prefix, (int)id->len, id->str,
                  head, (int)(why->len < 200 ? why->len : 200), why->str, tail);
    }
}

/* LUA_TRIM's bad (the item keys that are no hash) and bytes_bad (nil, or
 * what {NAME}:finals_bytes held that was no integer), from the update
 * and trim scripts. */
void
cluster_log_bad_counts(const redisReply *bad, const redisReply *bytes_bad)
{
    cluster_log_bad_items(bad, "is no item hash", "; its item's updates are written without it "
                          "(delete the key: the retention does when it forgets the item)");
    if (bytes_bad->type == REDIS_REPLY_STRING)
        log_warn("cluster: %.*s: the sum of the retained bytes starts again from the finals "
                 "kept since (items.retention.bytes counts fewer until the older ones are "
                 "forgotten)", (int)(bytes_bad->len < 300 ? bytes_bad->len : 300),
                 bytes_bad->str);
}

/* The value of field NAME (a string) of a stream entry's FIELDS, or NULL. */
const redisReply *
cluster_field(const redisReply *fields, const char *name)
{
    if (fields == NULL || fields->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && k->len == strlen(name) &&
            memcmp(k->str, name, k->len) == 0 && v->type == REDIS_REPLY_STRING)
            return v;
    }
    return NULL;
}

/* A field as a NUL-terminated string of at most MAX bytes, or NULL. */
const char *
cluster_field_string(const redisReply *fields, const char *name, size_t max, char *buf)
{
    const redisReply *v = cluster_field(fields, name);
    if (v == NULL || v->len > max || memchr(v->str, '\0', v->len) != NULL)
        return NULL;
    memcpy(buf, v->str, v->len);
    buf[v->len] = '\0';
    return buf;
}

/* ---- the session --------------------------------------------------------- */

static void
set_why(void)
{
    if (cl.up && !cl.caught_up)
        snprintf(cl.why, sizeof cl.why, "cluster: this instance is still reading the update "
                 "stream %s; try again shortly", cl.key_updates);
    else
        snprintf(cl.why, sizeof cl.why, "cluster: %s is unreachable (%s); nothing is "
                 "accepted until it is back", where(),
                 cl.last_error[0] ? cl.last_error : "connecting");
}

static void
stop_timers(void)
{
    evtimer_del(cl.setup_timer);
    evtimer_del(cl.ping_timer);
    evtimer_del(cl.renew_timer);
    evtimer_del(cl.claim_timer);
    evtimer_del(cl.poll_timer);
    evtimer_del(cl.due_timer);
    evtimer_del(cl.pull_timer);
    cl.pull_paused = 0;
    cl.due_at_ms = 0;
}

void
cluster_session_fail(const char *fmt, ...)
{
    if (cl.failing || cl.shutting_down)
        return;
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    int was_up = cl.up && cl.caught_up;
    if (was_up || strcmp(why, cl.last_error) != 0)
        log_error("cluster: %s: %s%s", where(), why, was_up ? "; doSomething answers UNAVAILABLE "
                  "until it is back" : "");
    snprintf(cl.last_error, sizeof cl.last_error, "%s", why);
    cl.failing = 1;
    cl.up = 0;
    set_why();
    /* The first failure also ends the first attempt (cluster_starting()). */
    int first = cl.failures++ == 0;
    if (was_up || first)
        store_serving_changed();
    event_active(cl.reset_event, EV_TIMEOUT, 0);
}

static void
free_conn(struct conn *conn)
{
    redisAsyncContext *ac = conn->ac;
    conn->ac = NULL;
    conn->connected = 0;
    if (ac != NULL) {
        ac->data = NULL;
        redisAsyncFree(ac);     /* replies still owed come back as NULL */
    }
}

/* Outside every hiredis callback: drop the session, try again later. */
static void
on_reset(evutil_socket_t fd, short what, void *arg)
{
    stop_timers();
    if (cl.sentinels)
        sentinel_cancel();
    resolve_cancel(cl.resolving);
    cl.resolving = NULL;
    free_conn(&cl.cmd);
    free_conn(&cl.work);
    free_conn(&cl.upd);
    cluster_ack_fail(cl.why);
    cl.reading = cl.pulling = cl.claiming = cl.trimming = cl.polling = cl.ping_outstanding = 0;
    cl.setup_pending = 0;
    if (cl.shutting_down)
        return;
    cluster_fail_accepts();
    cluster_flush_updates();        /* the session is gone: they go to cl.unsent */
    cluster_fail_unsent_updates();
    cluster_backpressure_check();
    struct timeval tv = clock_timeval_ms(cl.backoff_ms);
    evtimer_add(cl.retry_timer, &tv);
    cl.backoff_ms = cl.backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : cl.backoff_ms * 2;
    cluster_check_done();
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
    struct conn *conn = ac->data;
    if (conn == NULL)
        return;     /* we freed it */
    conn->ac = NULL;
    conn->connected = 0;
    cluster_session_fail("%s connection lost: %s", conn->name,
                         ac->errstr[0] ? ac->errstr : "closed by the server");
}

static void session_up(void);

/* "master", "slave", "sentinel" from a ROLE reply; "something else" if R
 * is none. */
static const char *
role_of(const redisReply *r)
{
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        const redisReply *e = r->element[0];
        if (e->len == 6 && memcmp(e->str, "master", 6) == 0)
            return "master";
        if (e->len == 5 && memcmp(e->str, "slave", 5) == 0)
            return "slave";
        if (e->len == 8 && memcmp(e->str, "sentinel", 8) == 0)
            return "sentinel";
    }
    return r->type == REDIS_REPLY_ERROR ? "an error" : "something else";
}

/* The highest seq this instance has seen or published. */
static uint64_t
fence_floor(void)
{
    return cl.last_seq > cl.max_published_seq ? cl.last_seq : cl.max_published_seq;
}

/* The reply of script_layout: 1 if this instance may go on. */
static int
layout_checked(const redisReply *r)
{
    const struct ds_config *c = gp.config;
    if (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS) {
        cluster_session_fail("the layout check failed: %.200s",
                             r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        return 0;
    }
    if (strncmp(r->str, "busy ", 5) == 0 && r->len > 7) {
        /* "busy OLD CONSUMER IDLE_MS" */
        cluster_session_fail("cluster %s is in use by an older dosomethingd (Redis layout %c: "
                             "consumer %.100s ms ago), which cannot read layout %s: stop every "
                             "older instance",
                             c->cluster.name, r->str[5], r->str + 7, CLUSTER_LAYOUT);
        return 0;
    }
    if (strncmp(r->str, "other ", 6) == 0) {
        cluster_session_fail("{%s}:layout is %.20s: another dosomethingd version's Redis layout; "
                             "this one (%s) reads and writes layout %s only", c->cluster.name,
                             r->str + 6, DS_VERSION, CLUSTER_LAYOUT);
        return 0;
    }
    if (strncmp(r->str, "upgraded ", 9) == 0)
        log_notice("cluster: {%s} moves from Redis layout %.20s to layout %s (no older "
                   "instance has been active for cluster.lease): from now on only this "
                   "version's instances may join it", c->cluster.name, r->str + 9,
                   CLUSTER_LAYOUT);
    return 1;
}

static void
on_setup(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    intptr_t which = (intptr_t)arg;
    if (r == NULL || cl.failing || cluster_demoted(r))
        return;
    if (which < SCRIPT_COUNT) {
        if (r->type != REDIS_REPLY_STRING || r->len >= sizeof cl.sha[0]) {
            cluster_session_fail("SCRIPT LOAD failed: %.200s",
                                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            return;
        }
        memcpy(cl.sha[which], r->str, r->len);
        cl.sha[which][r->len] = '\0';
    } else if (which == SCRIPT_COUNT) {
        if (r->type == REDIS_REPLY_ERROR && !cluster_is_error(r, "BUSYGROUP")) {
            cluster_session_fail("XGROUP CREATE %s %s failed: %.200s", cl.key_work, CLUSTER_GROUP,
                                 r->str);
            return;
        }
    } else if (which == SCRIPT_COUNT + 1) {
        uint64_t origin = 0;
        if (r->type == REDIS_REPLY_ERROR) {     /* WRONGTYPE: not 0, as if none */
            cluster_session_fail("GET %s failed: %.200s", cl.key_origin, r->str);
            return;
        }
        if (r->type == REDIS_REPLY_STRING && redis_reply_u64(r, 19, &origin) == -1) {
            cluster_session_fail("%s is not a number: %.40s", cl.key_origin, r->str);
            return;
        }
        cl.origin = origin;
    } else if (which == SCRIPT_COUNT + 3) {
        if (r->type == REDIS_REPLY_ERROR && !cluster_is_error(r, "BUSYGROUP")) {
            cluster_session_fail("XGROUP CREATE %s %s failed: %.200s", cl.key_pwork, CLUSTER_GROUP,
                                 r->str);
            return;
        }
    } else if (which == SCRIPT_COUNT + 4) {
        cl.work_client_id = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    } else if (which == SCRIPT_COUNT + 5) {
        const char *role = role_of(r);
        if (strcmp(role, "master") != 0) {
            if (cl.sentinels)
                sentinel_distrust();
            cluster_session_fail("it is not a master (ROLE says %s)%s", role, cl.sentinels
                                 ? "; asking the sentinels again" : ": point cluster.redis at the "
                                 "master, or at its sentinels with sentinel://");
            return;
        }
    } else if (which == SCRIPT_COUNT + 6) {
        if (r->type == REDIS_REPLY_ERROR) {
            cluster_session_fail("the seq check failed: %.200s", r->str);
            return;
        }
        if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
            log_warn("cluster: %s: its seq counter %s is behind seq %" PRIu64 ", which this "
                     "instance has seen: redis lost writes (a failover to a replica that had "
                     "not got them, or a restart); seqs and work entry IDs go on %llu further, "
                     "so that none is used twice", where(), cl.key_seq, fence_floor(),
                     (unsigned long long)FENCE_JUMP);
    } else if (which == SCRIPT_COUNT + 7) {
        if (!layout_checked(r))
            return;
    } else if (cl.control_last[0] == '\0') {
        /* Cancel requests from now on (a new session goes on from the last one read). */
        snprintf(cl.control_last, sizeof cl.control_last, "0-0");
        if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
            r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements > 0 &&
            r->element[0]->element[0]->type == REDIS_REPLY_STRING &&
            r->element[0]->element[0]->len < sizeof cl.control_last)
            snprintf(cl.control_last, sizeof cl.control_last, "%.*s",
                     (int)r->element[0]->element[0]->len, r->element[0]->element[0]->str);
    }
    if (--cl.setup_pending == 0)
        session_up();
}

static void
on_pong(redisAsyncContext *ac, void *reply, void *arg)
{
    cl.ping_outstanding = 0;
    const char *role = reply != NULL ? role_of(reply) : "master";
    if (strcmp(role, "master") != 0 && !cl.failing) {
        if (cl.sentinels)
            sentinel_distrust();
        cluster_session_fail("it is no longer a master (ROLE says %s); finding the master again",
                             role);
    }
}

static void
on_ping_timer(evutil_socket_t fd, short what, void *arg)
{
    /* A WAIT for the replicas (cluster_ack.c) may be ahead of it. */
    uint64_t timeout = PING_TIMEOUT_MS + cluster_ack_max_wait_ms();
    cluster_publish_want_started();
    if (cl.ping_outstanding) {
        if (clock_monotonic_ms() - cl.ping_sent_ms >= timeout)
            cluster_session_fail("no answer to ROLE within %" PRIu64 " ms", timeout);
        return;
    }
    /* ROLE rather than PING: a master demoted while we stay connected
     * (a failover, a REPLICAOF) is noticed within a second. */
    struct redis_args a;
    redis_args_init(&a, "ROLE");
    if (cluster_command(&cl.cmd, on_pong, NULL, &a) == 0) {
        cl.ping_outstanding = 1;
        cl.ping_sent_ms = clock_monotonic_ms();
    }
}

static void
arm_lease_timers(void)
{
    uint64_t lease = cl.set.lease_ms;
    struct timeval renew = clock_timeval_ms(lease / 3), claim = clock_timeval_ms(lease / 2);
    evtimer_add(cl.renew_timer, &renew);
    evtimer_add(cl.claim_timer, &claim);
}

static void
session_up(void)
{
    evtimer_del(cl.setup_timer);
    cl.up = 1;
    cl.backoff_ms = BACKOFF_MIN_MS;
    if (cl.sessions++ > 0)
        cl.reconnects++;
    log_notice("cluster: connected to %s as %s (group %s on %s)", where(), cl.consumer,
               CLUSTER_GROUP, cl.key_work);
    cl.last_error[0] = '\0';
    set_why();
    struct timeval ping = clock_timeval_ms(PING_EVERY_MS), poll = clock_timeval_ms(POLL_MS);
    evtimer_add(cl.ping_timer, &ping);
    evtimer_add(cl.poll_timer, &poll);
    cluster_publish_want_started();
    arm_lease_timers();
    /* what we held before: renew it before anyone claims it */
    cluster_on_renew_timer(-1, 0, NULL);
    cluster_read_updates();
    cl.prio_waiting = 1;            /* look at the lanes once */
    cl.pull_blocked = cl.unblocking = 0;
    cluster_pull();
    cluster_on_due_timer(-1, 0, NULL);
    if (cl.caught_up) {
        store_serving_changed();
        store_room_available();
    }
}

static void
on_connect(const redisAsyncContext *ac, int status)
{
    struct conn *conn = ac->data;
    if (conn == NULL)
        return;
    if (status != REDIS_OK) {
        conn->ac = NULL;    /* hiredis frees it */
        if (cl.sentinels)
            sentinel_distrust();
        cluster_session_fail("connecting: %s", ac->errstr);
        return;
    }
    conn->connected = 1;
    if (!cl.cmd.connected || !cl.work.connected || !cl.upd.connected)
        return;
    /* Everything the session needs, pipelined; session_up() after the last reply. */
    cl.up = 1;
    cl.setup_pending = SCRIPT_COUNT + 8;
    struct redis_args a;
    /* First: anything else on a replica would fail with less to say. */
    redis_args_init(&a, "ROLE");
    cluster_command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 5), &a);
    /* Then: nothing is written in a layout another instance cannot read. */
    redis_args_init(&a, "EVAL");
    redis_args_str(&a, script_layout);
    redis_args_str(&a, "3");
    redis_args_str(&a, cl.key_layout);
    redis_args_str(&a, cl.key_updates);
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, CLUSTER_LAYOUT);
    redis_args_u64(&a, cl.set.lease_ms);
    redis_args_str(&a, CLUSTER_GROUP);
    cluster_command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 7), &a);
    for (intptr_t i = 0; i < SCRIPT_COUNT; i++) {
        redis_args_init(&a, "SCRIPT");
        redis_args_str(&a, "LOAD");
        redis_args_str(&a, script_text[i]);
        cluster_command(&cl.cmd, on_setup, (void *)i, &a);
    }
    redis_args_init(&a, "XGROUP");
    redis_args_str(&a, "CREATE");
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, CLUSTER_GROUP);
    redis_args_str(&a, "0");
    redis_args_str(&a, "MKSTREAM");
    cluster_command(&cl.cmd, on_setup, (void *)(intptr_t)SCRIPT_COUNT, &a);
    redis_args_init(&a, "GET");
    redis_args_str(&a, cl.key_origin);
    cluster_command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 1), &a);
    redis_args_init(&a, "XREVRANGE");
    redis_args_str(&a, cl.key_control);
    redis_args_str(&a, "+");
    redis_args_str(&a, "-");
    redis_args_str(&a, "COUNT");
    redis_args_str(&a, "1");
    cluster_command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 2), &a);
    redis_args_init(&a, "XGROUP");
    redis_args_str(&a, "CREATE");
    redis_args_str(&a, cl.key_pwork);
    redis_args_str(&a, CLUSTER_GROUP);
    redis_args_str(&a, "0");
    redis_args_str(&a, "MKSTREAM");
    cluster_command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 3), &a);
    redis_args_init(&a, "CLIENT");
    redis_args_str(&a, "ID");
    cluster_command(&cl.work, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 4), &a);
    redis_args_init(&a, "EVAL");
    redis_args_str(&a, script_fence);
    redis_args_str(&a, "4");
    redis_args_str(&a, cl.key_seq);
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, cl.key_pwork);
    redis_args_str(&a, cl.key_seq_jump);
    redis_args_u64(&a, fence_floor());
    redis_args_u64(&a, FENCE_JUMP);
    cluster_command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 6), &a);
    cl.up = 0;      /* until session_up() */
}

static int
open_conn(struct conn *conn)
{
    redisAsyncContext *ac = redisAsyncConnect(cl.address, cl.master_port);
    if (ac == NULL) {
        cluster_session_fail("out of memory");
        return -1;
    }
    if (ac->err) {
        char why[160];
        snprintf(why, sizeof why, "connecting: %s", ac->errstr);
        redisAsyncFree(ac);
        cluster_session_fail("%s", why);
        return -1;
    }
    conn->ac = ac;
    conn->connected = 0;
    ac->data = conn;
    /* hiredis frees its read buffer whenever it empties with over 16 KiB
     * spare, and a batch's reply is read into a new one: keep up to
     * READ_BUF_KEEP (a large malloc and free an item batch cost a tenth of
     * the grpc process in cluster mode, most of it glibc consolidating). */
    ac->c.reader->maxbuf = READ_BUF_KEEP;
    redis_reply_install(ac->c.reader, &conn->replies);
    redisLibeventAttach(ac, gp.base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return 0;
}

static void
on_setup_timer(evutil_socket_t fd, short what, void *arg)
{
    cluster_session_fail("no connection after %d ms%s", CONNECT_TIMEOUT_MS + RESOLVE_TIMEOUT_MS,
                         cl.sentinels ? " (and the sentinels' answers)" : "");
}

/* The master's address: connect there. */
static void
on_master_resolved(void *arg, const char *address, const char *why)
{
    cl.resolving = NULL;
    if (address == NULL) {
        cluster_session_fail("%s", why);
        return;
    }
    snprintf(cl.address, sizeof cl.address, "%s", address);
    if (open_conn(&cl.cmd) == -1 || open_conn(&cl.work) == -1 || open_conn(&cl.upd) == -1)
        return;
}

/* Where the master is (cluster.redis's host, or what a sentinel said):
 * resolve it off the loop (resolve.c), then connect. */
static void
on_master_found(const char *host, int port, const char *why)
{
    if (host == NULL) {
        cluster_session_fail("%s", why);
        return;
    }
    if (cl.sentinels && (strcmp(host, cl.master_host) != 0 || port != cl.master_port)) {
        log_notice("cluster: sentinel %s names %s:%d as master %s", sentinel_last(), host, port,
                   cl.master_name);
        snprintf(cl.master_host, sizeof cl.master_host, "%s", host);
        cl.master_port = port;
        set_why();
    }
    cl.resolving = resolve_host(gp.base, cl.master_host, on_master_resolved, NULL);
}

/* +switch-master (sentinel.c): the session goes, unless it is already
 * with the new master; the next one starts at once. */
static void
on_switched(const char *host, int port)
{
    if (strcmp(host, cl.master_host) == 0 && port == cl.master_port && cl.up)
        return;
    cl.backoff_ms = BACKOFF_MIN_MS;
    if (!cl.failing && (cl.up || cl.resolving != NULL || cl.cmd.ac != NULL)) {
        cluster_session_fail("the sentinels moved master %s to %s:%d", cl.master_name, host, port);
    } else if (evtimer_pending(cl.retry_timer, NULL)) {
        struct timeval tv = clock_timeval_ms(BACKOFF_MIN_MS);
        evtimer_add(cl.retry_timer, &tv);
    }
}

static void
on_retry(evutil_socket_t fd, short what, void *arg)
{
    cl.failing = 0;
    uint64_t budget = CONNECT_TIMEOUT_MS + RESOLVE_TIMEOUT_MS;
    if (cl.sentinels)
        budget += cl.set.sentinel_count * (uint64_t)SENTINEL_ASK_TIMEOUT_MS;
    struct timeval tv = clock_timeval_ms(budget);
    evtimer_add(cl.setup_timer, &tv);
    if (cl.sentinels)
        sentinel_find(on_master_found);
    else
        on_master_found(cl.master_host, cl.master_port, NULL);
}

/* While cl.up is set inside on_connect, cluster_command() sends: the setup needs it. */

/* ---- start, reload, stop ------------------------------------------------- */

/* After the update log: connect (in the background). */
static void
cluster_start(void)
{
    const struct ds_config *c = gp.config;
    if (c->cluster.redis == NULL)
        return;
    memset(&cl, 0, sizeof cl);
    cl.enabled = 1;
    /* in cluster_session_fail()'s reasons: the log, UNAVAILABLE details */
    cl.cmd.name = "command";
    cl.work.name = "work";
    cl.upd.name = "update";
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    snprintf(cl.consumer, sizeof cl.consumer, "%s-%ld-%llu", host[0] ? host : "host",
             (long)getpid(), (unsigned long long)(clock_wall_ns() / 1000000));
    snprintf(cl.key_work, sizeof cl.key_work, "{%s}:work", c->cluster.name);
    snprintf(cl.key_updates, sizeof cl.key_updates, "{%s}:updates", c->cluster.name);
    snprintf(cl.key_seq, sizeof cl.key_seq, "{%s}:seq", c->cluster.name);
    snprintf(cl.key_origin, sizeof cl.key_origin, "{%s}:origin", c->cluster.name);
    snprintf(cl.key_items, sizeof cl.key_items, "{%s}:items", c->cluster.name);
    snprintf(cl.key_finals, sizeof cl.key_finals, "{%s}:finals", c->cluster.name);
    snprintf(cl.key_finals_bytes, sizeof cl.key_finals_bytes, "{%s}:finals_bytes",
             c->cluster.name);
    snprintf(cl.key_item_prefix, sizeof cl.key_item_prefix, "{%s}:item:", c->cluster.name);
    snprintf(cl.key_control, sizeof cl.key_control, "{%s}:control", c->cluster.name);
    snprintf(cl.key_lease_prefix, sizeof cl.key_lease_prefix, "{%s}:lease:", c->cluster.name);
    snprintf(cl.key_lease, sizeof cl.key_lease, "%s%s", cl.key_lease_prefix, cl.consumer);
    snprintf(cl.key_want_started, sizeof cl.key_want_started, "{%s}:want_started",
             c->cluster.name);
    snprintf(cl.key_layout, sizeof cl.key_layout, "{%s}:layout", c->cluster.name);
    /* LUA_MINID_FN makes it from {NAME}:seq */
    snprintf(cl.key_seq_jump, sizeof cl.key_seq_jump, "{%s}:seq_jump", c->cluster.name);
    snprintf(cl.key_pwork, sizeof cl.key_pwork, "{%s}:pwork", c->cluster.name);
    snprintf(cl.key_delayed, sizeof cl.key_delayed, "{%s}:delayed", c->cluster.name);
    snprintf(cl.key_prio, sizeof cl.key_prio, "{%s}:prio", c->cluster.name);
    snprintf(cl.key_latest, sizeof cl.key_latest, "{%s}:latest", c->cluster.name);
    cl.floor_start = updates_last_seq();
    cl.backoff_ms = BACKOFF_MIN_MS;
    snprintf(cl.set.name, sizeof cl.set.name, "%s", c->cluster.name);
    cl.set.sentinel_count = c->cluster.sentinel_count;
    cl.set.lease_ms = c->cluster.lease_ms;
    cl.set.min_replicas_ack = c->cluster.min_replicas_ack;
    cl.set.replicas_ack_timeout_ms = c->cluster.replicas_ack_timeout_ms;
    cl.sentinels = c->cluster.sentinel_count > 0;
    if (cl.sentinels) {
        snprintf(cl.master_name, sizeof cl.master_name, "%s", c->cluster.master_name);
        sentinel_start(gp.base, c, on_switched);
    } else {
        snprintf(cl.master_host, sizeof cl.master_host, "%s", c->cluster.host);
        cl.master_port = c->cluster.port;
    }
    cluster_ack_start(gp.base, cluster_check_done);
    cl.pull_unit = ITEM_WEIGHT_FULL;
    cl.reset_event = event_new(gp.base, -1, 0, on_reset, NULL);
    cl.retry_timer = evtimer_new(gp.base, on_retry, NULL);
    cl.setup_timer = evtimer_new(gp.base, on_setup_timer, NULL);
    cl.ping_timer = event_new(gp.base, -1, EV_PERSIST, on_ping_timer, NULL);
    cl.renew_timer = event_new(gp.base, -1, EV_PERSIST, cluster_on_renew_timer, NULL);
    cl.claim_timer = event_new(gp.base, -1, EV_PERSIST, cluster_on_claim_timer, NULL);
    cl.poll_timer = event_new(gp.base, -1, EV_PERSIST, cluster_on_poll_timer, NULL);
    cl.due_timer = evtimer_new(gp.base, cluster_on_due_timer, NULL);
    cl.pull_timer = evtimer_new(gp.base, cluster_on_pull_timer, NULL);
    cl.flush_event = event_new(gp.base, -1, 0, cluster_on_flush, NULL);
    set_why();
    log_info("cluster: %s, keys {%s}:*, consumer %s, lease %llu ms, min_replicas_ack %u",
             cl.sentinels ? c->cluster.redis : where(), c->cluster.name, cl.consumer,
             (unsigned long long)c->cluster.lease_ms, c->cluster.min_replicas_ack);
    on_retry(-1, 0, NULL);
}

/* A reload: apply cluster.lease, min_replicas_ack and replicas_ack_timeout;
 * a changed redis or name needs a restart, and so does turning it off. */
static void
cluster_configure(const struct ds_config *old)
{
    const struct ds_config *c = gp.config;
    if (!cl.enabled)
        return;
    if (c->cluster.redis == NULL) {
        log_warn("cluster: turned off by this reload; this grpc process stays with %s and "
                 "{%s}:* until it next starts", old->cluster.redis, cl.set.name);
        return;
    }
    if (strcmp(c->cluster.redis, old->cluster.redis) != 0 ||
        strcmp(c->cluster.name, cl.set.name) != 0)
        log_warn("cluster: redis or name changed by this reload; this grpc process stays with "
                 "%s and {%s}:* until it next starts", old->cluster.redis, cl.set.name);
    cl.set.min_replicas_ack = c->cluster.min_replicas_ack;
    cl.set.replicas_ack_timeout_ms = c->cluster.replicas_ack_timeout_ms;
    if (c->cluster.lease_ms != cl.set.lease_ms) {
        cl.set.lease_ms = c->cluster.lease_ms;
        if (cl.up) {
            cluster_on_renew_timer(-1, 0, NULL);    /* renewed, then the new lease announced */
            arm_lease_timers();
        }
    }
}

const struct cluster_settings *
cluster_settings(void)
{
    return &cl.set;
}

/* At exit: drop the connections; what is pending stays in Redis. */
static void
cluster_shutdown(void)
{
    if (!cl.enabled)
        return;
    cl.shutting_down = 1;
    stop_timers();
    evtimer_del(cl.retry_timer);
    cluster_ack_shutdown();
    if (cl.sentinels)
        sentinel_shutdown();
    resolve_cancel(cl.resolving);
    cl.resolving = NULL;
    free_conn(&cl.cmd);
    free_conn(&cl.work);
    free_conn(&cl.upd);
    /* (a free hiredis deferred, in a callback, returns its reply's blocks
     * to these pools later: static storage, still there) */
    redis_reply_pool_free(&cl.cmd.replies);
    redis_reply_pool_free(&cl.work.replies);
    redis_reply_pool_free(&cl.upd.replies);
    event_free(cl.reset_event);
    event_free(cl.retry_timer);
    event_free(cl.setup_timer);
    event_free(cl.ping_timer);
    event_free(cl.renew_timer);
    event_free(cl.claim_timer);
    event_free(cl.poll_timer);
    event_free(cl.due_timer);
    cl.due_timer = NULL;
    event_free(cl.pull_timer);
    event_free(cl.flush_event);
    for (size_t i = 0; i < cl.accepts_n; i++)
        store_discard(cl.accepts[i].item);
    free(cl.accepts);
    cl.accepts = NULL;
    cl.accepts_n = 0;
    redis_cmd_free(&cl.batch_cmd);
    for (size_t i = 0; i < cl.ucbs_n; i++)
        cl.ucbs[i].fn(NULL, NULL, cl.ucbs[i].arg);      /* shutting down: they discard */
    cl.ucbs_n = 0;
    cluster_fail_unsent_updates();
    free(cl.ucbs);
    cl.ucbs = NULL;
    redis_cmd_free(&cl.ucmd);
    cl.enabled = 0;
}

/* ---- what the rest of the process asks ------------------------------------ */

int
cluster_send(struct redis_args *a, redisCallbackFn *fn, void *arg)
{
    if (!cl.caught_up)
        return -1;
    return cluster_command(&cl.cmd, fn, arg, a);
}

int
cluster_cancel_item(const char *id, const char *kind, const char *batch, uint64_t key,
                    uint32_t attempt, const char *reason, redisCallbackFn *fn, void *arg)
{
    struct item *item = item_make(NULL, 0, id, batch, kind, 1, 0, 0);
    item->key = key;
    item->attempt = attempt ? attempt : 1;
    struct outcome o = { .state = STATE_CANCELLED, .error = reason };
    size_t len;
    uint8_t *encoded = updates_encode(item, &o, &len);
    struct redis_args a;
    char hash_key[ITEM_KEY_SIZE];
    publish_args(&a, SCRIPT_CANCEL, item, STATE_CANCELLED, encoded, len, hash_key);
    cluster_entry_arg(&a, key);
    redis_args_str(&a, CLUSTER_GROUP);
    redis_args_str(&a, reason);
    cluster_retention_args(&a);
    int rc = cluster_send(&a, fn, arg);
    free(encoded);
    store_discard(item);
    return rc;
}

int
cluster_requeue_item(const struct item *item, redisCallbackFn *fn, void *arg)
{
    size_t len;
    struct outcome queued = { .state = STATE_QUEUED };
    uint8_t *encoded = updates_encode(item, &queued, &len);
    struct redis_args a;
    char hash_key[ITEM_KEY_SIZE];
    publish_args(&a, SCRIPT_RETRY, item, STATE_QUEUED, encoded, len, hash_key);
    redis_args_u64(&a, item->max_attempts);
    redis_args_u64(&a, item->timeout_ms);
    redis_args_str(&a, item->weight == ITEM_WEIGHT_QUICK ? "1" : "0");
    char priority[16];
    redis_args_str(&a, cluster_priority_arg(item, priority));
    redis_args_u64(&a, clock_wall_ns());
    int rc = cluster_send(&a, fn, arg);
    free(encoded);
    return rc;
}

const char *
cluster_why(void)
{
    return cl.why;
}

const char *
cluster_key_items(void)
{
    return cl.key_items;
}

const char *
cluster_key_work(void)
{
    return cl.key_work;
}

const char *
cluster_item_prefix(void)
{
    return cl.key_item_prefix;
}

const char *
cluster_key_latest(void)
{
    return cl.key_latest;
}

void
cluster_lookup_start(struct redis_args *a, const char *hash_key, const char *id)
{
    redis_args_init(a, "EVALSHA");
    redis_args_str(a, cl.sha[SCRIPT_LOOKUP]);
    redis_args_str(a, "2");
    redis_args_str(a, hash_key);
    redis_args_str(a, cl.key_latest);
    redis_args_str(a, id);
}

/* Connected, and the update stream read to its end once: calls are served.
 * If not, *why says so. */
static int
cluster_serving(const char **why)
{
    if (!cl.enabled || (cl.up && cl.caught_up))
        return 1;
    if (why != NULL)
        *why = cl.why;
    return 0;
}

/* The first session is still being set up (neither serving nor failed
 * yet): a start reports where it stands once that is known. */
static int
cluster_starting(void)
{
    return cl.enabled && cl.failures == 0 && !(cl.up && cl.caught_up);
}

/* Nothing this instance wrote is waiting for Redis, and every update it
 * published has come back through the update stream: a drain may end. */
static int
cluster_idle(void)
{
    if (!cl.enabled)
        return 1;
    return cl.inflight == 0 && cluster_ack_held() == 0 &&
           (!cl.up || cl.last_seq >= cl.max_published_seq);
}

void
cluster_check_done(void)
{
    if (gp.draining && cluster_idle())
        grpc_process_check_done();
}

static void
cluster_status_json(struct evbuffer *b)
{
    if (!cl.enabled) {
        evbuffer_add_printf(b, "\"cluster\":null,");
        return;
    }
    /* Every string here may come from outside (a sentinel's answer, the
     * host name, Redis's error): escaped. */
    char redis[300];
    snprintf(redis, sizeof redis, "%s:%d", cl.master_host, cl.master_port);
    evbuffer_add_printf(b, "\"cluster\":{\"redis\":");
    status_json_string(b, redis);
    evbuffer_add_printf(b, ",\"master\":");
    status_json_string(b, cl.sentinels ? cl.master_name : "");
    evbuffer_add_printf(b, ",\"sentinel\":");
    status_json_string(b, cl.sentinels ? sentinel_last() : "");
    evbuffer_add_printf(b, ",\"sentinel_watching\":%s,\"min_replicas_ack\":%u,\"name\":",
                        cl.sentinels && sentinel_watching() ? "true" : "false",
                        cl.set.min_replicas_ack);
    status_json_string(b, cl.set.name);
    evbuffer_add_printf(b, ",\"consumer\":");
    status_json_string(b, cl.consumer);
    evbuffer_add_printf(b, ",\"connected\":%s,\"serving\":%s,\"outstanding\":%" PRIu64 ","
                        "\"claimed\":%" PRIu64 ",\"reconnects\":%" PRIu64 ","
                        "\"superseded\":%" PRIu64 ",\"lost_updates\":%" PRIu64 ","
                        "\"cancel_requests\":%" PRIu64 ",\"items_known\":%" PRIu64 ","
                        "\"finals_retained\":%" PRIu64 ",\"retained_bytes\":%" PRIu64 ","
                        "\"accept_scripts\":%" PRIu64 ",\"update_scripts\":%" PRIu64 ","
                        "\"writes_in_flight\":%" PRIu64 ",\"backpressure_spells\":%" PRIu64 ","
                        "\"started_folded\":%" PRIu64 ",\"last_error\":",
                        cl.up ? "true" : "false", cl.up && cl.caught_up ? "true" : "false",
                        cluster_outstanding(), cl.claimed, cl.reconnects, cl.superseded,
                        cl.lost_updates, cl.cancels, cl.known[0], cl.known[1], cl.known[2],
                        cl.accept_batches, cl.update_batches, cl.inflight, cl.busy_spells,
                        cl.started_folded);
    if (cl.last_error[0] == '\0')
        evbuffer_add_printf(b, "null");
    else
        status_json_string(b, cl.last_error);
    evbuffer_add_printf(b, "},");
}

static void
cluster_metrics(struct evbuffer *b)
{
    if (!cl.enabled)
        return;
    evbuffer_add_printf(b,
        "# HELP dosomething_cluster_connected 1 while connected to redis and serving.\n"
        "# TYPE dosomething_cluster_connected gauge\n"
        "dosomething_cluster_connected %d\n"
        "# HELP dosomething_cluster_outstanding Items not final in the cluster's queue, as "
        "last seen.\n"
        "# TYPE dosomething_cluster_outstanding gauge\n"
        "dosomething_cluster_outstanding %" PRIu64 "\n"
        "# HELP dosomething_cluster_claimed_total Items taken over from instances that stopped "
        "renewing them.\n"
        "# TYPE dosomething_cluster_claimed_total counter\n"
        "dosomething_cluster_claimed_total %" PRIu64 "\n"
        "# HELP dosomething_cluster_reconnects_total Sessions with redis after the first.\n"
        "# TYPE dosomething_cluster_reconnects_total counter\n"
        "dosomething_cluster_reconnects_total %" PRIu64 "\n"
        "# HELP dosomething_cluster_superseded_total Updates dropped because another instance "
        "had taken the item over.\n"
        "# TYPE dosomething_cluster_superseded_total counter\n"
        "dosomething_cluster_superseded_total %" PRIu64 "\n"
        "# HELP dosomething_cluster_lost_updates_total Updates of running items not published "
        "because redis was unreachable.\n"
        "# TYPE dosomething_cluster_lost_updates_total counter\n"
        "dosomething_cluster_lost_updates_total %" PRIu64 "\n"
        "# HELP dosomething_cluster_items_known Items known cluster-wide (live and retained "
        "finals), as last polled.\n"
        "# TYPE dosomething_cluster_items_known gauge\n"
        "dosomething_cluster_items_known %" PRIu64 "\n"
        "# HELP dosomething_cluster_finals_retained Final items retained in redis "
        "(items.retention), as last polled.\n"
        "# TYPE dosomething_cluster_finals_retained gauge\n"
        "dosomething_cluster_finals_retained %" PRIu64 "\n"
        "# HELP dosomething_cluster_retained_bytes Bytes of the retained finals, as counted "
        "for items.retention.bytes.\n"
        "# TYPE dosomething_cluster_retained_bytes gauge\n"
        "dosomething_cluster_retained_bytes %" PRIu64 "\n"
        "# HELP dosomething_cluster_cancel_requests_total Cancel requests for items this "
        "instance held.\n"
        "# TYPE dosomething_cluster_cancel_requests_total counter\n"
        "dosomething_cluster_cancel_requests_total %" PRIu64 "\n",
        cl.up && cl.caught_up ? 1 : 0, cluster_outstanding(), cl.claimed, cl.reconnects,
        cl.superseded, cl.lost_updates, cl.known[0], cl.known[1], cl.known[2], cl.cancels);
}

const struct store_backend store_redis = {
    .name = "redis",
    .shared_log = 1,
    .start = cluster_start,
    .accept = cluster_accept,
    .publish = cluster_publish,
    .final = cluster_final,
    .retry = cluster_retry,
    .has_room = cluster_has_room,
    .busy = cluster_busy,
    .available = cluster_serving,
    .serving = cluster_serving,
    .starting = cluster_starting,
    .idle = cluster_idle,
    .drain = cluster_drain,
    .taking = cluster_taking,
    .hand_back = cluster_hand_back,
    .handing_back = cluster_handing_back,
    .pull = cluster_pull,
    .want_started = cluster_publish_want_started,
    .configure = cluster_configure,
    .shutdown = cluster_shutdown,
    .status_json = cluster_status_json,
    .metrics = cluster_metrics,
    .get_items = cluster_get_items,
    .items_abort = cluster_items_abort,
    .act = cluster_act,
    .act_abort = cluster_act_abort,
};
