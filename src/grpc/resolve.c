/*
 * Host names to addresses with libevent's evdns (resolve.h says why).
 * One evdns base for the process, made at the first name to resolve.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "core/address.h"
#include "core/alloc.h"
#include "grpc/resolve.h"

#ifndef EVENT__HAVE_STRUCT_ADDRINFO
#error "libevent's evutil_addrinfo is not struct addrinfo: address_pick() needs it"
#endif

/* Owned by resolve.c from resolve_host() until FN has run or it is
 * cancelled. */
struct resolve_request {
    resolve_fn *fn;
    void *arg;
    struct evdns_getaddrinfo_request *dns;  /* a lookup under way */
    struct event *deliver;                  /* the answer, from the loop */
    int cancelled;                          /* FN is not to run */
    char address[INET6_ADDRSTRLEN];
    char why[200];
    struct resolve_request *next;           /* every live request */
};

static struct evdns_base *dns;
static struct resolve_request *live;

static void
unlink_request(struct resolve_request *r)
{
    for (struct resolve_request **p = &live; *p != NULL; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            break;
        }
    }
    if (r->deliver != NULL)
        event_free(r->deliver);
    free(r);
}

static void
on_deliver(evutil_socket_t fd, short what, void *arg)
{
    struct resolve_request *r = arg;
    if (!r->cancelled)
        r->fn(r->arg, r->address[0] ? r->address : NULL, r->why);
    unlink_request(r);
}

static void
deliver_later(struct resolve_request *r)
{
    event_active(r->deliver, EV_TIMEOUT, 0);
}

static void
on_dns(int result, struct evutil_addrinfo *res, void *arg)
{
    struct resolve_request *r = arg;
    r->dns = NULL;
    if (r->cancelled || result == EVUTIL_EAI_CANCEL) {
        if (res != NULL)
            evutil_freeaddrinfo(res);
        unlink_request(r);          /* resolve_cancel(): evdns answers it later */
        return;
    }
    if (result != 0) {
        snprintf(r->why, sizeof r->why, "cannot resolve its host name: %s",
                 evutil_gai_strerror(result));
    } else {
        /* evutil_addrinfo is struct addrinfo here (the build checks). */
        const struct addrinfo *pick = address_pick(res);
        const void *addr = NULL;
        if (pick != NULL && pick->ai_family == AF_INET)
            addr = &((const struct sockaddr_in *)(const void *)pick->ai_addr)->sin_addr;
        else if (pick != NULL)
            addr = &((const struct sockaddr_in6 *)(const void *)pick->ai_addr)->sin6_addr;
        if (addr == NULL || inet_ntop(pick->ai_family, addr, r->address,
                                      sizeof r->address) == NULL) {
            r->address[0] = '\0';
            snprintf(r->why, sizeof r->why, "its host name has no IPv4 or IPv6 address");
        }
    }
    if (res != NULL)
        evutil_freeaddrinfo(res);
    deliver_later(r);
}

struct resolve_request *
resolve_host(struct event_base *base, const char *host, resolve_fn *fn, void *arg)
{
    struct resolve_request *r = ds_calloc(1, sizeof *r);
    r->fn = fn;
    r->arg = arg;
    r->deliver = event_new(base, -1, 0, on_deliver, r);
    r->next = live;
    live = r;

    struct in6_addr a6;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1) {
        snprintf(r->address, sizeof r->address, "%s", host);
        deliver_later(r);
        return r;
    }
    if (dns == NULL) {
        dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                             EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (dns == NULL) {
            snprintf(r->why, sizeof r->why, "cannot resolve its host name: the resolver "
                     "could not be set up from /etc/resolv.conf");
            deliver_later(r);
            return r;
        }
    }
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    /* An answer known at once (/etc/hosts, an error) comes through on_dns()
     * before this returns, and NULL: deliver_later() has it. */
    r->dns = evdns_getaddrinfo(dns, host, NULL, &hints, on_dns, r);
    return r;
}

void
resolve_cancel(struct resolve_request *r)
{
    if (r == NULL)
        return;
    r->cancelled = 1;
    /* Either on_dns() runs later (EVUTIL_EAI_CANCEL) or on_deliver(): each
     * frees it. */
    if (r->dns != NULL)
        evdns_getaddrinfo_cancel(r->dns);
}

void
resolve_shutdown(void)
{
    /* evdns_base_free() without failing them: no callback runs any more. */
    if (dns != NULL) {
        evdns_base_free(dns, 0);
        dns = NULL;
    }
    while (live != NULL)
        unlink_request(live);
}
