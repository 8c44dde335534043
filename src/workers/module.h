/*
 * Module handlers: shared objects speaking include/dosomething/handler.h,
 * loaded by each worker. See module.c and docs/handlers.md.
 */
#ifndef DS_WORKERS_MODULE_H
#define DS_WORKERS_MODULE_H

#include <stddef.h>

#include "core/config.h"
#include "core/wire.h"
#include "workers/handler.h"

/*
 * Load every module handler of CONFIG: dlopen, look up and check the
 * module, call its init with the handler's options. Returns 0, or -1 with
 * the reason in err (the worker then exits with DS_EXIT_FATAL). CONFIG must
 * outlive the modules: they are found again by handler.
 */
int module_load_all(const struct ds_config *config, char *err, size_t err_size);

/* Call every loaded module's fini and unload it. */
void module_unload_all(void);

/* Run ITEM with HANDLER's module (see handler_run). */
int module_run(const struct ds_handler_config *handler, const wire_work_item *item,
               struct handler_output *out);

#endif
