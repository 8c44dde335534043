#include "grpc/scope.h"

#include <stdio.h>
#include <string.h>

#include <grpc/grpc_security.h>

#include "core/utf8.h"
#include "grpc/grpc_process.h"

/* An identity that can be a scope: valid UTF-8 with no control characters
 * (it is in every update and in logs) and no '/', so that no scope is a
 * prefix of another ("a/" of the identity "a/b"). */
static int
usable_identity(const char *s, size_t len)
{
    if (len == 0 || len > SCOPE_IDENTITY_MAX || !utf8_valid(s, len))
        return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '/' || (unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

int
scope_of_call(grpc_call *call, char *buf, size_t size)
{
    buf[0] = '\0';
    if (!gp.config->grpc.tls || !gp.config->grpc.tls_scope_ids)
        return 0;
    grpc_auth_context *ctx = grpc_call_auth_context(call);
    const grpc_auth_property *p = NULL;
    if (ctx != NULL) {
        grpc_auth_property_iterator it = grpc_auth_context_peer_identity(ctx);
        p = grpc_auth_property_iterator_next(&it);
    }
    int r;
    if (p == NULL || p->value == NULL) {
        snprintf(buf, size, "grpc.tls.scope_ids: the call has no client certificate identity");
        r = -1;
    } else if (!usable_identity(p->value, p->value_length)) {
        snprintf(buf, size, "grpc.tls.scope_ids: the client certificate's identity is empty, "
                 "longer than %d bytes, or holds '/', a control character or invalid UTF-8",
                 SCOPE_IDENTITY_MAX);
        r = -1;
    } else {
        snprintf(buf, size, "%.*s/", (int)p->value_length, p->value);
        r = 1;
    }
    if (ctx != NULL)
        grpc_auth_context_release(ctx);
    return r;
}
