"""Per-kind limits and pause (handlers.<kind>.concurrency, rate, paused)
against the real binary.

Nothing here asserts a duration: limits are checked from the order of the
updates (seq) and from their timestamps against a bound that holds on any
machine (a rate never lets more start than burst + rate x elapsed since
the items were submitted).
"""
import http.client
import json
import re
import signal
import time

import pytest

from conftest import FAILED, QUEUED, STARTED, SUCCEEDED, free_port, pb, wait_for
from test_cluster import redis  # noqa: F401 (a fixture)

CANCELLED = pb.CANCELLED if pb is not None else 8
RETRYING = pb.RETRYING if pb is not None else 6
FINALS = (SUCCEEDED, FAILED, CANCELLED)
APPLIED = re.compile(r"grpc \d+: config generation \d+ applied")


def config(tmp_path, sleep=None, workers=4, mode="memory", status=None, extra=None):
    sleep_handler = {"builtin": "sleep"}
    sleep_handler.update(sleep or {})
    c = {"workers": {"count": workers},
         "handlers": {"default": "echo", "echo": {"builtin": "echo"}, "sleep": sleep_handler}}
    c["handlers"].update(extra or {})
    if mode == "journal":
        c["queue"] = {"journal": str(tmp_path / "journal")}
    if status is not None:
        c["status"] = {"listen": status}
    return c


def reload(d, overrides):
    """Rewrite the config, SIGHUP, wait until the grpc process applied it."""
    applied = len(APPLIED.findall(d.log_text()))
    d.write_config(overrides)
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: len(APPLIED.findall(d.log_text())) > applied, 10,
             "the grpc process to apply the new config")


def status_kinds(address):
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/status")
        r = conn.getresponse()
        assert r.status == 200
        return json.loads(r.read())["kinds"]
    finally:
        conn.close()


def metrics_text(address):
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def sleeps(prefix, n, ms=50):
    return [{"id": f"{prefix}{i}", "kind": "sleep", "params": {"ms": str(ms)}} for i in range(n)]


def most_at_once(sub, ids):
    """The most of IDS between their STARTED and their final at once, by
    seq (the order the grpc process published them in)."""
    ids = set(ids)
    events = sorted((u.seq, 1 if u.state == STARTED else -1)
                    for u in sub.snapshot()
                    if u.item_id in ids and (u.state == STARTED or u.state in FINALS
                                             or u.state == RETRYING))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def started_order(sub, ids):
    ids = set(ids)
    return [u.item_id for u in sub.snapshot() if u.item_id in ids and u.state == STARTED]


@pytest.mark.parametrize("mode", ["memory", "journal"])
def test_concurrency_under_a_burst(start_daemon, tmp_path, mode):
    status = f"127.0.0.1:{free_port()}"
    d = start_daemon(config(tmp_path, {"concurrency": 2}, workers=4, mode=mode, status=status))
    c = d.client()
    items = sleeps("c", 12, ms=60)
    reply, sub = c.run_items(items)
    assert reply.accepted == 12
    ids = [i["id"] for i in items]
    assert all(sub.final[i].state == SUCCEEDED for i in ids)
    assert most_at_once(sub, ids) == 2, "concurrency: 2 let more run at once (or never 2)"
    # Released in acceptance order, one slot at a time: with 2 slots on 4
    # workers, the n-th to start is among the first n + 2 accepted.
    order = started_order(sub, ids)
    assert sorted(order) == sorted(ids)
    for n, item_id in enumerate(order):
        assert item_id in ids[:n + 2], f"{item_id} started {n}th: {order}"
    kinds = status_kinds(status)
    assert kinds["sleep"]["running"] == 0 and kinds["sleep"]["parked"] == 0
    assert kinds["sleep"]["paused"] == 0


def test_rate_bound_from_started_timestamps(start_daemon, tmp_path):
    d = start_daemon(config(tmp_path, {"rate": "20/s"}, workers=4))
    c = d.client()
    items = sleeps("r", 50, ms=1)
    sub = c.subscribe(sync=True)
    t_submit = time.time_ns()
    reply = c.submit(items)
    assert reply.accepted == 50
    ids = [i["id"] for i in items]
    sub.wait_final(ids, timeout=30)
    started = sorted(u.time_unix_nano for u in sub.snapshot()
                     if u.item_id in set(ids) and u.state == STARTED)
    assert len(started) == 50
    # Every token was taken after t_submit: by any moment t at most
    # 20 (the burst) + 20/s x (t - t_submit) have started (+1: clocks).
    for n, t in enumerate(started, start=1):
        allowed = 20 + 20 * (t - t_submit) / 1e9 + 1
        assert n <= allowed, f"{n} started {(t - t_submit) / 1e6:.0f} ms after submitting"
    assert all(sub.final[i].state == SUCCEEDED for i in ids)


def test_other_kinds_unaffected_while_one_is_paused_or_limited(start_daemon, tmp_path):
    status = f"127.0.0.1:{free_port()}"
    conf = config(tmp_path, {"paused": True}, workers=2, status=status,
                  extra={"slow": {"builtin": "sleep", "concurrency": 1}})
    # prefetch 1: the worker running s0 (a full item) has no room left, so
    # no echo waits behind it. With the default 2 it would take up to 16
    # echoes (quick: 1/16 each) and run them when s0 ends, 30 s later
    # (docs/scheduling.md: a worker runs what it holds in order); the
    # echoes would then be final only after s0, and s1 started in its slot.
    conf["workers"]["prefetch"] = 1
    d = start_daemon(conf)
    c = d.client()
    sub = c.subscribe(sync=True)
    held = sleeps("p", 5)
    slow = [{"id": f"s{i}", "kind": "slow", "params": {"ms": "30000"}} for i in range(3)]
    assert c.submit(held + slow).accepted == 8
    sub.wait_state("s0", STARTED)
    echoes = [{"id": f"e{i}", "payload": b"x"} for i in range(200)]
    assert c.submit(echoes).accepted == 200
    sub.wait_final([e["id"] for e in echoes], timeout=25)
    assert "s0" not in sub.final, "s0 ended: the checks below need it running"
    s0_worker = [u.worker_pid for u in sub.of("s0") if u.state == STARTED][0]
    assert all(sub.final[e["id"]].worker_pid != s0_worker for e in echoes), \
        "an echo was given to the worker running s0"
    for it in held:
        assert sub.states_of(it["id"]) == ["QUEUED"], sub.states_of(it["id"])
    assert sub.states_of("s1") == ["QUEUED"] and sub.states_of("s2") == ["QUEUED"]
    kinds = status_kinds(status)
    assert kinds["sleep"]["paused"] == 1 and kinds["sleep"]["parked"] == 5
    assert kinds["sleep"]["running"] == 0
    assert kinds["slow"]["running"] == 1 and kinds["slow"]["parked"] == 2
    assert kinds["echo"]["paused"] == 0 and kinds["echo"]["parked"] == 0
    text = metrics_text(status)
    assert 'dosomething_kind_paused{kind="sleep"} 1' in text
    assert 'dosomething_kind_parked{kind="sleep"} 5' in text
    assert 'dosomething_kind_parked{kind="slow"} 2' in text
    assert 'dosomething_kind_running{kind="slow"} 1' in text


@pytest.mark.parametrize("mode", ["memory", "journal"])
def test_pause_reload_unpause_keeps_everything_in_order(start_daemon, tmp_path, mode):
    status = f"127.0.0.1:{free_port()}"
    base = config(tmp_path, workers=1, mode=mode, status=status)
    d = start_daemon(base)
    c = d.client()
    sub = c.subscribe(sync=True)
    # One running when the pause comes: it finishes; the rest wait.
    assert c.submit([{"id": "first", "kind": "sleep", "params": {"ms": "500"}}]).accepted == 1
    sub.wait_state("first", STARTED)
    reload(d, config(tmp_path, {"paused": True}, workers=1, mode=mode, status=status))
    items = sleeps("u", 30, ms=1)
    assert c.submit(items).accepted == 30
    sub.wait_final(["first"], timeout=10)
    assert sub.final["first"].state == SUCCEEDED, "a running item finishes when paused"
    wait_for(lambda: status_kinds(status)["sleep"]["parked"] == 30, 10, "30 parked")
    # A reload that changes something else keeps them paused and parked.
    reload(d, config(tmp_path, {"paused": True, "concurrency": 3}, workers=1, mode=mode,
                     status=status))
    time.sleep(0.2)
    assert all(sub.states_of(i["id"]) == ["QUEUED"] for i in items)
    # Unpaused into concurrency 1, so that their start order shows the
    # order they are let go in whatever workers a reload has at the moment.
    reload(d, config(tmp_path, {"concurrency": 1}, workers=1, mode=mode, status=status))
    ids = [i["id"] for i in items]
    sub.wait_final(ids, timeout=30)
    assert all(sub.final[i].state == SUCCEEDED for i in ids)
    assert started_order(sub, ids) == ids, "unpausing resumes in acceptance order"
    kinds = status_kinds(status)
    assert kinds["sleep"]["paused"] == 0 and kinds["sleep"]["parked"] == 0


def test_lowering_concurrency_below_what_runs(start_daemon, tmp_path):
    d = start_daemon(config(tmp_path, {"concurrency": 3}, workers=4))
    c = d.client()
    sub = c.subscribe(sync=True)
    first = [{"id": f"a{i}", "kind": "sleep", "params": {"ms": "800"}} for i in range(3)]
    assert c.submit(first).accepted == 3
    for it in first:
        sub.wait_state(it["id"], STARTED)
    reload(d, config(tmp_path, {"concurrency": 1}, workers=4))
    rest = sleeps("b", 6, ms=20)
    assert c.submit(rest).accepted == 6
    ids = [i["id"] for i in first + rest]
    sub.wait_final(ids, timeout=30)
    assert all(sub.final[i].state == SUCCEEDED for i in ids)
    # No b started before the three a's were down to 0 running beside it.
    events = sorted((u.seq, u.item_id, u.state) for u in sub.snapshot()
                    if u.item_id in set(ids) and (u.state == STARTED or u.state in FINALS))
    running = set()
    for _, item_id, state in events:
        if state == STARTED:
            if item_id.startswith("b"):
                assert not running, f"{item_id} started while {running} ran (concurrency 1)"
            running.add(item_id)
        else:
            running.discard(item_id)


@pytest.mark.parametrize("mode", ["memory", "journal"])
def test_cancel_a_parked_item(start_daemon, tmp_path, mode):
    status = f"127.0.0.1:{free_port()}"
    d = start_daemon(config(tmp_path, {"paused": True}, workers=1, mode=mode, status=status))
    c = d.client()
    sub = c.subscribe(sync=True)
    items = sleeps("k", 4, ms=1)
    assert c.submit(items).accepted == 4
    wait_for(lambda: status_kinds(status)["sleep"]["parked"] == 4, 10, "4 parked")
    reply = c.cancel_items(["k1", "k3", "nope"], reason="not now")
    assert reply.cancelled == 2, reply
    sub.wait_final(["k1", "k3"], timeout=10)
    for i in ("k1", "k3"):
        assert sub.final[i].state == CANCELLED and sub.final[i].error == "not now"
    assert status_kinds(status)["sleep"]["parked"] == 2
    reload(d, config(tmp_path, workers=1, mode=mode, status=status))
    sub.wait_final(["k0", "k2"], timeout=10)
    assert sub.final["k0"].state == SUCCEEDED and sub.final["k2"].state == SUCCEEDED
    time.sleep(0.2)
    for i in ("k1", "k3"):
        assert sub.states_of(i) == ["QUEUED", "CANCELLED"], sub.states_of(i)


def test_slot_given_back_on_worker_death_and_cancel(start_daemon, tmp_path):
    status = f"127.0.0.1:{free_port()}"
    d = start_daemon(config(tmp_path, {"concurrency": 1}, workers=2, status=status))
    c = d.client()
    sub = c.subscribe(sync=True)
    long = {"ms": "60000", "steps": "600"}
    assert c.submit([{"id": "dies", "kind": "sleep", "params": long, "max_attempts": 1},
                     {"id": "cancelled", "kind": "sleep", "params": long},
                     {"id": "last", "kind": "sleep", "params": {"ms": "1"}}]).accepted == 3
    started = sub.wait_state("dies", STARTED)
    # The call's items are read one by one: "dies" can start before the
    # next one is read, and its STARTED come before their QUEUED.
    sub.wait_state("cancelled", QUEUED)
    sub.wait_state("last", QUEUED)
    assert sub.states_of("cancelled") == ["QUEUED"]
    import os
    os.kill(started.worker_pid, signal.SIGKILL)
    sub.wait_final(["dies"], timeout=10)
    assert sub.final["dies"].state == FAILED
    # Its slot came back: the next one starts (and nothing else beside it).
    sub.wait_state("cancelled", STARTED, timeout=10)
    assert sub.states_of("last") == ["QUEUED"]
    reply = c.stub.cancel(pb.CancelRequest(item_ids=["cancelled"]), timeout=10)
    assert reply.cancelled == 1
    sub.wait_final(["cancelled", "last"], timeout=15)
    assert sub.final["cancelled"].state == CANCELLED
    assert sub.final["last"].state == SUCCEEDED
    ids = ["dies", "cancelled", "last"]
    assert most_at_once(sub, ids) == 1
    wait_for(lambda: status_kinds(status)["sleep"]["running"] == 0, 5, "running back to 0")


def test_journal_parked_items_survive_sigkill_and_a_graceful_restart(start_daemon, tmp_path):
    status = f"127.0.0.1:{free_port()}"
    paused = config(tmp_path, {"paused": True}, workers=1, mode="journal", status=status)
    paused["shutdown_timeout"] = "1s"
    d1 = start_daemon(paused, name="first")
    c1 = d1.client()
    sub1 = c1.subscribe(sync=True)
    items = sleeps("j", 10, ms=1)
    assert c1.submit(items).accepted == 10
    ids = [i["id"] for i in items]
    sub1.wait(lambda s: all(QUEUED in [u.state for u in s.of(i)] for i in ids), 10, "QUEUED")
    wait_for(lambda: status_kinds(status)["sleep"]["parked"] == 10, 10, "10 parked")
    d1.kill_all()               # SIGKILL everything

    d2 = start_daemon(paused, name="second")
    d2.wait_log(r"journal: took over .*: 10 items queued again")
    wait_for(lambda: status_kinds(status)["sleep"]["parked"] == 10, 10, "10 parked again")
    # A graceful stop: paused items cannot finish; at the deadline the
    # journal keeps them for the next start.
    d2.send_signal(signal.SIGQUIT)
    assert d2.wait_exit(timeout=15) == 0

    d3 = start_daemon(paused, name="third")
    d3.wait_log(r"journal: took over .*: 10 items queued again")
    c3 = d3.client()
    sub3 = c3.subscribe(sync=True)
    wait_for(lambda: status_kinds(status)["sleep"]["parked"] == 10, 10, "10 parked, third")
    unpaused = config(tmp_path, {"concurrency": 1}, workers=1, mode="journal", status=status)
    unpaused["shutdown_timeout"] = "1s"
    reload(d3, unpaused)
    sub3.wait_final(ids, timeout=30)
    assert all(sub3.final[i].state == SUCCEEDED for i in ids)
    assert started_order(sub3, ids) == ids


def test_config_errors_name_the_key(start_daemon, tmp_path):
    import subprocess
    from conftest import BINARY
    cases = [
        ({"rate": "20"}, r"handlers\.sleep\.rate: .*no '/'"),
        ({"rate": "0/s"}, r"handlers\.sleep\.rate: .*count before '/' must be an integer"),
        ({"rate": "x/s"}, r"handlers\.sleep\.rate: .*count before '/' must be an integer"),
        ({"rate": "5/d"}, r"handlers\.sleep\.rate: .*unit after '/' must be s, m or h"),
        ({"rate": "1000001/s"}, r"handlers\.sleep\.rate: .*1\.\.1000000"),
        ({"concurrency": -1}, r"handlers\.sleep\.concurrency: must be an integer"),
        ({"concurrency": 1000001}, r"handlers\.sleep\.concurrency: must be an integer"),
        ({"paused": "maybe"}, r"handlers\.sleep\.paused"),
    ]
    d = start_daemon(config(tmp_path), start=False)
    for sleep, pattern in cases:
        d.write_config(config(tmp_path, sleep))
        r = subprocess.run([BINARY, "-t", "-c", str(d.config_path)], capture_output=True,
                           text=True, timeout=10)
        assert r.returncode != 0, sleep
        assert re.search(pattern, r.stderr), (sleep, r.stderr)
    d.write_config(config(tmp_path, {"rate": "6000/m", "concurrency": 4, "paused": True}))
    r = subprocess.run([BINARY, "-T", "-c", str(d.config_path)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0, r.stderr
    assert re.search(r"rate: 6000/m", r.stdout) and re.search(r"concurrency: 4", r.stdout)
    assert re.search(r"paused: on", r.stdout)


@pytest.mark.deadline(90)
def test_usr2_hands_parked_items_to_the_new_instance(start_daemon, monkeypatch, tmp_path):
    import os
    import shutil
    import conftest
    from conftest import kill_tree
    binary = tmp_path / "dosomethingd"
    shutil.copy(conftest.BINARY, binary)
    monkeypatch.setattr(conftest, "BINARY", str(binary))
    paused = config(tmp_path, {"paused": True}, workers=2)
    paused["shutdown_timeout"] = "2s"
    d = start_daemon(paused)
    old_master = d.master_pid
    old_sub = d.client().subscribe(sync=True, name="old")
    items = sleeps("h", 10, ms=1)
    ids = [i["id"] for i in items]
    assert d.client().submit(items).accepted == 10
    old_sub.wait(lambda s: all(s.of(i) for i in ids), 10, "QUEUED")
    new_master = None
    try:
        d.send_signal(signal.SIGUSR2)
        wait_for(lambda: d.read_pid_file() not in (None, old_master), 10,
                 "the new master's pid file")
        new_master = d.read_pid_file()
        d.known_pids.add(new_master)
        assert d.wait_exit(timeout=20) == 0, "the old master did not hand over and exit"
        d.wait_log(r"handover: 10 items handed over to the new instance")
        for i in ids:
            assert old_sub.of(i)[-1].state == RETRYING, (i, old_sub.states_of(i))
        new_client = conftest.Client(d.address)
        new_sub = new_client.subscribe(replay=True, after_seq=0, name="new")
        time.sleep(0.3)
        assert not (set(ids) & set(new_sub.final)), "a paused kind's item ran after the handover"
        unpaused = config(tmp_path, {"concurrency": 1}, workers=2)
        unpaused["shutdown_timeout"] = "2s"
        d.write_config(unpaused)
        os.kill(new_master, signal.SIGHUP)
        finals = new_sub.wait_final(ids, timeout=30)
        assert all(u.state == SUCCEEDED for u in finals.values())
        assert started_order(new_sub, ids) == ids
        new_client.close()
    finally:
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(90)
def test_cluster_limits_per_instance_and_parked_items_stay_leased(redis, start_daemon,
                                                                 tmp_path):
    from test_cluster import cluster_config, cluster_name, start_instance
    name = cluster_name()
    status = f"127.0.0.1:{free_port()}"

    def handlers(sleep):
        h = {"default": "echo", "echo": {"builtin": "echo"}, "sleep": {"builtin": "sleep"}}
        h["sleep"].update(sleep)
        return h
    paused = {"handlers": handlers({"paused": True}), "status": {"listen": status}}
    a = start_instance(start_daemon, redis, name, "a", workers=2, overrides=paused)
    sub = a.client().subscribe(sync=True)
    items = sleeps("cl", 6, ms=1)
    ids = [i["id"] for i in items]
    assert a.client().submit(items).accepted == 6
    wait_for(lambda: status_kinds(status)["sleep"]["parked"] == 6, 10, "6 parked on a")
    # b would take over any item a stopped renewing; a renews the parked
    # ones, so nothing runs while a keeps the kind paused.
    b = start_instance(start_daemon, redis, name, "b", workers=2,
                       overrides={"handlers": handlers({})})
    time.sleep(3)                               # 3 leases
    assert not [u for u in sub.snapshot() if u.item_id in set(ids) and u.state != QUEUED], \
        "a parked item was taken over or run"
    reload(a, cluster_config(redis, name, "1s", 2,
                             {"handlers": handlers({"concurrency": 1}),
                              "status": {"listen": status}}))
    finals = sub.wait_final(ids, timeout=30)
    assert all(u.state == SUCCEEDED and u.attempt == 1 for u in finals.values()), \
        {i: (u.state, u.attempt) for i, u in finals.items()}
    b_workers = set(b.worker_pids())      # b never reloads: its workers stay
    assert not [u.item_id for u in sub.snapshot()
                if u.item_id in set(ids) and u.state == STARTED and u.worker_pid in b_workers]
    assert most_at_once(sub, ids) == 1
