/*
 * A multiset of item ids: how many sent items with each id still owe a
 * final update. Open addressing; entries are never removed, only counted
 * down, so a probe never meets a hole.
 */
#ifndef DS_CLI_IDSET_H
#define DS_CLI_IDSET_H

#include <stddef.h>
#include <stdint.h>

struct idset_entry {
    char *id;                 /* NULL: a free slot */
    uint32_t count;
};

struct idset {
    struct idset_entry *slots;
    size_t size;              /* a power of two */
    size_t used;
};

void idset_add(struct idset *set, const char *id);
/* Count one down; returns 1 if there was one to count, else 0. */
int idset_take(struct idset *set, const char *id);
void idset_free(struct idset *set);

#endif
