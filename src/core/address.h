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

#endif
