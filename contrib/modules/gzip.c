/*
 * gzip.so: an example dosomethingd handler module, and a useful one.
 *
 *   handlers:
 *     gzip:   {module: /usr/local/lib/dosomething/modules/gzip.so, options: {level: 9}}
 *     gunzip: {module: /usr/local/lib/dosomething/modules/gzip.so,
 *              options: {mode: decompress}}
 *
 * options (from the config, checked once per worker by init):
 *   mode    compress (default) | decompress
 *   level   0..9, default 6 (compress only)
 * params (per item):
 *   level   0..9, overrides the option for this item (compress only)
 *
 * compress: result = the payload as a gzip file (RFC 1952).
 * decompress: result = the payload's gzip (or zlib) data inflated; never more
 * than the daemon's result limit (a small bomb cannot grow a large buffer).
 * Progress is reported after every 256 KiB of input.
 *
 * Build outside the tree, against an installed dosomethingd:
 *   cc -O2 -shared -fPIC $(pkg-config --cflags dosomething) -o gzip.so gzip.c -lz
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include <dosomething/handler.h>

#define GZ_CHUNK        (256u * 1024)  /* input per deflate/inflate call, and per progress report */
#define GZ_OUT_MIN      (16u * 1024)

struct gz_state {
    int decompress;
    int level;
};

static int
parse_level(const char *text, int *level)
{
    if (text[0] < '0' || text[0] > '9' || text[1] != '\0')
        return -1;
    *level = text[0] - '0';
    return 0;
}

static int
gz_init(const struct ds_module_option *options, size_t count, void **state, char *err,
        size_t err_size)
{
    struct gz_state *s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    s->level = 6;
    for (size_t i = 0; i < count; i++) {
        const char *name = options[i].name, *value = options[i].value;
        if (strcmp(name, "level") == 0 && parse_level(value, &s->level) == 0)
            continue;
        if (strcmp(name, "mode") == 0 && strcmp(value, "compress") == 0) {
            s->decompress = 0;
            continue;
        }
        if (strcmp(name, "mode") == 0 && strcmp(value, "decompress") == 0) {
            s->decompress = 1;
            continue;
        }
        if (strcmp(name, "level") == 0 || strcmp(name, "mode") == 0)
            snprintf(err, err_size, "option %s: %s is not %s", name, value,
                     name[0] == 'l' ? "a level 0..9" : "compress or decompress");
        else
            snprintf(err, err_size, "unknown option %s (there are mode and level)", name);
        free(s);
        return -1;
    }
    *state = s;
    return 0;
}

static void
gz_fini(void *state)
{
    free(state);
}

/* Room for at least one more byte in *buf, growing it up to limit + 1
 * bytes: one past the limit is how we learn that it is exceeded. */
static int
grow(uint8_t **buf, size_t *cap, size_t limit)
{
    size_t want = *cap < GZ_OUT_MIN ? GZ_OUT_MIN : *cap * 2;
    if (want > limit + 1 || want < *cap)
        want = limit + 1;
    uint8_t *p = realloc(*buf, want);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = want;
    return 0;
}

static int
gz_process(void *state, const struct ds_module_item *item, struct ds_module_result *out,
           const struct ds_module_host *host)
{
    const struct gz_state *s = state;
    int level = s->level;

    for (size_t i = 0; i < item->param_count; i++) {
        const char *key = item->params[i].key, *value = item->params[i].value;
        if (strcmp(key, "level") == 0 && !s->decompress && parse_level(value, &level) == 0)
            continue;
        snprintf(out->error, out->error_size, "param %s=%s: %s", key, value,
                 strcmp(key, "level") != 0 ? "unknown (the one param is level)"
                 : s->decompress ? "only for compression" : "must be 0..9");
        return -1;
    }

    z_stream z;
    memset(&z, 0, sizeof z);
    /* windowBits 15 + 16: write a gzip wrapper; 15 + 32: read gzip or zlib. */
    int r = s->decompress ? inflateInit2(&z, 15 + 32)
                          : deflateInit2(&z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    if (r != Z_OK) {
        snprintf(out->error, out->error_size, "zlib: %s", zError(r));
        return -1;
    }

    uint8_t *buf = NULL;
    size_t cap = 0, len = 0, fed = 0, total = item->payload_len;
    const char *error = NULL;
    for (;;) {
        if (z.avail_in == 0 && fed < total) {
            if (fed > 0)
                host->progress(host, (float)fed / (float)total);
            size_t n = total - fed < GZ_CHUNK ? total - fed : GZ_CHUNK;
            z.next_in = (Bytef *)item->payload + fed;
            z.avail_in = (uInt)n;
            fed += n;
        }
        if (len == cap && grow(&buf, &cap, host->result_max) == -1) {
            error = "out of memory";
            break;
        }
        size_t room = cap - len > UINT_MAX ? UINT_MAX : cap - len;
        z.next_out = buf + len;
        z.avail_out = (uInt)room;
        r = s->decompress ? inflate(&z, Z_NO_FLUSH)
                          : deflate(&z, fed == total ? Z_FINISH : Z_NO_FLUSH);
        len += room - z.avail_out;
        if (len > host->result_max) {
            snprintf(out->error, out->error_size, "output exceeds %zu bytes", host->result_max);
            error = out->error;
            break;
        }
        if (r == Z_STREAM_END && s->decompress && (z.avail_in > 0 || fed < total)) {
            inflateReset(&z);           /* another gzip member follows, as gzip -d allows */
            continue;
        }
        if (r == Z_STREAM_END)
            break;
        if (s->decompress && r == Z_BUF_ERROR && z.avail_out > 0 && z.avail_in == 0 &&
            fed == total) {
            error = "truncated input: the compressed data ends early";
            break;
        }
        if (r != Z_OK && r != Z_BUF_ERROR) {
            snprintf(out->error, out->error_size, "%s%s", s->decompress ? "not gzip data: " : "",
                     z.msg != NULL ? z.msg : zError(r));
            error = out->error;
            break;
        }
    }
    if (s->decompress)
        inflateEnd(&z);
    else
        deflateEnd(&z);

    if (error != NULL) {
        if (error != out->error)
            snprintf(out->error, out->error_size, "%s", error);
        free(buf);
        return -1;
    }
    out->data = buf;
    out->len = len;
    out->release = free;                /* the host copies the bytes, then frees them */
    return 0;
}

const struct ds_module dosomething_module = {
    .abi_version = DS_HANDLER_ABI_VERSION,
    .flags = 0,
    .name = "gzip",
    .init = gz_init,
    .process = gz_process,
    .fini = gz_fini,
};
