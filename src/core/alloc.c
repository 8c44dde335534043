#include "core/alloc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void
out_of_memory(size_t size)
{
    /* No allocation, no stdio buffering: this must work with no memory. */
    char msg[96];
    int n = snprintf(msg, sizeof msg, "dosomethingd: out of memory (%zu bytes)\n", size);
    if (n > 0)
        (void)!write(2, msg, (size_t)n);
    abort();
}

void *
ds_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (p == NULL)
        out_of_memory(size);
    return p;
}

void *
ds_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (p == NULL)
        out_of_memory(count * size);
    return p;
}

void *
ds_realloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size ? size : 1);
    if (p == NULL)
        out_of_memory(size);
    return p;
}

char *
ds_strdup(const char *s)
{
    return ds_strndup(s, strlen(s));
}

char *
ds_strndup(const char *s, size_t n)
{
    char *p = ds_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/*
 * The pool is a list of blocks; a large request gets a block of its own.
 * Alignment is that of max_align_t.
 */
#define POOL_BLOCK_SIZE 4096

struct pool_block {
    struct pool_block *next;
    size_t used;
    size_t size;
    _Alignas(max_align_t) unsigned char data[];
};

struct ds_pool {
    struct pool_block *blocks;
};

struct ds_pool *
pool_create(void)
{
    return ds_calloc(1, sizeof(struct ds_pool));
}

void
pool_destroy(struct ds_pool *pool)
{
    if (pool == NULL)
        return;
    struct pool_block *b = pool->blocks;
    while (b != NULL) {
        struct pool_block *next = b->next;
        free(b);
        b = next;
    }
    free(pool);
}

void *
pool_alloc(struct ds_pool *pool, size_t size)
{
    const size_t align = _Alignof(max_align_t);
    size = (size + align - 1) & ~(align - 1);
    if (size == 0)
        size = align;

    struct pool_block *b = pool->blocks;
    if (b == NULL || b->size - b->used < size) {
        size_t block = size > POOL_BLOCK_SIZE / 4 ? size : POOL_BLOCK_SIZE;
        struct pool_block *nb = ds_malloc(sizeof *nb + block);
        nb->used = 0;
        nb->size = block;
        if (b != NULL && block == size) {
            /* A large allocation: keep filling the current block. */
            nb->next = b->next;
            b->next = nb;
        } else {
            nb->next = b;
            pool->blocks = nb;
        }
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += size;
    memset(p, 0, size);
    return p;
}

char *
pool_strndup(struct ds_pool *pool, const char *s, size_t n)
{
    char *p = pool_alloc(pool, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *
pool_strdup(struct ds_pool *pool, const char *s)
{
    return s == NULL ? NULL : pool_strndup(pool, s, strlen(s));
}
