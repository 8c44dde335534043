"""Descriptors: the budget a config needs against RLIMIT_NOFILE (-t and a
start refuse what cannot fit), the daemon at its descriptor limit (idle
connections to the gRPC and status ports, a worker respawn while the table
is full, a worker that cannot open the pipes of an exec program, a journal
that cannot open its next segment, a cluster instance that cannot open a
socket to Redis again), and the status port through a binary upgrade."""
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time

import grpc
import pytest

import conftest
from test_cluster import cluster_name, redis, start_instance, wait_serving  # noqa: F401
from conftest import (NOT_SERVING, SERVING, SUCCEEDED as SUCCEEDED_STATE, kill_tree, free_port,
                      http_get, pid_alive, wait_for)

# Low enough that a test can fill it, high enough for 2 workers.
LOW_LIMIT = 256


def limited(soft, hard=None):
    hard = soft if hard is None else hard
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run_binary(args, nofile, cwd, timeout=30):
    return subprocess.run([conftest.BINARY] + args, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=limited(nofile))


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(f"dosomething_{name} "):
            return float(line.split()[1])
    return None


# ---- the budget: -t and a start -------------------------------------------------

def test_check_refuses_more_workers_than_descriptors_allow(make_daemon):
    d = make_daemon({"workers": {"count": 200}})
    r = run_binary(["-t", "-c", str(d.config_path)], LOW_LIMIT, d.dir)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "workers.count" in r.stderr and "RLIMIT_NOFILE is 256" in r.stderr, r.stderr
    assert "test failed" in r.stderr, r.stderr

    # The same config starts nothing: exit 2 with the same message, no child.
    r = run_binary(["-c", str(d.config_path)], LOW_LIMIT, d.dir)
    assert r.returncode == 2, (r.returncode, r.stderr, d.log_tail())
    assert "workers.count" in r.stderr and "RLIMIT_NOFILE is 256" in r.stderr, r.stderr
    assert "serving" not in d.log_text()

    # What fits passes.
    d.write_config({"workers": {"count": 2}})
    r = run_binary(["-t", "-c", str(d.config_path)], LOW_LIMIT, d.dir)
    assert r.returncode == 0, r.stderr


def test_soft_limit_is_raised_to_the_hard_one(make_daemon):
    d = make_daemon()
    d.nofile = (LOW_LIMIT, 4096)
    d.start()
    d.wait_log(r"RLIMIT_NOFILE raised from 256 to the hard limit, 4096")
    with open(f"/proc/{d.grpc_pid()}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    assert line.split()[3] == "4096", line


# ---- the status port through a binary upgrade ---------------------------------

def test_usr2_with_status_listen(make_daemon):
    status = f"127.0.0.1:{free_port()}"
    d = make_daemon({"status": {"listen": status}})
    d.start()
    old_master = d.master_pid
    assert http_get(status, "/healthz")[0] == 200
    new_master = None
    try:
        d.send_signal(signal.SIGUSR2)
        wait_for(lambda: d.read_pid_file() not in (None, old_master), 15,
                 "the new master's pid file")
        new_master = d.read_pid_file()
        d.known_pids.add(new_master)
        assert d.wait_exit(timeout=20) == 0, "the old master did not drain and exit"
        assert "Address already in use" not in d.log_text(), d.log_tail()

        def from_new():
            code, body = http_get(status, "/status")
            masters = [p["pid"] for p in json.loads(body)["processes"] if p["role"] == "master"]
            return code == 200 and masters == [new_master]
        wait_for(from_new, 10, "/status from the new instance")
        assert http_get(status, "/healthz") == (200, "ok\n")
        code, text = http_get(status, "/metrics")
        assert code == 200 and metric(text, "queue_depth") == 0, text[:500]
        assert pid_alive(new_master)
        reply, sub = d.client().run_items([{"id": "after-upgrade", "kind": "echo",
                                            "payload": b"x"}])
        assert sub.states_of("after-upgrade")[-1] == "SUCCEEDED"
    finally:
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(60)
def test_ttin_stops_at_the_descriptor_budget(make_daemon):
    """SIGTTIN is held to the budget -t and a reload hold workers.count to:
    at 256 descriptors, 47 workers (2 each, 64 + 32 + 64 + a listener
    besides). Before, each TTIN added one: past about 95 the grpc process's
    table was full, worker channels were lost ("recvmsg(SCM_RIGHTS): a
    descriptor was lost") and calls hung."""
    d = make_daemon({"workers": {"count": 2}})
    d.nofile = (LOW_LIMIT, LOW_LIMIT)
    d.start()
    for _ in range(60):
        d.send_signal(signal.SIGTTIN)
        time.sleep(0.005)
    d.wait_log(r"SIGTTIN: 48 workers would need 257 descriptors, more than RLIMIT_NOFILE "
               r"\(256\); staying at 47")
    wait_for(lambda: len(d.worker_slots()) == 47, 20, "47 workers")
    reply, _ = d.client().run_items([{"id": "x", "kind": "echo", "payload": b"x"}])
    assert reply.accepted == 1
    assert "SIGTTIN: 48 workers\n" not in d.log_text()


# ---- the daemon at its descriptor limit ---------------------------------------

def scrape(status, name):
    got = http_get(status, "/metrics", timeout=2)
    if got is None:
        return None
    code, text = got
    return metric(text, name) if code == 200 else None


class IdleConnections:
    """Plain TCP connections that never send a byte."""

    def __init__(self):
        self.socks = []

    def open(self, address, count):
        host, port = address.rsplit(":", 1)
        for _ in range(count):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect((host, int(port)))
            except OSError:
                s.close()
                break
            self.socks.append(s)
        return len(self.socks)

    def close(self):
        while self.socks:
            self.socks.pop().close()


class RefusalProbe:
    """Connects to address over and over in a thread (closing each at once),
    recording every ECONNREFUSED, until stop()."""

    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.target = (host, int(port))
        self.attempts = 0
        self.refused = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        while not self.done.is_set():
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(self.target)
            except ConnectionRefusedError:
                self.refused.append(time.monotonic())
            except OSError:
                pass            # a full backlog's timeout: not a refusal
            finally:
                s.close()
            self.attempts += 1
            self.done.wait(0.001)

    def stop(self):
        self.done.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the probe did not stop"


@pytest.fixture
def idle():
    conns = IdleConnections()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    yield conns
    conns.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.deadline(120)
def test_idle_grpc_connections_at_the_limit(make_daemon, idle):
    status = f"127.0.0.1:{free_port()}"
    d = make_daemon({"status": {"listen": status}, "workers": {"count": 2}})
    d.nofile = (LOW_LIMIT, LOW_LIMIT)
    d.start()
    grpc_pid = d.grpc_pid()
    client = d.client()
    sub = client.subscribe(sync=True, states=[SUCCEEDED_STATE])
    ids = [f"held-{n}" for n in range(30)]
    reply = client.submit([{"id": i, "kind": "sleep", "params": {"ms": "300"}} for i in ids])
    assert reply.accepted == len(ids), reply

    # More idle connections than the grpc process has descriptors.
    idle.open(d.address, LOW_LIMIT + 50)
    wait_for(lambda: scrape(status, "grpc_listening") == 0, 30,
             "/metrics to report the gRPC listener dead")
    d.wait_log(r"gRPC stopped accepting connections on 127\.0\.0\.1:\d+: accept4\(\) failed")
    code, body = http_get(status, "/healthz")
    assert code == 503 and "descriptors exhausted" in body, (code, body)
    assert client.health(timeout=5) == NOT_SERVING

    # A worker respawned now still gets its channel through; nothing stops.
    slot, victim = sorted(d.workers().items())[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: d.workers().get(slot) not in (None, victim), 20, "the worker respawned")
    assert d.grpc_pid() == grpc_pid, d.log_tail()
    assert pid_alive(d.master_pid)

    # Once the connections go, gRPC listens again and serves new clients.
    # The port is never without a listener meanwhile: a client connecting
    # while the dead server is replaced (or reconnecting after its GOAWAY)
    # is not refused.
    prober = RefusalProbe(d.address).start()
    try:
        idle.close()
        wait_for(lambda: scrape(status, "grpc_listening") == 1, 30, "the gRPC listener back")
    finally:
        prober.stop()
    assert prober.attempts > 0
    assert not prober.refused, (f"{len(prober.refused)} of {prober.attempts} connections "
                                f"refused while the listener was replaced; log:\n{d.log_tail()}")
    assert scrape(status, "grpc_listener_restarts_total") == 1
    # The client connected before, whose connection the old server ended
    # with GOAWAY, goes on without waiting for ready.
    reply = client.submit([{"id": "old-client-after", "kind": "echo", "payload": b"x"}])
    assert reply.accepted == 1, reply
    fresh = d.client()
    reply, _ = fresh.run_items([{"id": "after", "kind": "echo", "payload": b"x"}])
    assert reply.accepted == 1
    assert fresh.health(timeout=5) == SERVING
    sub.wait_final(ids, timeout=60)
    assert all(sub.states_of(i) == ["SUCCEEDED"] for i in ids)
    assert d.grpc_pid() == grpc_pid


@pytest.mark.deadline(120)
def test_idle_status_connections_do_not_take_grpc_down(make_daemon, idle):
    status = f"127.0.0.1:{free_port()}"
    d = make_daemon({"status": {"listen": status}, "workers": {"count": 2}})
    d.nofile = (LOW_LIMIT, LOW_LIMIT)
    d.start()
    grpc_pid = d.grpc_pid()

    idle.open(status, 300)
    d.wait_log(r"status endpoint on 127\.0\.0\.1:\d+: taking no connection for now")
    # gRPC still takes new connections and calls.
    fresh = d.client()
    reply, _ = fresh.run_items([{"id": "during", "kind": "echo", "payload": b"x"}])
    assert reply.accepted == 1
    assert fresh.health(timeout=5) == SERVING
    assert "gRPC stopped accepting" not in d.log_text()

    idle.close()
    wait_for(lambda: scrape(status, "status_paused") == 0, 30, "the status port back")
    assert http_get(status, "/healthz") == (200, "ok\n")
    assert scrape(status, "grpc_listening") == 1
    assert d.grpc_pid() == grpc_pid


def lowest_free_fd(pid):
    used = {int(n) for n in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


@contextlib.contextmanager
def fd_limit(pid, soft=None):
    """PID's soft RLIMIT_NOFILE at SOFT (None: its lowest free descriptor,
    so its table is full) for the block, then back. Skips only where this
    user may not do that (prlimit on another process and reading its
    /proc/PID/fd need root, or the same user and a dumpable process),
    naming the error."""
    try:
        was = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        to = lowest_free_fd(pid) if soft is None else soft
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (to, was[1]))
    except PermissionError as e:
        pytest.skip(f"cannot lower the descriptor limit of pid {pid} here: {e}")
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, was)


@pytest.mark.deadline(60)
def test_an_exec_item_whose_worker_has_no_descriptor_left_is_retried(make_daemon):
    """The worker's table is full (its soft RLIMIT_NOFILE lowered to its
    lowest free descriptor) when an exec item comes: pipe2() fails. That is
    the worker's shortage, not the item's failure: RETRYING, and once
    descriptors are free again the next attempt runs it (before: FAILED at
    once, "cannot run cat: pipe2() failed: Too many open files")."""
    d = make_daemon({"workers": {"count": 1},
                     "queue": {"retry_backoff": {"min": "1s", "max": "1s"}},
                     "handlers": {"default": "echo", "echo": {"builtin": "echo"},
                                  "cat": {"exec": ["/bin/cat"]}}})
    d.start()
    [worker] = d.worker_pids()
    c = d.client()
    sub = c.subscribe(sync=True)
    with fd_limit(worker):
        assert c.submit([{"id": "x", "kind": "cat", "payload": b"hello",
                          "max_attempts": 3}]).accepted == 1
        u = sub.wait_state("x", conftest.RETRYING, timeout=10)
        assert u.error == "cannot run cat: pipe2() failed: Too many open files", u.error
    final = sub.wait_final(["x"], timeout=10)["x"]
    assert final.state == SUCCEEDED_STATE and final.attempt == 2 and final.result == b"hello", \
        sub.states_of("x")
    assert d.worker_pids() == [worker]


@pytest.mark.deadline(60)
def test_a_journal_roll_without_a_descriptor_rejects_then_recovers(make_daemon, tmp_path,
                                                                   monkeypatch):
    """The grpc process's table is full when the journal must open its next
    segment (4 KiB segments, 5 KB items: every flush rolls): the item is
    rejected with the reason, the line says so, an item accepted before is
    untouched, and once descriptors are free the next item is accepted and
    the log says writing works again. (Checked: this already held.)"""
    monkeypatch.setenv("DS_JOURNAL_SEGMENT_BYTES", "4KiB")
    d = make_daemon({"workers": {"count": 1}, "queue": {"journal": str(tmp_path / "journal")}})
    d.start()
    c = d.client()
    sub = c.subscribe(sync=True)
    assert c.submit([{"id": "pin", "kind": "sleep", "params": {"ms": "1500"},
                      "payload": b"p" * 5000}]).accepted == 1
    sub.wait_state("pin", conftest.STARTED, timeout=10)
    grpc_pid = d.grpc_pid()
    with fd_limit(grpc_pid):
        reply = c.submit([{"id": "during", "kind": "echo", "payload": b"d" * 5000}])
    assert reply.rejected == 1, reply
    assert reply.rejections[0].reason == "journal write failed: Too many open files", reply
    d.wait_log(r"journal: open\(\"\S+\.seg\"\) failed: Too many open files")
    reply = c.submit([{"id": "after", "kind": "echo", "payload": b"a" * 5000}])
    assert reply.accepted == 1, reply
    finals = sub.wait_final(["pin", "after"], timeout=15)
    assert all(f.state == SUCCEEDED_STATE for f in finals.values()), finals
    d.wait_log(r"journal: writing to \S+ works again after 1 failed flushes \(1 items rejected\)")
    assert d.grpc_pid() == grpc_pid


@pytest.mark.deadline(60)
def test_a_redis_reconnect_without_a_descriptor_says_why_and_recovers(redis, start_daemon):
    """Cluster mode: the grpc process has no descriptor left (RLIMIT_NOFILE
    lowered to 8, below all it holds) when Redis drops its connections: a
    call is answered UNAVAILABLE naming the reason, the log says it, and
    once descriptors are back the instance connects and serves again, the
    same grpc process. (Checked: this already held.)"""
    a = start_instance(start_daemon, redis, cluster_name(), "a", workers=1, lease="3s")
    c = a.client()
    grpc_pid = a.grpc_pid()
    with fd_limit(grpc_pid, 8):
        redis.command("CLIENT", "KILL", "TYPE", "normal")
        a.wait_log(r"cluster: redis \S+: connecting: Can't create socket: Too many open files")
        with pytest.raises(grpc.RpcError) as e:
            c.submit([{"id": "during", "kind": "echo", "payload": b"x"}], timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
        assert "Too many open files" in e.value.details(), e.value.details()
    wait_serving(a)
    assert a.grpc_pid() == grpc_pid
