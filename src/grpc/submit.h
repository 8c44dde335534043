/*
 * submit.c: doSomething, the submitting stream: validation, backpressure,
 * the reply with its counts.
 */
#ifndef DS_GRPC_SUBMIT_H
#define DS_GRPC_SUBMIT_H

#include <stdint.h>

#include <grpc/grpc.h>

/* A new doSomething call; its METADATA may carry a W3C traceparent and
 * tracestate for its items (core/trace.h). */
void submit_call_start(grpc_call *call, const grpc_metadata_array *metadata);
void submit_resume_blocked(void);
uint64_t submit_active(void);

#endif
