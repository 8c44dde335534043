/*
 * A subscriber's filter: item_ids, kinds, states, batches. An empty list
 * matches everything; every list must match.
 */
#ifndef DS_GRPC_FILTER_H
#define DS_GRPC_FILTER_H

#include <stddef.h>
#include <stdint.h>

#include "core/wire.h"

struct filter {
    char **item_ids;            /* sorted; point into the request, unless scoped */
    size_t item_id_count;
    char **kinds;
    size_t kind_count;
    char **batches;
    size_t batch_count;
    uint32_t states;            /* bit per state; 0: all */
    char *scope;                /* NULL, or only item ids that begin with it match */
    size_t scope_len;
    int owns_item_ids;          /* the item_ids strings are ours to free */
};

/* Build F from REQUEST, which must outlive it. Returns 0, or -1 with the
 * reason in err (a state out of range). */
int filter_init(struct filter *f, const wire_updates_request *request, char *err,
                size_t err_size);
/* Match only item ids in SCOPE ("IDENTITY/"); the ids in the item_ids list
 * are taken as the client's own, without it, unless they begin with it. */
void filter_set_scope(struct filter *f, const char *scope);
void filter_free(struct filter *f);
int filter_match(const struct filter *f, const char *item_id, const char *kind,
                 const char *batch, unsigned state);

#endif
