/*
 * submit.c: doSomething, the submitting stream: validation, backpressure,
 * the reply with its counts.
 */
#ifndef DS_GRPC_SUBMIT_H
#define DS_GRPC_SUBMIT_H

#include <stdint.h>

#include <grpc/grpc.h>

void submit_call_start(grpc_call *call, grpc_byte_buffer *unused);
void submit_resume_blocked(void);
uint64_t submit_active(void);

#endif
