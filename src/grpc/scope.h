/*
 * Id scopes (grpc.tls.scope_ids: on, with client certificates): every item
 * a client submits gets the id "IDENTITY/ID", where IDENTITY is its
 * certificate's peer identity (its first subjectAltName, or its subject CN
 * when it has none, as gRPC's auth context gives it), and its getUpdates
 * shows only items of that scope. One client can then neither take
 * another's id nor see another's results.
 */
#ifndef DS_GRPC_SCOPE_H
#define DS_GRPC_SCOPE_H

#include <stddef.h>

#include <grpc/grpc.h>

/* The longest identity a scope takes, in bytes. */
#define SCOPE_IDENTITY_MAX 128

/* CALL's scope ("IDENTITY/") into BUF of SIZE (> SCOPE_IDENTITY_MAX + 1)
 * bytes: 1; 0 with BUF "" when ids are not scoped; -1 with the reason in BUF
 * when they are and the call has no identity that can be one. */
int scope_of_call(grpc_call *call, char *buf, size_t size);

#endif
