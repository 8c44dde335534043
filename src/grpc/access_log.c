/*
 * The access log (log.access): one line per RPC, written when the call ends:
 *
 *   TIME PEER METHOD STATUS items=ACCEPTED/REJECTED|updates=SENT DURATION_ms [traceparent=TP]
 *
 * (traceparent: a doSomething call's W3C traceparent from its metadata.)
 * Opened in the grpc process, reopened on USR1 like the error log.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/support/alloc.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/utf8.h"
#include "grpc/grpc_process.h"
#include "grpc/access_log.h"

static int access_fd = -1;
static char access_path[4096];

static const char *status_names[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
};

/* Open (or reopen, or close) the access log named by the current config. */
void
access_log_open(void)
{
    const char *path = gp.config->log.access;
    if (access_fd != -1 && (path == NULL || strcmp(path, access_path) != 0)) {
        close(access_fd);
        access_fd = -1;
    }
    if (path == NULL)
        return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd == -1) {
        if (access_fd != -1)
            log_syserr("open(\"%s\") failed; the access log goes on in the file open before",
                       path);
        else
            log_syserr("open(\"%s\") failed; access log off", path);
        return;
    }
    if (access_fd != -1)
        close(access_fd);
    access_fd = fd;
    snprintf(access_path, sizeof access_path, "%s", path);
    log_chown_to_user(fd, gp.config->user);
}

void
access_log_close(void)
{
    if (access_fd != -1)
        close(access_fd);
    access_fd = -1;
}

void
access_log_call(grpc_call *call, const char *method, int status, const char *counts,
                uint64_t started_ms, const char *traceparent)
{
    if (access_fd == -1 && log_current_level < DS_LOG_DEBUG)
        return;
    /* The peer comes from the connection (a unix socket's path, say):
     * escaped like every string a log line did not make itself. */
    char *raw_peer = grpc_call_get_peer(call), peer[300];
    utf8_escape(peer, sizeof peer, raw_peer);
    gpr_free(raw_peer);
    const char *name = status >= 0 && status <= 16 ? status_names[status] : "UNKNOWN";
    uint64_t ms = clock_monotonic_ms() - started_ms;
    if (access_fd == -1) {
        log_debug("%s %s %s %s %llums%s%s", peer, method, name, counts, (unsigned long long)ms,
                  traceparent != NULL ? " traceparent=" : "", traceparent ? traceparent : "");
        return;
    }
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char line[1024];
    int n = snprintf(line, sizeof line,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s %s %s %llums%s%s\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, peer, method, name, counts,
                     (unsigned long long)ms, traceparent != NULL ? " traceparent=" : "",
                     traceparent != NULL ? traceparent : "");
    if (n > (int)sizeof line - 1) {
        n = (int)sizeof line - 1;
        line[n - 1] = '\n';            /* still one line */
    }
    if (write(access_fd, line, (size_t)n) == -1 && errno != EAGAIN)
        log_syswarn("write(\"%s\") failed", access_path);
}
