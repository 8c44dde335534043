/*
 * Cluster mode (cluster: {redis: URL, name: NAME}): the queue and the update
 * log of every instance live in Redis Streams, so instances on several
 * machines act as one service. docs/scaling.md has the whole story; the
 * contract in brief:
 *
 * - {NAME}:work is the queue: one entry per item not final yet, with IDs
 *   0-1, 0-2, ... (the item's key). Instances read it through the consumer
 *   group "dosomethingd", each only as much as its workers have room for.
 *   An item counts as accepted once a script has added its entry and its
 *   QUEUED update; its final update, XACK and XDEL happen in one script.
 * - {NAME}:updates is the update log: entry 0-LAST holds the Updates one
 *   script wrote, the last with seq LAST (counted by {NAME}:seq), the
 *   others counting down (layout 3, {NAME}:layout; cluster.c's LUA_BATCH),
 *   trimmed by seq to about updates.history. Every instance reads all of
 *   it and serves its subscribers from it: one order, replay from any
 *   instance.
 * - The attempt of an item is its entry's delivery count. A script
 *   publishes an item's update only while the entry is still pending at
 *   this instance with that count, so an update of a superseded attempt is
 *   dropped cluster-wide.
 * - An instance renews the items it holds every lease/3; an entry nobody
 *   renewed for cluster.lease is claimed by another instance (RETRYING,
 *   attempt + 1, FAILED past max_attempts).
 * - Every known item has a hash {NAME}:item:ID, written by the scripts
 *   that publish its updates, and a place in {NAME}:items (the listing);
 *   finals are trimmed by items.retention ({NAME}:finals). A known id is a
 *   duplicate. getItems, cancel and retry read and write them
 *   (cluster_items.c); a cancel for an item an instance holds goes to it
 *   through {NAME}:control, which every instance reads with the updates.
 * - Redis unreachable: doSomething fails with UNAVAILABLE, health says
 *   NOT_SERVING, the connections come back with backoff; nothing is queued
 *   locally.
 *
 * - cluster.redis may name sentinels (sentinel://...): sentinel.c finds the
 *   master and follows failovers; the session checks ROLE on connecting
 *   and every second. cluster.min_replicas_ack: cluster_ack.c holds the
 *   ACCEPTED verdicts until WAIT says the replicas have the items.
 *
 * Everything runs on the loop thread over hiredis's libevent adapter: no
 * call blocks (host names are resolved by resolve.c, with evdns).
 */
#ifndef DS_GRPC_CLUSTER_H
#define DS_GRPC_CLUSTER_H

#include "grpc/store.h"

/* The consumer group every instance reads {NAME}:work through. */
#define CLUSTER_GROUP "dosomethingd"

/* The backend (cluster:). */
extern const struct store_backend store_redis;

/* ---- for cluster_items.c: the session's command connection ------------------ */

struct redis_args;
struct redisAsyncContext;

/* Send A on the command connection (in order with the item scripts); FN
 * hears the reply (NULL if the session went first). -1: not sent (the
 * session is down: cluster_why() says why), FN will not run. */
int cluster_send(struct redis_args *a, void (*fn)(struct redisAsyncContext *, void *, void *),
                 void *arg);
/* Cancel item ID (of KIND and BATCH, its work entry 0-KEY, at ATTEMPT)
 * for REASON: the cancel script; FN hears 'c' (cancelled now), 'a' (its
 * holder is asked), 'f' (final) or 'n' (not known). */
int cluster_cancel_item(const char *id, const char *kind, const char *batch, uint64_t key,
                        uint32_t attempt, const char *reason,
                        void (*fn)(struct redisAsyncContext *, void *, void *), void *arg);
/* Queue ITEM (a retry of a FAILED or CANCELLED item; still the caller's)
 * again: the retry script; FN hears its seq, 0 (not retryable) or -1 (not
 * known). */
int cluster_requeue_item(const struct item *item,
                         void (*fn)(struct redisAsyncContext *, void *, void *), void *arg);
/* The key of an item whose entry has ID S (LEN bytes): "0-N" in {NAME}:work
 * or "1-N" in {NAME}:pwork (a prioritized item, taken); 0 if it is
 * neither. */
uint64_t cluster_entry_key(const char *s, size_t len);
/* Why the cluster cannot serve now. */
const char *cluster_why(void);

/* The cluster settings this process runs with (cluster.c's; static). */
struct cluster_settings {
    char name[65];                      /* cluster.name: 1..64 characters */
    size_t sentinel_count;
    uint64_t lease_ms;
    uint32_t min_replicas_ack;
    uint64_t replicas_ack_timeout_ms;
};
const struct cluster_settings *cluster_settings(void);
/* {NAME}:items, {NAME}:finals, {NAME}:finals_bytes, {NAME}:work, the
 * prefix of the item hashes, {NAME}:item:, and {NAME}:latest */
const char *cluster_key_items(void);
const char *cluster_key_work(void);
const char *cluster_item_prefix(void);
const char *cluster_key_latest(void);
/* Start A as the lookup script's call (getItems, cancel, retry by id) for
 * item ID, whose hash is HASH_KEY: the caller adds the names of the
 * fields it wants, and hears their values as an HMGET would give them,
 * those of the latest update taken from {NAME}:latest (CLUSTER_LUA_FIELDS). */
void cluster_lookup_start(struct redis_args *a, const char *hash_key, const char *id);

/*
 * Layout 4: an item's latest update since it was queued is not in its
 * hash but in the hash {NAME}:latest, field the item's id, value
 * "S Q T N TS U": its state, that update's seq, when it ended (unix ms; 0
 * unless final), its retained bytes (0 unless final), when its attempt
 * started (unix ns; empty if not known), a space, then the Update encoded
 * without its seq. An item without one is QUEUED (its hash's s and q),
 * or was written by layout 3 (its hash's s, q, t, n, ts and u).
 * Kept apart because an update with its result is longer than Redis's
 * hash-max-listpack-value (64 B): written into the item's hash it turned
 * the hash into a hash table, most of the cost of a final in Redis.
 * CLUSTER_LUA_LATEST defines, for the scripts of cluster.c and
 * cluster_items.c, latest(LK, ID, HQ): nil, or ID's {s, q, t, n, ts, u} in
 * {NAME}:latest LK (latest_of(V, HQ): the same of a field V already read).
 * HQ, the q of ID's hash: a field whose seq is not past it is an earlier
 * item's of that id (its hash deleted by hand, and the id accepted again)
 * and is not ID's: nil. An HQ that is not a number (written
 * by hand) is as none: a nil compared would stop every script reading ID.
 */
#define CLUSTER_LUA_LATEST                                                              \
    "local function latest_of(v, hq)\n"                                                 \
    "  if not v then return nil end\n"                                                 \
    "  local _, e, s, q, t, n, ts = string.find(v, '^(%d+) (%d+) (%d+) (%d+) (%d*) ')\n" \
    "  hq = hq and tonumber(hq)\n"                                                     \
    "  if not e or (hq and tonumber(q) <= hq) then return nil end\n"                  \
    "  return {s = s, q = q, t = t, n = n, ts = ts, u = string.sub(v, e + 1)}\n"       \
    "end\n"                                                                             \
    "local function latest(lk, id, hq)\n"                                               \
    "  return latest_of(redis.call('HGET', lk, id), hq)\n"                              \
    "end\n"

/*
 * CLUSTER_LUA_FIELDS defines fields(HK, LK, ID, NAMES): the fields NAMES
 * of ID's hash HK, those of its latest update (s, q, ts, u) taken from
 * {NAME}:latest LK when it has one there, as HMGET gives them: what the
 * readers of cluster_items.c ask for, in either layout. An HK that is no
 * hash (written by hand) gives HMGET's error ({err = ...}) for the caller
 * to skip that item alone: raised, it failed the whole listing.
 */
#define CLUSTER_LUA_FIELDS                                                              \
    CLUSTER_LUA_LATEST                                                                  \
    "local function fields(hk, lk, id, names)\n"                                        \
    "  local f = redis.pcall('HMGET', hk, 'q', unpack(names))\n"                        \
    "  if f.err then return f end\n"                                                    \
    "  local l = latest(lk, id, table.remove(f, 1))\n"                                  \
    "  if not l then return f end\n"                                                    \
    "  for i, name in ipairs(names) do\n"                                               \
    "    if name == 's' then f[i] = l.s\n"                                              \
    "    elseif name == 'q' then f[i] = l.q\n"                                          \
    "    elseif name == 'u' then f[i] = l.u\n"                                          \
    "    elseif name == 'ts' and l.ts ~= '' then f[i] = l.ts end\n"                     \
    "  end\n"                                                                           \
    "  return f\n"                                                                      \
    "end\n"

#endif
