/*
 * Items accepted, started, succeeded, failed and retried in each of the
 * last RATES_SLOTS seconds, in this process (in cluster mode: this
 * instance's share).
 *
 * A timer samples the totals of metrics.c once a second and keeps the
 * difference: the data path bumps nothing more for it, and a request
 * reads a ring of 900 slots. A slot is the second that ended at its time;
 * a loop busy for longer than a second puts what it missed in the next
 * slot (its seconds field says how long it covered).
 */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "core/clock.h"
#include "grpc/metrics.h"
#include "grpc/rates.h"

enum { R_ACCEPTED, R_STARTED, R_SUCCEEDED, R_FAILED, R_RETRIED, R_COUNT };

static const char *const names[R_COUNT] = {
    "accepted", "started", "succeeded", "failed", "retried",
};

struct slot {
    uint64_t end_unix;          /* the second this slot ended; 0: empty */
    uint32_t ms;                /* how long it covered */
    uint64_t counts[R_COUNT];
};

static struct {
    struct event *timer;
    struct slot slots[RATES_SLOTS];
    size_t next;                /* the slot written next */
    uint64_t last[R_COUNT];     /* totals at the last sample */
    uint64_t last_ms;
} rt;

static void
totals(uint64_t out[R_COUNT])
{
    memset(out, 0, R_COUNT * sizeof *out);
    for (uint32_t i = 0; i < metrics.kind_count; i++) {
        const struct kind_metrics *k = &metrics.kinds[i];
        out[R_ACCEPTED] += k->accepted;
        out[R_STARTED] += k->started;
        out[R_SUCCEEDED] += k->succeeded;
        out[R_FAILED] += k->failed;
        out[R_RETRIED] += k->retried;
    }
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
    uint64_t now[R_COUNT], ms = clock_monotonic_ms();
    totals(now);
    struct slot *s = &rt.slots[rt.next];
    s->end_unix = (uint64_t)(clock_wall_ns() / 1000000000);
    s->ms = (uint32_t)(ms - rt.last_ms);
    for (int i = 0; i < R_COUNT; i++)
        s->counts[i] = now[i] - rt.last[i];
    memcpy(rt.last, now, sizeof now);
    rt.last_ms = ms;
    rt.next = (rt.next + 1) % RATES_SLOTS;
}

void
rates_start(struct event_base *base)
{
    if (rt.timer != NULL)
        return;
    totals(rt.last);
    rt.last_ms = clock_monotonic_ms();
    rt.timer = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = clock_timeval_ms(1000);
    evtimer_add(rt.timer, &tv);
}

void
rates_shutdown(void)
{
    if (rt.timer != NULL)
        event_free(rt.timer);
    memset(&rt, 0, sizeof rt);
}

void
rates_json(struct evbuffer *b, uint64_t after)
{
    evbuffer_add_printf(b, "{\"interval_seconds\":1,\"slots\":%d,\"t\":[", RATES_SLOTS);
    /* Oldest first: from the slot written next, around the ring. */
    size_t n = 0;
    size_t order[RATES_SLOTS];
    for (size_t i = 0; i < RATES_SLOTS; i++) {
        size_t j = (rt.next + i) % RATES_SLOTS;
        if (rt.slots[j].end_unix != 0 && rt.slots[j].end_unix > after)
            order[n++] = j;
    }
    for (size_t i = 0; i < n; i++)
        evbuffer_add_printf(b, "%s%llu", i ? "," : "",
                            (unsigned long long)rt.slots[order[i]].end_unix);
    evbuffer_add(b, "],\"seconds\":[", 13);
    for (size_t i = 0; i < n; i++)
        evbuffer_add_printf(b, "%s%.3f", i ? "," : "", rt.slots[order[i]].ms / 1000.0);
    evbuffer_add(b, "]", 1);
    for (int c = 0; c < R_COUNT; c++) {
        evbuffer_add_printf(b, ",\"%s\":[", names[c]);
        for (size_t i = 0; i < n; i++)
            evbuffer_add_printf(b, "%s%llu", i ? "," : "",
                                (unsigned long long)rt.slots[order[i]].counts[c]);
        evbuffer_add(b, "]", 1);
    }
    evbuffer_add(b, "}\n", 2);
}
