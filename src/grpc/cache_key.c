/*
 * The result cache's key (cache_key.h has the encoding).
 */
#include "grpc/cache_key.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "core/alloc.h"
#include "core/log.h"

static const char cache_key_version[] = "ds-cache-1";

static void
put_bytes(EVP_MD_CTX *md, const void *p, size_t len)
{
    uint8_t prefix[8];
    uint64_t n = len;
    for (int i = 7; i >= 0; i--, n >>= 8)
        prefix[i] = (uint8_t)n;
    EVP_DigestUpdate(md, prefix, sizeof prefix);
    if (len > 0)
        EVP_DigestUpdate(md, p, len);
}

static void
put_str(EVP_MD_CTX *md, const char *s)
{
    put_bytes(md, s, s != NULL ? strlen(s) : 0);
}

static EVP_MD_CTX *
begin(void)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        fatal(EXIT_FAILURE, "EVP_DigestInit_ex(sha256) failed");
    put_str(md, cache_key_version);
    return md;
}

static void
end(EVP_MD_CTX *md, uint8_t out[CACHE_KEY_SIZE])
{
    unsigned len = 0;
    if (EVP_DigestFinal_ex(md, out, &len) != 1 || len != CACHE_KEY_SIZE)
        fatal(EXIT_FAILURE, "EVP_DigestFinal_ex(sha256) failed");
    EVP_MD_CTX_free(md);
}

static void
put_u64(EVP_MD_CTX *md, uint64_t v)
{
    uint8_t b[8];
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (uint8_t)v;
    EVP_DigestUpdate(md, b, sizeof b);
}

void
cache_key_handler(const struct ds_handler_config *h, uint8_t digest[CACHE_KEY_SIZE])
{
    EVP_MD_CTX *md = begin();
    put_u64(md, (uint64_t)h->type);
    put_u64(md, h->argc);
    for (size_t i = 0; i < h->argc; i++)
        put_str(md, h->argv[i]);
    put_u64(md, h->env_count);
    for (size_t i = 0; i < h->env_count; i++) {
        put_str(md, h->env[i].name);
        put_str(md, h->env[i].value);
    }
    put_str(md, h->module_path);
    put_u64(md, h->option_count);
    for (size_t i = 0; i < h->option_count; i++) {
        put_str(md, h->options[i].name);
        put_str(md, h->options[i].value);
    }
    end(md, digest);
}

struct param_ref {
    const char *key;
    const char *value;
    size_t index;
};

/* By key bytes, then the order they came in (the first of equal keys is
 * the one a built-in reads). */
static int
compare_params(const void *a, const void *b)
{
    const struct param_ref *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    if (c != 0)
        return c;
    return x->index < y->index ? -1 : x->index > y->index;
}

void
cache_key_item(const char *kind, const uint8_t handler_digest[CACHE_KEY_SIZE],
               const wire_work_item *item, uint8_t key[CACHE_KEY_SIZE])
{
    EVP_MD_CTX *md = begin();
    put_str(md, kind);
    EVP_DigestUpdate(md, handler_digest, CACHE_KEY_SIZE);
    put_bytes(md, item->payload.data, item->payload.len);
    size_t n = item->n_params;
    put_u64(md, n);
    if (n > 0) {
        struct param_ref *refs = ds_malloc(n * sizeof *refs);
        for (size_t i = 0; i < n; i++)
            refs[i] = (struct param_ref){ .key = item->params[i]->key,
                                          .value = item->params[i]->value, .index = i };
        qsort(refs, n, sizeof *refs, compare_params);
        for (size_t i = 0; i < n; i++) {
            put_str(md, refs[i].key);
            put_str(md, refs[i].value);
        }
        free(refs);
    }
    end(md, key);
}

void
cache_key_hex(const uint8_t key[CACHE_KEY_SIZE], char *hex)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < CACHE_KEY_SIZE; i++) {
        hex[2 * i] = digits[key[i] >> 4];
        hex[2 * i + 1] = digits[key[i] & 15];
    }
    hex[2 * CACHE_KEY_SIZE] = '\0';
}
