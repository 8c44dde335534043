/*
 * Counters of the grpc process, for /metrics and /status. Plain integers
 * bumped on the libevent thread, which is also the one that serves HTTP:
 * no locks, no atomics on the hot path.
 */
#ifndef DS_GRPC_METRICS_H
#define DS_GRPC_METRICS_H

#include <stdint.h>

#include "core/wire.h"

/* Item latency, QUEUED to final, in buckets of these upper bounds (seconds). */
#define METRICS_LATENCY_BUCKETS 14
extern const double metrics_latency_bounds[METRICS_LATENCY_BUCKETS];

/* Per kind: the counters a kind's items move. */
/* A histogram of what the attempts that ran cost (metrics_attempt_cost):
 * buckets not cumulative, at most METRICS_COST_BUCKETS of them. */
#define METRICS_COST_BUCKETS 12
extern const double metrics_cpu_bounds[METRICS_COST_BUCKETS];      /* seconds */
extern const double metrics_memory_bounds[METRICS_COST_BUCKETS];   /* bytes */

struct metrics_histogram {
    uint64_t buckets[METRICS_COST_BUCKETS];
    uint64_t count;
    double sum;
};

struct kind_metrics {
    char kind[65];
    uint64_t accepted;
    uint64_t rejected;
    uint64_t started;           /* attempts that said STARTED */
    uint64_t succeeded;
    uint64_t failed;
    uint64_t retried;
    uint64_t retried_asked;     /* of those, asked by the handler (retry exit code, module) */
    uint64_t cancelled;         /* ended CANCELLED */
    uint64_t latency_buckets[METRICS_LATENCY_BUCKETS]; /* not cumulative */
    uint64_t latency_count;
    double latency_sum;         /* seconds */
    struct metrics_histogram cpu;       /* seconds of CPU per attempt that ran */
    struct metrics_histogram memory;    /* peak resident bytes per attempt that ran */
};

struct grpc_metrics {
    struct kind_metrics *kinds;
    uint32_t kind_count;
    uint64_t rejected_unknown_kind;     /* rejections with no kind to file them under */
    uint64_t subscribers_dropped;       /* cut off for being slow */
    uint64_t calls_submit;
    uint64_t calls_updates;
    uint64_t calls_other;
    uint64_t worker_exits;              /* workers whose exit the grpc process saw */
    uint64_t started_unix;
};

extern struct grpc_metrics metrics;

/* The counters of KIND, created on first use. */
struct kind_metrics *metrics_kind(const char *kind);
/* An item reached its final STATE after LATENCY_NS since it was accepted. */
void metrics_item_final(const char *kind, enum wire_state state, uint64_t latency_ns);
/* An attempt of KIND ran and cost CPU_USEC and MAX_RSS_KIB (both 0: not
 * known, not counted). */
void metrics_attempt_cost(const char *kind, uint64_t cpu_usec, uint64_t max_rss_kib);

/* The Q-quantile (0..1) of K's latency in seconds, interpolated in its
 * bucket as Prometheus' histogram_quantile() does; -1: no item yet. */
double metrics_latency_quantile(const struct kind_metrics *k, double q);

#endif
