#include "core/log.h"

#include <errno.h>
#include <pwd.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum ds_log_level log_current_level = DS_LOG_INFO;

static int log_fd = 2;
static char log_path[4096];     /* "" : stderr */
static char log_role[32] = "master";

static const char *level_names[] = { "error", "warn", "notice", "info", "debug" };

const char *
log_level_name(enum ds_log_level level)
{
    return level <= DS_LOG_DEBUG ? level_names[level] : "?";
}

static int
open_log_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd == -1) {
        int e = errno;      /* for the caller, which may say more */
        log_write(DS_LOG_ERROR, e, "open(\"%s\") failed", path);
        errno = e;
    }
    return fd;
}

int
log_open(const char *file, enum ds_log_level level)
{
    log_current_level = level;
    if (file == NULL || strcmp(file, "stderr") == 0) {
        if (log_fd != 2)
            close(log_fd);
        log_fd = 2;
        log_path[0] = '\0';
        return 0;
    }
    if (strcmp(file, log_path) == 0)
        return 0;
    if (strlen(file) >= sizeof log_path) {
        log_error("log file path too long: %s", file);
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open_log_file(file);
    if (fd == -1)
        return -1;
    if (log_fd != 2)
        close(log_fd);
    log_fd = fd;
    strcpy(log_path, file);
    return 0;
}

int
log_reopen(void)
{
    if (log_path[0] == '\0')
        return 0;
    int fd = open_log_file(log_path);
    if (fd == -1)
        return -1;
    if (log_fd != 2)
        close(log_fd);
    log_fd = fd;
    return 0;
}

void
log_redirect_stderr(void)
{
    if (log_fd != 2 && dup2(log_fd, 2) == -1)
        log_syserr("dup2(log, stderr) failed");
}

void
log_close(void)
{
    if (log_fd != 2)
        close(log_fd);
    log_fd = 2;
    log_path[0] = '\0';
}

int
log_file_fd(void)
{
    return log_fd;
}

void
log_chown_to_user(int fd, const char *user)
{
    if (fd <= 2 || user == NULL || user[0] == '\0' || geteuid() != 0)
        return;
    struct passwd *pw = getpwnam(user);
    if (pw != NULL && fchown(fd, pw->pw_uid, pw->pw_gid) == -1)
        log_syswarn("fchown(log, %s) failed", user);
}

void
log_prepare_for_user(const char *path, const char *user)
{
    if (path == NULL || user == NULL || user[0] == '\0' || geteuid() != 0)
        return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd == -1) {
        log_syswarn("open(\"%s\") failed", path);
        return;
    }
    log_chown_to_user(fd, user);
    close(fd);
}

void
log_set_role(const char *role)
{
    snprintf(log_role, sizeof log_role, "%s", role);
}

static void
log_vwrite(enum ds_log_level level, int errnum, const char *fmt, va_list ap)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ [%s] %s %ld: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, log_level_name(level), log_role,
                     (long)getpid());
    size_t len = (size_t)n;
    int m = vsnprintf(line + len, sizeof line - len, fmt, ap);
    if (m > 0)
        len += (size_t)m < sizeof line - len ? (size_t)m : sizeof line - len - 1;
    if (errnum != 0 && len < sizeof line - 1) {
        m = snprintf(line + len, sizeof line - len, ": %s", strerror(errnum));
        if (m > 0)
            len += (size_t)m < sizeof line - len ? (size_t)m : sizeof line - len - 1;
    }
    if (len >= sizeof line - 1)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write per line: lines from several processes never interleave. */
    (void)!write(log_fd, line, len);
}

void
log_write(enum ds_log_level level, int errnum, const char *fmt, ...)
{
    int saved = errno;
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(level, errnum, fmt, ap);
    va_end(ap);
    errno = saved;
}

void
fatal(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(DS_LOG_ERROR, 0, fmt, ap);
    va_end(ap);
    exit(status);
}
