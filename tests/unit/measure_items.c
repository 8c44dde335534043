/*
 * Not a test (make unit does not run it): the memory of a retained final
 * item in the index of known items (src/grpc/items.c), beyond its id and
 * result. Feeds 1M SUCCEEDED items with 16-byte ids and no result, as
 * store.c does, and prints the growth of RSS (and of malloc's arena) per
 * item. Build and run: make build/tests/measure_items && build/tests/measure_items
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/wire.h"
#include "grpc/item.h"
#include "grpc/items.h"

#define COUNT 1000000

static long
rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0)
            kib = atol(line + 6);
    if (f != NULL)
        fclose(f);
    return kib;
}

int
main(void)
{
    log_open("stderr", DS_LOG_ERROR);
    items_init(NULL);
    items_configure(24ull * 3600 * 1000, COUNT, 1ull << 40);
    /* One item struct reused: only the index grows. */
    struct item *item = item_make((const uint8_t *)"", 0, "0000000000000000", "", "echo", 1, 0, 0);
    struct outcome queued = { .state = STATE_QUEUED }, done = { .state = STATE_SUCCEEDED };
    struct mallinfo2 m0 = mallinfo2();
    long r0 = rss_kib();
    char *id = (char *)item->id;
    for (unsigned i = 0; i < COUNT; i++) {
        snprintf(id, 17, "%016x", i);
        items_accepting(item);
        items_updated(item, &queued, 2 * (uint64_t)i + 1);
        items_updated(item, &done, 2 * (uint64_t)i + 2);
    }
    struct mallinfo2 m1 = mallinfo2();
    long r1 = rss_kib();
    printf("%llu finals: RSS +%.1f B/item, malloc'd +%.1f B/item (id 16 B + the NULs of id, "
           "batch, traceparent and tracestate included), counted by items.retention.bytes: "
           "%.1f B/item; struct known_item %zu B\n",
           (unsigned long long)items_stats()->by_state[STATE_SUCCEEDED], (r1 - r0) * 1024.0 / COUNT,
           (double)(m1.uordblks + m1.hblkhd - m0.uordblks - m0.hblkhd) / COUNT,
           (double)items_stats()->retained_bytes / COUNT, sizeof(struct known_item));
    item_free(item);
    items_shutdown();
    return 0;
}
