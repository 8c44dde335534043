"""
Cluster mode's batched writes (cluster_write.c: the items accepted in one
turn of the loop go to Redis in one script, and a submit call stops being
read while too many writes are in flight).

- A Redis that refuses writes part way through a stream (maxmemory reached,
  noeviction): every item is told the truth. Each one is either accepted,
  and then it is in Redis (its hash exists, it reaches exactly one final
  once Redis has room again), or rejected with Redis's reason, and then
  nothing of it is in Redis and no subscriber ever sees it QUEUED. The
  reply counts every item once.
- A burst of 50,000 items in one stream: every one is accepted and reaches
  exactly one final (the batches and the backpressure lose nothing).
- The STARTED of a quick item is not written to Redis while no subscriber
  of any instance lets STARTED through ({NAME}:want_started, which an
  instance with such a subscriber keeps alive): its final carries its start
  time; a subscriber that wants STARTED on the other instance gets it for
  items run anywhere, and once it is gone (the key expires) STARTED is
  folded again. A full item's STARTED is always written.
"""
import re
import uuid

import pytest

from conftest import (PROGRESS, QUEUED, RETRYING, STARTED, SUCCEEDED, built_test_modules,
                      free_port, wait_for)
from test_cluster import (cluster_name, cluster_status, redis, start_instance,  # noqa: F401
                          stream_updates, wait_work_empty)
from test_handlers import handlers


def used_memory(redis):
    info = redis.command("INFO", "memory").decode()
    return int(dict(line.split(":", 1) for line in info.splitlines()
                    if ":" in line)["used_memory"])


@pytest.mark.deadline(150)
def test_items_refused_by_a_full_redis_are_each_told_the_truth(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=2)
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    n = 1500
    items = [{"id": f"oom-{tag}-{i}", "kind": "echo", "payload": b"x" * 1024}
             for i in range(n)]
    # Room for a few hundred of them: the stream runs into the limit mid-way.
    redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis.command("CONFIG", "SET", "maxmemory", used_memory(redis) + 400 * 1024)
    try:
        reply = a.client().submit(items, timeout=60)
    finally:
        redis.command("CONFIG", "SET", "maxmemory", 0)
    assert reply.accepted + reply.rejected + reply.duplicates == n, reply
    assert reply.duplicates == 0
    assert reply.accepted > 0 and reply.rejected > 0, \
        f"the limit was not reached mid-stream: {reply.accepted} accepted, {reply.rejected} rejected"
    assert len(reply.rejections) == min(reply.rejected, 1000)
    for r in reply.rejections:
        assert "redis refused the item" in r.reason and "OOM" in r.reason, r
    rejected = {r.id for r in reply.rejections}
    # The rejections listed are of items Redis has nothing of.
    for item_id in rejected:
        assert redis.command("EXISTS", f"{{{name}}}:item:{item_id}") == 0, item_id
    # Every item that is not listed as rejected and that Redis knows ran once;
    # exactly reply.accepted of them are known.
    known = [it["id"] for it in items
             if redis.command("EXISTS", f"{{{name}}}:item:{it['id']}") == 1]
    assert len(known) == reply.accepted, (len(known), reply.accepted)
    final = sub.wait_final(known, timeout=90)
    for item_id in known:
        assert final[item_id].state == SUCCEEDED, sub.states_of(item_id)
        assert [u.state for u in sub.of(item_id)].count(SUCCEEDED) == 1, sub.states_of(item_id)
    # No QUEUED (nor anything else) for an item that was not accepted.
    known_set = set(known)
    for it in items:
        if it["id"] not in known_set:
            assert sub.of(it["id"]) == [], (it["id"], sub.states_of(it["id"]))
    assert all(u.state != QUEUED or u.item_id in known_set or not u.item_id.startswith("oom-")
               for u in sub.snapshot())
    wait_work_empty(redis, name, timeout=30)


@pytest.mark.deadline(300)
def test_a_burst_of_50k_items_in_one_stream_reaches_one_final_each(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    status = f"127.0.0.1:{free_port()}"
    a = start_instance(start_daemon, redis, name, "a", workers=2,
                       overrides={"status": {"listen": status}})
    sub = a.client().subscribe(sync=True, name="sub-a", states=[SUCCEEDED])
    tag = uuid.uuid4().hex[:8]
    n = 50000
    items = [{"id": f"burst-{tag}-{i}", "kind": "echo", "payload": b"p"} for i in range(n)]
    reply = a.client().submit(items, timeout=240)
    assert (reply.accepted, reply.rejected, reply.duplicates) == (n, 0, 0), reply
    wait_for(lambda: len([1 for it in items if it["id"] in sub.final]) == n, 240,
             f"{n} finals")
    ids = {it["id"] for it in items}
    per_id = {}
    for u in sub.snapshot():
        if u.item_id in ids:
            per_id[u.item_id] = per_id.get(u.item_id, 0) + 1
    assert len(per_id) == n and set(per_id.values()) == {1}
    wait_work_empty(redis, name, timeout=30)
    # Batched: fewer scripts than items and updates; nothing left in flight.
    st = wait_for(lambda: (lambda c: c if c["writes_in_flight"] == 0 else None)(
        cluster_status(status)), 10, "no writes in flight")
    assert 0 < st["accept_scripts"] < n and 0 < st["update_scripts"] < 2 * n, st


def states_in_stream(redis, name, ids):
    """item id -> the states of its updates in {NAME}:updates, in order."""
    got = {i: [] for i in ids}
    for _, item_id, state in stream_updates(redis, name):
        if item_id in got:
            got[item_id].append(state)
    return got


@pytest.mark.deadline(120)
def test_started_of_quick_items_is_folded_while_no_subscriber_wants_it(  # noqa: F811
        redis, start_daemon):  # noqa: F811
    name = cluster_name()
    sa, sb = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    a = start_instance(start_daemon, redis, name, "a", workers=1,
                       overrides={"status": {"listen": sa}})
    b = start_instance(start_daemon, redis, name, "b", workers=1,
                       overrides={"status": {"listen": sb}})
    want = f"{{{name}}}:want_started"
    sub_a = a.client().subscribe(sync=True, name="sub-a", states=[SUCCEEDED])
    assert redis.command("EXISTS", want) == 0
    tag = uuid.uuid4().hex[:8]

    def run(label, client, sub):
        items = [{"id": f"fold-{tag}-{label}-{i}", "kind": "echo", "payload": b"e"}
                 for i in range(20)]
        items.append({"id": f"fold-{tag}-{label}-sleep", "kind": "sleep",
                      "params": {"ms": "20"}})
        reply = client.submit(items, timeout=30)
        assert (reply.accepted, reply.rejected) == (len(items), 0), reply
        ids = [it["id"] for it in items]
        sub.wait_final(ids, timeout=30)
        return ids, states_in_stream(redis, name, ids)

    # nobody wants STARTED: echo items go QUEUED, SUCCEEDED; sleep keeps it
    ids, got = run("folded", a.client(), sub_a)
    for item_id in ids[:-1]:
        assert got[item_id] == [QUEUED, SUCCEEDED], (item_id, got[item_id])
    assert got[ids[-1]] == [QUEUED, STARTED, SUCCEEDED], got[ids[-1]]
    folded = sum(cluster_status(s)["started_folded"] for s in (sa, sb))
    assert folded >= 20, folded
    # getItems (on the other instance) still has a start time for them
    reply = b.client().get_items(ids[:3])
    for g in reply.items:
        assert g.state == SUCCEEDED and g.started_unix_nano >= g.accepted_unix_nano > 0, g
        assert g.finished_unix_nano >= g.started_unix_nano, g

    # a subscriber on b that wants every state: STARTED is written again,
    # for the items whichever instance runs them
    sub_b = b.client().subscribe(sync=True, name="sub-b")
    wait_for(lambda: redis.command("EXISTS", want) == 1, 10, f"{want} set")
    ids, got = run("wanted", a.client(), sub_b)
    for item_id in ids:
        assert got[item_id] == [QUEUED, STARTED, SUCCEEDED], (item_id, got[item_id])
        assert [u.state for u in sub_b.of(item_id)] == [QUEUED, STARTED, SUCCEEDED]

    # it goes: the key expires (no instance renews it), folding again
    sub_b.cancel()
    wait_for(lambda: redis.command("EXISTS", want) == 0, 20, f"{want} expired")
    ids, got = run("again", a.client(), sub_a)
    for item_id in ids[:-1]:
        assert got[item_id] == [QUEUED, SUCCEEDED], (item_id, got[item_id])


@pytest.fixture(scope="module")
def quick_retry_module():
    """The test module flagged DS_MODULE_QUICK and DS_MODULE_RETRYABLE."""
    for paths in built_test_modules("quick_retry"):
        yield paths["quick_retry"]


@pytest.mark.deadline(120)
def test_a_folded_started_goes_with_the_items_next_update(redis, start_daemon,  # noqa: F811
                                                          quick_retry_module):
    """An instance none of whose subscribers wants STARTED does not send a
    quick item's STARTED on its own: it goes with the item's next update
    (its final, its RETRYING or its PROGRESS), and the update script writes
    it just before that update only while {NAME}:want_started says a
    subscriber elsewhere wants STARTED (set here by hand, as another
    instance would). Either way every other update is written, in order."""
    name = cluster_name()
    sa = f"127.0.0.1:{free_port()}"
    a = start_instance(start_daemon, redis, name, "a", workers=1,
                       overrides={"status": {"listen": sa},
                                  "handlers": handlers(q={"module": str(quick_retry_module)})})
    want = f"{{{name}}}:want_started"
    sub = a.client().subscribe(sync=True, name="sub-a", states=[SUCCEEDED])
    tag = uuid.uuid4().hex[:8]

    def run(label):
        items = {f"ok-{tag}-{label}": {"kind": "q", "payload": b"x"},
                 f"retry-{tag}-{label}": {"kind": "q", "params": {"retry_until": "2"},
                                          "max_attempts": 2},
                 f"steps-{tag}-{label}": {"kind": "q", "params": {"ms": "30", "steps": "3"}}}
        folded = cluster_status(sa)["started_folded"]
        reply = a.client().submit([{"id": i, **it} for i, it in items.items()], timeout=30)
        assert (reply.accepted, reply.rejected) == (3, 0), reply
        sub.wait_final(list(items), timeout=30)
        # every attempt's STARTED was folded here (no subscriber of a wants it)
        got = states_in_stream(redis, name, list(items))
        assert cluster_status(sa)["started_folded"] - folded == 4, got
        return [got[i] for i in items]

    redis.command("SET", want, "the test", "PX", "60000")
    ok, retry, steps = run("wanted")
    assert ok == [QUEUED, STARTED, SUCCEEDED], ok
    assert retry == [QUEUED, STARTED, RETRYING, STARTED, SUCCEEDED], retry
    # (a quick item's PROGRESS may be coalesced: at least one is written)
    assert steps[:3] == [QUEUED, STARTED, PROGRESS] and steps[-1] == SUCCEEDED, steps
    assert set(steps[3:-1]) <= {PROGRESS}, steps

    redis.command("DEL", want)
    ok, retry, steps = run("unwanted")
    assert ok == [QUEUED, SUCCEEDED], ok
    assert retry == [QUEUED, RETRYING, SUCCEEDED], retry
    assert steps[:2] == [QUEUED, PROGRESS] and steps[-1] == SUCCEEDED, steps
    assert set(steps[2:-1]) <= {PROGRESS}, steps


@pytest.mark.deadline(90)
def test_finals_refused_by_a_full_redis_log_once_a_script_and_run_again(  # noqa: F811
        redis, start_daemon):
    """A whole update script refused (maxmemory reached, noeviction: Redis
    refuses a script's first write) is one log line naming how many updates
    it carried (before, a line "publishing a final update failed" for each
    update: up to 512 a script); each final is then unknown, and the item
    runs again after the lease once Redis has room: one SUCCEEDED each in
    the end."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=4)
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    ids = [f"full-{tag}-{i}" for i in range(4)]
    assert a.client().submit([{"id": i, "kind": "sleep", "params": {"ms": "1500"}}
                              for i in ids]).accepted == 4
    for i in ids:
        sub.wait_state(i, STARTED, timeout=10)
    redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis.command("CONFIG", "SET", "maxmemory", 1)
    try:
        a.wait_log(r"cluster: the update script failed for \d+ updates: OOM", timeout=20)
        wait_for(lambda: a.log_text().count("finished, but whether redis has its final update "
                                            "is unknown") >= 4, 20, "every final unknown")
    finally:
        redis.command("CONFIG", "SET", "maxmemory", 0)
    log = a.log_text()
    assert "publishing a final update failed" not in log, a.log_tail()
    # One line a script, each naming its updates: the four finals are counted.
    carried = [int(n) for n in re.findall(r"the update script failed for (\d+) updates", log)]
    assert sum(carried) >= 4 and len(carried) <= 4, (carried, a.log_tail())
    finals = sub.wait_final(ids, timeout=40)
    for i in ids:
        assert finals[i].state == SUCCEEDED, sub.states_of(i)
        assert [u.state for u in sub.of(i)].count(SUCCEEDED) == 1, sub.states_of(i)
    wait_work_empty(redis, name, timeout=30)
