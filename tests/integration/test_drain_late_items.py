"""
Items that reach a draining instance late: a graceful stop (QUIT) or a
binary upgrade (USR2) reads the submit calls under way to their end, and an
item accepted after the drain began must still run at once, not wait for
shutdown_timeout.

Before, a drain released its idle workers as soon as nothing waited in the
queue (with USR2: as soon as the handover's first look found nothing to
send), although a submit call under way (or, in cluster mode, a pull from
Redis still in flight) could still bring items: those waited, workerless,
until shutdown_timeout, to be FAILED there (memory), kept in the journal for
the next start (queue.journal) or handed back to Redis (cluster), while the
drain, which also waits for the call, lasted that long.

Here every test sets shutdown_timeout to 60 s and bounds every wait far
below it: each late item reaches its final, the old instance exits, and its
log shows that the deadline was never reached.
"""
import queue
import shutil
import signal
import time

import grpc
import pytest

import conftest
from conftest import FINAL_STATES, RETRYING, STARTED, SUCCEEDED, kill_tree, wait_for
from test_cluster import (cluster_config, cluster_name, redis, stream_updates,  # noqa: F401
                          wait_serving)

SHUTDOWN_TIMEOUT = "60s"
BOUND_S = 20            # every wait for what the fix makes prompt; far below 60 s


class SlowSubmit:
    """One doSomething call whose items the test sends one at a time; the
    call half-closes on close()."""

    def __init__(self, address):
        self.channel = grpc.insecure_channel(address, options=conftest.CHANNEL_OPTIONS)
        self.items = queue.Queue()
        stub = conftest.pb_grpc.DoSomethingServiceStub(self.channel)
        self.future = stub.doSomething.future(self._stream(), timeout=90)

    def _stream(self):
        while True:
            item = self.items.get()
            if item is None:
                return
            yield conftest.work_item(item)

    def send(self, item):
        self.items.put(item)

    def close(self):
        self.items.put(None)

    def reply(self, timeout=BOUND_S):
        return self.future.result(timeout=timeout)

    def cancel(self):
        self.items.put(None)
        self.future.cancel()
        self.channel.close()


def echo(item_id):
    return {"id": item_id, "kind": "echo", "payload": item_id.encode()}


def sleeper(item_id, ms=700):
    return {"id": item_id, "kind": "sleep", "params": {"ms": str(ms)}}


def copied_binary(tmp_path, monkeypatch):
    """A copy of the binary for a USR2 upgrade to exec again."""
    binary = tmp_path / "dosomethingd"
    shutil.copy(conftest.BINARY, binary)
    monkeypatch.setattr(conftest, "BINARY", str(binary))


def assert_no_deadline(d):
    log = d.log_text()
    assert "reached with" not in log, f"the drain reached shutdown_timeout:\n{d.log_tail()}"
    assert "back to the other instances" not in log, f"a hand-back at the deadline:\n{log}"


def config_for(mode, tmp_path):
    config = {"workers": {"count": 2}, "shutdown_timeout": SHUTDOWN_TIMEOUT}
    if mode == "journal":
        config["queue"] = {"journal": str(tmp_path / "journal")}
    return config


@pytest.mark.deadline(90)
@pytest.mark.parametrize("mode", ["memory", "journal"])
def test_quit_runs_an_item_a_call_under_way_sends_after_the_drain_began(start_daemon, tmp_path,
                                                                         mode):
    """QUIT with a call open: its item sent a second later runs on the
    draining instance's workers at once (they were released when the
    queue ran empty)."""
    d = start_daemon(config_for(mode, tmp_path))
    sub = d.client().subscribe(sync=True, name="sub")
    call = SlowSubmit(d.address)
    try:
        # An item runs when QUIT comes: its end leaves the queue empty,
        # which released every idle worker.
        call.send(sleeper("q0"))
        sub.wait_state("q0", STARTED, timeout=BOUND_S)
        d.send_signal(signal.SIGQUIT)
        d.wait_log(r"graceful stop: \d+ items to finish")
        sub.wait_final(["q0"], timeout=BOUND_S)
        time.sleep(0.5)
        call.send(echo("q1"))
        call.close()
        reply = call.reply()
        assert (reply.accepted, reply.rejected) == (2, 0), reply
        final = sub.wait_final(["q1"], timeout=BOUND_S)["q1"]
        assert final.state == SUCCEEDED, (final.state, final.error, d.log_tail())
        assert d.wait_exit(timeout=BOUND_S) == 0, d.log_tail()
        sub.wait_end(timeout=BOUND_S)
        assert sub.error is None, f"the subscriber {sub.describe_end()}"
        assert_no_deadline(d)
    finally:
        call.cancel()


@pytest.mark.deadline(120)
@pytest.mark.parametrize("mode", ["memory", "journal"])
def test_usr2_an_item_sent_after_the_handover_looked_is_not_kept_waiting(
        start_daemon, monkeypatch, tmp_path, mode):
    """USR2 with a call open: the handover finds nothing waiting; the call's
    next item runs at once, here or on the new instance, and the old
    instance exits long before shutdown_timeout."""
    copied_binary(tmp_path, monkeypatch)
    d = start_daemon(config_for(mode, tmp_path))
    old_master = d.master_pid
    sub = d.client().subscribe(sync=True, name="old")
    call = SlowSubmit(d.address)
    new_master = None
    try:
        call.send(echo("u0"))
        sub.wait_final(["u0"], timeout=BOUND_S)
        d.send_signal(signal.SIGUSR2)
        wait_for(lambda: d.read_pid_file() not in (None, old_master), 15,
                 "the new master's pid file")
        new_master = d.read_pid_file()
        d.known_pids.add(new_master)
        d.wait_log(r"handover: handing \d+ waiting items", timeout=BOUND_S)
        time.sleep(1.0)     # the handover's first look is over
        call.send(echo("u1"))
        call.close()
        reply = call.reply()
        assert (reply.accepted, reply.rejected) == (2, 0), reply
        assert d.wait_exit(timeout=BOUND_S) == 0, \
            f"the old master did not exit well before shutdown_timeout:\n{d.log_tail()}"
        assert_no_deadline(d)
        sub.wait_end(timeout=BOUND_S)
        assert sub.error is None, f"the old instance's subscriber {sub.describe_end()}"
        last = sub.of("u1")[-1] if sub.of("u1") else None
        assert last is not None, "u1 has no update on the old instance"
        if last.state == RETRYING:
            # Handed over: its final comes from the new instance.
            assert "handed over" in last.error, last.error
            new_client = conftest.Client(d.address)
            try:
                new_sub = new_client.subscribe(replay=True, after_seq=0,
                                               states=list(FINAL_STATES), name="new")
                final = new_sub.wait_final(["u1"], timeout=BOUND_S)["u1"]
            finally:
                new_client.close()
        else:
            final = last
        assert final.state == SUCCEEDED, (final.state, final.error)
    finally:
        call.cancel()
        if new_master is not None:
            kill_tree(new_master)


def succeeded_in_redis(redis, name, ids):  # noqa: F811 - the fixture imported above
    done = {}
    for _, item_id, state in stream_updates(redis, name):
        if item_id in ids and state == SUCCEEDED:
            done[item_id] = done.get(item_id, 0) + 1
    return done


@pytest.mark.deadline(150)
def test_cluster_usr2_an_item_the_old_instance_pulls_late_is_not_kept_waiting(
        redis, start_daemon, monkeypatch, tmp_path):  # noqa: F811
    """A cluster instance's XREADGROUP blocked when QUIT comes (the
    upgrade's drain) still takes what is accepted meanwhile, its own
    accepts of a call under way included: that item runs at once (here, or
    handed over), and is not handed back to Redis at the deadline."""
    copied_binary(tmp_path, monkeypatch)
    name = cluster_name()
    d = start_daemon(cluster_config(redis, name, overrides={
        "shutdown_timeout": SHUTDOWN_TIMEOUT}), name="a")
    wait_serving(d)
    old_master = d.master_pid
    call = SlowSubmit(d.address)
    new_master = None
    ids = []
    try:
        call.send(echo("c0"))
        ids.append("c0")
        wait_for(lambda: succeeded_in_redis(redis, name, {"c0"}), BOUND_S, "c0's SUCCEEDED")
        d.send_signal(signal.SIGUSR2)
        wait_for(lambda: d.read_pid_file() not in (None, old_master), 15,
                 "the new master's pid file")
        new_master = d.read_pid_file()
        d.known_pids.add(new_master)
        d.wait_log(r"handover: handing \d+ waiting items", timeout=BOUND_S)
        # Over the next second and a half (the old instance's XREADGROUP
        # blocks for one second at most, and is not sent again in a
        # drain), one item every 100 ms: one of them is taken by it.
        for n in range(1, 16):
            call.send(echo(f"c{n}"))
            ids.append(f"c{n}")
            time.sleep(0.1)
        call.close()
        reply = call.reply()
        assert (reply.accepted, reply.rejected) == (len(ids), 0), reply
        assert d.wait_exit(timeout=BOUND_S) == 0, \
            f"the old master did not exit well before shutdown_timeout:\n{d.log_tail()}"
        assert_no_deadline(d)
        try:
            wait_for(lambda: len(succeeded_in_redis(redis, name, set(ids))) == len(ids),
                     BOUND_S, "every accepted item's SUCCEEDED")
        except AssertionError:
            missing = set(ids) - set(succeeded_in_redis(redis, name, set(ids)))
            raise AssertionError(f"{len(missing)} accepted items have no final: "
                                 f"{sorted(missing)}") from None
    finally:
        call.cancel()
        if new_master is not None:
            kill_tree(new_master)
