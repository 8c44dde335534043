/*
 * The journal's pure part: records and their CRC32C, a map of item keys,
 * the writer of one instance directory (segments, group-commit flush,
 * rolling, copying forward, deleting dead segments), the reader that
 * recovers an instance, and finding the instances whose process is gone.
 * No gRPC here: tests/unit/test_journal.c drives all of it over a temporary
 * directory. The format and the rules are in journal.h and docs/journal.md.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"
#include "grpc/journal_store.h"

#define SEQ_FILE        "seq"
#define SEQ_FILE_MAGIC  "DSJSEQ01"
#define SEQ_FILE_SIZE   20
#define LOCK_FILE       "lock"
#define INSTANCE_PREFIX "grpc-"

/* ---- CRC32C (Castagnoli, reflected 0x82F63B78) -------------------------- */

static uint32_t crc_table[256];
static int crc_table_ready;

static void
crc_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
    crc_table_ready = 1;
}

uint32_t
journal_crc32c_table(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    if (!crc_table_ready)
        crc_table_init();
    crc = ~crc;
    while (len--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t
crc32c_sse42(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t c = ~crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

uint32_t
journal_crc32c(uint32_t crc, const void *data, size_t len)
{
#if defined(__x86_64__)
    static int have_sse42 = -1;
    if (have_sse42 == -1)
        have_sse42 = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    if (have_sse42)
        return crc32c_sse42(crc, data, len);
#endif
    return journal_crc32c_table(crc, data, len);
}

/* ---- little-endian fields ---------------------------------------------- */

static void
put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void
put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void
put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t
get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t
get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ---- records ------------------------------------------------------------ */

void
journal_buf_free(struct journal_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

static void
buf_reserve(struct journal_buf *b, size_t more)
{
    if (b->len + more <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    b->data = ds_realloc(b->data, cap);
    b->cap = cap;
}

/* Start a record of BODY_LEN bytes; *body is where its body goes. */
static size_t
record_begin(struct journal_buf *b, enum journal_type type, size_t body_len, uint8_t **body)
{
    buf_reserve(b, JOURNAL_HEADER_SIZE + body_len);
    size_t off = b->len;
    uint8_t *h = b->data + off;
    put32(h + 4, (uint32_t)body_len);
    h[8] = (uint8_t)type;
    h[9] = 0;
    put16(h + 10, 0);
    *body = h + JOURNAL_HEADER_SIZE;
    b->len += JOURNAL_HEADER_SIZE + body_len;
    return off;
}

static void
record_end(struct journal_buf *b, size_t off)
{
    uint8_t *h = b->data + off;
    put32(h, journal_crc32c(0, h + 4, 8 + get32(h + 4)));
}

static size_t
cut16(size_t len)
{
    return len > 0xffff ? 0xffff : len;
}

size_t
journal_encode_accept(struct journal_buf *b, const struct journal_accept *a)
{
    size_t id_len = cut16(a->id_len), kind_len = cut16(a->kind_len);
    size_t batch_len = cut16(a->batch_len);
    uint8_t *p;
    size_t off = record_begin(b, JOURNAL_ACCEPT, JOURNAL_ACCEPT_FIXED + id_len + kind_len +
                              batch_len + a->raw_len + (a->due_ns ? 8 : 0), &p);
    put64(p, a->key);
    put32(p + 8, a->attempt);
    put32(p + 12, a->max_attempts);
    put32(p + 16, a->timeout_ms);
    p[20] = (a->quick ? JOURNAL_ACCEPT_QUICK : 0) | (a->due_ns ? JOURNAL_ACCEPT_DUE : 0) |
            (a->unstarted ? JOURNAL_ACCEPT_UNSTARTED : 0);
    p[21] = 0;
    put16(p + 22, (uint16_t)id_len);
    put16(p + 24, (uint16_t)kind_len);
    put16(p + 26, (uint16_t)batch_len);
    put32(p + 28, (uint32_t)a->raw_len);
    p += JOURNAL_ACCEPT_FIXED;
    if (id_len > 0)
        memcpy(p, a->id, id_len);
    p += id_len;
    if (kind_len > 0)
        memcpy(p, a->kind, kind_len);
    p += kind_len;
    if (batch_len > 0)
        memcpy(p, a->batch, batch_len);
    p += batch_len;
    if (a->raw_len > 0)
        memcpy(p, a->raw, a->raw_len);
    p += a->raw_len;
    if (a->due_ns)
        put64(p, a->due_ns);
    record_end(b, off);
    return off;
}

size_t
journal_encode_final(struct journal_buf *b, uint64_t key)
{
    uint8_t *p;
    size_t off = record_begin(b, JOURNAL_FINAL, 8, &p);
    put64(p, key);
    record_end(b, off);
    return off;
}

size_t
journal_encode_attempt_flags(struct journal_buf *b, uint64_t key, uint32_t attempt,
                             uint64_t due_ns, uint32_t flags)
{
    uint8_t *p;
    size_t off = record_begin(b, JOURNAL_ATTEMPT, due_ns || flags ? 24 : 12, &p);
    put64(p, key);
    put32(p + 8, attempt);
    if (due_ns || flags) {
        put32(p + 12, flags);
        put64(p + 16, due_ns);
    }
    record_end(b, off);
    return off;
}

size_t
journal_encode_attempt_due(struct journal_buf *b, uint64_t key, uint32_t attempt,
                           uint64_t due_ns)
{
    return journal_encode_attempt_flags(b, key, attempt, due_ns, 0);
}

size_t
journal_encode_attempt(struct journal_buf *b, uint64_t key, uint32_t attempt)
{
    return journal_encode_attempt_due(b, key, attempt, 0);
}

size_t
journal_encode_seq(struct journal_buf *b, uint64_t seq)
{
    uint8_t *p;
    size_t off = record_begin(b, JOURNAL_SEQ, 8, &p);
    put64(p, seq);
    record_end(b, off);
    return off;
}

size_t
journal_encode_done(struct journal_buf *b, const struct journal_done *d)
{
    size_t id_len = cut16(d->id_len), kind_len = cut16(d->kind_len);
    size_t batch_len = cut16(d->batch_len), error_len = d->error_len;
    int has_cost = d->cpu_usec != 0 || d->max_rss_kib != 0;
    size_t parent_len = cut16(d->traceparent_len);
    size_t state_len = parent_len > 0 ? cut16(d->tracestate_len) : 0;
    size_t rest = JOURNAL_DONE_FIXED + id_len + kind_len + batch_len + d->result_len + d->raw_len +
                  (parent_len > 0 ? 4 + parent_len + state_len : 0) +
                  (has_cost ? JOURNAL_DONE_COST : 0);
    /* Never past what a reader takes: the error gives way. */
    if (rest + error_len > JOURNAL_BODY_MAX)
        error_len = rest >= JOURNAL_BODY_MAX ? 0 : JOURNAL_BODY_MAX - rest;
    uint8_t *p;
    size_t off = record_begin(b, JOURNAL_DONE, rest + error_len, &p);
    memset(p, 0, JOURNAL_DONE_FIXED);
    put64(p, d->key);
    p[8] = d->state;
    p[9] = (d->quick ? JOURNAL_DONE_QUICK : 0) | (parent_len > 0 ? JOURNAL_DONE_HAS_TRACE : 0) |
           (has_cost ? JOURNAL_DONE_HAS_COST : 0);
    put32(p + 12, d->attempt);
    put32(p + 16, d->max_attempts);
    put32(p + 20, d->timeout_ms);
    put32(p + 24, (uint32_t)d->priority);
    put64(p + 32, (uint64_t)d->accepted_ns);
    put64(p + 40, (uint64_t)d->started_ns);
    put64(p + 48, (uint64_t)d->finished_ns);
    put64(p + 56, d->last_seq);
    put16(p + 64, (uint16_t)id_len);
    put16(p + 66, (uint16_t)kind_len);
    put16(p + 68, (uint16_t)batch_len);
    put32(p + 72, (uint32_t)error_len);
    put32(p + 76, (uint32_t)d->result_len);
    put32(p + 80, (uint32_t)d->raw_len);
    p += JOURNAL_DONE_FIXED;
    const struct { const void *data; size_t len; } parts[] = {
        { d->id, id_len }, { d->kind, kind_len }, { d->batch, batch_len },
        { d->error, error_len }, { d->result, d->result_len }, { d->raw, d->raw_len },
    };
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (parts[i].len > 0)
            memcpy(p, parts[i].data, parts[i].len);
        p += parts[i].len;
    }
    if (parent_len > 0) {
        put16(p, (uint16_t)parent_len);
        put16(p + 2, (uint16_t)state_len);
        memcpy(p + 4, d->traceparent, parent_len);
        if (state_len > 0)
            memcpy(p + 4 + parent_len, d->tracestate, state_len);
        p += 4 + parent_len + state_len;
    }
    if (has_cost) {
        put64(p, d->cpu_usec);
        put64(p + 8, d->max_rss_kib);
    }
    record_end(b, off);
    return off;
}

uint64_t
journal_id_hash(const char *id, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)id[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h ? h : 1;
}

static int
decode_done(const uint8_t *body, uint32_t len, struct journal_record *rec)
{
    if (len < JOURNAL_DONE_FIXED)
        return -1;
    struct journal_done *d = &rec->done;
    d->key = rec->key = get64(body);
    d->state = body[8];
    d->quick = body[9] & JOURNAL_DONE_QUICK;
    d->attempt = rec->attempt = get32(body + 12);
    d->max_attempts = get32(body + 16);
    d->timeout_ms = get32(body + 20);
    d->priority = (int32_t)get32(body + 24);
    d->accepted_ns = (int64_t)get64(body + 32);
    d->started_ns = (int64_t)get64(body + 40);
    d->finished_ns = (int64_t)get64(body + 48);
    d->last_seq = get64(body + 56);
    d->id_len = get16(body + 64);
    d->kind_len = get16(body + 66);
    d->batch_len = get16(body + 68);
    d->error_len = get32(body + 72);
    d->result_len = get32(body + 76);
    d->raw_len = get32(body + 80);
    uint64_t fixed = (uint64_t)JOURNAL_DONE_FIXED + d->id_len + d->kind_len + d->batch_len +
                     d->error_len + d->result_len + d->raw_len;
    d->traceparent = d->tracestate = NULL;
    d->traceparent_len = d->tracestate_len = 0;
    if (body[9] & JOURNAL_DONE_HAS_TRACE) {
        if (fixed + 4 > len)
            return -1;
        d->traceparent_len = get16(body + fixed);
        d->tracestate_len = get16(body + fixed + 2);
        if (d->traceparent_len == 0)
            return -1;
        d->traceparent = (const char *)body + fixed + 4;
        d->tracestate = d->traceparent + d->traceparent_len;
        fixed += 4 + d->traceparent_len + d->tracestate_len;
    }
    d->cpu_usec = d->max_rss_kib = 0;
    if (body[9] & JOURNAL_DONE_HAS_COST) {
        if (fixed + JOURNAL_DONE_COST > len)
            return -1;
        d->cpu_usec = get64(body + fixed);
        d->max_rss_kib = get64(body + fixed + 8);
        fixed += JOURNAL_DONE_COST;
    }
    if (fixed != len || d->key == 0 || d->id_len == 0)
        return -1;
    d->id = (const char *)body + JOURNAL_DONE_FIXED;
    d->kind = d->id + d->id_len;
    d->batch = d->kind + d->kind_len;
    d->error = d->batch + d->batch_len;
    d->result = (const uint8_t *)d->error + d->error_len;
    d->raw = d->result + d->result_len;
    return 0;
}

enum journal_decode
journal_decode(const uint8_t *p, size_t avail, struct journal_record *rec, size_t *size,
               const char **why)
{
    if (avail < JOURNAL_HEADER_SIZE) {
        *why = "torn record header";
        return JOURNAL_TORN;
    }
    uint32_t crc = get32(p), len = get32(p + 4);
    uint8_t type = p[8];
    if (len > JOURNAL_BODY_MAX) {
        *why = "record length out of range";
        return JOURNAL_CORRUPT;
    }
    if (avail - JOURNAL_HEADER_SIZE < len) {
        *why = "torn record";
        return JOURNAL_TORN;
    }
    if (journal_crc32c(0, p + 4, 8 + (size_t)len) != crc) {
        *why = "bad checksum";
        return JOURNAL_CORRUPT;
    }
    const uint8_t *body = p + JOURNAL_HEADER_SIZE;
    memset(rec, 0, sizeof *rec);
    rec->type = (enum journal_type)type;
    switch (type) {
    case JOURNAL_ACCEPT: {
        if (len < JOURNAL_ACCEPT_FIXED) {
            *why = "short ACCEPT record";
            return JOURNAL_CORRUPT;
        }
        struct journal_accept *a = &rec->accept;
        a->key = rec->key = get64(body);
        a->attempt = rec->attempt = get32(body + 8);
        a->max_attempts = get32(body + 12);
        a->timeout_ms = get32(body + 16);
        a->quick = body[20] & JOURNAL_ACCEPT_QUICK;
        a->unstarted = rec->unstarted = (body[20] & JOURNAL_ACCEPT_UNSTARTED) != 0;
        size_t due_len = (body[20] & JOURNAL_ACCEPT_DUE) ? 8 : 0;
        a->id_len = get16(body + 22);
        a->kind_len = get16(body + 24);
        a->batch_len = get16(body + 26);
        a->raw_len = get32(body + 28);
        if ((uint64_t)JOURNAL_ACCEPT_FIXED + a->id_len + a->kind_len + a->batch_len +
            a->raw_len + due_len != len || a->key == 0) {
            *why = "malformed ACCEPT record";
            return JOURNAL_CORRUPT;
        }
        a->id = (const char *)body + JOURNAL_ACCEPT_FIXED;
        a->kind = a->id + a->id_len;
        a->batch = a->kind + a->kind_len;
        a->raw = (const uint8_t *)a->batch + a->batch_len;
        if (due_len > 0 && (a->due_ns = rec->due_ns = get64(a->raw + a->raw_len)) == 0) {
            *why = "malformed ACCEPT record (due flag without a due time)";
            return JOURNAL_CORRUPT;
        }
        break;
    }
    case JOURNAL_FINAL:
        if (len != 8 || (rec->key = get64(body)) == 0) {
            *why = "malformed FINAL record";
            return JOURNAL_CORRUPT;
        }
        break;
    case JOURNAL_ATTEMPT:
        if ((len != 12 && len != 24) || (rec->key = get64(body)) == 0) {
            *why = "malformed ATTEMPT record";
            return JOURNAL_CORRUPT;
        }
        rec->attempt = get32(body + 8);
        if (len == 24) {
            /* A due time, or flags, or both. */
            uint32_t flags = get32(body + 12);
            rec->due_ns = get64(body + 16);
            if ((flags & ~(uint32_t)JOURNAL_ATTEMPT_UNSTARTED) != 0 ||
                (flags == 0 && rec->due_ns == 0)) {
                *why = "malformed ATTEMPT record";
                return JOURNAL_CORRUPT;
            }
            rec->unstarted = (flags & JOURNAL_ATTEMPT_UNSTARTED) != 0;
        }
        break;
    case JOURNAL_SEQ:
        if (len != 8) {
            *why = "malformed SEQ record";
            return JOURNAL_CORRUPT;
        }
        rec->seq = get64(body);
        break;
    case JOURNAL_DONE:
        if (decode_done(body, len, rec) == -1) {
            *why = "malformed DONE record";
            return JOURNAL_CORRUPT;
        }
        break;
    default:
        *why = "unknown record type";
        return JOURNAL_CORRUPT;
    }
    *size = JOURNAL_HEADER_SIZE + (size_t)len;
    return JOURNAL_OK;
}

/* ---- the key map: open addressing, linear probing, backward-shift delete - */

static size_t
map_home(const struct journal_map *m, uint64_t key)
{
    int bits = __builtin_ctzll((unsigned long long)m->capacity);
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

struct journal_entry *
journal_map_get(const struct journal_map *m, uint64_t key)
{
    if (m->capacity == 0 || key == 0)
        return NULL;
    size_t mask = m->capacity - 1;
    for (size_t i = map_home(m, key);; i = (i + 1) & mask) {
        if (m->slots[i].key == key)
            return &m->slots[i];
        if (m->slots[i].key == 0)
            return NULL;
    }
}

static void
map_grow(struct journal_map *m)
{
    struct journal_map bigger = { .capacity = m->capacity ? m->capacity * 2 : 64 };
    bigger.slots = ds_calloc(bigger.capacity, sizeof *bigger.slots);
    for (size_t i = 0; i < m->capacity; i++) {
        if (m->slots[i].key == 0)
            continue;
        size_t j = map_home(&bigger, m->slots[i].key);
        while (bigger.slots[j].key != 0)
            j = (j + 1) & (bigger.capacity - 1);
        bigger.slots[j] = m->slots[i];
        bigger.count++;
    }
    free(m->slots);
    *m = bigger;
}

struct journal_entry *
journal_map_put(struct journal_map *m, uint64_t key)
{
    struct journal_entry *e = journal_map_get(m, key);
    if (e != NULL)
        return e;
    if ((m->count + 1) * 4 > m->capacity * 3)
        map_grow(m);
    size_t i = map_home(m, key);
    while (m->slots[i].key != 0)
        i = (i + 1) & (m->capacity - 1);
    memset(&m->slots[i], 0, sizeof m->slots[i]);
    m->slots[i].key = key;
    m->count++;
    return &m->slots[i];
}

void
journal_map_del(struct journal_map *m, uint64_t key)
{
    struct journal_entry *e = journal_map_get(m, key);
    if (e == NULL)
        return;
    size_t mask = m->capacity - 1, i = (size_t)(e - m->slots), j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (m->slots[j].key == 0)
            break;
        size_t home = map_home(m, m->slots[j].key);
        /* Move j back into the hole at i unless its home lies in (i, j]. */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    memset(&m->slots[i], 0, sizeof m->slots[i]);
    m->count--;
}

void
journal_map_free(struct journal_map *m)
{
    free(m->slots);
    memset(m, 0, sizeof *m);
}

/* ---- files -------------------------------------------------------------- */

static char *
path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = ds_malloc(la + lb + 2);
    memcpy(p, a, la);
    p[la] = '/';
    memcpy(p + la + 1, b, lb + 1);
    return p;
}

static void
segment_path(const char *dir, uint32_t number, char *buf, size_t size)
{
    snprintf(buf, size, "%s/%08u.seg", dir, number);
}

/* NAME is a segment's file name: its number, or 0. */
static uint32_t
segment_number(const char *name)
{
    if (strlen(name) != 12 || strcmp(name + 8, ".seg") != 0)
        return 0;
    uint32_t n = 0;
    for (int i = 0; i < 8; i++) {
        if (name[i] < '0' || name[i] > '9')
            return 0;
        n = n * 10 + (uint32_t)(name[i] - '0');
    }
    return n;
}

static int
fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1)
        return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* PATH and its parents, as mkdir -p. *MADE_AT (if not NULL): the offset in
 * PATH of the '/' before the first level it made (SIZE_MAX: none), so that
 * the caller can sync each new entry in its parent. */
static int
mkdir_p(const char *path, size_t *made_at)
{
    char buf[PATH_MAX];
    if (made_at != NULL)
        *made_at = SIZE_MAX;
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    size_t slash = 0;
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        /* Parents made here are 0755, as mkdir -p makes them: a user the
         * grpc process drops to must be able to reach the journal. */
        if (mkdir(buf, c == '\0' ? 0700 : 0755) == 0) {
            if (made_at != NULL && *made_at == SIZE_MAX)
                *made_at = slash;
        } else if (errno != EEXIST) {
            return -1;
        }
        *p = c;
        if (c == '\0')
            return 0;
        slash = (size_t)(p - buf);
    }
}

/* Write all of IOV; *written (if not NULL) is what got out, also when it
 * fails (a full disk takes a short write, then fails the rest). */
static int
write_full(int fd, struct iovec *iov, int count, size_t *written)
{
    if (written != NULL)
        *written = 0;
    while (count > 0) {
        ssize_t n = writev(fd, iov, count);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        if (written != NULL)
            *written += (size_t)n;
        while (count > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            count--;
        }
        if (count > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

/* FD's file mapped read-only (its size in *size), or NULL (errno set).
 * Mapped rather than read: a segment may be large, and only the live items
 * are copied out. */
static const uint8_t *
map_file(int fd, size_t *size)
{
    static const uint8_t empty[1];
    struct stat st;
    if (fstat(fd, &st) == -1)
        return NULL;
    *size = (size_t)st.st_size;
    if (*size == 0)
        return empty;
    void *p = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void
unmap_file(const uint8_t *p, size_t size)
{
    if (size > 0)
        munmap((void *)p, size);
}

/* ---- ownership ---------------------------------------------------------- */

static int
chown_entry(const char *path, uid_t uid, gid_t gid)
{
    if (lchown(path, uid, gid) == -1 && errno != ENOENT) {
        log_syswarn("journal: lchown(\"%s\", %u, %u) failed", path, (unsigned)uid,
                    (unsigned)gid);
        return -1;
    }
    return 0;
}

int
journal_store_chown(const char *root, uid_t uid, gid_t gid)
{
    /* ROOT itself may be a symlink the operator made: its target is ours. */
    if (chown(root, uid, gid) == -1) {
        log_syswarn("journal: chown(\"%s\", %u, %u) failed", root, (unsigned)uid,
                    (unsigned)gid);
        return -1;
    }
    int rc = 0;
    DIR *d = opendir(root);
    if (d == NULL)
        return -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *path = path_join(root, de->d_name);
        if (chown_entry(path, uid, gid) == -1)
            rc = -1;
        DIR *inner = strncmp(de->d_name, INSTANCE_PREFIX, strlen(INSTANCE_PREFIX)) == 0
                     ? opendir(path) : NULL;
        if (inner != NULL) {
            struct dirent *ie;
            while ((ie = readdir(inner)) != NULL) {
                if (strcmp(ie->d_name, ".") == 0 || strcmp(ie->d_name, "..") == 0)
                    continue;
                char *file = path_join(path, ie->d_name);
                if (chown_entry(file, uid, gid) == -1)
                    rc = -1;
                free(file);
            }
            closedir(inner);
        }
        free(path);
    }
    closedir(d);
    return rc;
}

/* ---- the seq file ------------------------------------------------------- */

static int
seq_file_decode(const uint8_t *p, size_t len, uint64_t *seq)
{
    if (len != SEQ_FILE_SIZE || memcmp(p, SEQ_FILE_MAGIC, 8) != 0 ||
        journal_crc32c(0, p, 16) != get32(p + 16))
        return -1;
    *seq = get64(p + 8);
    return 0;
}

uint64_t
journal_seq_file_read(const char *root)
{
    char *path = path_join(root, SEQ_FILE);
    uint64_t seq = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd != -1) {
        uint8_t buf[SEQ_FILE_SIZE + 1];
        ssize_t n = pread(fd, buf, sizeof buf, 0);
        if (n > 0 && seq_file_decode(buf, (size_t)n, &seq) == -1)
            log_warn("journal: %s is damaged; ignoring it", path);
        close(fd);
    }
    free(path);
    return seq;
}

int
journal_seq_file_update(const char *root, uint64_t seq, int sync)
{
    char *path = path_join(root, SEQ_FILE);
    int rc = -1;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd == -1) {
        log_syswarn("journal: open(\"%s\") failed", path);
        goto out;
    }
    /* Two grpc processes may record at once (an upgrade): keep the larger. */
    while (flock(fd, LOCK_EX) == -1 && errno == EINTR)
        ;
    uint8_t buf[SEQ_FILE_SIZE + 1];
    uint64_t current = 0;
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    if (n > 0)
        seq_file_decode(buf, (size_t)n, &current);
    rc = 0;
    if (seq > current) {
        memcpy(buf, SEQ_FILE_MAGIC, 8);
        put64(buf + 8, seq);
        put32(buf + 16, journal_crc32c(0, buf, 16));
        if (pwrite(fd, buf, SEQ_FILE_SIZE, 0) != SEQ_FILE_SIZE ||
            ftruncate(fd, SEQ_FILE_SIZE) == -1 || (sync && fdatasync(fd) == -1)) {
            log_syswarn("journal: writing %s failed", path);
            rc = -1;
        }
    }
    close(fd);
out:
    free(path);
    return rc;
}

/* ---- the writer --------------------------------------------------------- */

static void
keys_push(uint64_t **keys, size_t *count, size_t *cap, uint64_t key)
{
    if (*count == *cap) {
        *cap = *cap ? *cap * 2 : 256;
        *keys = ds_realloc(*keys, *cap * sizeof **keys);
    }
    (*keys)[(*count)++] = key;
}

static struct journal_segment *
segment_find(struct journal_store *s, uint32_t number)
{
    size_t lo = 0, hi = s->segment_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->segments[mid].number < number)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->segment_count && s->segments[lo].number == number ? &s->segments[lo] : NULL;
}

static void
segment_live_dec(struct journal_store *s, uint32_t number)
{
    struct journal_segment *seg = segment_find(s, number);
    if (seg != NULL && seg->live > 0)
        seg->live--;
}

static void
segment_retained_dec(struct journal_store *s, uint32_t number)
{
    struct journal_segment *seg = segment_find(s, number);
    if (seg != NULL && seg->retained > 0)
        seg->retained--;
}

static struct journal_segment *
current_segment(struct journal_store *s)
{
    if (s->segment_count == 0 || s->segments[s->segment_count - 1].number != s->segment)
        return NULL;
    return &s->segments[s->segment_count - 1];
}

/*
 * Delete the oldest segments while none of their items is live. Only a
 * prefix goes: a newer segment may hold the FINAL of an item whose ACCEPT
 * is in an older one still there, and must stay as long as that one does.
 * Copying forward (roll) keeps the prefix moving.
 */
static void
collect(struct journal_store *s)
{
    size_t n = 0;
    char path[PATH_MAX];
    while (n + 1 < s->segment_count && s->segments[n].live == 0 && s->segments[n].retained == 0) {
        segment_path(s->dir, s->segments[n].number, path, sizeof path);
        if (unlink(path) == -1 && errno != ENOENT)
            log_syswarn("journal: unlink(\"%s\") failed", path);
        else
            log_debug("journal: deleted %s: none of its items is live or retained", path);
        if (s->segments[n].fd != -1)
            close(s->segments[n].fd);
        s->deleted++;
        n++;
    }
    if (n > 0) {
        memmove(s->segments, s->segments + n, (s->segment_count - n) * sizeof *s->segments);
        s->segment_count -= n;
    }
}

/* The read descriptor of SEGMENT for a copy (the segment's own: it reads
 * also once the file lost its name); PATH gets its name. -1 if it has
 * none (logged once per segment walked: its WHAT stay there). */
static int
segment_for(struct journal_store *s, uint32_t segment, uint32_t *logged, char *path,
            size_t size, const char *what)
{
    segment_path(s->dir, segment, path, size);
    struct journal_segment *seg = segment_find(s, segment);
    if (seg != NULL && seg->fd != -1)
        return seg->fd;
    if (*logged != segment)
        log_error("journal: segment %s cannot be read back; its %s stay there", path, what);
    *logged = segment;
    return -1;
}

/*
 * Live items and retained finals written to segments up to LIMIT are read
 * back and appended (items with their current attempt) to `other`; the
 * flush under way writes them, and their old segments die once it has.
 */
static void
copy_live(struct journal_store *s, uint32_t limit)
{
    int fd;
    uint32_t logged = 0;
    struct journal_buf rec = { 0 };
    char path[PATH_MAX];
    for (size_t i = 0; i < s->entries.capacity; i++) {
        struct journal_entry *e = &s->entries.slots[i];
        if (e->key == 0 || e->state != JOURNAL_ENTRY_WRITTEN || e->segment > limit)
            continue;
        if ((fd = segment_for(s, e->segment, &logged, path, sizeof path, "live items")) == -1)
            continue;
        rec.len = 0;
        buf_reserve(&rec, e->length);
        struct journal_record r;
        size_t size;
        const char *why = "short read";
        ssize_t n = pread(fd, rec.data, e->length, (off_t)e->offset);
        if (n != (ssize_t)e->length ||
            journal_decode(rec.data, e->length, &r, &size, &why) != JOURNAL_OK ||
            r.type != JOURNAL_ACCEPT || r.key != e->key) {
            log_error("journal: the record of item key %llu in %s at offset %llu does not read "
                      "back (%s); it stays there", (unsigned long long)e->key, path,
                      (unsigned long long)e->offset, r.type == JOURNAL_ACCEPT ? why : "not it");
            continue;
        }
        r.accept.attempt = e->attempt;
        r.accept.due_ns = e->due_ns;
        r.accept.unstarted = e->unstarted;
        e->aux = journal_encode_accept(&s->other, &r.accept);
        /* The copy may differ in length (a due time added or dropped). */
        e->length = (uint32_t)(s->other.len - e->aux);
        e->state = JOURNAL_ENTRY_COPYING;
        keys_push(&s->copy_keys, &s->copy_count, &s->copy_cap, e->key);
        s->copied++;
    }
    logged = 0;
    /* Retained finals: their DONE record is copied as it is. */
    for (size_t i = 0; i < s->retained.capacity; i++) {
        struct journal_entry *e = &s->retained.slots[i];
        if (e->key == 0 || e->state != JOURNAL_ENTRY_WRITTEN || e->segment > limit)
            continue;
        if ((fd = segment_for(s, e->segment, &logged, path, sizeof path,
                              "retained finals")) == -1)
            continue;
        buf_reserve(&s->other, e->length);
        uint8_t *dst = s->other.data + s->other.len;
        struct journal_record r;
        size_t size;
        const char *why = "short read";
        ssize_t n = pread(fd, dst, e->length, (off_t)e->offset);
        if (n != (ssize_t)e->length ||
            journal_decode(dst, e->length, &r, &size, &why) != JOURNAL_OK ||
            r.type != JOURNAL_DONE || journal_id_hash(r.done.id, r.done.id_len) != e->key) {
            log_error("journal: the final of a retained item in %s at offset %llu does not "
                      "read back (%s); it stays there", path, (unsigned long long)e->offset,
                      r.type == JOURNAL_DONE ? why : "not it");
            continue;
        }
        e->aux = s->other.len;
        s->other.len += e->length;
        e->state = JOURNAL_ENTRY_COPYING;
        keys_push(&s->done_copy_keys, &s->done_copy_count, &s->done_copy_cap, e->key);
        s->done_copied++;
    }
    journal_buf_free(&rec);
}

/* Live items of segments copy_after segments older than the current one
 * are copied forward, so that at most that many segments stay. */
static void
copy_forward(struct journal_store *s)
{
    if (s->segment <= s->copy_after || s->segment_count == 0 ||
        s->segments[0].number > s->segment - s->copy_after)
        return;
    copy_live(s, s->segment - s->copy_after);
}

/*
 * Make segment NUMBER (the magic, synced with its directory unless
 * `never`) and make it the current one. 0, or -1 with errno set and WHY
 * saying which call failed (nothing logged).
 */
static int
segment_make(struct journal_store *s, uint32_t number, char *why, size_t why_size)
{
    char path[PATH_MAX];
    segment_path(s->dir, number, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    if (fd == -1) {
        int saved = errno;
        snprintf(why, why_size, "open(\"%s\") failed: %s", path, strerror(saved));
        errno = saved;
        return -1;
    }
    int rfd = open(path, O_RDONLY | O_CLOEXEC);
    struct iovec iov = { .iov_base = JOURNAL_MAGIC, .iov_len = JOURNAL_MAGIC_SIZE };
    const char *call = rfd == -1 ? "open(O_RDONLY)" : "write()";
    if (rfd == -1 || write_full(fd, &iov, 1, NULL) == -1 ||
        (s->sync != DS_JOURNAL_SYNC_NEVER &&
         ((call = "fsync()", fsync(fd) == -1) ||
          (call = "fsync() of its directory", fsync_dir(s->dir) == -1)))) {
        int saved = errno;
        snprintf(why, why_size, "creating %s failed (%s): %s", path, call, strerror(saved));
        close(fd);
        if (rfd != -1)
            close(rfd);
        unlink(path);
        errno = saved;
        return -1;
    }
    if (s->fd != -1) {
        if (s->unsynced && s->sync != DS_JOURNAL_SYNC_NEVER && fdatasync(s->fd) == -1)
            log_syserr("journal: fdatasync() of segment %u failed", s->segment);
        close(s->fd);
    }
    s->unsynced = 0;
    s->fd = fd;
    s->segment = number;
    s->size = JOURNAL_MAGIC_SIZE;
    s->roll_next = 0;
    if (s->segment_count == s->segment_cap) {
        s->segment_cap = s->segment_cap ? s->segment_cap * 2 : 8;
        s->segments = ds_realloc(s->segments, s->segment_cap * sizeof *s->segments);
    }
    s->segments[s->segment_count++] = (struct journal_segment){ .number = number, .fd = rfd };
    /* The segment holding the last SEQ may go: every segment repeats it. */
    if (s->max_seq > 0)
        journal_encode_seq(&s->other, s->max_seq);
    return 0;
}

static int
roll(struct journal_store *s)
{
    char why[PATH_MAX + 128];
    if (segment_make(s, s->segment + 1, why, sizeof why) == -1) {
        int saved = errno;
        log_error("journal: %s", why);
        errno = saved;
        return -1;
    }
    s->rolls++;
    copy_forward(s);
    return 0;
}

static int dir_sync(struct journal_store *s, char *why, size_t why_size);

/* Remember which directory DIR/NAME is (dir_replaced compares). */
static void
dir_identify(struct journal_store *s)
{
    struct stat st;
    if (stat(s->dir, &st) == 0) {
        s->dir_dev = st.st_dev;
        s->dir_ino = st.st_ino;
    }
}

int
journal_store_open(struct journal_store *s, const char *root, const char *name,
                   enum ds_journal_sync sync, uint64_t segment_max)
{
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->lock_fd = -1;
    s->root = ds_strdup(root);
    s->name = ds_strdup(name);
    s->dir = path_join(root, name);
    s->sync = sync;
    s->segment_max = segment_max ? segment_max : JOURNAL_SEGMENT_MAX;
    s->idle_roll = s->segment_max < JOURNAL_IDLE_ROLL ? s->segment_max : JOURNAL_IDLE_ROLL;
    s->copy_after = JOURNAL_COPY_AFTER;
    s->parents_from = SIZE_MAX;

    size_t dir_len = strlen(s->dir);
    if (dir_len + 32 > PATH_MAX) {
        log_error("journal: %s: path too long", s->dir);
        free(s->root);
        free(s->name);
        free(s->dir);
        memset(s, 0, sizeof *s);
        s->fd = s->lock_fd = -1;
        errno = ENAMETOOLONG;
        return -1;
    }
    char *tmp = ds_malloc(dir_len + 5), *lock;
    memcpy(tmp, s->dir, dir_len);
    memcpy(tmp + dir_len, ".new", 5);
    lock = path_join(tmp, LOCK_FILE);
    int saved;
    if (mkdir_p(root, &s->parents_from) == -1) {
        saved = errno;
        log_syserr("journal: cannot create %s", root);
        goto fail;
    }
    struct stat st;
    if (stat(root, &st) == 0) {
        s->root_mode = st.st_mode & 07777;
        s->root_uid = st.st_uid;
        s->root_gid = st.st_gid;
    }
    /* Made under a temporary name and renamed once locked, so that nobody
     * scanning sees it unlocked. */
    if (mkdir(tmp, 0700) == -1) {
        saved = errno;
        log_syserr("journal: mkdir(\"%s\") failed", tmp);
        goto fail;
    }
    s->lock_fd = open(lock, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (s->lock_fd == -1 || flock(s->lock_fd, LOCK_EX | LOCK_NB) == -1) {
        saved = errno;
        log_syserr("journal: locking %s failed", lock);
        goto fail_tmp;
    }
    if (rename(tmp, s->dir) == -1) {
        saved = errno;
        log_syserr("journal: rename(\"%s\", \"%s\") failed", tmp, s->dir);
        goto fail_tmp;
    }
    free(tmp);
    free(lock);
    dir_identify(s);
    /* Its name in ROOT, and the names of ROOT and the parents made here. */
    s->dir_unsynced = 1;
    char why[PATH_MAX + 64];
    if (dir_sync(s, why, sizeof why) == -1) {
        saved = errno;
        log_error("journal: %s", why);
        journal_store_close(s, 1);
        errno = saved;
        return -1;
    }
    if (roll(s) == -1) {
        saved = errno;
        journal_store_close(s, 1);
        errno = saved;
        return -1;
    }
    return 0;

fail_tmp:
    unlink(lock);
    rmdir(tmp);
fail:
    if (s->lock_fd != -1)
        close(s->lock_fd);
    free(tmp);
    free(lock);
    free(s->root);
    free(s->name);
    free(s->dir);
    memset(s, 0, sizeof *s);
    s->fd = s->lock_fd = -1;
    errno = saved;
    return -1;
}

void
journal_store_close(struct journal_store *s, int remove)
{
    char path[PATH_MAX];
    if (s->dir == NULL)
        return;
    if (remove) {
        if (s->max_seq > 0)
            journal_seq_file_update(s->root, s->max_seq, s->sync != DS_JOURNAL_SYNC_NEVER);
        for (size_t i = 0; i < s->segment_count; i++) {
            segment_path(s->dir, s->segments[i].number, path, sizeof path);
            if (unlink(path) == -1 && errno != ENOENT)
                log_syswarn("journal: unlink(\"%s\") failed", path);
        }
        char *lock = path_join(s->dir, LOCK_FILE);
        unlink(lock);
        free(lock);
        if (rmdir(s->dir) == -1)
            log_syswarn("journal: rmdir(\"%s\") failed", s->dir);
    } else if (s->fd != -1 && s->unsynced && s->sync != DS_JOURNAL_SYNC_NEVER &&
               fdatasync(s->fd) == -1) {
        log_syserr("journal: fdatasync() of segment %u failed", s->segment);
    }
    if (s->fd != -1)
        close(s->fd);
    if (s->lock_fd != -1)
        close(s->lock_fd);
    for (size_t i = 0; i < s->segment_count; i++)
        if (s->segments[i].fd != -1)
            close(s->segments[i].fd);
    journal_buf_free(&s->other);
    journal_buf_free(&s->accepts);
    free(s->new_keys);
    free(s->copy_keys);
    free(s->done_keys);
    free(s->done_copy_keys);
    journal_map_free(&s->entries);
    journal_map_free(&s->retained);
    free(s->segments);
    free(s->root);
    free(s->name);
    free(s->dir);
    memset(s, 0, sizeof *s);
    s->fd = s->lock_fd = -1;
}

void
journal_store_accept(struct journal_store *s, const struct journal_accept *a)
{
    struct journal_entry *e = journal_map_put(&s->entries, a->key);
    size_t off = journal_encode_accept(&s->accepts, a);
    e->state = JOURNAL_ENTRY_NEW;
    e->aux = off;
    e->length = (uint32_t)(s->accepts.len - off);
    e->attempt = a->attempt;
    e->due_ns = a->due_ns;
    e->unstarted = a->unstarted != 0;
    keys_push(&s->new_keys, &s->new_count, &s->new_cap, a->key);
}

void
journal_store_attempt_due(struct journal_store *s, uint64_t key, uint32_t attempt,
                          uint64_t due_ns)
{
    struct journal_entry *e = journal_map_get(&s->entries, key);
    if (e == NULL)
        return;
    e->attempt = attempt;
    e->due_ns = due_ns;
    e->unstarted = 0;
    journal_encode_attempt_due(&s->other, key, attempt, due_ns);
}

int
journal_store_unstarted(struct journal_store *s, uint64_t key)
{
    struct journal_entry *e = journal_map_get(&s->entries, key);
    if (e == NULL || e->unstarted)
        return 0;
    e->unstarted = 1;
    journal_encode_attempt_flags(&s->other, key, e->attempt, e->due_ns,
                                 JOURNAL_ATTEMPT_UNSTARTED);
    return 1;
}

void
journal_store_attempt(struct journal_store *s, uint64_t key, uint32_t attempt)
{
    journal_store_attempt_due(s, key, attempt, 0);
}

void
journal_store_final(struct journal_store *s, uint64_t key)
{
    struct journal_entry *e = journal_map_get(&s->entries, key);
    if (e == NULL)
        return;
    if (e->state != JOURNAL_ENTRY_NEW)
        segment_live_dec(s, e->segment);
    journal_map_del(&s->entries, key);
    journal_encode_final(&s->other, key);
}

static void
retained_drop(struct journal_store *s, struct journal_entry *e)
{
    if (e->state != JOURNAL_ENTRY_NEW)
        segment_retained_dec(s, e->segment);
    journal_map_del(&s->retained, e->key);
}

void
journal_store_done(struct journal_store *s, const struct journal_done *d)
{
    struct journal_entry *e = journal_map_get(&s->entries, d->key);
    if (e != NULL) {
        if (e->state != JOURNAL_ENTRY_NEW)
            segment_live_dec(s, e->segment);
        journal_map_del(&s->entries, d->key);
    }
    uint64_t h = journal_id_hash(d->id, d->id_len);
    e = journal_map_put(&s->retained, h);
    if (e->state != JOURNAL_ENTRY_NEW && e->segment != 0)
        segment_retained_dec(s, e->segment);    /* an older final of the id */
    size_t off = journal_encode_done(&s->other, d);
    e->state = JOURNAL_ENTRY_NEW;
    e->segment = 0;
    e->aux = off;
    e->length = (uint32_t)(s->other.len - off);
    keys_push(&s->done_keys, &s->done_count, &s->done_cap, h);
}

void
journal_store_forget(struct journal_store *s, const char *id, size_t id_len)
{
    if (s->retained.count == 0)
        return;
    struct journal_entry *e = journal_map_get(&s->retained, journal_id_hash(id, id_len));
    if (e != NULL)
        retained_drop(s, e);
}

uint64_t
journal_store_retained(const struct journal_store *s)
{
    return s->retained.count;
}

void
journal_store_seq(struct journal_store *s, uint64_t seq)
{
    if (seq <= s->max_seq)
        return;
    s->max_seq = seq;
    journal_encode_seq(&s->other, seq);
}

void
journal_store_discard_accepts(struct journal_store *s)
{
    for (size_t i = 0; i < s->new_count; i++) {
        struct journal_entry *e = journal_map_get(&s->entries, s->new_keys[i]);
        if (e != NULL && e->state == JOURNAL_ENTRY_NEW)
            journal_map_del(&s->entries, s->new_keys[i]);
    }
    s->new_count = 0;
    s->accepts.len = 0;
}

int
journal_store_has_buffered(const struct journal_store *s)
{
    return s->other.len > 0 || s->accepts.len > 0;
}

static int
unlinked(int fd)
{
    struct stat st;
    return fd != -1 && fstat(fd, &st) == 0 && st.st_nlink == 0;
}

/* Has the file of FD (ours, at PATH) lost that name: unlinked, or another
 * file there? A backup's hard link keeps the link count above 0 when a
 * cleaner deletes our name. */
static int
name_lost(int fd, const char *path)
{
    struct stat st, named;
    if (fd == -1 || fstat(fd, &st) == -1)
        return 0;
    if (st.st_nlink == 0)
        return 1;
    if (lstat(path, &named) == -1)
        return errno == ENOENT || errno == ENOTDIR;
    return named.st_dev != st.st_dev || named.st_ino != st.st_ino;
}

static int
lock_lost(const struct journal_store *s)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/" LOCK_FILE, s->dir);
    return name_lost(s->lock_fd, path);
}

static int
segment_lost(const struct journal_store *s, const struct journal_segment *seg)
{
    char path[PATH_MAX];
    segment_path(s->dir, seg->number, path, sizeof path);
    return name_lost(seg->fd, path);
}

/* Is DIR/NAME no longer the directory we made (moved away, its name or
 * ROOT's symlink gone, another directory in its place)? Link counts do
 * not say: a mv keeps them. */
static int
dir_replaced(const struct journal_store *s, struct stat *st)
{
    if (s->dir_ino == 0)
        return 0;       /* not known (its stat failed at open) */
    if (stat(s->dir, st) == -1)
        return errno == ENOENT || errno == ENOTDIR;
    return !S_ISDIR(st->st_mode) || st->st_dev != s->dir_dev || st->st_ino != s->dir_ino;
}

int
journal_store_removed(struct journal_store *s)
{
    if (s->removed)
        return 1;
    /* The lock too: without it, another grpc process would take this
     * instance for a dead one once it is made again. */
    struct stat st;
    int gone = unlinked(s->fd) || lock_lost(s) || dir_replaced(s, &st);
    /* The dead prefix may go (collect deletes it at the next sync); from
     * the first segment with something live or retained on, every one is
     * needed, dead or not: a later one may hold the FINAL (or ATTEMPT) of
     * an item whose ACCEPT is in an earlier one, which would run again
     * (or with fresh attempts) at the next start without it. */
    size_t first = 0;
    while (first + 1 < s->segment_count && s->segments[first].live == 0 &&
           s->segments[first].retained == 0)
        first++;
    for (size_t i = first; !gone && i < s->segment_count; i++) {
        const struct journal_segment *seg = &s->segments[i];
        if (!seg->gone && segment_lost(s, seg))
            gone = 1;
    }
    s->removed = gone;
    return gone;
}

/* A new lock file in DIR, locked before it gets its name (so that nobody
 * scanning sees it unlocked), in place of whatever was there: its fd, or
 * -1 with errno set and WHY filled. */
static int
lock_make(const char *dir, char *why, size_t why_size)
{
    char path[PATH_MAX + 16], tmp[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/" LOCK_FILE, dir);
    snprintf(tmp, sizeof tmp, "%s/" LOCK_FILE ".new", dir);
    unlink(tmp);        /* left by an attempt that failed */
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    const char *call = "open()";
    if (fd == -1 || (call = "flock()", flock(fd, LOCK_EX | LOCK_NB) == -1) ||
        (call = "rename()", rename(tmp, path) == -1)) {
        int saved = errno;
        snprintf(why, why_size, "%s of %s failed: %s", call, tmp, strerror(saved));
        if (fd != -1) {
            close(fd);
            unlink(tmp);
        }
        errno = saved;
        return -1;
    }
    return fd;
}

/*
 * Make durable what dir_make made again: the instance's name in ROOT, and
 * the names of ROOT and its parents it made, each in its parent (a power
 * cut keeps them too). What fails stays to do: every rebuild tries again
 * (the next attempt finds the directory there, and would not know). 0, or
 * -1 with errno set and WHY filled.
 */
static int
dir_sync(struct journal_store *s, char *why, size_t why_size)
{
    if (s->sync == DS_JOURNAL_SYNC_NEVER) {
        s->dir_unsynced = 0;
        s->parents_from = SIZE_MAX;
        return 0;
    }
    char path[PATH_MAX];
    if (s->dir_unsynced) {
        if (fsync_dir(s->root) == -1) {
            snprintf(path, sizeof path, "%s", s->root);
            goto failed;
        }
        s->dir_unsynced = 0;
    }
    /* Each '/' at or after parents_from ends the parent of a level made
     * again ("/" itself if it is the first). */
    size_t len = strlen(s->root);
    for (size_t j = s->parents_from; s->parents_from != SIZE_MAX && j < len; j++) {
        if (s->root[j] != '/')
            continue;
        memcpy(path, s->root, j);
        path[0] = '/';
        path[j > 0 ? j : 1] = '\0';
        if (fsync_dir(path) == -1)
            goto failed;
    }
    s->parents_from = SIZE_MAX;
    return 0;

failed:;
    int saved = errno;
    snprintf(why, why_size, "fsync() of %s failed: %s", path, strerror(saved));
    errno = saved;
    return -1;
}

/* Make ROOT/NAME again as journal_store_open did (ROOT too if it is gone,
 * with its mode and owner). 0, or -1 with errno set and WHY filled. */
static int
dir_make(struct journal_store *s, char *why, size_t why_size)
{
    int saved;
    struct stat st;
    int root_gone = stat(s->root, &st) == -1 && errno == ENOENT;
    size_t made_at;
    if (mkdir_p(s->root, &made_at) == -1) {
        saved = errno;
        snprintf(why, why_size, "mkdir(\"%s\") failed: %s", s->root, strerror(saved));
        errno = saved;
        return -1;
    }
    /* Levels made again: their names synced by dir_sync (the shallowest
     * wins, should an attempt that failed have made some already). */
    if (made_at != SIZE_MAX && made_at < s->parents_from)
        s->parents_from = made_at;
    if (root_gone && s->root_mode != 0) {
        /* As it was: a user the process dropped to cannot give it to
         * another, but it is that user's already (journal_chown). */
        if (chmod(s->root, s->root_mode) == -1)
            log_syswarn("journal: chmod(\"%s\", %o) failed", s->root, (unsigned)s->root_mode);
        if (geteuid() == 0 && chown(s->root, s->root_uid, s->root_gid) == -1)
            log_syswarn("journal: chown(\"%s\") failed", s->root);
    }
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.new", s->dir);
    /* Left by an attempt that failed: ours (our pid is in the name). */
    char stale[PATH_MAX + 16];
    snprintf(stale, sizeof stale, "%s/" LOCK_FILE ".new", tmp);
    unlink(stale);
    snprintf(stale, sizeof stale, "%s/" LOCK_FILE, tmp);
    unlink(stale);
    rmdir(tmp);
    if (mkdir(tmp, 0700) == -1) {
        saved = errno;
        snprintf(why, why_size, "mkdir(\"%s\") failed: %s", tmp, strerror(saved));
        errno = saved;
        return -1;
    }
    int fd = lock_make(tmp, why, why_size);
    if (fd == -1) {
        saved = errno;
        rmdir(tmp);
        errno = saved;
        return -1;
    }
    if (rename(tmp, s->dir) == -1) {
        saved = errno;
        snprintf(why, why_size, "rename(\"%s\", \"%s\") failed: %s", tmp, s->dir,
                 strerror(saved));
        close(fd);
        unlink(stale);
        rmdir(tmp);
        errno = saved;
        return -1;
    }
    if (s->lock_fd != -1)
        close(s->lock_fd);
    s->lock_fd = fd;
    dir_identify(s);
    s->dir_unsynced = 1;
    return dir_sync(s, why, why_size);
}

int
journal_store_rebuild(struct journal_store *s, char *why, size_t why_size)
{
    struct stat st;
    int remade = 0;
    if (stat(s->dir, &st) == -1 || !S_ISDIR(st.st_mode)) {
        if (dir_make(s, why, why_size) == -1)
            return -1;
        remade = 1;
    } else if (dir_sync(s, why, why_size) == -1) {
        return -1;      /* what a failed attempt made is not durable yet */
    } else if (s->dir_ino != 0 && (st.st_dev != s->dir_dev || st.st_ino != s->dir_ino)) {
        /* Another directory in its place (ours moved away): ours now,
         * with a lock of ours; nothing of the old one is in it. */
        int fd = lock_make(s->dir, why, why_size);
        if (fd == -1)
            return -1;
        close(s->lock_fd);
        s->lock_fd = fd;
        s->dir_dev = st.st_dev;
        s->dir_ino = st.st_ino;
        remade = 1;
    } else if (lock_lost(s)) {
        int fd = lock_make(s->dir, why, why_size);
        if (fd == -1)
            return -1;
        close(s->lock_fd);
        s->lock_fd = fd;
    }
    if (segment_make(s, s->segment + 1, why, why_size) == -1)
        return -1;
    for (size_t i = 0; i + 1 < s->segment_count; i++)
        /* In a directory made again, none of the old ones has its name
         * (one hard-linked elsewhere, a backup, still has a link). */
        s->segments[i].gone = s->segments[i].gone || remade ||
                              segment_lost(s, &s->segments[i]);
    s->removed = 0;
    s->rebuilds++;
    /* Everything, the current segment's too: its name may be gone. */
    copy_live(s, s->segment - 1);
    /* What could be read of the segments whose names are gone is in
     * `other` now (and stays there, COPYING, while a flush fails): their
     * descriptors go at once, so that their blocks are freed (a full disk
     * someone removed files from to make room gets it) and a segment stuck
     * in the kept prefix holds no descriptor. What could not be read
     * cannot be later either. */
    for (size_t i = 0; i + 1 < s->segment_count; i++) {
        if (s->segments[i].gone && s->segments[i].fd != -1) {
            close(s->segments[i].fd);
            s->segments[i].fd = -1;
        }
    }
    return 0;
}

uint64_t
journal_store_live(const struct journal_store *s)
{
    return s->entries.count;
}

/* A buffer that grew for a burst does not stay big. */
static void
buf_settle(struct journal_buf *b)
{
    b->len = 0;
    if (b->cap > (4u << 20)) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
}

/* How many of the first COUNT records of B lie whole within its first
 * AVAIL bytes; *bytes is their size. */
static size_t
whole_records(const struct journal_buf *b, size_t count, size_t avail, size_t *bytes)
{
    size_t off = 0, n = 0;
    while (n < count && off + JOURNAL_HEADER_SIZE <= b->len) {
        size_t len = JOURNAL_HEADER_SIZE + (size_t)get32(b->data + off + 4);
        if (off + len > avail)
            break;
        off += len;
        n++;
    }
    *bytes = off;
    return n;
}

/*
 * The disk is full (or the file at its size limit) and the current
 * segment is the only one and holds
 * nothing live: every ACCEPT in it is final (its FINAL written or
 * buffered), and no older segment has items its FINALs or ATTEMPTs speak
 * of. Emptying it is then as good as writing those FINALs, and gives back
 * its space, so the FINALs of a burst that filled the disk by itself can
 * always be written. 0, or -1 if that is not the case (or cannot be done).
 */
static int
empty_current(struct journal_store *s, int err)
{
    struct journal_segment *cur = current_segment(s);
    if ((err != ENOSPC && err != EDQUOT && err != EFBIG) || s->segment_count != 1 || cur == NULL ||
        cur->live > 0 || s->fd == -1 || s->size <= JOURNAL_MAGIC_SIZE)
        return -1;
    if (ftruncate(s->fd, JOURNAL_MAGIC_SIZE) == -1) {
        log_syserr("journal: ftruncate() of segment %u to make room failed", s->segment);
        return -1;
    }
    log_notice("journal: the disk is full and segment %u of %s holds nothing live; emptied it "
               "to make room (%llu bytes)", s->segment, s->dir,
               (unsigned long long)(s->size - JOURNAL_MAGIC_SIZE));
    s->size = JOURNAL_MAGIC_SIZE;
    s->roll_next = 0;           /* what was in doubt is gone */
    /* Its retained finals go with it (the index still answers for them
     * until this process ends). */
    for (size_t i = 0; i < s->retained.capacity;) {
        struct journal_entry *e = &s->retained.slots[i];
        if (e->key != 0 && e->state != JOURNAL_ENTRY_NEW && e->segment == s->segment)
            journal_map_del(&s->retained, e->key);      /* shifts a later one here */
        else
            i++;
    }
    cur->retained = 0;
    if (s->max_seq > 0)
        journal_encode_seq(&s->other, s->max_seq);
    return 0;
}

int
journal_store_flush(struct journal_store *s)
{
    s->flushed_accepts = 0;
    s->flushed_other = 0;
    if (!journal_store_has_buffered(s)) {
        s->flushed_other = 1;
        return 0;
    }
    int err = 0, emptied = 0;
again:;
    struct journal_segment *cur = current_segment(s);
    if (s->fd == -1 || (!s->removed &&
                        (s->roll_next || s->size >= s->segment_max ||
                         (s->size >= s->idle_roll && cur != NULL && cur->live == 0)))) {
        if (roll(s) == -1) {
            err = errno;
            if (!emptied && empty_current(s, err) == 0) {
                emptied = 1;
                goto again;
            }
            goto failed;
        }
    }
    uint64_t base = s->size;
    size_t other_len = s->other.len, total = s->other.len + s->accepts.len, written;
    struct iovec iov[2] = {
        { .iov_base = s->other.data, .iov_len = s->other.len },
        { .iov_base = s->accepts.data, .iov_len = s->accepts.len },
    };
    int rc = write_full(s->fd, iov, 2, &written);
    /* What of it counts: all, or (a full disk) `other` and the ACCEPTs that
     * got out whole, or nothing. */
    size_t keep = total, kept = s->new_count;
    int other_done = 1, truncate_failed = 0;
    if (rc == -1) {
        err = errno;
        size_t accept_bytes = 0;
        other_done = written >= other_len;
        kept = other_done ? whole_records(&s->accepts, s->new_count, written - other_len,
                                          &accept_bytes) : 0;
        keep = other_done ? other_len + accept_bytes : 0;
        if (ftruncate(s->fd, (off_t)(base + keep)) == -1) {
            log_syserr("journal: ftruncate() of segment %u after a failed write failed; "
                       "cancelling its items there", s->segment);
            truncate_failed = 1;
            s->roll_next = 1;
        } else if (keep == 0 && !emptied && empty_current(s, err) == 0) {
            emptied = 1;
            goto again;
        }
    }
    if (keep > 0 && s->sync == DS_JOURNAL_SYNC_ALWAYS && fdatasync(s->fd) == -1) {
        /* What the kernel kept of this file is in doubt: none of it counts. */
        err = errno;
        rc = -1;
        s->roll_next = 1;
        if (ftruncate(s->fd, (off_t)base) == -1)
            truncate_failed = 1;
        keep = kept = 0;
        other_done = 0;
    }

    s->size = base + keep;
    if (keep > 0) {
        s->bytes_written += keep;
        s->flushes++;
        if (s->sync == DS_JOURNAL_SYNC_ALWAYS)
            s->syncs++;
        else
            s->unsynced = 1;
    }
    cur = current_segment(s);
    if (other_done) {
        for (size_t i = 0; i < s->copy_count; i++) {
            struct journal_entry *e = journal_map_get(&s->entries, s->copy_keys[i]);
            if (e == NULL || e->state != JOURNAL_ENTRY_COPYING)
                continue;       /* final meanwhile */
            segment_live_dec(s, e->segment);
            e->segment = s->segment;
            e->offset = base + e->aux;
            e->state = JOURNAL_ENTRY_WRITTEN;
            cur->live++;
        }
        s->copy_count = 0;
        for (size_t i = 0; i < s->done_copy_count; i++) {
            struct journal_entry *e = journal_map_get(&s->retained, s->done_copy_keys[i]);
            if (e == NULL || e->state != JOURNAL_ENTRY_COPYING)
                continue;       /* forgotten or final again meanwhile */
            segment_retained_dec(s, e->segment);
            e->segment = s->segment;
            e->offset = base + e->aux;
            e->state = JOURNAL_ENTRY_WRITTEN;
            cur->retained++;
        }
        s->done_copy_count = 0;
        for (size_t i = 0; i < s->done_count; i++) {
            struct journal_entry *e = journal_map_get(&s->retained, s->done_keys[i]);
            if (e == NULL || e->state != JOURNAL_ENTRY_NEW)
                continue;       /* forgotten meanwhile, or listed twice */
            e->segment = s->segment;
            e->offset = base + e->aux;
            e->state = JOURNAL_ENTRY_WRITTEN;
            cur->retained++;
        }
        s->done_count = 0;
        buf_settle(&s->other);
    }
    for (size_t i = 0; i < s->new_count; i++) {
        struct journal_entry *e = journal_map_get(&s->entries, s->new_keys[i]);
        if (e == NULL || e->state != JOURNAL_ENTRY_NEW)
            continue;
        if (i < kept) {
            e->segment = s->segment;
            e->offset = base + other_len + e->aux;
            e->state = JOURNAL_ENTRY_WRITTEN;
            cur->live++;
        } else {
            journal_map_del(&s->entries, s->new_keys[i]);
        }
    }
    /* Whatever of the rest may still be in the file is void. */
    if (truncate_failed)
        for (size_t i = kept; i < s->new_count; i++)
            journal_encode_final(&s->other, s->new_keys[i]);
    s->flushed_accepts = kept;
    s->flushed_other = other_done;
    s->new_count = 0;
    buf_settle(&s->accepts);
    if (rc == 0) {
        if (s->sync != DS_JOURNAL_SYNC_INTERVAL)
            collect(s);
        return 0;
    }
    /* A full disk frees up as dead segments go (unless copies still want
     * their sync). */
    if (s->sync == DS_JOURNAL_SYNC_NEVER || !s->unsynced)
        collect(s);
    errno = err;
    return -1;

failed:
    journal_store_discard_accepts(s);
    if (s->sync == DS_JOURNAL_SYNC_NEVER || !s->unsynced)
        collect(s);
    errno = err;
    return -1;
}

int
journal_store_sync(struct journal_store *s)
{
    if (s->unsynced && s->fd != -1) {
        if (fdatasync(s->fd) == -1) {
            s->roll_next = 1;
            return -1;
        }
        s->unsynced = 0;
        s->syncs++;
    }
    collect(s);
    return 0;
}

/* ---- the reader --------------------------------------------------------- */

static void
item_clear(struct journal_item *it)
{
    free(it->id);
    free(it->kind);
    free(it->batch);
    free(it->raw);
    it->id = it->kind = it->batch = NULL;
    it->raw = NULL;
    it->raw_len = 0;
}

/*
 * The reader keeps one slot per item it has an ACCEPT or ATTEMPT of and no
 * FINAL; a FINAL frees the slot for the next item (the map remembers the
 * key is final), so memory follows the live items, not the segment size.
 */
struct reader {
    struct journal_recovery *r;
    struct journal_map map;     /* key -> slot + 1 in aux; final */
    size_t *free_slots;
    size_t free_count, free_cap;
};

static struct journal_item *
reader_item(struct reader *rd, uint64_t key)
{
    struct journal_recovery *r = rd->r;
    struct journal_entry *e = journal_map_put(&rd->map, key);
    if (e->aux != 0)
        return &r->items[e->aux - 1];
    size_t slot;
    if (rd->free_count > 0) {
        slot = rd->free_slots[--rd->free_count];
    } else {
        if (r->count == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 64;
            r->items = ds_realloc(r->items, r->cap * sizeof *r->items);
        }
        slot = r->count++;
    }
    struct journal_item *it = &r->items[slot];
    memset(it, 0, sizeof *it);
    it->key = key;
    e->aux = slot + 1;
    return it;
}

/* KEY is final (FINAL or DONE): its live slot, if any, is freed. */
static void
reader_end_live(struct reader *rd, uint64_t key)
{
    struct journal_recovery *r = rd->r;
    struct journal_entry *e = journal_map_put(&rd->map, key);
    if (e->aux != 0) {
        size_t slot = e->aux - 1;
        item_clear(&r->items[slot]);
        memset(&r->items[slot], 0, sizeof r->items[slot]);
        if (rd->free_count == rd->free_cap) {
            rd->free_cap = rd->free_cap ? rd->free_cap * 2 : 64;
            rd->free_slots = ds_realloc(rd->free_slots, rd->free_cap * sizeof *rd->free_slots);
        }
        rd->free_slots[rd->free_count++] = slot;
        e->aux = 0;
    }
    e->final = 1;
}

static void
final_clear(struct journal_final *f)
{
    free(f->id);
    free(f->kind);
    free(f->batch);
    free(f->error);
    free(f->result);
    free(f->raw);
    free(f->traceparent);
    free(f->tracestate);
    memset(f, 0, sizeof *f);
}

static void
reader_apply(struct reader *rd, const struct journal_record *rec)
{
    struct journal_recovery *r = rd->r;
    if (rec->key > r->max_key)
        r->max_key = rec->key;
    struct journal_entry *e = rec->key != 0 ? journal_map_get(&rd->map, rec->key) : NULL;
    struct journal_item *it;
    if (e != NULL && e->final)
        return;         /* nothing after a FINAL counts */
    switch (rec->type) {
    case JOURNAL_ACCEPT: {
        const struct journal_accept *a = &rec->accept;
        it = reader_item(rd, rec->key);
        item_clear(it);
        it->id = ds_strndup(a->id, a->id_len);
        it->kind = ds_strndup(a->kind, a->kind_len);
        it->batch = ds_strndup(a->batch, a->batch_len);
        it->raw = ds_malloc(a->raw_len ? a->raw_len : 1);
        if (a->raw_len > 0)
            memcpy(it->raw, a->raw, a->raw_len);
        it->raw_len = a->raw_len;
        it->max_attempts = a->max_attempts;
        it->timeout_ms = a->timeout_ms;
        it->quick = a->quick;
        it->accepted = 1;
        if (a->attempt >= it->attempt) {
            if (a->attempt > it->attempt || a->due_ns > it->due_ns)
                it->due_ns = a->due_ns;
            if (a->attempt > it->attempt)
                it->unstarted = 0;
            it->unstarted |= a->unstarted;
            it->attempt = a->attempt;
        }
        return;
    }
    case JOURNAL_FINAL:
        reader_end_live(rd, rec->key);
        return;
    case JOURNAL_DONE: {
        reader_end_live(rd, rec->key);
        const struct journal_done *d = &rec->done;
        if (r->final_count == r->final_cap) {
            r->final_cap = r->final_cap ? r->final_cap * 2 : 64;
            r->finals = ds_realloc(r->finals, r->final_cap * sizeof *r->finals);
        }
        struct journal_final *f = &r->finals[r->final_count++];
        *f = (struct journal_final){
            .key = d->key, .state = d->state, .quick = d->quick, .attempt = d->attempt,
            .max_attempts = d->max_attempts, .timeout_ms = d->timeout_ms,
            .priority = d->priority, .accepted_ns = d->accepted_ns,
            .started_ns = d->started_ns, .finished_ns = d->finished_ns,
            .last_seq = d->last_seq, .result_len = d->result_len, .raw_len = d->raw_len,
            .cpu_usec = d->cpu_usec, .max_rss_kib = d->max_rss_kib,
        };
        f->id = ds_strndup(d->id, d->id_len);
        f->kind = ds_strndup(d->kind, d->kind_len);
        f->batch = ds_strndup(d->batch, d->batch_len);
        f->error = d->error_len > 0 ? ds_strndup(d->error, d->error_len) : NULL;
        if (d->result_len > 0) {
            f->result = ds_malloc(d->result_len);
            memcpy(f->result, d->result, d->result_len);
        }
        if (d->raw_len > 0) {
            f->raw = ds_malloc(d->raw_len);
            memcpy(f->raw, d->raw, d->raw_len);
        }
        if (d->traceparent_len > 0) {
            f->traceparent = ds_strndup(d->traceparent, d->traceparent_len);
            f->tracestate = ds_strndup(d->tracestate, d->tracestate_len);
        }
        return;
    }
    case JOURNAL_ATTEMPT:
        it = reader_item(rd, rec->key);
        if (rec->attempt > it->attempt) {
            it->unstarted = 0;
            it->due_ns = 0;
        }
        if (rec->attempt >= it->attempt) {
            /* An unstarted mark names the attempt it was written at. */
            it->unstarted |= rec->unstarted;
            if (rec->due_ns > it->due_ns)
                it->due_ns = rec->due_ns;
            it->attempt = rec->attempt;
        }
        return;
    case JOURNAL_SEQ:
        if (rec->seq > r->max_seq)
            r->max_seq = rec->seq;
        return;
    }
}

/* Why an instance cannot be read is logged as an error the first time
 * only (R->quiet: the caller saw it fail before): it is tried again every
 * scan. */
static enum ds_log_level
read_error_level(const struct journal_recovery *r)
{
    return r->quiet ? DS_LOG_DEBUG : DS_LOG_ERROR;
}

/*
 * PATH, named as a segment, is not a regular file (ST): nothing in it is
 * read. What taking the instance over then deletes (a FIFO, a socket, a
 * device node, a symlink: unlink() takes the name only) is skipped; an
 * empty directory is removed now. One with something in it would stay, and
 * the instance with it, to be taken over (its items run) again at the next
 * scan: -1, the instance is not taken over while it is there.
 */
static int
skip_irregular(struct journal_recovery *r, const char *path, const struct stat *st)
{
    const char *what = S_ISDIR(st->st_mode) ? "a directory" : S_ISFIFO(st->st_mode) ? "a FIFO"
                       : S_ISSOCK(st->st_mode) ? "a socket" : S_ISCHR(st->st_mode) ||
                       S_ISBLK(st->st_mode) ? "a device" : S_ISLNK(st->st_mode) ? "a dangling symlink"
                       : "not a regular file";
    if (S_ISDIR(st->st_mode)) {
        struct stat lst;
        /* A symlink to a directory: unlink() takes the link. */
        int link = lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode);
        if (!link && rmdir(path) == -1) {
            log_at(read_error_level(r), errno, "journal: %s is a directory, not a segment, and "
                   "cannot be removed; %s is "
                       "not taken over while it is there", path, r->dir);
            return -1;
        }
        if (!link) {
            log_warn("journal: %s was an empty directory, not a segment; removed it", path);
            return 0;
        }
    }
    /* Once: an instance that is not taken over (another segment cannot
     * be read) is read again at every scan. */
    log_at(r->quiet ? DS_LOG_DEBUG : DS_LOG_WARN, 0, "journal: %s is %s, not a segment; "
           "skipping it", path, what);
    return 0;
}

/*
 * -1 if the segment cannot be opened or mapped (descriptors or memory
 * exhausted, EIO, EACCES, EPERM): logged, and nothing of the instance may
 * be taken over then. A takeover without it ran the items of the others
 * and removed the whole directory, this segment with the items only it
 * holds. A file that is no segment is skipped (0).
 */
static int
read_segment(struct reader *rd, uint32_t number, int newest)
{
    struct journal_recovery *r = rd->r;
    char path[PATH_MAX];
    segment_path(r->dir, number, path, sizeof path);
    /* Only a regular file is read: opening a FIFO would block the loop for
     * good, a directory or a device cannot be mapped (and the instance
     * would then never be taken over). */
    struct stat st;
    if (stat(path, &st) == 0 ? !S_ISREG(st.st_mode)
                             : errno == ENOENT && lstat(path, &st) == 0)    /* dangling */
        return skip_irregular(r, path, &st);
    /* O_NONBLOCK: should it become a FIFO meanwhile, this does not wait. */
    int fd = open(path, (newest ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    int readonly = 0;
    if (fd == -1 && newest && errno == EACCES &&
        faccessat(AT_FDCWD, r->dir, W_OK | X_OK, AT_EACCESS) == 0) {
        /* Read-write is only to cut a torn tail, and the files go once
         * they are taken over (the directory lets us delete them): read
         * it as it is. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd != -1) {
            readonly = 1;
            log_notice("journal: %s cannot be opened read-write (%s); reading it read-only: "
                       "a torn tail stays as it is (the files go once taken over)", path,
                       strerror(EACCES));
        } else {
            errno = EACCES;
        }
    }
    if (fd == -1) {
        log_at(read_error_level(r), errno, "journal: open(\"%s\") failed; %s is not taken "
               "over while it cannot be "
                   "read", path, r->dir);
        return -1;
    }
    if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
        close(fd);
        return skip_irregular(r, path, &st);
    }
    size_t size;
    const uint8_t *buf = map_file(fd, &size);
    if (buf == NULL) {
        log_at(read_error_level(r), errno, "journal: reading %s failed; %s is not taken over "
               "while it cannot be read",
                   path, r->dir);
        close(fd);
        return -1;
    }
    r->segments++;
    if (size < JOURNAL_MAGIC_SIZE || memcmp(buf, JOURNAL_MAGIC, JOURNAL_MAGIC_SIZE) != 0) {
        if (newest && size < JOURNAL_MAGIC_SIZE && memcmp(buf, JOURNAL_MAGIC, size) == 0)
            log_info("journal: %s was being created (%zu bytes); nothing in it", path, size);
        else
            log_warn("journal: %s is not a journal segment (no " JOURNAL_MAGIC " at its start); "
                     "skipping it (%zu bytes)", path, size);
        unmap_file(buf, size);
        close(fd);
        return 0;
    }
    size_t off = JOURNAL_MAGIC_SIZE, cut = size;
    while (off < size) {
        struct journal_record rec;
        size_t len;
        const char *why;
        if (journal_decode(buf + off, size - off, &rec, &len, &why) != JOURNAL_OK) {
            if (newest) {
                log_warn("journal: %s: %s at offset %zu; truncating the torn tail (%zu bytes)",
                         path, why, off, size - off);
                cut = off;
                r->truncated += size - off;
            } else {
                log_warn("journal: %s: %s at offset %zu; skipping the rest of this segment "
                         "(%zu bytes)", path, why, off, size - off);
                r->skipped += size - off;
            }
            break;
        }
        reader_apply(rd, &rec);
        r->records++;
        off += len;
    }
    unmap_file(buf, size);
    if (cut < size && !readonly && ftruncate(fd, (off_t)cut) == -1)
        log_syserr("journal: ftruncate(\"%s\", %zu) failed", path, cut);
    close(fd);
    return 0;
}

static int
compare_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int
compare_items(const void *a, const void *b)
{
    uint64_t x = ((const struct journal_item *)a)->key, y = ((const struct journal_item *)b)->key;
    return x < y ? -1 : x > y;
}

static int
compare_finals(const void *a, const void *b)
{
    uint64_t x = ((const struct journal_final *)a)->key, y = ((const struct journal_final *)b)->key;
    return x < y ? -1 : x > y;
}

/* One final per id, the one with the largest key, and none of an id that
 * is live (a retried item runs again under a new key). R->finals sorted. */
static void
finals_settle(struct journal_recovery *r)
{
    if (r->final_count > 1)
        qsort(r->finals, r->final_count, sizeof *r->finals, compare_finals);
    struct journal_map ids = { 0 };
    for (size_t i = 0; i < r->count; i++) {
        struct journal_item *it = &r->items[i];
        struct journal_entry *e = journal_map_put(&ids, journal_id_hash(it->id, strlen(it->id)));
        e->aux = 0;             /* live: no final of it counts */
        e->final = 1;
    }
    /* Newest first: the first of an id wins. */
    for (size_t i = r->final_count; i-- > 0;) {
        struct journal_final *f = &r->finals[i];
        struct journal_entry *e = journal_map_put(&ids, journal_id_hash(f->id, strlen(f->id)));
        if (e->final)
            final_clear(f);
        e->final = 1;
    }
    size_t kept = 0;
    for (size_t i = 0; i < r->final_count; i++)
        if (r->finals[i].id != NULL)
            r->finals[kept++] = r->finals[i];
    r->final_count = kept;
    journal_map_free(&ids);
}

int
journal_read(struct journal_recovery *r)
{
    DIR *d = opendir(r->dir);
    if (d == NULL) {
        log_at(read_error_level(r), errno, "journal: opendir(\"%s\") failed", r->dir);
        return -1;
    }
    uint32_t *numbers = NULL;
    size_t count = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint32_t n = segment_number(de->d_name);
        if (n == 0)
            continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            numbers = ds_realloc(numbers, cap * sizeof *numbers);
        }
        numbers[count++] = n;
    }
    closedir(d);
    if (count > 1)
        qsort(numbers, count, sizeof *numbers, compare_u32);

    struct reader rd = { .r = r };
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++)
        rc = read_segment(&rd, numbers[i], i + 1 == count);
    free(numbers);
    if (rc == -1) {
        /* The caller frees R, its lock with it: a later scan tries again. */
        journal_map_free(&rd.map);
        free(rd.free_slots);
        return -1;
    }

    /* Keep what was accepted and is not final (free slots have key 0). */
    size_t live = 0;
    for (size_t i = 0; i < r->count; i++) {
        struct journal_item *it = &r->items[i];
        if (it->key != 0 && it->accepted)
            r->items[live++] = *it;
        else
            item_clear(it);
    }
    r->count = live;
    if (r->count > 1)
        qsort(r->items, r->count, sizeof *r->items, compare_items);
    finals_settle(r);
    journal_map_free(&rd.map);
    free(rd.free_slots);
    return 0;
}

void
journal_recovery_free(struct journal_recovery *r)
{
    for (size_t i = 0; i < r->count; i++)
        item_clear(&r->items[i]);
    free(r->items);
    for (size_t i = 0; i < r->final_count; i++)
        final_clear(&r->finals[i]);
    free(r->finals);
    free(r->dir);
    free(r->name);
    if (r->lock_fd != -1)
        close(r->lock_fd);
    memset(r, 0, sizeof *r);
    r->lock_fd = -1;
}

int
journal_recovery_remove(struct journal_recovery *r, int sync)
{
    char *root = ds_strdup(r->dir), *slash = strrchr(root, '/');
    if (slash != NULL)
        *slash = '\0';
    if (r->max_seq > 0)
        journal_seq_file_update(root, r->max_seq, sync);
    int rc = 0;
    DIR *d = opendir(r->dir);
    if (d != NULL) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
                strcmp(de->d_name, LOCK_FILE) == 0)
                continue;
            char *path = path_join(r->dir, de->d_name);
            if (unlink(path) == -1 && errno != ENOENT) {
                log_syswarn("journal: unlink(\"%s\") failed", path);
                rc = -1;
            }
            free(path);
        }
        closedir(d);
    }
    /* The lock goes last: whoever opens it after sees st_nlink 0 and leaves. */
    char *lock = path_join(r->dir, LOCK_FILE);
    unlink(lock);
    free(lock);
    if (rmdir(r->dir) == -1 && errno != ENOENT) {
        log_syswarn("journal: rmdir(\"%s\") failed", r->dir);
        rc = -1;
    }
    if (sync)
        fsync_dir(root);
    free(root);
    return rc;
}

/* NAME.new under ROOT: an instance whose creator died before renaming it. */
static void
remove_stale_new(const char *root, const char *name)
{
    unsigned long long ms;
    long pid;
    if (sscanf(name, INSTANCE_PREFIX "%llu-%ld", &ms, &pid) != 2 || pid <= 0)
        return;
    if (kill((pid_t)pid, 0) == 0 || errno == EPERM)
        return;         /* being created right now */
    char *dir = path_join(root, name), *lock = path_join(dir, LOCK_FILE);
    int fd = open(lock, O_RDWR | O_CLOEXEC);
    if (fd == -1 || flock(fd, LOCK_EX | LOCK_NB) == 0) {
        unlink(lock);
        if (rmdir(dir) == 0)
            log_info("journal: removed %s, left by a grpc process that died starting", dir);
    }
    if (fd != -1)
        close(fd);
    free(lock);
    free(dir);
}

static int
compare_recoveries(const void *a, const void *b)
{
    return strcmp(((const struct journal_recovery *)a)->name,
                  ((const struct journal_recovery *)b)->name);
}

int
journal_find_dead(const char *root, const char *self, struct journal_recovery **out)
{
    *out = NULL;
    DIR *d = opendir(root);
    if (d == NULL)
        return -1;
    struct journal_recovery *list = NULL;
    size_t count = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        size_t len = strlen(name);
        if (strncmp(name, INSTANCE_PREFIX, strlen(INSTANCE_PREFIX)) != 0 ||
            (self != NULL && strcmp(name, self) == 0))
            continue;
        if (len > 4 && strcmp(name + len - 4, ".new") == 0) {
            remove_stale_new(root, name);
            continue;
        }
        char *dir = path_join(root, name), *lock = path_join(dir, LOCK_FILE);
        int fd = open(lock, O_RDWR | O_CLOEXEC);
        free(lock);
        if (fd == -1) {
            /* A removal that got as far as the lock: only the directory is left. */
            if (errno == ENOENT && rmdir(dir) == -1 && errno != ENOENT)
                log_debug("journal: %s has no lock file; leaving it alone", dir);
            free(dir);
            continue;
        }
        struct stat st;
        if (flock(fd, LOCK_EX | LOCK_NB) == -1 || fstat(fd, &st) == -1 || st.st_nlink == 0) {
            close(fd);          /* alive, or removed by another as we looked */
            free(dir);
            continue;
        }
        if (count == cap) {
            cap = cap ? cap * 2 : 4;
            list = ds_realloc(list, cap * sizeof *list);
        }
        struct journal_recovery *r = &list[count++];
        memset(r, 0, sizeof *r);
        r->dir = dir;
        r->name = ds_strdup(name);
        r->lock_fd = fd;
        unsigned long long ms;
        if (sscanf(name, INSTANCE_PREFIX "%llu-%ld", &ms, &r->pid) != 2)
            r->pid = 0;
    }
    closedir(d);
    if (count > 1)
        qsort(list, count, sizeof *list, compare_recoveries);
    *out = list;
    return (int)count;
}
