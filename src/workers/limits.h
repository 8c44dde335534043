/*
 * handlers.<kind>.memory_limit and cpu_limit: how an attempt that went over
 * is told (shared by exec.c, which limits the program it runs, and the
 * worker), and the watchdog that enforces them on the built-ins and
 * modules, which run in the worker itself (see limits.c).
 */
#ifndef DS_WORKERS_LIMITS_H
#define DS_WORKERS_LIMITS_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/process.h"

/* "memory limit 64MiB exceeded" (BYTES), "cpu limit 2s exceeded" (MS), as
 * the config writes the value; the length written, as snprintf. */
int limits_memory_text(uint64_t bytes, char *buf, size_t size);
int limits_cpu_text(uint64_t ms, char *buf, size_t size);

/* Does TEXT (LEN bytes, not NUL-terminated) read as an allocation that
 * failed ("Cannot allocate memory", "MemoryError", ...)? */
int limits_says_out_of_memory(const char *text, size_t len);

/* Does HANDLER (a built-in or module) have a limit for the watchdog? */
int limits_apply_to(const struct ds_handler_config *handler);

/*
 * Around one attempt of a limited built-in or module (limits_apply_to):
 * limits_arm before the handler runs, limits_disarm once it has returned.
 * While armed, a thread samples every LIMITS_SAMPLE_MS the worker's
 * resident memory (its growth since the arm) and its CPU time (since the
 * arm); and the worker's RLIMIT_DATA is its data at the arm plus twice the
 * memory limit and 64 MiB, so that an allocation faster than the sampler fails rather
 * than take the machine. An attempt over a limit cannot be stopped safely
 * from outside the handler: the thread writes why into STATUS (the page
 * shared with the master, struct ds_worker_status), then SIGKILLs the
 * worker; the master tells the grpc process, which ends the attempt FAILED
 * with that text, and respawns the worker.
 *
 * The thread is started by the first limits_arm, so that a worker with no
 * limited kind has none. Both calls come from the worker's one thread.
 */
#define LIMITS_SAMPLE_MS 10
void limits_arm(const struct ds_handler_config *handler, struct ds_worker_status *status);

/*
 * Around the worker's own reading of its data channel FD while an attempt
 * may be armed (its cancel checks): what that read makes resident (the
 * next items) is not the attempt's, and is not refused by its RLIMIT_DATA.
 * Nothing unless an attempt with a memory limit is armed and FD has
 * something to read.
 */
void limits_own_begin(int fd);
void limits_own_end(void);

/* What the attempt did: its largest resident memory growth seen (bytes),
 * and the CPU it used (ns, measured only when it had a cpu_limit: an
 * attempt that ended between two samples may have gone over by up to
 * one, and the caller fails it all the same). */
struct limits_seen {
    uint64_t memory_growth;
    uint64_t cpu_ns;
};
void limits_disarm(struct limits_seen *seen);

#endif
