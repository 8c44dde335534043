"""Who may do what: a grpc.listen entry may name the methods it serves
({address: ..., methods: [...]}); a method its listener does not serve is
PERMISSION_DENIED, named in the status message and in the access log.
Health and reflection are served on every listener."""
import re
import shutil
import signal
import subprocess
import uuid

import grpc
import pytest
import yaml

import conftest
from conftest import (BINARY, FINAL_STATES, SUCCEEDED, Client, kill_tree, free_port, run_cli,
                      wait_for)

CHECK = "/grpc.health.v1.Health/Check"
SERVING = b"\x08\x01"


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def health(address):
    with grpc.insecure_channel(address) as ch:
        check = ch.unary_unary(CHECK, request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
        return check(b"", timeout=10)


def submit_error(client):
    """doSomething of one echo item, expected to fail: its RpcError."""
    with pytest.raises(grpc.RpcError) as e:
        client.submit([{"id": unique("denied"), "kind": "echo", "payload": b"x"}], timeout=10)
    return e.value


def wait_submit_ok(client, timeout=15):
    """doSomething until it is accepted (a rebind may still be under way)."""
    def ok():
        try:
            return client.submit([{"id": unique("ok"), "kind": "echo", "payload": b"x"}],
                                 timeout=5).accepted == 1
        except grpc.RpcError:
            return False
    wait_for(ok, timeout, "doSomething to be accepted")


def read(path):
    return path.read_text() if path.exists() else ""


# ---- serving and denying ----------------------------------------------------

def test_mixed_list_denies_and_logs(start_daemon, tmp_path):
    """A plain entry serves everything; an entry with methods: [getUpdates]
    streams updates but refuses doSomething, in the status and the access log."""
    watch = f"127.0.0.1:{free_port()}"
    access = tmp_path / "access.log"
    d = start_daemon(None, start=False)
    d.write_config({"grpc": {"listen": [d.address, {"address": watch, "methods": ["getUpdates"]}]},
                    "log": {"access": str(access)}})
    d.start()
    full, limited = d.client(), Client(watch)
    d.clients.append(limited)

    err = submit_error(limited)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
    assert "doSomething" in err.details() and watch in err.details(), err.details()
    assert "getUpdates" in err.details(), err.details()   # what it does serve
    wait_for(lambda: re.search(r" doSomething PERMISSION_DENIED ", read(access)), 10,
             f"the access-log line of the denied call in {read(access)!r}")

    # getUpdates on the limited listener sees what the full one accepted.
    sub = limited.subscribe(kinds=["echo"])

    def live():
        probe = unique("probe")
        full.submit([{"id": probe, "kind": "echo", "payload": b"p"}], timeout=10)
        try:
            return sub.wait(lambda s: probe in s.final, 1.0, "a probe on the limited listener")
        except AssertionError:
            if sub.done:
                raise
            return False
    wait_for(live, 15, "the limited listener's stream to be live")
    item = unique("seen")
    full.submit([{"id": item, "kind": "echo", "payload": b"p"}], timeout=10)
    sub.wait_final([item], timeout=10)
    assert sub.final[item].state == SUCCEEDED
    # The full listener serves both; health is served on both.
    assert full.submit([{"id": unique("full"), "kind": "echo", "payload": b"x"}]).accepted == 1
    assert health(d.address) == SERVING and health(watch) == SERVING


def test_denied_for_every_method_but_the_served_one(start_daemon, tmp_path):
    """methods: [doSomething]: getUpdates is denied (on a stream, with its
    payload already read), doSomething works, an unknown method stays
    UNIMPLEMENTED, and the denial is logged under getUpdates."""
    access = tmp_path / "access.log"
    d = start_daemon(None, start=False)
    d.write_config({"grpc": {"listen": [{"address": d.address, "methods": ["doSomething"]}]},
                    "log": {"access": str(access)}})
    d.start()
    c = d.client()
    assert c.submit([{"id": unique("a"), "kind": "echo", "payload": b"x"}]).accepted == 1
    sub = c.subscribe()
    sub.wait_end(timeout=10)
    assert sub.status_code() == grpc.StatusCode.PERMISSION_DENIED, sub.describe_end()
    wait_for(lambda: re.search(r" getUpdates PERMISSION_DENIED ", read(access)), 10,
             f"the access-log line of the denied getUpdates in {read(access)!r}")
    with grpc.insecure_channel(d.address) as ch:
        nope = ch.unary_unary("/com.agrounds.dosomething.v1.DoSomethingService/noSuchMethod",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            nope(b"", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED, e.value


def test_default_serves_all(start_daemon):
    """No methods, or a mapping with only an address: every method."""
    other = f"127.0.0.1:{free_port()}"
    d = start_daemon(None, start=False)
    d.write_config({"grpc": {"listen": [d.address, {"address": other}]}})
    d.start()
    for address in (d.address, other):
        c = Client(address)
        d.clients.append(c)
        reply, sub = c.run_items([{"id": unique("all"), "kind": "echo", "payload": b"x"}])
        assert reply.accepted == 1


def test_unix_socket_listener_with_methods(start_daemon, tmp_path):
    d = start_daemon(None, start=False)
    d.write_config({"grpc": {"listen": [d.address,
                                        {"address": "unix:admin.sock",
                                         "methods": ["getUpdates", "cancel", "retry",
                                                     "getItems"]}]}})
    d.start()
    path = d.dir / "admin.sock"
    admin = Client(f"unix:{path}")
    d.clients.append(admin)
    err = submit_error(admin)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
    assert f"unix:{path}" in err.details(), err.details()
    assert health(f"unix:{path}") == SERVING
    # The TCP listener still serves doSomething.
    assert d.client().submit([{"id": unique("tcp"), "kind": "echo",
                               "payload": b"x"}]).accepted == 1


# ---- reload -----------------------------------------------------------------

def listening_lines(d):
    return len(re.findall(r"listening on ", d.log_text()))


def test_reload_changes_methods(start_daemon):
    other = f"127.0.0.1:{free_port()}"
    d = start_daemon(None, start=False)
    d.write_config({"grpc": {"listen": [d.address,
                                        {"address": other, "methods": ["getUpdates"]}]}})
    d.start()
    c = Client(other)
    d.clients.append(c)
    assert submit_error(c).code() == grpc.StatusCode.PERMISSION_DENIED

    d.write_config({"grpc": {"listen": [d.address,
                                        {"address": other, "methods": ["doSomething"]}]}})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reload.*generation 2\b")
    wait_submit_ok(c)
    sub = c.subscribe()
    sub.wait_end(timeout=10)
    assert sub.status_code() == grpc.StatusCode.PERMISSION_DENIED, sub.describe_end()

    # Back to all (a plain string): both served.
    d.write_config({"grpc": {"listen": [d.address, other]}})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reload.*generation 3\b")
    wait_submit_ok(c)
    live = c.subscribe(sync=True)

    # Nothing changed: no rebind, and the open stream goes on.
    before = listening_lines(d)
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reload.*generation 4\b")
    wait_submit_ok(c)
    c.sync(live)
    assert not live.done, live.describe_end()
    assert listening_lines(d) == before, d.log_tail()


def test_reload_with_bad_methods_keeps_the_old(start_daemon):
    other = f"127.0.0.1:{free_port()}"
    d = start_daemon(None, start=False)
    d.write_config({"grpc": {"listen": [d.address,
                                        {"address": other, "methods": ["getUpdates"]}]}})
    d.start()
    d.write_config({"grpc": {"listen": [d.address,
                                        {"address": other, "methods": ["doSomethingElse"]}]}})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"doSomethingElse")
    c = Client(other)
    d.clients.append(c)
    assert submit_error(c).code() == grpc.StatusCode.PERMISSION_DENIED
    assert d.client().submit([{"id": unique("still"), "kind": "echo",
                               "payload": b"x"}]).accepted == 1


# ---- binary upgrade ---------------------------------------------------------

@pytest.mark.deadline(90)
def test_usr2_hands_over_to_a_listener_serving_do_something(start_daemon, monkeypatch,
                                                           tmp_path):
    """The first listener serves only getUpdates: the old instance's queue
    goes to the new one through the listener that serves doSomething."""
    binary = tmp_path / "dosomethingd"
    shutil.copy(conftest.BINARY, binary)
    monkeypatch.setattr(conftest, "BINARY", str(binary))
    watch = f"127.0.0.1:{free_port()}"
    d = start_daemon(None, start=False)
    d.write_config({"workers": {"count": 1}, "shutdown_timeout": "1s",
                    "grpc": {"listen": [{"address": watch, "methods": ["getUpdates"]},
                                        d.address]}})
    d.start()
    old_master = d.master_pid
    client = d.client()
    # 20 x 500 ms on one worker: far more than shutdown_timeout.
    ids = [unique("u") for _ in range(20)]
    assert client.submit([{"id": i, "kind": "sleep", "params": {"ms": "500"}}
                          for i in ids]).accepted == 20
    new_master = None
    try:
        d.send_signal(signal.SIGUSR2)
        wait_for(lambda: d.read_pid_file() not in (None, old_master), 10,
                 "the new master's pid file")
        new_master = d.read_pid_file()
        d.known_pids.add(new_master)
        assert d.wait_exit(timeout=20) == 0, "the old master did not drain and exit"
        d.wait_log(r"handover: \d+ items handed over to the new instance")
        assert "PERMISSION_DENIED" not in d.log_text(), d.log_tail()
        watcher = Client(watch)
        d.clients.append(watcher)
        sub = watcher.subscribe(replay=True, after_seq=0, states=list(FINAL_STATES))
        handed = re.search(r"handover: (\d+) items handed over", d.log_text()).group(1)
        wait_for(lambda: len(set(ids) & set(sub.final)) >= int(handed), 40,
                 f"{handed} handed-over items to end on the new instance")
        assert all(u.state == SUCCEEDED for u in sub.final.values())
    finally:
        if new_master is not None:
            kill_tree(new_master)


# ---- config errors ----------------------------------------------------------

BAD = [
    ({"address": "127.0.0.1:1", "methods": ["frobnicate"]},
     r"grpc\.listen\[1\]\.methods\[0\]: unknown method \"frobnicate\""),
    ({"address": "127.0.0.1:1", "methods": ["DoSomething"]},     # names are case-sensitive
     r"grpc\.listen\[1\]\.methods\[0\]: unknown method \"DoSomething\""),
    ({"address": "127.0.0.1:1", "methods": []},
     r"grpc\.listen\[1\]\.methods: must name at least one method"),
    ({"address": "127.0.0.1:1", "methods": ["cancel", "retry", "cancel"]},
     r"grpc\.listen\[1\]\.methods\[2\]: duplicate method cancel"),
    ({"methods": ["cancel"]},
     r"grpc\.listen\[1\]: a listen entry written as a mapping needs an address"),
    ({"address": "127.0.0.1:1", "method": ["cancel"]},
     r"grpc\.listen\[1\]\.method: unknown key \"method\""),
    ({"address": "127.0.0.1:1", "methods": "cancel"},
     r"grpc\.listen\[1\]\.methods: must be a list of method names"),
    ({"address": "127.0.0.1:1", "methods": [["cancel"]]},
     r"grpc\.listen\[1\]\.methods\[0\]: must be a scalar"),
    ({"address": "nowhere", "methods": ["cancel"]},
     r"grpc\.listen\[1\]\.address: must be host:port"),
    ({"address": "127.0.0.1:9", "methods": ["cancel"]},      # the same address twice
     r"grpc\.listen\[1\]: duplicate address 127\.0\.0\.1:9"),
]


@pytest.mark.parametrize("entry,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_entry_fails_check_and_start(tmp_path, entry, message):
    config = tmp_path / "ds.yaml"
    config.write_text(yaml.safe_dump({
        "log": {"file": str(tmp_path / "ds.log")}, "pid_file": "ds.pid",
        "status": {"listen": False},
        "grpc": {"listen": ["127.0.0.1:9", entry]}}))
    r = run_cli("-t", "-c", config)
    assert r.returncode == 2, f"-t exited {r.returncode}: {r.stderr}"
    assert re.search(message, r.stderr), r.stderr
    try:
        p = subprocess.run([BINARY, "-c", str(config)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("the daemon started on a bad config") from None
    assert p.returncode != 0, "the daemon started on a bad config"
    assert re.search(message, p.stderr + read(tmp_path / "ds.log")), p.stderr


def test_print_round_trips_the_mapping_form(tmp_path):
    config = tmp_path / "ds.yaml"
    config.write_text(
        "grpc:\n"
        "  listen:\n"
        "    - \"127.0.0.1:9\"\n"
        "    - {address: \"unix:admin.sock\", methods: [retry, getItems, cancel]}\n"
        "    - {address: \"127.0.0.1:10\", methods: [doSomething, getUpdates, getItems, "
        "cancel, retry]}\n")
    r = run_cli("-T", "-c", config)
    assert r.returncode == 0, r.stderr
    listen = yaml.safe_load(r.stdout)["grpc"]["listen"]
    # Methods in the proto's order; all of them is a plain address.
    assert listen == ["127.0.0.1:9",
                      {"address": f"unix:{tmp_path}/admin.sock",
                       "methods": ["getItems", "cancel", "retry"]},
                      "127.0.0.1:10"], listen
    printed = tmp_path / "printed.yaml"
    printed.write_text(r.stdout)
    r2 = run_cli("-T", "-c", printed)
    assert r2.returncode == 0 and r2.stdout.split("\n", 1)[1] == r.stdout.split("\n", 1)[1]
