"""
Cluster mode: the connection to Redis breaks (CLIENT KILL, Redis and its
data stay) while the items of a doSomething call are being written
(docs/scaling.md, "What it guarantees"): the call ends UNAVAILABLE, its
details say how many items of it were accepted and how many are unknown;
resent with the same ids once the instance serves again, the ones Redis
took count as duplicates, and every item ends exactly once.
"""
import re
import threading
import time

import grpc
import pytest

from conftest import FINAL_STATES, QUEUED, SUCCEEDED, state_name, wait_for, work_item
from test_cluster import (cluster_name, redis, start_instance, stream_updates,  # noqa: F401
                          wait_serving, wait_work_empty)

COUNT = 3000
KILL_AFTER = 500        # QUEUED updates seen before the connection is broken

# src/grpc/submit.c, reply_when_written()
DETAILS = re.compile(r"^(?P<why>.+); (?P<accepted>\d+) items of this call were accepted"
                     r"(?:, and whether the (?P<unknown>\d+) after them were is unknown "
                     r"\(resend them: an item runs at least once\))?$")
WHY = re.compile(r"^cluster: (the connection to redis was lost|redis 127\.0\.0\.1:\d+ is "
                 r"unreachable \((command|work|update) connection lost: [^()]+\); nothing is "
                 r"accepted until it is back)$")


@pytest.mark.deadline(90)
def test_a_call_cut_off_from_redis_says_what_was_accepted_and_a_resend_runs_each_once(
        redis, start_daemon):
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    items = [{"id": f"{name}-{i}", "kind": "echo", "payload": f"p{i}".encode()}
             for i in range(COUNT)]
    ids = [it["id"] for it in items]
    sub = a.client().subscribe(sync=True, name="sub-a")
    killed = threading.Event()

    def queued():
        return sum(1 for u in sub.snapshot()
                   if u.state == QUEUED and u.item_id.startswith(name))

    def kill_when_queued():
        try:
            wait_for(lambda: queued() >= KILL_AFTER or killed.is_set(), 20,
                     f"{KILL_AFTER} QUEUED", interval=0.005)
        finally:
            if not killed.is_set():
                redis.command("CLIENT", "KILL", "TYPE", "normal")
                killed.set()

    def stream():
        # A steady stream, so that writes are in flight when the connection
        # breaks; it stops once the call has ended. On a slow machine it
        # waits for the kill before its last items: the call must not end
        # before the break.
        for n, it in enumerate(items):
            if n % 20 == 0:
                time.sleep(0.002)
            if n == COUNT - 100:
                killed.wait(20)
            yield work_item(it)

    killer = threading.Thread(target=kill_when_queued, daemon=True)
    killer.start()
    c = a.client()
    try:
        reply = c.submit(stream(), timeout=30)
        raise AssertionError(f"the call ended OK, not UNAVAILABLE (the kill came "
                             f"{'before' if killed.is_set() else 'after'} its end): {reply}")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
        details = e.details()
    finally:
        killed.set()
        killer.join(timeout=25)
    m = DETAILS.match(details)
    assert m, f"details say neither accepted nor unknown: {details!r}"
    accepted = int(m["accepted"])
    unknown = int(m["unknown"] or 0)
    print(f"\ndetails: {details!r}")
    # An item in flight when it broke, or one that came after (the same
    # call: UNAVAILABLE, naming the connection that saw it first).
    assert WHY.match(m["why"]), details
    assert 0 < accepted < COUNT and accepted + unknown <= COUNT, details

    wait_serving(a, timeout=20)
    reply = a.client().submit(items, timeout=30)
    print(f"resent: {reply.accepted} accepted, {reply.duplicates} duplicates")
    assert reply.rejected == 0, reply.rejections[:5]
    assert reply.accepted + reply.duplicates == COUNT, reply
    assert reply.duplicates >= accepted, \
        f"{accepted} were accepted (details: {details!r}) but resent only {reply.duplicates} " \
        f"are duplicates"
    if unknown == 0:
        # No write was in flight: Redis has exactly what the details say.
        assert reply.duplicates == accepted, (details, reply)
    else:
        assert reply.duplicates <= accepted + unknown, (details, reply)

    wait_work_empty(redis, name, timeout=30)
    finals = {}
    for seq, item_id, state in stream_updates(redis, name):
        if state in FINAL_STATES:
            finals.setdefault(item_id, []).append(state)
    missing = [i for i in ids if i not in finals]
    twice = {i: [state_name(s) for s in f] for i, f in finals.items()
             if i.startswith(name) and len(f) != 1}
    not_ok = {i: state_name(f[0]) for i, f in finals.items()
              if i.startswith(name) and f[0] != SUCCEEDED}
    assert not missing, f"{len(missing)} without a final, e.g. {missing[:5]}"
    assert not twice, f"{len(twice)} with more than one final, e.g. {list(twice.items())[:5]}"
    assert not not_ok, list(not_ok.items())[:5]
