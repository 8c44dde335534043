/*
 * The token bucket (token_bucket.h says what it is). count <= 1e6 and an
 * interval <= 1 h keep count x interval_ns below 2^64.
 */
#include "grpc/token_bucket.h"

static void
refill(struct token_bucket *b, uint64_t now_ns)
{
    if (now_ns <= b->last_ns)
        return;         /* the clock is monotonic; a caller's older time adds nothing */
    uint64_t full = b->count * b->interval_ns;
    uint64_t elapsed = now_ns - b->last_ns;
    b->last_ns = now_ns;
    if (elapsed >= b->interval_ns) {
        b->units = full;
        return;
    }
    uint64_t gained = elapsed * b->count;   /* < interval_ns x count: no overflow */
    b->units = full - b->units <= gained ? full : b->units + gained;
}

void
token_bucket_set(struct token_bucket *b, uint64_t count, uint64_t interval_ms,
                 uint64_t now_ns)
{
    uint64_t interval_ns = interval_ms * 1000000ull;
    if (count != 0 && count == b->count && interval_ns == b->interval_ns)
        return;
    b->count = count;
    b->interval_ns = count != 0 ? interval_ns : 0;
    b->units = count * b->interval_ns;
    b->last_ns = now_ns;
}

int
token_bucket_take(struct token_bucket *b, uint64_t now_ns)
{
    if (b->count == 0)
        return 1;
    refill(b, now_ns);
    if (b->units < b->interval_ns)
        return 0;
    b->units -= b->interval_ns;
    return 1;
}

void
token_bucket_give_back(struct token_bucket *b, uint64_t now_ns)
{
    if (b->count == 0)
        return;
    refill(b, now_ns);
    uint64_t full = b->count * b->interval_ns;
    b->units = full - b->units <= b->interval_ns ? full : b->units + b->interval_ns;
}

uint64_t
token_bucket_wait_ns(struct token_bucket *b, uint64_t now_ns)
{
    if (b->count == 0)
        return 0;
    refill(b, now_ns);
    if (b->units >= b->interval_ns)
        return 0;
    uint64_t missing = b->interval_ns - b->units;
    return (missing + b->count - 1) / b->count;     /* rounded up: never early */
}
