/*
 * The descriptor budget: what RLIMIT_NOFILE must allow for a config, the
 * limit in force, and how many descriptors a process holds.
 */
#ifndef DS_CORE_DESCRIPTORS_H
#define DS_CORE_DESCRIPTORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

/* The master holds a worker's control channel and, until the grpc process
 * has it, the grpc end of its data channel; the grpc process holds the data
 * channel: 2 in the process that holds the most. */
#define DESCRIPTORS_PER_WORKER    2
/* What every process holds whatever the config: stdio, logs, epoll,
 * signalfd, gRPC's own pipes and eventfds, journal segments, Redis, /proc
 * reads. */
#define DESCRIPTORS_BASE          64
/* Kept free in the grpc process: below this much room it stops taking
 * status connections, and worker channels and journal files still open. */
#define DESCRIPTORS_RESERVE       32
/* The least room left for client connections that a config may leave. */
#define DESCRIPTORS_MIN_CLIENTS   64

/* Descriptors CONFIG needs at the least, client connections included. */
uint64_t descriptors_needed(const struct ds_config *config);

/* Raise the soft RLIMIT_NOFILE to the hard one (logged). Returns the soft
 * limit now in force. */
uint64_t descriptors_raise_limit(void);

/* The soft RLIMIT_NOFILE in force, and the hard one. */
uint64_t descriptors_limit(void);
uint64_t descriptors_hard_limit(void);

/* How many descriptors this process holds now (a count of /proc/self/fd),
 * or 0 if that cannot be read. */
uint64_t descriptors_open(void);

#endif
