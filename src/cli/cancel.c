/*
 * dosomething cancel and retry: by item ids or by batches, then the counts
 * of the reply, one per line, and each id the server does not know.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/rpc.h"
#include "cli/unary.h"
#include "core/alloc.h"
#include "core/utf8.h"

#define IDS_MAX     10000
#define BATCHES_MAX 1024
#define REASON_MAX  1024

enum {
    OPT_BATCH = OPT_COMMAND_BASE,
    OPT_REASON,
};

/* The ids and batches of either command; argv owns the strings. */
struct targets {
    char **ids;
    size_t id_count;
    char *batches[BATCHES_MAX];
    size_t batch_count;
    char *reason;               /* cancel only */
};

static int
parse_options(const char *command, int argc, char **argv, struct cli_options *global,
              struct targets *t)
{
    static const struct option cancel_options[] = {
        { "batch", required_argument, NULL, OPT_BATCH },
        { "reason", required_argument, NULL, OPT_REASON },
        CLI_GLOBAL_LONG_OPTIONS
    };
    static const struct option retry_options[] = {
        { "batch", required_argument, NULL, OPT_BATCH },
        CLI_GLOBAL_LONG_OPTIONS
    };
    int cancel = strcmp(command, "cancel") == 0;
    int opt;

    optind = 0;
    while ((opt = getopt_long(argc, argv, "h", cancel ? cancel_options : retry_options,
                              NULL)) != -1) {
        switch (opt) {
        case OPT_BATCH:
            if (t->batch_count == BATCHES_MAX)
                return cli_usage_error(command, "more than %d --batch", BATCHES_MAX);
            if (optarg[0] == '\0')
                return cli_usage_error(command, "--batch must not be empty");
            t->batches[t->batch_count++] = optarg;
            break;
        case OPT_REASON:
            if (strlen(optarg) > REASON_MAX)
                return cli_usage_error(command, "--reason is longer than %d bytes",
                                       REASON_MAX);
            if (!utf8_valid(optarg, strlen(optarg)))
                return cli_usage_error(command, "--reason is not valid UTF-8");
            t->reason = optarg;
            break;
        default:
            if (cli_command_option(command, opt, optarg, global) == -1)
                return CLI_EXIT_USAGE;
            break;
        }
    }
    t->ids = argv + optind;
    t->id_count = (size_t)(argc - optind);
    if (t->id_count == 0 && t->batch_count == 0)
        return cli_usage_error(command, "no item id and no --batch given");
    if (t->id_count > IDS_MAX)
        return cli_usage_error(command, "more than %d item ids", IDS_MAX);
    for (size_t i = 0; i < t->id_count; i++)
        if (t->ids[i][0] == '\0')
            return cli_usage_error(command, "an item id must not be empty");
    return cli_options_check(global);
}

static void
report_not_found(char **ids, size_t count)
{
    for (size_t i = 0; i < count; i++)
        cli_error("item \"%s\": not found (never accepted, or forgotten by items.retention)",
                  ids[i]);
}

static int
run(const char *command, int argc, char **argv, struct cli_options *global)
{
    struct targets t;
    struct rpc rpc;
    Com__Agrounds__Dosomething__V1__CancelRequest cancel;
    Com__Agrounds__Dosomething__V1__RetryRequest retry;
    int is_cancel = strcmp(command, "cancel") == 0;

    memset(&t, 0, sizeof t);
    int rc = parse_options(command, argc, argv, global, &t);
    if (rc != 0)
        return rc;
    if ((rc = rpc_open(&rpc, global)) != 0)
        return rc;
    int64_t timeout = global->timeout_ms >= 0 ? global->timeout_ms : CLI_DEFAULT_TIMEOUT;
    int64_t deadline = timeout > 0 ? clock_now_ms() + timeout : -1;
    ProtobufCMessage *msg;
    if (is_cancel) {
        com__agrounds__dosomething__v1__cancel_request__init(&cancel);
        cancel.item_ids = t.ids;
        cancel.n_item_ids = t.id_count;
        cancel.batches = t.batches;
        cancel.n_batches = t.batch_count;
        cancel.reason = t.reason != NULL ? t.reason : (char *)"";
        rc = unary_call(&rpc, UNARY_CANCEL, "cancel", &cancel.base,
                        &com__agrounds__dosomething__v1__cancel_reply__descriptor, deadline,
                        &msg);
    } else {
        com__agrounds__dosomething__v1__retry_request__init(&retry);
        retry.item_ids = t.ids;
        retry.n_item_ids = t.id_count;
        retry.batches = t.batches;
        retry.n_batches = t.batch_count;
        rc = unary_call(&rpc, UNARY_RETRY, "retry", &retry.base,
                        &com__agrounds__dosomething__v1__retry_reply__descriptor, deadline,
                        &msg);
    }
    if (rc == CLI_EXIT_OK && is_cancel) {
        Com__Agrounds__Dosomething__V1__CancelReply *r = (void *)msg;
        printf("cancelled %llu\nalready_final %llu\nnot_found %zu\n",
               (unsigned long long)r->cancelled, (unsigned long long)r->already_final,
               r->n_not_found);
        report_not_found(r->not_found, r->n_not_found);
        rc = r->n_not_found > 0 ? CLI_EXIT_NEGATIVE : CLI_EXIT_OK;
    } else if (rc == CLI_EXIT_OK) {
        Com__Agrounds__Dosomething__V1__RetryReply *r = (void *)msg;
        printf("requeued %llu\nnot_retryable %llu\nnot_found %zu\n",
               (unsigned long long)r->requeued, (unsigned long long)r->not_retryable,
               r->n_not_found);
        report_not_found(r->not_found, r->n_not_found);
        rc = r->n_not_found > 0 || r->not_retryable > 0 ? CLI_EXIT_NEGATIVE : CLI_EXIT_OK;
    }
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    if (fflush(stdout) != 0 && rc == CLI_EXIT_OK)
        rc = CLI_EXIT_USAGE;
    rpc_close(&rpc);
    return rc;
}

int
cancel_main(int argc, char **argv, struct cli_options *global)
{
    return run("cancel", argc, argv, global);
}

int
retry_main(int argc, char **argv, struct cli_options *global)
{
    return run("retry", argc, argv, global);
}
