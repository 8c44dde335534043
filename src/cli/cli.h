/*
 * dosomething, the command-line client: what its files share.
 *
 * One process, one thread, one completion queue (rpc.c). Every wait is a
 * bounded grpc_completion_queue_next() or poll(), so deadlines, SIGINT and
 * the progress bar are all checked at least every 100 ms.
 */
#ifndef DS_CLI_CLI_H
#define DS_CLI_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/wire.h"

/* Exit codes, documented in dosomething(1). */
#define CLI_EXIT_OK           0
#define CLI_EXIT_NEGATIVE     1   /* items rejected or failed; health not SERVING */
#define CLI_EXIT_USAGE        2   /* bad command line or bad input */
#define CLI_EXIT_RPC          3   /* a call failed; the message names the gRPC status */
#define CLI_EXIT_INTERRUPTED  130 /* SIGINT during submit */

#define CLI_DEFAULT_TARGET    "127.0.0.1:8080"
#define CLI_DEFAULT_TIMEOUT   30000   /* ms: submit and health */

/* The options every command takes. */
struct cli_options {
    const char *target;       /* host:port, unix:/path, or any gRPC target */
    int tls;
    const char *ca_file;      /* NULL: the system's roots */
    const char *cert_file;    /* with key_file: a client certificate (mTLS) */
    const char *key_file;
    int64_t timeout_ms;       /* -1: not given; 0: none */
};

/* The client's half of the wire names (core/wire.h has the server's). */
typedef Com__Agrounds__Dosomething__V1__State wire_state_value;
#define wire_work_item_init         com__agrounds__dosomething__v1__work_item__init
#define wire_work_item_size         com__agrounds__dosomething__v1__work_item__get_packed_size
#define wire_work_item_pack         com__agrounds__dosomething__v1__work_item__pack
#define wire_param_init             com__agrounds__dosomething__v1__work_item__params_entry__init
#define wire_submit_reply_unpack    com__agrounds__dosomething__v1__submit_reply__unpack
#define wire_submit_reply_free      com__agrounds__dosomething__v1__submit_reply__free_unpacked
#define wire_updates_request_init   com__agrounds__dosomething__v1__updates_request__init
#define wire_updates_request_size   com__agrounds__dosomething__v1__updates_request__get_packed_size
#define wire_updates_request_pack   com__agrounds__dosomething__v1__updates_request__pack
#define wire_update_unpack          com__agrounds__dosomething__v1__update__unpack
#define wire_update_free            com__agrounds__dosomething__v1__update__free_unpacked

/* Commands (submit.c, watch.c, health.c, items.c, cancel.c): argv[0] is
 * the command's name. */
int submit_main(int argc, char **argv, struct cli_options *options);
int watch_main(int argc, char **argv, struct cli_options *options);
int health_main(int argc, char **argv, struct cli_options *options);
int get_main(int argc, char **argv, struct cli_options *options);
int list_main(int argc, char **argv, struct cli_options *options);
int cancel_main(int argc, char **argv, struct cli_options *options);
int retry_main(int argc, char **argv, struct cli_options *options);

/*
 * main.c: the global options, shared by every command's getopt_long table.
 * cli_global_option() handles one of them (returns 0), or returns -1 if opt
 * is not global. A command's table ends with CLI_GLOBAL_LONG_OPTIONS.
 */
enum {
    OPT_TARGET = 1000,
    OPT_TLS,
    OPT_CA,
    OPT_CERT,
    OPT_KEY,
    OPT_TIMEOUT,
    OPT_VERSION,
    OPT_COMMAND_BASE = 1100,  /* a command's own long-only options start here */
};
#define CLI_GLOBAL_LONG_OPTIONS                                  \
    { "target", required_argument, NULL, OPT_TARGET },           \
    { "tls", no_argument, NULL, OPT_TLS },                       \
    { "ca", required_argument, NULL, OPT_CA },                   \
    { "cert", required_argument, NULL, OPT_CERT },               \
    { "key", required_argument, NULL, OPT_KEY },                 \
    { "timeout", required_argument, NULL, OPT_TIMEOUT },         \
    { "version", no_argument, NULL, OPT_VERSION },               \
    { "help", no_argument, NULL, 'h' },                          \
    { NULL, 0, NULL, 0 }

int cli_global_option(int opt, const char *arg, struct cli_options *options);
/* What COMMAND's getopt loop does with an option not its own: -h prints
 * its help and exits 0; getopt's '?' and a bad global option are said
 * (returns -1: a usage error); a global option is taken (returns 0). */
int cli_command_option(const char *command, int opt, const char *arg,
                       struct cli_options *options);
/* What the global options say together; 0 or CLI_EXIT_USAGE. */
int cli_options_check(const struct cli_options *options);
/* The usage error of a command: the message, then a pointer to -h. */
int cli_usage_error(const char *command, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* After getopt's own message: the pointer to -h. Returns CLI_EXIT_USAGE. */
int cli_usage_hint(const char *command);
/* "dosomething: " then the message, on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* help.c: the -h texts, the same words as dosomething(1). command NULL:
 * the overview. Returns 0, or -1 if there is no such command. */
int help_print(const char *command, FILE *out);

/* util.c */
int64_t clock_now_ms(void);
/* LEN bytes at TEXT on OUT as a terminal shows them: a control character
 * (C0, DEL, C1) or a byte that is no part of valid UTF-8 is written as
 * \xHH. For whatever the output quotes that the user or the server wrote
 * (messages, ids, errors, rejections' reasons). Returns the columns
 * written (a character one: wide characters are not told apart). */
size_t cli_put_shown(FILE *out, const char *text, size_t len);
/* A whole file, NUL-terminated; NULL after an error message. */
char *read_text_file(const char *path, size_t max);
/* COMMAND's --state NAME: added to the N STATES (room for every state)
 * unless there already. Returns 0, or CLI_EXIT_USAGE after saying why. */
int cli_state_option(const char *command, const char *name, wire_state_value *states,
                     size_t *n);

/* parse.c: no messages, the caller says what was wrong. */
/* "30s", "500ms", "5m", "1h", "0" -> ms. Returns 0, -1 if malformed, or -2
 * if more than INT64_MAX / 2 ms (room to add it to a clock). */
int parse_duration_ms(const char *text, int64_t *ms);
/* A decimal uint64_t, the whole string. Returns 0 or -1. */
int parse_u64(const char *text, uint64_t *value);
/* "SUCCEEDED", ...; a state this client does not know as its number. */
void cli_state_name(int state, char *out, size_t size);
/* QUEUED ... CANCELLED, any case. Returns 0, or -1 if NAME is none. */
int cli_parse_state(const char *name, wire_state_value *out);

#endif
