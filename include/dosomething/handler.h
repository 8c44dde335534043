/*
 * dosomething/handler.h: the C ABI of dosomethingd handler modules.
 *
 * A module is a shared object that runs the items of a kind:
 *
 *     handlers:
 *       gz: {module: /usr/local/lib/dosomething/gzip.so, options: {level: 9}}
 *
 * It exports one symbol, DS_MODULE_SYMBOL, a constant struct ds_module:
 *
 *     #include <dosomething/handler.h>
 *
 *     const struct ds_module dosomething_module = {
 *         .abi_version = DS_HANDLER_ABI_VERSION,
 *         .name = "gzip",
 *         .init = gz_init,
 *         .process = gz_process,
 *         .fini = gz_fini,
 *     };
 *
 * and is built with
 *
 *     cc -shared -fPIC $(pkg-config --cflags dosomething) -o gzip.so gzip.c
 *
 * Life cycle. Every worker process loads the module itself (dlopen with
 * RTLD_NOW | RTLD_LOCAL) when it starts, after it dropped privileges, and
 * calls init once. It then calls process once per item, one item at a time:
 * never concurrently, never re-entrantly, so the state needs no locking. When
 * the worker exits cleanly (recycled by workers.max_items, stopped, reloaded)
 * it calls fini. A worker that is killed (item timeout, crash) calls nothing
 * more: keep no state outside the process that must be cleaned up.
 * Workers are separate processes: the state of one is never seen by another.
 *
 * Failure. process returning -1 fails the item (FAILED, with the message).
 * A module flagged DS_MODULE_RETRYABLE may instead return DS_MODULE_RETRY
 * (with a message, as for -1) when the failure is passing (a busy
 * downstream, a lock held elsewhere): the attempt ends RETRYING with the
 * message and the item runs again, on any worker, up to its max_attempts;
 * the last attempt's DS_MODULE_RETRY fails it, saying no attempts were
 * left. Without the flag, DS_MODULE_RETRY is a failure like -1.
 * A module that crashes, hangs or calls exit() (any status) kills its
 * worker; the item is then retried on another worker up to its
 * max_attempts, like any worker death. That death is the item's, not the
 * worker's: it never counts toward respawn.crash_limit.
 *
 * Limits. A kind configured with memory_limit or cpu_limit is watched while
 * process() runs: the worker's resident memory growth since the call began
 * and its CPU time (all its threads). Over either, the worker is killed
 * (SIGKILL, no fini) and respawned, and the item is FAILED ("memory limit
 * 64MiB exceeded: ..."), not retried. During such a call malloc() may also
 * return NULL (RLIMIT_DATA, at twice the limit): fail the item saying so
 * ("Cannot allocate memory", "out of memory"): the item is FAILED for the
 * limit, and the worker replaced once it has reported it.
 *
 * Processes. Whatever process() forks (and whatever those orphan: the
 * worker is a subreaper) is SIGKILLed when the item ends. Processes init
 * starts live as long as the worker. The worker ignores SIGHUP, SIGQUIT,
 * SIGUSR1, SIGUSR2, SIGTTIN, SIGTTOU and SIGWINCH (they are the master's),
 * and a program it execs inherits them ignored: set them back to SIG_DFL
 * in the child before exec if the program acts on them.
 *
 * Validation. `dosomethingd -t`, the start and every reload dlopen the
 * module in the master, look up DS_MODULE_SYMBOL, check abi_version and
 * dlclose it again: a missing symbol or another ABI version is a config
 * error, not a crash. (So a module's ELF constructors, if any, also run in
 * the master: keep them trivial.)
 *
 * Versioning. DS_HANDLER_ABI_VERSION changes whenever anything in this
 * file changes in a way that breaks a module built against the previous
 * one; dosomethingd loads only modules whose abi_version equals its own.
 * DS_HANDLER_ABI_MINOR counts what was added without breaking anything:
 * a module that uses an addition says so with the flag that came with it
 * (a host that predates the addition never looks at it).
 *   minor 1: cancel (DS_MODULE_CANCELLABLE, ds_module_host.cancelled).
 *   minor 2: retry (DS_MODULE_RETRYABLE, process() returning DS_MODULE_RETRY).
 *   minor 3: trace context (ds_module_item.traceparent and .tracestate,
 *            appended). A host of minor 3 or later always sets them; a
 *            module built against an older header never sees them, and
 *            one that reads them needs such a host (DS_HANDLER_ABI_MINOR
 *            of the dosomethingd it runs in at least 3).
 *
 * Cancel. A client may cancel an item while process() runs. A module
 * flagged DS_MODULE_CANCELLABLE checks host->cancelled(host) now and then
 * (as often as you like: it costs a poll() of one descriptor, and under a
 * memory_limit, when items for the worker wait, ~10 us more) and, once it
 * returns 1, stops and returns (what it returns no longer matters: the item
 * is CANCELLED). A module without the flag cannot be interrupted: its
 * worker is killed (SIGKILL, no fini) and respawned, and the item is
 * CANCELLED; other items that worker held go back to the queue.
 *
 * Ownership, in one line: what the host passes is the host's and valid only
 * during the call; what the module returns is the module's until the host
 * is done with it (see struct ds_module_result).
 */
#ifndef DOSOMETHING_HANDLER_H
#define DOSOMETHING_HANDLER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DS_HANDLER_ABI_VERSION 1
#define DS_HANDLER_ABI_MINOR 3

/* The name of the one symbol a module exports. */
#define DS_MODULE_SYMBOL "dosomething_module"

/* struct ds_module.flags */
/* process() takes microseconds: the host may send an item's STARTED update
 * together with the next batch instead of on its own (more throughput, and
 * STARTED may be seen only shortly before SUCCEEDED), and a worker may hold
 * 16 times as many of its items. The master reads the flags when it loads
 * the config (start, reload). */
#define DS_MODULE_QUICK 0x1u
/* (minor 1) process() checks host->cancelled(): a cancel stops the item,
 * not the worker. */
#define DS_MODULE_CANCELLABLE 0x2u
/* (minor 2) process() may return DS_MODULE_RETRY: run the item again. */
#define DS_MODULE_RETRYABLE 0x4u

/* (minor 2) What process() of a module flagged DS_MODULE_RETRYABLE returns
 * for a failure that another attempt may not meet (see Failure above). */
#define DS_MODULE_RETRY 1

/* One entry of the handler's `options:` map in the config, as strings. */
struct ds_module_option {
    const char *name;
    const char *value;
};

/* One entry of WorkItem.params. */
struct ds_module_param {
    const char *key;
    const char *value;
};

/* The item to process. Everything here is the host's, valid only during
 * the process() call: copy what you keep. */
struct ds_module_item {
    const char *id;                     /* the client's id; "" when the server assigned it */
    const char *kind;                   /* the configured kind that chose this module */
    const uint8_t *payload;             /* payload_len bytes, not NUL-terminated */
    size_t payload_len;
    const struct ds_module_param *params;   /* param_count entries, in no particular order */
    size_t param_count;
    uint32_t attempt;                   /* 1 for the first try, 2 for the first retry, ... */
    /* (minor 3) The item's W3C trace context (https://www.w3.org/TR/trace-context/),
     * from the doSomething call's traceparent/tracestate metadata or the
     * item's params of those names, checked by the host: NUL-terminated,
     * NULL when the item has none. A module that calls out further passes
     * them on (a child span's parent). */
    const char *traceparent;
    const char *tracestate;
};

/* What the host offers a running process() call. */
struct ds_module_host {
    /* Report progress, FRACTION from 0 to 1. Call as often as you like: the
     * host sends at most one PROGRESS update every 20 ms. */
    void (*progress)(const struct ds_module_host *host, float fraction);
    /* A result longer than this fails the item ("output exceeds N bytes");
     * stop early rather than build a larger one. */
    size_t result_max;
    void *host_data;                    /* the host's: do not touch */
    /* (minor 1; only for a module flagged DS_MODULE_CANCELLABLE) 1 once the
     * item is cancelled: stop and return. Never blocks. */
    int (*cancelled)(const struct ds_module_host *host);
};

/*
 * How process() answers. The host zeroes data, len and release and gives an
 * empty error buffer before each call.
 *
 * Success (return 0): point data at len result bytes (data may be NULL when
 * len is 0). The bytes stay the module's. If release is not NULL the host
 * calls release(data) once it has copied them, before the next call into
 * the module; if release is NULL the bytes must stay valid until the next
 * call into the module (process or fini): a buffer kept in the state works.
 *
 * Failure (return -1): write a NUL-terminated message of at most error_size
 * bytes (including the NUL) into error; the item is FAILED with it. Set data
 * only on success. A retry (return DS_MODULE_RETRY, minor 2, flagged
 * DS_MODULE_RETRYABLE): the same, and the item is RETRYING with it.
 */
struct ds_module_result {
    const void *data;
    size_t len;
    void (*release)(void *data);
    char *error;                        /* the host's buffer */
    size_t error_size;
};

struct ds_module {
    uint32_t abi_version;               /* DS_HANDLER_ABI_VERSION */
    uint32_t flags;                     /* DS_MODULE_* */
    const char *name;                   /* for log lines: "gzip" */

    /*
     * Once per worker, before any item. OPTIONS (option_count entries) are
     * the handler's `options:` from the config, valid only during the call.
     * Set *state to what process and fini receive (it starts NULL).
     * Return 0, or -1 with a NUL-terminated reason in err (err_size bytes):
     * the worker then logs it and exits with the "fatal, do not respawn"
     * status, which stops the daemon. May be NULL (no options, no state).
     */
    int (*init)(const struct ds_module_option *options, size_t option_count, void **state,
                char *err, size_t err_size);

    /* Once per item: fill OUT (see struct ds_module_result) and return 0,
     * -1 or (flagged DS_MODULE_RETRYABLE) DS_MODULE_RETRY. HOST is valid
     * only during the call. Required. */
    int (*process)(void *state, const struct ds_module_item *item,
                   struct ds_module_result *out, const struct ds_module_host *host);

    /* Once, when the worker exits cleanly: free the state. May be NULL. */
    void (*fini)(void *state);
};

#ifdef __cplusplus
}
#endif

#endif
