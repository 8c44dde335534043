/*
 * dosomething get and list: getItems, by ids or by filter, printed as a
 * table for people or as JSON lines (--json) for scripts.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/json.h"
#include "cli/jsonl.h"
#include "cli/rpc.h"
#include "cli/unary.h"
#include "core/utf8.h"
#include "core/alloc.h"

#define FILTER_MAX   1024
#define IDS_MAX      10000
#define PAGE_DEFAULT 100
#define PAGE_MAX     1000

typedef Com__Agrounds__Dosomething__V1__ItemsRequest items_request;
typedef Com__Agrounds__Dosomething__V1__ItemsReply items_reply;
typedef Com__Agrounds__Dosomething__V1__Item wire_item;

enum {
    OPT_JSON = OPT_COMMAND_BASE,
    OPT_WAIT,
    OPT_RESULTS,
    OPT_KIND,
    OPT_STATE,
    OPT_BATCH,
    OPT_LIMIT,
    OPT_TRACE,
};

/* What both commands print; the caller owns the request's lists. */
struct listing {
    items_request request;
    int json;
    int results;                /* the table: a RESULT column */
    int trace;                  /* the table: a TRACEPARENT column */
    int header_printed;
    uint64_t printed;
};

static void
print_json(const wire_item *it)
{
    char state[32];
    cli_state_name((int)it->state, state, sizeof state);
    fputs("{\"id\":", stdout);
    json_write_string(stdout, it->id, strlen(it->id));
    jsonl_string("kind", it->kind);
    jsonl_string("batch", it->batch);
    jsonl_string("state", state);
    printf(",\"attempt\":%u,\"max_attempts\":%u,\"priority\":%d,\"worker_pid\":%d",
           (unsigned)it->attempt, (unsigned)it->max_attempts, (int)it->priority,
           (int)it->worker_pid);
    jsonl_progress(it->progress);
    printf(",\"accepted_unix_nano\":%lld,\"started_unix_nano\":%lld,"
           "\"finished_unix_nano\":%lld,\"last_seq\":%llu,\"cpu_usec\":%llu,"
           "\"max_rss_kib\":%llu", (long long)it->accepted_unix_nano,
           (long long)it->started_unix_nano, (long long)it->finished_unix_nano,
           (unsigned long long)it->last_seq, (unsigned long long)it->cpu_usec,
           (unsigned long long)it->max_rss_kib);
    jsonl_string("traceparent", it->traceparent);
    jsonl_string("tracestate", it->tracestate);
    jsonl_error_result(it->error, it->result.data, it->result.len);
    fputs("}\n", stdout);
}

/* A table cell: at most WIDTH bytes of S (cut between characters), as a
 * terminal shows them (cli_put_shown(): control characters as \xHH),
 * padded to WIDTH + 2 columns unless it is the last. */
static void
print_cell(const char *s, size_t len, int width, int last)
{
    size_t n = len < (size_t)width || last ? len : utf8_prefix(s, len, (size_t)width);
    size_t columns = cli_put_shown(stdout, s, n);
    if (!last)
        for (size_t i = columns; i < (size_t)width + 2; i++)
            putchar(' ');
}

/* What the latest attempt cost, for the table: "1.52s", "830us", "104MiB";
 * "-" when not known. */
static void
cost_cells(const wire_item *it, char *cpu, size_t cpu_size, char *peak, size_t peak_size)
{
    if (it->cpu_usec == 0 && it->max_rss_kib == 0) {
        snprintf(cpu, cpu_size, "-");
        snprintf(peak, peak_size, "-");
        return;
    }
    if (it->cpu_usec >= 1000000)
        snprintf(cpu, cpu_size, "%.2fs", (double)it->cpu_usec / 1e6);
    else if (it->cpu_usec >= 1000)
        snprintf(cpu, cpu_size, "%.1fms", (double)it->cpu_usec / 1e3);
    else
        snprintf(cpu, cpu_size, "%lluus", (unsigned long long)it->cpu_usec);
    if (it->max_rss_kib >= 1024 * 1024)
        snprintf(peak, peak_size, "%.1fGiB", (double)it->max_rss_kib / (1024.0 * 1024));
    else if (it->max_rss_kib >= 1024)
        snprintf(peak, peak_size, "%lluMiB", (unsigned long long)(it->max_rss_kib / 1024));
    else
        snprintf(peak, peak_size, "%lluKiB", (unsigned long long)it->max_rss_kib);
}

static void
print_row(struct listing *l, const wire_item *it)
{
    char state[32], attempt[32], priority[16];
    if (!l->header_printed) {
        l->header_printed = 1;
        printf("%-24s  %-10s  %-7s  %-16s  %-16s  %-11s  %-8s  %-8s  ", "ID", "STATE",
               "ATTEMPT", "KIND", "BATCH", "PRIORITY", "CPU", "PEAK");
        if (l->trace)
            printf("%-55s  ", "TRACEPARENT");
        printf("%s\n", l->results ? "RESULT / ERROR" : "ERROR");
    }
    cli_state_name((int)it->state, state, sizeof state);
    snprintf(attempt, sizeof attempt, "%u/%u", (unsigned)it->attempt,
             (unsigned)it->max_attempts);
    print_cell(it->id, strlen(it->id), 24, 0);
    print_cell(state, strlen(state), 10, 0);
    print_cell(attempt, strlen(attempt), 7, 0);
    print_cell(it->kind, strlen(it->kind), 16, 0);
    print_cell(it->batch, strlen(it->batch), 16, 0);
    snprintf(priority, sizeof priority, "%d", (int)it->priority);
    print_cell(priority, strlen(priority), 11, 0);
    char cpu[32], peak[32];
    cost_cells(it, cpu, sizeof cpu, peak, sizeof peak);
    print_cell(cpu, strlen(cpu), 8, 0);
    print_cell(peak, strlen(peak), 8, 0);
    if (l->trace)
        print_cell(it->traceparent[0] ? it->traceparent : "-",
                   it->traceparent[0] ? strlen(it->traceparent) : 1, 55, 0);
    if (it->error[0] != '\0')
        print_cell(it->error, strlen(it->error), 0, 1);
    else if (l->results && it->result.len > 0)
        print_cell((const char *)it->result.data, it->result.len, 0, 1);
    putchar('\n');
}

static void
print_item(struct listing *l, const wire_item *it)
{
    if (l->json)
        print_json(it);
    else
        print_row(l, it);
    l->printed++;
}

/* stdout's state after printing: 0; -1 if its reader is gone (it has all
 * it wanted: stop, exit 0); or the exit status of an error, said. */
static int
output_status(void)
{
    if (fflush(stdout) == 0 && !ferror(stdout))
        return 0;
    if (errno == EPIPE)
        return -1;
    cli_error("cannot write to stdout: %s", strerror(errno ? errno : EIO));
    return CLI_EXIT_USAGE;
}

static int
add(char **list, size_t *count, size_t max, const char *command, const char *what, char *value)
{
    if (*count == max)
        return cli_usage_error(command, "more than %zu %s", max, what);
    if (value[0] == '\0')
        return cli_usage_error(command, "%s must not be empty", what);
    list[(*count)++] = value;
    return 0;
}

/* ---- get ----------------------------------------------------------------- */

static int
get_options(int argc, char **argv, struct cli_options *global, struct listing *l)
{
    static const struct option options[] = {
        { "json", no_argument, NULL, OPT_JSON },
        { "wait", no_argument, NULL, OPT_WAIT },
        { "results", no_argument, NULL, OPT_RESULTS },
        { "trace", no_argument, NULL, OPT_TRACE },
        CLI_GLOBAL_LONG_OPTIONS
    };
    int opt;

    optind = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_JSON:
            l->json = 1;
            break;
        case OPT_WAIT:
            l->request.wait = 1;
            break;
        case OPT_RESULTS:
            l->results = 1;
            break;
        case OPT_TRACE:
            l->trace = 1;
            break;
        default:
            if (cli_command_option("get", opt, optarg, global) == -1)
                return CLI_EXIT_USAGE;
            break;
        }
    }
    if (optind == argc)
        return cli_usage_error("get", "no item id given");
    if ((size_t)(argc - optind) > IDS_MAX)
        return cli_usage_error("get", "more than %d item ids", IDS_MAX);
    for (int i = optind; i < argc; i++)
        if (argv[i][0] == '\0')
            return cli_usage_error("get", "an item id must not be empty");
    l->request.item_ids = argv + optind;
    l->request.n_item_ids = (size_t)(argc - optind);
    l->request.with_results = l->json || l->results;
    return cli_options_check(global);
}

int
get_main(int argc, char **argv, struct cli_options *global)
{
    struct listing l;
    struct rpc rpc;

    memset(&l, 0, sizeof l);
    com__agrounds__dosomething__v1__items_request__init(&l.request);
    int rc = get_options(argc, argv, global, &l);
    if (rc != 0)
        return rc;
    if ((rc = rpc_open(&rpc, global)) != 0)
        return rc;
    /* --wait waits as long as it takes unless --timeout says otherwise. */
    int64_t timeout = global->timeout_ms >= 0 ? global->timeout_ms
                      : l.request.wait ? 0 : CLI_DEFAULT_TIMEOUT;
    ProtobufCMessage *msg;
    rc = unary_call(&rpc, UNARY_GET_ITEMS, "getItems", &l.request.base,
                    &com__agrounds__dosomething__v1__items_reply__descriptor,
                    timeout > 0 ? clock_now_ms() + timeout : -1, &msg);
    if (rc == CLI_EXIT_OK) {
        items_reply *reply = (items_reply *)msg;
        for (size_t i = 0; i < reply->n_items; i++)
            print_item(&l, reply->items[i]);
        rc = output_status();
        if (rc == -1)
            rc = CLI_EXIT_OK;
        for (size_t i = 0; i < reply->n_not_found; i++)
            cli_error("item \"%s\": not found (never accepted, or forgotten by "
                      "items.retention)", reply->not_found[i]);
        if (rc == 0 && reply->n_not_found > 0)
            rc = CLI_EXIT_NEGATIVE;
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    rpc_close(&rpc);
    return rc;
}

/* ---- list ---------------------------------------------------------------- */

struct filters {
    char *kinds[FILTER_MAX];
    char *batches[FILTER_MAX];
    wire_state_value states[STATE_MAX + 1];
};

static int
list_options(int argc, char **argv, struct cli_options *global, struct listing *l,
             struct filters *f)
{
    static const struct option options[] = {
        { "json", no_argument, NULL, OPT_JSON },
        { "results", no_argument, NULL, OPT_RESULTS },
        { "kind", required_argument, NULL, OPT_KIND },
        { "state", required_argument, NULL, OPT_STATE },
        { "batch", required_argument, NULL, OPT_BATCH },
        { "limit", required_argument, NULL, OPT_LIMIT },
        CLI_GLOBAL_LONG_OPTIONS
    };
    items_request *r = &l->request;
    int opt, rc = 0;
    uint64_t limit;

    optind = 0;
    r->kinds = f->kinds;
    r->batches = f->batches;
    r->states = f->states;
    while (rc == 0 && (opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_JSON:
            l->json = 1;
            break;
        case OPT_RESULTS:
            l->results = 1;
            break;
        case OPT_KIND:
            rc = add(f->kinds, &r->n_kinds, FILTER_MAX, "list", "--kind", optarg);
            break;
        case OPT_BATCH:
            rc = add(f->batches, &r->n_batches, FILTER_MAX, "list", "--batch", optarg);
            break;
        case OPT_STATE:
            if (cli_state_option("list", optarg, f->states, &r->n_states) != 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_LIMIT:
            if (parse_u64(optarg, &limit) == -1 || limit == 0 || limit > PAGE_MAX)
                return cli_usage_error("list", "--limit takes 1 to %d items per page, not "
                                       "\"%s\"", PAGE_MAX, optarg);
            r->limit = (uint32_t)limit;
            break;
        default:
            if (cli_command_option("list", opt, optarg, global) == -1)
                return CLI_EXIT_USAGE;
            break;
        }
    }
    if (rc != 0)
        return rc;
    if (optind < argc)
        return cli_usage_error("list", "unexpected argument \"%s\" (item ids go to get)",
                               argv[optind]);
    if (r->limit == 0)
        r->limit = PAGE_DEFAULT;
    r->with_results = l->json || l->results;
    return cli_options_check(global);
}

int
list_main(int argc, char **argv, struct cli_options *global)
{
    struct filters *f = ds_calloc(1, sizeof *f);
    struct listing l;
    struct rpc rpc;

    memset(&l, 0, sizeof l);
    com__agrounds__dosomething__v1__items_request__init(&l.request);
    int rc = list_options(argc, argv, global, &l, f);
    if (rc != 0) {
        free(f);
        return rc;
    }
    if ((rc = rpc_open(&rpc, global)) != 0) {
        free(f);
        return rc;
    }
    /* The timeout bounds each page, not the listing. */
    int64_t timeout = global->timeout_ms >= 0 ? global->timeout_ms : CLI_DEFAULT_TIMEOUT;
    char *token = NULL;
    for (;;) {
        ProtobufCMessage *msg;
        l.request.page_token = token != NULL ? token : (char *)"";
        rc = unary_call(&rpc, UNARY_GET_ITEMS, "getItems", &l.request.base,
                        &com__agrounds__dosomething__v1__items_reply__descriptor,
                        timeout > 0 ? clock_now_ms() + timeout : -1, &msg);
        if (rc != CLI_EXIT_OK)
            break;
        items_reply *reply = (items_reply *)msg;
        for (size_t i = 0; i < reply->n_items; i++)
            print_item(&l, reply->items[i]);
        free(token);
        token = reply->next_page_token[0] != '\0' ? ds_strdup(reply->next_page_token) : NULL;
        protobuf_c_message_free_unpacked(msg, NULL);
        rc = output_status();
        if (rc == -1) {
            rc = CLI_EXIT_OK;
            break;
        }
        if (rc != 0 || token == NULL || rpc_interrupted)
            break;
    }
    if (rc == CLI_EXIT_OK && rpc_interrupted)
        rc = CLI_EXIT_INTERRUPTED;
    free(token);
    rpc_close(&rpc);
    free(f);
    return rc;
}
