/*
 * The built-in handlers (echo, sha256, sleep), and the dispatch to exec
 * (exec.c) and module (module.c) handlers. Their params, limits and which
 * items are quick are in core/kind.c, shared with the grpc process.
 *
 *   echo    result = payload
 *   sha256  d = SHA-256(payload), then rounds-1 times d = SHA-256(d);
 *           result = the 32 raw bytes (param rounds, default 1)
 *   sleep   sleeps ms milliseconds in `steps` steps, reporting PROGRESS
 *           after each step but the last; result empty (params ms, steps)
 */
#include "workers/handler.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/kind.h"
#include "core/log.h"
#include "core/process.h"
#include "core/utf8.h"
#include "workers/exec.h"
#include "workers/module.h"

static int
stop_cancelled(struct handler_output *out)
{
    snprintf(out->error, sizeof out->error, "cancelled");
    return -1;
}

static int
run_sha256(const struct ds_handler_config *handler, const wire_work_item *item,
           struct handler_output *out)
{
    /* OpenSSL 3's one-shot SHA256() looks the algorithm up on every call,
     * which costs more than hashing 32 bytes: fetch it once, reuse one
     * context (measured: ~5x faster per round). */
    static EVP_MD *md;
    static EVP_MD_CTX *ctx;
    if (md == NULL) {
        md = EVP_MD_fetch(NULL, "SHA256", NULL);
        ctx = EVP_MD_CTX_new();
        if (md == NULL || ctx == NULL)
            fatal(DS_EXIT_FATAL, "OpenSSL has no SHA-256 here");
    }
    uint64_t rounds = kind_param(handler, item, "rounds");
    uint8_t *digest = ds_malloc(SHA256_DIGEST_LENGTH);
    unsigned int len;
    EVP_DigestInit_ex(ctx, md, NULL);
    EVP_DigestUpdate(ctx, item->payload.data, item->payload.len);
    EVP_DigestFinal_ex(ctx, digest, &len);
    for (uint64_t i = 1; i < rounds; i++) {
        /* A cancel is looked for now and then: one poll() per 64Ki rounds
         * (~10 ms) costs nothing next to them. */
        if ((i & 0xffff) == 0 && handler_wait_cancel(out, 0)) {
            free(digest);
            return stop_cancelled(out);
        }
        EVP_DigestInit_ex(ctx, md, NULL);
        EVP_DigestUpdate(ctx, digest, SHA256_DIGEST_LENGTH);
        EVP_DigestFinal_ex(ctx, digest, &len);
    }
    out->result = digest;
    out->result_len = SHA256_DIGEST_LENGTH;
    out->release = free;
    return 0;
}

int
handler_wait_cancel(struct handler_output *out, int timeout_ms)
{
    if (out->cancelled == NULL)
        return 0;
    int fd = out->cancel_fd(out->cancel_arg);
    if (fd == -1)
        return out->cancelled(out->cancel_arg);
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int n = poll(&p, 1, timeout_ms);
    if (n == -1 && errno != EINTR)
        return 0;
    return out->cancelled(out->cancel_arg);
}

/* Sleep until DEADLINE_NS on the monotonic clock; 1 if the item was
 * cancelled meanwhile (then at once). Without a cancel to watch it is one
 * absolute sleep (no ms rounding); with one, poll()s in between. */
static int
sleep_until_ns(uint64_t deadline_ns, struct handler_output *out)
{
    if (out->cancelled != NULL && out->cancel_fd(out->cancel_arg) != -1) {
        for (;;) {
            uint64_t now = clock_monotonic_ns();
            if (now + 1000000u > deadline_ns)
                break;          /* under a millisecond left: poll() cannot time it */
            if (handler_wait_cancel(out, (int)((deadline_ns - now) / 1000000u)))
                return 1;
            if (out->cancel_fd(out->cancel_arg) == -1)
                break;
        }
    }
    struct timespec ts = { .tv_sec = (time_t)(deadline_ns / 1000000000u),
                           .tv_nsec = (long)(deadline_ns % 1000000000u) };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
    return 0;
}


/*
 * Each step ends at an absolute deadline from one start, so the time spent
 * reporting and the oversleep of each step (timer slack: ~50 us) do not add
 * up over many steps: with 100000 steps of relative sleeps, ms=1000 took
 * over 4 s. A step whose deadline has passed does not sleep at all. The
 * worker coalesces the progress reports.
 */
static int
run_sleep(const struct ds_handler_config *handler, const wire_work_item *item, struct handler_output *out)
{
    uint64_t ms = kind_param(handler, item, "ms");
    uint64_t steps = kind_param(handler, item, "steps");
    uint64_t start = clock_monotonic_ns(), total_ns = ms * 1000000u;    /* < 2^47 */
    for (uint64_t i = 1; i <= steps; i++) {
        uint64_t deadline = start + total_ns / steps * i + total_ns % steps * i / steps;
        if (clock_monotonic_ns() < deadline && sleep_until_ns(deadline, out))
            return stop_cancelled(out);
        if (i < steps && out->progress != NULL)
            out->progress(out->progress_arg, (float)i / (float)steps);
    }
    return 0;
}

void
handler_clean_text(char *s)
{
    /* In place, never longer: a C1 control (two bytes) becomes one space. */
    unsigned char *p = (unsigned char *)s, *out = p;
    size_t left = strlen(s);
    while (left > 0) {
        uint32_t cp = 0;
        size_t len = utf8_decode((const char *)p, left, &cp);
        if (len == 0) {
            *out++ = '?';
            p++;
            left--;
            continue;
        }
        left -= len;
        if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) {
            /* C0, DEL and C1 (U+0080..U+009F, valid UTF-8 that a terminal
             * takes as a control: CSI is U+009B). */
            *out++ = ' ';
            p += len;
            continue;
        }
        memmove(out, p, len);
        out += len;
        p += len;
    }
    *out = '\0';
}

int
handler_run(const struct ds_handler_config *handler, const wire_work_item *item,
            struct handler_output *out)
{
    /* A built-in has nowhere else to take a trace: it says it ran the item
     * in it (debug: one line per item). */
    if (out->traceparent != NULL && handler->type != DS_HANDLER_EXEC &&
        handler->type != DS_HANDLER_MODULE && log_current_level >= DS_LOG_DEBUG) {
        char id[300];
        log_debug("%s: item \"%s\" (attempt %u) traceparent=%s%s%s", handler->kind,
                  utf8_escape(id, sizeof id, item->id), out->attempt, out->traceparent,
                  out->tracestate != NULL ? " tracestate=" : "",
                  out->tracestate != NULL ? out->tracestate : "");
    }
    switch (handler->type) {
    case DS_HANDLER_ECHO:
        /* The payload lives as long as the item, which outlives the send. */
        out->result_len = item->payload.len;
        out->result = item->payload.data;
        return 0;
    case DS_HANDLER_SHA256:
        return run_sha256(handler, item, out);
    case DS_HANDLER_SLEEP:
        return run_sleep(handler, item, out);
    case DS_HANDLER_EXEC:
        return exec_run(handler, item, out);
    case DS_HANDLER_MODULE:
        return module_run(handler, item, out);
    default:
        snprintf(out->error, sizeof out->error, "handler of kind \"%s\" is not supported by "
                 "this build", handler->kind);
        return -1;
    }
}
