/*
 * journal_store.c: the queue journal's files, and nothing of gRPC: records
 * and their CRC32C, the writer over an instance directory, the reader,
 * finding the instances of dead grpc processes. journal.h and
 * docs/journal.md say how the grpc process uses it;
 * tests/unit/test_journal.c and tests/fuzz/fuzz_journal.c drive it alone.
 *
 * On disk, all integers little-endian. A segment starts with the 8 bytes
 * JOURNAL_MAGIC, then records:
 *
 *   header (12 bytes): crc32c u32 | length u32 | type u8 | flags u8 | 0 u16
 *   body (length bytes)
 *
 * The CRC32C covers the 8 header bytes after it and the body. Bodies:
 *
 *   ACCEPT  key u64 | attempt u32 | max_attempts u32 | timeout_ms u32 |
 *           flags u8 (1: quick, 2: due, 4: unstarted) | 0 u8 | id_len u16 | kind_len u16 |
 *           batch_len u16 | raw_len u32 | id | kind | batch | raw WorkItem |
 *           [due_ns u64, with flag 2: not to start before (unix ns)]
 *   FINAL   key u64                 the item is final (or was never accepted)
 *   ATTEMPT key u64 | attempt u32 [| flags u32 | due_ns u64]
 *                                   the item was retried: this attempt is next
 *                                   (not before due_ns, unix, if not 0);
 *                                   flag 1 (unstarted): a graceful stop left
 *                                   the item with this attempt not started,
 *                                   so taking it over spends none (due_ns
 *                                   may then be 0)
 *   SEQ     seq u64                 update seqs up to this may have been used
 *   DONE    key u64 | state u8 | flags u8 (1: quick, 2: trace) | 0 u16 | attempt u32 |
 *           max_attempts u32 | timeout_ms u32 | priority i32 | 0 u32 |
 *           accepted_ns i64 | started_ns i64 | finished_ns i64 | last_seq u64 |
 *           id_len u16 | kind_len u16 | batch_len u16 | 0 u16 | error_len u32 |
 *           result_len u32 | raw_len u32 | id | kind | batch | error | result |
 *           raw WorkItem (FAILED, CANCELLED) |
 *           [traceparent_len u16 | tracestate_len u16 | traceparent | tracestate,
 *           with flag 2: the item's W3C trace context]
 *           [cpu_usec u64 | max_rss_kib u64, with flag 4: what its latest
 *           attempt that ran cost]
 *                                   the item is final (as FINAL), and retained:
 *                                   enough to answer for it without its ACCEPT
 *
 * Records are order-independent within an instance: an item is live if it
 * has an ACCEPT and no FINAL or DONE anywhere; its attempt is the largest
 * seen, and its due time that of the record with its attempt (0: none).
 * Journals written before due times (no flag 2, 12-byte ATTEMPTs) read the
 * same; a binary that predates them finds an ACCEPT with a due time (only
 * delayed or backed-off items have one) malformed. Likewise a DONE with a
 * trace (flag 2): journals without one read the same, a binary that
 * predates traces finds such a DONE malformed. Likewise a DONE with the cost (flag 4): without it
 * the cost is not known, a binary that predates it finds such a DONE
 * malformed. Likewise an unstarted ATTEMPT (flag 1), and the unstarted
 * flag (4) of an ACCEPT, which a copy carries forward: an item is
 * unstarted if the record with its (largest) attempt says so; a binary
 * that predates them finds such records malformed. An ACCEPT's trace needs no
 * field: it is inside the raw WorkItem (core/trace.h). A key is never reused (a retried item is accepted under a new key);
 * of several DONEs of one id, the one with the largest key counts.
 */
#ifndef DS_GRPC_JOURNAL_STORE_H
#define DS_GRPC_JOURNAL_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/config.h"

#define JOURNAL_MAGIC           "DSJRNL01"
#define JOURNAL_MAGIC_SIZE      8
#define JOURNAL_HEADER_SIZE     12
#define JOURNAL_ACCEPT_FIXED    32
#define JOURNAL_DONE_FIXED      84
#define JOURNAL_DONE_COST       16      /* the optional cost trailer (flag 4) */
#define JOURNAL_DONE_QUICK      1       /* DONE flags */
#define JOURNAL_DONE_HAS_TRACE  2
#define JOURNAL_DONE_HAS_COST   4
#define JOURNAL_ACCEPT_QUICK     1      /* ACCEPT flags */
#define JOURNAL_ACCEPT_DUE       2
#define JOURNAL_ACCEPT_UNSTARTED 4
#define JOURNAL_ATTEMPT_UNSTARTED 1     /* ATTEMPT flags */
/* A body never exceeds this: the largest WorkItem (grpc.max_message_size
 * is at most 64 MiB) and its id, kind and batch. */
#define JOURNAL_BODY_MAX        ((64u << 20) + (1u << 20))

#define JOURNAL_SEGMENT_MAX     (64ull << 20)
/* A segment with no live item is rolled once it has this much. */
#define JOURNAL_IDLE_ROLL       (1ull << 20)
/* Live items of a segment this many segments older than the current one
 * are copied into the current one, so the old one can go. */
#define JOURNAL_COPY_AFTER      4
/* How often a grpc process looks for the journals of dead ones. */
#define JOURNAL_SCAN_MS         10000

enum journal_type {
    JOURNAL_ACCEPT = 1,
    JOURNAL_FINAL = 2,
    JOURNAL_ATTEMPT = 3,
    JOURNAL_SEQ = 4,
    JOURNAL_DONE = 5,
};

/* ---- records (journal_store.c) ----------------------------------------- */

uint32_t journal_crc32c(uint32_t crc, const void *data, size_t len);
/* The table-driven version, which journal_crc32c uses without SSE 4.2. */
uint32_t journal_crc32c_table(uint32_t crc, const void *data, size_t len);

struct journal_buf {
    uint8_t *data;
    size_t len, cap;
};

void journal_buf_free(struct journal_buf *b);

/* What an ACCEPT record holds. The strings need not be NUL-terminated when
 * decoded: they point into the record, with their lengths. */
struct journal_accept {
    uint64_t key;
    uint32_t attempt;
    uint32_t max_attempts;
    uint32_t timeout_ms;
    int quick;
    uint64_t due_ns;            /* 0: none (no flag 2) */
    int unstarted;              /* flag 4: this attempt has not started (a graceful stop) */
    const char *id, *kind, *batch;
    size_t id_len, kind_len, batch_len;
    const uint8_t *raw;
    size_t raw_len;
};

/* What a DONE record holds: a final item as the index of known items
 * needs it after a restart. Strings as in journal_accept; error_len 0: no
 * error. state is an enum wire_state (SUCCEEDED, FAILED, CANCELLED). */
struct journal_done {
    uint64_t key;
    uint8_t state;
    int quick;
    uint32_t attempt;
    uint32_t max_attempts;
    uint32_t timeout_ms;
    int32_t priority;
    int64_t accepted_ns, started_ns, finished_ns;
    uint64_t last_seq;
    const char *id, *kind, *batch, *error;
    size_t id_len, kind_len, batch_len, error_len;
    const uint8_t *result, *raw;
    size_t result_len, raw_len;
    const char *traceparent, *tracestate;   /* W3C trace context */
    size_t traceparent_len, tracestate_len; /* traceparent_len 0: none (no flag 2) */
    uint64_t cpu_usec, max_rss_kib;     /* 0 and 0: not known (no flag 4) */
};

struct journal_record {
    enum journal_type type;
    uint64_t key;               /* ACCEPT, FINAL, ATTEMPT, DONE */
    uint32_t attempt;           /* ACCEPT, ATTEMPT, DONE */
    uint64_t due_ns;            /* ACCEPT, ATTEMPT: 0 if none */
    int unstarted;              /* ACCEPT, ATTEMPT: that attempt has not started */
    uint64_t seq;               /* SEQ */
    struct journal_accept accept;
    struct journal_done done;
};

/* Append one record to B; return its offset there. id/kind/batch longer
 * than 65535 bytes are cut (callers never have such). */
size_t journal_encode_accept(struct journal_buf *b, const struct journal_accept *a);
size_t journal_encode_final(struct journal_buf *b, uint64_t key);
size_t journal_encode_attempt(struct journal_buf *b, uint64_t key, uint32_t attempt);
/* The same with a due time (0: none, the short record). */
size_t journal_encode_attempt_due(struct journal_buf *b, uint64_t key, uint32_t attempt,
                                  uint64_t due_ns);
/* The same, FLAGS (JOURNAL_ATTEMPT_UNSTARTED) with it: the long record. */
size_t journal_encode_attempt_flags(struct journal_buf *b, uint64_t key, uint32_t attempt,
                                    uint64_t due_ns, uint32_t flags);
size_t journal_encode_seq(struct journal_buf *b, uint64_t seq);
/* id/kind/batch cut as above; error, result and raw as they are. */
size_t journal_encode_done(struct journal_buf *b, const struct journal_done *d);
/* The key of an id in the map of retained finals (never 0). */
uint64_t journal_id_hash(const char *id, size_t len);

enum journal_decode {
    JOURNAL_OK,
    JOURNAL_TORN,               /* AVAIL ends inside the record */
    JOURNAL_CORRUPT,            /* a bad CRC, length, type or body */
};

/* Decode the record at P (AVAIL bytes from there). JOURNAL_OK: *rec is
 * filled (pointing into P) and *size is the record's size. Otherwise *why
 * says what is wrong. */
enum journal_decode journal_decode(const uint8_t *p, size_t avail, struct journal_record *rec,
                                   size_t *size, const char **why);

/* ---- a map of item keys (journal_store.c) ------------------------------ */

enum journal_entry_state {
    JOURNAL_ENTRY_WRITTEN,      /* its ACCEPT is at segment/offset */
    JOURNAL_ENTRY_NEW,          /* its ACCEPT waits in the buffer */
    JOURNAL_ENTRY_COPYING,      /* still at segment/offset; a copy waits in the buffer */
};

struct journal_entry {
    uint64_t key;               /* 0: a free slot */
    uint64_t offset;            /* of its ACCEPT record in its segment */
    uint64_t aux;               /* NEW/COPYING: offset in the buffer; reader: item slot + 1 */
    uint32_t segment;
    uint32_t length;            /* of that record, header included */
    uint32_t attempt;
    uint8_t state;
    uint8_t final;              /* reader: a FINAL was seen */
    uint8_t unstarted;          /* its attempt has not started (copies keep it) */
    uint64_t due_ns;            /* of its attempt (copies keep it); 0: none */
};

struct journal_map {
    struct journal_entry *slots;
    size_t capacity;            /* a power of two, or 0 */
    size_t count;
};

struct journal_entry *journal_map_get(const struct journal_map *m, uint64_t key);
/* The entry of KEY, added (zeroed but for the key) if missing. Pointers
 * into the map are valid until the next put or del. */
struct journal_entry *journal_map_put(struct journal_map *m, uint64_t key);
void journal_map_del(struct journal_map *m, uint64_t key);
void journal_map_free(struct journal_map *m);

/* ---- the writer: one instance directory (journal_store.c) ------------- */

struct journal_segment {
    uint32_t number;
    /* Read-only, opened as the segment is made and closed as it goes:
     * copies read their records back through it (also once its name is
     * gone), and fstat() of it says whether it still has a name. -1 once
     * gone: closed, its blocks freed. */
    int fd;
    /* Its name was found gone (or its directory made again) and
     * journal_store_rebuild() copied what it could read of it: not a
     * reason to rebuild again. */
    int gone;
    uint64_t live;              /* items whose ACCEPT is here and not final */
    uint64_t retained;          /* finals whose DONE is here and not forgotten */
};

struct journal_store {
    char *root;                 /* queue.journal */
    char *name;                 /* grpc-<ms>-<pid> */
    char *dir;                  /* root/name */
    int lock_fd;
    int fd;                     /* the current segment, -1 if none is open */
    uint32_t segment;           /* its number */
    uint64_t size;              /* its bytes, all written */
    enum ds_journal_sync sync;
    uint64_t segment_max;
    uint64_t idle_roll;
    uint32_t copy_after;

    /* What the next flush writes: first `other` (FINAL, ATTEMPT, SEQ and
     * copies), then `accepts` (new items). A failed flush drops `accepts`
     * (its items are rejected) and keeps `other` for the next one. */
    struct journal_buf other, accepts;
    uint64_t *new_keys, *copy_keys;
    size_t new_count, new_cap, copy_count, copy_cap;

    struct journal_map entries;             /* live items */
    /* Retained finals, keyed by journal_id_hash(id): WRITTEN (DONE at
     * segment/offset), NEW (DONE waits in `other` at aux), COPYING. */
    struct journal_map retained;
    uint64_t *done_keys, *done_copy_keys;
    size_t done_count, done_cap, done_copy_count, done_copy_cap;
    struct journal_segment *segments;       /* ascending; the current one last */
    size_t segment_count, segment_cap;
    int unsynced;               /* written since the last fdatasync */
    int roll_next;              /* start a new segment at the next flush */
    int removed;                /* journal_store_removed() said so: never roll */
    /* ROOT as it was at open (journal_chown may change the owner): what a
     * journal_store_rebuild() that has to make it again gives it. */
    mode_t root_mode;
    uid_t root_uid;
    gid_t root_gid;
    /* What a rebuild made again and could not sync yet (retried by the
     * next one): the instance's name in ROOT; and the names of the levels
     * of ROOT from the one after the '/' at offset parents_from on
     * (SIZE_MAX: none). */
    int dir_unsynced;
    size_t parents_from;
    /* Which directory DIR/NAME is: a mv, or another directory in its
     * place, changes no link count. */
    dev_t dir_dev;
    ino_t dir_ino;
    uint64_t max_seq;           /* the largest SEQ written */
    /* What the last flush wrote: the first flushed_accepts of its ACCEPTs,
     * and (flushed_other) all of `other`. */
    size_t flushed_accepts;
    int flushed_other;

    /* for tests and the log */
    uint64_t flushes, bytes_written, syncs, rolls, deleted, copied, done_copied, rebuilds;
};

/* Create ROOT (if need be) and the instance ROOT/NAME, locked, with its
 * first segment. SEGMENT_MAX 0: JOURNAL_SEGMENT_MAX. 0, or -1 with errno
 * set and the failing call logged. */
int journal_store_open(struct journal_store *s, const char *root, const char *name,
                       enum ds_journal_sync sync, uint64_t segment_max);
/* Close; with REMOVE, delete the instance's files (it holds nothing live),
 * after recording max_seq in ROOT/seq. Without, sync what is unsynced
 * (unless `never`). Whatever is still buffered is lost: flush first. */
void journal_store_close(struct journal_store *s, int remove);

void journal_store_accept(struct journal_store *s, const struct journal_accept *a);
void journal_store_attempt(struct journal_store *s, uint64_t key, uint32_t attempt);
/* The same, its next attempt not before DUE_NS (unix; 0: at once). */
void journal_store_attempt_due(struct journal_store *s, uint64_t key, uint32_t attempt,
                               uint64_t due_ns);
/* A graceful stop leaves KEY live with its attempt not started: an
 * unstarted ATTEMPT is buffered, and whoever takes it over spends none.
 * Returns 1 if it buffered one, 0 if KEY is not live or already so. */
int journal_store_unstarted(struct journal_store *s, uint64_t key);
/* The item is final: FINAL is buffered, its segment has one live item less. */
void journal_store_final(struct journal_store *s, uint64_t key);
void journal_store_seq(struct journal_store *s, uint64_t seq);
/* The item D->key is final and retained: DONE is buffered (it ends the
 * live item as FINAL does), and keeps its segment until the id is
 * forgotten; a retained final of the same id is forgotten. */
void journal_store_done(struct journal_store *s, const struct journal_done *d);
/* The index forgot the final of ID (retention), or ID runs again: its DONE
 * no longer keeps its segment. Nothing is written. */
void journal_store_forget(struct journal_store *s, const char *id, size_t id_len);
uint64_t journal_store_retained(const struct journal_store *s);
/* Forget the ACCEPTs buffered and not written: their items are not accepted. */
void journal_store_discard_accepts(struct journal_store *s);
int journal_store_has_buffered(const struct journal_store *s);
/* Has a file this instance depends on lost its name: any segment from the
 * first one holding live items or retained finals on (a later one may hold
 * the FINALs or ATTEMPTs of items accepted in an earlier one; only the
 * dead prefix before it may go), the current one, or the lock (the
 * directory or files in it removed under us: st_nlink 0)? What is written
 * there is then lost at the next restart. Once it said so, the store rolls
 * to no new segment until journal_store_rebuild() succeeds (it could not
 * be made in a directory that is gone: the FINALs still written to the
 * unlinked file, whatever its size, would be held forever instead). */
int journal_store_removed(struct journal_store *s);
/*
 * After journal_store_removed(): make the instance whole again. The
 * directory (and ROOT, and its parents, as journal_store_open made them;
 * ROOT with the mode and owner it had) is made again if it is gone, under
 * a temporary name and locked before it gets its own, as at open; a lock
 * that lost its name is replaced. Then a new segment is made (synced with
 * its directory unless `never`) and every live item and retained final is
 * copied into `other`, to be written by the next flush: the old segments
 * die once it has, as after a copy forward. The descriptors of those whose
 * names are gone (all, when the directory was made again) are closed at
 * once, so that their space is freed; the copies wait in `other` while a
 * flush fails. 0, or -1 with errno set and
 * WHY (WHY_SIZE bytes) saying which call failed; nothing is logged (the
 * caller retries, and logs changes only). Items the records of which no
 * longer read back are logged and left where they were.
 */
int journal_store_rebuild(struct journal_store *s, char *why, size_t why_size);
uint64_t journal_store_live(const struct journal_store *s);

/*
 * Write what is buffered (rolling to a new segment first when one is due),
 * then fdatasync with `always`, and delete dead segments unless the policy
 * is `interval` (journal_store_sync does it then). 0: every buffered record
 * is written. -1 (errno set): a full disk may still have taken `other` and
 * some ACCEPTs whole: the first s->flushed_accepts ACCEPTs count (in the
 * order they were buffered), the rest do not (those entries are gone:
 * reject the items); s->flushed_other says whether `other` was written, or
 * stays buffered for the next flush. The file is cut back to what counts.
 * A disk full of a segment that holds nothing live is made room on by
 * emptying that segment.
 */
int journal_store_flush(struct journal_store *s);
/* fdatasync what was written and not synced, then delete dead segments. */
int journal_store_sync(struct journal_store *s);

/* Give ROOT, its entries and those of its instance directories to UID:GID
 * (symlinks themselves, not their targets, but for ROOT). 0, or -1 if any
 * failed (logged). */
int journal_store_chown(const char *root, uid_t uid, gid_t gid);

/* ROOT/seq: the largest seq of instances whose files are gone. */
uint64_t journal_seq_file_read(const char *root);
int journal_seq_file_update(const char *root, uint64_t seq, int sync);

/* ---- the reader (journal_store.c) ------------------------------------- */

struct journal_item {
    uint64_t key;
    uint32_t attempt;           /* the largest recorded: the one that ran, or was next */
    uint64_t due_ns;            /* that attempt's due time (unix ns); 0: none */
    int unstarted;              /* that attempt has not started (a graceful stop said so) */
    uint32_t max_attempts;
    uint32_t timeout_ms;
    int quick;
    int accepted;
    char *id, *kind, *batch;    /* NUL-terminated */
    uint8_t *raw;
    size_t raw_len;
};

/* A retained final read back (a DONE record); strings NUL-terminated,
 * error NULL if none, result/raw ds_malloc'ed (or NULL when empty). */
struct journal_final {
    uint64_t key;
    uint8_t state;
    int quick;
    uint32_t attempt, max_attempts, timeout_ms;
    int32_t priority;
    int64_t accepted_ns, started_ns, finished_ns;
    uint64_t last_seq;
    char *id, *kind, *batch, *error;
    uint8_t *result, *raw;
    size_t result_len, raw_len;
    char *traceparent, *tracestate;     /* NULL: none */
    uint64_t cpu_usec, max_rss_kib;
};

struct journal_recovery {
    char *dir;                  /* root/name */
    char *name;
    long pid;                   /* of the grpc process that wrote it */
    int lock_fd;                /* held while we recover it */
    /* Set by the caller: journal_read failed on it before, so why it
     * cannot be read is logged at debug level (it is tried every scan). */
    int quiet;
    struct journal_item *items; /* after journal_read: the live ones, by key */
    size_t count, cap;
    /* after journal_read: the retained finals, by key, one per id, none of
     * an id that is live */
    struct journal_final *finals;
    size_t final_count, final_cap;
    uint64_t max_key;
    uint64_t max_seq;
    uint64_t segments;
    uint64_t records;
    uint64_t truncated;         /* bytes cut from a torn tail */
    uint64_t skipped;           /* bytes of older segments skipped after a bad record */
};

/*
 * Instances under ROOT other than SELF whose lock could be taken (their
 * process is gone), oldest first, each with lock_fd held and dir, name and
 * pid set. Also removes what a creator that died halfway left. Returns the
 * count (*out is ds_malloc'ed; free each with journal_recovery_free, then
 * *out with free()), or -1 if ROOT cannot be read.
 */
int journal_find_dead(const char *root, const char *self, struct journal_recovery **out);
/* Read every segment of R->dir: R->items are the live items, R->finals
 * the retained finals. A torn tail
 * of the newest segment is truncated, a bad record in an older one ends
 * that segment; both are logged. 0, or -1 if the directory or one of its
 * segments cannot be read (logged; R is to be freed, not taken over). */
int journal_read(struct journal_recovery *r);
/* Delete R's files and record its max_seq in the root's seq file. */
int journal_recovery_remove(struct journal_recovery *r, int sync);
/* Free R's contents and release its lock. */
void journal_recovery_free(struct journal_recovery *r);

#endif
