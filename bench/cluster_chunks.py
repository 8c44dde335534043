#!/usr/bin/python3
"""
What Redis would spend per item with work entries of many items (a design
for issue 19's 5 µs target, not what the daemon does), against the scripts
the daemon runs today, measured alone on one redis-server:

    /usr/bin/python3 bench/cluster_chunks.py [CHUNK ...]

The sketch (Lua below) keeps only what the hot path of a priority-0 item
needs, each written once per batch, never once per item:

- accept: one HMGET of the batch's ids in {NAME}:ids (the duplicate check),
  the WorkItems of up to CHUNK items in one work entry (field: id, value:
  the instance's encoded item), {NAME}:ids id -> the seq of its QUEUED
  update, the chunk in the listing by its first seq ({NAME}:chunks: also
  what finds an item's chunk from its seq), {NAME}:left chunk -> how many
  of its items are not final, and the QUEUED updates in one update entry;
- the instance reads chunks with XREADGROUP (the lease is the chunk's);
- final: one XPENDING for the attempt check of the whole batch (the
  chunk's delivery count), the finals in one update entry, their latest
  updates in {NAME}:latest, one HINCRBY per chunk, and XACK and XDEL of
  the chunks whose last item ended.

What it leaves out and a real layout would need (each off the hot path or
per chunk): retries and takeovers of single items inside a chunk (an
attempt of their own), cancel and retry by id, lanes and delays, the
retention's trimming, getItems reading chunks. Same items as
bench/cluster_scripts.py (40 accept scripts of 512 echo items, then update
scripts of 256 finals), interleaved with the daemon's own scripts of
src/grpc/cluster_scripts.c; INFO cpu before and after each step. docs/scaling.md
has the numbers.
"""
import sys
import time

from cluster_scripts import N, B, measure, redis_server

ACCEPT = r"""
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
local chunk = tonumber(ARGV[2])
local ids = {}
for o = 3, #ARGV, 3 do ids[#ids + 1] = ARGV[o + 1] end
local known = redis.call('HMGET', KEYS[4], unpack(ids))
local out, ups, fields, index, seen = {}, {}, {}, {}, {}
local function flush()
  if #fields == 0 then return end
  local e = redis.call('XADD', KEYS[1], '0-*', unpack(fields))
  redis.call('ZADD', KEYS[5], fields.first, e)
  redis.call('HSET', KEYS[6], e, #fields / 2)
  fields = {}
end
for o = 3, #ARGV, 3 do
  local i = (o - 3) / 3 + 1
  local u, id, w = ARGV[o], ARGV[o + 1], ARGV[o + 2]
  if known[i] or seen[id] then
    out[i] = 0
  else
    seen[id] = true
    seq = seq + 1
    local n = #ups
    ups[n + 1], ups[n + 2] = 'U', u
    n = #index
    index[n + 1], index[n + 2] = id, seq
    if #fields == 0 then fields.first = seq end
    n = #fields
    fields[n + 1], fields[n + 2] = id, w
    if n + 2 >= 2 * chunk then flush() end
    out[i] = seq
  end
end
flush()
if #ups > 0 then
  redis.call('HSET', KEYS[4], unpack(index))
  redis.call('XADD', KEYS[2], 'MINID', '~', math.max(0, seq - tonumber(ARGV[1])),
             '0-' .. string.format('%.0f', seq), unpack(ups))
  redis.call('SET', KEYS[3], string.format('%.0f', seq))
end
return out
"""

FINAL = r"""
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
local g, c, now = ARGV[1], ARGV[2], ARGV[3]
local lo, hi
for o = 4, #ARGV, 5 do
  local n = tonumber(string.sub(ARGV[o], 3))
  if not lo or n < lo then lo = n end
  if not hi or n > hi then hi = n end
end
local pend = {}
if lo then
  for _, x in ipairs(redis.call('XPENDING', KEYS[1], g, '0-' .. lo, '0-' .. hi, 10000, c)) do
    pend[x[1]] = x[4]
  end
end
local out, ups, lat, pushes, ended, bytes = {}, {}, {}, {}, {}, 0
for o = 4, #ARGV, 5 do
  local e, att, u, id, st = ARGV[o], tonumber(ARGV[o + 1]), ARGV[o + 2], ARGV[o + 3], ARGV[o + 4]
  if pend[e] ~= att then
    out[#out + 1] = 0
  else
    seq = seq + 1
    local n = #ups
    ups[n + 1], ups[n + 2] = 'U', u
    local sq = string.format('%.0f', seq)
    local size = 2 * #id + #u + 200
    n = #lat
    lat[n + 1], lat[n + 2] = id, st .. ' ' .. sq .. ' ' .. now .. ' ' .. size .. '  ' .. u
    pushes[#pushes + 1] = sq .. ' ' .. id
    bytes = bytes + size
    ended[e] = (ended[e] or 0) + 1
    out[#out + 1] = seq
  end
end
if #ups > 0 then
  redis.call('XADD', KEYS[2], 'MINID', '~', math.max(0, seq - 65536),
             '0-' .. string.format('%.0f', seq), unpack(ups))
  redis.call('SET', KEYS[3], string.format('%.0f', seq))
  redis.call('HSET', KEYS[4], unpack(lat))
  local acks = {}
  for e, k in pairs(ended) do
    if redis.call('HINCRBY', KEYS[5], e, -k) <= 0 then
      acks[#acks + 1] = e
    end
  end
  if #acks > 0 then
    redis.call('HDEL', KEYS[5], unpack(acks))
    redis.call('XACK', KEYS[1], g, unpack(acks))
    redis.call('XDEL', KEYS[1], unpack(acks))
  end
  redis.call('RPUSH', KEYS[6], unpack(pushes))
  redis.call('INCRBY', KEYS[7], bytes)
end
return out
"""


def bare(lua):
    """The sketch without any record of single items: no duplicate check, no
    id index, no latest update, no finals list (a queue and its updates
    only: the floor of any layout that still writes each update)."""
    for line in ("local known = redis.call('HMGET', KEYS[4], unpack(ids))\n",
                 "  redis.call('HSET', KEYS[4], unpack(index))\n",
                 "  redis.call('HSET', KEYS[4], unpack(lat))\n",
                 "  redis.call('RPUSH', KEYS[6], unpack(pushes))\n"):
        lua = lua.replace(line, "local known = {}\n" if "HMGET" in line else "")
    return lua


def measure_chunks(r, chunk, floor=False):
    accept, final = (bare(ACCEPT), bare(FINAL)) if floor else (ACCEPT, FINAL)
    sa, sf = r.cmd("SCRIPT", "LOAD", accept), r.cmd("SCRIPT", "LOAD", final)
    uq = b"\x12\x10exp-item-0000000\x1a\x04echo \x01@\x01P\xde\xb5\xc7\xf0\x80\x90\xb1\xf7\x18"
    uf = uq + b"\x22\x40" + b"r" * 64
    # the WorkItem and what the instance needs beside it (kind, batch,
    # max_attempts, timeout, quick: a few bytes of its own encoding)
    w = b"echo\x00\x00\x03\x00\x01" + b"\x0a\x10exp-item-0000000\x12\x04echo\x1a\x40" + b"p" * 64
    tag = f"c{time.time_ns()}"
    K = lambda k: f"{{{tag}}}:{k}"  # noqa: E731
    r.cmd("XGROUP", "CREATE", K("work"), "g", "0", "MKSTREAM")
    c0 = r.cpu()
    keys = [K("work"), K("updates"), K("seq"), K("ids"), K("chunks"), K("left")]
    for n in range(N):
        args = ["EVALSHA", sa, str(len(keys))] + keys + ["65536", str(chunk)]
        for i in range(B):
            args += [uq, f"x{n * B + i}", w]
        r.send(*args)
    for n in range(N):
        r.read()
    c1 = r.cpu()
    ents = r.cmd("XREADGROUP", "GROUP", "g", "c", "COUNT", str(N * B), "STREAMS", K("work"), ">")
    where = []
    for e in ents[0][1]:
        where += [(e[0], e[1][j]) for j in range(0, len(e[1]), 2)]
    assert len(where) == N * B, len(where)
    c2 = r.cpu()
    keys = [K("work"), K("updates"), K("seq"), K("latest"), K("left"), K("finals"),
            K("finals_bytes")]
    half = B // 2
    for n in range(2 * N):
        args = ["EVALSHA", sf, str(len(keys))] + keys + ["g", "c", "1796589754034"]
        for i in range(half):
            e, item = where[n * half + i]
            args += [e, "1", uf, item, "4"]
        r.send(*args)
    for n in range(2 * N):
        last = r.read()
    c3 = r.cpu()
    assert isinstance(last, list) and last[-1] > 0, f"the final script wrote nothing: {last!r}"
    assert r.cmd("XLEN", K("work")) == 0 and r.cmd("HLEN", K("left")) == 0
    r.cmd("FLUSHALL")
    it = N * B
    return [1e6 * (b - a) / it for a, b in ((c0, c1), (c1, c2), (c2, c3), (c0, c3))]


def main():
    chunks = [int(a) for a in sys.argv[1:]] or [64, 512]
    with redis_server() as r:
        print("µs of Redis CPU per item: accept, xreadgroup, final, total")
        rounds = {}
        for _ in range(5):
            row = {"today (cluster_scripts.c)": measure(r, "src/grpc/cluster_scripts.c")}
            for ch in chunks:
                row[f"chunks of {ch}"] = measure_chunks(r, ch)
            row[f"chunks of {chunks[0]}, no records"] = measure_chunks(r, chunks[0], True)
            for name, v in row.items():
                rounds.setdefault(name, []).append(v)
                print(f"{name:28s} {v[0]:6.2f} {v[1]:6.2f} {v[2]:6.2f} {v[3]:6.2f}", flush=True)
        print("minimum of the rounds, per column:")
        for name, vs in rounds.items():
            m = [min(v[i] for v in vs) for i in range(4)]
            print(f"{name:28s} {m[0]:6.2f} {m[1]:6.2f} {m[2]:6.2f} {m[3]:6.2f}")


if __name__ == "__main__":
    main()
