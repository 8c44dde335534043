/*
 * Items: one allocation each, keys unique within the process.
 */
#include "grpc/item.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "grpc/metrics.h"

static uint64_t next_key;

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

void
item_skip_keys(uint64_t key)
{
    if (key > next_key)
        next_key = key;
}

void
item_free(struct item *item)
{
    free(item);
}
