/*
 * The pid file: written atomically, stale ones replaced, removed on exit
 * only if it still names us.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "master/master.h"

static pid_t
pidfile_parse(const char *path, char *err, size_t err_size)
{
    char buf[32];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        snprintf(err, err_size, "cannot open pid file %s: %s", path, strerror(errno));
        return -1;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) {
        snprintf(err, err_size, "pid file %s is empty", path);
        return -1;
    }
    buf[n] = '\0';
    char *end;
    long pid = strtol(buf, &end, 10);
    if (pid <= 1 || (*end != '\n' && *end != '\0')) {
        snprintf(err, err_size, "pid file %s does not hold a pid", path);
        return -1;
    }
    return (pid_t)pid;
}

/* Is PID a dosomethingd? A stale file may name a recycled pid. */
static int
pid_is_ours(pid_t pid)
{
    char path[64], cmd[256];
    snprintf(path, sizeof path, "/proc/%ld/cmdline", (long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return kill(pid, 0) == 0 || errno == EPERM;
    ssize_t n = read(fd, cmd, sizeof cmd - 1);
    close(fd);
    if (n <= 0)
        return 0;
    cmd[n] = '\0';
    return strstr(cmd, "dosomethingd") != NULL;
}

pid_t
pidfile_read_live(const char *path, char *err, size_t err_size)
{
    pid_t pid = pidfile_parse(path, err, err_size);
    if (pid == -1)
        return -1;
    if ((kill(pid, 0) == -1 && errno == ESRCH) || !pid_is_ours(pid)) {
        snprintf(err, err_size, "pid file %s names pid %ld, which is not running (stale)",
                 path, (long)pid);
        return -1;
    }
    return pid;
}

int
pidfile_write(const char *path)
{
    char err[512];
    pid_t other = pidfile_read_live(path, err, sizeof err);
    if (other != -1 && other != getpid()) {
        log_error("already running: pid file %s names live pid %ld", path, (long)other);
        return -1;
    }
    if (other == -1 && access(path, F_OK) == 0)
        log_notice("replacing stale pid file %s", path);

    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1) {
        log_syserr("open(\"%s\") failed", tmp);
        return -1;
    }
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (write(fd, buf, (size_t)n) != n) {
        log_syserr("write(\"%s\") failed", tmp);
        close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (rename(tmp, path) == -1) {
        log_syserr("rename(\"%s\", \"%s\") failed", tmp, path);
        unlink(tmp);
        return -1;
    }
    return 0;
}

void
pidfile_remove(const char *path)
{
    char err[512];
    if (pidfile_parse(path, err, sizeof err) == getpid() && unlink(path) == -1)
        log_syswarn("unlink(\"%s\") failed", path);
}
