"""The result cache with in-flight merging (handlers.<kind>.cache) against
the real binary, in memory, journal and cluster mode.

What is asserted is what a client sees: how many STARTED updates (runs)
there were, each item's final state, result and Update.cached, and the
dosomething_cache_* counters of /metrics. Nothing asserts a duration; a
ttl is waited out with a margin, never raced.
"""
import hashlib
import re
import signal
import time
import uuid

import pytest

from conftest import (CANCELLED, FAILED, STARTED, SUCCEEDED, free_port, http_get, pb,
                      run_cli, wait_for)
from test_cluster import cluster_config, redis, wait_serving  # noqa: F401 (a fixture)

ROUNDS = 200000
APPLIED = re.compile(r"grpc \d+: config generation \d+ applied")
MODES = ["memory", "journal", "cluster"]


def sha256_rounds(payload, rounds):
    d = hashlib.sha256(payload).digest()
    for _ in range(rounds - 1):
        d = hashlib.sha256(d).digest()
    return d


def handlers(cache, extra=None):
    """sha256 and sleep cached with CACHE ({size, ttl} or off), echo not."""
    def copy(v):
        return dict(v) if isinstance(v, dict) else v     # no YAML aliases
    h = {"default": "echo", "echo": {"builtin": "echo"},
         "sha256": {"builtin": "sha256", "timeout": "60s", "cache": copy(cache)},
         "sleep": {"builtin": "sleep", "cache": copy(cache)}}
    h.update(extra or {})
    return h


def config(tmp_path, mode, cache, status, extra=None, workers=2, redis_server=None,
           name=None):
    c = {"workers": {"count": workers}, "handlers": handlers(cache, extra),
         "status": {"listen": status}}
    if mode == "journal":
        c["queue"] = {"journal": str(tmp_path / "journal")}
    if mode == "cluster":
        c = cluster_config(redis_server, name, workers=workers, overrides=c)
    return c


class Setup:
    """One daemon in MODE with a status port, and what the tests ask of it."""

    def __init__(self, request, start_daemon, tmp_path, mode, cache, extra=None, workers=2):
        self.mode = mode
        self.tmp_path = tmp_path
        self.redis = request.getfixturevalue("redis") if mode == "cluster" else None
        self.name = f"t-{uuid.uuid4().hex[:12]}" if mode == "cluster" else None
        self.start_daemon = start_daemon
        self.extra = extra
        self.workers = workers
        self.d = self.start(cache)

    def config(self, cache, extra=None):
        return config(self.tmp_path, self.mode, cache, self.status,
                      extra if extra is not None else self.extra, self.workers, self.redis,
                      self.name)

    def start(self, cache, name=None):
        # A status port of its own: a second instance beside the first must
        # not share it (the master refuses an address another process serves).
        self.status = f"127.0.0.1:{free_port()}"
        d = self.start_daemon(self.config(cache), name=name)
        if self.mode == "cluster":
            wait_serving(d)
        self.d = d
        return d

    def metrics(self):
        r = wait_for(lambda: http_get(self.status, "/metrics"), 10, "/metrics")
        assert r[0] == 200
        values = {}
        for line in r[1].splitlines():
            m = re.match(r'dosomething_(cache_\w+)\{kind="(\w+)"\} (\d+)$', line)
            if m:
                values[(m.group(1), m.group(2))] = int(m.group(3))
        return values

    def counter(self, name, kind="sha256"):
        """A dosomething_cache_NAME_total counter, or the gauge (bytes, entries)."""
        metric = f"cache_{name}" if name in ("bytes", "entries") else f"cache_{name}_total"
        return self.metrics().get((metric, kind), 0)

    def reload(self, cache, extra=None):
        def outcomes():
            log = self.d.log_text()
            return len(APPLIED.findall(log)) + log.count("reload failed")
        before = outcomes()
        self.d.write_config(self.config(cache, extra))
        self.d.send_signal(signal.SIGHUP)
        wait_for(lambda: outcomes() > before, 15, "the reload to be applied or refused")


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


def sha_item(item_id, payload=b"cache me", rounds=ROUNDS, **kw):
    return {"id": item_id, "kind": "sha256", "payload": payload,
            "params": {"rounds": str(rounds)}, **kw}


def run(client, items, timeout=60):
    """Submit ITEMS, wait for their finals; the subscription."""
    reply, sub = client.run_items(items, timeout=timeout)
    assert reply.accepted == len(items), reply
    return sub


def runs_of(sub, ids):
    """STARTED updates of IDS: each is a run of a handler."""
    return [u for i in ids for u in sub.of(i) if u.state == STARTED]


# ---- the test: many identical items, one run ---------------------------------

@pytest.mark.deadline(120)
def test_identical_items_run_once_and_all_get_the_result(request, start_daemon, tmp_path,
                                                         mode):
    s = Setup(request, start_daemon, tmp_path, mode, {"size": "1MiB", "ttl": "1h"})
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    ids = [f"{tag}-{n}" for n in range(100)]
    sub = run(c, [sha_item(i) for i in ids], timeout=90)

    expected = sha256_rounds(b"cache me", ROUNDS)
    finals = [sub.final[i] for i in ids]
    assert [f.state for f in finals] == [SUCCEEDED] * 100
    assert {f.result for f in finals} == {expected}
    assert len(runs_of(sub, ids)) == 1, [u.item_id for u in runs_of(sub, ids)]
    cached = [f for f in finals if f.cached]
    assert len(cached) == 99
    leader = [f for f in finals if not f.cached][0]
    assert runs_of(sub, ids)[0].item_id == leader.item_id
    # Each item has its own QUEUED and final update, and its own seq.
    assert all([u.state for u in sub.of(i)][0] == pb.QUEUED for i in ids)
    assert len({f.seq for f in finals}) == 100
    assert all(f.worker_pid == 0 for f in cached)

    m = s.metrics()
    assert m[("cache_misses_total", "sha256")] == 1
    assert m[("cache_hits_total", "sha256")] + m[("cache_merges_total", "sha256")] == 99
    assert m[("cache_stored_total", "sha256")] == 1
    assert m[("cache_entries", "sha256")] == 1
    assert m[("cache_bytes", "sha256")] > 32

    # Known items (getItems) say SUCCEEDED with the result, cached or not.
    got = c.get_items(ids[:3] + ids[-3:], with_results=True)
    assert {(i.state, i.result) for i in got.items} == {(SUCCEEDED, expected)}

    # Later: served from the cache, no run.
    sub2 = run(c, [sha_item(f"{tag}-again")])
    assert sub2.final[f"{tag}-again"].cached and not runs_of(sub2, [f"{tag}-again"])
    assert sub2.final[f"{tag}-again"].result == expected


@pytest.mark.deadline(90)
def test_ttl_changed_param_and_param_order(request, start_daemon, tmp_path):
    s = Setup(request, start_daemon, tmp_path, "memory", {"size": "1MiB", "ttl": "1s"})
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    first = run(c, [sha_item(f"{tag}-1", rounds=1000)])
    assert not first.final[f"{tag}-1"].cached and runs_of(first, [f"{tag}-1"])

    # A changed param is another key; so is a changed payload.
    other = run(c, [sha_item(f"{tag}-2", rounds=1001),
                    sha_item(f"{tag}-3", rounds=1000, payload=b"cache me too")])
    assert not other.final[f"{tag}-2"].cached and not other.final[f"{tag}-3"].cached
    assert other.final[f"{tag}-2"].result == sha256_rounds(b"cache me", 1001)
    assert len(runs_of(other, [f"{tag}-2", f"{tag}-3"])) == 2

    # What is not part of the key (id, batch, priority, timeout) does not matter.
    same = run(c, [sha_item(f"{tag}-4", rounds=1000, batch="b", priority=3, timeout_ms=9000)])
    assert same.final[f"{tag}-4"].cached and not runs_of(same, [f"{tag}-4"])

    # After the ttl it runs again.
    time.sleep(1.5)
    late = run(c, [sha_item(f"{tag}-5", rounds=1000)])
    assert not late.final[f"{tag}-5"].cached and runs_of(late, [f"{tag}-5"])
    assert late.final[f"{tag}-5"].result == sha256_rounds(b"cache me", 1000)
    assert s.counter("expired") >= 1


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number, data):
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def raw_work_item(item_id, kind, payload, params):
    """A WorkItem encoded by hand, its params in the order of PARAMS (a list of
    pairs): grpcio's own encoder picks the order of a map's entries."""
    b = _field(1, item_id.encode()) + _field(2, kind.encode()) + _field(3, payload)
    for k, v in params:
        b += _field(4, _field(1, k.encode()) + _field(2, v.encode()))
    return b


def test_param_order_does_not_matter(request, start_daemon, tmp_path):
    s = Setup(request, start_daemon, tmp_path, "memory", {"size": "1MiB", "ttl": "1h"})
    c = s.d.client()
    sub = c.subscribe(sync=True)
    submit = c.channel.stream_unary(
        "/com.agrounds.dosomething.v1.DoSomethingService/doSomething",
        request_serializer=lambda b: b, response_deserializer=pb.SubmitReply.FromString)
    tag = uuid.uuid4().hex[:8]
    reply = submit(iter([raw_work_item(f"{tag}-a", "sleep", b"x", [("ms", "50"), ("steps", "2")])]),
                   timeout=10)
    assert reply.accepted == 1
    sub.wait_final([f"{tag}-a"], timeout=30)
    reply = submit(iter([raw_work_item(f"{tag}-b", "sleep", b"x", [("steps", "2"), ("ms", "50")]),
                         raw_work_item(f"{tag}-c", "sleep", b"x", [("steps", "3"), ("ms", "50")])]),
                   timeout=10)
    assert reply.accepted == 2
    sub.wait_final([f"{tag}-b", f"{tag}-c"], timeout=30)
    assert not sub.final[f"{tag}-a"].cached
    assert sub.final[f"{tag}-b"].cached and not runs_of(sub, [f"{tag}-b"])
    assert not sub.final[f"{tag}-c"].cached and runs_of(sub, [f"{tag}-c"])


# ---- failures and cancels -----------------------------------------------------------

def test_failed_is_never_cached_and_merged_items_share_the_failure(request, start_daemon,
                                                                   tmp_path, mode):
    runs = tmp_path / "runs"
    flaky = {"exec": ["sh", "-c", f'sleep 0.5; echo run >> {runs}; echo "no good" >&2; exit 3'],
             "cache": {"size": "1MiB", "ttl": "1h"}}
    s = Setup(request, start_daemon, tmp_path, mode, {"size": "1MiB", "ttl": "1h"},
              extra={"flaky": flaky})
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    ids = [f"{tag}-{n}" for n in range(5)]
    sub = run(c, [{"id": i, "kind": "flaky", "payload": b"p"} for i in ids])
    assert [sub.final[i].state for i in ids] == [FAILED] * 5
    assert runs.read_text().count("run") == 1
    leader = [i for i in ids if runs_of(sub, [i])]
    assert len(leader) == 1
    for i in ids:
        assert not sub.final[i].cached
        if i != leader[0]:
            assert "identical run it waited for" in sub.final[i].error, sub.final[i].error
            assert "no good" in sub.final[i].error

    # Not cached: the same item runs again.
    again = run(c, [{"id": f"{tag}-again", "kind": "flaky", "payload": b"p"}])
    assert again.final[f"{tag}-again"].state == FAILED
    assert runs.read_text().count("run") == 2
    assert s.counter("stored", "flaky") == 0


@pytest.mark.deadline(90)
def test_cancelled_leader_releases_the_merged_items(request, start_daemon, tmp_path, mode):
    s = Setup(request, start_daemon, tmp_path, mode, {"size": "1MiB", "ttl": "1h"})
    c = s.d.client()
    sub = c.subscribe(sync=True)
    tag = uuid.uuid4().hex[:8]
    ids = [f"{tag}-{n}" for n in range(5)]
    items = [{"id": i, "kind": "sleep", "payload": b"z", "params": {"ms": "1500"}} for i in ids]
    assert c.submit(items[:1]).accepted == 1
    sub.wait_state(ids[0], STARTED, timeout=20)
    assert c.submit(items[1:]).accepted == 4
    wait_for(lambda: s.counter("merges", "sleep") == 4, 20, "4 merged items")

    # A merged item cancelled is just cancelled.
    assert c.cancel_items([ids[4]]).cancelled == 1
    sub.wait_final([ids[4]], timeout=20)
    assert sub.final[ids[4]].state == CANCELLED

    # The leader cancelled: the others run on their own (one run for them).
    assert c.cancel_items([ids[0]]).cancelled == 1
    sub.wait_final(ids, timeout=40)
    assert sub.final[ids[0]].state == CANCELLED
    rest = ids[1:4]
    assert [sub.final[i].state for i in rest] == [SUCCEEDED] * 3
    assert len(runs_of(sub, rest)) == 1
    assert sorted(sub.final[i].cached for i in rest) == [False, True, True]


# ---- size, config, reload --------------------------------------------------------------

def test_eviction_by_size(request, start_daemon, tmp_path):
    s = Setup(request, start_daemon, tmp_path, "memory", {"size": "1KiB", "ttl": "1h"})
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    payloads = [f"p{n}".encode() for n in range(20)]
    for n, p in enumerate(payloads):
        run(c, [sha_item(f"{tag}-{n}", payload=p, rounds=10)])
    m = s.metrics()
    assert m[("cache_stored_total", "sha256")] == 20
    assert m[("cache_bytes", "sha256")] <= 1024
    assert m[("cache_evictions_total", "sha256")] == 20 - m[("cache_entries", "sha256")]
    assert m[("cache_evictions_total", "sha256")] >= 10
    # The newest is still served; the oldest was evicted and runs again.
    newest = run(c, [sha_item(f"{tag}-new", payload=payloads[-1], rounds=10)])
    assert newest.final[f"{tag}-new"].cached
    oldest = run(c, [sha_item(f"{tag}-old", payload=payloads[0], rounds=10)])
    assert not oldest.final[f"{tag}-old"].cached


BAD_CACHES = [
    ("{size: 0, ttl: 1h}", "handlers.sha256.cache.size: must be"),
    ("{size: 1MiB}", "handlers.sha256.cache: ttl is required"),
    ("{ttl: 1h}", "handlers.sha256.cache: size is required"),
    ("{size: lots, ttl: 1h}", "handlers.sha256.cache.size: must be a size"),
    ("{size: 99999999999999999999GiB, ttl: 1h}", "handlers.sha256.cache.size: must be"),
    ("{size: 2TiB, ttl: 1h}", "handlers.sha256.cache.size: must be"),
    ("{size: 1MiB, ttl: 0}", "handlers.sha256.cache.ttl: needs a unit"),
    ("{size: 1MiB, ttl: 0ms}", "handlers.sha256.cache.ttl: must be"),
    ("{size: 1MiB, ttl: soon}", "handlers.sha256.cache.ttl: must be"),
    ("{size: 1MiB, ttl: 1h, lru: yes}", "handlers.sha256.cache.lru: unknown key"),
    ("yes", "handlers.sha256.cache: must be off or a mapping"),
    ("", "handlers.sha256.cache: must be off or a mapping"),
]


@pytest.mark.parametrize("value,error", BAD_CACHES)
def test_bad_cache_config_is_rejected_with_its_place(tmp_path, value, error):
    path = tmp_path / "bad.yaml"
    path.write_text("handlers:\n  echo: {builtin: echo}\n"
                    f"  sha256: {{builtin: sha256, cache: {value}}}\n" if value else
                    "handlers:\n  echo: {builtin: echo}\n  sha256:\n    builtin: sha256\n"
                    "    cache:\n")
    r = run_cli("-t", "-c", path)
    assert r.returncode != 0
    assert re.search(rf"{re.escape(str(path))}:\d+:\d+: {re.escape(error)}", r.stderr), r.stderr


def test_cache_config_prints_and_loads_back(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("handlers:\n  echo: {builtin: echo, cache: off}\n"
                    "  sha256: {builtin: sha256, cache: {size: 256MiB, ttl: 1h}}\n")
    r = run_cli("-T", "-c", path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"cache:\s*\{?\s*size: 256MiB,?\s*ttl: 1h", r.stdout), r.stdout
    assert re.search(r"echo\"?:\s*\n(\s+\w+: .*\n)*?\s+cache: off", r.stdout), r.stdout
    printed = tmp_path / "printed.yaml"
    printed.write_text(r.stdout)
    again = run_cli("-T", "-c", printed)
    assert again.returncode == 0
    assert again.stdout.splitlines()[1:] == r.stdout.splitlines()[1:]     # but the file named


@pytest.mark.deadline(90)
def test_reload_applies_cache_settings(request, start_daemon, tmp_path):
    s = Setup(request, start_daemon, tmp_path, "memory", {"size": "1MiB", "ttl": "1h"})
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    for n in range(5):
        run(c, [sha_item(f"{tag}-{n}", payload=f"r{n}".encode(), rounds=10)])
    assert s.counter("entries") == 5

    # A bad value: the reload fails, the cache is as it was.
    s.reload({"size": "0", "ttl": "1h"})
    assert "reload failed" in s.d.log_text()
    assert s.counter("entries") == 5

    # Shrinking evicts the least recently used.
    run(c, [sha_item(f"{tag}-touch", payload=b"r0", rounds=10)])     # r0 is now the newest
    s.reload({"size": "300", "ttl": "1h"})
    wait_for(lambda: s.counter("entries") <= 2, 10, "entries evicted by the smaller size")
    assert s.counter("evictions") >= 3
    kept = run(c, [sha_item(f"{tag}-kept", payload=b"r0", rounds=10)])
    assert kept.final[f"{tag}-kept"].cached

    # Off: everything dropped, identical items run.
    s.reload("off")
    assert s.counter("entries") == 0
    off = run(c, [sha_item(f"{tag}-off", payload=b"r0", rounds=10)])
    assert not off.final[f"{tag}-off"].cached and runs_of(off, [f"{tag}-off"])

    # On again with a short ttl, applied to what is kept from then on.
    s.reload({"size": "1MiB", "ttl": "200ms"})
    run(c, [sha_item(f"{tag}-on", payload=b"r9", rounds=10)])
    time.sleep(0.6)
    late = run(c, [sha_item(f"{tag}-late", payload=b"r9", rounds=10)])
    assert not late.final[f"{tag}-late"].cached


def test_uncached_kinds_and_unreadable_params_are_untouched(request, start_daemon, tmp_path):
    """echo is not cached: identical echo items each run; a cached kind's item
    with params it does not take is rejected as before (never a cache key)."""
    s = Setup(request, start_daemon, tmp_path, "memory", {"size": "1MiB", "ttl": "1h"})
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    sub = run(c, [{"id": f"{tag}-{n}", "kind": "echo", "payload": b"same"} for n in range(5)])
    assert not any(sub.final[f"{tag}-{n}"].cached for n in range(5))
    reply = c.submit([sha_item(f"{tag}-bad", rounds=0)])
    assert reply.rejected == 1
    m = s.metrics()
    assert ("cache_hits_total", "echo") not in m
    assert m[("cache_misses_total", "sha256")] == 0


# ---- journal: the cache survives restarts ---------------------------------------------

@pytest.mark.deadline(120)
def test_journal_restart_keeps_the_cache_and_a_corrupt_file_is_skipped(request, start_daemon,
                                                                       tmp_path):
    s = Setup(request, start_daemon, tmp_path, "journal", {"size": "1MiB", "ttl": "1h"})
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    first = run(c, [sha_item(f"{tag}-1", payload=b"keep", rounds=1000),
                    sha_item(f"{tag}-2", payload=b"keep too", rounds=1000)])
    assert not first.final[f"{tag}-1"].cached
    s.d.stop()

    # Restarted on the same journal: served from the cache, no run.
    s.start({"size": "1MiB", "ttl": "1h"}, name="second")
    c = s.d.client()
    again = run(c, [sha_item(f"{tag}-3", payload=b"keep", rounds=1000)])
    assert again.final[f"{tag}-3"].cached and not runs_of(again, [f"{tag}-3"])
    assert again.final[f"{tag}-3"].result == sha256_rounds(b"keep", 1000)
    s.d.stop()

    # A corrupt file: a warning, the results before the damage kept, the
    # start goes on, and the file works again afterwards.
    path = tmp_path / "journal" / "result-cache"
    data = bytearray(path.read_bytes())
    assert data[:8] == b"DSCACHE1"
    data[-3] ^= 0xFF                 # inside the last record's result
    path.write_bytes(bytes(data) + b"\x07garbage")
    s.start({"size": "1MiB", "ttl": "1h"}, name="third")
    assert "checksum does not match" in s.d.log_text() or "cut short" in s.d.log_text()
    c = s.d.client()
    after = run(c, [sha_item(f"{tag}-4", payload=b"keep", rounds=1000),
                    sha_item(f"{tag}-5", payload=b"keep too", rounds=1000)])
    assert after.final[f"{tag}-4"].result == sha256_rounds(b"keep", 1000)
    assert after.final[f"{tag}-5"].result == sha256_rounds(b"keep too", 1000)
    s.d.stop()

    # Garbage from the first byte: ignored, replaced.
    path.write_bytes(b"not a cache file at all")
    s.start({"size": "1MiB", "ttl": "1h"}, name="fourth")
    assert "does not start with DSCACHE1" in s.d.log_text()
    c = s.d.client()
    last = run(c, [sha_item(f"{tag}-6", payload=b"keep", rounds=1000)])
    assert not last.final[f"{tag}-6"].cached
    assert path.read_bytes()[:8] == b"DSCACHE1"


# ---- cluster: the cache is shared through Redis ---------------------------------------

@pytest.mark.deadline(120)
def test_cluster_instances_share_the_cache_through_redis(request, start_daemon, tmp_path):
    s = Setup(request, start_daemon, tmp_path, "cluster", {"size": "1MiB", "ttl": "1h"})
    a = s.d
    b = s.start({"size": "1MiB", "ttl": "1h"}, name="b")    # the same cluster
    tag = uuid.uuid4().hex[:8]
    first = run(a.client(), [sha_item(f"{tag}-1", payload=b"shared", rounds=1000)])
    assert not first.final[f"{tag}-1"].cached
    keys = s.redis.command("KEYS", f"{{{s.name}}}:cache:*")
    assert len(keys) == 1, keys
    ttl = s.redis.command("PTTL", keys[0])
    assert 0 < ttl <= 3600 * 1000

    # b never ran it: it asks Redis, and serves it without a run.
    sub = b.client().subscribe(sync=True)
    assert b.client().submit([sha_item(f"{tag}-2", payload=b"shared", rounds=1000)]).accepted == 1
    sub.wait_final([f"{tag}-2"], timeout=30)
    assert sub.final[f"{tag}-2"].state == SUCCEEDED and sub.final[f"{tag}-2"].cached
    assert sub.final[f"{tag}-2"].result == sha256_rounds(b"shared", 1000)
    assert not runs_of(sub, [f"{tag}-2"])

    # A key Redis does not have: a miss, the item runs (nothing waits).
    s.redis.command("DEL", keys[0])
    c = a.client()
    sub = c.subscribe(sync=True)
    assert c.submit([sha_item(f"{tag}-3", payload=b"other", rounds=1000)]).accepted == 1
    sub.wait_final([f"{tag}-3"], timeout=30)
    assert sub.final[f"{tag}-3"].result == sha256_rounds(b"other", 1000)


def test_graceful_stop_finishes_the_merged_items_with_their_run(request, start_daemon,
                                                                 tmp_path):
    """SIGQUIT while a run has items merged into it: the run finishes and
    every merged item ends SUCCEEDED with its result before the daemon exits."""
    s = Setup(request, start_daemon, tmp_path, "memory", {"size": "1MiB", "ttl": "1h"})
    c = s.d.client()
    sub = c.subscribe(sync=True)
    tag = uuid.uuid4().hex[:8]
    ids = [f"{tag}-{n}" for n in range(4)]
    items = [{"id": i, "kind": "sleep", "payload": b"q", "params": {"ms": "1000"}} for i in ids]
    assert c.submit(items[:1]).accepted == 1
    sub.wait_state(ids[0], STARTED, timeout=20)
    assert c.submit(items[1:]).accepted == 3
    wait_for(lambda: s.counter("merges", "sleep") == 3, 20, "3 merged items")
    s.d.send_signal(signal.SIGQUIT)
    sub.wait_final(ids, timeout=30)
    assert [sub.final[i].state for i in ids] == [SUCCEEDED] * 4
    assert [sub.final[i].cached for i in ids] == [False, True, True, True]
    s.d.wait_exit()


def test_cli_watch_shows_cached(request, start_daemon, tmp_path):
    """`dosomething watch` prints Update.cached: false on the run's final,
    true on the final an identical item got from the cache."""
    import json
    from test_cli import EXIT_OK, explain
    from test_cli import run as cli
    s = Setup(request, start_daemon, tmp_path, "memory", {"size": "1MiB", "ttl": "1h"})
    c = s.d.client()
    run(c, [sha_item("w-run", rounds=1000)])
    run(c, [sha_item("w-hit", rounds=1000)])
    r = cli("watch", "--after-seq", "0", "--state", "SUCCEEDED", "--item", "w-run", "--item",
            "w-hit", "--count", "2", target=s.d)
    assert r.returncode == EXIT_OK, explain(r)
    lines = {u["item_id"]: u for u in map(json.loads, r.stdout.splitlines())}
    assert lines["w-run"]["cached"] is False and lines["w-hit"]["cached"] is True, explain(r)
    assert lines["w-hit"]["result_b64"] == lines["w-run"]["result_b64"], explain(r)
