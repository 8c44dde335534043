/*
 * One unary call of the DoSomething service: a request message out, a reply
 * message back, on the caller's channel, polled to its end here.
 */
#ifndef DS_CLI_UNARY_H
#define DS_CLI_UNARY_H

#include <protobuf-c/protobuf-c.h>

#include "cli/rpc.h"

/* The full paths of the methods (static: gRPC keeps them). */
#define UNARY_SERVICE     "/com.agrounds.dosomething.v1.DoSomethingService/"
#define UNARY_GET_ITEMS   UNARY_SERVICE "getItems"
#define UNARY_CANCEL      UNARY_SERVICE "cancel"
#define UNARY_RETRY       UNARY_SERVICE "retry"

/*
 * Call PATH (one of the above; METHOD is its name, for messages) with REQUEST and
 * unpack the reply with DESCRIPTOR into *REPLY (free it with
 * protobuf_c_message_free_unpacked). DEADLINE_MS as for rpc_call_start.
 * Returns CLI_EXIT_OK, CLI_EXIT_INTERRUPTED, or CLI_EXIT_RPC after saying
 * why on stderr (the status, or a reply that is no such message).
 */
int unary_call(struct rpc *r, const char *path, const char *method,
               const ProtobufCMessage *request,
               const ProtobufCMessageDescriptor *descriptor, int64_t deadline_ms,
               ProtobufCMessage **reply);

#endif
