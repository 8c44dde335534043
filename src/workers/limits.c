/*
 * memory_limit and cpu_limit (limits.h).
 *
 * An exec program is limited by the kernel (exec.c: RLIMIT_DATA and
 * RLIMIT_CPU on the child). A built-in or a module runs in the worker,
 * whose rlimits are for the whole process and its whole life, and cannot
 * be interrupted safely halfway: so a thread of the worker watches the
 * attempt, and a worker whose attempt went over dies (SIGKILL, no fini),
 * having said why in the page it shares with the master. The master
 * respawns it at once: like an item that crashed its worker, it does not
 * count toward respawn.crash_limit; unlike it, the attempt ends FAILED,
 * not retried (it would only be stopped again), as exec's does.
 *
 * What is measured, every LIMITS_SAMPLE_MS while an attempt is armed:
 * - memory: the worker's resident set (/proc/self/statm) less what it was
 *   when the attempt started: what the attempt made resident, whoever
 *   frees it (a module's threads included). Between two samples a handler
 *   can fault in at most some tens of MB; an allocation larger than that
 *   in one go meets RLIMIT_DATA (the worker's data at the start plus twice
 *   the limit and DATA_SLACK), and fails: the handler sees malloc() return NULL, and an
 *   attempt that then fails saying so (limits_says_out_of_memory) or after
 *   growing by three quarters of the limit is told apart by the worker
 *   (worker.c), as exec.c tells a program's. What the worker itself
 *   takes in meanwhile (its cancel checks read the next items) is not the
 *   attempt's: see limits_own_begin.
 * - CPU: CLOCK_PROCESS_CPUTIME_ID, every thread of the worker (what a
 *   module forks is not in it), less what it was at the start.
 *
 * Costs: nothing for a kind without limits (no thread, no call). For a
 * limited attempt, the arm and disarm: a CPU clock read (a system call,
 * 1.4 us on this VM), and with a memory limit two statm reads (2-3 us
 * each) and two setrlimit (1.3 us each): ~10 us; the same again for a
 * cancel check that finds items to read (limits_own_begin). The watcher costs a tick
 * (~5 us) per LIMITS_SAMPLE_MS while limited attempts run, whatever their
 * number.
 */
#include "workers/limits.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

/* Room under the lowered RLIMIT_DATA for the worker's own allocations
 * during the attempt (its updates; the next items a cancel check reads
 * have RLIMIT_DATA lifted for them, limits_own_begin): a failed ds_malloc
 * of the worker's would abort it, not stop the attempt for its limit. */
#define DATA_SLACK (64ull << 20)

/* The watcher's stack: it calls snprintf and little else. */
#define WATCH_STACK (128u * 1024)

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    int started;                /* 1: running; -1: could not start */
    int statm_fd;
    uint64_t page_size;
    struct rlimit data_saved;   /* RLIMIT_DATA as we found it */
    int data_lowered;           /* set by this attempt's arm */
    rlim_t data_want;           /* the soft RLIMIT_DATA for this attempt */
    uint64_t own_rss, own_data; /* bytes, at limits_own_begin */
    /* under lock (own and memory_limit: the worker's thread, which alone
     * writes them, reads them without) */
    int armed;
    int own;                    /* between limits_own_begin and _end: memory not sampled */
    int idle;                   /* the watcher waits for an arm, not for its next tick */
    uint64_t memory_limit;      /* bytes; 0: none */
    uint64_t cpu_limit_ns;      /* 0: none */
    uint64_t rss_start;         /* bytes */
    uint64_t cpu_start_ns;
    uint64_t peak_growth;       /* bytes */
    struct ds_worker_status *status;
} wd = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .statm_fd = -1,
};

/* ---- how it is said ------------------------------------------------------ */

/* 512MiB, 1GiB, 1500KiB, 1048577 (bytes): as the config writes sizes. */
static const char *
size_text(uint64_t v, char *buf, size_t size)
{
    static const char *const units[] = { "GiB", "MiB", "KiB" };
    for (int i = 0; i < 3; i++) {
        uint64_t unit = 1ull << (30 - 10 * i);
        if (v >= unit && v % unit == 0) {
            snprintf(buf, size, "%llu%s", (unsigned long long)(v / unit), units[i]);
            return buf;
        }
    }
    snprintf(buf, size, "%llu", (unsigned long long)v);
    return buf;
}

static const char *
duration_text(uint64_t ms, char *buf, size_t size)
{
    if (ms % 1000 == 0)
        snprintf(buf, size, "%llus", (unsigned long long)(ms / 1000));
    else
        snprintf(buf, size, "%llums", (unsigned long long)ms);
    return buf;
}

int
limits_memory_text(uint64_t bytes, char *buf, size_t size)
{
    char v[32];
    return snprintf(buf, size, "memory limit %s exceeded", size_text(bytes, v, sizeof v));
}

int
limits_cpu_text(uint64_t ms, char *buf, size_t size)
{
    char v[32];
    return snprintf(buf, size, "cpu limit %s exceeded", duration_text(ms, v, sizeof v));
}

int
limits_says_out_of_memory(const char *text, size_t len)
{
    static const char *const signs[] = {
        "MemoryError", "Cannot allocate memory", "out of memory", "Out of memory",
        "bad_alloc", "memory exhausted", "failed to allocate",
    };
    for (size_t i = 0; i < sizeof signs / sizeof signs[0]; i++)
        if (memmem(text, len, signs[i], strlen(signs[i])) != NULL)
            return 1;
    return 0;
}

int
limits_apply_to(const struct ds_handler_config *handler)
{
    return handler->type != DS_HANDLER_EXEC &&
           (handler->memory_limit != 0 || handler->cpu_limit_ms != 0);
}

/* ---- the watchdog -------------------------------------------------------- */

/* Our resident set and data (bytes), from /proc/self/statm; -1 if unread. */
static int
read_statm(uint64_t *rss, uint64_t *data)
{
    char buf[160];
    ssize_t n = pread(wd.statm_fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    unsigned long long size, resident, shared, text, lib, dat;
    if (sscanf(buf, "%llu %llu %llu %llu %llu %llu", &size, &resident, &shared, &text, &lib,
               &dat) != 6)
        return -1;
    *rss = resident * wd.page_size;
    *data = dat * wd.page_size;
    return 0;
}

static uint64_t
process_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == -1)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The attempt went over (under lock): say so to the master, and die. */
static void
over(int which, uint64_t growth, uint64_t cpu_ns, uint64_t rss)
{
    struct ds_worker_status *s = wd.status;
    if (s != NULL) {
        char head[64], used[64];
        if (which == DS_LIMIT_MEMORY) {
            limits_memory_text(wd.memory_limit, head, sizeof head);
            snprintf(used, sizeof used, "it grew by %llu MiB",
                     (unsigned long long)(growth >> 20));
        } else {
            limits_cpu_text(wd.cpu_limit_ns / 1000000, head, sizeof head);
            snprintf(used, sizeof used, "it used %.2f s of CPU", (double)cpu_ns / 1e9);
        }
        snprintf(s->limit_reason, sizeof s->limit_reason, "%s: %s in worker %ld, which was "
                 "stopped", head, used, (long)getpid());
        struct rusage self;
        uint64_t peak = getrusage(RUSAGE_SELF, &self) == 0 && self.ru_maxrss > 0
                            ? (uint64_t)self.ru_maxrss : 0;
        s->limit_cpu_usec = cpu_ns / 1000;
        s->limit_max_rss_kib = rss / 1024 > peak ? rss / 1024 : peak;
        __atomic_store_n(&s->limit_hit, (uint32_t)which, __ATOMIC_RELEASE);
    }
    kill(getpid(), SIGKILL);
    for (;;)
        pause();
}

/* One look at the armed attempt (under lock). */
static void
sample(void)
{
    uint64_t rss = 0, data, growth = 0;
    if (wd.memory_limit != 0 && !wd.own && read_statm(&rss, &data) == 0 && rss > wd.rss_start)
        growth = rss - wd.rss_start;
    if (growth > wd.peak_growth)
        wd.peak_growth = growth;
    uint64_t now = wd.cpu_limit_ns != 0 ? process_cpu_ns() : 0;
    uint64_t cpu = now > wd.cpu_start_ns ? now - wd.cpu_start_ns : 0;
    if (wd.memory_limit != 0 && growth > wd.memory_limit) {
        now = process_cpu_ns();
        over(DS_LIMIT_MEMORY, growth, now > wd.cpu_start_ns ? now - wd.cpu_start_ns : 0, rss);
    }
    if (wd.cpu_limit_ns != 0 && cpu >= wd.cpu_limit_ns)
        over(DS_LIMIT_CPU, growth, cpu, rss);
}

/*
 * Ticks every LIMITS_SAMPLE_MS while it finds an attempt armed at its tick,
 * and waits to be woken only once it found none: a run of short limited
 * attempts (a few us each) costs one wake-up per tick, not one per attempt
 * (measured: a wake-up per attempt made a sha256 of 300 rounds cost 50-70
 * us of CPU more, on this 2-CPU VM).
 */
static void *
watch(void *arg)
{
    pthread_mutex_lock(&wd.lock);
    for (;;) {
        while (!wd.armed) {
            wd.idle = 1;
            pthread_cond_wait(&wd.cond, &wd.lock);
        }
        wd.idle = 0;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += LIMITS_SAMPLE_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (pthread_cond_timedwait(&wd.cond, &wd.lock, &until) == 0)
            ;           /* nobody signals a ticking watcher: spurious */
        if (wd.armed)
            sample();
    }
    return NULL;
}

static int
start(void)
{
    wd.page_size = (uint64_t)sysconf(_SC_PAGESIZE);
    wd.statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (wd.statm_fd == -1) {
        log_syserr("memory_limit and cpu_limit: cannot open /proc/self/statm");
        return -1;
    }
    if (getrlimit(RLIMIT_DATA, &wd.data_saved) == -1) {
        log_syserr("getrlimit(RLIMIT_DATA) failed");
        return -1;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&wd.cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, WATCH_STACK);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* Signals stay the main thread's business. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&wd.thread, &attr, watch, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (err != 0) {
        log_error("memory_limit and cpu_limit: pthread_create() failed: %s", strerror(err));
        return -1;
    }
    return 0;
}

/* RLIMIT_DATA to wd.data_want (not above the limit we found); -1 if refused. */
static int
lower_data(void)
{
    rlim_t want = wd.data_want;
    if (wd.data_saved.rlim_cur != RLIM_INFINITY && want > wd.data_saved.rlim_cur)
        want = wd.data_saved.rlim_cur;
    struct rlimit rl = { want, wd.data_saved.rlim_max };
    if (setrlimit(RLIMIT_DATA, &rl) == 0)
        return 0;
    log_syswarn("setrlimit(RLIMIT_DATA, %llu) failed", (unsigned long long)want);
    return -1;
}

void
limits_arm(const struct ds_handler_config *handler, struct ds_worker_status *status)
{
    if (wd.started == 0)
        wd.started = start() == 0 ? 1 : -1;
    if (wd.started != 1)
        return;         /* said once: the limits are not enforced in this worker */
    uint64_t rss = 0, data = 0;
    if (handler->memory_limit != 0)
        read_statm(&rss, &data);
    uint64_t cpu = process_cpu_ns();  /* also what a memory kill says it cost */
    pthread_mutex_lock(&wd.lock);
    wd.memory_limit = handler->memory_limit;
    wd.cpu_limit_ns = handler->cpu_limit_ms * 1000000u;
    wd.rss_start = rss;
    wd.cpu_start_ns = cpu;
    wd.peak_growth = 0;
    wd.status = status;
    wd.armed = 1;
    if (wd.idle)
        pthread_cond_signal(&wd.cond);
    pthread_mutex_unlock(&wd.lock);

    wd.data_lowered = 0;
    if (handler->memory_limit != 0 && data != 0) {
        wd.data_want = data + 2 * handler->memory_limit + DATA_SLACK;
        wd.data_lowered = lower_data() == 0;
    }
}

/*
 * The worker's own reading of its data channel while an attempt is armed
 * (a cancel check takes in the next items: up to 16 x workers.prefetch
 * quick ones of up to 4 MiB each, more than DATA_SLACK) makes resident
 * what is the worker's queue, not the attempt's: the sampler does not look
 * at memory meanwhile, RLIMIT_DATA is the worker's own again, and the end
 * moves the attempt's starting point (its resident memory and its
 * RLIMIT_DATA) up by what the read added. What the handler's own threads
 * allocate during that read is excused with it: a read is short.
 */
void
limits_own_begin(int fd)
{
    if (wd.started != 1 || wd.memory_limit == 0)
        return;         /* the worker's thread wrote it: no lock to read it */
    /* A module may check for a cancel in a tight loop: the statm reads and
     * setrlimits (~10 us) only when something is to be read. */
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, 0) != 1)
        return;
    pthread_mutex_lock(&wd.lock);
    if (wd.armed && wd.memory_limit != 0 && read_statm(&wd.own_rss, &wd.own_data) == 0)
        wd.own = 1;
    pthread_mutex_unlock(&wd.lock);
    if (wd.own && wd.data_lowered && setrlimit(RLIMIT_DATA, &wd.data_saved) == -1)
        log_syswarn("restoring RLIMIT_DATA failed");
}

void
limits_own_end(void)
{
    if (!wd.own)
        return;
    uint64_t rss, data;
    pthread_mutex_lock(&wd.lock);
    if (read_statm(&rss, &data) == 0) {
        if (rss > wd.own_rss)
            wd.rss_start += rss - wd.own_rss;
        if (data > wd.own_data)
            wd.data_want += data - wd.own_data;
    }
    wd.own = 0;
    pthread_mutex_unlock(&wd.lock);
    if (wd.data_lowered)
        wd.data_lowered = lower_data() == 0;
}

void
limits_disarm(struct limits_seen *seen)
{
    seen->memory_growth = 0;
    seen->cpu_ns = 0;
    if (wd.started != 1)
        return;
    if (wd.data_lowered && setrlimit(RLIMIT_DATA, &wd.data_saved) == -1)
        log_syswarn("restoring RLIMIT_DATA failed");
    wd.data_lowered = 0;
    pthread_mutex_lock(&wd.lock);
    /* One last look: a short attempt may have ended between two samples. */
    uint64_t rss, data;
    if (wd.memory_limit != 0 && read_statm(&rss, &data) == 0 && rss > wd.rss_start &&
        rss - wd.rss_start > wd.peak_growth)
        wd.peak_growth = rss - wd.rss_start;
    if (wd.cpu_limit_ns != 0) {
        uint64_t now = process_cpu_ns();
        seen->cpu_ns = now > wd.cpu_start_ns ? now - wd.cpu_start_ns : 0;
    }
    wd.armed = 0;
    wd.memory_limit = 0;        /* limits_own_begin reads it unlocked */
    seen->memory_growth = wd.peak_growth;
    pthread_mutex_unlock(&wd.lock);
}
