/*
 * What a worker sets up about itself before it takes any item: CPU, nice,
 * limits, core dumps, and the user it runs as. See hygiene.c.
 */
#ifndef DS_WORKERS_HYGIENE_H
#define DS_WORKERS_HYGIENE_H

#include <stdint.h>

#include "core/config.h"

/*
 * Apply workers.cpu_affinity, workers.nice, workers.rlimit_nofile and
 * workers.core_dumps of CONFIG to this worker (slot SLOT, from 1), make it
 * a subreaper (PR_SET_CHILD_SUBREAPER), and make sure it runs as `user:` (if the master has not dropped it already). A
 * setting that cannot be applied is logged as a warning and skipped; only a
 * failed privilege drop is fatal (exit DS_EXIT_FATAL).
 */
void worker_apply_hygiene(const struct ds_config *config, uint32_t slot);

/* The CPU worker SLOT is pinned to with cpu_affinity: auto: the
 * ((slot - 1) mod n)-th of the n CPUs in ALLOWED (n > 0). For tests. */
int hygiene_cpu_for_slot(const void *allowed_cpu_set, uint32_t slot);

#endif
