"""Known items survive the death of every process with queue.journal (issue
16, durability): finals are journaled (DONE records) with what getItems,
duplicate detection and retry need, restored at the next start, and the
journal stays bounded by items.retention.
"""
import os
import signal
from pathlib import Path

import pytest

from conftest import pb, pid_alive, wait_for

SUCCEEDED, FAILED, QUEUED = pb.SUCCEEDED, pb.FAILED, pb.QUEUED
BAD = {"exec": ["sh", "-c", 'echo "bad input" >&2; exit 3']}


def config(tmp_path, handlers=None, **extra):
    handlers = handlers or {"default": "echo", "echo": {"builtin": "echo"}, "bad": BAD}
    return {"workers": {"count": 2}, "handlers": handlers,
            "queue": {"journal": str(tmp_path / "journal")}, **extra}


def get(client, ids, timeout=10, **kw):
    return client.get_items(ids, timeout=timeout, **kw)


def wait_final(client, ids, timeout=30):
    reply = get(client, ids, wait=True, with_results=True, timeout=timeout)
    assert not reply.not_found, reply.not_found
    return {i.id: i for i in reply.items}


def kill_everything(daemon):
    """SIGKILL the grpc process, the master and the workers at once."""
    pids = [daemon.grpc_pid(), daemon.master_pid] + daemon.worker_pids()
    pids = [p for p in pids if p is not None]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    daemon.proc.wait(timeout=5)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, "every process gone")


def batch_of_100():
    """90 echo items (their payload is their result), 10 that fail at once."""
    items = [{"id": f"e{i}", "kind": "echo", "batch": "B", "payload": f"result {i}".encode()}
             for i in range(90)]
    items += [{"id": f"x{i}", "kind": "bad", "batch": "B", "max_attempts": 1,
               "payload": f"input {i}".encode()} for i in range(10)]
    return items


def instances(journal):
    return sorted(p.name for p in Path(journal).iterdir() if p.name.startswith("grpc-"))


@pytest.mark.deadline(90)
def test_every_item_answers_after_sigkill_of_everything(start_daemon, tmp_path):
    items = batch_of_100()
    ids = [i["id"] for i in items]
    d1 = start_daemon(config(tmp_path), name="first")
    c1 = d1.client()
    assert c1.submit(items).accepted == 100
    before = wait_final(c1, ids)
    assert sum(i.state == FAILED for i in before.values()) == 10
    kill_everything(d1)

    # The kind "bad" is fixed in the new config: a retry after the restart works.
    fixed = {"default": "echo", "echo": {"builtin": "echo"}, "bad": {"exec": ["cat"]}}
    d2 = start_daemon(config(tmp_path, handlers=fixed), name="second")
    d2.wait_log(r"journal: took over \S+ of grpc process \d+: 0 items queued again, 0 failed, "
                r"0 unreadable, 100 finals known again", timeout=20)
    c2 = d2.client()
    after = {i.id: i for i in get(c2, ids, with_results=True).items}
    assert set(after) == set(ids)
    for item in items:
        a, b = after[item["id"]], before[item["id"]]
        assert (a.state, a.attempt, a.kind, a.batch, a.error) == \
            (b.state, b.attempt, b.kind, b.batch, b.error), item["id"]
        # Its DONE is written before the final update gives the index its time.
        assert 0 < a.finished_unix_nano <= b.finished_unix_nano
        assert a.started_unix_nano == b.started_unix_nano
        if item["kind"] == "echo":
            assert a.state == SUCCEEDED and a.result == item["payload"]
        else:
            assert a.state == FAILED and "exit" in a.error, a.error
    dead = c2.get_items(states=[FAILED], batches=["B"])
    assert {i.id for i in dead.items} == {f"x{i}" for i in range(10)}

    # Resent: all duplicates, nothing runs (no update for them).
    sub = c2.subscribe(sync=True)
    reply = c2.submit(items)
    assert (reply.accepted, reply.duplicates, reply.rejected) == (0, 100, 0), reply
    # Retry of a FAILED one: its WorkItem came back from the journal.
    r = c2.retry_items(["x3"])
    assert r.requeued == 1, r
    x3 = wait_final(c2, ["x3"])["x3"]
    assert (x3.state, x3.attempt, x3.result) == (SUCCEEDED, 1, b"input 3"), x3
    sub.wait(lambda s: any(u.state == SUCCEEDED for u in s.of("x3")), 10, "x3 SUCCEEDED")
    assert all(not sub.of(i) for i in ids if i != "x3"), "a duplicate was run"

    # And once more: the retried item's new final is what comes back.
    kill_everything(d2)
    d3 = start_daemon(config(tmp_path, handlers=fixed), name="third")
    d3.wait_log(r"10[01] finals known again", timeout=20)   # and the subscriber's probe
    x3 = get(d3.client(), ["x3"], with_results=True).items[0]
    assert (x3.state, x3.result) == (SUCCEEDED, b"input 3")
    assert len(instances(tmp_path / "journal")) == 1


@pytest.mark.deadline(60)
def test_retention_by_count_bounds_what_comes_back(start_daemon, tmp_path):
    extra = {"items": {"retention": {"count": 10}}}
    d1 = start_daemon(config(tmp_path, **extra), name="first")
    c1 = d1.client()
    for n in range(3):
        ids = [f"r{n}-{i}" for i in range(10)]
        assert c1.submit([{"id": i} for i in ids]).accepted == 10
        wait_final(c1, ids)
    kill_everything(d1)
    d2 = start_daemon(config(tmp_path, **extra), name="second")
    d2.wait_log(r"journal: took over", timeout=20)
    all_ids = [f"r{n}-{i}" for n in range(3) for i in range(10)]
    known = {i.id for i in get(d2.client(), all_ids).items}
    assert len(known) == 10, known
    assert known == {f"r2-{i}" for i in range(10)}, known
    # Forgotten ones run again; known ones are duplicates.
    reply = d2.client().submit([{"id": "r2-0"}])
    assert (reply.accepted, reply.duplicates) == (0, 1), reply
    reply = d2.client().submit([{"id": "r0-0"}])
    assert (reply.accepted, reply.duplicates) == (1, 0), reply


@pytest.mark.deadline(60)
def test_a_journal_of_forgotten_finals_is_deleted(start_daemon, tmp_path):
    journal = tmp_path / "journal"
    d1 = start_daemon(config(tmp_path), name="first")
    c1 = d1.client()
    ids = [f"f{i}" for i in range(20)]
    assert c1.submit([{"id": i} for i in ids]).accepted == 20
    wait_final(c1, ids)
    # A clean stop keeps the retained finals for the next start.
    assert d1.stop(signal.SIGTERM) == 0
    first = instances(journal)
    assert len(first) == 1, first

    d2 = start_daemon(config(tmp_path, items={"retention": {"age": "1s"}}), name="second")
    d2.wait_log(r"20 finals known again", timeout=20)
    c2 = d2.client()
    assert first[0] not in instances(journal)
    wait_for(lambda: len(get(c2, ids).not_found) == 20, 20, "every final forgotten")
    # Nothing live or retained: a clean stop deletes the instance.
    assert d2.stop(signal.SIGTERM) == 0
    assert instances(journal) == [], instances(journal)
    assert [p.name for p in journal.iterdir()] == ["seq"]
