/*
 * The update log (updates.h).
 *
 * Seqs come in chunks reserved from the master ahead of use, so a
 * respawned grpc process continues past every seq the last one could have
 * sent: seq never goes backwards.
 */
#include "grpc/updates.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/process.h"
#include "core/utf8.h"
#include "grpc/grpc_process.h"
#include "grpc/item.h"

static struct {
    struct update **ring;
    uint64_t capacity;
    uint64_t count;
    uint64_t first;             /* index of the oldest in ring */
    uint64_t last_seq;          /* the newest seq used */
    uint64_t reserved;          /* seqs up to this are reserved at the master */
    uint64_t origin;            /* the first seq this process could use */
    uint64_t bytes;             /* encoded size of what the ring holds */
    uint64_t lost_through;      /* 0, or seqs up to this were lost for lost_why */
    char lost_why[256];
    void (*listener)(struct update *u);
    void (*on_reserve)(uint64_t seq);
} log_;

struct update *
update_ref(struct update *u)
{
    u->refs++;
    return u;
}

void
update_unref(struct update *u)
{
    if (--u->refs > 0)
        return;
    grpc_slice_unref(u->encoded);
    free(u);
}

uint64_t
updates_last_seq(void)
{
    return log_.last_seq;
}

uint64_t
updates_origin_seq(void)
{
    return log_.origin;
}

uint64_t
updates_first_seq(void)
{
    return log_.last_seq - log_.count + 1;
}

struct update *
updates_get(uint64_t seq)
{
    uint64_t first = updates_first_seq();
    if (seq < first || seq > log_.last_seq)
        return NULL;
    return log_.ring[(log_.first + (seq - first)) % log_.capacity];
}

/* Reserve the next chunk of seqs before any of it is used, and write the
 * reservation now: the master must know it even if we die next. */
static void
reserve_seqs(void)
{
    if (log_.last_seq + SEQ_RESERVE_CHUNK / 2 < log_.reserved)
        return;
    log_.reserved += SEQ_RESERVE_CHUNK;
    struct ipc_seq s = { .seq = log_.reserved };
    master_send_now(IPC_SEQ_RESERVE, &s, sizeof s);
    if (log_.on_reserve != NULL)
        log_.on_reserve(log_.reserved);     /* for a restart of the whole daemon */
}

static void
ring_drop_oldest(void)
{
    struct update *old = log_.ring[log_.first];
    log_.bytes -= GRPC_SLICE_LENGTH(old->encoded);
    update_unref(old);
    log_.first = (log_.first + 1) % log_.capacity;
    log_.count--;
}

/* Keep at most updates.history updates and updates.history_bytes of them
 * (large results would otherwise hold gigabytes), but always the newest. */
static void
ring_append(struct update *u)
{
    size_t len = GRPC_SLICE_LENGTH(u->encoded);
    while (log_.count > 0 && (log_.count == log_.capacity ||
                              log_.bytes + len > gp.config->updates.history_bytes))
        ring_drop_oldest();
    log_.ring[(log_.first + log_.count) % log_.capacity] = u;
    log_.count++;
    log_.bytes += len;
}

/*
 * Every update is encoded here, so this is where the one rule for what we
 * send holds: every string valid UTF-8 (a stock client cannot parse a
 * message that holds anything else, and its stream ends). Ids, kinds and
 * batches were checked when the item was accepted; an error (a handler's,
 * a program's stderr, a module's, one we composed around a client string)
 * has every invalid byte replaced by U+FFFD, and is cut to its first
 * DS_UPDATE_ERROR_MAX bytes on a character boundary (an update must fit
 * what every client accepts, whoever wrote the error). *SANITIZED is then
 * the copy to free() after packing, else NULL.
 */
static void
message_of(wire_update *msg, const struct item *item, const struct outcome *o, char **sanitized)
{
    const char *error = o->error;
    *sanitized = error != NULL ? utf8_sanitize(error, strlen(error)) : NULL;
    if (*sanitized != NULL)
        error = *sanitized;
    if (error != NULL && strnlen(error, DS_UPDATE_ERROR_MAX + 1) > DS_UPDATE_ERROR_MAX) {
        size_t len = utf8_prefix(error, DS_UPDATE_ERROR_MAX + 1, DS_UPDATE_ERROR_MAX);
        if (*sanitized == NULL)
            *sanitized = ds_strndup(error, len);
        else
            (*sanitized)[len] = '\0';
        error = *sanitized;
    }
    wire_update_init(msg);
    msg->item_id = (char *)item->id;
    msg->kind = (char *)item->kind;
    msg->state = (Com__Agrounds__Dosomething__V1__State)o->state;
    msg->result.data = (uint8_t *)o->result;
    msg->result.len = o->result_len;
    if (error != NULL)
        msg->error = (char *)error;
    msg->progress = o->progress;
    msg->attempt = item->attempt;
    msg->worker_pid = o->worker_pid;
    msg->cpu_usec = o->cpu_usec;
    msg->max_rss_kib = o->max_rss_kib;
    msg->time_unix_nano = clock_wall_ns();
    msg->batch = (char *)item->batch;
    msg->cached = o->cached != 0;
}

/* The update's struct, its strings copied, ENCODED_LEN bytes of slice to fill. */
static struct update *
update_new(uint64_t seq, enum wire_state state, const char *id, size_t id_len, const char *kind,
           size_t kind_len, const char *batch, size_t batch_len, size_t encoded_len)
{
    struct update *u = ds_malloc(sizeof *u + id_len + kind_len + batch_len + 3);
    u->refs = 1;
    u->state = (uint8_t)state;
    u->seq = seq;
    char *p = u->strings;
    u->item_id = p;
    memcpy(p, id, id_len);
    p[id_len] = '\0';
    p += id_len + 1;
    u->kind = p;
    memcpy(p, kind, kind_len);
    p[kind_len] = '\0';
    p += kind_len + 1;
    u->batch = p;
    memcpy(p, batch, batch_len);
    p[batch_len] = '\0';
    u->encoded = grpc_slice_malloc(encoded_len);
    return u;
}

static void
deliver(struct update *u)
{
    log_.last_seq = u->seq;
    ring_append(u);
    if (log_.listener != NULL)
        log_.listener(u);
}

uint64_t
updates_publish(const struct item *item, const struct outcome *o)
{
    reserve_seqs();

    wire_update msg;
    char *sanitized;
    message_of(&msg, item, o, &sanitized);
    msg.seq = log_.last_seq + 1;
    struct update *u = update_new(msg.seq, o->state, item->id, strlen(item->id), item->kind,
                                  strlen(item->kind), item->batch, strlen(item->batch),
                                  wire_update_size(&msg));
    wire_update_pack(&msg, GRPC_SLICE_START_PTR(u->encoded));
    free(sanitized);
    deliver(u);
    return msg.seq;
}

uint8_t *
updates_encode(const struct item *item, const struct outcome *o, size_t *len)
{
    wire_update msg;
    char *sanitized;
    message_of(&msg, item, o, &sanitized);
    *len = wire_update_size(&msg);
    uint8_t *out = ds_malloc(*len + 1);
    wire_update_pack(&msg, out);
    free(sanitized);
    return out;
}

void
updates_deliver(uint64_t seq, enum wire_state state, const uint8_t *encoded, size_t len,
                const char *id, size_t id_len, const char *kind, size_t kind_len,
                const char *batch, size_t batch_len)
{
    /* Field 1 (seq, a varint) goes in front: protobuf takes fields in any order. */
    uint8_t head[11];
    size_t n = 0;
    head[n++] = 0x08;
    for (uint64_t v = seq; ; v >>= 7) {
        if (v < 0x80) {
            head[n++] = (uint8_t)v;
            break;
        }
        head[n++] = (uint8_t)(v | 0x80);
    }
    struct update *u = update_new(seq, state, id, id_len, kind, kind_len, batch, batch_len,
                                  n + len);
    memcpy(GRPC_SLICE_START_PTR(u->encoded), head, n);
    memcpy(GRPC_SLICE_START_PTR(u->encoded) + n, encoded, len);
    deliver(u);
}

void
updates_restart(uint64_t last_seq, uint64_t origin, const char *lost)
{
    while (log_.count > 0)
        ring_drop_oldest();
    log_.first = 0;
    log_.last_seq = last_seq;
    log_.origin = origin;
    if (lost != NULL) {
        log_.lost_through = last_seq;
        snprintf(log_.lost_why, sizeof log_.lost_why, "%s", lost);
    }
}

const char *
updates_lost(uint64_t seq)
{
    return log_.lost_through != 0 && seq <= log_.lost_through ? log_.lost_why : NULL;
}

void
updates_listen(void (*fn)(struct update *update))
{
    log_.listener = fn;
}

void
updates_on_reserve(void (*fn)(uint64_t seq))
{
    log_.on_reserve = fn;
}

void
updates_init(uint64_t seq_start)
{
    void (*listener)(struct update *) = log_.listener;
    void (*on_reserve)(uint64_t) = log_.on_reserve;
    memset(&log_, 0, sizeof log_);
    log_.listener = listener;
    log_.on_reserve = on_reserve;
    log_.last_seq = seq_start;
    log_.origin = seq_start + 1;
    log_.reserved = seq_start + SEQ_RESERVE_CHUNK;
    log_.capacity = gp.config->updates.history;
    log_.ring = ds_calloc(log_.capacity, sizeof *log_.ring);
}

/* A new updates.history: keep the newest that fit. */
void
updates_configure(void)
{
    uint64_t capacity = gp.config->updates.history;
    if (capacity == log_.capacity)
        return;
    struct update **ring = ds_calloc(capacity, sizeof *ring);
    while (log_.count > capacity)
        ring_drop_oldest();
    for (uint64_t i = 0; i < log_.count; i++)
        ring[i] = log_.ring[(log_.first + i) % log_.capacity];
    free(log_.ring);
    log_.ring = ring;
    log_.capacity = capacity;
    log_.first = 0;
}

void
updates_shutdown(void)
{
    for (uint64_t i = 0; i < log_.count; i++)
        update_unref(log_.ring[(log_.first + i) % log_.capacity]);
    free(log_.ring);
    memset(&log_, 0, sizeof log_);
}
