/*
 * retry (retry.c): FAILED or CANCELLED items run again from attempt 1.
 */
#ifndef DS_GRPC_RETRY_H
#define DS_GRPC_RETRY_H

#include <grpc/grpc.h>

/* A new retry call with its request (destroyed here). */
void retry_call_start(grpc_call *call, grpc_byte_buffer *request);

#endif
