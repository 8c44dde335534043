/*
 * Listen addresses as the config checked them: "host:port", "[v6]:port"
 * (grpc.listen also "unix:/abs/path").
 */
#ifndef DS_CORE_ADDRESS_H
#define DS_CORE_ADDRESS_H

#include <stddef.h>

/* "host:port" or "[v6]:port" into HOST (brackets taken off) and PORT (a
 * pointer into ADDR). Returns 0, or -1 if there is no ':' or the host does
 * not fit in HOST_SIZE. */
int address_split(const char *addr, char *host, size_t host_size, const char **port);

struct addrinfo;

/* Of LIST, a name's addresses as a resolver answered (getaddrinfo() at a
 * start, evdns at a reload, resolve.c), the one a listener of one address
 * (status.listen) binds: the first IPv4 one if there is one, else the
 * first IPv6 one; NULL if neither. One rule for the start, a reload and
 * the master's listen probe, whatever order the resolver gave. */
const struct addrinfo *address_pick(const struct addrinfo *list);

#endif
