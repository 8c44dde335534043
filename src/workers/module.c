/*
 * Module handlers: `kind: {module: PATH, options: {...}}`.
 *
 * Each worker dlopens every configured module when it starts (after it
 * dropped privileges, so init runs as the configured user), checks the
 * exported struct ds_module and calls init once per handler with that
 * handler's options: two kinds naming one file share the loaded object but
 * get a state each. process runs in the worker's one thread, one item at a
 * time; fini and dlclose happen when the worker exits cleanly.
 *
 * The master runs the same checks (dlopen, symbol, ABI version) when it
 * loads the config, so a wrong file is a config error and not a worker
 * crash loop; only a failing init is found here, and it is fatal.
 */
#include "workers/module.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dosomething/handler.h"

#include "core/alloc.h"
#include "core/log.h"

/* Params of an item beyond this many take a malloc. */
#define MODULE_PARAMS_ON_STACK 16

struct loaded_module {
    const struct ds_handler_config *handler;
    void *dl;
    const struct ds_module *module;
    void *state;
};

static struct {
    struct loaded_module *list;
    size_t count;
} modules;

static const char *
module_name(const struct loaded_module *m)
{
    return m->module->name != NULL ? m->module->name : m->handler->module_path;
}

static struct loaded_module *
module_find(const struct ds_handler_config *handler)
{
    for (size_t i = 0; i < modules.count; i++)
        if (modules.list[i].handler == handler)
            return &modules.list[i];
    return NULL;
}

static int
module_open(struct loaded_module *m, char *err, size_t err_size)
{
    const char *path = m->handler->module_path;
    m->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (m->dl == NULL) {
        snprintf(err, err_size, "cannot load module: %s", dlerror());
        return -1;
    }
    m->module = dlsym(m->dl, DS_MODULE_SYMBOL);
    if (m->module == NULL)
        snprintf(err, err_size, "%s does not export " DS_MODULE_SYMBOL, path);
    else if (m->module->abi_version != DS_HANDLER_ABI_VERSION)
        snprintf(err, err_size, "%s was built for handler ABI version %u; this dosomethingd "
                 "loads version %d", path, m->module->abi_version, DS_HANDLER_ABI_VERSION);
    else if (m->module->process == NULL)
        snprintf(err, err_size, "%s: " DS_MODULE_SYMBOL ".process is NULL", path);
    else
        return 0;
    dlclose(m->dl);
    m->dl = NULL;
    return -1;
}

static int
module_init(struct loaded_module *m, char *err, size_t err_size)
{
    const struct ds_handler_config *h = m->handler;
    if (m->module->init == NULL)
        return 0;
    struct ds_module_option *options = ds_calloc(h->option_count + 1, sizeof *options);
    for (size_t i = 0; i < h->option_count; i++) {
        options[i].name = h->options[i].name;
        options[i].value = h->options[i].value;
    }
    char why[512] = "";
    int r = m->module->init(options, h->option_count, &m->state, why, sizeof why);
    free(options);
    if (r == 0)
        return 0;
    why[sizeof why - 1] = '\0';
    handler_clean_text(why);
    snprintf(err, err_size, "module %s (%s) for kind \"%s\": init failed: %s", module_name(m),
             h->module_path, h->kind, why[0] ? why : "no reason given");
    return -1;
}

int
module_load_all(const struct ds_config *config, char *err, size_t err_size)
{
    size_t n = 0;
    for (size_t i = 0; i < config->handler_count; i++)
        n += config->handlers[i].type == DS_HANDLER_MODULE;
    if (n == 0)
        return 0;
    modules.list = ds_calloc(n, sizeof *modules.list);
    for (size_t i = 0; i < config->handler_count; i++) {
        const struct ds_handler_config *h = &config->handlers[i];
        if (h->type != DS_HANDLER_MODULE)
            continue;
        struct loaded_module *m = &modules.list[modules.count];
        m->handler = h;
        if (module_open(m, err, err_size) == -1)
            return -1;
        if (module_init(m, err, err_size) == -1) {
            dlclose(m->dl);
            return -1;
        }
        modules.count++;
        log_debug("module %s (%s) loaded for kind \"%s\"", module_name(m), h->module_path,
                  h->kind);
    }
    return 0;
}

void
module_unload_all(void)
{
    while (modules.count > 0) {
        struct loaded_module *m = &modules.list[--modules.count];
        if (m->module->fini != NULL)
            m->module->fini(m->state);
        dlclose(m->dl);
    }
    free(modules.list);
    modules.list = NULL;
}

static void
host_progress(const struct ds_module_host *host, float fraction)
{
    struct handler_output *out = host->host_data;
    if (!(fraction >= 0))
        fraction = 0;                   /* NaN too */
    if (fraction > 1)
        fraction = 1;
    if (out->progress != NULL)
        out->progress(out->progress_arg, fraction);
}

static int
host_cancelled(const struct ds_module_host *host)
{
    struct handler_output *out = host->host_data;
    return handler_wait_cancel(out, 0);
}

int
module_run(const struct ds_handler_config *handler, const wire_work_item *item,
           struct handler_output *out)
{
    static const uint8_t no_payload[1];
    struct loaded_module *m = module_find(handler);
    if (m == NULL) {
        snprintf(out->error, sizeof out->error, "the module of kind \"%s\" is not loaded in "
                 "this worker", handler->kind);
        return -1;
    }

    struct ds_module_param on_stack[MODULE_PARAMS_ON_STACK], *params = on_stack;
    if (item->n_params > MODULE_PARAMS_ON_STACK)
        params = ds_malloc(item->n_params * sizeof *params);
    for (size_t i = 0; i < item->n_params; i++) {
        params[i].key = item->params[i]->key;
        params[i].value = item->params[i]->value;
    }
    struct ds_module_item in = {
        .id = item->id,
        .kind = handler->kind,
        .payload = item->payload.data != NULL ? item->payload.data : no_payload,
        .payload_len = item->payload.len,
        .params = params,
        .param_count = item->n_params,
        .attempt = out->attempt,
        .traceparent = out->traceparent,
        .tracestate = out->tracestate,
    };
    struct ds_module_host host = {
        .progress = host_progress, .result_max = out->result_max, .host_data = out,
        .cancelled = host_cancelled,
    };
    out->error[0] = '\0';
    struct ds_module_result result = { .error = out->error, .error_size = sizeof out->error };

    int r = m->module->process(m->state, &in, &result, &host);
    if (params != on_stack)
        free(params);

    if (r == 0 && result.len > 0 && result.data == NULL) {
        snprintf(out->error, sizeof out->error, "module %s returned %zu bytes at NULL",
                 module_name(m), result.len);
        return -1;
    }
    if (r == 0 && result.len > out->result_max) {
        if (result.release != NULL)
            result.release((void *)result.data);
        snprintf(out->error, sizeof out->error, "result of %zu bytes exceeds "
                 "handlers.max_result_size (%zu)", result.len, out->result_max);
        return -1;
    }
    if (r == 0) {
        out->result = result.data;
        out->result_len = result.len;
        out->release = result.release;
        return 0;
    }
    if (result.release != NULL && result.data != NULL)
        result.release((void *)result.data);
    /* A module built before minor 2 (or without the flag) never meant
     * DS_MODULE_RETRY: any return but 0 fails the item, as it always did. */
    int retry = r == DS_MODULE_RETRY && (m->module->flags & DS_MODULE_RETRYABLE);
    out->error[sizeof out->error - 1] = '\0';
    if (out->error[0] == '\0')
        snprintf(out->error, sizeof out->error, "module %s %s without saying why",
                 module_name(m), retry ? "asked for a retry" : "failed");
    handler_clean_text(out->error);
    return retry ? HANDLER_RETRY : -1;
}
