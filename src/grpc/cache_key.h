/*
 * cache_key.c: the key of an item in the result cache (result_cache.h),
 * a SHA-256 over an unambiguous encoding of what decides its result.
 *
 *   key = SHA-256( "ds-cache-1"
 *                  | str(kind) | handler digest (32 bytes)
 *                  | bytes(payload)
 *                  | u32 count | for each param, sorted by key (bytes,
 *                    stable: equal keys keep the order they came in):
 *                    str(key) str(value) )
 *
 * where str() and bytes() are a u64 big-endian length and the bytes, so
 * no two different items encode alike. The handler digest covers what the
 * operator configured to compute the kind (builtin, exec argv and env,
 * module path and options): a reload that changes how a kind is computed
 * makes new keys, and no result of the old definition is served.
 * Nothing else of an item (id, batch, priority, delay, timeout,
 * max_attempts) is part of its key.
 */
#ifndef DS_GRPC_CACHE_KEY_H
#define DS_GRPC_CACHE_KEY_H

#include <stdint.h>

#include "core/config.h"
#include "core/wire.h"

#define CACHE_KEY_SIZE 32

/* HANDLER's definition, digested into DIGEST. */
void cache_key_handler(const struct ds_handler_config *handler,
                       uint8_t digest[CACHE_KEY_SIZE]);
/* The key of ITEM (of KIND, whose handler has HANDLER_DIGEST) into KEY. */
void cache_key_item(const char *kind, const uint8_t handler_digest[CACHE_KEY_SIZE],
                    const wire_work_item *item, uint8_t key[CACHE_KEY_SIZE]);
/* KEY in lower-case hex into HEX (2 * CACHE_KEY_SIZE + 1 bytes). */
void cache_key_hex(const uint8_t key[CACHE_KEY_SIZE], char *hex);

#endif
