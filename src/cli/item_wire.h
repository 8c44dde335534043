/*
 * Items on the wire (item_wire.c): the one part of items that needs gRPC.
 */
#ifndef DS_CLI_ITEM_WIRE_H
#define DS_CLI_ITEM_WIRE_H

#include <grpc/grpc.h>

#include "cli/item.h"

/* The WorkItem's bytes, ready to send; the caller destroys the buffer. */
grpc_byte_buffer *item_encode(const struct item *it, const struct item_defaults *defaults);

#endif
