"""
queue.journal, the less travelled paths:

- a reload that changes queue.journal (docs/journal.md, "A reload cannot
  move the journal of a running grpc process"): logged, nothing moves until
  the grpc process next starts; that one journals to, and recovers from,
  only the directory configured then;
- damage in an older segment and a file that is no segment (docs/journal.md,
  "Torn and corrupt records"): logged, the rest of that segment is skipped,
  the daemon starts and every item whose ACCEPT survived runs exactly once;
- a segment that cannot be opened (EMFILE, EIO, EACCES; here EPERM, an
  immutable file): the instance is not taken over, and stays whole for a
  later try (before, its other segments were taken over and the whole
  directory removed: the items of that segment were lost);
- a newest segment that can be read but not written (EACCES: 0444 under
  `user: nobody`) is read read-only and taken over (before: never, an
  error every 10 s), and files named as segments that are not regular
  files (a FIFO, a directory) are skipped (before: a FIFO blocked the start
  for good, a directory kept the instance from ever being taken over).
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import QUEUED, STARTED, SUCCEEDED, Daemon, wait_for
from test_journal import (Watcher, assert_recovered_once, echo_items,
                          journal_config, kill_everything, segments)

# src/grpc/journal.c journal_configure(), src/grpc/store.c store_configure()
CHANGED = ("queue.journal: changed to {new} by this reload; this grpc process keeps journaling "
           "to {old}, and what it leaves there is recovered only by a grpc process configured "
           "with that directory")
SET = "queue.journal: set by this reload; it takes effect when the grpc process next starts"


def instance_dirs(path):
    return sorted(p for p in Path(path).glob("grpc-*") if p.is_dir())


def kill_grpc(d):
    """SIGKILL the grpc process; the master starts another (with the config
    of its last reload). Returns the killed pid."""
    old = d.grpc_pid()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: d.grpc_pid() not in (None, old), 10, "a new grpc process")
    d.wait_ready()
    return old


def not_found(client, ids):
    # wait_for_ready: the channel may still be backing off from the killed process.
    return set(client.get_items(ids, wait_for_ready=True).not_found)


# --------------------------------------------------------------------------
# a reload that changes queue.journal
# --------------------------------------------------------------------------

def held_config(journal=None, paused=True):
    """2 workers, the journal in JOURNAL (None: none), and a kind `hold` (echo)
    that is paused: its items stay live, queued, whatever the reloads do to
    the workers."""
    config = {"workers": {"count": 2},
              "handlers": {"default": "echo", "echo": {"builtin": "echo"},
                           "sleep": {"builtin": "sleep"},
                           "hold": {"builtin": "echo", "paused": paused}}}
    if journal is not None:
        config["queue"] = {"journal": str(journal)}
    return config


def held_items(tag, n):
    return [{"id": f"{tag}-{i}", "kind": "hold", "payload": f"{tag} {i}".encode()}
            for i in range(n)]


def unpause(d, generation, journal):
    """A reload that lets the `hold` items run."""
    d.write_config(held_config(journal, paused=False))
    d.send_signal(signal.SIGHUP)
    d.wait_log(rf"reloaded .*generation {generation}")


def submit_queued(client, watcher, items):
    assert client.submit(items).accepted == len(items)
    watcher.wait(lambda: all(watcher.has_state(i["id"], QUEUED) for i in items), 10, "QUEUED")


def assert_ran_once_after_recovery(watcher, items):
    assert_recovered_once(watcher, items)
    for it in items:
        [final] = [u for u in watcher.of(it["id"]) if u.state == SUCCEEDED]
        assert final.result == it["payload"]


@pytest.mark.deadline(90)
def test_reload_moving_the_journal_applies_when_the_grpc_process_next_starts(start_daemon,
                                                                             tmp_path):
    a, b = tmp_path / "journal-a", tmp_path / "journal-b"
    d = start_daemon(held_config(a))
    c = d.client()
    w = Watcher(c)
    before = held_items("before", 20)
    submit_queued(c, w, before)
    [inst_a] = instance_dirs(a)
    size_a = sum(p.stat().st_size for p in segments(a))

    d.write_config(held_config(b))
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 2")
    d.wait_log(re.escape(CHANGED.format(new=b, old=a)))

    # Until the grpc process restarts, new items still go to A; B is untouched.
    after = held_items("after", 20)
    submit_queued(c, w, after)
    wait_for(lambda: sum(p.stat().st_size for p in segments(a)) > size_a, 5,
             "the new items' records in journal A")
    assert instance_dirs(a) == [inst_a]
    assert not b.exists() or not instance_dirs(b), list(b.iterdir())

    # The next grpc process journals to B and recovers only from B: the
    # items A holds wait there, unknown to it.
    old_grpc = kill_grpc(d)
    w.stop()
    [inst_b] = instance_dirs(b)
    assert inst_b.name.endswith(f"-{d.grpc_pid()}")
    assert instance_dirs(a) == [inst_a], "journal A was touched by the grpc process of B"
    assert "took over" not in d.log_text()
    live_a = [i["id"] for i in before + after]
    assert not_found(c, live_a) == set(live_a)
    reply, sub = c.run_items(echo_items("in-b", 5))
    assert reply.accepted == 5
    assert segments(b), "nothing written to journal B"

    # Back to A (logged the same way), and the grpc process after that takes
    # over what the killed one left there: each item once.
    w2 = Watcher(d.client(), name="w2")
    d.write_config(held_config(a))
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 3")
    d.wait_log(re.escape(CHANGED.format(new=a, old=b)))
    kill_grpc(d)
    d.wait_log(rf"journal: took over {re.escape(str(inst_a))} of grpc process {old_grpc}: "
               rf"40 items queued again, 0 failed, 0 unreadable")
    unpause(d, 4, a)
    w2.wait_final(live_a, timeout=30)
    assert_ran_once_after_recovery(w2, before + after)
    assert not w2.violations
    w2.stop()


@pytest.mark.deadline(60)
def test_reload_turning_the_journal_on_applies_when_the_grpc_process_next_starts(start_daemon,
                                                                                tmp_path):
    journal = tmp_path / "journal"
    d = start_daemon(held_config())
    c = d.client()
    d.write_config(held_config(journal))
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 2")
    d.wait_log(re.escape(SET))
    # Still the memory queue: nothing written, and a killed grpc process
    # loses what it held.
    w = Watcher(c)
    mem = held_items("mem", 10)
    submit_queued(c, w, mem)
    assert not journal.exists() or not list(journal.rglob("*.seg"))
    kill_grpc(d)
    w.stop()
    ids = [i["id"] for i in mem]
    assert not_found(c, ids) == set(ids)

    # The grpc process started after the reload journals: its items survive
    # the next kill.
    assert segments(journal)
    w = Watcher(c, name="w2")
    items = held_items("jr", 10)
    submit_queued(c, w, items)
    old = kill_grpc(d)
    d.wait_log(rf"journal: took over \S+ of grpc process {old}: 10 items queued again")
    unpause(d, 3, journal)
    w.wait_final([i["id"] for i in items], timeout=30)
    assert_ran_once_after_recovery(w, items)
    w.stop()


@pytest.mark.deadline(60)
def test_reload_turning_the_journal_off_applies_when_the_grpc_process_next_starts(start_daemon,
                                                                                 tmp_path):
    journal = tmp_path / "journal"
    d = start_daemon(held_config(journal))
    c = d.client()
    d.write_config(held_config())
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 2")
    d.wait_log(re.escape(CHANGED.format(new="off", old=journal)))
    # Still journaled: the items are written there.
    w = Watcher(c)
    [inst] = instance_dirs(journal)
    size = sum(p.stat().st_size for p in segments(journal))
    items = held_items("still", 10)
    submit_queued(c, w, items)
    wait_for(lambda: sum(p.stat().st_size for p in segments(journal)) > size, 5,
             "the items' records in the journal")
    kill_grpc(d)
    # The new grpc process has no journal: it does not recover them, and
    # leaves the files where they are (for a grpc process configured with it).
    w.stop()
    assert "took over" not in d.log_text()
    ids = [i["id"] for i in items]
    assert not_found(c, ids) == set(ids)
    reply, sub = c.run_items(echo_items("memory", 5))
    assert reply.accepted == 5
    assert instance_dirs(journal) == [inst]

    # Turned on again, the grpc process after that takes them over.
    w = Watcher(c, name="w2")
    d.write_config(held_config(journal))
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 3")
    d.wait_log(re.escape(SET))
    kill_grpc(d)
    d.wait_log(rf"journal: took over {re.escape(str(inst))} of grpc process \d+: "
               rf"10 items queued again")
    unpause(d, 4, journal)
    w.wait_final(ids, timeout=30)
    assert_ran_once_after_recovery(w, items)
    w.stop()


# --------------------------------------------------------------------------
# damage in an older segment, a file that is no segment
# --------------------------------------------------------------------------

SEGMENT_BYTES = 64 << 10
PAYLOAD = 1000              # bytes per item: ~60 ACCEPT records per segment


def where_ids_are(journal, ids):
    """{id: [(segment number, offset), ...]} of every occurrence of the id
    bytes in the segments."""
    found = {i: [] for i in ids}
    for seg in segments(journal):
        data = seg.read_bytes()
        for i in ids:
            start = 0
            while (at := data.find(i.encode(), start)) != -1:
                found[i].append((int(seg.stem), at))
                start = at + 1
    return found


@pytest.mark.deadline(90)
def test_corrupt_older_segment_and_a_junk_file(start_daemon, tmp_path, monkeypatch):
    monkeypatch.setenv("DS_JOURNAL_SEGMENT_BYTES", "64KiB")
    journal = tmp_path / "journal"
    config = {**journal_config(journal), "workers": {"count": 1, "prefetch": 1}}
    d1 = start_daemon(config, name="first")
    c1 = d1.client()
    w1 = Watcher(c1)
    long_id = "pin"
    assert c1.submit([{"id": long_id, "kind": "sleep", "params": {"ms": "4000"}}]).accepted == 1
    w1.wait(lambda: w1.has_state(long_id, STARTED), 10, "the long item started")
    items = []
    call = 0
    # One call's records are one flush; a segment rolls between flushes.
    while len({p.stem for p in segments(journal)}) < 4 and call < 40:
        batch = [{"id": f"x{call:02d}-{i:02d}", "kind": "echo",
                  "payload": (f"x{call:02d}-{i:02d} ".encode() * 200)[:PAYLOAD]}
                 for i in range(20)]
        assert c1.submit(batch).accepted == 20
        w1.wait(lambda: all(w1.has_state(i["id"], QUEUED) for i in batch), 10, "QUEUED")
        items += batch
        call += 1
    w1.stop()
    kill_everything(d1)

    segs = segments(journal)
    numbers = [int(p.stem) for p in segs]
    assert len(segs) >= 3 and numbers[0] == 1, numbers
    first = segs[0]
    ids = [i["id"] for i in items]
    where = where_ids_are(journal, ids + [long_id])

    # A flipped run of bytes in the middle of segment 1; a junk file named
    # like a segment (after the newest) and one named like nothing.
    size1 = first.stat().st_size
    middle = size1 // 2
    with open(first, "r+b") as f:
        f.seek(middle)
        chunk = f.read(16)
        f.seek(middle)
        f.write(bytes(b ^ 0xFF for b in chunk))
    junk = first.parent / f"{numbers[-1] + 1:08d}.seg"
    junk.write_bytes(b"\0" * 4096)
    (first.parent / "notes.txt").write_text("not a segment\n")

    d2 = start_daemon(config, name="second")
    m = d2.wait_log(rf"journal: {re.escape(str(first))}: (?P<why>[^\n]+) at offset "
                    rf"(?P<off>\d+); skipping the rest of this segment \((?P<n>\d+) bytes\)")
    off, skipped = int(m.group("off")), int(m.group("n"))
    assert off <= middle < off + skipped and off + skipped == size1, m.group(0)
    d2.wait_log(rf"journal: {re.escape(str(junk))} is not a journal segment \(no DSJRNL01 at "
                rf"its start\); skipping it \(4096 bytes\)")

    # What was lost: the items whose every record was in the skipped part.
    lost = {i for i, places in where.items() if places
            and all(n == 1 and at >= off for n, at in places)}
    kept = [i for i in ids + [long_id] if i not in lost]
    assert all(where[i] for i in ids + [long_id]), "an item not found in any segment"
    assert lost, f"nothing after offset {off} of segment 1? {where}"
    assert len(kept) > len(ids) // 2, (len(kept), len(ids))
    took = d2.wait_log(r"journal: took over \S+ of grpc process \d+: (\d+) items queued again")
    assert int(took.group(1)) == len(kept), (took.group(0), len(kept), len(lost))

    w2 = Watcher(d2.client())
    w2.wait_final(kept, timeout=40)
    by_id = {i["id"]: i for i in items}
    assert_recovered_once(w2, [by_id[i] for i in kept if i != long_id])
    assert_recovered_once(w2, [{"id": long_id, "kind": "sleep"}])
    assert not any(w2.of(i) for i in lost)
    assert not_found(d2.client(), sorted(lost)) == lost
    assert not w2.violations
    w2.stop()
    # The daemon serves, and what it recovered from is gone.
    reply, sub = d2.client().run_items(echo_items("fresh", 5))
    assert reply.accepted == 5
    assert all(sub.final[f"fresh-{i}"].state == SUCCEEDED for i in range(5))
    assert not first.parent.exists()


# --------------------------------------------------------------------------
# a segment that cannot be opened
# --------------------------------------------------------------------------

def chattr(flag, path):
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)


@pytest.mark.deadline(60)
def test_a_segment_that_cannot_be_opened_keeps_its_instance_whole(start_daemon, tmp_path):
    journal = tmp_path / "journal"
    config = {**journal_config(journal), "workers": {"count": 1, "prefetch": 1}}
    d1 = start_daemon(config, name="first")
    c1 = d1.client()
    w1 = Watcher(c1)
    assert c1.submit([{"id": "pin", "kind": "sleep", "params": {"ms": "30000"}}]).accepted == 1
    w1.wait(lambda: w1.has_state("pin", STARTED), 10, "the long item started")
    items = echo_items("w", 5)
    assert c1.submit(items).accepted == 5
    w1.stop()
    kill_everything(d1)
    [dead] = instance_dirs(journal)
    segs = sorted(dead.glob("*.seg"))
    assert segs
    # The newest segment is opened read-write (a torn tail is cut): an
    # immutable file refuses that, even to root.
    r = chattr("+i", segs[-1])
    if r.returncode != 0:
        pytest.skip(f"chattr +i: {r.stderr.strip()}")
    try:
        # Dead instances are read before the start serves.
        d2 = start_daemon(config, name="second")
        assert sorted(dead.glob("*.seg")) == segs and (dead / "lock").exists(), \
            (sorted(dead.iterdir()), d2.log_tail())
        ids = ["pin"] + [i["id"] for i in items]
        assert not_found(d2.client(), ids) == set(ids)
        d2.wait_log(rf"journal: open\(\"{re.escape(str(segs[-1]))}\"\) failed; "
                    rf"{re.escape(str(dead))} is not taken over while it cannot be read")
        d2.wait_log(rf"journal: {re.escape(str(dead))} is tried again every 10 s; why it "
                    r"cannot be read is logged at debug level from now on, until it can")
        # The scan 10 s on tries again, and does not log it again (it did,
        # every 10 s).
        time.sleep(12)
        assert d2.log_text().count("is not taken over while it cannot be read") == 1, \
            d2.log_tail()
        d2.stop()
    finally:
        chattr("-i", segs[-1])
    # Readable again: the next start takes every item over.
    d3 = start_daemon(config, name="third")
    d3.wait_log(rf"journal: took over {re.escape(str(dead))} of grpc process \d+: 6 items "
                rf"queued again")
    assert not_found(d3.client(), ids) == set()


# --------------------------------------------------------------------------
# a segment that can only be read, and files that are no segments
# --------------------------------------------------------------------------

def leave_dead_instance(start_daemon, journal):
    """A daemon killed with 6 items left (pin running, 5 queued behind it):
    its instance directory and those items."""
    config = {**journal_config(journal), "workers": {"count": 1, "prefetch": 1}}
    d = start_daemon(config, name="first")
    c = d.client()
    w = Watcher(c)
    assert c.submit([{"id": "pin", "kind": "sleep", "params": {"ms": "20000"}}]).accepted == 1
    w.wait(lambda: w.has_state("pin", STARTED), 10, "the long item started")
    items = echo_items("w", 5)
    assert c.submit(items).accepted == 5
    w.stop()
    kill_everything(d)
    [dead] = instance_dirs(journal)
    return dead, ["pin"] + [i["id"] for i in items]


@pytest.mark.deadline(90)
def test_segments_that_are_no_regular_files_are_skipped(start_daemon, tmp_path):
    journal = tmp_path / "journal"
    dead, ids = leave_dead_instance(start_daemon, journal)
    segs = sorted(dead.glob("*.seg"))
    last = int(segs[-1].name[:8])
    for seg in reversed(segs):          # one up: a FIFO takes number 1
        seg.rename(dead / f"{int(seg.name[:8]) + 1:08d}.seg")
    fifo = dead / "00000001.seg"
    os.mkfifo(fifo)
    directory = dead / f"{last + 2:08d}.seg"    # the newest
    directory.mkdir()

    config = {**journal_config(journal), "workers": {"count": 2}}
    d2 = start_daemon(config, name="second")
    d2.wait_log(rf"journal: {re.escape(str(fifo))} is a FIFO, not a segment; skipping it")
    d2.wait_log(rf"journal: {re.escape(str(directory))} was an empty directory, not a "
                r"segment; removed it")
    d2.wait_log(rf"journal: took over {re.escape(str(dead))} of grpc process \d+: 6 items "
                r"queued again")
    assert not dead.exists(), sorted(dead.iterdir())
    assert not_found(d2.client(), ids) == set()


@pytest.mark.deadline(120)
def test_a_newest_segment_that_can_only_be_read_is_taken_over(start_daemon, tmp_path,
                                                              nobody_user):
    """Under `user: nobody` a dead instance turns up (moved in while the
    daemon runs: its scans run as nobody) whose newest segment nobody may
    read but not write (0444, nobody's). It is read read-only and taken
    over, its files removed; its items run."""
    pw = nobody_user
    dead, ids = leave_dead_instance(start_daemon, tmp_path / "journal")
    for p in [dead] + list(dead.iterdir()):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    newest = sorted(dead.glob("*.seg"))[-1]
    newest.chmod(0o444)

    # Not under pytest's tmp_path: its parents are root's 0700.
    base = Path(tempfile.mkdtemp(prefix="ds-journal-ro-"))
    base.chmod(0o755)
    journal = base / "journal"
    d = None
    try:
        d = Daemon(base / "second", {**journal_config(journal), "user": "nobody"},
                   name="second")
        (base / "second").chmod(0o755)
        d.start()
        wait_for(lambda: list(journal.glob("grpc-*")), 10, "its instance")
        moved = journal / dead.name
        shutil.move(str(dead), str(moved))      # another file system: copied, with modes
        for p in [moved] + list(moved.iterdir()):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        (moved / newest.name).chmod(0o444)
        d.wait_log(rf"journal: {re.escape(str(moved / newest.name))} cannot be opened "
                   r"read-write \(Permission denied\); reading it read-only", timeout=25)
        d.wait_log(rf"journal: took over {re.escape(str(moved))} of grpc process \d+: 6 "
                   r"items queued again", timeout=5)
        wait_for(lambda: not moved.exists(), 10, "the dead instance removed")
        assert not_found(d.client(), ids) == set()
        assert "is not taken over" not in d.log_text(), d.log_tail()
    finally:
        if d is not None:
            d.kill_all()
        shutil.rmtree(base, ignore_errors=True)
