/*
 * access_log.c: log.access, one line per RPC.
 */
#ifndef DS_GRPC_ACCESS_LOG_H
#define DS_GRPC_ACCESS_LOG_H

#include <stdint.h>

#include <grpc/grpc.h>

void access_log_open(void);
void access_log_close(void);
/* COUNTS: e.g. "items=10/0" or "updates=42". TRACEPARENT: the call's
 * (checked: printable), or NULL. */
void access_log_call(grpc_call *call, const char *method, int status, const char *counts,
                     uint64_t started_ms, const char *traceparent);

#endif
