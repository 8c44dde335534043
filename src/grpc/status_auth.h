/*
 * status_auth.c: HTTP basic auth of the status endpoint (status.auth), and
 * the warning about an endpoint open beyond loopback without it.
 */
#ifndef DS_GRPC_STATUS_AUTH_H
#define DS_GRPC_STATUS_AUTH_H

#include <event2/buffer.h>
#include <event2/http.h>

/* The config (gp.config) was applied, at start or on reload: read
 * status.auth's user file again (a file that cannot be read now keeps the
 * users read before, or, if there were none, refuses everyone), forget the
 * verifications remembered, warn if status.listen is not loopback and
 * status.auth is off. */
void status_auth_configure(void);

/* May REQ (for PATH) be served? 0: yes. Otherwise the HTTP status to
 * answer with (401: no or wrong credentials; 429: too many password
 * checks this second), its headers set on REQ and its text in BODY.
 * /healthz is always served (load balancers probe it without credentials). */
int status_auth_check(struct evhttp_request *req, const char *path, struct evbuffer *body);

void status_auth_shutdown(void);

#endif
