/*
 * Supervision: the process table, spawning, reaping, respawn with backoff,
 * signals, reload and stop.
 *
 * Every child has a control channel to the master; each worker also has a
 * data channel to the grpc process. The master creates that channel, gives
 * one end to the worker at fork and passes the other to the grpc process
 * (SCM_RIGHTS), so a respawned worker is wired in while everything else
 * keeps running. The master never calls gRPC: it forks every child,
 * respawns included.
 *
 * Signals arrive through a signalfd read by the event loop: no work happens
 * in a handler.
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/alloc.h"
#include "core/children.h"
#include "core/clock.h"
#include "core/descriptors.h"
#include "core/log.h"
#include "core/process.h"
#include "ipc/channel.h"
#include "master/listen_probe.h"
#include "master/master.h"

/* A reload's trial load in a child (reload_trial()) gets this long. */
#define RELOAD_TRIAL_MS 10000
/* A fast stop waits this long for children before killing them. */
#define FAST_STOP_GRACE_MS 5000
/* At exit, what the workers left behind gets this long to die. */
#define STRAYS_GRACE_MS 2000

struct process {
    struct process *next;
    enum ds_role role;
    uint32_t slot;              /* worker slot from 1; 0 for the grpc process */
    pid_t pid;
    uint64_t generation;
    uint64_t started_ms;
    struct ipc_channel *control;
    int data_fd;                /* grpc end of a worker's data channel, until passed on */
    struct ds_worker_status *status;    /* a worker's, shared with it (see process.h) */
    int retiring;               /* out of its slot: finishing its items, then exiting */
    uint64_t retire_deadline_ms;    /* then it is killed */
    int killed_by_master;       /* its death is not a crash */
    int attached;               /* the grpc process has its data channel */
    int channel_lost;           /* its data channel never reached the grpc process */
    char kill_reason[160];      /* why the master killed it, for the items it held */
    int exited;                 /* reaped: what it sent is read for its data only */
};

struct slot {
    struct process *process;    /* NULL while waiting to be (re)spawned */
    uint64_t backoff_ms;        /* the next delay after a crash */
    uint32_t crashes;           /* in a row, without a stable run between */
    struct event *timer;        /* respawn */
    uint32_t index;             /* 0: grpc; else the worker slot */
};

enum master_state {
    MASTER_RUNNING,
    MASTER_STOPPING_FAST,
    MASTER_STOPPING_GRACEFUL,
};

static struct {
    struct event_base *base;
    struct ds_config *config;
    char *config_file;
    /* As at start (ours, freed at exit): a reload that changes pid_file,
     * daemon or user keeps these until a restart. */
    char *pid_file;
    int daemon;
    char *user;
    uint64_t generation;
    struct process *processes;  /* every child alive */
    struct slot grpc;
    struct slot *workers;       /* worker_count slots, slot i at [i - 1] */
    uint32_t worker_count;
    uint64_t seq_reserved;      /* every seq up to this may have been used */
    enum master_state state;
    int exit_status;
    int signal_fd;
    struct event *signal_event;
    struct event *stop_timer;
    uint64_t drain_deadline_ms; /* a graceful stop's: shutdown_timeout after it began */
    int drain_expired;          /* the grpc process said its deadline came (IPC_DEADLINE) */
    struct event *retire_timer;
    struct event *upgrade_timer;        /* the new master of an upgrade must serve by then */
    pid_t pid;
    int serving;                /* "serving" was announced once */
    int announce;               /* the grpc process is READY: announce once workers are wired */
    /* What its last IPC_READY said: the store takes items, or why not. */
    int store_serving;
    char store_why[256];
    /* What becomes of the grpc process's items if it dies, by the config it
     * was started with (its store is chosen once: a reload does not change
     * it). Static text. */
    const char *grpc_items_fate;
    pid_t upgrade_child;        /* the new master of a USR2 upgrade, until it takes over */
    pid_t upgrade_stopping;     /* that one, told to stop: it did not serve in time */
    pid_t upgrade_parent;       /* the old master we take over from, while it lives and
                                   we have not told it to drain (then 0) */
    int upgrade_parent_fd;      /* its pidfd (-1: none; pidfd_open unavailable) */
    struct event *upgrade_parent_event; /* readable pidfd: it exited; else a 1 s poll */
    char status[512];           /* the outcome of the last reload, for systemd */
    /* A HUP came while the workers the last reload retired still finish
     * their items: reload once they are gone (reload_when_done). */
    int reload_pending;
    int hup_stopping_said;      /* "no reload while stopping" was logged: once per stop */
    pid_t *inherited;           /* children we had before we forked any: not ours to kill */
    size_t inherited_count;
} m;

/* A new master started by USR2 gets this: "OLD_PID SEQ_START". */
#define UPGRADE_ENV "DOSOMETHINGD_UPGRADE"
/* How far past the old master's seqs the new one starts: the old one keeps
 * publishing while it drains (16M updates is far more than a drain of a
 * full default queue makes). */
#define UPGRADE_SEQ_GAP (1ull << 24)
/* A new master that does not serve within this (UPGRADE_TIMEOUT_ENV: ms, for
 * the tests) is killed and the upgrade fails: one that hangs (a deadlocked
 * start, an executable that is not ours) would refuse every later USR2 and
 * keep our pid file at FILE.oldbin. Long: a start reads the journal. */
#define UPGRADE_TIMEOUT_MS (5 * 60 * 1000)
#define UPGRADE_TIMEOUT_ENV "DS_UPGRADE_TIMEOUT_MS"
/* Then it gets this long to stop on SIGTERM before SIGKILL. */
#define UPGRADE_KILL_GRACE_MS 5000
/* Without a pidfd, the new master of an upgrade looks this often whether
 * the old one is still its parent. */
#define UPGRADE_PARENT_POLL_MS 1000

/*
 * Where seqs start: past the last one reserved, and never below the wall
 * clock in microseconds, so that seq also keeps increasing across a full
 * restart (updates are far rarer than one per microsecond) while staying
 * below 2^53, which clients that keep it in a double can hold exactly.
 */
static uint64_t
seq_floor(uint64_t reserved)
{
    uint64_t clock_us = (uint64_t)(clock_wall_ns() / 1000);
    return reserved > clock_us ? reserved : clock_us;
}

char master_executable[4096];

static void slot_spawn(struct slot *slot);
static void master_stop(enum master_state how, int status);
static int on_child_frame(void *arg, struct ipc_channel *ch, const struct ipc_header *h,
                          const uint8_t *body, int fd);
static void on_child_close(void *arg, struct ipc_channel *ch, const char *reason);
static void upgrade_child_exited(int status);
static void reload_when_done(void);

static const char *
role_name(const struct process *p, char *buf, size_t size)
{
    if (p->role == DS_ROLE_GRPC)
        snprintf(buf, size, "grpc process");
    else
        snprintf(buf, size, "worker %u", p->slot);
    return buf;
}

static struct process *
process_find(pid_t pid)
{
    for (struct process *p = m.processes; p != NULL; p = p->next)
        if (p->pid == pid)
            return p;
    return NULL;
}

static struct process *
grpc_process(void)
{
    return m.grpc.process;
}

/* ---- children ---------------------------------------------------------- */

/* What the master acts on and its workers ignore (exec.c gives the
 * programs they run the default dispositions back). */
static const int master_only_signals[] = { SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGTTIN,
                                           SIGTTOU, SIGWINCH };

/* In a new child: drop everything of the master's but KEEP (-1 ends it). */
static void
child_close_fds(const int *keep, int count)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return;
    int dir_fd = dirfd(d);
    struct dirent *e;
    int fds[4096], n = 0;
    while ((e = readdir(d)) != NULL && n < 4096) {
        int fd = atoi(e->d_name);
        if (fd <= 2 || fd == dir_fd || e->d_name[0] == '.')
            continue;
        int kept = 0;
        for (int i = 0; i < count; i++)
            kept |= keep[i] == fd;
        if (!kept)
            fds[n++] = fd;
    }
    closedir(d);
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

static void
child_setup(enum ds_role role, const int *keep, int count)
{
    /* Die with the master, even if it is SIGKILLed: no orphans. The grpc
     * process gets TERM, its fast stop; a worker holds nothing worth saving. */
    prctl(PR_SET_PDEATHSIG, role == DS_ROLE_GRPC ? SIGTERM : SIGKILL);
    if (getppid() != m.pid)
        _exit(DS_EXIT_OK);
    child_close_fds(keep, count);
    /* Privileges: a worker drops them in worker_apply_hygiene(), after the
     * root-only settings (nice, rlimits); the grpc process once its
     * listeners are bound. */
    if (role == DS_ROLE_WORKER) {
        /* The master's signals are not a worker's: one sent to every
         * process of the daemon (`systemctl kill -s USR2`, whose default is
         * every process of the unit, `pkill -HUP`, a terminal's hangup)
         * killed each worker with the items it ran. Ignored before the
         * mask opens, which drops one already pending. A worker stops
         * through its control channel, TERM or KILL. */
        for (size_t i = 0; i < sizeof master_only_signals / sizeof master_only_signals[0]; i++)
            signal(master_only_signals[i], SIG_IGN);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
    }
    /* The grpc process keeps the signals blocked: its gRPC threads must never
     * take them; it reads them with a signalfd of its own. */
}

static struct process *
process_new(enum ds_role role, uint32_t slot)
{
    struct process *p = ds_calloc(1, sizeof *p);
    p->role = role;
    p->slot = slot;
    p->data_fd = -1;
    p->generation = m.generation;
    return p;
}

static void
process_free(struct process *p)
{
    channel_free(p->control);
    if (p->data_fd != -1)
        close(p->data_fd);
    if (p->status != NULL)
        munmap(p->status, sizeof *p->status);
    free(p);
}

/* Hand a worker's data channel to the grpc process. */
static void
worker_attach(struct process *w)
{
    struct process *g = grpc_process();
    if (w->data_fd == -1 || g == NULL || g->control == NULL)
        return;
    struct ipc_worker msg = { .pid = w->pid, .slot = w->slot, .generation = w->generation };
    if (channel_send_fd(g->control, IPC_WORKER_ATTACH, &msg, sizeof msg, w->data_fd) == 0) {
        close(w->data_fd);
        w->data_fd = -1;
    }
}

static void
worker_send(struct process *w, unsigned type, const char *text)
{
    struct process *g = grpc_process();
    if (g == NULL || g->control == NULL)
        return;
    struct ipc_worker msg = { .pid = w->pid, .slot = w->slot, .generation = w->generation };
    struct iovec parts[2] = {
        { .iov_base = &msg, .iov_len = sizeof msg },
        { .iov_base = (void *)text, .iov_len = text ? strlen(text) : 0 },
    };
    channel_sendv(g->control, type, parts, 2);
}

/* LIMIT: the running item went over a limit (W's status says which and
 * what it cost); its attempt ends FAILED with REASON. */
static void
worker_send_exited(struct process *w, const char *reason, uint64_t running_key,
                   uint32_t running_attempt, int limit)
{
    struct process *g = grpc_process();
    if (g == NULL || g->control == NULL)
        return;
    struct ipc_worker_exit msg = {
        .worker = { .pid = w->pid, .slot = w->slot, .generation = w->generation },
        .running_key = running_key,
        .running_attempt = running_attempt,
        .flags = limit ? IPC_EXIT_LIMIT : 0,
        .cpu_usec = limit ? w->status->limit_cpu_usec : 0,
        .max_rss_kib = limit ? w->status->limit_max_rss_kib : 0,
    };
    struct iovec parts[2] = {
        { .iov_base = &msg, .iov_len = sizeof msg },
        { .iov_base = (void *)reason, .iov_len = strlen(reason) },
    };
    channel_sendv(g->control, IPC_WORKER_EXITED, parts, 2);
}

static struct process *
spawn(enum ds_role role, uint32_t slot)
{
    int control[2], data[2] = { -1, -1 };
    char name[64];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, control) == -1) {
        log_syserr("socketpair() failed");
        return NULL;
    }
    if (role == DS_ROLE_WORKER &&
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, data) == -1) {
        log_syserr("socketpair() failed");
        close(control[0]);
        close(control[1]);
        return NULL;
    }

    struct process *p = process_new(role, slot);
    pid_t pid = -1;
    if (role == DS_ROLE_WORKER) {
        p->status = mmap(NULL, sizeof *p->status, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p->status == MAP_FAILED) {
            log_syserr("mmap() of a worker's status failed");
            p->status = NULL;
            goto failed;
        }
    }
    pid = fork();
    if (pid == -1) {
        log_syserr("fork() failed");
        goto failed;
    }
    if (pid == 0) {
        int keep[] = { control[1], data[1], log_file_fd() };
        child_setup(role, keep, 3);
        /* Another worker's status is none of this child's business. */
        for (struct process *other = m.processes; other != NULL; other = other->next)
            if (other->status != NULL)
                munmap(other->status, sizeof *other->status);
        struct ds_child_start start = {
            .role = role,
            .config = m.config,
            .generation = m.generation,
            .slot = slot,
            .control_fd = control[1],
            .data_fd = data[1],
            /* slot_spawn reserved one chunk past this for the grpc process */
            .seq_start = m.seq_reserved - SEQ_RESERVE_CHUNK,
            .status = p->status,
            .bind_when_serving = m.upgrade_parent > 0 && !m.serving,
        };
        if (role == DS_ROLE_GRPC)
            grpc_process_main(&start);
        worker_process_main(&start);
    }

    close(control[1]);
    if (data[1] != -1)
        close(data[1]);
    p->pid = pid;
    p->started_ms = clock_monotonic_ms();
    p->data_fd = data[0];
    p->control = channel_new(m.base, control[0], role_name(p, name, sizeof name),
                             IPC_CONTROL_MAX, on_child_frame, on_child_close, p);
    p->next = m.processes;
    m.processes = p;
    log_info("started %s, pid %ld", name, (long)pid);
    return p;

failed:
    close(control[0]);
    close(control[1]);
    if (data[0] != -1) {
        close(data[0]);
        close(data[1]);
    }
    if (p->status != NULL)
        munmap(p->status, sizeof *p->status);
    free(p);
    return NULL;
}

static void slot_schedule(struct slot *slot, uint64_t delay_ms);

/* Respawn SLOT after its backoff, which doubles; not counted as a crash. */
static void
slot_retry_later(struct slot *slot)
{
    uint64_t delay = slot->backoff_ms;
    slot->backoff_ms = delay * 2 > m.config->respawn.backoff_max_ms
                           ? m.config->respawn.backoff_max_ms : delay * 2;
    log_notice("starting worker %u again in %llu ms", slot->index, (unsigned long long)delay);
    slot_schedule(slot, delay);
}

static void
slot_spawn(struct slot *slot)
{
    if (m.state == MASTER_STOPPING_FAST || slot->process != NULL)
        return;
    if (slot->index == 0) {
        if (m.state != MASTER_RUNNING)
            return;
        /* A new grpc process starts seqs past every one the old could use. */
        m.seq_reserved += SEQ_RESERVE_CHUNK;
        m.grpc_items_fate =
            m.config->cluster.redis != NULL
                ? "are taken over by the other instances after the lease"
            : m.config->queue.journal != NULL
                ? "stay in the queue journal (the next grpc process to read it runs them)"
                : "are lost (no queue.journal), and its calls ended UNAVAILABLE";
        slot->process = spawn(DS_ROLE_GRPC, 0);
        if (slot->process == NULL) {
            master_stop(MASTER_STOPPING_FAST, DS_EXIT_FAILURE);
            return;
        }
        for (struct process *p = m.processes; p != NULL; p = p->next)
            if (p->role == DS_ROLE_WORKER)
                worker_attach(p);
        return;
    }
    slot->process = spawn(DS_ROLE_WORKER, slot->index);
    if (slot->process == NULL) {
        /* Out of descriptors or processes for now: the grpc process and
         * its queue keep running; this slot tries again later. */
        slot_retry_later(slot);
        return;
    }
    worker_attach(slot->process);
}

/*
 * Does a graceful stop still want a worker lost now replaced? Until its
 * deadline, yes: the items the lost one held come back (a retry of the
 * one it ran, those it had prefetched) and others may wait, and with one
 * worker nothing else would run them (they would end "not run" at the
 * deadline). From the deadline on, no: the grpc process gives a worker
 * nothing more (store_abandon takes every waiting item, and a retry is
 * abandoned, not queued; in cluster mode it exits), so a new one would be
 * started only to be released at once. The deadline is the grpc process's
 * (IPC_DEADLINE, sent before the kills it asks for then), or ours if it
 * has not said so by then.
 */
static int
drain_wants_workers(void)
{
    return m.state == MASTER_STOPPING_GRACEFUL && grpc_process() != NULL &&
           !m.drain_expired && clock_monotonic_ms() < m.drain_deadline_ms;
}

static void
on_respawn_timer(evutil_socket_t fd, short what, void *arg)
{
    struct slot *slot = arg;
    if (m.state != MASTER_RUNNING && slot != &m.grpc && !drain_wants_workers())
        return;         /* due during a stop, past what it needs */
    slot_spawn(slot);
}

static void
slot_init(struct slot *slot, uint32_t index)
{
    memset(slot, 0, sizeof *slot);
    slot->index = index;
    slot->backoff_ms = m.config->respawn.backoff_min_ms;
    slot->timer = evtimer_new(m.base, on_respawn_timer, slot);
}

static void
slot_schedule(struct slot *slot, uint64_t delay_ms)
{
    if (delay_ms == 0) {
        slot_spawn(slot);
        return;
    }
    struct timeval tv = clock_timeval_ms(delay_ms);
    evtimer_add(slot->timer, &tv);
}

static void
kill_process(struct process *p, int sig, const char *reason)
{
    p->killed_by_master = 1;
    if (reason != NULL && p->kill_reason[0] == '\0')
        snprintf(p->kill_reason, sizeof p->kill_reason, "%s", reason);
    if (kill(p->pid, sig) == -1 && errno != ESRCH)
        log_syswarn("kill(%ld, %d) failed", (long)p->pid, sig);
}

/* Take a worker out of its slot: the grpc process stops giving it items
 * and closes its channel once it holds none; it then exits. */
static void
worker_retire(struct process *w)
{
    if (w->retiring)
        return;
    w->retiring = 1;
    w->retire_deadline_ms = clock_monotonic_ms() + m.config->shutdown_timeout_ms;
    if (w->slot >= 1 && w->slot <= m.worker_count && m.workers[w->slot - 1].process == w)
        m.workers[w->slot - 1].process = NULL;
    if (grpc_process() != NULL)
        worker_send(w, IPC_WORKER_RETIRE, NULL);
    else
        kill_process(w, SIGKILL, NULL);
}

static void arm_retire_timer(void);

static void
on_retire_timer(evutil_socket_t fd, short what, void *arg)
{
    char reason[160];
    uint64_t now = clock_monotonic_ms();
    for (struct process *p = m.processes; p != NULL; p = p->next) {
        if (!p->retiring || p->killed_by_master || p->retire_deadline_ms > now)
            continue;
        snprintf(reason, sizeof reason, "worker %ld did not finish within shutdown_timeout "
                 "(%llu ms) after it was retired", (long)p->pid,
                 (unsigned long long)m.config->shutdown_timeout_ms);
        log_warn("%s: killing it", reason);
        kill_process(p, SIGKILL, reason);
    }
    arm_retire_timer();
}

/* Grow or shrink the worker slots to COUNT. */
static void
workers_resize(uint32_t count)
{
    for (uint32_t i = count; i < m.worker_count; i++) {
        struct slot *s = &m.workers[i];
        if (s->process != NULL)
            worker_retire(s->process);
        event_free(s->timer);
    }
    if (count > m.worker_count) {
        m.workers = ds_realloc(m.workers, count * sizeof *m.workers);
        for (uint32_t i = m.worker_count; i < count; i++)
            slot_init(&m.workers[i], i + 1);
    }
    uint32_t old = m.worker_count;
    m.worker_count = count;
    for (uint32_t i = old; i < count; i++)
        slot_spawn(&m.workers[i]);
}

static void
arm_retire_timer(void)
{
    uint64_t first = UINT64_MAX, now = clock_monotonic_ms();
    for (struct process *p = m.processes; p != NULL; p = p->next)
        if (p->retiring && !p->killed_by_master && p->retire_deadline_ms < first)
            first = p->retire_deadline_ms;
    evtimer_del(m.retire_timer);
    if (first == UINT64_MAX)
        return;
    struct timeval tv = clock_timeval_ms(first > now ? first - now : 0);
    evtimer_add(m.retire_timer, &tv);
}

/* ---- deaths -------------------------------------------------------------- */

static void
process_exited(struct process *p, int status)
{
    char name[64], how[96], reason[384];
    role_name(p, name, sizeof name);
    process_status_text(status, how, sizeof how);
    int clean = WIFEXITED(status) && WEXITSTATUS(status) == DS_EXIT_OK;
    /* A worker's phase, stored by the worker itself (see process.h): once
     * it is ready, its exit status is its items' business, DS_EXIT_FATAL
     * included (a module may call exit(2)). */
    uint32_t phase = p->status != NULL ? p->status->phase : DS_WORKER_STARTING;
    uint64_t running_key = phase == DS_WORKER_RUNNING ? p->status->key : 0;
    uint32_t running_attempt = phase == DS_WORKER_RUNNING ? p->status->attempt : 0;
    int fatal_exit = WIFEXITED(status) && WEXITSTATUS(status) == DS_EXIT_FATAL &&
                     (p->role == DS_ROLE_GRPC || phase == DS_WORKER_STARTING);
    int item_death = !clean && running_key != 0;
    /* Killed by itself for a limit its item went over (workers/limits.c):
     * the reason is its own. */
    int limit = item_death && __atomic_load_n(&p->status->limit_hit, __ATOMIC_ACQUIRE) !=
                              DS_LIMIT_NONE;
    char limit_reason[sizeof p->status->limit_reason];
    if (limit)
        snprintf(limit_reason, sizeof limit_reason, "%.*s",
                 (int)sizeof limit_reason - 1, p->status->limit_reason);

    if (p->role == DS_ROLE_GRPC && m.state == MASTER_STOPPING_GRACEFUL && !clean &&
        !p->killed_by_master) {
        /* Not respawned to drain: say what became of its work, and exit
         * with a failure (the init system sees that the stop was not clean). */
        log_error("%s (pid %ld) %s during the graceful stop; the items it held %s", name,
                  (long)p->pid, how, m.grpc_items_fate);
        if (m.exit_status < DS_EXIT_FAILURE)
            m.exit_status = DS_EXIT_FAILURE;
    } else if (clean || p->retiring || m.state != MASTER_RUNNING) {
        log_info("%s (pid %ld) %s", name, (long)p->pid, how);
    } else if (limit) {
        log_warn("%s (pid %ld) %s: %s", name, (long)p->pid, how, limit_reason);
    } else {
        log_warn("%s (pid %ld) %s%s%s%s", name, (long)p->pid, how,
                 p->kill_reason[0] ? ": " : "", p->kill_reason,
                 item_death && !p->killed_by_master ? " while running an item" : "");
    }

    /* Unlink it first: nothing below may find it. */
    for (struct process **pp = &m.processes; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    /* Whatever it sent before dying is still to be read (a READY, a seq
     * reservation): take it before the channel goes. */
    p->exited = 1;
    if (p->control != NULL)
        channel_read_now(p->control);

    struct slot *slot = NULL;
    if (p->role == DS_ROLE_GRPC && m.grpc.process == p)
        slot = &m.grpc;
    else if (p->role == DS_ROLE_WORKER && !p->retiring && p->slot >= 1 &&
             p->slot <= m.worker_count && m.workers[p->slot - 1].process == p)
        slot = &m.workers[p->slot - 1];
    if (slot != NULL)
        slot->process = NULL;

    if (p->role == DS_ROLE_WORKER) {
        if (limit)
            snprintf(reason, sizeof reason, "%s", limit_reason);
        else
            snprintf(reason, sizeof reason, "worker %ld %s%s%s%s", (long)p->pid, how,
                     p->kill_reason[0] ? " (" : "", p->kill_reason,
                     p->kill_reason[0] ? ")" : "");
        worker_send_exited(p, reason, running_key, running_attempt, limit);
    } else if (m.state == MASTER_RUNNING) {
        /* The workers' items died with the grpc process: start them afresh
         * with new channels for the next one. */
        for (struct process *w = m.processes; w != NULL; w = w->next)
            if (w->role == DS_ROLE_WORKER)
                kill_process(w, SIGKILL, "its grpc process exited");
    }
    if (p->role == DS_ROLE_GRPC && slot != NULL) {
        m.announce = 0;
        for (struct process *w = m.processes; w != NULL; w = w->next)
            w->attached = 0;
    }
    uint64_t ran_ms = clock_monotonic_ms() - p->started_ms;
    int crash = !clean && !p->killed_by_master;
    int channel_lost = p->channel_lost;
    process_free(p);

    if (m.state != MASTER_RUNNING) {
        /* A worker lost while the queue drains is replaced, until the
         * drain's deadline (drain_wants_workers); one the grpc process
         * released (a clean exit) is done. */
        if (slot != NULL && slot != &m.grpc && !clean && drain_wants_workers())
            slot_schedule(slot, 0);
        if (m.processes == NULL)
            event_base_loopbreak(m.base);
        return;
    }
    if (fatal_exit) {
        log_error("%s reported a fatal error; stopping", name);
        master_stop(MASTER_STOPPING_FAST, DS_EXIT_FAILURE);
        return;
    }
    if (slot == NULL)
        return;                         /* retired, or its slot is gone */
    if (channel_lost) {
        slot_retry_later(slot);
        return;
    }
    if (crash && item_death) {
        /* It started and served: an item killed it, which is that item's
         * failure (the grpc process retries or fails it), not a worker that
         * cannot start. Counting it would let a few poison items stop the
         * daemon and lose every other item. */
        log_info("respawning %s: an item %s, which is not a crash loop", name,
                 limit ? "went over its limit there" : "killed it");
        slot_schedule(slot, 0);
        return;
    }
    if (!crash) {
        slot->crashes = 0;
        slot->backoff_ms = m.config->respawn.backoff_min_ms;
        slot_schedule(slot, 0);
        return;
    }
    if (ran_ms >= m.config->respawn.stable_after_ms) {
        slot->crashes = 0;
        slot->backoff_ms = m.config->respawn.backoff_min_ms;
    }
    if (++slot->crashes >= m.config->respawn.crash_limit) {
        log_error("%s crashed %u times in a row; giving up so that the init system takes over",
                  name, slot->crashes);
        master_stop(MASTER_STOPPING_FAST, DS_EXIT_FAILURE);
        return;
    }
    uint64_t delay = slot->backoff_ms;
    slot->backoff_ms = delay * 2 > m.config->respawn.backoff_max_ms
                           ? m.config->respawn.backoff_max_ms : delay * 2;
    log_notice("respawning %s in %llu ms (crash %u of %u allowed in a row)", name,
               (unsigned long long)delay, slot->crashes, m.config->respawn.crash_limit - 1);
    slot_schedule(slot, delay);
}

/* A child we forked and still know, the new master of an upgrade, or one
 * we were started with: everything else is a stray. */
static int
not_a_stray(pid_t pid, void *arg)
{
    if (process_find(pid) != NULL || pid == m.upgrade_child)
        return 1;
    for (size_t i = 0; i < m.inherited_count; i++)
        if (m.inherited[i] == pid)
            return 1;
    return 0;
}

/*
 * We are a subreaper: when a worker dies, what it started (an exec program
 * and whatever that left, its exec guard, what a module forked) becomes our
 * child, wanted by nobody. Kill it; what it started in turn reparents to us
 * as it dies, and reap() comes back here.
 */
static void
kill_strays(void)
{
    int n = children_kill(not_a_stray, NULL);
    if (n == -1)
        log_syswarn("cannot list our children in /proc");
    else if (n > 0)
        log_info("killed %d process%s left behind by dead workers", n, n == 1 ? "" : "es");
}

static void
reap(void)
{
    int status, reaped = 0;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        reaped = 1;
        struct process *p = process_find(pid);
        if (p != NULL)
            process_exited(p, status);
        else if (pid == m.upgrade_child && m.state == MASTER_RUNNING)
            upgrade_child_exited(status);
    }
    if (reaped) {
        kill_strays();
        reload_when_done();
    }
}

/* ---- messages from children ------------------------------------------- */

/* Every worker slot has a worker whose data channel the grpc process took. */
static int
workers_wired(void)
{
    for (uint32_t i = 0; i < m.worker_count; i++) {
        struct process *w = m.workers[i].process;
        if (w == NULL || !w->attached)
            return 0;
    }
    return 1;
}

/* ---- the old master of an upgrade -------------------------------------- */

/*
 * The new master of an upgrade waits (its grpc process unbound:
 * bind_when_serving) until its store serves, then tells the old master to
 * drain. The old master's upgrade timeout cannot end that wait if the old
 * master dies (killed, crashed): so we watch it. Gone, it is forgotten: we
 * never signal its pid again (it may be reused), and our grpc process binds
 * at once (IPC_BIND_NOW) as at a plain start, since nothing else listens.
 * Watched by its pidfd (which also signals it without a pid race), or, on a
 * kernel without pidfd_open, by polling getppid(): we are its child, so the
 * pid stays its while getppid() returns it.
 */
static void
upgrade_parent_forget(void)
{
    m.upgrade_parent = 0;
    if (m.upgrade_parent_event != NULL) {
        event_free(m.upgrade_parent_event);
        m.upgrade_parent_event = NULL;
    }
    if (m.upgrade_parent_fd != -1) {
        close(m.upgrade_parent_fd);
        m.upgrade_parent_fd = -1;
    }
}

/* Is the old master still alive (not a zombie, not gone)? */
static int
upgrade_parent_alive(void)
{
    if (m.upgrade_parent <= 0 || getppid() != m.upgrade_parent)
        return 0;
    if (m.upgrade_parent_fd == -1)
        return 1;
    /* A pidfd polls readable once its process has exited. */
    struct pollfd pfd = { .fd = m.upgrade_parent_fd, .events = POLLIN };
    return poll(&pfd, 1, 0) == 0;
}

static void
upgrade_parent_gone(void)
{
    log_warn("binary upgrade: the old master (pid %ld) is gone before this one served; "
             "this one listens now and serves alone", (long)m.upgrade_parent);
    upgrade_parent_forget();
    struct process *g = grpc_process();
    if (g != NULL && g->control != NULL)
        channel_send(g->control, IPC_BIND_NOW, NULL, 0);
    /* A grpc process started from now on binds at once (spawn()). */
    notify("MAINPID=%ld", (long)getpid());
}

static void
on_upgrade_parent(evutil_socket_t fd, short what, void *arg)
{
    if (m.upgrade_parent <= 0 || upgrade_parent_alive())
        return;
    upgrade_parent_gone();
}

/* At start: watch the old master, or see that it is gone already. */
static void
upgrade_parent_watch(void)
{
    m.upgrade_parent_fd = pidfd_open(m.upgrade_parent, 0);
    if (m.upgrade_parent_fd == -1 && errno != ESRCH)
        log_syswarn("binary upgrade: pidfd_open(%ld) failed; polling for the old master",
                    (long)m.upgrade_parent);
    /* Opened first, then checked: the pidfd is of our parent, not of a reuse. */
    if (!upgrade_parent_alive()) {
        upgrade_parent_gone();
        return;
    }
    if (m.upgrade_parent_fd != -1) {
        m.upgrade_parent_event = event_new(m.base, m.upgrade_parent_fd, EV_READ | EV_PERSIST,
                                           on_upgrade_parent, NULL);
        event_add(m.upgrade_parent_event, NULL);
    } else {
        m.upgrade_parent_event = event_new(m.base, -1, EV_PERSIST, on_upgrade_parent, NULL);
        struct timeval tv = clock_timeval_ms(UPGRADE_PARENT_POLL_MS);
        event_add(m.upgrade_parent_event, &tv);
    }
}

/* Our store serves: tell the old master to drain, then forget it. */
static void
upgrade_parent_quit(void)
{
    if (!upgrade_parent_alive()) {
        log_warn("binary upgrade: the old master (pid %ld) is gone already",
                 (long)m.upgrade_parent);
    } else if (m.upgrade_parent_fd != -1) {
        if (pidfd_send_signal(m.upgrade_parent_fd, SIGQUIT, NULL, 0) == -1 && errno != ESRCH)
            log_syswarn("pidfd_send_signal(%ld, SIGQUIT) failed", (long)m.upgrade_parent);
    } else if (kill(m.upgrade_parent, SIGQUIT) == -1) {
        log_syswarn("kill(%ld, SIGQUIT) failed", (long)m.upgrade_parent);
    }
    upgrade_parent_forget();
}

/* "serving" (log, systemd, the old master of an upgrade) once the grpc
 * process listens, its store takes items (a Redis session, a journal
 * open), and it holds every worker's channel: a start that cannot wire its
 * workers never claims to serve. Listening with the store not serving yet
 * (Redis down at a start) is said as such: systemd hears READY=1 then (the
 * daemon started, and /healthz, health and every call say why it cannot
 * take items), "serving" follows once the store serves. The handover of
 * an upgrade waits for that: the old instance drains only once this one
 * can take its work (the grpc process of a new master does not even bind
 * before: bind_when_serving). Every IPC_READY is the grpc process's latest
 * state (its store lost after it served is reported too), and this acts on
 * the latest when the workers are wired: a store lost between a READY(1)
 * and the wiring holds the handover. */
static void
announce_serving(void)
{
    if (!m.announce || m.state != MASTER_RUNNING || !workers_wired())
        return;
    m.announce = 0;
    if (!m.store_serving) {
        if (m.upgrade_parent > 0 && !m.serving) {
            log_notice("binary upgrade: listening, but not serving yet (%s); pid %ld serves "
                       "until this one does", m.store_why, (long)m.upgrade_parent);
            return;
        }
        if (m.serving) {
            /* It served and lost its store (Redis gone): said, not hidden. */
            log_warn("not serving (generation %llu): %s", (unsigned long long)m.generation,
                     m.store_why);
            notify("STATUS=not serving: %s", m.store_why);
            return;
        }
        log_warn("listening (generation %llu), but not serving yet: %s",
                 (unsigned long long)m.generation, m.store_why);
        notify("READY=1\nSTATUS=listening, not serving yet: %s", m.store_why);
        return;
    }
    log_notice("serving (generation %llu)", (unsigned long long)m.generation);
    if (m.serving) {
        notify("STATUS=serving, generation %llu", (unsigned long long)m.generation);
        return;
    }
    m.serving = 1;
    if (m.upgrade_parent > 0) {
        log_notice("binary upgrade: taking over from pid %ld, which now drains",
                   (long)m.upgrade_parent);
        upgrade_parent_quit();
        notify("MAINPID=%ld", (long)getpid());
    }
    notify("READY=1\nSTATUS=serving, generation %llu", (unsigned long long)m.generation);
}

static int
on_child_frame(void *arg, struct ipc_channel *ch, const struct ipc_header *h,
               const uint8_t *body, int fd)
{
    struct process *p = arg;
    if (fd != -1)
        close(fd);                      /* children never send descriptors */

    switch (h->type) {
    case IPC_READY: {
        if (p->role != DS_ROLE_GRPC || h->length < 1)
            break;
        if (p->exited || p != m.grpc.process)
            return 0;   /* left by a grpc process that is gone: it serves nothing */
        m.store_serving = body[0] == 1;
        size_t len = h->length - 1 < sizeof m.store_why - 1 ? h->length - 1
                                                              : sizeof m.store_why - 1;
        memcpy(m.store_why, body + 1, len);
        m.store_why[len] = '\0';
        for (char *c = m.store_why; *c != '\0'; c++)
            if (*c == '\n' || *c == '\r')
                *c = ' ';               /* one line for the log and for STATUS= */
        m.announce = 1;
        announce_serving();
        return 0;
    }
    case IPC_WORKER_ATTACHED: {
        struct ipc_worker w;
        if (p->role != DS_ROLE_GRPC || h->length != sizeof w)
            break;
        memcpy(&w, body, sizeof w);
        struct process *wp = process_find(w.pid);
        if (wp != NULL && wp->role == DS_ROLE_WORKER) {
            wp->attached = 1;
            announce_serving();
        }
        return 0;
    }
    case IPC_WORKER_LOST: {
        struct ipc_worker w;
        if (p->role != DS_ROLE_GRPC || h->length < sizeof w)
            break;
        memcpy(&w, body, sizeof w);
        char reason[200];
        size_t len = h->length - sizeof w < sizeof reason - 1 ? h->length - sizeof w
                                                              : sizeof reason - 1;
        memcpy(reason, body + sizeof w, len);
        reason[len] = '\0';
        struct process *victim = process_find(w.pid);
        if (victim != NULL && victim->role == DS_ROLE_WORKER) {
            log_error("worker %u (pid %ld): %s; restarting it", victim->slot, (long)w.pid, reason);
            victim->channel_lost = 1;
            kill_process(victim, SIGKILL, reason);
        }
        return 0;
    }
    case IPC_SEQ_RESERVE: {
        struct ipc_seq s;
        if (p->role != DS_ROLE_GRPC || h->length != sizeof s)
            break;
        memcpy(&s, body, sizeof s);
        if (s.seq > m.seq_reserved)
            m.seq_reserved = s.seq;
        return 0;
    }
    case IPC_DEADLINE:
        /* Its deadline's timer can fire a little before ours (each counts
         * from its own moment, libevent from the time its loop turn
         * began), and the kills it asks for at the deadline come after
         * this on the same channel. */
        if (p->role != DS_ROLE_GRPC)
            break;
        m.drain_expired = 1;
        return 0;
    case IPC_KILL_WORKER: {
        struct ipc_worker w;
        if (p->role != DS_ROLE_GRPC || h->length < sizeof w)
            break;
        memcpy(&w, body, sizeof w);
        char reason[160];
        size_t len = h->length - sizeof w < sizeof reason - 1 ? h->length - sizeof w
                                                              : sizeof reason - 1;
        memcpy(reason, body + sizeof w, len);
        reason[len] = '\0';
        struct process *victim = process_find(w.pid);
        if (victim != NULL && victim->role == DS_ROLE_WORKER)
            kill_process(victim, SIGKILL, reason);
        return 0;
    }
    case IPC_FATAL: {
        log_error("%s: %.*s", channel_name(ch), (int)h->length, (const char *)body);
        return 0;
    }
    default:
        break;
    }
    log_error("%s: unexpected %s frame of %u bytes", channel_name(ch), ipc_type_name(h->type),
              h->length);
    return -1;
}

static void
on_child_close(void *arg, struct ipc_channel *ch, const char *reason)
{
    struct process *p = arg;
    if (reason != NULL) {
        log_error("%s: control channel closed: %s; killing it", channel_name(ch), reason);
        kill_process(p, SIGKILL, "it broke the control protocol");
    }
    /* The child exits next (or is killed): SIGCHLD does the rest. */
    channel_free(ch);
    p->control = NULL;
}

/* ---- reload, stop, signals -------------------------------------------- */

/* A reload that changes nothing: say why (ERRORS: one line per error),
 * in the log, to systemd and to the grpc process (for /status). */
static void
reload_failed(char *errors)
{
    for (char *nl; (nl = strchr(errors, '\n')) != NULL;) {
        if (nl[1] == '\0')
            *nl = '\0';
        else
            *nl = ';';
    }
    log_error("reload failed: %s; keeping generation %llu", errors,
              (unsigned long long)m.generation);
    snprintf(m.status, sizeof m.status, "reload failed: %.480s", errors);
    notify("READY=1\nSTATUS=%s", m.status);
    struct process *gr = grpc_process();
    if (gr != NULL && gr->control != NULL)
        channel_send(gr->control, IPC_RELOAD_FAILED, m.status, strlen(m.status));
}

/* Does the running config, or the grpc process, listen on ADDR? Then a
 * probe would find our own listener: a reload that keeps an address, or
 * moves ours to another host on the same port (127.0.0.1:80 to
 * 0.0.0.0:80). The grpc process's sockets count, not only the config: a
 * reload whose bind failed left the old listener with it. */
static int
listening_on(const char *addr)
{
    for (size_t i = 0; i < m.config->grpc.listen_count; i++)
        if (strcmp(m.config->grpc.listen[i], addr) == 0)
            return 1;
    if (m.config->status.listen != NULL && strcmp(m.config->status.listen, addr) == 0)
        return 1;
    struct process *g = grpc_process();
    return g != NULL && listen_probe_held_by(g->pid, addr);
}

/*
 * The addresses CONFIG listens on that the running one does not, served by
 * another process that our listener would share (listen_probe_shared()):
 * gRPC and the status server bind with SO_REUSEPORT, so a reload onto
 * another dosomethingd's port bound beside it and shared its clients (a
 * start refuses any address in use). One that the bind would fail on (a
 * holder without SO_REUSEPORT) is not refused here: the grpc process keeps
 * the old listener and says so. Each one goes to ERRORS, a line each;
 * returns how many.
 */
static int
reload_addresses_taken(const struct ds_config *config, char *errors, size_t size)
{
    char why[200];
    size_t used = 0;
    int found = 0;
    /* The grpc process binds a reload's listeners as the user it dropped
     * to (m.user, which a reload does not change), and the kernel shares a
     * port only between sockets of one owner: probe as that user. */
    uid_t owner = (uid_t)-1;
    if (geteuid() == 0 && m.user != NULL && m.user[0] != '\0') {
        struct passwd *pw = getpwnam(m.user);
        if (pw != NULL)
            owner = pw->pw_uid;
    }
    for (size_t i = 0; i <= config->grpc.listen_count; i++) {
        int grpc = i < config->grpc.listen_count;
        const char *a = grpc ? config->grpc.listen[i] : config->status.listen;
        /* status.c binds one address of a name (address_pick()), gRPC all. */
        if (a == NULL || listening_on(a) || !listen_probe_shared(a, !grpc, owner, why, sizeof why))
            continue;
        found++;
        if (used < size)
            used += (size_t)snprintf(errors + used, size - used, "%s%s: %s.listen %s is in use "
                                     "by another process (%s): is another dosomethingd "
                                     "serving it?", used ? "\n" : "", config->path,
                                     grpc ? "grpc" : "status", a, why);
    }
    return found;
}

/*
 * Load the config file in a child first. Loading checks each handler
 * module by dlopen()ing it, which runs its ELF constructors: in the master,
 * a module file replaced by one whose constructor aborts, exits or hangs
 * took the master down (or hung it), and every process and item with it.
 * 0: the child loaded it, or found it invalid (the master's own load then
 * says why); -1: the child died or hung, or none could be made, said in
 * ERRORS. No child, no reload: loading in the master instead went on to
 * retire every worker, and a master that cannot fork makes no new ones.
 */
static int
reload_trial(char *errors, size_t size)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) == -1) {
        snprintf(errors, size, "cannot make the child that loads it first (pipe2() failed: %s)",
                 strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid == -1) {
        snprintf(errors, size, "cannot fork the child that loads it first (fork() failed: %s)",
                 strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* Only stdin, stdout, stderr and the pipe: the master's control
         * sockets, signalfd, pidfds and log files held by a child that
         * outlives the trial (killed, but stuck in the kernel) kept a
         * peer's EOF from coming. The pipe goes to 3, the rest is closed. */
        int w = fds[1];
        if (w != 3 && (w = dup2(fds[1], 3)) == -1)
            _exit(DS_EXIT_FATAL);
        fcntl(w, F_SETFD, FD_CLOEXEC);     /* not for what a constructor runs */
        if (close_range(4, ~0u, 0) == -1)  /* before Linux 5.9 */
            for (int fd = 4; fd < 1024; fd++)
                close(fd);
        char errs[64];
        struct ds_config *c = config_load_for_reload(m.config_file, errs, sizeof errs);
        /* A byte: the load came back (a constructor that calls exit()
         * never gets here, whatever its status). */
        char done = c != NULL ? 'y' : 'n';
        if (write(w, &done, 1) != 1)
            _exit(DS_EXIT_FATAL);
        _exit(DS_EXIT_OK);
    }
    close(fds[1]);
    struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
    int r;
    do
        r = poll(&pfd, 1, RELOAD_TRIAL_MS);
    while (r == -1 && errno == EINTR);
    int poll_errno = r == -1 ? errno : 0;
    char done = 0;
    if (r > 0 && read(fds[0], &done, 1) != 1)
        done = 0;
    close(fds[0]);
    int status = 0;
    pid_t waited;
    if (r > 0) {
        /* The byte came, or EOF: the child is exiting, or should be. Not
         * waited for without bound either: a constructor that closed our
         * pipe and hangs, or a thread of it stuck in the kernel, would
         * hang the master in waitpid(). */
        uint64_t deadline = clock_monotonic_ms() + RELOAD_TRIAL_MS;
        while ((waited = waitpid(pid, &status, WNOHANG)) == 0 &&
               clock_monotonic_ms() < deadline) {
            struct timespec pause = { .tv_nsec = 10 * 1000 * 1000 };
            nanosleep(&pause, NULL);
        }
        if (waited == 0) {
            kill(pid, SIGKILL);     /* reap() or kill_strays() collect it */
            waited = waitpid(pid, &status, WNOHANG);
            r = 0;                  /* "did not end within" */
        }
    } else {
        /* Timeout, or poll() failed: kill it, and do not wait for it (a
         * child stuck in the kernel, a hung NFS mount, would hang the
         * master): reap() collects it when it dies, or kill_strays(). */
        kill(pid, SIGKILL);
        waited = waitpid(pid, &status, WNOHANG);
    }
    if (r > 0 && done != 0 && waited == pid && WIFEXITED(status) &&
        WEXITSTATUS(status) == DS_EXIT_OK)
        return 0;
    char how[96];
    if (r == 0)
        snprintf(how, sizeof how, "did not end within %d ms", RELOAD_TRIAL_MS);
    else if (r == -1)
        snprintf(how, sizeof how, "could not be waited for (poll() failed: %s)",
                 strerror(poll_errno));
    else if (waited != pid)
        snprintf(how, sizeof how, "could not be waited for (waitpid() failed)");
    else
        process_status_text(status, how, sizeof how);
    snprintf(errors, size, "%s: loading it in a child process first (which loads its handler "
             "modules, running their constructors), the child %s; not loading it in the "
             "master", m.config_file, how);
    return -1;
}

static void
reload(void)
{
    char errors[8192];
    notify_reloading();
    if (reload_trial(errors, sizeof errors) == -1) {
        reload_failed(errors);
        return;
    }
    struct ds_config *config = config_load_for_reload(m.config_file, errors, sizeof errors);
    if (config == NULL) {
        reload_failed(errors);
        return;
    }
    if (config->empty) {
        /* Caught between a truncation and a write (an editor, a deploy
         * tool, `> FILE`): taken as it is, it reset every setting, the
         * listen address and the log file included. A start may run on the
         * defaults; a reload does not go back to them by accident. */
        snprintf(errors, sizeof errors, "%s: no settings (the file is %s); a reload does not "
                 "reset every setting to its default", config->path,
                 config->source_len == 0 ? "empty" : "blank or only comments");
        config_free(config);
        reload_failed(errors);
        return;
    }
    if (reload_addresses_taken(config, errors, sizeof errors) > 0) {
        config_free(config);
        reload_failed(errors);
        return;
    }
    /* The log file first, while nothing has changed yet: one that cannot be
     * opened (a missing directory, a directory) used to leave every
     * process logging to the old file while the rest of the config went
     * live. log_open() keeps the old file when it fails. */
    enum ds_log_level level = log_current_level;
    if (log_open(config->log.file, config->log.level) == -1) {
        int e = errno;
        log_current_level = level;
        snprintf(errors, sizeof errors, "%s: log.file: cannot open %s: %s", config->path,
                 config->log.file, strerror(e));
        config_free(config);
        reload_failed(errors);
        return;
    }
    char kept[256] = "";
    if (strcmp(config->pid_file, m.pid_file) != 0)
        strcat(kept, " pid_file");
    if (config->daemon != m.daemon)
        strcat(kept, " daemon");
    if (strcmp(config->user, m.user) != 0) {
        /* The grpc process keeps the user it dropped to (it cannot take
         * another); new workers under another one, and the log files
         * given to it, left it unable to reopen its logs. */
        strcat(kept, " user");
        config->user = m.user;
    }

    struct ds_config *old = m.config;
    m.config = config;
    m.generation++;
    log_chown_to_user(log_file_fd(), config->user);
    log_prepare_for_user(config->log.access, config->user);

    struct process *g = grpc_process();
    if (g != NULL && g->control != NULL) {
        struct ipc_config msg = { .generation = m.generation,
                                  .handler_count = (uint32_t)config->handler_count };
        uint32_t *flags = ds_calloc(config->handler_count + 1, sizeof *flags);
        for (size_t i = 0; i < config->handler_count; i++)
            flags[i] = config->handlers[i].module_flags;
        struct iovec parts[3] = {
            { .iov_base = &msg, .iov_len = sizeof msg },
            { .iov_base = flags, .iov_len = config->handler_count * sizeof *flags },
            { .iov_base = config->source, .iov_len = config->source_len },
        };
        channel_sendv(g->control, IPC_CONFIG, parts, 3);
        free(flags);
    }
    /* New workers for every slot; the old ones finish what they hold. */
    for (uint32_t i = 0; i < m.worker_count; i++) {
        struct slot *s = &m.workers[i];
        evtimer_del(s->timer);
        s->crashes = 0;
        s->backoff_ms = config->respawn.backoff_min_ms;
        if (s->process != NULL)
            worker_retire(s->process);
    }
    m.grpc.backoff_ms = config->respawn.backoff_min_ms;
    workers_resize(0);
    workers_resize(config->workers.count);
    arm_retire_timer();
    log_notice("reloaded %s: generation %llu, %u workers%s%s", config->path,
               (unsigned long long)m.generation, config->workers.count,
               kept[0] ? "; these need a restart and kept their old value:" : "", kept);
    snprintf(m.status, sizeof m.status, "reloaded: generation %llu",
             (unsigned long long)m.generation);
    notify("READY=1\nSTATUS=%s", m.status);
    config_free(old);
}

/* Workers of an older generation still alive: retired by the last reload
 * (or a TTOU before it), finishing the items they hold; each is gone within
 * shutdown_timeout (on_retire_timer kills it then). */
static uint32_t
workers_of_old_generations(void)
{
    uint32_t n = 0;
    for (struct process *p = m.processes; p != NULL; p = p->next)
        if (p->role == DS_ROLE_WORKER && p->generation < m.generation)
            n++;
    return n;
}

/*
 * SIGHUP. While the workers the last reload retired still run their items,
 * a reload would retire the new generation too (holding the items it took
 * since), and a burst of HUPs would leave a generation per HUP running
 * side by side, workers.count many times over. So overlapping HUPs are
 * coalesced: the first reloads; those that come while its old workers are
 * still there are one reload more, once they are gone, which reads the
 * file then (the last HUP's content). One line in the log per coalesced
 * burst, not per HUP.
 */
static void
reload_requested(void)
{
    uint32_t old = workers_of_old_generations();
    if (old == 0) {
        reload();
        return;
    }
    if (m.reload_pending)
        return;
    m.reload_pending = 1;
    /* Said plainly: an operator whose HUP sends a fix for the last
     * reload must know that it waits, up to shutdown_timeout, for the
     * workers that reload retired. (Retired workers that hold no item
     * exit at once: only their items are waited for.) */
    log_notice("SIGHUP: %u worker%s of an older generation still finish%s %s items; this "
               "reload waits for them: reloading %s once they have exited (at most "
               "shutdown_timeout, %llu ms, after they were retired; then they are killed)",
               old, old == 1 ? "" : "s", old == 1 ? "es" : "", old == 1 ? "its" : "their",
               m.config_file, (unsigned long long)m.config->shutdown_timeout_ms);
    snprintf(m.status, sizeof m.status, "reload queued: generation %llu's old workers finish "
             "their items", (unsigned long long)m.generation);
    notify("STATUS=%s", m.status);
}

/* A process exited: the reload a HUP left pending may run now. */
static void
reload_when_done(void)
{
    if (!m.reload_pending || m.state != MASTER_RUNNING || workers_of_old_generations() > 0)
        return;
    m.reload_pending = 0;
    log_notice("reloading %s (a SIGHUP came while the previous reload's workers finished "
               "their items)", m.config_file);
    reload();
}

static void
on_stop_timer(evutil_socket_t fd, short what, void *arg)
{
    for (struct process *p = m.processes; p != NULL; p = p->next) {
        char name[64];
        log_warn("%s (pid %ld) did not stop in time; killing it",
                 role_name(p, name, sizeof name), (long)p->pid);
        kill_process(p, SIGKILL, NULL);
    }
}

static void
master_stop(enum master_state how, int status)
{
    if (status > m.exit_status)
        m.exit_status = status;
    if (m.state == MASTER_STOPPING_FAST || m.state == how)
        return;
    if (m.reload_pending)
        log_notice("the reload a SIGHUP left pending is not done: stopping");
    m.reload_pending = 0;
    m.state = how;
    m.drain_deadline_ms = clock_monotonic_ms() + m.config->shutdown_timeout_ms;
    notify("STOPPING=1\nSTATUS=%s", how == MASTER_STOPPING_FAST ? "stopping" : "draining");
    evtimer_del(m.grpc.timer);
    for (uint32_t i = 0; i < m.worker_count; i++)
        if (how == MASTER_STOPPING_FAST || grpc_process() == NULL)
            evtimer_del(m.workers[i].timer);

    /* After shutdown_timeout the grpc process stops what still runs (it
     * has us kill a worker that has not within 2 s: QUEUE_STOP_WAIT_MS),
     * gives every item left its last update and lets subscribers read it,
     * for up to 3 s, then cancels the calls left and gives them 1.5 s: it
     * gets more than that before it is killed. This is
     * the last resort, for whatever did not end then. */
    uint64_t grace = how == MASTER_STOPPING_FAST ? FAST_STOP_GRACE_MS
                                                 : m.config->shutdown_timeout_ms +
                                                   FAST_STOP_GRACE_MS;
    struct process *g = grpc_process();
    uint8_t upgrade = m.upgrade_child > 0;
    for (struct process *p = m.processes; p != NULL; p = p->next) {
        if (how == MASTER_STOPPING_FAST)
            kill(p->pid, SIGTERM);
        else if (p == g && p->control != NULL)
            /* During a USR2 upgrade the new instance takes the waiting items. */
            channel_send(p->control, IPC_DRAIN, &upgrade, sizeof upgrade);
        else if (g == NULL)
            kill(p->pid, SIGTERM);
    }
    if (m.processes == NULL) {
        event_base_loopbreak(m.base);
        return;
    }
    struct timeval tv = clock_timeval_ms(grace);
    evtimer_add(m.stop_timer, &tv);
}

static uint64_t
upgrade_timeout_ms(void)
{
    const char *env = getenv(UPGRADE_TIMEOUT_ENV);
    long long ms = env != NULL ? atoll(env) : 0;
    return ms > 0 ? (uint64_t)ms : UPGRADE_TIMEOUT_MS;
}

/*
 * USR2: start the executable on disk (a deploy replaced it) beside this
 * master. It binds the same ports (SO_REUSEPORT), and once it serves it
 * sends us QUIT: we drain and exit. Our pid file moves to FILE.oldbin
 * meanwhile; if the new master fails, it comes back.
 */
static void
upgrade(void)
{
    if (m.upgrade_child > 0) {
        log_warn("SIGUSR2: an upgrade is already under way (new master pid %ld)",
                 (long)m.upgrade_child);
        return;
    }
    char oldbin[4200];
    snprintf(oldbin, sizeof oldbin, "%s.oldbin", m.pid_file);
    if (rename(m.pid_file, oldbin) == -1) {
        log_syserr("binary upgrade: rename(\"%s\", \"%s\") failed", m.pid_file, oldbin);
        return;
    }
    char env[64];
    snprintf(env, sizeof env, "%ld %llu", (long)getpid(),
             (unsigned long long)seq_floor(m.seq_reserved + UPGRADE_SEQ_GAP));
    pid_t pid = fork();
    if (pid == -1) {
        log_syserr("binary upgrade: fork() failed");
        rename(oldbin, m.pid_file);
        return;
    }
    if (pid == 0) {
        /* The master's own signals stay blocked through the exec: one that
         * comes before the new master reads them (a HUP, the USR2 of a
         * `systemctl kill` that also reaches the processes forked
         * meanwhile) waits for its signalfd instead of killing it with its
         * default action. TERM and INT do not: they stop a new master that
         * hangs (on_upgrade_timer), whatever the executable is. */
        sigset_t keep;
        sigemptyset(&keep);
        for (size_t i = 0; i < sizeof master_only_signals / sizeof master_only_signals[0]; i++)
            sigaddset(&keep, master_only_signals[i]);
        sigprocmask(SIG_SETMASK, &keep, NULL);
        setenv(UPGRADE_ENV, env, 1);
        char *argv[] = { master_executable, "-c", m.config->path, NULL };
        execv(master_executable, argv);
        log_syserr("binary upgrade: execv(\"%s\") failed", master_executable);
        _exit(DS_EXIT_FATAL);
    }
    m.upgrade_child = pid;
    log_notice("binary upgrade: started %s as pid %ld", master_executable, (long)pid);
    struct timeval tv = clock_timeval_ms(upgrade_timeout_ms());
    evtimer_add(m.upgrade_timer, &tv);
}

static void
on_upgrade_timer(evutil_socket_t fd, short what, void *arg)
{
    if (m.upgrade_child <= 0 || m.state != MASTER_RUNNING)
        return;     /* it failed already, or it serves and we drain */
    if (m.upgrade_stopping != m.upgrade_child) {
        /* TERM first: a fast stop ends its calls and its children itself
         * (killed outright, they would fall to us as strays). */
        log_error("binary upgrade: the new master (pid %ld) does not serve after %llu ms; "
                  "stopping it", (long)m.upgrade_child, (unsigned long long)upgrade_timeout_ms());
        m.upgrade_stopping = m.upgrade_child;
        if (kill(m.upgrade_child, SIGTERM) == -1)
            log_syswarn("kill(%ld, SIGTERM) failed", (long)m.upgrade_child);
        struct timeval tv = clock_timeval_ms(UPGRADE_KILL_GRACE_MS);
        evtimer_add(m.upgrade_timer, &tv);
        return;
    }
    log_error("binary upgrade: the new master (pid %ld) did not stop; killing it",
              (long)m.upgrade_child);
    if (kill(m.upgrade_child, SIGKILL) == -1)
        log_syswarn("kill(%ld, SIGKILL) failed", (long)m.upgrade_child);
    /* reap() hears it: upgrade_child_exited() takes the pid file back. */
}

static void
upgrade_child_exited(int status)
{
    char how[96], oldbin[4200];
    log_error("binary upgrade failed: the new master (pid %ld) %s; this one keeps serving",
              (long)m.upgrade_child, process_status_text(status, how, sizeof how));
    m.upgrade_child = 0;
    evtimer_del(m.upgrade_timer);
    snprintf(oldbin, sizeof oldbin, "%s.oldbin", m.pid_file);
    if (rename(oldbin, m.pid_file) == -1)
        log_syserr("rename(\"%s\", \"%s\") failed", oldbin, m.pid_file);
    notify("MAINPID=%ld\nSTATUS=binary upgrade failed", (long)getpid());
}

static void
on_signal(evutil_socket_t fd, short what, void *arg)
{
    struct signalfd_siginfo si;
    int reopened;
    while (read(m.signal_fd, &si, sizeof si) == sizeof si) {
        switch (si.ssi_signo) {
        case SIGCHLD:
            reap();
            break;
        case SIGHUP:
            if (m.state == MASTER_RUNNING) {
                reload_requested();
            } else if (!m.hup_stopping_said) {
                /* Once: a storm of HUPs (a retry loop) wrote a line each. */
                m.hup_stopping_said = 1;
                log_notice("SIGHUP: no reload while stopping (further ones are not logged)");
            }
            break;
        case SIGTERM:
        case SIGINT:
            log_notice("%s: fast stop", strsignal((int)si.ssi_signo));
            master_stop(MASTER_STOPPING_FAST, DS_EXIT_OK);
            break;
        case SIGQUIT:
            if (m.upgrade_stopping > 0 && (pid_t)si.ssi_pid == m.upgrade_stopping) {
                /* It came to serve as we gave up on it: we serve on. */
                log_notice("SIGQUIT from the new master (pid %ld), which is being stopped: "
                           "ignored", (long)si.ssi_pid);
                break;
            }
            log_notice("%s: graceful stop", strsignal((int)si.ssi_signo));
            master_stop(MASTER_STOPPING_GRACEFUL, DS_EXIT_OK);
            break;
        case SIGUSR1:
            /* Made here as root and given to the user, before the children
             * (running as it) reopen them: they may not create files there. */
            reopened = log_reopen() == 0;
            if (!reopened)
                log_error("SIGUSR1: the log file could not be opened again (above); the "
                          "master logs on to the file it had");
            log_chown_to_user(log_file_fd(), m.config->user);
            log_prepare_for_user(m.config->log.access, m.config->user);
            for (struct process *p = m.processes; p != NULL; p = p->next)
                if (p->control != NULL)
                    channel_send(p->control, IPC_REOPEN_LOGS, NULL, 0);
            if (reopened)
                log_notice("SIGUSR1: log files reopened (each child reopens its own)");
            break;
        case SIGUSR2:
            if (m.upgrade_parent > 0 && !m.serving)
                /* Meant for the master we take over from (a `systemctl
                 * kill` reaches every process of the unit, us too). */
                log_notice("SIGUSR2: this master is the new one of a binary upgrade and does "
                           "not serve yet; ignored");
            else if (m.state == MASTER_RUNNING)
                upgrade();
            else
                log_notice("SIGUSR2: no binary upgrade while stopping");
            break;
        case SIGTTIN:
            if (m.state == MASTER_RUNNING && m.worker_count < DS_WORKERS_MAX) {
                /* The budget a config's workers.count is checked against
                 * (config.c): past it the grpc process's table filled up
                 * (worker channels lost, calls hanging). */
                uint64_t needed = descriptors_needed(m.config) -
                                  (uint64_t)m.config->workers.count * DESCRIPTORS_PER_WORKER +
                                  ((uint64_t)m.worker_count + 1) * DESCRIPTORS_PER_WORKER;
                if (needed > descriptors_limit()) {
                    log_warn("SIGTTIN: %u workers would need %llu descriptors, more than "
                             "RLIMIT_NOFILE (%llu); staying at %u", m.worker_count + 1,
                             (unsigned long long)needed,
                             (unsigned long long)descriptors_limit(), m.worker_count);
                    break;
                }
                workers_resize(m.worker_count + 1);
                log_notice("SIGTTIN: %u workers", m.worker_count);
            }
            break;
        case SIGTTOU:
            if (m.state == MASTER_RUNNING && m.worker_count > 1) {
                workers_resize(m.worker_count - 1);
                arm_retire_timer();
                log_notice("SIGTTOU: %u workers", m.worker_count);
            }
            break;
        default:
            log_notice("ignoring %s", strsignal((int)si.ssi_signo));
            break;
        }
    }
}

static int
signals_init(void)
{
    static const int caught[] = { SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1,
                                  SIGUSR2, SIGTTIN, SIGTTOU, SIGWINCH };
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < sizeof caught / sizeof caught[0]; i++)
        sigaddset(&set, caught[i]);
    if (sigprocmask(SIG_BLOCK, &set, NULL) == -1) {
        log_syserr("sigprocmask() failed");
        return -1;
    }
    signal(SIGPIPE, SIG_IGN);
    m.signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (m.signal_fd == -1) {
        log_syserr("signalfd() failed");
        return -1;
    }
    m.signal_event = event_new(m.base, m.signal_fd, EV_READ | EV_PERSIST, on_signal, NULL);
    event_add(m.signal_event, NULL);
    return 0;
}

int
master_run(struct ds_config *config, const char *config_file)
{
    m.config = config;
    m.config_file = ds_strdup(config_file);
    m.generation = 1;
    m.pid = getpid();
    m.signal_fd = -1;
    m.seq_reserved = seq_floor(0);
    const char *upgrade_env = getenv(UPGRADE_ENV);
    if (upgrade_env != NULL) {
        long parent = 0;
        unsigned long long seq = 0;
        if (sscanf(upgrade_env, "%ld %llu", &parent, &seq) == 2 && parent > 1) {
            m.upgrade_parent = (pid_t)parent;
            m.seq_reserved = seq;
        }
        unsetenv(UPGRADE_ENV);
    }
    m.upgrade_parent_fd = -1;
    log_set_role("master");
    proctitle_set("dosomethingd: master");

    m.base = event_base_new();
    if (m.base == NULL) {
        log_error("event_base_new() failed");
        return DS_EXIT_FATAL;
    }
    if (signals_init() == -1)
        return DS_EXIT_FATAL;
    /* What a killed worker's exec'd programs leave behind is ours to reap
     * (reap() takes any child), not init's, which may not reap at all. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) == -1)
        log_syswarn("prctl(PR_SET_CHILD_SUBREAPER) failed");
    m.inherited = children_list(&m.inherited_count);
    if (m.inherited == NULL)
        m.inherited_count = 0;
    if (pidfile_write(config->pid_file) == -1)
        return DS_EXIT_FATAL;
    m.pid_file = ds_strdup(config->pid_file);
    m.daemon = config->daemon;
    m.user = ds_strdup(config->user);
    log_chown_to_user(log_file_fd(), config->user);
    m.stop_timer = evtimer_new(m.base, on_stop_timer, NULL);
    m.retire_timer = evtimer_new(m.base, on_retire_timer, NULL);
    m.upgrade_timer = evtimer_new(m.base, on_upgrade_timer, NULL);
    if (m.upgrade_parent > 0)
        upgrade_parent_watch();

    log_notice("dosomethingd %s starting: %s, %u workers", DS_VERSION, config->path,
               config->workers.count);
    /* Before forking: every child inherits it. */
    descriptors_raise_limit();
    slot_init(&m.grpc, 0);
    slot_spawn(&m.grpc);
    workers_resize(config->workers.count);

    if (m.state != MASTER_STOPPING_FAST || m.processes != NULL)
        event_base_dispatch(m.base);

    /* Every child of ours is gone; what they left behind may still be dying. */
    int strays = children_kill_all(not_a_stray, NULL, STRAYS_GRACE_MS);
    if (strays == -1)
        log_syswarn("killing what the workers left behind");
    else if (strays > 0)
        log_info("killed %d process%s left behind by workers", strays, strays == 1 ? "" : "es");

    pidfile_remove(m.pid_file);
    char oldbin[4200];
    snprintf(oldbin, sizeof oldbin, "%s.oldbin", m.pid_file);
    pidfile_remove(oldbin);
    log_notice("exiting with status %d", m.exit_status);

    for (uint32_t i = 0; i < m.worker_count; i++)
        event_free(m.workers[i].timer);
    free(m.workers);
    event_free(m.grpc.timer);
    event_free(m.stop_timer);
    event_free(m.retire_timer);
    event_free(m.upgrade_timer);
    upgrade_parent_forget();
    event_free(m.signal_event);
    close(m.signal_fd);
    event_base_free(m.base);
    config_free(m.config);
    free(m.config_file);
    free(m.pid_file);
    free(m.user);
    free(m.inherited);
    return m.exit_status;
}
