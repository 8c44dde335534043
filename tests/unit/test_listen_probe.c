/*
 * The master's listen check (src/master/listen_probe.c) on address lists
 * made here, as getaddrinfo() could answer for a name with several
 * addresses (localhost: 127.0.0.1 and ::1): another process listening on
 * the second address is a conflict for grpc.listen, which binds every
 * address of a name, and none for status.listen, which binds only the one
 * address_pick() picks (the first IPv4, else the first IPv6), at a start
 * (status.c listen_socket()) as at a reload (resolve.c): whatever order
 * getaddrinfo() gives.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/address.h"
#include "master/listen_probe.h"

struct two {
    struct addrinfo ai[2];
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
};

/* FIRST_V4: 127.0.0.1 then ::1, else ::1 then 127.0.0.1; both port PORT. */
static struct addrinfo *
two_of(struct two *t, uint16_t port, int first_v4)
{
    memset(t, 0, sizeof *t);
    t->v4.sin_family = AF_INET;
    t->v4.sin_port = htons(port);
    t->v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    t->v6.sin6_family = AF_INET6;
    t->v6.sin6_port = htons(port);
    t->v6.sin6_addr = in6addr_loopback;
    struct addrinfo *a4 = &t->ai[first_v4 ? 0 : 1], *a6 = &t->ai[first_v4 ? 1 : 0];
    *a4 = (struct addrinfo){ .ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
                             .ai_protocol = IPPROTO_TCP, .ai_addrlen = sizeof t->v4,
                             .ai_addr = (struct sockaddr *)&t->v4 };
    *a6 = (struct addrinfo){ .ai_family = AF_INET6, .ai_socktype = SOCK_STREAM,
                             .ai_protocol = IPPROTO_TCP, .ai_addrlen = sizeof t->v6,
                             .ai_addr = (struct sockaddr *)&t->v6 };
    t->ai[0].ai_next = &t->ai[1];
    return &t->ai[0];
}

/* A listener on ADDR (port 0: any), as another process's; its port in *PORT. */
static int
listener(int family, uint16_t *port)
{
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd == -1)
        return -1;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&ss;
        s->sin_family = AF_INET;
        s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        s->sin_port = htons(*port);
        len = sizeof *s;
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
        int on = 1;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on);
        s->sin6_family = AF_INET6;
        s->sin6_addr = in6addr_loopback;
        s->sin6_port = htons(*port);
        len = sizeof *s;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) == -1 || listen(fd, 1) == -1 ||
        getsockname(fd, (struct sockaddr *)&ss, &len) == -1) {
        close(fd);
        return -1;
    }
    *port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                    : ((struct sockaddr_in6 *)&ss)->sin6_port);
    return fd;
}

/* A port with a listener on ::1 and none on 127.0.0.1; -1: no IPv6
 * loopback here (the test is skipped). */
static int
v6_taken(uint16_t *port)
{
    for (int tries = 0; tries < 50; tries++) {
        *port = 0;
        int fd = listener(AF_INET6, port);
        if (fd == -1)
            return -1;
        uint16_t p4 = *port;
        int probe = listener(AF_INET, &p4);     /* is 127.0.0.1:port free? */
        if (probe != -1) {
            close(probe);
            return fd;
        }
        close(fd);
    }
    return -1;
}

static void
test_second_address_served(void **state)
{
    uint16_t port;
    int fd = v6_taken(&port);
    if (fd == -1) {
        skip();     /* no IPv6 loopback on this machine */
        return;
    }
    char why[200] = "";
    struct two t;
    /* status.listen binds 127.0.0.1 only: ::1 served elsewhere is no conflict. */
    assert_int_equal(listen_probe_addresses(two_of(&t, port, 1), 1, why, sizeof why), 0);
    /* grpc.listen binds both: it is. */
    assert_int_equal(listen_probe_addresses(two_of(&t, port, 1), 0, why, sizeof why), 1);
    assert_non_null(strstr(why, "Address already in use"));
    /* ::1 first (getaddrinfo's order for localhost on many machines): still
     * 127.0.0.1, as a reload binds it, so still no conflict. */
    assert_int_equal(listen_probe_addresses(two_of(&t, port, 0), 1, why, sizeof why), 0);
    assert_int_equal(listen_probe_addresses(two_of(&t, port, 0), 0, why, sizeof why), 1);
    /* A name of ::1 only: that one, served. */
    struct addrinfo *v6 = &two_of(&t, port, 0)[0];
    v6->ai_next = NULL;
    why[0] = '\0';
    assert_int_equal(listen_probe_addresses(v6, 1, why, sizeof why), 1);
    assert_non_null(strstr(why, "Address already in use"));
    close(fd);
}

/* The one rule: the first IPv4 address, else the first IPv6 one, in
 * whichever order the resolver gave them. */
static void
test_address_pick(void **state)
{
    struct two t;
    struct addrinfo *list = two_of(&t, 9090, 1);
    assert_ptr_equal(address_pick(list), &t.ai[0]);
    assert_int_equal(address_pick(list)->ai_family, AF_INET);
    list = two_of(&t, 9090, 0);                 /* ::1, then 127.0.0.1 */
    assert_ptr_equal(address_pick(list), &t.ai[1]);
    assert_int_equal(address_pick(list)->ai_family, AF_INET);
    list->ai_next = NULL;                       /* ::1 only */
    assert_ptr_equal(address_pick(list), &t.ai[0]);
    t.ai[0].ai_family = AF_UNIX;                /* neither */
    assert_null(address_pick(list));
    assert_null(address_pick(NULL));
}

static void
test_first_address_served(void **state)
{
    uint16_t port = 0;
    int fd = listener(AF_INET, &port);
    assert_int_not_equal(fd, -1);
    char why[200];
    struct two t;
    assert_int_equal(listen_probe_addresses(two_of(&t, port, 1), 1, why, sizeof why), 1);
    assert_int_equal(listen_probe_addresses(two_of(&t, port, 1), 0, why, sizeof why), 1);
    close(fd);
}

static void
test_first_ipv4_address_is_the_one(void **state)
{
    /* 192.0.2.1 (TEST-NET-1) is no address of this machine, but it is the
     * name's first IPv4 address: status.listen binds it (and fails there,
     * at a start as at a reload), so 127.0.0.1 after it, served, is no
     * conflict; and the probe cannot tell about 192.0.2.1 (EADDRNOTAVAIL):
     * the bind reports it. */
    uint16_t port = 0;
    int fd = listener(AF_INET, &port);
    assert_int_not_equal(fd, -1);
    struct sockaddr_in away = { .sin_family = AF_INET, .sin_port = htons(port) };
    inet_pton(AF_INET, "192.0.2.1", &away.sin_addr);
    struct sockaddr_in here = { .sin_family = AF_INET, .sin_port = htons(port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    struct addrinfo ai[2] = {
        { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP,
          .ai_addrlen = sizeof away, .ai_addr = (struct sockaddr *)&away, .ai_next = &ai[1] },
        { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP,
          .ai_addrlen = sizeof here, .ai_addr = (struct sockaddr *)&here },
    };
    char why[200];
    assert_ptr_equal(address_pick(ai), &ai[0]);
    assert_int_equal(listen_probe_addresses(ai, 1, why, sizeof why), 0);
    assert_int_equal(listen_probe_addresses(ai, 0, why, sizeof why), 1);
    close(fd);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_second_address_served),
        cmocka_unit_test(test_first_address_served),
        cmocka_unit_test(test_first_ipv4_address_is_the_one),
        cmocka_unit_test(test_address_pick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
