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
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
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
    assert rc == 0, f"{c.describe()}\nold daemon:\n{a.log_tail()}\nnew daemon:\n{b.log_tail()}"
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


# ---- resending with the same ids, looking results up (getItems) ---------------

def runs_handler(runs_file):
    """An exec handler that appends the item's payload (its id) to runs_file
    on every run, so the test counts runs, and echoes it."""
    script = f'id=$(cat); echo "$id" >> {runs_file}; sleep 0.05; printf %s "$id"'
    return {"exec": ["sh", "-c", script]}


def with_runs(runs_file):
    """The handlers of a test config: echo, sleep and runs."""
    return {"default": "echo", "echo": {"builtin": "echo"}, "sleep": {"builtin": "sleep"},
            "runs": runs_handler(runs_file)}


def count_runs(runs_file):
    counts = {}
    if runs_file.exists():
        for line in runs_file.read_text().split():
            counts[line] = counts.get(line, 0) + 1
    return counts


def get_items(client, ids):
    """id -> Item, by getItems (1000 ids a call)."""
    out = {}
    for i in range(0, len(ids), 1000):
        reply = client.get_items(ids[i:i + 1000])
        assert not reply.not_found, reply.not_found[:5]
        out.update({it.id: it for it in reply.items})
    return out


@pytest.mark.deadline(120)
def test_a_killed_grpc_process_mid_submit_runs_each_item_once(kind, start_daemon, run_client,
                                                              tmp_path):
    """With the journal on, the grpc process is SIGKILLed while a submit call
    is blocked in the middle of its chunk (the queue is full). The client
    resends the call with the same ids: what was accepted before the kill
    counts in duplicates, and it looks up what finished while its stream was
    broken. Every item gets exactly one final on the client's side; each ran
    at least once and at most as many times as its attempt number says (a
    run of a duplicate would be one more), which is at most 2 (the journal's
    recovery of what the kill interrupted)."""
    runs = tmp_path / "runs.txt"
    d = start_daemon({"workers": {"count": 2},
                      "queue": {"journal": str(tmp_path / "journal"), "capacity": 20},
                      "handlers": with_runs(runs)})
    n = 150
    ids = [f"r-{i}" for i in range(n)]
    items = write_lines(tmp_path / "items.txt",
                        [json.dumps({"id": i, "kind": "runs", "payload": i}) for i in ids])
    c = run_client(kind, d.address, items, "--chunk", "100", "--deadline", "90", wait=False)
    c.wait_records(5, timeout=30)
    old = d.grpc_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    assert len(c.records) < 100, "the kill came after the first call's items were all final"
    wait_for(lambda: d.grpc_pid() not in (None, old), 10, "a new grpc process")

    rc = c.wait(timeout=100)
    assert rc == 0, c.describe()
    finals = c.finals()                             # fails on an id printed twice
    assert sorted(finals) == sorted(ids)
    for i in ids:
        assert finals[i]["state"] == "SUCCEEDED" and finals[i]["result"] == i, finals[i]
    s = c.summary()
    assert s["accepted"] + s["duplicates"] + s["rejected"] == n, s
    assert s["rejected"] == 0 and s["resubmitted_calls"] >= 1, s
    # At least the 5 finals printed before the kill were accepted by the
    # unanswered call: the resent call counted them as duplicates.
    assert s["duplicates"] >= 5, s

    known = get_items(d.client(), ids)
    counted = count_runs(runs)
    for i in ids:
        assert conftest.state_name(known[i].state) == "SUCCEEDED", (i, known[i])
        # A run of a duplicate would be a run beyond the attempts. (An attempt
        # may have no run: the item was on its way to a worker killed with
        # the grpc process.)
        assert 1 <= counted.get(i, 0) <= known[i].attempt <= 2, \
            f"{i}: ran {counted.get(i, 0)} times, attempt {known[i].attempt}"


class LostLogService:
    """A stand-in server whose update log is lost: it runs every item it is
    given at once but publishes nothing, then breaks the client's first
    update stream (UNAVAILABLE, as a dying grpc process does). Only getItems
    knows the results."""

    def __init__(self):
        self.cond = threading.Condition()
        self.items = {}
        self.subscriptions = 0
        self.lookups = []

    def doSomething(self, request_iterator, context):
        got = list(request_iterator)
        with self.cond:
            for it in got:
                self.items[it.id] = it
            self.cond.notify_all()
        return conftest.pb.SubmitReply(accepted=len(got))

    def getUpdates(self, request, context):
        context.send_initial_metadata(())
        with self.cond:
            self.subscriptions += 1
            first = self.subscriptions == 1
            if first:
                self.cond.wait_for(lambda: self.items, timeout=20)
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: the grpc process died")
        while context.is_active():
            time.sleep(0.1)

    def getItems(self, request, context):
        reply = conftest.pb.ItemsReply()
        with self.cond:
            self.lookups.append(list(request.item_ids))
            for n, item_id in enumerate(request.item_ids):
                it = self.items.get(item_id)
                if it is None:
                    reply.not_found.append(item_id)
                    continue
                reply.items.add(id=it.id, kind=it.kind or "echo", batch=it.batch,
                                state=conftest.pb.SUCCEEDED, attempt=1,
                                result=it.payload if request.with_results else b"",
                                last_seq=100 + n)
        return reply


@pytest.fixture
def lost_log_server():
    service = LostLogService()
    pb = conftest.pb
    handlers = {
        "doSomething": grpc.stream_unary_rpc_method_handler(
            service.doSomething, request_deserializer=pb.WorkItem.FromString,
            response_serializer=pb.SubmitReply.SerializeToString),
        "getUpdates": grpc.unary_stream_rpc_method_handler(
            service.getUpdates, request_deserializer=pb.UpdatesRequest.FromString,
            response_serializer=pb.Update.SerializeToString),
        "getItems": grpc.unary_unary_rpc_method_handler(
            service.getItems, request_deserializer=pb.ItemsRequest.FromString,
            response_serializer=pb.ItemsReply.SerializeToString),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(conftest.SERVICE,
                                                                          handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    service.address = f"127.0.0.1:{port}"
    yield service
    server.stop(grace=0).wait(timeout=5)


def test_results_missed_while_disconnected_come_from_getitems(kind, lost_log_server,
                                                              run_client, tmp_path):
    items = write_lines(tmp_path / "items.txt", [f"p{n}" for n in range(7)])
    c = run_client(kind, lost_log_server.address, items, "--kind", "echo", "--quiet",
                   timeout=30)
    assert c.rc == 0, c.describe()
    finals = c.finals()
    assert len(finals) == 7
    for rec in finals.values():
        assert rec["state"] == "SUCCEEDED" and rec.get("looked_up") is True, rec
        assert rec["result"] == f"p{rec['id'].rsplit('-', 1)[1]}", rec
    s = c.summary()
    assert s["looked_up"] == 7 and s["reconnects"] >= 1, s
    assert sorted(lost_log_server.lookups[0]) == sorted(finals), lost_log_server.lookups


def test_items_an_earlier_run_sent_are_duplicates_looked_up_not_run(kind, start_daemon,
                                                                    run_client, tmp_path):
    """The same ids sent again by another run (another batch): not run again;
    the finals come from getItems, also of items still running then
    (getItems with wait)."""
    runs = tmp_path / "runs.txt"
    d = start_daemon({"handlers": with_runs(runs)})
    cl = d.client()
    done_ids = [f"done-{i}" for i in range(5)]
    reply, _ = cl.run_items([{"id": i, "kind": "runs", "payload": i.encode(),
                              "batch": "earlier"} for i in done_ids])
    assert reply.accepted == 5
    slow_ids = [f"slow-{i}" for i in range(3)]
    reply = cl.submit([{"id": i, "kind": "sleep", "params": {"ms": "700"}, "batch": "earlier"}
                       for i in slow_ids])
    assert reply.accepted == 3
    items = write_lines(tmp_path / "items.txt",
                        [json.dumps({"id": i, "kind": "runs", "payload": i}) for i in done_ids]
                        + [json.dumps({"id": i, "kind": "sleep", "params": {"ms": "700"}})
                           for i in slow_ids])
    c = run_client(kind, d.address, items, "--deadline", "30", timeout=40)
    assert c.rc == 0, c.describe()
    finals = c.finals()
    assert sorted(finals) == sorted(done_ids + slow_ids)
    for rec in finals.values():
        assert rec["state"] == "SUCCEEDED" and rec["looked_up"] is True, rec
        assert rec["batch"] == "earlier", rec
    for i in done_ids:
        assert finals[i]["result"] == i
    s = c.summary()
    assert (s["accepted"], s["duplicates"], s["rejected"], s["looked_up"]) == (0, 8, 0, 8), s
    assert count_runs(runs) == {i: 1 for i in done_ids}


# ---- the item calls as a library ----------------------------------------------

NODE_API_SCRIPT = r"""
const { ItemsClient } = require(process.argv[1]);
(async () => {
  const c = ItemsClient.connect(process.argv[2]);
  const out = {};
  out.got = await c.getItems({ ids: ['long', 'nope'], withResults: true });
  out.dead = await c.deadLetters({ batches: ['api'] });
  out.cancel = await c.cancel({ ids: ['long', 'nope'], reason: 'from the api test' });
  out.retry = await c.retry({ ids: out.dead });
  out.waited = await c.getItems({ ids: ['long'], wait: true, timeoutMs: 10000 });
  c.close();
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { process.stderr.write(String(e.stack || e)); process.exit(1); });
"""


def api_calls(kind, address):
    """The same calls through each client's wrappers; a dict of plain values."""
    if kind == "node":
        node, script = node_command()
        r = subprocess.run([node, "-e", NODE_API_SCRIPT, script, address], capture_output=True,
                           text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        num = int
        return {
            "found": [it["id"] for it in out["got"]["items"]],
            "state": out["got"]["items"][0]["state"],
            "not_found": out["got"]["not_found"], "dead": out["dead"],
            "cancel": (num(out["cancel"]["cancelled"]), out["cancel"]["not_found"]),
            "retry": (num(out["retry"]["requeued"]), num(out["retry"]["not_retryable"])),
            "waited": (out["waited"]["items"][0]["state"], out["waited"]["items"][0]["error"]),
        }
    code = (
        "import json, sys, grpc\n"
        f"sys.path.insert(0, {str(PY_CLIENT.parent)!r})\n"
        "import dosomething_client as dc\n"
        "pb, pb_grpc = dc.load_stubs(None, None)\n"
        "ch = grpc.insecure_channel(sys.argv[1])\n"
        "c = dc.Client(pb, pb_grpc.DoSomethingServiceStub(ch))\n"
        "got = c.get_items(['long', 'nope'], with_results=True, timeout=10)\n"
        "dead = c.dead_letters(batches=['api'], timeout=10)\n"
        "cancel = c.cancel(['long', 'nope'], reason='from the api test', timeout=10)\n"
        "retry = c.retry(dead, timeout=10)\n"
        "waited = c.get_items(['long'], wait=True, timeout=10).items[0]\n"
        "print(json.dumps({'found': [i.id for i in got.items],\n"
        "  'state': pb.State.Name(got.items[0].state), 'not_found': list(got.not_found),\n"
        "  'dead': dead, 'cancel': (cancel.cancelled, list(cancel.not_found)),\n"
        "  'retry': (retry.requeued, retry.not_retryable),\n"
        "  'waited': (pb.State.Name(waited.state), waited.error)}))\n")
    r = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    out["cancel"], out["retry"], out["waited"] = map(tuple, (out["cancel"], out["retry"],
                                                            out["waited"]))
    return out


def test_getitems_cancel_and_retry_wrappers(kind, start_daemon):
    d = start_daemon()
    cl = d.client()
    sub = cl.subscribe(states=[conftest.pb.STARTED, conftest.pb.FAILED])
    reply = cl.submit([
        {"id": "long", "kind": "sleep", "params": {"ms": "20000"}, "batch": "api"},
        {"id": "dead", "kind": "sleep", "params": {"ms": "1000"}, "timeout_ms": 50,
         "max_attempts": 1, "batch": "api"},
    ])
    assert reply.accepted == 2
    sub.wait(lambda s: "dead" in s.final and any(
        u.item_id == "long" and u.state == conftest.pb.STARTED for u in s.updates),
        15, "long started, dead failed")
    out = api_calls(kind, d.address)
    assert out["found"] == ["long"] and out["state"] == "STARTED", out
    assert out["not_found"] == ["nope"], out
    assert out["dead"] == ["dead"], out
    assert out["cancel"] == (1, ["nope"]), out
    assert out["retry"] == (1, 0), out
    assert out["waited"] == ("CANCELLED", "from the api test"), out
