/*
 * Handlers: what runs an item of a kind. The grpc process checks an item's
 * params with handler_check() before accepting it; a worker runs it with
 * handler_run().
 */
#ifndef DS_WORKERS_HANDLER_H
#define DS_WORKERS_HANDLER_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/wire.h"

struct handler_output {
    uint8_t *result;            /* malloc'd; the caller frees it */
    size_t result_len;
    char error[512];            /* why it failed */
    /* Report progress (0..1); the worker coalesces the reports. */
    void (*progress)(void *arg, float fraction);
    void *progress_arg;
};

/* 0 if ITEM's params suit the handler, else -1 with the reason in err. */
int handler_check(const struct ds_handler_config *handler, const wire_work_item *item,
                  char *err, size_t err_size);

/* Run ITEM: 0 with the result in out, or -1 with out->error set. */
int handler_run(const struct ds_handler_config *handler, const wire_work_item *item,
                struct handler_output *out);

/* Does ITEM take microseconds? Then its STARTED may wait to be sent with
 * the next batch of updates instead of on its own. */
int handler_is_quick(const struct ds_handler_config *handler, const wire_work_item *item);

#endif
