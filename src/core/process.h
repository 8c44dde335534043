/*
 * What the master and its children agree on: roles, the exit-code contract,
 * and how a child starts.
 */
#ifndef DS_CORE_PROCESS_H
#define DS_CORE_PROCESS_H

#include <stdint.h>
#include <sys/types.h>

#include "core/config.h"

/* Exit codes of every process. */
#define DS_EXIT_OK      0   /* clean exit: respawn only if the slot is still wanted */
#define DS_EXIT_FAILURE 1   /* the master gave up (crash loop, cannot start) */
#define DS_EXIT_FATAL   2   /* boot or config error: respawning would not help */

/* Update seqs are reserved from the master this many at a time, so that a
 * respawned grpc process never reuses one. */
#define SEQ_RESERVE_CHUNK 65536

enum ds_role {
    DS_ROLE_GRPC,
    DS_ROLE_WORKER,
};

/*
 * What a worker is doing, in memory it shares with the master (one page,
 * MAP_SHARED, mapped before the fork and unmapped in every other child):
 * the worker stores into it, with no syscall per item; the master reads it
 * once the worker is dead. That tells a worker that cannot start (its
 * death counts toward respawn.crash_limit, its DS_EXIT_FATAL stops the
 * daemon) from one that an item killed: whatever its exit status, that is
 * the item's failure (retried, then FAILED), and the slot is respawned at
 * once without counting a crash.
 */
enum ds_worker_phase {
    DS_WORKER_STARTING = 0,     /* not ready yet: dying here is a boot failure */
    DS_WORKER_IDLE,             /* ready, between items */
    DS_WORKER_RUNNING,          /* running the item below */
};

/* ds_worker_status.limit_hit: which limit the item running went over. */
enum ds_limit_hit {
    DS_LIMIT_NONE = 0,
    DS_LIMIT_MEMORY,
    DS_LIMIT_CPU,
};

struct ds_worker_status {
    uint32_t phase;             /* enum ds_worker_phase, stored last */
    uint32_t attempt;
    uint64_t key;               /* the grpc process's key of the item running */
    /*
     * A built-in or module item over its kind's memory_limit or cpu_limit
     * (workers/limits.c): the worker stores why and what the attempt cost,
     * limit_hit last, then kills itself. The master then ends that attempt
     * FAILED with limit_reason (not retried), and respawns the worker
     * without counting a crash.
     */
    uint32_t limit_hit;         /* enum ds_limit_hit */
    uint32_t pad;
    uint64_t limit_cpu_usec;
    uint64_t limit_max_rss_kib;
    char limit_reason[200];     /* NUL-terminated */
};

/* What a child is given at fork. The config belongs to the child from then on. */
struct ds_child_start {
    enum ds_role role;
    struct ds_config *config;
    uint64_t generation;
    uint32_t slot;              /* worker slot, from 1 */
    int control_fd;             /* to the master */
    int data_fd;                /* worker: to the grpc process; -1 otherwise */
    uint64_t seq_start;         /* grpc: the first update seq it may use is seq_start + 1 */
    struct ds_worker_status *status;    /* worker: shared with the master; NULL otherwise */
    /* grpc: bind the listeners only once the store serves (the new master
     * of a USR2 upgrade, before it took over: the old instance serves
     * meanwhile, and a client sent to us must not meet a store that cannot
     * take its items yet) */
    int bind_when_serving;
};

void grpc_process_main(struct ds_child_start *start) __attribute__((noreturn));
void worker_process_main(struct ds_child_start *start) __attribute__((noreturn));

/* Set the title `ps` shows (proctitle.c). proctitle_init must run first
 * thing in main. */
void proctitle_init(int argc, char **argv);
void proctitle_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Describe a wait() status: "exited with status 3", "killed by signal 9". */
const char *process_status_text(int status, char *buf, size_t size);

#endif
