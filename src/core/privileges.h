/*
 * Giving up root in a child: the grpc process and the workers run as
 * `user:` when the daemon starts as root; the master keeps root so that it
 * can reload (read the config, bind nothing, fork).
 */
#ifndef DS_CORE_PRIVILEGES_H
#define DS_CORE_PRIVILEGES_H

#include <stddef.h>

/*
 * Become USER for good: supplementary groups (initgroups), then real,
 * effective and saved gid and uid. Does nothing, returning 0, when USER is
 * NULL or "" or when the process is not running as root (euid != 0).
 * Returns 0, or -1 with the reason (naming the call that failed) in err: the
 * caller must not go on running as root, it should exit with DS_EXIT_FATAL.
 *
 * Changing credentials clears PR_SET_PDEATHSIG; this function sets it again
 * to what it was and, if the parent died meanwhile, raises it at once, so a
 * child still dies with the master. PR_SET_DUMPABLE is reset to 0 by the
 * kernel (fs.suid_dumpable): set it afterwards if core dumps are wanted.
 */
int privileges_drop(const char *user, char *err, size_t err_size);

/*
 * Listener sockets are owned by USER, as the ones a reload binds (after
 * privileges_drop()): Linux lets sockets share a port with SO_REUSEPORT
 * only if one effective uid created them all, so a start's listener made
 * as root could be shared neither by a reload (as USER) nor, once a reload
 * bound one as USER, by the new instance of a binary upgrade (as root).
 *
 * privileges_bind_as(USER): when root and USER names another user, make
 * the effective gid and uid USER's (the real and saved ones stay root's,
 * so privileges_bind_done() can come back) and raise CAP_NET_BIND_SERVICE
 * into the effective set, so that a port below 1024 binds as before.
 * Returns 1 when it switched (then call privileges_bind_done() before
 * anything else), 0 when nothing changed (not root, no user, or it failed:
 * logged; the caller binds as root, as before). glibc applies set*id to
 * every thread of the process (gRPC's too): call it from one thread at a
 * time, around socket() and bind() only.
 */
int privileges_bind_as(const char *user);
void privileges_bind_done(void);
/* Within privileges_bind_as() .. privileges_bind_done(): root's ids for a
 * moment, to read a file only root may (a TLS key gRPC fetches while it
 * binds); 1 if it switched, then privileges_bind_resume() after. 0 outside
 * (nothing changes: a reload's or a handshake's fetch runs as it is). */
int privileges_bind_pause(void);
void privileges_bind_resume(void);

#endif
