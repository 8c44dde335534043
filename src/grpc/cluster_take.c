/*
 * Cluster mode: how items come to this instance (cluster.h has the
 * contract, cluster.c the session, cluster_take.h this file's part).
 *
 * Pulling: while local room lasts, one XREADGROUP blocks on {NAME}:work
 * on the work connection, asking for as many items as the room takes;
 * while prioritized items may wait in their lanes ({NAME}:prio), the pull
 * script on the command connection takes them first (a wake from the
 * control stream or the due script ends a blocked XREADGROUP). An entry
 * becomes an item here through take_entry(). Every lease/3 the renew
 * script renews what this instance holds and our lease is published;
 * every lease/2 the claim script takes over the entries of instances that
 * stopped renewing theirs (RETRYING naming the one before, FAILED past
 * max_attempts; a copy still held here is adopted), and the trim and the
 * counts of known items run. One due timer moves delayed items on
 * ({NAME}:delayed); the capacity poll counts the queue for
 * queue.capacity.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/utf8.h"
#include "grpc/cluster.h"
#include "grpc/cluster_read.h"
#include "grpc/cluster_scripts.h"
#include "grpc/cluster_state.h"
#include "grpc/cluster_take.h"
#include "grpc/cluster_write.h"
#include "grpc/grpc_process.h"
#include "grpc/item.h"
#include "grpc/metrics.h"
#include "grpc/redis_args.h"
#include "grpc/redis_reply.h"
#include "grpc/store.h"
#include "grpc/submit.h"
#include "grpc/updates.h"

#define PULL_MAX            1000    /* items per XREADGROUP */
#define CLAIM_COUNT         100     /* entries per claim pass */
#define RENEW_CHUNK         500     /* ids per renew script */
#define HAND_BACK_CHUNK     150     /* items per hand-back script (3 arguments each) */
#define DUE_COUNT           1000    /* delayed items moved on per due script */
#define PULL_RETRY_MS       1000    /* after a pull script failed (maxmemory, BUSY) */
/* The due timer never sleeps longer than this: a delayed item whose QUEUED
 * update this instance did not see (read before it started, trimmed) is
 * still moved on in time, give or take this. */
#define DUE_POLL_MS         1000
/* A retry's due time taken over from another instance is at most this far
 * ahead: the longest queue.retry_backoff.max. */
#define RETRY_DUE_MAX_MS    (UINT64_C(24) * 3600 * 1000)

/* ---- taking items -------------------------------------------------------- */

/* The entries of an XREAD or XREADGROUP reply on one stream, or NULL (none,
 * or a reply of another shape). */
static const redisReply *
stream_entries(const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1)
        return NULL;
    const redisReply *stream = r->element[0];
    if (stream->type != REDIS_REPLY_ARRAY || stream->elements < 2 ||
        stream->element[1]->type != REDIS_REPLY_ARRAY)
        return NULL;
    return stream->element[1];
}

static int
field_uint(const redisReply *fields, const char *name, uint32_t max, uint32_t *out)
{
    char buf[16], *end;
    if (cluster_field_string(fields, name, 10, buf) == NULL || buf[0] == '\0')
        return -1;
    errno = 0;
    unsigned long v = strtoul(buf, &end, 10);
    if (*end != '\0' || errno != 0 || v > max)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* How an entry was taken over from another instance (script_claim). */
struct claim {
    const char *previous;       /* the instance that stopped renewing it */
    uint64_t idle_ms;           /* for this long */
    uint64_t due_ms;            /* its next attempt not before (unix ms; 0: at once) */
    int waiting;                /* that attempt was waiting its backoff: it never started */
};

static void
on_count_set(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (r != NULL && r->type == REDIS_REPLY_ERROR && !cl.shutting_down)
        log_error("cluster: setting the delivery count of an entry we claimed failed: %s "
                  "(its item's updates will be dropped as superseded, and it runs again after "
                  "the lease)", r->str);
}

/* Set the delivery count of our entry KEY to COUNT, before the updates
 * that check it (they follow on the same connection). */
static void
set_count(uint64_t key, uint32_t count)
{
    struct redis_args a;
    redis_args_init(&a, "XCLAIM");
    redis_args_str(&a, cluster_stream_of(key));
    redis_args_str(&a, CLUSTER_GROUP);
    redis_args_str(&a, cl.consumer);
    redis_args_str(&a, "0");
    cluster_entry_arg(&a, key);
    redis_args_str(&a, "RETRYCOUNT");
    redis_args_u64(&a, count);
    redis_args_str(&a, "JUSTID");
    cluster_command(&cl.cmd, on_count_set, NULL, &a);
}

/*
 * A claim counted DELIVERIES for ITEM's entry: the attempt before, which
 * CLAIM's holder stopped renewing, ends as RETRYING naming it, and ITEM
 * goes on as attempt DELIVERIES (0). Or that attempt was its last (-1):
 * ITEM stays at it (attempt DELIVERIES - 1, claimed_past_max: its updates
 * name the last attempt, not one past max_attempts that never ran, while
 * the update script still checks the entry's count), and the caller ends
 * it FAILED (its error in ERROR, SIZE bytes) or lets a copy of it that
 * was already here go on (adopt_claimed(): that adds no run, the count
 * was spent by a delivery to this copy).
 */
static int
claimed_attempt(struct item *item, uint32_t deliveries, const struct claim *claim,
                char *error, size_t size)
{
    char reason[320];
    snprintf(reason, sizeof reason, "instance %.200s stopped renewing it (idle %" PRIu64 " ms)",
             claim->previous, claim->idle_ms);
    if (!store_may_retry(item, deliveries - 1)) {
        if (deliveries - 1 > item->max_attempts) {
            /* Counted past the last attempt more than once (a claimer
             * whose FAILED never landed): back to last + 1, so that the
             * updates name the last attempt. */
            deliveries = item->max_attempts + 1;
            set_count(item->key, deliveries);
        }
        snprintf(error, size, "%s (attempt %u of %u)", reason, deliveries - 1,
                 item->max_attempts);
        item->attempt = deliveries - 1;
        item->claimed_past_max = 1;
        return -1;
    }
    metrics_kind(item->kind)->retried++;
    item->attempt = deliveries - 1;
    item->claimed_past_max = 0;
    size_t len;
    struct outcome retrying = { .state = STATE_RETRYING, .error = reason };
    uint8_t *encoded = updates_encode(item, &retrying, &len);
    item->attempt = deliveries;
    if (cluster_send_update(item, 'u', deliveries, STATE_RETRYING, encoded, len, 0, NULL, 0,
                            cluster_on_published, NULL) == -1)
        cluster_note_lost_update();
    free(encoded);
    return 0;
}

/* When the retry the previous holder of CLAIM's entry waited for is due
 * (unix ns), at most the longest backoff a config may have from now (a
 * clock far behind the holder's, a bad rd); 0: none, or not ahead. */
static uint64_t
claim_due_ns(const struct claim *claim)
{
    uint64_t now_ms = (uint64_t)clock_wall_ns() / 1000000;
    if (claim->due_ms <= now_ms)
        return 0;
    return (claim->due_ms - now_ms > RETRY_DUE_MAX_MS ? now_ms + RETRY_DUE_MAX_MS
            : claim->due_ms) * 1000000;
}

/*
 * An entry of the work stream becomes an item here, at attempt DELIVERIES
 * (its delivery count; one taken over past max_attempts ends FAILED at the
 * attempt before). CLAIM: how it was taken over (NULL: read fresh). Returns the item's
 * weight, or 0 if it was not queued.
 */
static uint32_t
take_entry(const redisReply *entry, uint32_t deliveries, const struct claim *claim)
{
    if (entry == NULL || entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    const redisReply *idr = entry->element[0], *fields = entry->element[1];
    uint64_t key = cluster_entry_key(idr->str, idr->len);
    char id[DS_ITEM_ID_MAX + 1], kind[80], batch[DS_ITEM_BATCH_MAX + 1];
    uint32_t max_attempts = 0, timeout_ms = 0, quick = 0;
    const redisReply *raw = cluster_field(fields, "w");
    const char *bad = NULL;
    if (key == 0)
        bad = "its ID is not 0-N or 1-N";
    else if (cluster_field_string(fields, "i", DS_ITEM_ID_MAX, id) == NULL)
        bad = "field i (id) is missing or too long";
    else if (cluster_field_string(fields, "k", 64, kind) == NULL)
        bad = "field k (kind) is missing or too long";
    else if (cluster_field_string(fields, "b", DS_ITEM_BATCH_MAX, batch) == NULL)
        bad = "field b (batch) is missing or too long";
    else if (field_uint(fields, "m", 1000, &max_attempts) == -1 || max_attempts == 0)
        bad = "field m (max_attempts) is not 1..1000";
    else if (field_uint(fields, "t", UINT32_MAX, &timeout_ms) == -1)
        bad = "field t (timeout_ms) is not a number";
    else if (field_uint(fields, "q", 1, &quick) == -1)
        bad = "field q is not 0 or 1";
    else if (raw == NULL || raw->len > DS_MESSAGE_SIZE_MAX)
        /* Not this config's grpc.max_message_size: an item keeps the limit
         * it was accepted under (by another instance, or before a reload). */
        bad = "field w (the WorkItem) is missing or larger than any grpc.max_message_size";
    else if (!utf8_valid(id, strlen(id)) || !utf8_valid(kind, strlen(kind)) ||
             !utf8_valid(batch, strlen(batch)))
        bad = "its id, kind or batch is not valid UTF-8";   /* every update would carry it */
    if (bad != NULL && key == 0) {
        log_error("cluster: %s has an entry %.*s that is no item (%s); leaving it", cl.key_work,
                  (int)(idr->len < 40 ? idr->len : 40), idr->str, bad);
        return 0;
    }

    struct item *item = item_make(raw != NULL && bad == NULL ? (const uint8_t *)raw->str : NULL,
                                  raw != NULL && bad == NULL ? raw->len : 0,
                                  bad == NULL ? id : "", bad == NULL ? batch : "",
                                  bad == NULL ? kind : "", max_attempts ? max_attempts : 1,
                                  timeout_ms, (int)quick);
    item->key = key;
    item->attempt = deliveries;
    item->priority = cluster_raw_priority(item);
    char error[600];
    if (bad != NULL) {
        snprintf(error, sizeof error, "cluster: entry %d-%" PRIu64 " of %s is not a valid "
                 "item: %s", key & PWORK_BIT ? 1 : 0, key & ~PWORK_BIT, cluster_stream_of(key),
                 bad);
        log_error("%s", error);
        store_fail(item, error);
        return 0;
    }
    if (config_handler(gp.config, item->kind) == NULL) {
        snprintf(error, sizeof error, "kind \"%.*s\" is not configured on instance %s (every "
                 "instance of a cluster needs the same handlers)",
                 (int)utf8_prefix(item->kind, strlen(item->kind), 64), item->kind, cl.consumer);
        store_fail(item, error);
        return 0;
    }
    if (claim != NULL)
        cl.claimed++;
    if (claim != NULL && !claim->waiting &&
        claimed_attempt(item, deliveries, claim, error, sizeof error) == -1) {
        store_fail(item, error);
        return 0;
    }
    uint64_t due_ns = claim != NULL ? claim_due_ns(claim) : 0;
    if (due_ns != 0)
        item->due_ns = due_ns;  /* the backoff of a retry its holder waited */
    uint32_t weight = item->weight;
    store_take(item);
    cluster_apply_pending_cancel(key);
    return weight;
}

/* Take the entries ENTRIES (as XREADGROUP gives them), counting them and
 * their weight. */
static void
take_entries(const redisReply *entries, uint32_t *taken, uint32_t *weight)
{
    if (entries == NULL || entries->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < entries->elements; i++) {
        uint32_t w = take_entry(entries->element[i], 1, NULL);
        if (w > 0) {
            (*taken)++;
            *weight += w;
        }
    }
}

static void
on_pulled(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.pulling = 0;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        log_error("cluster: XREADGROUP on %s failed: %s", cl.key_work, r->str);
        cluster_session_fail("XREADGROUP failed: %.200s", r->str);
        return;
    }
    uint32_t taken = 0, weight = 0;
    const redisReply *entries = stream_entries(r);
    cl.pull_backlog = entries != NULL && entries->elements >= cl.pull_count;
    cl.taking = 1;
    take_entries(entries, &taken, &weight);
    cl.taking = 0;
    if (taken > 0)
        cl.pull_unit = weight / taken > 0 ? weight / taken : ITEM_WEIGHT_QUICK;
    cluster_pull();
    cluster_check_done();       /* a drain waits for what a pull may bring */
}

static void
on_pulled_by_script(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.pulling = 0;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 6 ||
        r->element[3]->type != REDIS_REPLY_INTEGER || r->element[4]->type != REDIS_REPLY_INTEGER) {
        log_error("cluster: pulling items failed: %s",
                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        if (cluster_is_error(r, "NOSCRIPT")) {
            cluster_session_fail("redis forgot our scripts (SCRIPT FLUSH?)");
            return;
        }
        /* The script is tried again in a while (the lanes it was to look
         * at may hold items, and an idle instance has nothing else that
         * would pull); meanwhile the work stream is read as usual, so a
         * cause that lasts (a lane's key that is no list) stops no other item. */
        cl.pull_paused = 1;
        struct timeval tv = clock_timeval_ms(PULL_RETRY_MS);
        evtimer_add(cl.pull_timer, &tv);
        cluster_pull();
        cluster_check_done();
        return;
    }
    char tail[200];
    snprintf(tail, sizeof tail, "; taken out of its lane (%s:P), it waits no more (cancel it, "
             "or repair its hash and put it back)", cl.key_prio);
    cluster_log_bad_items(r->element[5], "cannot run", tail);
    uint32_t taken = 0, weight = 0;
    cl.taking = 1;
    for (size_t i = 0; i < 3; i++)  /* above 0, 0, below 0: best first */
        take_entries(r->element[i], &taken, &weight);
    cl.taking = 0;
    /* Nothing at all: no lane to watch; block on the work stream again
     * (unless a wake came meanwhile: the lane it announced may have been
     * filled after the script ran). A lane item too heavy for the room
     * left waits for the next pull by script, when room appears. */
    int too_heavy = r->element[4]->integer != 0;
    cl.prio_waiting = ((taken > 0 || too_heavy) && r->element[3]->integer > 0) ||
                      cl.wakes != cl.wakes_at_pull;
    if (taken > 0)
        cl.pull_unit = weight / taken > 0 ? weight / taken : ITEM_WEIGHT_QUICK;
    cluster_pull();
    cluster_check_done();
}

static void
on_unblocked(redisAsyncContext *ac, void *reply, void *arg)
{
    cl.unblocking = 0;
}

/* End the XREADGROUP blocked on the work stream, if one is: it answers
 * what it has (nothing, or entries that came just before). */
static void
unblock_pull(void)
{
    if (!cl.pulling || !cl.pull_blocked || cl.unblocking || cl.work_client_id <= 0)
        return;
    struct redis_args a;
    redis_args_init(&a, "CLIENT");
    redis_args_str(&a, "UNBLOCK");
    redis_args_u64(&a, (uint64_t)cl.work_client_id);
    if (cluster_command(&cl.cmd, on_unblocked, NULL, &a) == 0)
        cl.unblocking = 1;
}

/* Prioritized items may be waiting: pull by script from now on, and end
 * the XREADGROUP blocked on the work stream, if one is. */
void
cluster_prio_wake(void)
{
    cl.prio_waiting = 1;
    cl.wakes++;
    if (!cl.pulling)
        cluster_pull();
    else
        unblock_pull();
}

/* Before, the XREADGROUP sent before the drain blocked on until its
 * timeout and took what was accepted meanwhile (by this instance's calls
 * under way as by any other): the drain had released its workers, and
 * that item waited here for shutdown_timeout, to be handed back then.
 * Now it ends at once, and a drain keeps its workers (and an upgrade's
 * handover waits) while cluster_taking() says items may still come. */
void
cluster_drain(void)
{
    unblock_pull();
}

int
cluster_taking(void)
{
    return cl.enabled && (cl.pulling || cl.claiming || cl.taking);
}

void
cluster_on_pull_timer(evutil_socket_t fd, short what, void *arg)
{
    cl.pull_paused = 0;
    cluster_prio_wake();
}

/* Local room may have appeared: take more items from Redis. */
void
cluster_pull(void)
{
    if (!cl.enabled || !cl.up || cl.failing || cl.pulling || gp.draining || gp.stopping)
        return;
    uint32_t room = store_local_room(), unit = cl.pull_unit ? cl.pull_unit : ITEM_WEIGHT_FULL;
    if (room < unit)
        return;
    uint32_t count = room / unit;
    if (count > PULL_MAX)
        count = PULL_MAX;
    struct redis_args a;
    if (cl.prio_waiting && !cl.pull_paused) {
        redis_args_init(&a, "EVALSHA");
        redis_args_str(&a, cl.sha[SCRIPT_PULL]);
        redis_args_str(&a, "4");
        redis_args_str(&a, cl.key_work);
        redis_args_str(&a, cl.key_pwork);
        redis_args_str(&a, cl.key_prio);
        redis_args_str(&a, cl.key_latest);
        redis_args_str(&a, CLUSTER_GROUP);
        redis_args_str(&a, cl.consumer);
        redis_args_u64(&a, count);
        redis_args_str(&a, cl.key_item_prefix);
        redis_args_u64(&a, room);
        redis_args_u64(&a, ITEM_WEIGHT_QUICK);
        redis_args_u64(&a, ITEM_WEIGHT_FULL);
        redis_args_u64(&a, unit);
        if (cluster_command(&cl.cmd, on_pulled_by_script, NULL, &a) == 0) {
            cl.pulling = 1;
            cl.pull_blocked = 0;
            cl.wakes_at_pull = cl.wakes;
        }
        return;
    }
    /* The guess from the items lately taken holds while a backlog streams
     * in. Out of one (this read may block until new entries come), take no
     * more than full items would fill: a few items accepted together, the
     * first after a quiet spell, spread over the idle instances instead of
     * all going to the first one that reads. */
    if (!cl.pull_backlog && count > room / ITEM_WEIGHT_FULL)
        count = room / ITEM_WEIGHT_FULL > 0 ? room / ITEM_WEIGHT_FULL : 1;
    redis_args_init(&a, "XREADGROUP");
    redis_args_str(&a, "GROUP");
    redis_args_str(&a, CLUSTER_GROUP);
    redis_args_str(&a, cl.consumer);
    redis_args_str(&a, "COUNT");
    redis_args_u64(&a, count);
    redis_args_str(&a, "BLOCK");
    redis_args_str(&a, BLOCK_MS);
    redis_args_str(&a, "STREAMS");
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, ">");
    if (cluster_command(&cl.work, on_pulled, NULL, &a) == 0) {
        cl.pulling = 1;
        cl.pull_blocked = 1;
        cl.pull_count = count;
    }
}

/* ---- leases -------------------------------------------------------------- */

/* The arguments before the ids in a renew command. */
#define RENEW_FIXED 6

/*
 * The entries a renewal found no longer ours: another instance took them
 * over (we were stopped past our lease), or they ended there. A copy that
 * still waits here is left to that instance instead of running for
 * nothing (its updates would be dropped as superseded); one at a worker
 * runs on. Should the entry come back to us, a claim takes it afresh.
 */
static void
on_renewed(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type != REDIS_REPLY_ARRAY) {
        log_error("cluster: renewing our items failed: %s",
                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        return;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        uint64_t key = e->type == REDIS_REPLY_STRING ? cluster_entry_key(e->str, e->len) : 0;
        struct item *item = key != 0 ? store_held(key) : NULL;
        if (item == NULL)
            continue;
        char id[300];
        utf8_escape(id, sizeof id, item->id);   /* before store_lost() frees it */
        if (store_lost(item))
            log_notice("cluster: item \"%s\", which another instance took over while it "
                       "waited here, is left to it", id);
    }
}

/* A script on one work stream as our consumer: EVALSHA SHA 1 STREAM GROUP
 * CONSUMER, the script's own arguments to follow. */
static void
stream_script_start(struct redis_args *a, enum script script, const char *stream)
{
    redis_args_init(a, "EVALSHA");
    redis_args_str(a, cl.sha[script]);
    redis_args_str(a, "1");
    redis_args_str(a, stream);
    redis_args_str(a, CLUSTER_GROUP);
    redis_args_str(a, cl.consumer);
}

/* A renew command for the entries of STREAM (work or pwork). */
static void
renew_start(struct redis_args *a, const char *stream)
{
    stream_script_start(a, SCRIPT_RENEW, stream);
}

/* Send the ids gathered in A, if any, and start over. */
static void
renew_flush(struct redis_args *a)
{
    if (a->argc > RENEW_FIXED)
        cluster_command(&cl.cmd, on_renewed, NULL, a);
    renew_start(a, a->argv[3]);     /* KEYS[1]: still valid, cl's */
}

/* ARG: two commands, for work and for pwork. */
static void
renew_one(const struct item *item, void *arg)
{
    struct redis_args *a = (struct redis_args *)arg + (item->key & PWORK_BIT ? 1 : 0);
    cluster_entry_arg(a, item->key);
    if (a->argc == RENEW_FIXED + RENEW_CHUNK)
        renew_flush(a);
}

static void
on_lease_published(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (r != NULL && r->type == REDIS_REPLY_ERROR && !cl.shutting_down)
        log_error("cluster: publishing our lease in %s failed: %s", cl.key_lease, r->str);
}

/* Tell the claimers our lease ({NAME}:lease:CONSUMER), after the renewals
 * of what we hold (on the same connection: a shorter lease is announced
 * only once everything we hold was renewed under it); it lives two leases,
 * renewed with every renewal. */
static void
publish_lease(void)
{
    uint64_t lease = cl.set.lease_ms;
    struct redis_args a;
    redis_args_init(&a, "SET");
    redis_args_str(&a, cl.key_lease);
    redis_args_u64(&a, lease);
    redis_args_str(&a, "PX");
    redis_args_u64(&a, 2 * lease);
    cluster_command(&cl.cmd, on_lease_published, NULL, &a);
}

void
cluster_on_renew_timer(evutil_socket_t fd, short what, void *arg)
{
    static struct redis_args a[2];  /* static: too big for the stack to be worth it */
    renew_start(&a[0], cl.key_work);
    renew_start(&a[1], cl.key_pwork);
    store_for_each(renew_one, a);
    renew_flush(&a[0]);
    renew_flush(&a[1]);
    publish_lease();
}

/*
 * A claim gave us an entry, counting DELIVERIES, whose item we still hold
 * (ITEM, a copy that runs or waits here), from another instance that had
 * taken it over from us (we were stopped past our lease while our
 * blocked read was given it, or while we ran it) and stopped renewing it
 * in turn. Its attempt ended like any taken over (RETRYING naming it;
 * none if it was waiting its backoff, as its holder said RETRYING then)
 * and our copy goes on as the attempt the entry counts (its updates
 * check it: cluster_entry_count()), saying STARTED again if it runs; at the last
 * attempt it goes on as that one. A cancel asked of that holder applies
 * to our copy. Before, our copy's final was dropped as superseded and the
 * item ran once more after the lease.
 */
static void
adopt_claimed(struct item *item, uint32_t deliveries, const struct claim *claim,
              const char *cancel_reason)
{
    char error[600];
    if (claim->waiting) {
        item->attempt = deliveries;
        item->claimed_past_max = 0;
        /* The holder had it wait a backoff: a copy waiting here waits the rest. */
        uint64_t due_ns = claim_due_ns(claim);
        if (due_ns > item->due_ns) {
            item->due_ns = due_ns;
            store_retime(item);
        }
    } else {
        (void)claimed_attempt(item, deliveries, claim, error, sizeof error);
    }
    cl.claimed++;
    char id[300];
    log_notice("cluster: item \"%s\", which instance %.200s stopped renewing, runs on here "
               "as attempt %u (the copy we were given before it took the item over)",
               utf8_escape(id, sizeof id, item->id), claim->previous, item->attempt);
    if (item->started && !item->started_unsent) {
        struct outcome started = { .state = STATE_STARTED,
                                   .worker_pid = store_worker_pid(item) };
        cluster_publish(item, &started);
    } else {
        store_reattempt(item);  /* its handler is told the attempt it now is */
    }
    if (cancel_reason != NULL) {
        cluster_remember_cancel(item->key, cancel_reason);
        cluster_apply_pending_cancel(item->key);
    }
}

static void
on_claimed(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.claiming = 0;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type != REDIS_REPLY_ARRAY) {
        log_error("cluster: claiming the items of lost instances failed: %s",
                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        cluster_check_done();
        return;
    }
    cl.taking = 1;
    size_t claimed = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 5 ||
            e->element[0]->type != REDIS_REPLY_STRING ||
            e->element[2]->type != REDIS_REPLY_INTEGER ||
            e->element[3]->type != REDIS_REPLY_STRING ||
            e->element[4]->type != REDIS_REPLY_INTEGER)
            continue;
        uint64_t key = cluster_entry_key(e->element[0]->str, e->element[0]->len);
        char reason[CONTROL_REASON_MAX + 1];
        const char *cancel = NULL;
        if (e->elements >= 6 && e->element[5]->type == REDIS_REPLY_STRING && key != 0) {
            snprintf(reason, sizeof reason, "%.*s", (int)e->element[5]->len, e->element[5]->str);
            cancel = utf8_valid(reason, strlen(reason)) ? reason : "";
        }
        struct claim claim = { .previous = e->element[3]->str,
                               .idle_ms = (uint64_t)e->element[4]->integer };
        if (e->elements >= 7 && redis_reply_u64(e->element[6], 15, &claim.due_ms) == -1)
            claim.due_ms = 0;   /* none (or not a time): at once */
        claim.waiting = e->elements >= 8 && e->element[7]->type == REDIS_REPLY_INTEGER &&
                        e->element[7]->integer == 1;
        if (e->elements >= 9 && e->element[8]->type == REDIS_REPLY_STRING)
            log_warn("cluster: %.*s: the item taken over runs without it (no cancel asked "
                     "of its holder, no retry's due time)",
                     (int)(e->element[8]->len < 400 ? e->element[8]->len : 400),
                     e->element[8]->str);
        long long count = e->element[2]->integer;
        uint32_t deliveries = count > 0 && count < UINT32_MAX ? (uint32_t)count : 1;
        /* Ours (our renewal came late): script_claim kept its count. */
        int ours = strcmp(claim.previous, cl.consumer) == 0;
        struct item *held = key != 0 ? store_held(key) : NULL;
        if (held != NULL) {
            if (!ours)
                adopt_claimed(held, deliveries, &claim, cancel);
            else if (cluster_entry_count(held) != deliveries)
                set_count(key, cluster_entry_count(held));  /* never seen: our copy's holds */
            continue;   /* ours, renewed late: our copy runs on */
        }
        /* Ours, and its final or retry is on its way (we were stopped
         * as it ended): if it lands, the entry goes; if not, the next
         * claim takes it. (Another's: that final will be dropped as
         * superseded, and the item runs again.) */
        if (ours && key != 0 && cluster_ending_holds(key))
            continue;
        if (ours && !claim.waiting && key != 0)
            set_count(key, ++deliveries);   /* we lost what we were given: one delivery */
        if (cancel != NULL)
            cluster_remember_cancel(key, cancel);
        redisReply entry = { .type = REDIS_REPLY_ARRAY, .elements = 2, .element = e->element };
        take_entry(&entry, deliveries, &claim);
        claimed++;
    }
    cl.taking = 0;
    if (claimed > 0)
        log_notice("cluster: took over %zu items from instances that stopped renewing them",
                   claimed);
    if (r->elements >= CLAIM_COUNT)
        event_active(cl.claim_timer, EV_TIMEOUT, 0);   /* more are waiting */
    cluster_check_done();
}

static void trim(void);

/* A trim that forgot all it looked at goes on at once: the age is applied
 * only here, and a lease/2 between trims fell behind any busy cluster. */
static void
on_trimmed(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.trimming = 0;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        log_error("cluster: forgetting the finals past items.retention failed: %s", r->str);
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
        cluster_log_bad_counts(r->element[0], r->element[1]);
        if (r->element[2]->type == REDIS_REPLY_INTEGER && r->element[2]->integer == 1)
            trim();
    }
}

/* Finals that aged out (and, while none ended, those past the count or
 * the bytes: the trim of every final does the rest). One chain at a time:
 * the timer does not start another while one goes on. */
static void
trim(void)
{
    if (cl.trimming)
        return;
    struct redis_args a;
    redis_args_init(&a, "EVALSHA");
    redis_args_str(&a, cl.sha[SCRIPT_TRIM]);
    redis_args_str(&a, "8");
    for (int i = 0; i < 5; i++)
        redis_args_str(&a, cl.key_work);    /* only KEYS[6..8] are used */
    redis_args_str(&a, cl.key_items);
    redis_args_str(&a, cl.key_finals);
    redis_args_str(&a, cl.key_finals_bytes);
    cluster_retention_args(&a);
    if (cluster_command(&cl.cmd, on_trimmed, NULL, &a) == 0)
        cl.trimming = 1;
}

static void
on_counted(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    intptr_t which = (intptr_t)arg;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type == REDIS_REPLY_INTEGER && r->integer >= 0)
        cl.known[which] = (uint64_t)r->integer;
    else if (r->type == REDIS_REPLY_STRING)
        (void)redis_reply_u64(r, 19, &cl.known[which]);    /* not a count: the last stands */
    else if (r->type == REDIS_REPLY_NIL)
        cl.known[which] = 0;
}

void
cluster_on_claim_timer(evutil_socket_t fd, short what, void *arg)
{
    if (cl.claiming || gp.draining || gp.stopping)
        return;     /* a leaving instance leaves them to the others */
    struct redis_args a;
    redis_args_init(&a, "EVALSHA");
    redis_args_str(&a, cl.sha[SCRIPT_CLAIM]);
    redis_args_str(&a, "2");
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, cl.key_pwork);
    redis_args_str(&a, CLUSTER_GROUP);
    redis_args_str(&a, cl.consumer);
    redis_args_u64(&a, cl.set.lease_ms);
    redis_args_u64(&a, CLAIM_COUNT);
    redis_args_str(&a, cl.key_item_prefix);
    redis_args_u64(&a, (uint64_t)clock_wall_ns() / 1000000);
    redis_args_str(&a, cl.key_lease_prefix);
    if (cluster_command(&cl.cmd, on_claimed, NULL, &a) == 0)
        cl.claiming = 1;
    trim();
    /* The known items, for /status and /metrics. */
    static const char *const count_cmd[3] = { "ZCARD", "LLEN", "GET" };
    const char *count_key[3] = { cl.key_items, cl.key_finals, cl.key_finals_bytes };
    for (intptr_t i = 0; i < 3; i++) {
        redis_args_init(&a, count_cmd[i]);
        redis_args_str(&a, count_key[i]);
        cluster_command(&cl.cmd, on_counted, (void *)i, &a);
    }
}

/* ---- capacity ------------------------------------------------------------ */

uint64_t
cluster_outstanding(void)
{
    return cl.xlen + (cl.accepts_sent - cl.accepts_at_poll);
}

/* Room for one more item in the shared queue (queue.capacity)? */
int
cluster_has_room(void)
{
    return cluster_outstanding() < gp.config->queue.capacity;
}

static void
on_polled(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    uint64_t *at = arg;
    cl.polling = 0;
    if (r != NULL && !cl.shutting_down && r->type == REDIS_REPLY_INTEGER && r->integer >= 0) {
        cl.xlen = (uint64_t)r->integer;
        cl.accepts_at_poll = *at;
        if (cluster_has_room())
            store_room_available();
    }
    free(at);
}

void
cluster_on_poll_timer(evutil_socket_t fd, short what, void *arg)
{
    if (cl.polling || submit_active() == 0)
        return;
    /* The reply counts every accept sent before it on this connection. */
    uint64_t *at = ds_malloc(sizeof *at);
    *at = cl.accepts_sent;
    struct redis_args a;
    redis_args_init(&a, "EVALSHA");
    redis_args_str(&a, cl.sha[SCRIPT_SIZE]);
    redis_args_str(&a, "4");
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, cl.key_pwork);
    redis_args_str(&a, cl.key_delayed);
    redis_args_str(&a, cl.key_prio);
    if (cluster_command(&cl.cmd, on_polled, at, &a) == 0)
        cl.polling = 1;
    else
        free(at);
}

/* ---- delayed items -------------------------------------------------------- */

/*
 * One timer per instance, set to the earliest due time it knows: of the
 * delayed items it accepted, of those whose QUEUED update it read (every
 * instance reads them all), and the earliest still in {NAME}:delayed as
 * the last due script saw it; never further than DUE_POLL_MS. When it
 * fires, the due script moves what is due on. Every instance does this, so
 * a delayed item outlives the instance that accepted it.
 */
void
cluster_arm_due(int64_t due_ms)
{
    if (!cl.enabled || cl.due_timer == NULL)
        return;
    int64_t now = (int64_t)(clock_wall_ns() / 1000000);
    if (due_ms > now + DUE_POLL_MS)
        due_ms = now + DUE_POLL_MS;
    if (cl.due_at_ms != 0 && cl.due_at_ms <= due_ms)
        return;
    cl.due_at_ms = due_ms;
    struct timeval tv = clock_timeval_ms(due_ms > now ? (uint64_t)(due_ms - now) : 0);
    evtimer_add(cl.due_timer, &tv);
}

static void
on_due(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.due_running = 0;
    if (r == NULL || cl.shutting_down)
        return;
    int64_t now = (int64_t)(clock_wall_ns() / 1000000);
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER) {
        log_error("cluster: moving the delayed items that are due failed: %s",
                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        if (cluster_is_error(r, "NOSCRIPT"))
            cluster_session_fail("redis forgot our scripts (SCRIPT FLUSH?)");
        cluster_arm_due(now + DUE_POLL_MS);
        return;
    }
    char tail[200];
    snprintf(tail, sizeof tail, "; taken out of %s, it waits no more (cancel it, or repair "
             "its hash and put it back)", cl.key_delayed);
    cluster_log_bad_items(r->element[3], "cannot run", tail);
    if (r->element[1]->integer)
        cluster_prio_wake();        /* (the control stream's wake reaches the others) */
    else if (r->element[0]->integer > 0)
        cluster_pull();
    /* The earliest score left in {NAME}:delayed ("-1": none), a due time
     * in unix ms; anything else (inf, 1e+20: written by hand) is never due:
     * polled as usual, not read as 0 (at once, again and again). */
    const redisReply *nx = r->element[2];
    uint64_t next = 0;
    if (nx->type == REDIS_REPLY_INTEGER && nx->integer >= 0) {
        cluster_arm_due(nx->integer);
    } else if (redis_reply_u64(nx, 15, &next) == 0) {
        cluster_arm_due((int64_t)next);
    } else {
        static char warned[40];     /* the last score warned of: once each */
        char score[40] = "(not a string)";
        if (nx->type == REDIS_REPLY_STRING)
            snprintf(score, sizeof score, "%.*s", (int)(nx->len < 32 ? nx->len : 32), nx->str);
        if (strcmp(score, "-1") != 0 && strcmp(score, warned) != 0) {
            log_warn("cluster: %s holds a member whose score %s is not a due time (unix ms): "
                     "it never runs; remove it (ZREM)", cl.key_delayed, score);
            snprintf(warned, sizeof warned, "%s", score);
        }
        cluster_arm_due(now + DUE_POLL_MS);
    }
}

void
cluster_on_due_timer(evutil_socket_t fd, short what, void *arg)
{
    cl.due_at_ms = 0;
    if (cl.due_running || !cl.up || cl.failing)
        return;     /* its reply, or session_up(), sets the timer again */
    struct redis_args a;
    redis_args_init(&a, "EVALSHA");
    redis_args_str(&a, cl.sha[SCRIPT_DUE]);
    redis_args_str(&a, "5");
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, cl.key_delayed);
    redis_args_str(&a, cl.key_prio);
    redis_args_str(&a, cl.key_control);
    redis_args_str(&a, cl.key_latest);
    redis_args_u64(&a, clock_wall_ns() / 1000000);
    redis_args_str(&a, cl.key_item_prefix);
    redis_args_u64(&a, DUE_COUNT);
    if (cluster_command(&cl.cmd, on_due, NULL, &a) == 0)
        cl.due_running = 1;
}

/* ---- a graceful stop's deadline ---------------------------------------------------- */

static void
on_handed_back(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.handing_back--;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer > 0)
        log_info("cluster: %lld items waiting here handed back to the other instances at "
                 "their attempt", r->integer);
    else if (r != NULL && r->type == REDIS_REPLY_ERROR)
        log_error("cluster: handing back the items waiting here failed: %s; the other "
                  "instances take them over after the lease", r->str);
    else if (r == NULL)
        log_error("cluster: handing back the items waiting here got no answer (the connection "
                  "to redis is gone); unless it ran, the other instances take them over after "
                  "the lease");
    grpc_process_check_done();
}

static void
hand_back_start(struct redis_args *a, const char *stream)
{
    stream_script_start(a, SCRIPT_HAND_BACK, stream);
    redis_args_str(a, cl.key_item_prefix);
}

static void
hand_back_send(struct redis_args *a)
{
    if (cluster_command(&cl.cmd, on_handed_back, NULL, a) == 0)
        cl.handing_back++;
}

/* One pass of cluster_hand_back() over the items waiting now: how many
 * it took out of the queue (*SENT: how many of them it handed back). */
static size_t
hand_back_pass(size_t *sent)
{
    struct item **items = NULL, *item;
    size_t n = 0, cap = 0;
    while ((item = store_take_waiting()) != NULL) {
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            items = ds_realloc(items, cap * sizeof *items);
        }
        items[n++] = item;
    }
    /* The arguments point into the items: sent (copied) before they go. */
    struct redis_args a[2];
    size_t in[2] = { 0, 0 };
    hand_back_start(&a[0], cl.key_work);
    hand_back_start(&a[1], cl.key_pwork);
    for (size_t i = 0; i < n; i++) {
        /* A copy kept at its last attempt past max_attempts (adopt_claimed)
         * is left to the lease: a claim at its count would run it past. */
        if (items[i]->key == 0 || items[i]->claimed_past_max)
            continue;
        int s = items[i]->key & PWORK_BIT ? 1 : 0;
        cluster_entry_arg(&a[s], items[i]->key);
        redis_args_u64(&a[s], cluster_entry_count(items[i]));
        redis_args_str(&a[s], items[i]->id);
        (*sent)++;
        if (++in[s] == HAND_BACK_CHUNK) {
            hand_back_send(&a[s]);
            in[s] = 0;
            hand_back_start(&a[s], s ? cl.key_pwork : cl.key_work);
        }
    }
    for (int s = 0; s < 2; s++)
        if (in[s] > 0)
            hand_back_send(&a[s]);
    for (size_t i = 0; i < n; i++)
        store_dropped(items[i]);
    free(items);
    return n;
}

/*
 * The items waiting here (never started here: not given to a worker) leave
 * this process, and their entries go back to the other instances at the
 * count they have, for their next claim pass (script_hand_back): before,
 * they were taken over only after the lease, each as one more attempt, so
 * that an item stopped this way at every deploy could end FAILED without
 * ever running. Those at a worker stay pending here: taken over after the
 * lease (one may have started).
 */
void
cluster_hand_back(void)
{
    if (!cl.up || cl.failing || cl.cmd.ac == NULL) {
        /* No session: they are taken over after the lease. Said, since the
         * docs promise them back at once. */
        if (store_count() > 0)
            log_warn("cluster: no Redis session at the deadline: nothing can be handed back; "
                     "the other instances take the %llu items here over after the lease "
                     "(%llu ms), each as its next attempt", (unsigned long long)store_count(),
                     (unsigned long long)cl.set.lease_ms);
        return;
    }
    /* This turn's RETRYINGs first: the script compares the counts. */
    cluster_flush_updates();
    size_t sent = 0;
    /* Again while a pass took some: dropping a merge's leader queues the
     * items merged into it (merge.c). */
    while (hand_back_pass(&sent) > 0)
        ;
    if (sent > 0)
        log_notice("cluster: handing %zu items waiting here back to the other instances",
                   sent);
}

int
cluster_handing_back(void)
{
    return cl.handing_back > 0;
}
