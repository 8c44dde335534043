/*
 * The exec handler: `kind: {exec: [PROGRAM, ARG...], env: {...}}`.
 *
 * Per item the worker starts a child (spawn(): clone with CLONE_VM |
 * CLONE_VFORK, like posix_spawn); the child puts itself in a process group of
 * its own, asks for SIGKILL when the worker dies (PR_SET_PDEATHSIG), resets
 * every signal to its default, puts three pipes on stdin/stdout/stderr,
 * marks every other descriptor close-on-exec and execs the program (no
 * shell), searching the PATH of the environment it gives the program. The
 * worker then writes the payload and reads stdout and stderr together with
 * poll(), so a program that writes much before it reads cannot deadlock
 * with us, and learns of the child's exit from a pidfd; it reaps exactly
 * that pid and nothing else. Exit status 0: stdout is the result. Anything
 * else: FAILED with the status and the last line of stderr. More stdout than
 * result_max fails the item as soon as it is seen and kills the program:
 * the buffer never grows past result_max + 1.
 *
 * An item owns nothing once it is over: when the program exits, what is left
 * of its process group (a job it put in the background) is SIGKILLed; what
 * left the group (`setsid`) has reparented to the worker, a subreaper, which
 * kills it after the item (worker.c).
 *
 * Timeouts belong to the grpc process, which has the master SIGKILL the
 * worker. The program then dies with it (PR_SET_PDEATHSIG) but its own
 * children would not. So each worker that runs exec items has a guard: a
 * tiny process, forked when the worker starts, that holds the read end of a
 * pipe. The child writes its pid (= its process group) into the pipe before
 * exec, the worker writes the pid negated once the item is over; when the
 * worker dies, however it dies, the pipe reaches EOF and the guard SIGKILLs
 * the group that was running, then exits. It costs one process per worker
 * and a 4-byte write per item. Rejected: the next worker killing a
 * leftover group (nobody can tell it which group), the worker enforcing the
 * timeout itself (it would race with the grpc process, which stays the one
 * that decides between RETRYING and FAILED), a cgroup per worker (needs a
 * delegated cgroup tree).
 *
 * Why not posix_spawn (glibc 2.36 also clones with CLONE_VM | CLONE_VFORK):
 * it cannot do what the child does before exec. (1) PR_SET_PDEATHSIG and
 * the getppid() check after it: no attribute sets them, and a child does not
 * inherit the worker's. (2) The pid written to the guard before exec: once
 * posix_spawn returns the program already runs, and a worker killed in
 * between leaves it and its children unguarded. (3) The PATH search in the
 * program's environment (docs/handlers.md: a handler's env: may replace
 * PATH): posix_spawnp searches the worker's own PATH, "/bin:/usr/bin" when it
 * has none. (4) Signals 32 and 33 (glibc's internal ones): its child sets
 * them to SIG_IGN, which survives exec (SigIgn 0x180000000 in a program it
 * started from a parent that ignored neither); here the program gets what
 * the worker has, ignored only if the worker ignores them.
 * Nor is it faster. Measured (Dec 2026, 2 cores shared with other jobs,
 * glibc 2.36): a process with gRPC loaded and a 4 MB heap (a worker's VmRSS
 * is 3.9 MB) spawns `true` (found in the second PATH entry) with the same
 * pipes, process group, signal reset, descriptor closing and guard writes,
 * and reaps it; medians of 15 blocks of 100 spawns, three runs: a cycle took
 * 3260 / 3153 / 3022 us here, 3816 / 3383 / 3589 us with posix_spawnp; the
 * spawning process's CPU 209 / 215 / 202 us here, 386 / 378 / 404 us there
 * (it also maps and unmaps a stack per call); the program's the same within
 * noise. With a 64 MB heap: 358-385 us of CPU here against 573-590 us, cycles
 * 8.2 / 8.3 / 9.6 ms against 9.1 / 9.2 / 8.6 ms (load average 4-8). fork()
 * took 2-4 times as long as either.
 */
#include "workers/exec.h"
#include "workers/limits.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/kind.h"
#include "core/log.h"
#include "core/process.h"

#define EXEC_CHUNK         (64u * 1024)    /* bytes per write to stdin */
#define EXEC_STDERR_TAIL   4096            /* bytes of stderr kept for the error */
#define EXEC_LINE_MAX      300             /* of the stderr line quoted in the error */
/* After the program exited and its group is killed, output still arriving
 * comes from a process that left the group: wait this long for it. */
#define EXEC_DRAIN_MS      500
#define EXEC_DEFAULT_PATH  "/usr/local/bin:/usr/bin:/bin"
#define EXEC_CHILD_FAILED  127             /* the child's status when exec failed */
#define EXEC_CHILD_STACK   (64u * 1024)    /* the child's until it execs */

static struct {
    pid_t pid;
    int fd;                                /* write end; O_NONBLOCK */
    char title[96];
} guard = { -1, -1, "" };

/* ---- the guard ------------------------------------------------------------- */

static void __attribute__((noreturn))
guard_main(int fd)
{
    /* Only the end of the worker ends us: not the terminal's ^C, not a
     * signal meant for the daemon. */
    static const int ignored[] = { SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2,
                                   SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU };
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
        signal(ignored[i], SIG_IGN);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    pid_t running = 0;
    int32_t msg;
    for (;;) {
        ssize_t r = read(fd, &msg, sizeof msg);
        if (r == -1 && errno == EINTR)
            continue;
        if (r != (ssize_t)sizeof msg)
            break;                      /* EOF: the worker is gone */
        if (msg > 0)
            running = msg;
        else if (msg < 0 && -msg == running)
            running = 0;
    }
    if (running > 0)
        kill(-running, SIGKILL);
    _exit(0);
}

int
exec_guard_start(const char *title)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) == -1) {
        log_syswarn("pipe2() failed; exec items run without a guard");
        return -1;
    }
    snprintf(guard.title, sizeof guard.title, "%s", title);
    pid_t pid = fork();
    if (pid == -1) {
        log_syswarn("fork() of the exec guard failed; exec items run without one");
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        /* Keep stdio (the log may be stderr) and the read end, as fd 3. */
        if (p[0] != 3 && dup2(p[0], 3) == -1)
            _exit(DS_EXIT_FAILURE);
        if (close_range(4, ~0u, 0) == -1)
            for (int fd = 4; fd < 1024; fd++)
                close(fd);
        proctitle_set("%s", guard.title);
        guard_main(3);
    }
    close(p[0]);
    if (fcntl(p[1], F_SETFL, O_NONBLOCK) == -1)
        log_syswarn("fcntl(O_NONBLOCK) on the exec guard's pipe failed");
    guard.pid = pid;
    guard.fd = p[1];
    log_debug("exec guard started, pid %ld", (long)pid);
    return 0;
}

void
exec_guard_stop(void)
{
    if (guard.fd != -1)
        close(guard.fd);
    guard.fd = -1;
    if (guard.pid != -1) {
        while (waitpid(guard.pid, NULL, 0) == -1 && errno == EINTR)
            ;
    }
    guard.pid = -1;
}

int
exec_guard_pid(void)
{
    return guard.pid;
}

/* A guard that died (someone killed it) is replaced before the next item. */
static void
guard_check(void)
{
    if (guard.pid == -1 || waitpid(guard.pid, NULL, WNOHANG) != guard.pid)
        return;
    log_warn("exec guard (pid %ld) is gone; starting a new one", (long)guard.pid);
    close(guard.fd);
    guard.fd = -1;
    guard.pid = -1;
    exec_guard_start(guard.title);
}

static void
guard_item_over(pid_t pgid)
{
    if (guard.fd == -1)
        return;
    int32_t msg = -(int32_t)pgid;
    while (write(guard.fd, &msg, sizeof msg) == -1 && errno == EINTR)
        ;
    /* EAGAIN (a stalled guard) or EPIPE (a dead one): guard_check sees to it. */
}

/* ---- the environment --------------------------------------------------- */

struct env {
    char **vars;                /* "NAME=value", NULL-terminated */
    size_t count;
    size_t cap;
};

static char *
env_format(const char *name, size_t name_len, const char *value)
{
    size_t value_len = strlen(value);
    char *s = ds_malloc(name_len + value_len + 2);
    memcpy(s, name, name_len);
    s[name_len] = '=';
    memcpy(s + name_len + 1, value, value_len + 1);
    return s;
}

static void
env_add(struct env *e, char *var)
{
    if (e->count + 2 > e->cap) {
        e->cap = e->cap == 0 ? 16 : e->cap * 2;
        e->vars = ds_realloc(e->vars, e->cap * sizeof *e->vars);
    }
    e->vars[e->count++] = var;
    e->vars[e->count] = NULL;
}

/* NAME=value, replacing an earlier NAME: for the few fixed and configured
 * variables (the params are added without looking, they cannot clash). */
static void
env_set(struct env *e, const char *name, const char *value)
{
    size_t len = strlen(name);
    char *var = env_format(name, len, value);
    for (size_t i = 0; i < e->count; i++) {
        if (strncmp(e->vars[i], name, len) == 0 && e->vars[i][len] == '=') {
            free(e->vars[i]);
            e->vars[i] = var;
            return;
        }
    }
    env_add(e, var);
}

static void
env_free(struct env *e)
{
    for (size_t i = 0; i < e->count; i++)
        free(e->vars[i]);
    free(e->vars);
}

static const char *
env_get(const struct env *e, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < e->count; i++)
        if (strncmp(e->vars[i], name, len) == 0 && e->vars[i][len] == '=')
            return e->vars[i] + len + 1;
    return NULL;
}

/* The home of the user the worker runs as (after any privilege drop). */
static const char *
home_dir(void)
{
    static char *home;
    static int looked;
    if (!looked) {
        looked = 1;
        struct passwd *pw = getpwuid(geteuid());
        if (pw != NULL && pw->pw_dir != NULL && pw->pw_dir[0] != '\0')
            home = ds_strdup(pw->pw_dir);
    }
    return home;
}

/*
 * PATH (the daemon's) and HOME, then the handler's env: on top, then the
 * item: DS_ITEM_ID, DS_KIND, DS_ATTEMPT and DS_PARAM_<NAME> per param (the
 * config refuses env: names starting with DS_), and its W3C trace context
 * as TRACEPARENT and TRACESTATE (the names OpenTelemetry's environment
 * propagation reads), over the handler's if it set them.
 */
static void
env_build(struct env *e, const struct ds_handler_config *handler, const wire_work_item *item,
          const struct handler_output *out)
{
    uint32_t attempt = out->attempt;
    const char *path = getenv("PATH");
    env_set(e, "PATH", path != NULL && path[0] != '\0' ? path : EXEC_DEFAULT_PATH);
    if (home_dir() != NULL)
        env_set(e, "HOME", home_dir());
    for (size_t i = 0; i < handler->env_count; i++)
        env_set(e, handler->env[i].name, handler->env[i].value);
    env_set(e, "DS_ITEM_ID", item->id);
    env_set(e, "DS_KIND", handler->kind);
    char number[16];
    snprintf(number, sizeof number, "%u", attempt);
    env_set(e, "DS_ATTEMPT", number);
    if (out->traceparent != NULL) {
        env_set(e, "TRACEPARENT", out->traceparent);
        if (out->tracestate != NULL)
            env_set(e, "TRACESTATE", out->tracestate);
    }
    for (size_t i = 0; i < item->n_params; i++) {
        size_t len = kind_exec_env_name(item->params[i]->key, NULL, 0);
        char *name = ds_malloc(len + 1);
        kind_exec_env_name(item->params[i]->key, name, len + 1);
        env_add(e, env_format(name, len, item->params[i]->value));
        free(name);
    }
}

/* ---- the child --------------------------------------------------------- */

struct spawn {
    char *const *argv;
    char *const *envp;
    const char *path;           /* searched for a program named without a '/' */
    int stdin_fd, stdout_fd, stderr_fd;     /* the child's ends, all >= 3 */
    int status_fd;              /* close-on-exec: exec's errno, if it fails */
    int guard_fd;
    pid_t parent;
    struct rlimit data, cpu;    /* RLIMIT_DATA, RLIMIT_CPU; rlim_cur 0: none */
};

/* execve FILE like execvp, but searching S->path. Returns the errno to report. */
static int
exec_search(const struct spawn *s)
{
    const char *file = s->argv[0];
    if (strchr(file, '/') != NULL) {
        execve(file, s->argv, s->envp);
        return errno;
    }
    char buf[PATH_MAX];
    size_t file_len = strlen(file);
    int saved = ENOENT;
    for (const char *p = s->path;; ) {
        const char *end = strchrnul(p, ':');
        size_t dir_len = (size_t)(end - p);
        if (dir_len == 0) {
            p = ".";                    /* an empty entry is the current directory */
            dir_len = 1;
        }
        if (dir_len + 1 + file_len < sizeof buf) {
            memcpy(buf, p, dir_len);
            buf[dir_len] = '/';
            memcpy(buf + dir_len + 1, file, file_len + 1);
            execve(buf, s->argv, s->envp);
            if (errno == EACCES)
                saved = EACCES;
            else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENODEV &&
                     errno != ETIMEDOUT)
                return errno;
        }
        if (*end == '\0')
            break;
        p = end + 1;
    }
    return saved;
}

/* In the child, until exec: async-signal-safe calls only, and no writes to
 * memory but its own stack (it shares the worker's, see spawn()). */
static void __attribute__((noreturn))
child_main(const struct spawn *s)
{
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != s->parent)
        _exit(EXEC_CHILD_FAILED);       /* the worker died before we could ask */
    if (s->guard_fd != -1) {
        int32_t me = (int32_t)getpid();
        if (write(s->guard_fd, &me, sizeof me) == -1) {
            /* unguarded: PR_SET_PDEATHSIG still covers the program itself */
        }
    }

    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &dfl, NULL);     /* SIG_IGN would survive exec: SIGPIPE is */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* The kind's limits, on the program alone (a failure leaves it without:
     * a hard limit below ours, which then holds anyway). */
    if (s->data.rlim_cur != 0)
        setrlimit(RLIMIT_DATA, &s->data);
    if (s->cpu.rlim_cur != 0)
        setrlimit(RLIMIT_CPU, &s->cpu);

    int err;
    if (dup2(s->stdin_fd, 0) == -1 || dup2(s->stdout_fd, 1) == -1 ||
        dup2(s->stderr_fd, 2) == -1) {
        err = errno;
    } else {
        /* Whatever the worker or a module opened without O_CLOEXEC. */
        close_range(3, ~0u, CLOSE_RANGE_CLOEXEC);
        err = exec_search(s);
    }
    if (write(s->status_fd, &err, sizeof err) == -1) {
        /* the worker sees the exit status instead */
    }
    _exit(EXEC_CHILD_FAILED);
}

static int
child_entry(void *arg)
{
    child_main(arg);
}

/*
 * Start the child. A plain fork() copies the worker's page tables, which
 * with gRPC's libraries mapped costs as much as the exec itself; like
 * posix_spawn, we clone with CLONE_VM | CLONE_VFORK instead: the child
 * borrows our memory on a stack of its own until it execs, we wait for that.
 * Every signal is blocked around it, so no handler of ours runs in the child
 * before child_main has reset them. fork() where that clone is refused
 * (valgrind), and under AddressSanitizer, whose runtime cannot follow a
 * child that runs on a stack of its own in our memory.
 */
#if defined(__SANITIZE_ADDRESS__)
#define EXEC_USE_FORK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EXEC_USE_FORK 1
#endif
#endif
#ifndef EXEC_USE_FORK
#define EXEC_USE_FORK 0
#endif

static pid_t
spawn(const struct spawn *s)
{
    static void *stack;
    static int use_fork = EXEC_USE_FORK;
    if (stack == NULL && !use_fork) {
        stack = mmap(NULL, EXEC_CHILD_STACK, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) {
            stack = NULL;
            use_fork = 1;
        }
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = -1;
    if (!use_fork) {
        pid = clone(child_entry, (char *)stack + EXEC_CHILD_STACK, CLONE_VM | CLONE_VFORK | SIGCHLD,
                    (void *)s);
        if (pid == -1 && errno == EINVAL)
            use_fork = 1;
    }
    if (use_fork) {
        pid = fork();
        if (pid == 0)
            child_main(s);
    }
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return pid;
}

/* ---- the worker's side ----------------------------------------------- */

struct run {
    pid_t pid;
    int stdin_fd, stdout_fd, stderr_fd, pid_fd;
    const uint8_t *in;
    size_t in_len, in_done;
    uint8_t *out;
    size_t out_len, out_cap, out_max;
    int overflow;
    char tail[EXEC_STDERR_TAIL];
    size_t tail_len;
    int reaped;
    int status;
    uint64_t max_rss_kib;       /* its peak, from wait4 (its reaped descendants' too) */
    uint64_t cpu_usec;          /* its CPU, from wait4 */
    uint64_t drain_deadline_ms;
    struct handler_output *handler_out;     /* its cancel check */
    int cancelled;              /* SIGTERM sent */
    uint64_t kill_at_ms;        /* cancelled: SIGKILL then, unless it is gone; 0: sent */
};

static void
close_fd(int *fd)
{
    if (*fd != -1)
        close(*fd);
    *fd = -1;
}

/* A pidfd for PID, or -1 where there is none (before Linux 5.3, under
 * valgrind 3.19): pump then looks at waitpid now and then instead. */
static int
open_pidfd(pid_t pid)
{
    static int unsupported;
    if (unsupported)
        return -1;
    int fd = pidfd_open(pid, 0);
    if (fd == -1 && (errno == ENOSYS || errno == EINVAL || errno == EPERM))
        unsupported = 1;
    return fd;                          /* close-on-exec, as every pidfd */
}

/* A descriptor above stdio, so that dup2 onto 0..2 in the child cannot
 * clobber it (the daemon may run with stdin closed). */
static int
above_stdio(int fd)
{
    if (fd > 2)
        return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return moved;
}

static int
make_pipe(int p[2])
{
    if (pipe2(p, O_CLOEXEC) == -1)
        return -1;
    p[0] = above_stdio(p[0]);
    p[1] = above_stdio(p[1]);
    if (p[0] == -1 || p[1] == -1) {
        int err = errno;
        close_fd(&p[0]);
        close_fd(&p[1]);
        errno = err;
        return -1;
    }
    return 0;
}

/* ERR says the worker's (or the machine's) resources ran short, not that
 * the program cannot run: another attempt may find them (EMFILE, ENFILE:
 * descriptors; EAGAIN: processes; ENOMEM; ETXTBSY: the program is being
 * replaced, a deploy). */
static int
resources_short(int err)
{
    return err == EMFILE || err == ENFILE || err == EAGAIN || err == ENOMEM || err == ETXTBSY;
}

static void
set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags != -1)
        fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

static void
on_stdin(struct run *r)
{
    while (r->in_done < r->in_len) {
        size_t n = r->in_len - r->in_done;
        if (n > EXEC_CHUNK)
            n = EXEC_CHUNK;
        ssize_t w = write(r->stdin_fd, r->in + r->in_done, n);
        if (w == -1 && errno == EINTR)
            continue;
        if (w == -1 && errno == EAGAIN)
            return;
        if (w == -1) {
            /* EPIPE: the program does not read (all) its input; that is its business. */
            break;
        }
        r->in_done += (size_t)w;
    }
    close_fd(&r->stdin_fd);
}

static void
on_stdout(struct run *r)
{
    for (;;) {
        if (r->out_len == r->out_cap) {
            /* Room for one byte past the limit: enough to know it is exceeded. */
            size_t cap = r->out_cap < EXEC_CHUNK ? EXEC_CHUNK : r->out_cap * 2;
            if (cap > r->out_max + 1)
                cap = r->out_max + 1;
            r->out = ds_realloc(r->out, cap);
            r->out_cap = cap;
        }
        ssize_t n = read(r->stdout_fd, r->out + r->out_len, r->out_cap - r->out_len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && errno == EAGAIN)
            return;
        if (n <= 0)
            break;                      /* EOF, or an error: the same to us */
        r->out_len += (size_t)n;
        if (r->out_len > r->out_max) {
            r->overflow = 1;
            kill(-r->pid, SIGKILL);
            break;
        }
    }
    close_fd(&r->stdout_fd);
}

static void
on_stderr(struct run *r)
{
    char buf[EXEC_STDERR_TAIL];
    for (;;) {
        ssize_t n = read(r->stderr_fd, buf, sizeof buf);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && errno == EAGAIN)
            return;
        if (n <= 0)
            break;
        /* Keep the last EXEC_STDERR_TAIL bytes. */
        size_t len = (size_t)n;
        if (r->tail_len + len > sizeof r->tail) {
            size_t drop = r->tail_len + len - sizeof r->tail;
            if (drop > r->tail_len)
                drop = r->tail_len;
            memmove(r->tail, r->tail + drop, r->tail_len - drop);
            r->tail_len -= drop;
        }
        memcpy(r->tail + r->tail_len, buf, len);
        r->tail_len += len;
    }
    close_fd(&r->stderr_fd);
}

/*
 * The item is cancelled: SIGTERM to the program's group now, SIGKILL after
 * handlers.<kind>.cancel_grace (see pump). The group id is safe to use
 * until the program is reaped (reap() kills the group before it reaps).
 */
static void
cancel_program(struct run *r)
{
    r->cancelled = 1;
    if (r->reaped)
        return;
    uint64_t grace = r->handler_out->cancel_grace_ms;
    log_debug("exec: item cancelled; SIGTERM to process group %ld, SIGKILL in %llu ms",
              (long)r->pid, (unsigned long long)grace);
    if (grace == 0) {
        kill(-r->pid, SIGKILL);
        return;
    }
    kill(-r->pid, SIGTERM);
    r->kill_at_ms = clock_monotonic_ms() + grace;
}

/*
 * If the program is over (or once it is, with BLOCK): kill what it left in
 * its group, then reap it. Killing first is what makes the group id safe to
 * use: until it is reaped, the zombie keeps its pid from being reused.
 */
static void
reap(struct run *r, int block)
{
    siginfo_t info;
    memset(&info, 0, sizeof info);
    while (waitid(P_PID, (id_t)r->pid, &info, WEXITED | WNOWAIT | (block ? 0 : WNOHANG)) == -1)
        if (errno != EINTR)
            return;
    if (info.si_pid != r->pid)
        return;                         /* still running */
    kill(-r->pid, SIGKILL);
    struct rusage usage;
    memset(&usage, 0, sizeof usage);
    while (wait4(r->pid, &r->status, 0, &usage) == -1 && errno == EINTR)
        ;
    r->max_rss_kib = usage.ru_maxrss > 0 ? (uint64_t)usage.ru_maxrss : 0;
    r->cpu_usec = (uint64_t)usage.ru_utime.tv_sec * 1000000u + (uint64_t)usage.ru_utime.tv_usec +
                  (uint64_t)usage.ru_stime.tv_sec * 1000000u + (uint64_t)usage.ru_stime.tv_usec;
    r->reaped = 1;
    close_fd(&r->pid_fd);
    close_fd(&r->stdin_fd);
    r->drain_deadline_ms = clock_monotonic_ms() + EXEC_DRAIN_MS;
}

static void
pump(struct run *r)
{
    for (;;) {
        int out_open = r->stdout_fd != -1 || r->stderr_fd != -1;
        if (r->reaped && !out_open)
            return;
        if (!r->reaped && !out_open && r->pid_fd == -1) {
            reap(r, 1);                 /* nothing left to read: just wait */
            continue;
        }
        struct pollfd pfd[5];
        int *which[5];
        nfds_t n = 0;
        int cancel_fd = -1;
        struct handler_output *ho = r->handler_out;
        if (!r->cancelled && !r->reaped && ho != NULL && ho->cancelled != NULL &&
            (cancel_fd = ho->cancel_fd(ho->cancel_arg)) != -1) {
            pfd[n] = (struct pollfd){ .fd = cancel_fd, .events = POLLIN };
            which[n++] = &cancel_fd;
        }
        if (r->stdin_fd != -1) {
            pfd[n] = (struct pollfd){ .fd = r->stdin_fd, .events = POLLOUT };
            which[n++] = &r->stdin_fd;
        }
        if (r->stdout_fd != -1) {
            pfd[n] = (struct pollfd){ .fd = r->stdout_fd, .events = POLLIN };
            which[n++] = &r->stdout_fd;
        }
        if (r->stderr_fd != -1) {
            pfd[n] = (struct pollfd){ .fd = r->stderr_fd, .events = POLLIN };
            which[n++] = &r->stderr_fd;
        }
        if (!r->reaped && r->pid_fd != -1) {
            pfd[n] = (struct pollfd){ .fd = r->pid_fd, .events = POLLIN };
            which[n++] = &r->pid_fd;
        }
        int timeout = -1;
        if (r->reaped) {
            uint64_t now = clock_monotonic_ms();
            if (now >= r->drain_deadline_ms) {
                log_debug("exec: output still open %d ms after pid %ld exited; not waiting "
                          "for it", EXEC_DRAIN_MS, (long)r->pid);
                close_fd(&r->stdout_fd);
                close_fd(&r->stderr_fd);
                return;
            }
            timeout = (int)(r->drain_deadline_ms - now);
        } else if (r->pid_fd == -1) {
            timeout = 50;               /* no pidfd: look for the exit now and then */
        }
        if (!r->reaped && r->kill_at_ms != 0) {
            uint64_t now = clock_monotonic_ms();
            if (now >= r->kill_at_ms) {
                log_debug("exec: pid %ld still running %llu ms after SIGTERM; SIGKILL",
                          (long)r->pid, (unsigned long long)ho->cancel_grace_ms);
                kill(-r->pid, SIGKILL);
                r->kill_at_ms = 0;
            } else if (timeout == -1 || (uint64_t)timeout > r->kill_at_ms - now) {
                timeout = (int)(r->kill_at_ms - now);
            }
        }
        int ready = poll(pfd, n, timeout);
        if (ready == -1 && errno != EINTR) {
            log_syserr("poll() failed while running pid %ld; killing it", (long)r->pid);
            kill(-r->pid, SIGKILL);
            close_fd(&r->stdin_fd);
            close_fd(&r->stdout_fd);
            close_fd(&r->stderr_fd);
            if (!r->reaped)
                reap(r, 1);
            return;
        }
        for (nfds_t i = 0; ready > 0 && i < n; i++) {
            if (pfd[i].revents == 0)
                continue;
            if (which[i] == &cancel_fd) {
                if (ho->cancelled(ho->cancel_arg))
                    cancel_program(r);
            } else if (which[i] == &r->stdin_fd)
                on_stdin(r);
            else if (which[i] == &r->stdout_fd)
                on_stdout(r);
            else if (which[i] == &r->stderr_fd)
                on_stderr(r);
            else
                reap(r, 1);
        }
        if (!r->reaped && r->pid_fd == -1)
            reap(r, 0);
    }
}

/* The last non-empty line of stderr, cut to EXEC_LINE_MAX, into buf. */
static const char *
last_line(struct run *r, char *buf, size_t size)
{
    size_t end = r->tail_len;
    while (end > 0 && (r->tail[end - 1] == '\n' || r->tail[end - 1] == '\r' ||
                       r->tail[end - 1] == ' ' || r->tail[end - 1] == '\t'))
        end--;
    size_t start = end;
    while (start > 0 && r->tail[start - 1] != '\n')
        start--;
    size_t len = end - start;
    size_t max = size - 4 < EXEC_LINE_MAX ? size - 4 : EXEC_LINE_MAX;
    int cut = len > max;
    if (cut)
        len = max;
    memcpy(buf, r->tail + start, len);
    memcpy(buf + len, cut ? "..." : "", cut ? 4 : 1);
    handler_clean_text(buf);
    return buf;
}

static const char *
program_name(const struct ds_handler_config *handler)
{
    const char *slash = strrchr(handler->argv[0], '/');
    return slash != NULL ? slash + 1 : handler->argv[0];
}

/* The error of a program that failed: "NAME exited with status 3: the last
 * line of stderr"; "(retryable)" after the status when RETRY. */
static void
describe_failure(const struct ds_handler_config *handler, struct run *r,
                 struct handler_output *out, int retry)
{
    char how[96], line[EXEC_LINE_MAX + 8];
    if (WIFSIGNALED(r->status)) {
        const char *abbrev = sigabbrev_np(WTERMSIG(r->status));
        snprintf(how, sizeof how, "killed by signal %d%s%s%s", WTERMSIG(r->status),
                 abbrev ? " (SIG" : "", abbrev ? abbrev : "", abbrev ? ")" : "");
    } else {
        process_status_text(r->status, how, sizeof how);
        if (retry)
            strcat(how, " (retryable)");    /* status text is under 40 bytes */
    }
    last_line(r, line, sizeof line);
    snprintf(out->error, sizeof out->error, "%s %s%s%s", program_name(handler), how,
             line[0] ? ": " : "", line);
}

/* A signal of a crash (not one sent to stop the program: TERM, KILL, INT...). */
static int
crashed(int sig)
{
    return sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE ||
           sig == SIGABRT || sig == SIGSYS;
}

/* ---- limits -------------------------------------------------------------- */

/* Does the stderr tail read as an allocation that failed? */
static int
says_out_of_memory(const struct run *r)
{
    return limits_says_out_of_memory(r->tail, r->tail_len);
}

/*
 * Was the failed program stopped by its kind's limit? CPU: it died of
 * SIGXCPU (the soft limit: only the kernel sends it for that; wait4 may
 * count a little under the limit then, the kernel's check is per tick) or
 * of SIGKILL (the hard one, a second later) having used 90% of it or more. Memory (RLIMIT_DATA makes an allocation fail;
 * what the program then does is its own business): it failed, and either
 * its peak came within a quarter of the limit or its stderr says an
 * allocation failed. A program that fails for another reason after a
 * refused allocation it does not report is not recognised: its own error
 * stands. If so, OUT->error says which limit, then what the program said.
 */
static int
limit_exceeded(const struct ds_handler_config *handler, struct run *r, struct handler_output *out)
{
    char limit[64], what[sizeof out->error];
    int sig = WIFSIGNALED(r->status) ? WTERMSIG(r->status) : 0;
    uint64_t limit_usec = (handler->cpu_limit_ms + 999) / 1000 * 1000000;
    if (handler->cpu_limit_ms != 0 &&
        (sig == SIGXCPU || (sig == SIGKILL && r->cpu_usec >= limit_usec / 10 * 9))) {
        describe_failure(handler, r, out, 0);
        memcpy(what, out->error, sizeof what);
        limits_cpu_text(handler->cpu_limit_ms, limit, sizeof limit);
        snprintf(out->error, sizeof out->error, "%s: %.440s", limit, what);
        return 1;
    }
    if (handler->memory_limit != 0 &&
        (r->max_rss_kib * 1024 >= handler->memory_limit / 4 * 3 || says_out_of_memory(r))) {
        describe_failure(handler, r, out, 0);
        memcpy(what, out->error, sizeof what);
        limits_memory_text(handler->memory_limit, limit, sizeof limit);
        snprintf(out->error, sizeof out->error, "%s: %.440s", limit, what);
        return 1;
    }
    return 0;
}

int
exec_run(const struct ds_handler_config *handler, const wire_work_item *item,
         struct handler_output *out)
{
    struct env env = { NULL, 0, 0 };
    int in[2] = { -1, -1 }, outp[2] = { -1, -1 }, errp[2] = { -1, -1 }, status[2] = { -1, -1 };
    struct run *r = NULL;
    int result = -1;

    guard_check();
    env_build(&env, handler, item, out);
    if (make_pipe(in) == -1 || make_pipe(outp) == -1 || make_pipe(errp) == -1 ||
        make_pipe(status) == -1) {
        int err = errno;
        snprintf(out->error, sizeof out->error, "cannot run %s: pipe2() failed: %s",
                 program_name(handler), strerror(err));
        log_syserr("pipe2() failed");
        /* Not the item's failure: before, FAILED at once (no attempt left
         * to the descriptors freed a moment later). */
        if (resources_short(err))
            result = HANDLER_RETRY;
        goto done;
    }
    const char *path = env_get(&env, "PATH");
    struct spawn s = {
        .argv = handler->argv, .envp = env.vars, .path = path ? path : EXEC_DEFAULT_PATH,
        .stdin_fd = in[0], .stdout_fd = outp[1], .stderr_fd = errp[1], .status_fd = status[1],
        .guard_fd = guard.fd, .parent = getpid(),
    };
    if (handler->memory_limit != 0)
        s.data = (struct rlimit){ handler->memory_limit, handler->memory_limit };
    if (handler->cpu_limit_ms != 0) {
        /* SIGXCPU at the limit (whole seconds, rounded up), SIGKILL a second later. */
        rlim_t seconds = (rlim_t)((handler->cpu_limit_ms + 999) / 1000);
        s.cpu = (struct rlimit){ seconds, seconds + 1 };
    }

    pid_t pid = spawn(&s);
    if (pid == -1) {
        int err = errno;
        snprintf(out->error, sizeof out->error, "cannot run %s: fork() failed: %s",
                 program_name(handler), strerror(err));
        log_syserr("fork() failed");
        if (resources_short(err))
            result = HANDLER_RETRY;
        goto done;
    }

    /* Ours from here: the parent's ends. */
    setpgid(pid, pid);                  /* the group exists before we may kill it */
    close_fd(&in[0]);
    close_fd(&outp[1]);
    close_fd(&errp[1]);
    close_fd(&status[1]);
    r = ds_calloc(1, sizeof *r);
    r->pid = pid;
    r->stdin_fd = in[1];
    r->stdout_fd = outp[0];
    r->stderr_fd = errp[0];
    in[1] = outp[0] = errp[0] = -1;
    r->in = item->payload.data;
    r->in_len = item->payload.len;
    r->out_max = out->result_max;

    /* Exec's verdict: EOF when it succeeded (close-on-exec), its errno if not. */
    int child_errno = 0;
    ssize_t got;
    while ((got = read(status[0], &child_errno, sizeof child_errno)) == -1 && errno == EINTR)
        ;
    close_fd(&status[0]);
    if (got == (ssize_t)sizeof child_errno) {
        reap(r, 1);
        snprintf(out->error, sizeof out->error, "cannot execute %s: %s", handler->argv[0],
                 strerror(child_errno));
        if (resources_short(child_errno))
            result = HANDLER_RETRY;
        goto done;
    }

    r->pid_fd = open_pidfd(pid);
    r->handler_out = out;
    set_nonblocking(r->stdin_fd);
    set_nonblocking(r->stdout_fd);
    set_nonblocking(r->stderr_fd);
    if (r->in_len == 0)
        close_fd(&r->stdin_fd);
    pump(r);
    if (!r->reaped)
        reap(r, 1);

    if (r->overflow) {
        snprintf(out->error, sizeof out->error, "output exceeds handlers.max_result_size "
                 "(%zu bytes)", r->out_max);
    } else if (!(WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0) &&
               limit_exceeded(handler, r, out)) {
        /* FAILED, not retried: it would only be stopped again */
    } else if (WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0) {
        out->result = r->out;
        out->result_len = r->out_len;
        out->release = free;
        r->out = NULL;
        result = 0;
    } else if (WIFEXITED(r->status) && config_retry_exit_code(handler, WEXITSTATUS(r->status))) {
        describe_failure(handler, r, out, 1);
        result = HANDLER_RETRY;
    } else if (WIFSIGNALED(r->status) && crashed(WTERMSIG(r->status))) {
        /* A crash, like a worker's death: another attempt, up to
         * max_attempts (a poison item then lists each attempt's reason). */
        describe_failure(handler, r, out, 0);
        result = HANDLER_RETRY;
    } else {
        describe_failure(handler, r, out, 0);
    }

done:
    if (r != NULL) {
        out->child_max_rss_kib = r->max_rss_kib;
        guard_item_over(r->pid);
        close_fd(&r->stdin_fd);
        close_fd(&r->stdout_fd);
        close_fd(&r->stderr_fd);
        close_fd(&r->pid_fd);
        free(r->out);
        free(r);
    }
    for (int i = 0; i < 2; i++) {
        close_fd(&in[i]);
        close_fd(&outp[i]);
        close_fd(&errp[i]);
        close_fd(&status[i]);
    }
    env_free(&env);
    return result;
}
