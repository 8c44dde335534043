#include "core/descriptors.h"

#include <dirent.h>
#include <errno.h>
#include <sys/resource.h>

#include "core/log.h"

uint64_t
descriptors_needed(const struct ds_config *config)
{
    uint64_t listeners = config->grpc.listen_count + (config->status.listen != NULL);
    return (uint64_t)config->workers.count * DESCRIPTORS_PER_WORKER + DESCRIPTORS_BASE +
           listeners + DESCRIPTORS_RESERVE + DESCRIPTORS_MIN_CLIENTS;
}

static uint64_t
as_count(rlim_t value)
{
    return value == RLIM_INFINITY ? UINT64_MAX : (uint64_t)value;
}

uint64_t
descriptors_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
        return 1024;
    return as_count(rl.rlim_cur);
}

uint64_t
descriptors_hard_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
        return 1024;
    return as_count(rl.rlim_max);
}

uint64_t
descriptors_raise_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1) {
        log_syswarn("getrlimit(RLIMIT_NOFILE) failed");
        return 1024;
    }
    if (rl.rlim_cur == rl.rlim_max) {
        log_info("RLIMIT_NOFILE is %llu", (unsigned long long)as_count(rl.rlim_cur));
        return as_count(rl.rlim_cur);
    }
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
        log_syswarn("setrlimit(RLIMIT_NOFILE, %llu) failed; keeping %llu",
                    (unsigned long long)as_count(rl.rlim_max), (unsigned long long)as_count(old));
        return as_count(old);
    }
    log_notice("RLIMIT_NOFILE raised from %llu to the hard limit, %llu",
               (unsigned long long)as_count(old), (unsigned long long)as_count(rl.rlim_cur));
    return as_count(rl.rlim_cur);
}

uint64_t
descriptors_open(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return 0;
    uint64_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n > 0 ? n - 1 : 0;       /* not the directory's own descriptor */
}
