/*
 * Allocation: wrappers that abort on out-of-memory, so NULL checks do not
 * spread through the code, and a pool (arena) whose allocations are all
 * freed at once, used for a whole config generation.
 */
#ifndef DS_CORE_ALLOC_H
#define DS_CORE_ALLOC_H

#include <stddef.h>

void *ds_malloc(size_t size);
void *ds_calloc(size_t count, size_t size);
void *ds_realloc(void *ptr, size_t size);
char *ds_strdup(const char *s);
char *ds_strndup(const char *s, size_t n);

struct ds_pool;

struct ds_pool *pool_create(void);
void pool_destroy(struct ds_pool *pool);
/* Zeroed memory that lives until pool_destroy(). */
void *pool_alloc(struct ds_pool *pool, size_t size);
char *pool_strdup(struct ds_pool *pool, const char *s);
char *pool_strndup(struct ds_pool *pool, const char *s, size_t n);

#endif
