/*
 * The handover of a binary upgrade (USR2). The new master sends QUIT to the
 * old one once it serves; the old master tells its grpc process that this
 * drain is an upgrade's, and the grpc process hands the items still waiting
 * in its queue (not yet given to a worker) to the new instance, as an
 * ordinary client of the new instance's listener: doSomething calls of the
 * WorkItems as their clients sent them, with the ids they were given.
 * The items it holds on its workers it finishes itself. The submit calls
 * under way are read to their end: what they bring after the first look
 * (and, in cluster mode, what a pull still in flight takes) is handed over
 * as it comes, or given to a worker kept here until nothing more can come;
 * never left waiting for shutdown_timeout.
 *
 * Why a gRPC call: the new instance accepts them through its own front door
 * (validation, queue.capacity and its backpressure, its journal if any),
 * with nothing new to keep compatible between two versions but the public
 * contract; a handover file would need the new instance to look for it
 * while it already serves, and the two masters share no channel.
 *
 * An item leaves this instance only once the new one's SubmitReply counts
 * it as accepted: it is then published RETRYING here ("handed over ...";
 * its updates continue on the new instance, under the same id) and, with a
 * journal, its FINAL is written without a final update; so does one it
 * counts as a duplicate (it knows it already, from a call cut after it took
 * it). An item the new instance rejects comes back to the front of this
 * queue and runs here: it is not sent again (it is kept, item->kept_here,
 * where the next calls' take does not walk it). The items of a call that fails
 * come back too, and are sent again: a call is retried a few times; a crash between the new instance's accept and our FINAL runs
 * the item twice (at-least-once), never zero times. Calls carry at most
 * HANDOVER_BATCH items, so that the reply names every rejection (submit.c
 * lists 1000).
 *
 * Without a plain-text listener (grpc.tls on) there is no handover: the
 * drain runs the items here, and what shutdown_timeout leaves is FAILED,
 * or with queue.journal taken over by the new instance from the journal.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "grpc/call.h"
#include "grpc/grpc_process.h"
#include "grpc/handover.h"
#include "grpc/item.h"
#include "grpc/queue.h"
#include "grpc/store.h"

#define HANDOVER_BATCH      1000
#define HANDOVER_CALL_MS    10000
#define HANDOVER_RETRY_MS   200
#define HANDOVER_TRIES      20
#define HANDOVER_METHOD     "/com.agrounds.dosomething.v1.DoSomethingService/doSomething"
#define HANDOVER_NOTE       "handed over to the new instance of a binary upgrade; its " \
                            "updates continue there"

/* A set of item keys: open addressing, linear probing; 0 is free (keys
 * start at 1), KEYSET_REMOVED a removed entry. Owned by ho, freed by
 * keyset_free() at the handover's end. */
struct keyset {
    uint64_t *keys;
    size_t size, used, count;
};

#define KEYSET_REMOVED UINT64_MAX

static struct {
    int started;
    int cancelled;
    char target[512];
    grpc_channel *channel;
    grpc_call *call;            /* NULL: none in flight */
    struct item *items[HANDOVER_BATCH];
    uint32_t count, sent;
    grpc_byte_buffer *send_buffer;
    grpc_byte_buffer *reply;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code status;
    grpc_slice details;
    struct tag send_tag, recv_tag;
    int sending, receiving;
    int waiting;                /* nothing to send, but items may still come: see next_call() */
    unsigned failures;
    struct event *retry_timer;
    uint64_t handed;            /* items the new instance took (each leaves once) */
    int ended;                  /* the summary is logged */
    /* The items given back (by a rejection or a failed call) and not
     * handed over since, so that an item given back and sent again counts
     * once. Those the new instance rejected are not sent again (they run
     * here: call after call resending them was a busy loop): they are kept
     * (store_keep_here), and wait where store_take_sendable() does not
     * look, so that no call walks past them (each did, at the front of the
     * queue: quadratic with many). */
    struct keyset back;
} ho;

static void next_call(void);

static size_t
keyset_slot(const struct keyset *set, uint64_t key)
{
    size_t mask = set->size - 1, i = (size_t)(key * 0x9E3779B97F4A7C15ull) & mask;
    size_t removed = set->size;
    while (set->keys[i] != 0 && set->keys[i] != key) {
        if (set->keys[i] == KEYSET_REMOVED && removed == set->size)
            removed = i;
        i = (i + 1) & mask;
    }
    return set->keys[i] == 0 && removed != set->size ? removed : i;
}

static void
keyset_add(struct keyset *set, uint64_t key)
{
    if (key == 0 || key == KEYSET_REMOVED)
        return;     /* not a key item.c hands out */
    if ((set->used + 1) * 2 > set->size) {
        uint64_t *old = set->keys;
        size_t old_size = set->size;
        set->size = old_size == 0 ? 1024 : set->count * 4 > old_size ? old_size * 2 : old_size;
        set->keys = ds_calloc(set->size, sizeof *set->keys);
        set->used = set->count = 0;
        for (size_t i = 0; i < old_size; i++)
            if (old[i] != 0 && old[i] != KEYSET_REMOVED)
                keyset_add(set, old[i]);
        free(old);
    }
    size_t i = keyset_slot(set, key);
    if (set->keys[i] == key)
        return;
    if (set->keys[i] == 0)
        set->used++;
    set->keys[i] = key;
    set->count++;
}

/* Where KEY is in SET, or SIZE if it is not. */
static size_t
keyset_find(const struct keyset *set, uint64_t key)
{
    if (set->size == 0 || key == 0 || key == KEYSET_REMOVED)
        return set->size;
    size_t mask = set->size - 1, i = (size_t)(key * 0x9E3779B97F4A7C15ull) & mask;
    while (set->keys[i] != 0) {
        if (set->keys[i] == key)
            return i;
        i = (i + 1) & mask;
    }
    return set->size;
}

static void
keyset_remove(struct keyset *set, uint64_t key)
{
    size_t i = keyset_find(set, key);
    if (i != set->size) {
        set->keys[i] = KEYSET_REMOVED;
        set->count--;
    }
}

static int
keyset_has(const struct keyset *set, uint64_t key)
{
    return keyset_find(set, key) != set->size;
}

static void
keyset_free(struct keyset *set)
{
    free(set->keys);
    memset(set, 0, sizeof *set);
}

/* Waiting here (not at a worker) and never given back: not sent at all. */
static void
count_unsent(const struct item *item, void *arg)
{
    if (item->worker == NULL && !keyset_has(&ho.back, item->key))
        (*(uint64_t *)arg)++;
}

/* The handover is over, whichever way (every item sent, calls that kept
 * failing, a cancel, the process's end): one line with each item counted
 * once. Kept here: given back and not handed over since (they run here, or
 * ran), and those still waiting that were never sent (a handover cut
 * short). */
static void
log_summary(void)
{
    if (!ho.started || ho.ended || ho.channel == NULL)
        return;
    ho.ended = 1;
    uint64_t unsent = 0;
    queue_for_each(count_unsent, &unsent);
    log_notice("handover: %llu items handed over to the new instance at %s, %llu kept here "
               "(%llu given back, %llu not sent)", (unsigned long long)ho.handed, ho.target,
               (unsigned long long)(ho.back.count + unsent), (unsigned long long)ho.back.count,
               (unsigned long long)unsent);
}

/* The new instance's address: our first listener that serves doSomething,
 * a wildcard made loopback. */
static int
target_of(char *out, size_t size)
{
    const struct ds_config *c = gp.config;
    size_t i = 0;
    while (i < c->grpc.listen_count && !(c->grpc.listen_methods[i] & DS_METHOD_DO_SOMETHING))
        i++;
    if (c->grpc.tls || i == c->grpc.listen_count)
        return -1;
    const char *listen = c->grpc.listen[i];
    if (strncmp(listen, "0.0.0.0:", 8) == 0)
        snprintf(out, size, "127.0.0.1:%s", listen + 8);
    else if (strncmp(listen, "[::]:", 5) == 0)
        snprintf(out, size, "[::1]:%s", listen + 5);
    else
        snprintf(out, size, "%s", listen);
    return 0;
}

/* ITEM's WorkItem with its id as given here: the raw message with field 1
 * (id) appended, which a decoder takes over any earlier one. */
static grpc_byte_buffer *
message_of(const struct item *item)
{
    size_t id_len = strlen(item->id), varint_len = 1;
    for (uint64_t v = id_len; v >= 0x80; v >>= 7)
        varint_len++;
    grpc_slice s = grpc_slice_malloc(item->raw_len + 1 + varint_len + id_len);
    uint8_t *p = GRPC_SLICE_START_PTR(s);
    memcpy(p, item->raw, item->raw_len);
    p += item->raw_len;
    *p++ = (1 << 3) | 2;        /* field 1, length-delimited */
    uint64_t v = id_len;
    for (; v >= 0x80; v >>= 7)
        *p++ = (uint8_t)(v | 0x80);
    *p++ = (uint8_t)v;
    memcpy(p, item->id, id_len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static void
send_next(void)
{
    if (ho.sent >= ho.count || ho.sending)
        return;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ho.send_buffer = message_of(ho.items[ho.sent]);
    ops[0].op = GRPC_OP_SEND_MESSAGE;
    ops[0].data.send_message.send_message = ho.send_buffer;
    size_t n = 1;
    if (ho.sent + 1 == ho.count)
        ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ho.sending = 1;
    call_start_batch(ho.call, ops, n, &ho.send_tag);
}

/* Every rejection's index in REPLY, as a flag per item; -1 if the reply
 * cannot be trusted (then nothing counts as handed over). An item counted
 * in duplicates is known there already (a call before this one was cut
 * after the new instance took it, or its journal brought it back): it is
 * there as much as an accepted one, and running it here too would run it
 * twice. */
static int
rejected_of(grpc_byte_buffer *reply, uint8_t *rejected)
{
    if (reply == NULL)
        return -1;
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, reply))
        return -1;
    grpc_slice slice = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    wire_submit_reply *r = wire_submit_reply_unpack(NULL, GRPC_SLICE_LENGTH(slice),
                                                    GRPC_SLICE_START_PTR(slice));
    grpc_slice_unref(slice);
    if (r == NULL)
        return -1;
    int ok = r->accepted + r->rejected + r->duplicates == ho.count &&
             r->n_rejections == r->rejected;
    for (size_t i = 0; ok && i < r->n_rejections; i++) {
        if (r->rejections[i]->index >= ho.count) {
            ok = 0;
            break;
        }
        rejected[r->rejections[i]->index] = 1;
        log_info("handover: the new instance rejected item %s: %s", r->rejections[i]->id,
                 r->rejections[i]->reason);
    }
    wire_submit_reply_free(r, NULL);
    return ok ? 0 : -1;
}

static void
on_retry_timer(evutil_socket_t fd, short what, void *arg)
{
    next_call();
}

/* The call is over (status in, nothing in flight): settle its items. */
static void
call_done(void)
{
    static uint8_t rejected[HANDOVER_BATCH];
    memset(rejected, 0, ho.count);
    int trusted = ho.status == GRPC_STATUS_OK && rejected_of(ho.reply, rejected) == 0;
    if (!trusted && ho.status == GRPC_STATUS_OK) {
        log_warn("handover: the new instance at %s answered a doSomething call of %u items "
                 "with a reply that does not account for each of them; they stay here",
                 ho.target, ho.count);
    } else if (!trusted) {
        char *details = grpc_slice_to_c_string(ho.details);
        log_warn("handover: a doSomething call to the new instance at %s failed (status %d: "
                 "%s); its %u items stay here", ho.target, (int)ho.status, details, ho.count);
        gpr_free(details);
    }
    if (!trusted) {
        memset(rejected, 1, ho.count);
        ho.failures++;
    } else {
        ho.failures = 0;
    }
    /* Accepted ones leave; the others go back to the front, last first. */
    for (uint32_t i = 0; i < ho.count; i++) {
        if (!rejected[i]) {
            keyset_remove(&ho.back, ho.items[i]->key);
            store_handed_over(ho.items[i], HANDOVER_NOTE);
            ho.handed++;
        }
    }
    for (uint32_t i = ho.count; i-- > 0;) {
        if (rejected[i]) {
            keyset_add(&ho.back, ho.items[i]->key);
            if (trusted)
                store_keep_here(ho.items[i]);
            else
                store_give_back(ho.items[i]);
        }
    }
    if (ho.reply != NULL)
        grpc_byte_buffer_destroy(ho.reply);
    ho.reply = NULL;
    grpc_metadata_array_destroy(&ho.initial_md);
    grpc_metadata_array_destroy(&ho.trailing_md);
    grpc_slice_unref(ho.details);
    grpc_call_unref(ho.call);
    ho.call = NULL;
    ho.count = ho.sent = 0;

    if (ho.cancelled || (!trusted && ho.failures >= HANDOVER_TRIES)) {
        if (!ho.cancelled)
            log_warn("handover: giving up after %u failed calls; the items left run here",
                     ho.failures);
        log_summary();
        workers_close_all();
        grpc_process_check_done();
        return;
    }
    if (!trusted) {
        struct timeval tv = clock_timeval_ms(HANDOVER_RETRY_MS);
        evtimer_add(ho.retry_timer, &tv);
        return;
    }
    next_call();
}

static void
on_send_done(struct tag *tag, int ok)
{
    ho.sending = 0;
    grpc_byte_buffer_destroy(ho.send_buffer);
    ho.send_buffer = NULL;
    if (ok) {
        ho.sent++;
        send_next();
    } else {
        ho.sent = ho.count;     /* the call failed: its status says how */
    }
    if (!ho.sending && !ho.receiving)
        call_done();
}

static void
on_recv_done(struct tag *tag, int ok)
{
    ho.receiving = 0;
    if (!ho.sending)
        call_done();
}

/* One call with the next waiting items, if any. With none, the handover
 * is over unless items may still come (grpc_process_items_may_come(): a
 * submit call under way, an accept still being written, a pull from Redis
 * in flight): it then waits for them (ho.waiting; handover_poll() looks
 * again), so that an item accepted after the first look is handed over at
 * once too, or runs on a worker kept here meanwhile, instead of waiting
 * for shutdown_timeout on a process whose workers were released. */
static void
next_call(void)
{
    if (ho.call != NULL || ho.cancelled)
        return;
    ho.waiting = 0;
    struct item *item;
    while (ho.count < HANDOVER_BATCH && (item = store_take_sendable()) != NULL)
        ho.items[ho.count++] = item;
    if (ho.count == 0 && !gp.stopping && grpc_process_items_may_come()) {
        ho.waiting = 1;
        return;
    }
    if (ho.count == 0) {
        log_summary();
        workers_close_all();    /* those holding nothing were kept for a give-back */
        grpc_process_check_done();
        return;
    }
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(HANDOVER_CALL_MS, GPR_TIMESPAN));
    grpc_slice method = grpc_slice_from_static_string(HANDOVER_METHOD);
    ho.call = grpc_channel_create_call(ho.channel, NULL, GRPC_PROPAGATE_DEFAULTS, gp.cq, method,
                                       NULL, deadline, NULL);
    grpc_metadata_array_init(&ho.initial_md);
    grpc_metadata_array_init(&ho.trailing_md);
    ho.details = grpc_empty_slice();
    ho.sent = 0;

    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    /* The new instance is up (it sent QUIT), but our own listener may still
     * be closing on the same port: wait for a connection that works. */
    ops[0].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
    ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[1].data.recv_initial_metadata.recv_initial_metadata = &ho.initial_md;
    ops[2].op = GRPC_OP_RECV_MESSAGE;
    ops[2].data.recv_message.recv_message = &ho.reply;
    ops[3].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[3].data.recv_status_on_client.trailing_metadata = &ho.trailing_md;
    ops[3].data.recv_status_on_client.status = &ho.status;
    ops[3].data.recv_status_on_client.status_details = &ho.details;
    ho.receiving = 1;
    call_start_batch(ho.call, ops, 4, &ho.recv_tag);
    send_next();
}

void
handover_start(void)
{
    if (ho.started)
        return;
    ho.started = 1;
    if (target_of(ho.target, sizeof ho.target) == -1) {
        log_notice("handover: none with grpc.tls on; the waiting items run here");
        return;
    }
    grpc_arg args[3];
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_ENABLE_HTTP_PROXY;
    args[0].value.integer = 0;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
    args[1].value.integer = 100;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    args[2].value.integer = 500;
    grpc_channel_args channel_args = { .num_args = 3, .args = args };
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    ho.channel = grpc_channel_create(ho.target, creds, &channel_args);
    grpc_channel_credentials_release(creds);
    ho.send_tag.done = on_send_done;
    ho.recv_tag.done = on_recv_done;
    ho.retry_timer = evtimer_new(gp.base, on_retry_timer, NULL);
    log_notice("handover: handing %llu waiting items to the new instance at %s",
               (unsigned long long)queue_waiting(), ho.target);
    next_call();
}

void
handover_poll(void)
{
    if (ho.waiting && !ho.cancelled)
        next_call();
}

void
handover_cancel(void)
{
    if (!ho.started || ho.cancelled)
        return;
    ho.cancelled = 1;
    ho.waiting = 0;
    if (ho.retry_timer != NULL)
        evtimer_del(ho.retry_timer);
    if (ho.call != NULL)
        grpc_call_cancel(ho.call, NULL);    /* call_done() logs the summary */
    else
        log_summary();      /* between calls (a retry's wait): over now */
}

void
handover_end(void)
{
    if (ho.retry_timer != NULL)
        evtimer_del(ho.retry_timer);
    log_summary();
}

int
handover_active(void)
{
    return ho.call != NULL || (ho.waiting && !gp.stopping);     /* a fast stop waits for none */
}

void
handover_shutdown(void)
{
    handover_end();
    keyset_free(&ho.back);
    if (ho.retry_timer != NULL)
        event_free(ho.retry_timer);
    ho.retry_timer = NULL;
    if (ho.channel != NULL)
        grpc_channel_destroy(ho.channel);
    ho.channel = NULL;
}
