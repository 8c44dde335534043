"""Signals at a bad moment, with work in flight: what the daemon says and
how it exits.

- The grpc process dies during a graceful stop (QUIT: what `systemctl
  stop` sends; or an old master draining after USR2): it is not respawned
  to drain, so the master says what became of the items it held (lost
  without a journal, kept with one) and exits with a failure, so that the
  init system sees the stop was not clean. With a journal the next start
  runs them.
- A fast stop (TERM, INT) with items unfinished says how many and what
  becomes of them.
- HUP and USR2 while stopping are not acted on, and say so.
- A USR1 whose log file cannot be opened again says so, and does not claim
  the logs were reopened.
- HUP, USR1 or QUIT sent to every process of the daemon (a `pkill -HUP`,
  `systemctl kill`, whose default is every process of the unit, a
  terminal's hangup) kill no worker: they are the master's, and the items
  the workers run go on (before, each worker died with its item: FAILED at
  max_attempts 1). The USR2 of an upgrade: test_deploy_failures.py.
"""
import os
import re
import signal
import time

import pytest

from conftest import STARTED, SUCCEEDED, descendants, pid_alive, wait_for


def busy_daemon(start_daemon, overrides=None, items=6, ms=1000):
    """One worker, prefetch 1, a subscriber, ITEMS sleeps of MS ms submitted
    and the first one running."""
    d = start_daemon({"workers": {"count": 1, "prefetch": 1}, "shutdown_timeout": "30s",
                      **(overrides or {})})
    c = d.client()
    sub = c.subscribe(sync=True)
    ids = [f"s{i}" for i in range(items)]
    assert c.submit([{"id": i, "kind": "sleep", "params": {"ms": str(ms)}}
                     for i in ids]).accepted == items
    sub.wait_state(ids[0], STARTED, timeout=10)
    return d, sub, ids


@pytest.mark.deadline(60)
@pytest.mark.parametrize("journal", [False, True])
def test_the_grpc_process_killed_during_a_graceful_stop(start_daemon, tmp_path, journal):
    overrides = {"queue": {"journal": str(tmp_path / "journal")}} if journal else {}
    d, sub, ids = busy_daemon(start_daemon, overrides)
    grpc = d.grpc_pid()
    d.send_signal(signal.SIGQUIT)
    d.wait_log(r"graceful stop", timeout=5)
    os.kill(grpc, signal.SIGKILL)
    status = d.wait_exit(timeout=15)
    log = d.log_text()
    assert status == 1, f"exit status {status}; log:\n{log}"
    fate = ("stay in the queue journal (the next grpc process to read it runs them)"
            if journal else "are lost (no queue.journal), and its calls ended UNAVAILABLE")
    assert f"grpc process (pid {grpc}) killed by signal 9 during the graceful stop; the " \
           f"items it held {fate}" in log, log
    sub.wait_end(timeout=10)
    if journal:
        # The next start on the same journal runs each of them.
        again = start_daemon(overrides, name="again")
        finals = again.client().subscribe(sync=True, replay=True).wait_final(ids, timeout=30)
        assert all(f.state == SUCCEEDED for f in finals.values()), finals


@pytest.mark.deadline(60)
def test_a_worker_killed_during_a_graceful_stop_is_replaced_to_finish_the_queue(start_daemon):
    """One worker, items waiting, QUIT, then the worker is SIGKILLed before
    the deadline: it is replaced (nothing else would run what waits and
    the retry of the one it ran), every item succeeds, exit 0. Past the
    deadline a lost worker is not replaced (test_stop_deadline.py)."""
    d, sub, ids = busy_daemon(start_daemon, items=3, ms=300)
    worker = d.worker_pids()[0]
    d.send_signal(signal.SIGQUIT)
    d.wait_log(r"graceful stop", timeout=5)
    os.kill(worker, signal.SIGKILL)
    finals = sub.wait_final(ids, timeout=20)
    assert all(f.state == SUCCEEDED for f in finals.values()), finals
    assert d.wait_exit(timeout=15) == 0, d.log_tail()
    assert len(re.findall(r"started worker 1, pid", d.log_text())) == 2, d.log_text()


@pytest.mark.deadline(60)
@pytest.mark.parametrize("journal", [False, True])
def test_a_fast_stop_with_items_unfinished_says_what_becomes_of_them(start_daemon, tmp_path,
                                                                     journal):
    overrides = {"queue": {"journal": str(tmp_path / "journal")}} if journal else {}
    # Sleeps far longer than the test: whenever the TERM is handled, none of
    # them has finished, so the count is exact. The fast stop kills them.
    d, sub, ids = busy_daemon(start_daemon, overrides, ms=20000)
    children = d.all_child_pids()
    status = d.stop(signal.SIGTERM, timeout=15)
    assert status == 0, f"exit status {status}; log:\n{d.log_tail()}"
    fate = ("they stay in the queue journal and run at the next start" if journal
            else "they are lost (no queue.journal)")
    d.wait_log(re.escape(f"fast stop: Terminated; {len(ids)} items unfinished: {fate}"),
               timeout=5)
    wait_for(lambda: not any(pid_alive(p) for p in children), 5, "every child gone")


@pytest.mark.deadline(60)
def test_reload_and_upgrade_while_stopping_are_not_acted_on(start_daemon):
    d, sub, ids = busy_daemon(start_daemon, items=2)
    d.send_signal(signal.SIGQUIT)
    d.wait_log(r"graceful stop", timeout=5)
    d.send_signal(signal.SIGHUP)
    d.send_signal(signal.SIGUSR2)
    d.wait_log(r"SIGHUP: no reload while stopping", timeout=5)
    d.wait_log(r"SIGUSR2: no binary upgrade while stopping", timeout=5)
    status = d.wait_exit(timeout=15)
    assert status == 0, f"exit status {status}; log:\n{d.log_tail()}"
    finals = sub.wait_final(ids, timeout=5)
    assert all(f.state == SUCCEEDED for f in finals.values()), finals
    log = d.log_text()
    assert "reloaded" not in log and "binary upgrade: started" not in log, log


@pytest.mark.deadline(60)
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT],
                         ids=["HUP", "USR1", "QUIT"])
def test_a_signal_sent_to_every_process_kills_no_worker(start_daemon, sig):
    d = start_daemon({"workers": {"count": 2, "prefetch": 1}, "shutdown_timeout": "20s"})
    c = d.client()
    sub = c.subscribe(sync=True)
    ids = ["a", "b"]
    assert c.submit([{"id": i, "kind": "sleep", "params": {"ms": "800"}, "max_attempts": 1}
                     for i in ids]).accepted == 2
    for i in ids:
        sub.wait_state(i, STARTED, timeout=10)
    workers = d.worker_pids()
    for pid in [d.master_pid] + descendants(d.master_pid):
        os.kill(pid, sig)
    finals = sub.wait_final(ids, timeout=10)
    assert all(f.state == SUCCEEDED and f.attempt == 1 for f in finals.values()), \
        {i: sub.states_of(i) for i in ids}
    log = d.log_text()
    assert "killed by signal" not in log, log
    if sig == signal.SIGQUIT:
        assert d.wait_exit(timeout=15) == 0, d.log_tail()
    else:
        # USR1: the same workers (HUP's reload replaces them, each once
        # its item has ended).
        if sig == signal.SIGUSR1:
            assert sorted(d.worker_pids()) == sorted(workers), d.log_tail()
        assert pid_alive(d.master_pid)


def test_a_log_reopen_that_fails_says_so(start_daemon, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    d = start_daemon({"log": {"file": str(logs / "ds.log"), "access": str(logs / "access.log")}})
    moved = tmp_path / "logs.old"
    logs.rename(moved)          # the path's directory is gone: open() fails
    d.send_signal(signal.SIGUSR1)
    old = moved / "ds.log"
    wait_for(lambda: "SIGUSR1: the log file could not be opened again" in old.read_text(), 5,
             "the master's error in the file it logs on to")
    wait_for(lambda: "access.log\") failed" in old.read_text(), 5, "the access log's error")
    text = old.read_text()
    assert f'open("{logs / "ds.log"}") failed: No such file or directory' in text, text
    assert "log files reopened" not in text, text
    # The access log goes on in the file it had open, and the line says so.
    assert "the access log goes on in the file open before" in text, text
    assert "access log off" not in text, text
    before = (moved / "access.log").read_text()
    d.client().submit([{"id": "after-usr1", "payload": b"x"}])
    wait_for(lambda: (moved / "access.log").read_text() != before, 5,
             "the next call's line in the access log open before")
    # Put back, a USR1 reopens: the new file gets the line.
    logs.mkdir()
    d.send_signal(signal.SIGUSR1)
    wait_for(lambda: (logs / "ds.log").exists() and
             "SIGUSR1: log files reopened" in (logs / "ds.log").read_text(), 5,
             "the reopened log")
