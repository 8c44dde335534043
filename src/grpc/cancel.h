/*
 * The cancel RPC (cancel.c): cancel items by id or batch, with a reason.
 */
#ifndef DS_GRPC_CANCEL_H
#define DS_GRPC_CANCEL_H

#include <grpc/grpc.h>

/* Bounds of one CancelRequest (INVALID_ARGUMENT beyond them). */
#define CANCEL_IDS_MAX      10000u
#define CANCEL_BATCHES_MAX  100u
#define CANCEL_REASON_MAX   1024u     /* bytes of UTF-8 */

/* A cancel call with its request (the call's from now on; NULL: empty). */
void cancel_call_start(grpc_call *call, grpc_byte_buffer *request);

#endif
