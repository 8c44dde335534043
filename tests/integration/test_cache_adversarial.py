"""The result cache (handlers.<kind>.cache) under attack, against the real
binary: results at and over each size limit, a damaged or unusable
DIR/result-cache, a full disk, merged items when their leader's worker is
killed, a reload or a stop comes, Redis dying under a cluster instance,
results that are not UTF-8, and params in odd forms as cache keys.

As in test_cache.py, what is asserted is what a client sees (finals,
results, Update.cached, STARTED updates, /metrics) and what the log says;
nothing asserts a duration, and every wait is bounded.
"""
import os
import signal
import socket
import subprocess
import threading
import time
import uuid

import grpc
import pytest

from conftest import (FAILED, RETRYING, STARTED, SUCCEEDED, deep_merge, http_get, pid_alive,
                      wait_for)
from test_cache import Setup, mode, raw_work_item, run, runs_of  # noqa: F401 (a fixture)
from test_cluster import redis, wait_serving  # noqa: F401 (a fixture)
from test_journal import kill_everything

CACHE = {"size": "1MiB", "ttl": "1h"}
RESULT_SIZE_MAX = (4 << 20) - (64 << 10)        # DS_RESULT_SIZE_MAX


def blob_handlers(cache=CACHE, **extra):
    """blob: echo (result = payload) cached with CACHE."""
    h = {"blob": {"builtin": "echo", "cache": dict(cache) if isinstance(cache, dict) else cache}}
    h.update(extra)
    return h


class Overridden(Setup):
    """A Setup whose config gets OVERRIDES (top-level keys) merged in."""

    def __init__(self, request, start_daemon, tmp_path, mode, cache, extra=None, workers=2,
                 overrides=None):
        self.overrides = overrides or {}
        super().__init__(request, start_daemon, tmp_path, mode, cache, extra, workers)

    def config(self, cache, extra=None):
        return deep_merge(super().config(cache, extra), self.overrides)


def blob(item_id, payload, **kw):
    return {"id": item_id, "kind": "blob", "payload": payload, **kw}


def ran(sub, item_id):
    """Did ITEM_ID run (a STARTED of its own), as opposed to being served?"""
    return bool(runs_of(sub, [item_id]))


# ---- sizes at and over each limit ----------------------------------------------------

@pytest.mark.deadline(90)
def test_a_result_exactly_at_the_cache_size_is_kept_one_byte_over_is_not(request,
                                                                         start_daemon,
                                                                         tmp_path):
    s = Setup(request, start_daemon, tmp_path, "memory", CACHE, extra=blob_handlers())
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    run(c, [blob(f"{tag}-probe", b"x" * 10)])
    overhead = s.counter("bytes", "blob") - 10          # the bookkeeping of one entry
    assert 0 < overhead <= 256, overhead

    # Room for exactly one result of 1000 bytes.
    size = overhead + 1000
    s.reload(CACHE, extra=blob_handlers({"size": str(size), "ttl": "1h"}))
    a, b, c999 = b"a" * 1000, b"b" * 1001, b"c" * 999
    first = run(c, [blob(f"{tag}-a1", a)])
    assert ran(first, f"{tag}-a1") and first.final[f"{tag}-a1"].result == a
    assert (s.counter("entries", "blob"), s.counter("bytes", "blob")) == (1, size)
    hit = run(c, [blob(f"{tag}-a2", a)])
    assert hit.final[f"{tag}-a2"].cached and hit.final[f"{tag}-a2"].result == a

    # One byte over: not kept, still SUCCEEDED (each identical item too,
    # whether it ran or merged into a run), and what was kept stays.
    stored = s.counter("stored", "blob")
    ids = [f"{tag}-b{n}" for n in range(4)]
    over = run(c, [blob(i, b) for i in ids])
    assert [over.final[i].state for i in ids] == [SUCCEEDED] * 4
    assert {over.final[i].result for i in ids} == {b}
    assert s.counter("stored", "blob") == stored
    again = run(c, [blob(f"{tag}-b-again", b)])
    assert not again.final[f"{tag}-b-again"].cached and ran(again, f"{tag}-b-again")
    kept = run(c, [blob(f"{tag}-a3", a)])
    assert kept.final[f"{tag}-a3"].cached

    # A size of one entry: the next result takes the place of the last.
    run(c, [blob(f"{tag}-c1", c999)])
    assert s.counter("entries", "blob") == 1
    gone = run(c, [blob(f"{tag}-a4", a)])
    assert not gone.final[f"{tag}-a4"].cached and ran(gone, f"{tag}-a4")
    assert s.counter("bytes", "blob") <= size
    assert s.d.grpc_pid() is not None


@pytest.mark.deadline(120)
def test_results_near_max_result_size(request, start_daemon, tmp_path):
    """handlers.max_result_size exactly: cached; one byte over: the run and
    the items merged into it fail, nothing is cached. Journal mode: a result
    of DS_RESULT_SIZE_MAX bytes is written to DIR/result-cache and read back."""
    s = Overridden(request, start_daemon, tmp_path, "journal", CACHE,
                   extra=blob_handlers({"size": "16MiB", "ttl": "1h"}),
                   overrides={"handlers": {"max_result_size": "64KiB"}})
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    at = bytes(range(256)) * 256                       # 64 KiB, not UTF-8
    sub = run(c, [blob(f"{tag}-at", at), blob(f"{tag}-at2", at)])
    assert [sub.final[f"{tag}-at{n}"].result for n in ("", "2")] == [at, at]
    assert sub.final[f"{tag}-at2"].cached

    ids = [f"{tag}-over{n}" for n in range(3)]
    over = run(c, [blob(i, at + b"!") for i in ids])
    assert [over.final[i].state for i in ids] == [FAILED] * 3
    assert all("exceeds" in over.final[i].error for i in ids if ran(over, i))
    merged = [i for i in ids if not ran(over, i)]      # (echo is quick: maybe none)
    assert all("identical run it waited for" in over.final[i].error for i in merged)
    assert s.counter("stored", "blob") == 1

    # The most an update can carry, through the file and a restart.
    s.overrides = {}
    s.d.stop()
    s.start({"size": "1MiB", "ttl": "1h"}, name="second")
    c = s.d.client(options=[("grpc.max_receive_message_length", 8 << 20),
                            ("grpc.max_send_message_length", 8 << 20)])
    big = (b"\xff\xfe" + os.urandom(64)) * (RESULT_SIZE_MAX // 66) + b"\x80" * (
        RESULT_SIZE_MAX % 66)
    assert len(big) == RESULT_SIZE_MAX
    first = run(c, [blob(f"{tag}-big", big)], timeout=60)
    assert first.final[f"{tag}-big"].state == SUCCEEDED, first.final[f"{tag}-big"].error
    assert first.final[f"{tag}-big"].result == big
    s.d.stop()
    s.start({"size": "1MiB", "ttl": "1h"}, name="third")
    assert "result-cache" in s.d.log_text() and "2 results read back" in s.d.log_text(), \
        s.d.log_tail()
    c = s.d.client(options=[("grpc.max_receive_message_length", 8 << 20),
                            ("grpc.max_send_message_length", 8 << 20)])
    again = run(c, [blob(f"{tag}-big2", big)], timeout=60)
    assert again.final[f"{tag}-big2"].cached and again.final[f"{tag}-big2"].result == big


# ---- the journal's DIR/result-cache damaged or unusable ------------------------------

def journal_cache_setup(request, start_daemon, tmp_path, paused=False):
    """Journal mode with blob cached and hold (echo) paused or not; fsynced
    journal: an accepted item is on disk when its reply comes."""
    extra = blob_handlers(hold={"builtin": "echo", "paused": paused})
    return Overridden(request, start_daemon, tmp_path, "journal", CACHE, extra=extra,
                      overrides={"queue": {"journal_sync": "always"}})


def item_states(c, ids):
    return {i.id: i.state for i in c.get_items(ids).items}


def restart_with_held_items(s, tag, name, damage):
    """Items of the paused kind accepted, the daemon killed, DAMAGE(path)
    done to DIR/result-cache, a restart with the kind unpaused: every
    accepted item runs (nothing accepted is lost). Returns the new client."""
    c = s.d.client()
    ids = [f"{tag}-{name}-held{n}" for n in range(3)]
    reply = c.submit([{"id": i, "kind": "hold", "payload": i.encode()} for i in ids])
    assert reply.accepted == 3
    kill_everything(s.d)
    damage(s.tmp_path / "journal" / "result-cache")
    s.extra = blob_handlers(hold={"builtin": "echo"})
    s.start(CACHE, name=name)
    c = s.d.client()
    wait_for(lambda: item_states(c, ids) == {i: SUCCEEDED for i in ids}, 30,
             f"the held items of {name} to run")
    s.extra = blob_handlers(hold={"builtin": "echo", "paused": True})
    s.d.write_config(s.config(CACHE))
    return c


@pytest.mark.deadline(180)
def test_cache_file_cut_at_every_interesting_offset(request, start_daemon, tmp_path):
    s = journal_cache_setup(request, start_daemon, tmp_path)
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    one, two = b"\x00\xff one \xc3\x28", b"two \xfe" * 3
    run(c, [blob(f"{tag}-1", one)])
    run(c, [blob(f"{tag}-2", two)])
    s.d.stop()
    path = tmp_path / "journal" / "result-cache"
    whole = path.read_bytes()
    assert whole[:8] == b"DSCACHE1"
    end1 = 8 + 8 + int.from_bytes(whole[12:16], "little")
    assert 8 + 8 + int.from_bytes(whole[end1 + 4:end1 + 8], "little") + end1 - 8 == len(whole)

    # (cut at, results read back, what the log says)
    cuts = [(0, 0, "does not start with DSCACHE1"), (5, 0, "does not start with DSCACHE1"),
            (8, 0, None), (8 + 3, 0, "ends with a record cut short at offset 8"),
            (8 + 8, 0, "a record cut short at offset 8"),
            (8 + 8 + 20, 0, "a record cut short at offset 8"),
            (end1 - 1, 0, "a record cut short at offset 8"),
            (end1, 1, None), (end1 + 4, 1, f"ends with a record cut short at offset {end1}"),
            (len(whole) - 1, 1, f"a record cut short at offset {end1}")]
    for n, (cut, kept, warning) in enumerate(cuts):
        path.write_bytes(whole[:cut])
        d = s.start(CACHE, name=f"cut{n}")
        log = d.log_text()
        if cut >= 8:
            assert f"{kept} results read back from {path}" in log, (cut, d.log_tail())
        if warning is not None:
            assert warning in log and str(path) in log, (cut, warning, d.log_tail())
        else:
            assert "cache: " + str(path) not in log.replace(" results read back from", ""), \
                (cut, d.log_tail())
        c = d.client()
        sub = run(c, [blob(f"{tag}-{n}-1", one)])
        assert sub.final[f"{tag}-{n}-1"].result == one
        assert sub.final[f"{tag}-{n}-1"].cached == (kept == 1), (cut, d.log_tail())
        d.stop()
        assert path.read_bytes()[:8] == b"DSCACHE1", cut      # rewritten, usable again


@pytest.mark.deadline(120)
def test_cache_file_garbage_and_a_4gib_record_length(request, start_daemon, tmp_path):
    s = journal_cache_setup(request, start_daemon, tmp_path, paused=True)
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    run(c, [blob(f"{tag}-1", b"first")])
    s.d.stop()
    s.start(CACHE, name="filled")
    path = tmp_path / "journal" / "result-cache"
    valid = path.read_bytes()

    # A record whose length says 4 GiB (and one just over the most a record
    # can be): refused by its length, what came before kept.
    for n, length in enumerate((0xFFFFFFFF, 0xFFFFFFF0, 41 + 255 + RESULT_SIZE_MAX + 1)):
        c = restart_with_held_items(
            s, tag, f"len{n}",
            lambda p, length=length: p.write_bytes(valid + b"\x00\x00\x00\x00"
                                                   + length.to_bytes(4, "little") + b"x" * 64))
        log = s.d.log_text()
        assert (f"{path}: a record length out of range at offset {len(valid)}; the 1 results "
                "before it are kept") in log, s.d.log_tail()
        sub = run(c, [blob(f"{tag}-len{n}", b"first")])
        assert sub.final[f"{tag}-len{n}"].cached

    # A length in range with nothing after it: cut short, no 4 MiB read.
    c = restart_with_held_items(
        s, tag, "short",
        lambda p: p.write_bytes(valid + b"\x00" * 4 + (41 + 255 + RESULT_SIZE_MAX).to_bytes(
            4, "little") + b"y" * 10))
    assert f"{path}: a record cut short at offset {len(valid)}" in s.d.log_text()

    # Garbage after the magic, and garbage from the first byte.
    rng = __import__("random").Random(7)
    for n, data in enumerate((b"DSCACHE1" + rng.randbytes(20000), rng.randbytes(20000),
                              b"DSCACHE1" + b"\x00" * 20000)):
        c = restart_with_held_items(s, tag, f"garbage{n}", lambda p, data=data: p.write_bytes(data))
        log = s.d.log_text()
        assert str(path) in log and ("out of range" in log or "cut short" in log or
                                     "checksum" in log or "does not start" in log), s.d.log_tail()
        sub = run(c, [blob(f"{tag}-g{n}", b"first")])
        assert sub.final[f"{tag}-g{n}"].state == SUCCEEDED
        assert sub.final[f"{tag}-g{n}"].result == b"first"
        assert path.read_bytes()[:8] == b"DSCACHE1"


@pytest.mark.deadline(90)
def test_cache_file_that_is_a_directory_a_fifo_or_a_socket(request, start_daemon, tmp_path):
    """DIR/result-cache not a regular file: the start goes on with a warning
    naming it, items run (and are cached in memory), accepted items are kept."""
    s = journal_cache_setup(request, start_daemon, tmp_path, paused=True)
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "journal" / "result-cache"

    def make_dir(p):
        if p.exists():
            p.unlink()
        p.mkdir()
        (p / "inside").write_text("x")

    def make_fifo(p):
        if p.is_dir():
            (p / "inside").unlink()
            p.rmdir()
        elif p.exists():
            p.unlink()
        os.mkfifo(p)

    def make_socket(p):
        p.unlink()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
            u.bind(str(p))      # the socket file stays once closed

    for name, damage in (("dir", make_dir), ("fifo", make_fifo), ("socket", make_socket)):
        c = restart_with_held_items(s, tag, name, damage)
        log = s.d.log_text()
        assert str(path) in log and "not a regular file" in log, s.d.log_tail()
        sub = run(c, [blob(f"{tag}-{name}-1", b"v"), blob(f"{tag}-{name}-2", b"v")])
        assert [sub.final[f"{tag}-{name}-{n}"].result for n in (1, 2)] == [b"v", b"v"]
        assert sub.final[f"{tag}-{name}-2"].cached
        s.d.stop()
        s.start(CACHE, name=f"{name}-again")       # still starts with it there
        assert "not a regular file" in s.d.log_text()
    assert path.exists() and not path.is_file()     # never removed


@pytest.mark.deadline(120)
def test_cache_file_on_a_full_disk(request, start_daemon, tmp_path):
    """The journal on a 4 MiB tmpfs filled but for ~100 KiB, and a cached
    kind whose 300 KiB result does not fit: appending it to DIR/result-cache
    fails with a warning and leaves no torn record behind (it would hold the
    disk's last bytes, and cut the reading short at the next start); once
    there is room the item ends, items go on, and the next start reads the
    whole cache file back."""
    journal = tmp_path / "journal"
    journal.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(journal)],
                             capture_output=True, text=True)
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(journal)],
                                                capture_output=True))
    assert mounted.returncode == 0, f"mount of a tmpfs (needs root): {mounted.stderr}"
    big = b"z" * (300 << 10)
    extra = blob_handlers(bigout={"exec": ["sh", "-c", f"head -c {len(big)} /dev/zero | "
                                           "tr '\\0' z"], "cache": CACHE})
    s = Overridden(request, start_daemon, tmp_path, "journal", CACHE, extra=extra,
                   overrides={"queue": {"journal_sync": "always"}})
    c = s.d.client()
    sub = c.subscribe(sync=True)
    tag = uuid.uuid4().hex[:8]
    run(c, [blob(f"{tag}-small", b"small")])
    path = journal / "result-cache"
    size_before = path.stat().st_size
    st = os.statvfs(journal)
    with open(journal / "filler", "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - (100 << 10)))
    assert c.submit([{"id": f"{tag}-big", "kind": "bigout", "payload": b"p"}]).accepted == 1
    s.d.wait_log(r"cache: appending to .*result-cache failed; .*No space left on device")
    assert path.stat().st_size == size_before       # no torn record holds the space

    # (The journal cannot write the item's FINAL either: it waits for room.)
    os.unlink(journal / "filler")
    sub.wait_final([f"{tag}-big"], timeout=30)
    assert sub.final[f"{tag}-big"].state == SUCCEEDED and sub.final[f"{tag}-big"].result == big
    ids = [f"{tag}-after{n}" for n in range(3)]
    after = run(c, [blob(i, i.encode()) for i in ids])
    assert [after.final[i].result for i in ids] == [i.encode() for i in ids]
    s.d.stop()
    s.start(CACHE, name="second")
    assert "cut short" not in s.d.log_text() and f"1 results read back from {path}" in \
        s.d.log_text(), s.d.log_tail()
    again = run(s.d.client(), [blob(f"{tag}-small2", b"small")])
    assert again.final[f"{tag}-small2"].cached


# ---- merged items when their run goes wrong -------------------------------------------

def gate_handlers(flag, cache=CACHE):
    """gate: an exec kind that runs until FLAG exists, then prints "open"."""
    return {"gate": {"exec": ["sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.02; done; "
                              "echo open"],
                     "cache": dict(cache) if isinstance(cache, dict) else cache}}


def gate_item(item_id, **kw):
    return {"id": item_id, "kind": "gate", "payload": b"g", **kw}


def start_merged(s, sub, tag, n=3, **kw):
    """A gate run started, N identical items merged into it: the ids, leader first."""
    c = s.d.client()
    ids = [f"{tag}-{i}" for i in range(n + 1)]
    assert c.submit([gate_item(ids[0], **kw)]).accepted == 1
    sub.wait_state(ids[0], STARTED, timeout=20)
    before = s.counter("merges", "gate")
    assert c.submit([gate_item(i, **kw) for i in ids[1:]]).accepted == n
    wait_for(lambda: s.counter("merges", "gate") == before + n, 20, f"{n} merged items")
    return ids


def one_run_for_all(sub, ids):
    """The merged items IDS all end SUCCEEDED with the gate's one run: the
    first ran it, the others have it cached."""
    sub.wait_final(ids, timeout=40)
    assert [sub.final[i].state for i in ids] == [SUCCEEDED] * 4, \
        [(sub.final[i].state, sub.final[i].error) for i in ids]
    assert {sub.final[i].result for i in ids} == {b"open\n"}
    assert [sub.final[i].cached for i in ids] == [False, True, True, True]


def merged_then_leader_killed(request, start_daemon, tmp_path, mode, max_attempts):
    """Four merged items, the leader's worker SIGKILLed: (gate flag, client,
    subscription, ids)."""
    flag = tmp_path / "open"
    s = Setup(request, start_daemon, tmp_path, mode, CACHE, extra=gate_handlers(flag))
    c = s.d.client()
    sub = c.subscribe(sync=True)
    ids = start_merged(s, sub, uuid.uuid4().hex[:8], max_attempts=max_attempts)
    pid = [u for u in sub.of(ids[0]) if u.state == STARTED][0].worker_pid
    os.kill(pid, signal.SIGKILL)
    return flag, c, sub, ids


@pytest.mark.deadline(90)
def test_leader_worker_killed_merged_items_wait_for_its_retry(request, start_daemon,
                                                              tmp_path, mode):
    flag, c, sub, ids = merged_then_leader_killed(request, start_daemon, tmp_path, mode, 3)
    sub.wait_state(ids[0], RETRYING, timeout=20)
    flag.write_text("")
    one_run_for_all(sub, ids)
    assert all(not runs_of(sub, [i]) for i in ids[1:])


@pytest.mark.deadline(90)
def test_leader_worker_killed_on_its_last_attempt_fails_the_merged_items(request,
                                                                        start_daemon,
                                                                        tmp_path):
    flag, c, sub, ids = merged_then_leader_killed(request, start_daemon, tmp_path, "journal", 1)
    sub.wait_final(ids, timeout=30)
    assert [sub.final[i].state for i in ids] == [FAILED] * 4
    assert "signal 9" in sub.final[ids[0]].error
    for i in ids[1:]:
        assert "identical run it waited for" in sub.final[i].error
        assert "signal 9" in sub.final[i].error
    # Nothing was cached: the same item runs again (and now gets through).
    flag.write_text("")
    tag = uuid.uuid4().hex[:8]
    again = run(c, [gate_item(f"{tag}-again")])
    assert again.final[f"{tag}-again"].state == SUCCEEDED
    assert not again.final[f"{tag}-again"].cached and ran(again, f"{tag}-again")


@pytest.mark.deadline(120)
@pytest.mark.parametrize("change", ["off", "smaller", "kind removed", "handler changed"])
def test_reload_while_items_are_merged(request, start_daemon, tmp_path, mode, change):
    flag = tmp_path / "open"
    s = Setup(request, start_daemon, tmp_path, mode, CACHE, extra=gate_handlers(flag))
    c = s.d.client()
    sub = c.subscribe(sync=True)
    tag = uuid.uuid4().hex[:8]
    ids = start_merged(s, sub, tag)
    if change == "off":
        extra = gate_handlers(flag, "off")
    elif change == "smaller":
        extra = gate_handlers(flag, {"size": "50", "ttl": "1h"})
    elif change == "kind removed":
        extra = {}
    else:
        extra = gate_handlers(flag)
        extra["gate"]["env"] = {"CHANGED": "1"}
    s.reload(CACHE, extra=extra)
    assert "reload failed" not in s.d.log_text()
    s.extra = extra
    flag.write_text("")
    one_run_for_all(sub, ids)
    # Afterwards: nothing of the old config is served.
    reply, later = c.run_items([gate_item(f"{tag}-later")], timeout=30)
    if change == "kind removed":
        assert reply.rejected == 1 and "unknown kind" in reply.rejections[0].reason, reply
    else:
        f = later.final[f"{tag}-later"]
        assert f.state == SUCCEEDED and f.result == b"open\n"
        assert not f.cached and ran(later, f"{tag}-later")
    assert s.d.grpc_pid() is not None


@pytest.mark.deadline(90)
@pytest.mark.parametrize("store", ["memory", "journal"])
def test_graceful_stop_past_its_timeout_with_merged_items(request, start_daemon, tmp_path,
                                                          store):
    """SIGQUIT while a run that will not end in shutdown_timeout has items
    merged into it: the daemon exits in time; every item gets a final
    (memory) or stays in the journal and, at the next start, runs once for
    all of them (journal)."""
    mode = store
    flag = tmp_path / "open"
    s = Overridden(request, start_daemon, tmp_path, mode, CACHE, extra=gate_handlers(flag),
                   overrides={"shutdown_timeout": "1s"})
    c = s.d.client()
    sub = c.subscribe(sync=True)
    tag = uuid.uuid4().hex[:8]
    ids = start_merged(s, sub, tag)
    s.d.send_signal(signal.SIGQUIT)
    s.d.wait_exit(timeout=20)
    if mode == "memory":
        sub.wait_end(timeout=10)
        finals = {i: sub.final.get(i) for i in ids}
        assert all(f is not None and f.state == FAILED for f in finals.values()), finals
        return
    states = {i: [u.state for u in sub.of(i)] for i in ids}
    assert all(RETRYING in v for v in states.values()), states
    flag.write_text("")
    s.start(CACHE, name="second")
    c = s.d.client()
    wait_for(lambda: item_states(c, ids) == {i: SUCCEEDED for i in ids}, 30,
             "the journal's items to run")
    got = c.get_items(ids, with_results=True).items
    assert {i.result for i in got} == {b"open\n"}
    assert s.counter("misses", "gate") == 1, s.metrics()


# ---- cluster: Redis dies under the instance ------------------------------------------

def submit_outcome(c, items, timeout=15):
    """'accepted N' / 'rejected N' or the status code the call ended with."""
    try:
        reply = c.submit(items, timeout=timeout)
        return f"accepted {reply.accepted}" if reply.accepted else f"rejected {reply.rejected}"
    except grpc.RpcError as e:
        return e.code()


@pytest.mark.deadline(120)
@pytest.mark.parametrize("how", ["killed", "stopped then killed", "frozen"])
def test_redis_dies_while_cached_items_come(request, start_daemon, tmp_path, how):
    """Items of a cached kind keep coming while Redis is killed (or first
    frozen with GETs of the cache in flight, then killed; or frozen past
    the instance's ping timeout, then thawed): every submit ends, accepted
    or UNAVAILABLE, never a hang; the grpc process does not crash; once
    Redis is back the instance serves cached kinds again."""
    s = Setup(request, start_daemon, tmp_path, "cluster", CACHE, extra=blob_handlers())
    grpc_pid = s.d.grpc_pid()
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    warm = run(c, [blob(f"{tag}-warm", b"\xff\x00 warm")])
    assert warm.final[f"{tag}-warm"].state == SUCCEEDED

    outcomes, stop = [], threading.Event()

    def submitter():
        n = 0
        while not stop.is_set():
            items = [blob(f"{tag}-{n}-{k}", b"\xff\x00 warm" if k == 0 else f"{n}-{k}".encode())
                     for k in range(4)]
            outcomes.append(submit_outcome(s.d.client(), items))
            n += 1
    t = threading.Thread(target=submitter, daemon=True)
    t.start()
    wait_for(lambda: len(outcomes) >= 3, 20, "a few submits before Redis goes")
    if how != "killed":
        os.kill(s.redis.proc.pid, signal.SIGSTOP)
        time.sleep(0.5)         # submits (and their GETs) pile up on a frozen Redis
    if how != "frozen":
        s.redis.kill()
    count = len(outcomes)
    wait_for(lambda: len(outcomes) >= count + 3, 60, "submits to end while Redis is gone")
    if how == "frozen":
        os.kill(s.redis.proc.pid, signal.SIGCONT)
    stop.set()
    t.join(timeout=30)
    assert not t.is_alive(), "a submit hung"
    allowed = {grpc.StatusCode.UNAVAILABLE}
    assert all(isinstance(o, str) or o in allowed for o in outcomes), outcomes
    assert s.d.grpc_pid() == grpc_pid, f"the grpc process was replaced: {s.d.log_tail()}"
    assert pid_alive(grpc_pid)

    if how != "frozen":
        s.redis.start()
    wait_serving(s.d, timeout=30)
    c = s.d.client()
    sub = run(c, [blob(f"{tag}-back1", b"\xff\x00 warm"), blob(f"{tag}-back2", b"new \xfe")])
    assert sub.final[f"{tag}-back1"].result == b"\xff\x00 warm"
    assert sub.final[f"{tag}-back2"].result == b"new \xfe"
    assert s.d.grpc_pid() == grpc_pid


@pytest.mark.deadline(90)
def test_cluster_results_that_are_not_utf8_are_shared_byte_for_byte(request, start_daemon,
                                                                     tmp_path):
    s = Setup(request, start_daemon, tmp_path, "cluster", CACHE, extra=blob_handlers())
    a = s.d
    b = s.start(CACHE, name="b")
    tag = uuid.uuid4().hex[:8]
    payloads = [bytes(range(256)) * 3, b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc",
                b"\x00" * 9, b"", b"\xed\xa0\x80 surrogate"]
    first = run(a.client(), [blob(f"{tag}-a{n}", p) for n, p in enumerate(payloads)])
    assert [first.final[f"{tag}-a{n}"].result for n in range(len(payloads))] == payloads
    keys = s.redis.command("KEYS", f"{{{s.name}}}:cache:*")
    assert len(keys) == len(payloads), keys
    second = run(b.client(), [blob(f"{tag}-b{n}", p) for n, p in enumerate(payloads)])
    for n, p in enumerate(payloads):
        f = second.final[f"{tag}-b{n}"]
        assert f.state == SUCCEEDED and f.cached and f.result == p, (n, f)
    assert not runs_of(second, [f"{tag}-b{n}" for n in range(len(payloads))])


# ---- params in odd forms as cache keys ----------------------------------------------

def submit_raw(c, raws):
    call = c.channel.stream_unary(
        "/com.agrounds.dosomething.v1.DoSomethingService/doSomething",
        request_serializer=lambda b: b,
        response_deserializer=__import__("conftest").pb.SubmitReply.FromString)
    return call(iter(raws), timeout=10)


@pytest.mark.deadline(90)
def test_params_in_odd_forms_as_cache_keys(request, start_daemon, tmp_path):
    """show prints its params A and AB: what makes a key, and what does not."""
    show = {"exec": ["sh", "-c", 'printf "%s|%s|%s" "${DS_PARAM_A-unset}" '
                     '"${DS_PARAM_AB-unset}" "$(cat)"'], "cache": CACHE}
    s = Setup(request, start_daemon, tmp_path, "memory", CACHE, extra={"show": show})
    c = s.d.client()
    sub = c.subscribe(sync=True)
    tag = uuid.uuid4().hex[:8]

    def one(name, params, payload=b"p"):
        item_id = f"{tag}-{name}"
        reply = c.submit([{"id": item_id, "kind": "show", "payload": payload,
                           "params": params}])
        assert reply.accepted == 1, reply
        sub.wait_final([item_id], timeout=30)
        f = sub.final[item_id]
        assert f.state == SUCCEEDED, (name, f.error)
        return f.result, f.cached

    # No params and an empty map are the same item.
    assert one("none", {}) == (b"unset|unset|p", False)
    assert one("none2", {}) == (b"unset|unset|p", True)
    # An empty value is a param (another key), an empty payload too.
    assert one("empty", {"a": ""}) == (b"|unset|p", False)
    assert one("empty2", {"a": ""}) == (b"|unset|p", True)
    assert one("nopayload", {}, b"") == (b"unset|unset|", False)
    # Keys and values do not run into each other: {a: bc} is not {ab: c}.
    assert one("split1", {"a": "bc"}) == (b"bc|unset|p", False)
    assert one("split2", {"ab": "c"}) == (b"unset|c|p", False)
    assert one("split3", {"a": "b", "ab": ""}) == (b"b||p", False)
    # The largest value a param may have, and one byte changed at its end.
    huge = "v" * 4096
    assert one("huge1", {"a": huge}) == (huge.encode() + b"|unset|p", False)
    assert one("huge2", {"a": huge}) == (huge.encode() + b"|unset|p", True)
    assert one("huge3", {"a": huge[:-1] + "w"})[1] is False
    reply = c.submit([{"id": f"{tag}-toobig", "kind": "show", "params": {"a": huge + "v"}}])
    assert reply.rejected == 1
    # As many params as an item may have (queue.max_params), in another
    # order: the same key.
    many = {f"k{n:03}": str(n) for n in range(64)}
    assert one("many1", many)[1] is False
    assert one("many2", dict(reversed(list(many.items()))))[1] is True
    # Unicode keys and values (each byte sequence its own key).
    assert one("uni1", {"a": "\u00e9"})[1] is False
    assert one("uni2", {"a": "e\u0301"})[1] is False      # looks the same, is not
    assert one("uni3", {"a": "\u00e9"})[1] is True
    assert s.d.grpc_pid() is not None


def test_duplicate_and_empty_param_keys(request, start_daemon, tmp_path):
    """Params only a hand-made WorkItem can have: the same key twice (the
    first is the one a built-in reads: a different order is another key),
    and an empty key."""
    s = Setup(request, start_daemon, tmp_path, "memory", CACHE)
    c = s.d.client()
    sub = c.subscribe(sync=True)
    tag = uuid.uuid4().hex[:8]

    def submit(name, params):
        reply = submit_raw(c, [raw_work_item(f"{tag}-{name}", "sleep", b"x", params)])
        return reply

    assert submit("d1", [("ms", "20"), ("ms", "30")]).accepted == 1
    sub.wait_final([f"{tag}-d1"], timeout=20)
    assert submit("d2", [("ms", "20"), ("ms", "30")]).accepted == 1
    assert submit("d3", [("ms", "30"), ("ms", "20")]).accepted == 1
    sub.wait_final([f"{tag}-d2", f"{tag}-d3"], timeout=20)
    assert [sub.final[f"{tag}-{n}"].state for n in ("d1", "d2", "d3")] == [SUCCEEDED] * 3
    assert not sub.final[f"{tag}-d1"].cached and sub.final[f"{tag}-d2"].cached
    assert not sub.final[f"{tag}-d3"].cached and ran(sub, f"{tag}-d3")

    reply = submit("e1", [("", "v"), ("ms", "20")])
    if reply.accepted == 1:
        sub.wait_final([f"{tag}-e1"], timeout=20)
        assert submit("e2", [("", "v"), ("ms", "20")]).accepted == 1
        sub.wait_final([f"{tag}-e2"], timeout=20)
        assert sub.final[f"{tag}-e2"].state == sub.final[f"{tag}-e1"].state
        if sub.final[f"{tag}-e1"].state == SUCCEEDED:
            assert sub.final[f"{tag}-e2"].cached
    else:
        assert reply.rejected == 1
    assert s.d.grpc_pid() is not None
    assert http_get(s.status, "/metrics")[0] == 200


@pytest.mark.deadline(90)
def test_a_cached_result_over_a_lowered_max_result_size_is_not_served(request, start_daemon,
                                                                       tmp_path, mode):
    """handlers.max_result_size lowered by a reload (or a restart on the
    journal's file, or another cluster instance's Redis entry): a result
    kept before under the larger bound is not served (a run of the item
    would fail it); results within the new bound still are."""
    big, small = b"B" * 10000, b"s" * 100
    s = Overridden(request, start_daemon, tmp_path, mode, CACHE, extra=blob_handlers(),
                   overrides={"handlers": {"max_result_size": "64KiB"}})
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    run(c, [blob(f"{tag}-big1", big), blob(f"{tag}-small1", small)])
    s.overrides = {"handlers": {"max_result_size": "1KiB"}}
    if mode == "memory":
        s.reload(CACHE)
        assert "reload failed" not in s.d.log_text()
    elif mode == "journal":
        s.d.stop()
        s.start(CACHE, name="second")
    else:
        # Another instance of the cluster, alone (the first, with the old
        # bound, would take items from the shared queue): Redis has it.
        s.d.stop()
        s.start(CACHE, name="second")
    c = s.d.client()
    sub = run(c, [blob(f"{tag}-big2", big), blob(f"{tag}-small2", small)])
    f = sub.final[f"{tag}-big2"]
    assert f.state == FAILED and not f.cached, (f.state, f.cached, len(f.result))
    assert "max_result_size" in f.error, f.error
    assert sub.final[f"{tag}-small2"].cached and sub.final[f"{tag}-small2"].result == small


@pytest.mark.deadline(90)
def test_reloads_adding_and_removing_many_cached_kinds_keep_what_is_held(request,
                                                                         start_daemon,
                                                                         tmp_path):
    """The table of cached kinds grows (it moves in memory) while results
    are held, kinds go and come back: what is held stays served, /status
    and /metrics stay whole."""
    import json
    s = Setup(request, start_daemon, tmp_path, "memory", CACHE, extra=blob_handlers())
    c = s.d.client()
    tag = uuid.uuid4().hex[:8]
    run(c, [blob(f"{tag}-{n}", f"held {n}".encode()) for n in range(5)])
    for step in range(4):
        more = {f"k{step}x{n}": {"builtin": "echo", "cache": dict(CACHE)} for n in range(30)}
        s.reload(CACHE, extra=blob_handlers(**more))
        assert "reload failed" not in s.d.log_text()
        kind = f"k{step}x29"
        sub = run(c, [{"id": f"{tag}-{kind}-{n}", "kind": kind, "payload": b"m"}
                      for n in range(2)])
        assert [sub.final[f"{tag}-{kind}-{n}"].result for n in range(2)] == [b"m", b"m"]
        held = run(c, [blob(f"{tag}-again{step}-{n}", f"held {n}".encode()) for n in range(5)])
        assert all(held.final[f"{tag}-again{step}-{n}"].cached for n in range(5))
    s.reload(CACHE, extra=blob_handlers())          # the 120 kinds gone
    s.reload(CACHE, extra=blob_handlers(k0x0={"builtin": "echo", "cache": dict(CACHE)}))
    back = run(c, [{"id": f"{tag}-back", "kind": "k0x0", "payload": b"m"}])
    assert not back.final[f"{tag}-back"].cached      # dropped when it went
    status = http_get(s.status, "/status")
    assert status[0] == 200
    cache = json.loads(status[1])["cache"]
    assert cache["blob"]["entries"] == 5 and cache["k0x0"]["size"] > 0
    assert cache["k1x0"]["size"] == 0
    assert s.counter("entries", "blob") == 5
