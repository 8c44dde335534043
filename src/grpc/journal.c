/*
 * The store's journal backend: what goes in the journal and when, group
 * commit on the loop, and taking over the journals of grpc processes that
 * are gone. The rules are in journal.h and docs/journal.md;
 * journal_store.c does the file work.
 *
 * Group commit: journal_accept() and journal_final() only append to the
 * store's buffer and make the flush event active; libevent runs it after
 * the callbacks already active (a round of completions, a read from a
 * worker), so each loop iteration ends with one write() (and with
 * `always`, one fdatasync()) for everything it produced. Then the items
 * of that flush are accepted (or rejected if it failed) and the final
 * updates whose FINAL it wrote are published.
 *
 * fdatasync runs on the loop thread: with `always` in the flush, with
 * `interval` from a one-shot timer armed when something was written (an
 * idle process does not wake up for it). docs/journal.md has what that
 * costs.
 */
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/kind.h"
#include "core/log.h"
#include "core/utf8.h"
#include "core/process.h"
#include "grpc/grpc_process.h"
#include "grpc/item.h"
#include "grpc/items.h"
#include "grpc/journal.h"
#include "grpc/journal_store.h"
#include "grpc/metrics.h"
#include "grpc/store.h"
#include "grpc/updates.h"

/* Tests and experiments only: a smaller segment size (bytes, or 256KiB). */
#define SEGMENT_ENV "DS_JOURNAL_SEGMENT_BYTES"

/* Opening the journal again after it could not be: backoff bounds. */
#define OPEN_RETRY_MIN_MS   250
#define OPEN_RETRY_MAX_MS   5000
/* Writing again what a failed flush left buffered (FINALs, ATTEMPTs). */
#define FLUSH_RETRY_MIN_MS  50
#define FLUSH_RETRY_MAX_MS  2000

/* A final update waiting for its FINAL record: the outcome, its result
 * and error copied. */
struct pending_final {
    struct item *item;
    struct outcome o;
    void *result;
    char *error;
};

static struct {
    int enabled;                /* queue.journal is set in this process */
    int open;                   /* and its instance is open: items can be journaled */
    char *root;                 /* queue.journal as this process started with it */
    uint64_t segment_max;
    struct journal_store store;
    /* While it cannot be opened: why (rejections, health), and retrying. */
    char unavailable[768];
    struct event *open_timer;
    uint32_t open_retry_ms;
    uint64_t open_attempts;
    uint64_t pending_seq;       /* seqs reserved meanwhile, for its first SEQ */
    /* A flush that left FINALs (or other records) buffered is retried. */
    struct event *retry_timer;
    uint32_t retry_ms;
    int finals_held;            /* logged once per burst */
    /* Unstarted marks (a graceful stop's) buffered and not written yet. */
    size_t unstarted_pending;
    struct event *flush_event;
    struct event *sync_timer;
    struct event *scan_timer;
    int flush_scheduled;
    struct acceptance *accepts;
    size_t accept_count, accept_cap;
    struct pending_final *finals;
    size_t final_count, final_cap;
    /* Read by journal_open, run by journal_recover. */
    struct journal_recovery *dead;
    size_t dead_count;
    /* Names of the dead instances the last pass could not read (each
     * ds_malloc'ed, as the array): why is logged once, not every scan. */
    char **unreadable;
    size_t unreadable_count;
    /* Our directory (or a segment still needed) was removed under us
     * (journal_store_removed) and could not be made again: nothing is
     * accepted until it can (open_timer retries); jr.unavailable says why,
     * rebuild_why what failed last (logged again only when it changes). */
    int removed;
    char rebuild_why[512];
    uint64_t rebuild_attempts;
    uint64_t rebuilds_synced;   /* jr.store.rebuilds when a forced flush last worked */
    /* A rebuild worked, but the forced flush of its copies did not (a full
     * disk): what we hold is journaled nowhere until it does. Items are
     * rejected meanwhile (jr.unavailable says why), health says
     * NOT_SERVING, the retry timer writes again. rebuilt_how: what the log
     * says once they are written. */
    int copies_unwritten;
    char rebuilt_how[96];
    /* A failing disk is logged once per burst. */
    int failing;
    uint64_t failed_flushes, failed_items;
    int sync_failing;
} jr;

static int
journal_serving(const char **why)
{
    if (!jr.enabled || (jr.open && !jr.removed && !jr.copies_unwritten))
        return 1;
    if (why != NULL)
        *why = jr.unavailable;
    return 0;
}

static const char *
sync_name(enum ds_journal_sync sync)
{
    return sync == DS_JOURNAL_SYNC_ALWAYS ? "always" : sync == DS_JOURNAL_SYNC_NEVER ? "never"
                                                                                    : "interval";
}

static struct journal_accept
accept_of(const struct item *item)
{
    struct journal_accept a = {
        .key = item->key,
        .attempt = item->attempt,
        .max_attempts = item->max_attempts,
        .timeout_ms = item->timeout_ms,
        .quick = item->weight == ITEM_WEIGHT_QUICK,
        .due_ns = item->due_ns,
        .id = item->id,
        .id_len = strlen(item->id),
        .kind = item->kind,
        .kind_len = strlen(item->kind),
        .batch = item->batch,
        .batch_len = strlen(item->batch),
        .raw = item->raw,
        .raw_len = item->raw_len,
    };
    return a;
}

/*
 * What the index needs of a final after a restart: its times (from the
 * index: accepted, started), error, result (SUCCEEDED, already within
 * DS_RESULT_SIZE_MAX), the WorkItem (FAILED, CANCELLED: what retry runs).
 * last_seq is that of the update before the final one: the final update's
 * seq is given once this record is written.
 */
static struct journal_done
done_of(const struct item *item, const struct outcome *o)
{
    const struct known_item *k = items_of(item);
    int succeeded = o->state == STATE_SUCCEEDED;
    struct journal_done d = {
        .key = item->key,
        .state = (uint8_t)o->state,
        .quick = item->weight == ITEM_WEIGHT_QUICK,
        .attempt = item->attempt,
        .max_attempts = item->max_attempts,
        .timeout_ms = item->timeout_ms,
        .priority = k != NULL ? k->priority : 0,
        .accepted_ns = k != NULL ? k->accepted_ns : 0,
        .started_ns = k != NULL ? k->started_ns : 0,
        .finished_ns = clock_wall_ns(),
        .last_seq = k != NULL ? k->last_seq : 0,
        .id = item->id,
        .id_len = strlen(item->id),
        .kind = item->kind,
        .kind_len = strlen(item->kind),
        .batch = item->batch,
        .batch_len = strlen(item->batch),
        .error = o->error,
        .error_len = o->error != NULL ? strlen(o->error) : 0,
        .result = succeeded ? o->result : NULL,
        .result_len = succeeded ? o->result_len : 0,
        .raw = succeeded ? NULL : item->raw,
        .raw_len = succeeded ? 0 : item->raw_len,
        /* this attempt's, or the latest that ran (a worker that died
         * reported none) */
        .cpu_usec = o->cpu_usec != 0 || o->max_rss_kib != 0 || k == NULL ? o->cpu_usec
                                                                         : items_cpu_usec(k),
        .max_rss_kib = o->cpu_usec != 0 || o->max_rss_kib != 0 || k == NULL
                       ? o->max_rss_kib : items_max_rss_kib(k),
    };
    if (k != NULL && known_traceparent(k)[0] != '\0') {
        d.traceparent = known_traceparent(k);
        d.traceparent_len = strlen(d.traceparent);
        d.tracestate = known_tracestate(k);
        d.tracestate_len = strlen(d.tracestate);
    }
    return d;
}

static struct journal_done
done_of_final(const struct journal_final *f)
{
    struct journal_done d = {
        .key = f->key, .state = f->state, .quick = f->quick, .attempt = f->attempt,
        .max_attempts = f->max_attempts, .timeout_ms = f->timeout_ms, .priority = f->priority,
        .accepted_ns = f->accepted_ns, .started_ns = f->started_ns,
        .finished_ns = f->finished_ns, .last_seq = f->last_seq,
        .id = f->id, .id_len = strlen(f->id), .kind = f->kind, .kind_len = strlen(f->kind),
        .batch = f->batch, .batch_len = strlen(f->batch),
        .error = f->error, .error_len = f->error != NULL ? strlen(f->error) : 0,
        .result = f->result, .result_len = f->result_len, .raw = f->raw, .raw_len = f->raw_len,
        .traceparent = f->traceparent,
        .traceparent_len = f->traceparent != NULL ? strlen(f->traceparent) : 0,
        .tracestate = f->tracestate,
        .tracestate_len = f->tracestate != NULL ? strlen(f->tracestate) : 0,
        .cpu_usec = f->cpu_usec, .max_rss_kib = f->max_rss_kib,
    };
    return d;
}

/* The retention forgot ID: its DONE no longer keeps a segment. */
static void
on_forgotten(const char *id)
{
    if (jr.open)
        journal_store_forget(&jr.store, id, strlen(id));
}

/* ---- group commit -------------------------------------------------------- */

static void
schedule_flush(void)
{
    if (jr.flush_scheduled || jr.flush_event == NULL)
        return;
    jr.flush_scheduled = 1;
    event_active(jr.flush_event, 0, 0);
}

static void
arm_sync_timer(void)
{
    if (jr.store.sync != DS_JOURNAL_SYNC_INTERVAL || !jr.store.unsynced ||
        jr.sync_timer == NULL || evtimer_pending(jr.sync_timer, NULL))
        return;
    struct timeval tv = clock_timeval_ms(gp.config->queue.journal_sync_interval_ms);
    evtimer_add(jr.sync_timer, &tv);
}

static void
arm_retry_timer(void)
{
    if (jr.retry_timer == NULL || evtimer_pending(jr.retry_timer, NULL))
        return;
    jr.retry_ms = jr.retry_ms == 0 ? FLUSH_RETRY_MIN_MS
                  : jr.retry_ms * 2 > FLUSH_RETRY_MAX_MS ? FLUSH_RETRY_MAX_MS : jr.retry_ms * 2;
    struct timeval tv = clock_timeval_ms(jr.retry_ms);
    evtimer_add(jr.retry_timer, &tv);
}

static void
publish_finals(struct pending_final *finals, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        struct pending_final *f = &finals[i];
        store_final_written(f->item, &f->o);
        free(f->result);
        free(f->error);
    }
    free(finals);
}

/* FINALS (COUNT of them) wait for the next flush that writes their FINAL
 * records, ahead of any that came meanwhile. */
static void
hold_finals(struct pending_final *finals, size_t count)
{
    if (count == 0) {
        free(finals);
        return;
    }
    size_t total = count + jr.final_count;
    finals = ds_realloc(finals, total * sizeof *finals);
    if (jr.final_count > 0)
        memcpy(finals + count, jr.finals, jr.final_count * sizeof *finals);
    free(jr.finals);
    jr.finals = finals;
    jr.final_count = jr.final_cap = total;
}

static void arm_open_timer(void);

/* The log line of a rebuild whose copies are written (and synced): what
 * it took. */
static void
log_rebuilt(const char *how)
{
    log_notice("journal: %s %s; its %llu live items and %llu retained finals are written "
               "to segment %u anew", how, jr.store.dir,
               (unsigned long long)journal_store_live(&jr.store),
               (unsigned long long)journal_store_retained(&jr.store), jr.store.segment);
}

/*
 * After the forced flush of a rebuild's copies (RC as flush_now's, ERR its
 * errno): written and synced, it is whole again and says so; otherwise
 * what we hold is journaled nowhere (the files that had it lost their
 * names, the copies wait in memory): say so once, reject items and say
 * NOT_SERVING until a flush writes them (the retry timer tries again).
 */
static void
rebuilt_settle(int rc, int err)
{
    if (rc == 0) {
        log_rebuilt(jr.rebuilt_how);
        if (jr.copies_unwritten) {
            jr.copies_unwritten = 0;
            jr.unavailable[0] = '\0';
            store_serving_changed();
        }
        return;
    }
    /* The reason again also when it stays (a rebuild since cleared it). */
    snprintf(jr.unavailable, sizeof jr.unavailable,
             "journal unavailable: %s was removed and made again, but what it holds cannot "
             "be written there: %s", jr.store.dir, strerror(err));
    if (jr.copies_unwritten)
        return;
    jr.copies_unwritten = 1;
    log_error("journal: %s was removed under this process and made again, but writing its %llu "
              "live items and %llu retained finals there failed (%s): every item is rejected "
              "until they are written (trying again); they are journaled nowhere meanwhile: "
              "a crash loses them", jr.store.dir,
              (unsigned long long)journal_store_live(&jr.store),
              (unsigned long long)journal_store_retained(&jr.store), strerror(err));
    store_serving_changed();
}

/*
 * Is our journal whole? When a file of it lost its name (its directory
 * removed, a cleaner deleting segments), it is made again at once: a new
 * segment with a record of every item held (journal_store_rebuild), which
 * the flush under way writes and syncs. If that cannot be done (the parent
 * not writable, a full disk), every item is rejected (jr.unavailable),
 * health says NOT_SERVING, and open_timer tries again with backoff; what
 * is buffered meanwhile goes to the file that lost its name (the final
 * updates wait for nothing that could make them durable now). 1: whole.
 */
static int
journal_whole(void)
{
    if (jr.removed)
        return 0;
    if (!journal_store_removed(&jr.store))
        return 1;
    char why[sizeof jr.rebuild_why];
    if (journal_store_rebuild(&jr.store, why, sizeof why) == 0) {
        /* Logged once the flush under way has written the copies. */
        snprintf(jr.rebuilt_how, sizeof jr.rebuilt_how,
                 "files of this process's journal were removed under it; made again");
        return 1;
    }
    jr.removed = 1;
    jr.rebuild_attempts = 1;
    journal_store_discard_accepts(&jr.store);     /* rejected: not held, not counted */
    snprintf(jr.rebuild_why, sizeof jr.rebuild_why, "%s", why);
    snprintf(jr.unavailable, sizeof jr.unavailable,
             "journal unavailable: %s was removed and cannot be made again: %.500s", jr.store.dir,
             why);
    log_error("journal: %s was removed under this process and cannot be made again (%s): "
              "every item is rejected until it can (trying again every %d s at most); the "
              "%llu items it holds are journaled nowhere meanwhile: a crash loses them",
              jr.store.dir, why, OPEN_RETRY_MAX_MS / 1000,
              (unsigned long long)journal_store_live(&jr.store));
    store_serving_changed();
    jr.open_retry_ms = OPEN_RETRY_MIN_MS;
    arm_open_timer();
    return 0;
}

/*
 * Write what is buffered; FORCE_SYNC: make it durable now whatever the
 * policy (but `never`). Then accept the items whose ACCEPT got written
 * (all, or on a full disk those that fit) and reject the rest, and publish
 * the final updates whose FINAL it wrote. A final update whose FINAL could
 * not be written is not published: it waits (a timer retries the write),
 * so a grpc process killed meanwhile leaves the item live in the journal,
 * and whoever takes it over runs it again; no subscriber saw it final.
 * Returns 0; -1 if the write failed (some or all items were rejected), or
 * if the ACCEPTs buffered were dropped unwritten because the journal is
 * not whole (removed and not made again, or its copies not written); -2
 * if it was written but the forced sync failed (the items were accepted,
 * as `interval` would have).
 */
static int
flush_now(int force_sync)
{
    struct acceptance *accepts = jr.accepts;
    size_t accept_count = jr.accept_count;
    struct pending_final *finals = jr.finals;
    size_t final_count = jr.final_count;
    jr.accepts = NULL;
    jr.accept_count = jr.accept_cap = 0;
    jr.finals = NULL;
    jr.final_count = jr.final_cap = 0;

    char reason[sizeof jr.unavailable];
    reason[0] = '\0';
    if (!jr.open) {
        /* Nothing is journaled while the journal cannot be opened. */
        snprintf(reason, sizeof reason, "%s", jr.unavailable);
        for (size_t i = 0; i < accept_count; i++)
            store_accepted(accepts[i], STORE_REJECTED, reason);
        free(accepts);
        hold_finals(finals, final_count);
        return -1;
    }

    int rebuilt = journal_whole() && jr.store.rebuilds != jr.rebuilds_synced;
    if (rebuilt)
        force_sync = 1;     /* the copies of a rebuild: durable at once, whatever the policy */
    int refused = jr.removed || jr.copies_unwritten;
    if (refused) {
        /* What else is buffered (FINALs) is written as ever: the final
         * updates wait for nothing that could make them durable now. */
        snprintf(reason, sizeof reason, "%s", jr.unavailable);
        journal_store_discard_accepts(&jr.store);
        for (size_t i = 0; i < accept_count; i++)
            store_accepted(accepts[i], STORE_REJECTED, reason);
        free(accepts);
        accepts = NULL;
        accept_count = 0;
    }
    int wrote = journal_store_has_buffered(&jr.store);
    int rc = journal_store_flush(&jr.store), err = errno;
    int finals_written = rc != -1 || jr.store.flushed_other;
    /* (force_sync: a take-over's ACCEPTs, written by the store, count too) */
    if (rc == 0 && wrote && (accept_count > 0 || force_sync) &&
        jr.store.sync == DS_JOURNAL_SYNC_ALWAYS &&
        journal_store_removed(&jr.store)) {
        /* Removed between the check above and the write: with `always`
         * the items are acked as durable, and they are in files with no
         * name. Made whole again (the rebuild copies them too) and written
         * again before they are; else they are not accepted. */
        int whole = journal_whole();
        rebuilt = whole;
        force_sync = 1;
        rc = whole ? journal_store_flush(&jr.store) : -1;
        err = whole ? errno : ENOENT;
        if (rc != 0) {
            for (size_t i = 0; i < accept_count; i++)
                journal_store_final(&jr.store, accepts[i].item->key);
            rc = -1;
            jr.store.flushed_accepts = 0;
            /* FINALs in the first write: published as while removed, or
             * held until the copies (theirs among them) are written. */
            finals_written = !whole || jr.store.flushed_other;
        }
    }
    size_t written = rc == -1 ? jr.store.flushed_accepts : accept_count;
    if (rc == 0 && force_sync && jr.store.sync == DS_JOURNAL_SYNC_INTERVAL &&
        journal_store_sync(&jr.store) == -1) {
        err = errno;
        rc = -2;
        log_error("journal: fdatasync() of %s failed: %s", jr.store.dir, strerror(err));
    }
    if (rc == 0 && force_sync)
        jr.rebuilds_synced = jr.store.rebuilds;
    if (rebuilt)
        rebuilt_settle(rc, err);
    arm_sync_timer();

    if (rc == -1) {
        snprintf(reason, sizeof reason, "journal write failed: %s", strerror(err));
        jr.failed_flushes++;
        jr.failed_items += accept_count > written ? accept_count - written : 0;
        if (!jr.failing) {
            jr.failing = 1;
            log_error("journal: writing to %s failed: %s; the items of every flush that fails "
                      "are rejected (those that did not fit)", jr.store.dir, strerror(err));
        }
    } else if (jr.failing && wrote) {
        log_notice("journal: writing to %s works again after %llu failed flushes (%llu items "
                   "rejected)", jr.store.dir, (unsigned long long)jr.failed_flushes,
                   (unsigned long long)jr.failed_items);
        jr.failing = 0;
        jr.failed_flushes = jr.failed_items = 0;
    }

    for (size_t i = 0; i < accept_count; i++)
        store_accepted(accepts[i], i < written ? STORE_ACCEPTED : STORE_REJECTED,
                       i < written ? NULL : reason);
    free(accepts);

    if (finals_written) {
        jr.unstarted_pending = 0;
        if (jr.finals_held)
            log_notice("journal: the FINAL records waiting for %s are written; their final "
                       "updates are published", jr.store.dir);
        jr.finals_held = 0;
        publish_finals(finals, final_count);
    } else {
        if (final_count > 0 && !jr.finals_held) {
            jr.finals_held = 1;
            log_error("journal: the FINAL records of %zu items cannot be written to %s (%s); "
                      "their final updates wait until they are", final_count, jr.store.dir,
                      strerror(err));
        }
        hold_finals(finals, final_count);
    }
    if (journal_store_has_buffered(&jr.store) || jr.copies_unwritten)
        arm_retry_timer();
    else
        jr.retry_ms = 0;
    /* A take-over's ACCEPTs dropped so: not a success, or it would queue
     * the items and delete the dead instance's files, the only ones that
     * have them. */
    return rc == 0 && refused ? -1 : rc;
}

static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
    jr.flush_scheduled = 0;
    flush_now(0);
}

static void
on_retry_timer(evutil_socket_t fd, short what, void *arg)
{
    if (jr.open && (journal_store_has_buffered(&jr.store) || jr.copies_unwritten))
        flush_now(0);
}

static void
on_sync_timer(evutil_socket_t fd, short what, void *arg)
{
    if (journal_store_sync(&jr.store) == 0) {
        if (jr.sync_failing)
            log_notice("journal: fdatasync() of %s works again", jr.store.dir);
        jr.sync_failing = 0;
        return;
    }
    if (!jr.sync_failing)
        log_error("journal: fdatasync() of %s failed: %s; items accepted since the last "
                  "sync may not survive a power cut", jr.store.dir, strerror(errno));
    jr.sync_failing = 1;
}

/* The item counts as accepted once its ACCEPT is written: the flush
 * answers. */
static void
journal_accept(struct acceptance a)
{
    if (jr.open) {
        struct journal_accept rec = accept_of(a.item);
        /* A retry: the id's retained final (if any) no longer counts. */
        journal_store_forget(&jr.store, rec.id, rec.id_len);
        journal_store_accept(&jr.store, &rec);
    }       /* else the flush rejects it: nothing is journaled */
    if (jr.accept_count == jr.accept_cap) {
        jr.accept_cap = jr.accept_cap ? jr.accept_cap * 2 : 256;
        jr.accepts = ds_realloc(jr.accepts, jr.accept_cap * sizeof *jr.accepts);
    }
    jr.accepts[jr.accept_count++] = a;
    schedule_flush();
}

/* The final update is published once the FINAL record is written; while
 * it cannot be (a full disk), it waits, and the write is retried. */
static void
journal_final(struct item *item, const struct outcome *o)
{
    if (!jr.open) {
        store_final_written(item, o);   /* none of its items: nothing to record */
        return;
    }
    struct journal_done d = done_of(item, o);
    journal_store_done(&jr.store, &d);
    if (jr.final_count == jr.final_cap) {
        jr.final_cap = jr.final_cap ? jr.final_cap * 2 : 256;
        jr.finals = ds_realloc(jr.finals, jr.final_cap * sizeof *jr.finals);
    }
    struct pending_final *f = &jr.finals[jr.final_count++];
    f->item = item;
    f->o = *o;
    f->result = NULL;
    if (o->result_len > 0) {
        f->result = ds_malloc(o->result_len);
        memcpy(f->result, o->result, o->result_len);
    }
    f->error = o->error != NULL ? ds_strdup(o->error) : NULL;
    f->o.result = f->result;
    f->o.error = f->error;
    schedule_flush();
}

static void
journal_attempt(const struct item *item)
{
    if (!jr.open)
        return;
    /* A due time only while it is ahead: an overdue one means nothing. */
    uint64_t due = item->due_ns > (uint64_t)clock_wall_ns() ? item->due_ns : 0;
    journal_store_attempt_due(&jr.store, item->key, item->attempt, due);
    schedule_flush();
}

/* A graceful stop leaves ITEM live, at an attempt that has not started:
 * whoever takes it over spends none for it. */
static void
journal_unstarted(const struct item *item)
{
    if (!jr.open)
        return;
    jr.unstarted_pending += (size_t)journal_store_unstarted(&jr.store, item->key);
    schedule_flush();
}

static void
journal_forget(const struct item *item)
{
    journal_store_final(&jr.store, item->key);
    schedule_flush();
}

static void
journal_seq(uint64_t reserved)
{
    if (!jr.open) {
        if (reserved > jr.pending_seq)
            jr.pending_seq = reserved;
        return;
    }
    journal_store_seq(&jr.store, reserved);
    schedule_flush();
}

/* ---- taking over the journal of a dead grpc process ---------------------- */

static int
compare_finished(const void *a, const void *b)
{
    const struct journal_final *x = *(const struct journal_final *const *)a;
    const struct journal_final *y = *(const struct journal_final *const *)b;
    if (x->finished_ns != y->finished_ns)
        return x->finished_ns < y->finished_ns ? -1 : 1;
    return x->key < y->key ? -1 : x->key > y->key;
}

/*
 * Its live items go into our journal (attempt + 1) and, once that is
 * durable, are published RETRYING and queued, or FAILED if that attempt
 * would exceed their max_attempts; then its files go. Those not due yet,
 * and those a graceful stop recorded as not started, keep their attempt
 * (published QUEUED). If our write fails,
 * nothing of it is used and its lock is released: the next scan retries.
 */
static void
take_over(struct journal_recovery *r)
{
    char reason[160];
    snprintf(reason, sizeof reason, "recovered from the journal after a restart (grpc process "
             "%ld is gone)", r->pid);
    struct item **run = ds_calloc(r->count + 1, sizeof *run);
    struct item **failed = ds_calloc(r->count + 1, sizeof *failed);
    uint8_t *waits_again = ds_calloc(r->count + 1, 1);     /* run[i] spent no attempt */
    size_t run_count = 0, failed_count = 0, dropped = 0, unstarted = 0;
    uint64_t now_ns = (uint64_t)clock_wall_ns();

    for (size_t i = 0; i < r->count; i++) {
        struct journal_item *ji = &r->items[i];
        wire_work_item *msg = wire_work_item_unpack(NULL, ji->raw_len, ji->raw);
        /* A journal written before items were checked for UTF-8: every
         * update of such an item would end the streams it reaches. */
        if (msg != NULL && (!utf8_valid(msg->id, strlen(msg->id)) ||
                            !utf8_valid(msg->kind, strlen(msg->kind)) ||
                            !utf8_valid(msg->batch, strlen(msg->batch)))) {
            wire_work_item_free(msg, NULL);
            msg = NULL;
        }
        if (msg == NULL) {
            char id[300];
            log_error("journal: item \"%s\" in %s is not a valid WorkItem (or not UTF-8); "
                      "dropping it", utf8_escape(id, sizeof id, ji->id), r->dir);
            dropped++;
            continue;
        }
        const struct ds_handler_config *handler = config_handler(gp.config, ji->kind);
        grpc_slice raw = grpc_slice_from_copied_buffer((const char *)ji->raw, ji->raw_len);
        struct item *item = item_new(msg, raw, handler != NULL ? handler->kind : ji->kind,
                                     ji->max_attempts ? ji->max_attempts : 1, ji->timeout_ms,
                                     ji->id, handler != NULL ? kind_is_quick(handler, msg)
                                                             : ji->quick);
        wire_work_item_free(msg, NULL);
        item->attempt = ji->attempt ? ji->attempt : 1;
        item->due_ns = ji->due_ns;
        /* Not due yet: its attempt cannot have started, none is spent.
         * Nor for one a graceful stop recorded as not started (a crash
         * records nothing: an item only waiting then spends an attempt). */
        if (handler != NULL && (item->due_ns > now_ns || ji->unstarted)) {
            if (item->due_ns <= now_ns)
                unstarted++;
            struct journal_accept a = accept_of(item);
            journal_store_accept(&jr.store, &a);
            waits_again[run_count] = 1;
            run[run_count++] = item;
            continue;
        }
        if (handler == NULL || !store_may_retry(item, item->attempt)) {
            failed[failed_count++] = item;
            continue;
        }
        item->attempt++;
        struct journal_accept a = accept_of(item);
        journal_store_accept(&jr.store, &a);
        run[run_count++] = item;
    }
    /* Its retained finals are copied into ours (those whose id we do not
     * know already), oldest final first: the index forgets from there. */
    struct journal_final **finals = ds_calloc(r->final_count + 1, sizeof *finals);
    size_t final_count = 0;
    for (size_t i = 0; i < r->final_count; i++) {
        struct journal_final *f = &r->finals[i];
        if (items_find(f->id) != NULL || !items_is_final((enum wire_state)f->state))
            continue;
        finals[final_count++] = f;
    }
    if (final_count > 1)
        qsort(finals, final_count, sizeof *finals, compare_finished);
    for (size_t i = 0; i < final_count; i++) {
        struct journal_done d = done_of_final(finals[i]);
        journal_store_done(&jr.store, &d);
    }

    int rc = flush_now(1);
    if (rc != 0) {
        /* -2: written, not durable: cancel our copies; theirs stay. -1:
         * not written (or dropped: our journal is not whole): theirs stay. */
        for (size_t i = 0; i < run_count; i++)
            journal_store_final(&jr.store, run[i]->key);
        for (size_t i = 0; i < final_count; i++)
            journal_store_forget(&jr.store, finals[i]->id, strlen(finals[i]->id));
        free(finals);
        log_error("journal: cannot take over %s (%zu items) now; trying again in %d s", r->dir,
                  r->count, JOURNAL_SCAN_MS / 1000);
        for (size_t i = 0; i < run_count; i++)
            store_discard(run[i]);
        for (size_t i = 0; i < failed_count; i++)
            store_discard(failed[i]);
        free(run);
        free(failed);
        free(waits_again);
        journal_recovery_free(r);
        return;
    }

    char error[512];
    for (size_t i = 0; i < failed_count; i++) {
        struct item *item = failed[i];
        if (config_handler(gp.config, item->kind) == NULL)
            snprintf(error, sizeof error, "%s; kind \"%.*s\" is no longer configured", reason,
                     (int)utf8_prefix(item->kind, strlen(item->kind), 64), item->kind);
        else
            snprintf(error, sizeof error, "%s; attempt %u would exceed max_attempts %u", reason,
                     item->attempt + 1, item->max_attempts);
        struct outcome o = { .state = STATE_FAILED, .error = error };
        store_publish_local(item, &o);
        metrics_item_final(item->kind, STATE_FAILED, 0);
        store_discard(item);
    }
    for (size_t i = 0; i < run_count; i++) {
        struct item *item = run[i];
        if (waits_again[i]) {
            /* No attempt spent: it waits again as it did. */
            struct outcome o = { .state = STATE_QUEUED };
            store_publish_local(item, &o);
            store_take_quietly(item);
            continue;
        }
        struct outcome o = { .state = STATE_RETRYING, .error = reason };
        item->attempt--;
        store_publish_local(item, &o);
        item->attempt++;
        metrics_kind(item->kind)->retried++;
        store_take_quietly(item);
    }
    if (run_count > 0)
        store_dispatch();      /* once all wait: by priority */
    /* Known again; the retention's forgetting reaches our journal. */
    for (size_t i = 0; i < final_count; i++) {
        const struct journal_final *f = finals[i];
        struct known_final kf = {
            /* the index keeps the kind's pointer: interned, as an item's */
            .id = f->id, .kind = metrics_kind(f->kind)->kind, .batch = f->batch,
            .state = (enum wire_state)f->state, .attempt = f->attempt,
            .max_attempts = f->max_attempts, .priority = f->priority, .error = f->error,
            .result = f->result, .result_len = f->result_len, .raw = f->raw,
            .raw_len = f->raw_len, .accepted_ns = f->accepted_ns, .started_ns = f->started_ns,
            .finished_ns = f->finished_ns, .last_seq = f->last_seq,
            .traceparent = f->traceparent, .tracestate = f->tracestate,
            .cpu_usec = f->cpu_usec, .max_rss_kib = f->max_rss_kib,
        };
        items_restore_final(&kf);
    }
    free(finals);
    journal_recovery_remove(r, jr.store.sync != DS_JOURNAL_SYNC_NEVER);
    char note[128] = "";
    if (unstarted > 0)
        snprintf(note, sizeof note, " (%zu of them had not started when a graceful stop "
                 "ended: no attempt spent)", unstarted);
    if (r->count > 0 || dropped > 0 || final_count > 0)
        log_notice("journal: took over %s of grpc process %ld: %zu items queued again, %zu "
                   "failed, %zu unreadable, %zu finals known again%s", r->dir, r->pid, run_count,
                   failed_count, dropped, final_count, note);
    else
        log_info("journal: removed %s of grpc process %ld: nothing in it was live", r->dir,
                 r->pid);
    free(run);
    free(failed);
    free(waits_again);
    journal_recovery_free(r);
}

static int
was_unreadable(const char *name)
{
    for (size_t i = 0; i < jr.unreadable_count; i++)
        if (strcmp(jr.unreadable[i], name) == 0)
            return 1;
    return 0;
}

/* The unreadable of this pass (NAMES, COUNT: taken) replace the last's. */
static void
unreadable_replace(char **names, size_t count)
{
    for (size_t i = 0; i < jr.unreadable_count; i++)
        free(jr.unreadable[i]);
    free(jr.unreadable);
    jr.unreadable = names;
    jr.unreadable_count = count;
}

/* Read R (quietly if it failed at the last pass too): 0, or -1 with R
 * freed and its name added to FAILED (*COUNT of them, room for all). */
static int
read_dead(struct journal_recovery *r, char **failed, size_t *count)
{
    r->quiet = was_unreadable(r->name);
    if (journal_read(r) == 0)
        return 0;
    if (!r->quiet)
        log_notice("journal: %s is tried again every %d s; why it cannot be read is logged "
                   "at debug level from now on, until it can", r->dir, JOURNAL_SCAN_MS / 1000);
    failed[(*count)++] = ds_strdup(r->name);
    journal_recovery_free(r);
    return -1;
}

static void
on_scan(evutil_socket_t fd, short what, void *arg)
{
    if (!jr.open || jr.removed)
        return;
    /* An idle process notices a removal too, and makes its journal again
     * before anything needs it. */
    if (journal_store_removed(&jr.store))
        flush_now(1);
    if (gp.draining || gp.stopping || jr.removed || jr.copies_unwritten)
        return;             /* leave them to a grpc process that stays, or can */
    struct journal_recovery *dead;
    int n = journal_find_dead(jr.store.root, jr.store.name, &dead);
    if (n == -1) {
        log_syserr("journal: opendir(\"%s\") failed", jr.store.root);
        return;
    }
    char **failed = ds_calloc((size_t)n + 1, sizeof *failed);
    size_t failed_count = 0;
    for (int i = 0; i < n; i++) {
        if (read_dead(&dead[i], failed, &failed_count) == -1)
            continue;
        if (dead[i].max_seq > updates_last_seq())
            log_warn("journal: %s reserved update seqs up to %llu, past ours (%llu)",
                     dead[i].dir, (unsigned long long)dead[i].max_seq,
                     (unsigned long long)updates_last_seq());
        take_over(&dead[i]);
    }
    free(dead);
    unreadable_replace(failed, failed_count);
}

/* ---- start, reload, exit -------------------------------------------------- */

/* Open our instance: 0, or -1 with jr.unavailable saying why. */
static int
try_open(void)
{
    char name[64];
    snprintf(name, sizeof name, "grpc-%013llu-%ld",
             (unsigned long long)(clock_wall_ns() / 1000000), (long)getpid());
    jr.open_attempts++;
    if (journal_store_open(&jr.store, jr.root, name, gp.config->queue.journal_sync,
                           jr.segment_max) == -1) {
        snprintf(jr.unavailable, sizeof jr.unavailable, "journal unavailable: %s: %s",
                 jr.root, strerror(errno));
        return -1;
    }
    jr.open = 1;
    jr.unavailable[0] = '\0';
    if (jr.pending_seq > 0)
        journal_store_seq(&jr.store, jr.pending_seq);
    return 0;
}

static void
arm_open_timer(void)
{
    struct timeval tv = clock_timeval_ms(jr.open_retry_ms);
    evtimer_add(jr.open_timer, &tv);
}

/* What journal_recover does once our instance is open: take over the dead
 * instances read at start, write our first SEQ, scan from now on. */
static void
start_journaling(void)
{
    for (size_t i = 0; i < jr.dead_count; i++)
        if (jr.dead[i].dir != NULL)
            take_over(&jr.dead[i]);
    free(jr.dead);
    jr.dead = NULL;
    jr.dead_count = 0;
    flush_now(1);           /* our first SEQ */
    struct timeval tv = clock_timeval_ms(JOURNAL_SCAN_MS);
    event_add(jr.scan_timer, &tv);
}

/* Our journal was removed and could not be made again: try again (also
 * while stopping: what a crash would lose is still held). */
static void
retry_rebuild(void)
{
    char why[sizeof jr.rebuild_why];
    jr.rebuild_attempts++;
    if (journal_store_rebuild(&jr.store, why, sizeof why) == -1) {
        if (strcmp(why, jr.rebuild_why) != 0) {
            log_error("journal: %s still cannot be made again, now: %s", jr.store.dir, why);
            snprintf(jr.rebuild_why, sizeof jr.rebuild_why, "%s", why);
            snprintf(jr.unavailable, sizeof jr.unavailable,
                     "journal unavailable: %s was removed and cannot be made again: %.500s",
                     jr.store.dir, why);
        }
        jr.open_retry_ms = jr.open_retry_ms * 2 > OPEN_RETRY_MAX_MS ? OPEN_RETRY_MAX_MS
                                                                    : jr.open_retry_ms * 2;
        arm_open_timer();
        return;
    }
    /* Logged once the flush below has written the copies. */
    snprintf(jr.rebuilt_how, sizeof jr.rebuilt_how,
             "made again after %llu attempts (items are accepted again):",
             (unsigned long long)jr.rebuild_attempts);
    jr.removed = 0;
    jr.unavailable[0] = '\0';
    jr.rebuild_why[0] = '\0';
    flush_now(1);
    store_serving_changed();
}

static void
on_open_timer(evutil_socket_t fd, short what, void *arg)
{
    if (jr.open) {
        if (jr.removed)
            retry_rebuild();
        return;
    }
    if (gp.stopping || gp.draining)
        return;         /* nothing is accepted any more: leave it to the next one */
    if (try_open() == -1) {
        log_debug("journal: still cannot open %s: %s", jr.root, jr.unavailable);
        jr.open_retry_ms = jr.open_retry_ms * 2 > OPEN_RETRY_MAX_MS ? OPEN_RETRY_MAX_MS
                                                                    : jr.open_retry_ms * 2;
        arm_open_timer();
        return;
    }
    log_notice("journal: %s opened after %llu attempts; items are accepted again",
               jr.store.dir, (unsigned long long)jr.open_attempts);
    start_journaling();
    store_serving_changed();
}

/*
 * A journal that cannot be opened (a full disk, EIO, permissions) does not
 * stop the daemon: the grpc process serves, rejects every item with the
 * reason (nothing is accepted unjournaled), reports NOT_SERVING, and tries
 * again with backoff; the journals of dead instances are read now (their
 * seqs matter at once) and taken over once ours is open.
 */
/*
 * Before the update log: open our instance, read the journals of dead
 * instances, and raise *seq_start past their seqs.
 */
static void
journal_open(uint64_t *seq_start)
{
    const struct ds_config *c = gp.config;
    if (c->queue.journal == NULL)
        return;
    jr.root = ds_strdup(c->queue.journal);
    const char *env = getenv(SEGMENT_ENV);
    if (env != NULL && config_parse_size(env, &jr.segment_max) == -1) {
        log_warn("%s=%s is not a size; using the default", SEGMENT_ENV, env);
        jr.segment_max = 0;
    }
    jr.enabled = 1;
    items_on_forgotten(on_forgotten);
    jr.flush_event = event_new(gp.base, -1, 0, on_flush, NULL);
    jr.sync_timer = evtimer_new(gp.base, on_sync_timer, NULL);
    jr.retry_timer = evtimer_new(gp.base, on_retry_timer, NULL);
    jr.open_timer = evtimer_new(gp.base, on_open_timer, NULL);
    jr.scan_timer = event_new(gp.base, -1, EV_PERSIST, on_scan, NULL);
    if (try_open() == -1)
        log_error("queue.journal %s cannot be used (%s); every item is rejected until it can, "
                  "trying again from %d ms to every %d s", c->queue.journal, jr.unavailable,
                  OPEN_RETRY_MIN_MS, OPEN_RETRY_MAX_MS / 1000);

    uint64_t seq = journal_seq_file_read(jr.root), max_key = 0;
    int n = journal_find_dead(jr.root, jr.open ? jr.store.name : NULL, &jr.dead);
    if (n == -1) {
        log_syserr("journal: opendir(\"%s\") failed", jr.root);
        n = 0;
    }
    jr.dead_count = (size_t)n;
    char **failed = ds_calloc(jr.dead_count + 1, sizeof *failed);
    size_t failed_count = 0;
    for (size_t i = 0; i < jr.dead_count; i++) {
        struct journal_recovery *r = &jr.dead[i];
        if (read_dead(r, failed, &failed_count) == -1)
            continue;
        if (r->max_seq > seq)
            seq = r->max_seq;
        if (r->max_key > max_key)
            max_key = r->max_key;
    }
    if (seq > *seq_start) {
        log_notice("journal: update seqs continue after %llu", (unsigned long long)seq);
        *seq_start = seq;
        struct ipc_seq reserved = { .seq = seq + SEQ_RESERVE_CHUNK };
        master_send(IPC_SEQ_RESERVE, &reserved, sizeof reserved);
    }
    unreadable_replace(failed, failed_count);
    item_skip_keys(max_key);
    /* updates_init reserves this much: a later start must continue past it. */
    journal_seq(*seq_start + SEQ_RESERVE_CHUNK);
    if (jr.open)
        log_info("journal: %s (journal_sync: %s)", jr.store.dir, sync_name(jr.store.sync));
}

/* After the update log, before serving: run what journal_open read. */
static void
journal_recover(void)
{
    if (jr.open) {
        start_journaling();
        return;
    }
    jr.open_retry_ms = OPEN_RETRY_MIN_MS;
    arm_open_timer();
}

void
journal_chown(const char *user)
{
    if (!jr.enabled || user == NULL || user[0] == '\0' || geteuid() != 0)
        return;
    errno = 0;
    struct passwd *pw = getpwnam(user);
    if (pw == NULL) {
        log_error("journal: getpwnam(\"%s\") failed: %s", user,
                  errno != 0 ? strerror(errno) : "no such user");
        return;
    }
    /* What a rebuild gives the directory if it has to make it again. */
    jr.store.root_uid = pw->pw_uid;
    jr.store.root_gid = pw->pw_gid;
    if (journal_store_chown(jr.root, pw->pw_uid, pw->pw_gid) == 0)
        log_debug("journal: %s belongs to %s", jr.root, user);
}

/* A reload: apply queue.journal_sync; a changed queue.journal needs a restart. */
static void
journal_configure(const struct ds_config *old)
{
    const struct ds_config *c = gp.config;
    if (c->queue.journal == NULL || strcmp(c->queue.journal, jr.root) != 0)
        log_warn("queue.journal: changed to %s by this reload; this grpc process keeps "
                 "journaling to %s, and what it leaves there is recovered only by a grpc "
                 "process configured with that directory", c->queue.journal != NULL
                 ? c->queue.journal : "off", jr.root);
    if (jr.open && c->queue.journal_sync != jr.store.sync) {
        if (jr.store.sync != DS_JOURNAL_SYNC_NEVER && jr.store.unsynced)
            journal_store_sync(&jr.store);
        log_info("journal: journal_sync %s -> %s", sync_name(jr.store.sync),
                 sync_name(c->queue.journal_sync));
        jr.store.sync = c->queue.journal_sync;
    }
}

/* At exit, after the calls ended: write what is buffered; delete our files
 * if nothing is live. */
static void
journal_shutdown(void)
{
    if (!jr.enabled)
        return;
    jr.enabled = 0;
    event_free(jr.flush_event);
    event_free(jr.sync_timer);
    event_free(jr.scan_timer);
    event_free(jr.retry_timer);
    event_free(jr.open_timer);
    jr.flush_event = jr.sync_timer = jr.scan_timer = jr.retry_timer = jr.open_timer = NULL;
    for (size_t i = 0; i < jr.dead_count; i++)
        if (jr.dead[i].dir != NULL)
            journal_recovery_free(&jr.dead[i]);
    free(jr.dead);
    jr.dead = NULL;
    unreadable_replace(NULL, 0);

    /* Only when exiting with calls still open: those never had a reply, so
     * their items were not accepted. */
    journal_store_discard_accepts(&jr.store);
    for (size_t i = 0; i < jr.accept_count; i++)
        store_discard(jr.accepts[i].item);
    free(jr.accepts);
    jr.accepts = NULL;
    jr.accept_count = jr.accept_cap = 0;
    free(jr.root);
    jr.root = NULL;
    if (!jr.open)
        return;     /* never opened: nothing of ours is anywhere */
    jr.open = 0;

    /* Files removed since the last write or scan: made again now, or the
     * last records go to files with no name and nothing stays. */
    int rebuilt = 0;
    if (!jr.removed && journal_store_removed(&jr.store)) {
        char why[sizeof jr.rebuild_why];
        if (journal_store_rebuild(&jr.store, why, sizeof why) == 0) {
            rebuilt = 1;
        } else {
            jr.removed = 1;
            log_error("journal: %s was removed under this process and cannot be made again "
                      "(%s)", jr.store.dir, why);
        }
    }
    int rc = journal_store_flush(&jr.store);
    /* The copies of a rebuild: durable now whatever the policy (a clean
     * close syncs too, but would not say whether it worked). */
    if (rc == 0 && (rebuilt || jr.copies_unwritten) &&
        jr.store.sync == DS_JOURNAL_SYNC_INTERVAL && journal_store_sync(&jr.store) == -1)
        rc = -1;
    if ((rebuilt || jr.copies_unwritten) && rc == 0)
        log_rebuilt(rebuilt ? "files of this process's journal were removed under it; made "
                    "again" : jr.rebuilt_how);
    else if ((rebuilt || jr.copies_unwritten) && rc == -1)
        jr.removed = 1;     /* what it holds is written nowhere: nothing stays */
    jr.copies_unwritten = 0;
    if (rc == -1) {
        int err = errno;
        log_syserr("journal: writing to %s failed", jr.store.dir);
        /* Nothing is lost, but the promise of no attempt spent is. */
        if (!jr.store.flushed_other && jr.unstarted_pending > 0)
            log_error("journal: the records of %zu items a graceful stop left unstarted could "
                      "not be written (%s): the next start takes them over as after a crash, "
                      "each as its next attempt (FAILED if that exceeds its max_attempts)",
                      jr.unstarted_pending, strerror(err));
    }
    jr.unstarted_pending = 0;
    /* Finished, and nobody is left to tell. */
    for (size_t i = 0; i < jr.final_count; i++) {
        store_discard(jr.finals[i].item);
        free(jr.finals[i].result);
        free(jr.finals[i].error);
    }
    free(jr.finals);
    jr.finals = NULL;
    jr.final_count = jr.final_cap = 0;

    uint64_t live = journal_store_live(&jr.store), retained = journal_store_retained(&jr.store);
    if (jr.removed && live > 0)
        log_error("journal: %s was removed under this process: nothing stays for the next "
                  "grpc process, and the %llu items not final are lost", jr.store.dir,
                  (unsigned long long)live);
    else if (jr.removed)
        log_notice("journal: %s was removed under this process: nothing stays for the next "
                   "grpc process", jr.store.dir);
    else if (live > 0 || rc == -1)
        log_notice("journal: %llu items stay in %s for the next grpc process",
                   (unsigned long long)live, jr.store.dir);
    else if (retained > 0)
        log_info("journal: %llu retained finals stay in %s for the next grpc process",
                 (unsigned long long)retained, jr.store.dir);
    items_on_forgotten(NULL);
    journal_store_close(&jr.store, live == 0 && retained == 0 && rc == 0);
}

const struct store_backend store_journal = {
    .name = "journal",
    .keeps_abandoned = 1,
    .open = journal_open,
    .start = journal_recover,
    .accept = journal_accept,
    .final = journal_final,
    .attempt = journal_attempt,
    .forget = journal_forget,
    .unstarted = journal_unstarted,
    .seq_reserved = journal_seq,
    .serving = journal_serving,
    .configure = journal_configure,
    .shutdown = journal_shutdown,
};
