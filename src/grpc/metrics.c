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

struct grpc_metrics metrics;

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
