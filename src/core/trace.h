/*
 * W3C trace context (https://www.w3.org/TR/trace-context/): the checks of a
 * traceparent and a tracestate, and where an item keeps them.
 *
 * A doSomething call's metadata `traceparent` / `tracestate`, or an item's
 * params of those names (which win), give the item its trace. The grpc
 * process keeps the chosen pair inside the item's WorkItem bytes, as fields
 * TRACE_FIELD_PARENT and TRACE_FIELD_STATE (reserved in the .proto, never
 * sent by stock clients): the bytes that go to the journal, to Redis, over
 * a worker's data channel and to a binary upgrade's new instance carry it
 * with no format of their own changed, and old journals (no such fields)
 * read as items without a trace.
 *
 * Used by the grpc process (submit.c chooses, items and backends read) and
 * by the workers (handlers get it). Pure: no allocation but trace_rewrite's.
 */
#ifndef DS_CORE_TRACE_H
#define DS_CORE_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "core/wire.h"

#define TRACE_PARENT_LEN        55      /* "00-" 32 hex "-" 16 hex "-" 2 hex */
#define TRACE_STATE_MAX         512     /* bytes of a tracestate we keep */
#define TRACE_STATE_MEMBERS_MAX 32      /* list-members of a tracestate */
#define TRACE_FIELD_PARENT      1000    /* WorkItem field numbers (above) */
#define TRACE_FIELD_STATE       1001

/* A trace context: strings borrowed from whoever holds them, with their
 * lengths (not NUL-terminated); parent_len 0: none; state_len 0: none. */
struct trace_context {
    const char *parent;
    size_t parent_len;
    const char *state;
    size_t state_len;
};

/* NULL if the LEN bytes at S are a traceparent we keep (version 00, lower
 * case hex, trace-id and parent-id not all zeros), else what is wrong. */
const char *trace_parent_invalid(const char *s, size_t len);
/* NULL if the LEN bytes at S are a tracestate we keep (at most
 * TRACE_STATE_MAX bytes, a list of at most TRACE_STATE_MEMBERS_MAX
 * key=value members with distinct keys), else what is wrong. */
const char *trace_state_invalid(const char *s, size_t len);

/* The trace fields of the WorkItem bytes RAW (the last of each, as a
 * decoder would take them), unchecked, into *OUT. Returns 1 if RAW has
 * either field, 0 if neither. */
int trace_of_work_item(const uint8_t *raw, size_t len, struct trace_context *out);

/*
 * The trace of an item whose WorkItem MSG came as RAW in a call whose
 * metadata gave CALL (already checked; parent_len 0: none): its params
 * `traceparent` if valid (with its param `tracestate` if valid), else the
 * trace fields of RAW if valid (a binary upgrade's handover), else CALL's;
 * a valid param `tracestate` replaces the tracestate of whichever
 * traceparent won. A tracestate without a traceparent is dropped. Pointers
 * into MSG, RAW or CALL go into *OUT.
 * Returns 1 if RAW must be rewritten (trace_rewrite) to hold *OUT, else 0.
 * Whatever malformed was ignored is said in WHY ("" if nothing).
 */
int trace_choose(const wire_work_item *msg, const uint8_t *raw, size_t raw_len,
                 const struct trace_context *call, struct trace_context *out, char *why,
                 size_t why_size);

/* RAW without its trace fields, with CTX's appended (parent_len 0: none):
 * ds_malloc'ed, its length in *OUT_LEN. */
uint8_t *trace_rewrite(const uint8_t *raw, size_t len, const struct trace_context *ctx,
                       size_t *out_len);

#endif
