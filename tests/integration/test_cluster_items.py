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

from conftest import QUEUED, STARTED, SUCCEEDED, state_name, wait_for
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


def item_keys(redis, name):
    return sorted(k.decode() for k in redis.command("KEYS", f"{{{name}}}:item:*"))


@pytest.mark.deadline(90)
def test_retention_by_count_bounds_the_redis_keys(redis, start_daemon):  # noqa: F811
    """items.retention.count 5: however many items end, Redis keeps the
    hashes of the 5 newest finals (and of live items), and a fixed set of
    other keys; a forgotten id can be submitted again."""
    name = cluster_name()
    keep = {"items": {"retention": {"count": 5}}}
    a = start_instance(start_daemon, redis, name, "a", overrides=keep)
    b = start_instance(start_daemon, redis, name, "b", overrides=keep)
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    live = {"id": f"ret-{tag}-live", "kind": "sleep", "params": {"ms": "20000"}}
    assert a.client().submit([live]).accepted == 1
    sub.wait_state(live["id"], STARTED, timeout=10)
    ids = []
    for round_ in range(4):
        for d in (a, b):
            items = [{"id": f"ret-{tag}-{d.name}-{round_}-{i}", "kind": "echo", "payload": b"p"}
                     for i in range(10)]
            assert d.client().submit(items).accepted == 10
            ids += [it["id"] for it in items]
    sub.wait_final(ids, timeout=30)
    keys = item_keys(redis, name)
    finals = redis.command("ZCARD", f"{{{name}}}:finals")
    assert finals == 5, f"{finals} finals retained, not 5"
    assert f"{{{name}}}:item:{live['id']}" in keys, "a live item was forgotten"
    assert len(keys) == 6, f"{len(keys)} item hashes: {keys}"
    assert redis.command("ZCARD", f"{{{name}}}:items") == 6
    others = {k.decode() for k in redis.command("KEYS", "*")} - set(keys)
    assert others <= {f"{{{name}}}:{k}" for k in ("work", "updates", "seq", "origin", "items",
                                                  "finals", "finals_bytes")}, others
    retained = set(k.split(":item:", 1)[1] for k in keys)
    by_end = sorted(ids, key=lambda i: sub.final[i].seq)
    assert retained - {live["id"]} == set(by_end[-5:]), "not the newest finals were kept"
    # Forgotten: no longer a duplicate. Retained: still one.
    reply = b.client().submit([{"id": by_end[0], "kind": "echo"},
                               {"id": by_end[-1], "kind": "echo"}])
    assert (reply.accepted, reply.duplicates) == (1, 1), reply


@pytest.mark.deadline(60)
def test_retention_by_age_forgets_finals_never_live_items(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    short = {"items": {"retention": {"age": "1s"}}}
    a = start_instance(start_daemon, redis, name, "a", overrides=short)
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    live = {"id": f"age-{tag}-live", "kind": "sleep", "params": {"ms": "6000"}}
    done = [{"id": f"age-{tag}-{i}", "kind": "echo", "payload": b"p"} for i in range(5)]
    assert a.client().submit([live] + done).accepted == 6
    sub.wait_final([it["id"] for it in done], timeout=20)
    # The trim runs with every final and every lease/2 (0.5 s here).
    wait_for(lambda: item_keys(redis, name) == [f"{{{name}}}:item:{live['id']}"], 10,
             "only the live item's hash left")
    assert redis.command("ZCARD", f"{{{name}}}:finals") == 0
    assert redis.command("GET", f"{{{name}}}:finals_bytes") in (b"0", None)
    sub.wait_final([live["id"]], timeout=20)
