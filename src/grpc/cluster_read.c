/*
 * Cluster mode: reading the update stream (cluster.h has the contract,
 * cluster.c the session, cluster_read.h this file's part).
 *
 * One XREAD is always out on the update connection, on two streams:
 * {NAME}:updates, where every instance's scripts write their updates
 * numbered by {NAME}:seq (one entry: a batch of them, LUA_BATCH), read
 * to its end once before the session serves (cl.caught_up), then blocking;
 * each update goes to updates.c (the log every subscriber and getItems
 * reads), a gap ends the subscriber streams; and {NAME}:control, where a
 * cancel for an item this instance holds arrives (applied through the
 * store; remembered a while if the item is not taken yet), and wakes for
 * the prioritized lanes (cluster_take.c). The seq read is reported to
 * the master, so that a grpc process started later goes on past it.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/pbwire.h"
#include "core/process.h"
#include "core/utf8.h"
#include "grpc/cluster.h"
#include "grpc/cluster_items.h"
#include "grpc/cluster_read.h"
#include "grpc/cluster_state.h"
#include "grpc/cluster_take.h"
#include "grpc/grpc_process.h"
#include "grpc/redis_args.h"
#include "grpc/redis_reply.h"
#include "grpc/store.h"
#include "grpc/subscribe.h"
#include "grpc/updates.h"

#define READ_COUNT          100     /* entries per XREAD (an entry: up to 512 updates) */

/* ---- the update stream --------------------------------------------------- */

static void
report_seq(void)
{
    /* A grpc process started after us (even without cluster) continues past it. */
    if (cl.last_seq + SEQ_RESERVE_CHUNK / 2 < cl.seq_reported)
        return;
    cl.seq_reported = cl.last_seq + SEQ_RESERVE_CHUNK;
    struct ipc_seq s = { .seq = cl.seq_reported };
    master_send(IPC_SEQ_RESERVE, &s, sizeof s);
}

/* A string of an update: where, how long; p NULL: absent. */
struct entry_str {
    const char *p;
    size_t len;
};

/* One update of an entry of the update stream: its fields (NULL: absent). */
struct entry_update {
    const redisReply *u;        /* the Update encoded without its seq */
    struct entry_str i, k, b;   /* item_id, kind, batch */
    uint32_t state;             /* 0: unknown */
    const redisReply *p, *d;    /* a QUEUED update of an item that waits */
};

/* A string field as an entry_str. */
static struct entry_str
reply_str(const redisReply *r)
{
    return r != NULL ? (struct entry_str){ r->str, r->len } : (struct entry_str){ NULL, 0 };
}

/*
 * Layout 3 keeps an update's item_id (2), kind (3), state (4) and batch
 * (11) only inside the encoded Update: take them from there (E->u). A
 * field given beside it (layout 2's I K B S) wins. -1 if U is malformed.
 */
static int
update_fields(struct entry_update *e)
{
    const uint8_t *buf = (const uint8_t *)e->u->str;
    size_t len = e->u->len, i = 0;
    struct entry_str id = { NULL, 0 }, kind = { NULL, 0 }, batch = { "", 0 };
    uint64_t state = 0;
    struct pbwire_field f;
    int r;
    while ((r = pbwire_next(buf, len, &i, &f)) == 1) {
        struct entry_str s = { (const char *)f.bytes, f.len };
        if (f.number == 4 && f.type == PBWIRE_VARINT)
            state = f.value;
        else if (f.number == 2 && f.type == PBWIRE_LEN)
            id = s;
        else if (f.number == 3 && f.type == PBWIRE_LEN)
            kind = s;
        else if (f.number == 11 && f.type == PBWIRE_LEN)
            batch = s;
    }
    if (r == -1)
        return -1;
    if (e->i.p == NULL)
        e->i = id;
    if (e->k.p == NULL)
        e->k = kind;
    if (e->b.p == NULL)
        e->b = batch;
    if (e->state == 0 && state <= STATE_MAX)
        e->state = (uint32_t)state;
    return 0;
}

/* A state field ("1".."7") as a state, 0 if it is none. */
static uint32_t
state_of(const redisReply *s)
{
    if (s != NULL && s->len == 1 && s->str[0] >= '1' && s->str[0] <= '0' + STATE_MAX)
        return (uint32_t)(s->str[0] - '0');
    return 0;
}

/* A QUEUED update of an item that waits (script_accepts): p, in a
 * priority's lane; d, delayed until then. */
static void
queued_waits(const struct entry_update *e)
{
    if (e->d != NULL) {
        uint64_t due = 0;
        if (redis_reply_u64(e->d, 15, &due) == 0 && due > 0)
            cluster_arm_due((int64_t)due);
    } else if (e->p != NULL) {
        cluster_prio_wake();
    }
}

/* The update with SEQ, E, of the entry with ID ENTRY. */
static void
deliver_update(uint64_t seq, struct entry_update *e, const redisReply *entry)
{
    const redisReply *u = e->u;
    int parsed = u != NULL && update_fields(e) == 0;
    const struct entry_str *i = &e->i, *k = &e->k, *b = &e->b;
    uint32_t state = e->state;
    /* Written by an instance that did not check: it would end every stream.
     * 11 bytes: the seq that updates_deliver() puts in front. */
    if (seq == 0 || !parsed || i->p == NULL || k->p == NULL || b->p == NULL || state == 0 ||
        !utf8_valid(i->p, i->len) || !utf8_valid(k->p, k->len) ||
        !utf8_valid(b->p, b->len) || u->len > DS_UPDATE_SIZE_MAX - 11) {
        log_error("cluster: skipping seq %" PRIu64 " in entry %.*s of %s: it is no update%s",
                  seq, (int)(entry->len < 40 ? entry->len : 40), entry->str, cl.key_updates,
                  u != NULL && u->len > DS_UPDATE_SIZE_MAX - 11
                  ? " a stock client accepts (over 4 MiB)" : "");
        if (seq > cl.last_seq)
            cl.last_seq = seq;  /* its seq is used up all the same */
        return;
    }
    if (cl.last_seq != 0 && seq <= cl.last_seq)
        return;
    if (cl.last_seq == 0 || seq != cl.last_seq + 1) {
        char why[256];
        if (cl.last_seq != 0) {
            snprintf(why, sizeof why, "updates %" PRIu64 "..%" PRIu64 " are not in the "
                     "cluster's update stream (trimmed before this instance read them, or redis "
                     "lost them)", cl.last_seq + 1, seq - 1);
            log_warn("cluster: %s; ending every subscriber stream", why);
            subscribers_cut_all(why);
        }
        updates_restart(seq - 1, cl.origin + 1, cl.last_seq != 0 ? why : NULL);
    }
    cl.last_seq = seq;
    updates_deliver(seq, (enum wire_state)state, (const uint8_t *)u->str, u->len, i->p, i->len,
                    k->p, k->len, b->p, b->len);
    if (state == STATE_SUCCEEDED || state == STATE_FAILED || state == STATE_CANCELLED)
        cluster_items_final(i->p, i->len);
    else if (state == STATE_QUEUED)
        queued_waits(e);
}

/* Is R the one-letter string C? */
static int
is_letter(const redisReply *r, char c)
{
    return r->type == REDIS_REPLY_STRING && r->len == 1 && r->str[0] == c;
}

/*
 * An entry of the update stream: layout 1 (u i k b s, and p or d), one
 * update, its seq the entry's ID 0-SEQ, written by an older version (read
 * for what it left in the stream); or layouts 2 and 3 (LUA_BATCH: U, in
 * layout 2 with I K B S, and P or D, once per update), N updates whose
 * last has the seq of the entry's ID; this version writes layout 3 (one
 * update: script_cancel, script_retry; a batch: the accepts and the
 * updates).
 */
static int
deliver_entry(const redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    const redisReply *fields = entry->element[1], *id = entry->element[0];
    uint64_t last = cluster_id_number(id->str, id->len);
    if (last == 0) {
        /* Read from 0-SEQ, it would come back with every read; and every
         * update written after it (0-SEQ) fails: the session waits. */
        cluster_session_fail("%s has an entry %.*s that no instance wrote (not 0-SEQ), after "
                             "which no update can be added: XDEL it, then XSETID %s 0-SEQ "
                             "(SEQ: GET %s)",
                             cl.key_updates, (int)(id->len < 40 ? id->len : 40), id->str,
                             cl.key_updates, cl.key_seq);
        cl.backoff_ms = BACKOFF_MAX_MS;     /* (a session came up) until someone removes it */
        return -1;
    }
    struct entry_update e = { 0 };
    if (fields->type != REDIS_REPLY_ARRAY || fields->elements < 2 ||
        !is_letter(fields->element[0], 'U')) {
        e = (struct entry_update){ .u = cluster_field(fields, "u"),
                                   .i = reply_str(cluster_field(fields, "i")),
                                   .k = reply_str(cluster_field(fields, "k")),
                                   .b = reply_str(cluster_field(fields, "b")),
                                   .state = state_of(cluster_field(fields, "s")),
                                   .p = cluster_field(fields, "p"),
                                   .d = cluster_field(fields, "d") };
        deliver_update(last, &e, id);
        return 0;
    }
    uint64_t n = 0;
    for (size_t j = 0; j + 1 < fields->elements; j += 2)
        n += is_letter(fields->element[j], 'U');
    if (n > last) {             /* no seq for them all: no update of ours */
        deliver_update(last, &e, id);
        return 0;
    }
    uint64_t seq = last - n + 1;
    int have = 0;
    for (size_t j = 0; j + 1 < fields->elements; j += 2) {
        const redisReply *key = fields->element[j], *v = fields->element[j + 1];
        if (key->type != REDIS_REPLY_STRING || key->len != 1 || v->type != REDIS_REPLY_STRING)
            continue;
        switch (key->str[0]) {
        case 'U':
            if (have)
                deliver_update(seq++, &e, id);
            e = (struct entry_update){ .u = v };
            have = 1;
            break;
        case 'I': e.i = reply_str(v); break;   /* layout 2 */
        case 'K': e.k = reply_str(v); break;
        case 'B': e.b = reply_str(v); break;
        case 'S': e.state = state_of(v); break;
        case 'P': e.p = v; break;
        case 'D': e.d = v; break;
        default: break;
        }
    }
    if (have)
        deliver_update(seq, &e, id);
    return 0;
}

/* ---- cancel requests (the control stream) ---------------------------------- */

/*
 * A cancel request for an item this instance is to hold but has not taken
 * yet (its XREADGROUP or claim reply is still on its way): applied when it
 * is taken, forgotten after PENDING_CANCEL_MS.
 */
#define PENDING_CANCELS     64
#define PENDING_CANCEL_MS   30000
static struct pending_cancel {
    uint64_t key;               /* 0: free */
    uint64_t at_ms;
    char reason[CONTROL_REASON_MAX + 1];
} pending_cancels[PENDING_CANCELS];

static int
key_matches(const struct item *item, void *arg)
{
    return item->key == *(const uint64_t *)arg;
}

/* Cancel the item with KEY if it is held here (1), else 0. */
static int
cancel_held(uint64_t key, const char *reason)
{
    if (store_held(key) == NULL)
        return 0;
    store_cancel(key_matches, &key, reason[0] ? reason : NULL);
    return 1;
}

void
cluster_remember_cancel(uint64_t key, const char *reason)
{
    uint64_t now = clock_monotonic_ms();
    struct pending_cancel *slot = &pending_cancels[0];
    for (int i = 0; i < PENDING_CANCELS; i++) {
        struct pending_cancel *p = &pending_cancels[i];
        if (p->key == 0 || now - p->at_ms > PENDING_CANCEL_MS) {
            slot = p;
            break;
        }
        if (p->at_ms < slot->at_ms)
            slot = p;       /* full: the oldest goes */
    }
    slot->key = key;
    slot->at_ms = now;
    snprintf(slot->reason, sizeof slot->reason, "%s", reason);
}

/* ITEM (KEY) was just taken here: was it cancelled on its way? */
void
cluster_apply_pending_cancel(uint64_t key)
{
    uint64_t now = clock_monotonic_ms();
    for (int i = 0; i < PENDING_CANCELS; i++) {
        struct pending_cancel *p = &pending_cancels[i];
        if (p->key == key && now - p->at_ms <= PENDING_CANCEL_MS) {
            p->key = 0;
            cancel_held(key, p->reason);
        }
    }
}

/* An entry of {NAME}:control: c the consumer, e the work entry, r the
 * reason. Ours: cancel the item through the store like a local cancel;
 * its CANCELLED goes through the final script. */
static void
control_entry(const redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING)
        return;
    const redisReply *idr = entry->element[0], *fields = entry->element[1];
    if (idr->len < sizeof cl.control_last) {
        memcpy(cl.control_last, idr->str, idr->len);
        cl.control_last[idr->len] = '\0';
    }
    if (cluster_field(fields, "wake") != NULL) {
        cluster_prio_wake();    /* script_due put items in their lanes */
        return;
    }
    char consumer[sizeof cl.consumer], reason[CONTROL_REASON_MAX + 1];
    const redisReply *e = cluster_field(fields, "e");
    if (cluster_field_string(fields, "c", sizeof consumer - 1, consumer) == NULL ||
        strcmp(consumer, cl.consumer) != 0 || e == NULL)
        return;
    if (cluster_field_string(fields, "r", CONTROL_REASON_MAX, reason) == NULL ||
        !utf8_valid(reason, strlen(reason)))
        reason[0] = '\0';
    uint64_t key = cluster_entry_key(e->str, e->len);
    if (key == 0)
        return;
    cl.cancels++;
    if (!cancel_held(key, reason))
        cluster_remember_cancel(key, reason);
}

static void
on_updates(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.reading = 0;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        cluster_session_fail("XREAD on %s failed: %.200s", cl.key_updates, r->str);
        return;
    }
    size_t n = 0;
    for (size_t k = 0; r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
        const redisReply *stream = r->element[k];
        if (stream->type != REDIS_REPLY_ARRAY || stream->elements < 2 ||
            stream->element[0]->type != REDIS_REPLY_STRING ||
            stream->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        const redisReply *name = stream->element[0], *entries = stream->element[1];
        if (strlen(cl.key_control) == name->len &&
            memcmp(name->str, cl.key_control, name->len) == 0) {
            for (size_t i = 0; i < entries->elements; i++)
                control_entry(entries->element[i]);
            continue;
        }
        n = entries->elements;
        for (size_t i = 0; i < n; i++)
            if (deliver_entry(entries->element[i]) == -1)
                return;
    }
    if (cl.last_seq > 0)
        report_seq();
    if (n < READ_COUNT && !cl.caught_up) {
        cl.caught_up = 1;
        log_notice("cluster: serving; the update stream %s is read up to seq %" PRIu64,
                   cl.key_updates, cl.last_seq);
        store_serving_changed();
        store_room_available();
    }
    cluster_read_updates();
    cluster_check_done();
}

void
cluster_read_updates(void)
{
    if (cl.reading)
        return;
    struct redis_args a;
    redis_args_init(&a, "XREAD");
    redis_args_str(&a, "COUNT");
    redis_args_u64(&a, READ_COUNT);
    /* Catching up does not wait: a short read means we are there. */
    if (cl.caught_up) {
        redis_args_str(&a, "BLOCK");
        redis_args_str(&a, BLOCK_MS);
    }
    redis_args_str(&a, "STREAMS");
    redis_args_str(&a, cl.key_updates);
    redis_args_str(&a, cl.key_control);
    redis_args_stream_id(&a, 0, cl.last_seq);
    redis_args_str(&a, cl.control_last);
    if (cluster_command(&cl.upd, on_updates, NULL, &a) == 0)
        cl.reading = 1;
}
