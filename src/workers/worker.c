/*
 * A worker: takes items from its data channel, runs each with the handler
 * of its kind, one at a time, and sends the updates back.
 *
 * Updates of quick items leave in batches, one write for many; before a
 * slow item, what is pending is written first so that its STARTED is seen
 * while it runs. The worker keeps no state worth saving: when it dies, the
 * grpc process retries what it held.
 *
 * With workers.max_items, a worker retires after its own limit, drawn from
 * [max_items, max_items + max_items / 10] so that workers started together
 * do not all restart together: it finishes the item that reaches it, sends
 * what is pending and exits 0. The items it held without starting them go
 * back to the queue without spending an attempt (the grpc process does that
 * for any worker that exits), and the master starts a new worker in the slot.
 *
 * The master learns what we are doing from a page we share with it (see
 * struct ds_worker_status): STARTING until we are ready, then RUNNING with
 * the item's key around each handler call, IDLE between. Should we die,
 * the master charges it to that item rather than to the crash-loop breaker.
 * An item of a kind with memory_limit or cpu_limit is watched while it runs
 * (limits.c): over a limit, we die, having said why in that page.
 *
 * An item owns nothing once it is over: after each module or exec item,
 * every child it left (we are a subreaper: orphans from anywhere below us,
 * `setsid` or double fork, are our children) is SIGKILLed and reaped,
 * before its final update is sent. Spared: the exec guard, and what the
 * modules' init started, which lives as long as the worker.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/alloc.h"
#include "core/children.h"
#include "core/clock.h"
#include "core/kind.h"
#include "core/log.h"
#include "core/process.h"
#include "core/trace.h"
#include "core/wire.h"
#include "ipc/channel.h"
#include "workers/cost.h"
#include "workers/exec.h"
#include "workers/handler.h"
#include "workers/hygiene.h"
#include "workers/limits.h"
#include "workers/module.h"

/* Kinds are at most 64 bytes (config.c), assigned ids at most DS_ITEM_ID_MAX. */
_Static_assert(IPC_ITEM_MAX >= DS_MESSAGE_SIZE_MAX + sizeof(struct ipc_item) + 64 +
               DS_ITEM_ID_MAX, "an ITEM frame holds the largest WorkItem, its kind and its id");
_Static_assert(sizeof(struct ipc_update) + DS_RESULT_SIZE_MAX <= IPC_UPDATE_MAX,
               "an UPDATE frame holds the largest result");

/* A chatty handler's progress reports are sent at most this often, on
 * average (see on_progress). */
#define PROGRESS_INTERVAL_NS (20u * 1000000u)
/* Write pending updates once they reach this many bytes. */
#define FLUSH_BYTES (256u * 1024)
/* A recycled worker waits at most this long for the grpc process to take
 * its last updates (see linger()). */
#define LINGER_MS 2000
/* What an item left behind gets this long to die after SIGKILL. */
#define LEFTOVERS_GRACE_MS 1000
/* A batch of quick items is measured once (see batch_close): at most this
 * many ends, or FLUSH_BYTES of their results, are held for it. */
#define BATCH_MAX 64

struct task {
    struct task *next;
    uint64_t key;
    uint32_t attempt;           /* the handler's and its updates' */
    uint32_t given_attempt;     /* the ITEM frame's: a REATTEMPT names it, a CANCEL may */
    const struct ds_handler_config *handler;
    wire_work_item *item;
    char *kind;
    /* The item's W3C trace context (core/trace.h), NUL-terminated; NULL:
     * none. */
    char *traceparent, *tracestate;
};

static struct {
    struct event_base *base;
    struct ds_config *config;
    struct ipc_channel *control;
    struct ipc_channel *data;
    struct event *run_event;
    struct task *head, *tail;
    struct task *current;
    int cancel_requested;       /* the grpc process cancelled `current` */
    uint64_t next_progress_ns;  /* no progress report before this */
    uint64_t items_done;
    uint64_t item_limit;        /* 0: no recycling */
    int stopping;
    int recycling;
    int retire_now;             /* an item went over its memory limit: a new worker takes over */
    struct ds_worker_status *status;    /* shared with the master; may be NULL */
    pid_t *spared;              /* children we had when ready: not an item's */
    size_t spared_count;
} w;

/* Tell the master (see struct ds_worker_status): plain stores, the phase
 * last, so that a RUNNING it reads always has its item's key. */
static void
phase_set(enum ds_worker_phase phase, const struct task *t)
{
    if (w.status == NULL)
        return;
    if (t != NULL) {
        w.status->key = t->key;
        w.status->attempt = t->attempt;
    }
    __atomic_store_n(&w.status->phase, (uint32_t)phase, __ATOMIC_RELEASE);
}

static int
spared_child(pid_t pid, void *arg)
{
    if (pid == exec_guard_pid())
        return 1;
    for (size_t i = 0; i < w.spared_count; i++)
        if (w.spared[i] == pid)
            return 1;
    return 0;
}

/* Whatever the item started and left running: a module's fork, an exec
 * program's background job that left its process group. */
static void
kill_leftovers(void)
{
    /* With no child to spare, one waitid says whether there is anything. */
    if (w.spared_count == 0 && exec_guard_pid() == -1 && !children_any())
        return;
    int n = children_kill_all(spared_child, NULL, LEFTOVERS_GRACE_MS);
    if (n > 0)
        log_debug("killed %d process%s the item left behind", n, n == 1 ? "" : "es");
    else if (n == -1)
        log_syswarn("killing what the item left behind");
}

/* The children we have once ready (the exec guard aside, which may be
 * replaced): what the modules' init started. */
static void
remember_spared_children(void)
{
    size_t n;
    pid_t *pids = children_list(&n);
    if (pids == NULL) {
        log_syswarn("cannot list our children in /proc");
        return;
    }
    w.spared_count = 0;
    for (size_t i = 0; i < n; i++)
        if (pids[i] != exec_guard_pid())
            pids[w.spared_count++] = pids[i];
    w.spared = pids;
}

/* COST: what the attempt cost, for the final update of one that ran; else NULL. */
static void
send_update(const struct task *t, int state, float progress, const void *bytes, size_t len,
            const struct ipc_cost *cost)
{
    if (w.data == NULL)
        return;
    struct ipc_update u = {
        .key = t->key, .attempt = t->attempt, .state = (uint8_t)state, .progress = progress,
        .flags = cost != NULL ? IPC_UPDATE_COST : 0,
    };
    struct iovec parts[3] = {
        { .iov_base = &u, .iov_len = sizeof u },
        { .iov_base = (void *)cost, .iov_len = cost != NULL ? sizeof *cost : 0 },
        { .iov_base = (void *)bytes, .iov_len = len },
    };
    channel_sendv(w.data, IPC_UPDATE, parts, 3);
}

static void
flush(void)
{
    if (w.data != NULL && channel_output_pending(w.data) > 0)
        channel_flush(w.data);
}

static void
on_progress(void *arg, float fraction)
{
    struct task *t = arg;
    uint64_t now = clock_monotonic_ns();
    if (now < w.next_progress_ns)
        return;
    /* On a grid while reports keep up with it: a handler reporting on a
     * schedule of its own (sleep's steps of 20 ms end at deadlines, a
     * little late each) keeps every report instead of losing every other
     * one to the lateness of the one before. */
    if (now - w.next_progress_ns < PROGRESS_INTERVAL_NS)
        w.next_progress_ns += PROGRESS_INTERVAL_NS;
    else
        w.next_progress_ns = now + PROGRESS_INTERVAL_NS;
    if (fraction < 0)
        fraction = 0;
    if (fraction > 1)
        fraction = 1;
    send_update(t, STATE_PROGRESS, fraction, NULL, 0, NULL);
    flush();
}

/* The handler asks whether its item is cancelled: read what has come. */
static int
on_cancel_check(void *arg)
{
    if (w.data != NULL) {
        /* The next items that come are the worker's queue, not a limited
         * attempt's memory (limits.h). */
        limits_own_begin(channel_fd(w.data));
        channel_read_now(w.data);
        limits_own_end();
    }
    return w.cancel_requested;
}

static int
on_cancel_fd(void *arg)
{
    return w.data != NULL ? channel_fd(w.data) : -1;
}

static void
task_free(struct task *t)
{
    if (t->item != NULL)
        wire_work_item_free(t->item, NULL);
    free(t->kind);
    free(t->traceparent);
    free(t->tracestate);
    free(t);
}

/*
 * Quick items are measured per batch: the counters are read when the first
 * of a run of quick items starts and after the last, and each item's end
 * is held meanwhile (its STARTED has gone out), then sent with its share:
 * the batch's CPU split in proportion to each handler's wall time (a clock
 * read, ~20 ns, not a system call), and the worker's peak RSS (not reset
 * per batch: its peak since the last slow in-process item reset it). So an
 * echo pays two clock reads, and the batch two getrusage (~0.7 us),
 * instead of ~2 us of system calls per item. The batch ends before a slow item, when BATCH_MAX ends
 * or FLUSH_BYTES of results are held, and before the worker writes what is
 * pending (each on_run), so an end waits no longer than it did before.
 */
struct held_end {
    struct task *task;          /* freed when sent */
    int state;
    const void *bytes;          /* the result, or error */
    size_t len;
    void (*release)(void *);    /* of bytes, if not NULL */
    uint64_t wall_ns;           /* its handler's */
};

static struct {
    struct held_end ends[BATCH_MAX];
    size_t count;
    size_t bytes;
    uint64_t wall_ns;
    struct cost_mark mark;
    int open;
} batch;

static void
batch_close(void)
{
    if (!batch.open)
        return;
    batch.open = 0;
    uint64_t cpu, peak;
    cost_end_quick(&batch.mark, &cpu, &peak);
    for (size_t i = 0; i < batch.count; i++) {
        struct held_end *e = &batch.ends[i];
        struct ipc_cost cost = { .max_rss_kib = peak };
        if (batch.wall_ns > 0)
            cost.cpu_usec = (uint64_t)((double)cpu * (double)e->wall_ns / (double)batch.wall_ns);
        else
            cost.cpu_usec = cpu / batch.count;
        send_update(e->task, e->state, e->state == STATE_SUCCEEDED ? 1 : 0, e->bytes, e->len,
                    &cost);
        if (e->release != NULL)
            e->release((void *)e->bytes);
        task_free(e->task);
    }
    batch.count = 0;
    batch.bytes = 0;
    batch.wall_ns = 0;
}

/* Hold T's end (the batch is open); BYTES are T's (echo: its payload),
 * static, or copied here. */
static void
batch_hold(struct task *t, int state, const void *bytes, size_t len,
           void (*release)(void *), int copy, uint64_t wall_ns)
{
    struct held_end *e = &batch.ends[batch.count++];
    if (copy && len > 0) {
        void *p = ds_malloc(len);
        memcpy(p, bytes, len);
        bytes = p;
        release = free;
    }
    *e = (struct held_end){ .task = t, .state = state, .bytes = bytes, .len = len,
                            .release = release, .wall_ns = wall_ns };
    batch.bytes += len;
    batch.wall_ns += wall_ns;
    if (batch.count == BATCH_MAX || batch.bytes >= FLUSH_BYTES)
        batch_close();
}

/*
 * A limited built-in or module whose attempt ended (limits.c; one caught
 * going over while it ran never gets here: its worker is killed): did it
 * go over its memory limit? It grew past it between two samples; or it
 * failed, having grown by three quarters of it or saying an allocation
 * failed (RLIMIT_DATA refused one), as exec.c judges a program. If so,
 * OUT->error says which limit, then what the handler said.
 */
static int
over_memory_limit(const struct ds_handler_config *handler, int r, struct handler_output *out,
                  const struct limits_seen *seen)
{
    uint64_t limit = handler->memory_limit;
    if (limit == 0)
        return 0;
    char head[64], what[sizeof out->error];
    limits_memory_text(limit, head, sizeof head);
    if (seen->memory_growth > limit) {
        if (r != 0)
            snprintf(what, sizeof what, "%s", out->error);
        snprintf(out->error, sizeof out->error, "%s: it grew by %llu MiB%s%.400s", head,
                 (unsigned long long)(seen->memory_growth >> 20), r != 0 ? ": " : "",
                 r != 0 ? what : "");
        return 1;
    }
    if (r == 0 || !(seen->memory_growth >= limit / 4 * 3 ||
                    limits_says_out_of_memory(out->error, strlen(out->error))))
        return 0;
    snprintf(what, sizeof what, "%s", out->error);
    snprintf(out->error, sizeof out->error, "%s: %.440s", head, what);
    return 1;
}

/*
 * A limited attempt that returned with more CPU than handler's cpu_limit
 * (it ended between two of the watcher's samples) fails all the same, as
 * it would have a tick later: OUT->error says so, then what the handler
 * said. 1 if it did.
 */
static int
over_cpu_limit(const struct ds_handler_config *handler, int r, struct handler_output *out,
               const struct limits_seen *seen)
{
    uint64_t limit_ns = handler->cpu_limit_ms * 1000000u;
    if (limit_ns == 0 || seen->cpu_ns < limit_ns)
        return 0;
    char head[64], what[sizeof out->error];
    limits_cpu_text(handler->cpu_limit_ms, head, sizeof head);
    snprintf(what, sizeof what, "%s", r != 0 ? out->error : "");
    snprintf(out->error, sizeof out->error, "%s: it used %.2f s of CPU%s%.400s", head,
             (double)seen->cpu_ns / 1e9, r != 0 ? ": " : "", what);
    return 1;
}

/* Run T; 1 if its end is held for its batch (T is then the batch's), 0 if
 * it was sent (the caller frees T). */
static int
run_task(struct task *t)
{
    if (t->handler == NULL) {
        /* A reload removed its kind after it was accepted: it never starts. */
        char err[200];
        int n = snprintf(err, sizeof err, "kind \"%.64s\" is no longer configured (a reload "
                         "removed it); not run", t->kind);
        send_update(t, STATE_FAILED, 0, err, (size_t)n, NULL);
        return 0;
    }
    send_update(t, STATE_STARTED, 0, NULL, 0, NULL);
    int quick = kind_is_quick(t->handler, t->item);
    int exec = t->handler->type == DS_HANDLER_EXEC;
    if (!quick)
        batch_close();
    if (!quick || (w.data != NULL && channel_output_pending(w.data) > FLUSH_BYTES))
        flush();

    struct handler_output out = {
        .attempt = t->attempt,
        .result_max = (size_t)w.config->max_result_size,
        .progress = on_progress,
        .progress_arg = t,
        .cancelled = on_cancel_check,
        .cancel_fd = on_cancel_fd,
        .cancel_grace_ms = t->handler->cancel_grace_ms,
        .traceparent = t->traceparent,
        .tracestate = t->tracestate,
    };
    struct cost_mark mark;
    uint64_t started_ns = 0;
    if (quick) {
        if (!batch.open) {
            cost_begin_quick(&batch.mark);
            batch.open = 1;
        }
        started_ns = clock_monotonic_ns();
    } else {
        cost_begin(&mark, !exec);
    }
    w.current = t;
    w.cancel_requested = 0;
    w.next_progress_ns = clock_monotonic_ns() + PROGRESS_INTERVAL_NS;
    phase_set(DS_WORKER_RUNNING, t);
    int limited = limits_apply_to(t->handler);
    if (limited)
        limits_arm(t->handler, w.status);
    int r = handler_run(t->handler, t->item, &out);
    struct limits_seen seen = { 0 };
    if (limited)
        limits_disarm(&seen);
    if (t->handler->type == DS_HANDLER_MODULE || exec)
        kill_leftovers();
    phase_set(DS_WORKER_IDLE, NULL);
    w.current = NULL;
    struct ipc_cost cost = { 0, 0 };
    uint64_t wall_ns = 0;
    if (quick)
        wall_ns = clock_monotonic_ns() - started_ns;
    else
        cost_end(&mark, &cost.cpu_usec, exec ? NULL : &cost.max_rss_kib);
    if (exec)
        cost.max_rss_kib = out.child_max_rss_kib;
    if (r == 0 && out.result_len > out.result_max) {
        /* Every subscriber must be able to take the update: a stock gRPC
         * client ends its stream on a message over 4 MiB. */
        snprintf(out.error, sizeof out.error, "result of %zu bytes exceeds "
                 "handlers.max_result_size (%zu)", out.result_len, out.result_max);
        if (out.release != NULL)
            out.release((void *)out.result);
        r = -1;
    }
    if (limited && !w.cancel_requested && over_memory_limit(t->handler, r, &out, &seen)) {
        /* What it holds may stay held: a new worker takes the next item. */
        if (r == 0 && out.release != NULL)
            out.release((void *)out.result);
        r = -1;
        w.retire_now = 1;
    } else if (limited && !w.cancel_requested && over_cpu_limit(t->handler, r, &out, &seen)) {
        if (r == 0 && out.release != NULL)
            out.release((void *)out.result);
        r = -1;
    }
    static const char cancelled[] = "cancelled while running";
    int state;
    const void *bytes;
    size_t len;
    if (w.cancel_requested) {
        /* However it ended, it ends CANCELLED (the grpc process says why). */
        state = STATE_CANCELLED;
        bytes = cancelled;
        len = sizeof cancelled - 1;
        w.cancel_requested = 0;
        if (r == 0 && out.release != NULL)
            out.release((void *)out.result);
    } else if (r == 0) {
        state = STATE_SUCCEEDED;
        bytes = out.result;
        len = out.result_len;
    } else {
        state = r == HANDLER_RETRY ? STATE_RETRYING : STATE_FAILED;
        bytes = out.error;
        len = strlen(out.error);
    }
    w.items_done++;
    if (quick) {
        /* Kept: a result the handler released, or its own until the next
         * run (a module's, without release), and the error on our stack
         * are copied; echo's payload lives in T. */
        int copy = state == STATE_SUCCEEDED ? out.release == NULL &&
                                              t->handler->type != DS_HANDLER_ECHO
                                            : state != STATE_CANCELLED;
        batch_hold(t, state, bytes, len, state == STATE_SUCCEEDED ? out.release : NULL, copy,
                   wall_ns);
        return 1;
    }
    send_update(t, state, state == STATE_SUCCEEDED ? 1 : 0, bytes, len, &cost);
    if (state == STATE_SUCCEEDED && out.release != NULL)
        out.release((void *)out.result);
    return 0;
}

/* This worker's max_items, with up to 10% jitter. */
static uint64_t
pick_item_limit(uint64_t max_items)
{
    if (max_items == 0)
        return 0;
    uint64_t spread = max_items / 10, r;
    if (spread == 0)
        return max_items;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (uint64_t)getpid() * 2654435761u ^ clock_monotonic_ms();
    uint64_t limit = max_items + r % (spread + 1);
    return limit < max_items ? UINT64_MAX : limit;      /* overflow near UINT64_MAX */
}

static int
recycle_due(void)
{
    if (w.retire_now) {
        if (!w.recycling)
            log_info("exiting so that a new worker takes the next item: the last one went "
                     "over its memory limit");
        w.recycling = 1;
        return 1;
    }
    if (w.item_limit == 0 || w.items_done < w.item_limit)
        return 0;
    if (!w.recycling)
        log_info("recycling after %llu items (workers.max_items %llu)",
                 (unsigned long long)w.items_done,
                 (unsigned long long)w.config->workers.max_items);
    w.recycling = 1;
    return 1;
}

static void
on_run(evutil_socket_t fd, short what, void *arg)
{
    struct task *t;
    /* A cancel check reads the data channel mid-task: if that found it
     * closed (the grpc process is gone), the rest is not run here: the
     * grpc process requeues what it gave us. */
    while (!recycle_due() && w.data != NULL && (t = w.head) != NULL) {
        w.head = t->next;
        if (w.head == NULL)
            w.tail = NULL;
        if (!run_task(t))
            task_free(t);
    }
    batch_close();
    flush();
    /* Recycling: what is still queued here was never started; the grpc
     * process requeues it when the master reports our exit. */
    if (w.stopping || w.recycling)
        event_base_loopbreak(w.base);
}

/*
 * Recycling: every update we sent must be read by the grpc process before it
 * learns of our exit, and it must not see our socket vanish while it writes
 * to it (a failed write closes its end of the channel, unread updates and
 * all). So: write everything, shut down our sending side, and read (and
 * drop: never started, they are requeued) whatever items still come until
 * the grpc process, having read up to our EOF, closes its end. Bounded.
 */
static void
linger(void)
{
    if (channel_flush(w.data) == -1)
        return;
    int fd = channel_fd(w.data);
    if (shutdown(fd, SHUT_WR) == -1)
        return;
    uint64_t deadline = clock_monotonic_ms() + LINGER_MS;
    char scratch[65536];
    for (;;) {
        uint64_t now = clock_monotonic_ms();
        if (now >= deadline) {
            log_warn("the grpc process did not close our data channel within %d ms",
                     LINGER_MS);
            return;
        }
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int n = poll(&p, 1, (int)(deadline - now));
        if (n == -1 && errno != EINTR)
            return;
        if (n <= 0)
            continue;
        ssize_t r = read(fd, scratch, sizeof scratch);
        if (r == 0 || (r == -1 && errno != EINTR && errno != EAGAIN))
            return;
    }
}

static int
take_item(const struct ipc_header *h, const uint8_t *body)
{
    struct ipc_item head;
    if (h->length < sizeof head) {
        log_error("data channel: ITEM frame of %u bytes is too short", h->length);
        return -1;
    }
    memcpy(&head, body, sizeof head);
    if (head.kind_len == 0 || (size_t)head.kind_len + head.id_len > h->length - sizeof head) {
        log_error("data channel: ITEM frame with a kind of %u and an id of %u bytes in %u",
                  head.kind_len, head.id_len, h->length);
        return -1;
    }
    struct task *t = ds_calloc(1, sizeof *t);
    t->key = head.key;
    t->attempt = head.attempt;
    t->given_attempt = head.attempt;
    t->kind = ds_strndup((const char *)body + sizeof head, head.kind_len);
    const char *id = (const char *)body + sizeof head + head.kind_len;
    size_t off = sizeof head + head.kind_len + head.id_len;
    t->item = wire_work_item_unpack(NULL, h->length - off, body + off);
    if (t->item == NULL) {
        static const char err[] = "the item could not be decoded";
        send_update(t, STATE_FAILED, 0, err, sizeof err - 1, NULL);
        task_free(t);
        return 0;
    }
    /* The grpc process checked the trace it kept in the WorkItem's bytes;
     * checked again here, so that nothing else reaches an environment. */
    struct trace_context trace;
    if (trace_of_work_item(body + off, h->length - off, &trace) && trace.parent_len > 0 &&
        trace_parent_invalid(trace.parent, trace.parent_len) == NULL) {
        t->traceparent = ds_strndup(trace.parent, trace.parent_len);
        if (trace.state_len > 0 && trace_state_invalid(trace.state, trace.state_len) == NULL)
            t->tracestate = ds_strndup(trace.state, trace.state_len);
    }
    if (t->item->id[0] == '\0' && head.id_len > 0) {
        /* The id the grpc process assigned; protobuf-c frees it with the
         * item (the empty string it replaces is static). */
        t->item->id = ds_strndup(id, head.id_len);
    }
    t->handler = config_handler(w.config, t->kind);
    if (w.tail != NULL)
        w.tail->next = t;
    else
        w.head = t;
    w.tail = t;
    event_active(w.run_event, EV_TIMEOUT, 0);
    return 0;
}

/* T is the grpc process's KEY, ATTEMPT: as given, or as renumbered before
 * it started (take_reattempt; the grpc process learns which from its
 * first update). */
static int
task_is(const struct task *t, uint64_t key, uint32_t attempt)
{
    return t->key == key && (t->attempt == attempt || t->given_attempt == attempt);
}

/*
 * The grpc process cancels an item: the one running is told through its
 * handler's cancel check (the handler stops, run_task reports CANCELLED);
 * one held but not started is dropped here and reported CANCELLED at once.
 * An item we do not hold has ended: its end is on its way, and that answers.
 */
static int
take_cancel(const struct ipc_header *h, const uint8_t *body)
{
    struct ipc_cancel c;
    if (h->length != sizeof c) {
        log_error("data channel: CANCEL frame of %u bytes, expected %zu", h->length, sizeof c);
        return -1;
    }
    memcpy(&c, body, sizeof c);
    if (w.current != NULL && task_is(w.current, c.key, c.attempt)) {
        w.cancel_requested = 1;
        return 0;
    }
    struct task **pp = &w.head, *prev = NULL;
    while (*pp != NULL && !task_is(*pp, c.key, c.attempt)) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    struct task *t = *pp;
    if (t == NULL)
        return 0;
    *pp = t->next;
    if (w.tail == t)
        w.tail = prev;
    static const char dropped[] = "cancelled before it started";
    send_update(t, STATE_CANCELLED, 0, dropped, sizeof dropped - 1, NULL);
    task_free(t);
    flush();
    return 0;
}

/*
 * The grpc process renumbers an item's attempt (cluster mode: the entry of a
 * copy waiting here came back to it counting more deliveries). Only one not
 * started takes it: the handler of one running has its number already, and
 * its updates tell the grpc process it ran as given.
 */
static int
take_reattempt(const struct ipc_header *h, const uint8_t *body)
{
    struct ipc_reattempt r;
    if (h->length != sizeof r) {
        log_error("data channel: REATTEMPT frame of %u bytes, expected %zu", h->length,
                  sizeof r);
        return -1;
    }
    memcpy(&r, body, sizeof r);
    if (r.new_attempt == 0) {
        log_error("data channel: REATTEMPT frame to attempt 0");
        return -1;
    }
    for (struct task *t = w.head; t != NULL; t = t->next) {
        if (t->key == r.key && t->given_attempt == r.attempt) {
            t->attempt = r.new_attempt;
            break;
        }
    }
    return 0;
}

static int
on_data_frame(void *arg, struct ipc_channel *ch, const struct ipc_header *h,
              const uint8_t *body, int fd)
{
    if (fd != -1)
        close(fd);
    if (h->type == IPC_ITEM)
        return take_item(h, body);
    if (h->type == IPC_CANCEL)
        return take_cancel(h, body);
    if (h->type == IPC_REATTEMPT)
        return take_reattempt(h, body);
    log_error("data channel: unexpected %s frame", ipc_type_name(h->type));
    return -1;
}

static void
on_data_close(void *arg, struct ipc_channel *ch, const char *reason)
{
    /* The grpc process retired us (it holds nothing of ours) or is gone.
     * If we are running an item (a handler's cancel check read this), its
     * end has nobody to go to: it is stopped as a cancel stops it, not left
     * to run on until the master kills us (a graceful stop whose grpc
     * process stopped fast, or died). */
    if (reason != NULL)
        log_error("data channel closed: %s", reason);
    if (w.current != NULL) {
        log_info("the grpc process is gone: stopping the item running here");
        w.cancel_requested = 1;
    }
    channel_free(ch);
    w.data = NULL;
    w.stopping = 1;
    event_active(w.run_event, EV_TIMEOUT, 0);
}

static int
on_control_frame(void *arg, struct ipc_channel *ch, const struct ipc_header *h,
                 const uint8_t *body, int fd)
{
    if (fd != -1)
        close(fd);
    switch (h->type) {
    case IPC_REOPEN_LOGS:
        log_reopen();
        return 0;
    case IPC_DRAIN:
        return 0;       /* the grpc process closes our data channel when done */
    default:
        log_error("control channel: unexpected %s frame", ipc_type_name(h->type));
        return -1;
    }
}

static void
on_control_close(void *arg, struct ipc_channel *ch, const char *reason)
{
    /* The master is gone: so are we. */
    _exit(DS_EXIT_OK);
}

void
worker_process_main(struct ds_child_start *start)
{
    char role[32];
    snprintf(role, sizeof role, "worker %u", start->slot);
    log_set_role(role);
    proctitle_set("dosomethingd: worker %u", start->slot);

    w.config = start->config;
    w.status = start->status;
    /* Before anything else: CPU, nice, limits, and `user:` if the master
     * has not dropped us to it yet; modules and programs never run as root. */
    worker_apply_hygiene(w.config, start->slot);
    cost_init();
    /* exec items write to pipes whose reader may be gone: EPIPE, not death. */
    signal(SIGPIPE, SIG_IGN);
    for (size_t i = 0; i < w.config->handler_count; i++) {
        if (w.config->handlers[i].type == DS_HANDLER_EXEC) {
            /* Before the modules, which may start threads. */
            char title[64];
            snprintf(title, sizeof title, "dosomethingd: exec guard of worker %u", start->slot);
            exec_guard_start(title);
            break;
        }
    }
    char err[1024];
    if (module_load_all(w.config, err, sizeof err) == -1) {
        exec_guard_stop();
        fatal(DS_EXIT_FATAL, "%s", err);
    }
    w.item_limit = pick_item_limit(w.config->workers.max_items);

    w.base = event_base_new();
    if (w.base == NULL)
        fatal(DS_EXIT_FATAL, "event_base_new() failed");
    w.run_event = event_new(w.base, -1, 0, on_run, NULL);
    w.control = channel_new(w.base, start->control_fd, "control", IPC_CONTROL_MAX,
                            on_control_frame, on_control_close, NULL);
    /* Not this generation's grpc.max_message_size: items queued under an
     * earlier, larger one come to us after a reload, and keep the limit
     * they were accepted under. */
    w.data = channel_new(w.base, start->data_fd, "data", IPC_ITEM_MAX, on_data_frame,
                         on_data_close, NULL);
    remember_spared_children();
    phase_set(DS_WORKER_IDLE, NULL);

    event_base_dispatch(w.base);

    log_debug("exiting after %llu items", (unsigned long long)w.items_done);
    if (w.data != NULL) {
        if (w.recycling)
            linger();
        channel_free(w.data);
    }
    while (w.head != NULL) {
        struct task *t = w.head;
        w.head = t->next;
        task_free(t);
    }
    module_unload_all();
    exec_guard_stop();
    free(w.spared);
    channel_free(w.control);
    event_free(w.run_event);
    event_base_free(w.base);
    config_free(w.config);
    exit(DS_EXIT_OK);
}
