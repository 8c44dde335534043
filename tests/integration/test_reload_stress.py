"""Reload (SIGHUP) under stress: overlapping reloads, and reloads at bad
moments (see README, Reload).

A reload retires every worker of the running generation (they finish the
items they hold, then exit) and starts a new one. A HUP that comes while
the workers a reload retired still finish their items does not retire
another generation: it is logged, and one more reload runs (reading the
file again) once they are gone. So a burst of HUPs (a deploy tool's, then
a config-management run's) makes at most two generations, whatever its
length, and the workers end on the file as it was at the last HUP.

A reload at a bad moment, or of a file that is not what it should be,
fails with one line naming what was wrong and changes nothing: an empty
file (caught mid-write), a FIFO or a directory, a log.file that cannot be
opened, an address another dosomethingd serves, a handler module whose
constructor aborts, exits or hangs (tried in a child first), a file of
100 MB or of binary bytes. `user` needs a restart. A graceful stop drops a
pending reload and says so.
"""
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import (FINAL_STATES, STARTED, SUCCEEDED, free_port, missing_dependency,
                      listener_uids, owns_listener, wait_for)


def started_workers(d):
    return len(re.findall(r"started worker \d+, pid", d.log_text()))


def wait_worker_count(d, n, timeout=20):
    def ok():
        slots = d.worker_slots()
        return sorted(slots) == list(range(1, n + 1)) and all(len(p) == 1 for p in slots.values())
    try:
        wait_for(ok, timeout, f"{n} workers, none retiring")
    except AssertionError as e:
        raise AssertionError(f"{e}; have {d.worker_slots()}; log:\n{d.log_tail()}") from None


def busy(start_daemon, items=8, ms=1500, overrides=None):
    d = start_daemon({"workers": {"count": 2, "prefetch": 1}, "shutdown_timeout": "30s",
                      **(overrides or {})})
    c = d.client()
    sub = c.subscribe(sync=True)
    ids = [f"r{i}" for i in range(items)]
    reply = c.submit([{"id": i, "kind": "sleep", "params": {"ms": str(ms)}} for i in ids])
    assert reply.accepted == items, reply
    sub.wait_state(ids[0], STARTED, timeout=10)
    return d, sub, ids


def assert_each_succeeded_once(sub, ids, timeout=60):
    finals = sub.wait_final(ids, timeout=timeout)
    bad = {i: f for i, f in finals.items() if f.state != SUCCEEDED}
    assert not bad, f"items not SUCCEEDED: {bad}"
    for i in ids:
        n = [u for u in sub.of(i) if u.state in FINAL_STATES]
        assert len(n) == 1, f"{i}: {len(n)} final updates: {sub.states_of(i)}"
    sub.assert_seq_increasing()


@pytest.mark.deadline(120)
@pytest.mark.parametrize("hups", [10, 1000])
def test_a_burst_of_hups_makes_at_most_two_generations(start_daemon, hups):
    """HUPs in a burst while items run: before, each one the master read
    retired every worker and started a full new set (a generation per HUP,
    each holding the items it had taken: workers.count exceeded many times
    over). Now: the first reloads, the others are coalesced into one more
    reload once the first one's retired workers are gone, which reads the
    file as the last HUP left it."""
    d, sub, ids = busy(start_daemon)
    d.write_config({"workers": {"count": 4, "prefetch": 1}, "shutdown_timeout": "30s"})
    for n in range(hups):
        if n == hups - 1:
            d.write_config({"workers": {"count": 3, "prefetch": 1}, "shutdown_timeout": "30s"})
        d.send_signal(signal.SIGHUP)
        time.sleep(0.03 if hups <= 10 else 0.0005)
    assert_each_succeeded_once(sub, ids)
    # The last HUP's file: 3 workers, and nothing retiring left.
    wait_worker_count(d, 3)
    d.wait_log(r"reloaded .*: generation \d+, 3 workers")
    spawned = started_workers(d)
    # 2 at the start, at most 4 for the first reload, 3 for the coalesced one.
    assert spawned <= 2 + 4 + 3, \
        f"{spawned} workers started for a burst of {hups} HUPs; log:\n{d.log_tail(80)}"
    assert d.proc.poll() is None, "the master exited"
    log = d.log_text()
    queued = re.findall(r"SIGHUP: .* older generation.*", log)
    assert len(queued) == 1, log
    # An operator sending a fix must see that it waits for the old workers.
    assert "this reload waits for them" in queued[0], queued[0]
    assert "reloading " in log and "a SIGHUP came while" in log, log


# ---- a file that is not what it should be -----------------------------------

def assert_kept(d, before_workers, generation=1):
    """The reload changed nothing: same workers, same listener, serving."""
    assert d.proc.poll() is None, "the master exited"
    assert d.workers() == before_workers, f"workers changed: {before_workers} -> {d.workers()}"
    c = d.client()
    reply, sub = c.run_items([{"id": f"after-{time.monotonic_ns()}", "kind": "echo",
                               "payload": b"x"}], timeout=15)
    assert reply.accepted == 1, reply
    assert f"generation {generation + 1}" not in d.log_text(), d.log_tail()


@pytest.mark.parametrize("text", ["", "\n\n", "# being written\n"],
                         ids=["0-bytes", "blank", "comments"])
def test_a_reload_of_an_empty_file_keeps_the_config(start_daemon, text):
    """A config file caught empty (truncated by an editor or a deploy tool
    before it writes, `> FILE`) used to reload as every default: the
    listener moved to 127.0.0.1:8080 and the log to stderr. A reload now
    refuses a file with no settings, naming it."""
    d = start_daemon()
    workers = d.workers()
    d.write_config(text=text)
    d.send_signal(signal.SIGHUP)
    m = d.wait_log(r"reload failed: .*")
    assert str(d.config_path) in m.group(0) and "no settings" in m.group(0), m.group(0)
    assert "keeping generation 1" in m.group(0), m.group(0)
    time.sleep(0.3)
    assert_kept(d, workers)


@pytest.mark.deadline(60)
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_reload_of_a_file_that_is_not_a_regular_file_keeps_the_config(start_daemon, kind):
    """The config path replaced by a FIFO: the master's reload used to
    block in open() until a writer came (forever): no supervision, no
    signals acted on, a stop hung. Now a reload of anything but a regular
    file fails at once, naming what it is, and the master goes on."""
    d = start_daemon()
    workers = d.workers()
    text = d.config_path.read_text()
    d.config_path.unlink()
    if kind == "fifo":
        os.mkfifo(d.config_path)
    else:
        d.config_path.mkdir()
    d.send_signal(signal.SIGHUP)
    m = d.wait_log(r"reload failed: .*")
    assert str(d.config_path) in m.group(0), m.group(0)
    assert ("a FIFO" if kind == "fifo" else "a directory") in m.group(0), m.group(0)
    assert_kept(d, workers)
    # The master acts on the next HUP: the file back, a reload.
    if kind == "fifo":
        d.config_path.unlink()
    else:
        d.config_path.rmdir()
    d.config_path.write_text(text)
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 2")
    assert d.stop(signal.SIGQUIT) == 0, d.log_tail()


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_a_reload_to_a_log_file_that_cannot_be_opened_keeps_the_config(start_daemon, where):
    """log.file changed to a path that cannot be opened: the reload used to
    apply everything else and log only `open("PATH") failed` (to the old
    file, which the master, the grpc process and the workers kept while the
    config named the other). Now it is a failed reload naming the key."""
    d = start_daemon()
    workers = d.workers()
    path = "/nonexistent-dir/ds.log" if where == "missing-dir" else str(d.dir)
    d.write_config({"log": {"file": path}})
    d.send_signal(signal.SIGHUP)
    m = d.wait_log(r"reload failed: .*")
    assert f"log.file: cannot open {path}" in m.group(0), m.group(0)
    assert "keeping generation 1" in m.group(0), m.group(0)
    time.sleep(0.3)
    assert_kept(d, workers)


def uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[1])


def test_a_reload_that_changes_user_keeps_the_running_one(start_daemon, nobody_user):
    """`user` changed by a reload (as root): the grpc process cannot change
    its user, yet the new workers ran as the new one and the master gave
    the log files to it, so the grpc process (the old user) could no longer
    reopen them (USR1, logrotate) nor its access log. `user` now needs a restart, like pid_file: the
    reload says so and keeps it."""
    other = "daemon"
    try:
        other_pw = pwd.getpwnam(other)
    except KeyError:
        pytest.skip("no user daemon")
    overrides = {"user": "nobody", "log": {"access": "access.log"}}
    d = start_daemon(overrides)
    d.write_config({**overrides, "user": other})
    d.send_signal(signal.SIGHUP)
    m = d.wait_log(r"reloaded .*generation 2.*")
    assert "kept their old value: user" in m.group(0), m.group(0)
    wait_worker_count(d, 2)
    pids = d.worker_pids() + [d.grpc_pid()]
    assert {uid_of(p) for p in pids} == {nobody_user.pw_uid}, \
        f"uids {[(p, uid_of(p)) for p in pids]}"
    for f in (d.log_path, d.dir / "access.log"):
        assert f.stat().st_uid != other_pw.pw_uid, f"{f} was given to {other}"
    c = d.client()
    reply, sub = c.run_items([{"id": "after", "kind": "echo", "payload": b"x"}])
    assert sub.final["after"].state == SUCCEEDED


@pytest.mark.parametrize("key", ["grpc", "status"])
def test_a_reload_onto_an_address_another_daemon_serves_is_refused(start_daemon, key):
    """A reload that moves a listener onto the port another dosomethingd
    serves: gRPC and the status server bind with SO_REUSEPORT, so the
    reload bound beside it and the two shared its clients (a start asks
    first and refuses; a reload did not). Now the reload fails naming the
    address, and each keeps its own."""
    other_status = free_port()
    other = start_daemon({"status": {"listen": f"127.0.0.1:{other_status}"}}, name="other")
    d = start_daemon(name="d")
    workers = d.workers()
    taken = other.port if key == "grpc" else other_status
    if key == "grpc":
        d.write_config({"grpc": {"listen": [f"127.0.0.1:{taken}"]}})
    else:
        d.write_config({"status": {"listen": f"127.0.0.1:{taken}"}})
    d.send_signal(signal.SIGHUP)
    m = d.wait_log(r"reload failed: .*")
    assert f"{key}.listen 127.0.0.1:{taken} is in use by another process" in m.group(0), \
        m.group(0)
    time.sleep(0.5)
    assert not owns_listener(d.grpc_pid(), taken), f"{d.name} listens on {taken} too"
    assert_kept(d, workers)


@pytest.mark.parametrize("key", ["grpc", "status"])
def test_a_reload_onto_an_address_another_daemon_got_by_a_reload_is_refused(
        start_daemon, nobody_user, key):
    """Both daemons `user: nobody`, started as root; "other" moves to P2 by a
    reload, so its listener on P2 is owned by nobody (its grpc process binds
    it after dropping root). Linux shares a port with SO_REUSEPORT only
    between sockets of one owner: the master's probe, made as root, failed
    to bind beside it and so refused nothing, while d's grpc process
    (nobody too) then bound beside it. The probe now binds as the grpc
    process's user: the reload is refused."""
    overrides = {"user": "nobody"}
    other = start_daemon(overrides, name="other")
    p2 = free_port()
    if key == "grpc":
        other.write_config({**overrides, "grpc": {"listen": [f"127.0.0.1:{p2}"]}})
    else:
        other.write_config({**overrides, "status": {"listen": f"127.0.0.1:{p2}"}})
    other.send_signal(signal.SIGHUP)
    other.wait_log(r"reloaded .*generation 2")
    wait_for(lambda: owns_listener(other.grpc_pid(), p2), 20, f"other listens on {p2}")
    d = start_daemon(overrides, name="d")
    workers = d.workers()
    if key == "grpc":
        d.write_config({**overrides, "grpc": {"listen": [f"127.0.0.1:{p2}"]}})
    else:
        d.write_config({**overrides, "status": {"listen": f"127.0.0.1:{p2}"}})
    d.send_signal(signal.SIGHUP)
    m = d.wait_log(r"reload(ed .*generation 2| failed: ).*")
    assert f"{key}.listen 127.0.0.1:{p2} is in use by another process" in m.group(0), \
        m.group(0)
    time.sleep(0.5)
    assert not owns_listener(d.grpc_pid(), p2), f"{d.name} listens on {p2} too"
    assert_kept(d, workers)


def test_a_reload_that_adds_an_address_and_keeps_the_start_one_with_user(start_daemon,
                                                                         nobody_user):
    """`user: nobody`, started as root. A reload that adds an address
    binds every address anew, as nobody; the kept one shares the start's
    socket, which is nobody's too (the start binds as the user, see
    privileges_bind_as), so the added address is served. The start's was
    root's and the reload kept the old listeners (one owner per
    SO_REUSEPORT group)."""
    d = start_daemon({"user": "nobody"})
    p2 = free_port()
    d.write_config({"user": "nobody", "grpc": {"listen": [d.address, f"127.0.0.1:{p2}"]}})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 2")
    wait_for(lambda: owns_listener(d.grpc_pid(), p2) or "keeping the listeners" in d.log_text(),
             20, f"listening on {p2}, or keeping the old listeners")
    assert "keeping the listeners" not in d.log_text(), d.log_tail()
    assert listener_uids(p2) == listener_uids(d.port) == {nobody_user.pw_uid}


def free_port_below_1024():
    """A TCP port below 1024 free on 127.0.0.1 (we run as root), or None."""
    for port in range(1000, 600, -7):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            pass
        finally:
            s.close()
    return None


def test_listeners_are_the_users_with_user(start_daemon, nobody_user):
    """`user: nobody`, started as root: the start binds the grpc and the
    status listeners as nobody (what a reload binds as, so that they share
    ports), a port below 1024 too (CAP_NET_BIND_SERVICE raised for the
    bind). They were root's. (A reload, with no capability left, still
    cannot bind a port below 1024: README, Binary upgrade.)"""
    low = free_port_below_1024()
    if low is None:
        pytest.skip("no free port below 1024")
    status = free_port()
    d = start_daemon(start=False)
    d.port, d.address = low, f"127.0.0.1:{low}"
    d.write_config({"user": "nobody", "status": {"listen": f"127.0.0.1:{status}"}})
    d.start()
    assert listener_uids(low) == {nobody_user.pw_uid}
    assert listener_uids(status) == {nobody_user.pw_uid}


@pytest.mark.parametrize("case", ["100MB", "invalid", "binary"])
def test_a_reload_of_a_broken_file_keeps_the_config(start_daemon, case):
    """Already right, kept as such: a file of 100 MB (sparse: its size is
    what counts), one that does not parse, one of binary bytes."""
    d = start_daemon()
    workers = d.workers()
    if case == "100MB":
        with open(d.config_path, "r+b") as f:
            f.truncate(100 << 20)
        why = "too large (more than 1 MiB)"
    elif case == "invalid":
        d.write_config(text="workers: {count: [\n")
        why = str(d.config_path) + ":"
    else:
        d.config_path.write_bytes(bytes(range(256)) * 64)
        why = str(d.config_path) + ":"
    d.send_signal(signal.SIGHUP)
    m = d.wait_log(r"reload failed: .*")
    assert why in m.group(0) and "keeping generation 1" in m.group(0), m.group(0)
    time.sleep(0.3)
    assert_kept(d, workers)


@pytest.mark.deadline(60)
def test_a_graceful_stop_drops_a_pending_reload_and_finishes_the_items(start_daemon):
    """HUP, HUP (coalesced: pending), then QUIT before the old workers are
    done: the stop says the pending reload is not done, no reload happens
    during the drain, every item ends once, exit 0."""
    d, sub, ids = busy(start_daemon, items=4, ms=1500)
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 2")
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"SIGHUP: .* older generation")
    d.send_signal(signal.SIGQUIT)
    assert_each_succeeded_once(sub, ids)
    assert d.wait_exit(timeout=30) == 0, d.log_tail()
    log = d.log_text()
    assert "the reload a SIGHUP left pending is not done: stopping" in log, log
    assert "generation 3" not in log, log


def build_so(tmp_path, name, source):
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        missing_dependency("no C compiler to build the test module")
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / f"{name}.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


@pytest.mark.deadline(90)
@pytest.mark.parametrize("how", ["abort", "exit", "hang"])
def test_a_reload_whose_module_crashes_when_loaded_keeps_the_master(start_daemon, tmp_path,
                                                                    how):
    """A reload checks each handler module by loading it, which runs its
    ELF constructors: it did so in the master itself, so a module file
    replaced by one whose constructor aborts, exits or hangs killed (or
    hung) the master, and every process and item with it. The check now
    runs in a child process first: the reload fails naming what happened
    and the master serves on."""
    body = {"abort": "abort();", "exit": "exit(3);", "hang": "for (;;) pause();"}[how]
    so = build_so(tmp_path, f"bad_{how}",
                  "#include <stdlib.h>\n#include <unistd.h>\n"
                  f"__attribute__((constructor)) static void bad(void) {{ {body} }}\n")
    d = start_daemon()
    workers = d.workers()
    d.write_config({"handlers": {"bad": {"module": str(so)}}})
    d.send_signal(signal.SIGHUP)
    m = d.wait_log(r"reload failed: .*", timeout=40)
    assert "keeping generation 1" in m.group(0), m.group(0)
    assert d.proc.poll() is None, f"the master exited; log:\n{d.log_tail()}"
    assert_kept(d, workers)


def master_children(d):
    with open(f"/proc/{d.master_pid}/task/{d.master_pid}/children") as f:
        return {int(p) for p in f.read().split()}


@pytest.mark.deadline(90)
def test_the_reload_trial_child_holds_none_of_the_masters_descriptors(start_daemon, tmp_path):
    """The trial child (fork of the master) held the master's descriptors:
    control sockets, signalfd, log file. One stuck in the kernel after its
    SIGKILL kept them open, so a worker whose master end closed saw no EOF.
    It now holds stdin, stdout, stderr and its pipe (fd 3) only."""
    so = build_so(tmp_path, "hang", "#include <unistd.h>\n"
                  "__attribute__((constructor)) static void hang(void) { for (;;) pause(); }\n")
    d = start_daemon()
    workers = d.workers()
    known = set(d.worker_pids()) | {d.grpc_pid()}
    d.write_config({"handlers": {"hang": {"module": str(so)}}})
    d.send_signal(signal.SIGHUP)
    trial = []

    def found():
        trial[:] = [p for p in master_children(d) - known
                    if os.path.exists(f"/proc/{p}/fd")]
        return trial
    wait_for(found, 20, "the trial child")
    fds = []

    def settled():
        # Just forked, it still has them all; it closes them before loading.
        try:
            fds[:] = sorted(int(f) for f in os.listdir(f"/proc/{trial[0]}/fd"))
        except OSError:
            return False
        return fds == [0, 1, 2, 3]
    try:
        wait_for(settled, 5, "the trial child's descriptors")
    except AssertionError:
        raise AssertionError(f"trial child {trial[0]} holds fds {fds}: "
                             f"{[os.readlink(f'/proc/{trial[0]}/fd/{f}') for f in fds]}") \
            from None
    m = d.wait_log(r"reload failed: .*", timeout=40)
    assert "did not end within" in m.group(0), m.group(0)
    assert_kept(d, workers)


@pytest.mark.deadline(60)
def test_a_reload_that_cannot_make_its_trial_child_fails(start_daemon):
    """pipe2() or fork() failing for the trial child used to load the
    config in the master instead: the reload went on, retired every
    worker, and a master short of processes or descriptors then could not
    make new ones. Now the reload fails and keeps everything. (pipe2() is
    made to fail here, by a soft RLIMIT_NOFILE of 3 on the master; fork()
    cannot be made to fail for root without a pids cgroup.)"""
    import resource
    d = start_daemon()
    workers = d.workers()
    d.write_config({"workers": {"count": 3}})
    old = resource.prlimit(d.master_pid, resource.RLIMIT_NOFILE)
    resource.prlimit(d.master_pid, resource.RLIMIT_NOFILE, (3, old[1]))
    try:
        d.send_signal(signal.SIGHUP)
        m = d.wait_log(r"reload failed: .*")
    finally:
        resource.prlimit(d.master_pid, resource.RLIMIT_NOFILE, old)
    assert "cannot make the child that loads it first (pipe2() failed: Too many open files)" \
        in m.group(0) and "keeping generation 1" in m.group(0), m.group(0)
    assert_kept(d, workers)


@pytest.mark.deadline(60)
def test_a_hup_storm_during_a_graceful_stop_logs_one_line(start_daemon):
    """HUPs while stopping are not acted on, and each said so: a storm of
    them (a config-management loop, `pkill -HUP` in a retry loop) wrote a
    line per HUP. Now the first one says so, once per stop."""
    d, sub, ids = busy(start_daemon, items=2, ms=1500)
    d.send_signal(signal.SIGQUIT)
    d.wait_log(r"graceful stop")
    for _ in range(300):
        d.send_signal(signal.SIGHUP)
        time.sleep(0.001)
    assert_each_succeeded_once(sub, ids)
    assert d.wait_exit(timeout=30) == 0, d.log_tail()
    lines = re.findall(r"SIGHUP: no reload while stopping.*", d.log_text())
    assert len(lines) == 1, f"{len(lines)} lines: {lines[:3]}"
