/*
 * Retry backoff (backoff.h says the rule).
 */
#include "grpc/backoff.h"

#include <sys/random.h>
#include <sys/types.h>

#include "core/clock.h"

uint64_t
backoff_ms(uint64_t min_ms, uint64_t max_ms, uint32_t failed_attempt, uint64_t random)
{
    if (min_ms == 0)
        return 0;
    if (max_ms < min_ms)
        max_ms = min_ms;
    uint32_t shift = failed_attempt > 0 ? failed_attempt - 1 : 0;
    uint64_t wait = shift >= 40 || (min_ms << shift) >> shift != min_ms ? max_ms
                    : min_ms << shift;
    if (wait > max_ms)
        wait = max_ms;
    wait += random % (wait / 4 + 1);
    return wait > max_ms ? max_ms : wait;
}

uint64_t
backoff_random(void)
{
    static uint64_t state;
    if (state == 0 && getrandom(&state, sizeof state, GRND_NONBLOCK) != (ssize_t)sizeof state)
        state = (uint64_t)clock_wall_ns();
    if (state == 0)
        state = 0x9e3779b97f4a7c15ull;
    /* xorshift64* */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545f4914f6cdd1dull;
}
