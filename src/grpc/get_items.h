/*
 * getItems (get_items.c): known items by id (optionally waiting until they
 * are final) or by filter, paged, newest accepted first.
 */
#ifndef DS_GRPC_GET_ITEMS_H
#define DS_GRPC_GET_ITEMS_H

#include <grpc/grpc.h>

/* A new getItems call with its request (destroyed here). */
void get_items_call_start(grpc_call *call, grpc_byte_buffer *request);

#endif
