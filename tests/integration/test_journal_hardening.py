"""
The journal off the happy path (issue 14, points 15, 16, 21, 23):

- `user:` with `queue.journal`: the grpc process creates its journal as
  root before it drops privileges; after the drop it must still roll
  segments, take over dead instances and write DIR/seq, and the log files
  it writes must still be reopened on USR1.
- A FINAL record that cannot be written (a full disk) holds its final
  update back: a grpc process killed meanwhile leaves the item live in the
  journal, and it runs again with one final update in all.
- A journal that cannot be opened (a full disk after a crash) does not
  stop the daemon: items are rejected with the reason, health says
  NOT_SERVING, and once there is room again it opens, takes over what the
  dead process left and accepts items.
- A flush larger than the room left accepts what fits (the ASan build,
  slower, batched all 60 items of test_full_disk_rejects_and_recovers into
  flushes that each failed whole).
- The journal directory removed under a running daemon (a tmp cleaner, an
  rm -rf): items were accepted into files no one could read again, lost at
  the next restart, silently. Then every item was rejected until a
  restart, and a crash lost what the daemon held. Now the journal is made
  again with every item held, and a power cut after that loses nothing;
  while it cannot be made again (a file in the way), every item is
  rejected with the reason, health says NOT_SERVING, the log says what is
  at stake (once), and finals are still published. An older segment
  deleted alone is seen too (only the current one's link count was
  checked).
- A graceful stop reaching shutdown_timeout on a full disk: the records
  saying which items it left unstarted cannot be written. Nothing is lost:
  the next start takes them over as after a crash, each as its next
  attempt, and the stop says so (before, only "writing ... failed").
"""
import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import (FAILED, FINAL_STATES, NOT_SERVING, QUEUED, RETRYING, SERVING, STARTED, SUCCEEDED,
                      Daemon, free_port, http_get, pid_alive, wait_for, work_item)
from test_journal import RECOVERED, Watcher, echo_items, kill_everything, segments

ENOSPC_TEXT = os.strerror(errno.ENOSPC)


@contextlib.contextmanager
def small_disk(path, size="256k"):
    """A tmpfs of SIZE mounted at PATH (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk):
    """Fill DISK to the last page with a file; return its path."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
    return filler


def finals_of(watcher, item_id):
    return [u for u in watcher.of(item_id) if u.state in FINAL_STATES]


def submit_until_accepted(client, items, timeout):
    """Submit ITEMS until all are accepted (the journal opens meanwhile);
    return the last reply. Rejected ones are not in the journal, so
    submitting them again is safe."""
    deadline = time.monotonic() + timeout
    while True:
        reply = client.submit_retrying(items, timeout=10)
        if reply.accepted == len(items):
            return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"not accepted within {timeout} s: {reply}")
        time.sleep(0.2)


# ---- 15: user: with queue.journal -----------------------------------------


@pytest.mark.deadline(150)
def test_user_nobody_rolls_segments_recovers_and_reopens_logs(monkeypatch, nobody_user):
    """Journal under `user: nobody`: a first run as root leaves a dead
    instance (root's files); the next run, as nobody, takes it over, rolls
    many segments (2.4 MB through 64 KiB segments), is killed with items
    left, and the run after recovers them; the error log and the access
    log are reopened on USR1 as nobody."""
    pw = nobody_user
    monkeypatch.setenv("DS_JOURNAL_SEGMENT_BYTES", "64KiB")
    # Not under pytest's tmp_path: its parents are root's 0700, and nobody
    # must reach the log files (USR1) and the journal.
    base = Path(tempfile.mkdtemp(prefix="ds-journal-user-"))
    base.chmod(0o755)
    logs = base / "logs"            # like /var/log: root's, 0755
    logs.mkdir(mode=0o755)
    journal = base / "lib" / "dosomething" / "journal"      # made by the daemon, parents too
    daemons = []

    # The items a kill must find unfinished wait behind two of kind hold_X,
    # which end (exit 0) once base/gate-X exists: made after the kill, so
    # the next run finishes them at once. (Sleeps of 4 s, before, could end
    # on a loaded machine before the kill, and the items behind them with
    # them: the next run then had nothing to recover.)
    def hold(gate):
        return {"exec": ["/bin/sh", "-c", f'while [ ! -e "{base / gate}" ]; do sleep 0.02; done']}
    handlers = {"default": "echo", "echo": {"builtin": "echo"}, "sleep": {"builtin": "sleep"},
                "hold_root": hold("gate-root"), "hold_nobody": hold("gate-nobody")}

    def start(name, user):
        config = {"workers": {"count": 2}, "queue": {"journal": str(journal)},
                  "handlers": handlers,
                  "log": {"access": str(logs / f"{name}-access.log")}}
        if user:
            config["user"] = "nobody"
        d = Daemon(base / name, config, name=name)
        (base / name).chmod(0o755)
        daemons.append(d)
        return d.start()

    try:
        # A run as root, killed with items left: its instance is root's.
        d1 = start("root", user=False)
        w1 = Watcher(d1.client())
        reply = d1.client().submit([{"id": f"r-long-{i}", "kind": "hold_root"}
                                    for i in range(2)])
        assert reply.accepted == 2
        w1.wait(lambda: all(w1.has_state(f"r-long-{i}", STARTED) for i in range(2)), 10,
                "both holds started")
        first = echo_items("root", 20)
        assert d1.client().submit(first).accepted == 20
        w1.wait(lambda: all(w1.has_state(i["id"], QUEUED) for i in first), 10, "QUEUED")
        w1.stop()
        kill_everything(d1)
        (base / "gate-root").touch()

        d2 = start("nobody", user=True)
        grpc_pid = d2.grpc_pid()
        assert os.stat(f"/proc/{grpc_pid}").st_uid == pw.pw_uid
        d2.wait_log(r"journal: took over \S+ of grpc process \d+: 22 items queued again")
        c2 = d2.client()
        w2 = Watcher(c2)
        first_ids = [i["id"] for i in first] + [f"r-long-{i}" for i in range(2)]
        w2.wait_final(first_ids, timeout=30)
        for i in first_ids:
            assert [u.state for u in finals_of(w2, i)] == [SUCCEEDED], w2.states(i)
        assert journal.stat().st_uid == pw.pw_uid
        assert oct(journal.parent.stat().st_mode & 0o777) == oct(0o755)

        # Many segment rolls as nobody: 300 items of 8 KiB in 12 calls of
        # 200 KB; each call's first flush finds a full segment and rolls.
        big = [{"id": f"big-{i}", "kind": "echo", "payload": bytes([i % 256]) * 8192}
               for i in range(300)]
        ids = []
        for part in range(12):
            chunk = big[part * 25:(part + 1) * 25]
            reply = c2.submit(chunk)
            assert (reply.accepted, reply.rejected) == (25, 0), reply.rejections[:3]
            ids += [i["id"] for i in chunk]
        w2.wait_final(ids, timeout=60)
        for i in ids:
            assert [u.state for u in finals_of(w2, i)] == [SUCCEEDED], w2.states(i)
        segs = segments(journal)
        assert segs and max(int(p.stem) for p in segs) >= 10, segs
        assert all(p.stat().st_uid == pw.pw_uid for p in segs)
        assert "Permission denied" not in d2.log_text()

        # USR1 after a rotation: both logs come back, written by nobody.
        log_path, access_path = d2.log_path, logs / "nobody-access.log"
        assert access_path.stat().st_size > 0
        log_path.rename(log_path.with_suffix(".log.1"))
        access_path.rename(access_path.with_suffix(".log.1"))
        d2.send_signal(signal.SIGUSR1)
        wait_for(lambda: log_path.exists() and "log files reopened" in log_path.read_text(), 10,
                 "the error log reopened")
        wait_for(lambda: access_path.exists(), 10, "the access log reopened")
        reply = submit_until_accepted(c2, echo_items("after-usr1", 3), timeout=10)
        w2.wait_final([f"after-usr1-{i}" for i in range(3)], timeout=10)
        # The master makes the new file (as root, for nobody) before the grpc
        # process reopens it (told over its control channel): a call that
        # ended in between is logged in the old file, as it should be. So
        # calls go on until one is logged in the new one.
        probes = iter(range(1000))

        def logged():
            if access_path.stat().st_size > 0:
                return True
            c2.submit(echo_items(f"usr1-probe-{next(probes)}", 1))
            return False
        wait_for(logged, 10, "an access log line after USR1")
        # The grpc process (nobody) writes to the new error log: a reload says so.
        d2.send_signal(signal.SIGHUP)
        wait_for(lambda: f"grpc {grpc_pid}: config generation" in log_path.read_text(), 10,
                 "the grpc process logging to the reopened log")
        assert "failed" not in log_path.read_text(), log_path.read_text()

        # Killed with items left; the next run (nobody again) recovers them.
        reply = c2.submit([{"id": f"n-long-{i}", "kind": "hold_nobody"} for i in range(2)])
        assert reply.accepted == 2
        w2.wait(lambda: all(w2.has_state(f"n-long-{i}", STARTED) for i in range(2)), 10,
                "both holds started")
        second = echo_items("nobody", 20)
        assert c2.submit(second).accepted == 20
        w2.wait(lambda: all(w2.has_state(i["id"], QUEUED) for i in second), 10, "QUEUED")
        w2.stop()
        kill_everything(d2)
        (base / "gate-nobody").touch()

        d3 = start("again", user=True)
        d3.wait_log(r"journal: took over \S+ of grpc process \d+: \d+ items queued again")
        w3 = Watcher(d3.client())
        w3.wait_final([i["id"] for i in second], timeout=30)
        retried = sorted({u.item_id for u in w3.updates if u.state == RETRYING})
        assert retried == sorted([i["id"] for i in second] + [f"n-long-{i}" for i in range(2)]), \
            retried
        for it in second:
            states = [u.state for u in w3.of(it["id"])]
            assert states.count(SUCCEEDED) == 1 and RETRYING in states, w3.states(it["id"])
        w3.stop()
        assert "Permission denied" not in d3.log_text()
    finally:
        for d in daemons:
            d.kill_all()
        shutil.rmtree(base, ignore_errors=True)


# ---- 16: a FINAL that cannot be written ------------------------------------


@pytest.mark.deadline(90)
def test_final_held_until_written_no_double_success(start_daemon, tmp_path, monkeypatch):
    """B finishes while the disk is full: its FINAL cannot be written, so
    its SUCCEEDED is not published. The grpc process is then killed: B runs
    again after the restart, and every subscriber sees one SUCCEEDED."""
    # 4 KiB segments and 5 KB items: a segment holding an item is full, so
    # B's FINAL needs a new segment, which a full disk cannot give.
    monkeypatch.setenv("DS_JOURNAL_SEGMENT_BYTES", "4KiB")
    with small_disk(tmp_path / "small") as disk:
        d = start_daemon({"workers": {"count": 2},
                          "queue": {"journal": str(disk / "journal")}})
        c = d.client()
        w = Watcher(c)
        payload = b"x" * 5000
        # A keeps the oldest segment live, so nothing can be freed or emptied.
        assert c.submit([{"id": "A", "kind": "sleep", "params": {"ms": "6000"},
                          "payload": payload}]).accepted == 1
        w.wait(lambda: w.has_state("A", STARTED), 10, "A started")
        assert c.submit([{"id": "B", "kind": "sleep", "params": {"ms": "1500"},
                          "payload": payload}]).accepted == 1
        w.wait(lambda: w.has_state("B", STARTED), 10, "B started")
        filler = fill(disk)
        d.wait_log(r"journal: the FINAL records of 1 items cannot be written to \S+ "
                   rf"\({ENOSPC_TEXT}\); their final updates wait")
        assert not w.has_state("B", SUCCEEDED), w.states("B")

        old = d.grpc_pid()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: d.grpc_pid() not in (None, old), 10, "a new grpc process")
        d.wait_ready()
        filler.unlink()
        w.wait_final(["A", "B"], timeout=40)
        d.wait_log(rf"journal: took over \S+ of grpc process {old}: 2 items queued again")
        w.stop()
        for item_id in ("A", "B"):
            states = [u.state for u in w.of(item_id)]
            assert states.count(SUCCEEDED) == 1, w.states(item_id)
            assert [u.state for u in finals_of(w, item_id)] == [SUCCEEDED], w.states(item_id)
            assert any(u.state == RETRYING and RECOVERED in u.error for u in w.of(item_id))
        assert not w.violations


# ---- 21: a full disk and a crash do not stop the daemon --------------------


@pytest.mark.deadline(90)
def test_full_disk_and_grpc_crash_keeps_serving(start_daemon, tmp_path, monkeypatch):
    monkeypatch.setenv("DS_JOURNAL_SEGMENT_BYTES", "64KiB")
    status = f"127.0.0.1:{free_port()}"
    with small_disk(tmp_path / "small") as disk:
        d = start_daemon({"workers": {"count": 2}, "status": {"listen": status},
                          "queue": {"journal": str(disk / "journal")}})
        c = d.client()
        w = Watcher(c)
        long_ids = [f"long-{i}" for i in range(2)]
        assert c.submit([{"id": i, "kind": "sleep", "params": {"ms": "3000"}}
                         for i in long_ids]).accepted == 2
        w.wait(lambda: all(w.has_state(i, STARTED) for i in long_ids), 10, "sleeps started")
        queued = echo_items("q", 20)
        assert c.submit(queued).accepted == 20
        w.wait(lambda: all(w.has_state(i["id"], QUEUED) for i in queued), 10, "QUEUED")
        filler = fill(disk)

        old = d.grpc_pid()
        master = d.master_pid
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: d.grpc_pid() not in (None, old), 10, "a new grpc process")
        d.wait_ready()
        d.wait_log(rf"queue.journal \S+ cannot be used \(journal unavailable: \S+: "
                   rf"{ENOSPC_TEXT}\); every item is rejected until it can")
        assert pid_alive(master) and d.proc.poll() is None, "the daemon stopped"
        assert c.health(wait_for_ready=True) == NOT_SERVING
        code, body = http_get(status, "/healthz")
        assert code == 503 and "journal unavailable" in body and ENOSPC_TEXT in body, body
        reply = c.submit(echo_items("during", 3))
        assert (reply.accepted, reply.rejected) == (0, 3)
        for r in reply.rejections:
            assert "journal unavailable" in r.reason and str(disk / "journal") in r.reason \
                and ENOSPC_TEXT in r.reason, r.reason
        assert not any(w.of(f"during-{i}") for i in range(3)), "a rejected item was published"

        filler.unlink()
        d.wait_log(r"journal: \S+ opened after \d+ attempts; items are accepted again",
                   timeout=15)
        d.wait_log(rf"journal: took over \S+ of grpc process {old}: 22 items queued again")
        assert c.health(wait_for_ready=True) == SERVING
        submit_until_accepted(c, echo_items("after", 5), timeout=10)
        w.wait_final([i["id"] for i in queued] + long_ids + [f"after-{i}" for i in range(5)],
                     timeout=40)
        for i in [i["id"] for i in queued] + long_ids:
            assert [u.state for u in finals_of(w, i)] == [SUCCEEDED], w.states(i)
        w.stop()


# ---- 23: a flush larger than the room left ---------------------------------


@pytest.mark.deadline(60)
def test_flush_larger_than_room_accepts_what_fits(start_daemon, tmp_path, monkeypatch):
    """All 60 items of 16 KiB sent at once, on a 256 KiB disk: however the
    grpc process batches them into flushes, the ones that fit are accepted
    (before, a flush that did not fit whole rejected all its items, and a
    slow process put all 60 into such flushes)."""
    monkeypatch.setenv("DS_JOURNAL_SEGMENT_BYTES", "64KiB")
    with small_disk(tmp_path / "small") as disk:
        d = start_daemon({"workers": {"count": 2},
                          "queue": {"journal": str(disk / "journal"), "journal_sync": "always"}})
        c = d.client()
        w = Watcher(c)
        long_ids = [f"long-{i}" for i in range(2)]
        assert c.submit([{"id": i, "kind": "sleep", "params": {"ms": "2000"}}
                         for i in long_ids]).accepted == 2
        w.wait(lambda: all(w.has_state(i, STARTED) for i in long_ids), 10, "sleeps started")
        # Stop the grpc process while the items are sent: when it goes on,
        # they are all there, for as few flushes as it makes of them.
        items = [{"id": f"big-{i}", "kind": "echo", "payload": bytes([i]) * 16384}
                 for i in range(60)]
        grpc_pid = d.grpc_pid()
        os.kill(grpc_pid, signal.SIGSTOP)
        try:
            future = c.stub.doSomething.future((work_item(i) for i in items), timeout=60)
            time.sleep(1.0)     # not a timing assertion: only lets the client send
        finally:
            os.kill(grpc_pid, signal.SIGCONT)
        reply = future.result()
        assert reply.accepted + reply.rejected == 60
        assert reply.accepted > 0, "nothing of the flushes fit"
        assert {r.reason for r in reply.rejections} <= {f"journal write failed: {ENOSPC_TEXT}"}
        rejected = {items[r.index]["id"] for r in reply.rejections}
        accepted = [i["id"] for i in items if i["id"] not in rejected]
        w.wait_final(accepted + long_ids, timeout=30)
        for i in accepted:
            assert [u.state for u in finals_of(w, i)] == [SUCCEEDED], w.states(i)
        assert not any(w.of(i) for i in rejected), "a rejected item was published"
        w.stop()


# ---- a graceful stop's unstarted records on a full disk --------------------


@pytest.mark.deadline(60)
def test_full_disk_at_a_graceful_stop_spends_an_attempt_and_loses_nothing(start_daemon,
                                                                          tmp_path):
    """300 items wait behind `long` when QUIT reaches shutdown_timeout on a
    full disk: their unstarted records (300 x 36 bytes, more than a page's
    slack) are not written. The stop exits 0 and says what that means; the
    next start runs every item, the waiters as attempt 2."""
    with small_disk(tmp_path / "small", "512k") as disk:
        config = {"workers": {"count": 1, "prefetch": 1}, "shutdown_timeout": "500ms",
                  "queue": {"journal": str(disk / "journal"), "max_attempts": 2}}
        d = start_daemon(config, name="first")
        c = d.client()
        waiters = [f"w{i}" for i in range(300)]
        items = [{"id": "long", "kind": "sleep", "params": {"ms": "1500"}}] + \
            [{"id": i, "kind": "sleep", "params": {"ms": "1"}} for i in waiters]
        w = Watcher(c)
        assert c.submit(items).accepted == len(items)
        w.wait(lambda: w.has_state("long", STARTED), 10, "long started")
        filler = fill(disk)
        d.send_signal(signal.SIGQUIT)
        assert d.wait_exit(timeout=15) == 0, d.log_tail()
        w.stop()
        d.wait_log(r"journal: the records of 300 items a graceful stop left unstarted could "
                   rf"not be written \({ENOSPC_TEXT}\): the next start takes them over as "
                   r"after a crash, each as its next attempt", timeout=1)
        filler.unlink()

        again = start_daemon(config, name="again")
        sub = again.client().subscribe(sync=True, replay=True)
        finals = sub.wait_final(["long"] + waiters, timeout=30)
        assert {(f.state, f.attempt) for f in finals.values()} == {(SUCCEEDED, 2)}, \
            {i: sub.states_of(i) for i, f in finals.items() if (f.state, f.attempt) !=
             (SUCCEEDED, 2)}
        again.wait_log(r"journal: took over \S+ of grpc process \d+: 301 items queued again, "
                       r"0 failed", timeout=5)


# ---- the journal directory removed under the daemon ------------------------


def wait_restart_finals(again, ids, timeout=60):
    """After a power cut: every id runs to a final update, SUCCEEDED. (No
    sync: a probe would wait behind the items; the replay has them all.)"""
    sub = again.client().subscribe(replay=True)
    finals = sub.wait_final(ids, timeout=timeout)
    bad = {i: (f.state, f.error) for i, f in finals.items() if f.state != SUCCEEDED}
    assert not bad, bad
    sub.cancel()


@pytest.mark.deadline(120)
def test_journal_removed_under_the_daemon_is_made_again_and_loses_nothing(start_daemon,
                                                                           tmp_path):
    """rm -rf of the journal while the daemon holds items (one running, five
    queued behind it): before, every item was rejected from then on, and a
    crash lost those held. Now the grpc process makes its directory again
    (the journal root with the mode it had), writes every item it holds to
    a new segment, serves again, and a power cut after that loses nothing:
    the restart runs every accepted item to its final."""
    journal = tmp_path / "journal"
    config = {"workers": {"count": 1, "prefetch": 1}, "queue": {"journal": str(journal)}}
    d = start_daemon(config, name="first")
    c = d.client()
    w = Watcher(c)
    held = [{"id": "pin", "kind": "sleep", "params": {"ms": "15000"}}] + \
        [{"id": f"q{i}", "kind": "echo", "payload": b"q"} for i in range(5)]
    assert c.submit(held).accepted == len(held)
    w.wait(lambda: w.has_state("pin", STARTED), 10, "pin started")
    [instance] = list(journal.glob("grpc-*"))
    mode = journal.stat().st_mode
    shutil.rmtree(journal)
    new = [{"id": f"x{i}", "kind": "echo", "payload": b"x"} for i in range(3)]
    reply = c.submit(new)
    assert reply.accepted == 3, reply
    d.wait_log(r"journal: files of this process's journal were removed under it; made again "
               rf"{re.escape(str(instance))}; its \d+ live items and 0 retained finals are "
               r"written to segment 2 anew")
    assert c.health() == SERVING
    assert instance.is_dir() and [p.name for p in segments(journal)] == ["00000002.seg"], \
        list(journal.rglob("*"))
    assert journal.stat().st_mode == mode
    assert not w.has_state("pin", SUCCEEDED), "pin ended before the power cut: too fast"
    w.stop()
    kill_everything(d)

    again = start_daemon(config, name="again")
    wait_restart_finals(again, [it["id"] for it in held + new])
    again.wait_log(r"journal: took over \S+ of grpc process \d+: 9 items queued again, "
                   r"0 failed", timeout=5)


@pytest.mark.deadline(120)
def test_journal_removed_under_user_nobody_is_made_again_as_at_start(nobody_user):
    """Started as root with `user: nobody`: the journal was made as root and
    given to nobody before the drop. Removed, it is made again by nobody:
    DIR with the mode it had and nobody's, as after the start (its parent
    lets nobody write); a power cut after that loses nothing."""
    pw = nobody_user
    base = Path(tempfile.mkdtemp(prefix="ds-journal-remade-"))
    base.chmod(0o755)
    lib = base / "lib"
    lib.mkdir(mode=0o755)
    os.chown(lib, pw.pw_uid, pw.pw_gid)
    journal = lib / "journal"
    config = {"workers": {"count": 1, "prefetch": 1}, "queue": {"journal": str(journal)},
              "user": "nobody"}
    daemons = []

    def start(name):
        d = Daemon(base / name, config, name=name)
        (base / name).chmod(0o755)
        daemons.append(d)
        return d.start()

    try:
        d = start("first")
        c = d.client()
        w = Watcher(c)
        held = [{"id": "pin", "kind": "sleep", "params": {"ms": "15000"}},
                {"id": "q", "kind": "echo", "payload": b"q"}]
        assert c.submit(held).accepted == 2
        w.wait(lambda: w.has_state("pin", STARTED), 10, "pin started")
        [instance] = list(journal.glob("grpc-*"))
        before = {p: (p.stat().st_mode, p.stat().st_uid) for p in (journal, instance)}
        assert before[journal][1] == pw.pw_uid, before
        shutil.rmtree(journal)
        assert c.submit([{"id": "x", "kind": "echo", "payload": b"x"}]).accepted == 1
        d.wait_log(r"journal: files of this process's journal were removed under it; made "
                   rf"again {re.escape(str(instance))}")
        after = {p: (p.stat().st_mode, p.stat().st_uid) for p in (journal, instance)}
        assert after == before, (before, after)
        assert all(p.stat().st_uid == pw.pw_uid for p in instance.iterdir())
        assert not w.has_state("pin", SUCCEEDED), "pin ended before the power cut: too fast"
        w.stop()
        kill_everything(d)

        again = start("again")
        sub = again.client().subscribe(replay=True)
        finals = sub.wait_final(["pin", "q", "x"], timeout=60)
        assert {f.state for f in finals.values()} == {SUCCEEDED}, finals
        sub.cancel()
    finally:
        for d in daemons:
            d.kill_all()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.deadline(90)
def test_journal_removed_and_blocked_rejects_until_it_can_be_made_again(start_daemon,
                                                                        tmp_path):
    """The same with a regular file where the journal was: it cannot be made
    again, so every item is rejected with the reason, health says
    NOT_SERVING, finals are still published, and the log says so once (not
    at every attempt). Once the file goes, the journal is made again with
    what the daemon holds, and items are accepted; a power cut after that
    loses none of them."""
    journal = tmp_path / "journal"
    config = {"workers": {"count": 1, "prefetch": 1}, "queue": {"journal": str(journal)}}
    d = start_daemon(config, name="first")
    c = d.client()
    w = Watcher(c)
    assert c.submit([{"id": "pin", "kind": "sleep", "params": {"ms": "1000"}},
                     {"id": "long", "kind": "sleep", "params": {"ms": "20000"}}]).accepted == 2
    w.wait(lambda: w.has_state("pin", STARTED), 10, "pin started")
    [instance] = list(journal.glob("grpc-*"))
    shutil.rmtree(journal)
    journal.write_text("in the way\n")
    reply = c.submit([{"id": f"x{i}", "kind": "echo", "payload": b"x"} for i in range(3)])
    assert reply.rejected == 3, reply
    assert {r.reason for r in reply.rejections} == \
        {f"journal unavailable: {instance} was removed and cannot be made again: "
         f"mkdir(\"{instance}.new\") failed: Not a directory"}, reply
    d.wait_log(rf"journal: {re.escape(str(instance))} was removed under this process and "
               r"cannot be made again \(mkdir\(.*\) failed: Not a directory\): every item is "
               r"rejected until it can \(trying again every 5 s at most\); the 2 items it "
               r"holds are journaled nowhere meanwhile: a crash loses them")
    assert c.health() == NOT_SERVING
    # What it holds still ends, and its final update is published.
    w.wait_final(["pin"], timeout=10)
    assert [u.state for u in finals_of(w, "pin")] == [SUCCEEDED]
    time.sleep(3)       # several attempts (250 ms, 500 ms, 1 s, ...)
    assert c.submit([{"id": "y", "kind": "echo"}]).rejected == 1
    log = d.log_text()
    # (once: the master's "not serving" line quotes the reason too)
    assert log.count("was removed under this process and cannot be made again") == 1, log
    assert "still cannot be made again" not in log, log

    journal.unlink()
    wait_for(lambda: c.health() == SERVING, 20, "serving again")
    d.wait_log(r"journal: made again after \d+ attempts \(items are accepted again\): "
               rf"{re.escape(str(instance))}; its 1 live items")
    assert c.submit([{"id": "z", "kind": "echo", "payload": b"z"}]).accepted == 1
    assert instance.is_dir()
    w.stop()
    kill_everything(d)

    again = start_daemon(config, name="again")
    wait_restart_finals(again, ["long", "z"])


@pytest.mark.deadline(120)
def test_an_older_segment_deleted_alone_is_written_anew(start_daemon, tmp_path, monkeypatch):
    """A cleaner deleting an older segment alone (not the one being
    written): before, only the current segment's link count was checked, so
    nothing was seen, and the items recorded only there were lost at the
    next restart. Now the live items are written to a new segment, by the
    next write or (here) the next scan."""
    monkeypatch.setenv("DS_JOURNAL_SEGMENT_BYTES", "16KiB")
    journal = tmp_path / "journal"
    config = {"workers": {"count": 2, "prefetch": 1}, "queue": {"journal": str(journal)}}
    d = start_daemon(config, name="first")
    c = d.client()
    w = Watcher(c)
    assert c.submit([{"id": "pin", "kind": "sleep", "params": {"ms": "15000"}}]).accepted == 1
    w.wait(lambda: w.has_state("pin", STARTED), 10, "pin started")
    # Their ACCEPTs fill segment 1 past its 16 KiB: the next flush rolls.
    big = [{"id": f"big{i}", "kind": "echo", "payload": b"b" * 1024} for i in range(16)]
    assert c.submit(big).accepted == 16
    w.wait_final([it["id"] for it in big], timeout=20)
    wait_for(lambda: len(segments(journal)) >= 2, 10, "a second segment")
    [instance] = list(journal.glob("grpc-*"))
    first = instance / "00000001.seg"
    assert first.exists(), segments(journal)     # kept: pin is live there
    first.unlink()
    # Idle: the scan (every 10 s) sees it, not only the next write.
    d.wait_log(r"journal: files of this process's journal were removed under it; made again "
               rf"{re.escape(str(instance))}; its 1 live items", timeout=25)
    assert not first.exists()
    assert c.submit([{"id": "poke", "kind": "echo", "payload": b"p"}]).accepted == 1
    assert c.health() == SERVING
    assert not w.has_state("pin", SUCCEEDED), "pin ended before the power cut: too fast"
    w.stop()
    kill_everything(d)

    # (poke may have ended before: its final is then known, not published.)
    again = start_daemon(config, name="again")
    wait_restart_finals(again, ["pin"])


def test_journal_removed_with_a_full_segment_still_publishes_the_finals(start_daemon, tmp_path,
                                                                        monkeypatch):
    """The same with the segment being written already past its size: the
    next flush rolled to a new segment, which cannot be made in a directory
    that is gone, so the FINALs were held (retried every 2 s, forever) and
    the item it held never got its final update. Now the journal is made
    again with a new segment (and while it cannot be, nothing rolls: the
    records go to the unlinked file); the finals are published."""
    monkeypatch.setenv("DS_JOURNAL_SEGMENT_BYTES", "16KiB")
    journal = tmp_path / "journal"
    d = start_daemon({"workers": {"count": 2, "prefetch": 1},
                      "queue": {"journal": str(journal)}})
    c = d.client()
    w = Watcher(c)
    assert c.submit([{"id": "pin", "kind": "sleep", "params": {"ms": "2000"}}]).accepted == 1
    w.wait(lambda: w.has_state("pin", STARTED), 10, "pin started")
    # Their ACCEPTs fill a segment, their FINALs (with the results) the next
    # one past its 16 KiB, with nothing live in it.
    big = [{"id": f"big{i}", "kind": "echo", "payload": b"b" * 1024} for i in range(24)]
    assert c.submit(big).accepted == 24
    w.wait_final([it["id"] for it in big], timeout=10)
    time.sleep(0.3)     # their FINALs are flushed
    shutil.rmtree(journal)
    w.wait_final(["pin"], timeout=10)
    assert finals_of(w, "pin")[-1].state == SUCCEEDED
    assert "cannot be written" not in d.log_text(), d.log_tail()
    w.stop()


def test_journal_removed_then_a_stop_deadline_says_the_items_are_lost(start_daemon, tmp_path):
    """Items held when the journal directory was removed (and cannot be made
    again: a file is in its way) cannot stay in it: a graceful stop's
    deadline ends them FAILED (not RETRYING "it stays in
    the queue journal and runs again at the next start", which was false),
    and the stop says nothing stays (not "2 retained finals stay in DIR")."""
    journal = tmp_path / "journal"
    d = start_daemon({"workers": {"count": 1, "prefetch": 1}, "shutdown_timeout": "1s",
                      "queue": {"journal": str(journal)}})
    c = d.client()
    w = Watcher(c)
    assert c.submit([{"id": "long", "kind": "sleep", "params": {"ms": "60000"}},
                     {"id": "behind", "kind": "echo", "payload": b"x"}]).accepted == 2
    w.wait(lambda: w.has_state("long", STARTED), 10, "long started")
    shutil.rmtree(journal)
    journal.write_text("in the way\n")
    assert c.submit([{"id": "x", "kind": "echo"}]).rejected == 1     # noticed
    d.send_signal(signal.SIGQUIT)
    w.wait_final(["long", "behind"], timeout=15)
    for i in ("long", "behind"):
        last = finals_of(w, i)[-1]
        assert last.state == FAILED, (i, last)
        assert "stays in the queue journal" not in last.error, last
    assert d.wait_exit(timeout=15) == 0, d.log_tail()
    log = d.log_text()
    assert "they are FAILED" in log, log
    assert "was removed under this process: nothing stays for the next grpc process" in log, log
    assert "stay in" not in log, log
    w.stop()


def free_pages(filler, pages):
    """Give PAGES pages of FILLER's back to its full disk."""
    size = filler.stat().st_size
    os.truncate(filler, size - pages * 4096)


@pytest.mark.deadline(120)
def test_journal_removed_on_a_full_disk_frees_its_space_for_the_copies(start_daemon, tmp_path):
    """rm -rf of the journal on a full disk, to make room: the rebuild's new
    segment fits, the copies of what it holds (a 40 KiB item) do not while
    the removed segments are still open. Before, their descriptors stayed
    open (their blocks allocated), the write of the copies failed, yet the
    log said they were written anew, and a power cut lost every item held.
    Now the removed segments are closed once copied: their space is free,
    the copies are written, and the restart runs every item."""
    with small_disk(tmp_path / "small") as disk:
        journal = disk / "journal"
        config = {"workers": {"count": 1, "prefetch": 1}, "queue": {"journal": str(journal)}}
        d = start_daemon(config, name="first")
        c = d.client()
        w = Watcher(c)
        held = [{"id": "pin", "kind": "sleep", "params": {"ms": "20000"}},
                {"id": "big", "kind": "echo", "payload": b"b" * 40960}]
        assert c.submit(held).accepted == 2
        w.wait(lambda: w.has_state("pin", STARTED), 10, "pin started")
        free_pages(fill(disk), 2)
        [instance] = list(journal.glob("grpc-*"))
        shutil.rmtree(journal)
        reply = c.submit([{"id": "poke", "kind": "echo"}])
        assert reply.accepted == 1, (reply, d.log_tail())
        d.wait_log(r"journal: files of this process's journal were removed under it; made again "
                   rf"{re.escape(str(instance))}; its \d+ live items and 0 retained finals are "
                   r"written to segment 2 anew")
        assert c.health() == SERVING
        assert "failed" not in d.log_text(), d.log_tail()
        assert not w.has_state("pin", SUCCEEDED), "pin ended before the power cut: too fast"
        w.stop()
        kill_everything(d)
        (disk / "filler").unlink()

        again = start_daemon(config, name="again")
        wait_restart_finals(again, ["pin", "big"])


@pytest.mark.deadline(120)
def test_journal_removed_and_copies_that_do_not_fit_are_not_said_written(start_daemon,
                                                                         tmp_path):
    """The same, with the removed segment's blocks kept by a hard link (a
    backup): the copies cannot be written. Before, the log said they were
    written anew and health said SERVING while what the daemon held was
    journaled nowhere. Now it says so (once), rejects every item with the
    reason and says NOT_SERVING until the copies are written; once there is
    room they are, it serves again, and a power cut after that loses
    nothing."""
    with small_disk(tmp_path / "small") as disk:
        journal = disk / "journal"
        config = {"workers": {"count": 1, "prefetch": 1}, "queue": {"journal": str(journal)}}
        d = start_daemon(config, name="first")
        c = d.client()
        w = Watcher(c)
        held = [{"id": "pin", "kind": "sleep", "params": {"ms": "20000"}},
                {"id": "big", "kind": "echo", "payload": b"b" * 40960}]
        assert c.submit(held).accepted == 2
        w.wait(lambda: w.has_state("pin", STARTED), 10, "pin started")
        filler = fill(disk)
        free_pages(filler, 2)
        [instance] = list(journal.glob("grpc-*"))
        backup = disk / "backup.seg"
        os.link(instance / "00000001.seg", backup)
        shutil.rmtree(journal)
        reply = c.submit([{"id": "poke", "kind": "echo"}])
        assert reply.rejected == 1, reply
        d.wait_log(rf"journal: {re.escape(str(instance))} was removed under this process and "
                   r"made again, but writing its 2 live items and 0 retained finals there "
                   rf"failed \({ENOSPC_TEXT}\): every item is rejected until they are written")
        assert "anew" not in d.log_text(), d.log_tail()
        assert c.health() == NOT_SERVING
        reply = c.submit([{"id": "x", "kind": "echo"}])
        assert {r.reason for r in reply.rejections} == \
            {f"journal unavailable: {instance} was removed and made again, but what it holds "
             f"cannot be written there: {ENOSPC_TEXT}"}, reply

        time.sleep(3)       # several retries (50 ms, 100 ms, ...): the copies still do not fit
        assert c.health() == NOT_SERVING, d.log_tail()
        backup.unlink()
        filler.unlink()
        wait_for(lambda: c.health() == SERVING, 20, "serving again")
        d.wait_log(r"journal: files of this process's journal were removed under it; made again "
                   rf"{re.escape(str(instance))}; its 2 live items and 0 retained finals are "
                   r"written to segment 2 anew")
        assert c.submit([{"id": "z", "kind": "echo", "payload": b"z"}]).accepted == 1
        assert not w.has_state("pin", SUCCEEDED), "pin ended before the power cut: too fast"
        w.stop()
        kill_everything(d)

        again = start_daemon(config, name="again")
        wait_restart_finals(again, ["pin", "big", "z"])


@pytest.mark.deadline(120)
def test_journal_removed_just_before_a_stop_is_made_again_by_it(start_daemon, tmp_path):
    """rm -rf of the journal, then TERM before any write or scan noticed it:
    the stop's last write did not check, went to files with no name, and
    the log said "2 items stay in DIR for the next grpc process" while
    nothing stayed: the next start lost them. Now the stop makes the
    journal again first; the next start runs both."""
    journal = tmp_path / "journal"
    config = {"workers": {"count": 1, "prefetch": 1}, "queue": {"journal": str(journal)}}
    d = start_daemon(config, name="first")
    c = d.client()
    w = Watcher(c)
    held = [{"id": "pin", "kind": "sleep", "params": {"ms": "3000"}},
            {"id": "q", "kind": "echo", "payload": b"q"}]
    assert c.submit(held).accepted == 2
    w.wait(lambda: w.has_state("pin", STARTED), 10, "pin started")
    [instance] = list(journal.glob("grpc-*"))
    w.stop()
    shutil.rmtree(journal)
    d.send_signal(signal.SIGTERM)
    d.wait_exit(timeout=15)
    log = d.log_text()
    assert re.search(r"journal: files of this process's journal were removed under it; made "
                     rf"again {re.escape(str(instance))}; its 2 live items", log), log
    assert f"journal: 2 items stay in {instance} for the next grpc process" in log, log
    assert instance.is_dir(), list(journal.rglob("*"))

    again = start_daemon(config, name="again")
    wait_restart_finals(again, ["pin", "q"])
