"""Descriptors: the budget a config needs against RLIMIT_NOFILE (-t and a
start refuse what cannot fit), the daemon at its descriptor limit (idle
connections to the gRPC and status ports, a worker respawn while the table
is full), and the status port through a binary upgrade."""
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import time

import grpc
import pytest

import conftest
from conftest import descendants, free_port, pid_alive, wait_for

# Low enough that a test can fill it, high enough for 2 workers.
LOW_LIMIT = 256


def limited(soft, hard=None):
    hard = soft if hard is None else hard
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run_binary(args, nofile, cwd, timeout=30):
    return subprocess.run([conftest.BINARY] + args, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=limited(nofile))


def http_get(address, path, timeout=5):
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


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
            for pid in [new_master] + descendants(new_master):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
