/*
 * cache_file.c: the result cache's backing with queue.journal: DIR/result-cache.
 *
 * An append-only file: the 8 bytes "DSCACHE1", then one record per result
 * kept: crc32c u32 | length u32 (of the body) | body: stored_ms u64 |
 * kind length u8 | kind | key (32 bytes) | result. Read back at start
 * (before the journal's items are recovered) into result_cache.c: records
 * of kinds not cached now, and expired ones, are skipped; the kind's size
 * applies as they load. A record that does not check (a torn write, a
 * corrupt file) ends the reading with a warning: what came before it is
 * kept, and the start goes on (a path that is not a regular file is
 * left alone: nothing is read or kept there). The file is then rewritten
 * with what was loaded, and again whenever it has grown past twice what
 * the cache holds (plus 1 MiB), so it stays bounded. An append that fails
 * is taken back to the last whole record. Not fsynced: a crash may lose
 * the last results, never an item.
 */
#ifndef DS_GRPC_CACHE_FILE_H
#define DS_GRPC_CACHE_FILE_H

#include "grpc/cache_backing.h"

extern const struct cache_backing cache_file;

#endif
