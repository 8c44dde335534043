/*
 * Handlers: what runs an item of a kind, in a worker, with handler_run().
 * The built-ins are in handler.c, exec in exec.c, modules in module.c. What
 * an item must be for its kind (checked by the grpc process before it
 * accepts it) and which items are quick are in core/kind.h.
 */
#ifndef DS_WORKERS_HANDLER_H
#define DS_WORKERS_HANDLER_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/wire.h"

/*
 * One run of a handler. The caller sets the inputs; handler_run sets the
 * outputs.
 */
struct handler_output {
    /* in */
    uint32_t attempt;           /* of the item, from 1 */
    size_t result_max;          /* a longer result fails the item */
    /* Report progress (0..1); the worker coalesces the reports. */
    void (*progress)(void *arg, float fraction);
    void *progress_arg;
    /* Cancel (NULL: the item cannot be cancelled). cancelled(cancel_arg)
     * reads what the grpc process sent and says whether this item is to
     * stop; cancel_fd(cancel_arg) is a descriptor readable when there may
     * be news (-1: none; ask again after each cancelled(), it may change).
     * A handler that waits adds it to its wait. On cancel it stops and
     * returns -1; the worker reports CANCELLED whatever it returns. */
    int (*cancelled)(void *arg);
    int (*cancel_fd)(void *arg);
    void *cancel_arg;
    uint64_t cancel_grace_ms;   /* exec: SIGTERM, then SIGKILL this much later */
    /* The item's W3C trace context (checked; NULL: none): exec programs get
     * TRACEPARENT and TRACESTATE, modules the item's fields, built-ins log it. */
    const char *traceparent;
    const char *tracestate;

    /* out */
    const uint8_t *result;      /* result_len bytes */
    size_t result_len;
    /* If not NULL, the caller calls release(result) once it has sent the
     * result (free for the built-ins); if NULL, result stays valid until
     * the next handler_run. */
    void (*release)(void *result);
    char error[512];            /* why it failed */
    /* exec: the program's peak resident memory (wait4's ru_maxrss, its
     * reaped descendants included), KiB; 0 when it did not run */
    uint64_t child_max_rss_kib;
};

/* Run ITEM: 0 with the result in out, -1 with out->error set (FAILED), or
 * HANDLER_RETRY with out->error set: this attempt failed, but the handler
 * asks for another (an exec retry_exit_codes status, a module's
 * DS_MODULE_RETRY); the grpc process decides whether one is left. */
#define HANDLER_RETRY 1
/* Run ITEM: 0 with the result in out, -1 or HANDLER_RETRY (above). */
int handler_run(const struct ds_handler_config *handler, const wire_work_item *item,
                struct handler_output *out);

/* Has OUT's item been cancelled? Waits at most TIMEOUT_MS (-1: for ever,
 * 0: just looks) for news from the grpc process: 1 if cancelled, else 0. */
int handler_wait_cancel(struct handler_output *out, int timeout_ms);

/* Make S (NUL-terminated, changed in place) fit an Update's error string:
 * valid UTF-8 (a bad byte becomes '?'), tabs and other control characters
 * (C0, DEL, and C1: U+0080..U+009F) turned into one space each, so S may
 * get shorter, never longer. For text from programs and modules. */
void handler_clean_text(char *s);

#endif
