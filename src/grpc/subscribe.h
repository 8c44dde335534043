/*
 * subscribe.c: getUpdates, the subscribers: filters, replay, per-subscriber
 * backlogs; the update log's listener.
 */
#ifndef DS_GRPC_SUBSCRIBE_H
#define DS_GRPC_SUBSCRIBE_H

#include <stdint.h>

#include <grpc/grpc.h>

struct update;

void subscribe_call_start(grpc_call *call, grpc_byte_buffer *request);
/* Deliver an update to every subscriber whose filter matches. */
void subscribers_publish(struct update *update);
/* End every subscriber stream with RESOURCE_EXHAUSTED for WHY, naming the
 * last seq each was sent. */
void subscribers_cut_all(const char *why);
/* End every subscriber stream with OK once it has been sent all it holds. */
void subscribers_end_all(void);
int subscribers_flushed(void);
uint64_t subscribers_active(void);
/* Subscribers whose filter lets STARTED updates through (cluster mode
 * publishes that there are some: STARTED of quick items is written to
 * Redis only then). */
uint64_t subscribers_wanting_started(void);

#endif
