/* hiredis's reply objects from a pool (redis_reply.h). */
#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "grpc/redis_reply.h"

#define REPLY_BLOCK (64u * 1024)    /* a block's bytes, header included */

/*
 * A block of one reply. The reply's first block starts with its root
 * redisReply (so hiredis's free of the root finds the block), and holds
 * in `last` the block that objects are being taken from. A block bigger
 * than REPLY_BLOCK (a string that would not fit) is never kept.
 */
struct reply_block {
    struct reply_block *next;
    struct reply_block *last;   /* in a reply's first block */
    struct reply_pool *pool;
    size_t used, cap;           /* bytes of data */
    alignas(max_align_t) unsigned char data[];
};

#define ALIGN(n) (((n) + 7) & ~(size_t)7)

static struct reply_block *
block_new(struct reply_pool *pool, size_t need)
{
    struct reply_block *b;
    size_t cap = REPLY_BLOCK - offsetof(struct reply_block, data);
    if (need <= cap && pool->free != NULL) {
        b = pool->free;
        pool->free = b->next;
        pool->free_n--;
    } else {
        if (need > cap)
            cap = need;
        b = malloc(offsetof(struct reply_block, data) + cap);
        if (b == NULL)
            return NULL;
        b->cap = cap;
    }
    b->next = NULL;
    b->last = b;
    b->pool = pool;
    b->used = 0;
    return b;
}

/* SIZE zeroed bytes of the reply being read by TASK's reader, or the
 * first of a new reply (its root object) if ROOT. NULL: out of memory
 * (hiredis reports it). */
static void *
take(const redisReadTask *task, size_t size, int root)
{
    struct reply_pool *pool = task->privdata;
    size = ALIGN(size);
    if (root) {
        struct reply_block *b = block_new(pool, size);
        if (b == NULL)
            return NULL;
        pool->building = b;
    } else if (pool->building == NULL) {
        return NULL;            /* never: a root comes first */
    }
    struct reply_block *last = pool->building->last;
    if (last->cap - last->used < size) {
        struct reply_block *b = block_new(pool, size);
        if (b == NULL)
            return NULL;
        last->next = b;
        pool->building->last = last = b;
    }
    void *p = last->data + last->used;
    last->used += size;
    memset(p, 0, size);
    return p;
}

/* A new object of TYPE for TASK, linked into its parent array. */
static redisReply *
object(const redisReadTask *task, int type)
{
    redisReply *r = take(task, sizeof *r, task->parent == NULL);
    if (r == NULL)
        return NULL;
    r->type = type;
    if (task->parent != NULL) {
        redisReply *parent = task->parent->obj;
        parent->element[task->idx] = r;
    }
    return r;
}

static void *
create_string(const redisReadTask *task, char *str, size_t len)
{
    redisReply *r = object(task, task->type);
    if (r == NULL)
        return NULL;
    char *s = take(task, len + 1, 0);
    if (s == NULL)
        return NULL;
    memcpy(s, str, len);
    r->str = s;
    r->len = len;
    return r;
}

static void *
create_array(const redisReadTask *task, int elements)
{
    redisReply *r = object(task, REDIS_REPLY_ARRAY);
    if (r == NULL)
        return NULL;
    if (elements > 0) {
        r->element = take(task, (size_t)elements * sizeof r->element[0], 0);
        if (r->element == NULL)
            return NULL;
    }
    r->elements = (size_t)(elements > 0 ? elements : 0);
    return r;
}

static void *
create_integer(const redisReadTask *task, long long value)
{
    redisReply *r = object(task, REDIS_REPLY_INTEGER);
    if (r != NULL)
        r->integer = value;
    return r;
}

static void *
create_nil(const redisReadTask *task)
{
    return object(task, REDIS_REPLY_NIL);
}

/* hiredis frees only a root: its blocks go back to the pool (up to
 * REDIS_REPLY_KEEP of them), the rest to the system. */
static void
free_object(void *obj)
{
    if (obj == NULL)
        return;
    struct reply_block *b = (struct reply_block *)((unsigned char *)obj -
                                                   offsetof(struct reply_block, data));
    struct reply_pool *pool = b->pool;
    if (pool->building == b)
        pool->building = NULL;
    while (b != NULL) {
        struct reply_block *next = b->next;
        if (b->cap == REPLY_BLOCK - offsetof(struct reply_block, data) &&
            pool->free_n < REDIS_REPLY_KEEP / REPLY_BLOCK) {
            b->next = pool->free;
            pool->free = b;
            pool->free_n++;
        } else {
            free(b);
        }
        b = next;
    }
}

static redisReplyObjectFunctions functions = {
    create_string, create_array, create_integer, create_nil, free_object,
};

void
redis_reply_install(redisReader *reader, struct reply_pool *pool)
{
    reader->fn = &functions;
    reader->privdata = pool;
}

void
redis_reply_pool_free(struct reply_pool *pool)
{
    while (pool->free != NULL) {
        struct reply_block *b = pool->free;
        pool->free = b->next;
        free(b);
    }
    pool->free_n = 0;
    pool->building = NULL;
}

int
redis_reply_u64(const redisReply *r, size_t max_digits, uint64_t *out)
{
    if (max_digits > 19)
        max_digits = 19;
    if (r == NULL || r->type != REDIS_REPLY_STRING || r->len == 0 || r->len > max_digits)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < r->len; i++) {
        if (r->str[i] < '0' || r->str[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(r->str[i] - '0');
    }
    *out = v;
    return 0;
}
