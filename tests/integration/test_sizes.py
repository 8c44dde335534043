"""
Sizes and limits that outlive the config that set them (issue 14, points 3,
18 and 22).

- No Update is larger than a stock gRPC client accepts (4 MiB, grpc's
  default max receive message size): a result over handlers.max_result_size
  makes the item FAILED with the reason, whatever grpc.max_message_size
  accepted; a subscriber with grpcio's default limits sees every update
  live and on replay. The bound is validated, shown by -T, and reloaded.
- Items keep the limits they were accepted under: a reload to a smaller
  grpc.max_message_size with larger items queued runs them all, without
  worker respawns.
- A cluster whose Redis lost its data tells a resuming subscriber so,
  instead of blaming updates.history.
- The sleep builtin keeps time with many steps.
"""
import re
import signal
import uuid

import grpc

import conftest
from conftest import (FAILED, STARTED, SUCCEEDED, pb, pb_grpc, run_cli, state_name, wait_for)
from test_cluster import cluster_config, cluster_name, redis, wait_serving  # noqa: F401

STOCK_LIMIT = 4 * 1024 * 1024           # grpc's default max receive message size
RESULT_MAX_DEFAULT = STOCK_LIMIT - 64 * 1024


def stock_subscribe(d, replay=False, after_seq=0, name="stock"):
    """getUpdates on a channel with grpcio's default limits (conftest's
    Client lifts the receive limit)."""
    ch = grpc.insecure_channel(d.address)
    stub = pb_grpc.DoSomethingServiceStub(ch)
    call = stub.getUpdates(pb.UpdatesRequest(replay=replay, after_seq=after_seq))
    sub = conftest.Subscription(call, name=name)
    return ch, sub


def test_results_never_exceed_what_a_stock_client_accepts(start_daemon):
    # Items up to 8 MiB are accepted: their echo results are not all sendable.
    d = start_daemon({"grpc": {"max_message_size": "8MiB"}, "workers": {"count": 1}})
    c = d.client()
    ch, stock = stock_subscribe(d)
    try:
        c.sync(stock)
        at = RESULT_MAX_DEFAULT
        items = [{"id": "at-bound", "payload": b"a" * at},
                 {"id": "over-bound", "payload": b"b" * (at + 1)},
                 {"id": "just-under-message", "payload": b"c" * (8 * 1024 * 1024 - 1024)},
                 {"id": "small", "payload": b"d"}]
        reply = c.submit(items)
        assert (reply.accepted, reply.rejected) == (4, 0), reply
        finals = stock.wait_final([i["id"] for i in items], timeout=30)
        assert state_name(finals["at-bound"].state) == "SUCCEEDED", finals["at-bound"].error
        assert len(finals["at-bound"].result) == at
        assert finals["at-bound"].ByteSize() <= STOCK_LIMIT
        for item_id, size in (("over-bound", at + 1), ("just-under-message", 8 * 1024 * 1024 - 1024)):
            f = finals[item_id]
            assert state_name(f.state) == "FAILED", f"{item_id}: {state_name(f.state)}"
            assert f.result == b""
            assert f.error == (f"result of {size} bytes exceeds handlers.max_result_size "
                               f"({RESULT_MAX_DEFAULT})"), f.error
        assert state_name(finals["small"].state) == "SUCCEEDED"
        assert not stock.done, f"stock subscriber: {stock.describe_end()}"

        # Replay everything to a stock client: no update is too large either.
        ch2, replay = stock_subscribe(d, replay=True, after_seq=0, name="replay")
        try:
            last = stock.last_seq()
            replay.wait(lambda s: s.last_seq() >= last, 30, f"replay up to seq {last}")
            assert not replay.done, f"replay: {replay.describe_end()}"
            got = {u.seq: (u.state, u.item_id, len(u.result)) for u in replay.snapshot()
                   if u.seq <= last}
            want = {u.seq: (u.state, u.item_id, len(u.result)) for u in stock.snapshot()}
            assert {s: v for s, v in got.items() if s in want} == want
        finally:
            replay.cancel()
            ch2.close()
    finally:
        stock.cancel()
        ch.close()


def test_max_result_size_is_validated_shown_and_reloaded(start_daemon, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("handlers:\n  echo: {builtin: echo}\n  max_result_size: 4MiB\n")
    r = run_cli("-t", "-c", str(bad))
    assert r.returncode != 0
    assert re.search(rf"{re.escape(str(bad))}:3:20: handlers\.max_result_size: .*4MiB",
                     r.stderr), r.stderr

    d = start_daemon({"handlers": {"echo": {"builtin": "echo"}, "max_result_size": "1KiB"}})
    r = run_cli("-T", "-c", str(d.config_path))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^handlers:\n(  .*\n)*  max_result_size: 1KiB$", r.stdout, re.M), r.stdout

    c = d.client()
    _, sub = c.run_items([{"id": "big-1", "payload": b"x" * 2000}])
    f = sub.final["big-1"]
    assert state_name(f.state) == "FAILED"
    assert f.error == "result of 2000 bytes exceeds handlers.max_result_size (1024)", f.error

    d.write_config({"handlers": {"echo": {"builtin": "echo"}, "max_result_size": "8KiB"}})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 2")
    # Workers of the old generation may still be finishing: wait for new ones.
    wait_for(lambda: len(d.worker_pids()) == d.worker_count_configured, 10, "new workers")
    _, sub = c.run_items([{"id": "big-2", "payload": b"x" * 2000}])
    f = sub.final["big-2"]
    assert state_name(f.state) == "SUCCEEDED", f.error
    assert len(f.result) == 2000


def test_reload_to_smaller_messages_keeps_queued_items(start_daemon):
    d = start_daemon({"grpc": {"max_message_size": "8MiB"}, "workers": {"count": 1}})
    c = d.client()
    sub = c.subscribe(sync=True)
    items = [{"id": f"big-{n}", "kind": "sleep", "params": {"ms": "200"},
              "payload": bytes([n]) * (3 * 1024 * 1024)} for n in range(6)]
    reply = c.submit(items)
    assert (reply.accepted, reply.rejected) == (6, 0), reply
    sub.wait_state("big-0", STARTED, timeout=10)
    exits_before = d.log_text().count("exited")

    d.write_config({"grpc": {"max_message_size": "1MiB"}, "workers": {"count": 1}})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 2")

    finals = sub.wait_final([i["id"] for i in items], timeout=40)
    states = {i: state_name(f.state) for i, f in finals.items()}
    assert set(states.values()) == {"SUCCEEDED"}, states
    pids = {u.worker_pid for i in finals for u in sub.of(i) if u.worker_pid}
    # The old generation's worker and at most one new one, not a respawn loop.
    assert len(pids) <= 2, f"items ran on {len(pids)} worker processes"
    respawns = d.log_text().count("respawning")
    assert respawns == 0, f"{respawns} respawns; log:\n{d.log_tail()}"
    assert d.log_text().count("exited") - exits_before <= 2
    # New items obey the new limit.
    reply = c.submit([{"id": "too-big", "payload": b"z" * (1536 * 1024)}])
    assert (reply.accepted, reply.rejected) == (0, 1), \
        f"a 1.5 MiB item under max_message_size 1MiB: {reply}"
    assert "over grpc.max_message_size (1048576)" in reply.rejections[0].reason, reply


def test_cluster_resume_after_redis_lost_its_data_names_the_cause(start_daemon, redis):
    name = cluster_name()
    d = wait_serving(start_daemon(cluster_config(redis, name, workers=1)))
    c = d.client()
    sub = c.subscribe(sync=True)
    c.run_items([{"id": f"before-{n}", "payload": b"x"} for n in range(3)])
    wait_for(lambda: all(i in sub.final for i in ("before-0", "before-1", "before-2")), 10,
             "finals before the flush")
    seen = sub.last_seq()

    assert redis.command("FLUSHALL") == "OK"
    # Updates after the flush start past a gap: the live subscriber is cut.
    c.submit_retrying([{"id": f"after-{n}", "payload": b"y"} for n in range(3)])
    err = sub.wait_end(timeout=15)
    assert err is not None and "cluster's update stream" in err.details(), sub.describe_end()

    resume = c.subscribe(replay=True, after_seq=seen, name="resume")
    err = resume.wait_end(timeout=10)
    assert err is not None and err.code() == grpc.StatusCode.OUT_OF_RANGE, \
        resume.describe_end()
    assert "updates.history" not in err.details(), err.details()
    assert "cluster's update stream" in err.details(), err.details()
    assert f"after seq {seen}" in err.details(), err.details()


def test_sleep_with_many_steps_keeps_time(start_daemon):
    d = start_daemon({"workers": {"count": 1}})
    c = d.client()
    item_id = f"sleepy-{uuid.uuid4().hex[:6]}"
    _, sub = c.run_items([{"id": item_id, "kind": "sleep",
                           "params": {"ms": "1000", "steps": "100000"}}], timeout=30)
    ups = sub.of(item_id)
    started = [u for u in ups if u.state == STARTED]
    final = sub.final[item_id]
    assert final.state == SUCCEEDED, final.error
    assert len(started) == 1
    elapsed_ms = (final.time_unix_nano - started[0].time_unix_nano) / 1e6
    # A behaviour check with a 2x margin: 100000 steps must not add up to
    # several times the requested time (they took 12 s). No lower bound:
    # both times are the grpc process's, when it published each update.
    assert elapsed_ms < 2000, f"sleep ms=1000 steps=100000 took {elapsed_ms:.0f} ms"
    progress = [u for u in ups if state_name(u.state) == "PROGRESS"]
    assert 0 < len(progress) < 1000, f"{len(progress)} PROGRESS updates"
    assert FAILED not in {u.state for u in ups}
