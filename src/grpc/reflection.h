/*
 * reflection.c: grpc.reflection ServerReflection, for grpcurl and friends.
 */
#ifndef DS_GRPC_REFLECTION_H
#define DS_GRPC_REFLECTION_H

#include <stdint.h>

#include <grpc/grpc.h>

void reflection_call_start(grpc_call *call, grpc_byte_buffer *unused);
/* A graceful stop's drain: every open reflection stream ends UNAVAILABLE
 * (a client such as grpcurl or grpcui held the stop until shutdown_timeout:
 * such a stream never ends by itself). */
void reflection_end_all(void);

#endif
