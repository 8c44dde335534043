"""
Items known cluster-wide (cluster mode): two instances on one Redis (the
fixtures of test_cluster.py) answer the same for every item, whichever
instance accepted or ran it (docs/scaling.md, "Known items, cluster-wide").

- duplicates: an id accepted on A is a duplicate on B, while queued,
  running and final, and in one call; the item runs once; server-assigned
  ids never are;
- getItems on B for items accepted on A: by id (results, wait, the
  deadline, priority), by filter paged while items arrive, bad tokens;
  replies within what a stock client accepts;
- cancel on B of an item running on A, of one still queued in Redis, of
  a batch, of finals (already_final), and of an item whose holder stopped
  and died (the instance that claims it cancels it);
- retry on B of an item that FAILED on A (after the cause was fixed), the
  dead-letter listing, a CANCELLED item by batch;
- retention by count (the Redis keys stay at the count plus live items,
  /status says so) and by age; every call UNAVAILABLE while Redis is down;
  ids no item can have.
"""
import os
import signal
import threading
import time
import uuid

import grpc
import pytest

import conftest
from conftest import QUEUED, STARTED, SUCCEEDED, free_port, pb, state_name, wait_for
from test_cluster import (cluster_name, cluster_status, kill_everything, redis,  # noqa: F401
                          sleep_items, start_instance, wait_serving, wait_work_empty, work_len)

FAILED, CANCELLED = pb.FAILED, pb.CANCELLED


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

    # What Redis holds for it (layout 4): its hash, its latest update in
    # {NAME}:latest ("S Q T N TS " and the update), its place in the listing.
    key = f"{{{name}}}:item:{echo['id']}"
    h = redis.command("HGETALL", key)
    fields = dict(zip(h[0::2], h[1::2]))
    assert fields[b"k"] == b"echo" and b"u" not in fields, fields
    assert b"w" not in fields, "a SUCCEEDED item keeps no WorkItem"
    # the update with its result is kept out of the hash, so the hash stays
    # a listpack (a hash table costs Redis more than the rest of the final)
    assert redis.command("OBJECT", "ENCODING", key) == b"listpack"
    latest = redis.command("HGET", f"{{{name}}}:latest", echo["id"])
    head = latest.split(b" ", 5)
    assert head[0] == str(SUCCEEDED).encode() and int(head[1]) > 0 and int(head[2]) > 0 \
        and int(head[3]) > 0, head[:5]
    u = pb.Update.FromString(head[5])
    assert (u.item_id, u.state) == (echo["id"], SUCCEEDED), u
    assert redis.command("ZSCORE", f"{{{name}}}:items", echo["id"]) is not None
    # Bounded by the retention's trim, not by a TTL (test_retention_*).
    assert redis.command("PTTL", key) == -1


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
    status = f"127.0.0.1:{free_port()}"
    a = start_instance(start_daemon, redis, name, "a",
                       overrides={**keep, "status": {"listen": status}})
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
    finals = redis.command("LLEN", f"{{{name}}}:finals")
    assert finals == 5, f"{finals} finals retained, not 5"
    assert f"{{{name}}}:item:{live['id']}" in keys, "a live item was forgotten"
    assert len(keys) == 6, f"{len(keys)} item hashes: {keys}"
    assert redis.command("ZCARD", f"{{{name}}}:items") == 6
    others = {k.decode() for k in redis.command("KEYS", "*")} - set(keys)
    # each instance's lease (one key a live instance, expiring after it)
    leases = {k for k in others if k.startswith(f"{{{name}}}:lease:")}
    assert len(leases) <= 2 and all(redis.command("PTTL", k) > 0 for k in leases), leases
    others -= leases
    assert others <= {f"{{{name}}}:{k}" for k in ("work", "pwork", "updates", "seq", "origin",
                                                  "items", "finals", "finals_bytes",
                                                  "want_started", "layout",
                                                  "latest")}, others
    # the latest updates of exactly the retained items (the finals and the live one)
    assert sorted(f"{{{name}}}:item:{i.decode()}" for i in
                  redis.command("HKEYS", f"{{{name}}}:latest")) == keys
    retained = set(k.split(":item:", 1)[1] for k in keys)
    by_end = sorted(ids, key=lambda i: sub.final[i].seq)
    assert retained - {live["id"]} == set(by_end[-5:]), "not the newest finals were kept"
    # /status says so (polled every lease/2).
    wait_for(lambda: (lambda st: (st["finals_retained"], st["items_known"]) == (5, 6))(
        cluster_status(status)), 10, "/status cluster.finals_retained 5, items_known 6")
    assert cluster_status(status)["retained_bytes"] > 0
    # Forgotten: no longer a duplicate. Retained: still one.
    reply = b.client().submit([{"id": by_end[0], "kind": "echo"},
                               {"id": by_end[-1], "kind": "echo"}])
    assert (reply.accepted, reply.duplicates) == (1, 1), reply


@pytest.mark.deadline(60)
def test_retention_by_bytes_keeps_the_newest_finals_that_fit(redis, start_daemon):  # noqa: F811
    """items.retention.bytes 4KiB: finals that end many to an update script
    are forgotten in batches (as many old ones as the new ones push out),
    and the batch's entries that were not needed are put back (small
    finals after big ones: one big one makes room for several): what stays
    is exactly the newest finals that fit, their bytes what the counter
    says, and the list, the listing, the latest updates and the hashes
    agree."""
    name = cluster_name()
    bound = 4096
    a = start_instance(start_daemon, redis, name, "a",
                       overrides={"items": {"retention": {"bytes": bound}}})
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    ids = []
    for round_, size in enumerate((1000, 1000, 10, 10, 10)):
        items = [{"id": f"rb-{tag}-{round_}-{i:02d}", "kind": "echo", "payload": b"x" * size}
                 for i in range(40)]
        assert a.client().submit(items).accepted == 40
        ids += [it["id"] for it in items]
        sub.wait_final([it["id"] for it in items], timeout=30)

    def retained_bytes(item_id):
        # what the daemon counts for a final: its id twice, its update
        # without the seq, 200 (docs/scaling.md, "Retention")
        u = pb.Update()
        u.CopyFrom(sub.final[item_id])
        u.seq = 0
        return 2 * len(item_id.encode()) + u.ByteSize() + 200

    total = int(redis.command("GET", f"{{{name}}}:finals_bytes"))
    latest = redis.command("HGETALL", f"{{{name}}}:latest")
    kept = {latest[i].decode(): int(latest[i + 1].split(b" ")[3])
            for i in range(0, len(latest), 2)}
    assert kept == {i: retained_bytes(i) for i in kept}, "bytes counted per final"
    assert sum(kept.values()) == total, (total, kept)
    assert total <= bound, f"{total} bytes retained, bound {bound}"
    by_end = sorted(ids, key=lambda i: sub.final[i].seq)
    assert set(kept) == set(by_end[-len(kept):]), "not the newest finals were kept"
    # not one more forgotten than the bound needed
    newest_forgotten = by_end[-len(kept) - 1]
    assert total + retained_bytes(newest_forgotten) > bound, \
        f"{total} bytes kept of {bound}: {newest_forgotten} would have fit"
    finals = [e.decode().split(" ", 1)[1]
              for e in redis.command("LRANGE", f"{{{name}}}:finals", 0, -1)]
    assert finals == by_end[-len(kept):], "the finals list is not the newest, oldest first"
    assert item_keys(redis, name) == sorted(f"{{{name}}}:item:{i}" for i in kept)
    assert redis.command("ZCARD", f"{{{name}}}:items") == len(kept)
    # forgotten: accepted again; kept: a duplicate
    reply = a.client().submit([{"id": by_end[0], "kind": "echo"},
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
    assert redis.command("LLEN", f"{{{name}}}:finals") == 0
    assert redis.command("GET", f"{{{name}}}:finals_bytes") in (b"0", None)
    assert redis.command("HKEYS", f"{{{name}}}:latest") == [live["id"].encode()]
    sub.wait_final([live["id"]], timeout=20)


@pytest.mark.deadline(90)
def test_retention_by_age_keeps_up_with_many_finals(redis, start_daemon):  # noqa: F811
    """The age is applied by the periodic trim (every lease/2), which looks
    at 100 finals a call: it goes on at once while it forgets all it looked
    at. Before, 3000 finals past a 1 s age took 30 trims, 150 s with a
    lease of 10 s (the retention fell behind any cluster ending more than
    20 items a second per instance); now one trim period and its chain."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", lease="10s",
                       overrides={"items": {"retention": {"age": "1s"}}})
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    items = [{"id": f"agemany-{tag}-{i}", "kind": "echo", "payload": b"p"} for i in range(3000)]
    assert a.client().submit(items).accepted == 3000
    sub.wait_final([it["id"] for it in items], timeout=60)
    # the first trim more than 1 s after the last final: within 5 s (lease/2)
    wait_for(lambda: redis.command("LLEN", f"{{{name}}}:finals") == 0, 15,
             "every final forgotten")
    assert item_keys(redis, name) == []
    assert redis.command("ZCARD", f"{{{name}}}:items") == 0
    assert redis.command("HLEN", f"{{{name}}}:latest") == 0
    assert redis.command("GET", f"{{{name}}}:finals_bytes") in (b"0", None)


def get(client, ids=(), timeout=10, **kw):
    return client.get_items(ids, timeout=timeout, **kw)


def by_id(reply):
    return {i.id: i for i in reply.items}


@pytest.mark.deadline(60)
def test_get_items_on_b_for_items_accepted_on_a(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    b = start_instance(start_daemon, redis, name, "b")
    ca, cb = a.client(), b.client()
    tag = uuid.uuid4().hex[:8]
    ok, bad = f"g-{tag}-ok", f"g-{tag}-slow"
    assert ca.submit([{"id": ok, "kind": "echo", "payload": b"hello", "batch": "B",
                       "priority": 7, "timeout_ms": 5000},
                      {"id": bad, "kind": "sleep", "params": {"ms": "1500"},
                       "priority": -3}]).accepted == 2
    # wait on B ends when both are final, told by the update stream.
    reply = get(cb, [ok, bad, "nope"], wait=True, with_results=True, timeout=20)
    assert list(reply.not_found) == ["nope"]
    items = by_id(reply)
    g = items[ok]
    assert (g.state, g.kind, g.batch, g.attempt, g.result) == (SUCCEEDED, "echo", "B", 1, b"hello")
    assert g.accepted_unix_nano > 0 and g.started_unix_nano >= g.accepted_unix_nano
    assert g.finished_unix_nano >= g.started_unix_nano and g.last_seq > 0
    assert items[bad].state == SUCCEEDED and items[bad].max_attempts >= 1
    assert (g.priority, items[bad].priority) == (7, -3)
    # The same answer on A, without results unless asked.
    ra = by_id(get(ca, [ok, bad]))
    assert ra[ok].result == b"" and ra[ok].last_seq == g.last_seq
    assert ra[bad] == items[bad]
    # last_seq resumes getUpdates on either instance.
    sub = cb.subscribe(replay=True, after_seq=g.last_seq - 1, item_ids=[ok])
    sub.wait(lambda s: ok in s.final, 10, "the final replayed")
    assert sub.final[ok].seq == g.last_seq
    # Not final before the deadline: DEADLINE_EXCEEDED; a live item's state.
    long = f"g-{tag}-long"
    assert ca.submit([{"id": long, "kind": "sleep", "params": {"ms": "20000"}}]).accepted == 1
    with pytest.raises(grpc.RpcError) as e:
        get(cb, [long], wait=True, timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: get(cb, [long]).items[0].state == STARTED, 10, "long STARTED seen on b")


@pytest.mark.deadline(90)
def test_get_items_by_filter_pages_across_instances(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    b = start_instance(start_daemon, redis, name, "b")
    tag = uuid.uuid4().hex[:8]
    batch = f"F-{tag}"
    ids = [f"f-{tag}-{i:03d}" for i in range(120)]
    assert a.client().submit([{"id": i, "kind": "echo", "batch": batch}
                              for i in ids[:60]]).accepted == 60
    assert b.client().submit([{"id": i, "kind": "echo", "batch": batch}
                              for i in ids[60:]]).accepted == 60
    assert a.client().submit([{"id": f"other-{tag}", "kind": "echo",
                               "batch": "G"}]).accepted == 1
    stop = threading.Event()

    def more():
        n, cc = 0, a.client()
        while not stop.is_set() and n < 100:
            cc.submit([{"id": f"late-{tag}-{n}", "kind": "echo", "batch": batch}])
            n += 1

    t = threading.Thread(target=more)
    t.start()
    try:
        seen, token = [], ""
        cb = b.client()
        while True:
            reply = cb.stub.getItems(pb.ItemsRequest(batches=[batch], limit=25,
                                                     page_token=token), timeout=10)
            seen += [i.id for i in reply.items]
            token = reply.next_page_token
            if not token:
                break
    finally:
        stop.set()
        t.join(timeout=20)
    assert len(seen) == len(set(seen)), "an item listed twice"
    assert set(ids) <= set(seen), f"skipped: {sorted(set(ids) - set(seen))[:5]}"
    assert f"other-{tag}" not in seen
    assert [s for s in seen if s.startswith("f-")] == list(reversed(ids)), "not newest first"
    wait_work_empty(redis, name, timeout=20)
    # Every list must match; the default limit is 100.
    reply = a.client().stub.getItems(pb.ItemsRequest(batches=[batch], kinds=["echo"],
                                                     states=[SUCCEEDED]), timeout=10)
    assert len(reply.items) == 100 and reply.next_page_token
    assert all(i.state == SUCCEEDED and i.batch == batch for i in reply.items)
    reply = a.client().stub.getItems(pb.ItemsRequest(batches=[batch], kinds=["sleep"]),
                                     timeout=10)
    assert not reply.items and not reply.next_page_token
    # Tokens are the cluster's: garbage is INVALID_ARGUMENT on every instance.
    for d in (a, b):
        for token in ("garbage", "p12", "c", "c12x", "c" + "9" * 30):
            with pytest.raises(grpc.RpcError) as e:
                d.client().stub.getItems(pb.ItemsRequest(page_token=token), timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (token, e.value)


def cancel(client, ids=(), batches=(), reason="", timeout=10):
    return client.stub.cancel(pb.CancelRequest(item_ids=list(ids), batches=list(batches),
                                               reason=reason), timeout=timeout)


def retry(client, ids=(), batches=(), timeout=10):
    return client.stub.retry(pb.RetryRequest(item_ids=list(ids), batches=list(batches)),
                             timeout=timeout)


ONE_SLOT = {"workers": {"prefetch": 1}}


@pytest.mark.deadline(90)
def test_cancel_on_b_of_items_running_on_a_and_queued(redis, start_daemon):  # noqa: F811
    """A and B have one worker holding one item each: A runs `run`, B runs
    `hold`, and `queued` waits in Redis for room. A cancel on B reaches A's
    worker for `run` and takes `queued` out of the stream; `hold` runs on."""
    name = cluster_name()
    tag = uuid.uuid4().hex[:8]
    a = start_instance(start_daemon, redis, name, "a", workers=1, overrides=ONE_SLOT)
    sub = a.client().subscribe(sync=True, name="sub-a")
    run = {"id": f"c-{tag}-run", "kind": "sleep", "params": {"ms": "30000"}, "batch": "R"}
    assert a.client().submit([run]).accepted == 1
    assert sub.wait_state(run["id"], STARTED, timeout=10).worker_pid in a.worker_pids()
    b = start_instance(start_daemon, redis, name, "b", workers=1, overrides=ONE_SLOT)
    hold = {"id": f"c-{tag}-hold", "kind": "sleep", "params": {"ms": "3000"}, "batch": "H"}
    assert b.client().submit([hold]).accepted == 1
    assert sub.wait_state(hold["id"], STARTED, timeout=10).worker_pid in b.worker_pids()
    queued = {"id": f"c-{tag}-queued", "kind": "echo", "batch": "Q"}
    done = {"id": f"c-{tag}-done", "kind": "echo"}
    assert b.client().submit([queued]).accepted == 1
    assert work_len(redis, name) == 3, "the queued item is not waiting in the stream"

    reply = cancel(b.client(), [run["id"], queued["id"], "nope"], reason="stop it")
    assert (reply.cancelled, reply.already_final, list(reply.not_found)) == (2, 0, ["nope"])
    got = by_id(get(b.client(), [run["id"], queued["id"]], wait=True, timeout=15))
    for item_id in (run["id"], queued["id"]):
        assert (got[item_id].state, got[item_id].error) == (CANCELLED, "stop it"), got[item_id]
    sub.wait_state(run["id"], CANCELLED, timeout=10)
    assert QUEUED in [u.state for u in sub.of(queued["id"])]
    assert STARTED not in [u.state for u in sub.of(queued["id"])], "the queued item ran"
    # The holder's own CANCELLED, once; nothing else disturbed.
    assert [u.state for u in sub.of(run["id"])].count(CANCELLED) == 1
    sub.wait_final([hold["id"]], timeout=20)
    assert sub.final[hold["id"]].state == SUCCEEDED
    # Final ones count in already_final; a batch's live items are cancelled.
    assert a.client().submit([done]).accepted == 1
    sub.wait_final([done["id"]], timeout=10)
    reply = cancel(a.client(), [run["id"], done["id"]])
    assert (reply.cancelled, reply.already_final) == (0, 2), reply
    slow = [{"id": f"c-{tag}-b{i}", "kind": "sleep", "params": {"ms": "30000"}, "batch": "B2"}
            for i in range(3)]
    assert b.client().submit(slow).accepted == 3
    wait_for(lambda: sum(1 for i in slow if sub.of(i["id"])) == 3, 10, "the batch queued")
    reply = cancel(a.client(), batches=["B2"], reason="batch")
    assert reply.cancelled == 3, reply
    got = get(a.client(), [i["id"] for i in slow], wait=True, timeout=15)
    assert all(i.state == CANCELLED and i.error == "batch" for i in got.items), got
    wait_work_empty(redis, name, timeout=10)


@pytest.mark.deadline(90)
def test_retry_on_b_of_an_item_that_failed_on_a(redis, start_daemon, tmp_path):  # noqa: F811
    name = cluster_name()
    tag = uuid.uuid4().hex[:8]
    flag = tmp_path / "fixed"
    flaky = {"handlers": {"default": "echo", "echo": {"builtin": "echo"},
                          "sleep": {"builtin": "sleep"}, "flaky": {"exec": ["sh", "-c", f"test -e {flag} && cat || "
                                             f"{{ echo broken >&2; exit 3; }}"]}}}
    a = start_instance(start_daemon, redis, name, "a", overrides=flaky)
    b = start_instance(start_daemon, redis, name, "b", overrides=flaky)
    sub = b.client().subscribe(sync=True, name="sub-b")
    bad = {"id": f"r-{tag}-bad", "kind": "flaky", "payload": b"again", "max_attempts": 1,
           "batch": "D"}
    ok = {"id": f"r-{tag}-ok", "kind": "echo", "payload": b"x"}
    assert a.client().submit([bad, ok]).accepted == 2
    got = by_id(get(b.client(), [bad["id"], ok["id"]], wait=True, timeout=20))
    assert (got[bad["id"]].state, got[bad["id"]].error) == (FAILED, "sh exited with status 3: "
                                                            "broken"), got[bad["id"]]
    # The dead-letter list, on either instance.
    dead = [i.id for i in get(a.client(), states=[FAILED], batches=["D"]).items]
    assert dead == [bad["id"]]

    flag.write_text("")
    reply = retry(b.client(), [bad["id"], ok["id"], "nope"])
    assert (reply.requeued, reply.not_retryable, list(reply.not_found)) == (1, 1, ["nope"])
    got = get(a.client(), [bad["id"]], wait=True, with_results=True, timeout=20).items[0]
    assert (got.state, got.attempt, got.result) == (SUCCEEDED, 1, b"again"), got
    sub.wait(lambda s: s.of(bad["id"]) and s.of(bad["id"])[-1].state == SUCCEEDED, 10,
             "the retried item's SUCCEEDED on b's subscriber")
    states = [state_name(u.state) for u in sub.of(bad["id"])]
    assert states.count("QUEUED") == 2 and states[-1] == "SUCCEEDED", states
    assert not get(b.client(), states=[FAILED], batches=["D"]).items
    # A CANCELLED item of a batch runs again too; a live one is not retryable.
    c = {"id": f"r-{tag}-c", "kind": "sleep", "params": {"ms": "30000"}, "batch": "D2"}
    assert a.client().submit([c]).accepted == 1
    assert retry(a.client(), [c["id"]]).not_retryable == 1
    assert cancel(b.client(), [c["id"]]).cancelled == 1
    assert get(a.client(), [c["id"]], wait=True, timeout=15).items[0].state == CANCELLED
    reply = retry(b.client(), batches=["D2"])
    assert reply.requeued == 1, reply
    wait_for(lambda: get(a.client(), [c["id"]]).items[0].state in (QUEUED, STARTED), 10,
             "the cancelled item queued again")
    assert cancel(a.client(), batches=["D2"]).cancelled == 1


@pytest.mark.deadline(60)
def test_cancel_reaches_the_item_when_its_holder_is_gone(redis, start_daemon):  # noqa: F811
    """A holds a running item and stops (SIGSTOP: it never reads the cancel
    request), then dies: B claims the item after the lease, sees the cancel
    asked for it, and cancels it instead of running it to its end."""
    name = cluster_name()
    tag = uuid.uuid4().hex[:8]
    a = start_instance(start_daemon, redis, name, "a", workers=1, overrides=ONE_SLOT)
    sub_a = a.client().subscribe(sync=True, name="sub-a")
    item = {"id": f"gone-{tag}", "kind": "sleep", "params": {"ms": "30000"}}
    assert a.client().submit([item]).accepted == 1
    sub_a.wait_state(item["id"], STARTED, timeout=10)
    b = start_instance(start_daemon, redis, name, "b")
    os.kill(a.grpc_pid(), signal.SIGSTOP)
    try:
        reply = cancel(b.client(), [item["id"]], reason="holder gone")
        assert reply.cancelled == 1, reply
    finally:
        kill_everything(a)
    got = get(b.client(), [item["id"]], wait=True, timeout=20).items[0]
    assert (got.state, got.error) == (CANCELLED, "holder gone"), got
    wait_work_empty(redis, name)


@pytest.mark.deadline(60)
def test_items_calls_while_redis_is_down_and_odd_ids(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    c = a.client()
    # Ids no item can have: not found, by every call.
    long_id, odd = "x" * 300, "a\u00e9\U0001f600:item:*"
    reply = get(c, [long_id, odd, ""])
    assert list(reply.not_found) == [long_id, odd, ""] and not reply.items
    assert list(cancel(c, [odd]).not_found) == [odd]    # cancel refuses a long id itself
    assert list(retry(c, [long_id, odd]).not_found) == [long_id, odd]
    assert not get(c, batches=["no-such-batch"]).items
    assert not cancel(c, batches=["*"]).cancelled and not retry(c, batches=["*"]).requeued

    redis.kill()
    calls = {
        "getItems": lambda: get(c, ["x"], timeout=5),
        "list": lambda: get(c, batches=["b"], timeout=5),
        "wait": lambda: get(c, ["x"], wait=True, timeout=5),
        "cancel": lambda: cancel(c, ["x"], timeout=5),
        "retry": lambda: retry(c, ["x"], timeout=5),
    }
    for what, call in calls.items():
        def unavailable():
            try:
                call()
            except grpc.RpcError as e:
                return e.code() == grpc.StatusCode.UNAVAILABLE
            return False
        wait_for(unavailable, 15, f"{what} UNAVAILABLE while Redis is down", interval=0.2)
    redis.start()
    wait_serving(a, timeout=20)
    assert list(get(c, ["x"]).not_found) == ["x"]


@pytest.mark.deadline(60)
def test_cluster_replies_stay_within_what_a_client_accepts(redis, start_daemon):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    c = a.client()
    tag = uuid.uuid4().hex[:8]
    big = [{"id": f"big-{tag}-{i}", "kind": "echo", "batch": f"BIG-{tag}",
            "payload": bytes([65 + i]) * (1 << 20)} for i in range(6)]
    for it in big:
        assert c.submit([it]).accepted == 1
    get(c, [it["id"] for it in big], wait=True, timeout=20)
    stock = conftest.Client(a.address, options=[("grpc.max_receive_message_length", 4 << 20)])
    try:
        seen, token, pages = {}, "", 0
        while True:
            reply = stock.stub.getItems(pb.ItemsRequest(batches=[f"BIG-{tag}"], with_results=True,
                                                        limit=10, page_token=token), timeout=10)
            pages += 1
            for i in reply.items:
                assert i.id not in seen
                seen[i.id] = i.result
            token = reply.next_page_token
            if not token:
                break
        assert pages >= 2
        assert {k: len(v) for k, v in seen.items()} == {it["id"]: 1 << 20 for it in big}
        with pytest.raises(grpc.RpcError) as e:
            get(stock, [it["id"] for it in big], with_results=True)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fewer ids" in e.value.details()
        assert len(get(stock, [it["id"] for it in big]).items) == 6
    finally:
        stock.close()


@pytest.mark.deadline(60)
def test_retention_never_forgets_a_retried_item_while_it_runs(redis, start_daemon, tmp_path):  # noqa: F811
    """count 2: an item that FAILED is retried and runs (2 s) again while
    more finals than the count pass; the old entry it left in the finals
    list is skipped, not taken for it: it stays known, then ends and is
    forgotten in its turn."""
    name = cluster_name()
    slow_fail = {"handlers": {"default": "echo", "echo": {"builtin": "echo"},
                              "sleep": {"builtin": "sleep"},
                              "slowfail": {"exec": ["sh", "-c", "sleep 2; exit 3"]}},
                 "items": {"retention": {"count": 2}}}
    a = start_instance(start_daemon, redis, name, "a", overrides=slow_fail)
    c = a.client()
    tag = uuid.uuid4().hex[:8]
    bad = {"id": f"rr-{tag}-bad", "kind": "slowfail", "max_attempts": 1}
    assert c.submit([bad]).accepted == 1
    assert get(c, [bad["id"]], wait=True, timeout=20).items[0].state == FAILED
    assert retry(c, [bad["id"]]).requeued == 1
    wait_for(lambda: get(c, [bad["id"]]).items[0].state == STARTED, 10, "the retry running")
    echoes = [{"id": f"rr-{tag}-e{i}", "kind": "echo"} for i in range(5)]
    assert c.submit(echoes).accepted == 5
    got = get(c, [e["id"] for e in echoes], wait=True, timeout=10)
    assert len(got.not_found) == 3, got.not_found        # 5 finals, count 2
    running = get(c, [bad["id"]]).items
    assert running and running[0].state == STARTED, "the running retry was forgotten"
    final = get(c, [bad["id"]], wait=True, timeout=20).items[0]
    assert (final.state, final.attempt) == (FAILED, 1)
    # Now it is the newest final: kept; the oldest echoes go.
    assert c.submit([{"id": f"rr-{tag}-last", "kind": "echo"}]).accepted == 1
    get(c, [f"rr-{tag}-last"], wait=True, timeout=10)
    left = get(c, [e["id"] for e in echoes] + [bad["id"], f"rr-{tag}-last"])
    assert {i.id for i in left.items} == {bad["id"], f"rr-{tag}-last"}, left
    assert len(item_keys(redis, name)) == 2


@pytest.mark.deadline(60)
def test_many_waiting_calls_on_both_instances(redis, start_daemon):  # noqa: F811
    """20 calls wait on the same items (an id twice in a call, too) on both
    instances; every one is answered with the finals, none early."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    b = start_instance(start_daemon, redis, name, "b")
    tag = uuid.uuid4().hex[:8]
    ids = [f"w-{tag}-{i}" for i in range(3)]
    assert a.client().submit([{"id": i, "kind": "sleep", "params": {"ms": "1500"}}
                              for i in ids]).accepted == 3
    replies, errors = [], []

    def wait_on(d, n):
        try:
            replies.append(get(d.client(), ids + ids[:1] + [f"none-{n}"], wait=True, timeout=30))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=wait_on, args=((a, b)[n % 2], n), daemon=True)
               for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    assert not errors, errors[:3]
    assert len(replies) == 20
    for r in replies:
        assert len(r.items) == 4 and all(i.state == SUCCEEDED for i in r.items), r
        assert len(r.not_found) == 1


@pytest.mark.deadline(60)
def test_items_written_by_layout_3_are_read_retried_and_forgotten(redis, start_daemon):  # noqa: F811
    """Layout 4 keeps an item's latest update in {NAME}:latest; items that
    layout 3 wrote (their latest update, end time and bytes in their hash)
    are still read as they were after the upgrade: getItems by id and by
    filter, with results; a FAILED one is retried (and runs, and its new
    final is in {NAME}:latest); the retention forgets an old one."""
    name = cluster_name()
    tag = uuid.uuid4().hex[:8]
    failed, done = f"l3-{tag}-failed", f"l3-{tag}-done"
    now_ms = int(time.time() * 1000)
    item = f"{{{name}}}:item:"
    for seq, item_id, state, extra in (
            (3, failed, FAILED, {"error": "old error"}),
            (4, done, SUCCEEDED, {"result": b"old result"})):
        u = pb.Update(item_id=item_id, kind="echo", state=state, attempt=1,
                      time_unix_nano=now_ms * 1000000, **extra).SerializeToString()
        fields = ["k", "echo", "b", "L3", "s", str(state), "m", "1", "q", str(seq + 2),
                  "ta", str((now_ms - 5000) * 1000000), "ts", str((now_ms - 4000) * 1000000),
                  "u", u, "n", "400", "t", str(now_ms)]
        if state == FAILED:
            fields += ["w", pb.WorkItem(id=item_id, kind="echo", payload=b"again",
                                        batch="L3").SerializeToString()]
        redis.command("HSET", item + item_id, *fields)
        redis.command("ZADD", f"{{{name}}}:items", str(seq), item_id)
        redis.command("RPUSH", f"{{{name}}}:finals", f"{seq + 2} {item_id}")
    redis.command("SET", f"{{{name}}}:finals_bytes", "800")
    redis.command("SET", f"{{{name}}}:seq", "6")
    redis.command("SET", f"{{{name}}}:layout", "3")
    a = start_instance(start_daemon, redis, name, "a",
                       overrides={"items": {"retention": {"count": 3}}})
    a.wait_log(r"moves from Redis layout 3 to layout 4")
    assert redis.command("GET", f"{{{name}}}:layout") == b"4"
    c = a.client()
    got = by_id(get(c, [failed, done], with_results=True))
    assert (got[failed].state, got[failed].error, got[failed].batch) == \
        (FAILED, "old error", "L3"), got[failed]
    assert (got[done].state, got[done].result) == (SUCCEEDED, b"old result"), got[done]
    assert got[done].started_unix_nano == (now_ms - 4000) * 1000000
    assert [i.id for i in get(c, states=[FAILED], batches=["L3"]).items] == [failed]
    # retried: runs, and its new final is layout 4's
    assert retry(c, [failed]).requeued == 1
    again = get(c, [failed], wait=True, with_results=True, timeout=20).items[0]
    assert (again.state, again.result) == (SUCCEEDED, b"again"), again
    assert redis.command("HGET", f"{{{name}}}:latest", failed).startswith(b"%d " % SUCCEEDED)
    # the retention (count 3) forgets the oldest final, layout 3's `done`,
    # as three new items end
    items = [{"id": f"l3-{tag}-new-{i}", "kind": "echo", "payload": b"n"} for i in range(3)]
    assert c.submit(items).accepted == 3
    get(c, [it["id"] for it in items], wait=True, timeout=20)
    wait_for(lambda: redis.command("EXISTS", item + done) == 0, 10, "the layout 3 final forgotten")
    assert list(get(c, [done]).not_found) == [done]


@pytest.mark.deadline(60)
def test_start_times_of_items_that_are_not_quick(redis, start_daemon):  # noqa: F811
    """An item that is not quick (sleep) has its STARTED written, and its
    PROGRESS and final carry its attempt's start from it, also when they
    come in the same update script as the STARTED (a short attempt):
    getItems shows every item's start, between its acceptance and its
    end."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=2)
    tag = uuid.uuid4().hex[:8]
    items = [{"id": f"ts-{tag}-{i}", "kind": "sleep", "params": {"ms": "0"}} for i in range(300)]
    assert a.client().submit(items).accepted == len(items)
    got = get(a.client(), [it["id"] for it in items], wait=True, timeout=40).items
    assert len(got) == len(items)
    for it in got:
        assert it.state == SUCCEEDED, it
        assert 0 < it.accepted_unix_nano <= it.started_unix_nano <= it.finished_unix_nano, it


@pytest.mark.deadline(60)
def test_a_leftover_latest_update_is_no_new_item(redis, start_daemon):  # noqa: F811
    """A {NAME}:latest field whose item hash went (a DEL by hand; its
    retention entry still listed) is an earlier item's: a new item of that
    id (delayed, prioritized or not) runs, getItems does not take the old
    field for its state, and popping the old item's retention entry does
    not forget the new one (the field's seq is not past the new hash's)."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a",
                       overrides={"items": {"retention": {"count": 5}}})
    tag = uuid.uuid4().hex[:8]
    delayed, prio, plain = f"lo-{tag}-delayed", f"lo-{tag}-prio", f"lo-{tag}-plain"
    trigger = f"lo-{tag}-trigger"
    for item_id in (delayed, prio, plain):
        redis.command("HSET", f"{{{name}}}:latest", item_id, b"4 1 1 1  stale")
        redis.command("RPUSH", f"{{{name}}}:finals", f"1 {item_id}")
    assert a.client().submit([{"id": delayed, "kind": "echo", "payload": b"d",
                               "delay_ms": 1500},
                              {"id": prio, "kind": "echo", "payload": b"p", "priority": 5},
                              {"id": plain, "kind": "sleep", "params": {"ms": "500"}}]
                             ).accepted == 3
    # not the old field's state (it said SUCCEEDED)
    assert get(a.client(), [plain]).items[0].state in (QUEUED, STARTED)
    # its final pops the old entries while the delayed item waits
    assert a.client().submit([{"id": trigger, "kind": "echo", "payload": b"t"}]).accepted == 1
    got = by_id(get(a.client(), [delayed, prio, plain, trigger], wait=True, with_results=True,
                    timeout=20))
    assert (got[delayed].state, got[delayed].result) == (SUCCEEDED, b"d"), got[delayed]
    assert (got[prio].state, got[prio].result) == (SUCCEEDED, b"p"), got[prio]
    assert got[plain].state == SUCCEEDED, got[plain]
    assert got[trigger].state == SUCCEEDED, got[trigger]
    for item_id in (delayed, prio, plain, trigger):
        assert redis.command("EXISTS", f"{{{name}}}:item:{item_id}") == 1, item_id


@pytest.mark.deadline(60)
def test_an_item_hash_whose_seq_is_no_number(redis, start_daemon):  # noqa: F811
    """An item's hash whose q (its QUEUED update's seq) is not a number
    (written by hand) is read as if q were not there: its latest update in
    {NAME}:latest is its own. It stopped every script that read it (latest()
    compared nil with a number): getItems of it and every listing across it
    failed, and so did the update scripts while it was the oldest retained
    final (their trim reads it: "publishing a final update failed")."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a",
                       overrides={"items": {"retention": {"count": 3}}})
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    bad = {"id": f"nq-{tag}-bad", "kind": "echo", "payload": b"b"}
    assert a.client().submit([bad]).accepted == 1
    sub.wait_final([bad["id"]], timeout=10)
    redis.command("HSET", f"{{{name}}}:item:{bad['id']}", "q", "not a seq")
    got = get(a.client(), [bad["id"]], with_results=True)
    assert (got.items[0].state, got.items[0].result) == (SUCCEEDED, b"b"), got
    assert bad["id"] in [m.id for m in get(a.client()).items]
    # the next finals push it out of the retention (count 3): the trim reads it
    items = [{"id": f"nq-{tag}-{i}", "kind": "echo", "payload": b"p"} for i in range(5)]
    assert a.client().submit(items).accepted == 5
    finals = sub.wait_final([it["id"] for it in items], timeout=10)
    assert all(u.state == SUCCEEDED for u in finals.values()), finals
    assert "failed" not in a.log_text(), a.log_tail()


@pytest.mark.deadline(60)
def test_an_item_hash_with_a_bad_priority_or_no_workitem(redis, start_daemon):  # noqa: F811
    """A priority edited by hand into something that is not an int32 shows
    as 0 in getItems (it showed the number's prefix: "12abc" as 12, 11
    digits wrapped); a CANCELLED item whose WorkItem was removed from its
    hash is skipped by retry with a warning naming the item and its key
    (it was skipped in silence), and the other items of the call requeue."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    tag = uuid.uuid4().hex[:8]
    ok = {"id": f"bp-{tag}-ok", "kind": "echo", "payload": b"x", "priority": -7}
    assert a.client().submit([ok]).accepted == 1
    assert get(a.client(), [ok["id"]], wait=True, timeout=10).items[0].priority == -7
    key = f"{{{name}}}:item:{ok['id']}"
    for bad in ("12abc", "99999999999", "+5", " 5", "-", "2147483648"):
        redis.command("HSET", key, "p", bad)
        assert get(a.client(), [ok["id"]]).items[0].priority == 0, bad
    redis.command("HSET", key, "p", "-2147483648")
    assert get(a.client(), [ok["id"]]).items[0].priority == -2147483648
    # Two sleeping items cancelled; one loses its WorkItem by hand.
    c = [{"id": f"bp-{tag}-c{i}", "kind": "sleep", "params": {"ms": "30000"}} for i in range(2)]
    assert a.client().submit(c).accepted == 2
    assert cancel(a.client(), [x["id"] for x in c]).cancelled == 2
    got = get(a.client(), [x["id"] for x in c], wait=True, timeout=15).items
    assert [m.state for m in got] == [CANCELLED, CANCELLED], got
    redis.command("HDEL", f"{{{name}}}:item:{c[0]['id']}", "w")
    reply = retry(a.client(), [x["id"] for x in c])
    assert (reply.requeued, reply.not_retryable) == (1, 1), reply
    a.wait_log(rf'retry of item "{c[0]["id"]}" skipped: \{{{name}\}}:item:{c[0]["id"]} has no '
               r"WorkItem \(w\) that decodes")
    assert cancel(a.client(), [c[1]["id"]]).cancelled == 1


def test_an_item_key_that_is_no_hash_stops_no_update(redis, start_daemon):  # noqa: F811
    """An item whose key is no hash (replaced by hand while it runs) failed
    every update script that wrote its hash (its RETRYING: rd, ts; its
    FAILED final: w), and with it every other update of that call
    ("publishing ... failed: WRONGTYPE": their finals unknown, run again
    elsewhere); its own final never went (run again and again); then the
    trim of the retention, which reads it. Now its updates are written
    without its hash, the key is named in the log, and the retention
    deletes it when it forgets the item."""
    name = cluster_name()
    slow_fail = {"handlers": {"default": "echo", "echo": {"builtin": "echo"},
                              "slowfail": {"exec": ["sh", "-c", "sleep 1; exit 3"],
                                           "retry_exit_codes": [3]}},
                 "items": {"retention": {"count": 2}}}
    a = start_instance(start_daemon, redis, name, "a", overrides=slow_fail)
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    bad = {"id": f"nh-{tag}", "kind": "slowfail", "max_attempts": 2}
    assert a.client().submit([bad]).accepted == 1
    sub.wait_state(bad["id"], STARTED)
    key = f"{{{name}}}:item:{bad['id']}"
    redis.command("DEL", key)
    redis.command("SET", key, "not a hash")
    # echoes all along: their updates share the update scripts of its own
    echoes = []
    for i in range(25):
        echoes.append({"id": f"e-{tag}-{i}", "kind": "echo", "payload": b"e"})
        assert a.client().submit([echoes[-1]]).accepted == 1
        time.sleep(0.1)
    final = sub.wait_final([bad["id"]], timeout=10)[bad["id"]]
    assert (final.state, final.attempt) == (FAILED, 2), final
    finals = sub.wait_final([e["id"] for e in echoes], timeout=10)
    assert all(u.state == SUCCEEDED for u in finals.values()), finals
    a.wait_log(r"\{%s\}:item:%s is no item hash: WRONGTYPE" % (name, bad["id"]), timeout=5)
    # the next finals push it out of the retention (count 2)
    more = [{"id": f"m-{tag}-{i}", "kind": "echo", "payload": b"m"} for i in range(3)]
    assert a.client().submit(more).accepted == 3
    sub.wait_final([m["id"] for m in more], timeout=10)
    wait_for(lambda: redis.command("EXISTS", key) == 0, 5, "the key deleted by the retention")
    assert "publishing" not in a.log_text(), a.log_tail()
    assert "retention failed" not in a.log_text(), a.log_tail()


@pytest.mark.deadline(60)
def test_a_listed_item_key_that_is_no_hash_hides_no_other(redis, start_daemon):  # noqa: F811
    """An item of {NAME}:items whose key is no hash (replaced by hand) made
    the list script fail (HMGET's WRONGTYPE): every listing across it, and
    every cancel and retry by batch, failed UNAVAILABLE; a getItems by ids
    that named it failed for all its ids. Now it is as unknown there (not
    listed, not found), the others are answered, and the log names its
    key."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    items = [{"id": f"nl-{tag}-{i}", "kind": "echo", "payload": b"e", "batch": f"b-{tag}"}
             for i in range(3)]
    assert a.client().submit(items).accepted == 3
    sub.wait_final([it["id"] for it in items], timeout=10)
    bad = items[1]["id"]
    key = f"{{{name}}}:item:{bad}"
    redis.command("DEL", key)
    redis.command("SET", key, "not a hash")
    good = {items[0]["id"], items[2]["id"]}
    listed = {m.id for m in get(a.client(), batches=[f"b-{tag}"]).items}
    assert listed == good, listed
    got = get(a.client(), [it["id"] for it in items])
    assert ({m.id for m in got.items}, list(got.not_found)) == (good, [bad]), got
    assert cancel(a.client(), batches=[f"b-{tag}"]).cancelled == 0
    assert retry(a.client(), batches=[f"b-{tag}"]).requeued == 0
    reply = cancel(a.client(), [bad])
    assert list(reply.not_found) == [bad], reply
    a.wait_log(r"\{%s\}:item:%s is no item hash" % (name, bad), timeout=5)
    assert "failed" not in a.log_text(), a.log_tail()


@pytest.mark.deadline(60)
def test_a_byte_count_that_is_no_number_stops_no_final(redis, start_daemon):  # noqa: F811
    """{NAME}:finals_bytes (the retained finals' bytes, for
    items.retention.bytes) written by hand as no integer made every script
    that counts a final fail (INCRBY: "publishing a final update failed:
    ERR value is not an integer": the reply of every final of the cluster an
    error, "whether redis has its final update is unknown", and nothing
    forgotten past the retention any more). Now the count starts again from
    the bytes of that call's finals, and the log says so, naming the key."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    sub = a.client().subscribe(sync=True, name="sub-a")
    key = f"{{{name}}}:finals_bytes"
    redis.command("SET", key, "lots")
    tag = uuid.uuid4().hex[:8]
    items = [{"id": f"fb-{tag}-{i}", "kind": "echo", "payload": b"e"} for i in range(5)]
    assert a.client().submit(items).accepted == 5
    finals = sub.wait_final([it["id"] for it in items], timeout=10)
    assert all(u.state == SUCCEEDED for u in finals.values()), finals
    a.wait_log(r"\{%s\}:finals_bytes held no integer \(lots\)" % name, timeout=5)
    assert "publishing" not in a.log_text(), a.log_tail()
    assert int(redis.command("GET", key)) > 0


@pytest.mark.deadline(60)
def test_a_byte_count_of_another_type_stops_no_periodic_trim(redis, start_daemon):  # noqa: F811
    """{NAME}:finals_bytes of another type than a string (written by hand)
    while no item ends: the periodic trim (every lease/2) still forgets the
    finals past items.retention.age, instead of failing on GET's WRONGTYPE
    each time ("forgetting the finals past items.retention failed") until
    some final's count starts the bytes again."""
    name = cluster_name()
    short = {"items": {"retention": {"age": "1s"}}}
    a = start_instance(start_daemon, redis, name, "a", overrides=short)
    sub = a.client().subscribe(sync=True, name="sub-a")
    tag = uuid.uuid4().hex[:8]
    items = [{"id": f"bt-{tag}-{i}", "kind": "echo", "payload": b"e"} for i in range(3)]
    assert a.client().submit(items).accepted == 3
    sub.wait_final([it["id"] for it in items], timeout=10)
    key = f"{{{name}}}:finals_bytes"
    redis.command("DEL", key)
    redis.command("HSET", key, "x", "1")
    wait_for(lambda: redis.command("LLEN", f"{{{name}}}:finals") == 0, 10,
             "the finals forgotten after their age")
    assert "forgetting the finals past items.retention failed" not in a.log_text(), \
        a.log_tail()


@pytest.mark.deadline(60)
def test_a_retry_while_the_byte_count_is_no_number(redis, start_daemon):  # noqa: F811
    """A retry of a FAILED item while {NAME}:finals_bytes is no integer
    (written by hand) queued the item again, then failed on the DECRBY of
    its bytes: the call answered UNAVAILABLE ("retrying failed: ERR value
    is not an integer") though the item was queued, and was left out of
    the listing's new place. Now the retry is answered (requeued), the item
    runs again, and its final restarts the count, saying so."""
    name = cluster_name()
    fail = {"handlers": {"default": "echo", "echo": {"builtin": "echo"},
                         "fail": {"exec": ["sh", "-c", "exit 3"]}}}
    a = start_instance(start_daemon, redis, name, "a", overrides=fail)
    c = a.client()
    tag = uuid.uuid4().hex[:8]
    item = {"id": f"rb-{tag}", "kind": "fail", "max_attempts": 1}
    assert c.submit([item]).accepted == 1
    assert get(c, [item["id"]], wait=True, timeout=10).items[0].state == FAILED
    redis.command("SET", f"{{{name}}}:finals_bytes", "lots")
    assert retry(c, [item["id"]]).requeued == 1
    final = get(c, [item["id"]], wait=True, timeout=10).items[0]
    assert (final.state, final.attempt) == (FAILED, 1), final
    assert item["id"] == get(c, states=[FAILED]).items[0].id      # the newest of the listing
    a.wait_log(r"\{%s\}:finals_bytes held no integer \(lots\)" % name, timeout=5)
    assert "retrying failed" not in a.log_text(), a.log_tail()
