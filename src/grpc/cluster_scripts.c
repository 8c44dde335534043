/* The Lua scripts of cluster mode (cluster_scripts.h). */
#include "grpc/cluster.h"
#include "grpc/cluster_scripts.h"

/* {NAME}:control, the cancel requests to the instances holding items, is
 * trimmed to about this many entries. */
#define CONTROL_MAXLEN "1000"
/* A number as a Lua literal: the scripts step through ARGV by the field
 * counts cluster_write.c sends (cluster_scripts.h). */
#define LUA_NUM_(n) #n
#define LUA_NUM(n) LUA_NUM_(n)

/*
 * KEYS: work, updates, seq, origin. Every script that publishes an update
 * starts with this: the seq counter, created on first use no lower than
 * the caller's floor (ARGV[1]) nor than the stream's newest entry (a Redis
 * that lost the counter and kept the stream), then the next seq. A
 * counter that is not one (edited by hand: no integer, another type, 2^53
 * or more: INCR takes it, but Lua's number loses its last digit, and the
 * update went under a seq the counter gives again) ends the script with an
 * error naming it (a batch's, LUA_SEQ_LOAD, before it writes anything),
 * where every accept and update failed on Lua's arithmetic on nil.
 */
#define LUA_SEQ_BAD(key)                                                                \
    "'ERR ' .. " key " .. ' is no seq counter (an integer below 2^53): delete it, and it '" \
    " .. 'starts again past the newest update'"
/* uint(V, DIGITS): V as a number if it is a string of 1 to DIGITS (at most
 * 16) digits below 2^53 (what Lua's numbers hold exactly), else nil: how
 * the scripts read a value a hand may have written (a seq, a lease, a due
 * time). */
#define LUA_UINT_FN                                                                     \
    "local function uint(v, digits)\n"                                                   \
    "  if type(v) ~= 'string' or #v > digits or not string.match(v, '^%d+$') then\n"     \
    "    return nil\n"                                                                   \
    "  end\n"                                                                            \
    "  local n = tonumber(v)\n"                                                          \
    "  if n >= 2^53 then return nil end\n"                                               \
    "  return n\n"                                                                       \
    "end\n"
#define LUA_SEQ_INIT                                                                    \
    "if redis.call('EXISTS', KEYS[3]) == 0 then\n"                                      \
    "  local start = tonumber(ARGV[1])\n"                                               \
    "  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)\n"            \
    "  if #top > 0 then\n"                                                              \
    "    local t = tonumber(string.match(top[1][1], '^0%-(%d+)$'))\n"                   \
    "    if t ~= nil and t > start then start = t end\n"                                \
    "  end\n"                                                                           \
    "  redis.call('SET', KEYS[3], string.format('%.0f', start))\n"                      \
    "  redis.call('SET', KEYS[4], string.format('%.0f', start))\n"                      \
    "end\n"
#define LUA_NEXT_SEQ                                                                    \
    LUA_SEQ_INIT                                                                        \
    "local seq = redis.pcall('INCR', KEYS[3])\n"                                        \
    "if type(seq) ~= 'number' or seq >= 2^53 then return redis.error_reply(" LUA_SEQ_BAD("KEYS[3]") ") end\n"

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
    LUA_SEQ_INIT                                                                        \
    LUA_UINT_FN                                                                         \
    "local seq = uint(redis.pcall('GET', KEYS[3]), 16)\n"                               \
    "if not seq then return redis.error_reply(" LUA_SEQ_BAD("KEYS[3]") ") end\n"          \
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
static const char script_accepts[] =
    LUA_SEQ_LOAD
    LUA_BATCH
    "local out, members, seen, prefix = {}, {}, {}, ARGV[3]\n"
    /* one EXISTS for the batch; each item's own only if some id is known */
    "local hks = {}\n"
    "for o = 4, #ARGV, " LUA_NUM(ACCEPT_FIELDS) " do hks[#hks + 1] = prefix .. ARGV[o + 1] end\n"
    "local known = #hks > 0 and redis.call('EXISTS', unpack(hks)) > 0\n"
    "for o = 4, #ARGV, " LUA_NUM(ACCEPT_FIELDS) " do\n"
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
 * entry_final(ENTRY, ID, LV, R): whether ENTRY (of item ID, LV its field
 * of {NAME}:latest) is its item's last final, the item's retained bytes
 * (0 when they are no whole number below 2^53: a hash edited by hand, on
 * which INCRBY would fail and reset the count) and end time (its latest
 * update's, or its hash's: layout 3).
 * read_entries(ENTRIES, R): their ids, and their fields of {NAME}:latest
 * in one HMGET. forget_ids(IDS, BYTES, TOTAL, R): the items leave their
 * hashes, {NAME}:latest, the listing (KEYS[6]) and the bytes (KEYS[8]),
 * one command each for all of them; returns the bytes left.
 * shrink(R, OVER, TOTAL, BUDGET, GUESS): after finals were pushed (OVER
 * entries past the count, TOTAL the bytes), pops the oldest in batches
 * (OVER, or GUESS while only the bytes are over: about one old final per
 * new one), at most BUDGET in all; forget_popped() forgets each batch's
 * current items and puts back the entries it did not need once both
 * bounds hold. trim(R), the periodic trim: the oldest finals that ended
 * more than the age ago or are past the count or the bytes (the first
 * 100, looked at in one LRANGE), with one LTRIM (the bytes are 0 again
 * once the list is empty: whatever they drifted by is gone); true when all 100 went
 * (the instance calls again at once: the age is applied only here, and
 * 100 a lease/2 fell behind any cluster ending more than 200 items a
 * second for a lease of 1 s). Per forgotten final only its hash is read
 * on its own: in a cluster that has run past its retention every final
 * forgets one, and one by one that was eight commands each
 * (docs/scaling.md, "Capacity model").
 * keep_final(SQ, ENTRY, R): item KEYS[5] (ARGV[4], state ARGV[7], update
 * ARGV[3]) just became final with seq SQ: its latest
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
 * again). trim() reads them as 0 when they are not even a string (GET's
 * WRONGTYPE failed every periodic trim while no item ended, logged every
 * lease/2).
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
    "local function entry_final(o, id, lv, r)\n"                                        \
    "  if not string.find(o, ' ', 1, true) then return false, 0 end\n"                  \
    "  local h = hash_call('HMGET', r[5] .. id, id, 'q', 'n', 't') or {}\n"             \
    "  local q, n, t = h[1], h[2], h[3]\n"                                              \
    "  local l = latest_of(lv, q)\n"                                                    \
    "  if l then q, n, t = l.q, l.n, l.t end\n"                                         \
    "  n = tonumber(n)\n"                                                               \
    "  if not n or n < 0 or n >= 2^53 or n ~= math.floor(n) then n = 0 end\n"           \
    "  return not q or q == string.match(o, '^[^ ]*'), n, t\n"                          \
    "end\n"                                                                             \
    "local function read_entries(obs, r)\n"                                             \
    "  local ids = {}\n"                                                                \
    "  for i, o in ipairs(obs) do ids[i] = string.match(o, '^[^ ]* (.*)$') or '' end\n" \
    "  return ids, redis.call('HMGET', r[6], unpack(ids))\n"                            \
    "end\n"                                                                             \
    "local function forget_ids(ids, bytes, total, r)\n"                                 \
    "  if #ids > 0 then\n"                                                              \
    "    local ks = {}\n"                                                               \
    "    for i, id in ipairs(ids) do ks[i] = r[5] .. id end\n"                          \
    "    redis.call('DEL', unpack(ks))\n"                                               \
    "    redis.call('HDEL', r[6], unpack(ids))\n"                                       \
    "    redis.call('ZREM', KEYS[6], unpack(ids))\n"                                    \
    "  end\n"                                                                           \
    "  if bytes > 0 then return add_bytes(-bytes) end\n"                                \
    "  return total\n"                                                                  \
    "end\n"                                                                             \
    "local function forget_popped(obs, r, over, total)\n"                               \
    "  local bound, gone, bytes = tonumber(r[4]), {}, 0\n"                              \
    "  local ids, ls = read_entries(obs, r)\n"                                          \
    "  for i, o in ipairs(obs) do\n"                                                    \
    "    if over <= 0 and total <= bound then\n"                                        \
    "      local back = {}\n"                                                           \
    "      for j = #obs, i, -1 do back[#back + 1] = obs[j] end\n"                       \
    "      redis.call('LPUSH', KEYS[7], unpack(back))\n"                                \
    "      break\n"                                                                     \
    "    end\n"                                                                         \
    "    over = over - 1\n"                                                             \
    "    local cur, n = entry_final(o, ids[i], ls[i], r)\n"                             \
    "    if cur then\n"                                                                 \
    "      gone[#gone + 1] = ids[i]\n"                                                  \
    "      if n > 0 then bytes, total = bytes + n, total - n end\n"                     \
    "    end\n"                                                                         \
    "  end\n"                                                                           \
    "  return over, forget_ids(gone, bytes, total, r)\n"                                \
    "end\n"                                                                             \
    "local function shrink(r, over, total, budget, guess)\n"                            \
    "  while budget > 0 and (over > 0 or total > tonumber(r[4])) do\n"                  \
    "    local obs = redis.call('LPOP', KEYS[7], math.min(budget, math.max(over, guess)))\n"\
    "    if not obs then return end\n"                                                  \
    "    budget = budget - #obs\n"                                                      \
    "    over, total = forget_popped(obs, r, over, total)\n"                            \
    "  end\n"                                                                           \
    "end\n"                                                                             \
    "local function trim(r)\n"                                                          \
    "  local cut, count, bound = tonumber(r[1]) - tonumber(r[2]), tonumber(r[3]), tonumber(r[4])\n"\
    "  local obs = redis.call('LRANGE', KEYS[7], 0, 99)\n"                              \
    "  if #obs == 0 then redis.call('SET', KEYS[8], 0) return false end\n"              \
    "  local len = redis.call('LLEN', KEYS[7])\n"                                       \
    "  local total = tonumber(redis.pcall('GET', KEYS[8])) or 0\n"                      \
    "  local ids, ls = read_entries(obs, r)\n"                                          \
    "  local gone, bytes, k = {}, 0, 0\n"                                               \
    "  for i, o in ipairs(obs) do\n"                                                    \
    "    local cur, n, t = entry_final(o, ids[i], ls[i], r)\n"                          \
    "    if cur and (tonumber(t) or 0) > cut and len - k <= count and total <= bound then\n"\
    "      break\n"                                                                     \
    "    end\n"                                                                         \
    "    k = k + 1\n"                                                                   \
    "    if cur then\n"                                                                 \
    "      gone[#gone + 1] = ids[i]\n"                                                  \
    "      if n > 0 then bytes, total = bytes + n, total - n end\n"                     \
    "    end\n"                                                                         \
    "  end\n"                                                                           \
    "  if k > 0 then redis.call('LTRIM', KEYS[7], k, -1) end\n"                         \
    "  forget_ids(gone, bytes, total, r)\n"                                             \
    "  if k == len then redis.call('SET', KEYS[8], 0) end\n"                            \
    "  return k == 100\n"                                                               \
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
    "  shrink(r, over, add_bytes(n), 100, 1)\n"                                          \
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
    "for o = 11, #ARGV, " LUA_NUM(UPDATE_FIELDS) " do\n"
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
    "for o = 11, #ARGV, " LUA_NUM(UPDATE_FIELDS) " do\n"
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
    "  shrink(r, over, add_bytes(bytes), 100 + #pushes, #pushes)\n"
    "end\n"
    "out[#out + 1] = bad\n"
    "out[#out + 1] = bytes_bad\n"
    "return out\n";

/* trim: KEYS as update's (only 6, 7, 8 used), ARGV the retention: what
 * aged out (and what is past the count or the bytes while no item ended).
 * Returns LUA_TRIM's {bad, bytes_bad} and 1 if there may be more to do
 * (it forgot the 100 it looks at), else 0. */
static const char script_trim[] =
    LUA_TRIM
    "local more = trim(ARGV)\n"
    "return {bad, bytes_bad, more and 1 or 0}\n";

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
 * still pending here; returns the others (another instance took them over,
 * or they ended there). */
static const char script_renew[] =
    "local lost = {}\n"
    "for i = 3, #ARGV do\n"
    "  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)\n"
    "  if #p > 0 and p[1][2] == ARGV[2] then\n"
    "    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')\n"
    "  else\n"
    "    lost[#lost + 1] = ARGV[i]\n"
    "  end\n"
    "end\n"
    "return lost\n";

/*
 * claim: KEYS work, pwork (each in turn); ARGV group, consumer, lease ms, count, the item
 * hash prefix, now (unix ms), the prefix of the lease keys. Entries that
 * their holder stopped renewing for its lease become ours: the lease its
 * {NAME}:lease:CONSUMER says (publish_lease()), or ours if it says none
 * (an older version, or an instance gone longer than that key lives) or
 * holds something else than 1 to 15 digits (written by hand: GET of
 * another type, XPENDING IDLE of a fraction or of more digits failed
 * every claim script), so
 * that instances reloaded to different leases (a rolling change of
 * cluster.lease) never take over what a live one renews on its own
 * schedule. Each as {id, fields, delivery count, previous holder, idle
 * ms, the reason of a cancel asked of the previous holder or nil, when a
 * retry's next attempt is due (its hash's rd, unix ms) or nil, 1 if that
 * is still ahead}, at most count. An item whose next attempt was still
 * waiting its backoff never started it: it keeps its delivery count (the
 * attempt it waits for); so does one its holder handed back unstarted at
 * a graceful stop's deadline (its hash's hu names this entry and count;
 * the claim deletes it: script_hand_back), with the 8th element 1 too. An rd that is not 1 to 15 digits (written by
 * hand) is not waited for: the item runs at once; so does one whose key
 * is no hash (written by hand: WRONGTYPE failed every claim script that
 * took it, and it never ran again), with a 9th element naming the key for
 * the log. An entry of our own (our renewal came late) keeps its delivery
 * count: the copy we hold of it runs on, and its updates in flight still
 * count; the instance counts one itself if it holds none
 * (cluster_take.c adopt_claimed()). Consumers that hold
 * nothing and were not seen for their lease are removed (a live one is
 * recreated by its next read).
 */
static const char script_claim[] =
    LUA_UINT_FN
    "local out, max = {}, tonumber(ARGV[4])\n"
    "for _, key in ipairs(KEYS) do\n"
    "for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', key, ARGV[1])) do\n"
    "  local f = {}\n"
    "  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end\n"
    "  local lease = uint(redis.pcall('GET', ARGV[7] .. f['name']), 15)\n"
    "  if not lease or lease < 1 then lease = tonumber(ARGV[3]) end\n"
    "  if f['pending'] > 0 and #out < max then\n"
    "    local p = redis.call('XPENDING', key, ARGV[1], 'IDLE', lease, '-', '+', max - #out, "
    "f['name'])\n"
    "    local mine = f['name'] == ARGV[2]\n"
    "    for _, e in ipairs(p) do\n"
    "      local c\n"
    "      if mine then\n"
    "        c = redis.call('XCLAIM', key, ARGV[1], ARGV[2], lease, e[1], 'RETRYCOUNT', e[4])\n"
    "      else\n"
    "        c = redis.call('XCLAIM', key, ARGV[1], ARGV[2], lease, e[1])\n"
    "      end\n"
    "      if #c > 0 and c[1] then\n"
    "        local h, d, waiting, bad = {false, false, false}, mine and e[4] or e[4] + 1, 0, false\n"
    "        local hk\n"
    "        for j = 1, #c[1][2], 2 do\n"
    "          if c[1][2][j] == 'i' then\n"
    "            hk = ARGV[5] .. c[1][2][j + 1]\n"
    "            h = redis.pcall('HMGET', hk, 'cr', 'rd', 'hu')\n"
    "            if h.err then\n"
    "              bad = hk .. ' is no item hash (' .. h.err .. ')'\n"
    "              h, hk = {false, false, false}, nil\n"
    "            end\n"
    "          end\n"
    "        end\n"
    "        local rd = uint(h[2], 15)\n"
    "        local hu = h[3]\n"
    "        if hu and hu ~= e[1] .. ' ' .. e[4] then h[3] = false end\n"
    "        if (rd and rd > tonumber(ARGV[6])) or h[3] then\n"
    "          redis.call('XCLAIM', key, ARGV[1], ARGV[2], 0, e[1], 'RETRYCOUNT', e[4], "
    "'JUSTID')\n"
    "          d, waiting = e[4], 1\n"
    "        end\n"
    "        if hu then redis.call('HDEL', hk, 'hu') end\n"
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
const char script_layout[] =
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
 * updates). 1: it jumped. A counter that is no integer below 2^53
 * (written by hand) is an error naming it, as in the other scripts (the
 * session waits until it is deleted): Lua's compare of nil, or GET's
 * WRONGTYPE, named nothing.
 */
const char script_fence[] =
    LUA_UINT_FN
    "local c = redis.pcall('GET', KEYS[1])\n"
    "local f = tonumber(ARGV[1])\n"
    "if c == false or f == 0 then return 0 end\n"
    "c = uint(c, 16)\n"
    "if not c then return redis.error_reply(" LUA_SEQ_BAD("KEYS[1]") ") end\n"
    "if c >= f then return 0 end\n"
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

/* hand_back (a fast stop at a graceful stop's deadline: cluster_hand_back()):
 * KEYS[1] a work stream; ARGV group, consumer, the item hash prefix, then
 * for each item waiting at the stopping instance (never started there) its
 * entry id, its delivery count and its id. An entry still pending at the
 * consumer with that count gets `hu` ("ENTRY COUNT") in its item's hash
 * (a claim of that entry at that count keeps it: no attempt spent, no
 * RETRYING; any claim deletes it, so a mark no claim of this version took
 * is honoured for nothing else) and an idle time past any
 * lease (the other instances claim it at their next pass, not after the
 * lease). Returns how many were handed back. */
static const char script_hand_back[] =
    "local n = 0\n"
    "for i = 4, #ARGV - 2, 3 do\n"
    "  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])\n"
    "  if p[1] and tonumber(p[1][4]) == tonumber(ARGV[i + 1]) then\n"
    "    local hk = ARGV[3] .. ARGV[i + 2]\n"
    "    if redis.call('TYPE', hk).ok == 'hash' then\n"
    "      redis.call('HSET', hk, 'hu', ARGV[i] .. ' ' .. p[1][4])\n"
    "      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', 1099511627776, "
    "'RETRYCOUNT', p[1][4], 'JUSTID')\n"
    "      n = n + 1\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return n\n";

const char *const script_text[SCRIPT_COUNT] = {
    script_accepts, script_update, script_renew, script_claim, script_trim, script_cancel,
    script_retry, script_pull, script_due, script_size, script_lookup, script_hand_back,
};
