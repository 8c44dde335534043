"""
Cluster mode (`cluster:` in dosomething.yaml): instances with the same
cluster.name share one queue and one update log in Redis Streams.

Every test here has its own redis-server (Debian's, in the test's directory,
no persistence, killed at teardown) and its own cluster name, and starts its
instances with conftest's start_daemon. What is checked:

- items submitted to either instance run exactly once, on the workers of
  both instances, and `{NAME}:work` is empty once they are final;
- a subscriber on one instance sees the updates of items submitted to and
  run by another, with the same seqs and the same updates as there;
- the items of an instance SIGKILLed with all its processes are claimed by
  the other after `lease`, RETRYING naming the lost consumer, and finish
  there; none is lost or run twice;
- replay with after_seq on another instance than the one that saw the
  updates live returns exactly the same updates (and `{NAME}:updates` agrees);
- Redis down: doSomething fails UNAVAILABLE and health says NOT_SERVING;
  Redis back: the instance serves again, and seq does not go back;
- config errors (cluster with queue.journal, bad redis URLs, a bad lease);
- nginx in front of two cluster instances.

redis-server comes from Debian's `redis-server` package (`make deps` installs
it); the tests are skipped if it is missing. The tests speak RESP over a
plain socket: no Python redis client is needed.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

import grpc
import pytest

import conftest
from conftest import (FAILED, NOT_SERVING, RETRYING, SERVING, STARTED, SUCCEEDED, deep_merge,
                      free_port, http_get, missing_dependency, pid_alive, run_cli, state_name,
                      wait_for)

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_START_TIMEOUT = 10
LEASE = "1s"
LEASE_MS = 1000
SERVE_TIMEOUT = 10          # seconds for a started instance to serve (Redis connected)



# --------------------------------------------------------------------------
# Redis: the server under the test, and just enough RESP to talk to it
# --------------------------------------------------------------------------

class RedisError(Exception):
    pass


def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _resp_read(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError(f"short RESP reply {line!r}")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("short RESP bulk string")
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise ConnectionError(f"unknown RESP reply {line!r}")


class Redis:
    """One redis-server on 127.0.0.1 in `directory`, in the foreground, as
    a child of the test; start() again after kill() comes back on the same
    port (with an empty data set: nothing is saved)."""

    def __init__(self, binary, directory):
        self.binary = binary
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = None
        self.proc = None
        self.log_path = self.dir / "redis.log"
        self.extra_args = []        # more redis-server arguments (e.g. --replicaof H P)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self):
        assert self.proc is None or self.proc.poll() is not None, "redis-server already running"
        # A fresh port can be taken by someone else between free_port() and
        # the bind: then try another. A restart comes back on its port.
        fresh = self.port is None
        for attempt in range(3 if fresh else 1):
            if fresh:
                self.port = free_port()
            argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                    "--daemonize", "no", "--logfile", str(self.log_path)] + self.extra_args
            with open(self.dir / "redis.stderr", "ab") as err:
                self.proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL,
                                             stdout=err, stderr=err)
            try:
                wait_for(self._answers, REDIS_START_TIMEOUT,
                         f"redis-server answering PING on 127.0.0.1:{self.port}", interval=0.05)
                return self
            except _RedisExited:
                pass
            except AssertionError as e:
                self.kill()
                raise AssertionError(f"{e}; log:\n{self.log_tail()}") from None
        raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n"
                             f"{self.log_tail()}")

    def _answers(self):
        if self.proc.poll() is not None:
            raise _RedisExited()
        try:
            return self.command("PING", timeout=0.5) == "PONG"
        except (OSError, ConnectionError, RedisError):
            return False

    def command(self, *args, timeout=2):
        """One command on a connection of its own; the decoded reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(_resp_encode(args))
            with s.makefile("rb") as f:
                return _resp_read(f)

    def kill(self):
        """SIGKILL and reap it (a crash: connections are reset, nothing saved)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_tail(self, lines=20):
        out = []
        for p in (self.dir / "redis.stderr", self.log_path):
            if p.exists():
                out += p.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)


class _RedisExited(Exception):
    pass


def redis_binary():
    if os.access(REDIS_SERVER, os.X_OK):
        return REDIS_SERVER
    return shutil.which("redis-server")


@pytest.fixture
def redis(tmp_path):
    """A started Redis for this test; SIGKILLed at teardown."""
    binary = redis_binary()
    if binary is None:
        # `make test` installs it (deps-test): this only skips a bare pytest run
        missing_dependency(f"{REDIS_SERVER} is not installed (Debian package redis-server, "
                           f"which `make test` installs)")
    r = Redis(binary, tmp_path / "redis")
    try:
        r.start()
        yield r
    finally:
        r.kill()


# --------------------------------------------------------------------------
# instances
# --------------------------------------------------------------------------

def cluster_name():
    return f"t-{uuid.uuid4().hex[:12]}"


def cluster_config(redis, name, lease=LEASE, workers=2, overrides=None):
    return deep_merge({"cluster": {"redis": redis.url, "name": name, "lease": lease},
                       "workers": {"count": workers}}, overrides)


def wait_serving(d, timeout=SERVE_TIMEOUT):
    """Until the instance accepts an item (it answers UNAVAILABLE until its
    Redis connection is up and the update stream read)."""
    probe = f"{conftest.PROBE_PREFIX}serving-{uuid.uuid4().hex[:8]}"
    c = d.client()
    try:
        reply = c.submit_retrying([{"id": probe, "kind": "echo", "payload": b"probe"}],
                                  timeout=timeout)
    except grpc.RpcError as e:
        raise AssertionError(f"{d.name} not serving after {timeout} s: {e.code()}: "
                             f"{e.details()}; log:\n{d.log_tail()}") from None
    assert (reply.accepted, reply.rejected) == (1, 0), f"{d.name}: probe not accepted: {reply}"
    return d


def start_instance(start_daemon, redis, name, instance, workers=2, lease=LEASE, overrides=None):
    d = start_daemon(cluster_config(redis, name, lease, workers, overrides), name=instance)
    return wait_serving(d)


def kill_everything(d):
    """SIGKILL the whole daemon: the grpc process first (so it gets no
    SIGTERM from a dying parent), the master, the workers."""
    pids = [d.grpc_pid(), d.master_pid] + d.worker_pids() + d.children()["other"]
    pids = [p for p in pids if p is not None]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    d.proc.wait(timeout=5)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, f"every process of {d.name} gone")


def submit_all(batches):
    """Submit each (daemon, items) at the same time, one call each; return
    the replies in order."""
    replies = [None] * len(batches)
    errors = []

    def run(n, d, items):
        try:
            replies[n] = d.client().submit(items, timeout=30)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((d.name, e))
    threads = [threading.Thread(target=run, args=(n, d, items), daemon=True)
               for n, (d, items) in enumerate(batches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    assert not errors, errors
    assert all(r is not None for r in replies), "a submit call did not return"
    for (d, items), reply in zip(batches, replies):
        assert (reply.accepted, reply.rejected) == (len(items), 0), f"{d.name}: {reply}"
    return replies


def echo_items(tag, n):
    return [{"id": f"{tag}-e{i}", "kind": "echo", "payload": f"payload {tag} {i}".encode()}
            for i in range(n)]


def sleep_items(tag, n, ms, steps=None):
    params = {"ms": str(ms)}
    if steps:
        params["steps"] = str(steps)
    return [{"id": f"{tag}-s{i}", "kind": "sleep", "params": params} for i in range(n)]


def brief(u):
    return (u.seq, u.item_id, state_name(u.state), u.attempt, u.worker_pid)


def work_len(redis, name):
    return redis.command("XLEN", f"{{{name}}}:work")


def wait_work_empty(redis, name, timeout=5):
    """XLEN of the work stream is the number of items not final cluster-wide."""
    try:
        wait_for(lambda: work_len(redis, name) == 0, timeout, f"XLEN {{{name}}}:work == 0")
    except AssertionError as e:
        raise AssertionError(f"{e} (it is {work_len(redis, name)})") from None


def entry_updates(entry_id, fields):
    """(seq, item id, state) of each update of an entry of {NAME}:updates:
    one (layout 1: fields u i k b s, ID 0-SEQ), or a batch (layout 3: a
    field U per update, the Update encoded without its seq; the last one's
    seq is the ID, the ones before it count down)."""
    ms, last = entry_id.decode().split("-")
    assert ms == "0", f"update entry id {entry_id!r} is not 0-SEQ"
    pairs = list(zip(fields[::2], fields[1::2]))
    if not pairs or pairs[0][0] != b"U":
        f = dict(pairs)
        return [(int(last), f.get(b"i", b"").decode(), int(f.get(b"s", b"0")))]
    ups = [conftest.pb.Update.FromString(v) for k, v in pairs if k == b"U"]
    first = int(last) - len(ups) + 1
    return [(first + n, u.item_id, u.state) for n, u in enumerate(ups)]


def stream_updates(redis, name, start="-"):
    """(seq, item id, state) of every update in {NAME}:updates from entry START on."""
    out = []
    for entry_id, fields in redis.command("XRANGE", f"{{{name}}}:updates", start, "+"):
        out += entry_updates(entry_id, fields)
    return out


def cluster_status(address):
    got = http_get(address, "/status")
    assert got is not None and got[0] == 200, f"/status answered {got}"
    doc = json.loads(got[1])
    assert "cluster" in doc, f"/status has no \"cluster\": {sorted(doc)}"
    return doc["cluster"]


# --------------------------------------------------------------------------
# 1. exactly once, on both instances
# --------------------------------------------------------------------------

def test_items_submitted_to_either_instance_run_exactly_once_on_both(redis, start_daemon):
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    b = start_instance(start_daemon, redis, name, "b")
    subs = [d.client().subscribe(sync=True, name=f"sub-{d.name}") for d in (a, b)]
    workers = {d.name: set(d.worker_pids()) for d in (a, b)}

    batches = [(d, sleep_items(f"t1-{d.name}", 30, ms=20) + echo_items(f"t1-{d.name}", 10))
               for d in (a, b)]
    submit_all(batches)
    items = {it["id"]: it for _, lst in batches for it in lst}
    for s in subs:
        s.wait_final(items, timeout=30)

    every_worker = workers["a"] | workers["b"]
    for s in subs:
        s.assert_seq_increasing()
        for item_id, it in items.items():
            ups = s.of(item_id)
            succeeded = [u for u in ups if u.state == SUCCEEDED]
            assert len(succeeded) == 1 and not any(u.state in (FAILED, RETRYING) for u in ups), \
                f"{s.name}: {item_id} went {s.states_of(item_id)}"
            u = succeeded[0]
            assert u.attempt == 1, f"{s.name}: {item_id} succeeded on attempt {u.attempt}"
            assert u.worker_pid in every_worker, \
                f"{item_id}: worker_pid {u.worker_pid} is no worker of a {workers['a']} " \
                f"or b {workers['b']}"
            if it["kind"] == "echo":
                assert u.result == it["payload"], f"{item_id}: result {u.result!r}"
    # Both subscribers got the same final update of each item.
    for item_id in items:
        assert subs[0].final[item_id] == subs[1].final[item_id], \
            f"{item_id}: a saw {brief(subs[0].final[item_id])}, b {brief(subs[1].final[item_id])}"
    ran_on = {n: sorted(i for i in items if subs[0].final[i].worker_pid in w)
              for n, w in workers.items()}
    assert ran_on["a"] and ran_on["b"], \
        f"the work did not run on both instances: {[(n, len(v)) for n, v in ran_on.items()]}"
    assert {d.name: set(d.worker_pids()) for d in (a, b)} == workers, "a worker was respawned"
    wait_work_empty(redis, name)


# --------------------------------------------------------------------------
# 2. a subscriber on A sees what B does
# --------------------------------------------------------------------------

def test_a_subscriber_on_one_instance_sees_the_updates_of_another(redis, start_daemon):
    """A has one worker holding one item (prefetch 1) busy with a long
    sleep, so it has no room: the items submitted to B run on B's workers.
    A's subscriber sees each of them go QUEUED .. SUCCEEDED, with the very
    updates (same seqs, same fields) B's subscriber sees."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=1,
                       overrides={"workers": {"prefetch": 1}})
    sub_a = a.client().subscribe(sync=True, name="sub-a")
    hold = "t2-hold"
    reply = a.client().submit([{"id": hold, "kind": "sleep", "params": {"ms": "20000"}}])
    assert reply.accepted == 1, reply
    started = sub_a.wait_state(hold, STARTED, timeout=10)
    assert started.worker_pid in a.worker_pids(), (started.worker_pid, a.worker_pids())

    b = start_instance(start_daemon, redis, name, "b")
    sub_b = b.client().subscribe(sync=True, name="sub-b")
    items = echo_items("t2", 15) + sleep_items("t2", 5, ms=60, steps=3)
    reply = b.client().submit(items)
    assert (reply.accepted, reply.rejected) == (len(items), 0), reply
    ids = [it["id"] for it in items]
    sub_a.wait_final(ids, timeout=20)
    sub_b.wait_final(ids, timeout=20)

    b_workers = set(b.worker_pids())
    for it in items:
        ups = sub_a.of(it["id"])
        expected = ["QUEUED", "STARTED"] + (["PROGRESS"] * 2 if it["kind"] == "sleep" else []) \
            + ["SUCCEEDED"]
        assert [state_name(u.state) for u in ups] == expected, \
            f"a saw {it['id']} go {[brief(u) for u in ups]}"
        seqs = [u.seq for u in ups]
        assert seqs == sorted(set(seqs)), f"{it['id']}: seqs {seqs}"
        final = ups[-1]
        assert final.worker_pid in b_workers, \
            f"{it['id']} ran on {final.worker_pid}, not on b's workers {b_workers} " \
            f"(a's only worker was busy)"
        if it["kind"] == "echo":
            assert final.result == it["payload"]
    sub_a.assert_seq_increasing()
    sub_b.assert_seq_increasing()
    run = set(ids)
    run_a = [u for u in sub_a.snapshot() if u.item_id in run]
    run_b = [u for u in sub_b.snapshot() if u.item_id in run]
    assert [u.seq for u in run_a] == [u.seq for u in run_b], \
        f"a saw seqs {[u.seq for u in run_a]}\nb saw {[u.seq for u in run_b]}"
    for ua, ub in zip(run_a, run_b):
        assert ua == ub, f"seq {ua.seq}: a got\n{ua}\nb got\n{ub}"
    assert hold not in sub_a.final, "the long sleep that keeps a busy ended early"


# --------------------------------------------------------------------------
# 3. an instance killed with its items
# --------------------------------------------------------------------------

@pytest.mark.deadline(60)
def test_items_of_a_killed_instance_finish_on_the_other(redis, start_daemon):
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    b = start_instance(start_daemon, redis, name, "b")
    sub = a.client().subscribe(sync=True, name="sub-a")
    a_workers, b_workers = set(a.worker_pids()), set(b.worker_pids())
    b_grpc = b.grpc_pid()

    long = sleep_items("t3", 8, ms=1500)       # more than a can hold: b takes some
    reply = b.client().submit(long)
    assert (reply.accepted, reply.rejected) == (8, 0), reply

    def started_on_b(s):
        return {u.item_id for u in s.updates if u.state == STARTED and u.worker_pid in b_workers}
    sub.wait(lambda s: len(started_on_b(s)) >= 2, 10, "two sleeps started on b's workers")
    kill_everything(b)
    with sub.cond:
        held = started_on_b(sub)
        finished_before = [brief(u) for u in sub.updates if u.state == SUCCEEDED
                           and u.item_id.startswith("t3-")]
    assert not finished_before, f"sleeps ended before the kill: {finished_before}"

    after = echo_items("t3-after", 10)
    reply = a.client().submit(after)
    assert (reply.accepted, reply.rejected) == (10, 0), reply
    items = {it["id"]: it for it in long + after}
    sub.wait_final(items, timeout=30)

    lost = re.compile(rf"^instance (\S+-{b_grpc}-\d+) stopped renewing it \(idle (\d+) ms\)")
    for item_id, it in items.items():
        ups = sub.of(item_id)
        finals = [u for u in ups if u.state in (SUCCEEDED, FAILED)]
        assert [state_name(u.state) for u in finals] == ["SUCCEEDED"], \
            f"{item_id} went {[brief(u) for u in ups]}"
        final = finals[0]
        assert final.worker_pid in a_workers, \
            f"{item_id} ended on {final.worker_pid}, not on a's workers {a_workers}"
        if it["kind"] == "echo":
            assert final.result == it["payload"]
        retrying = [u for u in ups if u.state == RETRYING]
        for r in retrying:
            m = lost.search(r.error)
            assert m, f"{item_id}: RETRYING error {r.error!r} does not name b's consumer " \
                      f"(HOST-{b_grpc}-MS) as the instance that stopped renewing it"
            assert int(m.group(2)) >= LEASE_MS, f"{item_id}: claimed after {m.group(2)} ms idle, " \
                                                f"lease is {LEASE_MS} ms"
        if item_id in held:
            # It ran on b (attempt 1), b died: a took it over (attempt 2).
            assert len(retrying) == 1, f"{item_id} went {[brief(u) for u in ups]}"
            r = retrying[0]
            assert r.attempt == 1 and final.attempt == 2, \
                f"{item_id}: RETRYING attempt {r.attempt}, SUCCEEDED attempt {final.attempt} " \
                f"(expected 1 then 2); went {[brief(u) for u in ups]}"
            b_start = next(u for u in ups if u.state == STARTED and u.worker_pid in b_workers)
            a_start = [u for u in ups if u.state == STARTED and u.worker_pid in a_workers]
            assert a_start and b_start.seq < r.seq < a_start[-1].seq < final.seq \
                and a_start[-1].attempt == 2, f"{item_id} went {[brief(u) for u in ups]}"
        else:
            # Never started on b: run by a once, after a take-over if b had it.
            assert len(retrying) <= 1, f"{item_id} went {[brief(u) for u in ups]}"
            assert final.attempt == (retrying[0].attempt + 1 if retrying else 1), \
                f"{item_id} went {[brief(u) for u in ups]}"
    sub.assert_seq_increasing()
    wait_work_empty(redis, name)


@pytest.mark.deadline(60)
@pytest.mark.parametrize("bad", ["hash", "1.5", "99999999999999999999"])
def test_a_lease_key_that_is_no_lease_stops_no_claim(redis, start_daemon, bad):
    """{NAME}:lease:CONSUMER of a dead instance edited by hand into
    something that is no lease (another type, a fraction, more digits than
    a lease has): its items are still taken over (after the claimer's own
    lease), and so are every other instance's: the claim script does not
    fail for everyone (GET's WRONGTYPE, XPENDING's "not an integer")."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    b = start_instance(start_daemon, redis, name, "b")
    sub = a.client().subscribe(sync=True, name="sub-a")
    b_workers = set(b.worker_pids())
    long = sleep_items(f"lk-{bad[:4]}", 6, ms=1500)
    assert b.client().submit(long).accepted == len(long)

    def started_on_b(s):
        return {u.item_id for u in s.updates if u.state == STARTED and u.worker_pid in b_workers}
    sub.wait(lambda s: len(started_on_b(s)) >= 1, 10, "a sleep started on b's workers")
    b_grpc = b.grpc_pid()
    kill_everything(b)
    consumers = [c for key in ("work", "pwork")
                 for c in redis.command("XINFO", "CONSUMERS", f"{{{name}}}:{key}", "dosomethingd")]
    dead = [dict(zip(c[::2], c[1::2]))[b"name"].decode() for c in consumers]
    dead = [c for c in dead if f"-{b_grpc}-" in c]
    assert dead, consumers
    key = f"{{{name}}}:lease:{dead[0]}"
    redis.command("DEL", key)
    if bad == "hash":
        redis.command("HSET", key, "x", "1")
    else:
        redis.command("SET", key, bad)
    final = sub.wait_final([it["id"] for it in long], timeout=30)
    assert all(u.state == SUCCEEDED for u in final.values()), final
    assert "claiming the items of lost instances failed" not in a.log_text(), a.log_tail()


@pytest.mark.deadline(60)
def test_a_graceful_stop_finishes_what_it_holds_and_leaves_the_rest(redis, start_daemon):
    """QUIT on B while its workers run items: B finishes those (attempt 1,
    no RETRYING, no take-over), exits 0, and the items it never took run
    on A."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=1,
                       overrides={"workers": {"prefetch": 1}})
    b = start_instance(start_daemon, redis, name, "b", workers=2,
                       overrides={"workers": {"prefetch": 1}})
    sub = a.client().subscribe(sync=True, name="sub-a")
    a_workers, b_workers = set(a.worker_pids()), set(b.worker_pids())

    items = sleep_items("t3q", 12, ms=600)
    reply = b.client().submit(items)
    assert (reply.accepted, reply.rejected) == (12, 0), reply

    def started_on_b(s):
        return {u.item_id for u in s.updates if u.state == STARTED and u.worker_pid in b_workers
                and u.item_id.startswith("t3q-")}
    sub.wait(lambda s: len(started_on_b(s)) >= 2, 10, "two sleeps started on b's workers")
    b.send_signal(signal.SIGQUIT)
    assert b.wait_exit(timeout=20) == 0, f"b exited badly; log:\n{b.log_tail()}"
    sub.wait_final([it["id"] for it in items], timeout=30)

    for it in items:
        ups = sub.of(it["id"])
        assert [state_name(u.state) for u in ups if u.state in (SUCCEEDED, FAILED, RETRYING)] \
            == ["SUCCEEDED"], f"{it['id']} went {[brief(u) for u in ups]}"
        final = ups[-1]
        assert final.attempt == 1, f"{it['id']} went {[brief(u) for u in ups]}"
        assert final.worker_pid in a_workers | b_workers
    ran_on_b = {i for i in (it["id"] for it in items) if sub.final[i].worker_pid in b_workers}
    assert started_on_b(sub) <= ran_on_b, "an item b had started did not finish on b"
    assert any(sub.final[it["id"]].worker_pid in a_workers for it in items), \
        "a ran none of the items b left in redis"
    sub.assert_seq_increasing()
    wait_work_empty(redis, name)


# --------------------------------------------------------------------------
# 4. replay on another instance
# --------------------------------------------------------------------------

def test_replay_on_another_instance_has_no_gap(redis, start_daemon):
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    b = start_instance(start_daemon, redis, name, "b")
    sub_a = a.client().subscribe(sync=True, name="sub-a")
    b_workers = set(b.worker_pids())

    first = [(a, sleep_items("t4-a", 15, ms=20)), (b, sleep_items("t4-b", 15, ms=20))]
    submit_all(first)
    first_ids = [it["id"] for _, lst in first for it in lst]
    sub_a.wait_final(first_ids, timeout=20)

    # after_seq: a seq a saw live in the middle of the run, of an update b made.
    run = [u for u in sub_a.snapshot() if u.item_id in set(first_ids)]
    middle = run[len(run) // 4: 3 * len(run) // 4]
    by_b = [u for u in middle if u.worker_pid in b_workers]
    after = (by_b or middle)[0].seq

    replay = b.client().subscribe(replay=True, after_seq=after, name="replay-b")
    # More items while the replay is being sent: the seam between the
    # replayed and the live updates.
    second = [(a, echo_items("t4-a2", 10)), (b, echo_items("t4-b2", 10))]
    submit_all(second)
    second_ids = [it["id"] for _, lst in second for it in lst]
    sub_a.wait_final(second_ids, timeout=20)
    replay.wait_final(second_ids, timeout=20)
    wait_for(lambda: replay.last_seq() >= sub_a.last_seq(), 5,
             f"the replay to reach seq {sub_a.last_seq()} (at {replay.last_seq()})")
    wait_for(lambda: replay.last_seq() == sub_a.last_seq(), 5,
             "the replay and a's subscriber at the same last seq")

    expected = [u for u in sub_a.snapshot() if u.seq > after]
    got = replay.snapshot()
    assert [u.seq for u in got] == [u.seq for u in expected], \
        f"replay on b after {after}: seqs {[u.seq for u in got]}\n" \
        f"a saw                 {[u.seq for u in expected]}"
    for ug, ue in zip(got, expected):
        assert ug == ue, f"seq {ug.seq}: the replay on b sent\n{ug}\na saw\n{ue}"
    replay.assert_seq_increasing()
    sub_a.assert_seq_increasing()
    assert replay.error is None, replay.describe_end()

    # The update stream in Redis holds the same seqs, items and states.
    in_redis = [u for u in stream_updates(redis, name, f"(0-{after}") if u[0] > after]
    assert in_redis == [(u.seq, u.item_id, u.state) for u in expected], \
        f"{{{name}}}:updates after 0-{after}:\n{in_redis}\na saw\n" \
        f"{[(u.seq, u.item_id, u.state) for u in expected]}"


# --------------------------------------------------------------------------
# 5. Redis goes away and comes back
# --------------------------------------------------------------------------

@pytest.mark.deadline(60)
def test_redis_unreachable_then_back(redis, start_daemon):
    name = cluster_name()
    status = f"127.0.0.1:{free_port()}"
    a = start_instance(start_daemon, redis, name, "a", overrides={"status": {"listen": status}})
    c = a.client()
    # b started later and has seen more seqs than a's start: whichever
    # instance recreates the counter, seq must not go back for either
    b = start_instance(start_daemon, redis, name, "b")
    sub = c.subscribe(sync=True, name="before")
    sub_b = b.client().subscribe(sync=True, name="before-b")
    assert c.health() == SERVING
    assert http_get(status, "/healthz") == (200, "ok\n")
    seq_before = max(sub.last_seq(), sub_b.last_seq())
    sub.cancel()
    sub_b.cancel()
    b.stop()

    redis.kill()
    outcomes = []

    def unavailable():
        item = {"id": f"t5-down-{uuid.uuid4().hex[:8]}", "kind": "echo", "payload": b"x"}
        try:
            reply = c.submit([item], timeout=5)
        except grpc.RpcError as e:
            outcomes.append((e.code(), e.details()))
            return e if e.code() == grpc.StatusCode.UNAVAILABLE else None
        outcomes.append(reply)
        assert reply.accepted == 0, f"an item was accepted while Redis is down: {reply}"
        return None
    try:
        err = wait_for(unavailable, 15, "doSomething to fail with UNAVAILABLE", interval=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}; got {outcomes[-3:]}; log:\n{a.log_tail()}") from None
    assert re.search(r"cluster: redis .*unreachable", err.details() or ""), \
        f"UNAVAILABLE details: {err.details()!r}"

    wait_for(lambda: c.health() == NOT_SERVING, 10, "grpc health NOT_SERVING")
    wait_for(lambda: (http_get(status, "/healthz") or (0,))[0] == 503, 10, "/healthz 503")
    st = cluster_status(status)
    assert st.get("connected") is False and st.get("serving") is False and st.get("last_error"), st

    redis.start()                                       # same port, empty data set
    try:
        wait_for(lambda: c.health() == SERVING, 20, "grpc health SERVING again")
    except AssertionError as e:
        raise AssertionError(f"{e}; log:\n{a.log_tail()}") from None
    wait_for(lambda: http_get(status, "/healthz") == (200, "ok\n"), 5, "/healthz 200 again")
    wait_serving(a, timeout=15)
    sub = c.subscribe(sync=True, name="after")
    item = {"id": "t5-after", "kind": "echo", "payload": b"back again"}
    reply = c.submit([item])
    assert (reply.accepted, reply.rejected) == (1, 0), reply
    final = sub.wait_final([item["id"]], timeout=10)[item["id"]]
    assert final.state == SUCCEEDED and final.result == item["payload"], final
    st = cluster_status(status)
    assert st.get("connected") is True and st.get("serving") is True \
        and st.get("reconnects", 0) >= 1, st
    # Redis came back empty; seq still goes on from where it was.
    assert final.seq > seq_before, \
        f"seq went back after Redis restarted empty: {final.seq} after {seq_before}"


def command_calls(redis, command):
    for line in redis.command("INFO", "commandstats").decode().splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


@pytest.mark.deadline(60)
def test_an_update_entry_no_instance_wrote(redis, start_daemon):
    """An entry of {NAME}:updates whose ID is not 0-SEQ (an XADD by hand
    with *) is no update, and no update can be added after it (every
    instance writes 0-SEQ): the instance says so, naming the key, the entry
    and what to do, and waits for it like for an unreachable Redis, instead
    of reading the entry again and again (it did: XREAD from 0-SEQ returned
    it each time, logged each time); it serves again once it is removed."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    c = a.client()
    key = f"{{{name}}}:updates"
    bad = redis.command("XADD", key, "*", "x", "y").decode()
    a.wait_log(r"%s has an entry %s that no instance wrote" % (re.escape(key), bad),
               timeout=10)
    before = command_calls(redis, "xread")
    time.sleep(2)
    assert command_calls(redis, "xread") - before < 50, "the update stream is read in a loop"
    assert len(re.findall("that no instance wrote", a.log_text())) < 10, a.log_tail()
    assert c.health() == NOT_SERVING
    redis.command("XDEL", key, bad)
    redis.command("XSETID", key, f"0-{int(redis.command('GET', f'{{{name}}}:seq'))}")
    wait_for(lambda: c.health() == SERVING, 20, "grpc health SERVING again")
    sub = c.subscribe(sync=True, name="after")
    item = {"id": f"t5-entry-{uuid.uuid4().hex[:8]}", "kind": "echo", "payload": b"x"}
    assert c.submit_retrying([item], timeout=15).accepted == 1
    assert sub.wait_final([item["id"]], timeout=10)[item["id"]].state == SUCCEEDED


@pytest.mark.deadline(60)
def test_an_origin_key_of_the_wrong_type(redis, start_daemon):
    """{NAME}:origin that is not a string (WRONGTYPE) is not taken for no
    origin (0): the instance says which key, serves nothing until it is
    fixed, and then serves."""
    name = cluster_name()
    redis.command("HSET", f"{{{name}}}:origin", "x", "1")
    a = start_daemon(cluster_config(redis, name), name="a")
    a.wait_log(r"GET \{%s\}:origin failed: WRONGTYPE" % name, timeout=10)
    assert a.client().health() == NOT_SERVING
    redis.command("DEL", f"{{{name}}}:origin")
    wait_serving(a)


def spoiled_seq(redis, start_daemon, bad, item_id):
    """A new cluster's instance a, which ran ITEM_ID; then {NAME}:seq set
    by hand to BAD ("hash": a hash; a number: set back). Returns (a, the name, the key, the
    item's final update)."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    sub = a.client().subscribe(sync=True, name="sub-a")
    assert a.client().submit([{"id": item_id, "kind": "echo", "payload": b"1"}]).accepted == 1
    first = sub.wait_final([item_id], timeout=10)[item_id]
    sub.cancel()
    key = f"{{{name}}}:seq"
    redis.command("DEL", key)
    if bad == "hash":
        redis.command("HSET", key, "x", "1")
    else:
        redis.command("SET", key, bad)
    return a, name, key, first


@pytest.mark.deadline(60)
@pytest.mark.parametrize("bad", ["garbage", "1e30", "hash"])
def test_a_seq_counter_that_is_no_number(redis, start_daemon, bad):
    """{NAME}:seq edited by hand into something that is not a counter: the
    items of a submit are rejected, their reason naming the key and what to
    do (it was Lua's "arithmetic on a nil value"), nothing
    of them is written, and once the key is deleted the counter starts again
    past the newest update: no seq is used twice."""
    a, name, key, first = spoiled_seq(redis, start_daemon, bad, "seq-1")
    reply = a.client().submit([{"id": "seq-2", "kind": "echo", "payload": b"2"}])
    assert (reply.accepted, reply.rejected) == (0, 1), reply
    assert f"{key} is no seq counter" in reply.rejections[0].reason, reply
    assert redis.command("EXISTS", f"{{{name}}}:item:seq-2") == 0
    redis.command("DEL", key)
    assert a.client().submit([{"id": "seq-2", "kind": "echo", "payload": b"2"}]).accepted == 1
    # (the counter starts again at the clock, past the stream: a gap, which
    # ends the streams of subscribers, resumable, as for any lost updates)
    sub2 = a.client().subscribe(replay=True, item_ids=["seq-1", "seq-2"], name="sub-2")
    again = sub2.wait_final(["seq-2"], timeout=10)["seq-2"]
    assert again.seq > first.seq, (first, again)
    sub2.assert_seq_increasing()


@pytest.mark.deadline(60)
def test_a_seq_counter_past_2_53_stops_a_cancel_too(redis, start_daemon):
    """{NAME}:seq set by hand to 2^53 or more is no counter for the batch
    scripts (LUA_SEQ_LOAD); nor for those that take one seq at a time
    (LUA_NEXT_SEQ: cancel, retry), where INCR succeeds but Lua's number
    loses the seq's last digit: their update must not be written under a
    seq that is not the counter's."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a")
    c = a.client()
    ids = [f"big-{i}" for i in range(2)]
    assert c.submit([{"id": i, "kind": "echo", "payload": b"x", "delay_ms": 60000}
                     for i in ids]).accepted == 2
    key = f"{{{name}}}:seq"
    redis.command("SET", key, str(2**53 + 1))
    for i in ids:
        try:
            reply = c.cancel_items([i])
            raise AssertionError(f"cancel of {i} answered {reply}")
        except grpc.RpcError as e:
            assert f"{key} is no seq counter" in e.details(), e.details()
    top = redis.command("XREVRANGE", f"{{{name}}}:updates", "+", "-", "COUNT", "1")
    seq = int(top[0][0].decode().split("-")[1])
    assert seq < 2**53, f"an update was written with seq {seq}; counter {redis.command('GET', key)}"


@pytest.mark.deadline(60)
@pytest.mark.parametrize("bad", ["garbage", "hash"])
def test_a_seq_counter_that_is_no_number_across_a_reconnect(redis, start_daemon, bad):
    """As test_a_seq_counter_that_is_no_number, but the instance's
    connections drop meanwhile: the fence of the seq counter at the start
    of its next session names the key and what to do (it failed on Lua's
    compare of nil, or GET's WRONGTYPE, naming nothing), and once the key
    is deleted the session comes up and serves."""
    a, name, key, first = spoiled_seq(redis, start_daemon, bad, "rc-1")
    redis.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    a.wait_log(r"the seq check failed: .*%s is no seq counter" % re.escape(key), timeout=10)
    assert a.client().health() == NOT_SERVING
    redis.command("DEL", key)
    wait_serving(a, timeout=20)
    sub2 = a.client().subscribe(sync=True, name="sub-2")
    assert a.client().submit([{"id": "rc-2", "kind": "echo", "payload": b"2"}]).accepted == 1
    assert sub2.wait_final(["rc-2"], timeout=10)["rc-2"].seq > first.seq


@pytest.mark.deadline(60)
def test_a_seq_counter_behind_what_the_instance_saw_jumps_ahead(redis, start_daemon):
    """Redis lost writes (here: the counter set back by hand) while an
    instance was connected: the fence at the start of its next session
    moves the counter ahead past what it saw, and the next update's seq is
    past the last one delivered."""
    a, name, key, first = spoiled_seq(redis, start_daemon, "5", "fj-1")
    redis.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    a.wait_log(r"its seq counter %s is behind seq" % re.escape(key), timeout=10)
    assert int(redis.command("GET", key)) > first.seq
    wait_serving(a, timeout=20)
    sub2 = a.client().subscribe(sync=True, name="sub-2")
    assert a.client().submit([{"id": "fj-2", "kind": "echo", "payload": b"2"}]).accepted == 1
    assert sub2.wait_final(["fj-2"], timeout=10)["fj-2"].seq > first.seq


# --------------------------------------------------------------------------
# 5b. the Redis layout
# --------------------------------------------------------------------------

@pytest.mark.deadline(60)
def test_an_older_layout_in_use_is_refused_then_taken_over(redis, start_daemon):
    """{NAME}:updates without {NAME}:layout is layout 1 (before batched
    update entries). While a consumer of the work stream was active within
    the lease (an older instance running), a new instance refuses to write
    (UNAVAILABLE, saying why); once none is, it moves the cluster to layout
    4 and reads the old entries. A later layout (5) is refused."""
    name = cluster_name()
    old_item = "t5b-old"
    encoded = conftest.pb.Update(item_id=old_item, kind="echo", state=conftest.QUEUED,
                                 attempt=1).SerializeToString()
    redis.command("XADD", f"{{{name}}}:updates", "0-7", "u", encoded, "i", old_item,
                  "k", "echo", "b", "", "s", "1")
    redis.command("SET", f"{{{name}}}:seq", "7")
    # an older instance that just took an item (and finished it)
    redis.command("XGROUP", "CREATE", f"{{{name}}}:work", "dosomethingd", "0", "MKSTREAM")
    entry = redis.command("XADD", f"{{{name}}}:work", "0-1", "i", "t5b-w", "k", "echo")
    redis.command("XREADGROUP", "GROUP", "dosomethingd", "old-host-1-1", "COUNT", "1",
                  "STREAMS", f"{{{name}}}:work", ">")
    redis.command("XACK", f"{{{name}}}:work", "dosomethingd", entry)
    redis.command("XDEL", f"{{{name}}}:work", entry)
    d = start_daemon(cluster_config(redis, name, lease="60s"), name="a")
    c = d.client()

    def refused():
        try:
            c.submit([{"id": f"t5b-{uuid.uuid4().hex[:6]}", "kind": "echo"}], timeout=5)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE and "older dosomethingd" in e.details():
                return e
            return None
        raise AssertionError("an item was accepted while a layout 1 instance is active")
    err = wait_for(refused, 15, "UNAVAILABLE naming the older instance", interval=0.2)
    assert "old-host-1-1" in err.details() and "layout 1" in err.details() \
        and "layout 4" in err.details(), err.details()
    assert redis.command("EXISTS", f"{{{name}}}:layout") == 0
    # the older instance is gone
    redis.command("XGROUP", "DELCONSUMER", f"{{{name}}}:work", "dosomethingd", "old-host-1-1")
    wait_serving(d, timeout=20)
    assert redis.command("GET", f"{{{name}}}:layout") == b"4"
    d.wait_log(r"moves from Redis layout 1 to layout 4")
    sub = c.subscribe(replay=True, name="replay")
    sub.wait(lambda s: old_item in s.by_id, 10, "the layout 1 entry")
    assert [u.seq for u in sub.snapshot() if u.item_id == old_item] == [7]
    d.stop()

    other = cluster_name()
    redis.command("SET", f"{{{other}}}:layout", "5")
    d = start_daemon(cluster_config(redis, other), name="b")
    c = d.client()

    def refused_other():
        try:
            c.submit([{"id": f"t5b-{uuid.uuid4().hex[:6]}", "kind": "echo"}], timeout=5)
        except grpc.RpcError as e:
            return e if "layout is 5" in (e.details() or "") else None
        raise AssertionError("an item was accepted in an unknown layout")
    wait_for(refused_other, 15, "UNAVAILABLE naming layout 5", interval=0.2)


# --------------------------------------------------------------------------
# 6. config errors
# --------------------------------------------------------------------------

def test_cluster_config_checks(redis, tmp_path):
    name = cluster_name()
    ok = tmp_path / "ok.yaml"
    ok.write_text(f'cluster:\n  redis: "{redis.url}"\n  name: {name}\n  lease: 1s\n')
    r = run_cli("-t", "-c", ok)
    assert r.returncode == 0, f"-t of a valid cluster config exited {r.returncode}: {r.stderr}"
    r = run_cli("-T", "-c", ok)
    assert r.returncode == 0, r.stderr
    assert re.search(r"(?m)^cluster:\n(  \S.*\n)*  redis: \"?" + re.escape(redis.url), r.stdout) \
        and re.search(rf"(?m)^  name: \"?{name}\b", r.stdout) \
        and re.search(r"(?m)^  lease: ", r.stdout), f"-T:\n{r.stdout}"
    printed = tmp_path / "printed.yaml"
    printed.write_text(r.stdout)
    again = run_cli("-T", "-c", printed)
    body = lambda out: out.split("\n", 1)[1]       # the first line names the file
    assert again.returncode == 0 and body(again.stdout) == body(r.stdout), \
        f"-T output does not load back to the same config:\n{again.stderr}"

    both = tmp_path / "both.yaml"
    both.write_text(f'queue:\n  journal: journal\ncluster:\n  redis: "{redis.url}"\n'
                    f'  name: {name}\n')
    r = run_cli("-t", "-c", both)
    assert r.returncode == 2, f"cluster + queue.journal: -t exited {r.returncode}: {r.stderr}"
    path = re.escape(str(both))
    lines = [line for line in r.stderr.splitlines()
             if re.match(rf"{path}:\d+:\d+: ", line) and "cluster" in line
             and "queue.journal" in line]
    assert lines, f"no 'FILE:LINE:COL: ...' line naming both cluster and queue.journal:\n{r.stderr}"

    for n, (key, value) in enumerate([
            ("redis", '"http://127.0.0.1:6379"'),
            ("redis", '"redis://"'),
            ("redis", '"redis://:6379"'),
            ("redis", '"redis://127.0.0.1:port"'),
            ("redis", '"redis://127.0.0.1:65536"'),
            ("redis", '"127.0.0.1:6379"'),
            ("lease", "soon")]):
        bad = tmp_path / f"bad{n}.yaml"
        fields = {"redis": f'"{redis.url}"', "name": name, "lease": "1s", key: value}
        # the bad key on line 2
        order = [key] + [k for k in ("redis", "name", "lease") if k != key]
        bad.write_text("cluster:\n" + "".join(f"  {k}: {fields[k]}\n" for k in order))
        r = run_cli("-t", "-c", bad)
        assert r.returncode == 2, f"cluster.{key}: {value}: -t exited {r.returncode}: {r.stderr}"
        rx = rf"(?m)^{re.escape(str(bad))}:2:\d+: cluster\.{key}: \S"
        assert re.search(rx, r.stderr), \
            f"cluster.{key}: {value}: no '{bad}:2:COL: cluster.{key}: reason' line:\n{r.stderr}"


# --------------------------------------------------------------------------
# 7. behind nginx
# --------------------------------------------------------------------------

def test_nginx_in_front_of_two_cluster_instances(redis, start_daemon, tmp_path):
    import test_nginx                                   # its Nginx helper; skips without nginx
    name = cluster_name()
    instances = [start_instance(start_daemon, redis, name, f"i{n}", workers=1) for n in (1, 2)]
    subs = [d.client().subscribe(sync=True, states=[SUCCEEDED, FAILED], name=f"sub-{d.name}")
            for d in instances]
    front = test_nginx.Nginx(tmp_path / "nginx", [d.address for d in instances])
    try:
        front.start()
        clients = [conftest.Client(front.address) for _ in range(4)]   # 4 connections
        items = {}
        try:
            for call in range(3):
                for n, client in enumerate(clients):
                    batch = echo_items(f"t7-{n}-{call}", 10)
                    reply = client.submit(batch, timeout=30)
                    assert (reply.accepted, reply.rejected) == (10, 0), reply
                    items.update((it["id"], it) for it in batch)
        finally:
            for client in clients:
                client.close()
        for s in subs:
            s.wait_final(items, timeout=20)
            for item_id, it in items.items():
                finals = s.of(item_id)
                assert [state_name(u.state) for u in finals] == ["SUCCEEDED"], \
                    f"{s.name}: {item_id} went {[brief(u) for u in finals]}"
                assert finals[0].result == it["payload"]
        for item_id in items:
            assert subs[0].final[item_id] == subs[1].final[item_id], item_id
        submits = [rec for rec in front.access_records() if rec[0].endswith("/doSomething")]
        assert len(submits) == 12 and all(rec[1] == 200 and rec[2] == "0" for rec in submits), \
            submits
        assert {rec[3][-1] for rec in submits} == {d.address for d in instances}, \
            f"nginx did not use both instances: {submits}"
    finally:
        front.stop()
    wait_work_empty(redis, name)
