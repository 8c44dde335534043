/*
 * backoff.c: how long a retried item waits (queue.retry_backoff).
 *
 * The wait after failed attempt N is MIN * 2^(N-1), at most MAX, plus a
 * jitter of up to a quarter of that (still at most MAX): never less than
 * MIN, so that a crash loop cannot spin, and spread, so that the items a
 * dying worker held do not all come back at the same instant.
 */
#ifndef DS_GRPC_BACKOFF_H
#define DS_GRPC_BACKOFF_H

#include <stdint.h>

/* The wait in ms after FAILED_ATTEMPT (from 1) with RANDOM (any 64 bits);
 * MIN_MS 0: no wait. */
uint64_t backoff_ms(uint64_t min_ms, uint64_t max_ms, uint32_t failed_attempt, uint64_t random);
/* 64 random bits: cheap, not for secrets (seeded once from getrandom). */
uint64_t backoff_random(void);

#endif
