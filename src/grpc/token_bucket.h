/*
 * token_bucket.c: the rate of handlers.<kind>.rate (COUNT per INTERVAL).
 *
 * A bucket holds at most COUNT tokens (the burst: a kind idle for an
 * interval may start COUNT items at once) and gains COUNT per INTERVAL,
 * continuously; each start takes one. So by any moment t at most
 * COUNT + COUNT * t / INTERVAL items have started. Pure arithmetic on the
 * times it is given (monotonic ns), in integers: a token is INTERVAL_NS
 * units, so nothing is lost to rounding. The caller owns the struct.
 */
#ifndef DS_GRPC_TOKEN_BUCKET_H
#define DS_GRPC_TOKEN_BUCKET_H

#include <stdint.h>

struct token_bucket {
    uint64_t count;             /* tokens per interval, and the most it holds; 0: no limit */
    uint64_t interval_ns;
    uint64_t units;             /* tokens held x interval_ns */
    uint64_t last_ns;           /* when units was brought up to date */
};

/* COUNT per INTERVAL_MS (COUNT 0: unlimited), full at NOW_NS. A bucket set
 * again to the same rate keeps what it holds. */
void token_bucket_set(struct token_bucket *b, uint64_t count, uint64_t interval_ms,
                      uint64_t now_ns);
/* Take a token at NOW_NS: 1 if there was one (always, unlimited), else 0. */
int token_bucket_take(struct token_bucket *b, uint64_t now_ns);
/* A token taken and not used (what it was for did not start) goes back at
 * NOW_NS: never more than the bucket holds (COUNT). */
void token_bucket_give_back(struct token_bucket *b, uint64_t now_ns);
/* How long after NOW_NS until a token is there (0: now), in ns. */
uint64_t token_bucket_wait_ns(struct token_bucket *b, uint64_t now_ns);

#endif
