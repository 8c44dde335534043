/*
 * The configuration: dosomething.yaml parsed into one value.
 *
 * A config is loaded whole into a fresh struct ds_config whose every string
 * and array lives in the config's own pool, validated, and either swapped in
 * or thrown away with one config_free(). Nothing outside this file keeps
 * pointers into a config it does not own.
 */
#ifndef DS_CORE_CONFIG_H
#define DS_CORE_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/alloc.h"

#define DS_WORKERS_MAX        1024
#define DS_PREFETCH_MAX       1024
#define DS_MESSAGE_SIZE_MIN   1024u
#define DS_MESSAGE_SIZE_MAX   (64u << 20)

/* What one work item may carry (checked when it is submitted). */
#define DS_ITEM_ID_MAX          256     /* bytes of WorkItem.id */
#define DS_ITEM_BATCH_MAX       256     /* bytes of WorkItem.batch */
#define DS_PARAM_KEY_MAX        128     /* bytes of each params key */
#define DS_PARAM_VALUE_MAX      4096    /* bytes of each params value */
/* queue.retry_backoff: {} means these */
#define CONFIG_RETRY_BACKOFF_MIN_MS  1000
#define CONFIG_RETRY_BACKOFF_MAX_MS  (5 * 60 * 1000)
#define DS_DELAY_MAX_MS         (30u * 24 * 3600 * 1000)  /* WorkItem.delay_ms: 30 days */

/* No Update is larger than a stock gRPC client accepts: grpc's default max
 * receive message size. An Update is its result plus at most
 * DS_UPDATE_ROOM of everything else (seq, id and batch of 256 bytes each, a
 * kind, an error of at most DS_UPDATE_ERROR_MAX, numbers), so results are
 * bounded by handlers.max_result_size <= DS_RESULT_SIZE_MAX. */
#define DS_UPDATE_SIZE_MAX      (4u << 20)
#define DS_UPDATE_ROOM          (64u << 10)
#define DS_UPDATE_ERROR_MAX     4096    /* bytes of Update.error */
#define DS_RESULT_SIZE_MAX      (DS_UPDATE_SIZE_MAX - DS_UPDATE_ROOM)

enum ds_log_level {
    DS_LOG_ERROR,
    DS_LOG_WARN,
    DS_LOG_NOTICE,
    DS_LOG_INFO,
    DS_LOG_DEBUG,
};

enum ds_on_full {
    DS_ON_FULL_BLOCK,
    DS_ON_FULL_REJECT,
};

enum ds_journal_sync {
    DS_JOURNAL_SYNC_ALWAYS,
    DS_JOURNAL_SYNC_INTERVAL,
    DS_JOURNAL_SYNC_NEVER,
};

enum ds_handler_type {
    DS_HANDLER_ECHO,
    DS_HANDLER_SHA256,
    DS_HANDLER_SLEEP,
    DS_HANDLER_EXEC,
    DS_HANDLER_MODULE,
};

struct ds_env_var {
    char *name;
    char *value;
};

/* handlers.<kind>.cancel_grace: default and bound (0: SIGKILL at once). */
#define CONFIG_CANCEL_GRACE_DEFAULT_MS 5000u
#define CONFIG_CANCEL_GRACE_MAX_MS     (10u * 60 * 1000)

/* handlers.<kind>.retry_exit_codes (exec): the default, EX_TEMPFAIL. */
#define CONFIG_RETRY_EXIT_DEFAULT      75

/* One entry of `handlers:`: the kind name and what runs it. */
struct ds_handler_config {
    char *kind;
    enum ds_handler_type type;
    uint64_t timeout_ms;          /* 0: no timeout */
    /* A cancelled running item: how long an exec program has between SIGTERM
     * and SIGKILL; the grpc process kills a worker that has not answered a
     * cancel this long (plus a margin) after it asked. */
    uint64_t cancel_grace_ms;
    /* exec */
    char **argv;                  /* NULL-terminated */
    size_t argc;
    struct ds_env_var *env;
    size_t env_count;
    /* Exit statuses (1..255) that end an attempt RETRYING instead of FAILED:
     * status s is bit s % 8 of byte s / 8. {CONFIG_RETRY_EXIT_DEFAULT}
     * unless the config says otherwise; all clear: never. */
    uint8_t retry_exit_codes[32];
    /* module */
    char *module_path;            /* resolved against the config directory */
    struct ds_env_var *options;   /* the module's `options:` map, as strings */
    size_t option_count;
    /* The module's ds_module.flags (DS_MODULE_QUICK), read by config_load
     * (the master) when it checks the module; 0 from config_load_text, which
     * never loads a module: the master sends them with the text. */
    uint32_t module_flags;
    /* Per-kind limits, applied by the grpc process (src/grpc/kind_gate.c):
     * at most concurrency items running at once (0: unlimited), at most
     * rate_count started per rate_interval_ms (0: no rate), and paused:
     * accepted and queued, not started. */
    uint32_t concurrency;
    uint32_t rate_count;
    uint64_t rate_interval_ms;
    int paused;
    /* An attempt's limits; 0: none. exec: the program's (src/workers/exec.c),
     * RLIMIT_DATA of memory_limit bytes, RLIMIT_CPU of cpu_limit_ms rounded
     * up to whole seconds. Built-ins and modules (src/workers/limits.c): the
     * worker's resident memory growth and CPU time while it runs the
     * attempt; a worker over either is killed and respawned. */
    uint64_t memory_limit;
    uint64_t cpu_limit_ms;
    /* handlers.<kind>.cache {size, ttl} (src/grpc/result_cache.c): the
     * kind is deterministic, its SUCCEEDED results are kept up to
     * cache_size bytes (LRU) for cache_ttl_ms each; cache_size 0: off. */
    uint64_t cache_size;
    uint64_t cache_ttl_ms;
};

/* handlers.<kind>.memory_limit and cpu_limit: bounds. */
#define CONFIG_MEMORY_LIMIT_MIN  (1ull << 20)
#define CONFIG_MEMORY_LIMIT_MAX  (1ull << 50)
#define CONFIG_CPU_LIMIT_MAX_MS  (30ull * 24 * 3600 * 1000)

/* handlers.<kind>.cache: bounds. */
#define CONFIG_CACHE_SIZE_MAX   (1ull << 40)                    /* 1 TiB */
#define CONFIG_CACHE_TTL_MIN_MS 100ull
#define CONFIG_CACHE_TTL_MAX_MS (365ull * 24 * 3600 * 1000)     /* a year */

/* handlers.<kind>.concurrency and rate: bounds. */
#define CONFIG_CONCURRENCY_MAX 1000000u
#define CONFIG_RATE_COUNT_MAX  1000000u
/* Does exit STATUS (0..255) of HANDLER's program ask for a retry? */
int config_retry_exit_code(const struct ds_handler_config *handler, int status);

/* The service's methods a grpc.listen entry may serve (grpc.listen_methods);
 * bit i is config_method_name(i). Health and reflection are not among them:
 * every listener serves those. */
#define DS_METHOD_DO_SOMETHING  (1u << 0)
#define DS_METHOD_GET_UPDATES   (1u << 1)
#define DS_METHOD_GET_ITEMS     (1u << 2)
#define DS_METHOD_CANCEL        (1u << 3)
#define DS_METHOD_RETRY         (1u << 4)
#define DS_METHOD_COUNT         5
#define DS_METHODS_ALL          ((1u << DS_METHOD_COUNT) - 1)

/* A host (a name, an IPv4 address or an IPv6 one without brackets) and a
 * port; in the config's pool. */
struct ds_address {
    char *host;
    int port;
};

/* At most this many sentinels in cluster.redis. */
#define CONFIG_SENTINELS_MAX 16

struct ds_config {
    struct ds_pool *pool;         /* owns everything below */

    char *path;                   /* the config file, absolute */
    char *dir;                    /* its directory: relative paths start here */
    char *source;                 /* the file's text, as parsed */
    size_t source_len;
    int empty;                    /* no YAML document (0 bytes, blank, comments only):
                                   * every setting is its default */

    int daemon;
    char *pid_file;               /* absolute */
    char *user;                   /* "" : keep the current user */

    struct {
        enum ds_log_level level;
        char *file;               /* "stderr" or an absolute path */
        char *access;             /* NULL: off; else an absolute path */
    } log;

    struct {
        uint32_t count;           /* resolved: never 0 */
        int count_auto;           /* count came from `auto` */
        uint32_t prefetch;        /* 1..1024 */
        uint64_t max_items;       /* 0: never recycle */
        int cpu_affinity;         /* 0 off, 1 auto */
        int nice;                 /* -20..19 */
        uint64_t rlimit_nofile;   /* 0: inherit */
        int core_dumps;           /* -1 inherit, 0 off, 1 on */
    } workers;

    struct {
        char **listen;            /* "host:port", "[v6]:port", "unix:/abs/path" */
        unsigned *listen_methods; /* per listen entry: the DS_METHOD_* it serves */
        size_t listen_count;
        uint64_t max_message_size;
        int tls;                  /* 0: off */
        char *tls_cert;
        char *tls_key;
        char *tls_client_ca;      /* NULL: no client certificates required */
        int tls_scope_ids;        /* ids and updates scoped to the client certificate */
        uint32_t max_concurrent_streams;  /* per connection (HTTP/2 SETTINGS) */
        int unix_mode;            /* -1: as created; else permission bits of unix: sockets */
        char *unix_owner;         /* NULL: as created; else "user" or "user:group" */
        uint64_t max_connection_age_ms;        /* 0: off; then GOAWAY (new calls elsewhere) */
        uint64_t max_connection_age_grace_ms;  /* 0: off (open calls are never cut) */
        struct {
            uint64_t time_ms;                  /* our pings on idle connections; 0: off */
            uint64_t timeout_ms;               /* no ack this long: the connection is closed */
            uint64_t min_ping_interval_ms;     /* client pings accepted this often */
            int permit_without_calls;          /* pings on connections without calls */
        } keepalive;
    } grpc;

    struct {
        uint64_t capacity;
        enum ds_on_full on_full;
        uint32_t max_attempts;    /* 1..1000 */
        uint32_t max_params;      /* params per item */
        char *journal;            /* NULL: off; else an absolute directory */
        enum ds_journal_sync journal_sync;
        uint64_t journal_sync_interval_ms;
        /* queue.retry_backoff {min, max}; min 0: off (a retry runs at once) */
        uint64_t retry_backoff_min_ms;
        uint64_t retry_backoff_max_ms;
    } queue;

    struct {
        uint64_t history;         /* retained updates, >= 1 */
        uint64_t subscriber_buffer;
        uint64_t history_bytes;   /* bound on the log's and each backlog's bytes */
        uint64_t max_subscribers; /* open getUpdates calls */
        uint64_t subscribers_bytes; /* bound on the bytes of all backlogs together */
    } updates;

    struct {
        /* How long known items stay known after their final state
         * (items.c): whichever bound is hit first forgets the oldest final. */
        uint64_t retention_age_ms;
        uint64_t retention_count;
        uint64_t retention_bytes;     /* ids, results, raw WorkItems of finals */
    } items;

    char *default_handler;        /* a kind present in handlers[] */
    uint64_t max_result_size;     /* a longer result fails its item; <= DS_RESULT_SIZE_MAX */
    struct ds_handler_config *handlers;
    size_t handler_count;

    struct {
        char *listen;             /* NULL: off */
        char *auth;               /* the user file of HTTP basic auth; NULL: off */
    } status;

    struct {
        char *redis;              /* NULL: off; else the URL as written */
        char *host;               /* redis://: from the URL; NULL with sentinels */
        int port;
        /* sentinel://H1:P1,H2:P2/MASTER: the sentinels (asked in turn for the
         * master's address) and the master's name there; none with redis:// */
        struct ds_address *sentinels;
        size_t sentinel_count;
        char *master_name;
        char *name;               /* prefix of the Redis keys */
        uint64_t lease_ms;        /* unrenewed this long, an item is claimed by another */
        uint32_t min_replicas_ack;        /* accepted only once on this many replicas (WAIT) */
        uint64_t replicas_ack_timeout_ms; /* ... within this */
    } cluster;

    struct {
        uint64_t backoff_min_ms;  /* first respawn delay after a crash */
        uint64_t backoff_max_ms;  /* the delay doubles up to this */
        uint64_t stable_after_ms; /* running this long resets the backoff */
        uint32_t crash_limit;     /* crashes of one slot in a row, then give up */
    } respawn;

    uint64_t shutdown_timeout_ms;
};

/*
 * Load and validate FILE. On success returns a new config. On failure
 * returns NULL and appends every error found, one per line, each
 * "FILE:LINE:COL: key: reason", to errors (a NUL-terminated buffer of
 * errors_size bytes, truncated if need be).
 */
struct ds_config *config_load(const char *file, char *errors, size_t errors_size);

/*
 * As config_load, but FILE must be a regular file (opened without
 * blocking): a reload, in the master, must not wait on a FIFO put at the
 * config's path. Start and -t read a pipe or a device too (-c /dev/stdin).
 */
struct ds_config *config_load_for_reload(const char *file, char *errors, size_t errors_size);

/*
 * As config_load, but parse TEXT (len bytes) as if it were the contents of
 * FILE: used by a child that receives the text the master validated.
 */
struct ds_config *config_load_text(const char *file, const char *text, size_t len,
                                   char *errors, size_t errors_size);

/*
 * As config_load_text, but without refusing the keys this build parses and
 * does not implement yet (check_unsupported() in config.c): for tests.
 */
struct ds_config *config_load_text_unchecked(const char *file, const char *text, size_t len,
                                             char *errors, size_t errors_size);

void config_free(struct ds_config *config);

/* Print the effective config (defaults filled in) as YAML that loads back
 * to the same config. Returns 0, or -1 if writing failed. */
int config_print(const struct ds_config *config, FILE *out);

const struct ds_handler_config *config_handler(const struct ds_config *config,
                                               const char *kind);

/* "5s" -> 5000 and the like; for tests and for the command line. */
int config_parse_duration_ms(const char *text, uint64_t *ms);
int config_parse_size(const char *text, uint64_t *bytes);

const char *log_level_name(enum ds_log_level level);

/* The proto's rpc name of DS_METHOD_* bit INDEX (0..DS_METHOD_COUNT-1):
 * "doSomething", "getUpdates", ... */
const char *config_method_name(unsigned index);

/*
 * grpc.unix_owner "user" or "user:group" -> uid and gid ((gid_t)-1, for
 * chown: unchanged, when no group is named). Returns 0, or -1 with a reason
 * in err.
 */
int config_unix_owner(const char *owner, uid_t *uid, gid_t *gid, char *err, size_t err_size);

#endif
