"""
queue.journal: accepted items survive a killed grpc process, a killed
daemon (every process SIGKILLed at once, as a power cut would), a torn
journal tail and a full disk; the journal stays small; seq continues.

"Exactly once" is checked where it can be: items queued behind long
sleeps cannot finish before the kill, so each must end with one final
update, after a RETRYING that says it was recovered. (An update already
published by the killed process but not yet sent is lost with it: the
update log lives in memory. These tests kill at moments where no final
update can be in flight.)
"""
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from conftest import (FAILED, FINAL_STATES, QUEUED, RETRYING, STARTED, SUCCEEDED, pb, pid_alive,
                      state_name, wait_for)

RECOVERED = "recovered from the journal after a restart"
LONG_MS = 4000          # the sleeps that keep both workers busy while we kill


class Watcher:
    """getUpdates with replay from after_seq, read by a thread; when the
    stream ends (the grpc process died) it comes back with replay: true,
    after_seq: the last seq it got, so it sees every update the daemon
    still has exactly once."""

    def __init__(self, client, after_seq=0, name="watcher"):
        self.client = client
        self.cond = threading.Condition()
        self.updates = []
        self.by_id = {}
        self.first_seq = None
        self.last_seq = after_seq
        self.violations = []
        self.ends = []
        self.stopping = False
        self.call = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            try:
                self.call = self.client.stub.getUpdates(
                    pb.UpdatesRequest(replay=True, after_seq=self.last_seq))
            except ValueError:          # the channel was closed under us
                return
            try:
                for u in self.call:
                    self._take(u)
                self.ends.append("ended")
            except grpc.RpcError as e:
                if self.stopping:
                    return
                self.ends.append(e.code())
            time.sleep(0.05)

    def _take(self, u):
        with self.cond:
            if u.seq <= self.last_seq:
                self.violations.append((self.last_seq, u.seq))
            if self.first_seq is None:
                self.first_seq = u.seq
            self.last_seq = u.seq
            self.updates.append(u)
            self.by_id.setdefault(u.item_id, []).append(u)
            self.cond.notify_all()

    def of(self, item_id):
        with self.cond:
            return list(self.by_id.get(item_id, []))

    def states(self, item_id):
        return [f"{state_name(u.state)}#{u.attempt}" for u in self.of(item_id)]

    def wait(self, predicate, timeout, what):
        """Until predicate() (called under the lock) is true; polled every
        50 ms, not at every update: predicates here look at thousands of ids."""
        deadline = time.monotonic() + timeout
        while True:
            with self.cond:
                if predicate():
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what} "
                                     f"({len(self.updates)} updates, ends {self.ends[-3:]})")
            time.sleep(0.05)

    def has_state(self, item_id, state):
        return any(u.state == state for u in self.by_id.get(item_id, []))

    def wait_final(self, ids, timeout=30):
        ids = list(ids)

        def done():
            return all(any(u.state in FINAL_STATES for u in self.by_id.get(i, [])) for i in ids)
        try:
            self.wait(done, timeout, f"final updates of {len(ids)} items")
        except AssertionError as e:
            missing = [i for i in ids if not any(u.state in FINAL_STATES
                                                 for u in self.by_id.get(i, []))]
            raise AssertionError(f"{e}; {len(missing)} missing, e.g. "
                                 f"{[(i, self.states(i)) for i in missing[:3]]}") from None

    def stop(self):
        self.stopping = True
        if self.call is not None:
            self.call.cancel()
        self.thread.join(timeout=5)


def journal_config(path, **queue):
    return {"workers": {"count": 2}, "queue": {"journal": str(path), **queue}}


def busy_workers(client, watcher, tag, ms=LONG_MS):
    """Both workers start a long sleep: nothing queued after it can finish
    for ms milliseconds."""
    ids = [f"{tag}-long-{i}" for i in range(2)]
    reply = client.submit([{"id": i, "kind": "sleep", "params": {"ms": str(ms)}} for i in ids])
    assert reply.accepted == 2
    watcher.wait(lambda: all(watcher.has_state(i, STARTED) for i in ids), 10, "both sleeps started")
    return ids


def echo_items(tag, n, **extra):
    return [{"id": f"{tag}-{i}", "kind": "echo", "payload": f"payload {tag} {i}".encode(), **extra}
            for i in range(n)]


def kill_everything(daemon):
    """A power cut: SIGKILL the grpc process, the master and the workers at
    once (the grpc process first, so it gets no SIGTERM from its dying parent)."""
    pids = [daemon.grpc_pid(), daemon.master_pid] + daemon.worker_pids()
    pids = [p for p in pids if p is not None]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    daemon.proc.wait(timeout=5)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, "every process gone")


def assert_recovered_once(watcher, items, attempt_before=1):
    """Each item: a RETRYING naming the journal, then exactly one final:
    SUCCEEDED with its payload echoed."""
    for it in items:
        ups = watcher.of(it["id"])
        finals = [u for u in ups if u.state in FINAL_STATES]
        assert len(finals) == 1, f"{it['id']}: {watcher.states(it['id'])}"
        assert finals[0].state == SUCCEEDED, f"{it['id']}: {finals[0].error}"
        if it.get("kind") == "echo":
            assert finals[0].result == it["payload"]
        retrying = [u for u in ups if u.state == RETRYING]
        assert any(RECOVERED in u.error and u.attempt == attempt_before for u in retrying), \
            f"{it['id']}: no RETRYING from the journal: {[(u.attempt, u.error) for u in retrying]}"
        assert finals[0].attempt == attempt_before + 1


def segments(path):
    return sorted(Path(path).glob("grpc-*/*.seg"))


def journal_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --------------------------------------------------------------------------


@pytest.mark.deadline(60)
def test_killed_grpc_process_loses_nothing(start_daemon, tmp_path):
    journal = tmp_path / "journal"
    d = start_daemon(journal_config(journal))
    c = d.client()
    w = Watcher(c)
    long_ids = busy_workers(c, w, "k")
    items = echo_items("k", 300)
    one_shot = echo_items("once", 20, max_attempts=1)
    reply = c.submit(items + one_shot)
    assert (reply.accepted, reply.rejected) == (320, 0)
    # Accepted means journaled: every one has its QUEUED, none can be final.
    w.wait(lambda: all(w.has_state(i["id"], QUEUED) for i in items + one_shot), 10, "QUEUED")

    old = d.grpc_pid()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: d.grpc_pid() not in (None, old), 10, "a new grpc process")
    d.wait_ready()
    d.wait_log(rf"journal: took over \S+ of grpc process {old}: 302 items queued again, "
               rf"20 failed")

    w.wait_final([i["id"] for i in items + one_shot] + long_ids, timeout=30)
    w.stop()
    assert_recovered_once(w, items)
    assert_recovered_once(w, [{"id": i, "kind": "sleep"} for i in long_ids])
    for it in one_shot:
        finals = [u for u in w.of(it["id"]) if u.state in FINAL_STATES]
        assert len(finals) == 1 and finals[0].state == FAILED, w.states(it["id"])
        assert RECOVERED in finals[0].error
        assert "attempt 2 would exceed max_attempts 1" in finals[0].error
    assert not w.violations, f"seq not increasing: {w.violations[:5]}"
    # The dead process's files are gone; ours are there.
    instances = [p.name for p in journal.iterdir() if p.name.startswith("grpc-")]
    assert len(instances) == 1 and instances[0].endswith(f"-{d.grpc_pid()}"), instances


@pytest.mark.deadline(90)
def test_power_cut_then_restart(start_daemon, tmp_path):
    journal = tmp_path / "journal"
    config = journal_config(journal, journal_sync="always")
    d1 = start_daemon(config, name="first")
    c1 = d1.client()
    w1 = Watcher(c1)
    long_ids = busy_workers(c1, w1, "p")
    items = echo_items("p", 200)
    reply = c1.submit(items)
    assert reply.accepted == 200
    w1.wait(lambda: all(w1.has_state(i["id"], QUEUED) for i in items), 10, "QUEUED")
    seen_seq = w1.last_seq
    w1.stop()
    kill_everything(d1)

    d2 = start_daemon(config, name="second")
    d2.wait_log(r"journal: took over .*: 202 items queued again")
    w2 = Watcher(d2.client())
    w2.wait_final([i["id"] for i in items] + long_ids, timeout=30)
    assert_recovered_once(w2, items)
    assert_recovered_once(w2, [{"id": i, "kind": "sleep"} for i in long_ids])
    assert w2.first_seq > seen_seq, f"seq restarted: {w2.first_seq} <= {seen_seq}"
    assert not w2.violations
    last = w2.last_seq
    w2.stop()

    # A clean stop with nothing live keeps only its retained finals (for
    # getItems and duplicates after the restart), and seq goes on.
    assert d2.stop(signal.SIGTERM) == 0
    names = sorted(p.name for p in journal.iterdir())
    assert names[-1] == "seq" and len(names) == 2 and names[0].startswith("grpc-"), names
    d3 = start_daemon(config, name="third")
    d3.wait_log(r"journal: took over .*: 0 items queued again, .* 202 finals known again")
    w3 = Watcher(d3.client())
    reply = d3.client().submit(echo_items("after", 3))
    assert reply.accepted == 3
    w3.wait_final([f"after-{i}" for i in range(3)], timeout=10)
    assert w3.first_seq > last, f"seq went back after a clean restart: {w3.first_seq} <= {last}"
    w3.stop()


@pytest.mark.deadline(60)
def test_torn_tail_is_truncated_and_the_daemon_serves(start_daemon, tmp_path):
    journal = tmp_path / "journal"
    config = journal_config(journal)
    d1 = start_daemon(config, name="first")
    c1 = d1.client()
    w1 = Watcher(c1)
    busy_workers(c1, w1, "t")
    items = echo_items("t", 20)
    assert c1.submit(items).accepted == 20
    w1.wait(lambda: all(w1.has_state(i["id"], QUEUED) for i in items), 10, "QUEUED")
    w1.stop()
    kill_everything(d1)

    newest = segments(journal)[-1]
    with open(newest, "ab") as f:
        f.write(b"\x17torn write " + os.urandom(88))      # 100 bytes of garbage

    d2 = start_daemon(config, name="second")
    d2.wait_log(rf"journal: {re.escape(str(newest))}: .* at offset \d+; truncating the torn "
                r"tail \(100 bytes\)")
    w2 = Watcher(d2.client())
    w2.wait_final([i["id"] for i in items], timeout=30)
    assert_recovered_once(w2, items)
    w2.stop()
    reply, sub = d2.client().run_items(echo_items("fresh", 5))
    assert reply.accepted == 5
    assert all(sub.final[f"fresh-{i}"].state == SUCCEEDED for i in range(5))


@pytest.mark.deadline(90)
def test_journal_does_not_grow(start_daemon, tmp_path):
    journal = tmp_path / "journal"
    # No finals retained (items.retention.count 0): nothing keeps a segment
    # but live items. (Retained finals keep theirs: test_journal_items.py.)
    d = start_daemon({**journal_config(journal), "items": {"retention": {"count": 0}}})
    c = d.client()
    sub = c.subscribe(sync=True)
    ids = []
    for call in range(4):
        batch = echo_items(f"g{call}", 5000)
        assert c.submit(batch).accepted == 5000
        ids += [i["id"] for i in batch]
    sub.wait_final(ids, timeout=60)
    # ~2.7 MB went through it. What stays is one segment, rolled at least
    # once, and (with nothing live) at most the idle roll size: 1 MiB.
    def small():
        segs = segments(journal)
        return (len(segs) == 1 and int(segs[0].stem) >= 2
                and journal_bytes(journal) <= (1 << 20) + (64 << 10))
    try:
        wait_for(small, 5, "a small journal")
    except AssertionError as e:
        raise AssertionError(f"{e}: {[(p.name, p.stat().st_size) for p in segments(journal)]}")


@pytest.mark.deadline(90)
def test_long_lived_item_does_not_pin_the_journal(start_daemon, tmp_path, monkeypatch):
    # Small segments (a testing knob) so that 8000 items roll many of them.
    monkeypatch.setenv("DS_JOURNAL_SEGMENT_BYTES", "64KiB")
    journal = tmp_path / "journal"
    # 100 retained finals: copied forward like the long item, bounded.
    d = start_daemon({**journal_config(journal), "items": {"retention": {"count": 100}}})
    c = d.client()
    w = Watcher(c)
    reply = c.submit([{"id": "pinned", "kind": "sleep", "params": {"ms": "30000"}}])
    assert reply.accepted == 1
    w.wait(lambda: w.has_state("pinned", STARTED), 10, "the long item started")
    ids = []
    for call in range(4):
        batch = echo_items(f"l{call}", 2000)
        assert c.submit(batch).accepted == 2000
        ids += [i["id"] for i in batch]
    # Those prefetched behind the sleep wait with it; the rest finish.
    w.wait(lambda: sum(1 for i in ids if w.has_state(i, SUCCEEDED)) >= len(ids) - 40, 60,
           "the echo items")
    assert not w.has_state("pinned", SUCCEEDED)
    segs = segments(journal)
    numbers = [int(p.stem) for p in segs]
    # Rolled many times, yet the segment holding the long item went: copied forward.
    assert max(numbers) >= 10, numbers
    assert min(numbers) > 1, numbers
    assert len(segs) <= 5, numbers
    assert journal_bytes(journal) < 6 * (64 << 10) + (64 << 10)
    w.stop()


@pytest.mark.deadline(90)
def test_other_live_instance_is_left_alone_then_taken_over(start_daemon, tmp_path):
    """As during a USR2 upgrade: two daemons on one journal directory. The
    second never replays what the first holds while it lives; once the first
    is gone, the second takes its items over within 10 s."""
    journal = tmp_path / "journal"
    config = journal_config(journal)
    a = start_daemon(config, name="a")
    ca = a.client()
    wa = Watcher(ca)
    busy_workers(ca, wa, "a", ms=6000)
    items = echo_items("a", 50)
    assert ca.submit(items).accepted == 50
    a_grpc = a.grpc_pid()

    b = start_daemon(config, name="b")
    wb = Watcher(b.client())
    time.sleep(0.5)
    assert "took over" not in b.log_text()
    wa.stop()
    kill_everything(a)
    b.wait_log(rf"journal: took over \S+ of grpc process {a_grpc}: 52 items queued again",
               timeout=15)
    wb.wait_final([i["id"] for i in items], timeout=20)
    assert_recovered_once(wb, items)
    wb.stop()


@pytest.mark.deadline(60)
def test_full_disk_rejects_and_recovers(start_daemon, tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    monkeypatch.setenv("DS_JOURNAL_SEGMENT_BYTES", "64KiB")
    d = None
    try:
        d = start_daemon(journal_config(mnt / "journal", journal_sync="always"))
        c = d.client()
        w = Watcher(c)
        # The workers sleep: the big items stay live and fill the disk.
        long_ids = busy_workers(c, w, "full", ms=3000)
        items = [{"id": f"big-{i}", "kind": "echo", "payload": bytes([i % 256]) * 16384}
                 for i in range(60)]
        reply = c.submit(items)
        assert reply.accepted + reply.rejected == 60
        assert reply.rejected > 0, "a 256 KiB disk took 1 MB"
        assert reply.accepted > 0
        reasons = {r.reason for r in reply.rejections}
        assert reasons == {"journal write failed: No space left on device"}, reasons
        rejected = {items[r.index]["id"] for r in reply.rejections}
        accepted = [i["id"] for i in items if i["id"] not in rejected]
        w.wait_final(accepted + long_ids, timeout=30)
        for i in accepted:
            finals = [u for u in w.of(i) if u.state in FINAL_STATES]
            assert [u.state for u in finals] == [SUCCEEDED], w.states(i)
        assert not any(w.of(i) for i in rejected), "a rejected item was published"
        d.wait_log(r"journal: writing to \S+ failed: No space left on device; the items of "
                   r"every flush that fails are rejected")
        # Their segments were deleted as they finished: there is room again.
        reply = c.submit(echo_items("later", 5))
        assert reply.accepted == 5, reply
        w.wait_final([f"later-{i}" for i in range(5)], timeout=10)
        d.wait_log(r"journal: writing to \S+ works again after \d+ failed flushes")
        w.stop()
    finally:
        if d is not None:
            d.kill_all()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_without_journal_nothing_changes(start_daemon, tmp_path):
    d = start_daemon({"workers": {"count": 2}})
    reply, sub = d.client().run_items(echo_items("off", 50))
    assert reply.accepted == 50
    assert all(len([u for u in sub.of(f"off-{i}") if u.state in FINAL_STATES]) == 1
               for i in range(50))
    old = d.grpc_pid()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: d.grpc_pid() not in (None, old), 10, "a new grpc process")
    d.wait_ready()
    assert not re.search(r"journal: |took over", d.log_text())
    assert not list(tmp_path.rglob("*.seg"))
