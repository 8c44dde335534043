"""
Priorities and delays in cluster mode (docs/scaling.md, "Priorities and
delays"): two instances on one Redis (the fixtures of test_cluster.py).

- priority: bulk items queued, then urgent ones on the other instance: the
  urgent ones start before every bulk item still queued then, but for what
  the instances already held (workers.prefetch per worker); items below 0
  start after the bulk ones; the extreme priorities run; the lanes are
  gone from Redis once empty;
- delay: delays 0/200/400 ms start in that order and none before its due
  time (timestamps of the updates, not timing); a delayed item waits in
  {NAME}:delayed;
- a delayed item accepted on A runs on B when A is killed (SIGKILL) while
  it waits; so does a retry waiting its backoff (queue.retry_backoff) when
  its holder dies, not before its due time;
- cancel on B of a delayed item and of a prioritized item waiting in its
  lane (both leave Redis), and a retry of the latter runs it;
- a pull script that Redis fails is tried again.
"""
import signal
import time
import uuid

import pytest

from conftest import (QUEUED, RETRYING, STARTED, SUCCEEDED, built_test_modules, deep_merge, pb,
                      state_name, wait_for)
from test_cluster import (cluster_name, kill_everything, redis,  # noqa: F401
                          start_instance, wait_work_empty)
from test_handlers import handlers
from test_cluster_items import cancel, retry

CANCELLED = pb.CANCELLED
ONE_SLOT = {"workers": {"prefetch": 1}}
NO_HASH = "(the key no hash)"


def first(sub, item_id, state):
    for u in sub.of(item_id):
        if u.state == state:
            return u
    raise AssertionError(f"{item_id}: no {state_name(state)} in {sub.states_of(item_id)}")


def sleepers(tag, n, ms, priority=0):
    return [{"id": f"{tag}-{i}", "kind": "sleep", "params": {"ms": str(ms)},
             "priority": priority} for i in range(n)]


def lanes_empty(redis, name):
    return (redis.command("ZCARD", f"{{{name}}}:prio") == 0 and
            not redis.command("KEYS", f"{{{name}}}:prio:*"))


@pytest.mark.deadline(120)
def test_urgent_items_overtake_the_queued_bulk(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=1, overrides=ONE_SLOT)
    b = start_instance(start_daemon, redis, name, "b", workers=1, overrides=ONE_SLOT)
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    bulk = sleepers(f"bulk-{tag}", 30, 100)
    low = sleepers(f"low-{tag}", 3, 10, priority=-1)
    urgent = sleepers(f"urgent-{tag}", 4, 10, priority=10)
    assert a.client().submit(bulk).accepted == 30
    assert a.client().submit(low).accepted == 3
    sub.wait_state(bulk[0]["id"], STARTED, timeout=20)
    assert b.client().submit(urgent).accepted == 4
    ids = [it["id"] for it in bulk + low + urgent]
    sub.wait_final(ids, timeout=60)
    for i in ids:
        assert sub.final[i].state == SUCCEEDED, f"{i}: {sub.states_of(i)}"

    # What each instance already held when the urgent ones came (one item
    # per worker: prefetch 1), and what it pulled before it read their
    # QUEUED updates (at most one pull of one item): two instances.
    bound = 4
    urgent_queued = max(first(sub, u["id"], QUEUED).seq for u in urgent)
    urgent_started = max(first(sub, u["id"], STARTED).seq for u in urgent)
    late = [b_["id"] for b_ in bulk
            if urgent_queued < first(sub, b_["id"], STARTED).seq < urgent_started]
    assert len(late) <= bound, f"{len(late)} bulk items started before the urgent ones: {late}"
    # Below 0: after every bulk item, but for what was held.
    bulk_started = max(first(sub, b_["id"], STARTED).seq for b_ in bulk)
    early = [lo["id"] for lo in low if first(sub, lo["id"], STARTED).seq < bulk_started]
    assert len(early) <= bound, f"items of priority -1 started before the bulk: {early}"
    # Equal priorities: in acceptance order, give or take the two instances.
    starts = [first(sub, u["id"], STARTED).seq for u in urgent]
    assert starts.index(max(starts)) >= len(urgent) - 2, starts

    wait_for(lambda: lanes_empty(redis, name), 5, "the lanes gone from redis")
    wait_work_empty(redis, name)
    assert redis.command("XLEN", f"{{{name}}}:pwork") == 0


@pytest.mark.deadline(60)
def test_extreme_priorities_run(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    b = start_instance(start_daemon, redis, name, "b")
    sub = b.client().subscribe(sync=True, name="sub-b")
    tag = uuid.uuid4().hex[:8]
    # Ids without an item in a lane and among the delayed (written by
    # hand, or forgotten since): skipped and cleared.
    redis.command("RPUSH", f"{{{name}}}:prio:1", "ghost", "ghost2")
    redis.command("ZADD", f"{{{name}}}:prio", "1", "1")
    redis.command("ZADD", f"{{{name}}}:delayed", "1", "ghost3")
    items = [{"id": f"x-{tag}-{p}", "kind": "echo", "payload": b"p", "priority": p}
             for p in (2**31 - 1, -2**31, 1, -1, 0)]
    assert a.client().submit(items).accepted == len(items)
    final = sub.wait_final([it["id"] for it in items], timeout=20)
    assert all(u.state == SUCCEEDED for u in final.values()), final
    # getItems shows the priority.
    reply = b.client().get_items([items[1]["id"]])
    assert reply.items[0].priority == -2**31, reply
    wait_for(lambda: lanes_empty(redis, name), 5, "the lanes gone from redis")
    wait_for(lambda: redis.command("ZCARD", f"{{{name}}}:delayed") == 0, 5,
             "the stray delayed id gone")
    assert not redis.command("KEYS", f"{{{name}}}:item:ghost*")


@pytest.mark.deadline(60)
def test_delays_start_in_order_and_never_early(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    b = start_instance(start_daemon, redis, name, "b")
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    # Submitted in the reverse order, half of them on each instance, one
    # prioritized: the due time decides.
    items = [{"id": f"d-{tag}-{ms}", "kind": "echo", "payload": b"p", "delay_ms": ms,
              "priority": 5 if ms == 200 else 0} for ms in (400, 200, 0)]
    t0 = time.time_ns()    # before any of them was accepted: due >= t0 + delay
    assert a.client().submit(items[:2]).accepted == 2
    assert b.client().submit(items[2:]).accepted == 1
    final = sub.wait_final([it["id"] for it in items], timeout=20)
    assert all(u.state == SUCCEEDED for u in final.values()), final
    started = []
    for it in items:
        start = first(sub, it["id"], STARTED)
        # The clock of one machine: due = accepted + delay >= t0 + delay.
        assert start.time_unix_nano >= t0 + it["delay_ms"] * 10**6, \
            f"{it['id']} started {(start.time_unix_nano - t0) / 1e6} ms after it was sent"
        started.append((start.time_unix_nano, it["delay_ms"]))
    assert [ms for _, ms in sorted(started)] == [0, 200, 400], started
    assert redis.command("ZCARD", f"{{{name}}}:delayed") == 0
    wait_work_empty(redis, name)


@pytest.mark.deadline(90)
def test_a_delayed_item_accepted_on_a_runs_on_b_when_a_dies(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    b = start_instance(start_daemon, redis, name, "b")
    sub = b.client().subscribe(sync=True, name="sub-b")
    tag = uuid.uuid4().hex[:8]
    items = [{"id": f"late-{tag}", "kind": "echo", "payload": b"p", "delay_ms": 3000},
             {"id": f"late-{tag}-p", "kind": "echo", "payload": b"p", "delay_ms": 3000,
              "priority": 3}]
    t0 = time.time_ns()
    assert a.client().submit(items).accepted == 2
    assert redis.command("ZCARD", f"{{{name}}}:delayed") == 2
    kill_everything(a)
    final = sub.wait_final([it["id"] for it in items], timeout=30)
    b_workers = set(b.worker_pids())
    for it in items:
        u = final[it["id"]]
        assert u.state == SUCCEEDED and u.attempt == 1, sub.states_of(it["id"])
        start = first(sub, it["id"], STARTED)
        assert start.worker_pid in b_workers, f"ran on {start.worker_pid}, not on B {b_workers}"
        assert start.time_unix_nano >= t0 + 3000 * 10**6, "started early"
    assert redis.command("ZCARD", f"{{{name}}}:delayed") == 0
    wait_for(lambda: lanes_empty(redis, name), 5, "the lanes gone from redis")


@pytest.fixture(scope="module")
def retry_module():
    """The test module flagged DS_MODULE_RETRYABLE (retry_until=N)."""
    for paths in built_test_modules("retry"):
        yield paths["retry"]


def item_updates(redis, name, item_id):
    """Every Update of ITEM_ID in {NAME}:updates, decoded, in order."""
    out = []
    for _, fields in redis.command("XRANGE", f"{{{name}}}:updates", "-", "+"):
        out += [pb.Update.FromString(v) for k, v in zip(fields[::2], fields[1::2]) if k == b"U"]
    return [u for u in out if u.item_id == item_id]


def backoff_config(module, ms):
    """queue.retry_backoff of MS ms exactly, and kind r: the test module
    MODULE (retry_until=N: another attempt until attempt N)."""
    return {"queue": {"retry_backoff": {"min": f"{ms}ms", "max": f"{ms}ms"}},
            "handlers": handlers(r={"module": str(module)})}


def two_retrying(redis, start_daemon, module, backoff, item_id, edit=None):
    """Instances a and b of a new cluster with BACKOFF_CONFIG(MODULE,
    BACKOFF); ITEM_ID submitted to a until its first attempt ended
    RETRYING; EDIT(name) then (a change by hand in Redis); then the
    instance running it is killed. Returns (the other instance, when the
    holder was killed in ns, the cluster's name)."""
    name = cluster_name()
    config = backoff_config(module, backoff)
    a = start_instance(start_daemon, redis, name, "a", overrides=config)
    b = start_instance(start_daemon, redis, name, "b", overrides=config)
    ups = submit_until_retrying(a, redis, name, item_id)
    if edit is not None:
        edit(name)
    started = next(u for u in ups if u.state == STARTED)
    holder, other = (a, b) if started.worker_pid in a.worker_pids() else (b, a)
    assert started.worker_pid in holder.worker_pids(), (started, a.worker_pids(), b.worker_pids())
    kill_everything(holder)
    return other, time.time_ns(), name


def submit_until_retrying(d, redis, name, item_id):
    """Submit ITEM_ID (kind r, asking for attempt 2) to D; its updates
    once its first attempt ended RETRYING."""
    assert d.client().submit([{"id": item_id, "kind": "r", "params": {"retry_until": "2"},
                               "max_attempts": 5}]).accepted == 1
    return wait_for(lambda: (lambda u: u if RETRYING in [x.state for x in u] else None)(
        item_updates(redis, name, item_id)), 20, f"{item_id} RETRYING")


@pytest.mark.deadline(90)
def test_a_retry_waiting_its_backoff_runs_elsewhere_when_its_holder_dies(  # noqa: F811
        redis, start_daemon, retry_module):
    """An item asked for another attempt; the instance holding it waits the
    backoff (8 s) in its own queue and dies meanwhile. The other one takes
    the item over after the lease (1 s), and its next attempt still waits
    for the due time the holder was waiting for (the item's hash keeps it:
    rd), instead of running at once; and it is the attempt the holder
    waited for (attempt 2, not a further one: it never started)."""
    backoff = 8000
    item_id = f"backoff-{uuid.uuid4().hex[:8]}"
    other, killed, _ = two_retrying(redis, start_daemon, retry_module, backoff, item_id)
    sub = other.client().subscribe(replay=True, item_ids=[item_id], name="sub")
    final = sub.wait_final([item_id], timeout=40)[item_id]
    assert final.state == SUCCEEDED, sub.states_of(item_id)
    ups = sub.of(item_id)
    retrying = next(u for u in ups if u.state == RETRYING)      # the holder's, at attempt 1
    # (what the test is about: the holder died while the backoff ran)
    assert killed < retrying.time_unix_nano + (backoff - 1000) * 10**6, \
        "the holder died too late for the test: its backoff was nearly over"
    workers = set(other.worker_pids())
    later = [u for u in ups if u.state == STARTED and u.attempt > retrying.attempt]
    assert later and all(u.worker_pid in workers for u in later), sub.states_of(item_id)
    # the attempt it waited for never started: the takeover spent none
    assert [u.state for u in ups].count(RETRYING) == 1, sub.states_of(item_id)
    assert later[0].attempt == retrying.attempt + 1 == final.attempt, (later[0], final)
    # the due time is taken just before the RETRYING update's own time
    early = retrying.time_unix_nano + (backoff - 100) * 10**6
    assert later[0].time_unix_nano >= early, \
        f"started {(later[0].time_unix_nano - retrying.time_unix_nano) / 1e6:.0f} ms after " \
        f"RETRYING, within its {backoff} ms backoff"


@pytest.mark.deadline(90)
@pytest.mark.parametrize("rd", [None, "not-a-time", "9" * 20, NO_HASH])
def test_a_takeover_does_not_wait_for_a_due_time_that_is_not_one(  # noqa: F811
        redis, start_daemon, retry_module, rd):
    """The holder of an item waiting a long backoff dies after the item's
    rd was removed or overwritten by hand with something that is not a
    unix time in ms (1 to 15 digits), or its whole key replaced by one that
    is no hash. The instance taking it over runs it at once, as a takeover
    of a running item (one more attempt), instead of waiting for ever or
    failing the claim (the key that is no hash failed every claim script
    that took the item with WRONGTYPE: it never ran again, and the entries
    after it waited a lease); the key that is no hash is named in the
    log."""
    backoff = 60000
    item_id = f"bad-rd-{uuid.uuid4().hex[:8]}"

    def edit(name):
        key = f"{{{name}}}:item:{item_id}"
        if rd is None:
            redis.command("HDEL", key, "rd")
        elif rd == NO_HASH:
            redis.command("DEL", key)
            redis.command("SET", key, "not a hash")
        else:
            redis.command("HSET", key, "rd", rd)
    other, _, name = two_retrying(redis, start_daemon, retry_module, backoff, item_id, edit)
    sub = other.client().subscribe(replay=True, item_ids=[item_id], name="sub")
    final = sub.wait_final([item_id], timeout=40)[item_id]
    assert final.state == SUCCEEDED, sub.states_of(item_id)
    ups = sub.of(item_id)
    retrying = next(u for u in ups if u.state == RETRYING)
    later = [u for u in ups if u.state == STARTED and u.attempt > retrying.attempt]
    assert later and later[0].worker_pid in other.worker_pids(), sub.states_of(item_id)
    assert later[0].time_unix_nano < retrying.time_unix_nano + (backoff // 2) * 10**6, \
        "the takeover waited for a due time that was not one"
    assert final.attempt == 3, sub.states_of(item_id)      # the takeover counted one
    if rd == NO_HASH:
        other.wait_log(r"\{%s\}:item:%s is no item hash \(WRONGTYPE" % (name, item_id))
        assert "claiming" not in other.log_text(), other.log_tail()


@pytest.mark.deadline(60)
def test_the_backoff_due_time_is_kept_until_a_retry_call(  # noqa: F811
        redis, start_daemon, retry_module):
    """The RETRYING's script keeps the next attempt's due time in the item's
    hash (rd: what an instance taking it over waits for); a client's retry
    of the item (here after a cancel during the backoff) removes it, so
    that a takeover of the new run does not wait for the old time."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a",
                       overrides=backoff_config(retry_module, 30000))
    item_id = f"rd-{uuid.uuid4().hex[:8]}"
    key = f"{{{name}}}:item:{item_id}"
    ups = submit_until_retrying(a, redis, name, item_id)
    retrying = next(u for u in ups if u.state == RETRYING)
    rd = int(redis.command("HGET", key, "rd"))
    assert retrying.time_unix_nano // 10**6 + 29000 <= rd <= \
        retrying.time_unix_nano // 10**6 + 31000, (rd, retrying.time_unix_nano)
    assert cancel(a.client(), [item_id]).cancelled == 1
    assert redis.command("HGET", key, "rd") is not None     # a final keeps it...
    # paused, the kind's items are queued but not started (a new attempt
    # would ask for a retry again, with a due time of its own)
    a.write_config(deep_merge(a.config, {"handlers": {"r": {"paused": True}}}))
    a.send_signal(signal.SIGHUP)
    a.wait_log(r"config generation 2 applied")
    assert retry(a.client(), [item_id]).requeued == 1
    assert redis.command("HEXISTS", key, "rd") == 0         # ...a retry call does not


@pytest.mark.deadline(90)
def test_cancel_of_delayed_and_waiting_prioritized_items(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=1, overrides=ONE_SLOT)
    b = start_instance(start_daemon, redis, name, "b", workers=1, overrides=ONE_SLOT)
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    # Every worker busy, so that the prioritized item waits in its lane.
    blockers = sleepers(f"block-{tag}", 2, 20000)
    assert a.client().submit(blockers).accepted == 2
    for it in blockers:
        sub.wait_state(it["id"], STARTED, timeout=20)
    lane = {"id": f"lane-{tag}", "kind": "echo", "payload": b"p", "priority": 4}
    later = {"id": f"later-{tag}", "kind": "echo", "payload": b"p", "delay_ms": 600000,
             "priority": 9}
    assert a.client().submit([lane, later]).accepted == 2
    assert redis.command("LLEN", f"{{{name}}}:prio:4") == 1
    assert redis.command("ZCARD", f"{{{name}}}:delayed") == 1

    reply = cancel(b.client(), [lane["id"], later["id"]], reason="not now")
    assert (reply.cancelled, reply.already_final) == (2, 0), reply
    final = sub.wait_final([lane["id"], later["id"]], timeout=10)
    for u in final.values():
        assert u.state == CANCELLED and "not now" in u.error, u
    assert redis.command("ZCARD", f"{{{name}}}:delayed") == 0
    assert lanes_empty(redis, name)
    assert cancel(b.client(), [lane["id"]]).already_final == 1

    # Retried, it waits in its lane again, and runs once there is room.
    assert retry(b.client(), [lane["id"]]).requeued == 1
    assert redis.command("LLEN", f"{{{name}}}:prio:4") == 1
    assert cancel(a.client(), [it["id"] for it in blockers]).cancelled == 2
    sub.wait_state(lane["id"], SUCCEEDED, timeout=20)
    wait_for(lambda: lanes_empty(redis, name), 5, "the lanes gone from redis")
    wait_work_empty(redis, name)


@pytest.mark.deadline(60)
def test_a_prioritized_item_held_by_a_killed_instance_is_claimed(redis, start_daemon):  # noqa: F811
    """A taken prioritized item lives in {NAME}:pwork: its lease, its claim
    after the lease (RETRYING, attempt 2) and its final work there as in
    {NAME}:work."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=1, overrides=ONE_SLOT)
    b = start_instance(start_daemon, redis, name, "b", workers=1, overrides=ONE_SLOT)
    sub = b.client().subscribe(sync=True, name="sub-b")
    tag = uuid.uuid4().hex[:8]
    items = sleepers(f"held-{tag}", 2, 1500, priority=7)
    assert a.client().submit(items).accepted == 2
    a_workers, b_workers = set(a.worker_pids()), set(b.worker_pids())
    sub.wait(lambda s: any(u.state == STARTED and u.worker_pid in a_workers
                           for it in items for u in s.of(it["id"])), 10, "one started on a")
    assert redis.command("XLEN", f"{{{name}}}:pwork") >= 1
    kill_everything(a)
    final = sub.wait_final([it["id"] for it in items], timeout=30)
    for it in items:
        u = final[it["id"]]
        assert u.state == SUCCEEDED and u.worker_pid in b_workers, sub.states_of(it["id"])
        if any(x.worker_pid in a_workers for x in sub.of(it["id"]) if x.state == STARTED):
            assert u.attempt == 2 and "stopped renewing it" in \
                first(sub, it["id"], pb.RETRYING).error, sub.states_of(it["id"])
    wait_for(lambda: redis.command("XLEN", f"{{{name}}}:pwork") == 0, 5, "pwork empty")


@pytest.mark.deadline(60)
def test_a_pull_after_quick_items_takes_only_what_the_prefetch_holds(redis, start_daemon):  # noqa: F811
    """An instance whose latest pull took quick items (the echo probe of
    wait_serving) takes from a lane only as many full items as its
    prefetch holds: the second sleeper stays in its lane (for another
    instance) while the first runs, and is pulled once room appears."""
    name = cluster_name()
    b = start_instance(start_daemon, redis, name, "b", workers=1, overrides=ONE_SLOT)
    sub = b.client().subscribe(sync=True, name="sub-b")
    tag = uuid.uuid4().hex[:8]
    items = sleepers(f"weigh-{tag}", 2, 500, priority=3)
    assert b.client().submit(items).accepted == 2
    sub.wait(lambda s: any(u.state == STARTED for it in items for u in s.of(it["id"])),
             10, "one started")
    assert redis.command("LLEN", f"{{{name}}}:prio:3") == 1
    assert redis.command("XLEN", f"{{{name}}}:pwork") == 1
    final = sub.wait_final([it["id"] for it in items], timeout=20)
    assert all(final[it["id"]].state == SUCCEEDED for it in items), \
        [sub.states_of(it["id"]) for it in items]
    wait_for(lambda: lanes_empty(redis, name), 5, "lanes empty")


@pytest.mark.deadline(60)
def test_a_failed_pull_script_is_tried_again(redis, start_daemon):  # noqa: F811
    """A pull by script that Redis fails (here WRONGTYPE: a lane's key is
    no list; in production maxmemory or BUSY) is tried
    again a second later, on an idle instance too, which has nothing else
    that would pull: the prioritized item waiting behind it runs once the
    cause is gone; items of priority 0 are taken meanwhile."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=1, overrides=ONE_SLOT)
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    bad = f"{{{name}}}:prio:7"
    redis.command("SET", bad, "not a list")
    redis.command("ZADD", f"{{{name}}}:prio", "7", "7")
    item = {"id": f"p-{tag}", "kind": "echo", "payload": b"p", "priority": 5}
    assert a.client().submit([item]).accepted == 1
    a.wait_log(r"pulling items failed: .*WRONGTYPE", timeout=10)
    # Meanwhile items of priority 0 are taken as usual.
    plain = {"id": f"z-{tag}", "kind": "echo", "payload": b"z"}
    assert a.client().submit([plain]).accepted == 1
    assert sub.wait_final([plain["id"]], timeout=10)[plain["id"]].state == SUCCEEDED
    assert SUCCEEDED not in sub.states_of(item["id"])
    redis.command("DEL", bad)       # the lane is now empty: dropped
    final = sub.wait_final([item["id"]], timeout=10)
    assert final[item["id"]].state == SUCCEEDED, final
    wait_for(lambda: lanes_empty(redis, name), 5, "the lanes gone from redis")


@pytest.mark.deadline(60)
def test_a_lane_item_whose_hash_is_bad_stops_no_other(redis, start_daemon):  # noqa: F811
    """Items in a lane whose hash lacks a field of their work entry (qq) or
    whose key is no hash (written by hand) stopped the pull script: the
    first was lost (popped, then an XADD of nil), the second stopped every
    pull of the lanes for good (HMGET's WRONGTYPE before the pop: "pulling
    items failed" every second), and the items behind them never ran. Now
    each is named in the log with its key and what is wrong, taken out of
    its lane with its hash as it was, and the items behind it run."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    pre = f"{{{name}}}:item:"
    redis.command("HSET", pre + f"nq-{tag}", "k", "echo", "b", "", "s", "1", "m", "1",
                  "to", "0", "w", "x", "q", "1")
    redis.command("SET", pre + f"nh-{tag}", "not a hash")
    redis.command("RPUSH", f"{{{name}}}:prio:7", f"nq-{tag}", f"nh-{tag}")
    redis.command("ZADD", f"{{{name}}}:prio", "7", "7")
    items = [{"id": f"p-{tag}-{i}", "kind": "echo", "payload": b"p", "priority": 7}
             for i in range(3)]
    assert a.client().submit(items).accepted == 3
    final = sub.wait_final([it["id"] for it in items], timeout=10)
    assert all(u.state == SUCCEEDED for u in final.values()), final
    a.wait_log(r"\{%s\}:item:nq-%s cannot run: its hash has no qq; taken out of its lane "
               r"\(\{%s\}:prio:P\)" % (name, tag, name), timeout=5)
    a.wait_log(r"\{%s\}:item:nh-%s cannot run: WRONGTYPE" % (name, tag), timeout=5)
    assert "failed" not in a.log_text(), a.log_tail()
    assert redis.command("HGET", pre + f"nq-{tag}", "w") == b"x"   # left as it was
    wait_for(lambda: lanes_empty(redis, name), 5, "the lanes gone from redis")


def evalsha_calls(redis):
    for line in redis.command("INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


@pytest.mark.deadline(60)
def test_a_delayed_entry_whose_score_is_no_time(redis, start_daemon):  # noqa: F811
    """A member of {NAME}:delayed whose score is not a time in ms (inf,
    1e+20: written by hand) is never due: the due script is run again at
    its usual poll, not at once and again (it was: the score read as 0),
    the instance says which key holds it, and delayed items run."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    tag = uuid.uuid4().hex[:8]
    redis.command("ZADD", f"{{{name}}}:delayed", "inf", f"inf-{tag}")
    a.wait_log(r"\{%s\}:delayed holds a member whose score inf" % name, timeout=10)
    before = evalsha_calls(redis)
    time.sleep(2)
    assert evalsha_calls(redis) - before < 50, "the due script runs in a loop"
    redis.command("ZREM", f"{{{name}}}:delayed", f"inf-{tag}")
    redis.command("ZADD", f"{{{name}}}:delayed", "1e20", f"big-{tag}")
    a.wait_log(r"\{%s\}:delayed holds a member whose score 1e\+20" % name, timeout=10)
    before = evalsha_calls(redis)
    time.sleep(2)
    assert evalsha_calls(redis) - before < 50, "the due script runs in a loop"
    sub = a.client().subscribe(sync=True, name="sub-a")
    item = {"id": f"d-{tag}", "kind": "echo", "payload": b"d", "delay_ms": 300}
    assert a.client().submit([item]).accepted == 1
    assert sub.wait_final([item["id"]], timeout=10)[item["id"]].state == SUCCEEDED
    assert a.grpc_pid() is not None


@pytest.mark.deadline(60)
def test_a_delayed_item_whose_hash_is_bad_stops_no_other(redis, start_daemon):  # noqa: F811
    """Delayed items whose hash lacks a field of their work entry (to),
    whose p is no integer (or 0: its lane was never pulled, the item
    waited for ever), whose lane is no list, or whose key is no hash
    (written by hand) each
    stopped the due script when they came due (an XADD of nil, a ZADD of
    no number, HMGET's WRONGTYPE: "moving the delayed items that are due
    failed", the item already out of {NAME}:delayed: lost), and the items
    due after them waited a turn each. Now each is named in the log with its
    key and what is wrong, left out of {NAME}:delayed with its hash as it
    was, and the others run in time."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    # the same due time: the bad ones (their ids sort first) come first
    bad = [{"id": f"a-{tag}-{i}", "kind": "echo", "payload": b"b", "delay_ms": 1500}
           for i in range(5)]
    good = [{"id": f"b-{tag}-{i}", "kind": "echo", "payload": b"g", "delay_ms": 1500}
            for i in range(3)]
    t0 = time.time_ns()
    assert a.client().submit(bad + good).accepted == 8
    pre = f"{{{name}}}:item:"
    redis.command("HDEL", pre + bad[0]["id"], "to")
    redis.command("HSET", pre + bad[1]["id"], "p", "high")
    redis.command("DEL", pre + bad[2]["id"])
    redis.command("SET", pre + bad[2]["id"], "not a hash")
    redis.command("HSET", pre + bad[3]["id"], "p", "0")
    redis.command("HSET", pre + bad[4]["id"], "p", "9")
    redis.command("SET", f"{{{name}}}:prio:9", "not a list")
    final = sub.wait_final([it["id"] for it in good], timeout=10)
    assert all(u.state == SUCCEEDED for u in final.values()), final
    for it in good:
        late = (first(sub, it["id"], STARTED).time_unix_nano - t0) / 1e6 - 1500
        assert late < 900, f"{it['id']} started {late} ms after its due time"
    a.wait_log(r"\{%s\}:item:%s cannot run: its hash has no to; taken out of \{%s\}:delayed"
               % (name, bad[0]["id"], name), timeout=5)
    a.wait_log(r"\{%s\}:item:%s cannot run: its p \(priority\) high is no integer but 0"
               % (name, bad[1]["id"]), timeout=5)
    a.wait_log(r"\{%s\}:item:%s cannot run: its p \(priority\) 0 is no integer but 0"
               % (name, bad[3]["id"]), timeout=5)
    a.wait_log(r"\{%s\}:item:%s cannot run: WRONGTYPE" % (name, bad[2]["id"]), timeout=5)
    a.wait_log(r"\{%s\}:item:%s cannot run: its lane \{%s\}:prio:9 is no list \(WRONGTYPE"
               % (name, bad[4]["id"], name), timeout=5)
    assert "failed" not in a.log_text(), a.log_tail()
    assert redis.command("ZCARD", f"{{{name}}}:delayed") == 0
    assert redis.command("HGET", pre + bad[0]["id"], "w") is not None   # left as it was
    assert redis.command("KEYS", f"{{{name}}}:prio*") == [f"{{{name}}}:prio:9".encode()]
    # a cancel ends it
    assert cancel(a.client(), [bad[0]["id"]]).cancelled == 1
