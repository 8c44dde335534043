/*
 * The queue journal's pure part (src/grpc/journal_store.c): CRC32C, record
 * encoding and decoding, the key map, the writer over a temporary
 * directory (flush, rolling, copying forward, deleting dead segments, a
 * failing disk), the reader (torn tails, corrupt records, recovery sets)
 * and finding the instances whose process is gone.
 */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/log.h"
#include "grpc/journal_store.h"

static char root[256];

static int
remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int
setup(void **state)
{
    log_open("stderr", DS_LOG_ERROR);
    snprintf(root, sizeof root, "/tmp/test_journal.XXXXXX");
    assert_non_null(mkdtemp(root));
    return 0;
}

static int
teardown(void **state)
{
    nftw(root, remove_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* ---- helpers ------------------------------------------------------------- */

static struct journal_accept
make_accept(uint64_t key, uint32_t attempt, char *id, size_t raw_len)
{
    static uint8_t raw[4096];
    for (size_t i = 0; i < sizeof raw; i++)
        raw[i] = (uint8_t)(i * 7 + 3);
    snprintf(id, 32, "item-%llu", (unsigned long long)key);
    struct journal_accept a = {
        .key = key, .attempt = attempt, .max_attempts = 5, .timeout_ms = 1500,
        .quick = (int)(key & 1),
        .id = id, .id_len = strlen(id),
        .kind = "echo", .kind_len = 4,
        .batch = "b1", .batch_len = 2,
        .raw = raw, .raw_len = raw_len < sizeof raw ? raw_len : sizeof raw,
    };
    return a;
}

static void
accept_key(struct journal_store *s, uint64_t key, size_t raw_len)
{
    char id[32];
    struct journal_accept a = make_accept(key, 1, id, raw_len);
    journal_store_accept(s, &a);
}

static char *
instance_dir(const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", root, name);
    return path;
}

static int
count_segments(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strstr(e->d_name, ".seg") != NULL;
    closedir(d);
    return n;
}

static off_t
file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static void
segment_file(const char *name, uint32_t number, char *buf, size_t size)
{
    snprintf(buf, size, "%s/%s/%08u.seg", root, name, number);
}

/* Open the instance NAME (after a "crash": closed without removing). */
static struct journal_recovery
read_instance(const char *name)
{
    struct journal_recovery *dead;
    int n = journal_find_dead(root, "grpc-self", &dead);
    assert_true(n >= 1);
    struct journal_recovery r = { .lock_fd = -1 };
    for (int i = 0; i < n; i++) {
        if (strcmp(dead[i].name, name) == 0)
            r = dead[i];
        else
            journal_recovery_free(&dead[i]);
    }
    free(dead);
    assert_non_null(r.dir);
    assert_int_equal(journal_read(&r), 0);
    return r;
}

static const struct journal_item *
find_item(const struct journal_recovery *r, uint64_t key)
{
    for (size_t i = 0; i < r->count; i++)
        if (r->items[i].key == key)
            return &r->items[i];
    return NULL;
}

/* ---- CRC32C -------------------------------------------------------------- */

static void
test_crc32c(void **state)
{
    assert_int_equal(journal_crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(journal_crc32c_table(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(journal_crc32c(0, "", 0), 0);
    uint8_t zeros[32] = { 0 };
    assert_int_equal(journal_crc32c(0, zeros, sizeof zeros), 0x8A9136AAu);
    /* Incremental equals whole; hardware (if any) equals the table. */
    uint8_t data[1000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 31 + 7);
    for (size_t len = 0; len < sizeof data; len += 37) {
        uint32_t whole = journal_crc32c(0, data, len);
        assert_int_equal(whole, journal_crc32c_table(0, data, len));
        size_t half = len / 3;
        assert_int_equal(journal_crc32c(journal_crc32c(0, data, half), data + half, len - half),
                         whole);
    }
}

/* ---- records ------------------------------------------------------------- */

static void
test_records_round_trip(void **state)
{
    struct journal_buf b = { 0 };
    char id[32];
    struct journal_accept a = make_accept(42, 3, id, 100);
    size_t off[5];
    off[0] = journal_encode_accept(&b, &a);
    off[1] = journal_encode_final(&b, 41);
    off[2] = journal_encode_attempt(&b, 42, 4);
    off[3] = journal_encode_seq(&b, 1ull << 40);
    struct journal_accept empty = { .key = 7, .attempt = 1, .id = "", .kind = "k", .kind_len = 1,
                                    .batch = "", .raw = NULL };
    off[4] = journal_encode_accept(&b, &empty);
    assert_int_equal(off[0], 0);
    assert_int_equal(off[1], JOURNAL_HEADER_SIZE + JOURNAL_ACCEPT_FIXED + strlen(id) + 4 + 2 + 100);

    struct journal_record rec;
    size_t size, pos = 0;
    const char *why;
    assert_int_equal(journal_decode(b.data, b.len, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(rec.type, JOURNAL_ACCEPT);
    assert_int_equal(rec.key, 42);
    assert_int_equal(rec.accept.attempt, 3);
    assert_int_equal(rec.accept.max_attempts, 5);
    assert_int_equal(rec.accept.timeout_ms, 1500);
    assert_int_equal(rec.accept.quick, 0);
    assert_int_equal(rec.accept.id_len, strlen(id));
    assert_memory_equal(rec.accept.id, id, strlen(id));
    assert_memory_equal(rec.accept.kind, "echo", 4);
    assert_memory_equal(rec.accept.batch, "b1", 2);
    assert_int_equal(rec.accept.raw_len, 100);
    assert_memory_equal(rec.accept.raw, a.raw, 100);
    pos += size;
    assert_int_equal(pos, off[1]);
    assert_int_equal(journal_decode(b.data + pos, b.len - pos, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(rec.type, JOURNAL_FINAL);
    assert_int_equal(rec.key, 41);
    pos += size;
    assert_int_equal(journal_decode(b.data + pos, b.len - pos, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(rec.type, JOURNAL_ATTEMPT);
    assert_int_equal(rec.key, 42);
    assert_int_equal(rec.attempt, 4);
    pos += size;
    assert_int_equal(journal_decode(b.data + pos, b.len - pos, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(rec.type, JOURNAL_SEQ);
    assert_true(rec.seq == 1ull << 40);
    pos += size;
    assert_int_equal(pos, off[4]);
    assert_int_equal(journal_decode(b.data + pos, b.len - pos, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(rec.key, 7);
    assert_int_equal(rec.accept.raw_len, 0);
    assert_int_equal(rec.accept.id_len, 0);
    pos += size;
    assert_int_equal(pos, b.len);
    journal_buf_free(&b);
}

/* Due times: an ACCEPT with flag 2 and a long ATTEMPT read back; the due
 * time of the largest attempt counts; a copy forward keeps it. */
static void
test_due_times(void **state)
{
    struct journal_buf b = { 0 };
    char id[32];
    struct journal_accept a = make_accept(42, 1, id, 10);
    a.due_ns = 1700000000123456789ull;
    size_t second = journal_encode_accept(&b, &a);
    second = b.len;
    journal_encode_attempt_due(&b, 42, 2, 1800000000000000000ull);
    journal_encode_attempt_due(&b, 42, 3, 0);
    struct journal_record rec;
    size_t size;
    const char *why;
    assert_int_equal(journal_decode(b.data, b.len, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(size, second);
    assert_true(rec.accept.due_ns == 1700000000123456789ull && rec.due_ns == rec.accept.due_ns);
    assert_int_equal(rec.accept.raw_len, 10);
    assert_int_equal(rec.accept.quick, 0);
    assert_int_equal(journal_decode(b.data + second, b.len - second, &rec, &size, &why),
                     JOURNAL_OK);
    assert_int_equal(size, JOURNAL_HEADER_SIZE + 24);
    assert_int_equal(rec.attempt, 2);
    assert_true(rec.due_ns == 1800000000000000000ull);
    assert_int_equal(journal_decode(b.data + second + size, b.len - second - size, &rec, &size,
                                    &why), JOURNAL_OK);
    assert_int_equal(size, JOURNAL_HEADER_SIZE + 12);
    assert_int_equal(rec.due_ns, 0);
    /* Flag 2 without its 8 bytes is malformed. */
    b.len = 0;
    a.due_ns = 0;
    journal_encode_accept(&b, &a);
    b.data[JOURNAL_HEADER_SIZE + 20] |= 2;
    uint32_t crc = journal_crc32c(0, b.data + 4, b.len - 4);
    memcpy(b.data, &crc, 4);
    assert_int_equal(journal_decode(b.data, b.len, &rec, &size, &why), JOURNAL_CORRUPT);
    journal_buf_free(&b);

    /* Through a store and its reader. */
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, "grpc-0000000000001-12",
                                        DS_JOURNAL_SYNC_ALWAYS, 0), 0);
    for (uint64_t key = 1; key <= 3; key++) {
        struct journal_accept acc = make_accept(key, 1, id, 5);
        acc.due_ns = key == 2 ? 0 : 1000 * key;
        journal_store_accept(&s, &acc);
    }
    journal_store_attempt_due(&s, 3, 2, 99999);     /* a backed-off retry */
    journal_store_attempt(&s, 1, 2);               /* a retry at once: no due time */
    assert_int_equal(journal_store_flush(&s), 0);
    journal_store_close(&s, 0);
    struct journal_recovery r = read_instance("grpc-0000000000001-12");
    assert_int_equal(r.count, 3);
    assert_int_equal(r.items[0].due_ns, 0);
    assert_int_equal(r.items[0].attempt, 2);
    assert_int_equal(r.items[1].due_ns, 0);
    assert_int_equal(r.items[2].due_ns, 99999);
    assert_int_equal(r.items[2].attempt, 2);
    journal_recovery_free(&r);
}

/* A graceful stop's unstarted mark: on ATTEMPT (flag 1) and on a copied
 * ACCEPT (flag 4); it names the attempt it was written at. */
static void
test_unstarted(void **state)
{
    struct journal_buf b = { 0 };
    char id[32];
    struct journal_record rec;
    size_t size;
    const char *why;
    journal_encode_attempt_flags(&b, 5, 2, 0, JOURNAL_ATTEMPT_UNSTARTED);
    assert_int_equal(journal_decode(b.data, b.len, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(size, JOURNAL_HEADER_SIZE + 24);
    assert_true(rec.unstarted && rec.attempt == 2 && rec.due_ns == 0);
    /* An unknown flag is malformed; so is a long record with neither. */
    b.data[JOURNAL_HEADER_SIZE + 12] = 3;
    uint32_t crc = journal_crc32c(0, b.data + 4, b.len - 4);
    memcpy(b.data, &crc, 4);
    assert_int_equal(journal_decode(b.data, b.len, &rec, &size, &why), JOURNAL_CORRUPT);
    b.data[JOURNAL_HEADER_SIZE + 12] = 0;
    crc = journal_crc32c(0, b.data + 4, b.len - 4);
    memcpy(b.data, &crc, 4);
    assert_int_equal(journal_decode(b.data, b.len, &rec, &size, &why), JOURNAL_CORRUPT);
    b.len = 0;
    struct journal_accept a = make_accept(6, 3, id, 10);
    a.unstarted = 1;
    journal_encode_accept(&b, &a);
    assert_int_equal(journal_decode(b.data, b.len, &rec, &size, &why), JOURNAL_OK);
    assert_true(rec.accept.unstarted && rec.unstarted && rec.accept.due_ns == 0);
    journal_buf_free(&b);

    /* Through a store and its reader: 1 unstarted; 2 unstarted, then a
     * later attempt (it ran again); 3 unstarted with a due time; 4 not. */
    const char *name = "grpc-0000000000001-13";
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_ALWAYS, 0), 0);
    for (uint64_t key = 1; key <= 4; key++)
        accept_key(&s, key, 5);
    assert_int_equal(journal_store_flush(&s), 0);
    journal_store_unstarted(&s, 1);
    journal_store_unstarted(&s, 2);
    journal_store_attempt(&s, 2, 2);
    journal_store_attempt_due(&s, 3, 2, 77777);
    journal_store_unstarted(&s, 3);
    assert_int_equal(journal_store_flush(&s), 0);
    journal_store_close(&s, 0);
    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 4);
    const struct journal_item *it = find_item(&r, 1);
    assert_true(it->unstarted && it->attempt == 1);
    it = find_item(&r, 2);
    assert_true(!it->unstarted && it->attempt == 2);
    it = find_item(&r, 3);
    assert_true(it->unstarted && it->attempt == 2 && it->due_ns == 77777);
    it = find_item(&r, 4);
    assert_true(!it->unstarted && it->attempt == 1);
    journal_recovery_free(&r);

    /* Copied forward, an ACCEPT carries the mark. */
    name = "grpc-0000000000001-14";
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_INTERVAL, 4096), 0);
    accept_key(&s, 1, 500);
    journal_store_unstarted(&s, 1);
    uint64_t key = 1;
    for (int round = 0; round < 100; round++) {
        for (int i = 0; i < 4; i++)
            accept_key(&s, ++key, 300);
        assert_int_equal(journal_store_flush(&s), 0);
        assert_int_equal(journal_store_sync(&s), 0);
        for (uint64_t k = key - 3; k <= key; k++)
            journal_store_final(&s, k);
    }
    assert_int_equal(journal_store_flush(&s), 0);
    assert_true(s.copied >= 1 && s.segments[0].number > 1);
    journal_store_close(&s, 0);
    r = read_instance(name);
    assert_int_equal(r.count, 1);
    assert_true(r.items[0].unstarted && r.items[0].attempt == 1);
    journal_recovery_free(&r);
}

/* A record with a valid CRC over whatever header fields and body we give. */
static size_t
craft(uint8_t *out, uint32_t length, uint8_t type, const uint8_t *body)
{
    out[4] = (uint8_t)length;
    out[5] = (uint8_t)(length >> 8);
    out[6] = (uint8_t)(length >> 16);
    out[7] = (uint8_t)(length >> 24);
    out[8] = type;
    out[9] = out[10] = out[11] = 0;
    memcpy(out + JOURNAL_HEADER_SIZE, body, length);
    uint32_t crc = journal_crc32c(0, out + 4, 8 + length);
    for (int i = 0; i < 4; i++)
        out[i] = (uint8_t)(crc >> (8 * i));
    return JOURNAL_HEADER_SIZE + length;
}

static void
test_decode_errors(void **state)
{
    struct journal_buf b = { 0 };
    char id[32];
    struct journal_accept a = make_accept(9, 1, id, 64);
    journal_encode_accept(&b, &a);
    struct journal_record rec;
    size_t size;
    const char *why;

    /* Every cut of a good record is torn, never corrupt, never OK. */
    for (size_t avail = 0; avail < b.len; avail++) {
        assert_int_equal(journal_decode(b.data, avail, &rec, &size, &why), JOURNAL_TORN);
        assert_non_null(strstr(why, "torn"));
    }
    /* Any flipped bit is caught. */
    for (size_t i = 0; i < b.len; i++) {
        b.data[i] ^= 0x10;
        enum journal_decode d = journal_decode(b.data, b.len, &rec, &size, &why);
        assert_int_not_equal(d, JOURNAL_OK);
        b.data[i] ^= 0x10;
    }
    assert_int_equal(journal_decode(b.data, b.len, &rec, &size, &why), JOURNAL_OK);

    /* Zeros (a file extended by a crash, its data never written). */
    uint8_t zeros[64] = { 0 };
    assert_int_equal(journal_decode(zeros, sizeof zeros, &rec, &size, &why), JOURNAL_CORRUPT);
    assert_string_equal(why, "bad checksum");

    uint8_t rec_buf[256], body[64] = { 0 };
    body[0] = 1;
    size_t n = craft(rec_buf, 8, 99, body);
    assert_int_equal(journal_decode(rec_buf, n, &rec, &size, &why), JOURNAL_CORRUPT);
    assert_string_equal(why, "unknown record type");
    n = craft(rec_buf, 4, JOURNAL_FINAL, body);
    assert_int_equal(journal_decode(rec_buf, n, &rec, &size, &why), JOURNAL_CORRUPT);
    assert_string_equal(why, "malformed FINAL record");
    n = craft(rec_buf, 8, JOURNAL_FINAL, zeros);       /* key 0 */
    assert_int_equal(journal_decode(rec_buf, n, &rec, &size, &why), JOURNAL_CORRUPT);
    n = craft(rec_buf, 10, JOURNAL_ATTEMPT, body);
    assert_int_equal(journal_decode(rec_buf, n, &rec, &size, &why), JOURNAL_CORRUPT);
    n = craft(rec_buf, 16, JOURNAL_ACCEPT, body);
    assert_int_equal(journal_decode(rec_buf, n, &rec, &size, &why), JOURNAL_CORRUPT);
    assert_string_equal(why, "short ACCEPT record");
    /* ACCEPT whose inner lengths do not add up to the record's. */
    memset(body, 0, sizeof body);
    body[0] = 5;
    body[22] = 10;                                      /* id_len 10, nothing else */
    n = craft(rec_buf, JOURNAL_ACCEPT_FIXED + 9, JOURNAL_ACCEPT, body);
    assert_int_equal(journal_decode(rec_buf, n, &rec, &size, &why), JOURNAL_CORRUPT);
    assert_string_equal(why, "malformed ACCEPT record");
    n = craft(rec_buf, JOURNAL_ACCEPT_FIXED + 10, JOURNAL_ACCEPT, body);
    assert_int_equal(journal_decode(rec_buf, n, &rec, &size, &why), JOURNAL_OK);
    /* A length past the limit is corrupt even before the body is there. */
    memset(rec_buf, 0xff, JOURNAL_HEADER_SIZE);
    assert_int_equal(journal_decode(rec_buf, JOURNAL_HEADER_SIZE, &rec, &size, &why),
                     JOURNAL_CORRUPT);
    assert_string_equal(why, "record length out of range");

    /* Random bytes: never a crash, and (CRC) essentially never OK. */
    srand(7);
    uint8_t junk[512];
    int ok = 0;
    for (int round = 0; round < 20000; round++) {
        size_t len = (size_t)(rand() % (int)sizeof junk);
        for (size_t i = 0; i < len; i++)
            junk[i] = (uint8_t)rand();
        if (len >= 8 && rand() % 2) {
            junk[4] = (uint8_t)(rand() % 64);       /* plausible lengths too */
            junk[5] = junk[6] = junk[7] = 0;
        }
        if (journal_decode(junk, len, &rec, &size, &why) == JOURNAL_OK) {
            ok++;
            assert_true(size <= len);
        }
    }
    assert_true(ok <= 1);
    journal_buf_free(&b);
}

/* ---- the key map --------------------------------------------------------- */

static void
test_map(void **state)
{
    struct journal_map m = { 0 };
    enum { N = 20000 };
    static uint8_t present[N + 1];
    memset(present, 0, sizeof present);
    assert_null(journal_map_get(&m, 1));
    srand(3);
    for (int round = 0; round < 200000; round++) {
        uint64_t key = (uint64_t)(rand() % N) + 1;
        if (rand() % 3) {
            struct journal_entry *e = journal_map_put(&m, key);
            assert_true(e->key == key);
            if (!present[key])
                e->attempt = (uint32_t)key;
            present[key] = 1;
        } else {
            journal_map_del(&m, key);
            present[key] = 0;
        }
    }
    size_t count = 0;
    for (uint64_t key = 1; key <= N; key++) {
        struct journal_entry *e = journal_map_get(&m, key);
        if (present[key]) {
            assert_non_null(e);
            assert_int_equal(e->attempt, key);
            count++;
        } else {
            assert_null(e);
        }
    }
    assert_int_equal(m.count, count);
    journal_map_free(&m);
}

/* ---- writer and reader --------------------------------------------------- */

static void
test_store_recovery_set(void **state)
{
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, "grpc-0000000000001-11",
                                        DS_JOURNAL_SYNC_ALWAYS, 0), 0);
    /* The instance exists under its final name only, locked. */
    assert_int_equal(count_segments(instance_dir("grpc-0000000000001-11")), 1);
    assert_int_equal(file_size(instance_dir("grpc-0000000000001-11.new")), -1);

    journal_store_seq(&s, 65536);
    for (uint64_t key = 1; key <= 100; key++)
        accept_key(&s, key, 50 + key);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_live(&s), 100);
    for (uint64_t key = 1; key <= 60; key++)
        journal_store_final(&s, key);
    journal_store_attempt(&s, 70, 2);
    journal_store_attempt(&s, 70, 3);
    journal_store_attempt(&s, 10, 9);        /* final already: ignored */
    journal_store_seq(&s, 131072);
    journal_store_seq(&s, 100);              /* never backwards */
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_live(&s), 40);
    /* Nothing to write: nothing written. */
    uint64_t written = s.bytes_written;
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(s.bytes_written, written);
    assert_true(s.syncs >= 2);

    /* Not findable while it lives (locked). */
    struct journal_recovery *dead;
    assert_int_equal(journal_find_dead(root, "grpc-self", &dead), 0);
    free(dead);

    journal_store_close(&s, 0);             /* as if it crashed */
    struct journal_recovery r = read_instance("grpc-0000000000001-11");
    assert_int_equal(r.pid, 11);
    assert_int_equal(r.count, 40);
    assert_int_equal(r.max_key, 100);
    assert_int_equal(r.max_seq, 131072);
    assert_int_equal(r.truncated, 0);
    assert_int_equal(r.skipped, 0);
    for (size_t i = 0; i < r.count; i++) {
        const struct journal_item *it = &r.items[i];
        assert_int_equal(it->key, 61 + i);          /* by key */
        assert_int_equal(it->attempt, it->key == 70 ? 3 : 1);
        assert_int_equal(it->max_attempts, 5);
        assert_int_equal(it->timeout_ms, 1500);
        assert_int_equal(it->quick, (int)(it->key & 1));
        char want[32];
        snprintf(want, sizeof want, "item-%llu", (unsigned long long)it->key);
        assert_string_equal(it->id, want);
        assert_string_equal(it->kind, "echo");
        assert_string_equal(it->batch, "b1");
        assert_int_equal(it->raw_len, 50 + it->key);
        assert_int_equal(it->raw[1], 10);
    }
    /* While we hold it, nobody else takes it. */
    assert_int_equal(journal_find_dead(root, "grpc-other", &dead), 0);
    free(dead);

    assert_int_equal(journal_recovery_remove(&r, 1), 0);
    assert_int_equal(file_size(instance_dir("grpc-0000000000001-11")), -1);
    assert_int_equal(journal_seq_file_read(root), 131072);
    journal_recovery_free(&r);
    assert_int_equal(journal_find_dead(root, "grpc-self", &dead), 0);
    free(dead);
}

static void
test_clean_close_removes_files(void **state)
{
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, "grpc-0000000000002-12",
                                        DS_JOURNAL_SYNC_NEVER, 0), 0);
    journal_store_seq(&s, 5000);
    accept_key(&s, 1, 10);
    assert_int_equal(journal_store_flush(&s), 0);
    journal_store_final(&s, 1);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_live(&s), 0);
    journal_store_close(&s, 1);
    assert_int_equal(file_size(instance_dir("grpc-0000000000002-12")), -1);
    /* The seq survives the files: the next start continues past it. */
    assert_int_equal(journal_seq_file_read(root), 5000);
}

static void
test_seq_file(void **state)
{
    assert_int_equal(journal_seq_file_read(root), 0);
    assert_int_equal(journal_seq_file_update(root, 100, 1), 0);
    assert_int_equal(journal_seq_file_update(root, 50, 0), 0);     /* keeps the larger */
    assert_int_equal(journal_seq_file_read(root), 100);
    char path[512];
    snprintf(path, sizeof path, "%s/seq", root);
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "X", 1, 9), 1);
    close(fd);
    assert_int_equal(journal_seq_file_read(root), 0);              /* damaged: ignored */
    assert_int_equal(journal_seq_file_update(root, 70, 0), 0);
    assert_int_equal(journal_seq_file_read(root), 70);
}

static void
test_torn_tail_truncated(void **state)
{
    const char *name = "grpc-0000000000003-13";
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    for (uint64_t key = 1; key <= 10; key++)
        accept_key(&s, key, 30);
    assert_int_equal(journal_store_flush(&s), 0);
    uint64_t good = s.size;
    journal_store_close(&s, 0);

    /* Half a record, then garbage. */
    char path[512];
    segment_file(name, 1, path, sizeof path);
    struct journal_buf b = { 0 };
    char id[32];
    struct journal_accept a = make_accept(11, 1, id, 30);
    journal_encode_accept(&b, &a);
    size_t half = b.len / 2;
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b.data, half), (ssize_t)half);
    assert_int_equal(write(fd, "garbage garbage", 15), 15);
    close(fd);
    journal_buf_free(&b);

    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 10);
    assert_int_equal(r.truncated, half + 15);
    assert_int_equal(file_size(path), (off_t)good);         /* cut at the last good record */
    journal_recovery_free(&r);

    /* Read again: clean now. */
    r = read_instance(name);
    assert_int_equal(r.count, 10);
    assert_int_equal(r.truncated, 0);
    journal_recovery_free(&r);

    /* A segment torn while being created (a short magic) holds nothing. */
    struct journal_store t;
    assert_int_equal(journal_store_open(&t, root, "grpc-0000000000004-14",
                                        DS_JOURNAL_SYNC_NEVER, 0), 0);
    journal_store_close(&t, 0);
    segment_file("grpc-0000000000004-14", 1, path, sizeof path);
    assert_int_equal(truncate(path, 3), 0);
    r = read_instance("grpc-0000000000004-14");
    assert_int_equal(r.count, 0);
    journal_recovery_free(&r);
}

static void
test_corrupt_older_segment(void **state)
{
    const char *name = "grpc-0000000000005-15";
    struct journal_store s;
    /* Small segments: each flush of ten 200-byte items fills one. */
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 1500), 0);
    uint64_t key = 0;
    for (int flush = 0; flush < 3; flush++) {
        for (int i = 0; i < 10; i++)
            accept_key(&s, ++key, 200);
        assert_int_equal(journal_store_flush(&s), 0);
    }
    assert_int_equal(s.segment, 3);
    journal_store_close(&s, 0);

    /* A flipped byte in the 4th record of segment 1: the rest of it is lost. */
    char path[512];
    segment_file(name, 1, path, sizeof path);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t byte;
    off_t where = JOURNAL_MAGIC_SIZE + 3 * (off_t)(file_size(path) - JOURNAL_MAGIC_SIZE) / 10 + 40;
    assert_int_equal(pread(fd, &byte, 1, where), 1);
    byte ^= 0xff;
    assert_int_equal(pwrite(fd, &byte, 1, where), 1);
    close(fd);
    off_t before = file_size(path);

    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 3 + 10 + 10);
    assert_non_null(find_item(&r, 3));
    assert_null(find_item(&r, 4));
    assert_null(find_item(&r, 10));
    assert_non_null(find_item(&r, 11));
    assert_non_null(find_item(&r, 30));
    assert_true(r.skipped > 0);
    assert_int_equal(r.truncated, 0);
    assert_int_equal(file_size(path), before);             /* an older segment is left as is */
    journal_recovery_free(&r);
}

static void
test_compaction_deletes_dead_segments(void **state)
{
    const char *name = "grpc-0000000000006-16";
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 4096), 0);
    journal_store_seq(&s, 77);
    /* Items come and go, a few at a time, as in a busy queue. */
    uint64_t key = 0;
    for (int round = 0; round < 200; round++) {
        for (int i = 0; i < 5; i++)
            accept_key(&s, ++key, 300);
        assert_int_equal(journal_store_flush(&s), 0);
        for (uint64_t k = key - 4; k <= key; k++)
            journal_store_final(&s, k);
    }
    assert_int_equal(journal_store_flush(&s), 0);
    assert_true(s.rolls > 50);
    assert_true(s.deleted > 50);
    assert_true(s.segment_count <= 2);
    assert_true(count_segments(instance_dir(name)) <= 2);
    assert_int_equal(journal_store_live(&s), 0);
    journal_store_close(&s, 0);
    /* What is left still says where seq stands, and holds nothing live. */
    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 0);
    assert_int_equal(r.max_seq, 77);
    journal_recovery_free(&r);
}

static void
test_compaction_copies_long_lived_items(void **state)
{
    const char *name = "grpc-0000000000007-17";
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_INTERVAL, 4096), 0);
    /* Item 1 lives throughout, and is retried twice along the way. */
    accept_key(&s, 1, 500);
    uint64_t key = 1;
    for (int round = 0; round < 300; round++) {
        for (int i = 0; i < 4; i++)
            accept_key(&s, ++key, 300);
        if (round == 10)
            journal_store_attempt(&s, 1, 2);
        if (round == 150)
            journal_store_attempt_due(&s, 1, 3, 123456789);     /* a backoff: copies keep it */
        assert_int_equal(journal_store_flush(&s), 0);
        assert_int_equal(journal_store_sync(&s), 0);
        for (uint64_t k = key - 3; k <= key; k++)
            journal_store_final(&s, k);
        /* Bounded: the pinned segment is copied forward, never kept. */
        assert_true(s.segment_count <= JOURNAL_COPY_AFTER + 1);
    }
    assert_int_equal(journal_store_flush(&s), 0);
    assert_true(s.copied >= 2);
    assert_true(s.segments[0].number > 1);
    assert_int_equal(count_segments(instance_dir(name)), (int)s.segment_count);
    assert_int_equal(journal_store_live(&s), 1);
    journal_store_close(&s, 0);

    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 1);
    assert_int_equal(r.items[0].key, 1);
    assert_int_equal(r.items[0].attempt, 3);
    assert_int_equal(r.items[0].due_ns, 123456789);
    assert_int_equal(r.items[0].raw_len, 500);
    assert_string_equal(r.items[0].id, "item-1");
    journal_recovery_free(&r);
}

static void
test_idle_roll(void **state)
{
    const char *name = "grpc-0000000000008-18";
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    /* Past JOURNAL_IDLE_ROLL, all final: the next flush starts afresh. */
    uint64_t key = 0;
    while (s.size < JOURNAL_IDLE_ROLL) {
        for (int i = 0; i < 100; i++)
            accept_key(&s, ++key, 1000);
        assert_int_equal(journal_store_flush(&s), 0);
    }
    assert_int_equal(s.segment, 1);
    for (uint64_t k = 1; k <= key; k++)
        journal_store_final(&s, k);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(s.segment, 2);
    assert_int_equal(count_segments(instance_dir(name)), 1);
    assert_true(s.size < JOURNAL_IDLE_ROLL / 8);
    journal_store_close(&s, 1);
}

static void
test_write_failure(void **state)
{
    const char *name = "grpc-0000000000009-19";
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    accept_key(&s, 1, 10);
    accept_key(&s, 2, 10);
    assert_int_equal(journal_store_flush(&s), 0);

    /* The disk fills up: /dev/full instead of the segment. */
    int saved = dup(s.fd), full = open("/dev/full", O_WRONLY);
    assert_true(saved >= 0 && full >= 0);
    assert_int_equal(dup2(full, s.fd), s.fd);
    close(full);
    journal_store_final(&s, 1);
    accept_key(&s, 3, 10);
    accept_key(&s, 4, 10);
    errno = 0;
    assert_int_equal(journal_store_flush(&s), -1);
    assert_int_equal(errno, ENOSPC);
    /* 3 and 4 are not accepted; the FINAL of 1 waits for the next flush. */
    assert_null(journal_map_get(&s.entries, 3));
    assert_null(journal_map_get(&s.entries, 4));
    assert_int_equal(journal_store_live(&s), 1);
    assert_true(journal_store_has_buffered(&s));
    assert_int_equal(s.accepts.len, 0);

    /* Space again. (/dev/full could not be truncated: the next flush rolls.) */
    assert_int_equal(dup2(saved, s.fd), s.fd);
    close(saved);
    accept_key(&s, 5, 10);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_live(&s), 2);
    journal_store_close(&s, 0);

    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 2);
    assert_non_null(find_item(&r, 2));
    assert_non_null(find_item(&r, 5));
    journal_recovery_free(&r);
}

/* Writes past LIMIT bytes of a file fail (EFBIG) after a short write, as
 * on a full disk; 0 lifts it. */
static void
limit_file_size(rlim_t limit)
{
    static struct rlimit saved;
    static int have_saved;
    if (!have_saved) {
        assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
        have_saved = 1;
        signal(SIGXFSZ, SIG_IGN);
    }
    struct rlimit rl = saved;
    if (limit > 0)
        rl.rlim_cur = limit;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

static void
test_short_write_keeps_what_fits(void **state)
{
    const char *name = "grpc-0000000000011-21";
    struct journal_store s;
    char path[512];
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    accept_key(&s, 1, 100);
    accept_key(&s, 2, 100);
    assert_int_equal(journal_store_flush(&s), 0);

    /* Room for the FINAL and two and a half 4 KB ACCEPTs of five. */
    journal_store_final(&s, 1);
    for (uint64_t k = 10; k < 15; k++)
        accept_key(&s, k, 4000);
    size_t record = (s.accepts.len) / 5;
    limit_file_size(s.size + 20 + record * 5 / 2);
    errno = 0;
    int rc = journal_store_flush(&s);
    int err = errno;
    limit_file_size(0);
    assert_int_equal(rc, -1);
    assert_int_equal(err, EFBIG);
    assert_true(s.flushed_other);
    assert_int_equal(s.flushed_accepts, 2);
    assert_non_null(journal_map_get(&s.entries, 10));
    assert_non_null(journal_map_get(&s.entries, 11));
    assert_null(journal_map_get(&s.entries, 12));
    assert_null(journal_map_get(&s.entries, 14));
    assert_int_equal(journal_store_live(&s), 3);
    assert_false(journal_store_has_buffered(&s));
    /* Cut back to the last whole record: what follows lands after it. */
    segment_file(name, s.segment, path, sizeof path);
    assert_int_equal(file_size(path), (off_t)s.size);

    accept_key(&s, 20, 10);
    assert_int_equal(journal_store_flush(&s), 0);
    journal_store_close(&s, 0);
    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 4);
    assert_null(find_item(&r, 1));
    assert_non_null(find_item(&r, 2));
    assert_non_null(find_item(&r, 10));
    assert_non_null(find_item(&r, 11));
    assert_null(find_item(&r, 12));
    assert_non_null(find_item(&r, 20));
    assert_int_equal(r.truncated, 0);
    journal_recovery_free(&r);
}

static void
test_full_disk_empties_a_dead_only_segment(void **state)
{
    const char *name = "grpc-0000000000012-22";
    struct journal_store s;
    char path[512];
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    journal_store_seq(&s, 5);
    for (uint64_t k = 1; k <= 3; k++)
        accept_key(&s, k, 4000);
    assert_int_equal(journal_store_flush(&s), 0);
    for (uint64_t k = 1; k <= 3; k++)
        journal_store_final(&s, k);
    /* No room for the FINALs; but every item of the only segment is final. */
    limit_file_size(s.size + 10);
    int rc = journal_store_flush(&s);
    limit_file_size(0);
    assert_int_equal(rc, 0);
    assert_true(s.flushed_other);
    segment_file(name, s.segment, path, sizeof path);
    assert_true(file_size(path) < 200);
    assert_int_equal(file_size(path), (off_t)s.size);
    journal_store_close(&s, 0);
    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 0);
    assert_int_equal(r.max_seq, 5);
    journal_recovery_free(&r);

    /* With a live item there, nothing is emptied: the FINAL waits. */
    name = "grpc-0000000000013-23";
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    accept_key(&s, 1, 4000);
    accept_key(&s, 2, 4000);
    assert_int_equal(journal_store_flush(&s), 0);
    journal_store_final(&s, 1);
    uint64_t size = s.size;
    limit_file_size(s.size + 10);
    rc = journal_store_flush(&s);
    limit_file_size(0);
    assert_int_equal(rc, -1);
    assert_false(s.flushed_other);
    assert_true(journal_store_has_buffered(&s));
    assert_int_equal(s.size, size);
    assert_int_equal(journal_store_flush(&s), 0);
    journal_store_close(&s, 0);
    r = read_instance(name);
    assert_int_equal(r.count, 1);
    assert_non_null(find_item(&r, 2));
    journal_recovery_free(&r);
}

static void
test_find_dead_cleans_up(void **state)
{
    /* A creator that died before its rename (no such pid) leaves NAME.new. */
    char path[512];
    snprintf(path, sizeof path, "%s/grpc-0000000000010-999999999.new", root);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/grpc-0000000000010-999999999.new/lock", root);
    close(open(path, O_CREAT | O_WRONLY, 0600));
    /* A removal that got as far as the lock leaves the directory. */
    snprintf(path, sizeof path, "%s/grpc-0000000000011-20", root);
    assert_int_equal(mkdir(path, 0700), 0);
    /* Not ours at all. */
    snprintf(path, sizeof path, "%s/something-else", root);
    assert_int_equal(mkdir(path, 0700), 0);

    struct journal_recovery *dead;
    assert_int_equal(journal_find_dead(root, "grpc-self", &dead), 0);
    free(dead);
    assert_int_equal(file_size(instance_dir("grpc-0000000000010-999999999.new")), -1);
    assert_int_equal(file_size(instance_dir("grpc-0000000000011-20")), -1);
    assert_true(file_size(instance_dir("something-else")) >= 0);

    /* Oldest first. */
    struct journal_store a, b;
    assert_int_equal(journal_store_open(&b, root, "grpc-0000000000013-22", DS_JOURNAL_SYNC_NEVER,
                                        0), 0);
    assert_int_equal(journal_store_open(&a, root, "grpc-0000000000012-21", DS_JOURNAL_SYNC_NEVER,
                                        0), 0);
    journal_store_close(&b, 0);
    journal_store_close(&a, 0);
    assert_int_equal(journal_find_dead(root, "grpc-0000000000012-21", &dead), 1);
    journal_recovery_free(&dead[0]);
    free(dead);
    assert_int_equal(journal_find_dead(root, "grpc-self", &dead), 2);
    assert_string_equal(dead[0].name, "grpc-0000000000012-21");
    assert_string_equal(dead[1].name, "grpc-0000000000013-22");
    for (int i = 0; i < 2; i++) {
        assert_int_equal(journal_read(&dead[i]), 0);
        assert_int_equal(journal_recovery_remove(&dead[i], 0), 0);
        journal_recovery_free(&dead[i]);
    }
    free(dead);
}

/* ---- retained finals (DONE records) ------------------------------------- */

static struct journal_done
make_done(uint64_t key, uint8_t state, char *id, const char *error, const void *result,
          size_t result_len, const uint8_t *raw, size_t raw_len)
{
    snprintf(id, 32, "item-%llu", (unsigned long long)key);
    struct journal_done d = {
        .key = key, .state = state, .quick = 1, .attempt = 2, .max_attempts = 3,
        .timeout_ms = 1500, .priority = -7,
        .accepted_ns = 1700000000000000001ll, .started_ns = 1700000000000000002ll,
        .finished_ns = 1700000000000000003ll + (int64_t)key, .last_seq = 99 + key,
        .id = id, .id_len = strlen(id), .kind = "echo", .kind_len = 4,
        .batch = "b1", .batch_len = 2,
        .error = error, .error_len = error != NULL ? strlen(error) : 0,
        .result = result, .result_len = result_len, .raw = raw, .raw_len = raw_len,
    };
    return d;
}

static void
done_key(struct journal_store *s, uint64_t key, uint8_t state)
{
    char id[32];
    static const uint8_t raw[40] = { 1, 2, 3 };
    struct journal_done d = make_done(key, state, id, state == 4 ? NULL : "it broke",
                                      state == 4 ? "result!" : NULL, state == 4 ? 7 : 0,
                                      state == 4 ? NULL : raw, state == 4 ? 0 : sizeof raw);
    journal_store_done(s, &d);
}

static void
forget_key(struct journal_store *s, uint64_t key)
{
    char id[32];
    snprintf(id, sizeof id, "item-%llu", (unsigned long long)key);
    journal_store_forget(s, id, strlen(id));
}

static const struct journal_final *
find_final(const struct journal_recovery *r, const char *id)
{
    for (size_t i = 0; i < r->final_count; i++)
        if (strcmp(r->finals[i].id, id) == 0)
            return &r->finals[i];
    return NULL;
}

static void
test_done_round_trip(void **state)
{
    (void)state;
    struct journal_buf b = { 0 };
    char id[32];
    uint8_t raw[300];
    for (size_t i = 0; i < sizeof raw; i++)
        raw[i] = (uint8_t)i;
    struct journal_done d = make_done(42, 5, id, "exit status 3", NULL, 0, raw, sizeof raw);
    size_t off = journal_encode_done(&b, &d);
    struct journal_done e = make_done(43, 4, id, NULL, "the result", 10, NULL, 0);
    size_t off2 = journal_encode_done(&b, &e);
    struct journal_record rec;
    size_t size;
    const char *why;
    assert_int_equal(journal_decode(b.data + off, b.len - off, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(size, off2 - off);
    assert_int_equal(rec.type, JOURNAL_DONE);
    assert_int_equal(rec.key, 42);
    const struct journal_done *g = &rec.done;
    assert_int_equal(g->state, 5);
    assert_int_equal(g->quick, 1);
    assert_int_equal(g->attempt, 2);
    assert_int_equal(g->max_attempts, 3);
    assert_int_equal(g->timeout_ms, 1500);
    assert_int_equal(g->priority, -7);
    assert_true(g->accepted_ns == 1700000000000000001ll);
    assert_true(g->started_ns == 1700000000000000002ll);
    assert_true(g->finished_ns == 1700000000000000045ll);
    assert_int_equal(g->last_seq, 141);
    assert_int_equal(g->error_len, 13);
    assert_memory_equal(g->error, "exit status 3", 13);
    assert_int_equal(g->result_len, 0);
    assert_int_equal(g->raw_len, sizeof raw);
    assert_memory_equal(g->raw, raw, sizeof raw);
    assert_int_equal(journal_decode(b.data + off2, b.len - off2, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(rec.done.result_len, 10);
    assert_memory_equal(rec.done.result, "the result", 10);
    assert_int_equal(rec.done.error_len, 0);

    /* Torn anywhere: TORN; a flipped byte: CORRUPT; lengths that do not add
     * up (CRC fixed): CORRUPT; an empty id: CORRUPT. */
    size_t len = off2 - off;
    for (size_t cut = 0; cut < len; cut += 7)
        assert_int_equal(journal_decode(b.data + off, cut, &rec, &size, &why), JOURNAL_TORN);
    uint8_t *copy = malloc(len);
    for (size_t at = 0; at < len; at += 5) {
        memcpy(copy, b.data + off, len);
        copy[at] ^= 0x40;
        assert_int_not_equal(journal_decode(copy, len, &rec, &size, &why), JOURNAL_OK);
    }
    const size_t fields[] = { 64, 72, 76, 80 };
    for (size_t i = 0; i < 4; i++) {
        memcpy(copy, b.data + off, len);
        copy[JOURNAL_HEADER_SIZE + fields[i]] ^= 1;
        uint32_t crc = journal_crc32c(0, copy + 4, len - 4);
        memcpy(copy, &crc, 4);
        assert_int_equal(journal_decode(copy, len, &rec, &size, &why), JOURNAL_CORRUPT);
        assert_string_equal(why, "malformed DONE record");
    }
    /* A body shorter than the fixed part. */
    struct journal_buf s8 = { 0 };
    journal_encode_final(&s8, 5);
    s8.data[8] = JOURNAL_DONE;
    uint32_t crc = journal_crc32c(0, s8.data + 4, s8.len - 4);
    memcpy(s8.data, &crc, 4);
    assert_int_equal(journal_decode(s8.data, s8.len, &rec, &size, &why), JOURNAL_CORRUPT);
    journal_buf_free(&s8);
    free(copy);
    journal_buf_free(&b);
    assert_int_not_equal(journal_id_hash("", 0), 0);
    assert_int_not_equal(journal_id_hash("a", 1), journal_id_hash("b", 1));
}

/* A DONE with a trace (flag 2) round-trips; one without reads as before
 * (no trace); a trace flag whose lengths do not add up is CORRUPT. */
static void
test_done_with_trace(void **state)
{
    (void)state;
    static const char tp[] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    static const char ts[] = "congo=t61rcWkgMzE";
    struct journal_buf b = { 0 };
    char id[32];
    struct journal_done d = make_done(44, 4, id, NULL, "r", 1, NULL, 0);
    d.traceparent = tp;
    d.traceparent_len = sizeof tp - 1;
    d.tracestate = ts;
    d.tracestate_len = sizeof ts - 1;
    size_t off = journal_encode_done(&b, &d);
    d.tracestate_len = 0;
    size_t off2 = journal_encode_done(&b, &d);
    struct journal_done old = make_done(45, 4, id, NULL, "r", 1, NULL, 0);
    size_t off3 = journal_encode_done(&b, &old);
    struct journal_record rec;
    size_t size;
    const char *why;
    assert_int_equal(journal_decode(b.data + off, b.len - off, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(size, off2 - off);
    assert_int_equal(rec.done.traceparent_len, sizeof tp - 1);
    assert_memory_equal(rec.done.traceparent, tp, sizeof tp - 1);
    assert_int_equal(rec.done.tracestate_len, sizeof ts - 1);
    assert_memory_equal(rec.done.tracestate, ts, sizeof ts - 1);
    assert_int_equal(rec.done.result_len, 1);
    assert_int_equal(rec.done.quick, 1);
    assert_int_equal(journal_decode(b.data + off2, b.len - off2, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(rec.done.traceparent_len, sizeof tp - 1);
    assert_int_equal(rec.done.tracestate_len, 0);
    assert_int_equal(journal_decode(b.data + off3, b.len - off3, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(rec.done.traceparent_len, 0);
    assert_null(rec.done.traceparent);

    /* The flag on a record without the trace, or a traceparent length
     * past the body, or a zero one (CRC fixed): CORRUPT. */
    size_t len = b.len - off3;
    uint8_t *copy = malloc(off2 - off > len ? off2 - off : len);
    memcpy(copy, b.data + off3, len);
    copy[JOURNAL_HEADER_SIZE + 9] |= 2;
    uint32_t crc = journal_crc32c(0, copy + 4, len - 4);
    memcpy(copy, &crc, 4);
    assert_int_equal(journal_decode(copy, len, &rec, &size, &why), JOURNAL_CORRUPT);
    len = off2 - off;
    size_t at = len - (sizeof tp - 1) - (sizeof ts - 1) - 4;
    const uint16_t lengths[] = { 0, 1000, (uint16_t)(sizeof tp) };
    for (size_t i = 0; i < 3; i++) {
        memcpy(copy, b.data + off, len);
        memcpy(copy + at, &lengths[i], 2);
        crc = journal_crc32c(0, copy + 4, len - 4);
        memcpy(copy, &crc, 4);
        assert_int_equal(journal_decode(copy, len, &rec, &size, &why), JOURNAL_CORRUPT);
    }
    free(copy);
    journal_buf_free(&b);
}

/* A DONE with the cost (flag 4) round-trips, with a trace before it too;
 * one without reads as before (cost 0: not known, the journals written
 * before it); the flag on a body without the 16 bytes is CORRUPT. */
static void
test_done_with_cost(void **state)
{
    (void)state;
    static const char tp[] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    struct journal_buf b = { 0 };
    char id[32];
    struct journal_done d = make_done(46, 4, id, NULL, "r", 1, NULL, 0);
    d.cpu_usec = 2000123;
    d.max_rss_kib = 104857;
    size_t off = journal_encode_done(&b, &d);
    d.traceparent = tp;
    d.traceparent_len = sizeof tp - 1;
    d.cpu_usec = 0;                     /* the peak alone is enough to be kept */
    size_t off2 = journal_encode_done(&b, &d);
    struct journal_done old = make_done(47, 5, id, "boom", NULL, 0, NULL, 0);
    size_t off3 = journal_encode_done(&b, &old);
    struct journal_record rec;
    size_t size;
    const char *why;
    assert_int_equal(journal_decode(b.data + off, b.len - off, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(size, off2 - off);
    assert_int_equal(rec.done.cpu_usec, 2000123);
    assert_int_equal(rec.done.max_rss_kib, 104857);
    assert_int_equal(rec.done.traceparent_len, 0);
    assert_int_equal(rec.done.result_len, 1);
    assert_int_equal(journal_decode(b.data + off2, b.len - off2, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(size, off3 - off2);
    assert_int_equal(rec.done.cpu_usec, 0);
    assert_int_equal(rec.done.max_rss_kib, 104857);
    assert_int_equal(rec.done.traceparent_len, sizeof tp - 1);
    assert_memory_equal(rec.done.traceparent, tp, sizeof tp - 1);
    assert_int_equal(journal_decode(b.data + off3, b.len - off3, &rec, &size, &why), JOURNAL_OK);
    assert_int_equal(rec.done.cpu_usec, 0);
    assert_int_equal(rec.done.max_rss_kib, 0);
    assert_int_equal(b.data[off3 + JOURNAL_HEADER_SIZE + 9] & JOURNAL_DONE_HAS_COST, 0);

    /* The flag on a record without the cost (CRC fixed): CORRUPT. */
    size_t len = b.len - off3;
    uint8_t *copy = malloc(len);
    memcpy(copy, b.data + off3, len);
    copy[JOURNAL_HEADER_SIZE + 9] |= JOURNAL_DONE_HAS_COST;
    uint32_t crc = journal_crc32c(0, copy + 4, len - 4);
    memcpy(copy, &crc, 4);
    assert_int_equal(journal_decode(copy, len, &rec, &size, &why), JOURNAL_CORRUPT);
    free(copy);
    journal_buf_free(&b);
}

static void
test_done_recovered(void **state)
{
    (void)state;
    const char *name = "grpc-0000000000020-30";
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    for (uint64_t k = 1; k <= 6; k++)
        accept_key(&s, k, 100);
    assert_int_equal(journal_store_flush(&s), 0);
    done_key(&s, 1, 4);
    done_key(&s, 2, 5);
    done_key(&s, 3, 6);
    journal_store_final(&s, 4);         /* void: not retained */
    done_key(&s, 5, 4);
    assert_int_equal(journal_store_flush(&s), 0);
    forget_key(&s, 5);                  /* forgotten: its DONE stays, harmless */
    /* Item 1 retried under a new key (7) and live again. */
    forget_key(&s, 1);
    char id[32];
    struct journal_accept a = make_accept(7, 1, id, 10);
    a.id = "item-1";
    a.id_len = 6;
    journal_store_accept(&s, &a);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_live(&s), 2);        /* 6, 7 */
    assert_int_equal(journal_store_retained(&s), 2);    /* 2, 3 */
    journal_store_close(&s, 0);

    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 2);
    assert_non_null(find_item(&r, 6));
    assert_non_null(find_item(&r, 7));
    /* 1 is live again; 5's DONE is still on disk (the index forgets it
     * again by its own retention) */
    assert_int_equal(r.final_count, 3);
    assert_null(find_final(&r, "item-1"));
    const struct journal_final *f = find_final(&r, "item-2");
    assert_non_null(f);
    assert_int_equal(f->key, 2);
    assert_int_equal(f->state, 5);
    assert_string_equal(f->error, "it broke");
    assert_string_equal(f->kind, "echo");
    assert_string_equal(f->batch, "b1");
    assert_int_equal(f->raw_len, 40);
    assert_int_equal(f->raw[2], 3);
    assert_null(f->result);
    f = find_final(&r, "item-5");
    assert_non_null(f);
    assert_int_equal(f->result_len, 7);
    assert_memory_equal(f->result, "result!", 7);
    assert_null(f->error);
    assert_int_equal(f->attempt, 2);
    assert_int_equal(f->last_seq, 104);
    assert_non_null(find_final(&r, "item-3"));
    journal_recovery_free(&r);
}

static void
test_done_keeps_segments_until_forgotten(void **state)
{
    (void)state;
    const char *name = "grpc-0000000000021-31";
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 4096), 0);
    /* 40 items, each done at once: their segments hold retained finals. */
    uint64_t key = 0;
    for (int round = 0; round < 40; round++) {
        accept_key(&s, ++key, 300);
        assert_int_equal(journal_store_flush(&s), 0);
        done_key(&s, key, round % 3 == 0 ? 5 : 4);
        assert_int_equal(journal_store_flush(&s), 0);
    }
    assert_int_equal(journal_store_live(&s), 0);
    assert_int_equal(journal_store_retained(&s), 40);
    /* Nothing was deleted that holds a retained final, and copies keep the
     * count of segments bounded. */
    assert_true(s.segment_count <= JOURNAL_COPY_AFTER + 1);
    assert_true(s.done_copied > 0);
    uint64_t retained = 0;
    for (size_t i = 0; i < s.segment_count; i++)
        retained += s.segments[i].retained;
    assert_int_equal(retained, 40);
    /* Forget them all: only the current segment stays, with nothing. */
    for (uint64_t k = 1; k <= key; k++)
        forget_key(&s, k);
    forget_key(&s, 1000);               /* unknown: nothing */
    assert_int_equal(journal_store_retained(&s), 0);
    accept_key(&s, ++key, 10);          /* something to flush */
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(s.segment_count, 1);
    assert_int_equal(count_segments(instance_dir(name)), 1);
    journal_store_close(&s, 0);
    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 1);
    journal_recovery_free(&r);
}

static void
test_done_copied_forward(void **state)
{
    (void)state;
    const char *name = "grpc-0000000000022-32";
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_INTERVAL, 4096), 0);
    /* Item 1 is final and retained throughout; many items come and go. */
    accept_key(&s, 1, 10);
    assert_int_equal(journal_store_flush(&s), 0);
    done_key(&s, 1, 5);
    uint64_t key = 1;
    for (int round = 0; round < 300; round++) {
        for (int i = 0; i < 4; i++)
            accept_key(&s, ++key, 300);
        assert_int_equal(journal_store_flush(&s), 0);
        assert_int_equal(journal_store_sync(&s), 0);
        for (uint64_t k = key - 3; k <= key; k++)
            journal_store_final(&s, k);
        assert_true(s.segment_count <= JOURNAL_COPY_AFTER + 1);
    }
    assert_int_equal(journal_store_flush(&s), 0);
    assert_true(s.done_copied >= 2);
    assert_true(s.segments[0].number > 1);
    assert_int_equal(journal_store_retained(&s), 1);
    journal_store_close(&s, 0);
    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 0);
    assert_int_equal(r.final_count, 1);
    assert_string_equal(r.finals[0].id, "item-1");
    assert_int_equal(r.finals[0].raw_len, 40);
    assert_string_equal(r.finals[0].error, "it broke");
    journal_recovery_free(&r);
}

static void
test_done_torn_tail(void **state)
{
    (void)state;
    const char *name = "grpc-0000000000023-33";
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    accept_key(&s, 1, 10);
    accept_key(&s, 2, 10);
    assert_int_equal(journal_store_flush(&s), 0);
    done_key(&s, 1, 4);
    assert_int_equal(journal_store_flush(&s), 0);
    uint64_t whole = s.size;
    done_key(&s, 2, 4);
    assert_int_equal(journal_store_flush(&s), 0);
    journal_store_close(&s, 0);
    /* The second DONE torn in the middle: item 2 is live again. */
    char path[512];
    segment_file(name, 1, path, sizeof path);
    assert_int_equal(truncate(path, (off_t)whole + 30), 0);
    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.truncated, 30);
    assert_int_equal(r.count, 1);
    assert_int_equal(r.items[0].key, 2);
    assert_int_equal(r.final_count, 1);
    assert_string_equal(r.finals[0].id, "item-1");
    journal_recovery_free(&r);
    assert_int_equal(file_size(path), (off_t)whole);
}

/* Files removed under the writer: an older segment alone, the whole root,
 * then the root's name taken by a file. Every live item (with its latest
 * attempt) and retained final is written anew, and reads back. */
static void
test_rebuild_after_removal(void **state)
{
    (void)state;
    const char *name = "grpc-0000000000041-51";
    char jroot[600], path[800], why[512];
    struct journal_store s;
    snprintf(jroot, sizeof jroot, "%s/j", root);
    assert_int_equal(journal_store_open(&s, jroot, name, DS_JOURNAL_SYNC_INTERVAL, 4096), 0);
    accept_key(&s, 1, 500);             /* in segment 1 for good */
    accept_key(&s, 2, 100);
    assert_int_equal(journal_store_flush(&s), 0);
    done_key(&s, 2, 4);
    journal_store_attempt(&s, 1, 3);
    uint64_t key = 2;
    for (int round = 0; round < 25; round++) {
        accept_key(&s, ++key, 300);
        assert_int_equal(journal_store_flush(&s), 0);
        journal_store_final(&s, key);
    }
    accept_key(&s, ++key, 300);         /* live, in the current segment */
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_sync(&s), 0);
    assert_true(s.segment >= 3 && s.segments[0].number == 1);
    assert_int_equal(journal_store_removed(&s), 0);

    /* A cleaner deletes segment 1 alone. */
    char jdir[700];
    snprintf(jdir, sizeof jdir, "%s/%s", jroot, name);
    snprintf(path, sizeof path, "%s/%08u.seg", jdir, 1u);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(journal_store_removed(&s), 1);
    assert_int_equal(journal_store_rebuild(&s, why, sizeof why), 0);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_sync(&s), 0);
    assert_int_equal(journal_store_removed(&s), 0);
    assert_int_equal(s.segment_count, 1);

    /* The whole root goes, then a file takes its name. */
    char cmd[800];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", jroot);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(journal_store_removed(&s), 1);
    int fd = open(jroot, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd != -1);
    close(fd);
    assert_int_equal(journal_store_rebuild(&s, why, sizeof why), -1);
    assert_non_null(strstr(why, "Not a directory"));
    assert_int_equal(journal_store_removed(&s), 1);
    journal_store_attempt(&s, 1, 4);            /* meanwhile, to the unlinked file */
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(unlink(jroot), 0);
    assert_int_equal(journal_store_rebuild(&s, why, sizeof why), 0);
    struct stat st;
    assert_int_equal(stat(jroot, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_sync(&s), 0);
    assert_int_equal(journal_store_removed(&s), 0);
    assert_int_equal(count_segments(jdir), 1);
    journal_store_close(&s, 0);

    /* Read as a dead instance. */
    struct journal_recovery *dead;
    assert_int_equal(journal_find_dead(jroot, "grpc-self", &dead), 1);
    assert_int_equal(journal_read(&dead[0]), 0);
    assert_int_equal(dead[0].count, 2);
    const struct journal_item *it = find_item(&dead[0], 1);
    assert_non_null(it);
    assert_int_equal(it->attempt, 4);
    assert_int_equal(it->raw_len, 500);
    assert_non_null(find_item(&dead[0], key));
    assert_int_equal(dead[0].final_count, 1);
    assert_non_null(find_final(&dead[0], "item-2"));
    journal_recovery_free(&dead[0]);
    free(dead);
}

/* Names of segments that are no regular files: a FIFO (opening it would
 * block), an empty directory (removed), a dangling symlink are skipped and
 * the rest read; a directory with something in it keeps the instance from
 * being read (it would outlive the take-over). */
static void
test_irregular_segments_skipped(void **state)
{
    (void)state;
    const char *name = "grpc-0000000000042-52";
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    for (uint64_t key = 1; key <= 3; key++)
        accept_key(&s, key, 100);
    assert_int_equal(journal_store_flush(&s), 0);
    journal_store_close(&s, 0);
    char fifo[512], dir[512], link[512], inner[600];
    snprintf(fifo, sizeof fifo, "%s/%s/00000002.seg", root, name);
    snprintf(dir, sizeof dir, "%s/%s/00000003.seg", root, name);
    snprintf(link, sizeof link, "%s/%s/00000004.seg", root, name);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(symlink("/nonexistent/x.seg", link), 0);
    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 3);
    assert_int_equal(r.segments, 1);
    journal_recovery_free(&r);
    struct stat st;
    assert_int_equal(stat(dir, &st), -1);                  /* removed: it was empty */

    /* A directory with something in it: not read (-1), left as it is. */
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(inner, sizeof inner, "%s/x", dir);
    int fd = open(inner, O_WRONLY | O_CREAT, 0600);
    assert_true(fd != -1);
    close(fd);
    struct journal_recovery *dead;
    assert_int_equal(journal_find_dead(root, "grpc-self", &dead), 1);
    assert_int_equal(journal_read(&dead[0]), -1);
    journal_recovery_free(&dead[0]);
    free(dead);
    assert_int_equal(stat(inner, &st), 0);
}

/* A segment with nothing live or retained in it, after one that has: it
 * holds the FINAL of an item whose ACCEPT is in that older one, so a
 * cleaner deleting it alone must be seen (else the item runs again at the
 * next start). */
static void
test_nonprefix_dead_segment_deleted(void **state)
{
    (void)state;
    const char *name = "grpc-0000000000043-53";
    char path[512], why[512];
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    accept_key(&s, 1, 100);             /* live in segment 1 */
    accept_key(&s, 2, 100);             /* its FINAL goes to segment 2 */
    assert_int_equal(journal_store_flush(&s), 0);
    s.roll_next = 1;
    journal_store_final(&s, 2);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(s.segment, 2);
    s.roll_next = 1;
    accept_key(&s, 3, 100);             /* live in segment 3, the current one */
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(s.segment, 3);
    assert_int_equal(s.segment_count, 3);
    assert_int_equal(journal_store_removed(&s), 0);

    segment_file(name, 2, path, sizeof path);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(journal_store_removed(&s), 1);
    assert_int_equal(journal_store_rebuild(&s, why, sizeof why), 0);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_removed(&s), 0);
    journal_store_close(&s, 0);

    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 2);
    assert_non_null(find_item(&r, 1));
    assert_null(find_item(&r, 2));
    assert_non_null(find_item(&r, 3));
    journal_recovery_free(&r);

    /* A dead prefix may go: nothing is said of it. */
    name = "grpc-0000000000044-54";
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    accept_key(&s, 1, 100);
    assert_int_equal(journal_store_flush(&s), 0);
    journal_store_final(&s, 1);
    s.roll_next = 1;
    accept_key(&s, 2, 100);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(s.segment, 2);
    if (s.segment_count == 2) {         /* not collected yet */
        segment_file(name, 1, path, sizeof path);
        assert_int_equal(unlink(path), 0);
        assert_int_equal(journal_store_removed(&s), 0);
    }
    journal_store_close(&s, 0);
}

/* The directory removed, made again, and the write of the copies fails (a
 * full disk): the descriptors of the segments whose names are gone are
 * closed at once (their space is given back: removing files to make room
 * works), the copies wait in the buffer, and the next flush that works
 * writes them all. */
static void
test_rebuild_copy_write_fails(void **state)
{
    (void)state;
    const char *name = "grpc-0000000000045-55";
    char why[512], cmd[600];
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_NEVER, 0), 0);
    accept_key(&s, 1, 300);
    accept_key(&s, 2, 300);
    assert_int_equal(journal_store_flush(&s), 0);
    done_key(&s, 2, 4);
    s.roll_next = 1;
    accept_key(&s, 3, 300);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(s.segment_count, 2);

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", instance_dir(name));
    assert_int_equal(system(cmd), 0);
    assert_int_equal(journal_store_removed(&s), 1);
    assert_int_equal(journal_store_rebuild(&s, why, sizeof why), 0);
    assert_int_equal(s.segment, 3);
    for (size_t i = 0; i + 1 < s.segment_count; i++) {
        assert_true(s.segments[i].gone);
        assert_int_equal(s.segments[i].fd, -1);         /* closed: its blocks are free */
    }
    limit_file_size(s.size);
    int rc = journal_store_flush(&s);
    limit_file_size(0);
    assert_int_equal(rc, -1);
    assert_false(s.flushed_other);
    assert_true(journal_store_has_buffered(&s));
    assert_int_equal(journal_store_live(&s), 2);
    /* No longer removed (a new segment is there), but the copies are not written. */
    assert_int_equal(journal_store_removed(&s), 0);
    assert_int_equal(journal_store_flush(&s), 0);
    journal_store_close(&s, 0);

    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 2);
    assert_non_null(find_item(&r, 1));
    assert_non_null(find_item(&r, 3));
    assert_int_equal(r.final_count, 1);
    assert_non_null(find_final(&r, "item-2"));
    journal_recovery_free(&r);
}

/* The instance directory moved away (mv), or replaced by another one, or
 * a segment's name deleted while a backup's hard link keeps it: no link
 * count goes to 0, but nothing is in DIR/NAME any more. Seen, made whole
 * again (a new lock in the new directory), and read back. */
static void
test_rebuild_after_dir_moved(void **state)
{
    (void)state;
    const char *name = "grpc-0000000000046-56";
    char why[512], moved[600], path[700];
    struct journal_store s;
    assert_int_equal(journal_store_open(&s, root, name, DS_JOURNAL_SYNC_INTERVAL, 0), 0);
    accept_key(&s, 1, 100);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_removed(&s), 0);

    snprintf(moved, sizeof moved, "%s/elsewhere", root);
    assert_int_equal(rename(instance_dir(name), moved), 0);
    assert_int_equal(journal_store_removed(&s), 1);
    assert_int_equal(journal_store_rebuild(&s, why, sizeof why), 0);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_removed(&s), 0);

    /* An empty directory put in its place. */
    snprintf(path, sizeof path, "%s/%s", root, "elsewhere2");
    assert_int_equal(rename(instance_dir(name), path), 0);
    assert_int_equal(mkdir(instance_dir(name), 0700), 0);
    assert_int_equal(journal_store_removed(&s), 1);
    assert_int_equal(journal_store_rebuild(&s, why, sizeof why), 0);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_sync(&s), 0);
    assert_int_equal(journal_store_removed(&s), 0);
    snprintf(path, sizeof path, "%s/lock", instance_dir(name));
    assert_true(file_size(path) >= 0);

    /* A backup hard-links the current segment, then a cleaner deletes it
     * from the directory: its link count is 1, its name is gone. */
    char backup[600];
    snprintf(backup, sizeof backup, "%s/backup.seg", root);
    segment_file(name, s.segment, path, sizeof path);
    assert_int_equal(link(path, backup), 0);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(journal_store_removed(&s), 1);
    assert_int_equal(journal_store_rebuild(&s, why, sizeof why), 0);
    assert_int_equal(journal_store_flush(&s), 0);
    assert_int_equal(journal_store_removed(&s), 0);
    journal_store_close(&s, 0);

    struct journal_recovery r = read_instance(name);
    assert_int_equal(r.count, 1);
    assert_non_null(find_item(&r, 1));
    journal_recovery_free(&r);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_records_round_trip),
        cmocka_unit_test_setup_teardown(test_due_times, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unstarted, setup, teardown),
        cmocka_unit_test(test_decode_errors),
        cmocka_unit_test(test_map),
        cmocka_unit_test(test_done_with_trace),
        cmocka_unit_test(test_done_with_cost),
        cmocka_unit_test_setup_teardown(test_store_recovery_set, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clean_close_removes_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seq_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_older_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compaction_deletes_dead_segments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compaction_copies_long_lived_items, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_roll, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_write_keeps_what_fits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_disk_empties_a_dead_only_segment, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_dead_cleans_up, setup, teardown),
        cmocka_unit_test(test_done_round_trip),
        cmocka_unit_test_setup_teardown(test_done_recovered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_done_keeps_segments_until_forgotten, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_done_copied_forward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rebuild_after_removal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_irregular_segments_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_done_torn_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nonprefix_dead_segment_deleted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rebuild_copy_write_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rebuild_after_dir_moved, setup, teardown),
    };
    return cmocka_run_group_tests_name("journal", tests, NULL, NULL);
}
