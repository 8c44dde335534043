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

#endif
