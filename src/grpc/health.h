/*
 * health.c: grpc.health.v1.Health (Check and Watch).
 */
#ifndef DS_GRPC_HEALTH_H
#define DS_GRPC_HEALTH_H

#include <stdint.h>

#include <grpc/grpc.h>

void health_check_start(grpc_call *call, grpc_byte_buffer *request);
void health_watch_start(grpc_call *call, grpc_byte_buffer *request);
/* Tell watchers the serving status changed (draining: NOT_SERVING). */
void health_changed(void);
/* End every Watch stream with OK (the end of a graceful stop). */
void health_end_all(void);

#endif
