/*
 * This process's children, and killing the ones it should not have: what
 * an item left behind in a worker, what a dead worker left to the master.
 * Both are subreapers (PR_SET_CHILD_SUBREAPER), so an orphan anywhere below
 * them, `setsid` or double fork, becomes their child. See children.c.
 */
#ifndef DS_CORE_CHILDREN_H
#define DS_CORE_CHILDREN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Nonzero for a child that must be left alone. */
typedef int (*children_spare_fn)(pid_t pid, void *arg);

/* The pids of this process's children (of every thread, zombies included),
 * in a malloc'd array the caller frees, *count of them; NULL with errno set
 * when /proc cannot say. */
pid_t *children_list(size_t *count);

/* 0 if this process has no child at all, not even a zombie (one waitid). */
int children_any(void);

/* SIGKILL every child SPARE does not claim (SPARE may be NULL). Reaps
 * nothing. Returns how many, or -1 with errno. */
int children_kill(children_spare_fn spare, void *arg);

/*
 * children_kill(), then reap exactly those, and again for what reparents to
 * us as they die, until SPARE claims every child left, waiting at most
 * TIMEOUT_MS in all. Returns how many were killed, or -1 (errno ETIMEDOUT
 * when some were still alive at the deadline).
 */
int children_kill_all(children_spare_fn spare, void *arg, uint64_t timeout_ms);

#endif
