/*
 * dosomething: the global options, then one command.
 */
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/rpc.h"
#include "core/utf8.h"

static const struct {
    const char *name;
    int (*main)(int argc, char **argv, struct cli_options *options);
} commands[] = {
    { "submit", submit_main },
    { "watch", watch_main },
    { "health", health_main },
    { "get", get_main },
    { "list", list_main },
    { "cancel", cancel_main },
    { "retry", retry_main },
};

static void
say(const char *fmt, va_list ap)
{
    char buf[8192];
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    fputs("dosomething: ", stderr);
    if (n > 0)
        cli_put_shown(stderr, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
    fputc('\n', stderr);
}

void
cli_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
}

int
cli_usage_hint(const char *command)
{
    fprintf(stderr, "Try 'dosomething %s%s-h'.\n", command ? command : "", command ? " " : "");
    return CLI_EXIT_USAGE;
}

int
cli_usage_error(const char *command, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
    return cli_usage_hint(command);
}

int
cli_global_option(int opt, const char *arg, struct cli_options *o)
{
    switch (opt) {
    case OPT_TARGET:
        if (arg[0] == '\0')
            return cli_usage_error(NULL, "--target must not be empty");
        o->target = arg;
        return 0;
    case OPT_TLS:
        o->tls = 1;
        return 0;
    case OPT_CA:
        o->ca_file = arg;
        o->tls = 1;
        return 0;
    case OPT_CERT:
        o->cert_file = arg;
        o->tls = 1;
        return 0;
    case OPT_KEY:
        o->key_file = arg;
        o->tls = 1;
        return 0;
    case OPT_TIMEOUT: {
        int rc = parse_duration_ms(arg, &o->timeout_ms);
        if (rc == -2)
            return cli_usage_error(NULL, "--timeout \"%s\" is too long (0 for none)", arg);
        if (rc != 0)
            return cli_usage_error(NULL, "--timeout takes a duration such as 500ms, 30s, 5m "
                                   "or 1h (0: none), not \"%s\"", arg);
        return 0;
    }
    case OPT_VERSION:
        printf("dosomething %s\n", DS_VERSION);
        exit(CLI_EXIT_OK);
    default:
        return cli_usage_hint(NULL);
    }
}

int
cli_command_option(const char *command, int opt, const char *arg, struct cli_options *o)
{
    switch (opt) {
    case 'h':
        help_print(command, stdout);
        exit(CLI_EXIT_OK);
    case '?':
        cli_usage_hint(command);
        return -1;
    default:
        return cli_global_option(opt, arg, o) != 0 ? -1 : 0;
    }
}

int
cli_options_check(const struct cli_options *o)
{
    if ((o->cert_file == NULL) != (o->key_file == NULL))
        return cli_usage_error(NULL, "--cert and --key go together");
    return 0;
}

static void
on_signal(int sig)
{
    rpc_interrupted = 1;
}

/* SIGINT/SIGTERM end what runs, cleanly; a second one kills (SA_RESETHAND). */
static void
signals_init(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* A closed stdout is an error to report, not a reason to die silently. */
    signal(SIGPIPE, SIG_IGN);
}

int
main(int argc, char **argv)
{
    static const struct option options[] = { CLI_GLOBAL_LONG_OPTIONS };
    struct cli_options o = { .target = getenv("DOSOMETHING_TARGET"), .timeout_ms = -1 };
    int opt;

    if (o.target == NULL || o.target[0] == '\0')
        o.target = CLI_DEFAULT_TARGET;
    /* Global options before the command; "+": stop at the command. */
    while ((opt = getopt_long(argc, argv, "+h", options, NULL)) != -1) {
        if (opt == 'h') {
            help_print(NULL, stdout);
            return CLI_EXIT_OK;
        }
        if (opt == '?')
            return cli_usage_hint(NULL);
        if (cli_global_option(opt, optarg, &o) != 0)
            return CLI_EXIT_USAGE;
    }
    if (optind == argc) {
        help_print(NULL, stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        const char *topic = optind + 1 < argc ? argv[optind + 1] : NULL;
        return help_print(topic, stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(name, commands[i].name) == 0) {
            signals_init();
            return commands[i].main(argc - optind, argv + optind, &o);
        }
    }
    return cli_usage_error(NULL, "unknown command \"%s\" (there are submit, watch, health, "
                           "get, list, cancel, retry and help)", name);
}
