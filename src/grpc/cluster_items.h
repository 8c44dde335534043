/*
 * cluster_items.c: the known items of cluster mode, in Redis (the hashes
 * {NAME}:item:ID and the listing {NAME}:items that cluster.c's scripts
 * write): getItems by ids (waiting for finals through the update stream
 * every instance reads) and by filter, paged.
 */
#ifndef DS_GRPC_CLUSTER_ITEMS_H
#define DS_GRPC_CLUSTER_ITEMS_H

#include <stddef.h>

#include "grpc/store.h"

/* The backend's get_items and items_abort (store.h). */
struct store_items_ask *cluster_get_items(const struct store_items_query *q,
                                          store_items_fn *done, void *arg);
void cluster_items_abort(struct store_items_ask *ask);
/* The backend's act and act_abort (store.h): cancel and retry. */
struct store_act_ask *cluster_act(const struct store_act_query *q, store_act_fn *done,
                                  void *arg);
void cluster_act_abort(struct store_act_ask *ask);
/* The update stream delivered a final update of item ID (ID_LEN bytes). */
void cluster_items_final(const char *id, size_t id_len);

#endif
