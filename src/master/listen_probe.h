/*
 * Before a start binds anything: is an address it is to listen on already
 * served by another process?
 *
 * gRPC's ports have SO_REUSEPORT (the new instance of a binary upgrade
 * binds beside the old one, and so does status.listen), and gRPC unlinks a
 * unix socket's path before it binds it. So a second daemon started on the
 * same address by mistake (another config, another pid file) is not
 * refused: on a TCP port the two share the clients (of the same user; the
 * kernel refuses another user's), on a unix path the new one takes them
 * all. A start that is not an upgrade asks first, and refuses to start.
 */
#ifndef DS_MASTER_LISTEN_PROBE_H
#define DS_MASTER_LISTEN_PROBE_H

#include <stddef.h>
#include <sys/types.h>

struct addrinfo;
struct ds_config;

/* Is an address of CONFIG's (grpc.listen, status.listen) served by another
 * process? Each one is logged. Asked before the master detaches (daemon:
 * on), so that the refusal reaches whoever started it; not by the new
 * master of a binary upgrade, which binds beside the old one. */
int listen_probe_config(const struct ds_config *config);

/*
 * ADDR ("host:port", "[v6]:port" or "unix:/path") as the config checked
 * it: 1 if another process serves it (WHY says how we know), else 0,
 * also when it cannot tell (a name that does not resolve, an address not
 * of this machine): the bind that follows reports those. Of a name's
 * addresses, those its listener binds: all (grpc.listen: gRPC binds every
 * one), or with FIRST_ONLY the one address_pick() picks (status.listen:
 * status.c binds only that one, at a start and at a reload; another
 * process on another address of the name is no conflict).
 */
int listen_probe_in_use(const char *addr, int first_only, char *why, size_t why_size);
/*
 * For a reload, which binds beside what holds an address only when the
 * holder let it (SO_REUSEPORT, same owner uid: another dosomethingd), else
 * fails to bind and keeps the old listener: 1 if another process serves
 * ADDR and our listener would share it (a unix path: would take it over).
 * OWNER: the uid the grpc process binds as at a reload (`user:`'s when the
 * master runs as root), the probe's socket is made as it; (uid_t)-1: as
 * the caller is.
 */
int listen_probe_shared(const char *addr, int first_only, uid_t owner, char *why,
                        size_t why_size);
/* Does PID hold a socket listening on ADDR's TCP port (any host)? Then a
 * reload to ADDR moves our own listener (127.0.0.1:80 to 0.0.0.0:80), and
 * a probe would find it. 0 for a unix path, or when it cannot tell. */
int listen_probe_held_by(pid_t pid, const char *addr);
/* The same for LIST, getaddrinfo()'s answer (tests build their own). */
int listen_probe_addresses(const struct addrinfo *list, int first_only, char *why,
                           size_t why_size);

#endif
