#include "grpc/filter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/utf8.h"

static int
compare_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char **
sorted_copy(char **strings, size_t count)
{
    if (count == 0)
        return NULL;
    char **copy = ds_malloc(count * sizeof *copy);
    memcpy(copy, strings, count * sizeof *copy);
    qsort(copy, count, sizeof *copy, compare_strings);
    return copy;
}

/* proto3 strings must be UTF-8; a filter that is not could match nothing
 * a valid item has, so it is an error, not a silent empty stream. */
static int
check_utf8(const char *name, char **strings, size_t count, char *err, size_t err_size)
{
    for (size_t i = 0; i < count; i++) {
        if (!utf8_valid(strings[i], strlen(strings[i]))) {
            snprintf(err, err_size, "%s[%zu] is not valid UTF-8", name, i);
            return -1;
        }
    }
    return 0;
}

int
filter_init(struct filter *f, const wire_updates_request *request, char *err, size_t err_size)
{
    memset(f, 0, sizeof *f);
    if (check_utf8("item_ids", request->item_ids, request->n_item_ids, err, err_size) == -1 ||
        check_utf8("kinds", request->kinds, request->n_kinds, err, err_size) == -1 ||
        check_utf8("batches", request->batches, request->n_batches, err, err_size) == -1)
        return -1;
    for (size_t i = 0; i < request->n_states; i++) {
        int s = (int)request->states[i];
        if (s < STATE_QUEUED || s > STATE_MAX) {
            snprintf(err, err_size, "states[%zu]: %d is not a state an update can have", i, s);
            return -1;
        }
        f->states |= 1u << s;
    }
    f->item_ids = sorted_copy(request->item_ids, request->n_item_ids);
    f->item_id_count = request->n_item_ids;
    f->kinds = sorted_copy(request->kinds, request->n_kinds);
    f->kind_count = request->n_kinds;
    f->batches = sorted_copy(request->batches, request->n_batches);
    f->batch_count = request->n_batches;
    return 0;
}

void
filter_set_scope(struct filter *f, const char *scope)
{
    size_t len = strlen(scope);
    f->scope = ds_strdup(scope);
    f->scope_len = len;
    for (size_t i = 0; i < f->item_id_count; i++) {
        const char *id = f->item_ids[i];
        if (strncmp(id, scope, len) == 0) {
            f->item_ids[i] = ds_strdup(id);
        } else {
            char *scoped = ds_malloc(len + strlen(id) + 1);
            memcpy(scoped, scope, len);
            strcpy(scoped + len, id);
            f->item_ids[i] = scoped;
        }
    }
    f->owns_item_ids = 1;
    if (f->item_id_count > 0)
        qsort(f->item_ids, f->item_id_count, sizeof *f->item_ids, compare_strings);
}

void
filter_free(struct filter *f)
{
    if (f->owns_item_ids)
        for (size_t i = 0; i < f->item_id_count; i++)
            free(f->item_ids[i]);
    free(f->scope);
    free(f->item_ids);
    free(f->kinds);
    free(f->batches);
    memset(f, 0, sizeof *f);
}

static int
in_list(char **list, size_t count, const char *s)
{
    if (count == 0)
        return 1;
    return bsearch(&s, list, count, sizeof *list, compare_strings) != NULL;
}

int
filter_match(const struct filter *f, const char *item_id, const char *kind, const char *batch,
             unsigned state)
{
    if (f->states != 0 && (state > 31 || !(f->states & (1u << state))))
        return 0;
    if (f->scope != NULL && strncmp(item_id, f->scope, f->scope_len) != 0)
        return 0;
    return in_list(f->kinds, f->kind_count, kind) &&
           in_list(f->batches, f->batch_count, batch) &&
           in_list(f->item_ids, f->item_id_count, item_id);
}
