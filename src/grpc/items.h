/*
 * items.c: the index of known items, keyed by id. An item is known from
 * its acceptance (while the backend writes it, too: a resend in the same
 * call is a duplicate) until items.retention forgets it after its final
 * state. Finals are forgotten oldest final first, when the count, the age
 * or the bytes bound is passed; live items are never forgotten.
 *
 * Fed by store.c only (accept, every published update with its seq, the
 * rejection of a pending accept, an item no longer ours), so that every
 * path (submit, retry, journal recovery, handover) goes through one place;
 * a backend that keeps finals durably restores them with
 * items_restore_final(). Read by get_items.c, retry.c, submit.c (duplicates),
 * metrics and status.
 *
 * Ownership: items.c allocates and frees every struct known_item; a
 * pointer returned by items_find() or handed to a callback is valid until
 * the next call that feeds the index (do not keep it across the loop).
 * items.c knows no gRPC and no config: the grpc process passes the bounds.
 */
#ifndef DS_GRPC_ITEMS_H
#define DS_GRPC_ITEMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/wire.h"

struct event_base;
struct item;
struct outcome;

/* Error, result and raw WorkItem of a known item, when it has any: one
 * allocation, replaced whole. */
struct known_extra {
    uint32_t error_len;         /* 0: none */
    uint32_t result_len;        /* SUCCEEDED */
    uint32_t raw_len;           /* FAILED, CANCELLED: what retry runs again */
    uint8_t data[];             /* error \0, result, raw */
};

/* One known item. Kept small: a million retained finals are a million of
 * these (see README, "Known items"). */
struct known_item {
    struct known_extra *extra;  /* NULL: no error, result or raw */
    /* Unix nano, unique and increasing in acceptance order (two items
     * accepted in the same nanosecond are 1 ns apart): the listing's key.
     * A retry keeps it. */
    int64_t accepted_ns;
    int64_t started_ns;         /* of the latest attempt; 0: not started */
    int64_t finished_ns;        /* 0: not final */
    uint64_t last_seq;
    int32_t worker_pid;         /* while running */
    int32_t priority;
    /* What its latest attempt that ran cost (items_cpu_usec(), KiB): 32
     * bits each, and progress in 16, which keeps the entry of a 16-byte id
     * and no trace in the 96-byte malloc size class (measure_items). */
    uint32_t cpu;
    uint32_t max_rss_kib;
    uint16_t progress;          /* items_progress(): 0..1 in 1/65535 steps */
    uint16_t attempt;
    uint16_t max_attempts;
    uint16_t final_refs;        /* entries of the finals ring naming it */
    uint16_t kind_index;        /* items_kind() */
    uint8_t state;              /* enum wire_state */
    /* id \0 batch \0 traceparent \0 tracestate \0 (each "" when none):
     * allocated to its end, not to sizeof */
    char id[];
};

/* What a backend restores: a final item it kept durably. */
struct known_final {
    const char *id, *kind, *batch;
    enum wire_state state;
    uint32_t attempt, max_attempts;
    int32_t priority;
    const char *error;          /* NULL: none */
    const void *result;
    size_t result_len;
    const uint8_t *raw;         /* FAILED, CANCELLED */
    size_t raw_len;
    int64_t accepted_ns, started_ns, finished_ns;
    uint64_t last_seq;
    const char *traceparent, *tracestate;   /* NULL: none */
    uint64_t cpu_usec, max_rss_kib;     /* of its latest attempt that ran; 0: not known */
};

/* BASE (NULL in unit tests: call items_expire()) runs the age timer. */
void items_init(struct event_base *base);
void items_shutdown(void);
/* The bounds of items.retention; applied at once. */
void items_configure(uint64_t age_ms, uint64_t count, uint64_t bytes);
/* Unit tests: the wall clock (unix nano) the index reads. */
void items_set_clock(int64_t (*now)(void));
/* Forget the finals older than the age bound (the timer calls it). */
void items_expire(void);

/* ---- fed by store.c ---------------------------------------------------- */

/* ITEM is being accepted: known from now on, QUEUED, live. */
void items_accepting(struct item *item);
/* ITEM's pending accept was refused, or ITEM is no longer ours (handed
 * over, dropped): forgotten. */
void items_forget(struct item *item);
/* ITEM's update O was published with SEQ (a new entry if ITEM is unknown:
 * a backend's recovery). A final O keeps its result (SUCCEEDED) or ITEM's
 * raw WorkItem (FAILED, CANCELLED). */
void items_updated(struct item *item, const struct outcome *o, uint64_t seq);
/* A backend's durable final (journal, Redis), unless the id is known. */
void items_restore_final(const struct known_final *f);

/* ---- readers ------------------------------------------------------------- */

const struct known_item *items_find(const char *id);
/* ITEM's entry (as items_find(item->id), without a lookup once ITEM has
 * been through the index), or NULL. */
const struct known_item *items_of(const struct item *item);
/* K's latest attempt's CPU (exact up to 35 minutes, to the millisecond
 * beyond) and peak memory (KiB, up to 4 TiB); 0: not known. */
uint64_t items_cpu_usec(const struct known_item *k);
/* K's progress, 0..1 (exact at 0 and 1). */
float items_progress(const struct known_item *k);
uint64_t items_max_rss_kib(const struct known_item *k);
/* K's kind (interned, as struct item's). */
const char *items_kind(const struct known_item *k);
static inline const char *
known_next_string(const char *p)
{
    while (*p)
        p++;
    return p + 1;
}
static inline const char *
known_batch(const struct known_item *k)
{
    return known_next_string(k->id);
}
/* Its W3C trace context (core/trace.h), "" when none. */
static inline const char *
known_traceparent(const struct known_item *k)
{
    return known_next_string(known_batch(k));
}
static inline const char *
known_tracestate(const struct known_item *k)
{
    return known_next_string(known_traceparent(k));
}
int items_is_final(enum wire_state state);
/* Newest accepted first, those with accepted_ns < BEFORE (0: from the newest),
 * in STATES (a mask of 1 << state; 0: any) and matching MATCH (NULL: all):
 * FN for each, at most LIMIT, until FN returns -1 (that one not taken).
 * Returns how many were taken; *MORE is set if a further one matches.
 * FAILED and CANCELLED alone are listed from their own arrays, not by
 * walking every item. */
size_t items_list(uint64_t before, unsigned states,
                  int (*match)(const struct known_item *k, void *arg), void *match_arg,
                  size_t limit, int (*fn)(const struct known_item *k, void *arg), void *fn_arg,
                  int *more);
/* The accepted_ns of the newest item ever accepted (a page token is at most
 * one more). */
uint64_t items_last_order(void);
/* A page token of getItems: PREFIX ('p': this index, 'c': the cluster's
 * Redis) and the order (acceptance order, accept seq) the next page starts
 * below, in decimal. ITEMS_TOKEN_SIZE holds any. */
#define ITEMS_TOKEN_SIZE 24
void items_token_encode(char *buf, char prefix, uint64_t order);
/* *ORDER from TOKEN; -1 unless it is PREFIX and 1 to 20 digits naming a
 * number in 1..UINT64_MAX (no overflow). */
int items_token_decode(const char *token, char prefix, uint64_t *order);
/* FN hears the id of every item that became final or was forgotten. */
void items_on_change(void (*fn)(const char *id));
/* FN hears the id of every final the retention forgets (a backend that
 * keeps finals durably lets go of it). */
void items_on_forgotten(void (*fn)(const char *id));

/* ---- observability --------------------------------------------------------- */

struct items_stats {
    uint64_t by_state[STATE_MAX + 1];
    uint64_t known;
    uint64_t retained_bytes;    /* of the finals: what items.retention.bytes bounds */
    uint64_t forgotten;         /* finals forgotten by the retention */
    uint64_t duplicates;        /* resent ids not queued again */
    uint64_t retries;           /* FAILED or CANCELLED items run again by retry */
};
const struct items_stats *items_stats(void);
void items_count_duplicate(void);
void items_count_retry(void);
/* Bytes a final uses beyond its id, batch and result (for the README). */
size_t items_overhead_bytes(void);

#endif
