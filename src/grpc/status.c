/*
 * The status endpoint (status.listen): GET /metrics in the Prometheus text
 * format 0.0.4, GET /status (the same as JSON, plus the process table),
 * GET /healthz (200 while serving, 503 once a stop is under way). With
 * status.auth, every path but /healthz asks for HTTP basic auth
 * (status_auth.c).
 *
 * libevent's evhttp serves it on the grpc process's loop, the thread that
 * bumps every counter, so a request reads them without locks and the data
 * path never waits for it. A request costs the loop one pass over the
 * counters and one read of /proc/PID/stat per process.
 *
 * Reload: a changed status.listen gets its new socket bound before the old
 * one is closed; connections already accepted finish on the old one. A
 * host name is resolved with getaddrinfo() at start (before any item
 * flows), but on reload off the loop (resolve.c): a DNS server that does
 * not answer would otherwise hold every item up for its timeouts.
 *
 * The socket has SO_REUSEPORT, as gRPC gives its own ports: a binary
 * upgrade (USR2) starts a second instance that must bind the port while
 * the old one still serves it, and the old one closes it when it exits.
 * Handing the socket over instead would take a path from the old grpc
 * process through both masters to the new one, and the new one could not
 * start alone. The cost is the one gRPC's ports already carry: a second
 * daemon of the same user could bind the same port; the master refuses to
 * start on an address in use (master/listen_probe.h). If the socket
 * cannot be shared (a kernel without SO_REUSEPORT, or another program
 * holds the port), a reload that keeps the port closes the old socket
 * first and binds it again if the new one fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "core/address.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/descriptors.h"
#include "core/log.h"
#include "core/privileges.h"
#include "core/utf8.h"
#include "grpc/grpc_process.h"
#include "grpc/items.h"
#include "grpc/kind_gate.h"
#include "grpc/server.h"
#include "grpc/status.h"
#include "grpc/status_auth.h"
#include "grpc/status_http.h"
#include "grpc/status_items.h"
#include "grpc/status_page.h"
#include "grpc/rates.h"
#include "grpc/resolve.h"
#include "grpc/subscribe.h"
#include "grpc/queue.h"
#include "grpc/result_cache.h"
#include "grpc/store.h"
#include "grpc/updates.h"

#define STATUS_BACKLOG      64
#define STATUS_TIMEOUT_S    10      /* an idle or slow connection is closed after this */
#define STATUS_HEADERS_MAX  8192
#define STATUS_BODY_MAX     8192
#define STATUS_RESUME_MS    250     /* a paused listener looks for room again after this */

#define CONTENT_TEXT        "text/plain; charset=utf-8"
#define CONTENT_PROMETHEUS  "text/plain; version=0.0.4; charset=utf-8"
#define CONTENT_JSON        "application/json"

static struct {
    struct evhttp *http;                /* NULL until status.listen is first set */
    struct evhttp_bound_socket *bound;  /* NULL: off */
    int started;                /* status_start() ran: the process binds its listeners */
    char listen[300];                   /* the address bound, as configured; "" when off */
    char bound_at[300];                 /* ... as numbers: "127.0.0.1:9090" */
    struct resolve_request *resolving;  /* a reload's status.listen name being looked up */
    char resolving_addr[300];           /* ... that status.listen */
    uint64_t reloads;                   /* config generations applied since start */
    /* The last reload's outcome, as the master or this process saw it. */
    int last_reload_failed;
    uint64_t last_reload_unix;          /* 0: none since start */
    char last_reload_message[512];
    struct event *resume_timer;         /* re-enables a listener paused for descriptors */
    int paused;
} st;

/* The per-kind counters, for both formats. */
static const struct {
    const char *json;
    const char *metric;
    const char *help;
    size_t offset;
} kind_counters[] = {
    { "accepted", "items_accepted_total", "Items accepted, by kind.",
      offsetof(struct kind_metrics, accepted) },
    { "rejected", "items_rejected_total", "Items rejected (bad params, queue full), by kind.",
      offsetof(struct kind_metrics, rejected) },
    { "started", "items_started_total", "Attempts that started (STARTED from a worker), by kind.",
      offsetof(struct kind_metrics, started) },
    { "succeeded", "items_succeeded_total", "Items that ended SUCCEEDED, by kind.",
      offsetof(struct kind_metrics, succeeded) },
    { "failed", "items_failed_total", "Items that ended FAILED, by kind.",
      offsetof(struct kind_metrics, failed) },
    { "retried", "items_retried_total", "Attempts that ended RETRYING, by kind.",
      offsetof(struct kind_metrics, retried) },
    { "retried_asked", "items_retried_asked_total", "Attempts that ended RETRYING because "
      "the handler asked (an exec retry_exit_codes status, a module's DS_MODULE_RETRY), by "
      "kind.", offsetof(struct kind_metrics, retried_asked) },
    { "cancelled", "items_cancelled_total", "Items that ended CANCELLED, by kind.",
      offsetof(struct kind_metrics, cancelled) },
};

#define KIND_COUNTERS (sizeof kind_counters / sizeof kind_counters[0])

static uint64_t
kind_counter(const struct kind_metrics *k, size_t i)
{
    return *(const uint64_t *)((const char *)k + kind_counters[i].offset);
}

/* Every configured kind shows up, at 0, before its first item. */
static void
kinds_touch(void)
{
    for (size_t i = 0; i < gp.config->handler_count; i++)
        metrics_kind(gp.config->handlers[i].kind);
}

/* ---- processes, from /proc ------------------------------------------------ */

struct proc_row {
    const char *role;
    pid_t pid;
    const struct worker *worker;    /* NULL: the grpc process or the master */
    int sampled;                    /* the fields below are known */
    double cpu_seconds;             /* user + system */
    uint64_t rss_bytes;
    double uptime_seconds;
    double start_unix;
};

static double
seconds_since_boot(void)
{
    char buf[64];
    int fd = open("/proc/uptime", O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    return strtod(buf, NULL);
}

static int
proc_sample(struct proc_row *row, double boot_seconds)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)row->pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    /* The command name may hold anything, ')' too: fields start after the last. */
    const char *p = strrchr(buf, ')');
    if (p == NULL || p[1] == '\0')
        return -1;
    /* From field 3 (state) on; utime is 14, stime 15, starttime 22, rss 24. */
    unsigned long utime, stime;
    unsigned long long starttime;
    long rss;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d "
               "%*d %*d %llu %*u %ld", &utime, &stime, &starttime, &rss) != 4)
        return -1;
    double ticks = (double)sysconf(_SC_CLK_TCK);
    row->cpu_seconds = (double)(utime + stime) / ticks;
    row->rss_bytes = rss > 0 ? (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
    row->uptime_seconds = boot_seconds - (double)starttime / ticks;
    if (row->uptime_seconds < 0)
        row->uptime_seconds = 0;
    row->start_unix = (double)clock_wall_ns() / 1e9 - row->uptime_seconds;
    return 0;
}

/* The grpc process, the master and every attached worker, sampled now.
 * The caller frees the array. */
static struct proc_row *
proc_rows(size_t *count)
{
    size_t n = 2;
    for (const struct worker *w = workers_list(); w != NULL; w = w->next)
        n++;
    struct proc_row *rows = ds_calloc(n, sizeof *rows);
    rows[0].role = "grpc";
    rows[0].pid = getpid();
    rows[1].role = "master";
    rows[1].pid = getppid();
    size_t i = 2;
    for (const struct worker *w = workers_list(); w != NULL; w = w->next, i++) {
        rows[i].role = "worker";
        rows[i].pid = w->pid;
        rows[i].worker = w;
    }
    double boot = seconds_since_boot();
    for (i = 0; i < n; i++)
        rows[i].sampled = boot >= 0 && proc_sample(&rows[i], boot) == 0;
    *count = n;
    return rows;
}

static uint64_t
items_done(void)
{
    uint64_t done = 0;
    for (uint32_t i = 0; i < metrics.kind_count; i++)
        done += metrics.kinds[i].succeeded + metrics.kinds[i].failed;
    return done;
}

/* ---- GET /metrics ------------------------------------------------------- */

static const char *
item_state_name(int state)
{
    static const char *const names[] = {
        [STATE_QUEUED] = "queued", [STATE_STARTED] = "started", [STATE_PROGRESS] = "progress",
        [STATE_SUCCEEDED] = "succeeded", [STATE_FAILED] = "failed",
        [STATE_RETRYING] = "retrying", [STATE_CANCELLED] = "cancelled",
    };
    return state > 0 && state <= STATE_MAX && names[state] != NULL ? names[state] : "unknown";
}

static void
family(struct evbuffer *b, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(b, "# HELP dosomething_%s %s\n# TYPE dosomething_%s %s\n", name, help,
                        name, type);
}

static void
sample(struct evbuffer *b, const char *name, uint64_t value)
{
    evbuffer_add_printf(b, "dosomething_%s %llu\n", name, (unsigned long long)value);
}

void
status_label_value(struct evbuffer *b, const char *s)
{
    for (const char *p = s; *p != '\0'; p++) {
        if (*p == '\\' || *p == '"')
            evbuffer_add_printf(b, "\\%c", *p);
        else if (*p == '\n')
            evbuffer_add(b, "\\n", 2);
        else
            evbuffer_add(b, p, 1);
    }
}

static void
kind_sample(struct evbuffer *b, const char *name, const char *kind, const char *le,
            const char *value)
{
    evbuffer_add_printf(b, "dosomething_%s{kind=\"", name);
    status_label_value(b, kind);
    if (le != NULL)
        evbuffer_add_printf(b, "\",le=\"%s", le);
    evbuffer_add_printf(b, "\"} %s\n", value);
}

/* NAME, a histogram of every kind's struct metrics_histogram at OFFSET in
 * struct kind_metrics, with BOUNDS. */
static void
cost_family(struct evbuffer *b, const char *name, const char *help, size_t offset,
            const double *bounds)
{
    char metric[64], value[64], le[32];
    family(b, name, "histogram", help);
    for (uint32_t i = 0; i < metrics.kind_count; i++) {
        const struct kind_metrics *k = &metrics.kinds[i];
        const struct metrics_histogram *h =
            (const struct metrics_histogram *)((const char *)k + offset);
        uint64_t cumulative = 0;
        snprintf(metric, sizeof metric, "%s_bucket", name);
        for (int j = 0; j < METRICS_COST_BUCKETS; j++) {
            cumulative += h->buckets[j];
            snprintf(le, sizeof le, "%g", bounds[j]);
            snprintf(value, sizeof value, "%llu", (unsigned long long)cumulative);
            kind_sample(b, metric, k->kind, le, value);
        }
        snprintf(value, sizeof value, "%llu", (unsigned long long)h->count);
        kind_sample(b, metric, k->kind, "+Inf", value);
        snprintf(metric, sizeof metric, "%s_count", name);
        kind_sample(b, metric, k->kind, NULL, value);
        snprintf(metric, sizeof metric, "%s_sum", name);
        snprintf(value, sizeof value, "%.9g", h->sum);
        kind_sample(b, metric, k->kind, NULL, value);
    }
}

/* ,"NAME":{"count":..,"sum":..,"buckets":[{"le":..,"count":..}...]}: cumulative. */
static void
json_cost(struct evbuffer *b, const char *name, const struct metrics_histogram *h,
          const double *bounds)
{
    evbuffer_add_printf(b, ",\"%s\":{\"count\":%llu,\"sum\":%.9g,\"buckets\":[", name,
                        (unsigned long long)h->count, h->sum);
    uint64_t cumulative = 0;
    for (int j = 0; j < METRICS_COST_BUCKETS; j++) {
        cumulative += h->buckets[j];
        evbuffer_add_printf(b, "%s{\"le\":%g,\"count\":%llu}", j ? "," : "", bounds[j],
                            (unsigned long long)cumulative);
    }
    evbuffer_add(b, "]}", 2);
}

static void
write_metrics(struct evbuffer *b)
{
    char value[64], le[32];

    for (size_t c = 0; c < KIND_COUNTERS; c++) {
        family(b, kind_counters[c].metric, "counter", kind_counters[c].help);
        for (uint32_t i = 0; i < metrics.kind_count; i++) {
            snprintf(value, sizeof value, "%llu",
                     (unsigned long long)kind_counter(&metrics.kinds[i], c));
            kind_sample(b, kind_counters[c].metric, metrics.kinds[i].kind, NULL, value);
        }
    }
    family(b, "items_rejected_unknown_kind_total", "counter",
           "Items rejected for a kind no handler serves.");
    sample(b, "items_rejected_unknown_kind_total", metrics.rejected_unknown_kind);

    family(b, "item_latency_seconds", "histogram",
           "Time from an item's QUEUED to its final update, by kind.");
    for (uint32_t i = 0; i < metrics.kind_count; i++) {
        const struct kind_metrics *k = &metrics.kinds[i];
        uint64_t cumulative = 0;
        for (int j = 0; j < METRICS_LATENCY_BUCKETS; j++) {
            cumulative += k->latency_buckets[j];
            snprintf(le, sizeof le, "%g", metrics_latency_bounds[j]);
            snprintf(value, sizeof value, "%llu", (unsigned long long)cumulative);
            kind_sample(b, "item_latency_seconds_bucket", k->kind, le, value);
        }
        snprintf(value, sizeof value, "%llu", (unsigned long long)k->latency_count);
        kind_sample(b, "item_latency_seconds_bucket", k->kind, "+Inf", value);
        kind_sample(b, "item_latency_seconds_count", k->kind, NULL, value);
        snprintf(value, sizeof value, "%.9g", k->latency_sum);
        kind_sample(b, "item_latency_seconds_sum", k->kind, NULL, value);
    }

    cost_family(b, "item_cpu_seconds", "CPU (user + system) of each attempt that ran, its "
                "processes included, by kind.", offsetof(struct kind_metrics, cpu),
                metrics_cpu_bounds);
    cost_family(b, "item_peak_memory_bytes", "Peak resident memory of each attempt that "
                "ran, by kind.", offsetof(struct kind_metrics, memory), metrics_memory_bounds);

    /* Per-kind limits and pause (kind_gate.h). */
    static const struct {
        const char *metric, *help;
    } gate_gauges[] = {
        { "kind_paused", "1 while handlers.<kind>.paused is on: its items are accepted, not started." },
        { "kind_running", "Items of the kind at workers (prefetched ones count)." },
        { "kind_parked", "Items of the kind waiting at its limit (concurrency, rate or paused)." },
    };
    for (size_t g = 0; g < sizeof gate_gauges / sizeof gate_gauges[0]; g++) {
        family(b, gate_gauges[g].metric, "gauge", gate_gauges[g].help);
        for (uint32_t i = 0; i < metrics.kind_count; i++) {
            struct kind_gate_state gs;
            kind_gate_state(metrics.kinds[i].kind, &gs);
            uint64_t v = g == 0 ? (uint64_t)gs.paused : g == 1 ? gs.running : gs.parked;
            snprintf(value, sizeof value, "%llu", (unsigned long long)v);
            kind_sample(b, gate_gauges[g].metric, metrics.kinds[i].kind, NULL, value);
        }
    }

    family(b, "queue_depth", "gauge", "Items accepted and not final yet, waiting or running.");
    sample(b, "queue_depth", store_count());
    family(b, "queue_waiting", "gauge", "Items waiting for a worker.");
    sample(b, "queue_waiting", queue_waiting());
    family(b, "queue_delayed", "gauge", "Items waiting for their due time (delay_ms, retry "
           "backoff) before they wait for a worker.");
    sample(b, "queue_delayed", queue_delayed());
    family(b, "queue_capacity", "gauge", "queue.capacity: the most items accepted and not final.");
    sample(b, "queue_capacity", gp.config->queue.capacity);

    const struct items_stats *is = items_stats();
    family(b, "items_known", "gauge", "Items known by getItems and duplicate detection, by "
           "latest state (finals until items.retention forgets them).");
    for (int s = STATE_QUEUED; s <= STATE_MAX; s++)
        evbuffer_add_printf(b, "dosomething_items_known{state=\"%s\"} %llu\n", item_state_name(s),
                            (unsigned long long)is->by_state[s]);
    family(b, "items_retained_bytes", "gauge",
           "Memory of the final items retained, as items.retention.bytes bounds it.");
    sample(b, "items_retained_bytes", is->retained_bytes);
    family(b, "items_forgotten_total", "counter", "Final items forgotten by items.retention.");
    sample(b, "items_forgotten_total", is->forgotten);
    family(b, "items_duplicates_total", "counter",
           "Submitted items whose id was known: not queued again.");
    sample(b, "items_duplicates_total", is->duplicates);
    family(b, "items_retries_total", "counter", "FAILED or CANCELLED items run again by retry.");
    sample(b, "items_retries_total", is->retries);

    family(b, "worker_in_flight", "gauge", "Items a worker holds, running or prefetched.");
    for (const struct worker *w = workers_list(); w != NULL; w = w->next)
        evbuffer_add_printf(b, "dosomething_worker_in_flight{pid=\"%ld\",slot=\"%u\"} %u\n",
                            (long)w->pid, w->slot, w->held);
    family(b, "worker_items_done_total", "counter", "Items a worker finished.");
    for (const struct worker *w = workers_list(); w != NULL; w = w->next)
        evbuffer_add_printf(b, "dosomething_worker_items_done_total{pid=\"%ld\",slot=\"%u\"} "
                            "%llu\n", (long)w->pid, w->slot, (unsigned long long)w->items_done);
    family(b, "worker_exits_total", "counter",
           "Worker exits the grpc process saw (restarts by cause are in the master's log).");
    sample(b, "worker_exits_total", metrics.worker_exits);

    family(b, "subscribers", "gauge", "Open getUpdates streams.");
    sample(b, "subscribers", subscribers_active());
    family(b, "subscribers_dropped_total", "counter",
           "getUpdates streams ended for falling too far behind.");
    sample(b, "subscribers_dropped_total", metrics.subscribers_dropped);
    family(b, "update_seq", "gauge", "The seq of the last update published.");
    sample(b, "update_seq", updates_last_seq());

    family(b, "calls_total", "counter", "gRPC calls taken, by method.");
    evbuffer_add_printf(b, "dosomething_calls_total{method=\"doSomething\"} %llu\n"
                        "dosomething_calls_total{method=\"getUpdates\"} %llu\n"
                        "dosomething_calls_total{method=\"other\"} %llu\n",
                        (unsigned long long)metrics.calls_submit,
                        (unsigned long long)metrics.calls_updates,
                        (unsigned long long)metrics.calls_other);
    family(b, "calls_open", "gauge", "gRPC calls in progress.");
    sample(b, "calls_open", gp.calls);

    family(b, "config_generation", "gauge", "The config generation in use (each reload adds one).");
    sample(b, "config_generation", gp.generation);
    family(b, "config_reloads_total", "counter",
           "Config generations this grpc process applied since it started.");
    sample(b, "config_reloads_total", st.reloads);
    store_metrics(b);
    result_cache_metrics(b);
    family(b, "draining", "gauge", "1 once a stop is under way.");
    sample(b, "draining", gp.draining || gp.stopping);
    family(b, "grpc_listening", "gauge",
           "1 while gRPC accepts connections; 0 once its listener died at the descriptor limit.");
    sample(b, "grpc_listening", server_listening());
    family(b, "grpc_listener_restarts_total", "counter",
           "Times the gRPC listener was started again after it died.");
    sample(b, "grpc_listener_restarts_total", server_listener_restarts());
    family(b, "descriptors_open", "gauge", "Descriptors the grpc process holds.");
    sample(b, "descriptors_open", descriptors_open());
    family(b, "descriptors_limit", "gauge", "Its RLIMIT_NOFILE.");
    sample(b, "descriptors_limit", descriptors_limit());
    family(b, "status_paused", "gauge",
           "1 while the status port takes no connection, to keep descriptors for gRPC.");
    sample(b, "status_paused", st.paused);

    size_t n;
    struct proc_row *rows = proc_rows(&n);
    family(b, "process_resident_memory_bytes", "gauge", "Resident memory, by process.");
    for (size_t i = 0; i < n; i++)
        if (rows[i].sampled)
            evbuffer_add_printf(b, "dosomething_process_resident_memory_bytes{role=\"%s\","
                                "pid=\"%ld\"} %llu\n", rows[i].role, (long)rows[i].pid,
                                (unsigned long long)rows[i].rss_bytes);
    family(b, "process_cpu_seconds_total", "counter", "User and system CPU time, by process.");
    for (size_t i = 0; i < n; i++)
        if (rows[i].sampled)
            evbuffer_add_printf(b, "dosomething_process_cpu_seconds_total{role=\"%s\",pid=\"%ld\"}"
                                " %.2f\n", rows[i].role, (long)rows[i].pid, rows[i].cpu_seconds);
    family(b, "process_start_time_seconds", "gauge", "Start time since the Unix epoch, by process.");
    for (size_t i = 0; i < n; i++)
        if (rows[i].sampled)
            evbuffer_add_printf(b, "dosomething_process_start_time_seconds{role=\"%s\","
                                "pid=\"%ld\"} %.2f\n", rows[i].role, (long)rows[i].pid,
                                rows[i].start_unix);
    free(rows);
}

/* ---- GET /status ---------------------------------------------------------- */

static void
json_string(struct evbuffer *b, const char *s)
{
    status_json_string(b, s);
}

static void
json_process(struct evbuffer *b, const struct proc_row *row)
{
    const struct worker *w = row->worker;
    evbuffer_add_printf(b, "{\"role\":\"%s\",\"pid\":%ld", row->role, (long)row->pid);
    if (w != NULL)
        evbuffer_add_printf(b, ",\"slot\":%u,\"in_flight\":%u,\"retiring\":%s", w->slot, w->held,
                            w->retiring ? "true" : "false");
    if (row->sampled)
        evbuffer_add_printf(b, ",\"uptime_seconds\":%.2f,\"resident_memory_bytes\":%llu,"
                            "\"cpu_seconds\":%.2f", row->uptime_seconds,
                            (unsigned long long)row->rss_bytes, row->cpu_seconds);
    else
        evbuffer_add_printf(b, ",\"uptime_seconds\":null,\"resident_memory_bytes\":null,"
                            "\"cpu_seconds\":null");
    /* The master runs no items; the grpc process finishes every item. */
    if (w != NULL)
        evbuffer_add_printf(b, ",\"items_done\":%llu", (unsigned long long)w->items_done);
    else if (strcmp(row->role, "grpc") == 0)
        evbuffer_add_printf(b, ",\"items_done\":%llu", (unsigned long long)items_done());
    else
        evbuffer_add_printf(b, ",\"items_done\":null");
    evbuffer_add_printf(b, ",\"current_item\":");
    if (w != NULL && w->head != NULL)
        json_string(b, w->head->id);
    else
        evbuffer_add_printf(b, "null");
    evbuffer_add_printf(b, ",\"current_kind\":");
    if (w != NULL && w->head != NULL)
        json_string(b, w->head->kind);
    else
        evbuffer_add_printf(b, "null");
    /* How long its current item has run: from its STARTED. */
    if (w != NULL && w->head != NULL && w->head->started && w->head_started_ms != 0)
        evbuffer_add_printf(b, ",\"current_running_seconds\":%.3f",
                            (double)(clock_monotonic_ms() - w->head_started_ms) / 1000.0);
    else
        evbuffer_add_printf(b, ",\"current_running_seconds\":null");
    evbuffer_add(b, "}", 1);
}

static void
write_status(struct evbuffer *b)
{
    evbuffer_add_printf(b, "{\"version\":\"%s\",\"generation\":%llu,\"config_reloads\":%llu,"
                        "\"draining\":%s,\"stopping\":%s,",
                        DS_VERSION, (unsigned long long)gp.generation,
                        (unsigned long long)st.reloads, gp.draining ? "true" : "false",
                        gp.stopping ? "true" : "false");
    evbuffer_add_printf(b, "\"grpc_listening\":%s,\"descriptors\":{\"open\":%llu,\"limit\":%llu},",
                        server_listening() ? "true" : "false",
                        (unsigned long long)descriptors_open(),
                        (unsigned long long)descriptors_limit());
    evbuffer_add_printf(b, "\"queue\":{\"depth\":%llu,\"waiting\":%llu,\"delayed\":%llu,"
                        "\"capacity\":%llu},",
                        (unsigned long long)store_count(), (unsigned long long)queue_waiting(),
                        (unsigned long long)queue_delayed(),
                        (unsigned long long)gp.config->queue.capacity);
    store_status_json(b);
    result_cache_status_json(b);
    const struct items_stats *is = items_stats();
    evbuffer_add_printf(b, "\"items\":{\"known\":%llu,\"by_state\":{",
                        (unsigned long long)is->known);
    for (int s = STATE_QUEUED; s <= STATE_MAX; s++)
        evbuffer_add_printf(b, "%s\"%s\":%llu", s == STATE_QUEUED ? "" : ",", item_state_name(s),
                            (unsigned long long)is->by_state[s]);
    evbuffer_add_printf(b, "},\"retained_bytes\":%llu,\"forgotten\":%llu,\"duplicates\":%llu,"
                        "\"retries\":%llu},", (unsigned long long)is->retained_bytes,
                        (unsigned long long)is->forgotten, (unsigned long long)is->duplicates,
                        (unsigned long long)is->retries);
    evbuffer_add_printf(b, "\"subscribers\":{\"active\":%llu,\"dropped\":%llu},"
                        "\"update_seq\":%llu,\"worker_exits\":%llu,",
                        (unsigned long long)subscribers_active(),
                        (unsigned long long)metrics.subscribers_dropped,
                        (unsigned long long)updates_last_seq(),
                        (unsigned long long)metrics.worker_exits);
    evbuffer_add_printf(b, "\"calls\":{\"doSomething\":%llu,\"getUpdates\":%llu,\"other\":%llu,"
                        "\"open\":%llu},\"rejected_unknown_kind\":%llu,\"kinds\":{",
                        (unsigned long long)metrics.calls_submit,
                        (unsigned long long)metrics.calls_updates,
                        (unsigned long long)metrics.calls_other, (unsigned long long)gp.calls,
                        (unsigned long long)metrics.rejected_unknown_kind);
    for (uint32_t i = 0; i < metrics.kind_count; i++) {
        const struct kind_metrics *k = &metrics.kinds[i];
        if (i > 0)
            evbuffer_add(b, ",", 1);
        json_string(b, k->kind);
        evbuffer_add(b, ":{", 2);
        for (size_t c = 0; c < KIND_COUNTERS; c++)
            evbuffer_add_printf(b, "\"%s\":%llu,", kind_counters[c].json,
                                (unsigned long long)kind_counter(k, c));
        struct kind_gate_state gs;
        kind_gate_state(k->kind, &gs);
        evbuffer_add_printf(b, "\"paused\":%d,\"running\":%llu,\"parked\":%llu,", gs.paused,
                            (unsigned long long)gs.running, (unsigned long long)gs.parked);
        /* Cumulative, as in /metrics; count is the +Inf bucket. */
        evbuffer_add_printf(b, "\"latency_seconds\":{\"count\":%llu,\"sum\":%.9g,\"buckets\":[",
                            (unsigned long long)k->latency_count, k->latency_sum);
        uint64_t cumulative = 0;
        for (int j = 0; j < METRICS_LATENCY_BUCKETS; j++) {
            cumulative += k->latency_buckets[j];
            evbuffer_add_printf(b, "%s{\"le\":%g,\"count\":%llu}", j ? "," : "",
                                metrics_latency_bounds[j], (unsigned long long)cumulative);
        }
        evbuffer_add(b, "]", 1);
        static const double quantiles[] = { 0.5, 0.9, 0.99 };
        evbuffer_add(b, ",\"quantiles\":{", 14);
        for (size_t q = 0; q < sizeof quantiles / sizeof quantiles[0]; q++) {
            double v = metrics_latency_quantile(k, quantiles[q]);
            evbuffer_add_printf(b, q ? ",\"p%g\":" : "\"p%g\":", quantiles[q] * 100);
            if (v < 0)
                evbuffer_add(b, "null", 4);
            else
                evbuffer_add_printf(b, "%.6g", v);
        }
        evbuffer_add(b, "}}", 2);
        json_cost(b, "cpu_seconds", &k->cpu, metrics_cpu_bounds);
        json_cost(b, "peak_memory_bytes", &k->memory, metrics_memory_bounds);
        evbuffer_add(b, "}", 1);
    }
    evbuffer_add_printf(b, "},\"last_reload\":");
    if (st.last_reload_unix == 0) {
        evbuffer_add(b, "null", 4);
    } else {
        evbuffer_add_printf(b, "{\"ok\":%s,\"unix\":%llu,\"message\":",
                            st.last_reload_failed ? "false" : "true",
                            (unsigned long long)st.last_reload_unix);
        json_string(b, st.last_reload_message);
        evbuffer_add(b, "}", 1);
    }
    evbuffer_add_printf(b, ",\"processes\":[");
    size_t n;
    struct proc_row *rows = proc_rows(&n);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            evbuffer_add(b, ",", 1);
        json_process(b, &rows[i]);
    }
    free(rows);
    evbuffer_add(b, "]}\n", 3);
}

/* ---- HTTP ---------------------------------------------------------------- */

static void
reply(struct evhttp_request *req, int code, const char *reason, const char *type,
      struct evbuffer *body)
{
    status_reply(req, code, reason, type, body);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
    const char *why = NULL;
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    struct evbuffer *body = evbuffer_new();
    if (body == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }

    int refused;
    if (path != NULL && (refused = status_auth_check(req, path, body)) != 0) {
        reply(req, refused, refused == 429 ? "Too Many Requests" : "Unauthorized", CONTENT_TEXT,
              body);
    } else if (path == NULL || (strcmp(path, "/metrics") != 0 && strcmp(path, "/status") != 0 &&
                                strcmp(path, "/healthz") != 0 && !status_page_serves(path) &&
                                !status_items_serves(path))) {
        evbuffer_add_printf(body, "not found\n");
        reply(req, HTTP_NOTFOUND, "Not Found", CONTENT_TEXT, body);
    } else if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        evbuffer_add_printf(body, "method not allowed\n");
        reply(req, 405, "Method Not Allowed", CONTENT_TEXT, body);
    } else if (status_page_serves(path)) {
        status_page_request(req, path);
    } else if (status_items_serves(path)) {
        status_items_request(req, path);
    } else if (strcmp(path, "/metrics") == 0) {
        write_metrics(body);
        reply(req, HTTP_OK, "OK", CONTENT_PROMETHEUS, body);
    } else if (strcmp(path, "/status") == 0) {
        write_status(body);
        reply(req, HTTP_OK, "OK", CONTENT_JSON, body);
    } else if (gp.draining || gp.stopping) {
        evbuffer_add_printf(body, "draining\n");
        reply(req, HTTP_SERVUNAVAIL, "Service Unavailable", CONTENT_TEXT, body);
    } else if (!server_listening()) {
        evbuffer_add_printf(body, "the gRPC listener accepts no connection (descriptors "
                            "exhausted); it listens again once descriptors are free\n");
        reply(req, HTTP_SERVUNAVAIL, "Service Unavailable", CONTENT_TEXT, body);
    } else if (!store_serving(&why)) {
        evbuffer_add_printf(body, "%s\n", why);
        reply(req, HTTP_SERVUNAVAIL, "Service Unavailable", CONTENT_TEXT, body);
    } else {
        evbuffer_add_printf(body, "ok\n");
        reply(req, HTTP_OK, "OK", CONTENT_TEXT, body);
    }
    evbuffer_free(body);
}

/* ---- listening ---------------------------------------------------------- */

/*
 * The status port must not take the descriptors gRPC accepts with (gRPC
 * 1.51 loses its listener at EMFILE): it takes connections while a quarter
 * of the table (at least twice the reserve) is free. Once the gRPC
 * listener is dead, only a few descriptors for worker channels are kept,
 * so that /healthz and /metrics can say so. evhttp cannot refuse a
 * connection, so the listener is paused instead, and the timer looks for
 * room again. It pauses on an accept() error too: libevent would
 * otherwise call accept() again at once, forever (100% CPU at EMFILE).
 */
static int
status_room(void)
{
    uint64_t limit = descriptors_limit(), open = descriptors_open();
    uint64_t headroom = limit / 4 > 2 * DESCRIPTORS_RESERVE ? limit / 4 : 2 * DESCRIPTORS_RESERVE;
    if (!server_listening())
        headroom = DESCRIPTORS_RESERVE / 4;
    return open + headroom < limit;
}

static struct evconnlistener *
status_listener(void)
{
    return st.bound != NULL ? evhttp_bound_socket_get_listener(st.bound) : NULL;
}

static void
status_pause(const char *why)
{
    struct evconnlistener *l = status_listener();
    if (l == NULL)
        return;
    evconnlistener_disable(l);
    if (!st.paused)
        log_warn("status endpoint on %s: taking no connection for now: %s (%llu of %llu "
                 "descriptors open)", st.listen, why, (unsigned long long)descriptors_open(),
                 (unsigned long long)descriptors_limit());
    st.paused = 1;
    struct timeval tv = clock_timeval_ms(STATUS_RESUME_MS);
    evtimer_add(st.resume_timer, &tv);
}

static void
on_resume_timer(evutil_socket_t fd, short what, void *arg)
{
    struct evconnlistener *l = status_listener();
    if (l == NULL || !st.paused)
        return;
    if (!status_room()) {
        struct timeval tv = clock_timeval_ms(STATUS_RESUME_MS);
        evtimer_add(st.resume_timer, &tv);
        return;
    }
    st.paused = 0;
    evconnlistener_enable(l);
    log_notice("status endpoint on %s: taking connections again", st.listen);
}

static void
on_accept_error(struct evconnlistener *l, void *arg)
{
    char why[96];
    snprintf(why, sizeof why, "accept() failed: %s",
             evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    status_pause(why);
}

/* evhttp asks for each new connection's bufferevent: the one place that
 * hears of every connection. */
static struct bufferevent *
on_new_connection(struct event_base *base, void *arg)
{
    if (!status_room())
        status_pause("descriptors are kept for gRPC");
    return bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
}

/* A socket bound to AI (ADDR, for a warning), or -1 with errno set and
 * the call that failed in *CALL. */
static int
bound_socket(const struct addrinfo *ai, const char *addr, const char **call)
{
    *call = "socket";
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd == -1)
        return -1;
    int on = 1;
    /* Lets a restarted daemon bind while old connections sit in TIME_WAIT. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    /* Lets the new instance of a binary upgrade bind beside this one. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) == -1)
        log_syswarn("status.listen %s: setsockopt(SO_REUSEPORT) failed", addr);
    *call = "bind";
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return fd;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

/* A listening socket on what ADDR resolves to, or -1 with errno set and the
 * failed call and its error in WHY. Of a name's addresses, the one
 * address_pick() picks (the first IPv4, else the first IPv6): the same
 * rule as a reload's lookup (resolve.c) and the master's listen probe, so
 * that a name binds the same address at a start and at a reload. */
static int
listen_socket(const char *addr, char *why, size_t why_size, char *at, size_t at_size)
{
    char host[300];
    const char *port;
    if (address_split(addr, host, sizeof host, &port) == -1) {
        snprintf(why, why_size, "not host:port");
        errno = EINVAL;
        return -1;
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *list;
    int rc = getaddrinfo(host, port, &hints, &list);
    if (rc != 0) {
        snprintf(why, why_size, "getaddrinfo() failed: %s", gai_strerror(rc));
        errno = EADDRNOTAVAIL;
        return -1;
    }
    const struct addrinfo *ai = address_pick(list);
    if (ai == NULL) {
        freeaddrinfo(list);
        snprintf(why, why_size, "its host name has no IPv4 or IPv6 address");
        errno = EADDRNOTAVAIL;
        return -1;
    }
    const char *call;
    /* As `user:`, as the grpc listeners (server.c add_port(): one owner
     * per shared port), else as root: an older instance's is root's. */
    int as_user = privileges_bind_as(gp.config->user);
    int fd = bound_socket(ai, addr, &call);
    if (as_user) {
        privileges_bind_done();
        if (fd == -1) {
            fd = bound_socket(ai, addr, &call);
            if (fd != -1)
                log_notice("status.listen %s: bound as root (its port is root's, from an "
                           "older instance?): a reload cannot share it", addr);
        }
    }
    if (fd != -1) {
        call = "listen";
        if (listen(fd, STATUS_BACKLOG) == 0) {
            char h[300];
            if (getnameinfo(ai->ai_addr, ai->ai_addrlen, h, sizeof h, NULL, 0,
                            NI_NUMERICHOST) != 0)
                snprintf(h, sizeof h, "%s", host);
            snprintf(at, at_size, ai->ai_family == AF_INET6 ? "[%s]:%s" : "%s:%s", h, port);
            freeaddrinfo(list);
            return fd;
        }
    }
    int saved = errno;
    snprintf(why, why_size, "%s() failed: %s", call, strerror(saved));
    if (fd != -1)
        close(fd);
    freeaddrinfo(list);
    errno = saved;
    return -1;
}

static void
status_close(void)
{
    if (st.bound != NULL)
        evhttp_del_accept_socket(st.http, st.bound);   /* closes the socket */
    st.bound = NULL;
    st.listen[0] = '\0';
    st.bound_at[0] = '\0';
}

/* Serve on ADDR (status.listen), bound at BIND_AT (ADDR resolved, or NULL
 * to resolve it here: it blocks on a name), then close what served before.
 * -1: nothing changed, errno set, the reason in WHY. */
static int
status_listen(const char *addr, const char *bind_at, char *why, size_t why_size)
{
    if (st.http == NULL) {
        st.http = evhttp_new(gp.base);
        if (st.http == NULL) {
            snprintf(why, why_size, "evhttp_new() failed");
            errno = ENOMEM;
            return -1;
        }
        evhttp_set_timeout(st.http, STATUS_TIMEOUT_S);
        evhttp_set_max_headers_size(st.http, STATUS_HEADERS_MAX);
        evhttp_set_max_body_size(st.http, STATUS_BODY_MAX);
        /* Every method reaches on_request, which answers 405 (evhttp: 501). */
        evhttp_set_allowed_methods(st.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                   EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
        evhttp_set_gencb(st.http, on_request, NULL);
        evhttp_set_bevcb(st.http, on_new_connection, NULL);
        st.resume_timer = evtimer_new(gp.base, on_resume_timer, NULL);
    }
    char at[sizeof st.bound_at];
    int fd = listen_socket(bind_at != NULL ? bind_at : addr, why, why_size, at, sizeof at);
    if (fd == -1)
        return -1;
    struct evhttp_bound_socket *bound = evhttp_accept_socket_with_handle(st.http, fd);
    if (bound == NULL) {
        snprintf(why, why_size, "evhttp_accept_socket_with_handle() failed");
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(bound), on_accept_error);
    status_close();
    st.bound = bound;
    st.paused = 0;
    snprintf(st.listen, sizeof st.listen, "%s", addr);
    snprintf(st.bound_at, sizeof st.bound_at, "%s", at);
    if (strcmp(addr, at) == 0)
        log_info("status endpoint listening on %s", addr);
    else
        log_info("status endpoint listening on %s (%s)", addr, at);
    return 0;
}

static int
same_port(const char *a, const char *b)
{
    const char *pa = strrchr(a, ':'), *pb = strrchr(b, ':');
    return pa != NULL && pb != NULL && strcmp(pa, pb) == 0;
}

int
status_start(void)
{
    const char *addr = gp.config->status.listen;
    char why[256], msg[512];
    st.started = 1;
    kinds_touch();
    status_auth_configure();
    rates_start(gp.base);
    if (addr == NULL || status_listen(addr, NULL, why, sizeof why) == 0)
        return 0;
    int n = snprintf(msg, sizeof msg, "status.listen: cannot listen on %s: %s", addr, why);
    log_error("%s", msg);
    master_send_now(IPC_FATAL, msg, n < (int)sizeof msg ? (size_t)n : sizeof msg - 1);
    return -1;
}

/* A reload's status.listen ADDR, bound at BIND_AT (numbers): served there,
 * or the reason logged and what served before kept. */
static void
listen_on_reload(const char *addr, const char *bind_at)
{
    char why[256], again[256], old[sizeof st.listen], old_at[sizeof st.bound_at];
    if (status_listen(addr, bind_at, why, sizeof why) == 0)
        return;
    if (errno == EADDRINUSE && st.bound != NULL && same_port(bind_at, st.bound_at)) {
        snprintf(old, sizeof old, "%s", st.listen);
        snprintf(old_at, sizeof old_at, "%s", st.bound_at);
        status_close();
        if (status_listen(addr, bind_at, why, sizeof why) == 0)
            return;
        if (status_listen(old, old_at, again, sizeof again) == -1) {
            log_error("reload: status.listen: cannot listen on %s: %s; nor on %s again: %s; "
                      "the status endpoint is off", addr, why, old, again);
            return;
        }
    }
    log_error("reload: status.listen: cannot listen on %s: %s; keeping %s", addr, why,
              st.bound != NULL ? st.listen : "it off");
}

static void
on_listen_resolved(void *arg, const char *address, const char *why)
{
    (void)arg;
    st.resolving = NULL;
    char host[300], at[sizeof st.bound_at];
    const char *port;
    if (address == NULL || address_split(st.resolving_addr, host, sizeof host, &port) == -1) {
        log_error("reload: status.listen: cannot listen on %s: %s; keeping %s",
                  st.resolving_addr, address == NULL ? why : "not host:port",
                  st.bound != NULL ? st.listen : "it off");
        return;
    }
    snprintf(at, sizeof at, strchr(address, ':') != NULL ? "[%s]:%s" : "%s:%s", address, port);
    listen_on_reload(st.resolving_addr, at);
}

static void
resolving_cancel(void)
{
    resolve_cancel(st.resolving);
    st.resolving = NULL;
}

void
status_reconfigure(void)
{
    const char *addr = gp.config->status.listen;

    st.reloads++;
    st.last_reload_failed = 0;
    st.last_reload_unix = (uint64_t)(clock_wall_ns() / 1000000000);
    snprintf(st.last_reload_message, sizeof st.last_reload_message,
             "config generation %llu applied", (unsigned long long)gp.generation);
    /* The new instance of an upgrade binds nothing before its store serves
     * (and runs as root meanwhile): status_start() binds the address of
     * the config in force then. */
    if (!st.started)
        return;
    kinds_touch();
    status_auth_configure();
    if (addr == NULL) {
        resolving_cancel();
        if (st.bound != NULL)
            log_info("status endpoint on %s closed (status.listen is off)", st.listen);
        status_close();
        return;
    }
    if (st.bound != NULL && strcmp(addr, st.listen) == 0) {
        resolving_cancel();     /* back to what serves */
        return;
    }
    if (st.resolving != NULL && strcmp(addr, st.resolving_addr) == 0)
        return;                 /* on its way */
    resolving_cancel();
    char host[300];
    const char *port;
    struct in_addr a4;
    struct in6_addr a6;
    if (address_split(addr, host, sizeof host, &port) == 0 &&
        inet_pton(AF_INET, host, &a4) != 1 && inet_pton(AF_INET6, host, &a6) != 1) {
        snprintf(st.resolving_addr, sizeof st.resolving_addr, "%s", addr);
        st.resolving = resolve_host(gp.base, host, on_listen_resolved, NULL);
        return;
    }
    listen_on_reload(addr, addr);
}

void
status_reload_failed(const char *why)
{
    st.last_reload_failed = 1;
    st.last_reload_unix = (uint64_t)(clock_wall_ns() / 1000000000);
    snprintf(st.last_reload_message, sizeof st.last_reload_message, "%s", why);
}

void
status_shutdown(void)
{
    resolving_cancel();
    status_items_shutdown();
    rates_shutdown();
    if (st.resume_timer != NULL)
        event_free(st.resume_timer);
    if (st.http != NULL)
        evhttp_free(st.http);   /* closes the socket and every connection */
    status_auth_shutdown();
    memset(&st, 0, sizeof st);
}
