"""
The data path: doSomething -> queue -> workers -> updates -> getUpdates.
"""
import hashlib
import os
import re
import signal
import socket
import time
from collections import Counter

import grpc
import pytest
from google.protobuf import empty_pb2

from conftest import (FAILED, METHOD_SUBMIT, PROGRESS, QUEUED, RETRYING, SERVICE, STARTED,
                      SUCCEEDED, Subscription, is_probe, pb, state_name, wait_for)


# ---- helpers ---------------------------------------------------------------

def echo_items(n, prefix, **extra):
    return [{"id": f"{prefix}{i}", "kind": "echo", "payload": b"%s-payload-%d" % (prefix.encode(), i),
             **extra} for i in range(n)]


def payload_of(item_id, prefix):
    return b"%s-payload-%d" % (prefix.encode(), int(item_id[len(prefix):]))


def states_without_progress(sub, item_id):
    return [state_name(u.state) for u in sub.of(item_id) if u.state != PROGRESS]


def sha256_rounds(data, rounds):
    d = hashlib.sha256(data).digest()
    for _ in range(rounds - 1):
        d = hashlib.sha256(d).digest()
    return d


def own(updates):
    """Updates of the test's items (not the sync probes)."""
    return [u for u in updates if not is_probe(u)]


def assert_accepted_all(reply, n):
    assert reply.accepted == n and reply.rejected == 0, \
        f"expected {n} accepted, got accepted={reply.accepted} rejected={reply.rejected} " \
        f"{list(reply.rejections)[:3]}"


def assert_serving(daemon):
    c = daemon.client()
    reply, sub = c.run_items([{"id": f"alive-{time.monotonic_ns()}", "payload": b"ok"}])
    assert reply.accepted == 1
    c.close()


# ---- compatibility with the original clients --------------------------------

def test_empty_declaring_client(client):
    """doSomething's reply and getUpdates' request declared as google.protobuf.Empty."""
    sub = Subscription(client.updates_call_raw(empty_pb2.Empty().SerializeToString()),
                       name="empty-request")
    client.subscriptions.append(sub)
    client.sync(sub)
    submit = client.channel.stream_unary(METHOD_SUBMIT,
                                         request_serializer=pb.WorkItem.SerializeToString,
                                         response_deserializer=lambda b: b)
    items = [pb.WorkItem(id=f"c{i}", payload=b"seed-%d" % i) for i in range(100)]
    raw = submit(iter(items), timeout=30)
    empty_pb2.Empty.FromString(raw)                   # what such a client does with it
    assert pb.SubmitReply.FromString(raw).accepted == 100
    finals = sub.wait_final([it.id for it in items])
    bad = {i: (state_name(u.state), u.result) for i, u in finals.items()
           if u.state != SUCCEEDED or u.result != b"seed-%d" % int(i[1:])}
    assert not bad, f"default-kind (echo) items went wrong: {list(bad.items())[:5]}"
    sub.assert_seq_increasing()


# ---- volume ---------------------------------------------------------------------

@pytest.mark.deadline(120)
def test_10k_echo_items_succeed_exactly_once(client):
    n = 10000
    sub = client.subscribe(states=[SUCCEEDED, FAILED], sync=True)
    t0 = time.monotonic()
    reply = client.submit(echo_items(n, "e"), timeout=60)
    assert_accepted_all(reply, n)
    sub.wait_final([f"e{i}" for i in range(n)], timeout=60)
    elapsed = time.monotonic() - t0
    time.sleep(0.3)                                   # room for duplicates to show up
    updates = own(sub.snapshot())
    dupes = [i for i, c in Counter(u.item_id for u in updates).items() if c > 1]
    assert not dupes, f"{len(dupes)} items had more than one final update, e.g. {dupes[:5]}"
    assert len(updates) == n
    wrong_state = [u.item_id for u in updates if u.state not in (SUCCEEDED, FAILED)]
    assert not wrong_state, f"states filter let through other states: {wrong_state[:5]}"
    bad = [(u.item_id, state_name(u.state), u.error) for u in updates
           if u.state != SUCCEEDED or u.result != payload_of(u.item_id, "e")]
    assert not bad, f"{len(bad)} items failed or have a wrong result, e.g. {bad[:5]}"
    sub.assert_seq_increasing()
    print(f"10k echo items end to end: {elapsed:.2f} s ({n / elapsed:.0f} items/s)")


# ---- handlers ----------------------------------------------------------------------

def test_sha256_rounds(daemon, client):
    payload = b"the quick brown fox"
    items = [{"id": "h-default", "kind": "sha256", "payload": payload}]
    items += [{"id": f"h-{r}", "kind": "sha256", "payload": payload, "params": {"rounds": str(r)}}
              for r in (1, 2, 1000)]
    reply, sub = client.run_items(items)
    assert_accepted_all(reply, len(items))
    workers = set(daemon.worker_pids())
    now = time.time_ns()
    for item in items:
        rounds = int(item.get("params", {}).get("rounds", 1))
        final = sub.final[item["id"]]
        assert final.state == SUCCEEDED, f"{item['id']}: {state_name(final.state)} {final.error}"
        assert final.result == sha256_rounds(payload, rounds), \
            f"{item['id']}: sha256 x{rounds} is {final.result.hex()}, " \
            f"expected {sha256_rounds(payload, rounds).hex()}"
        assert states_without_progress(sub, item["id"]) == ["QUEUED", "STARTED", "SUCCEEDED"]
        started = [u for u in sub.of(item["id"]) if u.state == STARTED][0]
        assert started.worker_pid in workers, \
            f"STARTED names worker_pid {started.worker_pid}, workers are {workers}"
        assert final.attempt == 1 and final.kind == "sha256"
        assert abs(final.time_unix_nano - now) < 60e9, f"time_unix_nano {final.time_unix_nano}"
    sub.assert_seq_increasing()


def test_sleep_reports_progress(client):
    reply, sub = client.run_items([{"id": "p1", "kind": "sleep",
                                    "params": {"ms": "400", "steps": "4"}}])
    assert_accepted_all(reply, 1)
    ups = sub.of("p1")
    assert [state_name(u.state) for u in ups] == \
        ["QUEUED", "STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCEEDED"]
    progress = [u.progress for u in ups if u.state == PROGRESS]
    assert progress == pytest.approx([0.25, 0.5, 0.75], abs=0.01), f"progress {progress}"
    assert ups[-1].result == b""


# ---- subscribers -------------------------------------------------------------------------

def test_every_subscriber_sees_every_update(daemon, client):
    other = daemon.client()                           # its own channel
    s1 = client.subscribe(sync=True, name="s1")
    s2 = other.subscribe(sync=True, name="s2")
    items = echo_items(1000, "b")
    assert_accepted_all(client.submit(items), 1000)
    ids = [it["id"] for it in items]
    s1.wait_final(ids)
    s2.wait_final(ids)
    for s in (s1, s2):
        s.assert_seq_increasing()
        wrong = [i for i in ids if states_without_progress(s, i) != ["QUEUED", "STARTED", "SUCCEEDED"]]
        assert not wrong, f"{s.name}: {len(wrong)} items with a wrong lifecycle, " \
                          f"e.g. {wrong[:1]} went {s.states_of(wrong[0]) if wrong else ''}"
    seqs1 = [u.seq for u in own(s1.snapshot()) if u.item_id in set(ids)]
    seqs2 = [u.seq for u in own(s2.snapshot()) if u.item_id in set(ids)]
    assert seqs1 == seqs2, "the two subscribers saw different updates"


FILTER_ITEMS = (
    [{"id": f"a{i}", "kind": "echo", "batch": "A", "payload": b"a"} for i in range(10)]
    + [{"id": f"b{i}", "kind": "echo", "batch": "B", "payload": b"b"} for i in range(10)]
    + [{"id": f"h{i}", "kind": "sha256", "batch": "A", "payload": b"h"} for i in range(5)]
    + [{"id": f"s{i}", "kind": "sleep", "batch": "B", "params": {"ms": "1", "steps": "2"}}
       for i in range(5)]
)

FILTERS = {
    "item_ids": {"item_ids": ["a1", "h2", "s3"]},
    "kinds": {"kinds": ["sha256"]},
    "two_kinds": {"kinds": ["sha256", "sleep"]},
    "states": {"states": [STARTED, PROGRESS]},
    "batches": {"batches": ["B"]},
    "combined": {"kinds": ["echo", "sleep"], "batches": ["A"], "states": [SUCCEEDED]},
}


def matches(u, f):
    return ((not f.get("item_ids") or u.item_id in f["item_ids"])
            and (not f.get("kinds") or u.kind in f["kinds"])
            and (not f.get("states") or u.state in f["states"])
            and (not f.get("batches") or u.batch in f["batches"]))


@pytest.mark.parametrize("name", list(FILTERS))
def test_filter(client, name):
    """A filtered subscriber gets exactly the matching updates, in order. It is
    opened with replay from 0 before submitting, so it is race-free whether
    the server delivers an update from the log or live."""
    f = FILTERS[name]
    ref = client.subscribe(replay=True, after_seq=0, name="unfiltered")
    sub = client.subscribe(replay=True, after_seq=0, name=name, **f)
    assert_accepted_all(client.submit(FILTER_ITEMS), len(FILTER_ITEMS))
    ref.wait_final([it["id"] for it in FILTER_ITEMS])
    for it in FILTER_ITEMS:
        assert all(u.batch == it.get("batch", "") for u in ref.of(it["id"])), \
            f"updates of {it['id']} do not carry its batch"
    expected = [u.seq for u in ref.snapshot() if matches(u, f)]
    assert expected, "test bug: the filter matches nothing"
    try:
        sub.wait(lambda s: len(s.updates) >= len(expected), 10, f"{len(expected)} updates")
    except AssertionError:
        pass                                          # the comparison below says what is missing
    time.sleep(0.2)
    got = sub.snapshot()
    extra = [(u.item_id, state_name(u.state)) for u in got if not matches(u, f)]
    assert not extra, f"filter {f} let through {extra[:5]}"
    assert [u.seq for u in got] == expected, \
        f"filter {f}: got {len(got)} updates, expected {len(expected)}; " \
        f"missing seqs {sorted(set(expected) - {u.seq for u in got})[:10]}"


def test_replay_after_reconnect_has_no_gap_or_duplicate(client):
    ref = client.subscribe(replay=True, after_seq=0, name="ref")
    first = client.subscribe(replay=True, after_seq=0, name="first")
    batch1 = echo_items(500, "r")
    assert_accepted_all(client.submit(batch1), 500)
    first.wait(lambda s: len(s.updates) >= 300, 20, "300 updates")
    first.cancel()
    last = first.last_seq()
    batch2 = echo_items(500, "t")
    assert_accepted_all(client.submit(batch2), 500)   # while nobody but ref listens
    second = client.subscribe(replay=True, after_seq=last, name="second")
    batch3 = echo_items(200, "u")
    assert_accepted_all(client.submit(batch3), 200)   # live for second
    ids = [it["id"] for it in batch1 + batch2 + batch3]
    ref.wait_final(ids)
    second.wait_final([it["id"] for it in batch2 + batch3])
    ref_seqs = ref.seqs()
    first_seqs = first.seqs()
    assert first_seqs == ref_seqs[:len(first_seqs)], "first subscriber diverged from ref"
    expected = [s for s in ref_seqs if s > last]
    second.wait(lambda s: len(s.updates) >= len(expected), 5, f"{len(expected)} updates")
    got = second.seqs()
    assert got[:1] and got[0] > last, f"replay after_seq={last} started at {got[:1]}"
    dup = [s for s, c in Counter(got).items() if c > 1]
    assert not dup, f"duplicate seqs after reconnect: {dup[:10]}"
    assert got == expected, \
        f"replay after {last}: missing {sorted(set(expected) - set(got))[:10]}, " \
        f"unexpected {sorted(set(got) - set(expected))[:10]}"
    for s in (ref, first, second):
        s.assert_seq_increasing()


SLOW_CHANNEL_OPTIONS = [
    # Keep the client from soaking up the stream on the slow subscriber's
    # behalf: no BDP-driven window growth, a small per-stream lookahead.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 4096),
]


@pytest.mark.deadline(90)
def test_slow_subscriber_is_cut_off(start_daemon):
    d = start_daemon({"updates": {"subscriber_buffer": 100}})
    fast_client, slow_client = d.client(), d.client(options=SLOW_CHANNEL_OPTIONS)
    slow = slow_client.subscribe(sync=True, name="slow")          # live, registered
    slow.pause()                                                  # and no longer reading
    fast = fast_client.subscribe(sync=True, name="fast")
    # The reading subscriber must stay within 100 updates too: feed the
    # items in small steps it can follow, while the paused one falls behind.
    n = 5000
    items = echo_items(n, "f")
    for start in range(0, n, 25):
        step = items[start:start + 25]
        assert_accepted_all(fast_client.submit(step), len(step))
        fast.wait_final([it["id"] for it in step], timeout=30)
    ids = [it["id"] for it in items]
    fast.wait_final(ids, timeout=60)
    fast.assert_seq_increasing()
    assert all(fast.final[i].state == SUCCEEDED for i in ids), "the reading subscriber lost work"

    slow.resume()                                     # now read what was buffered
    err = slow.wait_end(timeout=20)
    assert slow.status_code() == grpc.StatusCode.RESOURCE_EXHAUSTED, \
        f"slow subscriber: {slow.describe_end()} ({len(slow.updates)} updates, " \
        f"the fast one has {len(fast.updates)})"
    assert len(slow.snapshot()) < len(fast.snapshot()), "slow subscriber was not cut short"
    last = slow.last_seq()                            # the last update it really got
    # It comes back where it was cut off and gets the rest.
    again = slow_client.subscribe(replay=True, after_seq=last, name="again")
    expected = [s for s in fast.seqs() if s > last]
    again.wait(lambda s: len(s.updates) >= len(expected), 20, f"{len(expected)} replayed updates")
    assert again.seqs()[:len(expected)] == expected, "replay after the cut-off has a gap"
    # The status names that seq, so a client can resume without a duplicate.
    named = [int(n) for n in re.findall(r"\d+", err.details())]
    assert last in named, \
        f"details {err.details()!r} do not name the last seq sent, {last} (resuming " \
        f"after {max(named, default=0)} would deliver {last} twice)"


# ---- queue capacity -------------------------------------------------------------------------

def max_outstanding(updates):
    """The most accepted-but-not-final items at any point of the update stream."""
    queued, out, most = set(), 0, 0
    for u in updates:
        if u.state == QUEUED and u.item_id not in queued:
            queued.add(u.item_id)
            out += 1
        elif u.state in (SUCCEEDED, FAILED):
            out -= 1
        most = max(most, out)
    return most


def sleep_items(n, prefix, ms=1):
    return [{"id": f"{prefix}{i}", "kind": "sleep", "params": {"ms": str(ms)}} for i in range(n)]


@pytest.mark.deadline(90)
def test_full_queue_blocks_without_loss(start_daemon):
    capacity = 50
    d = start_daemon({"queue": {"capacity": capacity, "on_full": "block"}})
    client = d.client()
    sub = client.subscribe(replay=True, after_seq=0)
    items = sleep_items(3000, "q")
    assert_accepted_all(client.submit(items, timeout=60), 3000)
    finals = sub.wait_final([it["id"] for it in items], timeout=60)
    bad = [i for i, u in finals.items() if u.state != SUCCEEDED]
    assert not bad, f"{len(bad)} items did not succeed, e.g. {bad[:5]}"
    time.sleep(0.2)
    counts = Counter(u.item_id for u in sub.snapshot() if u.state in (SUCCEEDED, FAILED))
    assert max(counts.values()) == 1, "an item finished twice"
    most = max_outstanding(sub.snapshot())
    slack = 2 * 2                                     # workers x prefetch, if counted apart
    assert most <= capacity + slack, f"{most} items outstanding with capacity {capacity}"


@pytest.mark.deadline(90)
def test_full_queue_rejects(start_daemon):
    d = start_daemon({"queue": {"capacity": 50, "on_full": "reject"}})
    client = d.client()
    sub = client.subscribe(replay=True, after_seq=0)
    items = sleep_items(3000, "j")
    reply = client.submit(items, timeout=60)
    assert reply.accepted + reply.rejected == 3000, f"{reply.accepted} + {reply.rejected} != 3000"
    assert reply.rejected > 0, "nothing rejected: the queue never filled (test too easy?)"
    assert reply.rejections, "rejected > 0 but no rejections listed"
    for r in reply.rejections:
        assert 0 <= r.index < 3000 and r.id == items[r.index]["id"], f"bad rejection {r}"
        assert "full" in r.reason.lower(), f"reason {r.reason!r} does not say the queue is full"
    assert len({r.index for r in reply.rejections}) == len(reply.rejections), "duplicate indexes"
    if len(reply.rejections) == reply.rejected:       # the list is complete
        rejected = {r.index for r in reply.rejections}
        accepted_ids = [it["id"] for n, it in enumerate(items) if n not in rejected]
        finals = sub.wait_final(accepted_ids, timeout=60)
        bad = [i for i, u in finals.items() if u.state != SUCCEEDED]
        assert not bad, f"{len(bad)} accepted items did not succeed"
        leaked = [items[n]["id"] for n in rejected if sub.of(items[n]["id"])]
        assert not leaked, f"rejected items got updates: {leaked[:5]}"
    else:
        sub.wait(lambda s: len(s.final) >= reply.accepted, 60, f"{reply.accepted} final updates")
        assert all(u.state == SUCCEEDED for u in sub.final.values())


# ---- failures ---------------------------------------------------------------------------

def test_worker_killed_mid_item_is_retried(daemon, client):
    sub = client.subscribe(sync=True)
    assert_accepted_all(client.submit([{"id": "k1", "kind": "sleep", "params": {"ms": "1500"}}]), 1)
    started = sub.wait_state("k1", STARTED, timeout=5)
    pid = started.worker_pid
    assert pid in daemon.worker_pids(), f"STARTED names {pid}, workers are {daemon.worker_pids()}"
    os.kill(pid, signal.SIGKILL)
    retry = sub.wait_state("k1", RETRYING, timeout=5)
    assert "killed by signal 9" in retry.error and str(pid) in retry.error, \
        f"RETRYING error is {retry.error!r}"
    assert retry.attempt == 1, f"RETRYING attempt {retry.attempt}"
    final = sub.wait_final(["k1"], timeout=10)["k1"]
    assert final.state == SUCCEEDED and final.attempt == 2, \
        f"ended {state_name(final.state)} attempt {final.attempt}: {final.error}; " \
        f"went {sub.states_of('k1')}"
    again = sub.wait_state("k1", STARTED, attempt=2, timeout=1)
    assert again.worker_pid != pid


HANDLERS_WITH_SLEEP_TIMEOUT = {
    "default": "echo",
    "echo": {"builtin": "echo"},
    "sha256": {"builtin": "sha256"},
    "sleep": {"builtin": "sleep", "timeout": "300ms"},
}


@pytest.mark.parametrize("where", ["item", "handler"])
def test_timeout_retries_then_fails(start_daemon, where):
    if where == "item":
        d = start_daemon()
        item = {"id": "slow", "kind": "sleep", "params": {"ms": "5000"},
                "timeout_ms": 300, "max_attempts": 2}
    else:
        d = start_daemon({"handlers": HANDLERS_WITH_SLEEP_TIMEOUT, "queue": {"max_attempts": 2}})
        item = {"id": "slow", "kind": "sleep", "params": {"ms": "5000"}}
    client = d.client()
    sub = client.subscribe(sync=True)
    assert_accepted_all(client.submit([item]), 1)
    retry = sub.wait_state("slow", RETRYING, timeout=5)
    assert "timed out" in retry.error and "300 ms" in retry.error, f"RETRYING error {retry.error!r}"
    final = sub.wait_final(["slow"], timeout=5)["slow"]
    assert final.state == FAILED, f"ended {state_name(final.state)}; went {sub.states_of('slow')}"
    assert final.attempt == 2 and "timed out" in final.error, \
        f"FAILED attempt {final.attempt} error {final.error!r}"
    states = sub.states_of("slow")
    assert states.count("RETRYING") == 1 and states.count("STARTED") == 2, states


def test_invalid_items_are_rejected_others_accepted(client):
    items = [
        {"id": "ok0", "kind": "echo", "payload": b"0"},
        {"id": "bad-kind", "kind": "no-such-kind"},
        {"id": "bad-rounds", "kind": "sha256", "params": {"rounds": "x"}},
        {"id": "ok3", "kind": "sha256", "params": {"rounds": "3"}},
        {"id": "bad-param", "kind": "sha256", "params": {"bogus": "1"}},
        {"id": "ok5", "kind": "", "payload": b"5"},
    ]
    sub = client.subscribe(sync=True)
    reply = client.submit(items)
    assert (reply.accepted, reply.rejected) == (3, 3), f"reply {reply}"
    got = {r.index: r for r in reply.rejections}
    assert sorted(got) == [1, 2, 4], f"rejected indexes {sorted(got)}"
    for index, r in got.items():
        assert r.id == items[index]["id"] and r.reason, f"rejection {r}"
    assert "no-such-kind" in got[1].reason or "kind" in got[1].reason, got[1].reason
    finals = sub.wait_final(["ok0", "ok3", "ok5"])
    assert all(u.state == SUCCEEDED for u in finals.values()), finals
    assert finals["ok5"].result == b"5", "empty kind did not run the default (echo)"
    time.sleep(0.2)
    for index in got:
        assert not sub.of(items[index]["id"]), f"rejected {items[index]['id']} got updates"


def test_empty_id_is_assigned(client):
    sub = client.subscribe(sync=True)
    payloads = [b"anon-%d" % i for i in range(3)]
    assert_accepted_all(client.submit([{"kind": "echo", "payload": p} for p in payloads]), 3)

    def three_done(s):
        done = [u for u in s.final.values() if u.result in payloads]
        return done if len(done) == 3 else None
    done = sub.wait(three_done, 10, "3 anonymous items")
    ids = [u.item_id for u in done]
    assert all(ids) and len(set(ids)) == 3, f"assigned ids {ids}"
    for i in ids:
        assert states_without_progress(sub, i) == ["QUEUED", "STARTED", "SUCCEEDED"], \
            f"{i} went {sub.states_of(i)}"


# ---- protocol abuse ---------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def poke(port, data, read_timeout=2.0):
    """Connect, send data, read until the server closes or read_timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(read_timeout)
            deadline = time.monotonic() + read_timeout
            while time.monotonic() < deadline and s.recv(65536):
                pass
        except (OSError, socket.timeout):
            pass


def test_garbage_does_not_kill_the_server(daemon):
    grpc_pid = daemon.grpc_pid()
    poke(daemon.port, os.urandom(8192))
    poke(daemon.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    poke(daemon.port, PREFACE + os.urandom(4096))
    poke(daemon.port, PREFACE + b"\xff\xff\xff\x04\x00\x00\x00\x00\x00")   # huge SETTINGS frame
    poke(daemon.port, PREFACE[:10])
    poke(daemon.port, b"")
    assert_serving(daemon)
    assert daemon.grpc_pid() == grpc_pid, "the grpc process died and was respawned"


def test_oversized_item_is_rejected(start_daemon):
    """Over grpc.max_message_size: a Rejection, the call goes on
    (test_message_size.py has the limits in every mode)."""
    d = start_daemon({"grpc": {"max_message_size": "64KiB"}})
    client = d.client()
    reply = client.submit([{"id": "big", "payload": b"x" * (100 * 1024)}], timeout=10)
    assert (reply.accepted, reply.rejected) == (0, 1), reply
    assert "over grpc.max_message_size (65536)" in reply.rejections[0].reason, reply
    reply, sub = client.run_items([{"id": "fits", "payload": b"y" * (32 * 1024)}])
    assert sub.final["fits"].result == b"y" * (32 * 1024)


@pytest.mark.parametrize("method", [f"/{SERVICE}/doNothing", "/no.such.Service/doSomething"])
def test_unknown_method_is_unimplemented(daemon, client, method):
    call = client.channel.unary_unary(method)
    with pytest.raises(grpc.RpcError) as e:
        call(b"", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED, f"{e.value.code()}: {e.value.details()}"
    assert_serving(daemon)


def test_grpc_process_death_ends_calls_with_unavailable(daemon, client):
    sub = client.subscribe(sync=True)
    seq_before = sub.last_seq()
    old = daemon.grpc_pid()
    os.kill(old, signal.SIGKILL)
    sub.wait_end(timeout=5)
    assert sub.status_code() == grpc.StatusCode.UNAVAILABLE, f"open call {sub.describe_end()}"
    wait_for(lambda: daemon.grpc_pid() not in (None, old), 5, "a new grpc process")
    daemon.wait_ready()
    after = daemon.client()
    reply, sub2 = after.run_items([{"id": "after", "payload": b"again"}], timeout=15)
    assert sub2.final["after"].state == SUCCEEDED
    assert sub2.final["after"].seq > seq_before, \
        f"seq went backwards across the respawn: {sub2.final['after'].seq} <= {seq_before}"


def test_replay_from_an_evicted_seq_is_refused(start_daemon):
    """A replay that would skip updates this process no longer has ends with
    OUT_OF_RANGE naming the oldest retained seq, rather than a silent gap."""
    d = start_daemon({"updates": {"history": 50}})
    client = d.client()
    reply, sub = client.run_items(echo_items(100, "e"))
    assert reply.accepted == 100
    first_seen = sub.seqs()[0]
    late = client.subscribe(replay=True, after_seq=first_seen)
    late.wait_end(timeout=10)
    assert late.status_code() == grpc.StatusCode.OUT_OF_RANGE
    assert "no longer retained" in late.error.details()
    # after_seq 0 means "whatever is retained": no error.
    everything = client.subscribe(replay=True, after_seq=0)
    everything.wait(lambda s: len(s.updates) >= 50, 10, "the 50 retained updates")
    assert everything.error is None


def test_update_log_is_bounded_in_bytes(start_daemon):
    """updates.history_bytes: large results do not pile up in the log."""
    d = start_daemon({"updates": {"history_bytes": "1MiB"}})
    client = d.client()
    payload = b"z" * 16384
    sub = client.subscribe(sync=True)
    # In steps a reader can follow: the same bound applies to its backlog.
    for start in range(0, 200, 10):
        ids = [f"big{n}" for n in range(start, start + 10)]
        assert client.submit([{"id": i, "payload": payload} for i in ids]).accepted == 10
        sub.wait_final(ids, timeout=30)
    assert all(sub.final[f"big{n}"].result == payload for n in range(200))
    replay = client.subscribe(replay=True, after_seq=0)
    replay.wait(lambda s: any(u.item_id == "big199" and u.state == SUCCEEDED for u in s.updates),
                10, "the newest result")
    kept = [u for u in replay.snapshot() if u.state == SUCCEEDED and u.item_id.startswith("big")]
    assert 0 < len(kept) <= 64, f"{len(kept)} results of 16 KiB kept in a 1 MiB log"


def test_a_call_that_fills_the_queue_exactly_gets_its_reply(start_daemon):
    """The half-close is read even while the queue is full: a stream whose last
    item took the last place is answered at once, not when room frees up."""
    d = start_daemon({"queue": {"capacity": 20}, "workers": {"count": 1, "prefetch": 1}})
    client = d.client()
    stuck = [{"id": f"s{n}", "kind": "sleep", "params": {"ms": "60000"}} for n in range(20)]
    assert client.submit(stuck, timeout=10).accepted == 20
    # Full now: one more item waits (flow control), and is taken when room comes.
    with pytest.raises(grpc.RpcError) as e:
        client.submit([{"id": "extra", "payload": b"x"}], timeout=1)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
