/*
 * Worker hygiene: settings a worker applies to itself when it starts.
 *
 * The master drops a new worker to `user:` right after fork (child_setup);
 * the privileges_drop() here is then a no-op, and only does the job for a
 * caller that left it to us, after the settings that need root (a negative
 * nice, raising a hard limit). Either way PR_SET_DUMPABLE comes last:
 * changing uid resets it.
 *
 *   workers.cpu_affinity: auto   pin slot k to the ((k-1) mod n)-th CPU this
 *                                process may run on (sched_getaffinity): with
 *                                no cpuset that is CPU (k-1) % ncpu
 *   workers.nice: N              setpriority(PRIO_PROCESS, N); 0 leaves it
 *   workers.rlimit_nofile: N     RLIMIT_NOFILE soft limit N, hard raised to N
 *                                if lower (root only; else capped at the hard)
 *   workers.core_dumps: on|off   RLIMIT_CORE unlimited (or as high as the
 *                                hard limit allows) and dumpable, or 0 and
 *                                not dumpable; inherit leaves both
 *
 * And always PR_SET_CHILD_SUBREAPER: what an item starts and orphans (a
 * `setsid` job, a double fork) becomes the worker's child, which kills it
 * when the item is over (worker.c), instead of escaping to init.
 */
#include "workers/hygiene.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "core/log.h"
#include "core/privileges.h"
#include "core/process.h"

int
hygiene_cpu_for_slot(const void *allowed_cpu_set, uint32_t slot)
{
    const cpu_set_t *allowed = allowed_cpu_set;
    int n = CPU_COUNT(allowed);
    if (n <= 0 || slot == 0)
        return -1;
    int want = (int)((slot - 1) % (uint32_t)n);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, allowed) && want-- == 0)
            return cpu;
    return -1;
}

static void
apply_affinity(uint32_t slot)
{
    cpu_set_t allowed, mine;
    if (sched_getaffinity(0, sizeof allowed, &allowed) == -1) {
        log_syswarn("workers.cpu_affinity: sched_getaffinity() failed");
        return;
    }
    int cpu = hygiene_cpu_for_slot(&allowed, slot);
    if (cpu == -1)
        return;
    CPU_ZERO(&mine);
    CPU_SET(cpu, &mine);
    if (sched_setaffinity(0, sizeof mine, &mine) == -1)
        log_syswarn("workers.cpu_affinity: sched_setaffinity(CPU %d) failed", cpu);
    else
        log_debug("pinned to CPU %d", cpu);
}

static void
apply_nice(int nice)
{
    if (nice == 0)
        return;
    if (setpriority(PRIO_PROCESS, 0, nice) == -1)
        log_syswarn("workers.nice: setpriority(PRIO_PROCESS, %d) failed", nice);
}

static void
apply_nofile(uint64_t n)
{
    struct rlimit rl;
    if (n == 0)
        return;
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1) {
        log_syswarn("workers.rlimit_nofile: getrlimit(RLIMIT_NOFILE) failed");
        return;
    }
    struct rlimit want = { .rlim_cur = (rlim_t)n,
                           .rlim_max = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < n
                                           ? (rlim_t)n : rl.rlim_max };
    if (setrlimit(RLIMIT_NOFILE, &want) == 0)
        return;
    log_syswarn("workers.rlimit_nofile: setrlimit(RLIMIT_NOFILE, %llu) failed",
                (unsigned long long)n);
    if (want.rlim_max != rl.rlim_max) {
        want.rlim_cur = want.rlim_max = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            log_warn("workers.rlimit_nofile: using the hard limit, %llu",
                     (unsigned long long)rl.rlim_max);
    }
}

static void
apply_core_limit(int core_dumps)
{
    struct rlimit rl;
    if (core_dumps == -1)
        return;
    if (getrlimit(RLIMIT_CORE, &rl) == -1) {
        log_syswarn("workers.core_dumps: getrlimit(RLIMIT_CORE) failed");
        return;
    }
    if (core_dumps == 0) {
        rl.rlim_cur = 0;
    } else {
        struct rlimit all = { RLIM_INFINITY, RLIM_INFINITY };
        if (setrlimit(RLIMIT_CORE, &all) == 0)
            return;
        rl.rlim_cur = rl.rlim_max;      /* without root: as far as the hard limit goes */
    }
    if (setrlimit(RLIMIT_CORE, &rl) == -1)
        log_syswarn("workers.core_dumps: setrlimit(RLIMIT_CORE, %llu) failed",
                    (unsigned long long)rl.rlim_cur);
}

static void
apply_dumpable(int core_dumps)
{
    if (core_dumps == -1)
        return;
    if (prctl(PR_SET_DUMPABLE, core_dumps ? 1 : 0) == -1)
        log_syswarn("workers.core_dumps: prctl(PR_SET_DUMPABLE, %d) failed", core_dumps ? 1 : 0);
}

void
worker_apply_hygiene(const struct ds_config *config, uint32_t slot)
{
    char err[256];

    if (config->workers.cpu_affinity)
        apply_affinity(slot);
    apply_nice(config->workers.nice);
    apply_nofile(config->workers.rlimit_nofile);
    apply_core_limit(config->workers.core_dumps);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) == -1)
        log_syswarn("prctl(PR_SET_CHILD_SUBREAPER) failed: what items orphan escapes the "
                    "worker");
    if (privileges_drop(config->user, err, sizeof err) == -1)
        fatal(DS_EXIT_FATAL, "cannot drop privileges: %s", err);
    apply_dumpable(config->workers.core_dumps);
}
