/*
 * One unary call (unary.c): a request message out, a reply message back,
 * on the caller's channel, polled to its end here. unary_call() for the
 * DoSomething service's methods; unary_exchange() for a call whose bytes
 * the caller makes and reads itself (health).
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
 * The caller's (on its stack, zeroed), who frees what it holds with
 * unary_exchange_free().
 */
struct unary_exchange {
    struct rpc_call call;       /* started by the caller (rpc_call_start) */
    struct rpc_tag tag;
    grpc_byte_buffer *send_buffer;
    grpc_byte_buffer *recv_buffer;  /* the reply; NULL: none came */
    grpc_metadata_array initial_metadata;
};

/* Send REQUEST (taken) on X's started call and poll R until the call has
 * ended (an interrupt cancels it): then X->call.status and X->recv_buffer
 * say how it went. */
void unary_exchange(struct rpc *r, struct unary_exchange *x, grpc_slice request);
/* Free the call and the buffers of X (not X). */
void unary_exchange_free(struct unary_exchange *x);

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
