"""
Limits on what one client can cost (updates.max_subscribers, queue.max_params,
the fixed id/batch/param lengths, grpc.max_concurrent_streams) and the mode
and owner of unix: sockets (grpc.unix_mode, grpc.unix_owner).
"""
import os
import pwd
import signal
import stat
import time

import grpc
import pytest

from conftest import SUCCEEDED, Client, run_cli, wait_for

# A channel of its own: grpcio otherwise shares one connection (a subchannel)
# between channels to the same address, and the stream limit is per connection.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def test_too_many_subscribers_get_resource_exhausted(start_daemon):
    d = start_daemon({"updates": {"max_subscribers": 2}})
    c = d.client()
    s1 = c.subscribe(sync=True, name="s1")
    s2 = c.subscribe(sync=True, name="s2")
    s3 = c.subscribe(name="s3")
    err = s3.wait_end(timeout=10)
    assert err is not None, s3.describe_end()
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, s3.describe_end()
    assert err.details() == "too many subscribers (max 2)"
    # The two within the limit are untouched and still served.
    assert not s1.done and not s2.done
    assert c.submit([{"id": "after", "kind": "echo", "payload": b"x"}]).accepted == 1
    s1.wait_final(["after"])
    s2.wait_final(["after"])

    # One ends: there is room again.
    s1.cancel()
    deadline = time.monotonic() + 10
    while True:
        s4 = c.subscribe(name="s4")
        try:
            c.sync(s4, timeout=3)
            break
        except AssertionError:
            assert s4.status_code() == grpc.StatusCode.RESOURCE_EXHAUSTED, s4.describe_end()
            assert time.monotonic() < deadline, "no room after a subscriber ended"
            time.sleep(0.1)
    assert not s2.done


def test_too_many_params_is_a_rejection_naming_the_limit(start_daemon):
    d = start_daemon({"queue": {"max_params": 4}})
    c = d.client()
    items = [
        {"id": "ok1", "kind": "echo", "payload": b"a"},
        {"id": "many", "kind": "sleep", "params": {f"k{i}": "1" for i in range(5)}},
        {"id": "ok2", "kind": "sleep", "params": {"ms": "1", "steps": "1"}},
        {"id": "longkey", "kind": "sleep", "params": {"k" * 129: "1"}},
        {"id": "longvalue", "kind": "sleep", "params": {"ms": "1" * 4097}},
        {"id": "ok3", "kind": "echo", "payload": b"b"},
    ]
    reply, sub = c.run_items(items)
    assert reply.accepted == 3
    assert reply.rejected == 3
    reasons = {r.id: (r.index, r.reason) for r in reply.rejections}
    assert reasons["many"] == (1, "5 params, more than queue.max_params (4)")
    assert reasons["longkey"][0] == 3
    assert "param key" in reasons["longkey"][1] and "longer than 128" in reasons["longkey"][1]
    assert reasons["longvalue"][0] == 4
    assert reasons["longvalue"][1] == "param ms: value is 4097 bytes, longer than 4096"
    for i in ("ok1", "ok2", "ok3"):
        assert sub.final[i].state == SUCCEEDED, sub.states_of(i)
    for i in ("many", "longkey", "longvalue"):
        assert not sub.of(i)


def test_long_id_and_batch_are_rejections(start_daemon):
    d = start_daemon()
    c = d.client()
    long_id = "x" * 300
    items = [
        {"id": long_id, "kind": "echo", "payload": b"a"},
        {"id": "y" * 256, "kind": "echo", "payload": b"b"},
        {"id": "longbatch", "kind": "echo", "batch": "b" * 300},
        {"id": "ok", "kind": "echo", "batch": "b" * 256},
    ]
    reply, sub = c.run_items(items)
    assert reply.accepted == 2 and reply.rejected == 2
    by_index = {r.index: r for r in reply.rejections}
    assert by_index[0].reason == "id is longer than 256 bytes"
    assert by_index[0].id == long_id[:256]      # the reply does not echo it whole
    assert by_index[2].reason == "batch is longer than 256 bytes"
    assert sub.final["y" * 256].state == SUCCEEDED
    assert sub.final["ok"].state == SUCCEEDED


@pytest.mark.deadline(60)
def test_max_concurrent_streams_holds_excess_calls_in_the_client(start_daemon):
    d = start_daemon({"grpc": {"max_concurrent_streams": 2}})
    # The item every subscription below replays: one that is served gets it.
    other = d.client(options=OWN_CONNECTION)
    reply, _ = other.run_items([{"id": "x", "kind": "echo", "payload": b"x"}])
    assert reply.accepted == 1

    c = d.client(options=OWN_CONNECTION)
    subs = []
    for n in range(2):
        s = c.subscribe(replay=True, item_ids=["x"], name=f"s{n}")
        s.wait_final(["x"], timeout=10)
        subs.append(s)
    # The third call on the same connection: grpcio holds it (HTTP/2
    # SETTINGS_MAX_CONCURRENT_STREAMS); it neither fails nor is served.
    third = c.subscribe(replay=True, item_ids=["x"], name="third")
    time.sleep(1.5)
    assert not third.done, third.describe_end()
    assert not third.updates
    # Another connection is not affected.
    other_sub = other.subscribe(replay=True, item_ids=["x"], name="other")
    other_sub.wait_final(["x"], timeout=10)

    subs[0].cancel()
    third.wait_final(["x"], timeout=10)
    assert not subs[1].done and not third.done


def _mode(path):
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def _unix_daemon(make_daemon, **grpc_extra):
    d = make_daemon()
    d.write_config({"grpc": {"listen": [d.address, "unix:ds.sock"], **grpc_extra}})
    return d


def test_unix_socket_mode_and_owner(make_daemon):
    extra = {"unix_mode": "0600"}
    if os.geteuid() == 0:
        extra["unix_owner"] = "nobody"
    d = _unix_daemon(make_daemon, **extra)
    d.start()
    path = d.dir / "ds.sock"
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    if os.geteuid() == 0:
        assert st.st_uid == pwd.getpwnam("nobody").pw_uid
    # It serves.
    u = Client(f"unix:{path}")
    try:
        reply = u.submit([{"id": "u1", "kind": "echo", "payload": b"u"}])
        assert reply.accepted == 1
    finally:
        u.close()

    # A reload with another mode binds anew, with the new mode, at the same path.
    d.write_config({**d.config, "grpc": {**d.config["grpc"], "unix_mode": "0640"}})
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: _mode(path) == 0o640, 10, "the socket at mode 0640")
    time.sleep(1.5)     # the old server has stopped by now: the path stays
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o640
    if os.geteuid() == 0:
        assert st.st_uid == pwd.getpwnam("nobody").pw_uid
    u = Client(f"unix:{path}")
    try:
        assert u.submit([{"id": "u2", "kind": "echo", "payload": b"u"}]).accepted == 1
    finally:
        u.close()


def test_unix_socket_default_mode_is_left_alone(make_daemon):
    d = _unix_daemon(make_daemon)
    d.start()
    st = os.stat(d.dir / "ds.sock")
    assert stat.S_ISSOCK(st.st_mode)
    assert st.st_uid == os.geteuid()


def test_unix_owner_must_exist(make_daemon):
    d = _unix_daemon(make_daemon, unix_owner="no-such-user-ds")
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode != 0
    assert 'grpc.unix_owner: no such user "no-such-user-ds"' in r.stderr, r.stderr
    d.write_config({**d.config, "grpc": {**d.config["grpc"], "unix_owner": "root:no-such-group-ds"}})
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode != 0
    assert 'grpc.unix_owner: no such group "no-such-group-ds"' in r.stderr, r.stderr
    d.write_config({**d.config, "grpc": {**d.config["grpc"], "unix_mode": "0999",
                                         "unix_owner": None}})
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode != 0
    assert "grpc.unix_mode: must be off or an octal mode" in r.stderr, r.stderr
