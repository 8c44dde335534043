/*
 * Measuring what an attempt costs, in the worker.
 *
 * CPU: getrusage(RUSAGE_SELF) + getrusage(RUSAGE_CHILDREN), user + system,
 * after minus before. RUSAGE_CHILDREN grows when a child is reaped, with
 * what it and the descendants it reaped used: an exec program (reaped in
 * exec.c) and whatever the item left behind (killed and reaped in
 * worker.c) are in it, the worker's own piping and bookkeeping in
 * RUSAGE_SELF.
 *
 * Peak memory: for a handler running in the worker (built-ins, modules),
 * writing "5" to /proc/self/clear_refs resets the kernel's high-water mark
 * of our RSS, and getrusage(RUSAGE_SELF).ru_maxrss reads it back (for a
 * process that never exec'ed it is that mark; a module thread that exits
 * folds the mark of then into it, which no reset undoes: an over-estimate,
 * never an under-one). An exec program's peak is its own, from wait4
 * (exec.c), which covers the descendants it reaped.
 *
 * Costs (measured on this machine): getrusage(SELF) 0.7 us, (CHILDREN) 0.25,
 * (THREAD) 0.35, the reset 0.5 us. Quick items are measured once per batch
 * (worker.c), with two getrusage(RUSAGE_THREAD) and no reset: a batch is
 * often a few items (the worker keeps up with what it is sent), and the
 * bench showed the full measurement per batch (~2.4 us) in its CPU per item.
 */
#include "workers/cost.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/log.h"

static int clear_refs_fd = -1;

void
cost_init(void)
{
    clear_refs_fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    if (clear_refs_fd == -1 && errno == EACCES && prctl(PR_GET_DUMPABLE) == 0) {
        /* Dropped to `user:`, we are not dumpable, and /proc/self is root's:
         * dumpable for the open only (the descriptor keeps working). */
        if (prctl(PR_SET_DUMPABLE, 1) == 0) {
            clear_refs_fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
            int saved = errno;
            prctl(PR_SET_DUMPABLE, 0);
            errno = saved;
        }
    }
    if (clear_refs_fd == -1)
        log_info("cannot open /proc/self/clear_refs (%s): the peak memory of items run in "
                 "the worker is its peak since it started", strerror(errno));
}

static uint64_t
usec_of(const struct rusage *r)
{
    return (uint64_t)r->ru_utime.tv_sec * 1000000u + (uint64_t)r->ru_utime.tv_usec +
           (uint64_t)r->ru_stime.tv_sec * 1000000u + (uint64_t)r->ru_stime.tv_usec;
}

/* Our CPU and our reaped children's; our peak RSS (KiB) in *MAX_RSS_KIB. */
static uint64_t
cpu_now(uint64_t *max_rss_kib)
{
    struct rusage self, children;
    if (getrusage(RUSAGE_SELF, &self) == -1 || getrusage(RUSAGE_CHILDREN, &children) == -1) {
        *max_rss_kib = 0;
        return 0;
    }
    *max_rss_kib = self.ru_maxrss > 0 ? (uint64_t)self.ru_maxrss : 0;
    return usec_of(&self) + usec_of(&children);
}

void
cost_begin(struct cost_mark *m, int reset_peak)
{
    m->peak_reset = 0;
    if (reset_peak && clear_refs_fd != -1) {
        if (pwrite(clear_refs_fd, "5", 1, 0) == 1) {
            m->peak_reset = 1;
        } else {
            log_syswarn("writing /proc/self/clear_refs failed; peaks are the worker's "
                        "since it started from now on");
            close(clear_refs_fd);
            clear_refs_fd = -1;
        }
    }
    uint64_t ignored;
    m->cpu_usec = cpu_now(&ignored);
}

void
cost_end(const struct cost_mark *m, uint64_t *cpu_usec, uint64_t *max_rss_kib)
{
    uint64_t peak, now = cpu_now(&peak);
    *cpu_usec = now > m->cpu_usec ? now - m->cpu_usec : 0;
    if (max_rss_kib != NULL)
        *max_rss_kib = peak;
}

void
cost_begin_quick(struct cost_mark *m)
{
    struct rusage self;
    m->peak_reset = 0;
    m->cpu_usec = getrusage(RUSAGE_THREAD, &self) == 0 ? usec_of(&self) : 0;
}

void
cost_end_quick(const struct cost_mark *m, uint64_t *cpu_usec, uint64_t *max_rss_kib)
{
    struct rusage self;
    if (getrusage(RUSAGE_THREAD, &self) == -1) {
        *cpu_usec = *max_rss_kib = 0;
        return;
    }
    uint64_t now = usec_of(&self);
    *cpu_usec = now > m->cpu_usec ? now - m->cpu_usec : 0;
    *max_rss_kib = self.ru_maxrss > 0 ? (uint64_t)self.ru_maxrss : 0;
}
