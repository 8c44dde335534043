#include "grpc/metrics.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/config.h"

/* Kinds come from the config (at most 256 of them), and kinds removed by a
 * reload keep their counters: room for them too, and pointers stay put. */
#define KINDS_MAX 1024

const double metrics_latency_bounds[METRICS_LATENCY_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300,
};

/* From a quick item's microseconds to a long program's half hour; from a
 * small program's megabyte to 16 GiB. */
const double metrics_cpu_bounds[METRICS_COST_BUCKETS] = {
    0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800,
};
const double metrics_memory_bounds[METRICS_COST_BUCKETS] = {
    1048576.0, 4194304.0, 16777216.0, 33554432.0, 67108864.0, 134217728.0, 268435456.0,
    536870912.0, 1073741824.0, 2147483648.0, 4294967296.0, 17179869184.0,
};

struct grpc_metrics metrics;

static void
observe(struct metrics_histogram *h, const double *bounds, double v)
{
    int b = 0;
    while (b < METRICS_COST_BUCKETS - 1 && v > bounds[b])
        b++;
    if (v <= bounds[b])
        h->buckets[b]++;
    h->count++;
    h->sum += v;
}

void
metrics_attempt_cost(const char *kind, uint64_t cpu_usec, uint64_t max_rss_kib)
{
    if (cpu_usec == 0 && max_rss_kib == 0)
        return;
    struct kind_metrics *k = metrics_kind(kind);
    observe(&k->cpu, metrics_cpu_bounds, (double)cpu_usec / 1e6);
    observe(&k->memory, metrics_memory_bounds, (double)max_rss_kib * 1024);
}

struct kind_metrics *
metrics_kind(const char *kind)
{
    for (uint32_t i = 0; i < metrics.kind_count; i++)
        if (strcmp(metrics.kinds[i].kind, kind) == 0)
            return &metrics.kinds[i];
    if (metrics.kinds == NULL)
        metrics.kinds = ds_calloc(KINDS_MAX, sizeof *metrics.kinds);
    if (metrics.kind_count == KINDS_MAX)
        return &metrics.kinds[KINDS_MAX - 1];   /* shared by the overflow */
    struct kind_metrics *k = &metrics.kinds[metrics.kind_count++];
    snprintf(k->kind, sizeof k->kind, "%s", kind);
    return k;
}

void
metrics_item_final(const char *kind, enum wire_state state, uint64_t latency_ns)
{
    struct kind_metrics *k = metrics_kind(kind);
    if (state == STATE_SUCCEEDED)
        k->succeeded++;
    else if (state == STATE_CANCELLED)
        k->cancelled++;
    else
        k->failed++;
    double seconds = (double)latency_ns / 1e9;
    int b = 0;
    while (b < METRICS_LATENCY_BUCKETS - 1 && seconds > metrics_latency_bounds[b])
        b++;
    if (seconds <= metrics_latency_bounds[b])
        k->latency_buckets[b]++;
    k->latency_count++;
    k->latency_sum += seconds;
}

double
metrics_latency_quantile(const struct kind_metrics *k, double q)
{
    if (k->latency_count == 0)
        return -1;
    double rank = q * (double)k->latency_count;
    uint64_t below = 0;
    for (int b = 0; b < METRICS_LATENCY_BUCKETS; b++) {
        uint64_t in = k->latency_buckets[b];
        if ((double)(below + in) >= rank && in > 0) {
            double lo = b == 0 ? 0 : metrics_latency_bounds[b - 1];
            double hi = metrics_latency_bounds[b];
            return lo + (hi - lo) * ((rank - (double)below) / (double)in);
        }
        below += in;
    }
    /* In the +Inf bucket: the highest bound is all that is known. */
    return metrics_latency_bounds[METRICS_LATENCY_BUCKETS - 1];
}
