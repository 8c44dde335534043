/*
 * Handlers beyond the built-ins: exec (programs, their environment, exit
 * statuses, output limits, deadlocks, leaks, the guard), modules (loading,
 * options, progress, errors, ABI checks, the gzip example), the config's
 * checks against the system (-t), worker hygiene and the privilege drop.
 *
 * Compiled with -DDS_TEST_MODULE this file is instead a handler module the
 * tests load (mk/handlers.mk builds it several ways into build/tests/modules/:
 * as it is, with abi_version 99, without the symbol, flagged
 * DS_MODULE_QUICK, and flagged DS_MODULE_CANCELLABLE: then the sleep of
 * param ms checks host->cancelled() after each step; both flags too).
 */
#ifdef DS_TEST_MODULE

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dosomething/handler.h>

#ifndef DS_TEST_MODULE_ABI
#define DS_TEST_MODULE_ABI DS_HANDLER_ABI_VERSION
#endif

/*
 * options: prefix (prepended to results), fail_init (init fails with it),
 * fini_file (fini appends "fini N" to it, N = items processed).
 * params: mark=PATH (create PATH first: the item has started, whether or
 * not its STARTED was sent yet), error=MSG (fail with "error: MSG"), silent (fail with no
 * message), bad_utf8 (fail with a message that is not UTF-8), ms and steps
 * (sleep, reporting progress after each step but the last), size=N (a
 * result of N bytes 'x'), static (a result kept in the state), crash (abort),
 * trace (the result is "traceparent=TP", the item's, or "(none)"),
 * retry_until=N (return DS_MODULE_RETRY, "busy at attempt A", while the
 * attempt is under N; built with DS_TEST_MODULE_RETRY it is flagged
 * DS_MODULE_RETRYABLE, otherwise it is a module that never asked for it),
 * alloc_mb=N (allocate and touch N MiB, 1 MiB at a time, then free it: the
 * result is "allocated N MiB"), alloc_once_mb=N (the same in one malloc;
 * fails with "cannot allocate N MiB: Cannot allocate memory" if refused),
 * spin_ms=N (burn N ms of CPU time; the result is "spun"; with
 * spin_threads=T, in T threads at once, each N ms of its own),
 * thread_alloc_mb=N (alloc_mb in a thread of its own, joined; "allocated N
 * MiB in a thread", or fails as alloc_once_mb does),
 * fork_alloc_mb=N or fork_spin_ms=N (alloc_mb or spin_ms in a forked
 * child, waited for: the result is "child exited S", S its status, 1 if
 * an allocation was refused; with fork_leave, not waited for: the result
 * is "left", the child spinning until killed).
 * Otherwise the result is "PREFIX PAYLOAD|attempt=A|id=ID|kind=K|n=N".
 */
struct test_state {
    char prefix[64];
    char fini_file[512];
    unsigned long items;
    char kept[80];
};

static int
test_init(const struct ds_module_option *options, size_t count, void **state, char *err,
          size_t err_size)
{
    struct test_state *s = calloc(1, sizeof *s);
    for (size_t i = 0; i < count; i++) {
        if (strcmp(options[i].name, "fail_init") == 0) {
            snprintf(err, err_size, "%s", options[i].value);
            free(s);
            return -1;
        }
        if (strcmp(options[i].name, "prefix") == 0)
            snprintf(s->prefix, sizeof s->prefix, "%s", options[i].value);
        else if (strcmp(options[i].name, "fini_file") == 0)
            snprintf(s->fini_file, sizeof s->fini_file, "%s", options[i].value);
    }
    *state = s;
    return 0;
}

static const char *
param(const struct ds_module_item *item, const char *key)
{
    for (size_t i = 0; i < item->param_count; i++)
        if (strcmp(item->params[i].key, key) == 0)
            return item->params[i].value;
    return NULL;
}

/* Burn *MS ms of this thread's CPU time. */
static void *
spin(void *ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    volatile unsigned long spins = 0;
    do {
        for (int i = 0; i < 100000; i++)
            spins++;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 <
             *(long *)ms);
    return NULL;
}

/* Allocate and touch *MB MiB, 1 MiB at a time, then free it: NULL, or
 * (void *)1 if an allocation was refused. */
static void *
touch_mb(void *mb)
{
    size_t n = *(size_t *)mb;
    char **held = calloc(n + 1, sizeof *held);
    void *r = NULL;
    for (size_t i = 0; i < n && r == NULL; i++) {
        held[i] = malloc(1 << 20);
        if (held[i] == NULL)
            r = (void *)1;
        else
            for (size_t j = 0; j < (1 << 20); j += 4096)
                held[i][j] = 1;
    }
    for (size_t i = 0; i < n; i++)
        free(held[i]);
    free(held);
    return r;
}

static int
test_process(void *state, const struct ds_module_item *item, struct ds_module_result *out,
             const struct ds_module_host *host)
{
    struct test_state *s = state;
    const char *v;
    s->items++;
    if ((v = param(item, "mark")) != NULL) {
        FILE *f = fopen(v, "w");
        if (f != NULL)
            fclose(f);
    }
    if ((v = param(item, "error")) != NULL) {
        snprintf(out->error, out->error_size, "error: %s", v);
        return -1;
    }
    if (param(item, "silent") != NULL)
        return -1;
    if (param(item, "bad_utf8") != NULL) {
        snprintf(out->error, out->error_size, "bad \xff\xfe byte\tand tab");
        return -1;
    }
    if (param(item, "crash") != NULL)
        abort();
    if ((v = param(item, "thread_alloc_mb")) != NULL) {
        static size_t mb;
        mb = (size_t)atol(v);
        pthread_t thread;
        void *refused = (void *)1;
        if (pthread_create(&thread, NULL, touch_mb, &mb) == 0)
            pthread_join(thread, &refused);
        if (refused) {
            snprintf(out->error, out->error_size, "cannot allocate %zu MiB in a thread: "
                     "Cannot allocate memory", mb);
            return -1;
        }
        snprintf(s->kept, sizeof s->kept, "allocated %zu MiB in a thread", mb);
        out->data = s->kept;
        out->len = strlen(s->kept);
        return 0;
    }
    if ((v = param(item, "fork_alloc_mb")) != NULL || (v = param(item, "fork_spin_ms")) != NULL) {
        static size_t mb;
        static long ms;
        int alloc = param(item, "fork_alloc_mb") != NULL;
        mb = (size_t)atol(v);
        ms = atol(v);
        pid_t pid = fork();
        if (pid == 0) {
            if (param(item, "fork_leave") != NULL)
                for (;;)
                    spin(&ms);
            _exit(alloc ? touch_mb(&mb) != NULL : (spin(&ms), 0));
        }
        int status = -1;
        if (pid > 0 && param(item, "fork_leave") == NULL)
            waitpid(pid, &status, 0);
        if (param(item, "fork_leave") != NULL)
            snprintf(s->kept, sizeof s->kept, "left");
        else
            snprintf(s->kept, sizeof s->kept, "child exited %d",
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        out->data = s->kept;
        out->len = strlen(s->kept);
        return 0;
    }
    if ((v = param(item, "alloc_mb")) != NULL || (v = param(item, "alloc_once_mb")) != NULL) {
        size_t mb = (size_t)atol(v), chunks = param(item, "alloc_mb") != NULL ? mb : 1;
        size_t chunk = (mb << 20) / chunks;
        char **held = calloc(chunks + 1, sizeof *held);
        for (size_t i = 0; i < chunks; i++) {
            held[i] = malloc(chunk);
            if (held[i] == NULL) {
                snprintf(out->error, out->error_size, "cannot allocate %zu MiB: Cannot "
                         "allocate memory", mb);
                while (i > 0)
                    free(held[--i]);
                free(held);
                return -1;
            }
            for (size_t j = 0; j < chunk; j += 4096)
                held[i][j] = 1;
        }
        for (size_t i = 0; i < chunks; i++)
            free(held[i]);
        free(held);
        snprintf(s->kept, sizeof s->kept, "allocated %zu MiB", mb);
        out->data = s->kept;
        out->len = strlen(s->kept);
        return 0;
    }
    if ((v = param(item, "spin_ms")) != NULL) {
        static long ms;
        ms = atol(v);
        long n = param(item, "spin_threads") ? atol(param(item, "spin_threads")) : 0;
        pthread_t threads[16];
        if (n > 16)
            n = 16;
        for (long i = 0; i < n; i++)
            pthread_create(&threads[i], NULL, spin, &ms);
        if (n == 0)
            spin(&ms);
        for (long i = 0; i < n; i++)
            pthread_join(threads[i], NULL);
        out->data = "spun";
        out->len = 4;
        return 0;
    }
    if ((v = param(item, "retry_until")) != NULL && item->attempt < (uint32_t)atol(v)) {
        snprintf(out->error, out->error_size, "busy at attempt %u", item->attempt);
        return DS_MODULE_RETRY;
    }
    if ((v = param(item, "ms")) != NULL) {
        long ms = atol(v), steps = param(item, "steps") ? atol(param(item, "steps")) : 1;
        for (long i = 1; i <= steps; i++) {
            struct timespec ts = { .tv_sec = ms / steps / 1000,
                                   .tv_nsec = (ms / steps % 1000) * 1000000L };
            nanosleep(&ts, NULL);
#ifdef DS_TEST_MODULE_CANCEL
            if (host->cancelled(host)) {
                snprintf(out->error, out->error_size, "stopped by cancel");
                return -1;
            }
#endif
            if (i < steps)
                host->progress(host, (float)i / (float)steps);
        }
    }
    if ((v = param(item, "size")) != NULL) {
        size_t n = (size_t)atol(v);
        char *p = malloc(n + 1);
        memset(p, 'x', n);
        out->data = p;
        out->len = n;
        out->release = free;
        return 0;
    }
    if (param(item, "trace") != NULL) {        /* minor 3 */
        snprintf(s->kept, sizeof s->kept, "traceparent=%.55s", item->traceparent != NULL
                 ? item->traceparent : "(none)");
        out->data = s->kept;
        out->len = strlen(s->kept);
        return 0;
    }
    if (param(item, "static") != NULL) {
        snprintf(s->kept, sizeof s->kept, "kept %lu", s->items);
        out->data = s->kept;
        out->len = strlen(s->kept);
        return 0;
    }
    size_t size = strlen(s->prefix) + item->payload_len + strlen(item->id) +
                  strlen(item->kind) + 96;
    char *p = malloc(size);
    int n = snprintf(p, size, "%s%.*s|attempt=%u|id=%s|kind=%s|n=%lu", s->prefix,
                     (int)item->payload_len, (const char *)item->payload, item->attempt,
                     item->id, item->kind, s->items);
    out->data = p;
    out->len = (size_t)n;
    out->release = free;
    return 0;
}

static void
test_fini(void *state)
{
    struct test_state *s = state;
    if (s->fini_file[0] != '\0') {
        FILE *f = fopen(s->fini_file, "a");
        if (f != NULL) {
            fprintf(f, "fini %lu\n", s->items);
            fclose(f);
        }
    }
    free(s);
}


/* The flags the build asks for: DS_TEST_MODULE_QUICK, _CANCEL, _RETRY, any of them. */
#ifdef DS_TEST_MODULE_QUICK
#define TEST_FLAG_QUICK DS_MODULE_QUICK
#else
#define TEST_FLAG_QUICK 0
#endif
#ifdef DS_TEST_MODULE_CANCEL
#define TEST_FLAG_CANCEL DS_MODULE_CANCELLABLE
#else
#define TEST_FLAG_CANCEL 0
#endif
#ifdef DS_TEST_MODULE_RETRY
#define TEST_FLAG_RETRY DS_MODULE_RETRYABLE
#else
#define TEST_FLAG_RETRY 0
#endif
#define TEST_MODULE_FLAGS (TEST_FLAG_QUICK | TEST_FLAG_CANCEL | TEST_FLAG_RETRY)

#ifdef DS_TEST_MODULE_NOSYM
const struct ds_module not_the_module_symbol = {
#else
const struct ds_module dosomething_module = {
#endif
    .abi_version = DS_TEST_MODULE_ABI,
    .flags = TEST_MODULE_FLAGS,
    .name = "test",
    .init = test_init,
    .process = test_process,
    .fini = test_fini,
};

#else /* the tests */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "dosomething/handler.h"

#include "core/config.h"
#include "core/kind.h"
#include "core/privileges.h"
#include "core/wire.h"
#include "workers/exec.h"
#include "workers/handler.h"
#include "workers/hygiene.h"
#include "workers/module.h"

static char tmpdir[256];
static char modules_dir[1024];          /* build/tests/modules */
static char examples_dir[1024];         /* build/modules */

/* ---- helpers ------------------------------------------------------------- */

struct test_item {
    wire_work_item item;
    wire_param params[8];
    wire_param *param_ptrs[8];
};

static void
item_init(struct test_item *t, const char *id, const void *payload, size_t len)
{
    wire_work_item init = COM__AGROUNDS__DOSOMETHING__V1__WORK_ITEM__INIT;
    t->item = init;
    t->item.id = (char *)id;
    t->item.kind = (char *)"";
    t->item.payload.data = (uint8_t *)payload;
    t->item.payload.len = len;
    t->item.params = t->param_ptrs;
}

static void
item_param(struct test_item *t, const char *key, const char *value)
{
    wire_param init = COM__AGROUNDS__DOSOMETHING__V1__WORK_ITEM__PARAMS_ENTRY__INIT;
    size_t n = t->item.n_params++;
    assert_true(n < 8);
    t->params[n] = init;
    t->params[n].key = (char *)key;
    t->params[n].value = (char *)value;
    t->param_ptrs[n] = &t->params[n];
}

static struct ds_handler_config
exec_handler(char **argv)
{
    struct ds_handler_config h;
    memset(&h, 0, sizeof h);
    h.kind = (char *)"run";
    h.type = DS_HANDLER_EXEC;
    h.argv = argv;
    while (argv[h.argc] != NULL)
        h.argc++;
    return h;
}

struct progress_log {
    int count;
    float last;
    int increasing;
};

static void
record_progress(void *arg, float fraction)
{
    struct progress_log *p = arg;
    if (p->count > 0 && fraction <= p->last)
        p->increasing = 0;
    p->last = fraction;
    p->count++;
}

static struct handler_output
output(size_t result_max)
{
    struct handler_output out;
    memset(&out, 0, sizeof out);
    out.attempt = 1;
    out.result_max = result_max;
    return out;
}

static void
release(struct handler_output *out)
{
    if (out->release != NULL)
        out->release((void *)out->result);
    out->result = NULL;
    out->release = NULL;
}

/* Run ARGV on PAYLOAD; the result must be "0" and EXPECT (NUL-terminated). */
static void
expect_exec_result(char **argv, const char *payload, const char *expect)
{
    struct ds_handler_config h = exec_handler(argv);
    struct test_item t;
    item_init(&t, "id-1", payload, strlen(payload));
    struct handler_output out = output(1 << 20);
    int r = handler_run(&h, &t.item, &out);
    if (r != 0)
        fail_msg("%s failed: %s", argv[0], out.error);
    assert_int_equal(out.result_len, strlen(expect));
    assert_memory_equal(out.result, expect, out.result_len);
    release(&out);
}

static void
expect_exec_error(char **argv, size_t result_max, const char *expect)
{
    struct ds_handler_config h = exec_handler(argv);
    struct test_item t;
    item_init(&t, "id-1", "", 0);
    struct handler_output out = output(result_max);
    int r = handler_run(&h, &t.item, &out);
    if (r == 0)
        fail_msg("%s succeeded, expected \"%s\"", argv[0], expect);
    assert_string_equal(out.error, expect);
    assert_null(out.release);
}

static int
count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;                       /* the directory's own */
}

/* State of PID ('R', 'S', 'Z', ...), or 0 if it does not exist. */
static char
proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *paren = strrchr(buf, ')');
    return paren != NULL && paren[1] == ' ' ? paren[2] : 0;
}

static int
gone(pid_t pid)
{
    char s = proc_state(pid);
    return s == 0 || s == 'Z' || s == 'X';
}

/* Children of ours that are zombies. */
static int
count_zombie_children(void)
{
    DIR *d = opendir("/proc");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        char *paren = strrchr(buf, ')');
        char state;
        long ppid;
        if (paren != NULL && sscanf(paren + 2, "%c %ld", &state, &ppid) == 2 &&
            ppid == (long)getpid() && state == 'Z')
            n++;
    }
    closedir(d);
    return n;
}

static void
sleep_ms(long ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static int
wait_gone(pid_t pid, long timeout_ms)
{
    for (long t = 0; t < timeout_ms; t += 10) {
        if (gone(pid))
            return 1;
        sleep_ms(10);
    }
    return gone(pid);
}

static void
write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static char *
read_text(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t n = fread(buf, 1, size - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* ---- exec ------------------------------------------------------------------ */

static void
test_exec_result_is_stdout(void **state)
{
    char *cat[] = { "cat", NULL };
    expect_exec_result(cat, "hello, world\n", "hello, world\n");
    char *tr[] = { "/usr/bin/tr", "a-z", "A-Z", NULL };
    expect_exec_result(tr, "shout", "SHOUT");
    /* Empty payload: stdin is at EOF at once. */
    char *wc[] = { "wc", "-c", NULL };
    expect_exec_result(wc, "", "0\n");
}

static void
test_exec_environment(void **state)
{
    char *sh[] = { "sh", "-c", "printf '%s|%s|%s|%s|%s|%s|%s' \"$DS_ITEM_ID\" \"$DS_ATTEMPT\" "
                   "\"$DS_KIND\" \"$DS_PARAM_MY_KEY_X\" \"$DS_PARAM_N\" \"$GREETING\" "
                   "\"${DS_TEST_LEAK-unset}\"", NULL };
    struct ds_handler_config h = exec_handler(sh);
    struct ds_env_var env[] = { { "GREETING", "hi there" } };
    h.env = env;
    h.env_count = 1;
    struct test_item t;
    item_init(&t, "item-42", "", 0);
    item_param(&t, "my-key.x", "value one");
    item_param(&t, "n", "7");
    struct handler_output out = output(4096);
    out.attempt = 3;
    setenv("DS_TEST_LEAK", "leaked", 1);
    int r = handler_run(&h, &t.item, &out);
    unsetenv("DS_TEST_LEAK");
    if (r != 0)
        fail_msg("%s", out.error);
    const char *want = "item-42|3|run|value one|7|hi there|unset";
    assert_int_equal(out.result_len, strlen(want));
    assert_memory_equal(out.result, want, strlen(want));
    release(&out);

    /* Exactly PATH, HOME, the configured and the item's variables. */
    char *env_cmd[] = { "env", NULL };
    h = exec_handler(env_cmd);
    h.env = env;
    h.env_count = 1;
    out = output(65536);
    assert_int_equal(handler_run(&h, &t.item, &out), 0);
    char *text = strndup((const char *)out.result, out.result_len);
    release(&out);
    int lines = 0;
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        lines++;
        if (strncmp(line, "PATH=", 5) != 0 && strncmp(line, "HOME=", 5) != 0 &&
            strncmp(line, "GREETING=", 9) != 0 && strncmp(line, "DS_", 3) != 0)
            fail_msg("unexpected variable %s", line);
    }
    free(text);
    assert_int_equal(lines, 8);         /* PATH HOME GREETING ID KIND ATTEMPT 2 params */

    /* The configured env may replace PATH: it is also what is searched. */
    struct ds_env_var path[] = { { "PATH", "/nonexistent:/bin" } };
    char *echo[] = { "echo", "found", NULL };
    h = exec_handler(echo);
    h.env = path;
    h.env_count = 1;
    out = output(4096);
    assert_int_equal(handler_run(&h, &t.item, &out), 0);
    assert_memory_equal(out.result, "found\n", 6);
    release(&out);
}

static void
test_exec_failures(void **state)
{
    char *status3[] = { "sh", "-c", "echo first >&2; printf 'last \\377 line \\n\\n' >&2; exit 3",
                        NULL };
    expect_exec_error(status3, 4096, "sh exited with status 3: last ? line");
    char *quiet[] = { "false", NULL };
    expect_exec_error(quiet, 4096, "false exited with status 1");
    char *signal15[] = { "sh", "-c", "echo dying >&2; kill -TERM $$", NULL };
    expect_exec_error(signal15, 4096, "sh killed by signal 15 (SIGTERM): dying");
    char *missing[] = { "no-such-program-dosomething", NULL };
    expect_exec_error(missing, 4096,
                      "cannot execute no-such-program-dosomething: No such file or directory");
    char data_file[512];
    snprintf(data_file, sizeof data_file, "%s/not-a-program", tmpdir);
    write_text(data_file, "just data\n");
    chmod(data_file, 0644);
    char *not_exec[] = { data_file, NULL };
    char want[600];
    snprintf(want, sizeof want, "cannot execute %s: Permission denied", data_file);
    expect_exec_error(not_exec, 4096, want);
    unlink(data_file);

    /* A long last line is cut. */
    char *long_line[] = { "sh", "-c", "head -c 5000 /dev/zero | tr '\\0' a >&2; exit 1", NULL };
    struct ds_handler_config h = exec_handler(long_line);
    struct test_item t;
    item_init(&t, "x", "", 0);
    struct handler_output out = output(4096);
    assert_int_equal(handler_run(&h, &t.item, &out), -1);
    assert_true(strlen(out.error) < 400);
    assert_non_null(strstr(out.error, "aaa..."));
}

static void
test_exec_output_limit(void **state)
{
    char *big[] = { "head", "-c", "100000", "/dev/zero", NULL };
    expect_exec_error(big, 1000, "output exceeds handlers.max_result_size (1000 bytes)");
    /* Endless output: killed as soon as it passes the limit. */
    char *endless[] = { "cat", "/dev/zero", NULL };
    expect_exec_error(endless, 1 << 20, "output exceeds handlers.max_result_size (1048576 bytes)");

    char *exact[] = { "head", "-c", "1000", "/dev/zero", NULL };
    struct ds_handler_config h = exec_handler(exact);
    struct test_item t;
    item_init(&t, "x", "", 0);
    struct handler_output out = output(1000);
    assert_int_equal(handler_run(&h, &t.item, &out), 0);
    assert_int_equal(out.result_len, 1000);
    release(&out);
}

/* Writes 1 MB before it reads its 1 MB of input: both pipes full at once
 * would deadlock a worker that wrote all of stdin first. */
static void
test_exec_no_deadlock(void **state)
{
    char *sh[] = { "sh", "-c", "head -c 1000000 /dev/zero; wc -c", NULL };
    struct ds_handler_config h = exec_handler(sh);
    size_t len = 1000000;
    char *payload = calloc(1, len);
    struct test_item t;
    item_init(&t, "x", payload, len);
    struct handler_output out = output(4 << 20);
    int r = handler_run(&h, &t.item, &out);
    if (r != 0)
        fail_msg("%s", out.error);
    assert_int_equal(out.result_len, 1000000 + strlen("1000000\n"));
    assert_memory_equal(out.result + 1000000, "1000000\n", 8);
    release(&out);

    /* A program that never reads its input. */
    char *tru[] = { "true", NULL };
    h = exec_handler(tru);
    out = output(16);
    assert_int_equal(handler_run(&h, &t.item, &out), 0);
    assert_int_equal(out.result_len, 0);
    release(&out);
    free(payload);
}

/* What the program leaves in its process group dies when it exits; the
 * item does not wait for it. */
static void
test_exec_background_job_killed(void **state)
{
    char *sh[] = { "sh", "-c", "sleep 30 & echo $!", NULL };
    struct ds_handler_config h = exec_handler(sh);
    struct test_item t;
    item_init(&t, "x", "", 0);
    struct handler_output out = output(4096);
    time_t start = time(NULL);
    assert_int_equal(handler_run(&h, &t.item, &out), 0);
    assert_true(time(NULL) - start < 5);
    pid_t job = (pid_t)atol(strndupa((const char *)out.result, out.result_len));
    release(&out);
    assert_true(job > 0);
    assert_true(wait_gone(job, 2000));

    /* One that left the group and holds stdout is not waited for long. */
    char *escaped[] = { "sh", "-c", "setsid sleep 3 & echo ok", NULL };
    h = exec_handler(escaped);
    out = output(4096);
    start = time(NULL);
    assert_int_equal(handler_run(&h, &t.item, &out), 0);
    assert_true(time(NULL) - start < 3);
    assert_memory_equal(out.result, "ok\n", 3);
    release(&out);
}

static void
test_exec_no_leaks(void **state)
{
    char *tru[] = { "true", NULL };
    char *fail[] = { "sh", "-c", "exit 2", NULL };
    char *missing[] = { "no-such-program-dosomething", NULL };
    struct ds_handler_config ok = exec_handler(tru), bad = exec_handler(fail),
                             none = exec_handler(missing);
    struct test_item t;
    item_init(&t, "x", "payload", 7);
    int fds = count_fds();
    for (int i = 0; i < 200; i++) {
        struct handler_output out = output(16);
        const struct ds_handler_config *h = i % 3 == 0 ? &ok : i % 3 == 1 ? &bad : &none;
        handler_run(h, &t.item, &out);
        release(&out);
    }
    assert_int_equal(count_fds(), fds);
    assert_int_equal(count_zombie_children(), 0);
}

/* The guard: a worker SIGKILLed mid-item takes the program's whole process
 * group with it, grandchildren included. */
static void
test_exec_guard(void **state)
{
    char pids_file[512];
    snprintf(pids_file, sizeof pids_file, "%s/pids", tmpdir);
    char script[2048];
    snprintf(script, sizeof script, "sleep 60 & echo $$ $! > %s.tmp && mv %s.tmp %s; wait",
             pids_file, pids_file, pids_file);

    pid_t worker = fork();
    assert_true(worker != -1);
    if (worker == 0) {
        if (exec_guard_start("dosomethingd: test exec guard") == -1)
            _exit(3);
        char *sh[] = { "sh", "-c", script, NULL };
        struct ds_handler_config h = exec_handler(sh);
        struct test_item t;
        item_init(&t, "x", "", 0);
        struct handler_output out = output(4096);
        handler_run(&h, &t.item, &out);
        _exit(4);                       /* not reached: killed first */
    }
    char buf[128];
    long program = 0, grandchild = 0;
    for (int i = 0; i < 500 && (read_text(pids_file, buf, sizeof buf) == NULL ||
                                sscanf(buf, "%ld %ld", &program, &grandchild) != 2); i++)
        sleep_ms(10);
    assert_true(program > 0 && grandchild > 0);
    assert_false(gone((pid_t)program));
    assert_false(gone((pid_t)grandchild));

    kill(worker, SIGKILL);
    int status;
    assert_int_equal(waitpid(worker, &status, 0), worker);
    assert_true(WIFSIGNALED(status));
    assert_true(wait_gone((pid_t)program, 3000));
    assert_true(wait_gone((pid_t)grandchild, 3000));
    unlink(pids_file);
}

static void
test_exec_guard_lifecycle(void **state)
{
    assert_int_equal(exec_guard_pid(), -1);
    assert_int_equal(exec_guard_start("dosomethingd: test exec guard"), 0);
    pid_t g = exec_guard_pid();
    assert_true(g > 0);
    assert_false(gone(g));
    /* A guard that dies is replaced at the next item. */
    kill(g, SIGKILL);
    assert_true(wait_gone(g, 2000));
    char *cat[] = { "cat", NULL };
    expect_exec_result(cat, "x", "x");
    assert_true(exec_guard_pid() > 0);
    assert_true(exec_guard_pid() != g);
    int fds = count_fds();
    for (int i = 0; i < 50; i++)
        expect_exec_result(cat, "y", "y");
    assert_int_equal(count_fds(), fds);
    g = exec_guard_pid();
    exec_guard_stop();
    assert_int_equal(exec_guard_pid(), -1);
    assert_true(gone(g));
    assert_int_equal(count_zombie_children(), 0);
}

/* ---- modules ----------------------------------------------------------- */

static struct ds_config *
module_config(const char *yaml_fmt, ...)
{
    char yaml[4096], errors[4096], path[512];
    va_list ap;
    va_start(ap, yaml_fmt);
    vsnprintf(yaml, sizeof yaml, yaml_fmt, ap);
    va_end(ap);
    snprintf(path, sizeof path, "%s/test.yaml", tmpdir);
    struct ds_config *c = config_load_text_unchecked(path, yaml, strlen(yaml), errors,
                                                     sizeof errors);
    if (c == NULL)
        fail_msg("config does not load:\n%s\n%s", errors, yaml);
    return c;
}

static void
test_module_run(void **state)
{
    char fini_file[PATH_MAX], err[1024], buf[256];
    snprintf(fini_file, sizeof fini_file, "%s/fini", tmpdir);
    unlink(fini_file);
    struct ds_config *c = module_config(
        "handlers:\n"
        "  default: m\n"
        "  m: {module: %s/test_module.so, options: {prefix: \"P:\", fini_file: %s}}\n"
        "  other: {module: %s/test_module.so}\n",
        modules_dir, fini_file, modules_dir);
    if (module_load_all(c, err, sizeof err) != 0)
        fail_msg("%s", err);
    const struct ds_handler_config *m = config_handler(c, "m"), *o = config_handler(c, "other");
    assert_int_equal(kind_is_quick(m, NULL), 0);

    struct test_item t;
    item_init(&t, "id-7", "data", 4);
    struct handler_output out = output(4096);
    out.attempt = 2;
    assert_int_equal(handler_run(m, &t.item, &out), 0);
    const char *want = "P:data|attempt=2|id=id-7|kind=m|n=1";
    assert_int_equal(out.result_len, strlen(want));
    assert_memory_equal(out.result, want, strlen(want));
    assert_true(out.release == free);
    release(&out);

    /* Each handler has its own state, even from one file. */
    out = output(4096);
    assert_int_equal(handler_run(o, &t.item, &out), 0);
    want = "data|attempt=1|id=id-7|kind=other|n=1";
    assert_memory_equal(out.result, want, strlen(want));
    release(&out);

    /* A result in the module's state: no release. */
    item_param(&t, "static", "");
    out = output(4096);
    assert_int_equal(handler_run(m, &t.item, &out), 0);
    assert_null(out.release);
    assert_memory_equal(out.result, "kept 2", 6);

    /* Progress, through the host. */
    struct test_item slow;
    item_init(&slow, "s", "", 0);
    item_param(&slow, "ms", "40");
    item_param(&slow, "steps", "4");
    struct progress_log log = { 0, 0, 1 };
    out = output(4096);
    out.progress = record_progress;
    out.progress_arg = &log;
    assert_int_equal(handler_run(m, &slow.item, &out), 0);
    release(&out);
    assert_int_equal(log.count, 3);
    assert_true(log.increasing);
    assert_true(log.last > 0.7f && log.last < 0.8f);

    module_unload_all();
    assert_non_null(read_text(fini_file, buf, sizeof buf));
    assert_string_equal(buf, "fini 3\n");
    unlink(fini_file);
    config_free(c);
}

static void
test_module_errors(void **state)
{
    char err[1024];
    struct ds_config *c = module_config("handlers:\n  default: m\n  m: {module: %s/test_module.so}\n",
                                        modules_dir);
    assert_int_equal(module_load_all(c, err, sizeof err), 0);
    const struct ds_handler_config *m = config_handler(c, "m");
    struct {
        const char *key, *value, *error;
    } cases[] = {
        { "error", "boom", "error: boom" },
        { "silent", "", "module test failed without saying why" },
        { "bad_utf8", "", "bad ?? byte and tab" },
        { "size", "5000", "result of 5000 bytes exceeds handlers.max_result_size (4096)" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct test_item t;
        item_init(&t, "x", "", 0);
        item_param(&t, cases[i].key, cases[i].value);
        struct handler_output out = output(4096);
        assert_int_equal(handler_run(m, &t.item, &out), -1);
        assert_string_equal(out.error, cases[i].error);
        assert_null(out.result);
    }
    /* At the limit is fine. */
    struct test_item t;
    item_init(&t, "x", "", 0);
    item_param(&t, "size", "4096");
    struct handler_output out = output(4096);
    assert_int_equal(handler_run(m, &t.item, &out), 0);
    assert_int_equal(out.result_len, 4096);
    release(&out);
    module_unload_all();
    config_free(c);
}

static void
expect_load_error(const char *yaml_fmt, const char *file, const char *part)
{
    char err[1024];
    struct ds_config *c = module_config(yaml_fmt, modules_dir, file);
    assert_int_equal(module_load_all(c, err, sizeof err), -1);
    if (strstr(err, part) == NULL)
        fail_msg("\"%s\" does not contain \"%s\"", err, part);
    module_unload_all();
    config_free(c);
}

static void
test_module_load_failures(void **state)
{
    const char *yaml = "handlers:\n  default: m\n  m: {module: %s/%s, options: {fail_init: "
                       "\"no database\"}}\n";
    expect_load_error(yaml, "test_module.so",
                      "module test (");
    expect_load_error(yaml, "test_module.so",
                      "/test_module.so) for kind \"m\": init failed: no database");
    yaml = "handlers:\n  default: m\n  m: {module: %s/%s}\n";
    expect_load_error(yaml, "test_module_abi99.so",
                      "test_module_abi99.so was built for handler ABI version 99; this "
                      "dosomethingd loads version 1");
    expect_load_error(yaml, "test_module_nosym.so",
                      "test_module_nosym.so does not export dosomething_module");
    expect_load_error(yaml, "no_such_module.so", "cannot load module: ");
}

/* -t: config_load dlopens each module and checks it, naming FILE:LINE:COL. */
static void
test_config_checks_modules_and_user(void **state)
{
    char path[512], yaml[4096], errors[8192], want[8192];
    snprintf(path, sizeof path, "%s/check.yaml", tmpdir);

    snprintf(yaml, sizeof yaml, "handlers:\n  default: m\n  m: {module: %s/test_module.so}\n"
             "  r: {exec: [cat], env: {A: b}}\nuser: root\n"
             "workers: {cpu_affinity: auto, rlimit_nofile: 4096, core_dumps: off}\n",
             modules_dir);
    write_text(path, yaml);
    struct ds_config *c = config_load(path, errors, sizeof errors);
    if (c == NULL)
        fail_msg("%s", errors);
    assert_int_equal(config_handler(c, "m")->module_flags, 0);
    assert_false(kind_is_quick(config_handler(c, "m"), NULL));
    config_free(c);

    /* The master keeps each module's flags: dispatch weighs quick items. */
    snprintf(yaml, sizeof yaml, "handlers:\n  default: m\n  m: {module: %s/test_module.so}\n"
             "  q: {module: %s/test_module_quick.so}\n", modules_dir, modules_dir);
    write_text(path, yaml);
    c = config_load(path, errors, sizeof errors);
    if (c == NULL)
        fail_msg("%s", errors);
    assert_int_equal(config_handler(c, "q")->module_flags, DS_MODULE_QUICK);
    assert_true(kind_is_quick(config_handler(c, "q"), NULL));
    assert_false(kind_is_quick(config_handler(c, "m"), NULL));
    config_free(c);
    /* A child parsing the text learns them from the master, not by loading. */
    c = config_load_text(path, yaml, strlen(yaml), errors, sizeof errors);
    assert_non_null(c);
    assert_int_equal(config_handler(c, "q")->module_flags, 0);
    config_free(c);

    snprintf(yaml, sizeof yaml, "handlers:\n  default: m\n  m: {module: %s/test_module_abi99.so}\n",
             modules_dir);
    write_text(path, yaml);
    assert_null(config_load(path, errors, sizeof errors));
    snprintf(want, sizeof want, "%s:3:15: handlers.m.module: %s/test_module_abi99.so was built "
             "for handler ABI version 99; this dosomethingd loads version 1", path, modules_dir);
    assert_string_equal(errors, want);
    /* A child applying the master's config does not dlopen anything. */
    c = config_load_text(path, yaml, strlen(yaml), errors, sizeof errors);
    assert_non_null(c);
    config_free(c);

    snprintf(yaml, sizeof yaml, "handlers:\n  default: m\n  m:\n    module: %s/test_module_nosym.so\n",
             modules_dir);
    write_text(path, yaml);
    assert_null(config_load(path, errors, sizeof errors));
    snprintf(want, sizeof want, "%s:4:13: handlers.m.module: %s/test_module_nosym.so does not "
             "export dosomething_module (not a dosomething module?)", path, modules_dir);
    assert_string_equal(errors, want);

    write_text(path, "handlers:\n  default: m\n  m: {module: missing.so}\n");
    assert_null(config_load(path, errors, sizeof errors));
    snprintf(want, sizeof want, "%s:3:15: handlers.m.module: cannot load: ", path);
    assert_memory_equal(errors, want, strlen(want));

    write_text(path, "user: no-such-user-dosomething\n");
    assert_null(config_load(path, errors, sizeof errors));
    snprintf(want, sizeof want, "%s:1:7: user: no such user \"no-such-user-dosomething\"\n", path);
    if (strcmp(errors, want) != 0 && strncmp(errors, want, strlen(want) - 1) != 0)
        fail_msg("got %s", errors);

    write_text(path, "handlers:\n  default: r\n  r: {exec: [cat], env: {DS_ITEM_ID: x}}\n");
    assert_null(config_load(path, errors, sizeof errors));
    assert_non_null(strstr(errors, ":3:26: handlers.r.env: names starting with DS_ are the item's"));
    unlink(path);
}

static void
test_gzip_module(void **state)
{
    char err[1024];
    struct ds_config *c = module_config(
        "handlers:\n"
        "  default: gz\n"
        "  gz: {module: %s/gzip.so, options: {level: 9}}\n"
        "  gunzip: {module: %s/gzip.so, options: {mode: decompress}}\n",
        examples_dir, examples_dir);
    if (module_load_all(c, err, sizeof err) != 0)
        fail_msg("%s", err);
    const struct ds_handler_config *gz = config_handler(c, "gz"),
                                   *gunzip = config_handler(c, "gunzip");

    size_t len = 3 << 20;
    uint8_t *data = malloc(len);
    for (size_t i = 0; i < len; i++)
        data[i] = (uint8_t)((i * 7) ^ (i >> 9));
    struct test_item t;
    item_init(&t, "x", data, len);
    struct progress_log log = { 0, 0, 1 };
    struct handler_output zipped = output(8 << 20);
    zipped.progress = record_progress;
    zipped.progress_arg = &log;
    assert_int_equal(handler_run(gz, &t.item, &zipped), 0);
    assert_true(zipped.result_len < len);
    assert_int_equal(zipped.result[0], 0x1f);   /* gzip magic */
    assert_int_equal(zipped.result[1], 0x8b);
    assert_int_equal(log.count, 11);            /* after each 256 KiB but the first */
    assert_true(log.increasing);

    struct test_item back;
    item_init(&back, "y", zipped.result, zipped.result_len);
    struct handler_output plain = output(8 << 20);
    assert_int_equal(handler_run(gunzip, &back.item, &plain), 0);
    assert_int_equal(plain.result_len, len);
    assert_memory_equal(plain.result, data, len);
    release(&plain);

    /* A small bomb stays within the limit. */
    plain = output(1 << 20);
    assert_int_equal(handler_run(gunzip, &back.item, &plain), -1);
    assert_string_equal(plain.error, "output exceeds 1048576 bytes");
    /* Cut short, and not gzip at all. */
    back.item.payload.len = zipped.result_len / 2;
    plain = output(8 << 20);
    assert_int_equal(handler_run(gunzip, &back.item, &plain), -1);
    assert_string_equal(plain.error, "truncated input: the compressed data ends early");
    item_init(&back, "z", "plain text, not gzip", 20);
    plain = output(8 << 20);
    assert_int_equal(handler_run(gunzip, &back.item, &plain), -1);
    assert_string_equal(plain.error, "not gzip data: incorrect header check");
    release(&zipped);

    /* Params. */
    item_init(&t, "x", "abc", 3);
    item_param(&t, "level", "12");
    plain = output(4096);
    assert_int_equal(handler_run(gz, &t.item, &plain), -1);
    assert_string_equal(plain.error, "param level=12: must be 0..9");
    module_unload_all();
    config_free(c);
    free(data);

    /* Options are checked by init. */
    c = module_config("handlers:\n  default: gz\n  gz: {module: %s/gzip.so, options: {levle: 1}}\n",
                      examples_dir);
    assert_int_equal(module_load_all(c, err, sizeof err), -1);
    assert_non_null(strstr(err, "init failed: unknown option levle (there are mode and level)"));
    module_unload_all();
    config_free(c);
}

/* ---- text, hygiene, privileges ------------------------------------------ */

static void
test_clean_text(void **state)
{
    char s[] = "ok \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 bad \xc3 \xed\xa0\x80 \xc0\xaf\x01\t\x7f.";
    handler_clean_text(s);
    assert_string_equal(s, "ok \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 bad ? ??? ??   .");
}

/* C1 controls are valid UTF-8 but a terminal acts on them (U+009B is CSI):
 * each becomes one space, as a C0 one does; U+00A0 and up stay. */
static void
test_clean_text_c1(void **state)
{
    char s[] = "a\xc2\x80" "b\xc2\x9b" "31mc\xc2\x9f\xc2\xa0" "d\x1b[0m";
    handler_clean_text(s);
    assert_string_equal(s, "a b 31mc \xc2\xa0" "d [0m");
}

static void
test_cpu_for_slot(void **state)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    CPU_SET(2, &set);
    CPU_SET(5, &set);
    assert_int_equal(hygiene_cpu_for_slot(&set, 1), 0);
    assert_int_equal(hygiene_cpu_for_slot(&set, 2), 2);
    assert_int_equal(hygiene_cpu_for_slot(&set, 3), 5);
    assert_int_equal(hygiene_cpu_for_slot(&set, 4), 0);
    assert_int_equal(hygiene_cpu_for_slot(&set, 0), -1);
    CPU_ZERO(&set);
    assert_int_equal(hygiene_cpu_for_slot(&set, 1), -1);
}

/* In a child: apply SETTINGS (workers: ...) and report what the kernel says. */
static void
test_hygiene_applied(void **state)
{
    char path[PATH_MAX], errors[4096], result[PATH_MAX];
    snprintf(path, sizeof path, "%s/hygiene.yaml", tmpdir);
    snprintf(result, sizeof result, "%s/hygiene.out", tmpdir);
    const char *yaml = "workers: {cpu_affinity: auto, nice: 5, rlimit_nofile: 1234, "
                       "core_dumps: off}\n";
    /* Static: the forked child's leak check (under valgrind) must find it. */
    static struct ds_config *c;
    c = config_load_text(path, yaml, strlen(yaml), errors, sizeof errors);
    if (c == NULL)
        fail_msg("%s", errors);
    cpu_set_t allowed;
    assert_int_equal(sched_getaffinity(0, sizeof allowed, &allowed), 0);
    int want_cpu = hygiene_cpu_for_slot(&allowed, 2);

    pid_t pid = fork();
    if (pid == 0) {
        worker_apply_hygiene(c, 2);
        cpu_set_t mine;
        struct rlimit nofile, core;
        sched_getaffinity(0, sizeof mine, &mine);
        getrlimit(RLIMIT_NOFILE, &nofile);
        getrlimit(RLIMIT_CORE, &core);
        errno = 0;
        int nice = getpriority(PRIO_PROCESS, 0);
        FILE *f = fopen(result, "w");
        fprintf(f, "%d %d %d %llu %llu %d", CPU_COUNT(&mine), CPU_ISSET(want_cpu, &mine), nice,
                (unsigned long long)nofile.rlim_cur, (unsigned long long)core.rlim_cur,
                prctl(PR_GET_DUMPABLE));
        fclose(f);
        config_free(c);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char buf[256];
    assert_non_null(read_text(result, buf, sizeof buf));
    char want[64];
    snprintf(want, sizeof want, "1 1 %d 1234 0 0", getpriority(PRIO_PROCESS, 0) > 5
             ? getpriority(PRIO_PROCESS, 0) : 5);
    assert_string_equal(buf, want);
    unlink(result);
    config_free(c);
}

static void
test_privileges_bind_as(void **state)
{
    /* Nothing to do: no user, or root itself. */
    assert_int_equal(privileges_bind_as(""), 0);
    assert_int_equal(privileges_bind_as(NULL), 0);
    if (geteuid() != 0) {
        assert_int_equal(privileges_bind_as("nobody"), 0);     /* not root */
        skip();
    }
    assert_int_equal(privileges_bind_as("root"), 0);
    struct passwd *pw = getpwnam("nobody");
    if (pw == NULL)
        skip();
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    /* In a child: the credentials are the whole process's. */
    pid_t pid = fork();
    if (pid == 0) {
        if (privileges_bind_as("nobody") != 1)
            _exit(10);
        uid_t r, e, s;
        getresuid(&r, &e, &s);
        if (r != 0 || e != uid || s != 0 || getegid() != gid)
            _exit(11);
        privileges_bind_done();
        if (geteuid() != 0 || getegid() != 0)
            _exit(12);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void
test_privileges_drop(void **state)
{
    char err[256] = "";
    /* Nothing to do: no user. */
    assert_int_equal(privileges_drop("", err, sizeof err), 0);
    assert_int_equal(privileges_drop(NULL, err, sizeof err), 0);
    if (geteuid() != 0) {
        /* Not root: the user is ignored. */
        assert_int_equal(privileges_drop("nobody", err, sizeof err), 0);
        skip();
    }
    assert_int_equal(privileges_drop("no-such-user-dosomething", err, sizeof err), -1);
    assert_string_equal(err, "user \"no-such-user-dosomething\": no such user");
    assert_int_equal(geteuid(), 0);

    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (privileges_drop("nobody", err, sizeof err) != 0)
            _exit(10);
        int death = 0;
        prctl(PR_GET_PDEATHSIG, &death);
        uid_t r, e, s;
        getresuid(&r, &e, &s);
        if (r == 0 || e == 0 || s == 0 || getgid() == 0 || getegid() == 0)
            _exit(11);
        if (death != SIGTERM)
            _exit(12);
        gid_t groups[64];
        int n = getgroups(64, groups);
        for (int i = 0; i < n; i++)
            if (groups[i] == 0)
                _exit(13);
        if (setuid(0) == 0)
            _exit(14);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- main ----------------------------------------------------------------- */

/* The test modules are beside this binary: BUILD/tests/modules, and the
 * examples in BUILD/modules. Absolute, since configs resolve relative paths
 * against their own directory. */
static void
find_module_dirs(const char *argv0)
{
    char exe[PATH_MAX];
    if (realpath(argv0, exe) == NULL) {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) {
            perror("cannot find the test binary");
            exit(1);
        }
        exe[n] = '\0';
    }
    *strrchr(exe, '/') = '\0';
    snprintf(modules_dir, sizeof modules_dir, "%.900s/modules", exe);
    snprintf(examples_dir, sizeof examples_dir, "%.900s/../modules", exe);
}

int
main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exec_result_is_stdout),
        cmocka_unit_test(test_exec_environment),
        cmocka_unit_test(test_exec_failures),
        cmocka_unit_test(test_exec_output_limit),
        cmocka_unit_test(test_exec_no_deadlock),
        cmocka_unit_test(test_exec_background_job_killed),
        cmocka_unit_test(test_exec_no_leaks),
        cmocka_unit_test(test_exec_guard),
        cmocka_unit_test(test_exec_guard_lifecycle),
        cmocka_unit_test(test_module_run),
        cmocka_unit_test(test_module_errors),
        cmocka_unit_test(test_module_load_failures),
        cmocka_unit_test(test_config_checks_modules_and_user),
        cmocka_unit_test(test_gzip_module),
        cmocka_unit_test(test_clean_text),
        cmocka_unit_test(test_clean_text_c1),
        cmocka_unit_test(test_cpu_for_slot),
        cmocka_unit_test(test_hygiene_applied),
        cmocka_unit_test(test_privileges_drop),
        cmocka_unit_test(test_privileges_bind_as),
    };

    /* What a worker does: a program that does not read all of its stdin
     * must not kill us with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    find_module_dirs(argv[0]);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_handlers.XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(tmpdir);
    return failed;
}

#endif /* DS_TEST_MODULE */
