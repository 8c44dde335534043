#include "master/listen_probe.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/address.h"
#include "core/config.h"
#include "core/log.h"

/* A unix path is served if a connect() to it is taken, or would wait
 * (EAGAIN: a listener whose backlog is full; non-blocking, so that a hung
 * one cannot hold the start up). A stale socket file refuses it. */
static int
unix_in_use(const char *path, char *why, size_t why_size)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sun.sun_path)
        return 0;
    strcpy(sun.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return 0;
    int served = connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0 || errno == EAGAIN;
    close(fd);
    if (served)
        snprintf(why, why_size, "a process listens on it");
    return served;
}

/* A TCP address is served if a bind() without SO_REUSEPORT fails with
 * EADDRINUSE (SO_REUSEADDR: a port whose old connections wait in
 * TIME_WAIT is free). Which of LIST's addresses are tried is which the
 * listener binds: every one (gRPC binds every address of a name), or, with
 * FIRST_ONLY, the one address_pick() picks, as status.c listen_socket()
 * and a reload do (the first IPv4, else the first IPv6). */
static int
served(const struct addrinfo *ai, char *why, size_t why_size)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd == -1)
        return 0;
    int on = 1, in_use = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == -1)
        in_use = errno == EADDRINUSE;
    close(fd);
    if (in_use)
        snprintf(why, why_size, "bind() without SO_REUSEPORT failed: %s", strerror(EADDRINUSE));
    return in_use;
}

int
listen_probe_addresses(const struct addrinfo *list, int first_only, char *why, size_t why_size)
{
    if (first_only) {
        const struct addrinfo *pick = address_pick(list);
        return pick != NULL && served(pick, why, why_size);
    }
    for (const struct addrinfo *ai = list; ai != NULL; ai = ai->ai_next)
        if (served(ai, why, why_size))
            return 1;
    return 0;
}

static int
tcp_in_use(const char *addr, int first_only, char *why, size_t why_size)
{
    char host[300];
    const char *port;
    if (address_split(addr, host, sizeof host, &port) == -1)
        return 0;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *list;
    if (getaddrinfo(host[0] != '\0' ? host : NULL, port, &hints, &list) != 0)
        return 0;
    int served = listen_probe_addresses(list, first_only, why, why_size);
    freeaddrinfo(list);
    return served;
}

int
listen_probe_in_use(const char *addr, int first_only, char *why, size_t why_size)
{
    if (strncmp(addr, "unix:", 5) == 0)
        return unix_in_use(addr + 5, why, why_size);
    return tcp_in_use(addr, first_only, why, why_size);
}

int
listen_probe_config(const struct ds_config *config)
{
    int found = 0;
    char why[200];
    for (size_t i = 0; i < config->grpc.listen_count; i++) {
        if (listen_probe_in_use(config->grpc.listen[i], 0, why, sizeof why)) {
            log_error("grpc.listen %s is in use by another process (%s): is another "
                      "dosomethingd serving it? Not starting", config->grpc.listen[i], why);
            found = 1;
        }
    }
    /* status.c binds one address of a name (address_pick()), gRPC all. */
    if (config->status.listen != NULL &&
        listen_probe_in_use(config->status.listen, 1, why, sizeof why)) {
        log_error("status.listen %s is in use by another process (%s); not starting",
                  config->status.listen, why);
        found = 1;
    }
    return found;
}
