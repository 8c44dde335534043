/*
 * reflection.c: grpc.reflection ServerReflection, for grpcurl and friends.
 */
#ifndef DS_GRPC_REFLECTION_H
#define DS_GRPC_REFLECTION_H

#include <stdint.h>

#include <grpc/grpc.h>

void reflection_call_start(grpc_call *call, grpc_byte_buffer *unused);

#endif
