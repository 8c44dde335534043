/*
 * resolve.c: host names to addresses without blocking the loop.
 *
 * hiredis's connect calls getaddrinfo(), which blocks on a DNS server for
 * up to its timeouts: the grpc process's loop would stall with it. So a
 * host name of cluster.redis (or of a sentinel, or the master a sentinel
 * names) is first resolved here with libevent's evdns (asynchronous,
 * /etc/resolv.conf and /etc/hosts), and hiredis is given the numeric
 * address, which getaddrinfo() turns into a sockaddr without asking anyone.
 */
#ifndef DS_GRPC_RESOLVE_H
#define DS_GRPC_RESOLVE_H

struct event_base;
struct resolve_request;

/* The answer to resolve_host(): ADDRESS (numeric, NUL-terminated, valid
 * during the call only) or NULL and WHY. */
typedef void resolve_fn(void *arg, const char *address, const char *why);

/*
 * Resolve HOST (a name, or an IPv4 or IPv6 address, which is answered as
 * it is) on BASE: FN(ARG, ...) runs once, later, from the loop (never from
 * inside this call), with the first IPv4 address of the name if it has
 * one, else its first IPv6 address. The request is owned by resolve.c and
 * freed after FN returns; resolve_cancel() before that: FN never runs.
 */
struct resolve_request *resolve_host(struct event_base *base, const char *host, resolve_fn *fn,
                                     void *arg);
void resolve_cancel(struct resolve_request *r);
/* At exit: pending requests are cancelled (their FN never runs), the
 * resolver is freed. */
void resolve_shutdown(void);

#endif
