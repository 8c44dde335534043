/*
 * Items: one allocation each, keys unique within the process.
 */
#include "grpc/item.h"

#include "grpc/attempts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/trace.h"
#include "grpc/metrics.h"

static uint64_t next_key;

/* WorkItem field 8 (priority) read from RAW without decoding the rest. */
static int32_t
priority_of(const uint8_t *raw, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint64_t tag = 0, v = 0;
        for (int shift = 0; i < len; shift += 7) {
            uint8_t b = raw[i++];
            if (shift < 64)
                tag |= (uint64_t)(b & 0x7f) << shift;
            if (!(b & 0x80))
                break;
        }
        unsigned type = tag & 7;
        if (type == 0 || type == 2) {
            for (int shift = 0; i < len; shift += 7) {
                uint8_t b = raw[i++];
                if (shift < 64)
                    v |= (uint64_t)(b & 0x7f) << shift;
                if (!(b & 0x80))
                    break;
            }
            if (type == 0 && tag >> 3 == 8)
                return (int32_t)v;
            if (type == 2)
                i += v < len - i ? v : len - i;
        } else if (type == 1) {
            i += 8;
        } else if (type == 5) {
            i += 4;
        } else {
            return 0;
        }
    }
    return 0;
}

struct item *
item_make(const uint8_t *raw, size_t raw_len, const char *id, const char *batch,
          const char *kind, uint32_t max_attempts, uint32_t timeout_ms, int quick)
{
    size_t id_len = strlen(id), batch_len = strlen(batch);
    struct item *item = ds_malloc(sizeof *item + raw_len + id_len + batch_len + 2);
    memset(item, 0, sizeof *item);
    char *p = item->data;
    if (raw_len > 0)
        memcpy(p, raw, raw_len);
    item->raw = (const uint8_t *)p;
    item->raw_len = (uint32_t)raw_len;
    p += raw_len;
    item->id = memcpy(p, id, id_len + 1);
    p += id_len + 1;
    item->batch = memcpy(p, batch, batch_len + 1);
    item->kind = metrics_kind(kind)->kind;
    item->key = ++next_key;
    item->attempt = 1;
    item->max_attempts = max_attempts;
    item->timeout_ms = timeout_ms;
    item->accepted_ns = clock_monotonic_ns();
    item->weight = quick ? ITEM_WEIGHT_QUICK : ITEM_WEIGHT_FULL;
    item->priority = priority_of(item->raw, item->raw_len);
    return item;
}

struct item *
item_new(const wire_work_item *msg, grpc_slice raw, const char *kind, uint32_t max_attempts,
         uint32_t timeout_ms, const char *assigned_id, int quick)
{
    /* Copied, not referenced: the slice gRPC received may be part of a
     * larger buffer, and its header costs as much as a small item. */
    struct item *item = item_make(GRPC_SLICE_START_PTR(raw), GRPC_SLICE_LENGTH(raw),
                                  assigned_id != NULL ? assigned_id : msg->id, msg->batch, kind,
                                  max_attempts, timeout_ms, quick);
    grpc_slice_unref(raw);
    return item;
}

const char *
item_trace_note(const struct item *item, char *buf, size_t size)
{
    struct trace_context t;
    buf[0] = '\0';
    if (trace_of_work_item(item->raw, item->raw_len, &t) && t.parent_len == TRACE_PARENT_LEN)
        snprintf(buf, size, " traceparent=%.*s", (int)t.parent_len, t.parent);
    return buf;
}

void
item_skip_keys(uint64_t key)
{
    if (key > next_key)
        next_key = key;
}

void
item_free(struct item *item)
{
    attempts_forget(item->key);
    free(item);
}
