/*
 * Children, from /proc.
 *
 * /proc/self/task/TID/children lists the children of one thread (a child's
 * parent is the thread that forked it; an orphan's is whichever thread of
 * its reaper the kernel picked), so every thread's file is read. Kernels
 * built without CONFIG_PROC_CHILDREN have no such file: then every
 * /proc/PID/stat is read for its ppid, which costs one open per process on
 * the machine instead of one per thread of ours.
 *
 * Killing is SIGKILL, nothing gentler: what is killed here was meant to be
 * gone already (its item is over, its worker is dead), and a process that
 * could catch a signal could also fork again before dying.
 */
#include "core/children.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"

struct pid_list {
    pid_t *pids;
    size_t count, cap;
};

static void
pid_list_add(struct pid_list *l, long pid)
{
    if (pid <= 0)
        return;
    if (l->count == l->cap) {
        l->cap = l->cap == 0 ? 16 : l->cap * 2;
        l->pids = ds_realloc(l->pids, l->cap * sizeof *l->pids);
    }
    l->pids[l->count++] = (pid_t)pid;
}

/* The whole of a small /proc file, NUL-terminated, in a malloc'd buffer. */
static char *
read_proc_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return NULL;
    size_t len = 0, cap = 512;
    char *buf = ds_malloc(cap);
    for (;;) {
        if (cap - len < 2) {
            cap *= 2;
            buf = ds_realloc(buf, cap);
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0) {
            int saved = errno;
            close(fd);
            if (n == -1) {
                free(buf);
                errno = saved;
                return NULL;
            }
            buf[len] = '\0';
            return buf;
        }
        len += (size_t)n;
    }
}

/* 1 if the kernel has /proc/PID/task/TID/children. */
static int
have_children_files(void)
{
    static int known = -1;
    if (known == -1) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/task/%ld/children", (long)getpid());
        known = access(path, R_OK) == 0;
    }
    return known;
}

static int
list_from_task_files(struct pid_list *l)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300];
        snprintf(path, sizeof path, "/proc/self/task/%s/children", e->d_name);
        char *text = read_proc_file(path);
        if (text == NULL)
            continue;                   /* the thread just ended */
        for (char *p = text, *end; *p != '\0'; p = end) {
            long pid = strtol(p, &end, 10);
            if (end == p)
                break;
            pid_list_add(l, pid);
        }
        free(text);
    }
    closedir(d);
    return 0;
}

static int
list_from_stat_files(struct pid_list *l)
{
    DIR *d = opendir("/proc");
    if (d == NULL)
        return -1;
    long me = (long)getpid();
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        char *text = read_proc_file(path);
        if (text == NULL)
            continue;
        /* "pid (comm) state ppid ...": comm may hold anything, even ") ". */
        char *close_paren = strrchr(text, ')');
        char state;
        long ppid;
        if (close_paren != NULL && sscanf(close_paren + 1, " %c %ld", &state, &ppid) == 2 &&
            ppid == me)
            pid_list_add(l, atol(e->d_name));
        free(text);
    }
    closedir(d);
    return 0;
}

pid_t *
children_list(size_t *count)
{
    struct pid_list l = { NULL, 0, 0 };
    int r = have_children_files() ? list_from_task_files(&l) : list_from_stat_files(&l);
    if (r == -1) {
        int saved = errno;
        free(l.pids);
        errno = saved;
        return NULL;
    }
    *count = l.count;
    return l.pids != NULL ? l.pids : ds_calloc(1, sizeof *l.pids);
}

int
children_any(void)
{
    siginfo_t info;
    memset(&info, 0, sizeof info);
    return !(waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == -1 && errno == ECHILD);
}

/* Kill the children SPARE does not claim; leave their pids first in PIDS
 * (from children_list, N of them) and return how many. */
static size_t
kill_unspared(pid_t *pids, size_t n, children_spare_fn spare, void *arg)
{
    size_t doomed = 0;
    for (size_t i = 0; i < n; i++) {
        if (spare != NULL && spare(pids[i], arg))
            continue;
        kill(pids[i], SIGKILL);         /* ESRCH: it is gone already */
        pids[doomed++] = pids[i];
    }
    return doomed;
}

int
children_kill(children_spare_fn spare, void *arg)
{
    size_t n;
    pid_t *pids = children_list(&n);
    if (pids == NULL)
        return -1;
    size_t doomed = kill_unspared(pids, n, spare, arg);
    free(pids);
    return (int)doomed;
}

int
children_kill_all(children_spare_fn spare, void *arg, uint64_t timeout_ms)
{
    uint64_t deadline = clock_monotonic_ms() + timeout_ms;
    int killed = 0;
    for (;;) {
        size_t n;
        pid_t *pids = children_list(&n);
        if (pids == NULL)
            return -1;
        size_t left = kill_unspared(pids, n, spare, arg);
        if (left == 0) {
            free(pids);
            return killed;
        }
        killed += (int)left;
        if (clock_monotonic_ms() >= deadline) {
            free(pids);             /* reaped by whoever waits next */
            errno = ETIMEDOUT;
            return -1;
        }
        /* Reap exactly these: another child's exit status is its owner's. */
        for (;;) {
            for (size_t i = 0; i < left;) {
                pid_t r = waitpid(pids[i], NULL, WNOHANG);
                if (r == pids[i] || (r == -1 && errno == ECHILD))
                    pids[i] = pids[--left];
                else
                    i++;
            }
            if (left == 0)
                break;
            if (clock_monotonic_ms() >= deadline) {
                free(pids);
                errno = ETIMEDOUT;
                return -1;
            }
            struct timespec pause = { 0, 1000000 };
            nanosleep(&pause, NULL);
        }
        free(pids);
    }
}
