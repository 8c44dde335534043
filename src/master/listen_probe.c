#include "master/listen_probe.h"

#include <dirent.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
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
/* Would a bind with SO_REUSEPORT, as gRPC's and the status server's, take
 * AI beside whoever holds it (a process of the same user that set it too)?
 * Linux shares a port only between sockets created by one effective uid.
 * At a reload the listener is bound by the grpc process, which by then
 * runs as `user:`; a probe made as root (the master) failed beside another
 * daemon's listener made by its own reload (owned by that user) and
 * refused nothing, while our grpc process, the same user, shared it. So,
 * with OWNER not (uid_t)-1, the socket is made and bound as OWNER: seteuid
 * and back, the master being single-threaded. A port below 1024 then
 * fails with EACCES, as the grpc process's bind would: not shared. */
static int
shareable(const struct addrinfo *ai, uid_t owner)
{
    uid_t was = geteuid();
    int as_owner = owner != (uid_t)-1 && owner != was;
    if (as_owner && seteuid(owner) == -1) {
        log_syswarn("listen probe: seteuid(%u) failed; probing as uid %u", (unsigned)owner,
                    (unsigned)was);
        as_owner = 0;
    }
    int ok = 0;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd != -1) {
        int on = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on);
        ok = bind(fd, ai->ai_addr, ai->ai_addrlen) == 0;
        close(fd);
    }
    if (as_owner && seteuid(was) == -1) {
        /* Cannot happen (the saved uid is WAS); a master that is not root
         * any more could neither reload nor signal its children. */
        log_syserr("listen probe: seteuid(%u) back failed", (unsigned)was);
        abort();
    }
    return ok;
}

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

/* SHARED_ONLY: only an address a bind with SO_REUSEPORT would share. */
static int
addresses_in_use(const struct addrinfo *list, int first_only, int shared_only, uid_t owner,
                 char *why, size_t why_size)
{
    if (first_only) {
        const struct addrinfo *pick = address_pick(list);
        return pick != NULL && served(pick, why, why_size) &&
               (!shared_only || shareable(pick, owner));
    }
    for (const struct addrinfo *ai = list; ai != NULL; ai = ai->ai_next)
        if (served(ai, why, why_size) && (!shared_only || shareable(ai, owner)))
            return 1;
    return 0;
}

int
listen_probe_addresses(const struct addrinfo *list, int first_only, char *why, size_t why_size)
{
    return addresses_in_use(list, first_only, 0, (uid_t)-1, why, why_size);
}

static int
tcp_in_use(const char *addr, int first_only, int shared_only, uid_t owner, char *why,
           size_t why_size)
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
    int served = addresses_in_use(list, first_only, shared_only, owner, why, why_size);
    freeaddrinfo(list);
    return served;
}

int
listen_probe_in_use(const char *addr, int first_only, char *why, size_t why_size)
{
    if (strncmp(addr, "unix:", 5) == 0)
        return unix_in_use(addr + 5, why, why_size);
    return tcp_in_use(addr, first_only, 0, (uid_t)-1, why, why_size);
}

int
listen_probe_shared(const char *addr, int first_only, uid_t owner, char *why, size_t why_size)
{
    /* gRPC unlinks a unix socket's path and binds it: it takes them all. */
    if (strncmp(addr, "unix:", 5) == 0)
        return unix_in_use(addr + 5, why, why_size);
    if (!tcp_in_use(addr, first_only, 1, owner, why, why_size))
        return 0;
    snprintf(why, why_size, "it accepts a bind with SO_REUSEPORT beside it: the two would "
             "share its clients");
    return 1;
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

/* Add to INODES (up to MAX) the sockets listening on TCP PORT in TABLE
 * (/proc/net/tcp or tcp6); returns the new count. */
static size_t
listening_inodes(const char *table, unsigned port, unsigned long *inodes, size_t n, size_t max)
{
    FILE *f = fopen(table, "re");
    if (f == NULL)
        return n;
    char line[512];
    if (fgets(line, sizeof line, f) == NULL) {      /* the header */
        fclose(f);
        return n;
    }
    while (n < max && fgets(line, sizeof line, f) != NULL) {
        char local[128], remote[128], state[8];
        unsigned long inode;
        /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
        if (sscanf(line, "%*s %127s %127s %7s %*s %*s %*s %*s %*s %lu", local, remote, state,
                   &inode) != 4 || strcmp(state, "0A") != 0)
            continue;
        const char *colon = strrchr(local, ':');
        if (colon != NULL && strtoul(colon + 1, NULL, 16) == port)
            inodes[n++] = inode;
    }
    fclose(f);
    return n;
}

int
listen_probe_held_by(pid_t pid, const char *addr)
{
    char host[300];
    const char *port_text;
    if (strncmp(addr, "unix:", 5) == 0 ||
        address_split(addr, host, sizeof host, &port_text) == -1)
        return 0;
    unsigned port = (unsigned)strtoul(port_text, NULL, 10);
    unsigned long inodes[64];
    size_t n = listening_inodes("/proc/net/tcp", port, inodes, 0, 64);
    n = listening_inodes("/proc/net/tcp6", port, inodes, n, 64);
    if (n == 0)
        return 0;
    char dir[64], link[128], target[64];
    snprintf(dir, sizeof dir, "/proc/%ld/fd", (long)pid);
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    int held = 0;
    struct dirent *e;
    while (!held && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(link, sizeof link, "%s/%.20s", dir, e->d_name);
        ssize_t len = readlink(link, target, sizeof target - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        unsigned long inode;
        if (sscanf(target, "socket:[%lu]", &inode) != 1)
            continue;
        for (size_t i = 0; i < n && !held; i++)
            held = inodes[i] == inode;
    }
    closedir(d);
    return held;
}
