/*
 * dosomething health: grpc.health.v1.Health/Check. The two messages are
 * tiny and fixed, so they are encoded by hand:
 *   HealthCheckRequest  { string service = 1; }
 *   HealthCheckResponse { ServingStatus status = 1; }
 *     UNKNOWN = 0, SERVING = 1, NOT_SERVING = 2, SERVICE_UNKNOWN = 3
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/rpc.h"
#include "cli/unary.h"
#include "core/pbwire.h"

#define HEALTH_CHECK "/grpc.health.v1.Health/Check"
#define SERVICE_MAX  1024

enum {
    OPT_SERVICE = OPT_COMMAND_BASE,
};

/* The status field of a HealthCheckResponse; unknown fields are skipped.
 * Returns 0, or -1 if the bytes are no such message. */
static int
decode_status(const uint8_t *p, size_t len, uint64_t *status)
{
    size_t i = 0;
    struct pbwire_field f;
    int r;
    *status = 0;                        /* proto3: absent is UNKNOWN */
    while ((r = pbwire_next(p, len, &i, &f)) == 1)
        if (f.number == 1 && f.type == PBWIRE_VARINT)
            *status = f.value;
    return r;
}

static const char *
status_name(uint64_t status)
{
    static const char *const names[] = { "UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" };
    return status < 4 ? names[status] : NULL;
}

static int
parse_options(int argc, char **argv, struct cli_options *global, const char **service)
{
    static const struct option options[] = {
        { "service", required_argument, NULL, OPT_SERVICE },
        CLI_GLOBAL_LONG_OPTIONS
    };
    int opt;

    optind = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_SERVICE:
            if (strlen(optarg) > SERVICE_MAX)
                return cli_usage_error("health", "--service is longer than %d bytes",
                                       SERVICE_MAX);
            *service = optarg;
            break;
        default:
            if (cli_command_option("health", opt, optarg, global) == -1)
                return CLI_EXIT_USAGE;
            break;
        }
    }
    if (optind < argc)
        return cli_usage_error("health", "unexpected argument \"%s\"", argv[optind]);
    return cli_options_check(global);
}

/* Print the answer; returns the exit status. */
static int
report(const struct unary_exchange *h)
{
    if (rpc_interrupted && h->call.status == GRPC_STATUS_CANCELLED)
        return CLI_EXIT_INTERRUPTED;
    if (h->call.status == GRPC_STATUS_NOT_FOUND) {
        /* The health protocol's answer for a service the server does not
         * know (Check has no SERVICE_UNKNOWN of its own; Watch does). */
        printf("SERVICE_UNKNOWN\n");
        return CLI_EXIT_NEGATIVE;
    }
    if (h->call.status != GRPC_STATUS_OK) {
        rpc_report(&h->call);
        if (h->call.status == GRPC_STATUS_UNIMPLEMENTED)
            cli_error("the server does not serve grpc.health.v1.Health");
        return CLI_EXIT_RPC;
    }
    uint64_t status;
    int bad = h->recv_buffer == NULL;
    if (!bad) {
        grpc_slice slice = rpc_buffer_slice(h->recv_buffer);
        bad = decode_status(GRPC_SLICE_START_PTR(slice), GRPC_SLICE_LENGTH(slice), &status) == -1;
        grpc_slice_unref(slice);
    }
    if (bad) {
        cli_error("Health/Check (to %s): the reply is not a HealthCheckResponse", h->call.target);
        return CLI_EXIT_RPC;
    }
    const char *name = status_name(status);
    if (name != NULL)
        printf("%s\n", name);
    else
        printf("%llu\n", (unsigned long long)status);
    return status == 1 ? CLI_EXIT_OK : CLI_EXIT_NEGATIVE;
}

int
health_main(int argc, char **argv, struct cli_options *global)
{
    const char *service = "";
    struct unary_exchange h;
    struct rpc rpc;

    int rc = parse_options(argc, argv, global, &service);
    if (rc != 0)
        return rc;
    memset(&h, 0, sizeof h);
    if ((rc = rpc_open(&rpc, global)) != 0)
        return rc;

    int64_t timeout = global->timeout_ms < 0 ? CLI_DEFAULT_TIMEOUT : global->timeout_ms;
    if (rpc_call_start(&rpc, &h.call, HEALTH_CHECK, "Health/Check",
                       timeout > 0 ? clock_now_ms() + timeout : -1) == -1) {
        rpc_close(&rpc);
        return CLI_EXIT_RPC;
    }

    /* Field 1, length-delimited; proto3 leaves an empty string out. */
    size_t len = strlen(service);
    uint8_t request[SERVICE_MAX + 16];
    size_t n = 0;
    if (len > 0) {
        request[n++] = 0x0a;
        n = (size_t)(pbwire_put_varint(request + n, len) - request);
        memcpy(request + n, service, len);
        n += len;
    }
    unary_exchange(&rpc, &h, grpc_slice_from_copied_buffer((const char *)request, n));
    rc = report(&h);
    unary_exchange_free(&h);
    rpc_close(&rpc);
    return rc;
}
