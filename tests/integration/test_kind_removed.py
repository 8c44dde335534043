"""
A kind removed from the config while items of it are live.

- memory mode, a reload: the item running finishes on its old worker; the
  ones queued go to the new worker, which fails each once, naming the kind
  (src/workers/worker.c: `kind "slow" is no longer configured (a reload
  removed it); not run`), without a retry and without a STARTED; a new
  item of the kind is rejected, naming it.
- journal mode, the whole daemon killed and restarted without the kind:
  each recovered item ends once, FAILED (`...; kind "slow" is no longer
  configured`, docs/journal.md).
- cluster mode, an instance without the kind takes over the items of one
  that had it: each ends once, FAILED naming the kind and the instance
  (docs/scaling.md, "Configuration").

Kind `slow` is the sleep builtin under another name (in the reload test, a
program that ends once the test releases it).
"""
import re
import signal

import pytest

from conftest import FAILED, FINAL_STATES, QUEUED, STARTED, SUCCEEDED, state_name
from test_cluster import cluster_name, redis, start_instance, wait_work_empty  # noqa: F401
from test_cluster import kill_everything as kill_instance
from test_journal import Watcher, journal_config
from test_journal import kill_everything as power_cut

WITH_SLOW = {"echo": {"builtin": "echo"}, "slow": {"builtin": "sleep"}}
WITHOUT_SLOW = {"echo": {"builtin": "echo"}}


def handlers(kinds):
    return {"handlers": dict(kinds)}


def slow_items(tag, n, ms):
    return [{"id": f"{tag}-{i}", "kind": "slow", "params": {"ms": str(ms)}} for i in range(n)]


def finals_of(updates, item_id):
    return [u for u in updates if u.item_id == item_id and u.state in FINAL_STATES]


def went(updates, item_id):
    return [(state_name(u.state), u.attempt, u.error) for u in updates if u.item_id == item_id]


@pytest.mark.deadline(60)
def test_reload_without_a_kind_fails_its_queued_items_once(start_daemon, tmp_path):
    # prefetch 1: the old worker holds the item it runs and nothing else
    # (one it had prefetched would run there, under the old config).
    workers = {"workers": {"count": 1, "prefetch": 1}}
    # Here `slow` is a program that ends (exit 0) once GATE exists: "run"
    # holds the old worker until the queued ones have ended, however long
    # the reload takes (had it ended first, the old worker would have run
    # one of them under the old config).
    gate = tmp_path / "release-run"
    gated = {**WITH_SLOW, "slow": {"exec": ["/bin/sh", "-c",
                                            f'while [ ! -e "{gate}" ]; do sleep 0.02; done']}}
    d = start_daemon({**workers, **handlers(gated)})
    old_worker = d.worker_pids()[0]
    c = d.client()
    sub = c.subscribe(sync=True)
    running = {"id": "run", "kind": "slow"}
    queued = slow_items("q", 5, 100)
    assert c.submit([running]).accepted == 1
    sub.wait_state("run", STARTED)
    reply = c.submit(queued)
    assert (reply.accepted, reply.rejected) == (5, 0), reply
    for it in queued:
        sub.wait_state(it["id"], QUEUED)

    d.write_config({**workers, **handlers(WITHOUT_SLOW)})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reloaded .*generation 2")

    ids = ["run"] + [it["id"] for it in queued]
    sub.wait_final(ids[1:], timeout=15)
    assert not finals_of(sub.snapshot(), "run"), went(sub.snapshot(), "run")
    gate.touch()
    sub.wait_final(ids, timeout=15)
    # Anything late (a second final, a retry) would come before this probe.
    c.sync(sub)
    ups = sub.snapshot()
    finals = finals_of(ups, "run")
    assert [state_name(u.state) for u in finals] == ["SUCCEEDED"], went(ups, "run")
    assert finals[0].worker_pid == old_worker, went(ups, "run")
    for it in queued:
        finals = finals_of(ups, it["id"])
        assert len(finals) == 1 and finals[0].state == FAILED, went(ups, it["id"])
        assert finals[0].error == ('kind "slow" is no longer configured (a reload removed '
                                   'it); not run'), went(ups, it["id"])
        assert STARTED not in [u.state for u in ups if u.item_id == it["id"]], \
            went(ups, it["id"])
        assert finals[0].worker_pid != old_worker and finals[0].attempt == 1, \
            went(ups, it["id"])
    sub.assert_seq_increasing()

    reply = c.submit([{"id": "new", "kind": "slow", "params": {"ms": "10"}}])
    assert (reply.accepted, reply.rejected) == (0, 1), reply
    assert reply.rejections[0].id == "new", reply
    assert reply.rejections[0].reason == 'unknown kind "slow"', reply


@pytest.mark.deadline(60)
def test_restart_without_a_kind_fails_its_recovered_items_once(start_daemon, tmp_path):
    journal = tmp_path / "journal"
    config = journal_config(journal, journal_sync="always")
    d1 = start_daemon({**config, **handlers(WITH_SLOW)}, name="first")
    c1 = d1.client()
    w1 = Watcher(c1)
    busy = slow_items("busy", 2, 4000)      # both workers: the rest waits
    assert c1.submit(busy).accepted == 2
    w1.wait(lambda: all(w1.has_state(it["id"], STARTED) for it in busy), 10, "both started")
    items = slow_items("j", 5, 100)
    assert c1.submit(items).accepted == 5
    w1.wait(lambda: all(w1.has_state(it["id"], QUEUED) for it in items), 10, "QUEUED")
    w1.stop()
    power_cut(d1)

    d2 = start_daemon({**config, **handlers(WITHOUT_SLOW)}, name="second")
    d2.wait_log(r"journal: took over .*: 0 items queued again, 7 failed")
    w2 = Watcher(d2.client())
    ids = [it["id"] for it in busy + items]
    w2.wait_final(ids, timeout=15)
    # A late second final would come with the next update.
    reply, sub = d2.client().run_items([{"id": "after", "payload": b"x"}])
    w2.wait_final(["after"], timeout=10)
    w2.stop()
    for item_id in ids:
        finals = [u for u in w2.of(item_id) if u.state in FINAL_STATES]
        assert len(finals) == 1 and finals[0].state == FAILED, w2.states(item_id)
        assert finals[0].error.endswith('kind "slow" is no longer configured'), finals[0].error
        assert "recovered from the journal after a restart" in finals[0].error
    assert not w2.violations


@pytest.mark.deadline(60)
def test_an_instance_without_the_kind_fails_the_items_it_takes_over(redis, start_daemon):
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=1,
                       overrides=handlers(WITH_SLOW))
    items = slow_items("c", 6, 5000)
    ca = a.client()
    wa = Watcher(ca, name="watch-a")
    reply = ca.submit(items)
    assert (reply.accepted, reply.rejected) == (6, 0), reply
    # a runs one and holds what it prefetched; the rest wait in the stream.
    wa.wait(lambda: wa.has_state("c-0", STARTED), 10, "c-0 STARTED on a")
    wa.wait(lambda: all(wa.has_state(it["id"], QUEUED) for it in items), 10, "QUEUED")
    wa.stop()
    kill_instance(a)

    b = start_instance(start_daemon, redis, name, "b", workers=1,
                       overrides=handlers(WITHOUT_SLOW))
    b_grpc = b.grpc_pid()
    wb = Watcher(b.client(), name="watch-b")        # replays from the start
    ids = [it["id"] for it in items]
    wb.wait_final(ids, timeout=20)
    # A late second final would come before the final of an item sent now.
    assert b.client().submit([{"id": "after", "payload": b"x"}]).accepted == 1
    wb.wait_final(["after"], timeout=10)
    wb.stop()
    said = re.compile(rf'^kind "slow" is not configured on instance \S+-{b_grpc}-\d+ \(every '
                      rf'instance of a cluster needs the same handlers\)$')
    for item_id in ids:
        finals = [u for u in wb.of(item_id) if u.state in FINAL_STATES]
        assert len(finals) == 1 and finals[0].state == FAILED, wb.states(item_id)
        assert said.match(finals[0].error), finals[0].error
    assert [u.state for u in wb.of("after") if u.state in FINAL_STATES] == [SUCCEEDED]
    assert not wb.violations
    wait_work_empty(redis, name)
