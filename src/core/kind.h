/*
 * What an item must be for its kind, and what it costs: the params each
 * built-in handler takes and their limits, the environment names an exec
 * item's params become, and whether an item is quick. The grpc process
 * checks an item with kind_check() before accepting it and weighs it with
 * kind_is_quick() for dispatch; the worker that runs it reads the same
 * params and batches the same quick items. One implementation for both
 * processes, so neither links the other's code.
 */
#ifndef DS_CORE_KIND_H
#define DS_CORE_KIND_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/wire.h"

/* Limits of the built-ins' params. */
#define KIND_SHA256_ROUNDS_MAX 100000000ull
#define KIND_SLEEP_MS_MAX      86400000ull
#define KIND_SLEEP_STEPS_MAX   100000ull

/* 0 if ITEM's params suit HANDLER, else -1 with the reason in err. A
 * built-in takes only its own params, as integers in their range; an exec
 * item's params must become distinct environment variables; a module
 * checks its own params when it runs. */
int kind_check(const struct ds_handler_config *handler, const wire_work_item *item,
               char *err, size_t err_size);

/*
 * Does ITEM take microseconds? echo always, sha256 with few rounds over a
 * small payload, a module whose ds_module.flags has DS_MODULE_QUICK (as the
 * master read them when it loaded the config: handler->module_flags).
 * ITEM may be NULL for a module. A quick item weighs less in dispatch and
 * its STARTED may wait for the next batch of updates. Never an item of a
 * kind with memory_limit or cpu_limit: each attempt is watched on its own.
 */
int kind_is_quick(const struct ds_handler_config *handler, const wire_work_item *item);

/* The value of built-in param NAME (sha256: rounds; sleep: ms, steps) of
 * ITEM, or its default when ITEM has none; 0 for a name HANDLER does not
 * take. ITEM passed kind_check. */
uint64_t kind_param(const struct ds_handler_config *handler, const wire_work_item *item,
                    const char *name);

/* The environment variable of an exec item's PARAM: DS_PARAM_ + the name
 * upper-cased, every byte but [A-Z0-9_] turned into '_'. Writes at most
 * size bytes; returns the length it needs (like snprintf). */
size_t kind_exec_env_name(const char *param, char *buf, size_t size);

#endif
