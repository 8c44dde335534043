/*
 * attempts.c: why each earlier attempt of an item failed, so that the final
 * FAILED of an item that used up its attempts (a poison item) lists them
 * all: "attempt 1: worker 4711 killed by signal 11 (SIGSEGV); attempt 2: ...".
 *
 * Kept by the grpc process that ran the attempts, in memory, for items
 * that failed at least once and are not final; item_free() forgets them.
 * A journal recovery or a cluster take-over starts a new history.
 * Ownership: attempts.c allocates and frees every entry.
 */
#ifndef DS_GRPC_ATTEMPTS_H
#define DS_GRPC_ATTEMPTS_H

#include <stdint.h>

/* Attempt ATTEMPT of the item KEY failed for REASON (copied; the history
 * stops growing at ATTEMPTS_TEXT_MAX bytes, ending in "; ..."). */
void attempts_note(uint64_t key, uint32_t attempt, const char *reason);
/* "attempt 1: R1; attempt 2: R2" for KEY, or NULL if none failed; valid
 * until the next call here. */
const char *attempts_of(uint64_t key);
/* KEY's history, if any, is dropped (its item is final or gone). */
void attempts_forget(uint64_t key);

#define ATTEMPTS_TEXT_MAX 2048

#endif
