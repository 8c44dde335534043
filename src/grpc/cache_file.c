/*
 * The result cache in the journal's directory (cache_file.h has the format).
 */
#include "grpc/cache_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "grpc/grpc_process.h"
#include "grpc/journal_store.h"
#include "grpc/metrics.h"
#include "grpc/result_cache.h"

#define MAGIC       "DSCACHE1"
#define MAGIC_LEN   8
#define HEAD_LEN    8                   /* crc32c, length */
#define BODY_FIXED  (8 + 1 + CACHE_KEY_SIZE)
#define BODY_MAX    (BODY_FIXED + 255 + DS_RESULT_SIZE_MAX)
#define SLACK       (1u << 20)

static struct {
    char *path;                 /* ours */
    int fd;                     /* -1: not writing */
    uint64_t file_bytes;
    int absent;                 /* no file yet: made with the first result kept */
} cf = { .fd = -1 };

static void
put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t
get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t
get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* The record of one result (ds_malloc'ed, *LEN bytes). */
static uint8_t *
encode(const char *kind, const uint8_t key[CACHE_KEY_SIZE], const void *result, size_t len,
       uint64_t stored_ms, size_t *out_len)
{
    size_t kind_len = strnlen(kind, 255);
    size_t body = BODY_FIXED + kind_len + len;
    uint8_t *r = ds_malloc(HEAD_LEN + body), *p = r + HEAD_LEN;
    put_u64(p, stored_ms);
    p[8] = (uint8_t)kind_len;
    memcpy(p + 9, kind, kind_len);
    memcpy(p + 9 + kind_len, key, CACHE_KEY_SIZE);
    if (len > 0)
        memcpy(p + 9 + kind_len + CACHE_KEY_SIZE, result, len);
    put_u32(r, journal_crc32c(0, p, body));
    put_u32(r + 4, (uint32_t)body);
    *out_len = HEAD_LEN + body;
    return r;
}

static int
write_all(int fd, const void *p, size_t len)
{
    const uint8_t *b = p;
    while (len > 0) {
        ssize_t n = write(fd, b, len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

static int
read_all(int fd, void *p, size_t len)
{
    uint8_t *b = p;
    while (len > 0) {
        ssize_t n = read(fd, b, len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            return n == 0 ? 0 : -1;
        b += n;
        len -= (size_t)n;
    }
    return 1;
}

struct rewrite {
    int fd;
    int failed;
    uint64_t bytes;
};

static void
rewrite_one(const struct cache_kind *k, const uint8_t key[CACHE_KEY_SIZE], const void *result,
            size_t len, uint64_t stored_ms, void *arg)
{
    struct rewrite *w = arg;
    if (w->failed)
        return;
    size_t n;
    uint8_t *r = encode(result_cache_kind_name(k), key, result, len, stored_ms, &n);
    if (write_all(w->fd, r, n) == -1)
        w->failed = 1;
    w->bytes += n;
    free(r);
}

/* The file anew from what the cache holds; then appended to. */
static void
rewrite(void)
{
    if (cf.fd != -1)
        close(cf.fd);
    cf.fd = -1;
    size_t n = strlen(cf.path);
    char *tmp = ds_malloc(n + 5);
    memcpy(tmp, cf.path, n);
    memcpy(tmp + n, ".new", 5);
    struct rewrite w = { .fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) };
    if (w.fd == -1) {
        log_syswarn("cache: open(\"%s\") failed; results are not kept for the next start", tmp);
        free(tmp);
        return;
    }
    if (write_all(w.fd, MAGIC, MAGIC_LEN) == -1)
        w.failed = 1;
    w.bytes = MAGIC_LEN;
    result_cache_for_each(rewrite_one, &w);
    if (w.failed || rename(tmp, cf.path) == -1) {
        log_syswarn("cache: writing \"%s\" failed; results are not kept for the next start", tmp);
        close(w.fd);
        unlink(tmp);
        free(tmp);
        return;
    }
    free(tmp);
    close(w.fd);
    cf.fd = open(cf.path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (cf.fd == -1)
        log_syswarn("cache: open(\"%s\") failed; results are not kept for the next start",
                    cf.path);
    cf.file_bytes = w.bytes;
}

/* Records into the cache until the end or the first that does not check. */
static void
load(int fd)
{
    char magic[MAGIC_LEN];
    if (read_all(fd, magic, MAGIC_LEN) != 1 || memcmp(magic, MAGIC, MAGIC_LEN) != 0) {
        log_warn("cache: %s does not start with " MAGIC "; it is not read (and is replaced)",
                 cf.path);
        return;
    }
    uint64_t offset = MAGIC_LEN, loaded = 0, skipped = 0;
    uint8_t head[HEAD_LEN], *body = NULL;
    int rc;
    while ((rc = read_all(fd, head, HEAD_LEN)) == 1) {
        uint32_t len = get_u32(head + 4);
        const char *bad = NULL;
        if (len < BODY_FIXED || len > BODY_MAX) {
            bad = "a record length out of range";
        } else {
            body = ds_realloc(body, len);
            if (read_all(fd, body, len) != 1)
                bad = "a record cut short";
            else if (journal_crc32c(0, body, len) != get_u32(head))
                bad = "a record whose checksum does not match";
            else if (BODY_FIXED + (size_t)body[8] > len)
                bad = "a record whose kind is longer than it";
        }
        if (bad != NULL) {
            log_warn("cache: %s: %s at offset %llu; the %llu results before it are kept, the "
                     "rest of the file is skipped", cf.path, bad, (unsigned long long)offset,
                     (unsigned long long)loaded);
            break;
        }
        size_t kind_len = body[8];
        char kind[256];
        memcpy(kind, body + 9, kind_len);
        kind[kind_len] = '\0';
        struct cache_kind *k = result_cache_kind(metrics_kind(kind)->kind);
        const uint8_t *key = body + 9 + kind_len;
        if (k != NULL && result_cache_put(k, key, key + CACHE_KEY_SIZE,
                                          len - BODY_FIXED - kind_len, get_u64(body)) == 0)
            loaded++;
        else
            skipped++;
        offset += HEAD_LEN + len;
    }
    if (rc == 0 && offset < (uint64_t)lseek(fd, 0, SEEK_CUR))
        log_warn("cache: %s ends with a record cut short at offset %llu; skipped", cf.path,
                 (unsigned long long)offset);
    free(body);
    log_info("cache: %llu results read back from %s (%llu expired, evicted or of kinds not "
             "cached now)", (unsigned long long)loaded, cf.path, (unsigned long long)skipped);
}

static void
file_start(void)
{
    const char *dir = gp.config->queue.journal;
    size_t n = strlen(dir);
    cf.path = ds_malloc(n + sizeof "/result-cache");
    memcpy(cf.path, dir, n);
    memcpy(cf.path + n, "/result-cache", sizeof "/result-cache");
    /* O_NONBLOCK: a FIFO there would block the open, and with it the start. */
    int fd = open(cf.path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd == -1 && errno == ENOENT) {
        cf.absent = 1;          /* a journal without a cached kind gets no file */
        return;
    }
    struct stat sb;
    if ((fd == -1 && errno == ENXIO) ||         /* a socket */
        (fd != -1 && (fstat(fd, &sb) == -1 || !S_ISREG(sb.st_mode)))) {
        /* Not ours to replace (a directory, a FIFO, ...): left as it is,
         * and the cache is this process's only. */
        log_warn("cache: %s is not a regular file; no result is read back from it or kept "
                 "there for the next start", cf.path);
        if (fd != -1)
            close(fd);
        return;
    }
    if (fd != -1) {
        load(fd);
        close(fd);
    } else {
        log_syswarn("cache: open(\"%s\") failed; no result is read back", cf.path);
    }
    rewrite();
}

static void
file_stored(const char *kind, const uint8_t key[CACHE_KEY_SIZE], const void *result, size_t len,
            uint64_t stored_ms, uint64_t ttl_ms)
{
    (void)ttl_ms;
    if (cf.absent) {
        cf.absent = 0;
        rewrite();              /* with this result, already in the cache */
        return;
    }
    if (cf.fd == -1)
        return;
    size_t n;
    uint8_t *r = encode(kind, key, result, len, stored_ms, &n);
    if (write_all(cf.fd, r, n) == -1) {
        log_syswarn("cache: appending to %s failed; results are not kept for the next start "
                    "until it is rewritten", cf.path);
        /* Back to its last whole record: a torn one would hold bytes of a
         * full disk (the journal's records share it) until the next start,
         * and end the reading there with a warning. */
        if (ftruncate(cf.fd, (off_t)cf.file_bytes) == -1)
            log_syswarn("cache: ftruncate(\"%s\") failed", cf.path);
        close(cf.fd);
        cf.fd = -1;
        free(r);
        return;
    }
    free(r);
    cf.file_bytes += n;
    if (cf.file_bytes > 2 * result_cache_bytes() + SLACK)
        rewrite();
}

static void
file_configure(void)
{
    if (cf.path != NULL && cf.file_bytes > 2 * result_cache_bytes() + SLACK)
        rewrite();
}

static void
file_shutdown(void)
{
    if (cf.fd != -1)
        close(cf.fd);
    cf.fd = -1;
    free(cf.path);
    cf.path = NULL;
}

const struct cache_backing cache_file = {
    .name = "journal",
    .start = file_start,
    .stored = file_stored,
    .configure = file_configure,
    .shutdown = file_shutdown,
};
