/*
 * The queue journal (queue.journal: DIR): accepted items survive the grpc
 * process, the whole daemon, and (with journal_sync: always) a power cut.
 * docs/journal.md has the whole story; the contract in brief:
 *
 * - An item counts as accepted (SubmitReply.accepted, QUEUED, queued) only
 *   once its ACCEPT record is written, and fsynced with `always`. Records
 *   are appended to a buffer and written once per loop iteration (group
 *   commit: one write(), at most one fdatasync(), for everything the
 *   iteration produced). A write or fsync error rejects the items of that
 *   flush ("journal write failed: ..."); nothing is silently accepted.
 * - An item's final update (SUCCEEDED, FAILED) is published only after its
 *   FINAL record is written (not fsynced; fsynced with `always`): a killed
 *   grpc process never runs an item again whose final update a subscriber
 *   may have seen. A FINAL that cannot be written (a full disk) holds its
 *   update back, and is written again until it is.
 * - A final is a DONE record with what the index of known items needs
 *   (state, attempt, times, error, result; the WorkItem of FAILED and
 *   CANCELLED, for retry): taking over an instance restores its retained
 *   finals into the index (and copies them into ours), so getItems,
 *   duplicates and retry outlive every process. A DONE keeps its segment
 *   until items.retention forgets the item (items_on_forgotten), so the
 *   journal is bounded by the retention plus the live items; an instance
 *   left with retained finals only is kept at exit for the next start.
 * - A journal that cannot be opened (at start, a full disk) does not stop
 *   the grpc process: it rejects every item with the reason, reports
 *   NOT_SERVING, and tries again with backoff.
 * - Every grpc process writes its own instance directory,
 *   DIR/grpc-<start ms>-<pid>/, holding an flock on its `lock` file and
 *   segments 00000001.seg, 00000002.seg, ... At start and every 10 s it
 *   takes over the instances whose lock it can take (their process is
 *   gone): their live items are written to its own journal, then published
 *   RETRYING (attempt + 1; FAILED past max_attempts) and queued, and their
 *   files deleted. An item a graceful stop recorded as not started (or one
 *   not due yet) spends no attempt: it is queued again as it was (QUEUED).
 *   Two grpc processes (a USR2 upgrade) never replay the
 *   same items: an instance's lock is held as long as its process lives.
 * - Files of our instance removed under us (an rm -rf of DIR, a cleaner
 *   deleting segments: a link count of 0 on the lock, the current segment
 *   or one still holding live items or retained finals) are seen before
 *   the next write and at every scan: the instance is made again (DIR too,
 *   as it was) with a new segment holding every item held and retained
 *   final, synced, before anything else counts. If it cannot be, items
 *   are rejected ("journal unavailable: ... was removed and cannot be
 *   made again: ...") and it is retried with backoff.
 * - seq continues past every SEQ record (a reservation of update seqs) and
 *   past DIR/seq, written when an instance's files are deleted.
 * - A segment none of whose items is live or retained is deleted (after the next sync);
 *   a segment is rolled at 64 MiB, or at 1 MiB when none of its items is
 *   live; live items of a segment JOURNAL_COPY_AFTER segments older than
 *   the current one are copied forward, so at most that many segments (plus
 *   the current) exist, whatever a few long-lived items do.
 *
 * Layers: journal_store.c (journal_store.h) is the pure part: records,
 * files, the reader; it knows nothing of gRPC. journal.c is the store's
 * journal backend: what goes in it and when, group commit on the loop,
 * taking over dead instances.
 */
#ifndef DS_GRPC_JOURNAL_H
#define DS_GRPC_JOURNAL_H

#include "grpc/store.h"

/* The backend (queue.journal). An instance that cannot be opened is
 * logged and retried with backoff; meanwhile every item is rejected with
 * the reason ("journal unavailable: DIR: strerror") and serving() says so. */
extern const struct store_backend store_journal;

/* Before the grpc process drops privileges to USER: give it the journal
 * directory and all that is in it, so that it can roll segments, take
 * over instances and write DIR/seq as that user. */
void journal_chown(const char *user);

#endif
