"""
The example clients (contrib/clients/python and contrib/clients/node) against
the real daemon: submit from a file, follow every item to its final update,
exit status, and resuming across a graceful restart. Each test runs with both
clients.

The Node client needs its node_modules: the first Node test runs `npm install`
in contrib/clients/node if they are missing, and is skipped only if npm cannot
reach the registry.
"""
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest

import conftest
from conftest import REPO, wait_for

PY_CLIENT = REPO / "contrib" / "clients" / "python" / "dosomething_client.py"
NODE_DIR = REPO / "contrib" / "clients" / "node"
NODE_CLIENT = NODE_DIR / "dosomething-client.js"

CLIENTS = ("python", "node")
FINAL = ("SUCCEEDED", "FAILED")
NPM_TIMEOUT = 300

# What npm prints when it cannot reach the registry.
NPM_NETWORK_ERROR = re.compile(
    r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|"
    r"ERR_SOCKET_TIMEOUT|FetchError|network|socket hang up|request to https?://\S+ failed",
    re.IGNORECASE)

_node_command = None


def node_command():
    """[node, dosomething-client.js], after `npm install` if node_modules is missing."""
    global _node_command
    if _node_command is not None:
        return _node_command
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.fail("node is not installed (Debian package nodejs)")
    modules = NODE_DIR / "node_modules" / "@grpc"
    if not ((modules / "grpc-js" / "package.json").exists()
            and (modules / "proto-loader" / "package.json").exists()):
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not installed (Debian package npm, or the nodejs that bundles it)")
        try:
            r = subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                               capture_output=True, text=True, timeout=NPM_TIMEOUT,
                               stdin=subprocess.DEVNULL,
                               env={**os.environ, "npm_config_update_notifier": "false"})
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm install in {NODE_DIR} got no answer from the registry in "
                        f"{NPM_TIMEOUT} s")
        if r.returncode != 0:
            out = (r.stdout + r.stderr).strip()
            tail = "\n".join(out.splitlines()[-15:])
            if NPM_NETWORK_ERROR.search(out):
                pytest.skip(f"npm cannot reach the registry, so the Node client's dependencies "
                            f"cannot be installed:\n{tail}")
            pytest.fail(f"npm install in {NODE_DIR} failed (exit {r.returncode}):\n{tail}")
    _node_command = [node, str(NODE_CLIENT)]
    return _node_command


def client_command(kind):
    if kind == "python":
        return [sys.executable, str(PY_CLIENT)]
    return node_command()


# --------------------------------------------------------------------------
# running a client
# --------------------------------------------------------------------------

class ClientProcess:
    """One client run: its stdout JSON lines read by a thread as they come."""

    def __init__(self, kind, address, items_file, args, directory, name):
        self.kind = kind
        self.stderr_path = directory / f"{name}.stderr"
        cmd = client_command(kind) + ["--address", address, *map(str, args), str(items_file)]
        self.cmd = cmd
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err)
        self.records = []
        self.bad_lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self.cond:
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    self.bad_lines.append(line)
                self.cond.notify_all()
        self.proc.stdout.close()

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self):
        return (f"{self.kind} client (exit {self.proc.poll()}), stderr:\n"
                + "\n".join(self.stderr().splitlines()[-20:]))

    def wait_records(self, n, timeout):
        """Until the client printed n records (or fail, naming what it said)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.records) < n:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"{len(self.records)} of {n} records after "
                                         f"{timeout} s; {self.describe()}")
                self.cond.wait(min(left, 0.1))

    def wait(self, timeout):
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s; {self.describe()}") from None
        self.reader.join(timeout=5)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.reader.join(timeout=5)

    def summary(self):
        for line in reversed(self.stderr().splitlines()):
            if line.startswith("summary: "):
                return json.loads(line[len("summary: "):])
        raise AssertionError(f"no summary line; {self.describe()}")

    def finals(self):
        """id -> the record of its final update; fails on an id printed twice."""
        out = {}
        for rec in self.records:
            if rec["state"] in FINAL or rec["state"] == "REJECTED":
                assert rec["id"] not in out, f"{rec['id']} printed twice: {out[rec['id']]}, {rec}"
                out[rec["id"]] = rec
        return out


@pytest.fixture
def run_client(tmp_path):
    """Factory: run_client(kind, address, items_file, *args, wait=True, timeout=60)
    -> ClientProcess (finished, with .rc, if wait). Killed at teardown."""
    made = []

    def run(kind, address, items_file, *args, wait=True, timeout=60):
        c = ClientProcess(kind, address, items_file, args, tmp_path, f"{kind}-{len(made)}")
        made.append(c)
        if wait:
            c.rc = c.wait(timeout)
        return c

    yield run
    for c in made:
        c.kill()


@pytest.fixture(params=CLIENTS)
def kind(request):
    client_command(request.param)       # npm install, or skip, before the test proper
    return request.param


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def sha256_rounds(data, rounds):
    d = hashlib.sha256(data).digest()
    for _ in range(rounds - 1):
        d = hashlib.sha256(d).digest()
    return d


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------

def test_submits_a_file_and_prints_every_final_update(kind, start_daemon, run_client, tmp_path):
    d = start_daemon()
    lines = []
    for n in range(200):
        if n % 2:
            lines.append(json.dumps({"id": f"sha-{n}", "kind": "sha256", "payload": f"data {n}",
                                     "params": {"rounds": 3}}))
        else:
            lines.append(f"raw payload {n}")
    items = write_lines(tmp_path / "items.txt", lines)
    c = run_client(kind, d.address, items, "--kind", "echo", "--chunk", "64")
    assert c.rc == 0, c.describe()
    assert not c.bad_lines, c.bad_lines[:3]
    finals = c.finals()
    assert len(finals) == 200
    assert {r["state"] for r in finals.values()} == {"SUCCEEDED"}
    batch = c.summary()["batch"]
    for n in range(200):
        if n % 2:
            rec = finals[f"sha-{n}"]
            assert base64.b64decode(rec["result_b64"]) == sha256_rounds(b"data %d" % n, 3)
        else:
            rec = finals[f"{batch}-{n}"]        # a generated id: BATCH-INDEX
            assert rec["result"] == f"raw payload {n}" and rec["kind"] == "echo"
        assert rec["batch"] == batch
    s = c.summary()
    assert (s["items"], s["accepted"], s["succeeded"], s["failed"], s["open"]) == \
        (200, 200, 200, 0, 0), s


def test_a_failed_item_makes_exit_status_1(kind, start_daemon, run_client, tmp_path):
    d = start_daemon()
    slow = {"id": "too-slow", "kind": "sleep", "timeout_ms": 100, "params": {"ms": "1000"},
            "max_attempts": 1}
    items = write_lines(tmp_path / "items.txt", ["one", json.dumps(slow), "two"])
    c = run_client(kind, d.address, items, "--kind", "echo")
    assert c.rc == 1, c.describe()
    finals = c.finals()
    assert finals["too-slow"]["state"] == "FAILED"
    assert "timed out" in finals["too-slow"]["error"], finals["too-slow"]
    assert sorted(r["state"] for r in finals.values()) == ["FAILED", "SUCCEEDED", "SUCCEEDED"]
    s = c.summary()
    assert (s["succeeded"], s["failed"], s["open"]) == (2, 1, 0), s


def test_a_rejected_item_makes_exit_status_1(kind, start_daemon, run_client, tmp_path):
    d = start_daemon()
    items = write_lines(tmp_path / "items.txt",
                        ["fine", json.dumps({"id": "bad", "kind": "no-such-kind"})])
    c = run_client(kind, d.address, items, "--kind", "echo")
    assert c.rc == 1, c.describe()
    finals = c.finals()
    assert finals["bad"]["state"] == "REJECTED" and "no-such-kind" in finals["bad"]["error"]
    assert c.summary()["rejected"] == 1 and c.summary()["succeeded"] == 1


def test_bad_input_exits_2_before_connecting(kind, run_client, tmp_path):
    items = write_lines(tmp_path / "items.txt", ['{"id": "x", "colour": "red"}'])
    c = run_client(kind, "127.0.0.1:1", items)
    assert c.rc == 2, c.describe()
    assert "colour" in c.stderr()


@pytest.mark.deadline(30)
def test_gives_up_at_its_deadline_when_no_server_answers(kind, run_client, tmp_path):
    port = conftest.free_port()         # nothing listens there
    items = write_lines(tmp_path / "items.txt", ["a", "b"])
    started = time.monotonic()
    c = run_client(kind, f"127.0.0.1:{port}", items, "--deadline", "2", timeout=15)
    assert c.rc == 3, c.describe()
    assert time.monotonic() - started < 12
    assert c.summary()["not_submitted"] == 2


def test_python_client_uses_prebuilt_stubs(start_daemon, run_client, tmp_path):
    d = start_daemon()
    items = write_lines(tmp_path / "items.txt", [f"p{n}" for n in range(20)])
    c = run_client("python", d.address, items, "--kind", "echo", "--stubs", conftest.PYSTUBS)
    assert c.rc == 0, c.describe()
    assert len(c.finals()) == 20


@pytest.mark.deadline(90)
def test_resumes_across_a_graceful_restart(kind, start_daemon, run_client, tmp_path):
    """The daemon is stopped with QUIT while the client works, and a new one
    starts on the same port once the old one has exited. The client (at most
    10 items open at a time, so most are still unsent when QUIT comes) sees
    its stream end, resubscribes to the new daemon, whose seqs start over,
    sends the rest there and exits 0 with every item printed once."""
    a = start_daemon(name="a")
    items = write_lines(tmp_path / "items.txt", [f"p{n}" for n in range(200)])
    c = run_client(kind, a.address, items, "--kind", "sleep", "--param", "ms=20",
                   "--window", "10", "--chunk", "10", "--deadline", "60", wait=False)
    c.wait_records(40, timeout=20)
    a_workers = set(a.worker_pids())
    a.send_signal(signal.SIGQUIT)
    assert a.wait_exit(timeout=15) == 0, a.log_tail()
    assert c.proc.poll() is None, f"the client ended before the restart; {c.describe()}"
    assert len(c.records) < 100, "QUIT came too late to test anything"

    b = start_daemon(name="b", start=False, overrides={"grpc": {"listen": [a.address]}})
    b.port, b.address = a.port, a.address
    b.start()
    b_workers = set(b.worker_pids())

    rc = c.wait(timeout=60)
    assert rc == 0, c.describe()
    finals = c.finals()
    assert len(finals) == 200 and {r["state"] for r in finals.values()} == {"SUCCEEDED"}
    by = {"a": 0, "b": 0}
    for rec in finals.values():
        assert rec["worker_pid"] in a_workers | b_workers, rec
        by["a" if rec["worker_pid"] in a_workers else "b"] += 1
    assert by["a"] >= 40 and by["b"] > 0, by
    s = c.summary()
    assert s["reconnects"] >= 1 and s["open"] == 0, s


# ---- at-least-once, against a scripted server --------------------------------

class ScriptedService:
    """A stand-in server: its first doSomething call gets its items 'run'
    except the last one, then fails (UNAVAILABLE: a connection lost at the
    wrong moment; CANCELLED: what a C-core server answers to a call that
    arrives as it begins a graceful stop) before the reply. The resent call
    runs all of them, so the first items get a second final update, before
    the last item's."""

    def __init__(self, abort_code):
        self.abort_code = abort_code
        self.cond = threading.Condition()
        self.log = []
        self.calls = []

    def publish(self, item, attempt):
        with self.cond:
            self.log.append(conftest.pb.Update(
                seq=len(self.log) + 1, item_id=item.id, kind=item.kind or "echo",
                state=conftest.pb.SUCCEEDED, result=item.payload, attempt=attempt,
                batch=item.batch, worker_pid=4242))
            self.cond.notify_all()

    def doSomething(self, request_iterator, context):
        items = list(request_iterator)
        with self.cond:
            self.calls.append([it.id for it in items])
            first = len(self.calls) == 1
        if first:
            for it in items[:-1]:
                self.publish(it, 1)
            context.abort(self.abort_code, "scripted: no reply for this call")
        for it in items:
            self.publish(it, 2)
        return conftest.pb.SubmitReply(accepted=len(items))

    def getUpdates(self, request, context):
        context.send_initial_metadata(())
        states, batches = set(request.states), set(request.batches)
        pos = 0
        while context.is_active():
            with self.cond:
                if pos >= len(self.log):
                    self.cond.wait(0.1)
                new, pos = self.log[pos:], len(self.log)
            for u in new:
                if request.replay and u.seq <= request.after_seq:
                    continue
                if (not states or u.state in states) and (not batches or u.batch in batches):
                    yield u


@pytest.fixture(params=["UNAVAILABLE", "CANCELLED"])
def scripted_server(request):
    service = ScriptedService(getattr(grpc.StatusCode, request.param))
    handlers = {
        "doSomething": grpc.stream_unary_rpc_method_handler(
            service.doSomething, request_deserializer=conftest.pb.WorkItem.FromString,
            response_serializer=conftest.pb.SubmitReply.SerializeToString),
        "getUpdates": grpc.unary_stream_rpc_method_handler(
            service.getUpdates, request_deserializer=conftest.pb.UpdatesRequest.FromString,
            response_serializer=conftest.pb.Update.SerializeToString),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(conftest.SERVICE,
                                                                          handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    service.address = f"127.0.0.1:{port}"
    yield service
    server.stop(grace=0).wait(timeout=5)


def test_resends_an_unanswered_call_and_prints_each_item_once(kind, scripted_server,
                                                              run_client, tmp_path):
    items = write_lines(tmp_path / "items.txt", [f"p{n}" for n in range(5)])
    c = run_client(kind, scripted_server.address, items, "--kind", "echo")
    assert c.rc == 0, c.describe()
    calls = scripted_server.calls
    assert len(calls) == 2 and calls[0] == calls[1], calls     # the same call, sent again
    finals = c.finals()                                         # fails on an id printed twice
    assert sorted(finals) == sorted(calls[0])
    s = c.summary()
    assert s["resubmitted_calls"] == 1 and s["duplicates_ignored"] == 4, s
