/*
 * dosomething watch: getUpdates, printed as JSON lines until interrupted,
 * --count updates, --timeout, or the end of the stream.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"
#include "cli/jsonl.h"
#include "cli/rpc.h"
#include "cli/subscription.h"
#include "core/alloc.h"

#define FILTER_MAX 1024

enum {
    OPT_ITEM = OPT_COMMAND_BASE,
    OPT_KIND,
    OPT_STATE,
    OPT_BATCH,
    OPT_AFTER_SEQ,
    OPT_COUNT,
};

struct watch {
    struct subscription sub;
    uint64_t count;                 /* 0: no limit */
    uint64_t printed;
    int output_failed;
};

static void
print_update(const wire_update *u)
{
    char state[32];
    cli_state_name((int)u->state, state, sizeof state);

    printf("{\"seq\":%llu", (unsigned long long)u->seq);
    jsonl_string("item_id", u->item_id);
    jsonl_string("kind", u->kind);
    jsonl_string("state", state);
    printf(",\"attempt\":%u,\"worker_pid\":%d,\"time_unix_nano\":%lld", (unsigned)u->attempt,
           (int)u->worker_pid, (long long)u->time_unix_nano);
    /* what the attempt cost: on its end, 0 on other updates */
    printf(",\"cpu_usec\":%llu,\"max_rss_kib\":%llu", (unsigned long long)u->cpu_usec,
           (unsigned long long)u->max_rss_kib);
    /* SUCCEEDED from the result cache or a merged run: no attempt of its own */
    printf(",\"cached\":%s", u->cached ? "true" : "false");
    jsonl_string("batch", u->batch);
    jsonl_progress(u->progress);
    jsonl_error_result(u->error, u->result.data, u->result.len);
    fputs("}\n", stdout);
}

static void
on_update(void *arg, const wire_update *u)
{
    struct watch *w = arg;

    if (w->output_failed || (w->count > 0 && w->printed >= w->count))
        return;
    print_update(u);
    w->printed++;
    if (ferror(stdout)) {
        w->output_failed = errno ? errno : EIO;
        subscription_cancel(&w->sub);
    } else if (w->count > 0 && w->printed >= w->count) {
        subscription_cancel(&w->sub);
    }
}

static int
add_filter(char **list, size_t *count, const char *what, char *value)
{
    if (*count == FILTER_MAX)
        return cli_usage_error("watch", "more than %d %s", FILTER_MAX, what);
    list[(*count)++] = value;
    return 0;
}

struct filters {
    char *items[FILTER_MAX];
    char *kinds[FILTER_MAX];
    char *batches[FILTER_MAX];
    wire_state_value states[STATE_MAX + 1];
};

static int
parse_options(int argc, char **argv, struct cli_options *global, struct filters *f,
              wire_updates_request *request, uint64_t *count)
{
    static const struct option options[] = {
        { "item", required_argument, NULL, OPT_ITEM },
        { "kind", required_argument, NULL, OPT_KIND },
        { "state", required_argument, NULL, OPT_STATE },
        { "batch", required_argument, NULL, OPT_BATCH },
        { "after-seq", required_argument, NULL, OPT_AFTER_SEQ },
        { "count", required_argument, NULL, OPT_COUNT },
        CLI_GLOBAL_LONG_OPTIONS
    };
    int opt, rc = 0;

    request->item_ids = f->items;
    request->kinds = f->kinds;
    request->batches = f->batches;
    request->states = f->states;
    optind = 0;
    while (rc == 0 && (opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_ITEM:
            rc = add_filter(f->items, &request->n_item_ids, "--item", optarg);
            break;
        case OPT_KIND:
            rc = add_filter(f->kinds, &request->n_kinds, "--kind", optarg);
            break;
        case OPT_BATCH:
            rc = add_filter(f->batches, &request->n_batches, "--batch", optarg);
            break;
        case OPT_STATE:
            if (cli_state_option("watch", optarg, f->states, &request->n_states) != 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_AFTER_SEQ:
            if (parse_u64(optarg, &request->after_seq) == -1)
                return cli_usage_error("watch", "--after-seq takes a seq number, not \"%s\"",
                                       optarg);
            request->replay = 1;
            break;
        case OPT_COUNT:
            if (parse_u64(optarg, count) == -1 || *count == 0)
                return cli_usage_error("watch", "--count takes a number >= 1, not \"%s\"",
                                       optarg);
            break;
        default:
            if (cli_command_option("watch", opt, optarg, global) == -1)
                return CLI_EXIT_USAGE;
            break;
        }
    }
    if (rc != 0)
        return rc;
    if (optind < argc)
        return cli_usage_error("watch", "unexpected argument \"%s\"", argv[optind]);
    return cli_options_check(global);
}

/* How the stream ended; returns the exit status. */
static int
report(const struct watch *w, const struct cli_options *global)
{
    const struct rpc_call *c = &w->sub.call;

    if (w->output_failed) {
        if (w->output_failed == EPIPE)
            return CLI_EXIT_OK;     /* the reader has all it wanted */
        cli_error("cannot write to stdout: %s", strerror(w->output_failed));
        return CLI_EXIT_USAGE;
    }
    if (rpc_interrupted || (w->count > 0 && w->printed >= w->count))
        return CLI_EXIT_OK;
    if (c->status == GRPC_STATUS_DEADLINE_EXCEEDED && global->timeout_ms > 0) {
        if (w->count == 0)
            return CLI_EXIT_OK;     /* watched for as long as asked */
        cli_error("%llu of %llu updates within --timeout", (unsigned long long)w->printed,
                  (unsigned long long)w->count);
        return CLI_EXIT_NEGATIVE;
    }
    if (c->status == GRPC_STATUS_OK) {
        cli_error("getUpdates (to %s): the server ended the stream", c->target);
        return w->count > 0 ? CLI_EXIT_NEGATIVE : CLI_EXIT_OK;
    }
    rpc_report(c);
    return CLI_EXIT_RPC;
}

int
watch_main(int argc, char **argv, struct cli_options *global)
{
    struct filters *f = ds_calloc(1, sizeof *f);
    struct watch w;
    struct rpc rpc;
    wire_updates_request request;

    memset(&w, 0, sizeof w);
    wire_updates_request_init(&request);
    int rc = parse_options(argc, argv, global, f, &request, &w.count);
    if (rc != 0) {
        free(f);
        return rc;
    }
    if ((rc = rpc_open(&rpc, global)) != 0) {
        free(f);
        return rc;
    }
    int64_t deadline = global->timeout_ms > 0 ? clock_now_ms() + global->timeout_ms : -1;
    if (subscription_start(&w.sub, &rpc, &request, deadline, on_update, &w) == -1) {
        rpc_close(&rpc);
        free(f);
        return CLI_EXIT_RPC;
    }
    while (!w.sub.ended) {
        if (rpc_interrupted && !w.sub.cancelled)
            subscription_cancel(&w.sub);
        rpc_poll(&rpc, 100);
        if (fflush(stdout) == EOF && !w.output_failed) {
            w.output_failed = errno ? errno : EIO;
            subscription_cancel(&w.sub);
        }
    }
    rc = report(&w, global);
    subscription_finish(&w.sub);
    rpc_close(&rpc);
    free(f);
    return rc;
}
