/*
 * rates.c: the last 15 minutes of item counts, second by second, for the
 * status page's charts (GET /rates).
 */
#ifndef DS_GRPC_RATES_H
#define DS_GRPC_RATES_H

#include <stdint.h>

struct evbuffer;
struct event_base;

#define RATES_SLOTS 900         /* one a second: 15 minutes */

/* Start sampling the counters once a second on BASE. */
void rates_start(struct event_base *base);
void rates_shutdown(void);
/* The slots that ended after AFTER (unix seconds; 0: all), oldest first, as
 * the JSON object GET /rates answers. */
void rates_json(struct evbuffer *b, uint64_t after);

#endif
