"""cancel: by ids and batches, with a reason, against the real binary.

Queued items leave at once; running ones are stopped through their worker
(built-in sleep checks a flag, exec gets SIGTERM then SIGKILL after
handlers.<kind>.cancel_grace, a module either checks host->cancelled or its
worker is killed). Every cancelled item gets exactly one final, CANCELLED,
and nothing else is disturbed.
"""
import http.client
import os
import signal
import time

import grpc
import pytest

from conftest import (SUCCEEDED, FAILED, built_test_modules, free_port, pb, pid_alive,
                      run_cli, wait_for)
from test_cluster import cluster_name, redis, start_instance  # noqa: F401 (redis: a fixture)

METHOD_CANCEL = "/com.agrounds.dosomething.v1.DoSomethingService/cancel"
CANCELLED = pb.CANCELLED if pb is not None else 8
FINALS = (SUCCEEDED, FAILED, CANCELLED)
LONG = {"ms": "60000", "steps": "600"}


@pytest.fixture(scope="session")
def cancel_modules():
    """The test module built plain (cannot be interrupted) and flagged
    DS_MODULE_CANCELLABLE (its sleep checks host->cancelled())."""
    for paths in built_test_modules("ok", "cancellable"):
        yield {"plain": paths["ok"], "cancellable": paths["cancellable"]}


def config(tmp_path, mode, workers=1, extra_handlers=None, status=None):
    handlers = {"default": "echo", "echo": {"builtin": "echo"}, "sleep": {"builtin": "sleep"}}
    handlers.update(extra_handlers or {})
    c = {"workers": {"count": workers}, "handlers": handlers}
    if mode == "journal":
        c["queue"] = {"journal": str(tmp_path / "journal")}
    if status is not None:
        c["status"] = {"listen": status}
    return c


def cancel(d, ids=(), batches=(), reason="", timeout=10):
    stub = d.client().stub
    return stub.cancel(pb.CancelRequest(item_ids=list(ids), batches=list(batches),
                                        reason=reason), timeout=timeout)


def cancel_raw(d, body, timeout=10):
    """A cancel call with BODY as the request's bytes (for what the Python
    protobuf would refuse to encode)."""
    method = d.client().channel.unary_unary(METHOD_CANCEL, request_serializer=lambda b: b,
                                            response_deserializer=pb.CancelReply.FromString)
    return method(body, timeout=timeout)


def finals_of(sub, item_id):
    return [u for u in sub.of(item_id) if u.state in FINALS]


def assert_one_final(sub, item_id, state):
    finals = finals_of(sub, item_id)
    assert [u.state for u in finals] == [state], \
        f"{item_id}: finals {[u.state for u in finals]}, went {sub.states_of(item_id)}"
    # Nothing after the final: a late PROGRESS or end of the cancelled attempt is dropped.
    assert sub.of(item_id)[-1].state == state, f"{item_id} went {sub.states_of(item_id)}"
    return finals[0]


def start_long(d, sub, item_id, kind="sleep", params=None, payload=b""):
    d.client().submit([{"id": item_id, "kind": kind, "params": params or LONG,
                        "payload": payload}])
    sub.wait_state(item_id, pb.STARTED, timeout=10)


@pytest.mark.parametrize("mode", ["memory", "journal"])
def test_cancel_queued_prefetched_and_running(start_daemon, tmp_path, mode):
    status = f"127.0.0.1:{free_port()}"
    d = start_daemon(config(tmp_path, mode, status=status))
    c = d.client()
    sub = c.subscribe(sync=True)
    worker = d.worker_pids()
    start_long(d, sub, "A")
    # B1 is prefetched by the one worker (prefetch 2), B2..B4 wait.
    c.submit([{"id": f"B{i}", "kind": "sleep", "params": {"ms": "20"}} for i in range(1, 5)])
    for i in range(1, 5):
        sub.wait_state(f"B{i}", pb.QUEUED)
    reply = cancel(d, ids=["B1", "B3", "nope"], reason="test reason \u00e9")
    assert reply.cancelled == 2 and list(reply.not_found) == ["nope"], reply
    for item_id in ("B1", "B3"):
        u = sub.wait_state(item_id, CANCELLED)
        assert u.error == "test reason \u00e9", u
    reply = cancel(d, ids=["A"])
    assert reply.cancelled == 1 and not reply.not_found, reply
    u = sub.wait_state("A", CANCELLED)
    assert "cancelled by a client" in u.error, u
    sub.wait_final(["B2", "B4"])
    for item_id in ("B2", "B4"):
        assert_one_final(sub, item_id, SUCCEEDED)
    for item_id in ("A", "B1", "B3"):
        assert_one_final(sub, item_id, CANCELLED)
    assert "B1" not in [u.item_id for u in sub.updates if u.state == pb.STARTED]
    assert d.worker_pids() == worker, "a built-in sleep is stopped without killing its worker"
    # A second cancel of a final item: already final (the index of known items),
    # counted once however often it is named.
    reply = cancel(d, ids=["A", "A", "B2"])
    assert (reply.cancelled, reply.already_final, list(reply.not_found)) == (0, 2, []), reply
    # /metrics counts them per kind.
    conn = http.client.HTTPConnection(*status.rsplit(":", 1), timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    assert 'items_cancelled_total{kind="sleep"} 3' in text, \
        [line for line in text.splitlines() if "cancel" in line]


@pytest.mark.parametrize("mode", ["memory", "journal"])
def test_cancel_by_batch(start_daemon, tmp_path, mode):
    d = start_daemon(config(tmp_path, mode))
    c = d.client()
    sub = c.subscribe(sync=True)
    start_long(d, sub, "run")
    c.submit([{"id": f"x{i}", "kind": "sleep", "params": {"ms": "10"}, "batch": "X"}
              for i in range(5)] +
             [{"id": f"y{i}", "kind": "sleep", "params": {"ms": "10"}, "batch": "Y"}
              for i in range(5)])
    for i in range(5):
        sub.wait_state(f"y{i}", pb.QUEUED)
    reply = cancel(d, batches=["X", "nobatch"], reason="batch X goes")
    assert reply.cancelled == 5 and not reply.not_found, reply
    for i in range(5):
        assert sub.wait_state(f"x{i}", CANCELLED).error == "batch X goes"
    cancel(d, ids=["run"])
    sub.wait_final([f"y{i}" for i in range(5)])
    for i in range(5):
        assert_one_final(sub, f"y{i}", SUCCEEDED)
        assert_one_final(sub, f"x{i}", CANCELLED)
    assert_one_final(sub, "run", CANCELLED)
    # Cancelling them again: all final (the index of known items), each counted
    # once even when also named by id.
    reply = cancel(d, ids=["x0", "y0"], batches=["X", "Y"])
    assert (reply.cancelled, reply.already_final, list(reply.not_found)) == (0, 10, []), reply


def pid_file_value(path):
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("mode", ["memory", "journal"])
@pytest.mark.parametrize("program", ["stubborn", "polite"])
def test_cancel_running_exec(start_daemon, tmp_path, mode, program):
    pidfile = tmp_path / "program.pid"
    # stubborn ignores SIGTERM (and its sleep inherits that): SIGKILL after
    # the grace; polite dies of SIGTERM.
    trap = "trap '' TERM; " if program == "stubborn" else ""
    script = f"echo $$ > {pidfile}; {trap}sleep 60; echo done"
    extra = {"prog": {"exec": ["sh", "-c", script], "cancel_grace": "300ms"}}
    d = start_daemon(config(tmp_path, mode, extra_handlers=extra))
    c = d.client()
    sub = c.subscribe(sync=True)
    worker = d.worker_pids()
    start_long(d, sub, "E", kind="prog", params={})
    wait_for(lambda: pid_file_value(pidfile) is not None, 10, "the program's pid file")
    program_pid = pid_file_value(pidfile)
    c.submit([{"id": "after", "kind": "echo", "payload": b"x"}])
    reply = cancel(d, ids=["E"], reason="stop it")
    assert reply.cancelled == 1, reply
    u = sub.wait_state("E", CANCELLED, timeout=10)
    assert u.error == "stop it", u
    assert not pid_alive(program_pid), f"{program} program {program_pid} still runs"
    sub.wait_final(["after"])
    assert_one_final(sub, "after", SUCCEEDED)
    assert_one_final(sub, "E", CANCELLED)
    assert d.worker_pids() == worker, "the worker stopped the program itself"


def test_cancel_running_module(start_daemon, tmp_path, cancel_modules):
    extra = {"canc": {"module": str(cancel_modules["cancellable"])},
             "plain": {"module": str(cancel_modules["plain"])}}
    d = start_daemon(config(tmp_path, "memory", extra_handlers=extra))
    c = d.client()
    sub = c.subscribe(sync=True)
    worker = d.worker_pids()
    # Cancellable: its process() sees host->cancelled() and returns; the worker stays.
    start_long(d, sub, "M1", kind="canc", params={"ms": "60000", "steps": "3000"})
    assert cancel(d, ids=["M1"]).cancelled == 1
    sub.wait_state("M1", CANCELLED, timeout=10)
    assert d.worker_pids() == worker
    # Not cancellable: its worker is killed and respawned; the item it had
    # prefetched runs elsewhere, on its first attempt.
    start_long(d, sub, "M2", kind="plain", params={"ms": "60000", "steps": "1"})
    c.submit([{"id": "behind", "kind": "plain", "params": {"ms": "10"}, "payload": b"p"}])
    sub.wait_state("behind", pb.QUEUED)
    assert cancel(d, ids=["M2"]).cancelled == 1
    sub.wait_state("M2", CANCELLED, timeout=15)
    sub.wait_final(["behind"], timeout=20)
    u = assert_one_final(sub, "behind", SUCCEEDED)
    assert b"attempt=1" in u.result, u.result
    assert_one_final(sub, "M2", CANCELLED)
    assert_one_final(sub, "M1", CANCELLED)
    wait_for(lambda: len(d.worker_pids()) == 1 and d.worker_pids() != worker, 10,
             "the killed worker's replacement")


@pytest.fixture
def quick_cancel_module():
    """The test module flagged DS_MODULE_QUICK and DS_MODULE_CANCELLABLE."""
    for paths in built_test_modules("quick_cancel"):
        yield paths["quick_cancel"]


def quick_item_started(start_daemon, tmp_path, module, request, mode):
    """A daemon of one worker in MODE, a subscriber, and the quick module's
    item Q running (its STARTED waiting in the worker's batch). Steps of
    1 s: the module looks at a cancel after the first, before any PROGRESS
    (which would flush the STARTED)."""
    mark = tmp_path / "mark"
    extra = {"qc": {"module": str(module)}}
    if mode == "cluster":
        d = start_instance(start_daemon, request.getfixturevalue("redis"), cluster_name(),
                           "inst", workers=1, overrides={"handlers": {
                               "default": "echo", "echo": {"builtin": "echo"}, **extra}})
    else:
        d = start_daemon(config(tmp_path, mode, extra_handlers=extra))
    sub = d.client().subscribe(sync=True)
    assert d.client().submit([{"id": "Q", "kind": "qc", "params": {
        "ms": "60000", "steps": "60", "mark": str(mark)}}]).accepted == 1
    wait_for(mark.exists, 10, "the module to start Q")
    return d, sub


@pytest.mark.parametrize("mode", ["memory", "journal", "cluster"])
def test_cancel_of_a_started_quick_item_keeps_its_started(start_daemon, tmp_path,
                                                         quick_cancel_module, request, mode):
    """A quick item's STARTED waits in its worker's batch until its end: it
    reaches the grpc process after the cancel, with the CANCELLED. The item
    did start: QUEUED, STARTED, CANCELLED (the STARTED was dropped)."""
    d, sub = quick_item_started(start_daemon, tmp_path, quick_cancel_module, request, mode)
    assert cancel(d, ids=["Q"]).cancelled == 1
    sub.wait_state("Q", CANCELLED, timeout=10)
    assert_one_final(sub, "Q", CANCELLED)
    assert sub.states_of("Q") == ["QUEUED", "STARTED", "CANCELLED"], sub.of("Q")


@pytest.mark.parametrize("mode", ["memory", "journal", "cluster"])
def test_a_worker_killed_under_a_started_quick_item_keeps_its_started(
        start_daemon, tmp_path, quick_cancel_module, request, mode):
    """The same STARTED, waiting in its worker's batch, when the worker is
    killed (no cancel, no stop): the master says it was running the item,
    so the item did start: QUEUED, STARTED, RETRYING (the STARTED was
    lost with the worker: QUEUED, RETRYING), then its next attempt."""
    d, sub = quick_item_started(start_daemon, tmp_path, quick_cancel_module, request, mode)
    os.kill(d.worker_pids()[0], signal.SIGKILL)
    sub.wait_state("Q", pb.RETRYING, timeout=10)
    assert sub.states_of("Q")[:3] == ["QUEUED", "STARTED", "RETRYING"], sub.of("Q")
    assert cancel(d, ids=["Q"]).cancelled == 1     # its next attempt: not waited for
    sub.wait_state("Q", pb.CANCELLED, timeout=10)


def test_cancel_unanswered_kills_the_worker(start_daemon, tmp_path, cancel_modules):
    """A handler that says it can be cancelled but does not look in time:
    the grpc process kills its worker cancel_grace + 2 s after asking, and
    the item is CANCELLED, not retried; the item behind it runs."""
    extra = {"deaf": {"module": str(cancel_modules["cancellable"]), "cancel_grace": "0s"}}
    d = start_daemon(config(tmp_path, "memory", extra_handlers=extra))
    c = d.client()
    sub = c.subscribe(sync=True)
    worker = d.worker_pids()
    # One step of 60 s: it looks at host->cancelled() only after it.
    start_long(d, sub, "D", kind="deaf", params={"ms": "60000", "steps": "1"})
    c.submit([{"id": "behind", "kind": "echo", "payload": b"b"}])
    assert cancel(d, ids=["D"], reason="deaf").cancelled == 1
    u = sub.wait_state("D", CANCELLED, timeout=15)
    assert u.error == "deaf", u
    sub.wait_final(["behind"], timeout=20)
    assert_one_final(sub, "behind", SUCCEEDED)
    assert_one_final(sub, "D", CANCELLED)
    assert not [x for x in sub.of("D") if x.state == pb.RETRYING], sub.states_of("D")
    wait_for(lambda: len(d.worker_pids()) == 1 and d.worker_pids() != worker, 10,
             "the killed worker's replacement")
    d.wait_log("did not stop a cancelled item", timeout=5)


def test_cancel_journal_restart_does_not_rerun(start_daemon, tmp_path):
    d = start_daemon(config(tmp_path, "journal"))
    c = d.client()
    sub = c.subscribe(sync=True)
    start_long(d, sub, "first", params={"ms": "1500"})
    c.submit([{"id": "gone", "kind": "sleep", "params": {"ms": "10"}},
               {"id": "kept", "kind": "sleep", "params": {"ms": "10"}},
               {"id": "gone2", "kind": "sleep", "params": {"ms": "10"}}])
    sub.wait_state("gone2", pb.QUEUED)
    assert cancel(d, ids=["gone", "gone2"]).cancelled == 2
    sub.wait_state("gone", CANCELLED)
    sub.wait_state("gone2", CANCELLED)
    time.sleep(0.2)         # the FINAL records' group commit (50 ms)
    d.kill_all()
    d = start_daemon(config(tmp_path, "journal"), name="again")     # the same journal
    c = d.client()
    sub = c.subscribe(sync=True)
    # "first" and "kept" run again from the journal; the cancelled ones never.
    sub.wait_final(["first", "kept"], timeout=30)
    c.sync(sub)
    assert not sub.of("gone") and not sub.of("gone2"), \
        (sub.states_of("gone"), sub.states_of("gone2"))


def test_cancel_unknown_and_invalid(start_daemon, tmp_path):
    d = start_daemon(config(tmp_path, "memory"))
    reply = cancel(d, ids=["a", "b", "a"])
    assert reply.cancelled == 0 and list(reply.not_found) == ["a", "b", "a"], reply
    reply = cancel(d, batches=["none"])
    assert reply.cancelled == 0 and not reply.not_found, reply

    def code_of(call):
        with pytest.raises(grpc.RpcError) as e:
            call()
        return e.value.code(), e.value.details()

    # reason = b"\xff\xfe" (field 3) and item_ids = ["x"] (field 1): not UTF-8.
    code, details = code_of(lambda: cancel_raw(d, b"\x0a\x01x\x1a\x02\xff\xfe"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "reason" in details, details
    code, details = code_of(lambda: cancel_raw(d, b"\x0a\x02\xc3\x28"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "item_ids[0]" in details, details
    code, details = code_of(lambda: cancel_raw(d, b"\x12\x01\xff"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "batches[0]" in details, details
    code, details = code_of(lambda: cancel_raw(d, b"\xff\xff\xff"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "CancelRequest" in details, details
    code, details = code_of(lambda: cancel(d))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nothing to cancel" in details, details
    code, details = code_of(lambda: cancel(d, ids=["x"], reason="r" * 1025))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "reason" in details, details
    assert cancel(d, ids=["x"], reason="r" * 1024).not_found == ["x"]
    code, details = code_of(lambda: cancel(d, ids=[f"i{n}" for n in range(10001)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "item_ids" in details, details
    assert len(cancel(d, ids=[f"i{n}" for n in range(10000)]).not_found) == 10000
    code, details = code_of(lambda: cancel(d, ids=["x" * 257]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "item_ids[0]" in details, details
    code, details = code_of(lambda: cancel(d, batches=[""]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "batches[0]" in details, details
    # The daemon still serves.
    reply, sub = d.client().run_items([{"id": "ok", "payload": b"1"}])
    assert sub.final["ok"].state == SUCCEEDED


@pytest.mark.parametrize("value,error", [
    ("11m", "handlers.sleep.cancel_grace: must be 0s..10m, got 11m"),
    ("-1s", "handlers.sleep.cancel_grace"),
    ("soon", "handlers.sleep.cancel_grace"),
    ([1], "handlers.sleep.cancel_grace"),
])
def test_cancel_grace_checked(make_daemon, tmp_path, value, error):
    d = make_daemon({"handlers": {"default": "sleep",
                                  "sleep": {"builtin": "sleep", "cancel_grace": value}}})
    r = run_cli("-t", "-c", str(d.config_path))
    assert r.returncode != 0 and error in r.stderr, (r.returncode, r.stderr)
    assert f"{d.config_path}:" in r.stderr, r.stderr


def test_cancel_pending_at_graceful_stop_deadline(start_daemon, tmp_path):
    """A cancel still being carried out when a graceful stop's deadline comes:
    the item ends CANCELLED (not RETRYING to run at the next start)."""
    script = "trap '' TERM; sleep 60"
    extra = {"prog": {"exec": ["sh", "-c", script], "cancel_grace": "60s"}}
    c = config(tmp_path, "journal", extra_handlers=extra)
    c["shutdown_timeout"] = "1s"
    d = start_daemon(c)
    sub = d.client().subscribe(sync=True)
    start_long(d, sub, "S", kind="prog", params={})
    assert cancel(d, ids=["S"], reason="bye").cancelled == 1
    d.send_signal(signal.SIGQUIT)
    u = sub.wait_state("S", CANCELLED, timeout=15)
    assert u.error == "bye", u
    assert_one_final(sub, "S", CANCELLED)
    d.wait_exit()
    d2 = start_daemon(config(tmp_path, "journal", extra_handlers=extra), name="again")
    sub = d2.client().subscribe(sync=True)
    d2.client().sync(sub)
    assert not sub.of("S"), sub.states_of("S")


def test_cancel_in_cluster_mode_is_served(redis, start_daemon):
    """Cluster mode answers through Redis (test_cluster_items.py has the
    cross-instance cases): an unknown id is not_found."""
    d = start_instance(start_daemon, redis, cluster_name(), "inst", workers=1)
    reply = cancel(d, ids=["x"])
    assert (reply.cancelled, reply.already_final, list(reply.not_found)) == (0, 0, ["x"])
