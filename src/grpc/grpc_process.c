/*
 * The grpc process: start-up, messages from the master, signals, stops.
 *
 * It never forks. It calls grpc_init() only here, after the master forked
 * it, with the signals still blocked (inherited), so gRPC's threads never
 * take one; the loop reads them from a signalfd.
 *
 * Stops: a fast stop (TERM, or the master gone) cancels every call
 * (clients see UNAVAILABLE) and exits. A graceful stop (DRAIN from the
 * master on QUIT) stops taking calls, reads the submit calls under way to
 * their end (keeping the workers while items may still come, so that
 * those run at once: grpc_process_items_may_come()), lets the queue run
 * empty,
 * delivers the updates, ends the subscriber streams with OK, releases the
 * workers and exits; bounded by shutdown_timeout, after which it logs what
 * is left, has the workers stop what they run (store_abandon(): each item
 * gets its last update once its handler has stopped, a worker that has not
 * within QUEUE_STOP_WAIT_MS is killed), ends the streams and exits; past
 * FAST_STOP_GRACE_MS more it stops fast. A cluster instance stops fast at
 * the deadline (what it leaves stays in Redis); its workers stop what they
 * run once it is gone.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/descriptors.h"
#include "core/log.h"
#include "core/privileges.h"
#include "core/process.h"
#include "grpc/grpc_process.h"
#include "grpc/access_log.h"
#include "grpc/cq.h"
#include "grpc/get_items.h"
#include "grpc/handover.h"
#include "grpc/health.h"
#include "grpc/resolve.h"
#include "grpc/server.h"
#include "grpc/status.h"
#include "grpc/submit.h"
#include "grpc/subscribe.h"
#include "grpc/tcp_peer.h"
#include "grpc/journal.h"
#include "grpc/queue.h"
#include "grpc/reflection.h"
#include "grpc/store.h"
#include "grpc/transport.h"
#include "grpc/updates.h"
#include "ipc/channel.h"

/* After cancelling every call, wait at most this long for them to end. */
#define FAST_STOP_GRACE_MS 3000
/* After a graceful stop's deadline and FAST_STOP_GRACE_MS, the calls that
 * have not ended are cancelled and get this long: the whole stays within
 * the master's own grace after shutdown_timeout (5 s: master.c), past which
 * it kills us and the clients see UNAVAILABLE instead of their status. */
#define CANCELLED_CALLS_GRACE_MS 1500
/* A drain with nothing left to do but connections its clients keep open
 * closes them this long after: gRPC's server shutdown waits for every
 * connection to close, and gRPC C-core clients (Python, C++, Ruby, PHP)
 * keep an idle one open after GOAWAY, so that a graceful stop with any
 * client connected lasted until shutdown_timeout (30 s by default), and 3 s
 * more outside cluster mode. The grace lets a request sent before the
 * client read the GOAWAY arrive.
 *
 * The close cannot cut a stream's tail (a subscriber that reads slowly, or
 * not at all for a while): it comes only with gp.calls at 0, and a call
 * counts until its close op (RECV_CLOSE_ON_SERVER) completes, which gRPC's
 * HTTP/2 transport does once the stream is closed both ways; on the server
 * that is when its trailers (the status) are framed, and they are framed
 * only after every message before them has passed flow control (or when
 * the stream is cancelled). So a client that does not read keeps the stop
 * waiting, bounded by shutdown_timeout. What is framed is written: the
 * transport delays a close until the write under way is done, so those
 * bytes are in the kernel before shutdown(2), which sends them before the
 * FIN. But the kernel may not have delivered them: a client whose process
 * is stopped (a pause, a debugger, a machine under memory pressure) or
 * slow to read its socket leaves them in our send queue, and a closed
 * socket answers the first frame that client sends when it runs again (a
 * keepalive ping, a WINDOW_UPDATE) with a reset that drops them: the
 * subscriber lost the tail of its updates, and saw UNAVAILABLE
 * "Connection reset by peer" instead of its OK. So the close also waits
 * until the clients have acknowledged (on a unix socket: read) every byte
 * of their connections (server_connections_unacked(), looked at every
 * UNACKED_RECHECK_MS, less often with many descriptors), bounded by
 * shutdown_timeout; an idle client acknowledges at once (test_drain.py:
 * the "tail" tests). Not for a client that is gone (its machine off, its
 * NAT mapping expired): it would never acknowledge, and hold every stop
 * until shutdown_timeout (or until gRPC gives up the ping it sends with
 * GOAWAY, 20 s); tcp_peer.h says how it is told from a client that only
 * does not read. If /proc/self/fd cannot be read, the stop does not know
 * and waits (opened as the stop starts and kept, it can be read at the
 * descriptor limit). */
#define IDLE_CONNECTIONS_GRACE_MS 1000
#define UNACKED_RECHECK_MS 100
#define UNACKED_RECHECK_DESCRIPTORS 1000   /* a look UNACKED_RECHECK_MS longer for each */

struct grpc_process gp;

static void bind_now(const char *why);

static struct {
    int signal_fd;
    struct event *signal_event;
    struct event *stop_timer;
    struct event *idle_timer;   /* IDLE_CONNECTIONS_GRACE_MS, then UNACKED_RECHECK_MS */
    uint64_t unacked_logged;    /* the unacknowledged bytes last logged (0: none yet) */
    int subscribers_ended;
    int expired;                /* the drain's deadline passed: items were abandoned */
    char expired_why[96];
    int done;
    /* Readiness (report_ready). */
    int bind_when_serving;      /* the new instance of an upgrade: bind once the store serves
                                   (until then it runs as whoever started it, root maybe:
                                   see grpc_process_main) */
    int bound;                  /* bind_and_serve() ran */
    int ready_sent;             /* the master heard IPC_READY */
    int serving_sent;           /* ... and the last one said that the store serves */
    int status;                 /* the exit status bind_and_serve() decided */
    char *user;                 /* the config's at our start: `user` needs a restart
                                 * (ours for the process's life) */
} proc;

void
master_send(unsigned type, const void *body, size_t len)
{
    if (gp.control != NULL)
        channel_send(gp.control, type, body, len);
}

void
master_send_now(unsigned type, const void *body, size_t len)
{
    if (gp.control == NULL)
        return;
    channel_send(gp.control, type, body, len);
    channel_flush(gp.control);
}

static void
finish(void)
{
    if (proc.done)
        return;
    proc.done = 1;
    handover_end();     /* a drain may end while a failed call waits to be retried */
    event_base_loopbreak(gp.base);
}

int
grpc_process_items_may_come(void)
{
    return submit_active() > 0 || server_requests_pending() || store_accepting() ||
           store_taking();
}

/* A graceful stop's work is done; only the server's shutdown is not. */
static int
drained_but_connections(void)
{
    return gp.draining && !gp.stopping && proc.subscribers_ended && gp.calls == 0 &&
           !server_is_shut_down() && !grpc_process_items_may_come() &&
           !handover_active() && !store_handing_back() && store_count() == 0 && store_idle();
}

static void
on_idle_timer(evutil_socket_t fd, short what, void *arg)
{
    if (!drained_but_connections())
        return;
    struct unacked u;
    int known = server_connections_unacked(&u) == 0;
    if (!known || u.bytes > 0) {
        /* Once, and again only if it grew (it does not while clients read). */
        if (known && u.bytes > proc.unacked_logged)
            log_info("graceful stop: everything is done; waiting for clients to receive the "
                     "%llu bytes still on their connections", (unsigned long long)u.bytes);
        if (known)
            proc.unacked_logged = u.bytes;
        /* A look costs a few system calls a descriptor: with many of
         * them, look less often. */
        struct timeval tv = clock_timeval_ms(UNACKED_RECHECK_MS *
                                             (1 + u.descriptors / UNACKED_RECHECK_DESCRIPTORS));
        evtimer_add(proc.idle_timer, &tv);
        return;
    }
    if (u.gone > 0)
        log_warn("graceful stop: not waiting for the %llu bytes on %llu connection%s whose "
                 "client%s acknowledged nothing for %d s while the kernel retransmitted: "
                 "gone, it seems", (unsigned long long)u.gone_bytes,
                 (unsigned long long)u.gone, u.gone == 1 ? "" : "s", u.gone == 1 ? "" : "s",
                 TCP_PEER_SILENT_MS / 1000);
    log_info("graceful stop: everything is done; closing the connections clients keep open");
    server_shutdown(1);     /* no call is left to cancel: it closes the connections */
}

/* Is a stop under way, and is everything it waits for done? */
void
grpc_process_check_done(void)
{
    /* Items may have come, or stopped coming: a handover waiting for them
     * sends them or ends. */
    handover_poll();
    /* An idle worker goes once nothing waits and nothing more can come
     * (worker_maybe_release(), store.c's draining()): until then an item a
     * call under way still brings runs at once, not at shutdown_timeout. */
    if (gp.draining && !gp.stopping)
        workers_close_all();
    /* A call matched just before the shutdown may still be on its way to
     * us: its items would be accepted after the streams that tell their
     * finals had ended. The streams end once no request is left. */
    if (gp.draining && !gp.stopping && store_count() == 0 && !grpc_process_items_may_come() &&
        store_idle() && !proc.subscribers_ended) {
        proc.subscribers_ended = 1;
        subscribers_end_all();
        health_end_all();
        get_items_end_all();
        reflection_end_all();
    }
    if (drained_but_connections() && proc.idle_timer != NULL &&
        !evtimer_pending(proc.idle_timer, NULL)) {
        struct timeval tv = clock_timeval_ms(IDLE_CONNECTIONS_GRACE_MS);
        evtimer_add(proc.idle_timer, &tv);
    }
    if ((gp.stopping || gp.draining) && gp.calls == 0 && server_is_shut_down() &&
        !handover_active() && !store_handing_back() &&
        (gp.stopping || (store_count() == 0 && store_idle() && !store_taking())))
        finish();
}

void
grpc_process_call_ended(void)
{
    if (gp.calls > 0)
        gp.calls--;
    grpc_process_check_done();
}

static void
on_stop_timer(evutil_socket_t fd, short what, void *arg)
{
    if (gp.stopping) {
        log_warn("%llu calls did not end after being cancelled; exiting anyway",
                 (unsigned long long)gp.calls);
        finish();
        return;
    }
    if (drained_but_connections()) {
        /* Only connections are left, with bytes their clients have not
         * taken (on_idle_timer), or still in their grace. */
        struct unacked u;
        if (server_connections_unacked(&u) == -1)
            log_warn("shutdown_timeout (%llu ms) reached with everything done but the "
                     "connections, not knowing what their clients have not received; "
                     "closing them", (unsigned long long)gp.config->shutdown_timeout_ms);
        else if (u.bytes + u.gone_bytes > 0)
            log_warn("shutdown_timeout (%llu ms) reached with everything done but %llu bytes "
                     "clients have not received; closing their connections",
                     (unsigned long long)gp.config->shutdown_timeout_ms,
                     (unsigned long long)(u.bytes + u.gone_bytes));
        else
            log_info("graceful stop: everything is done; closing the connections clients "
                     "keep open");
        gp.stopping = 1;
        server_shutdown(1);
        struct timeval tv = clock_timeval_ms(FAST_STOP_GRACE_MS);
        evtimer_add(proc.stop_timer, &tv);
        grpc_process_check_done();
        return;
    }
    /* Before any kill it asks for: the master replaces no worker lost from
     * now on (nothing more will be given to one). */
    if (!proc.expired)
        master_send(IPC_DEADLINE, NULL, 0);
    if (!proc.expired && !store_shared_log()) {
        /* Tell every subscriber what becomes of the items left, then end
         * their streams once they have it (bounded by the grace). */
        log_warn("shutdown_timeout (%llu ms) reached with %llu items unfinished; %s",
                 (unsigned long long)gp.config->shutdown_timeout_ms,
                 (unsigned long long)store_count(),
                 store_keeps_abandoned() ? "they stay in the queue journal for the next start"
                                   : "they are FAILED");
        proc.expired = 1;
        handover_cancel();      /* what it has in flight comes back, abandoned */
        /* What waits gets its last update now; what runs once it has
         * stopped (within QUEUE_STOP_WAIT_MS: its worker is killed then). */
        snprintf(proc.expired_why, sizeof proc.expired_why,
                 "graceful stop reached shutdown_timeout (%llu ms)",
                 (unsigned long long)gp.config->shutdown_timeout_ms);
        store_abandon(proc.expired_why);
        /* Subscribers end in grpc_process_check_done() once the store is
         * empty: a final still being written to the journal is published
         * then, not lost behind an ended stream. */
        struct timeval tv = clock_timeval_ms(FAST_STOP_GRACE_MS);
        evtimer_add(proc.stop_timer, &tv);
        grpc_process_check_done();
        return;
    }
    log_warn("shutdown_timeout (%llu ms) reached with %llu items unfinished; stopping fast",
             (unsigned long long)gp.config->shutdown_timeout_ms,
             (unsigned long long)store_count());
    /* Cluster: what waits here goes back to the other instances at once,
     * at its attempt (it never started here); what runs is taken over
     * after the lease. */
    if (!proc.expired)
        store_hand_back();
    gp.stopping = 1;
    server_shutdown(1);
    struct timeval tv = clock_timeval_ms(proc.expired ? CANCELLED_CALLS_GRACE_MS
                                                      : FAST_STOP_GRACE_MS);
    evtimer_add(proc.stop_timer, &tv);
    grpc_process_check_done();
}

static void
stop_fast(const char *why)
{
    if (gp.stopping)
        return;
    uint64_t left = store_count();
    if (left == 0)
        log_info("fast stop: %s", why);
    else
        log_warn("fast stop: %s; %llu items unfinished: %s", why, (unsigned long long)left,
                 store_shared_log() ? "the other instances take them over after the lease"
                 : store_keeps_abandoned() ? "they stay in the queue journal and run at the "
                                             "next start"
                 : "they are lost (no queue.journal)");
    gp.stopping = 1;
    handover_cancel();
    server_shutdown(1);
    struct timeval tv = clock_timeval_ms(FAST_STOP_GRACE_MS);
    evtimer_add(proc.stop_timer, &tv);
    grpc_process_check_done();
}

static void
stop_graceful(void)
{
    if (gp.draining || gp.stopping)
        return;
    log_info("graceful stop: %llu items to finish", (unsigned long long)store_count());
    gp.draining = 1;
    health_changed();
    store_drain();
    server_connections_watch();     /* before the descriptors may run out */
    server_shutdown(0);
    struct timeval tv = clock_timeval_ms(gp.config->shutdown_timeout_ms);
    evtimer_add(proc.stop_timer, &tv);
    grpc_process_check_done();
}

/* A new config generation, validated by the master: apply in place.
 * MODULE_FLAGS: HANDLER_COUNT of them, each handler's in order. */
static void
apply_config(uint64_t generation, const uint8_t *module_flags, size_t handler_count,
             const char *text, size_t len)
{
    char errors[4096];
    struct ds_config *config = config_load_text(gp.config->path, text, len, errors,
                                                sizeof errors);
    if (config == NULL) {
        log_error("config generation %llu does not load here: %s",
                  (unsigned long long)generation, errors);
        status_reload_failed("reload failed in the grpc process: the config does not load here");
        return;
    }
    if (config->handler_count != handler_count) {
        log_error("config generation %llu has %zu handlers here, the master sent the flags "
                  "of %zu; keeping generation %llu", (unsigned long long)generation,
                  config->handler_count, handler_count, (unsigned long long)gp.generation);
        config_free(config);
        status_reload_failed("reload failed in the grpc process: handler flags do not match");
        return;
    }
    for (size_t i = 0; i < handler_count; i++)
        memcpy(&config->handlers[i].module_flags, module_flags + i * sizeof(uint32_t),
               sizeof(uint32_t));
    /* `user` needs a restart (the master keeps it too): this process runs
     * as the one it started with. */
    config->user = proc.user;
    struct ds_config *old = gp.config;
    gp.config = config;
    gp.generation = generation;
    log_open(config->log.file, config->log.level);
    access_log_open();
    updates_configure();
    store_configure(old);
    server_reconfigure(old);
    status_reconfigure();
    store_room_available();
    config_free(old);
    log_info("config generation %llu applied", (unsigned long long)generation);
}

static int
on_control_frame(void *arg, struct ipc_channel *ch, const struct ipc_header *h,
                 const uint8_t *body, int fd)
{
    struct ipc_worker w;
    switch (h->type) {
    case IPC_WORKER_ATTACH:
        if (!(h->flags & IPC_FLAG_FD) || h->length != sizeof w)
            break;
        memcpy(&w, body, sizeof w);
        if (fd == -1) {
            /* Out of descriptors: this worker goes, the queue stays. The
             * master restarts it with backoff. */
            char why[160];
            int n = snprintf(why, sizeof why, "its data channel was lost in recvmsg(SCM_RIGHTS) "
                             "(%llu of %llu descriptors open)",
                             (unsigned long long)descriptors_open(),
                             (unsigned long long)descriptors_limit());
            log_error("worker %ld: %s", (long)w.pid, why);
            struct iovec parts[2] = {
                { .iov_base = &w, .iov_len = sizeof w },
                { .iov_base = why, .iov_len = (size_t)n < sizeof why ? (size_t)n : sizeof why - 1 },
            };
            if (gp.control != NULL)
                channel_sendv(gp.control, IPC_WORKER_LOST, parts, 2);
            return 0;
        }
        if (gp.stopping) {
            close(fd);
        } else {
            workers_attach(w.pid, w.slot, fd);
            master_send(IPC_WORKER_ATTACHED, &w, sizeof w);
        }
        return 0;
    case IPC_WORKER_EXITED: {
        struct ipc_worker_exit x;
        if (h->length < sizeof x)
            break;
        memcpy(&x, body, sizeof x);
        char reason[256];
        size_t n = h->length - sizeof x < sizeof reason - 1 ? h->length - sizeof x
                                                            : sizeof reason - 1;
        memcpy(reason, body + sizeof x, n);
        reason[n] = '\0';
        struct ipc_cost limit_cost = { .cpu_usec = x.cpu_usec, .max_rss_kib = x.max_rss_kib };
        workers_exited(x.worker.pid, reason, x.running_key, x.running_attempt,
                       (x.flags & IPC_EXIT_LIMIT) ? &limit_cost : NULL);
        grpc_process_check_done();
        return 0;
    }
    case IPC_WORKER_RETIRE:
        if (h->length != sizeof w)
            break;
        memcpy(&w, body, sizeof w);
        workers_retire(w.pid);
        return 0;
    case IPC_CONFIG: {
        struct ipc_config c;
        if (h->length < sizeof c)
            break;
        memcpy(&c, body, sizeof c);
        size_t flags_len = (size_t)c.handler_count * sizeof(uint32_t);
        if (h->length - sizeof c < flags_len)
            break;
        apply_config(c.generation, body + sizeof c, c.handler_count,
                     (const char *)body + sizeof c + flags_len, h->length - sizeof c - flags_len);
        return 0;
    }
    case IPC_DRAIN:
        stop_graceful();
        if (h->length == 1 && body[0] == 1 && !gp.stopping && !proc.expired)
            handover_start();   /* a USR2 upgrade's drain */
        return 0;
    case IPC_RELOAD_FAILED: {
        char why[600];
        size_t n = h->length < sizeof why - 1 ? h->length : sizeof why - 1;
        memcpy(why, body, n);
        why[n] = '\0';
        status_reload_failed(why);
        return 0;
    }
    case IPC_REOPEN_LOGS:
        log_reopen();
        access_log_open();
        return 0;
    case IPC_BIND_NOW:
        /* Nothing else listens now: serve (or say why not) as at a start. */
        bind_now("the old master is gone");
        return 0;
    default:
        break;
    }
    if (fd != -1)
        close(fd);
    log_error("control channel: unexpected %s frame of %u bytes", ipc_type_name(h->type),
              h->length);
    return -1;
}

static void
on_control_close(void *arg, struct ipc_channel *ch, const char *reason)
{
    channel_free(ch);
    gp.control = NULL;
    stop_fast(reason == NULL ? "the master is gone" : reason);
}

static void
on_signal(evutil_socket_t fd, short what, void *arg)
{
    struct signalfd_siginfo si;
    while (read(proc.signal_fd, &si, sizeof si) == sizeof si) {
        switch (si.ssi_signo) {
        case SIGTERM:
        case SIGINT:
            stop_fast(strsignal((int)si.ssi_signo));
            break;
        case SIGQUIT:
            stop_graceful();
            break;
        case SIGUSR1:
            log_reopen();
            access_log_open();
            break;
        default:
            break;      /* HUP and the rest are the master's */
        }
    }
}

static int
signals_init(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGTTIN);
    sigaddset(&set, SIGTTOU);
    sigaddset(&set, SIGWINCH);
    /* Blocked before any thread exists, so every thread inherits it. */
    sigprocmask(SIG_BLOCK, &set, NULL);
    proc.signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (proc.signal_fd == -1) {
        log_syserr("signalfd() failed");
        return -1;
    }
    proc.signal_event = event_new(gp.base, proc.signal_fd, EV_READ | EV_PERSIST, on_signal, NULL);
    event_add(proc.signal_event, NULL);
    return 0;
}

/*
 * What the master hears (IPC_READY), a state report: once the listeners
 * are bound, whether the store can take items, and if not why; then again
 * at every change of that (serving, not serving: Redis lost). The master
 * says "serving" (and hands an upgrade over) only while the last report
 * says so: listening alone is not serving while a Redis session or a
 * journal is not open yet, or lost.
 */
static void
report_ready(void)
{
    if (!proc.bound || gp.stopping || gp.draining)
        return;
    const char *why = NULL;
    int serving = store_serving(&why);
    if (proc.ready_sent && serving == proc.serving_sent)
        return;     /* nothing new to say (a new reason alone is not worth a report) */
    if (!proc.ready_sent && !serving && store_starting())
        return;     /* not yet: its first attempt is under way */
    uint8_t body[1 + 255];
    size_t len = 1;
    body[0] = (uint8_t)serving;
    if (!serving && why != NULL) {
        len += strnlen(why, sizeof body - 1);
        memcpy(body + 1, why, len - 1);
    }
    master_send(IPC_READY, body, len);
    proc.ready_sent = 1;
    proc.serving_sent = serving;
}

/* Bind the listeners, drop privileges, tell the master; proc.status says
 * whether that failed (the process then exits once the server that
 * started has shut down). */
static void
bind_and_serve(void)
{
    char err[256];
    proc.bound = 1;
    /* TCP listeners are bound as `user:` when we run as root (server.c
     * add_port(), status.c listen_socket(): one owner for the sockets
     * that share a port, whichever of a start, a reload or an upgrade
     * bound them); nothing after this runs as root. */
    if (server_start() == -1) {
        proc.status = DS_EXIT_FATAL;
        gp.stopping = 1;
        server_shutdown(1);
    } else if (status_start() == -1) {
        proc.status = DS_EXIT_FATAL;
        stop_fast("status.listen cannot be bound");
    }
    if (cq_start() == -1)
        fatal(DS_EXIT_FATAL, "cannot start the completion queue thread");
    /* What was made as root for us to write after the drop becomes the user's. */
    if (proc.status == DS_EXIT_OK)
        journal_chown(gp.config->user);
    if (proc.status == DS_EXIT_OK && privileges_drop(gp.config->user, err, sizeof err) == -1) {
        log_error("%s", err);
        master_send_now(IPC_FATAL, err, strlen(err));
        proc.status = DS_EXIT_FATAL;
        stop_fast("cannot drop privileges");
    }
    if (proc.status == DS_EXIT_OK)
        report_ready();
}

/* The new instance of an upgrade stops waiting (WHY) and binds. */
static void
bind_now(const char *why)
{
    if (!proc.bind_when_serving || gp.stopping || gp.draining)
        return;
    proc.bind_when_serving = 0;
    log_notice("binary upgrade: %s; listening", why);
    bind_and_serve();
    if (proc.status != DS_EXIT_OK && server_is_shut_down())
        event_base_loopbreak(gp.base);
}

/* The store serves now, or its first attempt failed: the new instance of
 * an upgrade binds its listeners once it serves, a bound one tells the
 * master. */
static void
on_store_serving_changed(void)
{
    if (gp.stopping || gp.draining)
        return;
    if (proc.bind_when_serving) {
        if (store_serving(NULL))
            bind_now("the store serves");
        return;
    }
    report_ready();
}

void
grpc_process_main(struct ds_child_start *start)
{
    log_set_role("grpc");
    proctitle_set("dosomethingd: grpc");
    gp.config = start->config;
    gp.generation = start->generation;
    proc.user = ds_strdup(gp.config->user);

    if (evthread_use_pthreads() == -1)
        fatal(DS_EXIT_FATAL, "evthread_use_pthreads() failed");
    gp.base = event_base_new();
    if (gp.base == NULL)
        fatal(DS_EXIT_FATAL, "event_base_new() failed");
    if (signals_init() == -1)
        exit(DS_EXIT_FATAL);
    proc.stop_timer = evtimer_new(gp.base, on_stop_timer, NULL);
    proc.idle_timer = evtimer_new(gp.base, on_idle_timer, NULL);
    gp.control = channel_new(gp.base, start->control_fd, "control", IPC_CONTROL_MAX +
                             (uint32_t)gp.config->grpc.max_message_size, on_control_frame,
                             on_control_close, NULL);

    access_log_open();
    transport_start();
    grpc_init();
    gp.cq = grpc_completion_queue_create_for_next(NULL);
    /* Recovery from the journal, if any, before serving: it may move seqs on. */
    uint64_t seq_start = start->seq_start;
    store_on_room(submit_resume_blocked);
    store_on_serving_changed(on_store_serving_changed);
    updates_listen(subscribers_publish);
    store_init(&seq_start);
    updates_init(seq_start);
    store_start();
    proc.status = DS_EXIT_OK;
    const char *why = NULL;
    /* The new instance of an upgrade waits unbound, as whoever started us
     * (root with user:), for up to the upgrade's timeout: its Redis
     * session, the update stream read and the journal's retries run as
     * root meanwhile. It binds as the user (privileges_bind_as()), as the
     * old instance's start and reloads did, so that its listeners share
     * their ports through SO_REUSEPORT (granted only between sockets of
     * one owner uid). Creating the sockets early and keeping them
     * unaccepted would queue clients' connections on the waiting
     * instance. So it drops right after binding (bind_and_serve), as a
     * plain start does. */
    if (start->bind_when_serving && !store_serving(&why)) {
        log_notice("binary upgrade: listening once the store serves (%s); the old instance "
                   "serves meanwhile", why);
        proc.bind_when_serving = 1;
    } else {
        bind_and_serve();
    }
    if (proc.status == DS_EXIT_OK || !server_is_shut_down())
        event_base_dispatch(gp.base);   /* failed: until the server that started has shut down */
    int status = proc.status;

    if (!server_is_shut_down()) {
        /* Calls outlived the grace: leave their teardown to exit(). */
        log_warn("exiting with %llu calls still open", (unsigned long long)gp.calls);
        store_shutdown();
        exit(status);
    }
    /* Every call has ended: take gRPC down in its order. */
    handover_shutdown();
    cq_stop();
    server_destroy();
    grpc_completion_queue_destroy(gp.cq);
    gp.cq = NULL;
    store_shutdown();
    updates_shutdown();
    grpc_shutdown();
    status_shutdown();
    resolve_shutdown();     /* after all who ask it: cluster, sentinels, status */

    if (gp.control != NULL) {
        channel_flush(gp.control);
        channel_free(gp.control);
    }
    transport_stop();
    event_free(proc.stop_timer);
    event_free(proc.idle_timer);
    event_free(proc.signal_event);
    close(proc.signal_fd);
    event_base_free(gp.base);
    access_log_close();
    config_free(gp.config);
    log_info("exiting");
    exit(status);
}
