/*
 * The id multiset behind --wait.
 */
#include "cli/idset.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

/* FNV-1a: ids are short, and this is not exposed to anyone hostile. */
static uint64_t
hash(const char *s)
{
    uint64_t h = 14695981039346656037ull;
    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static struct idset_entry *
find(const struct idset *set, const char *id)
{
    if (set->size == 0)
        return NULL;
    size_t mask = set->size - 1;
    for (size_t i = hash(id) & mask;; i = (i + 1) & mask) {
        struct idset_entry *e = &set->slots[i];
        if (e->id == NULL || strcmp(e->id, id) == 0)
            return e;
    }
}

static void
grow(struct idset *set)
{
    struct idset old = *set;

    set->size = old.size ? old.size * 2 : 1024;
    set->slots = ds_calloc(set->size, sizeof *set->slots);
    for (size_t i = 0; i < old.size; i++) {
        if (old.slots[i].id != NULL)
            *find(set, old.slots[i].id) = old.slots[i];
    }
    free(old.slots);
}

void
idset_add(struct idset *set, const char *id)
{
    if ((set->used + 1) * 2 > set->size)
        grow(set);
    struct idset_entry *e = find(set, id);
    if (e->id == NULL) {
        e->id = ds_strdup(id);
        set->used++;
    }
    e->count++;
}

int
idset_take(struct idset *set, const char *id)
{
    struct idset_entry *e = find(set, id);
    if (e == NULL || e->id == NULL || e->count == 0)
        return 0;
    e->count--;
    return 1;
}

void
idset_free(struct idset *set)
{
    for (size_t i = 0; i < set->size; i++)
        free(set->slots[i].id);
    free(set->slots);
    memset(set, 0, sizeof *set);
}
