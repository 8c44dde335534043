/*
 * getItems (get_items.c): known items by id (optionally waiting until they
 * are final) or by filter, paged, newest accepted first.
 */
#ifndef DS_GRPC_GET_ITEMS_H
#define DS_GRPC_GET_ITEMS_H

#include <grpc/grpc.h>

#include "core/wire.h"
#include "grpc/store.h"

/* The most items a listing's page holds (ItemsRequest.limit). */
#define GET_ITEMS_LIMIT_MAX 1000

/* A new getItems call with its request (destroyed here). */
void get_items_call_start(grpc_call *call, grpc_byte_buffer *request);

/* A drain's end: calls waiting for items to be final end UNAVAILABLE. */
void get_items_end_all(void);

/* -1 if Q is not a request getItems answers, with the reason in ERR. */
int get_items_check(const wire_items_request *q, char *err, size_t size);

/* Q (checked, unscoped) answered as getItems answers it, for a caller in
 * this process (the status endpoint): IDS are Q's item_ids. DONE hears the
 * answer before this returns (NULL is returned: the index answers at once)
 * or later from the loop (cluster mode: the backend's question is
 * returned, to give up with store_items_abort() if the caller goes away).
 * Q and IDS are borrowed until DONE is called. */
struct store_items_ask *get_items_ask(const wire_items_request *q, char *const *ids,
                                      store_items_fn *done, void *arg);

#endif
