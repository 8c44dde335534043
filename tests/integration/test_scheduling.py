"""
Scheduling in memory and journal modes: WorkItem.priority (higher first,
then acceptance order), WorkItem.delay_ms (QUEUED at once, not started
before its due time), queue.retry_backoff, and their bad input.

No timed assertions: order is read from update seqs, and "not before its
due time" compares the server's STARTED time with the client's clock taken
before the submit (the server's due time is later than that).
"""
import json
import os
import signal
import time

import pytest

from conftest import (CANCELLED, FINAL_STATES, QUEUED, RETRYING, STARTED, SUCCEEDED, pb,
                      wait_for)
from test_journal import Watcher, kill_everything

DELAY_MAX_MS = 30 * 24 * 3600 * 1000
INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


def sleep_item(item_id, ms, **kw):
    return {"id": item_id, "kind": "sleep", "params": {"ms": str(ms)}, **kw}


def first(watcher, item_id, state):
    for u in watcher.of(item_id):
        if u.state == state:
            return u
    raise AssertionError(f"{item_id}: no {state} in {watcher.states(item_id)}")


def get_items(client, ids):
    reply = client.stub.getItems(pb.ItemsRequest(item_ids=list(ids)), timeout=10)
    return {it.id: it for it in reply.items}


# ---- priority ----------------------------------------------------------------------------

@pytest.mark.deadline(120)
def test_urgent_items_overtake_the_queued_bulk(start_daemon):
    """One worker holding workers.prefetch items: 10k bulk items queued, then
    10 urgent ones. Between the urgent ones' QUEUED and the last urgent
    STARTED, at most `prefetch` bulk items start (those the worker held
    already); the urgent ones run in their acceptance order."""
    prefetch = 2
    d = start_daemon({"workers": {"count": 1, "prefetch": prefetch},
                      "queue": {"capacity": 20000}, "updates": {"history": 100000}})
    c = d.client()
    w = Watcher(c)
    bulk = [sleep_item(f"bulk-{i}", 2, batch="bulk") for i in range(10000)]
    reply = c.submit(bulk)
    assert (reply.accepted, reply.rejected) == (10000, 0)
    w.wait(lambda: w.has_state("bulk-0", STARTED), 10, "the first bulk item started")

    urgent = [sleep_item(f"urgent-{i}", 2, priority=10, batch="urgent") for i in range(10)]
    reply = c.submit(urgent)
    assert reply.accepted == 10
    w.wait_final([u["id"] for u in urgent], timeout=30)
    queued_seq = max(first(w, u["id"], QUEUED).seq for u in urgent)
    started = [first(w, u["id"], STARTED).seq for u in urgent]
    assert started == sorted(started), "urgent items did not start in acceptance order"
    last_urgent = max(started)
    with w.cond:
        overtaking = sorted(u.item_id for u in w.updates
                            if u.state == STARTED and u.item_id.startswith("bulk-")
                            and queued_seq < u.seq < last_urgent)
    assert len(overtaking) <= prefetch, \
        f"{len(overtaking)} bulk items started after the urgent ones were queued: {overtaking}"
    # Bulk items were still queued behind them (otherwise this proves nothing).
    items = get_items(c, [f"bulk-{i}" for i in range(9990, 10000)])
    assert any(it.state == QUEUED for it in items.values())
    assert all(it.priority == 0 for it in items.values())
    assert get_items(c, ["urgent-3"])["urgent-3"].priority == 10

    reply = c.stub.cancel(pb.CancelRequest(batches=["bulk"]), timeout=30)
    w.wait_final([b["id"] for b in bulk], timeout=60)
    w.stop()


def test_priority_extremes_and_order(start_daemon):
    """Any int32 is a priority; with the worker busy, items queue and then
    run highest first, equal ones in acceptance order."""
    d = start_daemon({"workers": {"count": 1, "prefetch": 1}})
    c = d.client()
    w = Watcher(c)
    c.submit([sleep_item("busy", 500)])
    w.wait(lambda: w.has_state("busy", STARTED), 10, "busy started")
    order = [("low", INT32_MIN), ("zero-a", 0), ("high", INT32_MAX), ("zero-b", 0),
             ("minus", -5), ("mid", 7)]
    reply = c.submit([{"id": i, "kind": "echo", "priority": p} for i, p in order])
    assert (reply.accepted, reply.rejected) == (len(order), 0)
    w.wait_final([i for i, _ in order], timeout=20)
    started = sorted((first(w, i, STARTED).seq, i) for i, _ in order)
    assert [i for _, i in started] == ["high", "mid", "zero-a", "zero-b", "minus", "low"], started
    items = get_items(c, [i for i, _ in order])
    assert {i: it.priority for i, it in items.items()} == dict(order)
    w.stop()


# ---- delay -------------------------------------------------------------------------------

def test_delays_start_in_order_and_never_early(start_daemon):
    d = start_daemon({"workers": {"count": 2}})
    c = d.client()
    w = Watcher(c)
    t0 = time.time_ns()
    delays = {"d400": 400, "d0": 0, "d200": 200}
    reply = c.submit([{"id": i, "kind": "echo", "delay_ms": ms} for i, ms in delays.items()])
    assert reply.accepted == 3
    # QUEUED at once, all of them.
    w.wait(lambda: all(w.has_state(i, QUEUED) for i in delays), 5, "QUEUED")
    w.wait_final(list(delays), timeout=20)
    started = {i: first(w, i, STARTED) for i in delays}
    assert [i for i in sorted(delays, key=lambda i: started[i].seq)] == ["d0", "d200", "d400"]
    for i, ms in delays.items():
        assert started[i].time_unix_nano >= t0 + ms * 1_000_000, \
            f"{i} started {(started[i].time_unix_nano - t0) / 1e6:.1f} ms after the submit"
        assert first(w, i, SUCCEEDED)
    items = get_items(c, list(delays))
    for i, ms in delays.items():
        assert items[i].started_unix_nano >= t0 + ms * 1_000_000
    w.stop()


def test_delay_bounds_and_cancel_of_a_delayed_item(start_daemon):
    from test_status import request, start_with_status, status_json
    d = start_with_status(start_daemon, {"queue": {"capacity": 3, "on_full": "reject"}})
    c = d.client()
    w = Watcher(c)
    reply = c.submit([{"id": "too-late", "kind": "echo", "delay_ms": DELAY_MAX_MS + 1},
                      {"id": "at-max", "kind": "echo", "delay_ms": DELAY_MAX_MS},
                      {"id": "huge", "kind": "echo", "delay_ms": 2 ** 32 - 1},
                      {"id": "soon", "kind": "echo", "delay_ms": 60000}])
    assert (reply.accepted, reply.rejected) == (2, 2), reply
    reasons = {r.id: r.reason for r in reply.rejections}
    assert set(reasons) == {"too-late", "huge"}
    assert all("delay_ms" in r and "30 days" in r for r in reasons.values()), reasons
    w.wait(lambda: w.has_state("at-max", QUEUED) and w.has_state("soon", QUEUED), 5, "QUEUED")
    # Delayed items count toward queue.capacity (3): one more fits, then full.
    reply = c.submit([{"id": "third", "kind": "echo", "delay_ms": 60000},
                      {"id": "fourth", "kind": "echo"}])
    assert (reply.accepted, reply.rejected) == (1, 1) and "queue full" in reply.rejections[0].reason
    items = get_items(c, ["at-max", "soon", "third"])
    assert all(it.state == QUEUED for it in items.values())
    doc = status_json(d.status_address)
    assert doc["queue"] == {"depth": 3, "waiting": 0, "delayed": 3, "capacity": 3}, doc["queue"]
    status, _, body = request(d.status_address, "/metrics")
    assert status == 200 and "\ndosomething_queue_delayed 3\n" in body.decode(), body[:2000]

    reply = c.stub.cancel(pb.CancelRequest(item_ids=["at-max", "soon", "third"]), timeout=10)
    w.wait_final(["at-max", "soon", "third"], timeout=5)
    for i in ("at-max", "soon", "third"):
        assert [u.state for u in w.of(i) if u.state in FINAL_STATES] == [CANCELLED]
        assert not w.has_state(i, STARTED)
    # Room again, and a plain item runs.
    reply = c.submit([{"id": "after", "kind": "echo"}])
    assert reply.accepted == 1
    w.wait_final(["after"], timeout=10)
    w.stop()


# ---- the journal -------------------------------------------------------------------------

@pytest.mark.deadline(90)
def test_priorities_and_due_times_survive_killing_everything(start_daemon, tmp_path):
    journal = tmp_path / "journal"
    config = {"workers": {"count": 1, "prefetch": 1}, "queue": {"journal": str(journal)}}
    d1 = start_daemon(config, name="first")
    c1 = d1.client()
    w1 = Watcher(c1)
    c1.submit([sleep_item("busy", 60000, max_attempts=1)])     # FAILED at the restart
    w1.wait(lambda: w1.has_state("busy", STARTED), 10, "busy started")
    t0 = time.time_ns()
    items = [{"id": "p0", "kind": "echo"}, {"id": "p5", "kind": "echo", "priority": 5},
             {"id": "p9", "kind": "echo", "priority": 9},
             {"id": "m3", "kind": "echo", "priority": -3},
             {"id": "overdue", "kind": "echo", "delay_ms": 300, "priority": 1},
             {"id": "later", "kind": "echo", "delay_ms": 8000, "priority": 100}]
    reply = c1.submit(items)
    assert reply.accepted == len(items)
    w1.wait(lambda: all(w1.has_state(i["id"], QUEUED) for i in items), 10, "QUEUED")
    # "overdue" is due before the kill (it cannot run: the worker is busy).
    wait_for(lambda: time.time_ns() > t0 + 400_000_000, 5, "overdue's due time")
    w1.stop()
    kill_everything(d1)

    d2 = start_daemon(config, name="second")
    d2.wait_log(r"journal: took over .*: 6 items queued again, 1 failed")
    c2 = d2.client()
    w2 = Watcher(c2)
    ids = [i["id"] for i in items]
    known = get_items(c2, ids)
    assert {i: it.priority for i, it in known.items()} == \
        {"p0": 0, "p5": 5, "p9": 9, "m3": -3, "overdue": 1, "later": 100}
    w2.wait_final(ids, timeout=30)
    started = {i: first(w2, i, STARTED) for i in ids}
    ran = [i for i in sorted(ids, key=lambda i: started[i].seq) if i != "later"]
    assert ran == ["p9", "p5", "overdue", "p0", "m3"], ran
    # Not due at the kill: still waited for its due time, no attempt spent.
    assert started["later"].time_unix_nano >= t0 + 8000 * 1_000_000
    assert started["later"].attempt == 1 and not w2.has_state("later", RETRYING)
    w2.stop()


# ---- retry backoff ------------------------------------------------------------------------

@pytest.mark.deadline(90)
def test_retry_backoff_after_a_worker_death_applied_by_reload(start_daemon):
    d = start_daemon({"workers": {"count": 1}})
    c = d.client()
    w = Watcher(c)

    def killed_then_started(item_id):
        """Kill the worker running ITEM_ID; return its RETRYING and the next STARTED."""
        c.submit([sleep_item(item_id, 30000, max_attempts=2)])
        w.wait(lambda: w.has_state(item_id, STARTED), 10, f"{item_id} started")
        pid = first(w, item_id, STARTED).worker_pid
        os.kill(pid, signal.SIGKILL)
        w.wait(lambda: w.has_state(item_id, RETRYING), 10, f"{item_id} retrying")
        w.wait(lambda: sum(u.state == STARTED for u in w.of(item_id)) == 2, 20,
               f"{item_id} started again")
        retrying = first(w, item_id, RETRYING)
        again = [u for u in w.of(item_id) if u.state == STARTED][1]
        c.stub.cancel(pb.CancelRequest(item_ids=[item_id]), timeout=10)
        w.wait_final([item_id], timeout=20)
        return retrying, again

    # Off (the default): the retry may run at once; nothing to assert on time.
    killed_then_started("no-backoff")

    d.write_config({"workers": {"count": 1},
                    "queue": {"retry_backoff": {"min": "1s", "max": "2s"}}})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reload.*generation 2\b")
    retrying, again = killed_then_started("backoff")
    assert again.attempt == 2
    assert again.time_unix_nano >= retrying.time_unix_nano + 1_000_000_000, \
        f"retried {(again.time_unix_nano - retrying.time_unix_nano) / 1e6:.0f} ms after RETRYING"
    w.stop()


def test_retry_backoff_config_errors(start_daemon, tmp_path):
    from conftest import run_cli
    bad = [("{min: 5s, max: 1s}", "min (5s) is more than max (1s)"),
           ("[1s]", "must be off or a mapping"),
           ("{min: 0s}", "retry_backoff.min"),
           ("{mid: 1s}", "mid")]
    for value, message in bad:
        path = tmp_path / "bad.yaml"
        path.write_text(f"queue:\n  retry_backoff: {value}\n")
        r = run_cli("-t", "-c", str(path))
        assert r.returncode != 0 and message in (r.stdout + r.stderr), (value, r.stderr)
    good = tmp_path / "good.yaml"
    good.write_text("queue:\n  retry_backoff: {}\n")
    r = run_cli("-T", "-c", str(good))
    assert r.returncode == 0 and "min: 1s" in r.stdout and "max: 5m" in r.stdout, r.stdout


# ---- the CLI --------------------------------------------------------------------------------

def test_cli_submit_priority_and_delay_then_list(daemon):
    from test_cli import EXIT_OK, EXIT_USAGE, explain, json_lines, run
    c = daemon.client()
    w = Watcher(c)
    items = [{"id": "cli-a", "kind": "echo"},
             {"id": "cli-b", "kind": "echo", "priority": -4, "delay_ms": 0}]
    r = run("submit", "--json", "--priority", "7", "--delay", "30s", target=daemon,
            input=json_lines(items))
    assert r.returncode == EXIT_OK, explain(r)
    w.wait_final(["cli-b"], timeout=10)     # its own delay_ms 0 wins
    r = run("list", "--state", "QUEUED", target=daemon)
    assert r.returncode == EXIT_OK, explain(r)
    rows = [row.split() for row in r.stdout.splitlines()]
    assert rows[0][:6] == ["ID", "STATE", "ATTEMPT", "KIND", "BATCH", "PRIORITY"], explain(r)
    # No batch: the BATCH cell is blank, PRIORITY comes next.
    assert ["cli-a", "QUEUED", "1/3", "echo", "7"] in [row[:5] for row in rows], explain(r)
    c.stub.cancel(pb.CancelRequest(item_ids=["cli-a"]), timeout=10)
    w.wait_final(["cli-a"], timeout=10)
    assert not w.has_state("cli-a", STARTED)
    r = run("get", "--json", "cli-a", "cli-b", target=daemon)
    got = {i["id"]: i for i in map(json.loads, r.stdout.splitlines())}
    assert got["cli-a"]["priority"] == 7 and got["cli-b"]["priority"] == -4, explain(r)
    assert got["cli-a"]["state"] == "CANCELLED"

    for bad in (["--priority", "2147483648"], ["--priority", "x"], ["--delay", "721h"],
                ["--delay", "-1s"]):
        r = run("submit", *bad, target=daemon, input="p\n")
        assert r.returncode == EXIT_USAGE and bad[0] in r.stderr, (bad, explain(r))
    r = run("submit", "--priority", "-2147483648", "--id-prefix", "lowest", target=daemon,
            input="p\n")
    assert r.returncode == EXIT_OK, explain(r)
    w.wait_final(["lowest-1"], timeout=10)
    w.stop()


def test_retry_backoff_after_a_retryable_failure(start_daemon, tmp_path):
    """An exec handler exiting 75 (retry_exit_codes' default) twice, then
    succeeding: each retry waits at least min (doubling: 300 ms, 600 ms)."""
    from test_retryable import counting, handlers
    d = start_daemon({"workers": {"count": 1},
                      "queue": {"retry_backoff": {"min": "300ms", "max": "2s"}},
                      "handlers": handlers(flaky=counting(tmp_path, 3, 75))})
    c = d.client()
    w = Watcher(c)
    c.submit([{"id": "flaky-1", "kind": "flaky", "max_attempts": 3}])
    w.wait_final(["flaky-1"], timeout=20)
    ups = w.of("flaky-1")
    assert [u.state for u in ups if u.state in FINAL_STATES] == [SUCCEEDED], w.states("flaky-1")
    retrying = [u for u in ups if u.state == RETRYING]
    started = [u for u in ups if u.state == STARTED]
    assert len(retrying) == 2 and [u.attempt for u in started] == [1, 2, 3], w.states("flaky-1")
    for n, (r, s) in enumerate(zip(retrying, started[1:])):
        wait_ms = 300 * 2 ** n
        assert s.time_unix_nano >= r.time_unix_nano + wait_ms * 1_000_000, \
            f"attempt {s.attempt} started {(s.time_unix_nano - r.time_unix_nano) / 1e6:.0f} ms " \
            f"after RETRYING, before its {wait_ms} ms backoff"
    w.stop()


# ---- dispatch around a long item ---------------------------------------------------------

def test_quick_items_go_to_the_worker_not_running_a_long_one(start_daemon):
    """A worker running a full-weight item is the last choice: 20 echoes sent
    while one worker sleeps 8 s all go to the other (it has room for 32 quick
    items with workers.prefetch 2), none waits behind the sleep."""
    d = start_daemon({"workers": {"count": 2, "prefetch": 2}})
    c = d.client()
    w = Watcher(c)
    c.submit([sleep_item("long", 8000)])
    w.wait(lambda: w.has_state("long", STARTED), 10, "long started")
    sleeper = first(w, "long", STARTED).worker_pid
    echoes = [{"id": f"e{i}", "payload": b"x"} for i in range(20)]
    assert c.submit(echoes).accepted == 20
    w.wait_final([e["id"] for e in echoes], timeout=30)
    ran_on = {first(w, e["id"], STARTED).worker_pid for e in echoes}
    assert sleeper not in ran_on, "an echo waited behind the 8 s sleep"
    assert not any(u.state in FINAL_STATES for u in w.of("long")), \
        "the echoes' finals came after the sleep's: not a test of anything"
    c.stub.cancel(pb.CancelRequest(item_ids=["long"]), timeout=10)
    w.stop()
