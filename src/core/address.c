#include "core/address.h"

#include <netdb.h>
#include <string.h>
#include <sys/socket.h>

int
address_split(const char *addr, char *host, size_t host_size, const char **port)
{
    const char *colon = strrchr(addr, ':');
    if (colon == NULL)
        return -1;
    const char *start = addr;
    size_t len = (size_t)(colon - addr);
    if (len >= 2 && addr[0] == '[' && addr[len - 1] == ']') {
        start++;
        len -= 2;
    }
    if (len >= host_size)
        return -1;
    memcpy(host, start, len);
    host[len] = '\0';
    *port = colon + 1;
    return 0;
}

const struct addrinfo *
address_pick(const struct addrinfo *list)
{
    const struct addrinfo *v6 = NULL;
    for (const struct addrinfo *ai = list; ai != NULL; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET)
            return ai;
        if (v6 == NULL && ai->ai_family == AF_INET6)
            v6 = ai;
    }
    return v6;
}
