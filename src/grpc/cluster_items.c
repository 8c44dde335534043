/*
 * getItems in cluster mode: the items every instance writes into Redis
 * (cluster.c's scripts keep a hash per item and the listing order; see
 * the comment above its accept script), read here.
 *
 *   by ids     one lookup (cluster.c's lookup script: the item's hash and
 *              its latest update) per id, pipelined on the command connection (one
 *              round trip). With wait, the question stays open until the
 *              update stream (which this instance reads anyway) has
 *              delivered a final update of every requested item that was
 *              not final: then one more lookup answers. Finals delivered
 *              while a lookup is in flight count too, so none is missed.
 *   by filter  one script walks {NAME}:items from the newest (or below the
 *              page token's seq) and applies the filters in Redis, at most
 *              LIST_SCAN items a call: a page may come back short (even
 *              empty) with a token to go on, when few items match.
 */
#include "grpc/cluster_items.h"

#include <errno.h>
#include <stdarg.h>
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
#include "grpc/grpc_process.h"
#include "grpc/items.h"
#include "grpc/redis_args.h"
#include "grpc/redis_reply.h"

#define LIMIT_DEFAULT   100
#define LIST_SCAN       2000    /* items of {NAME}:items one listing call looks at, at most */
#define FILTERS_MAX     400     /* kinds + states + batches of one listing */
#define ITEM_KEY_SIZE   (96 + DS_ITEM_ID_MAX + 1)

/* The fields of an item's hash a lookup reads, in this order. */
#define ITEM_FIELDS     11
static const char *const item_fields[ITEM_FIELDS] = { "k", "b", "s", "m", "q", "ta", "ts", "u",
                                                      "p", "tp", "tt" };

/*
 * list: KEYS[1] {NAME}:items, KEYS[2] {NAME}:latest; ARGV prefix, before (0: from the newest),
 * limit, scan, scope, the counts of kinds, states and batches, then them.
 * Returns {next, {id, seq, fields...}...}: next is the seq to continue
 * below ("0": no more), seq each item's place. Listed ids whose hash is
 * gone are dropped here; one whose key is no hash (written by hand) is
 * left in {NAME}:items but not listed: {id, HMGET's error} instead, which
 * the instance logs (warn_no_hash()).
 */
static const char script_list[] =
    CLUSTER_LUA_FIELDS
    "local names = {'k', 'b', 's', 'm', 'q', 'ta', 'ts', 'u', 'p', 'tp', 'tt'}\n"
    "local prefix, limit, scan, scope = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]\n"
    "local nk, ns, nb = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])\n"
    "local kinds, states, batches, at = {}, {}, {}, 9\n"
    "for _ = 1, nk do kinds[ARGV[at]] = true; at = at + 1 end\n"
    "for _ = 1, ns do states[ARGV[at]] = true; at = at + 1 end\n"
    "for _ = 1, nb do batches[ARGV[at]] = true; at = at + 1 end\n"
    "local max = '+inf'\n"
    "if ARGV[2] ~= '0' then max = '(' .. ARGV[2] end\n"
    "local r = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, '-inf', 'WITHSCORES', 'LIMIT', 0, "
    "scan)\n"
    "local out, n = {'0'}, 0\n"
    "for j = 1, #r, 2 do\n"
    "  local id = r[j]\n"
    "  local f = fields(prefix .. id, KEYS[2], id, names)\n"
    "  if f.err then\n"
    "    out[#out + 1] = {id, f.err}\n"
    "  elseif not f[1] then\n"
    "    redis.call('ZREM', KEYS[1], id)\n"
    "  elseif (scope == '' or string.sub(id, 1, #scope) == scope) and (nk == 0 or kinds[f[1]])"
    " and (ns == 0 or states[f[3]]) and (nb == 0 or batches[f[2]]) then\n"
    "    n = n + 1\n"
    "    out[#out + 1] = {id, string.format('%.0f', tonumber(r[j + 1])), f[1], f[2], f[3], f[4], "
    "f[5], f[6], f[7], f[8], f[9], f[10], f[11]}\n"
    "    if n == limit then\n"
    "      if j + 1 < #r or #r == 2 * scan then\n"
    "        out[1] = string.format('%.0f', tonumber(r[j + 1]))\n"
    "      end\n"
    "      return out\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if #r == 2 * scan then out[1] = string.format('%.0f', tonumber(r[#r])) end\n"
    "return out\n";

/* The key of ID's hash in BUF (ITEM_KEY_SIZE bytes); -1 if ID is too long
 * to be any item's. */
static int
item_key(char *buf, const char *id)
{
    int n = snprintf(buf, ITEM_KEY_SIZE, "%s%s", cluster_item_prefix(), id);
    return n < 0 || n >= ITEM_KEY_SIZE ? -1 : 0;
}

/*
 * What both kinds of question (getItems: struct store_items_ask; cancel
 * and retry: struct store_act_ask) count while Redis owes them replies.
 * The first member of each, which its owner frees once question_idle().
 */
struct question {
    int answered;               /* or given up: DONE runs no more */
    int scheduled;              /* an answer is due from the loop */
    uint32_t owed;              /* replies not yet in */
    int failed;                 /* 1: Redis failed (UNAVAILABLE); 2: asked wrong (INVALID) */
    char why[300];              /* of the first failure */
    void (*due)(struct question *qn);   /* what question_later() runs */
};

/* One id's lookup: its reply fills its ask's items[index]. */
struct slot {
    struct store_items_ask *ask;
    size_t index;
};

/*
 * A getItems question, owned here from cluster_get_items() until it is
 * answered or given up, and until no reply is owed for it (the callbacks
 * hold pointers to it): then ask_free().
 */
struct store_items_ask {
    struct question qn;         /* first: question_later() hands it back */
    struct store_items_query q;             /* its pointers borrowed from the caller */
    store_items_fn *done;
    void *arg;
    int waiting;                /* for finals (wait) */
    size_t n;                   /* by ids: q.request->n_item_ids; listing: the page */
    wire_known_item *items;     /* n of them, their strings owned */
    uint8_t *found;             /* by ids: which ids are known */
    uint8_t *final_seen;        /* by ids: a final update was delivered since the lookup */
    struct waiter *waiters;     /* wait: one per id, in the waiters' table until answered */
    struct slot *slots;
    char next_token[32];
};

/*
 * The ids that calls with wait are waiting for, hashed: every final update
 * the update stream delivers is looked up here (nothing to do when no call
 * waits), so many waiting calls do not slow the update path.
 */
#define WAIT_BUCKETS 4096
struct waiter {
    struct waiter *next, **pprev;
    struct store_items_ask *ask;
    size_t index;
    uint32_t hash;
};
static struct waiter *wait_buckets[WAIT_BUCKETS];

static uint32_t
hash_id(const char *id, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)id[i]) * 16777619u;
    return h;
}

/* ---- an item from its hash ------------------------------------------------ */

/*
 * Item ID's key (ID_LEN bytes) is no hash (written by hand; ERR: Redis's
 * error): the item is as unknown to getItems, cancel and retry, and the
 * others are answered. Logged once in a row (listings repeat).
 */
static void
warn_no_hash(const char *id, size_t id_len, const redisReply *err)
{
    static char last[DS_ITEM_ID_MAX + 1];
    char msg[DS_ITEM_ID_MAX + 1];
    snprintf(msg, sizeof msg, "%.*s", (int)id_len, id);
    if (strcmp(msg, last) == 0)
        return;
    snprintf(last, sizeof last, "%s", msg);
    log_warn("cluster: %s%s is no item hash (%.*s): that item is left out as unknown "
             "(delete the key)", cluster_item_prefix(), msg,
             (int)(err->len < 200 ? err->len : 200), err->str);
}

static int
is_wrongtype(const redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR && strncmp(r->str, "WRONGTYPE", 9) == 0;
}

/* An entry E of the list script's reply that is {id, error}: a listed
 * id whose key is no hash. */
static void
list_no_hash(const redisReply *e)
{
    if (e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
        e->element[0]->type == REDIS_REPLY_STRING && e->element[1]->type == REDIS_REPLY_STRING)
        warn_no_hash(e->element[0]->str, e->element[0]->len, e->element[1]);
}

static char *
reply_strdup(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_STRING)
        return ds_strdup("");
    return ds_strndup(r->str, r->len);
}

static uint64_t
reply_u64(const redisReply *r)
{
    uint64_t v = 0;
    return redis_reply_u64(r, 19, &v) == 0 ? v : 0;
}

/* A priority as the accept script wrote it (-?digits, an int32), else 0:
 * a hash edited by hand shows priority 0, not a number's prefix. */
static int32_t
reply_priority(const redisReply *r)
{
    uint64_t v = 0;
    if (r == NULL || r->type != REDIS_REPLY_STRING || r->len < 1)
        return 0;
    int neg = r->str[0] == '-';
    redisReply digits = { .type = REDIS_REPLY_STRING, .str = r->str + neg,
                          .len = r->len - (size_t)neg };
    if (redis_reply_u64(&digits, 10, &v) == -1 || v > (neg ? UINT64_C(2147483648)
                                                          : UINT64_C(2147483647)))
        return 0;
    return neg ? (int32_t)(-(int64_t)v) : (int32_t)v;
}

static wire_update *
reply_update(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_STRING)
        return NULL;
    return wire_update_unpack(NULL, r->len, (const uint8_t *)r->str);
}

static int
is_final(int state)
{
    return state == STATE_SUCCEEDED || state == STATE_FAILED || state == STATE_CANCELLED;
}

/* M from item ID's hash fields F (ITEM_FIELDS of them, item_fields'
 * order). 0: the hash does not exist (never known, or forgotten). */
static int
fill_item(wire_known_item *m, const char *id, size_t id_len, const redisReply *const *f,
          int with_results)
{
    wire_known_item_init(m);
    if (f[0] == NULL || f[0]->type != REDIS_REPLY_STRING)
        return 0;
    m->id = ds_strndup(id, id_len);
    m->kind = reply_strdup(f[0]);
    m->batch = reply_strdup(f[1]);
    m->state = (Com__Agrounds__Dosomething__V1__State)reply_u64(f[2]);
    m->max_attempts = (uint32_t)reply_u64(f[3]);
    m->last_seq = reply_u64(f[4]);
    m->priority = reply_priority(f[8]);
    m->accepted_unix_nano = (int64_t)reply_u64(f[5]);
    m->started_unix_nano = (int64_t)reply_u64(f[6]);
    if (f[9] != NULL && f[9]->type == REDIS_REPLY_STRING && f[9]->len > 0) {
        m->traceparent = reply_strdup(f[9]);
        m->tracestate = reply_strdup(f[10]);
    }
    wire_update *u = reply_update(f[7]);     /* none while QUEUED */
    if (u != NULL) {
        m->attempt = u->attempt;
        m->progress = u->progress;
        m->worker_pid = u->worker_pid;
        m->cpu_usec = u->cpu_usec;
        m->max_rss_kib = u->max_rss_kib;
        if (u->error != NULL && u->error[0] != '\0')
            m->error = ds_strdup(u->error);
        if (is_final(m->state))
            m->finished_unix_nano = u->time_unix_nano;
        if (with_results && (int)m->state == STATE_SUCCEEDED && u->result.len > 0) {
            m->result.data = ds_malloc(u->result.len);
            memcpy(m->result.data, u->result.data, u->result.len);
            m->result.len = u->result.len;
        }
    }
    if (m->attempt == 0)
        m->attempt = 1;
    if (u != NULL)
        wire_update_free(u, NULL);
    return 1;
}

static void
free_string(char *s)
{
    if (s != protobuf_c_empty_string)
        free(s);
}

static void
free_item(wire_known_item *m)
{
    free_string(m->id);
    free_string(m->kind);
    free_string(m->batch);
    free_string(m->error);
    free_string(m->traceparent);
    free_string(m->tracestate);
    free(m->result.data);
    wire_known_item_init(m);
}

/* ---- questions -------------------------------------------------------------- */

/* Is QN done with: answered (or given up), owed nothing, nothing due? */
static int
question_idle(const struct question *qn)
{
    return qn->answered && qn->owed == 0 && !qn->scheduled;
}

/* QN failed (Redis did, or could not be asked): the first why is kept. */
static void __attribute__((format(printf, 2, 3)))
question_fail(struct question *qn, const char *fmt, ...)
{
    if (!qn->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(qn->why, sizeof qn->why, fmt, ap);
        va_end(ap);
    }
    qn->failed = 1;
}

/* QN asks for what cannot be answered (INVALID_ARGUMENT). */
static void __attribute__((format(printf, 2, 3)))
question_invalid(struct question *qn, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(qn->why, sizeof qn->why, fmt, ap);
    va_end(ap);
    qn->failed = 2;
}

static enum store_items_status
question_status(const struct question *qn)
{
    return qn->failed == 2 ? STORE_ITEMS_INVALID : STORE_ITEMS_UNAVAILABLE;
}

static void
on_question_later(evutil_socket_t fd, short what, void *arg)
{
    struct question *qn = arg;
    qn->scheduled = 0;
    qn->due(qn);
}

/* DUE(QN) from the loop (QN failed, or asked nothing, before anything was
 * sent: its answer must not come from inside the call that asked). */
static void
question_later(struct question *qn, void (*due)(struct question *qn))
{
    struct timeval now = { 0, 0 };
    qn->scheduled = 1;
    qn->due = due;
    event_base_once(gp.base, -1, EV_TIMEOUT, on_question_later, qn, &now);
}

/* Send A for QN, its reply to FN(ARG): one more reply owed, or QN failed
 * (-1: nothing was sent). */
static int
question_send(struct question *qn, struct redis_args *a, redisCallbackFn *fn, void *arg)
{
    if (cluster_send(a, fn, arg) == -1) {
        question_fail(qn, "%s", cluster_why());
        return -1;
    }
    qn->owed++;
    return 0;
}

/* The N FIELDS of item ID (cluster_lookup_start(), as an HMGET of its hash would
 * give them) for QN (question_send), or 1: ID is longer than any item's
 * (nothing sent: it is not known). */
static int
question_lookup(struct question *qn, const char *id, const char *const *fields, int n,
               redisCallbackFn *fn, void *arg)
{
    char key[ITEM_KEY_SIZE];
    if (item_key(key, id) == -1)
        return 1;
    struct redis_args a;
    cluster_lookup_start(&a, key, id);
    for (int f = 0; f < n; f++)
        redis_args_str(&a, fields[f]);
    return question_send(qn, &a, fn, arg);
}

/* The list script's call (script_list) into A up to its filters: the
 * caller adds N_KINDS kinds, N_STATES states and N_BATCHES batches. */
static void
list_args(struct redis_args *a, const char *before, uint64_t limit, const char *scope,
          size_t n_kinds, size_t n_states, size_t n_batches)
{
    redis_args_init(a, "EVAL");
    redis_args_str(a, script_list);
    redis_args_str(a, "2");
    redis_args_str(a, cluster_key_items());
    redis_args_str(a, cluster_key_latest());
    redis_args_str(a, cluster_item_prefix());
    redis_args_str(a, before);
    redis_args_u64(a, limit);
    redis_args_u64(a, LIST_SCAN);
    redis_args_str(a, scope);
    redis_args_u64(a, n_kinds);
    redis_args_u64(a, n_states);
    redis_args_u64(a, n_batches);
}

static void
unlink_ask(struct store_items_ask *ask)
{
    for (size_t i = 0; ask->waiters != NULL && i < ask->n; i++) {
        struct waiter *w = &ask->waiters[i];
        if (w->pprev == NULL)
            continue;
        *w->pprev = w->next;
        if (w->next != NULL)
            w->next->pprev = w->pprev;
        w->next = NULL;
        w->pprev = NULL;
    }
}

static void
free_items(struct store_items_ask *ask)
{
    for (size_t i = 0; ask->items != NULL && i < ask->n; i++)
        free_item(&ask->items[i]);
}

static void
ask_free(struct store_items_ask *ask)
{
    unlink_ask(ask);
    free_items(ask);
    free(ask->items);
    free(ask->found);
    free(ask->final_seen);
    free(ask->waiters);
    free(ask->slots);
    free(ask);
}

/* Free ASK if it is done with: answered (or given up) and owed nothing. */
static void
ask_release(struct store_items_ask *ask)
{
    if (question_idle(&ask->qn))
        ask_free(ask);
}

static void
answer(struct store_items_ask *ask, enum store_items_status status, const char *why,
       const wire_items_reply *reply)
{
    if (ask->qn.answered)
        return;
    ask->qn.answered = 1;
    unlink_ask(ask);
    ask->done(ask->arg, status, why, reply);
}

/* By ids: the reply from what the lookup found. */
static void
answer_ids(struct store_items_ask *ask)
{
    const wire_items_request *r = ask->q.request;
    wire_known_item **items = ds_calloc(ask->n + 1, sizeof *items);
    char **not_found = ds_calloc(ask->n + 1, sizeof *not_found);
    wire_items_reply msg;
    wire_items_reply_init(&msg);
    for (size_t i = 0; i < ask->n; i++) {
        if (ask->found[i])
            items[msg.n_items++] = &ask->items[i];
        else
            not_found[msg.n_not_found++] = r->item_ids[i];     /* as the client sent it */
    }
    msg.items = items;
    msg.not_found = not_found;
    if (wire_items_reply_size(&msg) > DS_UPDATE_SIZE_MAX) {
        char why[200];
        snprintf(why, sizeof why, "the results of these items are more than a reply carries "
                 "(%u bytes); ask for fewer ids at once", DS_UPDATE_SIZE_MAX);
        answer(ask, STORE_ITEMS_TOO_LARGE, why, NULL);
    } else {
        answer(ask, STORE_ITEMS_OK, NULL, &msg);
    }
    free(items);
    free(not_found);
}

/* Is every requested item that is known final (or seen final since)? */
static int
all_final(const struct store_items_ask *ask)
{
    for (size_t i = 0; i < ask->n; i++)
        if (ask->found[i] && !is_final(ask->items[i].state) && !ask->final_seen[i])
            return 0;
    return 1;
}

static void lookup(struct store_items_ask *ask);

/* Every reply of a lookup is in (or it could not be sent). */
static void
lookup_done(struct store_items_ask *ask)
{
    if (ask->qn.answered) {
        ask_release(ask);
        return;
    }
    if (ask->qn.failed) {
        answer(ask, question_status(&ask->qn), ask->qn.why, NULL);
        ask_release(ask);
        return;
    }
    if (ask->q.request->wait) {
        /* Not final in the lookup: a final seen since (the lookup may have
         * run just before it was written) asks again; one not seen yet is
         * waited for: cluster_items_final() asks again once all are. */
        int stale = 0;
        for (size_t i = 0; i < ask->n; i++)
            if (ask->found[i] && !is_final(ask->items[i].state))
                stale |= ask->final_seen[i] ? 1 : 2;
        if (stale & 2) {
            ask->waiting = 1;
            return;
        }
        if (stale) {
            lookup(ask);
            return;
        }
    }
    answer_ids(ask);
    ask_release(ask);
}

/* Answer ASK from the loop (question_later). */
static void
lookup_due(struct question *qn)
{
    lookup_done((struct store_items_ask *)qn);   /* its first member */
}

static void
on_item(redisAsyncContext *ac, void *reply, void *arg)
{
    struct slot *slot = arg;
    struct store_items_ask *ask = slot->ask;
    const redisReply *r = reply;
    ask->qn.owed--;
    if (r == NULL)
        question_fail(&ask->qn, "cluster: the connection to redis was lost");
    else if (is_wrongtype(r)) {
        const char *id = ask->q.ids[slot->index];
        warn_no_hash(id, strlen(id), r);            /* not found */
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != ITEM_FIELDS)
        question_fail(&ask->qn, "cluster: looking items up failed: %.200s",
             r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    else if (!ask->qn.answered) {
        const char *id = ask->q.ids[slot->index];
        wire_known_item *m = &ask->items[slot->index];
        free_item(m);
        ask->found[slot->index] = (uint8_t)fill_item(m, id, strlen(id),
                                                     (const redisReply *const *)r->element,
                                                     ask->q.request->with_results);
    }
    if (ask->qn.owed == 0)
        lookup_done(ask);
}

/* By ids: one lookup per id, pipelined. */
static void
lookup(struct store_items_ask *ask)
{
    ask->qn.failed = 0;
    ask->waiting = 0;
    memset(ask->final_seen, 0, ask->n);
    for (size_t i = 0; i < ask->n; i++)
        if (question_lookup(&ask->qn, ask->q.ids[i], item_fields, ITEM_FIELDS, on_item,
                           &ask->slots[i]) == -1)
            break;
    if (ask->qn.owed == 0)
        question_later(&ask->qn, lookup_due);
}

/* ---- listing ------------------------------------------------------------------ */

static void
on_list(redisAsyncContext *ac, void *reply, void *arg)
{
    struct store_items_ask *ask = arg;
    const redisReply *r = reply;
    ask->qn.owed--;
    if (ask->qn.answered) {
        ask_release(ask);
        return;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        answer(ask, STORE_ITEMS_UNAVAILABLE, r == NULL ? "cluster: the connection to redis "
               "was lost" : r->type == REDIS_REPLY_ERROR ? r->str : "cluster: listing items: "
               "unexpected reply", NULL);
        ask_release(ask);
        return;
    }
    ask->n = 0;
    size_t bytes = 0;
    const redisReply *next = r->element[0], *last = NULL;
    ask->items = ds_calloc(r->elements, sizeof *ask->items);
    wire_known_item **items = ds_calloc(r->elements, sizeof *items);
    for (size_t i = 1; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        list_no_hash(e);
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 + ITEM_FIELDS ||
            e->element[0]->type != REDIS_REPLY_STRING ||
            e->element[1]->type != REDIS_REPLY_STRING)
            continue;
        wire_known_item *m = &ask->items[ask->n];
        if (!fill_item(m, e->element[0]->str, e->element[0]->len,
                       (const redisReply *const *)e->element + 2, ask->q.request->with_results))
            continue;
        /* A reply is at most what a stock client accepts: the page ends
         * early, before the first item that does not fit (one always does). */
        size_t size = com__agrounds__dosomething__v1__item__get_packed_size(m) + 8;
        if (ask->n > 0 && bytes + size > DS_UPDATE_SIZE_MAX) {
            free_item(m);
            next = last;        /* the page's last item (not an entry without a hash) */
            break;
        }
        last = e->element[1];
        bytes += size;
        items[ask->n] = m;
        ask->n++;
    }
    wire_items_reply msg;
    wire_items_reply_init(&msg);
    msg.items = items;
    msg.n_items = ask->n;
    if (!(next->len == 1 && next->str[0] == '0') && next->len < 21) {
        snprintf(ask->next_token, sizeof ask->next_token, "c%.*s", (int)next->len, next->str);
        msg.next_page_token = ask->next_token;
    }
    answer(ask, STORE_ITEMS_OK, NULL, &msg);
    free(items);
    ask_release(ask);
}

static void
list(struct store_items_ask *ask)
{
    const wire_items_request *q = ask->q.request;
    char before[24] = "0";
    uint64_t order = 0;
    /* "c" and the accept seq the next page starts below, as on_list made it. */
    if (q->page_token[0] != '\0' && items_token_decode(q->page_token, 'c', &order) == -1) {
        question_invalid(&ask->qn, "page_token \"%.40s\" is not one this cluster gave",
                         q->page_token);
        question_later(&ask->qn, lookup_due);
        return;
    }
    if (q->page_token[0] != '\0')
        snprintf(before, sizeof before, "%llu", (unsigned long long)order);
    struct redis_args a;
    list_args(&a, before, q->limit ? q->limit : LIMIT_DEFAULT, ask->q.scope, q->n_kinds,
              q->n_states, q->n_batches);
    for (size_t i = 0; i < q->n_kinds; i++)
        redis_args_str(&a, q->kinds[i]);
    for (size_t i = 0; i < q->n_states; i++)
        redis_args_u64(&a, (uint64_t)q->states[i]);
    for (size_t i = 0; i < q->n_batches; i++)
        redis_args_str(&a, q->batches[i]);
    if (question_send(&ask->qn, &a, on_list, ask) == -1)
        question_later(&ask->qn, lookup_due);
}

/* ---- the backend's calls -------------------------------------------------------- */

struct store_items_ask *
cluster_get_items(const struct store_items_query *q, store_items_fn *done, void *arg)
{
    struct store_items_ask *ask = ds_calloc(1, sizeof *ask);
    ask->q = *q;
    ask->done = done;
    ask->arg = arg;
    const wire_items_request *r = q->request;
    if (r->n_item_ids == 0 && r->n_kinds + r->n_states + r->n_batches > FILTERS_MAX) {
        question_invalid(&ask->qn, "%zu kinds, states and batches: more than %d in one listing",
                         r->n_kinds + r->n_states + r->n_batches, FILTERS_MAX);
        question_later(&ask->qn, lookup_due);
        return ask;
    }
    if (r->n_item_ids == 0) {
        list(ask);
        return ask;
    }
    ask->n = r->n_item_ids;
    ask->items = ds_calloc(ask->n, sizeof *ask->items);
    ask->found = ds_calloc(ask->n, 1);
    ask->final_seen = ds_calloc(ask->n, 1);
    ask->slots = ds_calloc(ask->n, sizeof *ask->slots);
    for (size_t i = 0; i < ask->n; i++) {
        wire_known_item_init(&ask->items[i]);
        ask->slots[i] = (struct slot){ .ask = ask, .index = i };
    }
    if (r->wait) {
        ask->waiters = ds_calloc(ask->n, sizeof *ask->waiters);
        for (size_t i = 0; i < ask->n; i++) {
            struct waiter *w = &ask->waiters[i];
            w->ask = ask;
            w->index = i;
            w->hash = hash_id(q->ids[i], strlen(q->ids[i]));
            struct waiter **head = &wait_buckets[w->hash % WAIT_BUCKETS];
            w->next = *head;
            if (*head != NULL)
                (*head)->pprev = &w->next;
            w->pprev = head;
            *head = w;
        }
    }
    lookup(ask);
    return ask;
}

void
cluster_items_abort(struct store_items_ask *ask)
{
    ask->qn.answered = 1;
    unlink_ask(ask);
    ask_release(ask);
}

void
cluster_items_final(const char *id, size_t id_len)
{
    uint32_t h = hash_id(id, id_len);
    for (struct waiter *w = wait_buckets[h % WAIT_BUCKETS], *next; w != NULL; w = next) {
        next = w->next;     /* lookup() below answers nothing at once: the list holds */
        struct store_items_ask *ask = w->ask;
        const char *want = ask->q.ids[w->index];
        if (w->hash != h || strncmp(want, id, id_len) != 0 || want[id_len] != '\0')
            continue;
        ask->final_seen[w->index] = 1;
        if (ask->waiting && all_final(ask))
            lookup(ask);    /* what they became (a retry may have queued one again) */
    }
}

/* ---- cancel and retry ------------------------------------------------------------ */

/*
 * Both go the same way: the items of the batches named are listed first
 * (the list script, page by page, filtered on the states the action
 * applies to), then every item is looked up (one lookup each, pipelined)
 * and acted on with one script each, which checks again what it found:
 *
 *   cancel  not delivered yet: removed from the work stream and CANCELLED
 *           in the script; held by an instance (this one or another): a
 *           request on {NAME}:control, which that instance reads with the
 *           updates and carries out through store_cancel(), its CANCELLED
 *           going through the final script like any final.
 *   retry   FAILED or CANCELLED with its WorkItem kept: queued again (a
 *           new work entry, QUEUED at attempt 1), made with this
 *           instance's config (store_item_again).
 */
#define ACT_ITEMS_MAX   100000  /* items of batches one call acts on */
#define ACT_PAGE        1000

struct act_slot {
    struct store_act_ask *ask;
    size_t index;               /* in ids, then in found */
};

/* Owned here from cluster_act() until answered (or given up) and owed nothing. */
struct store_act_ask {
    struct question qn;         /* first: question_later() hands it back */
    struct store_act_query q;   /* its pointers borrowed from the caller */
    store_act_fn *done;
    void *arg;
    uint64_t done_count, skipped;
    uint8_t *not_found;         /* q.n_ids flags */
    char **found;               /* ids of the batches' items, owned */
    size_t n_found, cap_found;
    struct act_slot *slots;
};

static void
act_free(struct store_act_ask *ask)
{
    for (size_t i = 0; i < ask->n_found; i++)
        free(ask->found[i]);
    free(ask->found);
    free(ask->not_found);
    free(ask->slots);
    free(ask);
}

static void
act_release(struct store_act_ask *ask)
{
    if (question_idle(&ask->qn))
        act_free(ask);
}

/* Nothing owed: answer (unless given up) and free. */
static void
act_finish(struct store_act_ask *ask)
{
    if (!ask->qn.answered) {
        ask->qn.answered = 1;
        if (ask->qn.failed) {
            ask->done(ask->arg, question_status(&ask->qn), ask->qn.why, NULL);
        } else {
            struct store_act_result r = { .done = ask->done_count, .skipped = ask->skipped,
                                          .not_found = ask->not_found };
            ask->done(ask->arg, STORE_ITEMS_OK, NULL, &r);
        }
    }
    act_release(ask);
}

/* Answer ASK from the loop (question_later). */
static void
act_due(struct question *qn)
{
    act_finish((struct store_act_ask *)qn);      /* its first member */
}

static const char *
act_id(const struct store_act_ask *ask, size_t index)
{
    return index < ask->q.n_ids ? ask->q.ids[index] : ask->found[index - ask->q.n_ids];
}

static void
act_not_found(struct store_act_ask *ask, size_t index)
{
    if (index < ask->q.n_ids)
        ask->not_found[index] = 1;     /* an item of a batch that went meanwhile: nothing */
}

static void
on_act_script(redisAsyncContext *ac, void *reply, void *arg)
{
    struct act_slot *slot = arg;
    struct store_act_ask *ask = slot->ask;
    const redisReply *r = reply;
    ask->qn.owed--;
    if (r == NULL) {
        question_fail(&ask->qn, "cluster: the connection to redis was lost");
    } else if (r->type == REDIS_REPLY_STRING && r->len == 1) {
        if (r->str[0] == 'c' || r->str[0] == 'a')
            ask->done_count++;
        else if (r->str[0] == 'f')
            ask->skipped++;
        else
            act_not_found(ask, slot->index);
    } else if (r->type == REDIS_REPLY_INTEGER) {
        if (r->integer > 0) {
            ask->done_count++;
            store_count_retry();
        } else if (r->integer == 0) {
            ask->skipped++;
        } else {
            act_not_found(ask, slot->index);
        }
    } else {
        question_fail(&ask->qn, "cluster: %s failed: %.200s",
                      ask->q.act == STORE_ACT_CANCEL ? "cancelling" : "retrying",
                      r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    }
    if (ask->qn.owed == 0)
        act_finish(ask);
}

/* The fields an action reads, in this order. */
#define ACT_FIELDS 6
static const char *const act_fields[ACT_FIELDS] = { "k", "b", "s", "u", "x", "w" };

static char *
copy_string(const redisReply *r, char *buf, size_t size)
{
    size_t n = r != NULL && r->type == REDIS_REPLY_STRING ? r->len : 0;
    if (n >= size)
        n = size - 1;
    if (n > 0)
        memcpy(buf, r->str, n);
    buf[n] = '\0';
    return buf;
}

/* Item SLOT's hash F (act_fields): act on it. */
static void
act_on(struct act_slot *slot, const redisReply *const *f)
{
    struct store_act_ask *ask = slot->ask;
    const char *id = act_id(ask, slot->index);
    if (f[0] == NULL || f[0]->type != REDIS_REPLY_STRING) {
        act_not_found(ask, slot->index);
        return;
    }
    char kind[80], batch[DS_ITEM_BATCH_MAX + 1];
    copy_string(f[0], kind, sizeof kind);
    copy_string(f[1], batch, sizeof batch);
    int state = (int)reply_u64(f[2]);
    int rc;
    if (ask->q.act == STORE_ACT_CANCEL) {
        if (is_final(state)) {
            ask->skipped++;
            return;
        }
        wire_update *u = reply_update(f[3]);   /* none while QUEUED: attempt 1 */
        uint32_t attempt = u != NULL ? u->attempt : 1;
        if (u != NULL)
            wire_update_free(u, NULL);
        uint64_t key = 0;   /* none while it waits (delayed, or in its lane) */
        if (f[4] != NULL && f[4]->type == REDIS_REPLY_STRING)
            key = cluster_entry_key(f[4]->str, f[4]->len);
        rc = cluster_cancel_item(id, kind, batch, key, attempt,
                                 ask->q.reason != NULL ? ask->q.reason : "cancelled by a client",
                                 on_act_script, slot);
    } else {
        if (state != STATE_FAILED && state != STATE_CANCELLED) {
            ask->skipped++;
            return;
        }
        struct item *item = NULL;
        if (f[5] != NULL && f[5]->type == REDIS_REPLY_STRING)
            item = store_item_again(id, batch, kind, (const uint8_t *)f[5]->str, f[5]->len);
        if (item == NULL) {
            /* Every FAILED or CANCELLED item keeps its WorkItem: this one's
             * hash was edited or lost it. */
            log_warn("cluster: retry of item \"%s\" skipped: %s%s has no WorkItem (w) that "
                     "decodes", id, cluster_item_prefix(), id);
            ask->skipped++;
            return;
        }
        rc = cluster_requeue_item(item, on_act_script, slot);
        store_discard(item);
    }
    if (rc == -1) {
        question_fail(&ask->qn, "%s", cluster_why());
        return;
    }
    ask->qn.owed++;
}

static void
on_act_lookup(redisAsyncContext *ac, void *reply, void *arg)
{
    struct act_slot *slot = arg;
    struct store_act_ask *ask = slot->ask;
    const redisReply *r = reply;
    ask->qn.owed--;
    if (r == NULL)
        question_fail(&ask->qn, "cluster: the connection to redis was lost");
    else if (is_wrongtype(r)) {
        const char *id = act_id(ask, slot->index);
        warn_no_hash(id, strlen(id), r);
        if (!ask->qn.answered && !ask->qn.failed)
            act_not_found(ask, slot->index);
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != ACT_FIELDS)
        question_fail(&ask->qn, "%s",
                      r->type == REDIS_REPLY_ERROR ? r->str : "cluster: unexpected reply");
    else if (!ask->qn.answered && !ask->qn.failed)
        act_on(slot, (const redisReply *const *)r->element);
    if (ask->qn.owed == 0)
        act_finish(ask);
}

/* Every item named and found: look each up. */
static void
act_lookup(struct store_act_ask *ask)
{
    size_t n = ask->q.n_ids + ask->n_found;
    ask->slots = ds_calloc(n + 1, sizeof *ask->slots);
    for (size_t i = 0; i < n; i++) {
        ask->slots[i] = (struct act_slot){ .ask = ask, .index = i };
        int rc = question_lookup(&ask->qn, act_id(ask, i), act_fields, ACT_FIELDS, on_act_lookup,
                                &ask->slots[i]);
        if (rc == 1)
            act_not_found(ask, i);
        else if (rc == -1)
            break;
    }
    if (ask->qn.owed == 0)
        question_later(&ask->qn, act_due);
}

static void act_list(struct store_act_ask *ask, const char *before);

/* A page of the batches' items. */
static void
on_act_list(redisAsyncContext *ac, void *reply, void *arg)
{
    struct store_act_ask *ask = arg;
    const redisReply *r = reply;
    ask->qn.owed--;
    if (ask->qn.answered) {
        act_release(ask);
        return;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        question_fail(&ask->qn, "%s", r == NULL ? "cluster: the connection to redis was lost"
                      : r->type == REDIS_REPLY_ERROR ? r->str : "cluster: unexpected reply");
        act_finish(ask);
        return;
    }
    for (size_t i = 1; i < r->elements && ask->n_found < ACT_ITEMS_MAX; i++) {
        const redisReply *e = r->element[i];
        list_no_hash(e);
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 + ITEM_FIELDS ||
            e->element[0]->type != REDIS_REPLY_STRING)
            continue;
        if (ask->n_found == ask->cap_found) {
            ask->cap_found = ask->cap_found ? ask->cap_found * 2 : 64;
            ask->found = ds_realloc(ask->found, ask->cap_found * sizeof *ask->found);
        }
        ask->found[ask->n_found++] = ds_strndup(e->element[0]->str, e->element[0]->len);
    }
    const redisReply *next = r->element[0];
    if (!(next->len == 1 && next->str[0] == '0') && next->len < 24 &&
        ask->n_found < ACT_ITEMS_MAX) {
        char before[24];
        act_list(ask, copy_string(next, before, sizeof before));
        return;
    }
    act_lookup(ask);
}

static void
act_list(struct store_act_ask *ask, const char *before)
{
    static const char *const cancel_states[] = { "1", "2", "3", "6" };
    static const char *const retry_states[] = { "5", "7" };
    int cancel = ask->q.act == STORE_ACT_CANCEL;
    size_t n_states = cancel ? 4 : 2;
    struct redis_args a;
    list_args(&a, before, ACT_PAGE, ask->q.scope, 0, n_states, ask->q.n_batches);
    for (size_t i = 0; i < n_states; i++)
        redis_args_str(&a, cancel ? cancel_states[i] : retry_states[i]);
    for (size_t i = 0; i < ask->q.n_batches; i++)
        redis_args_str(&a, ask->q.batches[i]);
    if (question_send(&ask->qn, &a, on_act_list, ask) == -1)
        question_later(&ask->qn, act_due);
}

struct store_act_ask *
cluster_act(const struct store_act_query *q, store_act_fn *done, void *arg)
{
    struct store_act_ask *ask = ds_calloc(1, sizeof *ask);
    ask->q = *q;
    ask->done = done;
    ask->arg = arg;
    ask->not_found = ds_calloc(q->n_ids + 1, 1);
    if (q->n_batches > FILTERS_MAX) {
        question_invalid(&ask->qn, "%zu batches: more than %d in one call", q->n_batches,
                         FILTERS_MAX);
        question_later(&ask->qn, act_due);
    } else if (q->n_batches > 0) {
        act_list(ask, "0");
    } else {
        act_lookup(ask);
    }
    return ask;
}

void
cluster_act_abort(struct store_act_ask *ask)
{
    ask->qn.answered = 1;
    act_release(ask);
}
