/*
 * The reasons of an item's failed attempts (attempts.h). Few items are
 * retrying at once, so a list; item_free() asks every freed item's key to
 * be forgotten, which costs one test while the list is empty.
 */
#include "grpc/attempts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

struct history {
    struct history *next;
    uint64_t key;
    size_t len;
    int full;
    char text[ATTEMPTS_TEXT_MAX + 8];
};

static struct history *histories;

static struct history *
find(uint64_t key, struct history ***where)
{
    struct history **pp = &histories;
    while (*pp != NULL && (*pp)->key != key)
        pp = &(*pp)->next;
    if (where != NULL)
        *where = pp;
    return *pp;
}

void
attempts_note(uint64_t key, uint32_t attempt, const char *reason)
{
    struct history *h = find(key, NULL);
    if (h == NULL) {
        h = ds_calloc(1, sizeof *h);
        h->key = key;
        h->next = histories;
        histories = h;
    }
    if (h->full)
        return;
    char line[600];
    int n = snprintf(line, sizeof line, "%sattempt %u: %s", h->len > 0 ? "; " : "", attempt,
                     reason != NULL && reason[0] != '\0' ? reason : "failed");
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line)
        n = sizeof line - 1;
    if (h->len + (size_t)n > ATTEMPTS_TEXT_MAX) {
        memcpy(h->text + h->len, "; ...", 6);
        h->len += 5;
        h->full = 1;
        return;
    }
    memcpy(h->text + h->len, line, (size_t)n + 1);
    h->len += (size_t)n;
}

const char *
attempts_of(uint64_t key)
{
    struct history *h = find(key, NULL);
    return h != NULL ? h->text : NULL;
}

void
attempts_forget(uint64_t key)
{
    if (histories == NULL)
        return;
    struct history **pp;
    struct history *h = find(key, &pp);
    if (h == NULL)
        return;
    *pp = h->next;
    free(h);
}
