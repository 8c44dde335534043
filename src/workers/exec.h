/*
 * The exec handler: a program per item, payload on stdin, result from
 * stdout, the exit status decides. See exec.c and docs/handlers.md.
 */
#ifndef DS_WORKERS_EXEC_H
#define DS_WORKERS_EXEC_H

#include <stddef.h>

#include "core/wire.h"
#include "workers/handler.h"

/* Run ITEM with HANDLER's program and wait for it (see handler_run). The
 * worker must ignore SIGPIPE. */
int exec_run(const struct ds_handler_config *handler, const wire_work_item *item,
             struct handler_output *out);

/*
 * The guard: a small process per worker that SIGKILLs the process group of
 * the program running when the worker dies (see exec.c). Start it before
 * loading anything that could start threads; TITLE names it in `ps`.
 * Returns 0, or -1 with the reason logged (exec items then still run, only
 * unguarded). exec_guard_stop() closes it and reaps it.
 */
int exec_guard_start(const char *title);
void exec_guard_stop(void);

/* The guard's pid, or -1: for tests. */
int exec_guard_pid(void);

#endif
