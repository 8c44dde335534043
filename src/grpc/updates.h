/*
 * updates.c: the update log. Every update gets the next seq, is encoded
 * once, kept in a ring of the last updates.history (and at most
 * updates.history_bytes), and handed to the listener (subscribe.c).
 *
 * Ownership: a struct update is reference counted; the ring holds one
 * reference, and whoever else keeps it (a subscriber's queue) takes one
 * with update_ref() and drops it with update_unref().
 */
#ifndef DS_GRPC_UPDATES_H
#define DS_GRPC_UPDATES_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/slice.h>

#include "core/wire.h"

struct item;
struct outcome;

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

/* SEQ_START: the last seq used before this process. */
void updates_init(uint64_t seq_start);
void updates_shutdown(void);
/* Apply a new updates.history. */
void updates_configure(void);
/* FN hears every update delivered (the subscribers). */
void updates_listen(void (*fn)(struct update *update));
/* FN hears every reservation of seqs (up to SEQ), after the master's. */
void updates_on_reserve(void (*fn)(uint64_t seq));

/* Publish one update of ITEM: the next seq (returned), to the log and the
 * listener. */
uint64_t updates_publish(const struct item *item, const struct outcome *o);
/* ITEM's update O encoded without its seq (ds_malloc'ed, *LEN bytes): for
 * a backend that numbers updates itself (Redis). */
uint8_t *updates_encode(const struct item *item, const struct outcome *o, size_t *len);
/* An update numbered elsewhere (the cluster's stream), delivered as if
 * published here: seq is the stream's. */
void updates_deliver(uint64_t seq, enum wire_state state, const uint8_t *encoded, size_t len,
                     const char *id, size_t id_len, const char *kind, size_t kind_len,
                     const char *batch, size_t batch_len);

uint64_t updates_last_seq(void);
/* The retained update with this seq, or NULL. */
struct update *updates_get(uint64_t seq);
/* The oldest seq retained (updates_last_seq() + 1 when none is). */
uint64_t updates_first_seq(void);
/* The first seq this process could use: older ones were another's. */
uint64_t updates_origin_seq(void);
/* Forget the retained updates: the next one delivered has seq LAST_SEQ + 1.
 * Seqs from ORIGIN on are this log's to judge (a replay from an evicted one
 * is refused). LOST, if not NULL, says why updates up to LAST_SEQ are
 * missing (a replay from one of them is refused with it). */
void updates_restart(uint64_t last_seq, uint64_t origin, const char *lost);
/* Why updates up to SEQ are missing, if a restart said so; else NULL. */
const char *updates_lost(uint64_t seq);

#endif
