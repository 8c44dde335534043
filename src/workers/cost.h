/*
 * What an attempt costs: the CPU it used and its peak resident memory,
 * measured by the worker around it (see cost.c).
 */
#ifndef DS_WORKERS_COST_H
#define DS_WORKERS_COST_H

#include <stdint.h>

/* The counters when a measurement began. The caller's; nothing to free. */
struct cost_mark {
    uint64_t cpu_usec;          /* ours and our reaped children's, user + system */
    int peak_reset;             /* the high-water mark of our RSS was reset */
};

/* Open /proc/self/clear_refs (before the privilege drop makes it root's);
 * without it, in-process peaks are the worker's peak since it started. */
void cost_init(void);

/*
 * Begin a measurement: read the CPU counters and, with RESET_PEAK, reset our
 * RSS high-water mark (for a handler running in this process; an exec
 * program's peak comes from wait4).
 */
void cost_begin(struct cost_mark *m, int reset_peak);

/* End it: *CPU_USEC what we and the children we reaped since used; and, if
 * MAX_RSS_KIB is not NULL, our peak RSS since the reset. */
void cost_end(const struct cost_mark *m, uint64_t *cpu_usec, uint64_t *max_rss_kib);

/* The same for a batch of quick items, at half the price: this thread's
 * CPU only (quick handlers run in it and reap nothing), and no reset of
 * the peak (cost_end_quick's is the worker's since its last reset). */
void cost_begin_quick(struct cost_mark *m);
void cost_end_quick(const struct cost_mark *m, uint64_t *cpu_usec, uint64_t *max_rss_kib);

#endif
