/*
 * Fuzz target: the queue journal reader (src/grpc/journal_store.c).
 *
 * The input is a control byte, then the bytes of one or more segment files
 * one after the other: every occurrence of JOURNAL_MAGIC ("DSJRNL01")
 * starts the next segment (bytes before the first one, if any, make a
 * segment without the magic, which the reader must skip). At most
 * MAX_SEGMENTS segments. Control byte bit 0: before writing, fix the CRC of
 * every record whose length fits (walking records from the magic on), so
 * the fuzzer gets past the checksum into the bodies; without it, the bytes
 * are written as they are (torn and corrupt records, bad checksums).
 *
 * The segments are written as 00000001.seg, ... into a temporary instance
 * directory and read with journal_read(), as a grpc process reads the
 * journal of a dead one. Every record is also decoded with journal_decode()
 * here, to build the expected outcome independently.
 *
 * FUZZ_JOURNAL_VERBOSE=1 in the environment prints what each read found.
 *
 * Checked beyond "no crash, leak or UB":
 *   - journal_decode(): a record it accepts lies within what it was given,
 *     has a known type, its ACCEPT strings lie within the record, and it
 *     encodes back (journal_encode_*) to a record that decodes to the same;
 *   - journal_read() finds exactly the live items of a model (an ACCEPT and
 *     no FINAL anywhere; fields of the last ACCEPT; attempt the largest of
 *     ACCEPT/ATTEMPT before any FINAL), sorted by key, and the same
 *     max_key, max_seq, records, truncated and skipped counts;
 *   - the newest segment is truncated at its first bad record and the
 *     older ones are left alone; reading again then finds the same items
 *     and truncates nothing.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"
#include "grpc/journal_store.h"

#define MAX_SEGMENTS 8

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char root[256];
static char dir[300];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_open("stderr", DS_LOG_ERROR);
    const char *tmp = getenv("TMPDIR");
    if (tmp == NULL || *tmp == '\0')
        tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(root, sizeof root, "%s/fuzz_journal.XXXXXX", tmp);
    if (mkdtemp(root) == NULL) {
        perror("mkdtemp");
        abort();
    }
    snprintf(dir, sizeof dir, "%s/grpc-1-1", root);
    if (mkdir(dir, 0700) != 0) {
        perror("mkdir");
        abort();
    }
    return 0;
}

static void
fail(const char *what)
{
    fprintf(stderr, "fuzz_journal: %s\n", what);
    abort();
}

static uint32_t
get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Give every record from P on whose length fits its right CRC. */
static void
fix_crcs(uint8_t *p, size_t size)
{
    size_t off = 0;
    while (size - off >= JOURNAL_HEADER_SIZE) {
        uint32_t len = get32(p + off + 4);
        if (len > size - off - JOURNAL_HEADER_SIZE)
            break;
        put32(p + off, journal_crc32c(0, p + off + 4, 8 + (size_t)len));
        off += JOURNAL_HEADER_SIZE + len;
    }
}

/* ---- the model ----------------------------------------------------------- */

struct model_item {
    uint64_t key;
    int accepted, final, done;  /* done: its first end was a DONE */
    uint32_t attempt, max_attempts, timeout_ms;
    int quick;
    const char *id, *kind, *batch;   /* point into the segment buffers */
    size_t id_len, kind_len, batch_len;
    const uint8_t *raw;
    size_t raw_len;
};

struct model {
    struct model_item *items;
    size_t count, cap;
    uint64_t max_key, max_seq, records, truncated, skipped;
};

static struct model_item *
model_item(struct model *m, uint64_t key)
{
    for (size_t i = 0; i < m->count; i++)
        if (m->items[i].key == key)
            return &m->items[i];
    if (m->count == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 16;
        m->items = realloc(m->items, m->cap * sizeof *m->items);
        if (m->items == NULL)
            abort();
    }
    struct model_item *it = &m->items[m->count++];
    memset(it, 0, sizeof *it);
    it->key = key;
    return it;
}

static void
model_apply(struct model *m, const struct journal_record *rec)
{
    if (rec->key > m->max_key)
        m->max_key = rec->key;
    if (rec->type == JOURNAL_SEQ) {
        if (rec->seq > m->max_seq)
            m->max_seq = rec->seq;
        return;
    }
    struct model_item *it = model_item(m, rec->key);
    if (it->final)
        return;
    switch (rec->type) {
    case JOURNAL_ACCEPT: {
        const struct journal_accept *a = &rec->accept;
        it->accepted = 1;
        it->max_attempts = a->max_attempts;
        it->timeout_ms = a->timeout_ms;
        it->quick = a->quick;
        it->id = a->id;
        it->id_len = a->id_len;
        it->kind = a->kind;
        it->kind_len = a->kind_len;
        it->batch = a->batch;
        it->batch_len = a->batch_len;
        it->raw = a->raw;
        it->raw_len = a->raw_len;
        if (a->attempt > it->attempt)
            it->attempt = a->attempt;
        break;
    }
    case JOURNAL_ATTEMPT:
        if (rec->attempt > it->attempt)
            it->attempt = rec->attempt;
        break;
    case JOURNAL_FINAL:
        it->final = 1;
        break;
    case JOURNAL_DONE:
        it->final = 1;
        it->done = 1;
        break;
    default:
        fail("decoded a record of an unknown type");
    }
}

/* journal_decode()'s promises about one record it accepted, and encoding
 * it back gives the same record. */
static void
check_record(const uint8_t *p, size_t avail, const struct journal_record *rec, size_t len)
{
    if (len < JOURNAL_HEADER_SIZE || len > avail)
        fail("decoded record size out of what was given");
    if (rec->type == JOURNAL_ACCEPT) {
        const struct journal_accept *a = &rec->accept;
        const uint8_t *body = p + JOURNAL_HEADER_SIZE, *end = p + len;
        if ((const uint8_t *)a->id != body + JOURNAL_ACCEPT_FIXED ||
            (const uint8_t *)a->kind != (const uint8_t *)a->id + a->id_len ||
            (const uint8_t *)a->batch != (const uint8_t *)a->kind + a->kind_len ||
            a->raw != (const uint8_t *)a->batch + a->batch_len ||
            a->raw + a->raw_len + (a->due_ns ? 8 : 0) != end)
            fail("ACCEPT fields not laid out within the record");
        if (a->key == 0 || rec->key != a->key || rec->attempt != a->attempt)
            fail("ACCEPT key/attempt inconsistent");
    } else if (rec->type == JOURNAL_DONE) {
        const struct journal_done *d = &rec->done;
        const uint8_t *body = p + JOURNAL_HEADER_SIZE, *end = p + len;
        if ((const uint8_t *)d->id != body + JOURNAL_DONE_FIXED ||
            (const uint8_t *)d->kind != (const uint8_t *)d->id + d->id_len ||
            (const uint8_t *)d->batch != (const uint8_t *)d->kind + d->kind_len ||
            (const uint8_t *)d->error != (const uint8_t *)d->batch + d->batch_len ||
            d->result != (const uint8_t *)d->error + d->error_len ||
            d->raw != d->result + d->result_len || d->raw + d->raw_len != end)
            fail("DONE fields not laid out within the record");
        if (d->key == 0 || rec->key != d->key || d->id_len == 0)
            fail("DONE key or id inconsistent");
    } else if (rec->type != JOURNAL_SEQ && rec->key == 0) {
        fail("record with key 0 accepted");
    }

    struct journal_buf b = { 0 };
    switch (rec->type) {
    case JOURNAL_ACCEPT: journal_encode_accept(&b, &rec->accept); break;
    case JOURNAL_FINAL: journal_encode_final(&b, rec->key); break;
    case JOURNAL_ATTEMPT:
        journal_encode_attempt_due(&b, rec->key, rec->attempt, rec->due_ns);
        break;
    case JOURNAL_SEQ: journal_encode_seq(&b, rec->seq); break;
    case JOURNAL_DONE: journal_encode_done(&b, &rec->done); break;
    default: fail("decoded a record of an unknown type");
    }
    struct journal_record again;
    size_t again_len;
    const char *why = NULL;
    if (journal_decode(b.data, b.len, &again, &again_len, &why) != JOURNAL_OK)
        fail("a re-encoded record does not decode");
    if (again_len != len || again_len != b.len || again.type != rec->type ||
        again.key != rec->key || again.attempt != rec->attempt || again.seq != rec->seq ||
        again.due_ns != rec->due_ns)
        fail("a re-encoded record decodes differently");
    /* Only bits journal_decode ignores may differ: the header's flags and
     * padding, and in ACCEPT the flag bits above `quick` and `due` and its
     * 0 byte. */
    const uint8_t *mine = b.data + JOURNAL_HEADER_SIZE, *theirs = p + JOURNAL_HEADER_SIZE;
    size_t body = len - JOURNAL_HEADER_SIZE;
    int same = memcmp(b.data + 4, p + 4, 5) == 0;
    if (rec->type == JOURNAL_ACCEPT)
        same = same && memcmp(mine, theirs, 20) == 0 && mine[20] == (theirs[20] & 3) &&
            memcmp(mine + 22, theirs + 22, body - 22) == 0;
    else if (rec->type == JOURNAL_DONE)   /* flags above `quick`, and the 0 fields */
        same = same && mine[8] == theirs[8] && mine[9] == (theirs[9] & 1) &&
            memcmp(mine, theirs, 8) == 0 && memcmp(mine + 12, theirs + 12, 16) == 0 &&
            memcmp(mine + 32, theirs + 32, 38) == 0 &&
            memcmp(mine + 72, theirs + 72, body - 72) == 0;
    else
        same = same && memcmp(mine, theirs, body) == 0;
    if (!same)
        fail("a re-encoded record has other bytes");
    journal_buf_free(&b);
}

/* Read a segment as journal_read() should; return where the newest one
 * must be cut (its size if nothing is bad). */
static size_t
model_segment(struct model *m, const uint8_t *p, size_t size, int newest)
{
    if (size < JOURNAL_MAGIC_SIZE || memcmp(p, JOURNAL_MAGIC, JOURNAL_MAGIC_SIZE) != 0)
        return size;
    size_t off = JOURNAL_MAGIC_SIZE;
    while (off < size) {
        struct journal_record rec;
        size_t len = 0;
        const char *why = NULL;
        enum journal_decode d = journal_decode(p + off, size - off, &rec, &len, &why);
        if (d != JOURNAL_OK) {
            if ((d != JOURNAL_TORN && d != JOURNAL_CORRUPT) || why == NULL || *why == '\0')
                fail("a refused record without a reason");
            if (newest)
                m->truncated += size - off;
            else
                m->skipped += size - off;
            return off;
        }
        check_record(p + off, size - off, &rec, len);
        model_apply(m, &rec);
        m->records++;
        off += len;
    }
    return size;
}

/* ---- files --------------------------------------------------------------- */

static void
seg_path(char *buf, size_t size, unsigned n)
{
    snprintf(buf, size, "%s/%08u.seg", dir, n);
}

static void
write_file(const char *path, const uint8_t *p, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd == -1) {
        perror(path);
        abort();
    }
    size_t done = 0;
    while (done < size) {
        ssize_t n = write(fd, p + done, size - done);
        if (n <= 0) {
            perror("write");
            abort();
        }
        done += (size_t)n;
    }
    close(fd);
}

static off_t
file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        perror(path);
        abort();
    }
    return st.st_size;
}

static void
check_read(const struct model *m, struct journal_recovery *r, int again)
{
    size_t live = 0;
    for (size_t i = 0; i < m->count; i++)
        live += m->items[i].accepted && !m->items[i].final;
    if (r->count != live) {
        fprintf(stderr, "journal_read found %zu live items, the model %zu\n", r->count, live);
        fail("live items differ");
    }
    if (r->max_key != m->max_key || r->max_seq != m->max_seq)
        fail("max_key or max_seq differ");
    if (!again && (r->records != m->records || r->truncated != m->truncated ||
                   r->skipped != m->skipped)) {
        fprintf(stderr, "records %llu/%llu truncated %llu/%llu skipped %llu/%llu (read/model)\n",
                (unsigned long long)r->records, (unsigned long long)m->records,
                (unsigned long long)r->truncated, (unsigned long long)m->truncated,
                (unsigned long long)r->skipped, (unsigned long long)m->skipped);
        fail("counts differ");
    }
    if (again && r->truncated != 0)
        fail("a second read truncated again");
    /* Retained finals: sorted, each of a key whose end was a DONE, none
     * of an id twice (checked by the reader's own map: here, by key). */
    for (size_t i = 0; i < r->final_count; i++) {
        const struct journal_final *f = &r->finals[i];
        if (i > 0 && r->finals[i - 1].key >= f->key)
            fail("finals not sorted by key, or a key twice");
        const struct model_item *mi = NULL;
        for (size_t j = 0; j < m->count; j++)
            if (m->items[j].key == f->key)
                mi = &m->items[j];
        if (mi == NULL || !mi->done || f->id == NULL || f->kind == NULL || f->batch == NULL)
            fail("a retained final that the model does not have");
    }
    for (size_t i = 0; i < r->count; i++) {
        const struct journal_item *it = &r->items[i];
        if (i > 0 && r->items[i - 1].key >= it->key)
            fail("items not sorted by key, or a key twice");
        const struct model_item *mi = NULL;
        for (size_t j = 0; j < m->count; j++)
            if (m->items[j].key == it->key)
                mi = &m->items[j];
        if (mi == NULL || !mi->accepted || mi->final)
            fail("an item that is not live");
        /* The strings are NUL-terminated copies: up to an embedded NUL. */
        if (it->id == NULL || it->kind == NULL || it->batch == NULL || it->raw == NULL ||
            strlen(it->id) != strnlen(mi->id, mi->id_len) ||
            memcmp(it->id, mi->id, strlen(it->id)) != 0 ||
            strlen(it->kind) != strnlen(mi->kind, mi->kind_len) ||
            memcmp(it->kind, mi->kind, strlen(it->kind)) != 0 ||
            strlen(it->batch) != strnlen(mi->batch, mi->batch_len) ||
            memcmp(it->batch, mi->batch, strlen(it->batch)) != 0 ||
            it->raw_len != mi->raw_len ||
            (it->raw_len > 0 && memcmp(it->raw, mi->raw, it->raw_len) != 0))
            fail("an item's id, kind, batch or bytes differ");
        if (it->attempt != mi->attempt || it->max_attempts != mi->max_attempts ||
            it->timeout_ms != mi->timeout_ms || it->quick != mi->quick || !it->accepted)
            fail("an item's attempt, limits or flags differ");
    }
}

static void
read_instance(const struct model *m, int again)
{
    struct journal_recovery r;
    memset(&r, 0, sizeof r);
    r.dir = ds_strdup(dir);
    r.name = ds_strdup("grpc-1-1");
    r.pid = 1;
    r.lock_fd = -1;
    if (journal_read(&r) != 0)
        fail("journal_read failed on a readable directory");
    if (getenv("FUZZ_JOURNAL_VERBOSE") != NULL)
        fprintf(stderr, "fuzz_journal: %zu live items, %llu records, %llu segments, max_key %llu, "
                "max_seq %llu, truncated %llu, skipped %llu\n", r.count,
                (unsigned long long)r.records, (unsigned long long)r.segments,
                (unsigned long long)r.max_key, (unsigned long long)r.max_seq,
                (unsigned long long)r.truncated, (unsigned long long)r.skipped);
    check_read(m, &r, again);
    journal_recovery_free(&r);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int fix = data[0] & 1;
    uint8_t *copy = malloc(size);
    if (copy == NULL)
        abort();
    memcpy(copy, data + 1, size - 1);
    size_t len = size - 1;

    /* Split at the magic: seg[i] = [start, end) in copy, magic included. */
    size_t start[MAX_SEGMENTS], end[MAX_SEGMENTS];
    size_t n = 0, pos = 0;
    const uint8_t *first = memmem(copy, len, JOURNAL_MAGIC, JOURNAL_MAGIC_SIZE);
    size_t at = first != NULL ? (size_t)(first - copy) : len;
    if (at > 0) {
        start[n] = 0;
        end[n++] = at;
    }
    pos = at;
    while (pos < len && n < MAX_SEGMENTS) {
        const uint8_t *next = n + 1 < MAX_SEGMENTS
            ? memmem(copy + pos + JOURNAL_MAGIC_SIZE, len - pos - JOURNAL_MAGIC_SIZE,
                     JOURNAL_MAGIC, JOURNAL_MAGIC_SIZE)
            : NULL;
        size_t stop = next != NULL ? (size_t)(next - copy) : len;
        start[n] = pos;
        end[n++] = stop;
        pos = stop;
    }
    if (fix)
        for (size_t i = 0; i < n; i++)
            if (end[i] - start[i] >= JOURNAL_MAGIC_SIZE &&
                memcmp(copy + start[i], JOURNAL_MAGIC, JOURNAL_MAGIC_SIZE) == 0)
                fix_crcs(copy + start[i] + JOURNAL_MAGIC_SIZE,
                         end[i] - start[i] - JOURNAL_MAGIC_SIZE);

    char path[400];
    for (size_t i = 0; i < n; i++) {
        seg_path(path, sizeof path, (unsigned)i + 1);
        write_file(path, copy + start[i], end[i] - start[i]);
    }

    struct model m;
    memset(&m, 0, sizeof m);
    size_t cut = 0;
    for (size_t i = 0; i < n; i++) {
        size_t c = model_segment(&m, copy + start[i], end[i] - start[i], i + 1 == n);
        if (i + 1 == n)
            cut = c;
    }

    read_instance(&m, 0);
    for (size_t i = 0; i < n; i++) {
        seg_path(path, sizeof path, (unsigned)i + 1);
        off_t want = (off_t)(i + 1 == n ? cut : end[i] - start[i]);
        if (file_size(path) != want) {
            fprintf(stderr, "segment %zu of %zu: %lld bytes after the read, expected %lld\n",
                    i + 1, n, (long long)file_size(path), (long long)want);
            fail("a segment was cut where it should not be");
        }
    }
    read_instance(&m, 1);

    for (size_t i = 0; i < n; i++) {
        seg_path(path, sizeof path, (unsigned)i + 1);
        unlink(path);
    }
    free(m.items);
    free(copy);
    return 0;
}
