/*
 * The -h texts. They say what dosomething(1) says, in fewer words; change
 * both together.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const char overview[] =
"usage: dosomething [GLOBAL OPTIONS] COMMAND [OPTIONS] [ARGS]\n"
"\n"
"The command-line client of dosomethingd(8).\n"
"\n"
"Commands:\n"
"  submit   stream work items into the daemon; print what it accepted\n"
"  watch    print the daemon's updates as JSON lines\n"
"  health   ask the daemon whether it serves (grpc.health.v1)\n"
"  get      what became of items, by id (--wait: once they are final)\n"
"  list     the items the daemon knows, newest first, by state, batch, kind\n"
"  cancel   cancel items by id or batch\n"
"  retry    run FAILED or CANCELLED items again, by id or batch\n"
"  help     help COMMAND: the help of a command\n"
"\n"
"Global options (before or after the command):\n"
"  --target HOST:PORT  the daemon's gRPC address, or unix:/PATH (default:\n"
"                      $DOSOMETHING_TARGET, else " CLI_DEFAULT_TARGET ")\n"
"  --tls               use TLS, verifying the server with the system's roots\n"
"  --ca FILE           verify the server with these PEM roots (implies --tls)\n"
"  --cert FILE         present this PEM client certificate (mTLS; needs --key)\n"
"  --key FILE          the client certificate's PEM private key\n"
"  --timeout DURATION  a deadline: 500ms, 30s, 5m, 1h; 0 for none. submit and\n"
"                      health: default 30s. watch, and the wait of submit\n"
"                      --wait: none unless given\n"
"  -h, --help          this help; after a command, the command's\n"
"  --version           print the version\n"
"\n"
"Exit status: 0 success; 1 items rejected or failed, or not SERVING; 2 bad\n"
"usage or input; 3 a call failed (the message names the gRPC status);\n"
"130 interrupted.\n"
"\n"
"See dosomething(1).\n";

static const char submit[] =
"usage: dosomething submit [OPTIONS] [FILE...]\n"
"\n"
"Read work items from the FILEs (none, or \"-\": stdin), stream them into one\n"
"doSomething call, and print the reply:\n"
"\n"
"  accepted N\n"
"  rejected M\n"
"    INDEX ID: REASON       each rejection the reply lists\n"
"  duplicates K           items whose id the daemon already knew: not run\n"
"                         again, so resending after an error is safe\n"
"\n"
"Input, one item per line:\n"
"  plain (default)  the line without its newline is the payload\n"
"  --json           a JSON object per line; every key is optional:\n"
"                     {\"id\": \"a1\", \"kind\": \"sha256\", \"payload\": \"text\",\n"
"                      \"params\": {\"rounds\": 1000}, \"batch\": \"b1\",\n"
"                      \"timeout_ms\": 5000, \"max_attempts\": 3,\n"
"                      \"priority\": 10, \"delay_ms\": 30000}\n"
"                   \"payload_b64\" (base64) instead of \"payload\" for bytes;\n"
"                   numbers in params are sent as written; blank lines are\n"
"                   skipped\n"
"A line that cannot be read is reported on stderr and skipped (exit status 2).\n"
"\n"
"Options:\n"
"  --kind K             the kind of the items that name none (default: the\n"
"                       daemon's handlers.default)\n"
"  --param NAME=VALUE   a handler parameter of every item (repeatable); an\n"
"                       item's own params win\n"
"  --batch B            the batch of the items that name none\n"
"  --priority P         the priority of the items that name none (an int32;\n"
"                       higher runs first; default 0)\n"
"  --delay DURATION     do not start the items that name no delay_ms before\n"
"                       this long after their acceptance (such as 30s; at\n"
"                       most 720h, 30 days)\n"
"  --id-prefix P        an item without an id gets P-N, N its position from 1\n"
"                       (default: a random P)\n"
"  --json               read JSON lines (above)\n"
"  --wait               then wait until every accepted item is final, print\n"
"                         succeeded N\n"
"                         failed M\n"
"                           ID: ERROR\n"
"                       and exit 1 if any failed (or was cancelled)\n"
"  --results            with --wait: print each item's final update as a JSON\n"
"                       line when it arrives, as get --json prints an item:\n"
"                         {\"id\":\"a1\",\"state\":\"SUCCEEDED\",\"attempt\":1,\n"
"                          \"error\":\"\",\"result_b64\":\"...\"}\n"
"  --timeout DURATION   the deadline of the submission (default 30s; 0: none);\n"
"                       with --wait, also of the wait (default: none)\n"
"\n"
"--wait subscribes to getUpdates before it sends the first item. If the input\n"
"ends within 1000 items and 2 seconds, it watches those ids (or --batch, if\n"
"every item has it). A longer input is watched by one batch: --batch, or a\n"
"generated one given to every item without a batch; an item of another batch\n"
"is then skipped.\n"
"\n"
"On a terminal, a submission of more than 1000 items shows its progress on\n"
"stderr: items sent, accepted (once the daemon replied) and, with --wait,\n"
"finished.\n"
"\n"
"Exit status: 0 every item accepted (and with --wait succeeded); 1 some\n"
"rejected or failed; 2 bad usage, or lines skipped; 3 a call failed;\n"
"130 interrupted.\n";

static const char watch[] =
"usage: dosomething watch [OPTIONS]\n"
"\n"
"Print the daemon's updates as JSON lines, one per update:\n"
"\n"
"  {\"seq\":42,\"item_id\":\"a1\",\"kind\":\"sha256\",\"state\":\"SUCCEEDED\",\n"
"   \"attempt\":1,\"worker_pid\":4711,\"time_unix_nano\":1700000000000000000,\n"
"   \"batch\":\"b1\",\"progress\":0,\"error\":\"\",\"result_b64\":\"...\"}\n"
"\n"
"until interrupted (SIGINT), --count updates, --timeout, or the end of the\n"
"stream.\n"
"\n"
"Filters; each is repeatable, and every kind of filter given must match:\n"
"  --item ID            updates of this item\n"
"  --kind K             of items of this kind\n"
"  --state S            in this state: QUEUED, STARTED, PROGRESS, SUCCEEDED,\n"
"                       FAILED, RETRYING or CANCELLED\n"
"  --batch B            of items of this batch\n"
"\n"
"Options:\n"
"  --after-seq N        first replay the updates the daemon retains with\n"
"                       seq > N (0: all of them), then the live ones\n"
"  --count N            stop after N updates\n"
"  --timeout DURATION   stop after DURATION (default: never)\n"
"\n"
"Without --after-seq, only updates published after the daemon took the call\n"
"are printed. When the daemon cuts a watcher off for reading too slowly, it\n"
"resumes after the last seq it printed.\n"
"\n"
"Exit status: 0 interrupted, --count reached, --timeout passed, or the stream\n"
"ended; 1 the stream ended or --timeout passed before --count updates; 3 a\n"
"call failed.\n";

static const char health[] =
"usage: dosomething health [OPTIONS]\n"
"\n"
"Ask the daemon's grpc.health.v1.Health/Check and print the answer: SERVING,\n"
"NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN.\n"
"\n"
"Options:\n"
"  --service NAME       the service to ask about (default \"\": the server)\n"
"  --timeout DURATION   the deadline (default 30s; 0: none)\n"
"\n"
"Exit status: 0 SERVING; 1 any other answer; 3 the call failed (UNAVAILABLE:\n"
"nothing answers at --target).\n";

static const char get[] =
"usage: dosomething get [OPTIONS] ID...\n"
"\n"
"Ask the daemon (getItems) what became of these items and print them, a\n"
"table for people:\n"
"\n"
"  ID                        STATE       ATTEMPT  KIND              BATCH             PRIORITY     ERROR\n"
"\n"
"or, with --json, one JSON line per item:\n"
"\n"
"  {\"id\":\"a1\",\"kind\":\"sha256\",\"batch\":\"b1\",\"state\":\"SUCCEEDED\",\n"
"   \"attempt\":1,\"max_attempts\":3,\"priority\":0,\"worker_pid\":0,\"progress\":1,\n"
"   \"accepted_unix_nano\":...,\"started_unix_nano\":...,\"finished_unix_nano\":...,\n"
"   \"last_seq\":42,\"cpu_usec\":0,\"max_rss_kib\":0,\"traceparent\":\"00-...\",\n"
"   \"tracestate\":\"\",\"error\":\"\",\"result_b64\":\"...\"}\n"
"\n"
"(traceparent, tracestate: the item's W3C trace context, \"\" when it has none.)\n"
"\n"
"An id the daemon does not know (never accepted, or forgotten after\n"
"items.retention) is reported on stderr.\n"
"\n"
"Options:\n"
"  --wait               answer once every known item is final\n"
"  --results            the table shows results (--json always has them)\n"
"  --trace              the table shows each item's traceparent\n"
"  --json               JSON lines\n"
"  --timeout DURATION   the deadline (default 30s; with --wait: none)\n"
"\n"
"Exit status: 0 every item found; 1 some not found; 3 the call failed\n"
"(DEADLINE_EXCEEDED: --wait reached --timeout).\n";

static const char list[] =
"usage: dosomething list [OPTIONS]\n"
"\n"
"Print the items the daemon knows (getItems), newest accepted first, page by\n"
"page, as get prints them (a table, or --json lines; the priority shows, a\n"
"delayed item's due time does not: the contract's Item has no field for it).\n"
"Filters; each is repeatable, and every kind of filter given must match:\n"
"  --state S            in this state now: QUEUED, STARTED, PROGRESS,\n"
"                       SUCCEEDED, FAILED, RETRYING or CANCELLED\n"
"                       (--state FAILED: the dead-letter list)\n"
"  --batch B            of this batch\n"
"  --kind K             of this kind\n"
"\n"
"Options:\n"
"  --limit N            items per call (default 100, at most 1000)\n"
"  --results            the table shows results (--json always has them)\n"
"  --json               JSON lines\n"
"  --timeout DURATION   the deadline of each page's call (default 30s)\n"
"\n"
"Exit status: 0 listed; 3 a call failed.\n";

static const char cancel[] =
"usage: dosomething cancel [OPTIONS] ID... | --batch B...\n"
"\n"
"Cancel items: queued ones at once, running ones once their handler stopped.\n"
"Each gets one final CANCELLED update. Prints\n"
"\n"
"  cancelled N\n"
"  already_final M\n"
"  not_found K\n"
"\n"
"and each id not found on stderr.\n"
"\n"
"Options:\n"
"  --batch B            every item of this batch that is not final (repeatable)\n"
"  --reason R           the CANCELLED update's error\n"
"  --timeout DURATION   the deadline (default 30s)\n"
"\n"
"Exit status: 0 done; 1 some ids not found; 3 the call failed.\n";

static const char retry[] =
"usage: dosomething retry [OPTIONS] ID... | --batch B...\n"
"\n"
"Run FAILED or CANCELLED items again from attempt 1, with their kind's\n"
"handler as configured now (the dead-letter retry). Prints\n"
"\n"
"  requeued N\n"
"  not_retryable M\n"
"  not_found K\n"
"\n"
"Options:\n"
"  --batch B            every FAILED or CANCELLED item of this batch (repeatable)\n"
"  --timeout DURATION   the deadline (default 30s)\n"
"\n"
"Exit status: 0 every item requeued; 1 some not retryable or not found; 3 the\n"
"call failed.\n";

int
help_print(const char *command, FILE *out)
{
    static const struct { const char *name; const char *text; } topics[] = {
        { "submit", submit }, { "watch", watch }, { "health", health }, { "get", get },
        { "list", list }, { "cancel", cancel }, { "retry", retry },
    };

    if (command == NULL) {
        fputs(overview, out);
        return 0;
    }
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
        if (strcmp(command, topics[i].name) == 0) {
            fputs(topics[i].text, out);
            return 0;
        }
    }
    cli_error("no help for \"%s\": there are submit, watch, health, get, list, cancel "
              "and retry", command);
    return -1;
}
