"""
The binary upgrade (README "Binary upgrade", src/master/master.c upgrade(),
upgrade_child_exited()) when it goes wrong: the new master fails to start,
USR2 comes twice, USR2 reaches every process of the daemon (`systemctl
kill -s USR2`, whose default is every process of the unit). The old master keeps its pid file and keeps serving; a
later upgrade still works.
"""
import http.client
import os
import re
import shutil
import signal
import socket
import threading
import time

import pytest

import conftest
from conftest import (SUCCEEDED, descendants, free_port, kill_tree, owns_listener, pid_alive,
                      wait_for)
from test_deploy import ResumingSubscriber

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
@pytest.mark.parametrize("how", ["exit2", "bad_config", "port_taken", "hang", "hang_past_term"])
def test_usr2_new_master_fails_the_old_one_keeps_serving(start_daemon, monkeypatch, tmp_path,
                                                         how):
    """The new executable exits at once (exit2), the real one cannot read the
    config (bad_config), it starts and its grpc process cannot bind an
    address the new config adds (port_taken), or it never serves nor exits
    (hang: stopped with TERM after the upgrade's timeout, DS_UPGRADE_TIMEOUT_MS
    here, 5 minutes by default, and KILLed 5 s later if it ignores that,
    hang_past_term; before, every later USR2 was refused as "under way" and
    the pid file stayed at .oldbin): the old master logs it, takes
    its pid file back and serves on; a reload works; once the cause is gone
    the next USR2 upgrades."""
    binary = copied_binary(tmp_path, monkeypatch)
    if how.startswith("hang"):
        monkeypatch.setenv("DS_UPGRADE_TIMEOUT_MS", "1500")
    d = start_daemon()
    old_master = d.master_pid
    good = d.config
    busy = None
    new_master = None
    try:
        if how == "exit2":
            install(tmp_path, binary, content="#!/bin/sh\nexit 2\n")
        elif how == "hang":
            install(tmp_path, binary, content="#!/bin/sh\nexec sleep 600\n")
        elif how == "hang_past_term":       # SIG_IGN survives the exec
            install(tmp_path, binary, content="#!/bin/sh\ntrap '' TERM\nexec sleep 600\n")
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
        elif how.startswith("hang"):
            assert f"binary upgrade: the new master (pid {failed_pid}) does not serve after " \
                   "1500 ms; stopping it" in d.log_text()
            if how == "hang":
                assert m.group("how") == "killed by signal 15", m.group(0)
            else:
                assert m.group("how") == "killed by signal 9", m.group(0)
                assert f"binary upgrade: the new master (pid {failed_pid}) did not stop; " \
                       "killing it" in d.log_text()
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


def grpc_child(master):
    """The pid of MASTER's grpc process, or None."""
    for pid in conftest.all_pids():
        st = conftest.proc_stat(pid)
        if st is not None and st[1] == master and st[0] not in ("Z", "X") \
                and (conftest.proc_title(pid) or "").startswith("dosomethingd: grpc"):
            return pid
    return None


@pytest.mark.deadline(120)
def test_usr2_handover_cut_by_a_killed_grpc_process_loses_nothing(start_daemon, tmp_path):
    """The old instance hands its waiting items over; the new instance's grpc
    process is SIGKILLed as the handover begins (its master respawns it). With
    queue.journal (shared by both), every item ends, none is lost: what the
    dead process had accepted is recovered from its journal, what a failed
    call carried stays with the old instance (handover.c: "its N items stay
    here") or goes over again."""
    journal = tmp_path / "journal"
    d = start_daemon({"workers": {"count": 1, "prefetch": 1}, "shutdown_timeout": "30s",
                      "queue": {"journal": str(journal)}})
    old_master = d.master_pid
    c = d.client()
    sub = ResumingSubscriber(d.address)
    new_master = None
    try:
        watch = c.subscribe(sync=True, name="old")
        assert c.submit([{"id": "long", "kind": "sleep", "params": {"ms": "3000"}}]).accepted == 1
        watch.wait_state("long", conftest.STARTED)
        count = 3000
        ids = [f"h{i:04d}" for i in range(count)]
        reply = c.submit([{"id": i, "kind": "echo", "payload": i.encode()} for i in ids])
        assert reply.accepted == count
        watch.wait(lambda s: all(i in s.by_id for i in ids), 10, "every QUEUED")

        d.send_signal(signal.SIGUSR2)
        wait_for(lambda: d.read_pid_file() not in (None, old_master), 10,
                 "the new master's pid file")
        new_master = d.read_pid_file()
        d.known_pids.add(new_master)
        first_grpc = wait_for(lambda: grpc_child(new_master), 10, "the new grpc process")
        # Killed once it has journaled some of the items handed to it (a
        # poll every 2 ms: a call of 1000 items takes some 10 ms; a tighter
        # one spins a core the daemon needs on a small machine): the call
        # is cut after the new instance took part of it.
        segment = wait_for(lambda: next(journal.glob(f"grpc-*-{first_grpc}/00000001.seg"), None),
                           10, "the new grpc process's journal")
        base = segment.stat().st_size
        wait_for(lambda: segment.stat().st_size > base + 2000, 10,
                 "the first items handed over in the new journal", interval=0.002)
        os.kill(first_grpc, signal.SIGKILL)
        m = d.wait_log(r"handover: handing (\d+) waiting items to the new instance")
        assert int(m.group(1)) >= count - 20, m.group(0)

        assert d.wait_exit(timeout=40) == 0, "the old master did not drain and exit"
        log = d.log_text()
        handed = re.search(r"handover: (\d+) items handed over to the new instance at "
                                    r"\S+, (\d+) kept here", log)
        assert handed or "handover: giving up after" in log, log[-3000:]
        d.master_pid, d.proc = new_master, None
        d.wait_ready()

        # None is lost: the new instance knows every item, final (the old
        # instance's finals once it took its journal over).
        def lookup():
            """({id: state}, [not found]) of every item, 1000 ids a call."""
            states, missing = {}, []
            every = ids + ["long"]
            for n in range(0, len(every), 1000):
                reply = c.get_items(every[n:n + 1000], wait_for_ready=True)
                states.update((it.id, it.state) for it in reply.items)
                missing += list(reply.not_found)
            return states, missing

        def all_final():
            states, missing = lookup()
            return (not missing and all(s in conftest.FINAL_STATES for s in states.values())
                    and states)
        try:
            states = wait_for(all_final, 40, "every item final on the new instance")
        except AssertionError:
            states, missing = lookup()
            raise AssertionError(
                f"not found: {len(missing)} e.g. {missing[:5]}; not final: "
                f"{[(i, s) for i, s in states.items() if s not in conftest.FINAL_STATES][:5]}; "
                f"log:\n{d.log_tail(60)}") from None
        assert set(states.values()) == {SUCCEEDED}
        # A subscriber that follows (resuming) saw each end once. Not the
        # finals the killed process published (its update log died with it;
        # the journal brought them back as known finals), and an item the
        # new instance had taken from the cut call must not run here too:
        # the only worker here is busy with "long" all through.
        took = d.wait_log(rf"journal: took over \S+ of grpc process {first_grpc}: \d+ items queued "
                          rf"again, 0 failed, 0 unreadable, (\d+) finals known again")
        unseen = int(took.group(1))

        def seen_enough():
            with sub.lock:
                return sum(1 for i in ids if i in sub.final) >= count - unseen
        wait_for(seen_enough, 20, f"the final updates of all but {unseen} items")
        with sub.lock:
            finals = {i: sub.final[i] for i in ids if i in sub.final}
        dups = {i: [conftest.state_name(s) for s in f] for i, f in finals.items() if len(f) != 1}
        assert dups == {}, f"{len(dups)} items ended more than once: {list(dups.items())[:5]}"
        assert not re.search(r"handover: .*reply that does not account", d.log_text())
    finally:
        sub.close()
        if new_master is not None:
            kill_tree(new_master)


SUMMARY_LINE = (r"handover: (?P<handed>\d+) items handed over to the new instance at \S+, "
                r"(?P<kept>\d+) kept here(?: \((?P<back>\d+) given back, (?P<unsent>\d+) not "
                r"sent\))?")


def both_workers_held(start_daemon, tmp_path, extra_handlers=None):
    """A daemon of two workers (prefetch 1), each running an item (held0,
    held1) that ends only once the test creates its gate file (tmp_path /
    gate0, gate1). Returns the daemon, the gates, a subscriber that saw both
    start, and the handlers config."""
    gates = [tmp_path / "gate0", tmp_path / "gate1"]

    def hold(gate):
        return {"exec": ["/bin/sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.02; done']}
    handlers = {"default": "echo", "echo": {"builtin": "echo"}, "sleep": {"builtin": "sleep"},
                "hold0": hold(gates[0]), "hold1": hold(gates[1]), **(extra_handlers or {})}
    d = start_daemon({"workers": {"count": 2, "prefetch": 1}, "shutdown_timeout": "60s",
                      "handlers": handlers})
    c = d.client()
    watch = c.subscribe(sync=True, name="old")
    for n in range(2):
        assert c.submit([{"id": f"held{n}", "kind": f"hold{n}"}]).accepted == 1
        watch.wait_state(f"held{n}", conftest.STARTED)
    return d, gates, watch, handlers


@pytest.mark.deadline(90)
@pytest.mark.parametrize("release", ["queue_empties_while_an_item_runs", "after_two_failures",
                                     "after_giving_up"])
def test_usr2_handover_whose_calls_fail_logs_one_summary_of_distinct_items(
        start_daemon, monkeypatch, tmp_path, release):
    """Every handover call fails (the new instance serves only getUpdates on
    the address the old one hands over to: PERMISSION_DENIED), so the same
    five waiting items are given back and sent again, call after call, while
    both workers are held by gated items. Released: one worker once two
    calls have failed, so the items run here while the other still holds its
    item and the next call finds the queue empty (before, its summary
    counted each give-back: 5 per failed call); both workers once two calls
    have failed, so the drain ends while the handover waits to retry
    (before, the process exited without the summary line); both once the
    handover gave up (before, no summary either). Each way the summary is
    logged once and counts each item once."""
    binary = copied_binary(tmp_path, monkeypatch)
    d, gates, watch, handlers = both_workers_held(start_daemon, tmp_path)
    old_master = d.master_pid
    c = d.client()
    new_master = None
    try:
        ids = [f"w{i}" for i in range(5)]
        assert c.submit([{"id": i, "kind": "sleep", "params": {"ms": "1"}}
                         for i in ids]).accepted == 5
        watch.wait(lambda s: all(i in s.by_id for i in ids), 10, "every QUEUED")

        # The new instance: the old one's address serves getUpdates only.
        other = f"127.0.0.1:{conftest.free_port()}"
        d.write_config(conftest.deep_merge(d.config, {"grpc": {"listen": [
            {"address": d.address, "methods": ["getUpdates"]}, other]}}))
        install(tmp_path, binary, source=real_binary())
        d.send_signal(signal.SIGUSR2)
        wait_for(lambda: d.read_pid_file() not in (None, old_master), 10,
                 "the new master's pid file")
        new_master = d.read_pid_file()
        d.known_pids.add(new_master)
        d.wait_log(r"handover: handing 5 waiting items to the new instance")
        failed = r"handover: a doSomething call to the new instance at \S+ failed"
        if release == "after_giving_up":
            d.wait_log(r"handover: giving up after 20 failed calls", timeout=40)
        else:
            wait_for(lambda: len(re.findall(failed, d.log_text())) >= 2, 20,
                     "two failed handover calls")
        if release == "queue_empties_while_an_item_runs":
            gates[1].touch()
            watch.wait_final(ids, timeout=20)
            d.wait_log(r"handover: \d+ items handed over to the new instance", timeout=20)
        for gate in gates:
            gate.touch()

        assert d.wait_exit(timeout=30) == 0, "the old master did not drain and exit"
        log = d.log_text()
        summaries = list(re.finditer(SUMMARY_LINE, log))
        assert len(summaries) == 1, log[-3000:]
        m = summaries[0]
        assert (m.group("handed"), m.group("kept"), m.group("back"), m.group("unsent")) == \
            ("0", "5", "5", "0"), m.group(0)
        # They ran here, each once.
        finals = watch.wait_final(ids + ["held0", "held1"], timeout=10)
        assert all(u.state == SUCCEEDED for u in finals.values()), finals
    finally:
        for gate in gates:
            gate.touch()
        if new_master is not None:
            kill_tree(new_master)


def upgrade_without_oldonly(d, tmp_path, binary, handlers, old_master):
    """A USR2 to a new binary whose config lacks the kind "oldonly" (the
    new instance rejects its items); the new master's pid, once written."""
    config = dict(d.config, handlers={k: v for k, v in handlers.items() if k != "oldonly"})
    d.write_config(text=conftest.dump_config(config))
    install(tmp_path, binary, source=real_binary())
    d.send_signal(signal.SIGUSR2)
    wait_for(lambda: d.read_pid_file() not in (None, old_master), 10,
             "the new master's pid file")
    new_master = d.read_pid_file()
    d.known_pids.add(new_master)
    return new_master


@pytest.mark.deadline(120)
def test_usr2_handover_with_many_rejected_items_sends_each_once(start_daemon, monkeypatch,
                                                                 tmp_path):
    """2400 waiting items, every other one of a kind the new instance does
    not have, some of a higher priority: three calls of at most 1000, each
    leaving its rejected items here, which the next calls do not take
    again. Each is sent once, the summary counts every item once, and the
    rejected ones run here once the workers are free. (That no call walks
    past them, the cost this guards, is test_queue.c's
    test_kept_items_wait_apart: this test sees only the behaviour.)"""
    binary = copied_binary(tmp_path, monkeypatch)
    d, gates, watch, handlers = both_workers_held(start_daemon, tmp_path,
                                                  {"oldonly": {"builtin": "sleep"}})
    old_master = d.master_pid
    c = d.client()
    new_master = None
    try:
        items = [{"id": f"i{n}", "kind": "oldonly" if n % 2 else "sleep",
                  "params": {"ms": "0"}, "priority": 1 if n % 3 == 0 else 0}
                 for n in range(2400)]
        rejected = {i["id"] for i in items if i["kind"] == "oldonly"}
        assert c.submit(items).accepted == 2400
        watch.wait(lambda s: all(i["id"] in s.by_id for i in items), 20, "every QUEUED")

        new_master = upgrade_without_oldonly(d, tmp_path, binary, handlers, old_master)
        m = d.wait_log(SUMMARY_LINE, timeout=30)
        assert (m.group("handed"), m.group("kept"), m.group("back"), m.group("unsent")) == \
            ("1200", "1200", "1200", "0"), m.group(0)
        named = re.findall(r"handover: the new instance rejected item (\S+):", d.log_text())
        assert len(named) == 1200 and set(named) == rejected, \
            f"{len(named)} rejections logged, {len(set(named))} distinct"
        assert d.log_text().count("handover: a doSomething call") == 0
        for gate in gates:
            gate.touch()
        assert d.wait_exit(timeout=30) == 0, "the old master did not drain and exit"
        finals = watch.wait_final(sorted(rejected), timeout=20)
        assert all(u.state == SUCCEEDED for u in finals.values())
        assert all(watch.states_of(i).count("STARTED") == 1 for i in rejected)
    finally:
        for gate in gates:
            gate.touch()
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(90)
def test_usr2_handover_does_not_resend_an_item_the_new_instance_rejected(
        start_daemon, monkeypatch, tmp_path):
    """The new instance's config has no kind "oldonly": it rejects that
    item (unknown kind), which comes back here and runs here once a worker
    is free. Before, it went back to the front of the queue and the next
    call sent it again at once: call after call, a busy loop (with a log
    line each) for as long as both workers here were held. Now it is sent
    once, the handover ends, and the summary counts it kept."""
    binary = copied_binary(tmp_path, monkeypatch)
    d, gates, watch, handlers = both_workers_held(start_daemon, tmp_path,
                                                  {"oldonly": {"builtin": "sleep"}})
    old_master = d.master_pid
    c = d.client()
    new_master = None
    try:
        items = [{"id": "r0", "kind": "oldonly", "params": {"ms": "1"}},
                 {"id": "a1", "kind": "sleep", "params": {"ms": "1"}},
                 {"id": "a2", "kind": "sleep", "params": {"ms": "1"}}]
        assert c.submit(items).accepted == 3
        watch.wait(lambda s: all(i["id"] in s.by_id for i in items), 10, "every QUEUED")

        new_master = upgrade_without_oldonly(d, tmp_path, binary, handlers, old_master)
        m = d.wait_log(SUMMARY_LINE, timeout=20)
        assert (m.group("handed"), m.group("kept"), m.group("back")) == ("2", "1", "1"), \
            m.group(0)
        log = d.log_text()
        assert log.count("handover: the new instance rejected item r0") == 1, log[-3000:]
        for gate in gates:
            gate.touch()
        assert d.wait_exit(timeout=30) == 0, "the old master did not drain and exit"
        finals = watch.wait_final(["r0", "held0", "held1"], timeout=10)
        assert all(u.state == SUCCEEDED for u in finals.values()), finals
    finally:
        for gate in gates:
            gate.touch()
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(60)
def test_usr2_sent_to_every_process_upgrades_once_and_kills_no_item(start_daemon, monkeypatch,
                                                                    tmp_path):
    """USR2 to every process of the daemon, each once, again and again until
    no new one appears, as `systemctl kill -s USR2` does: the processes the
    upgrade forks meanwhile (the new master, its children) get it too.
    Before, every worker died with the item it ran (FAILED at max_attempts
    1), and the new master died of it (its default action, before it reads
    its signals) or started an upgrade of its own. Now the workers ignore
    it, the new master ignores it until it serves, and one upgrade runs:
    the items finish on the old instance."""
    binary = copied_binary(tmp_path, monkeypatch)
    d = start_daemon({"workers": {"count": 2, "prefetch": 1}, "shutdown_timeout": "20s"})
    old_master = d.master_pid
    c = d.client()
    sub = c.subscribe(sync=True)
    ids = ["a", "b"]
    assert c.submit([{"id": i, "kind": "sleep", "params": {"ms": "1500"}, "max_attempts": 1}
                     for i in ids]).accepted == 2
    for i in ids:
        sub.wait_state(i, conftest.STARTED, timeout=10)
    install(tmp_path, binary, source=real_binary())
    signalled = set()
    done = threading.Event()

    def storm():
        end = time.monotonic() + 1.0
        while time.monotonic() < end and not done.is_set():
            for pid in [old_master] + descendants(old_master):
                if pid not in signalled:
                    signalled.add(pid)
                    try:
                        os.kill(pid, signal.SIGUSR2)
                    except ProcessLookupError:
                        pass
            time.sleep(0.001)

    t = threading.Thread(target=storm, daemon=True)
    t.start()
    new_master = None
    try:
        t.join(5)
        started = d.wait_log(r"binary upgrade: started \S+ as pid (\d+)")
        new_master = int(started.group(1))
        d.known_pids.add(new_master)
        assert new_master in signalled, "the storm did not reach the new master"
        finals = sub.wait_final(ids, timeout=15)
        assert all(f.state == SUCCEEDED and f.attempt == 1 for f in finals.values()), \
            {i: sub.states_of(i) for i in ids}
        assert d.wait_exit(timeout=20) == 0, "the old master did not drain and exit"
        log = d.log_text()
        assert "killed by signal" not in log, log
        assert log.count("binary upgrade: started") == 1, log
        assert log.count(f"binary upgrade: taking over from pid {old_master}") == 1, log
        assert "binary upgrade failed" not in log, log
        assert d.read_pid_file() == new_master
        d.master_pid, d.proc = new_master, None
        d.wait_ready()
        echo_end_to_end(d, "after-usr2-to-all")
    finally:
        done.set()
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(90)
def test_usr2_after_a_reload_moved_a_listener_with_user(start_daemon, monkeypatch, tmp_path,
                                                        nobody_user):
    """`user: nobody`, started as root. Linux shares a port with
    SO_REUSEPORT only between sockets of one owner uid. A listener added by
    a reload is nobody's (the grpc process binds it after dropping root);
    the new master's grpc process of a USR2 upgrade, root until it binds,
    binds as nobody too (privileges_bind_as), so it shares the reload's
    port. It bound as root and failed ("binary upgrade failed: ... exited
    with status 1")."""
    binary = copied_binary(tmp_path, monkeypatch)
    d = start_daemon({"user": "nobody"})
    p2 = free_port()
    d.write_config({"user": "nobody", "grpc": {"listen": [f"127.0.0.1:{p2}"]}})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 2")
    wait_for(lambda: owns_listener(d.grpc_pid(), p2), 20, f"the grpc process listens on {p2}")
    d.port, d.address = p2, f"127.0.0.1:{p2}"
    new_master = None
    try:
        new_master = upgrade_succeeds(d, tmp_path, binary)
        d.master_pid, d.proc = new_master, None
        d.wait_ready()
        echo_end_to_end(d, "after-upgrade")
    finally:
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(90)
def test_usr2_after_a_reload_moved_status_listen_with_user(start_daemon, monkeypatch, tmp_path,
                                                         nobody_user):
    """The status.listen counterpart: a reload moves the status endpoint to
    a port bound as nobody; the upgrade's new grpc process binds it as
    nobody too, beside it, and serves it (it bound as root and failed:
    "status.listen: cannot listen on ...: bind() failed: Address already
    in use")."""
    binary = copied_binary(tmp_path, monkeypatch)
    d = start_daemon({"user": "nobody", "status": {"listen": f"127.0.0.1:{free_port()}"}})
    s2 = free_port()
    d.write_config({"user": "nobody", "status": {"listen": f"127.0.0.1:{s2}"}})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 2")
    wait_for(lambda: owns_listener(d.grpc_pid(), s2), 20, f"the grpc process listens on {s2}")
    new_master = None
    try:
        new_master = upgrade_succeeds(d, tmp_path, binary)
        d.master_pid, d.proc = new_master, None
        d.wait_ready()
        wait_for(lambda: owns_listener(d.grpc_pid(), s2), 20,
                 f"the new grpc process listens on {s2}")
        conn = http.client.HTTPConnection("127.0.0.1", s2, timeout=5)
        try:
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
    finally:
        if new_master is not None:
            kill_tree(new_master)
