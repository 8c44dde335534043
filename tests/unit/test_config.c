/*
 * Config loader: defaults, every rule of the schema, the FILE:LINE:COL of
 * errors, hostile input, and the -T round trip (print, load, compare).
 * Fixtures are written to a fresh temp directory, removed at the end.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/config.h"

static char tmpdir[256];
static char yaml_path[300];            /* tmpdir/test.yaml: most tests load it */
static char errors[16384];

/* Helpers. */

static void
write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static struct ds_config *
load_bytes(const void *data, size_t len)
{
    write_file(yaml_path, data, len);
    return config_load(yaml_path, errors, sizeof errors);
}

static struct ds_config *
load_string(const char *yaml)
{
    return load_bytes(yaml, strlen(yaml));
}

static struct ds_config *
load_unchecked(const char *yaml)
{
    return config_load_text_unchecked(yaml_path, yaml, strlen(yaml), errors, sizeof errors);
}

static struct ds_config *
load_ok(const char *yaml)
{
    struct ds_config *c = load_string(yaml);

    if (c == NULL)
        fail_msg("unexpected errors:\n%s\nfor:\n%s", errors, yaml);
    return c;
}

static struct ds_config *
load_unchecked_ok(const char *yaml)
{
    struct ds_config *c = load_unchecked(yaml);

    if (c == NULL)
        fail_msg("unexpected errors:\n%s\nfor:\n%s", errors, yaml);
    return c;
}

/* EXPECTED: "LINE:COL: key: reason" lines, each prefixed here with FILE":". */
static void
check_errors(const char *expected)
{
    char want[sizeof errors];
    size_t n = 0;
    const char *line = expected, *nl;

    want[0] = '\0';
    for (;;) {
        nl = strchr(line, '\n');
        n += (size_t)snprintf(want + n, sizeof want - n, "%s%s:%.*s", n > 0 ? "\n" : "",
                              yaml_path, (int)(nl != NULL ? (size_t)(nl - line) : strlen(line)),
                              line);
        if (nl == NULL)
            break;
        line = nl + 1;
    }
    assert_string_equal(errors, want);
}

static void
expect_errors(const char *yaml, const char *expected)
{
    struct ds_config *c = load_string(yaml);

    if (c != NULL)
        fail_msg("loaded, expected errors:\n%s\nfor:\n%s", expected, yaml);
    check_errors(expected);
}

static void
expect_error_containing(const char *yaml, const char *part)
{
    struct ds_config *c = load_string(yaml);

    if (c != NULL)
        fail_msg("loaded, expected an error with \"%s\" for:\n%s", part, yaml);
    if (strstr(errors, part) == NULL)
        fail_msg("errors:\n%s\nlack \"%s\"", errors, part);
    assert_memory_equal(errors, yaml_path, strlen(yaml_path));
}

static size_t
count_lines(const char *s)
{
    size_t n = *s != '\0';

    for (; *s != '\0'; s++)
        n += *s == '\n';
    return n;
}

static char *
tmp_file(const char *name)
{
    static char path[PATH_MAX];

    if (snprintf(path, sizeof path, "%s/%s", tmpdir, name) >= (int)sizeof path)
        fail();
    return path;
}

/* Every field, compared: what the round trip must preserve. */
static void
assert_string_or_null_equal(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

static void
assert_vars_equal(const struct ds_env_var *a, size_t na, const struct ds_env_var *b, size_t nb)
{
    size_t i;

    assert_int_equal(na, nb);
    for (i = 0; i < na; i++) {
        assert_string_equal(a[i].name, b[i].name);
        assert_string_equal(a[i].value, b[i].value);
    }
}

static void
assert_config_equal(const struct ds_config *a, const struct ds_config *b)
{
    size_t i, j;

    assert_string_equal(a->path, b->path);
    assert_string_equal(a->dir, b->dir);
    assert_int_equal(a->daemon, b->daemon);
    assert_string_equal(a->pid_file, b->pid_file);
    assert_string_equal(a->user, b->user);
    assert_int_equal(a->log.level, b->log.level);
    assert_string_equal(a->log.file, b->log.file);
    assert_string_or_null_equal(a->log.access, b->log.access);
    assert_int_equal(a->workers.count, b->workers.count);
    assert_int_equal(a->workers.count_auto, b->workers.count_auto);
    assert_int_equal(a->workers.prefetch, b->workers.prefetch);
    assert_int_equal(a->workers.max_items, b->workers.max_items);
    assert_int_equal(a->workers.cpu_affinity, b->workers.cpu_affinity);
    assert_int_equal(a->workers.nice, b->workers.nice);
    assert_int_equal(a->workers.rlimit_nofile, b->workers.rlimit_nofile);
    assert_int_equal(a->workers.core_dumps, b->workers.core_dumps);
    assert_int_equal(a->grpc.listen_count, b->grpc.listen_count);
    for (i = 0; i < a->grpc.listen_count; i++) {
        assert_string_equal(a->grpc.listen[i], b->grpc.listen[i]);
        assert_int_equal(a->grpc.listen_methods[i], b->grpc.listen_methods[i]);
    }
    assert_int_equal(a->grpc.max_message_size, b->grpc.max_message_size);
    assert_int_equal(a->grpc.tls, b->grpc.tls);
    assert_string_or_null_equal(a->grpc.tls_cert, b->grpc.tls_cert);
    assert_string_or_null_equal(a->grpc.tls_key, b->grpc.tls_key);
    assert_string_or_null_equal(a->grpc.tls_client_ca, b->grpc.tls_client_ca);
    assert_int_equal(a->grpc.max_concurrent_streams, b->grpc.max_concurrent_streams);
    assert_int_equal(a->grpc.max_connection_age_ms, b->grpc.max_connection_age_ms);
    assert_int_equal(a->grpc.max_connection_age_grace_ms, b->grpc.max_connection_age_grace_ms);
    assert_memory_equal(&a->grpc.keepalive, &b->grpc.keepalive, sizeof a->grpc.keepalive);
    assert_int_equal(a->grpc.unix_mode, b->grpc.unix_mode);
    assert_string_or_null_equal(a->grpc.unix_owner, b->grpc.unix_owner);
    assert_int_equal(a->queue.max_params, b->queue.max_params);
    assert_int_equal(a->updates.max_subscribers, b->updates.max_subscribers);
    assert_int_equal(a->queue.capacity, b->queue.capacity);
    assert_int_equal(a->queue.on_full, b->queue.on_full);
    assert_int_equal(a->queue.max_attempts, b->queue.max_attempts);
    assert_string_or_null_equal(a->queue.journal, b->queue.journal);
    assert_int_equal(a->queue.journal_sync, b->queue.journal_sync);
    assert_int_equal(a->queue.journal_sync_interval_ms, b->queue.journal_sync_interval_ms);
    assert_int_equal(a->updates.history, b->updates.history);
    assert_int_equal(a->updates.subscriber_buffer, b->updates.subscriber_buffer);
    assert_string_equal(a->default_handler, b->default_handler);
    assert_int_equal(a->handler_count, b->handler_count);
    for (i = 0; i < a->handler_count; i++) {
        const struct ds_handler_config *x = &a->handlers[i], *y = &b->handlers[i];
        assert_string_equal(x->kind, y->kind);
        assert_int_equal(x->type, y->type);
        assert_int_equal(x->timeout_ms, y->timeout_ms);
        assert_int_equal(x->argc, y->argc);
        for (j = 0; j < x->argc; j++)
            assert_string_equal(x->argv[j], y->argv[j]);
        if (x->argv != NULL)
            assert_null(x->argv[x->argc]);
        assert_vars_equal(x->env, x->env_count, y->env, y->env_count);
        assert_string_or_null_equal(x->module_path, y->module_path);
        assert_vars_equal(x->options, x->option_count, y->options, y->option_count);
    }
    assert_string_or_null_equal(a->status.listen, b->status.listen);
    assert_string_or_null_equal(a->cluster.redis, b->cluster.redis);
    assert_string_equal(a->cluster.name, b->cluster.name);
    assert_int_equal(a->respawn.backoff_min_ms, b->respawn.backoff_min_ms);
    assert_int_equal(a->respawn.backoff_max_ms, b->respawn.backoff_max_ms);
    assert_int_equal(a->respawn.stable_after_ms, b->respawn.stable_after_ms);
    assert_int_equal(a->respawn.crash_limit, b->respawn.crash_limit);
    assert_int_equal(a->shutdown_timeout_ms, b->shutdown_timeout_ms);
}

/* Print C, load the text back (as the same file), compare. */
static void
round_trip(const struct ds_config *c, struct ds_config *(*loader)(const char *, const char *,
                                                                  size_t, char *, size_t))
{
    struct ds_config *back;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    assert_non_null(f);
    assert_int_equal(config_print(c, f), 0);
    assert_int_equal(fclose(f), 0);
    back = loader(c->path, text, len, errors, sizeof errors);
    if (back == NULL)
        fail_msg("printed config does not load:\n%s\n---\n%s", errors, text);
    assert_config_equal(c, back);
    config_free(back);
    free(text);
}

static void
assert_defaults(const struct ds_config *c)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    char want[PATH_MAX];

    assert_string_equal(c->dir, tmpdir);
    assert_string_equal(c->path, yaml_path);
    assert_int_equal(c->daemon, 0);
    snprintf(want, sizeof want, "%s/dosomething.pid", tmpdir);
    assert_string_equal(c->pid_file, want);
    assert_string_equal(c->user, "");
    assert_int_equal(c->log.level, DS_LOG_INFO);
    assert_string_equal(c->log.file, "stderr");
    assert_null(c->log.access);
    assert_int_equal(c->workers.count, cpus < 1 ? 1 : cpus > 1024 ? 1024 : cpus);
    assert_int_equal(c->workers.count_auto, 1);
    assert_int_equal(c->workers.prefetch, 2);
    assert_int_equal(c->workers.max_items, 0);
    assert_int_equal(c->workers.cpu_affinity, 0);
    assert_int_equal(c->workers.nice, 0);
    assert_int_equal(c->workers.rlimit_nofile, 0);
    assert_int_equal(c->workers.core_dumps, -1);
    assert_int_equal(c->grpc.listen_count, 1);
    assert_string_equal(c->grpc.listen[0], "127.0.0.1:8080");
    assert_int_equal(c->grpc.max_message_size, 4 << 20);
    assert_int_equal(c->grpc.tls, 0);
    assert_null(c->grpc.tls_cert);
    assert_int_equal(c->grpc.max_concurrent_streams, 100);
    assert_int_equal(c->grpc.max_connection_age_ms, 0);
    assert_int_equal(c->grpc.keepalive.time_ms, 120000);
    assert_int_equal(c->grpc.keepalive.timeout_ms, 20000);
    assert_int_equal(c->grpc.keepalive.min_ping_interval_ms, 10000);
    assert_int_equal(c->grpc.keepalive.permit_without_calls, 1);
    assert_int_equal(c->grpc.unix_mode, -1);
    assert_null(c->grpc.unix_owner);
    assert_int_equal(c->queue.capacity, 10000);
    assert_int_equal(c->queue.max_params, 64);
    assert_int_equal(c->updates.max_subscribers, 1000);
    assert_int_equal(c->queue.on_full, DS_ON_FULL_BLOCK);
    assert_int_equal(c->queue.max_attempts, 3);
    assert_null(c->queue.journal);
    assert_int_equal(c->queue.journal_sync, DS_JOURNAL_SYNC_INTERVAL);
    assert_int_equal(c->queue.journal_sync_interval_ms, 50);
    assert_int_equal(c->updates.history, 65536);
    assert_int_equal(c->updates.subscriber_buffer, 1000000);
    assert_string_equal(c->default_handler, "echo");
    assert_int_equal(c->handler_count, 3);
    assert_string_equal(c->handlers[0].kind, "echo");
    assert_int_equal(c->handlers[0].type, DS_HANDLER_ECHO);
    assert_int_equal(c->handlers[0].timeout_ms, 0);
    assert_string_equal(c->handlers[1].kind, "sha256");
    assert_int_equal(c->handlers[1].type, DS_HANDLER_SHA256);
    assert_int_equal(c->handlers[1].timeout_ms, 30000);
    assert_string_equal(c->handlers[2].kind, "sleep");
    assert_int_equal(c->handlers[2].type, DS_HANDLER_SLEEP);
    assert_int_equal(c->handlers[2].timeout_ms, 0);
    assert_null(c->status.listen);
    assert_null(c->cluster.redis);
    assert_string_equal(c->cluster.name, "dosomething");
    assert_int_equal(c->respawn.backoff_min_ms, 100);
    assert_int_equal(c->respawn.backoff_max_ms, 10000);
    assert_int_equal(c->respawn.stable_after_ms, 10000);
    assert_int_equal(c->respawn.crash_limit, 10);
    assert_int_equal(c->shutdown_timeout_ms, 30000);
}

/* Deterministic bytes on every libc. */
static uint32_t
next_random(uint32_t *state)
{
    *state = *state * 1103515245u + 12345u;
    return *state >> 16;
}

/* Defaults and the repo's config. */

/* The largest units the docs write their ranges in: TiB and d (days). */
static void
test_tib_and_days(void **state)
{
    (void)state;
    struct ds_config *c = load_ok("updates: {history_bytes: 1TiB}\n"
                                  "handlers:\n  echo: {builtin: echo, timeout: 2d}\n");
    assert_int_equal(c->updates.history_bytes, 1ull << 40);
    assert_int_equal(config_handler(c, "echo")->timeout_ms, 2ull * 24 * 3600 * 1000);
    config_free(c);
    c = load_ok("updates: {history_bytes: 1024GiB}\n");
    assert_int_equal(c->updates.history_bytes, 1ull << 40);
    config_free(c);
    expect_errors("updates: {history_bytes: 1PiB}\n",
                  "1:26: updates.history_bytes: must be a size in bytes or with KiB, MiB, GiB or "
                  "TiB, got 1PiB");
}

static void
test_defaults_empty_file(void **state)
{
    struct ds_config *c = load_ok("");

    assert_defaults(c);
    assert_int_equal(c->source_len, 0);
    config_free(c);
}

static void
test_defaults_comments_only(void **state)
{
    const char *text = "# nothing here\n\n   # still nothing\n";
    struct ds_config *c = load_ok(text);

    assert_defaults(c);
    assert_int_equal(c->source_len, strlen(text));
    assert_memory_equal(c->source, text, strlen(text));
    config_free(c);
}

static void
test_defaults_document_marker_only(void **state)
{
    struct ds_config *c = load_ok("---\n");

    assert_defaults(c);
    config_free(c);
    c = load_ok("---\n...\n");
    assert_defaults(c);
    config_free(c);
}

static void
test_defaults_empty_sections(void **state)
{
    struct ds_config *c = load_ok("log:\nworkers: {}\nhandlers:\nstatus:\n");

    assert_defaults(c);
    config_free(c);
}

static void
test_repo_config_loads(void **state)
{
    char cwd[PATH_MAX], want[PATH_MAX + 64];
    struct ds_config *c = config_load("conf/dosomething.yaml", errors, sizeof errors);

    if (c == NULL)
        fail_msg("conf/dosomething.yaml: %s", errors);
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(want, sizeof want, "%s/conf/dosomething.yaml", cwd);
    assert_string_equal(c->path, want);
    snprintf(want, sizeof want, "%s/conf/dosomething.pid", cwd);
    assert_string_equal(c->pid_file, want);
    assert_int_equal(c->workers.count_auto, 1);
    assert_string_equal(c->default_handler, "echo");
    assert_int_equal(c->handler_count, 3);
    assert_int_equal(config_handler(c, "sha256")->timeout_ms, 30000);
    assert_int_equal(c->grpc.max_message_size, 4 << 20);
    assert_null(c->status.listen);
    round_trip(c, config_load_text);
    config_free(c);
}

static void
test_load_text(void **state)
{
    const char *text = "daemon: on\n";
    struct ds_config *c = config_load_text("/nonexistent/dir/x.yaml", text, strlen(text),
                                           errors, sizeof errors);

    assert_non_null(c);
    assert_string_equal(c->path, "/nonexistent/dir/x.yaml");
    assert_string_equal(c->dir, "/nonexistent/dir");
    assert_string_equal(c->pid_file, "/nonexistent/dir/dosomething.pid");
    assert_int_equal(c->daemon, 1);
    assert_string_equal(c->source, text);
    config_free(c);

    /* A relative name is made absolute against the current directory. */
    c = config_load_text("conf/other.yaml", "", 0, errors, sizeof errors);
    assert_non_null(c);
    assert_int_equal(c->path[0], '/');
    assert_non_null(strstr(c->path, "/conf/other.yaml"));
    config_free(c);
}

static void
test_listen_methods(void **state)
{
    const char *text = "grpc:\n  listen:\n    - \"127.0.0.1:1\"\n"
                       "    - {address: \"127.0.0.1:2\", methods: [retry, getUpdates]}\n"
                       "    - {address: \"127.0.0.1:3\"}\n";
    struct ds_config *c = config_load_text("/x/ds.yaml", text, strlen(text), errors,
                                           sizeof errors);

    assert_non_null(c);
    assert_int_equal(c->grpc.listen_count, 3);
    assert_string_equal(c->grpc.listen[1], "127.0.0.1:2");
    assert_int_equal(c->grpc.listen_methods[0], DS_METHODS_ALL);
    assert_int_equal(c->grpc.listen_methods[1], DS_METHOD_RETRY | DS_METHOD_GET_UPDATES);
    assert_int_equal(c->grpc.listen_methods[2], DS_METHODS_ALL);
    config_free(c);
    assert_string_equal(config_method_name(0), "doSomething");
    assert_string_equal(config_method_name(DS_METHOD_COUNT - 1), "retry");

    expect_error_containing("grpc:\n  listen: [{address: \"127.0.0.1:2\", methods: [nope]}]\n",
                            "grpc.listen[0].methods[0]: unknown method \"nope\"");
    expect_error_containing("grpc:\n  listen: [{address: \"127.0.0.1:2\", methods: []}]\n",
                            "grpc.listen[0].methods: must name at least one method");
    expect_error_containing("grpc:\n  listen: [{address: \"127.0.0.1:2\", "
                            "methods: [cancel, cancel]}]\n",
                            "grpc.listen[0].methods[1]: duplicate method cancel");
    expect_error_containing("grpc:\n  listen: [\"127.0.0.1:1\", {methods: [cancel]}]\n",
                            "grpc.listen[1]: a listen entry written as a mapping needs an address");
    expect_error_containing("grpc:\n  listen: [{address: \"127.0.0.1:2\", x: 1}]\n",
                            "grpc.listen[0].x: unknown key \"x\"");
    expect_error_containing("grpc:\n  listen: [{address: \"127.0.0.1:2\", address: "
                            "\"127.0.0.1:3\"}]\n", "grpc.listen[0].address: duplicate key");
    expect_error_containing("grpc:\n  listen: [\"127.0.0.1:2\", {address: \"127.0.0.1:2\", "
                            "methods: [cancel]}]\n", "grpc.listen[1]: duplicate address");
}

/* handlers.<kind>.retry_exit_codes: [75] by default, a set of 1..255, []
 * for none; exec only; each bad entry named by its index. */
static void
test_retry_exit_codes(void **state)
{
    const char *text = "handlers:\n  default: a\n  a: {exec: [x]}\n"
                       "  b: {exec: [x], retry_exit_codes: []}\n"
                       "  c: {exec: [x], retry_exit_codes: [1, 255, 3]}\n"
                       "  s: {builtin: sleep}\n";
    struct ds_config *c = config_load_text("/x/ds.yaml", text, strlen(text), errors,
                                           sizeof errors);

    assert_non_null(c);
    const struct ds_handler_config *a = config_handler(c, "a"), *b = config_handler(c, "b"),
                                   *cc = config_handler(c, "c"), *s = config_handler(c, "s");
    for (int st = -1; st <= 256; st++) {
        assert_int_equal(config_retry_exit_code(a, st), st == 75);
        assert_int_equal(config_retry_exit_code(b, st), 0);
        assert_int_equal(config_retry_exit_code(cc, st), st == 1 || st == 3 || st == 255);
    }
    assert_true(config_retry_exit_code(s, 75));     /* the default; only exec looks */
    config_free(c);

    expect_error_containing("handlers:\n  default: a\n  a: {exec: [x], retry_exit_codes: 75}\n",
                            "handlers.a.retry_exit_codes: must be a list of exit statuses "
                            "1..255 such as [75] ([] for none), got a scalar");
    expect_error_containing("handlers:\n  default: a\n  a: {exec: [x], retry_exit_codes: [0]}\n",
                            "handlers.a.retry_exit_codes[0]: must be an exit status 1..255, "
                            "got 0");
    expect_error_containing("handlers:\n  default: a\n"
                            "  a: {exec: [x], retry_exit_codes: [3, 256]}\n",
                            "handlers.a.retry_exit_codes[1]: must be an exit status 1..255, "
                            "got 256");
    expect_error_containing("handlers:\n  default: a\n"
                            "  a: {exec: [x], retry_exit_codes: [99999999999999999999999]}\n",
                            "handlers.a.retry_exit_codes[0]: must be an exit status 1..255");
    expect_error_containing("handlers:\n  default: a\n"
                            "  a: {exec: [x], retry_exit_codes: [75, 75]}\n",
                            "handlers.a.retry_exit_codes[1]: duplicate exit status 75");
    expect_error_containing("handlers:\n  default: a\n"
                            "  a: {exec: [x], retry_exit_codes: [{a: 1}]}\n",
                            "handlers.a.retry_exit_codes[0]: ");
    expect_error_containing("handlers:\n  default: a\n"
                            "  a: {builtin: echo, retry_exit_codes: [75]}\n",
                            "handlers.a.retry_exit_codes: only for exec handlers");
}

static void
test_free_null_and_handler_lookup(void **state)
{
    struct ds_config *c = load_ok("");

    config_free(NULL);
    assert_ptr_equal(config_handler(c, "echo"), &c->handlers[0]);
    assert_ptr_equal(config_handler(c, "sleep"), &c->handlers[2]);
    assert_null(config_handler(c, "nope"));
    assert_null(config_handler(c, ""));
    config_free(c);
}

/* Files. */

static void
test_missing_file(void **state)
{
    char want[PATH_MAX + 64];
    const char *path = tmp_file("missing.yaml");

    assert_null(config_load(path, errors, sizeof errors));
    snprintf(want, sizeof want, "%s: cannot open: %s", path, strerror(ENOENT));
    assert_string_equal(errors, want);
}

static void
test_directory_is_not_a_file(void **state)
{
    char want[PATH_MAX + 64];

    assert_null(config_load(tmpdir, errors, sizeof errors));
    snprintf(want, sizeof want, "%s: cannot read: %s", tmpdir, strerror(EISDIR));
    assert_string_equal(errors, want);
}

/* A FIFO at the config's path blocked open() (and a reload the master)
 * until a writer came: a reload reads only a regular file. */
static void
test_fifo_is_not_a_file(void **state)
{
    char want[PATH_MAX + 96];
    const char *path = tmp_file("fifo.yaml");

    unlink(path);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_null(config_load_for_reload(path, errors, sizeof errors));
    snprintf(want, sizeof want, "%s: cannot read: not a regular file (a FIFO); a reload reads "
             "only a regular file", path);
    assert_string_equal(errors, want);
    assert_null(config_load_for_reload("/dev/null", errors, sizeof errors));
    assert_non_null(strstr(errors, "(a character device)"));
    unlink(path);
}

/* Start and -t read a pipe or a device as before: `cat FILE | dosomethingd
 * -t -c /dev/stdin`, `-c <(...)`, `-c /dev/null` (the defaults). */
static void
test_pipe_and_device_at_start(void **state)
{
    static const char text[] = "workers:\n  count: 3\n";
    char path[64];
    int fds[2];
    struct ds_config *c;

    assert_int_equal(pipe(fds), 0);
    assert_int_equal(write(fds[1], text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fds[1]);
    snprintf(path, sizeof path, "/dev/fd/%d", fds[0]);
    c = config_load(path, errors, sizeof errors);
    assert_non_null(c);
    assert_int_equal(c->workers.count, 3);
    config_free(c);
    close(fds[0]);

    c = config_load("/dev/null", errors, sizeof errors);
    assert_non_null(c);
    assert_true(c->empty);
    config_free(c);
}

static void
test_file_size_limit(void **state)
{
    size_t size = 1024 * 1024;
    char *big = malloc(size + 1);
    struct ds_config *c;

    assert_non_null(big);
    /* Exactly 1 MiB loads: one long comment line. */
    memset(big, 'x', size);
    big[0] = '#';
    big[size - 1] = '\n';
    c = load_bytes(big, size);
    assert_non_null(c);
    config_free(c);

    big[size - 1] = 'x';
    big[size] = '\n';
    assert_null(load_bytes(big, size + 1));
    check_errors(" too large (more than 1 MiB)");
    assert_null(config_load_text(yaml_path, big, size + 1, errors, sizeof errors));
    check_errors(" too large (more than 1 MiB)");
    free(big);
}

/* Error reports. */

static void
test_error_position_example(void **state)
{
    expect_errors("daemon: off\n"
                  "log:\n"
                  "  level: info\n"
                  "  file: stderr\n"
                  "  access: off\n"
                  "workers:\n"
                  "  count: 0\n",
                  "7:10: workers.count: must be auto or 1..1024, got 0");
}

static void
test_unknown_key(void **state)
{
    expect_errors("workers:\n  prefetch: 4\n  foo: 1\n", "3:3: workers.foo: unknown key");
    expect_errors("bogus: 1\n", "1:1: bogus: unknown key");
    expect_errors("handlers:\n  echo: {builtin: echo, retries: 2}\n",
                  "2:25: handlers.echo.retries: unknown key");
    expect_errors("respawn:\n  backoff: 1s\n", "2:3: respawn.backoff: unknown key");
}

static void
test_duplicate_key(void **state)
{
    expect_errors("daemon: on\ndaemon: off\n", "2:1: daemon: duplicate key (first at line 1)");
    expect_errors("queue:\n  capacity: 5\n  on_full: block\n  capacity: 6\n",
                  "4:3: queue.capacity: duplicate key (first at line 2)");
    expect_errors("handlers:\n  echo: {builtin: echo}\n  echo: {builtin: sleep}\n",
                  "3:3: handlers.echo: duplicate key (first at line 2)");
    expect_errors("handlers:\n  x: {exec: [a], env: {A: 1, A: 2}}\n  default: x\n",
                  "2:30: handlers.x.env.A: duplicate key (first at line 2)");
}

static void
test_wrong_types(void **state)
{
    expect_errors("log: info\n", "1:6: log: must be a mapping, got a scalar");
    expect_errors("pid_file: [a, b]\n", "1:11: pid_file: must be a scalar, got a list");
    expect_errors("workers:\n  count: {n: 2}\n", "2:10: workers.count: must be a scalar, got a mapping");
    expect_errors("daemon:\n", "1:8: daemon: missing value");
    expect_errors("daemon: maybe\n", "1:9: daemon: must be on or off, got maybe");
    expect_errors("grpc:\n  listen: {a: b}\n",
                  "2:11: grpc.listen: must be an address or a list of addresses, got a mapping");
    expect_errors("handlers: [echo]\n",
                  "1:11: handlers: must be a mapping of kinds to handlers, got a list");
    expect_errors("handlers:\n  x: echo\n  default: x\n",
                  "2:6: handlers.x: must be a mapping such as {builtin: echo}, got a scalar");
    expect_errors("status: on\n", "1:9: status: must be off or a mapping, got a scalar");
    expect_errors("cluster: [a]\n",
                  "1:10: cluster: must be off or a mapping {redis: URL, name: NAME}, got a list");
    expect_errors("grpc:\n  tls: yes\n",
                  "2:8: grpc.tls: must be off or a mapping {cert: PATH, key: PATH}, got a scalar");
    expect_errors("? [a]\n: b\n", "1:3: keys must be scalars, got a list");
    expect_errors("- a\n", "1:1: the top level must be a mapping, got a list");
    expect_errors("hello\n", "1:1: the top level must be a mapping, got a scalar");
}

static void
test_out_of_range(void **state)
{
    expect_errors("workers:\n  count: 1025\n", "2:10: workers.count: must be auto or 1..1024, got 1025");
    expect_errors("workers:\n  count: -1\n", "2:10: workers.count: must be auto or 1..1024, got -1");
    expect_errors("workers:\n  prefetch: 0\n", "2:13: workers.prefetch: must be an integer 1..1024, got 0");
    expect_errors("workers:\n  nice: -21\n", "2:9: workers.nice: must be an integer -20..19, got -21");
    expect_errors("workers:\n  nice: 20\n", "2:9: workers.nice: must be an integer -20..19, got 20");
    expect_errors("workers:\n  max_items: -1\n",
                  "2:14: workers.max_items: must be an integer >= 0, got -1");
    expect_errors("workers:\n  cpu_affinity: on\n",
                  "2:17: workers.cpu_affinity: must be off or auto, got on");
    expect_errors("log:\n  level: verbose\n",
                  "2:10: log.level: must be error, warn, notice, info or debug, got verbose");
    expect_errors("queue:\n  capacity: 100000001\n",
                  "2:13: queue.capacity: must be an integer 1..100000000, got 100000001");
    expect_errors("queue:\n  max_attempts: 1001\n",
                  "2:17: queue.max_attempts: must be an integer 1..1000, got 1001");
    expect_errors("queue:\n  on_full: drop\n", "2:12: queue.on_full: must be block or reject, got drop");
    expect_errors("updates:\n  history: 0\n", "2:12: updates.history: must be an integer 1..100000000, got 0");
    expect_errors("grpc:\n  max_message_size: 1000\n",
                  "2:21: grpc.max_message_size: must be 1KiB..64MiB, got 1000");
    expect_errors("grpc:\n  max_message_size: 65MiB\n",
                  "2:21: grpc.max_message_size: must be 1KiB..64MiB, got 65MiB");
    expect_errors("handlers:\n  echo: {builtin: echo}\n  max_result_size: 4MiB\n",
                  "3:20: handlers.max_result_size: must be 0..4032KiB, got 4MiB");
    expect_errors("grpc:\n  max_concurrent_streams: 0\n",
                  "2:27: grpc.max_concurrent_streams: must be an integer 1..100000, got 0");
    expect_errors("grpc:\n  max_concurrent_streams: 100001\n",
                  "2:27: grpc.max_concurrent_streams: must be an integer 1..100000, got 100001");
    expect_errors("queue:\n  max_params: 4097\n",
                  "2:15: queue.max_params: must be an integer 0..4096, got 4097");
    expect_errors("queue:\n  max_params: -1\n",
                  "2:15: queue.max_params: must be an integer 0..4096, got -1");
    expect_errors("updates:\n  max_subscribers: 0\n",
                  "2:20: updates.max_subscribers: must be an integer 1..1000000, got 0");
    expect_errors("updates:\n  max_subscribers: 1000001\n",
                  "2:20: updates.max_subscribers: must be an integer 1..1000000, got 1000001");
    expect_errors("shutdown_timeout: 2h\n", "1:19: shutdown_timeout: must be 0s..1h, got 2h");
    expect_errors("respawn:\n  crash_limit: 0\n",
                  "2:16: respawn.crash_limit: must be an integer 1..1000, got 0");
    expect_errors("respawn:\n  backoff_min: 0ms\n", "2:16: respawn.backoff_min: must be 1ms..1h, got 0ms");
    expect_errors("respawn:\n  backoff_min: 5s\n  backoff_max: 1s\n",
                  "3:16: respawn.backoff_max: must be >= respawn.backoff_min (5s), got 1s");
    /* The default maximum (10s) is below this minimum. */
    expect_errors("respawn:\n  backoff_min: 1m\n",
                  "2:16: respawn.backoff_max: must be >= respawn.backoff_min (1m), got 10s");
}

static void
test_bad_size_and_duration_syntax(void **state)
{
    expect_errors("shutdown_timeout: 30\n", "1:19: shutdown_timeout: needs a unit: ms, s, m, h or d, got 30");
    expect_errors("shutdown_timeout: 1.5s\n",
                  "1:19: shutdown_timeout: must be a duration such as 500ms, 30s, 5m, 1h or 7d, got 1.5s");
    expect_errors("handlers:\n  echo: {builtin: echo, timeout: 10w}\n",
                  "2:34: handlers.echo.timeout: must be a duration such as 500ms, 30s, 5m, 1h or 7d, got 10w");
    expect_errors("handlers:\n  echo: {builtin: echo, timeout: 99999999999999h}\n",
                  "2:34: handlers.echo.timeout: too large, got 99999999999999h");
    expect_errors("grpc:\n  max_message_size: 4MB\n",
                  "2:21: grpc.max_message_size: must be a size in bytes or with KiB, MiB, GiB or TiB, got 4MB");
    expect_errors("grpc:\n  max_message_size: 1.5MiB\n",
                  "2:21: grpc.max_message_size: must be a size in bytes or with KiB, MiB, GiB or TiB, got 1.5MiB");
    expect_errors("grpc:\n  max_message_size: 99999999999GiB\n",
                  "2:21: grpc.max_message_size: must be 1KiB..64MiB, got 99999999999GiB");
}

static void
test_all_errors_reported(void **state)
{
    const char *yaml = "workers:\n"
                       "  count: 0\n"
                       "  foo: 1\n"
                       "queue:\n"
                       "  on_full: drop\n";

    expect_errors(yaml, "2:10: workers.count: must be auto or 1..1024, got 0\n"
                        "3:3: workers.foo: unknown key\n"
                        "5:12: queue.on_full: must be block or reject, got drop");
    assert_int_equal(count_lines(errors), 3);
}

static void
test_error_buffer_truncation(void **state)
{
    const char *yaml = "a: 1\nb: 2\nc: 3\n";
    char small[40];
    size_t i;

    memset(small, 'Z', sizeof small);
    write_file(yaml_path, yaml, strlen(yaml));
    assert_null(config_load(yaml_path, small, sizeof small));
    assert_true(memchr(small, '\0', sizeof small) != NULL);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_memory_equal(small, yaml_path, strlen(small) < strlen(yaml_path) ? strlen(small)
                                                                            : strlen(yaml_path));
    /* No buffer at all is allowed too. */
    assert_null(config_load(yaml_path, NULL, 0));
    small[0] = 'Z';
    assert_null(config_load(yaml_path, small, 1));
    assert_int_equal(small[0], '\0');
    for (i = 2; i < sizeof small; i++) {
        memset(small, 'Z', sizeof small);
        assert_null(config_load(yaml_path, small, i));
        assert_int_equal(strlen(small), i - 1);
    }
}

static void
test_syntax_error(void **state)
{
    expect_errors("log:\n  level: [info\n",
                  "3:1: syntax error: did not find expected ',' or ']' "
                  "(while parsing a flow sequence at line 2, column 10)");
    expect_errors("a: b: c\n", "1:5: syntax error: mapping values are not allowed in this context");
    expect_error_containing("log:\n level: info\n  file: x\n", ": syntax error: ");
}

static void
test_control_characters_in_messages(void **state)
{
    /* A key with a newline must not start a line of its own. */
    assert_null(load_string("\"a\\nb\": 1\n"));
    check_errors("1:1: a?b: unknown key");
}

/* Hostile input. */

static void
test_deep_nesting(void **state)
{
    char text[2100];
    size_t i;

    for (i = 0; i < 1000; i++) {
        text[i] = '[';
        text[1000 + i] = ']';
    }
    text[2000] = '\0';
    expect_errors(text, "1:33: nesting too deep (more than 32 levels)");

    /* 32 levels are fine (then the key is unknown); 33 are not. */
    strcpy(text, "x: ");
    for (i = 0; i < 31; i++)
        strcat(text, "[");
    for (i = 0; i < 31; i++)
        strcat(text, "]");
    expect_errors(text, "1:1: x: unknown key");
    strcpy(text, "x: ");
    for (i = 0; i < 32; i++)
        strcat(text, "[");
    for (i = 0; i < 32; i++)
        strcat(text, "]");
    expect_errors(text, "1:35: nesting too deep (more than 32 levels)");

    /* Block mappings nest too. */
    text[0] = '\0';
    for (i = 0; i < 40; i++) {
        size_t len = strlen(text);
        snprintf(text + len, sizeof text - len, "%*sk:\n", (int)i, "");
    }
    expect_error_containing(text, "nesting too deep");
}

static void
test_long_scalar(void **state)
{
    size_t size = 200 * 1024;
    char *text = malloc(size + 16);

    assert_non_null(text);
    memcpy(text, "user: ", 6);
    memset(text + 6, 'a', size);
    strcpy(text + 6 + size, "\n");
    expect_errors(text, "1:7: value too long (more than 64 KiB)");
    free(text);
}

static void
test_billion_laughs(void **state)
{
    expect_error_containing("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
                            "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                            "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                            "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                            "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
                            "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
                            "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
                            "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
                            "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n",
                            "anchors and aliases are not supported");
    assert_int_equal(count_lines(errors), 1);
    expect_errors("workers: &w {count: 2}\nlog: *w\n", "1:10: anchors and aliases are not supported");
    expect_errors("log: *w\n", "1:6: anchors and aliases are not supported");
}

static void
test_random_binary(void **state)
{
    unsigned char bytes[4096];
    uint32_t seed = 20240601;
    size_t i;
    int round;

    for (round = 0; round < 8; round++) {
        for (i = 0; i < sizeof bytes; i++)
            bytes[i] = (unsigned char)next_random(&seed);
        assert_null(load_bytes(bytes, sizeof bytes));
        assert_memory_equal(errors, yaml_path, strlen(yaml_path));
        assert_int_equal(count_lines(errors), 1);
    }
}

static void
test_nul_byte(void **state)
{
    static const char text[] = "daemon: off\n\0\n";

    assert_null(load_bytes(text, sizeof text - 1));
    check_errors("2:1: syntax error: control characters are not allowed (#x0)");
    expect_errors("user: \"a\\0b\"\n", "1:7: a value contains a NUL character");
}

static void
test_multiple_documents(void **state)
{
    expect_errors("daemon: on\n---\ndaemon: off\n", "2:1: multiple documents are not supported");
}

static void
test_tags_refused(void **state)
{
    expect_errors("user: !!str x\n", "1:7: tags are not supported");
}

static void
test_not_utf8(void **state)
{
    static const char utf16[] = "\xff\xfe" "d\0a\0:\0 \0" "1\0\n\0";

    assert_null(load_bytes(utf16, sizeof utf16 - 1));
    check_errors("1:1: syntax error: invalid leading UTF-8 octet (#xFF)");
}

/* Numbers, sizes, durations. */

static void
test_parse_size_table(void **state)
{
    static const struct {
        const char *text;
        uint64_t bytes;
    } good[] = {
        { "0", 0 },
        { "1", 1 },
        { "1024", 1024 },
        { "1KiB", 1024 },
        { "4MiB", 4 << 20 },
        { "16 MiB", 16 << 20 },
        { "1GiB", 1 << 30 },
        { "1536KiB", 1536 * 1024 },
        { "18446744073709551615", UINT64_MAX },
        { "17179869183GiB", 17179869183ull << 30 },
    };
    static const char *const bad[] = {
        "", "-1", "+1", "1.5MiB", "1K", "1M", "1G", "1kib", "4MB", "4 MB", "MiB", " 1",
        "1KiB ", "0x10", "1e3", "18446744073709551616", "17179869184GiB", "1 KiB B", "1,024",
    };
    uint64_t v;
    size_t i;

    for (i = 0; i < sizeof good / sizeof good[0]; i++) {
        v = 42;
        if (config_parse_size(good[i].text, &v) != 0)
            fail_msg("config_parse_size(\"%s\") failed", good[i].text);
        assert_int_equal(v, good[i].bytes);
    }
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (config_parse_size(bad[i], &v) != -1)
            fail_msg("config_parse_size(\"%s\") accepted", bad[i]);
}

static void
test_parse_duration_table(void **state)
{
    static const struct {
        const char *text;
        uint64_t ms;
    } good[] = {
        { "0s", 0 },
        { "0ms", 0 },
        { "1ms", 1 },
        { "50ms", 50 },
        { "30s", 30000 },
        { "5m", 300000 },
        { "1h", 3600000 },
        { "2 s", 2000 },
        { "1500ms", 1500 },
        { "5124095576030h", 5124095576030ull * 3600000 },
        { "1d", 86400000 },
        { "365d", 365ull * 86400000 },
    };
    static const char *const bad[] = {
        "", "30", "0", "1.5s", "-1s", "+1s", "1w", "1D", "ms", "s", "1S", "1 sec", "1s ", " 1s",
        "1h30m", "5124095576031h", "99999999999999999999ms", "1e3ms",
    };
    uint64_t v;
    size_t i;

    for (i = 0; i < sizeof good / sizeof good[0]; i++) {
        v = 42;
        if (config_parse_duration_ms(good[i].text, &v) != 0)
            fail_msg("config_parse_duration_ms(\"%s\") failed", good[i].text);
        assert_int_equal(v, good[i].ms);
    }
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (config_parse_duration_ms(bad[i], &v) != -1)
            fail_msg("config_parse_duration_ms(\"%s\") accepted", bad[i]);
}

/* The schema. */

static void
test_scalar_keys(void **state)
{
    struct ds_config *c = load_ok("daemon: yes\n"
                                  "log: {level: debug}\n"
                                  "workers:\n"
                                  "  count: 7\n"
                                  "  prefetch: 1024\n"
                                  "  max_items: 18446744073709551615\n"
                                  "  nice: -20\n"
                                  "  cpu_affinity: off\n"
                                  "  rlimit_nofile: 0\n"
                                  "  core_dumps: inherit\n"
                                  "grpc: {max_message_size: 1KiB}\n"
                                  "queue:\n"
                                  "  capacity: 100000000\n"
                                  "  on_full: reject\n"
                                  "  max_attempts: 1\n"
                                  "updates: {history: 1, subscriber_buffer: 100000000}\n"
                                  "respawn:\n"
                                  "  backoff_min: 1ms\n"
                                  "  backoff_max: 1h\n"
                                  "  stable_after: 90s\n"
                                  "  crash_limit: 1000\n"
                                  "shutdown_timeout: 0s\n");

    assert_int_equal(c->daemon, 1);
    assert_int_equal(c->log.level, DS_LOG_DEBUG);
    assert_int_equal(c->workers.count, 7);
    assert_int_equal(c->workers.count_auto, 0);
    assert_int_equal(c->workers.prefetch, 1024);
    assert_int_equal(c->workers.max_items, UINT64_MAX);
    assert_int_equal(c->workers.nice, -20);
    assert_int_equal(c->workers.core_dumps, -1);
    assert_int_equal(c->grpc.max_message_size, 1024);
    assert_int_equal(c->queue.capacity, 100000000);
    assert_int_equal(c->queue.on_full, DS_ON_FULL_REJECT);
    assert_int_equal(c->queue.max_attempts, 1);
    assert_int_equal(c->updates.history, 1);
    assert_int_equal(c->updates.subscriber_buffer, 100000000);
    assert_int_equal(c->respawn.backoff_min_ms, 1);
    assert_int_equal(c->respawn.backoff_max_ms, 3600000);
    assert_int_equal(c->respawn.stable_after_ms, 90000);
    assert_int_equal(c->respawn.crash_limit, 1000);
    assert_int_equal(c->shutdown_timeout_ms, 0);
    config_free(c);
}

static void
test_booleans(void **state)
{
    static const char *const yes[] = { "on", "true", "yes", "On", "TRUE", "\"yes\"" };
    static const char *const no[] = { "off", "false", "no", "OFF", "False", "'no'" };
    char yaml[64];
    struct ds_config *c;
    size_t i;

    for (i = 0; i < 6; i++) {
        snprintf(yaml, sizeof yaml, "daemon: %s\n", yes[i]);
        c = load_ok(yaml);
        assert_int_equal(c->daemon, 1);
        config_free(c);
        snprintf(yaml, sizeof yaml, "daemon: %s\n", no[i]);
        c = load_ok(yaml);
        assert_int_equal(c->daemon, 0);
        config_free(c);
    }
    expect_errors("daemon: 1\n", "1:9: daemon: must be on or off, got 1");
}

static void
test_workers_count_auto(void **state)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    struct ds_config *c = load_ok("workers: {count: auto}\n");

    assert_int_equal(c->workers.count_auto, 1);
    assert_int_equal(c->workers.count, cpus > 1024 ? 1024 : cpus);
    config_free(c);
}

static void
test_relative_paths(void **state)
{
    char want[PATH_MAX + 64];
    struct ds_config *c;

    c = load_ok("pid_file: run/ds.pid\nlog: {file: ./logs/ds.log}\n");
    snprintf(want, sizeof want, "%s/run/ds.pid", tmpdir);
    assert_string_equal(c->pid_file, want);
    snprintf(want, sizeof want, "%s/logs/ds.log", tmpdir);
    assert_string_equal(c->log.file, want);
    config_free(c);

    c = load_ok("pid_file: /var/run/ds.pid\nlog: {file: stderr}\n");
    assert_string_equal(c->pid_file, "/var/run/ds.pid");
    assert_string_equal(c->log.file, "stderr");
    config_free(c);

    c = load_unchecked_ok("log: {access: access.log}\nqueue: {journal: journal}\n"
                          "grpc:\n  tls: {cert: tls/c.pem, key: /k.pem, client_ca: ca.pem}\n");
    snprintf(want, sizeof want, "%s/access.log", tmpdir);
    assert_string_equal(c->log.access, want);
    snprintf(want, sizeof want, "%s/journal", tmpdir);
    assert_string_equal(c->queue.journal, want);
    snprintf(want, sizeof want, "%s/tls/c.pem", tmpdir);
    assert_string_equal(c->grpc.tls_cert, want);
    assert_string_equal(c->grpc.tls_key, "/k.pem");
    snprintf(want, sizeof want, "%s/ca.pem", tmpdir);
    assert_string_equal(c->grpc.tls_client_ca, want);
    config_free(c);

    expect_errors("pid_file: \"\"\n", "1:11: pid_file: must be a path, got an empty string");
}

static void
test_grpc_listen(void **state)
{
    char want[PATH_MAX + 64];
    struct ds_config *c;

    c = load_ok("grpc: {listen: \"[::1]:9000\"}\n");
    assert_int_equal(c->grpc.listen_count, 1);
    assert_string_equal(c->grpc.listen[0], "[::1]:9000");
    config_free(c);

    c = load_ok("grpc:\n  listen:\n    - 0.0.0.0:1\n    - localhost:65535\n"
                "    - unix:ds.sock\n    - unix:/run/ds.sock\n    - \"[::]:80\"\n");
    assert_int_equal(c->grpc.listen_count, 5);
    assert_string_equal(c->grpc.listen[0], "0.0.0.0:1");
    assert_string_equal(c->grpc.listen[1], "localhost:65535");
    snprintf(want, sizeof want, "unix:%s/ds.sock", tmpdir);
    assert_string_equal(c->grpc.listen[2], want);
    assert_string_equal(c->grpc.listen[3], "unix:/run/ds.sock");
    assert_string_equal(c->grpc.listen[4], "[::]:80");
    assert_null(c->grpc.listen[5]);
    config_free(c);

    expect_errors("grpc: {listen: \"127.0.0.1:0\"}\n",
                  "1:16: grpc.listen: port must be 1..65535, got 0");
    expect_errors("grpc: {listen: [\"a:1\", \"b:65536\", \"a:1\"]}\n",
                  "1:24: grpc.listen[1]: port must be 1..65535, got 65536\n"
                  "1:35: grpc.listen[2]: duplicate address a:1");
    expect_errors("grpc: {listen: []}\n", "1:16: grpc.listen: must have 1..16 addresses, got 0");
    expect_errors("grpc: {listen: [a:1, a:2, a:3, a:4, a:5, a:6, a:7, a:8, a:9, a:10, a:11,"
                  " a:12, a:13, a:14, a:15, a:16, a:17]}\n",
                  "1:16: grpc.listen: must have 1..16 addresses, got 17");
    expect_errors("grpc: {listen: \"::1:80\"}\n",
                  "1:16: grpc.listen: an IPv6 address needs brackets, as in [::1]:8080, got ::1:80");
    expect_errors("grpc: {listen: localhost}\n",
                  "1:16: grpc.listen: must be host:port, [IPv6]:port or unix:/path, got localhost");
    expect_errors("grpc: {listen: \"[zz]:80\"}\n", "1:16: grpc.listen: not an IPv6 address: zz");
    expect_errors("grpc: {listen: \"[::1]80\"}\n", "1:16: grpc.listen: must be [IPv6]:port, got [::1]80");
    expect_errors("grpc: {listen: \"a b:80\"}\n", "1:16: grpc.listen: bad host in a b:80");
    expect_errors("grpc: {listen: \"unix:\"}\n", "1:16: grpc.listen: unix: needs a socket path");
    expect_error_containing("grpc: {listen: \"unix:/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}\n",
                            "grpc.listen: socket path too long (at most 107 bytes)");
}

static void
test_queue_journal_sync(void **state)
{
    struct ds_config *c;

    c = load_ok("queue: {journal_sync: always}\n");
    assert_int_equal(c->queue.journal_sync, DS_JOURNAL_SYNC_ALWAYS);
    config_free(c);
    c = load_ok("queue: {journal_sync: never}\n");
    assert_int_equal(c->queue.journal_sync, DS_JOURNAL_SYNC_NEVER);
    config_free(c);
    c = load_ok("queue: {journal_sync: 2s}\n");
    assert_int_equal(c->queue.journal_sync, DS_JOURNAL_SYNC_INTERVAL);
    assert_int_equal(c->queue.journal_sync_interval_ms, 2000);
    config_free(c);
    expect_errors("queue: {journal_sync: sometimes}\n",
                  "1:23: queue.journal_sync: must be always, never or a duration such as 50ms, got sometimes");
    expect_errors("queue: {journal_sync: 0ms}\n",
                  "1:23: queue.journal_sync: must be 1ms..1h, got 0ms");
}

static void
test_handlers_replace_defaults(void **state)
{
    struct ds_config *c;

    c = load_ok("handlers:\n  default: fast\n  fast: {builtin: echo}\n  hash: {builtin: sha256}\n");
    assert_int_equal(c->handler_count, 2);
    assert_string_equal(c->default_handler, "fast");
    assert_ptr_equal(config_handler(c, c->default_handler), &c->handlers[0]);
    assert_int_equal(config_handler(c, "hash")->type, DS_HANDLER_SHA256);
    assert_int_equal(config_handler(c, "hash")->timeout_ms, 0);
    assert_null(config_handler(c, "sha256"));
    assert_null(config_handler(c, "echo"));
    config_free(c);

    /* Without `default:`, echo is the default if it is defined. */
    c = load_ok("handlers:\n  echo: {builtin: echo, timeout: 1m}\n  x.y-z_1: {builtin: sleep}\n");
    assert_string_equal(c->default_handler, "echo");
    assert_int_equal(config_handler(c, "echo")->timeout_ms, 60000);
    assert_int_equal(config_handler(c, "x.y-z_1")->type, DS_HANDLER_SLEEP);
    config_free(c);
}

static void
test_handler_errors(void **state)
{
    expect_errors("handlers:\n  x: {builtin: md5}\n  default: x\n",
                  "2:16: handlers.x.builtin: unknown builtin md5 (there are echo, sha256 or sleep)");
    expect_errors("handlers:\n  default: nope\n  echo: {builtin: echo}\n",
                  "2:12: handlers.default: kind nope is not defined in handlers");
    expect_errors("handlers:\n  sleep: {builtin: sleep}\n",
                  "2:3: handlers.default: missing, and there is no kind echo to default to");
    expect_errors("handlers: {}\n",
                  "1:11: handlers.default: missing, and there is no kind echo to default to");
    expect_errors("handlers:\n  echo: {timeout: 1s}\n",
                  "2:9: handlers.echo: needs one of builtin, exec or module");
    expect_errors("handlers:\n  echo: {builtin: echo, module: x.so}\n",
                  "2:33: handlers.echo.module: only one of builtin, exec or module may be given");
    expect_errors("handlers:\n  echo: {builtin: echo, env: {A: b}}\n",
                  "2:30: handlers.echo.env: only for exec handlers");
    expect_errors("handlers:\n  echo: {builtin: echo, options: {a: b}}\n",
                  "2:34: handlers.echo.options: only for module handlers");
    expect_errors("handlers:\n  \"a b\": {builtin: echo}\n  echo: {builtin: echo}\n",
                  "2:3: handlers: a kind name must be 1..64 characters of A-Z a-z 0-9 _ . -, got \"a b\"");
    expect_errors("handlers:\n  default: \"\"\n  echo: {builtin: echo}\n",
                  "2:12: handlers.default: kind  is not defined in handlers");
}

static void
test_handler_kind_limit(void **state)
{
    size_t size = 300 * 40, i, n = 0;
    char *yaml = malloc(size);
    struct ds_config *c;

    assert_non_null(yaml);
    n += (size_t)snprintf(yaml + n, size - n, "handlers:\n  echo: {builtin: echo}\n");
    for (i = 1; i < 256; i++)
        n += (size_t)snprintf(yaml + n, size - n, "  k%zu: {builtin: sleep}\n", i);
    c = load_ok(yaml);
    assert_int_equal(c->handler_count, 256);
    config_free(c);
    n += (size_t)snprintf(yaml + n, size - n, "  k256: {builtin: sleep}\n  k257: {builtin: sleep}\n");
    expect_errors(yaml, "258:3: handlers: more than 256 kinds");
    free(yaml);
}

static void
test_exec_and_module_values(void **state)
{
    char want[PATH_MAX + 64];
    const struct ds_handler_config *h;
    struct ds_config *c;

    c = load_unchecked_ok("handlers:\n"
                          "  default: run\n"
                          "  run:\n"
                          "    exec: [bin/run, -x, \"\"]\n"
                          "    timeout: 5s\n"
                          "    env: {LANG: C, EMPTY: \"\", N: 3}\n"
                          "  cat: {exec: cat}\n"
                          "  abs: {exec: [/bin/true]}\n"
                          "  mod:\n"
                          "    module: lib/mod.so\n"
                          "    options: {rounds: 3, name: x, flag: true}\n");
    assert_string_equal(c->default_handler, "run");
    h = config_handler(c, "run");
    assert_int_equal(h->type, DS_HANDLER_EXEC);
    assert_int_equal(h->timeout_ms, 5000);
    assert_int_equal(h->argc, 3);
    snprintf(want, sizeof want, "%s/bin/run", tmpdir);
    assert_string_equal(h->argv[0], want);
    assert_string_equal(h->argv[1], "-x");
    assert_string_equal(h->argv[2], "");
    assert_null(h->argv[3]);
    assert_int_equal(h->env_count, 3);
    assert_string_equal(h->env[0].name, "LANG");
    assert_string_equal(h->env[0].value, "C");
    assert_string_equal(h->env[1].name, "EMPTY");
    assert_string_equal(h->env[1].value, "");
    assert_string_equal(h->env[2].value, "3");
    h = config_handler(c, "cat");
    assert_int_equal(h->argc, 1);
    assert_string_equal(h->argv[0], "cat");
    assert_null(h->argv[1]);
    assert_string_equal(config_handler(c, "abs")->argv[0], "/bin/true");
    h = config_handler(c, "mod");
    assert_int_equal(h->type, DS_HANDLER_MODULE);
    snprintf(want, sizeof want, "%s/lib/mod.so", tmpdir);
    assert_string_equal(h->module_path, want);
    assert_int_equal(h->option_count, 3);
    assert_string_equal(h->options[0].name, "rounds");
    assert_string_equal(h->options[0].value, "3");
    assert_string_equal(h->options[2].value, "true");
    config_free(c);

    assert_null(load_unchecked("handlers:\n  default: r\n  r: {exec: []}\n"));
    check_errors("3:13: handlers.r.exec: must be a non-empty list [PROGRAM, ARG...]");
    assert_null(load_unchecked("handlers:\n  default: r\n  r: {exec: [\"\", a]}\n"));
    check_errors("3:14: handlers.r.exec[0]: the program must not be empty");
    assert_null(load_unchecked("handlers:\n  default: r\n  r: {exec: [a, [b]]}\n"));
    check_errors("3:17: handlers.r.exec[1]: must be a scalar, got a list");
    assert_null(load_unchecked("handlers:\n  default: r\n  r: {exec: [a], env: {1A: x}}\n"));
    check_errors("3:24: handlers.r.env: not an environment variable name, got \"1A\"");
    assert_null(load_unchecked("handlers:\n  default: r\n  r: {exec: [a], env: {A: [x]}}\n"));
    check_errors("3:27: handlers.r.env.A: must be a scalar, got a list");
}

/* The off forms of optional features, and their values. */
static void
test_optional_features(void **state)
{
    struct ds_config *c;

    c = load_ok("user: \"\"\nlog: {access: off}\nworkers: {cpu_affinity: off, rlimit_nofile: 0,"
                " core_dumps: inherit}\ngrpc: {tls: off}\nqueue: {journal: off}\n"
                "status: {listen: off}\ncluster: off\n");
    config_free(c);
    /* The values themselves parse. */
    c = load_unchecked_ok("user: nobody\n"
                          "workers: {cpu_affinity: auto, rlimit_nofile: 65536, core_dumps: on}\n");
    assert_string_equal(c->user, "nobody");
    assert_int_equal(c->workers.cpu_affinity, 1);
    assert_int_equal(c->workers.rlimit_nofile, 65536);
    assert_int_equal(c->workers.core_dumps, 1);
    config_free(c);
    c = load_unchecked_ok("workers: {core_dumps: off}\n");
    assert_int_equal(c->workers.core_dumps, 0);
    config_free(c);
    c = load_unchecked_ok("queue: {journal: /var/lib/ds, journal_sync: always}\n"
                          "grpc: {tls: {cert: /c.pem, key: /k.pem}}\n");
    assert_string_equal(c->queue.journal, "/var/lib/ds");
    assert_int_equal(c->grpc.tls, 1);
    assert_string_equal(c->grpc.tls_cert, "/c.pem");
    assert_string_equal(c->grpc.tls_key, "/k.pem");
    assert_null(c->grpc.tls_client_ca);
    config_free(c);

    /* With other errors, all are reported. */
    expect_errors("cluster: {redis: \"redis://127.0.0.1:6379\"}\nworkers: {count: 0}\n"
                  "queue: {journal: /j}\n",
                  "2:18: workers.count: must be auto or 1..1024, got 0\n"
                  "1:10: cluster: cannot be used with queue.journal: in cluster mode the queue "
                  "lives in Redis; set one of them off");
}

static void
test_status_and_cluster(void **state)
{
    struct ds_config *c;

    c = load_ok("status: off\ncluster: off\n");
    assert_null(c->status.listen);
    assert_null(c->cluster.redis);
    config_free(c);
    c = load_ok("status: {listen: off}\n");
    assert_null(c->status.listen);
    config_free(c);

    c = load_unchecked_ok("status: {listen: \"127.0.0.1:9090\"}\n"
                          "cluster: {redis: \"redis://10.0.0.1:6379\"}\n");
    assert_string_equal(c->status.listen, "127.0.0.1:9090");
    assert_string_equal(c->cluster.redis, "redis://10.0.0.1:6379");
    assert_string_equal(c->cluster.name, "dosomething");
    config_free(c);
    c = load_unchecked_ok("cluster: {redis: \"redis://r:1\", name: blue}\n");
    assert_string_equal(c->cluster.name, "blue");
    config_free(c);

    assert_null(load_unchecked("status: {listen: \"unix:/x\"}\n"));
    check_errors("1:18: status.listen: must be host:port or [IPv6]:port, got unix:/x");
    assert_null(load_unchecked("cluster: {name: x}\n"));
    check_errors("1:10: cluster: redis is required");
    assert_null(load_unchecked("cluster: {redis: \"http://x:1\"}\n"));
    check_errors("1:18: cluster.redis: must be redis://HOST[:PORT] or "
                 "sentinel://HOST[:PORT],HOST[:PORT]/MASTER, got http://x:1");
    c = load_ok("cluster: {redis: \"redis://[::1]:7000/\", lease: 2s}\n");
    assert_string_equal(c->cluster.host, "::1");
    assert_int_equal(c->cluster.port, 7000);
    assert_int_equal(c->cluster.lease_ms, 2000);
    config_free(c);
    c = load_ok("cluster: {redis: \"redis://redis.internal\"}\n");
    assert_string_equal(c->cluster.host, "redis.internal");
    assert_int_equal(c->cluster.port, 6379);
    assert_int_equal(c->cluster.lease_ms, 10000);
    config_free(c);
    static const char *const bad_urls[] = { "redis://", "redis://:1", "redis://h:0",
                                            "redis://h:65536", "redis://h:1x", "redis://[::1",
                                            "redis://h/3", "redis://[]:1" };
    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
        char yaml[96];
        snprintf(yaml, sizeof yaml, "cluster: {redis: \"%s\"}\n", bad_urls[i]);
        assert_null(load_unchecked(yaml));
        assert_non_null(strstr(errors, "cluster.redis: must be redis://HOST[:PORT]"));
    }
    /* sentinel:// */
    c = load_ok("cluster: {redis: \"sentinel://10.0.0.1:26380,s2,[::1]:7/mymaster\", "
                "min_replicas_ack: 2, replicas_ack_timeout: 250ms}\n");
    assert_int_equal(c->cluster.sentinel_count, 3);
    assert_null(c->cluster.host);
    assert_string_equal(c->cluster.sentinels[0].host, "10.0.0.1");
    assert_int_equal(c->cluster.sentinels[0].port, 26380);
    assert_string_equal(c->cluster.sentinels[1].host, "s2");
    assert_int_equal(c->cluster.sentinels[1].port, 26379);
    assert_string_equal(c->cluster.sentinels[2].host, "::1");
    assert_int_equal(c->cluster.sentinels[2].port, 7);
    assert_string_equal(c->cluster.master_name, "mymaster");
    assert_int_equal(c->cluster.min_replicas_ack, 2);
    assert_int_equal(c->cluster.replicas_ack_timeout_ms, 250);
    config_free(c);
    c = load_ok("cluster: {redis: \"redis://h\"}\n");
    assert_int_equal(c->cluster.sentinel_count, 0);
    assert_int_equal(c->cluster.min_replicas_ack, 0);
    assert_int_equal(c->cluster.replicas_ack_timeout_ms, 1000);
    config_free(c);
    static const struct { const char *url, *error; } bad_sentinels[] = {
        { "sentinel://", "sentinel 1: must be HOST[:PORT]" },
        { "sentinel:///m", "sentinel 1: must be HOST[:PORT]" },
        { "sentinel://h:0/m", "sentinel 1: must be HOST[:PORT] with a port 1..65535" },
        { "sentinel://h:1,h:65536/m", "sentinel 2: must be HOST[:PORT]" },
        { "sentinel://h:1,/m", "sentinel 2: must be HOST[:PORT]" },
        { "sentinel://h:1", "sentinel 1: must be HOST[:PORT]" },
        { "sentinel://h:1/", "the master's name after the last / must be 1..64 characters" },
        { "sentinel://h:1/a b", "the master's name after the last / must be" },
        { "sentinel://h:1/m/x", "the master's name after the last / must be" },
        { "sentinel://a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q/m", "names more than 16 sentinels" },
    };
    for (size_t i = 0; i < sizeof bad_sentinels / sizeof bad_sentinels[0]; i++) {
        char yaml[128];
        snprintf(yaml, sizeof yaml, "cluster: {redis: \"%s\"}\n", bad_sentinels[i].url);
        assert_null(load_unchecked(yaml));
        if (strstr(errors, bad_sentinels[i].error) == NULL || strstr(errors, "1:18: ") == NULL)
            fail_msg("%s: got %s", bad_sentinels[i].url, errors);
    }
    assert_null(load_unchecked("cluster: {redis: \"redis://h\", min_replicas_ack: 65}\n"));
    assert_non_null(strstr(errors, "cluster.min_replicas_ack"));
    assert_null(load_unchecked("cluster: {redis: \"redis://h\", replicas_ack_timeout: 0s}\n"));
    assert_non_null(strstr(errors, "cluster.replicas_ack_timeout"));
    assert_null(load_unchecked("cluster: {redis: \"redis://h\", lease: 10ms}\n"));
    assert_non_null(strstr(errors, "cluster.lease"));
    assert_null(load_unchecked("queue: {journal: /tmp/j}\ncluster: {redis: \"redis://h\"}\n"));
    check_errors("2:10: cluster: cannot be used with queue.journal: in cluster mode the queue "
                 "lives in Redis; set one of them off");
    assert_null(load_unchecked("grpc:\n  tls: {cert: c.pem}\n"));
    check_errors("2:8: grpc.tls: key is required");
}


/* grpc.max_concurrent_streams, unix_mode, unix_owner; queue.max_params;
 * updates.max_subscribers. */
static void
test_limits_and_unix_sockets(void **state)
{
    struct ds_config *c;

    c = load_ok("grpc:\n"
                "  max_concurrent_streams: 100000\n"
                "  unix_mode: \"0660\"\n"
                "  unix_owner: root:root\n"
                "queue: {max_params: 0}\n"
                "updates: {max_subscribers: 1000000}\n");
    assert_int_equal(c->grpc.max_concurrent_streams, 100000);
    assert_int_equal(c->grpc.unix_mode, 0660);
    assert_string_equal(c->grpc.unix_owner, "root:root");
    assert_int_equal(c->queue.max_params, 0);
    assert_int_equal(c->updates.max_subscribers, 1000000);
    round_trip(c, config_load_text);
    config_free(c);

    c = load_ok("grpc: {max_concurrent_streams: 1, unix_mode: 600, unix_owner: root}\n"
                "queue: {max_params: 4096}\nupdates: {max_subscribers: 1}\n");
    assert_int_equal(c->grpc.max_concurrent_streams, 1);
    assert_int_equal(c->grpc.unix_mode, 0600);
    assert_string_equal(c->grpc.unix_owner, "root");
    assert_int_equal(c->queue.max_params, 4096);
    assert_int_equal(c->updates.max_subscribers, 1);
    round_trip(c, config_load_text);
    config_free(c);

    c = load_ok("grpc: {unix_mode: \"0000\", unix_owner: off}\n");
    assert_int_equal(c->grpc.unix_mode, 0);
    assert_null(c->grpc.unix_owner);
    round_trip(c, config_load_text);
    config_free(c);

    c = load_ok("grpc: {unix_mode: off}\n");
    assert_int_equal(c->grpc.unix_mode, -1);
    config_free(c);

    expect_errors("grpc:\n  unix_mode: \"0999\"\n",
                  "2:14: grpc.unix_mode: must be off or an octal mode 0000..0777 such as 0660, "
                  "got 0999");
    expect_errors("grpc:\n  unix_mode: \"01777\"\n",
                  "2:14: grpc.unix_mode: must be off or an octal mode 0000..0777 such as 0660, "
                  "got 01777");
    expect_errors("grpc:\n  unix_mode: rw\n",
                  "2:14: grpc.unix_mode: must be off or an octal mode 0000..0777 such as 0660, "
                  "got rw");
    expect_errors("grpc:\n  unix_mode: \"\"\n",
                  "2:14: grpc.unix_mode: must be off or an octal mode 0000..0777 such as 0660, "
                  "got ");
    expect_errors("grpc:\n  unix_mode: [1]\n", "2:14: grpc.unix_mode: must be a scalar, got a list");
    expect_errors("grpc:\n  unix_owner: \":root\"\n",
                  "2:15: grpc.unix_owner: must be off, user or user:group, got :root");
    expect_errors("grpc:\n  unix_owner: \"root:\"\n",
                  "2:15: grpc.unix_owner: must be off, user or user:group, got root:");
    expect_errors("grpc:\n  unix_owner: \"a:b:c\"\n",
                  "2:15: grpc.unix_owner: must be off, user or user:group, got a:b:c");
    expect_errors("grpc:\n  unix_owner: no-such-user-ds\n",
                  "2:15: grpc.unix_owner: no such user \"no-such-user-ds\"");
    expect_errors("grpc:\n  unix_owner: \"root:no-such-group-ds\"\n",
                  "2:15: grpc.unix_owner: no such group \"no-such-group-ds\"");
    /* Only config_load() asks the system: a child takes the names as given. */
    c = load_unchecked_ok("grpc: {unix_owner: no-such-user-ds}\n");
    assert_string_equal(c->grpc.unix_owner, "no-such-user-ds");
    config_free(c);
}

/* -T */

static void
test_print_format(void **state)
{
    struct ds_config *c = load_ok("");
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    assert_non_null(f);
    assert_int_equal(config_print(c, f), 0);
    fclose(f);
    assert_non_null(strstr(text, "\nworkers:\n  count: auto\n"));
    assert_non_null(strstr(text, "\n  max_message_size: 4MiB\n"));
    assert_non_null(strstr(text, "\n  default: \"echo\"\n  max_result_size: 4032KiB\n"));
    assert_non_null(strstr(text, "\n  max_concurrent_streams: 100\n  unix_mode: off\n"
                              "  unix_owner: off\n"));
    assert_non_null(strstr(text, "\n  max_params: 64\n"));
    assert_non_null(strstr(text, "\n  max_subscribers: 1000\n"));
    assert_non_null(strstr(text, "\nshutdown_timeout: 30s\n"));
    assert_non_null(strstr(text, "\n  backoff_min: 100ms\n"));
    assert_non_null(strstr(text, "\n  journal_sync: 50ms\n"));
    assert_non_null(strstr(text, "\n  \"sha256\":\n    builtin: sha256\n    timeout: 30s\n"));
    assert_non_null(strstr(text, "\nuser: \"\"\n"));
    assert_non_null(strstr(text, "\n  listen: [\"127.0.0.1:8080\"]\n"));
    free(text);
    config_free(c);
}

static void
test_round_trip_defaults(void **state)
{
    struct ds_config *c = load_ok("");

    round_trip(c, config_load_text);
    config_free(c);
}

static void
test_round_trip_nontrivial(void **state)
{
    struct ds_config *c = load_ok("daemon: on\n"
                                  "pid_file: run/ds.pid\n"
                                  "log: {level: debug, file: \"logs/d\\\"s\\\\ \\t\\u00e9\\u2028\\x85.log\"}\n"
                                  "workers: {count: 3, prefetch: 8, max_items: 1000, nice: -5}\n"
                                  "grpc:\n"
                                  "  listen: [\"0.0.0.0:9000\", \"[::1]:9001\", \"unix:ds.sock\"]\n"
                                  "  max_message_size: 1536KiB\n"
                                  "queue: {capacity: 5, on_full: reject, max_attempts: 7,"
                                  " journal_sync: always}\n"
                                  "updates: {history: 10, subscriber_buffer: 3}\n"
                                  "handlers:\n"
                                  "  default: hash.v2\n"
                                  "  hash.v2: {builtin: sha256, timeout: 90s}\n"
                                  "  nap: {builtin: sleep, timeout: 1500ms}\n"
                                  "status: off\n"
                                  "respawn: {backoff_min: 250ms, backoff_max: 2m, stable_after: 1h,"
                                  " crash_limit: 3}\n"
                                  "shutdown_timeout: 0s\n");

    assert_int_equal(c->grpc.max_message_size, 1536 * 1024);
    round_trip(c, config_load_text);
    config_free(c);

    c = load_ok("queue: {journal_sync: never}\nworkers: {count: 1024}\n");
    round_trip(c, config_load_text);
    config_free(c);
}

static void
test_round_trip_everything(void **state)
{
    struct ds_config *c = load_unchecked_ok(
        "user: \"n\\u00f6body\"\n"
        "log: {access: a.log}\n"
        "workers: {cpu_affinity: auto, rlimit_nofile: 4096, core_dumps: off}\n"
        "grpc: {tls: {cert: c.pem, key: k.pem, client_ca: ca.pem}, max_message_size: 64MiB}\n"
        "queue: {journal: j, journal_sync: 1500ms}\n"
        "status: {listen: \"[::1]:9090\"}\n"
        "handlers:\n"
        "  default: run\n"
        "  run:\n"
        "    exec: [bin/x, \"a b\", \"q\\\"\", \"\"]\n"
        "    env: {A: \"1\\n2\", B: \"\"}\n"
        "  mod: {module: m.so, options: {k: v, n: 2}, timeout: 3h}\n"
        "  bare: {exec: true}\n");

    round_trip(c, config_load_text_unchecked);
    config_free(c);

    /* cluster excludes queue.journal */
    c = load_unchecked_ok("cluster: {redis: \"redis://[::1]:6380/\", name: green, lease: 2500ms}\n");
    assert_int_equal(c->cluster.port, 6380);
    assert_int_equal(c->cluster.lease_ms, 2500);
    round_trip(c, config_load_text_unchecked);
    config_free(c);
}

/* Print C, load the text back, print that: the two texts are the same. */
static void
assert_prints_stable(const struct ds_config *c,
                     struct ds_config *(*loader)(const char *, const char *, size_t, char *,
                                                 size_t))
{
    char *text1 = NULL, *text2 = NULL;
    size_t len1 = 0, len2 = 0;
    struct ds_config *back;
    FILE *f;

    f = open_memstream(&text1, &len1);
    assert_non_null(f);
    assert_int_equal(config_print(c, f), 0);
    assert_int_equal(fclose(f), 0);
    back = loader(c->path, text1, len1, errors, sizeof errors);
    if (back == NULL)
        fail_msg("printed config does not load:\n%s\n---\n%s", errors, text1);
    f = open_memstream(&text2, &len2);
    assert_non_null(f);
    assert_int_equal(config_print(back, f), 0);
    assert_int_equal(fclose(f), 0);
    assert_string_equal(text1, text2);
    config_free(back);
    free(text2);
    free(text1);
}

/* Every key of every table set away from its default, in two configs
 * (cluster and queue.journal exclude each other). */
static const char every_key_journal[] =
    "daemon: on\n"
    "pid_file: run/ds.pid\n"
    "user: \"n\\u00f6body\"\n"
    "log: {level: debug, file: \"logs/d\\\"s\\\\ \\t\\u2028\\x85.log\", access: a.log}\n"
    "workers: {count: 3, prefetch: 8, max_items: 1000, cpu_affinity: auto, nice: -5,"
    " rlimit_nofile: 4096, core_dumps: on}\n"
    "grpc:\n"
    "  listen: [\"0.0.0.0:9000\", \"[::1]:9001\", \"unix:ds.sock\"]\n"
    "  max_message_size: 1536KiB\n"
    "  tls: {cert: c.pem, key: k.pem, client_ca: ca.pem, scope_ids: on}\n"
    "  max_concurrent_streams: 7\n"
    "  unix_mode: \"0640\"\n"
    "  unix_owner: \"nobody:nogroup\"\n"
    "  max_connection_age: 5m\n"
    "  max_connection_age_grace: 1500ms\n"
    "  keepalive: {time: off, timeout: 1s, min_ping_interval: 90s, permit_without_calls: off}\n"
    "queue: {capacity: 5, on_full: reject, max_attempts: 7, max_params: 2, journal: j,"
    " journal_sync: 1500ms}\n"
    "updates: {history: 10, subscriber_buffer: 3, history_bytes: 3MiB, max_subscribers: 4,"
    " subscribers_bytes: 2GiB}\n"
    "handlers:\n"
    "  default: run\n"
    "  max_result_size: 1000\n"
    "  run:\n"
    "    exec: [bin/x, \"a b\", \"q\\\"\", \"\"]\n"
    "    env: {A: \"1\\n2\", B: \"\"}\n"
    "    timeout: 1h\n"
    "  mod: {module: m.so, options: {k: v, n: 2}, timeout: 3h}\n"
    "  nap: {builtin: sleep, timeout: 250ms}\n"
    "status: {listen: \"[::1]:9090\"}\n"
    "respawn: {backoff_min: 250ms, backoff_max: 2m, stable_after: 1h, crash_limit: 3}\n"
    "shutdown_timeout: 0s\n";

static const char long_key_format[] =
    "handlers: {default: run, run: {exec: [x], env: {? %0*d: v}}}\n";

static void
test_print_stable(void **state)
{
    struct ds_config *c = load_ok("");
    char *long_name;
    size_t n;

    assert_prints_stable(c, config_load_text);
    config_free(c);

    c = load_unchecked_ok(every_key_journal);
    assert_prints_stable(c, config_load_text_unchecked);
    config_free(c);

    c = load_unchecked_ok("queue: {journal_sync: always}\n"
                          "grpc: {tls: {cert: c.pem, key: k.pem}, keepalive: {time: 1h}}\n"
                          "cluster: {redis: \"redis://db:6380\", name: green, lease: 2500ms}\n");
    assert_prints_stable(c, config_load_text_unchecked);
    config_free(c);

    /* A key longer than a YAML implicit key may be (1024 bytes): written
     * as an explicit "? key" pair. */
    n = (size_t)snprintf(NULL, 0, long_key_format, 2000, 0);
    long_name = malloc(n + 1);
    assert_non_null(long_name);
    snprintf(long_name, n + 1, long_key_format, 2000, 0);
    long_name[strchr(long_key_format, '%') - long_key_format] = 'A';
    c = load_unchecked_ok(long_name);
    assert_int_equal(strlen(c->handlers[0].env[0].name), 2000);
    assert_prints_stable(c, config_load_text_unchecked);
    config_free(c);
    free(long_name);
}

static void
test_print_failures(void **state)
{
    struct ds_config *c;
    FILE *f;

    /* The directory's name, and so pid_file, is not UTF-8: YAML cannot say
     * it, and printing it raw would not load back. */
    c = config_load_text("/nonexistent/lat\xe9/ds.yaml", "", 0, errors, sizeof errors);
    assert_non_null(c);
    f = fopen("/dev/null", "w");
    assert_non_null(f);
    errno = 0;
    assert_int_equal(config_print(c, f), -1);
    assert_int_equal(errno, EILSEQ);
    fclose(f);
    config_free(c);

    c = load_ok("");
    f = fopen("/dev/full", "w");
    assert_non_null(f);
    setvbuf(f, NULL, _IONBF, 0);
    errno = 0;
    assert_int_equal(config_print(c, f), -1);
    assert_int_equal(errno, ENOSPC);
    fclose(f);
    config_free(c);
}

static int
group_setup(void **state)
{
    char made[] = "/tmp/test_config.XXXXXX", real[PATH_MAX];

    if (mkdtemp(made) == NULL || realpath(made, real) == NULL || strlen(real) >= sizeof tmpdir)
        return -1;
    strcpy(tmpdir, real);
    snprintf(yaml_path, sizeof yaml_path, "%s/test.yaml", tmpdir);
    return 0;
}

static int
group_teardown(void **state)
{
    unlink(yaml_path);
    return rmdir(tmpdir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tib_and_days),
        cmocka_unit_test(test_defaults_empty_file),
        cmocka_unit_test(test_defaults_comments_only),
        cmocka_unit_test(test_defaults_document_marker_only),
        cmocka_unit_test(test_defaults_empty_sections),
        cmocka_unit_test(test_repo_config_loads),
        cmocka_unit_test(test_load_text),
        cmocka_unit_test(test_listen_methods),
        cmocka_unit_test(test_retry_exit_codes),
        cmocka_unit_test(test_free_null_and_handler_lookup),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_directory_is_not_a_file),
        cmocka_unit_test(test_fifo_is_not_a_file),
        cmocka_unit_test(test_pipe_and_device_at_start),
        cmocka_unit_test(test_file_size_limit),
        cmocka_unit_test(test_error_position_example),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_bad_size_and_duration_syntax),
        cmocka_unit_test(test_all_errors_reported),
        cmocka_unit_test(test_error_buffer_truncation),
        cmocka_unit_test(test_syntax_error),
        cmocka_unit_test(test_control_characters_in_messages),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_long_scalar),
        cmocka_unit_test(test_billion_laughs),
        cmocka_unit_test(test_random_binary),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_multiple_documents),
        cmocka_unit_test(test_tags_refused),
        cmocka_unit_test(test_not_utf8),
        cmocka_unit_test(test_parse_size_table),
        cmocka_unit_test(test_parse_duration_table),
        cmocka_unit_test(test_scalar_keys),
        cmocka_unit_test(test_booleans),
        cmocka_unit_test(test_workers_count_auto),
        cmocka_unit_test(test_relative_paths),
        cmocka_unit_test(test_grpc_listen),
        cmocka_unit_test(test_queue_journal_sync),
        cmocka_unit_test(test_handlers_replace_defaults),
        cmocka_unit_test(test_handler_errors),
        cmocka_unit_test(test_handler_kind_limit),
        cmocka_unit_test(test_exec_and_module_values),
        cmocka_unit_test(test_optional_features),
        cmocka_unit_test(test_status_and_cluster),
        cmocka_unit_test(test_limits_and_unix_sockets),
        cmocka_unit_test(test_print_format),
        cmocka_unit_test(test_print_stable),
        cmocka_unit_test(test_print_failures),
        cmocka_unit_test(test_round_trip_defaults),
        cmocka_unit_test(test_round_trip_nontrivial),
        cmocka_unit_test(test_round_trip_everything),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
