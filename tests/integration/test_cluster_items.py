"""
Items known cluster-wide (cluster mode): two instances on one Redis (the
fixtures of test_cluster.py) answer the same for every item, whichever
instance accepted or ran it.

- duplicates: an id accepted on A is a duplicate on B, while queued,
  running and final, and in one call; the item runs once;
- Redis keeps each known item in a hash {NAME}:item:ID and the listing
  order in {NAME}:items, written by the scripts that publish its updates.
"""
import uuid

import pytest

from conftest import QUEUED, SUCCEEDED, STARTED, state_name
from test_cluster import (cluster_name, redis, sleep_items, start_instance,  # noqa: F401
                          wait_work_empty)


def runs_of(sub, item_id):
    """The states one subscriber saw for an item: QUEUED once and one final
    mean it ran once."""
    return [state_name(u.state) for u in sub.of(item_id)]


@pytest.mark.deadline(60)
def test_duplicates_across_instances_run_once(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=1,
                       overrides={"workers": {"prefetch": 1}})
    b = start_instance(start_daemon, redis, name, "b", workers=1,
                       overrides={"workers": {"prefetch": 1}})
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    echo = {"id": f"dup-{tag}-echo", "kind": "echo", "payload": b"once"}
    slow = sleep_items(f"dup-{tag}", 1, ms=3000)[0]

    # Three times in one call: accepted once.
    reply = a.client().submit([echo, echo, echo])
    assert (reply.accepted, reply.duplicates, reply.rejected) == (1, 2, 0), reply
    sub.wait_final([echo["id"]], timeout=20)
    # Final and retained: a duplicate on the other instance, and on this one.
    for d in (b, a):
        reply = d.client().submit([echo])
        assert (reply.accepted, reply.duplicates) == (0, 1), f"{d.name}: {reply}"

    # While running (and queued before that): a duplicate on B.
    reply = a.client().submit([slow])
    assert (reply.accepted, reply.duplicates) == (1, 0), reply
    reply = b.client().submit([slow, echo])
    assert (reply.accepted, reply.duplicates) == (0, 2), reply
    sub.wait_state(slow["id"], STARTED, timeout=10)
    reply = b.client().submit([slow])
    assert (reply.accepted, reply.duplicates) == (0, 1), reply
    sub.wait_final([slow["id"]], timeout=20)

    # A new id with the duplicates of a call: accepted + rejected + duplicates = sent.
    fresh = {"id": f"dup-{tag}-fresh", "kind": "echo", "payload": b"x"}
    reply = b.client().submit([echo, fresh, slow, {"id": "x", "kind": "no-such-kind"}])
    assert (reply.accepted, reply.duplicates, reply.rejected) == (1, 2, 1), reply
    sub.wait_final([fresh["id"]], timeout=20)

    for item_id in (echo["id"], slow["id"], fresh["id"]):
        states = runs_of(sub, item_id)
        assert states.count("QUEUED") == 1 and states[-1] == "SUCCEEDED" and \
            states.count("SUCCEEDED") == 1 and "STARTED" in states, f"{item_id}: {states}"
    wait_work_empty(redis, name)

    # What Redis holds for it: its hash and its place in the listing.
    key = f"{{{name}}}:item:{echo['id']}"
    h = redis.command("HGETALL", key)
    fields = dict(zip(h[0::2], h[1::2]))
    assert fields[b"s"] == str(SUCCEEDED).encode() and fields[b"k"] == b"echo", fields
    assert b"w" not in fields, "a SUCCEEDED item keeps no WorkItem"
    assert redis.command("ZSCORE", f"{{{name}}}:items", echo["id"]) is not None
    assert redis.command("PTTL", key) > 0, "a final item's hash expires"
    assert QUEUED != SUCCEEDED


@pytest.mark.deadline(60)
def test_server_assigned_ids_are_never_duplicates(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    b = start_instance(start_daemon, redis, name, "b")
    for d in (a, b, a):
        reply = d.client().submit([{"kind": "echo", "payload": b"p"}] * 5)
        assert (reply.accepted, reply.duplicates) == (5, 0), f"{d.name}: {reply}"
    wait_work_empty(redis, name)
