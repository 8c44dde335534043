"""
The binary upgrade (README "Binary upgrade", src/master/master.c upgrade(),
upgrade_child_exited()) when it goes wrong: the new master fails to start,
USR2 comes twice. The old master keeps its pid file and keeps serving; a
later upgrade still works.
"""
import os
import shutil
import signal
import socket
import time

import pytest

import conftest
from conftest import SUCCEEDED, kill_tree, pid_alive, wait_for

FAILED_LINE = (r"binary upgrade failed: the new master \(pid (?P<pid>\d+)\) (?P<how>[^;\n]+); "
               r"this one keeps serving")


def real_binary():
    return os.environ.get("DS_BINARY") or str(conftest.REPO / "build" / "dosomethingd")


def install(tmp_path, binary, content=None, source=None, mode=0o755):
    """As a deploy does: write the new executable beside BINARY, rename it over."""
    fresh = tmp_path / "dosomethingd.new"
    if source is not None:
        shutil.copy(source, fresh)
    else:
        fresh.write_text(content)
    fresh.chmod(mode)
    os.rename(fresh, binary)


def echo_end_to_end(d, item_id):
    """An echo item submitted (retrying UNAVAILABLE) runs to SUCCEEDED with its payload."""
    c = d.client()
    sub = c.subscribe(sync=True, name=f"sub-{item_id}")
    reply = c.submit_retrying([{"id": item_id, "kind": "echo", "payload": item_id.encode()}])
    assert reply.accepted == 1, reply
    final = sub.wait_final([item_id], timeout=10)[item_id]
    assert final.state == SUCCEEDED and final.result == item_id.encode()
    sub.cancel()


def copied_binary(tmp_path, monkeypatch):
    binary = tmp_path / "dosomethingd"
    shutil.copy(conftest.BINARY, binary)
    monkeypatch.setattr(conftest, "BINARY", str(binary))
    return binary


def upgrade_succeeds(d, tmp_path, binary):
    """Install the real executable, USR2: the new master takes over, the old
    one drains and exits 0, the pid file names the new one. Returns its pid."""
    old_master = d.master_pid
    install(tmp_path, binary, source=real_binary())
    d.send_signal(signal.SIGUSR2)
    wait_for(lambda: d.read_pid_file() not in (None, old_master), 10, "the new master's pid file")
    new_master = d.read_pid_file()
    d.known_pids.add(new_master)
    d.wait_log(rf"binary upgrade: taking over from pid {old_master}, which now drains")
    assert d.wait_exit(timeout=20) == 0, "the old master did not drain and exit"
    assert pid_alive(new_master)
    assert not os.path.exists(f"{d.pid_path}.oldbin")
    return new_master


@pytest.mark.deadline(90)
@pytest.mark.parametrize("how", ["exit2", "bad_config", "port_taken"])
def test_usr2_new_master_fails_the_old_one_keeps_serving(start_daemon, monkeypatch, tmp_path,
                                                         how):
    """The new executable exits at once (exit2), the real one cannot read the
    config (bad_config), or it starts and its grpc process cannot bind an
    address the new config adds (port_taken): the old master logs it, takes
    its pid file back and serves on; a reload works; once the cause is gone
    the next USR2 upgrades."""
    binary = copied_binary(tmp_path, monkeypatch)
    d = start_daemon()
    old_master = d.master_pid
    good = d.config
    busy = None
    new_master = None
    try:
        if how == "exit2":
            install(tmp_path, binary, content="#!/bin/sh\nexit 2\n")
        elif how == "bad_config":
            install(tmp_path, binary, source=real_binary())
            d.write_config(text=d.config_path.read_text() + "\nworkers: [oops\n")
        else:
            busy = socket.socket()
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            taken = f"127.0.0.1:{busy.getsockname()[1]}"
            install(tmp_path, binary, source=real_binary())
            d.write_config({"grpc": {"listen": [d.address, taken]}})

        d.send_signal(signal.SIGUSR2)
        m = d.wait_log(FAILED_LINE, timeout=20)
        failed_pid = int(m.group("pid"))
        assert failed_pid != old_master
        if how == "exit2":
            assert m.group("how") == "exited with status 2", m.group(0)
        else:
            assert "exited with status" in m.group("how"), m.group(0)
        d.wait_log(rf"binary upgrade: started {binary} as pid {failed_pid}")
        # The pid file names the old master again; no .oldbin is left.
        wait_for(lambda: d.read_pid_file() == old_master, 5, "the pid file back")
        assert not os.path.exists(f"{d.pid_path}.oldbin")
        assert pid_alive(old_master)
        assert not pid_alive(failed_pid)
        assert "taking over" not in d.log_text()
        echo_end_to_end(d, f"after-failed-{how}")

        # A reload still works (with the cause of the failure undone).
        d.write_config(good)
        d.send_signal(signal.SIGHUP)
        d.wait_log(r"reloaded .*generation 2")
        echo_end_to_end(d, f"after-reload-{how}")

        # The next upgrade, with the real executable, goes through.
        new_master = upgrade_succeeds(d, tmp_path, binary)
        d.master_pid, d.proc = new_master, None
        d.wait_ready()
        echo_end_to_end(d, f"after-upgrade-{how}")
    finally:
        if busy is not None:
            busy.close()
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(60)
def test_usr2_twice_upgrades_once(start_daemon, monkeypatch, tmp_path):
    """A second USR2 while the new master is still starting is refused with a
    line naming it; the upgrade completes once."""
    binary = copied_binary(tmp_path, monkeypatch)
    d = start_daemon()
    old_master = d.master_pid
    new_master = None
    try:
        # The new executable takes a second before it even starts: the
        # second USR2 surely finds the first upgrade under way.
        real = tmp_path / "dosomethingd.real"
        shutil.copy(real_binary(), real)
        install(tmp_path, binary, content=f"#!/bin/sh\nsleep 1\nexec {real} \"$@\"\n")
        d.send_signal(signal.SIGUSR2)
        started = d.wait_log(r"binary upgrade: started \S+ as pid (\d+)")
        child = int(started.group(1))
        d.known_pids.add(child)
        d.send_signal(signal.SIGUSR2)
        d.wait_log(rf"SIGUSR2: an upgrade is already under way \(new master pid {child}\)")

        wait_for(lambda: d.read_pid_file() == child, 15, "the new master's pid file")
        new_master = child
        assert d.wait_exit(timeout=20) == 0, "the old master did not drain and exit"
        log = d.log_text()
        assert log.count("binary upgrade: started") == 1, log
        assert log.count(f"binary upgrade: taking over from pid {old_master}") == 1, log
        assert "binary upgrade failed" not in log
        assert not os.path.exists(f"{d.pid_path}.oldbin")
        # Exactly one new master, serving.
        masters = [p for p in conftest.all_pids()
                   if conftest.proc_title(p) == "dosomethingd: master"
                   and conftest.proc_cwd(p) == str(d.dir.resolve())]
        assert masters == [new_master], masters
        d.master_pid, d.proc = new_master, None
        d.wait_ready()
        echo_end_to_end(d, "after-double-usr2")
    finally:
        if new_master is not None:
            kill_tree(new_master)
