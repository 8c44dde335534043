"""
What an item costs (Update.cpu_usec / max_rss_kib on the end of every
attempt that ran, Item.cpu_usec / max_rss_kib of the latest one), measured
by the worker: in memory, journal and cluster modes.

- an exec program burning ~2 s of CPU reports about 2e6 us (generous
  bounds: the machine is shared), one sleeping 1 s next to nothing;
- one touching 100 MB reports a peak of at least ~90 MB (its own, from
  wait4, not the worker's);
- built-ins run in the worker report theirs too, quick ones (echo) per
  batch; RETRYING and FAILED ends of attempts that ran carry them;
- getItems has them; the journal keeps them across a restart (a DONE
  record with the cost trailer), and a journal without the trailer
  still recovers.
"""
import uuid

import pytest

from conftest import FAILED, RETRYING, SUCCEEDED, wait_for
from test_cluster import cluster_name, redis, start_instance  # noqa: F401 (redis: a fixture)

PY = "/usr/bin/python3"
ECHO = {"default": "echo", "echo": {"builtin": "echo"}}

BURN = (PY, "-c", "import time\nt = time.process_time()\n"
        "while time.process_time() - t < 2.0:\n    pass\nprint('burnt', end='')")
TOUCH = (PY, "-c", "b = bytes(range(256)) * ((100 << 20) // 256)\nprint(len(b), end='')")
SLEEP = ("sleep", "1")
# Fails (exit 75, retryable) on its first attempt, succeeds on its second.
FLAKY = ("sh", "-c", 'if [ "$DS_ATTEMPT" = 1 ]; then exit 75; fi; printf ok')

KINDS = {
    **ECHO,
    "burn": {"exec": list(BURN), "timeout": "60s"},
    "touch": {"exec": list(TOUCH)},
    "nap": {"exec": list(SLEEP)},
    "flaky": {"exec": list(FLAKY)},
    "sha256": {"builtin": "sha256"},
}


def start_mode(mode, start_daemon, request, tmp_path, overrides=None, name=None):
    """A daemon in MODE (memory, journal or cluster) with KINDS."""
    config = {"handlers": dict(KINDS), "queue": {"max_attempts": 3}}
    if overrides:
        for k, v in overrides.items():
            config.setdefault(k, {}).update(v)
    if mode == "journal":
        config["queue"]["journal"] = str(tmp_path / "journal")
    if mode == "cluster":
        r = request.getfixturevalue("redis")
        return start_instance(start_daemon, r, cluster_name(), name or "a", overrides=config)
    return start_daemon(config, name=name)


def tag():
    return uuid.uuid4().hex[:8]


@pytest.mark.deadline(120)
@pytest.mark.parametrize("mode", ["memory", "journal", "cluster"])
def test_exec_cpu_and_peak_memory(mode, start_daemon, request, tmp_path):
    d = start_mode(mode, start_daemon, request, tmp_path)
    t = tag()
    ids = {k: f"{k}-{t}" for k in ("burn", "nap", "touch", "echo", "sha256", "flaky")}
    items = [{"id": ids[k], "kind": k} for k in ("burn", "nap", "touch", "flaky")]
    items += [{"id": ids["echo"], "kind": "echo", "payload": b"x" * 100},
              {"id": ids["sha256"], "kind": "sha256", "payload": b"x",
               "params": {"rounds": "3000000"}}]
    c = d.client()
    reply, sub = c.run_items(items, timeout=90)
    assert reply.accepted == len(items)
    final = {k: sub.final[i] for k, i in ids.items()}
    for k, u in final.items():
        assert u.state == SUCCEEDED, (k, u)

    burn = final["burn"]
    assert 1_000_000 <= burn.cpu_usec <= 6_000_000, burn.cpu_usec
    assert final["nap"].cpu_usec < 300_000, final["nap"].cpu_usec
    assert final["touch"].max_rss_kib >= 90_000, final["touch"].max_rss_kib
    # sleep's peak is its own, not the worker's nor python's
    assert 0 < final["nap"].max_rss_kib < 20_000, final["nap"].max_rss_kib
    # run in the worker: its CPU and its peak
    assert final["sha256"].cpu_usec > 10_000, final["sha256"].cpu_usec
    assert final["sha256"].max_rss_kib > 1000, final["sha256"].max_rss_kib
    assert final["echo"].max_rss_kib > 1000, final["echo"].max_rss_kib
    # the attempt that asked for a retry ran: its RETRYING has its cost
    retrying = [u for u in sub.of(ids["flaky"]) if u.state == RETRYING]
    assert retrying and retrying[0].max_rss_kib > 0, retrying
    # no cost on updates that are not an attempt's end
    for u in sub.of(ids["burn"]):
        if u.state not in (SUCCEEDED, FAILED, RETRYING):
            assert (u.cpu_usec, u.max_rss_kib) == (0, 0), u

    got = {it.id: it for it in c.get_items(list(ids.values())).items}
    for k, i in ids.items():
        assert (got[i].cpu_usec, got[i].max_rss_kib) == \
            (final[k].cpu_usec, final[k].max_rss_kib), (k, got[i], final[k])


@pytest.mark.deadline(120)
def test_journal_restart_keeps_the_figures(start_daemon, tmp_path):
    config = {"handlers": dict(KINDS), "queue": {"journal": str(tmp_path / "journal")}}
    d = start_daemon(config)
    t = tag()
    ids = [f"touch-{t}", f"echo-{t}"]
    reply, sub = d.client().run_items([{"id": ids[0], "kind": "touch"},
                                       {"id": ids[1], "kind": "echo", "payload": b"e"}],
                                      timeout=60)
    before = {i: (sub.final[i].cpu_usec, sub.final[i].max_rss_kib) for i in ids}
    assert before[ids[0]][1] >= 90_000, before
    d.kill_all()
    d2 = start_daemon(config, name="again")
    got = {}

    def known():
        items = d2.client().get_items(ids).items
        got.update({it.id: it for it in items})
        return len(got) == 2

    wait_for(known, 20, "the finals known again")
    for i in ids:
        assert got[i].state == SUCCEEDED
        assert (got[i].cpu_usec, got[i].max_rss_kib) == before[i], (i, got[i], before[i])
