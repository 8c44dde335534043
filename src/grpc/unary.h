/*
 * What the calls answered by one message share (unary.c): cancel, retry,
 * getItems, and doSomething once its client stream has ended. The request
 * read from its byte buffer, the reply packed, and the end of the call:
 * initial metadata, the reply (if any) and the status with its details,
 * sent once.
 *
 * An RPC embeds a struct unary_call (whose base is the struct call that
 * call.h describes) and keeps only what is its own.
 */
#ifndef DS_GRPC_UNARY_H
#define DS_GRPC_UNARY_H

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

#include "grpc/call.h"
#include "grpc/store.h"

struct unary_call;

/* The reply of U (packed, for unary_finish) from what store_act() did. */
typedef grpc_byte_buffer *unary_act_reply_fn(struct unary_call *u,
                                             const struct store_act_result *result);

/*
 * Embedded in each such RPC's struct (zeroed), which frees what this holds
 * with unary_call_free() from its kind->destroy.
 */
struct unary_call {
    struct call base;
    grpc_byte_buffer *reply;    /* as sent; ours */
    grpc_slice details;         /* the status's, when has_details; ours */
    int has_details;
    int sent_metadata;          /* the initial metadata has gone */
    int replied;                /* unary_finish() has sent the status */
    /* cluster mode: the question to store_act() in flight (it holds a
     * reference to the call), and what makes the reply of its answer */
    struct store_act_ask *act;
    unary_act_reply_fn *act_reply;
};

/* The message of type DESCRIPTOR in BB (NULL: an empty message), or NULL
 * if BB is not one. BB is destroyed here; the caller frees the message
 * (with its type's free_unpacked). */
void *unary_decode(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *descriptor);

/* Is each of the N STRINGS valid UTF-8, of 1..MAX bytes (MAX 0: of any
 * length)? If not, why (naming the field as NAME[i]) into ERR; -1. */
int unary_check_strings(const char *name, char *const *strings, size_t n, size_t max,
                        char *err, size_t err_size);

/* MSG packed in a new byte buffer, for unary_finish(). */
grpc_byte_buffer *unary_pack(const ProtobufCMessage *msg);

/* Send the initial metadata now, before the reply is known. */
void unary_send_metadata(struct unary_call *u);

/* Has the call nothing more to send (replied, or closed by the client)? */
int unary_is_over(const struct unary_call *u);

/* End the call with STATUS, DETAILS (copied; NULL: none) and REPLY (ours
 * from now on; NULL: no message), unless it is over already. */
void unary_finish(struct unary_call *u, grpc_status_code status, const char *details,
                  grpc_byte_buffer *reply);

/* Ask store_act() Q for U (cluster mode): U ends with REPLY's message, or
 * with the error the store answers. Q's strings must last until then. */
void unary_ask_act(struct unary_call *u, const struct store_act_query *q,
                   unary_act_reply_fn *reply);

/* The kind->closed of a call that may ask store_act(): the question in
 * flight, if any, is given up. */
void unary_act_closed(struct call *call);

/* Free what U holds (not U). */
void unary_call_free(struct unary_call *u);

#endif
