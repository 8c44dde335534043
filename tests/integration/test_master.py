"""
The master: process tree, supervision, signals, pid file, command line, reload.
"""
import copy
import grp
import os
import pwd
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import (BINARY, REPO, STARTED, SUCCEEDED, free_port, is_dosomethingd,
                      missing_dependency, pid_alive, proc_title, run_cli, wait_for)


# ---- helpers ---------------------------------------------------------------

def assert_serving(d, timeout=15):
    """One echo item through the daemon, end to end."""
    c = d.client()
    item_id = f"alive-{uuid.uuid4().hex[:8]}"
    payload = os.urandom(16)
    reply, sub = c.run_items([{"id": item_id, "kind": "echo", "payload": payload}], timeout=timeout)
    assert reply.accepted == 1, f"echo item not accepted: {reply}"
    final = sub.final[item_id]
    assert final.state == SUCCEEDED and final.result == payload, \
        f"echo item ended {final}"
    c.close()


def assert_all_gone(pids, timeout, what):
    try:
        wait_for(lambda: not [p for p in pids if pid_alive(p) and is_dosomethingd(p)],
                 timeout, what)
    except AssertionError:
        left = {p: proc_title(p) for p in pids if pid_alive(p)}
        raise AssertionError(f"{what}: still running after {timeout} s: {left}") from None


def wait_new_worker(d, slot, old_pid, timeout=5):
    """Until slot shows a single worker other than old_pid; return its pid."""
    def respawned():
        pid = d.workers().get(slot)
        return pid if pid is not None and pid != old_pid else None
    try:
        return wait_for(respawned, timeout, f"worker {slot} respawned")
    except AssertionError as e:
        raise AssertionError(f"{e}; children {d.children()}; log:\n{d.log_tail()}") from None


def wait_worker_count(d, n, timeout=10, not_in=()):
    """Until exactly n workers run (slots 1..n, none of the pids in not_in)."""
    def ok():
        slots = d.worker_slots()
        pids = [p for ps in slots.values() for p in ps]
        return (sorted(slots) == list(range(1, n + 1)) and len(pids) == n
                and not set(pids) & set(not_in))
    try:
        wait_for(ok, timeout, f"{n} workers")
    except AssertionError as e:
        raise AssertionError(f"{e}; have {d.worker_slots()}; log:\n{d.log_tail()}") from None
    return d.workers()


# ---- process tree ----------------------------------------------------------

def test_process_tree(start_daemon):
    d = start_daemon({"workers": {"count": 3}})
    assert proc_title(d.master_pid).startswith("dosomethingd: master"), \
        f"master title is {proc_title(d.master_pid)!r}"
    c = d.children()
    assert len(c["grpc"]) == 1, f"expected one grpc process, have {c}"
    assert proc_title(c["grpc"][0]).startswith("dosomethingd: grpc")
    assert sorted(c["workers"]) == [1, 2, 3], f"worker slots {c['workers']}"
    assert all(len(p) == 1 for p in c["workers"].values()), f"workers {c['workers']}"
    assert not c["other"], f"unexpected children of the master: {c['other']}"
    for slot, (pid,) in c["workers"].items():
        assert proc_title(pid) == f"dosomethingd: worker {slot}", proc_title(pid)
    assert d.read_pid_file() == d.master_pid, "pid file does not name the master"
    assert_serving(d)


# ---- supervision -----------------------------------------------------------

def test_killed_worker_is_respawned_in_its_slot(daemon):
    before = daemon.workers()
    os.kill(before[1], signal.SIGKILL)
    new = wait_new_worker(daemon, 1, before[1])
    assert new != before[1]
    assert daemon.workers().get(2) == before[2], "the other worker should be untouched"
    daemon.wait_log(r"killed by signal 9")
    assert_serving(daemon)


def test_killed_grpc_process_is_respawned(daemon):
    old = daemon.grpc_pid()
    old_workers = set(daemon.worker_pids())
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: daemon.grpc_pid() not in (None, old), 5, "a new grpc process")
    daemon.wait_ready()
    # The workers' items died with it: they restart with fresh channels.
    wait_worker_count(daemon, 2, not_in=old_workers)
    assert_serving(daemon)


def test_master_sigkill_takes_children_down(daemon):
    children = daemon.all_child_pids()
    assert len(children) == 3, f"expected grpc + 2 workers, have {daemon.children()}"
    daemon.send_signal(signal.SIGKILL)
    daemon.proc.wait(timeout=5)
    assert_all_gone(children, 5, "children after the master was SIGKILLed")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_fast_stop(daemon, sig):
    children = daemon.all_child_pids()
    assert daemon.pid_path.exists(), "no pid file while running"
    status = daemon.stop(sig)
    assert status == 0, f"exit status {status} after {sig.name}; log:\n{daemon.log_tail()}"
    assert_all_gone(children, 3, f"children after {sig.name}")
    assert not daemon.pid_path.exists(), f"pid file left behind after {sig.name}"


def test_graceful_stop_finishes_queued_items(daemon):
    c = daemon.client()
    sub = c.subscribe(sync=True)
    ids = [f"q{i}" for i in range(6)]
    reply = c.submit([{"id": i, "kind": "sleep", "params": {"ms": "200"}} for i in ids])
    assert reply.accepted == len(ids), reply
    sub.wait_state(ids[0], STARTED, timeout=5)
    children = daemon.all_child_pids()
    t0 = time.monotonic()
    daemon.send_signal(signal.SIGQUIT)
    status = daemon.wait_exit(timeout=10)
    assert status == 0, f"exit status {status} after QUIT; log:\n{daemon.log_tail()}"
    # 6 x 200 ms on 2 workers: about 600 ms of work was still queued.
    assert time.monotonic() - t0 >= 0.3, "QUIT returned too fast to have drained the queue"
    sub.wait_end(timeout=5)
    done = {i: sub.final[i].state for i in ids if i in sub.final}
    assert done == {i: SUCCEEDED for i in ids}, \
        f"queued items not all finished before exit: {done}; stream {sub.describe_end()}"
    assert_all_gone(children, 3, "children after QUIT")
    assert not daemon.pid_path.exists()


def test_crash_loop_makes_master_give_up(start_daemon):
    limit = 3
    d = start_daemon({"respawn": {"backoff_min": "10ms", "backoff_max": "20ms",
                                  "stable_after": "10s", "crash_limit": limit}})
    kills = 0
    pid = d.workers()[1]

    def respawned_or_exited():
        if d.proc.poll() is not None:
            return "exited"
        new = d.workers().get(1)
        return new if new not in (None, pid) else None

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, signal.SIGKILL)
            kills += 1
        except ProcessLookupError:
            pass
        try:
            pid = wait_for(respawned_or_exited, 3, "a respawn or the master's exit")
        except AssertionError:
            raise AssertionError(f"worker 1 not respawned after kill {kills}, master still "
                                 f"running; log:\n{d.log_tail()}") from None
        if pid == "exited":
            break
    status = d.wait_exit(timeout=10)
    assert status == 1, f"master exit status {status} after a crash loop; log:\n{d.log_tail()}"
    assert re.search(r"crashed \d+ times in a row", d.log_text()), \
        f"no 'crashed N times in a row' in the log:\n{d.log_tail()}"
    assert kills == limit, f"master gave up after {kills} crashes, crash_limit is {limit}"
    assert not d.pid_path.exists(), "pid file left behind"


# ---- command line: -t, -T, -v, -h ----------------------------------------------

def test_check_config_ok(make_daemon):
    d = make_daemon()
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode == 0, f"-t failed ({r.returncode}): {r.stderr}"


def test_shipped_config_is_valid():
    conf = REPO / "conf" / "dosomething.yaml"
    r = run_cli("-t", "-c", conf)
    assert r.returncode == 0, f"conf/dosomething.yaml fails -t ({r.returncode}): {r.stderr}"


BAD_CONFIG = """\
workers:
  count: zero
  bogus_key: 1
queue:
  on_full: sometimes
"""


def test_check_config_errors(make_daemon):
    d = make_daemon()
    d.write_config(text=BAD_CONFIG)
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode == 2, f"-t on a bad config exited {r.returncode}: {r.stderr}"
    path = re.escape(str(d.config_path))
    for line, key in [(2, "count"), (3, "bogus_key"), (5, "on_full")]:
        rx = rf"(?m)^{path}:{line}:\d+: .*{key}.*: \S"
        assert re.search(rx, r.stderr), \
            f"no 'FILE:{line}:COL: ...{key}: reason' line in stderr:\n{r.stderr}"


def test_check_config_syntax_error(make_daemon):
    d = make_daemon()
    d.write_config(text="workers:\n  count: 2\ngrpc: [unclosed\n")
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode == 2, f"-t on broken YAML exited {r.returncode}: {r.stderr}"
    assert re.search(rf"{re.escape(str(d.config_path))}:\d+:\d+: ", r.stderr), r.stderr


def test_print_config_loads_back(make_daemon):
    d = make_daemon({"workers": {"count": 3}, "queue": {"capacity": 123}})
    r = run_cli("-T", "-c", d.config_path)
    assert r.returncode == 0, f"-T failed ({r.returncode}): {r.stderr}"
    printed = yaml.safe_load(r.stdout)
    assert isinstance(printed, dict), f"-T output is not a YAML mapping:\n{r.stdout}"
    assert printed["workers"]["count"] == 3, printed.get("workers")
    assert printed["queue"]["capacity"] == 123, printed.get("queue")
    for key in ("grpc", "queue", "updates", "handlers", "respawn", "shutdown_timeout"):
        assert key in printed, f"-T output lacks {key}:\n{r.stdout}"
    again = d.dir / "printed.yaml"
    again.write_text(r.stdout)
    r2 = run_cli("-t", "-c", again)
    assert r2.returncode == 0, f"-T output fails -t ({r2.returncode}): {r2.stderr}\n{r.stdout}"
    r3 = run_cli("-T", "-c", again)
    assert r3.returncode == 0 and yaml.safe_load(r3.stdout) == printed, \
        f"-T of the -T output differs:\n{r.stdout}\n---\n{r3.stdout}"


def leaf_keys(tree, prefix=""):
    """The dotted paths of a YAML mapping's leaves."""
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            keys |= leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def print_round_trip(config_path, directory):
    """-T of config_path, written to a file that -t accepts and whose -T is
    the same text (but the first line, which names the file); returns the
    first -T output, loaded."""
    r = run_cli("-T", "-c", config_path)
    assert r.returncode == 0, f"-T failed ({r.returncode}): {r.stderr}"
    printed = directory / "printed.yaml"
    printed.write_text(r.stdout)
    r2 = run_cli("-t", "-c", printed)
    assert r2.returncode == 0, f"-T output fails -t ({r2.returncode}): {r2.stderr}\n{r.stdout}"
    r3 = run_cli("-T", "-c", printed)
    body = lambda out: out.split("\n", 1)[1]
    assert r3.returncode == 0 and body(r3.stdout) == body(r.stdout), \
        f"-T of the -T output differs:\n{r.stdout}\n---\n{r3.stdout}"
    return yaml.safe_load(r.stdout)


# A status.auth user's hash (openssl passwd -6 -salt saltsalt pw).
STATUS_AUTH_HASH = ("$6$saltsalt$pauPrmdmG4BTE9h2HPmywiw152IFch6BJCEsaY"
                    "6D.PLTfpV8sqvXwWdyfsgVgozkYH9B80bAip/08R2BPH2xk/")


def every_key_config(directory, module):
    """A config that sets every key away from its default but cluster,
    which excludes queue.journal."""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    return {
        "daemon": True,
        "pid_file": "run/ds.pid",
        "user": user,
        "log": {"level": "debug", "file": "logs/d\"s \t\u00e9\u2028.log", "access": "a.log"},
        "workers": {"count": 3, "prefetch": 8, "max_items": 1000, "cpu_affinity": "auto",
                    "nice": -5, "rlimit_nofile": 4096, "core_dumps": "on"},
        "grpc": {"listen": ["127.0.0.1:9000", "[::1]:9001", "unix:ds.sock",
                            {"address": "unix:admin.sock", "methods": ["getUpdates", "cancel"]}],
                 "max_message_size": "1536KiB",
                 "tls": {"cert": "c.pem", "key": "k.pem", "client_ca": "ca.pem",
                         "scope_ids": True},
                 "max_concurrent_streams": 7, "unix_mode": "0640",
                 "unix_owner": f"{user}:{group}", "max_connection_age": "5m",
                 "max_connection_age_grace": "1500ms",
                 "keepalive": {"time": "off", "timeout": "1s", "min_ping_interval": "90s",
                               "permit_without_calls": False}},
        "queue": {"capacity": 5, "on_full": "reject", "max_attempts": 7, "max_params": 2,
                  "journal": "j", "journal_sync": "1500ms",
                  "retry_backoff": {"min": "250ms", "max": "90s"}},
        "updates": {"history": 10, "subscriber_buffer": 3, "history_bytes": "3MiB",
                    "max_subscribers": 4, "subscribers_bytes": "2GiB"},
        "items": {"retention": {"age": "36h", "count": 7, "bytes": "5MiB"}},
        "handlers": {"default": "run", "max_result_size": 1000,
                     "run": {"exec": ["bin/x", "a b", "q\"", ""], "timeout": "1h",
                             "cancel_grace": "750ms", "env": {"A": "1\n2", "B": ""},
                             "retry_exit_codes": [255, 3, 75],
                             "concurrency": 3, "rate": "100/s", "paused": True,
                             "memory_limit": "64MiB", "cpu_limit": "30s",
                             "cache": {"size": "1MiB", "ttl": "10m"}},
                     "mod": {"module": str(module), "timeout": "3h", "cancel_grace": "0s",
                             "options": {"k": "v", "n": "2"},
                             "concurrency": 0, "rate": "6000/m", "paused": False,
                             "memory_limit": "off", "cpu_limit": "off", "cache": "off"},
                     "nap": {"builtin": "sleep", "timeout": "250ms", "cancel_grace": "10m",
                             "concurrency": 1000000, "rate": "off", "paused": False,
                             "memory_limit": "off", "cpu_limit": "off",
                             "cache": {"size": "256MiB", "ttl": "1h"}}},
        "status": {"listen": "[::1]:9090", "auth": "users"},
        "cluster": "off",
        "respawn": {"backoff_min": "250ms", "backoff_max": "2m", "stable_after": "1h",
                    "crash_limit": 3},
        "shutdown_timeout": "0s",
    }


def test_print_config_round_trip_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    printed = print_round_trip(empty, tmp_path)
    assert printed["workers"]["count"] == "auto" and printed["cluster"] is False, printed


def test_print_config_round_trip_every_key(tmp_path):
    module = Path(BINARY).resolve().parent / "modules" / "gzip.so"
    if not module.exists():
        missing_dependency(f"{module} not built; run `make`")
    journal = every_key_config(tmp_path, module)
    cluster = copy.deepcopy(journal)
    cluster["queue"]["journal"] = "off"
    cluster["cluster"] = {"redis": "redis://127.0.0.1:6380", "name": "green", "lease": "2500ms",
                          "min_replicas_ack": 1, "replicas_ack_timeout": "2s"}
    for name, config in (("journal", journal), ("cluster", cluster)):
        directory = tmp_path / name
        directory.mkdir()
        path = directory / "ds.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
        (directory / "users").write_text(f"op:{STATUS_AUTH_HASH}\n")     # status.auth
        for pem in ("c.pem", "k.pem", "ca.pem"):       # grpc.tls: -t reads them
            (directory / pem).write_text("-----BEGIN X-----\nAA==\n-----END X-----\n")
        printed = print_round_trip(path, directory)
        # Every key the tables know is printed, and set here: a key added to
        # a table shows up in -T, and then belongs in this config.
        assert leaf_keys(printed) == leaf_keys(config), \
            f"{name}: printed {sorted(leaf_keys(printed) ^ leaf_keys(config))} differently"
        assert printed["workers"]["nice"] == -5 and printed["grpc"]["unix_mode"] == "0640" \
            and printed["handlers"]["run"]["env"] == {"A": "1\n2", "B": ""} \
            and printed["handlers"]["run"]["retry_exit_codes"] == [3, 75, 255] \
            and printed["log"]["file"] == f"{directory}/logs/d\"s \t\u00e9\u2028.log" \
            and printed["grpc"]["listen"][3] == {"address": f"unix:{directory}/admin.sock",
                                                 "methods": ["getUpdates", "cancel"]}, printed


def test_version_and_help():
    r = run_cli("-v")
    assert r.returncode == 0 and "dosomethingd" in r.stdout, (r.returncode, r.stdout, r.stderr)
    r = run_cli("-h")
    assert r.returncode == 0 and "-c" in r.stdout and "-s" in r.stdout, (r.returncode, r.stdout)


# ---- -s ------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["stop", "reload", "quit", "reopen"])
def test_signal_without_daemon(make_daemon, action):
    d = make_daemon()
    r = run_cli("-s", action, "-c", d.config_path)
    assert r.returncode == 1, f"-s {action} with no daemon exited {r.returncode}"
    assert r.stderr.strip(), f"-s {action} with no daemon printed nothing on stderr"


def test_signal_with_stale_pid_file(make_daemon):
    d = make_daemon()
    d.pid_path.write_text(f"{dead_pid()}\n")
    r = run_cli("-s", "stop", "-c", d.config_path)
    assert r.returncode == 1, f"-s stop with a stale pid file exited {r.returncode}: {r.stderr}"
    assert r.stderr.strip()


def test_signal_stop(daemon):
    r = run_cli("-s", "stop", "-c", daemon.config_path)
    assert r.returncode == 0, f"-s stop failed: {r.stderr}"
    assert daemon.wait_exit() == 0
    assert not daemon.pid_path.exists()


def test_signal_reload_reopen_quit(daemon):
    old = set(daemon.worker_pids())
    r = run_cli("-s", "reload", "-c", daemon.config_path)
    assert r.returncode == 0, f"-s reload failed: {r.stderr}"
    daemon.wait_log(r"reload.*generation 2\b")
    wait_worker_count(daemon, 2, not_in=old)

    rotated = daemon.log_path.with_suffix(".log.1")
    daemon.log_path.rename(rotated)
    r = run_cli("-s", "reopen", "-c", daemon.config_path)
    assert r.returncode == 0, f"-s reopen failed: {r.stderr}"
    wait_for(lambda: daemon.log_path.exists(), 5, "the log file to be reopened")
    daemon.wait_log(r"reopened")
    assert_serving(daemon)

    r = run_cli("-s", "quit", "-c", daemon.config_path)
    assert r.returncode == 0, f"-s quit failed: {r.stderr}"
    assert daemon.wait_exit() == 0
    assert not daemon.pid_path.exists()


# ---- pid file ------------------------------------------------------------------

def dead_pid():
    """A pid that names no process now."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_pid_file_is_replaced(make_daemon):
    d = make_daemon()
    d.pid_path.write_text(f"{dead_pid()}\n")
    d.start()
    assert d.read_pid_file() == d.master_pid, f"pid file holds {d.read_pid_file()!r}"
    assert d.stop() == 0
    assert not d.pid_path.exists()


def test_second_instance_is_refused(start_daemon, make_daemon):
    a = start_daemon(name="a")
    b = make_daemon({"pid_file": str(a.pid_path)}, name="b")
    b.start(wait=False)
    try:
        status = b.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("a second daemon with the same pid file kept running") from None
    assert status != 0, "second daemon exited 0"
    assert "already running" in b.log_text(), f"no 'already running' in:\n{b.log_text()}"
    assert pid_alive(a.master_pid) and a.read_pid_file() == a.master_pid, \
        "the first daemon or its pid file suffered"
    assert_serving(a)


# ---- reload and worker count ---------------------------------------------------

def test_reload_with_more_workers(daemon):
    old = set(daemon.worker_pids())
    daemon.write_config({"workers": {"count": 3}})
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_log(r"reload.*generation 2\b")
    wait_worker_count(daemon, 3, not_in=old)
    assert_all_gone(old, 5, "old workers after reload")
    assert_serving(daemon)


def test_reload_with_invalid_config_keeps_running(daemon):
    workers = daemon.workers()
    grpc_pid = daemon.grpc_pid()
    daemon.write_config(text=daemon.config_path.read_text().replace(
        "  count: 2\n", "  count: lots\n"))
    bad_line = daemon.config_path.read_text().splitlines().index("  count: lots") + 1
    daemon.send_signal(signal.SIGHUP)
    m = daemon.wait_log(r"reload failed:.*")
    assert f"{daemon.config_path}:{bad_line}:" in m.group(0), \
        f"reload failure does not name {daemon.config_path}:{bad_line}: {m.group(0)}"
    time.sleep(0.3)
    assert daemon.workers() == workers, f"workers changed: {workers} -> {daemon.workers()}"
    assert daemon.grpc_pid() == grpc_pid
    assert_serving(daemon)


def test_reload_that_moves_the_pid_file_keeps_the_running_one(daemon):
    """pid_file needs a restart: a reload that changes it says so, one back
    to the running value does not, and the stop removes the file the master
    wrote (before, it removed the path of the last config it read: the
    running pid file stayed behind, and a file at the other path was
    removed)."""
    other = daemon.dir / "other.pid"
    other.write_text("not ours\n")
    daemon.write_config({"pid_file": "other.pid"})
    daemon.send_signal(signal.SIGHUP)
    m = daemon.wait_log(r"reloaded .*generation 2.*")
    assert "kept their old value: pid_file" in m.group(0), m.group(0)
    daemon.write_config({})
    daemon.send_signal(signal.SIGHUP)
    m = daemon.wait_log(r"reloaded .*generation 3.*")
    assert "kept their old value" not in m.group(0), m.group(0)
    daemon.write_config({"pid_file": "other.pid"})
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_log(r"reloaded .*generation 4")
    assert daemon.pid_path.exists()
    daemon.send_signal(signal.SIGQUIT)
    assert daemon.wait_exit() == 0
    assert not daemon.pid_path.exists(), "the running pid file was left behind"
    assert other.read_text() == "not ours\n"


def test_ttin_ttou_change_worker_count(daemon):
    daemon.send_signal(signal.SIGTTIN)
    wait_worker_count(daemon, 3)
    daemon.send_signal(signal.SIGTTOU)
    wait_worker_count(daemon, 2)
    daemon.send_signal(signal.SIGTTOU)
    wait_worker_count(daemon, 1)
    daemon.send_signal(signal.SIGTTOU)           # never below one
    time.sleep(0.2)
    wait_worker_count(daemon, 1)
    assert_serving(daemon)


# ---- daemon: on ----------------------------------------------------------------

def test_daemon_mode_detaches(make_daemon):
    d = make_daemon({"daemon": True})
    d.start(wait=False)
    try:
        status = d.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("daemon: on did not detach within 10 s") from None
    assert status == 0, f"the started process exited {status}; log:\n{d.log_tail()}"
    pid = wait_for(d.read_pid_file, 5, "the pid file")
    assert isinstance(pid, int) and pid != d.proc.pid, f"pid file holds {pid!r}"
    d.master_pid = pid
    d.known_pids.add(pid)
    assert pid_alive(pid) and proc_title(pid).startswith("dosomethingd: master"), \
        f"pid {pid} is {proc_title(pid)!r}"
    d.wait_ready()
    assert_serving(d)
    r = run_cli("-s", "stop", "-c", d.config_path)
    assert r.returncode == 0, f"-s stop failed: {r.stderr}"
    d.wait_exit()
    wait_for(lambda: not d.pid_path.exists(), 5, "the pid file to be removed")


# ---- a second daemon on the same addresses ----------------------------------------

def refused_start(start_daemon, overrides, name):
    """Start a daemon that must refuse to: exit 1, nothing forked, the log
    naming why; return its log."""
    d = start_daemon(overrides, wait=False, name=name)
    status = d.wait_exit(timeout=15)
    log = d.log_text()
    assert status == 1, f"exited {status}; log:\n{log}"
    assert "started grpc process" not in log, log
    assert not d.pid_path.exists(), "the pid file outlived the refused start"
    return log


def test_a_second_daemon_on_the_same_port_is_refused(start_daemon):
    """gRPC's ports have SO_REUSEPORT: a second daemon (another pid file)
    on the same port would share the first one's clients. It is refused
    at start, naming the address; the first serves on."""
    first = start_daemon(name="first")
    log = refused_start(start_daemon, {"grpc": {"listen": [first.address]}}, "second")
    assert f"grpc.listen {first.address} is in use by another process (bind() without " \
           "SO_REUSEPORT failed: Address already in use): is another dosomethingd serving " \
           "it? Not starting" in log, log
    assert_serving(first)


def test_a_second_daemon_on_the_same_unix_socket_is_refused(start_daemon, tmp_path):
    """gRPC unlinks a unix socket's path before binding it: a second daemon
    would take every new client of the first. Refused at start."""
    path = tmp_path / "ds.sock"
    first = start_daemon({"grpc": {"listen": [f"unix:{path}"]}}, name="first",
                         wait=False)
    first.wait_log(r"serving \(generation 1\)", timeout=15)
    log = refused_start(start_daemon, {"grpc": {"listen": [f"unix:{path}"]}}, "second")
    assert f"grpc.listen unix:{path} is in use by another process (a process listens " \
           "on it)" in log, log
    assert path.exists() and first.proc.poll() is None


def test_a_stale_unix_socket_file_does_not_stop_a_start(start_daemon, tmp_path):
    """A socket file nobody accepts on (a daemon that was SIGKILLed) is no
    reason to refuse: gRPC replaces it."""
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()                   # the file stays, nothing listens
    d = start_daemon({"grpc": {"listen": [f"unix:{path}"]}}, wait=False)
    d.wait_log(r"serving \(generation 1\)", timeout=15)
    assert d.proc.poll() is None


def test_a_second_daemon_on_the_same_status_port_is_refused(start_daemon):
    status = f"127.0.0.1:{free_port()}"
    first = start_daemon({"status": {"listen": status}}, name="first")
    log = refused_start(start_daemon, {"status": {"listen": status}}, "second")
    assert f"status.listen {status} is in use by another process" in log, log
    assert_serving(first)


def localhost_addresses():
    """What getaddrinfo() gives for localhost here (AI_PASSIVE, as the
    daemon asks), in its order, each once: (family, address)."""
    seen = []
    for family, _, _, _, sa in socket.getaddrinfo("localhost", None, socket.AF_UNSPEC,
                                                  socket.SOCK_STREAM, 0, socket.AI_PASSIVE):
        if (family, sa[0]) not in seen:
            seen.append((family, sa[0]))
    return seen


def listening_on(family, address, port=0):
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((address, port))
    s.listen(1)
    return s


def test_status_listen_on_a_name_checks_only_the_address_it_binds(start_daemon):
    """localhost with two addresses (127.0.0.1 and ::1): status.c binds one,
    the first IPv4 (address_pick(), as a reload does, in whatever order
    getaddrinfo() gives them), so another process on the other is no
    conflict for status.listen (before, the check refused the start); gRPC
    binds every address of a name, so for grpc.listen it still is. The
    logic alone is covered without the resolver by
    tests/unit/test_listen_probe.c."""
    addresses = localhost_addresses()
    if len(addresses) < 2:
        pytest.skip(f"localhost resolves to {[a for _, a in addresses]} only on this machine "
                    "(no ::1 localhost in /etc/hosts): no second address to hold")
    v4 = [a for a in addresses if a[0] == socket.AF_INET]
    family1, first = v4[0] if v4 else addresses[0]
    family2, second = next(a for a in addresses if a != (family1, first))
    try:
        holder = listening_on(family2, second)
    except OSError as e:
        pytest.skip(f"cannot listen on localhost's second address {second}: {e}")
    with holder:
        port = holder.getsockname()[1]
        try:
            listening_on(family1, first, port).close()      # free on the first?
        except OSError as e:
            pytest.skip(f"port {port} is taken on {first} too: {e}")
        d = start_daemon({"status": {"listen": f"localhost:{port}"}}, wait=False)
        d.wait_log(r"serving \(generation 1\)", timeout=15)
        assert d.proc.poll() is None
        assert "in use by another process" not in d.log_text(), d.log_tail()
        d.wait_log(rf"status endpoint listening on localhost:{port}")
        assert first in d.log_text(), d.log_tail()

        log = refused_start(start_daemon, {"grpc": {"listen": [f"localhost:{port}"]}},
                            "grpc-on-localhost")
        assert f"grpc.listen localhost:{port} is in use by another process" in log, log


def test_a_detaching_start_on_an_address_in_use_fails_before_it_detaches(start_daemon):
    """daemon: on: the refusal comes before the fork, so the command that
    started it exits 1 and the message reaches its stderr (log.file:
    stderr); after the fork it would exit 0 and the line go to /dev/null."""
    first = start_daemon(name="first")
    d = start_daemon({"daemon": True, "log": {"file": "stderr"},
                      "grpc": {"listen": [first.address]}}, wait=False, name="second")
    status = d.wait_exit(timeout=15)
    err = d.stderr_path.read_text()
    assert status == 1, f"exited {status}; stderr:\n{err}"
    assert f"grpc.listen {first.address} is in use by another process" in err, err
    assert_serving(first)
