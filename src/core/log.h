/*
 * The error log: one line per event, "TIME [level] ROLE PID: message",
 * to stderr (the foreground, journald) or to a file reopened on USR1.
 * The level is checked before anything is formatted.
 */
#ifndef DS_CORE_LOG_H
#define DS_CORE_LOG_H

#include "core/config.h"

extern enum ds_log_level log_current_level;

/* Set where lines go: "stderr" or a path (opened for append). Returns 0, or
 * -1 with the reason logged to the current destination. */
int log_open(const char *file, enum ds_log_level level);
/* Reopen the current file (after logrotate moved it). */
int log_reopen(void);
/* The role shown in each line: "master", "grpc", "worker 3". */
void log_set_role(const char *role);
/* Point stderr at the log file too, so stray output lands in it. */
void log_redirect_stderr(void);
void log_close(void);
/* The descriptor lines go to (2 for stderr): children keep it open. */
int log_file_fd(void);
/* When running as root, hand FD's file to USER (if any), so that children
 * that dropped to it can still reopen it after a rotation. */
void log_chown_to_user(int fd, const char *user);
/* As root with USER set: create PATH if missing and give it to USER, so
 * that a child running as USER can (re)open it (e.g. after a rotation). */
void log_prepare_for_user(const char *path, const char *user);

void log_write(enum ds_log_level level, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_at(level, errnum, ...)                                  \
    do {                                                            \
        if ((level) <= log_current_level)                           \
            log_write((level), (errnum), __VA_ARGS__);              \
    } while (0)

#define log_error(...)  log_at(DS_LOG_ERROR, 0, __VA_ARGS__)
#define log_warn(...)   log_at(DS_LOG_WARN, 0, __VA_ARGS__)
#define log_notice(...) log_at(DS_LOG_NOTICE, 0, __VA_ARGS__)
#define log_info(...)   log_at(DS_LOG_INFO, 0, __VA_ARGS__)
#define log_debug(...)  log_at(DS_LOG_DEBUG, 0, __VA_ARGS__)
/* With ": strerror(errno)" appended. */
#define log_syserr(...) log_at(DS_LOG_ERROR, errno, __VA_ARGS__)
#define log_syswarn(...) log_at(DS_LOG_WARN, errno, __VA_ARGS__)

/* Log and exit with status: for failures nothing can recover from. */
void fatal(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

#endif
