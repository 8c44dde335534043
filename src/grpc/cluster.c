/*
 * Cluster mode: the queue and the update log in Redis Streams (cluster.h
 * has the contract, docs/scaling.md the story).
 *
 * Three connections, all on the loop through hiredis's libevent adapter:
 * `command` carries the scripts (accept, update, renew, claim) and the
 * capacity poll, in order; `work` blocks in XREADGROUP for new items;
 * `updates` blocks in XREAD on the update stream. They live and die
 * together as one session: any of them failing drops all three (every
 * reply still owed arrives as NULL and is handled as "unknown"), and a new
 * session is started with backoff. Items held here are never renewed
 * without a session, so another instance takes them over after the lease.
 *
 * The scripts make every check-and-write atomic: a seq and its update
 * entry, an item's entry and its QUEUED update, an update and the check
 * that the attempt is still this instance's, a final update and the XACK.
 */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/pbwire.h"
#include "core/utf8.h"
#include "core/process.h"
#include "core/trace.h"
#include "grpc/cluster.h"
#include "grpc/cluster_ack.h"
#include "grpc/cluster_items.h"
#include "grpc/grpc_process.h"
#include "grpc/health.h"
#include "grpc/submit.h"
#include "grpc/subscribe.h"
#include "grpc/item.h"
#include "grpc/metrics.h"
#include "grpc/redis_args.h"
#include "grpc/redis_reply.h"
#include "grpc/resolve.h"
#include "grpc/sentinel.h"
#include "grpc/store.h"
#include "grpc/updates.h"

#define CONNECT_TIMEOUT_MS  3000    /* for the three connections and the setup */
#define RESOLVE_TIMEOUT_MS  5000    /* finding the master: a DNS lookup (on top of the sentinels) */
#define PING_EVERY_MS       1000
#define PING_TIMEOUT_MS     3000    /* no answer: the session is dropped */
#define BACKOFF_MIN_MS      100
#define BACKOFF_MAX_MS      5000
#define BLOCK_MS            "1000"  /* XREAD(GROUP) BLOCK: an idle round trip a second */
#define READ_COUNT          100     /* entries per XREAD (an entry: up to 512 updates) */
#define PULL_MAX            1000    /* items per XREADGROUP */
#define CLAIM_COUNT         100     /* entries per claim pass */
#define RENEW_CHUNK         500     /* ids per renew script */
#define POLL_MS             100     /* XLEN while submissions are under way */
#define DUE_COUNT           1000    /* delayed items moved on per due script */
#define PULL_RETRY_MS       1000    /* after a pull script failed (maxmemory, BUSY) */
#define READ_BUF_KEEP       (1u << 20)  /* hiredis's read buffer, kept when empty */
/* Items in one accept script at most, and accept scripts in flight at once
 * before the next batch waits for a reply (it grows meanwhile). */
#define ACCEPT_BATCH_MAX    512
#define ACCEPTS_AHEAD       2
#define UPDATE_BATCH_MAX    512     /* updates in one update script at most */
/* Items with a script in flight (accepts, updates, finals) past which
 * submit.c reads no more items (backpressure): memory stays bounded when
 * Redis is slower than the clients. */
#define INFLIGHT_MAX        8192
/* The due timer never sleeps longer than this: a delayed item whose QUEUED
 * update this instance did not see (read before it started, trimmed) is
 * still moved on in time, give or take this. */
#define DUE_POLL_MS         1000
/* The entries of {NAME}:pwork have IDs 1-N: an item's key is N with this
 * bit set, so that keys stay unique across the two streams. */
#define PWORK_BIT           (UINT64_C(1) << 63)
/* {NAME}:control, the cancel requests to the instances holding items, is
 * trimmed to about this many entries. */
#define CONTROL_MAXLEN      "1000"
#define CONTROL_REASON_MAX  1024    /* bytes of a cancel's reason (cancel.c's bound) */
/* A retry's due time taken over from another instance is at most this far
 * ahead: the longest queue.retry_backoff.max. */
#define RETRY_DUE_MAX_MS    (UINT64_C(24) * 3600 * 1000)
/* {NAME}:want_started lives this long unless the instance with a
 * subscriber that wants STARTED renews it (every PING_EVERY_MS). */
#define WANT_TTL_MS         5000

/*
 * KEYS: work, updates, seq, origin. Every script that publishes an update
 * starts with this: the seq counter, created on first use no lower than
 * the caller's floor (ARGV[1]) nor than the stream's newest entry (a Redis
 * that lost the counter and kept the stream), then the next seq.
 */
#define LUA_NEXT_SEQ                                                                    \
    "if redis.call('EXISTS', KEYS[3]) == 0 then\n"                                      \
    "  local start = tonumber(ARGV[1])\n"                                               \
    "  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)\n"            \
    "  if #top > 0 then\n"                                                              \
    "    local t = tonumber(string.match(top[1][1], '^0%-(%d+)$'))\n"                   \
    "    if t ~= nil and t > start then start = t end\n"                                \
    "  end\n"                                                                           \
    "  redis.call('SET', KEYS[3], string.format('%.0f', start))\n"                      \
    "  redis.call('SET', KEYS[4], string.format('%.0f', start))\n"                      \
    "end\n"                                                                             \
    "local seq = redis.call('INCR', KEYS[3])\n"

/*
 * The update stream keeps about ARGV[2] (updates.history) updates: its
 * entries below minid(SEQ) go (MINID ~: whole nodes at a time), SEQ the
 * newest. By seq, not by entries, since an entry may hold many updates
 * (LUA_BATCH). The seqs the fences skipped ({NAME}:seq_jump, "FROM TO ..."
 * oldest first: script_fence) hold no updates, so they are not counted. KEYS[3] is
 * {NAME}:seq.
 */
#define LUA_MINID_FN                                                                    \
    "local function minid(top)\n"                                                       \
    "  local lo = top - tonumber(ARGV[2])\n"                                            \
    "  if lo <= 0 then return '0-0' end\n"                                              \
    "  local jv = redis.call('GET', string.sub(KEYS[3], 1, -4) .. 'seq_jump')\n"        \
    "  if jv then\n"                                                                    \
    "    local js = {}\n"                                                               \
    "    for from, to in string.gmatch(jv, '(%d+) (%d+)') do\n"                         \
    "      js[#js + 1] = {tonumber(from), tonumber(to)}\n"                              \
    "    end\n"                                                                         \
    "    for i = #js, 1, -1 do\n"                                                       \
    "      if lo < js[i][2] then lo = lo - (js[i][2] - js[i][1]) end\n"                 \
    "    end\n"                                                                         \
    "    if lo <= 0 then return '0-0' end\n"                                            \
    "  end\n"                                                                           \
    "  return string.format('0-%.0f', lo)\n"                                            \
    "end\n"
#define LUA_MINID "minid(seq)"

/* ARGV[2] maxlen, then the update: ARGV[3..7] = u i k b s; EXTRA: more fields
 * (a QUEUED update's P, see script_retry). An entry of one update, in
 * layout 3 (LUA_BATCH) like every entry this version writes. */
#define LUA_ADD_UPDATE_WITH(extra)                                                      \
    "redis.call('XADD', KEYS[2], 'MINID', '~', " LUA_MINID ", '0-' .. string.format('%.0f', " \
    "seq), 'U', ARGV[3]" extra ")\n"
#define LUA_ADD_UPDATE LUA_ADD_UPDATE_WITH("")

/*
 * The updates a batch script writes go into one entry of {NAME}:updates
 * (layout 3): its ID is 0-LAST, LAST the seq of its last update, and it
 * holds the updates LAST-N+1 .. LAST in order, each as the field U (the
 * Update encoded without its seq: its item_id, kind, state and batch are
 * in it, and readers take them from there) and for a waiting QUEUED one P
 * (priority) or D (due time). Upper case, so that a reader of layout 1,
 * which looks for u, skips the entry loudly ("it is no update") instead
 * of taking its first update for its last. ups_add(...) counts the next
 * seq and adds its fields; ups_flush() writes the entry (at most about
 * 6000 fields each: Lua's unpack() takes 8000). Needs LUA_SEQ_LOAD's
 * `seq` and ARGV[2].
 */
#define LUA_BATCH                                                                       \
    LUA_MINID_FN                                                                        \
    "local ups = {}\n"                                                                  \
    "local function ups_flush()\n"                                                      \
    "  if #ups == 0 then return end\n"                                                  \
    "  redis.call('XADD', KEYS[2], 'MINID', '~', " LUA_MINID ", "                        \
    "'0-' .. string.format('%.0f', seq), unpack(ups))\n"                                \
    "  ups = {}\n"                                                                      \
    "end\n"                                                                             \
    "local function ups_add(u, xk, xv)\n"                                               \
    "  if #ups >= 6000 then ups_flush() end\n"                                          \
    "  seq = seq + 1\n"                                                                 \
    "  local n = #ups\n"                                                                \
    "  ups[n + 1], ups[n + 2] = 'U', u\n"                                               \
    "  if xk then ups[n + 3], ups[n + 4] = xk, xv end\n"                                \
    "  return seq\n"                                                                    \
    "end\n"

/*
 * Every item known cluster-wide has a hash {NAME}:item:ID, written by the
 * script that queues it: k kind, b batch, s 1 (QUEUED), m max_attempts, p
 * priority (if not 0), q the seq of its QUEUED update, x its work entry,
 * ta when it was accepted (unix ns), rd when the next attempt of a retry
 * waiting its backoff is due (unix ms: for an instance that takes it over
 * from a holder that died meanwhile), tp and tt its W3C traceparent and
 * tracestate (if it has a trace; its work entry's w carries them too,
 * core/trace.h), and once final w (the WorkItem, kept for a retry of a
 * FAILED or CANCELLED item). Every update after the QUEUED one goes to
 * {NAME}:latest instead (layout 4, cluster.h: its state, seq, end time,
 * retained bytes, attempt start and the update, one field per item,
 * written for a whole update script at once), so the hash is written once
 * and stays small. A hash of layout 3 has s, q, u, ts, n and t of its own:
 * readers take {NAME}:latest's when there is one past the hash's q, else
 * the hash's (latest(), final_of(), cluster_items.c's fields()). {NAME}:items
 * orders every known item by its accept's seq (the listing);
 * {NAME}:finals lists the final ones in the order they ended, and
 * {NAME}:finals_bytes sums their retained bytes: the retention forgets the
 * oldest finals from all of these (LUA_TRIM). Kept small on purpose: every item
 * pays for these writes (docs/scaling.md has the costs).
 */

/*
 * Scheduling (docs/scaling.md, "Priorities and delays"). An item of
 * priority 0 without a delay goes straight into {NAME}:work, as it always
 * did: it costs nothing more. Any other waits outside the streams, its
 * entry's fields (to: timeout, qq: quick, w: the WorkItem) in its hash
 * and no x (work entry) yet:
 * - delayed: in {NAME}:delayed, scored by its due time (unix ms; the hash
 *   has it as d). script_due moves the due ones on: priority 0 into
 *   {NAME}:work, others into their lane.
 * - prioritized: in the lane {NAME}:prio:P (a list, in acceptance order),
 *   with P in {NAME}:prio (a sorted set of the priorities in use, scored
 *   by themselves). script_pull takes the highest lanes first: it adds the
 *   item to {NAME}:pwork with ID 1-N and reads it there at once, so the
 *   entry is pending at the taker from the start and {NAME}:pwork never
 *   has an entry nobody took. From then on it is an entry like those of
 *   {NAME}:work (leases, attempts, claims, final), only in the other
 *   stream: the 1- of its ID says which.
 */

/*
 * The seq counter for a batch (a script that publishes many updates): as
 * LUA_NEXT_SEQ, but read once into `seq`; the script counts on from it
 * for each update it writes and stores the last with LUA_SEQ_STORE, so a
 * seq is used only by an update that was written (a gap would end every
 * subscriber's stream).
 */
#define LUA_SEQ_LOAD                                                                    \
    "if redis.call('EXISTS', KEYS[3]) == 0 then\n"                                      \
    "  local start = tonumber(ARGV[1])\n"                                               \
    "  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)\n"            \
    "  if #top > 0 then\n"                                                              \
    "    local t = tonumber(string.match(top[1][1], '^0%-(%d+)$'))\n"                   \
    "    if t ~= nil and t > start then start = t end\n"                                \
    "  end\n"                                                                           \
    "  redis.call('SET', KEYS[3], string.format('%.0f', start))\n"                      \
    "  redis.call('SET', KEYS[4], string.format('%.0f', start))\n"                      \
    "end\n"                                                                             \
    "local seq = tonumber(redis.call('GET', KEYS[3]))\n"                                \
    "local seq_loaded = seq\n"
#define LUA_SEQ_STORE                                                                   \
    "if seq ~= seq_loaded then redis.call('SET', KEYS[3], string.format('%.0f', seq)) end\n"

/*
 * accepts: the items accepted in one turn of the loop, in one call. KEYS
 * work, updates, seq, origin, items, delayed, prio; ARGV[1] floor, ARGV[2]
 * maxlen, ARGV[3] the item hash prefix, then ACCEPT_FIELDS per item: u i
 * k b s (the QUEUED update), m t q w (the entry), p (priority, "" for 0),
 * ta, d (due time, "" if not delayed), tp and tt (its traceparent and
 * tracestate, "" none: kept in its hash for getItems). A known id is a duplicate;
 * else the QUEUED update, the item's hash, and either its work entry or
 * (prioritized or delayed) its place in its lane or among the delayed, its
 * entry's fields in its hash, and a QUEUED update that says so to every
 * instance (p: the priority, to wake the pullers; d: the due time, for
 * their timers).
 * Returns one reply per item: its seq, 0 for a duplicate (a known id, or
 * one earlier in the batch), or the error of its first write (nothing of
 * it was written: with maxmemory reached, Redis refuses every write of a
 * script that has not written yet, so a batch is refused whole). The
 * listing gets one ZADD for the batch, and the duplicate check one EXISTS
 * of all its ids (each id's own only when that finds one).
 */
#define ACCEPT_FIELDS 14
static const char script_accepts[] =
    LUA_SEQ_LOAD
    LUA_BATCH
    "local out, members, seen, prefix = {}, {}, {}, ARGV[3]\n"
    /* one EXISTS for the batch; each item's own only if some id is known */
    "local hks = {}\n"
    "for o = 4, #ARGV, 14 do hks[#hks + 1] = prefix .. ARGV[o + 1] end\n"
    "local known = #hks > 0 and redis.call('EXISTS', unpack(hks)) > 0\n"
    "for o = 4, #ARGV, 14 do\n"      /* ACCEPT_FIELDS */
    "  local u, id, k, b, s = ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 4]\n"
    "  local m, t, q, w = ARGV[o + 5], ARGV[o + 6], ARGV[o + 7], ARGV[o + 8]\n"
    "  local p, ta, d, tp = ARGV[o + 9], ARGV[o + 10], ARGV[o + 11], ARGV[o + 12]\n"
    "  local hk = hks[(o - 4) / 14 + 1]\n"
    "  if seen[id] or (known and redis.call('EXISTS', hk) == 1) then\n"
    "    out[#out + 1] = 0\n"
    "  else\n"
    "    local r\n"
    "    if d ~= '' then r = redis.pcall('ZADD', KEYS[6], d, id)\n"
    "    elseif p ~= '' then r = redis.pcall('RPUSH', KEYS[7] .. ':' .. p, id)\n"
    "    else r = redis.pcall('XADD', KEYS[1], '0-*', 'i', id, 'k', k, 'b', b, 'm', m, "
    "'t', t, 'q', q, 'w', w) end\n"
    "    if type(r) == 'table' and r.err then\n"
    "      out[#out + 1] = r\n"
    "    else\n"
    "      seen[id] = true\n"
    "      if d ~= '' then\n"
    "        ups_add(u, 'D', d)\n"
    "      elseif p ~= '' then\n"
    "        ups_add(u, 'P', p)\n"
    "        redis.call('ZADD', KEYS[7], p, p)\n"
    "      else\n"
    "        ups_add(u)\n"
    "      end\n"
    "      local sq = string.format('%.0f', seq)\n"
    "      if d ~= '' or p ~= '' then\n"
    "        redis.call('HSET', hk, 'k', k, 'b', b, 's', s, 'm', m, 'q', sq, 'ta', ta, "
    "'to', t, 'qq', q, 'w', w)\n"
    "        if p ~= '' then redis.call('HSET', hk, 'p', p) end\n"
    "        if d ~= '' then redis.call('HSET', hk, 'd', d) end\n"
    "      else\n"
    "        redis.call('HSET', hk, 'k', k, 'b', b, 's', s, 'm', m, 'q', sq, 'x', r, "
    "'ta', ta)\n"
    "      end\n"
    "      if tp ~= '' then redis.call('HSET', hk, 'tp', tp, 'tt', ARGV[o + 13]) end\n"
    "      members[#members + 1] = sq\n"
    "      members[#members + 1] = id\n"
    "      out[#out + 1] = seq\n"
    "    end\n"
    "  end\n"
    "end\n"
    "ups_flush()\n"
    LUA_SEQ_STORE
    "if #members > 0 then redis.call('ZADD', KEYS[5], unpack(members)) end\n"
    "return out\n";

/*
 * The retention. KEYS[7] {NAME}:finals lists "SEQ ID" for each final in
 * the order they ended (SEQ: its final update's): a list, not a sorted
 * set, because every item pays for it. An entry whose item has a newer seq
 * since (retried, then maybe final again) is stale: skipped when popped.
 * final_of(HASH, ID, R): an item's seq, bytes and end time (its latest
 * update's, or its hash's: layout 3). forget(ENTRY, R): the item of a
 * popped entry, if current, leaves its hash, {NAME}:latest, the listing
 * (KEYS[6]) and the bytes (KEYS[8]). trim(R): pop
 * while the oldest ended more than the age ago or there are more entries
 * than the count or more bytes than the bound, at most 100 a call (the
 * periodic trim). keep_final(SQ, ENTRY, R): item KEYS[5] (ARGV[4], state
 * ARGV[7], update ARGV[3]) just became final with seq SQ: its latest
 * update says so, its work entry goes (its WorkItem kept in its hash
 * unless it SUCCEEDED), its bytes are counted, and the oldest finals past
 * the count or bytes are forgotten (the age is left to the periodic trim:
 * it costs a lookup). R: now ms, age ms, count, bytes, the hash key
 * prefix, {NAME}:latest.
 * hash_call(CMD, K, ID, ...): redis.call of CMD on ID's hash K, but a key
 * that is no hash (WRONGTYPE: written by hand) is as an empty hash (nil)
 * and goes into `bad` ({id, error, ...}, each id once, for the instance
 * to log: log_bad_items()): it failed the whole script, every update of
 * the call with it (their finals unknown, run again elsewhere, this one
 * again and again), or every trim while it was the oldest final. The
 * retention deletes such a key when it forgets the item.
 * add_bytes(N): the bytes (KEYS[8]) plus N, their new sum; when they are
 * no integer (written by hand: INCRBY failed every script that counted a
 * final, so every final's reply was an error and nothing was forgotten
 * past the count any more) they start again at N, and `bytes_bad` says
 * what they held, for the instance to log (once: they are a number
 * again).
 */
#define LUA_TRIM                                                                        \
    CLUSTER_LUA_LATEST                                                                  \
    "local bad, bad_seen = {}, {}\n"                                                    \
    "local function hash_call(cmd, k, id, ...)\n"                                       \
    "  local v = redis.pcall(cmd, k, ...)\n"                                            \
    "  if type(v) ~= 'table' or not v.err then return v end\n"                          \
    "  if not bad_seen[id] then\n"                                                      \
    "    bad_seen[id] = true\n"                                                         \
    "    bad[#bad + 1], bad[#bad + 2] = id, v.err\n"                                    \
    "  end\n"                                                                           \
    "end\n"                                                                             \
    "local bytes_bad = false\n"                                                         \
    "local function add_bytes(n)\n"                                                     \
    "  local v = redis.pcall('INCRBY', KEYS[8], n)\n"                                   \
    "  if type(v) == 'number' then return v end\n"                                      \
    "  local was = redis.pcall('GET', KEYS[8])\n"                                       \
    "  if type(was) ~= 'string' then was = v.err end\n"                                 \
    "  bytes_bad = KEYS[8] .. ' held no integer (' .. string.sub(was, 1, 60) .. ')'\n"  \
    "  redis.call('SET', KEYS[8], math.max(n, 0))\n"                                    \
    "  return math.max(n, 0)\n"                                                         \
    "end\n"                                                                             \
    "local function final_of(k, id, r)\n"                                               \
    "  local h = hash_call('HMGET', k, id, 'q', 'n', 't') or {}\n"                      \
    "  local l = latest(r[6], id, h[1])\n"                                              \
    "  if l then return l.q, l.n, l.t end\n"                                            \
    "  return h[1], h[2], h[3]\n"                                                       \
    "end\n"                                                                             \
    "local function forget(o, r)\n"                                                     \
    "  local sp = string.find(o, ' ', 1, true)\n"                                       \
    "  if not sp then return end\n"                                                     \
    "  local id = string.sub(o, sp + 1)\n"                                              \
    "  local k = r[5] .. id\n"                                                          \
    "  local q, n = final_of(k, id, r)\n"                                               \
    "  if q and q ~= string.sub(o, 1, sp - 1) then return end\n"                        \
    "  redis.call('DEL', k)\n"                                                          \
    "  redis.call('HDEL', r[6], id)\n"                                                  \
    "  redis.call('ZREM', KEYS[6], id)\n"                                               \
    "  n = tonumber(n) or 0\n"                                                          \
    "  if n > 0 then add_bytes(-n) end\n"                                               \
    "end\n"                                                                             \
    "local function trim(r)\n"                                                          \
    "  local cut = tonumber(r[1]) - tonumber(r[2])\n"                                   \
    "  local count, bytes = tonumber(r[3]), tonumber(r[4])\n"                           \
    "  for _ = 1, 100 do\n"                                                             \
    "    local o = redis.call('LINDEX', KEYS[7], 0)\n"                                  \
    "    if not o then redis.call('SET', KEYS[8], 0) return end\n"                      \
    "    local sp = string.find(o, ' ', 1, true) or 1\n"                                \
    "    local id = string.sub(o, sp + 1)\n"                                            \
    "    local q, _, t = final_of(r[5] .. id, id, r)\n"                                 \
    "    if q == string.sub(o, 1, sp - 1) and (tonumber(t) or 0) > cut and\n"           \
    "       redis.call('LLEN', KEYS[7]) <= count and\n"                                 \
    "       (tonumber(redis.call('GET', KEYS[8])) or 0) <= bytes then return end\n"     \
    "    redis.call('LPOP', KEYS[7])\n"                                                 \
    "    forget(o, r)\n"                                                                \
    "  end\n"                                                                           \
    "end\n"                                                                             \
    "local function keep_final(sq, entry, r)\n"                                         \
    "  local n, w = 2 * #ARGV[4] + #ARGV[3] + 200, false\n"                             \
    "  if entry == '' then\n"                                                           \
    "    w = redis.call('HGET', KEYS[5], 'w')\n"                                        \
    "    redis.call('HDEL', KEYS[5], 'to', 'qq', 'w')\n"                                \
    "  elseif ARGV[7] ~= '4' then\n"                                                    \
    "    local e = redis.call('XRANGE', KEYS[1], entry, entry)\n"                       \
    "    if #e > 0 then\n"                                                              \
    "      local f = e[1][2]\n"                                                         \
    "      for j = 1, #f, 2 do\n"                                                       \
    "        if f[j] == 'w' then w = f[j + 1] end\n"                                    \
    "      end\n"                                                                       \
    "    end\n"                                                                         \
    "  end\n"                                                                           \
    "  if entry ~= '' then redis.call('XDEL', KEYS[1], entry) end\n"                    \
    "  if w then\n"                                                                     \
    "    n = n + #w\n"                                                                  \
    "    redis.call('HSET', KEYS[5], 'w', w)\n"                                         \
    "  end\n"                                                                           \
    "  local l = latest(r[6], ARGV[4], redis.call('HGET', KEYS[5], 'q'))\n"             \
    "  local ts = l and l.ts or ''\n"                                                   \
    "  if ts == '' then ts = redis.call('HGET', KEYS[5], 'ts') or '' end\n"             \
    "  redis.call('HSET', r[6], ARGV[4], ARGV[7] .. ' ' .. sq .. ' ' .. r[1] .. ' ' .. "  \
    "n .. ' ' .. ts .. ' ' .. ARGV[3])\n"                                               \
    "  local over = redis.call('RPUSH', KEYS[7], sq .. ' ' .. ARGV[4]) - tonumber(r[3])\n"\
    "  local total = add_bytes(n)\n"                                                    \
    "  for _ = 1, 100 do\n"                                                             \
    "    if over <= 0 and total <= tonumber(r[4]) then return end\n"                    \
    "    local o = redis.call('LPOP', KEYS[7])\n"                                       \
    "    if not o then return end\n"                                                    \
    "    forget(o, r)\n"                                                                \
    "    total = tonumber(redis.call('GET', KEYS[8])) or 0\n"                           \
    "    over = over - 1\n"                                                             \
    "  end\n"                                                                           \
    "end\n"

/*
 * updates: the STARTED, PROGRESS, RETRYING and final updates of the items
 * held here, those of one turn of the loop in one call. KEYS work,
 * updates, seq, origin, pwork, items, finals, finals_bytes, want_started; ARGV[1]
 * floor, ARGV[2] maxlen, ARGV[3] group, ARGV[4] consumer, ARGV[5..10] the
 * retention (LUA_TRIM), then UPDATE_FIELDS per update: its stream (0 work,
 * 1 pwork), its entry, mode (u: update, r: retry, f: final), the attempt
 * the entry must be at, u (the update), its item's id, its state, ts (the
 * start time of its attempt, unix ns, when given: with STARTED and with
 * the update that carries a folded one; else ""; for a retry, when its
 * next attempt is due, unix ms, "" at once: its hash's rd, for an
 * instance that takes it over), and s0: "" or the
 * STARTED of a quick item that the instance did not send on its own
 * (cluster_publish()), written just before this update if some subscriber
 * of some instance wants STARTED now (KEYS[9] {NAME}:want_started exists),
 * else not at all (folded). Each is written only while its entry is
 * pending here with that delivery count (else its reply is 0:
 * superseded); its seq otherwise. The check is one XPENDING per stream
 * for the whole call. A final also acks and deletes the entry and is kept
 * for the retention ({NAME}:finals, the bytes). Every update written is
 * its item's latest ({NAME}:latest, cluster.h): the acks, deletes, list
 * pushes, latest updates and the byte count are one command each for the
 * whole call, and the seq counter is read and stored once; per item only
 * a final other than SUCCEEDED (its WorkItem into its hash), a RETRYING
 * (the XCLAIM of a retry, the HDEL of a layout 3 hash's ts) and the
 * PROGRESS or final of an item that is not quick, when its STARTED is not
 * in the same call (its attempt's start, from its last update) cost
 * commands of their own. After the replies, LUA_TRIM's bad (the item keys
 * that are no hash: hash_call()) and bytes_bad (add_bytes()), which no
 * longer fail the call.
 */
#define UPDATE_FIELDS 9
static const char script_update[] =
    LUA_TRIM
    LUA_SEQ_LOAD
    LUA_BATCH
    "local g, c = ARGV[3], ARGV[4]\n"
    "local r = {ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]}\n"
    "local out, acks, pushes, bytes, lat, tsof = {}, {{}, {}}, {}, 0, {}, {}\n"
    /* The attempt check of the whole batch: one XPENDING of this
     * consumer's entries per stream, over the range the batch touches
     * (what it holds besides is bounded by its prefetch). pend[e]: the
     * delivery count of entry e, if pending here. A reply that filled
     * the count may have left some out: those are asked one by one. */
    "local pend, lo, hi, full = {}, {}, {}, {}\n"
    "for o = 11, #ARGV, 9 do\n"
    "  local si = ARGV[o] == '1' and 2 or 1\n"
    "  local n = tonumber(string.sub(ARGV[o + 1], 3))\n"
    "  if not lo[si] or n < lo[si] then lo[si] = n end\n"
    "  if not hi[si] or n > hi[si] then hi[si] = n end\n"
    "end\n"
    "for si, key in ipairs({KEYS[1], KEYS[5]}) do\n"
    "  if lo[si] then\n"
    "    local pre = si == 1 and '0-' or '1-'\n"
    "    local ps = redis.call('XPENDING', key, g, pre .. string.format('%.0f', lo[si]), "
    "pre .. string.format('%.0f', hi[si]), 10000, c)\n"
    "    for _, x in ipairs(ps) do pend[x[1]] = x[4] end\n"
    "    full[si] = #ps >= 10000\n"
    "  end\n"
    "end\n"
    "local want\n"
    "for o = 11, #ARGV, 9 do\n"      /* UPDATE_FIELDS */
    "  local sk, si = KEYS[1], 1\n"
    "  if ARGV[o] == '1' then sk, si = KEYS[5], 2 end\n"
    "  local e, mode, att = ARGV[o + 1], ARGV[o + 2], tonumber(ARGV[o + 3])\n"
    "  local u, id, st, s0 = ARGV[o + 4], ARGV[o + 5], ARGV[o + 6], ARGV[o + 8]\n"
    "  local d = pend[e]\n"
    "  if d == nil and full[si] then\n"
    "    local p = redis.call('XPENDING', sk, g, e, e, 1)\n"
    "    if #p > 0 and p[1][2] == c then d = p[1][4] end\n"
    "  end\n"
    "  if d ~= att then\n"
    "    out[#out + 1] = 0\n"
    "  else\n"
    "    if s0 ~= '' then\n"
    "      if want == nil then want = redis.call('EXISTS', KEYS[9]) == 1 end\n"
    "      if want then ups_add(s0) end\n"
    "    end\n"
    "    ups_add(u)\n"
    "    local sq = string.format('%.0f', seq)\n"
    "    local hk = r[5] .. id\n"
    /* the start time: given with STARTED and a quick item's final, else
     * that of the attempt's STARTED (none once RETRYING) */
    "    local ts = ARGV[o + 7]\n"
    "    if st == '6' or mode == 'r' then\n"
    "      ts = ''\n"
    "    elseif ts == '' then\n"
    "      ts = tsof[id]\n"      /* an update of this call (its STARTED)... */
    "      if ts == nil then\n"  /* ...else the one before it */
    "        local l = latest(r[6], id)\n"
    "        if l then ts = l.ts else ts = hash_call('HGET', hk, id, 'ts') or '' end\n"
    "      end\n"
    "    end\n"
    "    tsof[id] = ts\n"
    "    local t, n = '0', 0\n"
    "    if mode == 'f' then\n"
    "      local w = false\n"
    "      n = 2 * #id + #u + 200\n"
    "      if st ~= '4' then\n"
    "        local x = redis.call('XRANGE', sk, e, e)\n"
    "        if #x > 0 then\n"
    "          local f = x[1][2]\n"
    "          for j = 1, #f, 2 do\n"
    "            if f[j] == 'w' then w = f[j + 1] end\n"
    "          end\n"
    "        end\n"
    "      end\n"
    "      if w then\n"
    "        n = n + #w\n"
    "        hash_call('HSET', hk, id, 'w', w)\n"
    "      end\n"
    "      t = r[1]\n"
    "      acks[si][#acks[si] + 1] = e\n"
    "      pushes[#pushes + 1] = sq .. ' ' .. id\n"
    "      bytes = bytes + n\n"
    "    elseif mode == 'r' then\n"
    "      redis.call('XCLAIM', sk, g, c, 0, e, 'JUSTID', 'RETRYCOUNT', att + 1)\n"
    "      pend[e] = att + 1\n"
    "      if ARGV[o + 7] ~= '' then\n"
    "        hash_call('HSET', hk, id, 'rd', ARGV[o + 7])\n"
    "        hash_call('HDEL', hk, id, 'ts')\n"
    "      else\n"
    "        hash_call('HDEL', hk, id, 'ts', 'rd')\n"
    "      end\n"
    "    elseif st == '6' then\n"
    "      hash_call('HDEL', hk, id, 'ts')\n"    /* (a layout 3 hash's) */
    "    end\n"
    "    lat[#lat + 1] = id\n"
    "    lat[#lat + 1] = st .. ' ' .. sq .. ' ' .. t .. ' ' .. n .. ' ' .. ts .. ' ' .. u\n"
    "    out[#out + 1] = seq\n"
    "  end\n"
    "end\n"
    "ups_flush()\n"
    LUA_SEQ_STORE
    "for i = 1, #lat, 6000 do\n"
    "  redis.call('HSET', r[6], unpack(lat, i, math.min(i + 5999, #lat)))\n"
    "end\n"
    "for si, key in ipairs({KEYS[1], KEYS[5]}) do\n"
    "  if #acks[si] > 0 then\n"
    "    redis.call('XACK', key, g, unpack(acks[si]))\n"
    "    redis.call('XDEL', key, unpack(acks[si]))\n"
    "  end\n"
    "end\n"
    "if #pushes > 0 then\n"
    "  local over = redis.call('RPUSH', KEYS[7], unpack(pushes)) - tonumber(r[3])\n"
    "  local total = add_bytes(bytes)\n"
    "  for _ = 1, 100 + #pushes do\n"
    "    if over <= 0 and total <= tonumber(r[4]) then break end\n"
    "    local ob = redis.call('LPOP', KEYS[7])\n"
    "    if not ob then break end\n"
    "    forget(ob, r)\n"
    "    total = tonumber(redis.call('GET', KEYS[8])) or 0\n"
    "    over = over - 1\n"
    "  end\n"
    "end\n"
    "out[#out + 1] = bad\n"
    "out[#out + 1] = bytes_bad\n"
    "return out\n";

/* trim: KEYS as update's (only 6, 7, 8 used), ARGV the retention: what
 * aged out while no item ended. Returns LUA_TRIM's {bad, bytes_bad}. */
static const char script_trim[] =
    LUA_TRIM
    "trim(ARGV)\n"
    "return {bad, bytes_bad}\n";

/*
 * cancel: KEYS as update's, control, delayed, prio; ARGV[1..7] the
 * CANCELLED update (floor, maxlen, u i k b s), ARGV[8] the entry, ARGV[9] group,
 * ARGV[10] the reason, ARGV[11..16] the retention. An item still waiting
 * (delayed, or in its priority's lane: it has no entry) or whose entry is
 * not delivered yet is removed and CANCELLED at once ('c'); one an
 * instance holds gets a request on the control stream that instance reads
 * ('a'); 'f' final (or ending), 'n' not known.
 */
static const char script_cancel[] =
    LUA_TRIM
    LUA_MINID_FN
    "local h = redis.call('HMGET', KEYS[5], 's', 'p', 'x', 'q')\n"
    "local s = h[1]\n"
    "if not s then return 'n' end\n"
    "local l = latest(ARGV[16], ARGV[4], h[4])\n"
    "if l then s = l.s end\n"
    "if s == '4' or s == '5' or s == '7' then return 'f' end\n"
    "if not h[3] and s == '1' then\n"
    "  if redis.call('ZREM', KEYS[10], ARGV[4]) == 0 and h[2] then\n"
    "    local lk = KEYS[11] .. ':' .. h[2]\n"
    "    redis.call('LREM', lk, 1, ARGV[4])\n"
    "    if redis.call('LLEN', lk) == 0 then redis.call('ZREM', KEYS[11], h[2]) end\n"
    "  end\n"
    "  " LUA_NEXT_SEQ LUA_ADD_UPDATE
    "  redis.call('HDEL', KEYS[5], 'cr')\n"
    "  keep_final(string.format('%.0f', seq), '', "
    "{ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16]})\n"
    "  return 'c'\n"
    "end\n"
    "local p = redis.call('XPENDING', KEYS[1], ARGV[9], ARGV[8], ARGV[8], 1)\n"
    "if #p > 0 then\n"
    "  redis.call('XADD', KEYS[9], 'MAXLEN', '~', " CONTROL_MAXLEN ", '*', 'c', p[1][2], "
    "'e', ARGV[8], 'r', ARGV[10])\n"
    "  redis.call('HSET', KEYS[5], 'cr', ARGV[10])\n"
    "  return 'a'\n"
    "end\n"
    "if #redis.call('XRANGE', KEYS[1], ARGV[8], ARGV[8]) == 0 then return 'f' end\n"
    LUA_NEXT_SEQ LUA_ADD_UPDATE
    "local sq = string.format('%.0f', seq)\n"
    "redis.call('HDEL', KEYS[5], 'cr')\n"
    "keep_final(sq, ARGV[8], {ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16]})\n"
    "return 'c'\n";

/*
 * retry: KEYS as update's, prio and latest; ARGV[1..7] floor, maxlen and the
 * QUEUED update (u i k b s), ARGV[8..10] m t q (the entry's fields), ARGV[11] its priority ("" for 0), ARGV[12] ta. A FAILED
 * or CANCELLED item with its WorkItem is queued again as if accepted now
 * (the seq, or 0 if it is not retryable; -1 if not known): a prioritized
 * one in its lane (its delay is not applied again). unkeep(N): its N
 * retained bytes leave {NAME}:finals_bytes; when that is no integer (or N
 * no number: both written by hand) it is left to the next final's
 * add_bytes() (LUA_TRIM), which starts it again and says so: the DECRBY
 * came after the item was queued again, and failed the call.
 */
static const char script_retry[] =
    CLUSTER_LUA_LATEST
    LUA_MINID_FN
    "local function unkeep(n)\n"
    "  n = tonumber(n)\n"
    "  if n then redis.pcall('DECRBY', KEYS[8], n) end\n"
    "end\n"
    "local h = redis.call('HMGET', KEYS[5], 's', 'w', 'n', 'q')\n"
    "if not h[1] then return -1 end\n"
    "local l = latest(KEYS[10], ARGV[4], h[4])\n"
    "if l then h[1], h[3] = l.s, l.n end\n"
    "if (h[1] ~= '5' and h[1] ~= '7') or not h[2] then return 0 end\n"
    LUA_NEXT_SEQ
    "redis.call('HDEL', KEYS[10], ARGV[4])\n"
    "local sq = string.format('%.0f', seq)\n"
    "if ARGV[11] ~= '' then\n"
    "  " LUA_ADD_UPDATE_WITH(", 'P', ARGV[11]")
    "  redis.call('HDEL', KEYS[5], 'u', 'ts', 'n', 't', 'cr', 'x', 'rd')\n"
    "  redis.call('HSET', KEYS[5], 'k', ARGV[5], 'b', ARGV[6], 's', ARGV[7], 'm', ARGV[8], "
    "'q', sq, 'ta', ARGV[12], 'p', ARGV[11], 'to', ARGV[9], 'qq', ARGV[10])\n"
    "  redis.call('RPUSH', KEYS[9] .. ':' .. ARGV[11], ARGV[4])\n"
    "  redis.call('ZADD', KEYS[9], ARGV[11], ARGV[11])\n"
    "  unkeep(h[3])\n"
    "  redis.call('ZADD', KEYS[6], sq, ARGV[4])\n"
    "  return seq\n"
    "end\n"
    LUA_ADD_UPDATE
    "local e = redis.call('XADD', KEYS[1], '0-*', 'i', ARGV[4], 'k', ARGV[5], 'b', ARGV[6], "
    "'m', ARGV[8], 't', ARGV[9], 'q', ARGV[10], 'w', h[2])\n"
    "redis.call('HDEL', KEYS[5], 'u', 'ts', 'w', 'n', 't', 'cr', 'p', 'd', 'rd')\n"
    "redis.call('HSET', KEYS[5], 'k', ARGV[5], 'b', ARGV[6], 's', ARGV[7], 'm', ARGV[8], "
    "'q', sq, 'x', e, 'ta', ARGV[12])\n"
    "unkeep(h[3])\n"
    "if ARGV[11] ~= '' then redis.call('HSET', KEYS[5], 'p', ARGV[11]) end\n"
    "redis.call('ZADD', KEYS[6], sq, ARGV[4])\n"
    "return seq\n";

/* renew: KEYS work; ARGV group, consumer, ids: reset the idle time of those
 * still pending here. */
static const char script_renew[] =
    "local n = 0\n"
    "for i = 3, #ARGV do\n"
    "  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)\n"
    "  if #p > 0 and p[1][2] == ARGV[2] then\n"
    "    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

/*
 * claim: KEYS work, pwork (each in turn); ARGV group, consumer, lease ms, count, the item
 * hash prefix, now (unix ms), the prefix of the lease keys. Entries that
 * their holder stopped renewing for its lease become ours: the lease its
 * {NAME}:lease:CONSUMER says (publish_lease()), or ours if it says none
 * (an older version, or an instance gone longer than that key lives), so
 * that instances reloaded to different leases (a rolling change of
 * cluster.lease) never take over what a live one renews on its own
 * schedule. Each as {id, fields, delivery count, previous holder, idle
 * ms, the reason of a cancel asked of the previous holder or nil, when a
 * retry's next attempt is due (its hash's rd, unix ms) or nil, 1 if that
 * is still ahead}, at most count. An item whose next attempt was still
 * waiting its backoff never started it: it keeps its delivery count (the
 * attempt it waits for). An rd that is not 1 to 15 digits (written by
 * hand) is not waited for: the item runs at once; so does one whose key
 * is no hash (written by hand: WRONGTYPE failed every claim script that
 * took it, and it never ran again), with a 9th element naming the key for
 * the log. Consumers that hold
 * nothing and were not seen for their lease are removed (a live one is
 * recreated by its next read).
 */
static const char script_claim[] =
    "local out, max = {}, tonumber(ARGV[4])\n"
    "for _, key in ipairs(KEYS) do\n"
    "for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', key, ARGV[1])) do\n"
    "  local f = {}\n"
    "  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end\n"
    "  local lease = tonumber(redis.call('GET', ARGV[7] .. f['name']) or '')\n"
    "  if not lease or lease < 1 then lease = tonumber(ARGV[3]) end\n"
    "  if f['pending'] > 0 and #out < max then\n"
    "    local p = redis.call('XPENDING', key, ARGV[1], 'IDLE', lease, '-', '+', max - #out, "
    "f['name'])\n"
    "    for _, e in ipairs(p) do\n"
    "      local c = redis.call('XCLAIM', key, ARGV[1], ARGV[2], lease, e[1])\n"
    "      if #c > 0 and c[1] then\n"
    "        local h, d, waiting, bad = {false, false}, e[4] + 1, 0, false\n"
    "        for j = 1, #c[1][2], 2 do\n"
    "          if c[1][2][j] == 'i' then\n"
    "            h = redis.pcall('HMGET', ARGV[5] .. c[1][2][j + 1], 'cr', 'rd')\n"
    "            if h.err then\n"
    "              bad = ARGV[5] .. c[1][2][j + 1] .. ' is no item hash (' .. h.err .. ')'\n"
    "              h = {false, false}\n"
    "            end\n"
    "          end\n"
    "        end\n"
    "        if h[2] and #h[2] <= 15 and string.match(h[2], '^%d+$') and\n"
    "           tonumber(h[2]) > tonumber(ARGV[6]) then\n"
    "          redis.call('XCLAIM', key, ARGV[1], ARGV[2], 0, e[1], 'RETRYCOUNT', e[4], "
    "'JUSTID')\n"
    "          d, waiting = e[4], 1\n"
    "        end\n"
    "        out[#out + 1] = {c[1][1], c[1][2], d, e[2], e[3], h[1], h[2], waiting, bad}\n"
    "      end\n"
    "    end\n"
    "  elseif f['pending'] == 0 and f['idle'] > lease and f['name'] ~= ARGV[2] then\n"
    "    redis.call('XGROUP', 'DELCONSUMER', key, ARGV[1], f['name'])\n"
    "  end\n"
    "end\n"
    "end\n"
    "return out\n";

/*
 * A waiting item's work entry is made of its hash's k b m to qq w (read by
 * HMGET in that order into H, then what the caller wants). bad_entry(H):
 * what is wrong with them (the first one missing), or nil. An XADD of a
 * missing one (a hash edited by hand) failed the whole script after the
 * item had left its place (lost, the others a turn late), and so did an
 * item key that is no hash (WRONGTYPE), before it left its lane (every
 * pull of the lanes failed for good). The scripts that move waiting items
 * on (due, pull) read the hash with redis.pcall, skip such an item alone
 * and name it and the reason to the instance, which logs them
 * (log_bad_items()).
 */
#define LUA_BAD_ENTRY_FN                                                                \
    "local function bad_entry(h)\n"                                                     \
    "  for i, f in ipairs({'k', 'b', 'm', 'to', 'qq'}) do\n"                            \
    "    if not h[i] then return 'its hash has no ' .. f end\n"                         \
    "  end\n"                                                                           \
    "end\n"

/*
 * pull: KEYS work, pwork, prio, latest; ARGV group, consumer, count, the item hash
 * prefix, room (the local room, in item weights), the weights of a quick
 * and of a full item, the weight lately taken per item (the guess for
 * {NAME}:work, whose entries cannot be weighed before they are taken). Up
 * to count items for this consumer, best first, within room: the lanes of
 * priority above 0 from the highest, then {NAME}:work (priority 0), then
 * the lanes below 0. A lane item is weighed by its hash's qq before it is
 * taken; the first one that does not fit ends the pull (a lower item must
 * not pass it). A lane item that cannot be taken (its key no hash, a
 * field of its entry missing: bad_entry()) leaves its lane alone, its hash
 * untouched. Returns {entries from pwork (above 0), entries from work,
 * entries from pwork (below 0), priorities still in use, 1 if a lane item
 * did not fit, {id, reason, ...} of those that cannot be taken}, each
 * entry as XREADGROUP gives it. O(log P) per lane visited, O(1) an item.
 */
static const char script_pull[] =
    CLUSTER_LUA_LATEST
    LUA_BAD_ENTRY_FN
    "local n, added, bad = tonumber(ARGV[3]), 0, {}\n"
    "local room, qw, fw, unit = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), "
    "tonumber(ARGV[8])\n"
    "local full = 0\n"
    "local function lane(p)\n"
    "  local lk = KEYS[3] .. ':' .. p\n"
    "  while n > 0 do\n"
    "    local id = redis.call('LINDEX', lk, 0)\n"
    "    if not id then break end\n"
    "    local hk = ARGV[4] .. id\n"
    "    local h = redis.pcall('HMGET', hk, 'k', 'b', 'm', 'to', 'qq', 'w', 's', 'q')\n"
    "    local why = h.err\n"
    "    local waiting = not why and h[6] and h[7] == '1' and not latest(KEYS[4], id, h[8])\n"
    "    if waiting then why = bad_entry(h) end\n"
    "    if why then\n"
    "      redis.call('LPOP', lk)\n"
    "      bad[#bad + 1], bad[#bad + 2] = id, why\n"
    "    elseif waiting then\n"
    "      local wt = fw\n"
    "      if h[5] == '1' then wt = qw end\n"
    "      if wt > room then full = 1; return end\n"
    "      redis.call('LPOP', lk)\n"
    "      local e = redis.call('XADD', KEYS[2], '1-*', 'i', id, 'k', h[1], 'b', h[2], "
    "'m', h[3], 't', h[4], 'q', h[5], 'w', h[6])\n"
    "      redis.call('HSET', hk, 'x', e)\n"
    "      redis.call('HDEL', hk, 'w', 'to', 'qq')\n"
    "      n, added, room = n - 1, added + 1, room - wt\n"
    "    else\n"
    "      redis.call('LPOP', lk)\n"
    "    end\n"
    "  end\n"
    "  if redis.call('LLEN', lk) == 0 then redis.call('ZREM', KEYS[3], p) end\n"
    "end\n"
    "local function lanes(max, min)\n"
    "  while n > 0 and full == 0 do\n"
    "    local top = redis.call('ZREVRANGEBYSCORE', KEYS[3], max, min, 'LIMIT', 0, 1)\n"
    "    if #top == 0 then return end\n"
    "    lane(top[1])\n"
    "  end\n"
    "end\n"
    "local function read(key, count)\n"
    "  if count <= 0 then return {} end\n"
    "  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count, "
    "'STREAMS', key, '>')\n"
    "  if not r then return {} end\n"
    "  return r[1][2]\n"
    "end\n"
    "lanes('+inf', '(0')\n"
    "local high = read(KEYS[2], added)\n"
    "added = 0\n"
    "local zero = {}\n"
    "if full == 0 then\n"
    "  zero = read(KEYS[1], math.min(n, math.floor(room / unit)))\n"
    "  n, room = n - #zero, room - #zero * unit\n"
    "  lanes('(0', '-inf')\n"
    "end\n"
    "local low = read(KEYS[2], added)\n"
    "return {high, zero, low, redis.call('ZCARD', KEYS[3]), full, bad}\n";

/*
 * due: KEYS work, delayed, prio, control, latest; ARGV now (unix ms), the item
 * hash prefix, count. Up to count delayed items whose time has come move
 * on: priority 0 into {NAME}:work, others into their lane (then a wake
 * entry on {NAME}:control tells every instance to pull). One that cannot
 * (its key no hash, a field of its entry missing: bad_entry(), a p that
 * is no integer but 0: the lane of 0 is never pulled, a lane that is no
 * list) leaves {NAME}:delayed alone, its hash untouched. Returns
 * {moved, woke (0/1), the next due time or -1, {id, reason, ...} of those}.
 */
static const char script_due[] =
    CLUSTER_LUA_LATEST
    LUA_BAD_ENTRY_FN
    "local moved, woke, bad = 0, false, {}\n"
    "local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])\n"
    "for _, id in ipairs(ids) do\n"
    "  redis.call('ZREM', KEYS[2], id)\n"
    "  local hk = ARGV[2] .. id\n"
    "  local h = redis.pcall('HMGET', hk, 'k', 'b', 'm', 'to', 'qq', 'w', 's', 'p', 'q')\n"
    "  local why = h.err\n"
    "  local waiting = not why and h[6] and h[7] == '1' and not latest(KEYS[5], id, h[9])\n"
    "  if waiting then\n"
    "    why = bad_entry(h)\n"
    "    if not why and h[8] and (not string.match(h[8], '^%-?%d+$') or tonumber(h[8]) == 0) then\n"
    "      why = 'its p (priority) ' .. h[8] .. ' is no integer but 0'\n"
    "    end\n"
    "    if not why and h[8] then\n"
    "      local lk = KEYS[3] .. ':' .. h[8]\n"
    "      local r = redis.pcall('RPUSH', lk, id)\n"
    "      if type(r) == 'table' then why = 'its lane ' .. lk .. ' is no list (' .. r.err .. ')' end\n"
    "    end\n"
    "  end\n"
    "  if why then\n"
    "    bad[#bad + 1], bad[#bad + 2] = id, why\n"
    "  elseif waiting then\n"
    "    if not h[8] then\n"
    "      local e = redis.call('XADD', KEYS[1], '0-*', 'i', id, 'k', h[1], 'b', h[2], "
    "'m', h[3], 't', h[4], 'q', h[5], 'w', h[6])\n"
    "      redis.call('HSET', hk, 'x', e)\n"
    "      redis.call('HDEL', hk, 'w', 'to', 'qq')\n"
    "    else\n"      /* (pushed into its lane above) */
    "      redis.call('ZADD', KEYS[3], h[8], h[8])\n"
    "      woke = true\n"
    "    end\n"
    "    moved = moved + 1\n"
    "  end\n"
    "end\n"
    "if woke then\n"
    "  redis.call('XADD', KEYS[4], 'MAXLEN', '~', " CONTROL_MAXLEN ", '*', 'wake', '1')\n"
    "end\n"
    "local nx = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')\n"
    "return {moved, woke and 1 or 0, nx[2] or '-1', bad}\n";

/* size: KEYS work, pwork, delayed, prio: the items not final, cluster-wide
 * (queue.capacity): both streams, the delayed and every lane. */
static const char script_size[] =
    "local n = redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2]) + "
    "redis.call('ZCARD', KEYS[3])\n"
    "for _, p in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do\n"
    "  n = n + redis.call('LLEN', KEYS[4] .. ':' .. p)\n"
    "end\n"
    "return n\n";

/*
 * The fence, run once per session: KEYS seq, work, pwork, seq_jump; ARGV the
 * highest seq this instance has seen (0: none) and the jump. A counter
 * that exists but is behind that seq means Redis lost writes this
 * instance saw (a failover to a replica that had not got them, a restart
 * from an old snapshot): the next seqs would repeat ones already
 * delivered (and other instances, further ahead, would skip them), and
 * the next work entries would reuse IDs that an instance may still hold.
 * So the counter and both work streams' last IDs jump ahead by ARGV[2]
 * ({NAME}:seq_jump keeps "FROM TO" of the last 16 jumps, oldest first, for
 * the update stream's trimming, which skips them all).
 * An instance that comes later finds the counter ahead of what it saw
 * and reads on (a gap: its subscribers are told, as for any lost
 * updates). 1: it jumped.
 */
/*
 * The layout check, run once per session before anything is written:
 * KEYS layout, updates, work; ARGV[1] CLUSTER_LAYOUT, ARGV[2] the lease
 * (ms), ARGV[3] the group. {NAME}:layout says which layout the cluster's
 * keys are in. Layout 1 (before the update stream had entries of many
 * updates) never wrote it: keys without it but with an update stream are
 * layout 1. Layout 2 had the id, kind, batch and state of each update
 * beside it in the entry; layout 3 only in the encoded update. Layout 4
 * keeps an item's updates after QUEUED in {NAME}:latest, not in its hash
 * (cluster.h). This version reads all four, but the older ones cannot
 * read the newer layouts (a layout 3 instance would see layout 4's items
 * QUEUED forever), so while an instance of an older layout may be running (a consumer of the
 * work stream active within the lease) the answer is "busy OLD NAME IDLE"
 * and the session fails (retried with backoff); else the key is set to
 * ours ("set": new; "upgraded OLD": there were older keys). "other V": the
 * key says a layout above ours (a newer version's).
 */
#define CLUSTER_LAYOUT "4"
static const char script_layout[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "local old = '1'\n"
    "if v then\n"
    "  if v == ARGV[1] then return 'ok' end\n"
    "  local n = tonumber(v)\n"
    "  if not n or n > tonumber(ARGV[1]) or n < 1 then return 'other ' .. v end\n"
    "  old = v\n"
    "elseif redis.call('EXISTS', KEYS[2]) == 0 then\n"
    "  redis.call('SET', KEYS[1], ARGV[1])\n"
    "  return 'set'\n"
    "end\n"
    "local ok, cs = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[3], ARGV[3])\n"
    "if ok then\n"
    "  for _, c in ipairs(cs) do\n"
    "    local name, idle = '?', nil\n"
    "    for j = 1, #c - 1, 2 do\n"
    "      if c[j] == 'name' then name = c[j + 1] elseif c[j] == 'idle' then idle = c[j + 1] end\n"
    "    end\n"
    "    if idle and idle < tonumber(ARGV[2]) then\n"
    "      return 'busy ' .. old .. ' ' .. name .. ' ' .. idle\n"
    "    end\n"
    "  end\n"
    "end\n"
    "redis.call('SET', KEYS[1], ARGV[1])\n"
    "return 'upgraded ' .. old\n";

#define FENCE_JUMP (UINT64_C(1) << 32)
static const char script_fence[] =
    "local c = redis.call('GET', KEYS[1])\n"
    "local f = tonumber(ARGV[1])\n"
    "if c == false or f == 0 or tonumber(c) >= f then return 0 end\n"
    "local j = tonumber(ARGV[2])\n"
    "redis.call('SET', KEYS[1], string.format('%.0f', f + j))\n"
    "local jumps = redis.call('GET', KEYS[4]) or ''\n"
    "jumps = jumps .. string.format(' %.0f %.0f', tonumber(c), f + j)\n"
    "local pairs_kept = {}\n"
    "for p in string.gmatch(jumps, '%d+ %d+') do pairs_kept[#pairs_kept + 1] = p end\n"
    "local first = #pairs_kept > 16 and #pairs_kept - 15 or 1\n"
    "redis.call('SET', KEYS[4], table.concat(pairs_kept, ' ', first))\n"
    "for k = 2, 3 do\n"
    "  if redis.call('EXISTS', KEYS[k]) == 1 then\n"
    "    local info = redis.call('XINFO', 'STREAM', KEYS[k])\n"
    "    for i = 1, #info, 2 do\n"
    "      if info[i] == 'last-generated-id' then\n"
    "        local ms, n = string.match(info[i + 1], '^(%d+)%-(%d+)$')\n"
    "        redis.call('XSETID', KEYS[k], ms .. '-' .. string.format('%.0f', tonumber(n) + j))\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return 1\n";

/* lookup (getItems, cancel and retry by id: cluster_lookup_start()):
 * KEYS[1] the item's hash, KEYS[2] {NAME}:latest; ARGV[1] its id, then
 * the names of the fields wanted: their values, in that order, as an
 * HMGET of a layout 3 hash would give them (CLUSTER_LUA_FIELDS); for a
 * key that is no hash, HMGET's error (WRONGTYPE). */
static const char script_lookup[] =
    CLUSTER_LUA_FIELDS
    "return fields(KEYS[1], KEYS[2], ARGV[1], {unpack(ARGV, 2)})\n";

enum script {
    SCRIPT_ACCEPTS, SCRIPT_UPDATE, SCRIPT_RENEW, SCRIPT_CLAIM, SCRIPT_TRIM, SCRIPT_CANCEL,
    SCRIPT_RETRY, SCRIPT_PULL, SCRIPT_DUE, SCRIPT_SIZE, SCRIPT_LOOKUP, SCRIPT_COUNT
};

static const char *const script_text[SCRIPT_COUNT] = {
    script_accepts, script_update, script_renew, script_claim, script_trim, script_cancel,
    script_retry, script_pull, script_due, script_size, script_lookup,
};

struct conn {
    redisAsyncContext *ac;      /* NULL once hiredis freed it, or before connecting */
    const char *name;
    int connected;
    struct reply_pool replies;  /* its replies are built in it (kept across sessions) */
};

/* A reply owed for an item. */
/* A script in flight for an item: the store's acceptance, or the item
 * and the state of its final update. Freed by the reply's callback. */
struct item_op {
    struct acceptance a;        /* accept */
    struct item *item;          /* final, retry */
    enum wire_state state;      /* final */
};

static struct {
    int enabled;
    int shutting_down;
    char consumer[160];
    char key_work[96], key_updates[96], key_seq[96], key_origin[96];
    char key_items[96], key_finals[96], key_finals_bytes[96], key_item_prefix[96];
    char key_control[96], key_want_started[96], key_layout[96], key_seq_jump[96];
    char key_lease_prefix[96], key_lease[256];   /* {NAME}:lease:, and ours */
    char key_pwork[96], key_delayed[96], key_prio[96], key_latest[96];
    char control_last[48];      /* the last {NAME}:control entry read */
    uint64_t floor_start;       /* updates_last_seq() when we started */
    char floor[24];             /* the seq counter starts no lower than this: floor_arg() */
    struct conn cmd, work, upd;
    /* The master: cluster.redis's host, or what the sentinels named. */
    int sentinels;              /* cluster.redis is sentinel://: sentinel.c finds it */
    char master_name[128];
    char master_host[256];
    int master_port;
    char address[64];           /* master_host resolved: what hiredis connects to */
    struct resolve_request *resolving;
    int up;                     /* connected and set up */
    int failing;                /* the session is being dropped */
    int caught_up;              /* the update stream was read to its end */
    int setup_pending;
    char sha[SCRIPT_COUNT][48];
    struct event *reset_event, *retry_timer, *setup_timer, *ping_timer;
    struct event *renew_timer, *claim_timer, *poll_timer;
    struct event *due_timer;
    struct event *pull_timer;   /* a failed pull script is tried again */
    int64_t due_at_ms;          /* the due timer is armed for then (unix ms); 0: not armed */
    int due_running;
    uint64_t backoff_ms;
    /* the update stream */
    int reading;
    uint64_t last_seq;          /* delivered; 0: none yet */
    uint64_t origin;
    uint64_t seq_reported;      /* to the master */
    /* the work stream */
    int pulling;                /* an XREADGROUP (work) or a pull script (cmd) is out */
    int pull_blocked;           /* it is the XREADGROUP */
    int prio_waiting;           /* prioritized items may wait in their lanes: pull by script */
    int pull_paused;            /* a pull script failed: none until pull_timer (XREADGROUP goes on) */
    uint64_t wakes;             /* prio_wake() calls: one during a pull script keeps it set */
    uint64_t wakes_at_pull;     /* ... as the pull script in flight was sent */
    int unblocking;             /* a CLIENT UNBLOCK for the XREADGROUP is out */
    long long work_client_id;   /* of the work connection, for CLIENT UNBLOCK */
    uint32_t pull_unit;         /* weight of the items lately taken */
    uint32_t pull_count;        /* the COUNT of the XREADGROUP in flight */
    int pull_backlog;           /* the last XREADGROUP got all it asked for: more wait */
    int claiming;
    int polling;
    uint64_t xlen;              /* items not final, cluster-wide, as last seen */
    uint64_t accepts_sent, accepts_at_poll;
    /* the accepts of this turn of the loop, sent by flush_accepts() */
    struct acceptance *accepts;
    size_t accepts_n, accepts_cap;
    int accepts_ahead;          /* accept scripts in flight */
    uint64_t accept_batches;    /* accept scripts sent, for /status */
    struct redis_cmd batch_cmd; /* reused for every batch script */
    /* the updates of this turn of the loop (send_update(), flush_updates()) */
    struct redis_cmd ucmd;
    struct update_cb *ucbs;
    size_t ucbs_n, ucbs_cap;
    struct update_cb *unsent;   /* never sent: told from the loop */
    size_t unsent_n;
    uint64_t update_batches;
    struct event *flush_event;
    int was_busy;               /* inflight reached INFLIGHT_MAX: see cluster_busy() */
    uint64_t busy_spells;       /* times it did, for /status */
    /* a drain waits for these */
    uint64_t inflight;
    uint64_t max_published_seq;
    /* for /status and the log */
    uint64_t ping_sent_ms;
    int ping_outstanding;
    uint64_t reconnects, claimed, lost_updates, superseded, sessions;
    uint64_t started_folded;    /* STARTED of quick items not sent on their own */
    uint64_t cancels;           /* cancel requests for items held here */
    uint64_t known[3];          /* items known, finals retained, their bytes: as last polled */
    char last_error[256];
    char why[400];
} cl;

static void session_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void read_updates(void);
static void check_done(void);
static void cluster_pull(void);
static void apply_pending_cancel(uint64_t key);
static void arm_due(int64_t due_ms);
static void remember_cancel(uint64_t key, const char *reason);
static void cluster_backpressure_check(void);
static void fail_accepts(void);

/* "redis HOST:PORT", or "redis master NAME at HOST:PORT" (found through the
 * sentinels; "redis master NAME" before they named one): for messages. */
static const char *
where(void)
{
    static char buf[448];
    if (!cl.sentinels)
        snprintf(buf, sizeof buf, "redis %s:%d", cl.master_host, cl.master_port);
    else if (cl.master_host[0] == '\0')
        snprintf(buf, sizeof buf, "redis master %s", cl.master_name);
    else
        snprintf(buf, sizeof buf, "redis master %s at %s:%d", cl.master_name, cl.master_host,
                 cl.master_port);
    return buf;
}

/* An error reply saying the node is a replica now (a failover demoted
 * it): the session goes, to find the master again. 1 if R is one. */
static int
demoted(const redisReply *r)
{
    if (r == NULL || !(r->type == REDIS_REPLY_ERROR && strncmp(r->str, "READONLY", 8) == 0))
        return 0;
    if (cl.sentinels)
        sentinel_distrust();
    session_fail("it refused a write: it is a replica now (%.120s); finding the master again",
                 r->str);
    return 1;
}

/* ---- commands ------------------------------------------------------------ */

/* Send A on CONN. -1: it cannot take commands (the session is down or
 * going), or A overflowed (logged): the callback will not run. */
static int
command(struct conn *conn, redisCallbackFn *fn, void *arg, struct redis_args *a)
{
    if (!cl.up || cl.failing || conn->ac == NULL)
        return -1;
    if (redis_args_send(a, conn->ac, fn, arg) == -1) {
        if (!a->overflow)
            session_fail("%s connection: cannot send a command", conn->name);
        return -1;
    }
    return 0;
}

/* The entries of an XREAD or XREADGROUP reply on one stream, or NULL (none,
 * or a reply of another shape). */
static const redisReply *
stream_entries(const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1)
        return NULL;
    const redisReply *stream = r->element[0];
    if (stream->type != REDIS_REPLY_ARRAY || stream->elements < 2 ||
        stream->element[1]->type != REDIS_REPLY_ARRAY)
        return NULL;
    return stream->element[1];
}

static int
is_error(const redisReply *r, const char *prefix)
{
    return r->type == REDIS_REPLY_ERROR && strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* The "N" of a stream ID "0-N", or 0 if it is not one. */
static uint64_t
id_number(const char *s, size_t len)
{
    if (len < 3 || len > 22 || s[0] != '0' || s[1] != '-')
        return 0;
    uint64_t n = 0;
    for (size_t i = 2; i < len; i++) {
        if (s[i] < '0' || s[i] > '9' || n > (UINT64_MAX - 9) / 10)
            return 0;
        n = n * 10 + (uint64_t)(s[i] - '0');
    }
    return n;
}

uint64_t
cluster_entry_key(const char *s, size_t len)
{
    if (len >= 3 && s[0] == '1' && s[1] == '-') {
        /* Its first entry is 1-0: that key is PWORK_BIT, not 0. */
        char buf[24];
        if (len >= sizeof buf)
            return 0;
        memcpy(buf, s, len);
        buf[0] = '0';
        uint64_t n = id_number(buf, len);
        if (n == 0 && !(len == 3 && s[2] == '0'))
            return 0;
        return n & PWORK_BIT ? 0 : n | PWORK_BIT;
    }
    uint64_t n = id_number(s, len);
    return n & PWORK_BIT ? 0 : n;
}

/* The stream that holds the entry of KEY. */
static const char *
stream_of(uint64_t key)
{
    return key & PWORK_BIT ? cl.key_pwork : cl.key_work;
}

/* The entry ID of KEY. */
static void
entry_arg(struct redis_args *a, uint64_t key)
{
    redis_args_stream_id(a, key & PWORK_BIT ? 1 : 0, key & ~PWORK_BIT);
}

/*
 * The floor for a seq counter that Redis lost (a restart without
 * persistence): past every seq this instance has seen, and not below the
 * wall clock in microseconds, as the master does for a fresh start, so that
 * no instance of the cluster sees seq go back whichever reconnects first.
 */
static const char *
floor_arg(void)
{
    uint64_t floor = clock_wall_ns() / 1000;
    if (cl.floor_start > floor)
        floor = cl.floor_start;
    if (cl.last_seq > floor)
        floor = cl.last_seq;
    if (cl.max_published_seq > floor)
        floor = cl.max_published_seq;
    snprintf(cl.floor, sizeof cl.floor, "%" PRIu64, floor);
    return cl.floor;
}

static void
inflight_done(void)
{
    cl.inflight--;
    cluster_backpressure_check();
    check_done();
}

/* ---- publishing ---------------------------------------------------------- */

/*
 * WorkItem.priority (field 8) of ITEM's WorkItem, 0 if it has none (or
 * does not parse). A walk over the top-level fields, cheaper than decoding
 * the message.
 */
static int32_t
raw_priority(const struct item *item)
{
    const uint8_t *p = item->raw, *end = item->raw + item->raw_len;
    while (p < end) {
        uint64_t v = 0, tag = 0;
        for (int shift = 0; p < end && shift < 64; shift += 7) {
            tag |= (uint64_t)(*p & 0x7f) << shift;
            if (!(*p++ & 0x80))
                break;
        }
        switch (tag & 7) {
        case 0:
            for (int shift = 0; p < end && shift < 64; shift += 7) {
                v |= (uint64_t)(*p & 0x7f) << shift;
                if (!(*p++ & 0x80))
                    break;
            }
            if (tag >> 3 == 8)
                return (int32_t)v;
            break;
        case 1:
            if (end - p < 8)
                return 0;
            p += 8;
            break;
        case 2:
            for (int shift = 0; p < end && shift < 64; shift += 7) {
                v |= (uint64_t)(*p & 0x7f) << shift;
                if (!(*p++ & 0x80))
                    break;
            }
            if (v > (uint64_t)(end - p))
                return 0;
            p += v;
            break;
        case 5:
            if (end - p < 4)
                return 0;
            p += 4;
            break;
        default:
            return 0;
        }
    }
    return 0;
}

/* The same as a decimal in BUF (16 bytes), or "" for 0: the scripts' form
 * (the hash's p, the lane's name). */
static const char *
priority_arg(const struct item *item, char *buf)
{
    int32_t p = raw_priority(item);
    buf[0] = '\0';
    if (p != 0)
        snprintf(buf, 16, "%d", (int)p);
    return buf;
}

/* The key of ITEM_ID's hash, in BUF (ITEM_KEY_SIZE bytes). */
#define ITEM_KEY_SIZE (96 + DS_ITEM_ID_MAX + 1)
static const char *
item_key(char *buf, const char *item_id)
{
    snprintf(buf, ITEM_KEY_SIZE, "%s%s", cl.key_item_prefix, item_id);
    return buf;
}

/*
 * The start of every script that publishes an update (LUA_NEXT_SEQ,
 * LUA_ADD_UPDATE): the keys (work, updates, seq, origin, the item's hash
 * in KEY_BUF, items, finals and finals_bytes; then for cancel control,
 * delayed and prio, for retry prio and latest), ARGV[1] floor, ARGV[2] maxlen, ARGV[3..7] the update encoded without
 * its seq, id, kind, batch, state.
 */
static void
publish_args(struct redis_args *a, enum script script, const struct item *item,
             enum wire_state state, const uint8_t *encoded, size_t encoded_len, char *key_buf)
{
    redis_args_init(a, "EVALSHA");
    redis_args_str(a, cl.sha[script]);
    redis_args_str(a, script == SCRIPT_CANCEL ? "11" : script == SCRIPT_RETRY ? "10" : "8");
    redis_args_str(a, script == SCRIPT_RETRY ? cl.key_work : stream_of(item->key));
    redis_args_str(a, cl.key_updates);
    redis_args_str(a, cl.key_seq);
    redis_args_str(a, cl.key_origin);
    redis_args_str(a, item_key(key_buf, item->id));
    redis_args_str(a, cl.key_items);
    redis_args_str(a, cl.key_finals);
    redis_args_str(a, cl.key_finals_bytes);
    if (script == SCRIPT_CANCEL) {
        redis_args_str(a, cl.key_control);
        redis_args_str(a, cl.key_delayed);
    }
    if (script == SCRIPT_CANCEL || script == SCRIPT_RETRY)
        redis_args_str(a, cl.key_prio);
    if (script == SCRIPT_RETRY)
        redis_args_str(a, cl.key_latest);
    redis_args_str(a, floor_arg());
    redis_args_u64(a, gp.config->updates.history);
    redis_args_mem(a, encoded, encoded_len);
    redis_args_str(a, item->id);
    redis_args_str(a, item->kind);
    redis_args_str(a, item->batch);
    redis_args_u64(a, (uint64_t)state);
}

/* The retention's arguments (LUA_TRIM): now, age, count, bytes, prefix,
 * {NAME}:latest. */
static void
retention_args(struct redis_args *a)
{
    const struct ds_config *c = gp.config;
    redis_args_u64(a, clock_wall_ns() / 1000000);
    redis_args_u64(a, c->items.retention_age_ms);
    redis_args_u64(a, c->items.retention_count);
    redis_args_u64(a, c->items.retention_bytes);
    redis_args_str(a, cl.key_item_prefix);
    redis_args_str(a, cl.key_latest);
}

/*
 * The updates of one turn of the loop go to Redis in one script
 * (script_update): send_update() adds one to cl.ucmd and its callback to
 * cl.ucbs, flush_updates() sends them (from the same flush as the
 * accepts, or at once when UPDATE_BATCH_MAX gathered), and each callback
 * hears its own element of the reply, as it would the reply of a script
 * of its own.
 */
struct update_cb {
    redisCallbackFn *fn;
    void *arg;
};

/* A batch of updates in flight: owned by its callback, which frees it. */
struct update_batch {
    size_t n;
    struct update_cb cb[];
};

/*
 * BAD: the {id, reason, ...} of the items a script left alone for their
 * data, logged here, each as "KEY HEAD: REASON TAIL": those of waiting
 * items it could not move on (LUA_BAD_ENTRY_FN: HEAD "cannot run", TAIL
 * where it was taken out of), named once since they left it, their hash
 * left as it was, for a cancel or a repair; and item keys that are no hash
 * (LUA_TRIM's hash_call(): log_bad_counts()), named each time they are
 * met (rarely: an update of their item, its trim).
 */
static void
log_bad_items(const redisReply *bad, const char *head, const char *tail)
{
    if (bad->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i + 1 < bad->elements; i += 2) {
        const redisReply *id = bad->element[i], *why = bad->element[i + 1];
        if (id->type != REDIS_REPLY_STRING || why->type != REDIS_REPLY_STRING)
            continue;
        log_error("cluster: %s%.*s %s: %.*s%s", cl.key_item_prefix, (int)id->len, id->str,
                  head, (int)(why->len < 200 ? why->len : 200), why->str, tail);
    }
}

/* LUA_TRIM's bad (the item keys that are no hash) and bytes_bad (nil, or
 * what {NAME}:finals_bytes held that was no integer), from the update
 * and trim scripts. */
static void
log_bad_counts(const redisReply *bad, const redisReply *bytes_bad)
{
    log_bad_items(bad, "is no item hash", "; its item's updates are written without it "
                  "(delete the key: the retention does when it forgets the item)");
    if (bytes_bad->type == REDIS_REPLY_STRING)
        log_warn("cluster: %.*s: the sum of the retained bytes starts again from the finals "
                 "kept since (items.retention.bytes counts fewer until the older ones are "
                 "forgotten)", (int)(bytes_bad->len < 300 ? bytes_bad->len : 300),
                 bytes_bad->str);
}

static void
on_updated(redisAsyncContext *ac, void *reply, void *arg)
{
    struct update_batch *b = arg;
    redisReply *r = reply;
    int each = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == b->n + 2;
    if (r != NULL && !each && r->type != REDIS_REPLY_ERROR && !cl.shutting_down)
        log_error("cluster: the update script answered %zu updates with an unexpected reply",
                  b->n);
    if (each && !cl.shutting_down)
        log_bad_counts(r->element[b->n], r->element[b->n + 1]);
    for (size_t i = 0; i < b->n; i++)
        b->cb[i].fn(ac, each ? r->element[i] : r != NULL && r->type == REDIS_REPLY_ERROR ? r
                    : NULL, b->cb[i].arg);
    free(b);
}

static void
flush_updates(void)
{
    if (cl.ucbs_n == 0)
        return;
    struct update_batch *b = ds_malloc(sizeof *b + cl.ucbs_n * sizeof b->cb[0]);
    b->n = cl.ucbs_n;
    memcpy(b->cb, cl.ucbs, b->n * sizeof b->cb[0]);
    cl.ucbs_n = 0;
    if (cl.up && !cl.failing && cl.cmd.ac != NULL &&
        redis_cmd_send(&cl.ucmd, cl.cmd.ac, on_updated, b) == 0) {
        cl.update_batches++;
        return;
    }
    if (cl.up && !cl.failing)
        session_fail("command connection: cannot send a command");
    /* Never sent: each hears "no reply" (unknown), from the loop. */
    cl.unsent = ds_realloc(cl.unsent, (cl.unsent_n + b->n) * sizeof cl.unsent[0]);
    memcpy(cl.unsent + cl.unsent_n, b->cb, b->n * sizeof b->cb[0]);
    cl.unsent_n += b->n;
    free(b);
    event_active(cl.flush_event, EV_TIMEOUT, 0);
}

/* The callbacks of updates that were never sent hear a NULL reply. */
static void
fail_unsent_updates(void)
{
    while (cl.unsent_n > 0) {
        size_t n = cl.unsent_n;
        struct update_cb *cbs = cl.unsent;
        cl.unsent = NULL;
        cl.unsent_n = 0;
        for (size_t i = 0; i < n; i++)
            cbs[i].fn(NULL, NULL, cbs[i].arg);
        free(cbs);
    }
}

/*
 * The update of ITEM for the next update script: MODE u/r/f, the attempt
 * the entry must be at (CHECK_ATTEMPT), the update encoded without its
 * seq, TS the start time of its attempt (unix ns, 0: that of its last
 * update; for a retry, when its next attempt is due: unix ms, 0 at once), S0 (S0_LEN bytes) NULL or the STARTED folded into it
 * (take_folded_started()). FN(ARG) hears its seq, 0 (superseded) or an
 * error or NULL (unknown). -1: the session is down, FN will not run.
 */
static int
send_update(const struct item *item, char mode, uint32_t check_attempt, enum wire_state state,
            const uint8_t *encoded, size_t encoded_len, uint64_t ts, const uint8_t *s0,
            size_t s0_len, redisCallbackFn *fn, void *arg)
{
    if (!cl.up || cl.failing || cl.cmd.ac == NULL)
        return -1;
    struct redis_cmd *c = &cl.ucmd;
    if (cl.ucbs_n == 0) {
        redis_cmd_init(c, "EVALSHA");
        redis_cmd_str(c, cl.sha[SCRIPT_UPDATE]);
        redis_cmd_str(c, "9");
        redis_cmd_str(c, cl.key_work);
        redis_cmd_str(c, cl.key_updates);
        redis_cmd_str(c, cl.key_seq);
        redis_cmd_str(c, cl.key_origin);
        redis_cmd_str(c, cl.key_pwork);
        redis_cmd_str(c, cl.key_items);
        redis_cmd_str(c, cl.key_finals);
        redis_cmd_str(c, cl.key_finals_bytes);
        redis_cmd_str(c, cl.key_want_started);
        redis_cmd_str(c, floor_arg());
        redis_cmd_u64(c, gp.config->updates.history);
        redis_cmd_str(c, CLUSTER_GROUP);
        redis_cmd_str(c, cl.consumer);
        const struct ds_config *cf = gp.config;
        redis_cmd_u64(c, clock_wall_ns() / 1000000);
        redis_cmd_u64(c, cf->items.retention_age_ms);
        redis_cmd_u64(c, cf->items.retention_count);
        redis_cmd_u64(c, cf->items.retention_bytes);
        redis_cmd_str(c, cl.key_item_prefix);
        redis_cmd_str(c, cl.key_latest);
    }
    redis_cmd_str(c, item->key & PWORK_BIT ? "1" : "0");
    char entry[48];
    snprintf(entry, sizeof entry, "%d-%" PRIu64, item->key & PWORK_BIT ? 1 : 0,
             item->key & ~PWORK_BIT);
    redis_cmd_str(c, entry);
    redis_cmd_mem(c, &mode, 1);
    redis_cmd_u64(c, check_attempt);
    redis_cmd_mem(c, encoded, encoded_len);
    redis_cmd_str(c, item->id);
    redis_cmd_u64(c, (uint64_t)state);
    if (ts != 0)
        redis_cmd_u64(c, ts);
    else
        redis_cmd_str(c, "");
    redis_cmd_mem(c, s0 != NULL ? s0 : (const uint8_t *)"", s0 != NULL ? s0_len : 0);
    if (cl.ucbs_n == cl.ucbs_cap) {
        cl.ucbs_cap = cl.ucbs_cap ? cl.ucbs_cap * 2 : 256;
        cl.ucbs = ds_realloc(cl.ucbs, cl.ucbs_cap * sizeof cl.ucbs[0]);
    }
    cl.ucbs[cl.ucbs_n++] = (struct update_cb){ fn, arg };
    cl.inflight++;
    if (cl.ucbs_n >= UPDATE_BATCH_MAX)
        flush_updates();
    else if (cl.ucbs_n == 1)
        event_active(cl.flush_event, EV_TIMEOUT, 0);
    return 0;
}

/* The reply of the update script: the seq used, 0 if superseded, -1 if
 * unknown (no reply, or an error: logged). */
static int64_t
update_result(const redisReply *r, const char *what)
{
    if (r == NULL)
        return -1;
    if (r->type == REDIS_REPLY_INTEGER) {
        if (r->integer == 0) {
            cl.superseded++;
            return 0;
        }
        if ((uint64_t)r->integer > cl.max_published_seq)
            cl.max_published_seq = (uint64_t)r->integer;
        return r->integer;
    }
    if (demoted(r))
        return -1;
    log_error("cluster: publishing %s failed: %s", what,
              r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    if (is_error(r, "NOSCRIPT"))
        session_fail("redis forgot our scripts (SCRIPT FLUSH?)");
    return -1;
}

static void
note_lost_update(void)
{
    if (cl.lost_updates++ == 0 || cl.lost_updates % 1000 == 0)
        log_warn("cluster: %" PRIu64 " updates of running items could not be published "
                 "(redis unreachable); their final updates still will be", cl.lost_updates);
}

static void
on_published(redisAsyncContext *ac, void *reply, void *arg)
{
    if (cl.shutting_down)
        return;
    if (update_result(reply, "an update") == -1)
        note_lost_update();
    inflight_done();
}

/* The STARTED of ITEM's attempt if it was folded (cluster_publish()),
 * encoded for the update that follows it (*LEN bytes; the caller frees
 * it), once: NULL if there is none. */
static uint8_t *
take_folded_started(struct item *item, pid_t worker_pid, size_t *len)
{
    if (!item->started_unsent)
        return NULL;
    item->started_unsent = 0;
    if (!item->started)
        return NULL;            /* requeued since: that attempt never went on */
    struct outcome started = { .state = STATE_STARTED, .worker_pid = worker_pid };
    return updates_encode(item, &started, len);
}

/* STARTED or PROGRESS: every update comes back through the cluster's
 * stream, in its order. The STARTED of a quick item is folded (as on one
 * machine) while no subscriber of this instance lets STARTED through: not
 * sent now, but with the item's next update (its final, within
 * microseconds), and written by that update's script just before it only
 * if a subscriber of another instance wants STARTED then
 * ({NAME}:want_started): nobody who wants STARTED misses it, it is only
 * as late as the item is quick (getItems elsewhere shows it QUEUED
 * meanwhile), and the final carries its start time either way. */
static void
cluster_publish(struct item *item, const struct outcome *o)
{
    if (o->state == STATE_STARTED) {
        item->started_unsent = item->weight == ITEM_WEIGHT_QUICK &&
                               subscribers_wanting_started() == 0;
        if (item->started_unsent) {
            cl.started_folded++;
            return;
        }
    }
    size_t len, s0_len = 0;
    uint8_t *s0 = take_folded_started(item, o->worker_pid, &s0_len);
    uint8_t *encoded = updates_encode(item, o, &len);
    uint64_t ts = o->state == STATE_STARTED || s0 != NULL ? clock_wall_ns() : 0;
    if (send_update(item, 'u', item->attempt, o->state, encoded, len, ts, s0, s0_len,
                    on_published, NULL) == -1)
        note_lost_update();
    free(encoded);
    free(s0);
}

/* Tell every instance that a subscriber here wants STARTED updates: the
 * key lives WANT_TTL_MS beyond the longest our connection may be held up
 * (a WAIT for the replicas, cluster_ack.c, ahead of the SET; longer, and
 * the session fails anyway), refreshed every second while one is
 * connected. */
static void
publish_want_started(void)
{
    if (subscribers_wanting_started() == 0 || !cl.up || cl.failing)
        return;
    struct redis_args a;
    redis_args_init(&a, "SET");
    redis_args_str(&a, cl.key_want_started);
    redis_args_str(&a, cl.consumer);
    redis_args_str(&a, "PX");
    redis_args_u64(&a, WANT_TTL_MS + PING_TIMEOUT_MS + cluster_ack_max_wait_ms());
    command(&cl.cmd, NULL, NULL, &a);
}

/* Run FN(ARG) from the loop, not from inside the caller. */
static void
later(void (*fn)(evutil_socket_t, short, void *), void *arg)
{
    struct timeval now = { 0, 0 };
    event_base_once(gp.base, -1, EV_TIMEOUT, fn, arg, &now);
}

static void
drop_later(evutil_socket_t fd, short what, void *arg)
{
    struct item_op *op = arg;
    store_dropped(op->item);
    free(op);
}

static void
on_final(redisAsyncContext *ac, void *reply, void *arg)
{
    struct item_op *op = arg;
    if (cl.shutting_down) {
        store_discard(op->item);
        free(op);
        return;
    }
    int64_t seq = update_result(reply, "a final update");
    if (seq > 0) {
        struct outcome o = { .state = op->state };     /* published through the stream */
        store_final_written(op->item, &o);
    } else {
        char id[300], trace[80];
        if (seq == -1)
            log_warn("cluster: item \"%s\" (attempt %u) finished, but whether redis has its "
                     "final update is unknown; if not, another instance runs it again after "
                     "the lease%s", utf8_escape(id, sizeof id, op->item->id), op->item->attempt,
                     item_trace_note(op->item, trace, sizeof trace));
        store_dropped(op->item);
    }
    free(op);
    inflight_done();
}

/* The final update, XACK and XDEL in one script; then the item is done
 * here (or dropped if its attempt was superseded). */
static void
cluster_final(struct item *item, const struct outcome *o)
{
    struct item_op *op = ds_calloc(1, sizeof *op);
    op->item = item;
    op->state = o->state;
    /* A quick item's STARTED may have been folded (cluster_publish): its
     * start time comes with the final, taken before the final's own. */
    uint64_t ts = item->weight == ITEM_WEIGHT_QUICK ? clock_wall_ns() : 0;
    size_t len, s0_len = 0;
    uint8_t *s0 = take_folded_started(item, o->worker_pid, &s0_len);
    uint8_t *encoded = updates_encode(item, o, &len);
    if (send_update(item, 'f', item->attempt + item->claimed_past_max, o->state, encoded, len,
                    ts, s0, s0_len, on_final, op) == -1) {
        char id[300], trace[80];
        log_warn("cluster: item \"%s\" finished while redis is unreachable; another instance "
                 "runs it again after the lease%s", utf8_escape(id, sizeof id, item->id),
                 item_trace_note(item, trace, sizeof trace));
        later(drop_later, op);
    }
    free(encoded);
    free(s0);
}

static void
on_retried(redisAsyncContext *ac, void *reply, void *arg)
{
    struct item_op *op = arg;
    if (cl.shutting_down) {
        store_discard(op->item);
        free(op);
        return;
    }
    if (update_result(reply, "a RETRYING update") > 0)
        store_retried(op->item);
    else
        store_dropped(op->item);    /* another instance retries it, after the lease */
    free(op);
    inflight_done();
}

/* RETRYING through Redis, then the item is queued again with the next
 * attempt (or dropped if superseded). */
static void
cluster_retry(struct item *item, const struct outcome *o)
{
    struct item_op *op = ds_calloc(1, sizeof *op);
    op->item = item;
    size_t len, s0_len = 0;
    uint8_t *s0 = take_folded_started(item, o->worker_pid, &s0_len);
    uint8_t *encoded = updates_encode(item, o, &len);
    uint64_t due_ms = item->due_ns > (uint64_t)clock_wall_ns() ?
                      item->due_ns / 1000000 + (item->due_ns % 1000000 != 0) : 0; /* never early */
    if (send_update(item, 'r', item->attempt, STATE_RETRYING, encoded, len, due_ms, s0, s0_len,
                    on_retried, op) == -1)
        later(drop_later, op);
    free(encoded);
    free(s0);
}

/* ---- accepting ----------------------------------------------------------- */

/*
 * The items accepted in one turn of the loop go to Redis in one script
 * (script_accepts): they gather in cl.accepts, and a flush runs once the
 * turn's other callbacks have (an event made active). While ACCEPTS_AHEAD
 * batches are already in flight, a flush waits for a reply instead: under
 * load the next batch gathers meanwhile, so a batch grows with the load
 * (up to ACCEPT_BATCH_MAX) and Redis runs one script for many items.
 * Every item of a batch hears its own verdict, from the script's reply.
 */

/* A batch in flight: owned by its callback, which frees it. */
struct accept_batch {
    int wait;                   /* ACCEPTED only after the replicas (cluster_ack.c) */
    size_t n;
    struct acceptance a[];
};

static void
unavailable_later(evutil_socket_t fd, short what, void *arg)
{
    struct item_op *op = arg;
    store_accepted(op->a, STORE_UNAVAILABLE, cl.why);
    free(op);
}

static void flush_accepts(void);

/* The verdict of item I of BATCH from R, the script's whole reply (NULL:
 * the connection went first). */
static void
accept_verdict(const struct acceptance *a, int wait, const redisReply *r, const redisReply *e)
{
    char why[300];
    if (r == NULL) {
        store_accepted(*a, STORE_UNCERTAIN, "cluster: the connection to redis was lost");
    } else if (e != NULL && e->type == REDIS_REPLY_INTEGER && e->integer == 0) {
        store_accepted(*a, STORE_DUPLICATE, NULL);
    } else if (e != NULL && e->type == REDIS_REPLY_INTEGER && e->integer > 0) {
        if ((uint64_t)e->integer > cl.max_published_seq)
            cl.max_published_seq = (uint64_t)e->integer;
        if (wait)
            cluster_ack_hold(*a);
        else
            store_accepted(*a, STORE_ACCEPTED, NULL);
    } else if (is_error(r, "READONLY") || (e != NULL && is_error(e, "READONLY")) ||
               is_error(r, "NOSCRIPT")) {     /* the session goes (on_accepted) */
        store_accepted(*a, STORE_UNAVAILABLE, cl.why);
    } else {
        const redisReply *err = e != NULL ? e : r;
        snprintf(why, sizeof why, "cluster: redis refused the item: %.200s",
                 err->type == REDIS_REPLY_ERROR ? err->str : "unexpected reply");
        store_accepted(*a, STORE_REJECTED, why);
    }
}

static void
on_accepted(redisAsyncContext *ac, void *reply, void *arg)
{
    struct accept_batch *b = arg;
    redisReply *r = reply;
    cl.accepts_ahead--;
    if (cl.shutting_down) {
        for (size_t i = 0; i < b->n; i++)
            store_discard(b->a[i].item);
        free(b);
        return;
    }
    if (r != NULL && is_error(r, "NOSCRIPT"))
        session_fail("redis forgot our scripts (SCRIPT FLUSH?)");
    else if (r != NULL && r->type == REDIS_REPLY_ERROR && !demoted(r))
        log_error("cluster: redis refused a batch of %zu items: %s", b->n, r->str);
    int each = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == b->n;
    for (size_t i = 0; each && i < b->n; i++) {
        if (is_error(r->element[i], "READONLY")) {
            demoted(r->element[i]);     /* a replica now: the session goes */
            break;
        }
    }
    if (r != NULL && r->type != REDIS_REPLY_ERROR && !each)
        log_error("cluster: the accept script answered %zu items with an unexpected reply",
                  b->n);
    for (size_t i = 0; i < b->n; i++)
        accept_verdict(&b->a[i], b->wait, r, each ? r->element[i] : NULL);
    cl.inflight -= b->n;
    free(b);
    cluster_backpressure_check();
    flush_accepts();
    check_done();
}

/* Item I's ACCEPT_FIELDS arguments; NOW the wall clock and MONO the
 * monotonic one. */
static void
accept_args(struct redis_cmd *c, const struct item *item, uint64_t now, uint64_t mono)
{
    size_t len;
    struct outcome queued = { .state = STATE_QUEUED };
    uint8_t *encoded = updates_encode(item, &queued, &len);
    redis_cmd_mem(c, encoded, len);
    free(encoded);
    redis_cmd_str(c, item->id);
    redis_cmd_str(c, item->kind);
    redis_cmd_str(c, item->batch);
    redis_cmd_u64(c, STATE_QUEUED);
    redis_cmd_u64(c, item->max_attempts);
    redis_cmd_u64(c, item->timeout_ms);
    redis_cmd_str(c, item->weight == ITEM_WEIGHT_QUICK ? "1" : "0");
    redis_cmd_mem(c, item->raw, item->raw_len);
    char priority[16];
    redis_cmd_str(c, priority_arg(item, priority));
    /* Accepted when it arrived (its due time counts from then), not when
     * its batch is sent: that may be later (ACCEPTS_AHEAD), and getItems's
     * accepted + delay would then be after its start. */
    uint64_t waited = mono > item->accepted_ns ? mono - item->accepted_ns : 0;
    redis_cmd_u64(c, waited < now ? now - waited : now);
    if (item->due_ns > now)
        redis_cmd_u64(c, item->due_ns / 1000000 + (item->due_ns % 1000000 != 0)); /* never early */
    else
        redis_cmd_str(c, "");
    struct trace_context trace;
    if (trace_of_work_item(item->raw, item->raw_len, &trace) && trace.parent_len > 0) {
        redis_cmd_mem(c, trace.parent, trace.parent_len);
        redis_cmd_mem(c, trace.state, trace.state_len);
    } else {
        redis_cmd_str(c, "");
        redis_cmd_str(c, "");
    }
}

/* Send what gathered in cl.accepts as one script, unless ACCEPTS_AHEAD
 * batches are in flight (a reply flushes again). */
static void
flush_accepts(void)
{
    if (cl.accepts_n == 0 || cl.accepts_ahead >= ACCEPTS_AHEAD)
        return;
    size_t n = cl.accepts_n > ACCEPT_BATCH_MAX ? ACCEPT_BATCH_MAX : cl.accepts_n;
    struct accept_batch *b = ds_malloc(sizeof *b + n * sizeof b->a[0]);
    b->n = n;
    b->wait = cluster_ack_wanted();
    memcpy(b->a, cl.accepts, n * sizeof b->a[0]);
    cl.accepts_n -= n;
    memmove(cl.accepts, cl.accepts + n, cl.accepts_n * sizeof cl.accepts[0]);
    struct redis_cmd *c = &cl.batch_cmd;
    redis_cmd_init(c, "EVALSHA");
    redis_cmd_str(c, cl.sha[SCRIPT_ACCEPTS]);
    redis_cmd_str(c, "7");
    redis_cmd_str(c, cl.key_work);
    redis_cmd_str(c, cl.key_updates);
    redis_cmd_str(c, cl.key_seq);
    redis_cmd_str(c, cl.key_origin);
    redis_cmd_str(c, cl.key_items);
    redis_cmd_str(c, cl.key_delayed);
    redis_cmd_str(c, cl.key_prio);
    redis_cmd_str(c, floor_arg());
    redis_cmd_u64(c, gp.config->updates.history);
    redis_cmd_str(c, cl.key_item_prefix);
    uint64_t now = clock_wall_ns(), mono = clock_monotonic_ns();
    for (size_t i = 0; i < n; i++)
        accept_args(c, b->a[i].item, now, mono);
    if (cl.up && !cl.failing && cl.cmd.ac != NULL &&
        redis_cmd_send(c, cl.cmd.ac, on_accepted, b) == 0) {
        cl.accepts_ahead++;
        cl.accept_batches++;
        if (b->wait)
            cluster_ack_sent();
    } else {
        if (cl.up && !cl.failing)
            session_fail("command connection: cannot send a command");
        /* Never sent: each item hears UNAVAILABLE (from the loop). */
        for (size_t i = 0; i < n; i++) {
            struct item_op *op = ds_calloc(1, sizeof *op);
            op->a = b->a[i];
            later(unavailable_later, op);
        }
        cl.inflight -= n;
        free(b);
        check_done();
    }
    if (cl.accepts_n > 0)
        flush_accepts();
}

static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
    flush_accepts();
    flush_updates();
    fail_unsent_updates();
}

/* The session went: the accepts not sent yet hear UNAVAILABLE (certain:
 * Redis never saw them). */
static void
fail_accepts(void)
{
    for (size_t i = 0; i < cl.accepts_n; i++) {
        struct item_op *op = ds_calloc(1, sizeof *op);
        op->a = cl.accepts[i];
        later(unavailable_later, op);
    }
    cl.inflight -= cl.accepts_n;
    cl.accepts_n = 0;
}

/* The entry and its QUEUED update in one script (with the others of this
 * turn of the loop): accepted once Redis has both. The item comes back to
 * some instance through the work stream. */
static void
cluster_accept(struct acceptance a)
{
    if (!cl.up || cl.failing || cl.cmd.ac == NULL) {
        struct item_op *op = ds_calloc(1, sizeof *op);
        op->a = a;
        later(unavailable_later, op);
        return;
    }
    if (cl.accepts_n == cl.accepts_cap) {
        cl.accepts_cap = cl.accepts_cap ? cl.accepts_cap * 2 : 256;
        cl.accepts = ds_realloc(cl.accepts, cl.accepts_cap * sizeof cl.accepts[0]);
    }
    cl.accepts[cl.accepts_n++] = a;
    cl.inflight++;
    cl.accepts_sent++;
    uint64_t now = clock_wall_ns();
    if (a.item->due_ns > now)
        arm_due((int64_t)(a.item->due_ns / 1000000 + (a.item->due_ns % 1000000 != 0)));
    if (cl.accepts_n == 1)
        event_active(cl.flush_event, EV_TIMEOUT, 0);
}

/* Too much in flight to Redis (INFLIGHT_MAX): submit.c reads no more items
 * until it drains below half of it (cluster_backpressure_check()). */
static int
cluster_busy(void)
{
    if (cl.inflight >= INFLIGHT_MAX && !cl.was_busy) {
        cl.was_busy = 1;
        cl.busy_spells++;
    }
    return cl.was_busy;
}

static void
cluster_backpressure_check(void)
{
    if (cl.was_busy && cl.inflight < INFLIGHT_MAX / 2) {
        cl.was_busy = 0;
        store_room_available();
    }
}

/* ---- taking items -------------------------------------------------------- */

static const redisReply *
field(const redisReply *fields, const char *name)
{
    if (fields == NULL || fields->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && k->len == strlen(name) &&
            memcmp(k->str, name, k->len) == 0 && v->type == REDIS_REPLY_STRING)
            return v;
    }
    return NULL;
}

/* A field as a NUL-terminated string of at most MAX bytes, or NULL. */
static const char *
field_string(const redisReply *fields, const char *name, size_t max, char *buf)
{
    const redisReply *v = field(fields, name);
    if (v == NULL || v->len > max || memchr(v->str, '\0', v->len) != NULL)
        return NULL;
    memcpy(buf, v->str, v->len);
    buf[v->len] = '\0';
    return buf;
}

static int
field_uint(const redisReply *fields, const char *name, uint32_t max, uint32_t *out)
{
    char buf[16], *end;
    if (field_string(fields, name, 10, buf) == NULL || buf[0] == '\0')
        return -1;
    errno = 0;
    unsigned long v = strtoul(buf, &end, 10);
    if (*end != '\0' || errno != 0 || v > max)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* How an entry was taken over from another instance (script_claim). */
struct claim {
    const char *previous;       /* the instance that stopped renewing it */
    uint64_t idle_ms;           /* for this long */
    uint64_t due_ms;            /* its next attempt not before (unix ms; 0: at once) */
    int waiting;                /* that attempt was waiting its backoff: it never started */
};

/*
 * An entry of the work stream becomes an item here, at attempt DELIVERIES.
 * CLAIM: how it was taken over (NULL: read fresh). Returns the item's
 * weight, or 0 if it was not queued.
 */
static uint32_t
take_entry(const redisReply *entry, uint32_t deliveries, const struct claim *claim)
{
    if (entry == NULL || entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    const redisReply *idr = entry->element[0], *fields = entry->element[1];
    uint64_t key = cluster_entry_key(idr->str, idr->len);
    char id[DS_ITEM_ID_MAX + 1], kind[80], batch[DS_ITEM_BATCH_MAX + 1];
    uint32_t max_attempts = 0, timeout_ms = 0, quick = 0;
    const redisReply *raw = field(fields, "w");
    const char *bad = NULL;
    if (key == 0)
        bad = "its ID is not 0-N or 1-N";
    else if (field_string(fields, "i", DS_ITEM_ID_MAX, id) == NULL)
        bad = "field i (id) is missing or too long";
    else if (field_string(fields, "k", 64, kind) == NULL)
        bad = "field k (kind) is missing or too long";
    else if (field_string(fields, "b", DS_ITEM_BATCH_MAX, batch) == NULL)
        bad = "field b (batch) is missing or too long";
    else if (field_uint(fields, "m", 1000, &max_attempts) == -1 || max_attempts == 0)
        bad = "field m (max_attempts) is not 1..1000";
    else if (field_uint(fields, "t", UINT32_MAX, &timeout_ms) == -1)
        bad = "field t (timeout_ms) is not a number";
    else if (field_uint(fields, "q", 1, &quick) == -1)
        bad = "field q is not 0 or 1";
    else if (raw == NULL || raw->len > DS_MESSAGE_SIZE_MAX)
        /* Not this config's grpc.max_message_size: an item keeps the limit
         * it was accepted under (by another instance, or before a reload). */
        bad = "field w (the WorkItem) is missing or larger than any grpc.max_message_size";
    else if (!utf8_valid(id, strlen(id)) || !utf8_valid(kind, strlen(kind)) ||
             !utf8_valid(batch, strlen(batch)))
        bad = "its id, kind or batch is not valid UTF-8";   /* every update would carry it */
    if (bad != NULL && key == 0) {
        log_error("cluster: %s has an entry %.*s that is no item (%s); leaving it", cl.key_work,
                  (int)(idr->len < 40 ? idr->len : 40), idr->str, bad);
        return 0;
    }

    struct item *item = item_make(raw != NULL && bad == NULL ? (const uint8_t *)raw->str : NULL,
                                  raw != NULL && bad == NULL ? raw->len : 0,
                                  bad == NULL ? id : "", bad == NULL ? batch : "",
                                  bad == NULL ? kind : "", max_attempts ? max_attempts : 1,
                                  timeout_ms, (int)quick);
    item->key = key;
    item->attempt = deliveries;
    item->priority = raw_priority(item);
    char error[600];
    if (bad != NULL) {
        snprintf(error, sizeof error, "cluster: entry %d-%" PRIu64 " of %s is not a valid "
                 "item: %s", key & PWORK_BIT ? 1 : 0, key & ~PWORK_BIT, stream_of(key), bad);
        log_error("%s", error);
        store_fail(item, error);
        return 0;
    }
    if (config_handler(gp.config, item->kind) == NULL) {
        snprintf(error, sizeof error, "kind \"%.*s\" is not configured on instance %s (every "
                 "instance of a cluster needs the same handlers)",
                 (int)utf8_prefix(item->kind, strlen(item->kind), 64), item->kind, cl.consumer);
        store_fail(item, error);
        return 0;
    }
    if (claim != NULL)
        cl.claimed++;
    if (claim != NULL && !claim->waiting) {
        char reason[320];
        snprintf(reason, sizeof reason, "instance %.200s stopped renewing it (idle %" PRIu64
                 " ms)", claim->previous, claim->idle_ms);
        if (!store_may_retry(item, deliveries - 1)) {
            snprintf(error, sizeof error, "%s (attempt %u of %u)", reason, deliveries - 1,
                     max_attempts);
            /* The FAILED is of the attempt that stopped, as its error says
             * (not of one past max_attempts that never ran); the final
             * script still checks the entry's delivery count. */
            item->attempt = deliveries - 1;
            item->claimed_past_max = 1;
            store_fail(item, error);
            return 0;
        }
        metrics_kind(item->kind)->retried++;
        item->attempt = deliveries - 1;
        size_t len;
        struct outcome retrying = { .state = STATE_RETRYING, .error = reason };
        uint8_t *encoded = updates_encode(item, &retrying, &len);
        item->attempt = deliveries;
        if (send_update(item, 'u', deliveries, STATE_RETRYING, encoded, len, 0, NULL, 0,
                        on_published, NULL) == -1)
            note_lost_update();
        free(encoded);
    }
    /* The backoff of a retry its holder waited; at most the longest one a
     * config may have from now (a clock far behind the holder's, a bad rd). */
    uint64_t now_ms = (uint64_t)clock_wall_ns() / 1000000;
    if (claim != NULL && claim->due_ms > now_ms)
        item->due_ns = (claim->due_ms - now_ms > RETRY_DUE_MAX_MS ? now_ms + RETRY_DUE_MAX_MS
                        : claim->due_ms) * 1000000;
    uint32_t weight = item->weight;
    store_take(item);
    apply_pending_cancel(key);
    return weight;
}

/* Take the entries ENTRIES (as XREADGROUP gives them), counting them and
 * their weight. */
static void
take_entries(const redisReply *entries, uint32_t *taken, uint32_t *weight)
{
    if (entries == NULL || entries->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < entries->elements; i++) {
        uint32_t w = take_entry(entries->element[i], 1, NULL);
        if (w > 0) {
            (*taken)++;
            *weight += w;
        }
    }
}

static void
on_pulled(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.pulling = 0;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        log_error("cluster: XREADGROUP on %s failed: %s", cl.key_work, r->str);
        session_fail("XREADGROUP failed: %.200s", r->str);
        return;
    }
    uint32_t taken = 0, weight = 0;
    const redisReply *entries = stream_entries(r);
    cl.pull_backlog = entries != NULL && entries->elements >= cl.pull_count;
    take_entries(entries, &taken, &weight);
    if (taken > 0)
        cl.pull_unit = weight / taken > 0 ? weight / taken : ITEM_WEIGHT_QUICK;
    cluster_pull();
}

static void
on_pulled_by_script(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.pulling = 0;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 6 ||
        r->element[3]->type != REDIS_REPLY_INTEGER || r->element[4]->type != REDIS_REPLY_INTEGER) {
        log_error("cluster: pulling items failed: %s",
                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        if (is_error(r, "NOSCRIPT")) {
            session_fail("redis forgot our scripts (SCRIPT FLUSH?)");
            return;
        }
        /* The script is tried again in a while (the lanes it was to look
         * at may hold items, and an idle instance has nothing else that
         * would pull); meanwhile the work stream is read as usual, so a
         * cause that lasts (a lane's key that is no list) stops no other item. */
        cl.pull_paused = 1;
        struct timeval tv = clock_timeval_ms(PULL_RETRY_MS);
        evtimer_add(cl.pull_timer, &tv);
        cluster_pull();
        return;
    }
    char tail[200];
    snprintf(tail, sizeof tail, "; taken out of its lane (%s:P), it waits no more (cancel it, "
             "or repair its hash and put it back)", cl.key_prio);
    log_bad_items(r->element[5], "cannot run", tail);
    uint32_t taken = 0, weight = 0;
    for (size_t i = 0; i < 3; i++)  /* above 0, 0, below 0: best first */
        take_entries(r->element[i], &taken, &weight);
    /* Nothing at all: no lane to watch; block on the work stream again
     * (unless a wake came meanwhile: the lane it announced may have been
     * filled after the script ran). A lane item too heavy for the room
     * left waits for the next pull by script, when room appears. */
    int too_heavy = r->element[4]->integer != 0;
    cl.prio_waiting = ((taken > 0 || too_heavy) && r->element[3]->integer > 0) ||
                      cl.wakes != cl.wakes_at_pull;
    if (taken > 0)
        cl.pull_unit = weight / taken > 0 ? weight / taken : ITEM_WEIGHT_QUICK;
    cluster_pull();
}

static void
on_unblocked(redisAsyncContext *ac, void *reply, void *arg)
{
    cl.unblocking = 0;
}

/* Prioritized items may be waiting: pull by script from now on, and end
 * the XREADGROUP blocked on the work stream, if one is. */
static void
prio_wake(void)
{
    cl.prio_waiting = 1;
    cl.wakes++;
    if (!cl.pulling) {
        cluster_pull();
    } else if (cl.pull_blocked && !cl.unblocking && cl.work_client_id > 0) {
        struct redis_args a;
        redis_args_init(&a, "CLIENT");
        redis_args_str(&a, "UNBLOCK");
        redis_args_u64(&a, (uint64_t)cl.work_client_id);
        if (command(&cl.cmd, on_unblocked, NULL, &a) == 0)
            cl.unblocking = 1;
    }
}

static void
on_pull_timer(evutil_socket_t fd, short what, void *arg)
{
    cl.pull_paused = 0;
    prio_wake();
}

/* Local room may have appeared: take more items from Redis. */
static void
cluster_pull(void)
{
    if (!cl.enabled || !cl.up || cl.failing || cl.pulling || gp.draining || gp.stopping)
        return;
    uint32_t room = store_local_room(), unit = cl.pull_unit ? cl.pull_unit : ITEM_WEIGHT_FULL;
    if (room < unit)
        return;
    uint32_t count = room / unit;
    if (count > PULL_MAX)
        count = PULL_MAX;
    struct redis_args a;
    if (cl.prio_waiting && !cl.pull_paused) {
        redis_args_init(&a, "EVALSHA");
        redis_args_str(&a, cl.sha[SCRIPT_PULL]);
        redis_args_str(&a, "4");
        redis_args_str(&a, cl.key_work);
        redis_args_str(&a, cl.key_pwork);
        redis_args_str(&a, cl.key_prio);
        redis_args_str(&a, cl.key_latest);
        redis_args_str(&a, CLUSTER_GROUP);
        redis_args_str(&a, cl.consumer);
        redis_args_u64(&a, count);
        redis_args_str(&a, cl.key_item_prefix);
        redis_args_u64(&a, room);
        redis_args_u64(&a, ITEM_WEIGHT_QUICK);
        redis_args_u64(&a, ITEM_WEIGHT_FULL);
        redis_args_u64(&a, unit);
        if (command(&cl.cmd, on_pulled_by_script, NULL, &a) == 0) {
            cl.pulling = 1;
            cl.pull_blocked = 0;
            cl.wakes_at_pull = cl.wakes;
        }
        return;
    }
    /* The guess from the items lately taken holds while a backlog streams
     * in. Out of one (this read may block until new entries come), take no
     * more than full items would fill: a few items accepted together, the
     * first after a quiet spell, spread over the idle instances instead of
     * all going to the first one that reads. */
    if (!cl.pull_backlog && count > room / ITEM_WEIGHT_FULL)
        count = room / ITEM_WEIGHT_FULL > 0 ? room / ITEM_WEIGHT_FULL : 1;
    redis_args_init(&a, "XREADGROUP");
    redis_args_str(&a, "GROUP");
    redis_args_str(&a, CLUSTER_GROUP);
    redis_args_str(&a, cl.consumer);
    redis_args_str(&a, "COUNT");
    redis_args_u64(&a, count);
    redis_args_str(&a, "BLOCK");
    redis_args_str(&a, BLOCK_MS);
    redis_args_str(&a, "STREAMS");
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, ">");
    if (command(&cl.work, on_pulled, NULL, &a) == 0) {
        cl.pulling = 1;
        cl.pull_blocked = 1;
        cl.pull_count = count;
    }
}

/* ---- leases -------------------------------------------------------------- */

/* The arguments before the ids in a renew command. */
#define RENEW_FIXED 6

static void
on_renewed(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (r != NULL && r->type == REDIS_REPLY_ERROR && !cl.shutting_down)
        log_error("cluster: renewing our items failed: %s", r->str);
}

/* A renew command for the entries of STREAM (work or pwork). */
static void
renew_start(struct redis_args *a, const char *stream)
{
    redis_args_init(a, "EVALSHA");
    redis_args_str(a, cl.sha[SCRIPT_RENEW]);
    redis_args_str(a, "1");
    redis_args_str(a, stream);
    redis_args_str(a, CLUSTER_GROUP);
    redis_args_str(a, cl.consumer);
}

/* Send the ids gathered in A, if any, and start over. */
static void
renew_flush(struct redis_args *a)
{
    if (a->argc > RENEW_FIXED)
        command(&cl.cmd, on_renewed, NULL, a);
    renew_start(a, a->argv[3]);     /* KEYS[1]: still valid, cl's */
}

/* ARG: two commands, for work and for pwork. */
static void
renew_one(const struct item *item, void *arg)
{
    struct redis_args *a = (struct redis_args *)arg + (item->key & PWORK_BIT ? 1 : 0);
    entry_arg(a, item->key);
    if (a->argc == RENEW_FIXED + RENEW_CHUNK)
        renew_flush(a);
}

static void
on_lease_published(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (r != NULL && r->type == REDIS_REPLY_ERROR && !cl.shutting_down)
        log_error("cluster: publishing our lease in %s failed: %s", cl.key_lease, r->str);
}

/* Tell the claimers our lease ({NAME}:lease:CONSUMER), after the renewals
 * of what we hold (on the same connection: a shorter lease is announced
 * only once everything we hold was renewed under it); it lives two leases,
 * renewed with every renewal. */
static void
publish_lease(void)
{
    uint64_t lease = gp.config->cluster.lease_ms;
    struct redis_args a;
    redis_args_init(&a, "SET");
    redis_args_str(&a, cl.key_lease);
    redis_args_u64(&a, lease);
    redis_args_str(&a, "PX");
    redis_args_u64(&a, 2 * lease);
    command(&cl.cmd, on_lease_published, NULL, &a);
}

static void
on_renew_timer(evutil_socket_t fd, short what, void *arg)
{
    static struct redis_args a[2];  /* static: too big for the stack to be worth it */
    renew_start(&a[0], cl.key_work);
    renew_start(&a[1], cl.key_pwork);
    store_for_each(renew_one, a);
    renew_flush(&a[0]);
    renew_flush(&a[1]);
    publish_lease();
}

static void
on_claimed(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.claiming = 0;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type != REDIS_REPLY_ARRAY) {
        log_error("cluster: claiming the items of lost instances failed: %s",
                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        return;
    }
    size_t claimed = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 5 ||
            e->element[0]->type != REDIS_REPLY_STRING ||
            e->element[2]->type != REDIS_REPLY_INTEGER ||
            e->element[3]->type != REDIS_REPLY_STRING ||
            e->element[4]->type != REDIS_REPLY_INTEGER)
            continue;
        uint64_t key = cluster_entry_key(e->element[0]->str, e->element[0]->len);
        if (key != 0 && store_holds(key))
            continue;   /* ours, renewed late: our copy runs on */
        if (e->elements >= 6 && e->element[5]->type == REDIS_REPLY_STRING && key != 0) {
            char reason[CONTROL_REASON_MAX + 1];
            snprintf(reason, sizeof reason, "%.*s", (int)e->element[5]->len, e->element[5]->str);
            remember_cancel(key, utf8_valid(reason, strlen(reason)) ? reason : "");
        }
        struct claim claim = { .previous = e->element[3]->str,
                               .idle_ms = (uint64_t)e->element[4]->integer };
        if (e->elements >= 7 && redis_reply_u64(e->element[6], 15, &claim.due_ms) == -1)
            claim.due_ms = 0;   /* none (or not a time): at once */
        claim.waiting = e->elements >= 8 && e->element[7]->type == REDIS_REPLY_INTEGER &&
                        e->element[7]->integer == 1;
        if (e->elements >= 9 && e->element[8]->type == REDIS_REPLY_STRING)
            log_warn("cluster: %.*s: the item taken over runs without it (no cancel asked "
                     "of its holder, no retry's due time)",
                     (int)(e->element[8]->len < 400 ? e->element[8]->len : 400),
                     e->element[8]->str);
        redisReply entry = { .type = REDIS_REPLY_ARRAY, .elements = 2, .element = e->element };
        long long deliveries = e->element[2]->integer;
        take_entry(&entry, deliveries > 0 && deliveries < UINT32_MAX ? (uint32_t)deliveries : 1,
                   &claim);
        claimed++;
    }
    if (claimed > 0)
        log_notice("cluster: took over %zu items from instances that stopped renewing them",
                   claimed);
    if (r->elements >= CLAIM_COUNT)
        event_active(cl.claim_timer, EV_TIMEOUT, 0);   /* more are waiting */
}

static void
on_trimmed(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type == REDIS_REPLY_ERROR)
        log_error("cluster: forgetting the finals past items.retention failed: %s", r->str);
    else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2)
        log_bad_counts(r->element[0], r->element[1]);
}

static void
on_counted(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    intptr_t which = (intptr_t)arg;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type == REDIS_REPLY_INTEGER && r->integer >= 0)
        cl.known[which] = (uint64_t)r->integer;
    else if (r->type == REDIS_REPLY_STRING)
        (void)redis_reply_u64(r, 19, &cl.known[which]);    /* not a count: the last stands */
    else if (r->type == REDIS_REPLY_NIL)
        cl.known[which] = 0;
}

static void
on_claim_timer(evutil_socket_t fd, short what, void *arg)
{
    if (cl.claiming || gp.draining || gp.stopping)
        return;     /* a leaving instance leaves them to the others */
    struct redis_args a;
    redis_args_init(&a, "EVALSHA");
    redis_args_str(&a, cl.sha[SCRIPT_CLAIM]);
    redis_args_str(&a, "2");
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, cl.key_pwork);
    redis_args_str(&a, CLUSTER_GROUP);
    redis_args_str(&a, cl.consumer);
    redis_args_u64(&a, gp.config->cluster.lease_ms);
    redis_args_u64(&a, CLAIM_COUNT);
    redis_args_str(&a, cl.key_item_prefix);
    redis_args_u64(&a, (uint64_t)clock_wall_ns() / 1000000);
    redis_args_str(&a, cl.key_lease_prefix);
    if (command(&cl.cmd, on_claimed, NULL, &a) == 0)
        cl.claiming = 1;
    /* Finals that aged out while none ended (the trim of every final does
     * the rest). */
    redis_args_init(&a, "EVALSHA");
    redis_args_str(&a, cl.sha[SCRIPT_TRIM]);
    redis_args_str(&a, "8");
    for (int i = 0; i < 5; i++)
        redis_args_str(&a, cl.key_work);    /* only KEYS[6..8] are used */
    redis_args_str(&a, cl.key_items);
    redis_args_str(&a, cl.key_finals);
    redis_args_str(&a, cl.key_finals_bytes);
    retention_args(&a);
    command(&cl.cmd, on_trimmed, NULL, &a);
    /* The known items, for /status and /metrics. */
    static const char *const count_cmd[3] = { "ZCARD", "LLEN", "GET" };
    const char *count_key[3] = { cl.key_items, cl.key_finals, cl.key_finals_bytes };
    for (intptr_t i = 0; i < 3; i++) {
        redis_args_init(&a, count_cmd[i]);
        redis_args_str(&a, count_key[i]);
        command(&cl.cmd, on_counted, (void *)i, &a);
    }
}

/* ---- capacity ------------------------------------------------------------ */

static uint64_t
outstanding(void)
{
    return cl.xlen + (cl.accepts_sent - cl.accepts_at_poll);
}

/* Room for one more item in the shared queue (queue.capacity)? */
static int
cluster_has_room(void)
{
    return outstanding() < gp.config->queue.capacity;
}

static void
on_polled(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    uint64_t *at = arg;
    cl.polling = 0;
    if (r != NULL && !cl.shutting_down && r->type == REDIS_REPLY_INTEGER && r->integer >= 0) {
        cl.xlen = (uint64_t)r->integer;
        cl.accepts_at_poll = *at;
        if (cluster_has_room())
            store_room_available();
    }
    free(at);
}

static void
on_poll_timer(evutil_socket_t fd, short what, void *arg)
{
    if (cl.polling || submit_active() == 0)
        return;
    /* The reply counts every accept sent before it on this connection. */
    uint64_t *at = ds_malloc(sizeof *at);
    *at = cl.accepts_sent;
    struct redis_args a;
    redis_args_init(&a, "EVALSHA");
    redis_args_str(&a, cl.sha[SCRIPT_SIZE]);
    redis_args_str(&a, "4");
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, cl.key_pwork);
    redis_args_str(&a, cl.key_delayed);
    redis_args_str(&a, cl.key_prio);
    if (command(&cl.cmd, on_polled, at, &a) == 0)
        cl.polling = 1;
    else
        free(at);
}

/* ---- delayed items -------------------------------------------------------- */

/*
 * One timer per instance, set to the earliest due time it knows: of the
 * delayed items it accepted, of those whose QUEUED update it read (every
 * instance reads them all), and the earliest still in {NAME}:delayed as
 * the last due script saw it; never further than DUE_POLL_MS. When it
 * fires, the due script moves what is due on. Every instance does this, so
 * a delayed item outlives the instance that accepted it.
 */
static void
arm_due(int64_t due_ms)
{
    if (!cl.enabled || cl.due_timer == NULL)
        return;
    int64_t now = (int64_t)(clock_wall_ns() / 1000000);
    if (due_ms > now + DUE_POLL_MS)
        due_ms = now + DUE_POLL_MS;
    if (cl.due_at_ms != 0 && cl.due_at_ms <= due_ms)
        return;
    cl.due_at_ms = due_ms;
    struct timeval tv = clock_timeval_ms(due_ms > now ? (uint64_t)(due_ms - now) : 0);
    evtimer_add(cl.due_timer, &tv);
}

static void
on_due(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.due_running = 0;
    if (r == NULL || cl.shutting_down)
        return;
    int64_t now = (int64_t)(clock_wall_ns() / 1000000);
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER) {
        log_error("cluster: moving the delayed items that are due failed: %s",
                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        if (is_error(r, "NOSCRIPT"))
            session_fail("redis forgot our scripts (SCRIPT FLUSH?)");
        arm_due(now + DUE_POLL_MS);
        return;
    }
    char tail[200];
    snprintf(tail, sizeof tail, "; taken out of %s, it waits no more (cancel it, or repair "
             "its hash and put it back)", cl.key_delayed);
    log_bad_items(r->element[3], "cannot run", tail);
    if (r->element[1]->integer)
        prio_wake();        /* (the control stream's wake reaches the others) */
    else if (r->element[0]->integer > 0)
        cluster_pull();
    /* The earliest score left in {NAME}:delayed ("-1": none), a due time
     * in unix ms; anything else (inf, 1e+20: written by hand) is never due:
     * polled as usual, not read as 0 (at once, again and again). */
    const redisReply *nx = r->element[2];
    uint64_t next = 0;
    if (nx->type == REDIS_REPLY_INTEGER && nx->integer >= 0) {
        arm_due(nx->integer);
    } else if (redis_reply_u64(nx, 15, &next) == 0) {
        arm_due((int64_t)next);
    } else {
        static char warned[40];     /* the last score warned of: once each */
        char score[40] = "(not a string)";
        if (nx->type == REDIS_REPLY_STRING)
            snprintf(score, sizeof score, "%.*s", (int)(nx->len < 32 ? nx->len : 32), nx->str);
        if (strcmp(score, "-1") != 0 && strcmp(score, warned) != 0) {
            log_warn("cluster: %s holds a member whose score %s is not a due time (unix ms): "
                     "it never runs; remove it (ZREM)", cl.key_delayed, score);
            snprintf(warned, sizeof warned, "%s", score);
        }
        arm_due(now + DUE_POLL_MS);
    }
}

static void
on_due_timer(evutil_socket_t fd, short what, void *arg)
{
    cl.due_at_ms = 0;
    if (cl.due_running || !cl.up || cl.failing)
        return;     /* its reply, or session_up(), sets the timer again */
    struct redis_args a;
    redis_args_init(&a, "EVALSHA");
    redis_args_str(&a, cl.sha[SCRIPT_DUE]);
    redis_args_str(&a, "5");
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, cl.key_delayed);
    redis_args_str(&a, cl.key_prio);
    redis_args_str(&a, cl.key_control);
    redis_args_str(&a, cl.key_latest);
    redis_args_u64(&a, clock_wall_ns() / 1000000);
    redis_args_str(&a, cl.key_item_prefix);
    redis_args_u64(&a, DUE_COUNT);
    if (command(&cl.cmd, on_due, NULL, &a) == 0)
        cl.due_running = 1;
}

/* ---- the update stream --------------------------------------------------- */

static void
report_seq(void)
{
    /* A grpc process started after us (even without cluster) continues past it. */
    if (cl.last_seq + SEQ_RESERVE_CHUNK / 2 < cl.seq_reported)
        return;
    cl.seq_reported = cl.last_seq + SEQ_RESERVE_CHUNK;
    struct ipc_seq s = { .seq = cl.seq_reported };
    master_send(IPC_SEQ_RESERVE, &s, sizeof s);
}

/* A string of an update: where, how long; p NULL: absent. */
struct entry_str {
    const char *p;
    size_t len;
};

/* One update of an entry of the update stream: its fields (NULL: absent). */
struct entry_update {
    const redisReply *u;        /* the Update encoded without its seq */
    struct entry_str i, k, b;   /* item_id, kind, batch */
    uint32_t state;             /* 0: unknown */
    const redisReply *p, *d;    /* a QUEUED update of an item that waits */
};

/* A string field as an entry_str. */
static struct entry_str
reply_str(const redisReply *r)
{
    return r != NULL ? (struct entry_str){ r->str, r->len } : (struct entry_str){ NULL, 0 };
}

/*
 * Layout 3 keeps an update's item_id (2), kind (3), state (4) and batch
 * (11) only inside the encoded Update: take them from there (E->u). A
 * field given beside it (layout 2's I K B S) wins. -1 if U is malformed.
 */
static int
update_fields(struct entry_update *e)
{
    const uint8_t *buf = (const uint8_t *)e->u->str;
    size_t len = e->u->len, i = 0;
    struct entry_str id = { NULL, 0 }, kind = { NULL, 0 }, batch = { "", 0 };
    uint64_t state = 0;
    struct pbwire_field f;
    int r;
    while ((r = pbwire_next(buf, len, &i, &f)) == 1) {
        struct entry_str s = { (const char *)f.bytes, f.len };
        if (f.number == 4 && f.type == PBWIRE_VARINT)
            state = f.value;
        else if (f.number == 2 && f.type == PBWIRE_LEN)
            id = s;
        else if (f.number == 3 && f.type == PBWIRE_LEN)
            kind = s;
        else if (f.number == 11 && f.type == PBWIRE_LEN)
            batch = s;
    }
    if (r == -1)
        return -1;
    if (e->i.p == NULL)
        e->i = id;
    if (e->k.p == NULL)
        e->k = kind;
    if (e->b.p == NULL)
        e->b = batch;
    if (e->state == 0 && state <= STATE_MAX)
        e->state = (uint32_t)state;
    return 0;
}

/* A state field ("1".."7") as a state, 0 if it is none. */
static uint32_t
state_of(const redisReply *s)
{
    if (s != NULL && s->len == 1 && s->str[0] >= '1' && s->str[0] <= '0' + STATE_MAX)
        return (uint32_t)(s->str[0] - '0');
    return 0;
}

/* A QUEUED update of an item that waits (script_accepts): p, in a
 * priority's lane; d, delayed until then. */
static void
queued_waits(const struct entry_update *e)
{
    if (e->d != NULL) {
        char buf[24], *end;
        if (e->d->len == 0 || e->d->len >= sizeof buf)
            return;
        memcpy(buf, e->d->str, e->d->len);
        buf[e->d->len] = '\0';
        long long due = strtoll(buf, &end, 10);
        if (*end == '\0' && due > 0)
            arm_due(due);
    } else if (e->p != NULL) {
        prio_wake();
    }
}

/* The update with SEQ, E, of the entry with ID ENTRY. */
static void
deliver_update(uint64_t seq, struct entry_update *e, const redisReply *entry)
{
    const redisReply *u = e->u;
    int parsed = u != NULL && update_fields(e) == 0;
    const struct entry_str *i = &e->i, *k = &e->k, *b = &e->b;
    uint32_t state = e->state;
    /* Written by an instance that did not check: it would end every stream.
     * 11 bytes: the seq that updates_deliver() puts in front. */
    if (seq == 0 || !parsed || i->p == NULL || k->p == NULL || b->p == NULL || state == 0 ||
        !utf8_valid(i->p, i->len) || !utf8_valid(k->p, k->len) ||
        !utf8_valid(b->p, b->len) || u->len > DS_UPDATE_SIZE_MAX - 11) {
        log_error("cluster: skipping seq %" PRIu64 " in entry %.*s of %s: it is no update%s",
                  seq, (int)(entry->len < 40 ? entry->len : 40), entry->str, cl.key_updates,
                  u != NULL && u->len > DS_UPDATE_SIZE_MAX - 11
                  ? " a stock client accepts (over 4 MiB)" : "");
        if (seq > cl.last_seq)
            cl.last_seq = seq;  /* its seq is used up all the same */
        return;
    }
    if (cl.last_seq != 0 && seq <= cl.last_seq)
        return;
    if (cl.last_seq == 0 || seq != cl.last_seq + 1) {
        char why[256];
        if (cl.last_seq != 0) {
            snprintf(why, sizeof why, "updates %" PRIu64 "..%" PRIu64 " are not in the "
                     "cluster's update stream (trimmed before this instance read them, or redis "
                     "lost them)", cl.last_seq + 1, seq - 1);
            log_warn("cluster: %s; ending every subscriber stream", why);
            subscribers_cut_all(why);
        }
        updates_restart(seq - 1, cl.origin + 1, cl.last_seq != 0 ? why : NULL);
    }
    cl.last_seq = seq;
    updates_deliver(seq, (enum wire_state)state, (const uint8_t *)u->str, u->len, i->p, i->len,
                    k->p, k->len, b->p, b->len);
    if (state == STATE_SUCCEEDED || state == STATE_FAILED || state == STATE_CANCELLED)
        cluster_items_final(i->p, i->len);
    else if (state == STATE_QUEUED)
        queued_waits(e);
}

/* Is R the one-letter string C? */
static int
is_letter(const redisReply *r, char c)
{
    return r->type == REDIS_REPLY_STRING && r->len == 1 && r->str[0] == c;
}

/*
 * An entry of the update stream: layout 1 (u i k b s, and p or d), one
 * update, its seq the entry's ID 0-SEQ, written by an older version (read
 * for what it left in the stream); or layouts 2 and 3 (LUA_BATCH: U, in
 * layout 2 with I K B S, and P or D, once per update), N updates whose
 * last has the seq of the entry's ID; this version writes layout 3 (one
 * update: script_cancel, script_retry; a batch: the accepts and the
 * updates).
 */
static int
deliver_entry(const redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    const redisReply *fields = entry->element[1], *id = entry->element[0];
    uint64_t last = id_number(id->str, id->len);
    if (last == 0) {
        /* Read from 0-SEQ, it would come back with every read; and every
         * update written after it (0-SEQ) fails: the session waits. */
        session_fail("%s has an entry %.*s that no instance wrote (not 0-SEQ), after which no "
                     "update can be added: XDEL it, then XSETID %s 0-SEQ (SEQ: GET %s)",
                     cl.key_updates, (int)(id->len < 40 ? id->len : 40), id->str,
                     cl.key_updates, cl.key_seq);
        cl.backoff_ms = BACKOFF_MAX_MS;     /* (a session came up) until someone removes it */
        return -1;
    }
    struct entry_update e = { 0 };
    if (fields->type != REDIS_REPLY_ARRAY || fields->elements < 2 ||
        !is_letter(fields->element[0], 'U')) {
        e = (struct entry_update){ .u = field(fields, "u"), .i = reply_str(field(fields, "i")),
                                   .k = reply_str(field(fields, "k")),
                                   .b = reply_str(field(fields, "b")),
                                   .state = state_of(field(fields, "s")),
                                   .p = field(fields, "p"), .d = field(fields, "d") };
        deliver_update(last, &e, id);
        return 0;
    }
    uint64_t n = 0;
    for (size_t j = 0; j + 1 < fields->elements; j += 2)
        n += is_letter(fields->element[j], 'U');
    if (n > last) {             /* no seq for them all: no update of ours */
        deliver_update(last, &e, id);
        return 0;
    }
    uint64_t seq = last - n + 1;
    int have = 0;
    for (size_t j = 0; j + 1 < fields->elements; j += 2) {
        const redisReply *key = fields->element[j], *v = fields->element[j + 1];
        if (key->type != REDIS_REPLY_STRING || key->len != 1 || v->type != REDIS_REPLY_STRING)
            continue;
        switch (key->str[0]) {
        case 'U':
            if (have)
                deliver_update(seq++, &e, id);
            e = (struct entry_update){ .u = v };
            have = 1;
            break;
        case 'I': e.i = reply_str(v); break;   /* layout 2 */
        case 'K': e.k = reply_str(v); break;
        case 'B': e.b = reply_str(v); break;
        case 'S': e.state = state_of(v); break;
        case 'P': e.p = v; break;
        case 'D': e.d = v; break;
        default: break;
        }
    }
    if (have)
        deliver_update(seq, &e, id);
    return 0;
}

/* ---- cancel requests (the control stream) ---------------------------------- */

/*
 * A cancel request for an item this instance is to hold but has not taken
 * yet (its XREADGROUP or claim reply is still on its way): applied when it
 * is taken, forgotten after PENDING_CANCEL_MS.
 */
#define PENDING_CANCELS     64
#define PENDING_CANCEL_MS   30000
static struct pending_cancel {
    uint64_t key;               /* 0: free */
    uint64_t at_ms;
    char reason[CONTROL_REASON_MAX + 1];
} pending_cancels[PENDING_CANCELS];

static int
key_matches(const struct item *item, void *arg)
{
    return item->key == *(const uint64_t *)arg;
}

/* Cancel the item with KEY if it is held here (1), else 0. */
static int
cancel_held(uint64_t key, const char *reason)
{
    if (!store_holds(key))
        return 0;
    store_cancel(key_matches, &key, reason[0] ? reason : NULL);
    return 1;
}

static void
remember_cancel(uint64_t key, const char *reason)
{
    uint64_t now = clock_monotonic_ms();
    struct pending_cancel *slot = &pending_cancels[0];
    for (int i = 0; i < PENDING_CANCELS; i++) {
        struct pending_cancel *p = &pending_cancels[i];
        if (p->key == 0 || now - p->at_ms > PENDING_CANCEL_MS) {
            slot = p;
            break;
        }
        if (p->at_ms < slot->at_ms)
            slot = p;       /* full: the oldest goes */
    }
    slot->key = key;
    slot->at_ms = now;
    snprintf(slot->reason, sizeof slot->reason, "%s", reason);
}

/* ITEM (KEY) was just taken here: was it cancelled on its way? */
static void
apply_pending_cancel(uint64_t key)
{
    uint64_t now = clock_monotonic_ms();
    for (int i = 0; i < PENDING_CANCELS; i++) {
        struct pending_cancel *p = &pending_cancels[i];
        if (p->key == key && now - p->at_ms <= PENDING_CANCEL_MS) {
            p->key = 0;
            cancel_held(key, p->reason);
        }
    }
}

/* An entry of {NAME}:control: c the consumer, e the work entry, r the
 * reason. Ours: cancel the item through the store like a local cancel;
 * its CANCELLED goes through the final script. */
static void
control_entry(const redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING)
        return;
    const redisReply *idr = entry->element[0], *fields = entry->element[1];
    if (idr->len < sizeof cl.control_last) {
        memcpy(cl.control_last, idr->str, idr->len);
        cl.control_last[idr->len] = '\0';
    }
    if (field(fields, "wake") != NULL) {
        prio_wake();    /* script_due put items in their lanes */
        return;
    }
    char consumer[sizeof cl.consumer], reason[CONTROL_REASON_MAX + 1];
    const redisReply *e = field(fields, "e");
    if (field_string(fields, "c", sizeof consumer - 1, consumer) == NULL ||
        strcmp(consumer, cl.consumer) != 0 || e == NULL)
        return;
    if (field_string(fields, "r", CONTROL_REASON_MAX, reason) == NULL ||
        !utf8_valid(reason, strlen(reason)))
        reason[0] = '\0';
    uint64_t key = cluster_entry_key(e->str, e->len);
    if (key == 0)
        return;
    cl.cancels++;
    if (!cancel_held(key, reason))
        remember_cancel(key, reason);
}

static void
on_updates(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    cl.reading = 0;
    if (r == NULL || cl.shutting_down)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        session_fail("XREAD on %s failed: %.200s", cl.key_updates, r->str);
        return;
    }
    size_t n = 0;
    for (size_t k = 0; r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
        const redisReply *stream = r->element[k];
        if (stream->type != REDIS_REPLY_ARRAY || stream->elements < 2 ||
            stream->element[0]->type != REDIS_REPLY_STRING ||
            stream->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        const redisReply *name = stream->element[0], *entries = stream->element[1];
        if (strlen(cl.key_control) == name->len &&
            memcmp(name->str, cl.key_control, name->len) == 0) {
            for (size_t i = 0; i < entries->elements; i++)
                control_entry(entries->element[i]);
            continue;
        }
        n = entries->elements;
        for (size_t i = 0; i < n; i++)
            if (deliver_entry(entries->element[i]) == -1)
                return;
    }
    if (cl.last_seq > 0)
        report_seq();
    if (n < READ_COUNT && !cl.caught_up) {
        cl.caught_up = 1;
        log_notice("cluster: serving; the update stream %s is read up to seq %" PRIu64,
                   cl.key_updates, cl.last_seq);
        health_changed();
        store_room_available();
    }
    read_updates();
    check_done();
}

static void
read_updates(void)
{
    if (cl.reading)
        return;
    struct redis_args a;
    redis_args_init(&a, "XREAD");
    redis_args_str(&a, "COUNT");
    redis_args_u64(&a, READ_COUNT);
    /* Catching up does not wait: a short read means we are there. */
    if (cl.caught_up) {
        redis_args_str(&a, "BLOCK");
        redis_args_str(&a, BLOCK_MS);
    }
    redis_args_str(&a, "STREAMS");
    redis_args_str(&a, cl.key_updates);
    redis_args_str(&a, cl.key_control);
    redis_args_stream_id(&a, 0, cl.last_seq);
    redis_args_str(&a, cl.control_last);
    if (command(&cl.upd, on_updates, NULL, &a) == 0)
        cl.reading = 1;
}

/* ---- the session --------------------------------------------------------- */

static void
set_why(void)
{
    if (cl.up && !cl.caught_up)
        snprintf(cl.why, sizeof cl.why, "cluster: this instance is still reading the update "
                 "stream %s; try again shortly", cl.key_updates);
    else
        snprintf(cl.why, sizeof cl.why, "cluster: %s is unreachable (%s); nothing is "
                 "accepted until it is back", where(),
                 cl.last_error[0] ? cl.last_error : "connecting");
}

static void
stop_timers(void)
{
    evtimer_del(cl.setup_timer);
    evtimer_del(cl.ping_timer);
    evtimer_del(cl.renew_timer);
    evtimer_del(cl.claim_timer);
    evtimer_del(cl.poll_timer);
    evtimer_del(cl.due_timer);
    evtimer_del(cl.pull_timer);
    cl.pull_paused = 0;
    cl.due_at_ms = 0;
}

static void
session_fail(const char *fmt, ...)
{
    if (cl.failing || cl.shutting_down)
        return;
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    int was_up = cl.up && cl.caught_up;
    if (was_up || strcmp(why, cl.last_error) != 0)
        log_error("cluster: %s: %s%s", where(), why, was_up ? "; doSomething answers UNAVAILABLE "
                  "until it is back" : "");
    snprintf(cl.last_error, sizeof cl.last_error, "%s", why);
    cl.failing = 1;
    cl.up = 0;
    set_why();
    if (was_up)
        health_changed();
    event_active(cl.reset_event, EV_TIMEOUT, 0);
}

static void
free_conn(struct conn *conn)
{
    redisAsyncContext *ac = conn->ac;
    conn->ac = NULL;
    conn->connected = 0;
    if (ac != NULL) {
        ac->data = NULL;
        redisAsyncFree(ac);     /* replies still owed come back as NULL */
    }
}

/* Outside every hiredis callback: drop the session, try again later. */
static void
on_reset(evutil_socket_t fd, short what, void *arg)
{
    stop_timers();
    if (cl.sentinels)
        sentinel_cancel();
    resolve_cancel(cl.resolving);
    cl.resolving = NULL;
    free_conn(&cl.cmd);
    free_conn(&cl.work);
    free_conn(&cl.upd);
    cluster_ack_fail(cl.why);
    cl.reading = cl.pulling = cl.claiming = cl.polling = cl.ping_outstanding = 0;
    cl.setup_pending = 0;
    if (cl.shutting_down)
        return;
    fail_accepts();
    flush_updates();        /* the session is gone: they go to cl.unsent */
    fail_unsent_updates();
    cluster_backpressure_check();
    struct timeval tv = clock_timeval_ms(cl.backoff_ms);
    evtimer_add(cl.retry_timer, &tv);
    cl.backoff_ms = cl.backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : cl.backoff_ms * 2;
    check_done();
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
    struct conn *conn = ac->data;
    if (conn == NULL)
        return;     /* we freed it */
    conn->ac = NULL;
    conn->connected = 0;
    session_fail("%s connection lost: %s", conn->name,
                 ac->errstr[0] ? ac->errstr : "closed by the server");
}

static void session_up(void);

/* "master", "slave", "sentinel" from a ROLE reply; "something else" if R
 * is none. */
static const char *
role_of(const redisReply *r)
{
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        const redisReply *e = r->element[0];
        if (e->len == 6 && memcmp(e->str, "master", 6) == 0)
            return "master";
        if (e->len == 5 && memcmp(e->str, "slave", 5) == 0)
            return "slave";
        if (e->len == 8 && memcmp(e->str, "sentinel", 8) == 0)
            return "sentinel";
    }
    return r->type == REDIS_REPLY_ERROR ? "an error" : "something else";
}

/* The highest seq this instance has seen or published. */
static uint64_t
fence_floor(void)
{
    return cl.last_seq > cl.max_published_seq ? cl.last_seq : cl.max_published_seq;
}

/* The reply of script_layout: 1 if this instance may go on. */
static int
layout_checked(const redisReply *r)
{
    const struct ds_config *c = gp.config;
    if (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS) {
        session_fail("the layout check failed: %.200s",
                     r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        return 0;
    }
    if (strncmp(r->str, "busy ", 5) == 0 && r->len > 7) {
        /* "busy OLD CONSUMER IDLE_MS" */
        session_fail("cluster %s is in use by an older dosomethingd (Redis layout %c: consumer "
                     "%.100s ms ago), which cannot read layout %s: stop every older instance",
                     c->cluster.name, r->str[5], r->str + 7, CLUSTER_LAYOUT);
        return 0;
    }
    if (strncmp(r->str, "other ", 6) == 0) {
        session_fail("{%s}:layout is %.20s: another dosomethingd version's Redis layout; "
                     "this one (%s) reads and writes layout %s only", c->cluster.name,
                     r->str + 6, DS_VERSION, CLUSTER_LAYOUT);
        return 0;
    }
    if (strncmp(r->str, "upgraded ", 9) == 0)
        log_notice("cluster: {%s} moves from Redis layout %.20s to layout %s (no older "
                   "instance has been active for cluster.lease): from now on only this "
                   "version's instances may join it", c->cluster.name, r->str + 9,
                   CLUSTER_LAYOUT);
    return 1;
}

static void
on_setup(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    intptr_t which = (intptr_t)arg;
    if (r == NULL || cl.failing || demoted(r))
        return;
    if (which < SCRIPT_COUNT) {
        if (r->type != REDIS_REPLY_STRING || r->len >= sizeof cl.sha[0]) {
            session_fail("SCRIPT LOAD failed: %.200s",
                         r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            return;
        }
        memcpy(cl.sha[which], r->str, r->len);
        cl.sha[which][r->len] = '\0';
    } else if (which == SCRIPT_COUNT) {
        if (r->type == REDIS_REPLY_ERROR && !is_error(r, "BUSYGROUP")) {
            session_fail("XGROUP CREATE %s %s failed: %.200s", cl.key_work, CLUSTER_GROUP,
                         r->str);
            return;
        }
    } else if (which == SCRIPT_COUNT + 1) {
        uint64_t origin = 0;
        if (r->type == REDIS_REPLY_ERROR) {     /* WRONGTYPE: not 0, as if none */
            session_fail("GET %s failed: %.200s", cl.key_origin, r->str);
            return;
        }
        if (r->type == REDIS_REPLY_STRING && redis_reply_u64(r, 19, &origin) == -1) {
            session_fail("%s is not a number: %.40s", cl.key_origin, r->str);
            return;
        }
        cl.origin = origin;
    } else if (which == SCRIPT_COUNT + 3) {
        if (r->type == REDIS_REPLY_ERROR && !is_error(r, "BUSYGROUP")) {
            session_fail("XGROUP CREATE %s %s failed: %.200s", cl.key_pwork, CLUSTER_GROUP,
                         r->str);
            return;
        }
    } else if (which == SCRIPT_COUNT + 4) {
        cl.work_client_id = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    } else if (which == SCRIPT_COUNT + 5) {
        const char *role = role_of(r);
        if (strcmp(role, "master") != 0) {
            if (cl.sentinels)
                sentinel_distrust();
            session_fail("it is not a master (ROLE says %s)%s", role, cl.sentinels
                         ? "; asking the sentinels again" : ": point cluster.redis at the "
                         "master, or at its sentinels with sentinel://");
            return;
        }
    } else if (which == SCRIPT_COUNT + 6) {
        if (r->type == REDIS_REPLY_ERROR) {
            session_fail("the seq check failed: %.200s", r->str);
            return;
        }
        if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
            log_warn("cluster: %s: its seq counter %s is behind seq %" PRIu64 ", which this "
                     "instance has seen: redis lost writes (a failover to a replica that had "
                     "not got them, or a restart); seqs and work entry IDs go on %llu further, "
                     "so that none is used twice", where(), cl.key_seq, fence_floor(),
                     (unsigned long long)FENCE_JUMP);
    } else if (which == SCRIPT_COUNT + 7) {
        if (!layout_checked(r))
            return;
    } else if (cl.control_last[0] == '\0') {
        /* Cancel requests from now on (a new session goes on from the last one read). */
        snprintf(cl.control_last, sizeof cl.control_last, "0-0");
        if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
            r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements > 0 &&
            r->element[0]->element[0]->type == REDIS_REPLY_STRING &&
            r->element[0]->element[0]->len < sizeof cl.control_last)
            snprintf(cl.control_last, sizeof cl.control_last, "%.*s",
                     (int)r->element[0]->element[0]->len, r->element[0]->element[0]->str);
    }
    if (--cl.setup_pending == 0)
        session_up();
}

static void
on_pong(redisAsyncContext *ac, void *reply, void *arg)
{
    cl.ping_outstanding = 0;
    const char *role = reply != NULL ? role_of(reply) : "master";
    if (strcmp(role, "master") != 0 && !cl.failing) {
        if (cl.sentinels)
            sentinel_distrust();
        session_fail("it is no longer a master (ROLE says %s); finding the master again", role);
    }
}

static void
on_ping_timer(evutil_socket_t fd, short what, void *arg)
{
    /* A WAIT for the replicas (cluster_ack.c) may be ahead of it. */
    uint64_t timeout = PING_TIMEOUT_MS + cluster_ack_max_wait_ms();
    publish_want_started();
    if (cl.ping_outstanding) {
        if (clock_monotonic_ms() - cl.ping_sent_ms >= timeout)
            session_fail("no answer to ROLE within %" PRIu64 " ms", timeout);
        return;
    }
    /* ROLE rather than PING: a master demoted while we stay connected
     * (a failover, a REPLICAOF) is noticed within a second. */
    struct redis_args a;
    redis_args_init(&a, "ROLE");
    if (command(&cl.cmd, on_pong, NULL, &a) == 0) {
        cl.ping_outstanding = 1;
        cl.ping_sent_ms = clock_monotonic_ms();
    }
}

static void
arm_lease_timers(void)
{
    uint64_t lease = gp.config->cluster.lease_ms;
    struct timeval renew = clock_timeval_ms(lease / 3), claim = clock_timeval_ms(lease / 2);
    evtimer_add(cl.renew_timer, &renew);
    evtimer_add(cl.claim_timer, &claim);
}

static void
session_up(void)
{
    evtimer_del(cl.setup_timer);
    cl.up = 1;
    cl.backoff_ms = BACKOFF_MIN_MS;
    if (cl.sessions++ > 0)
        cl.reconnects++;
    log_notice("cluster: connected to %s as %s (group %s on %s)", where(), cl.consumer,
               CLUSTER_GROUP, cl.key_work);
    cl.last_error[0] = '\0';
    set_why();
    struct timeval ping = clock_timeval_ms(PING_EVERY_MS), poll = clock_timeval_ms(POLL_MS);
    evtimer_add(cl.ping_timer, &ping);
    evtimer_add(cl.poll_timer, &poll);
    publish_want_started();
    arm_lease_timers();
    on_renew_timer(-1, 0, NULL);    /* what we held before: renew it before anyone claims it */
    read_updates();
    cl.prio_waiting = 1;            /* look at the lanes once */
    cl.pull_blocked = cl.unblocking = 0;
    cluster_pull();
    on_due_timer(-1, 0, NULL);
    if (cl.caught_up) {
        health_changed();
        store_room_available();
    }
}

static void
on_connect(const redisAsyncContext *ac, int status)
{
    struct conn *conn = ac->data;
    if (conn == NULL)
        return;
    if (status != REDIS_OK) {
        conn->ac = NULL;    /* hiredis frees it */
        if (cl.sentinels)
            sentinel_distrust();
        session_fail("connecting: %s", ac->errstr);
        return;
    }
    conn->connected = 1;
    if (!cl.cmd.connected || !cl.work.connected || !cl.upd.connected)
        return;
    /* Everything the session needs, pipelined; session_up() after the last reply. */
    cl.up = 1;
    cl.setup_pending = SCRIPT_COUNT + 8;
    struct redis_args a;
    /* First: anything else on a replica would fail with less to say. */
    redis_args_init(&a, "ROLE");
    command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 5), &a);
    /* Then: nothing is written in a layout another instance cannot read. */
    redis_args_init(&a, "EVAL");
    redis_args_str(&a, script_layout);
    redis_args_str(&a, "3");
    redis_args_str(&a, cl.key_layout);
    redis_args_str(&a, cl.key_updates);
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, CLUSTER_LAYOUT);
    redis_args_u64(&a, gp.config->cluster.lease_ms);
    redis_args_str(&a, CLUSTER_GROUP);
    command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 7), &a);
    for (intptr_t i = 0; i < SCRIPT_COUNT; i++) {
        redis_args_init(&a, "SCRIPT");
        redis_args_str(&a, "LOAD");
        redis_args_str(&a, script_text[i]);
        command(&cl.cmd, on_setup, (void *)i, &a);
    }
    redis_args_init(&a, "XGROUP");
    redis_args_str(&a, "CREATE");
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, CLUSTER_GROUP);
    redis_args_str(&a, "0");
    redis_args_str(&a, "MKSTREAM");
    command(&cl.cmd, on_setup, (void *)(intptr_t)SCRIPT_COUNT, &a);
    redis_args_init(&a, "GET");
    redis_args_str(&a, cl.key_origin);
    command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 1), &a);
    redis_args_init(&a, "XREVRANGE");
    redis_args_str(&a, cl.key_control);
    redis_args_str(&a, "+");
    redis_args_str(&a, "-");
    redis_args_str(&a, "COUNT");
    redis_args_str(&a, "1");
    command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 2), &a);
    redis_args_init(&a, "XGROUP");
    redis_args_str(&a, "CREATE");
    redis_args_str(&a, cl.key_pwork);
    redis_args_str(&a, CLUSTER_GROUP);
    redis_args_str(&a, "0");
    redis_args_str(&a, "MKSTREAM");
    command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 3), &a);
    redis_args_init(&a, "CLIENT");
    redis_args_str(&a, "ID");
    command(&cl.work, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 4), &a);
    redis_args_init(&a, "EVAL");
    redis_args_str(&a, script_fence);
    redis_args_str(&a, "4");
    redis_args_str(&a, cl.key_seq);
    redis_args_str(&a, cl.key_work);
    redis_args_str(&a, cl.key_pwork);
    redis_args_str(&a, cl.key_seq_jump);
    redis_args_u64(&a, fence_floor());
    redis_args_u64(&a, FENCE_JUMP);
    command(&cl.cmd, on_setup, (void *)(intptr_t)(SCRIPT_COUNT + 6), &a);
    cl.up = 0;      /* until session_up() */
}

static int
open_conn(struct conn *conn)
{
    redisAsyncContext *ac = redisAsyncConnect(cl.address, cl.master_port);
    if (ac == NULL) {
        session_fail("out of memory");
        return -1;
    }
    if (ac->err) {
        char why[160];
        snprintf(why, sizeof why, "connecting: %s", ac->errstr);
        redisAsyncFree(ac);
        session_fail("%s", why);
        return -1;
    }
    conn->ac = ac;
    conn->connected = 0;
    ac->data = conn;
    /* hiredis frees its read buffer whenever it empties with over 16 KiB
     * spare, and a batch's reply is read into a new one: keep up to
     * READ_BUF_KEEP (a large malloc and free an item batch cost a tenth of
     * the grpc process in cluster mode, most of it glibc consolidating). */
    ac->c.reader->maxbuf = READ_BUF_KEEP;
    redis_reply_install(ac->c.reader, &conn->replies);
    redisLibeventAttach(ac, gp.base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return 0;
}

static void
on_setup_timer(evutil_socket_t fd, short what, void *arg)
{
    session_fail("no connection after %d ms%s", CONNECT_TIMEOUT_MS + RESOLVE_TIMEOUT_MS,
                 cl.sentinels ? " (and the sentinels' answers)" : "");
}

/* The master's address: connect there. */
static void
on_master_resolved(void *arg, const char *address, const char *why)
{
    cl.resolving = NULL;
    if (address == NULL) {
        session_fail("%s", why);
        return;
    }
    snprintf(cl.address, sizeof cl.address, "%s", address);
    if (open_conn(&cl.cmd) == -1 || open_conn(&cl.work) == -1 || open_conn(&cl.upd) == -1)
        return;
}

/* Where the master is (cluster.redis's host, or what a sentinel said):
 * resolve it off the loop (resolve.c), then connect. */
static void
on_master_found(const char *host, int port, const char *why)
{
    if (host == NULL) {
        session_fail("%s", why);
        return;
    }
    if (cl.sentinels && (strcmp(host, cl.master_host) != 0 || port != cl.master_port)) {
        log_notice("cluster: sentinel %s names %s:%d as master %s", sentinel_last(), host, port,
                   cl.master_name);
        snprintf(cl.master_host, sizeof cl.master_host, "%s", host);
        cl.master_port = port;
        set_why();
    }
    cl.resolving = resolve_host(gp.base, cl.master_host, on_master_resolved, NULL);
}

/* +switch-master (sentinel.c): the session goes, unless it is already
 * with the new master; the next one starts at once. */
static void
on_switched(const char *host, int port)
{
    if (strcmp(host, cl.master_host) == 0 && port == cl.master_port && cl.up)
        return;
    cl.backoff_ms = BACKOFF_MIN_MS;
    if (!cl.failing && (cl.up || cl.resolving != NULL || cl.cmd.ac != NULL)) {
        session_fail("the sentinels moved master %s to %s:%d", cl.master_name, host, port);
    } else if (evtimer_pending(cl.retry_timer, NULL)) {
        struct timeval tv = clock_timeval_ms(BACKOFF_MIN_MS);
        evtimer_add(cl.retry_timer, &tv);
    }
}

static void
on_retry(evutil_socket_t fd, short what, void *arg)
{
    cl.failing = 0;
    uint64_t budget = CONNECT_TIMEOUT_MS + RESOLVE_TIMEOUT_MS;
    if (cl.sentinels)
        budget += gp.config->cluster.sentinel_count * (uint64_t)SENTINEL_ASK_TIMEOUT_MS;
    struct timeval tv = clock_timeval_ms(budget);
    evtimer_add(cl.setup_timer, &tv);
    if (cl.sentinels)
        sentinel_find(on_master_found);
    else
        on_master_found(cl.master_host, cl.master_port, NULL);
}

/* While cl.up is set inside on_connect, command() sends: the setup needs it. */

/* ---- start, reload, stop ------------------------------------------------- */

/* After the update log: connect (in the background). */
static void
cluster_start(void)
{
    const struct ds_config *c = gp.config;
    if (c->cluster.redis == NULL)
        return;
    memset(&cl, 0, sizeof cl);
    cl.enabled = 1;
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    snprintf(cl.consumer, sizeof cl.consumer, "%s-%ld-%llu", host[0] ? host : "host",
             (long)getpid(), (unsigned long long)(clock_wall_ns() / 1000000));
    snprintf(cl.key_work, sizeof cl.key_work, "{%s}:work", c->cluster.name);
    snprintf(cl.key_updates, sizeof cl.key_updates, "{%s}:updates", c->cluster.name);
    snprintf(cl.key_seq, sizeof cl.key_seq, "{%s}:seq", c->cluster.name);
    snprintf(cl.key_origin, sizeof cl.key_origin, "{%s}:origin", c->cluster.name);
    snprintf(cl.key_items, sizeof cl.key_items, "{%s}:items", c->cluster.name);
    snprintf(cl.key_finals, sizeof cl.key_finals, "{%s}:finals", c->cluster.name);
    snprintf(cl.key_finals_bytes, sizeof cl.key_finals_bytes, "{%s}:finals_bytes",
             c->cluster.name);
    snprintf(cl.key_item_prefix, sizeof cl.key_item_prefix, "{%s}:item:", c->cluster.name);
    snprintf(cl.key_control, sizeof cl.key_control, "{%s}:control", c->cluster.name);
    snprintf(cl.key_lease_prefix, sizeof cl.key_lease_prefix, "{%s}:lease:", c->cluster.name);
    snprintf(cl.key_lease, sizeof cl.key_lease, "%s%s", cl.key_lease_prefix, cl.consumer);
    snprintf(cl.key_want_started, sizeof cl.key_want_started, "{%s}:want_started",
             c->cluster.name);
    snprintf(cl.key_layout, sizeof cl.key_layout, "{%s}:layout", c->cluster.name);
    /* LUA_MINID_FN makes it from {NAME}:seq */
    snprintf(cl.key_seq_jump, sizeof cl.key_seq_jump, "{%s}:seq_jump", c->cluster.name);
    snprintf(cl.key_pwork, sizeof cl.key_pwork, "{%s}:pwork", c->cluster.name);
    snprintf(cl.key_delayed, sizeof cl.key_delayed, "{%s}:delayed", c->cluster.name);
    snprintf(cl.key_prio, sizeof cl.key_prio, "{%s}:prio", c->cluster.name);
    snprintf(cl.key_latest, sizeof cl.key_latest, "{%s}:latest", c->cluster.name);
    cl.floor_start = updates_last_seq();
    cl.backoff_ms = BACKOFF_MIN_MS;
    cl.sentinels = c->cluster.sentinel_count > 0;
    if (cl.sentinels) {
        snprintf(cl.master_name, sizeof cl.master_name, "%s", c->cluster.master_name);
        sentinel_start(gp.base, c, on_switched);
    } else {
        snprintf(cl.master_host, sizeof cl.master_host, "%s", c->cluster.host);
        cl.master_port = c->cluster.port;
    }
    cluster_ack_start(gp.base, check_done);
    cl.pull_unit = ITEM_WEIGHT_FULL;
    cl.reset_event = event_new(gp.base, -1, 0, on_reset, NULL);
    cl.retry_timer = evtimer_new(gp.base, on_retry, NULL);
    cl.setup_timer = evtimer_new(gp.base, on_setup_timer, NULL);
    cl.ping_timer = event_new(gp.base, -1, EV_PERSIST, on_ping_timer, NULL);
    cl.renew_timer = event_new(gp.base, -1, EV_PERSIST, on_renew_timer, NULL);
    cl.claim_timer = event_new(gp.base, -1, EV_PERSIST, on_claim_timer, NULL);
    cl.poll_timer = event_new(gp.base, -1, EV_PERSIST, on_poll_timer, NULL);
    cl.due_timer = evtimer_new(gp.base, on_due_timer, NULL);
    cl.pull_timer = evtimer_new(gp.base, on_pull_timer, NULL);
    cl.flush_event = event_new(gp.base, -1, 0, on_flush, NULL);
    set_why();
    log_info("cluster: %s, keys {%s}:*, consumer %s, lease %llu ms, min_replicas_ack %u",
             cl.sentinels ? c->cluster.redis : where(), c->cluster.name, cl.consumer,
             (unsigned long long)c->cluster.lease_ms, c->cluster.min_replicas_ack);
    on_retry(-1, 0, NULL);
}

/* A reload: apply cluster.lease; a changed redis or name needs a restart. */
static void
cluster_configure(const struct ds_config *old)
{
    const struct ds_config *c = gp.config;
    if (!cl.enabled)
        return;
    if (c->cluster.redis == NULL || strcmp(c->cluster.redis, old->cluster.redis) != 0 ||
        strcmp(c->cluster.name, old->cluster.name) != 0)
        log_warn("cluster: redis or name changed by this reload; this grpc process stays with "
                 "%s and {%s}:* until it next starts", old->cluster.redis, old->cluster.name);
    if (c->cluster.lease_ms != old->cluster.lease_ms && cl.up) {
        on_renew_timer(-1, 0, NULL);    /* renewed, then the new lease announced */
        arm_lease_timers();
    }
}

/* At exit: drop the connections; what is pending stays in Redis. */
static void
cluster_shutdown(void)
{
    if (!cl.enabled)
        return;
    cl.shutting_down = 1;
    stop_timers();
    evtimer_del(cl.retry_timer);
    cluster_ack_shutdown();
    if (cl.sentinels)
        sentinel_shutdown();
    resolve_cancel(cl.resolving);
    cl.resolving = NULL;
    free_conn(&cl.cmd);
    free_conn(&cl.work);
    free_conn(&cl.upd);
    /* (a free hiredis deferred, in a callback, returns its reply's blocks
     * to these pools later: static storage, still there) */
    redis_reply_pool_free(&cl.cmd.replies);
    redis_reply_pool_free(&cl.work.replies);
    redis_reply_pool_free(&cl.upd.replies);
    event_free(cl.reset_event);
    event_free(cl.retry_timer);
    event_free(cl.setup_timer);
    event_free(cl.ping_timer);
    event_free(cl.renew_timer);
    event_free(cl.claim_timer);
    event_free(cl.poll_timer);
    event_free(cl.due_timer);
    cl.due_timer = NULL;
    event_free(cl.pull_timer);
    event_free(cl.flush_event);
    for (size_t i = 0; i < cl.accepts_n; i++)
        store_discard(cl.accepts[i].item);
    free(cl.accepts);
    cl.accepts = NULL;
    cl.accepts_n = 0;
    redis_cmd_free(&cl.batch_cmd);
    for (size_t i = 0; i < cl.ucbs_n; i++)
        cl.ucbs[i].fn(NULL, NULL, cl.ucbs[i].arg);      /* shutting down: they discard */
    cl.ucbs_n = 0;
    fail_unsent_updates();
    free(cl.ucbs);
    cl.ucbs = NULL;
    redis_cmd_free(&cl.ucmd);
    cl.enabled = 0;
}

/* ---- what the rest of the process asks ------------------------------------ */

int
cluster_send(struct redis_args *a, redisCallbackFn *fn, void *arg)
{
    if (!cl.caught_up)
        return -1;
    return command(&cl.cmd, fn, arg, a);
}

int
cluster_cancel_item(const char *id, const char *kind, const char *batch, uint64_t key,
                    uint32_t attempt, const char *reason, redisCallbackFn *fn, void *arg)
{
    struct item *item = item_make(NULL, 0, id, batch, kind, 1, 0, 0);
    item->key = key;
    item->attempt = attempt ? attempt : 1;
    struct outcome o = { .state = STATE_CANCELLED, .error = reason };
    size_t len;
    uint8_t *encoded = updates_encode(item, &o, &len);
    struct redis_args a;
    char hash_key[ITEM_KEY_SIZE];
    publish_args(&a, SCRIPT_CANCEL, item, STATE_CANCELLED, encoded, len, hash_key);
    entry_arg(&a, key);
    redis_args_str(&a, CLUSTER_GROUP);
    redis_args_str(&a, reason);
    retention_args(&a);
    int rc = cluster_send(&a, fn, arg);
    free(encoded);
    store_discard(item);
    return rc;
}

int
cluster_requeue_item(const struct item *item, redisCallbackFn *fn, void *arg)
{
    size_t len;
    struct outcome queued = { .state = STATE_QUEUED };
    uint8_t *encoded = updates_encode(item, &queued, &len);
    struct redis_args a;
    char hash_key[ITEM_KEY_SIZE];
    publish_args(&a, SCRIPT_RETRY, item, STATE_QUEUED, encoded, len, hash_key);
    redis_args_u64(&a, item->max_attempts);
    redis_args_u64(&a, item->timeout_ms);
    redis_args_str(&a, item->weight == ITEM_WEIGHT_QUICK ? "1" : "0");
    char priority[16];
    redis_args_str(&a, priority_arg(item, priority));
    redis_args_u64(&a, clock_wall_ns());
    int rc = cluster_send(&a, fn, arg);
    free(encoded);
    return rc;
}

const char *
cluster_why(void)
{
    return cl.why;
}

const char *
cluster_key_items(void)
{
    return cl.key_items;
}

const char *
cluster_key_work(void)
{
    return cl.key_work;
}

const char *
cluster_item_prefix(void)
{
    return cl.key_item_prefix;
}

const char *
cluster_key_latest(void)
{
    return cl.key_latest;
}

void
cluster_lookup_start(struct redis_args *a, const char *hash_key, const char *id)
{
    redis_args_init(a, "EVALSHA");
    redis_args_str(a, cl.sha[SCRIPT_LOOKUP]);
    redis_args_str(a, "2");
    redis_args_str(a, hash_key);
    redis_args_str(a, cl.key_latest);
    redis_args_str(a, id);
}

/* Connected, and the update stream read to its end once: calls are served.
 * If not, *why says so. */
static int
cluster_serving(const char **why)
{
    if (!cl.enabled || (cl.up && cl.caught_up))
        return 1;
    if (why != NULL)
        *why = cl.why;
    return 0;
}

/* Nothing this instance wrote is waiting for Redis, and every update it
 * published has come back through the update stream: a drain may end. */
static int
cluster_idle(void)
{
    if (!cl.enabled)
        return 1;
    return cl.inflight == 0 && cluster_ack_held() == 0 &&
           (!cl.up || cl.last_seq >= cl.max_published_seq);
}

static void
check_done(void)
{
    if (gp.draining && cluster_idle())
        grpc_process_check_done();
}

static void
cluster_status_json(struct evbuffer *b)
{
    if (!cl.enabled) {
        evbuffer_add_printf(b, "\"cluster\":null,");
        return;
    }
    const struct ds_config *c = gp.config;
    evbuffer_add_printf(b, "\"cluster\":{\"redis\":\"%s:%d\",\"master\":\"%s\","
                        "\"sentinel\":\"%s\",\"sentinel_watching\":%s,"
                        "\"min_replicas_ack\":%u,\"name\":\"%s\",\"consumer\":\"%s\","
                        "\"connected\":%s,\"serving\":%s,\"outstanding\":%" PRIu64 ","
                        "\"claimed\":%" PRIu64 ",\"reconnects\":%" PRIu64 ","
                        "\"superseded\":%" PRIu64 ",\"lost_updates\":%" PRIu64 ","
                        "\"cancel_requests\":%" PRIu64 ",\"items_known\":%" PRIu64 ","
                        "\"finals_retained\":%" PRIu64 ",\"retained_bytes\":%" PRIu64 ","
                        "\"accept_scripts\":%" PRIu64 ",\"update_scripts\":%" PRIu64 ","
                        "\"writes_in_flight\":%" PRIu64 ",\"backpressure_spells\":%" PRIu64 ","
                        "\"started_folded\":%" PRIu64 ",\"last_error\":",
                        cl.master_host, cl.master_port,
                        cl.sentinels ? cl.master_name : "", cl.sentinels ? sentinel_last() : "",
                        cl.sentinels && sentinel_watching() ? "true" : "false",
                        c->cluster.min_replicas_ack, c->cluster.name, cl.consumer,
                        cl.up ? "true" : "false", cl.up && cl.caught_up ? "true" : "false",
                        outstanding(), cl.claimed, cl.reconnects, cl.superseded,
                        cl.lost_updates, cl.cancels, cl.known[0], cl.known[1], cl.known[2],
                        cl.accept_batches, cl.update_batches, cl.inflight, cl.busy_spells,
                        cl.started_folded);
    if (cl.last_error[0] == '\0') {
        evbuffer_add_printf(b, "null},");
        return;
    }
    evbuffer_add(b, "\"", 1);
    for (const char *p = cl.last_error; *p; p++) {
        if (*p == '"' || *p == '\\')
            evbuffer_add_printf(b, "\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            evbuffer_add_printf(b, "\\u%04x", (unsigned)(unsigned char)*p);
        else
            evbuffer_add(b, p, 1);
    }
    evbuffer_add_printf(b, "\"},");
}

static void
cluster_metrics(struct evbuffer *b)
{
    if (!cl.enabled)
        return;
    evbuffer_add_printf(b,
        "# HELP dosomething_cluster_connected 1 while connected to redis and serving.\n"
        "# TYPE dosomething_cluster_connected gauge\n"
        "dosomething_cluster_connected %d\n"
        "# HELP dosomething_cluster_outstanding Items not final in the cluster's queue, as "
        "last seen.\n"
        "# TYPE dosomething_cluster_outstanding gauge\n"
        "dosomething_cluster_outstanding %" PRIu64 "\n"
        "# HELP dosomething_cluster_claimed_total Items taken over from instances that stopped "
        "renewing them.\n"
        "# TYPE dosomething_cluster_claimed_total counter\n"
        "dosomething_cluster_claimed_total %" PRIu64 "\n"
        "# HELP dosomething_cluster_reconnects_total Sessions with redis after the first.\n"
        "# TYPE dosomething_cluster_reconnects_total counter\n"
        "dosomething_cluster_reconnects_total %" PRIu64 "\n"
        "# HELP dosomething_cluster_superseded_total Updates dropped because another instance "
        "had taken the item over.\n"
        "# TYPE dosomething_cluster_superseded_total counter\n"
        "dosomething_cluster_superseded_total %" PRIu64 "\n"
        "# HELP dosomething_cluster_lost_updates_total Updates of running items not published "
        "because redis was unreachable.\n"
        "# TYPE dosomething_cluster_lost_updates_total counter\n"
        "dosomething_cluster_lost_updates_total %" PRIu64 "\n"
        "# HELP dosomething_cluster_items_known Items known cluster-wide (live and retained "
        "finals), as last polled.\n"
        "# TYPE dosomething_cluster_items_known gauge\n"
        "dosomething_cluster_items_known %" PRIu64 "\n"
        "# HELP dosomething_cluster_finals_retained Final items retained in redis "
        "(items.retention), as last polled.\n"
        "# TYPE dosomething_cluster_finals_retained gauge\n"
        "dosomething_cluster_finals_retained %" PRIu64 "\n"
        "# HELP dosomething_cluster_retained_bytes Bytes of the retained finals, as counted "
        "for items.retention.bytes.\n"
        "# TYPE dosomething_cluster_retained_bytes gauge\n"
        "dosomething_cluster_retained_bytes %" PRIu64 "\n"
        "# HELP dosomething_cluster_cancel_requests_total Cancel requests for items this "
        "instance held.\n"
        "# TYPE dosomething_cluster_cancel_requests_total counter\n"
        "dosomething_cluster_cancel_requests_total %" PRIu64 "\n",
        cl.up && cl.caught_up ? 1 : 0, outstanding(), cl.claimed, cl.reconnects, cl.superseded,
        cl.lost_updates, cl.known[0], cl.known[1], cl.known[2], cl.cancels);
}

const struct store_backend store_redis = {
    .name = "redis",
    .shared_log = 1,
    .start = cluster_start,
    .accept = cluster_accept,
    .publish = cluster_publish,
    .final = cluster_final,
    .retry = cluster_retry,
    .has_room = cluster_has_room,
    .busy = cluster_busy,
    .available = cluster_serving,
    .serving = cluster_serving,
    .idle = cluster_idle,
    .pull = cluster_pull,
    .want_started = publish_want_started,
    .configure = cluster_configure,
    .shutdown = cluster_shutdown,
    .status_json = cluster_status_json,
    .metrics = cluster_metrics,
    .get_items = cluster_get_items,
    .items_abort = cluster_items_abort,
    .act = cluster_act,
    .act_abort = cluster_act_abort,
};
