"""A graceful stop (QUIT) that reaches shutdown_timeout, with items left.

- With queue.journal, an item that had not started when the stop ended
  keeps its attempt: the journal records it as not started, so the next
  start runs it at the same attempt, however many graceful stops it waits
  through. One that was running was interrupted: that attempt is spent, as
  in a worker's death.
- An item running at the deadline is stopped as a cancel stops it (an exec
  program gets SIGTERM; a worker that has not stopped it 2 s after the
  deadline is killed), and its last update (FAILED "interrupted: ...", or
  RETRYING with the journal) is published only once its handler has
  stopped: nothing it runs outlives that update, and the daemon exits
  without the master's last-resort kill (shutdown_timeout + 5 s). A module
  that cannot be interrupted has its worker killed at the deadline.
- Cluster mode publishes nothing for what it leaves (other instances take
  it from Redis); its workers stop what they run once its grpc process,
  which stops fast at the deadline, is gone. Without a Redis session at
  the deadline nothing can be handed back: the stop says so and ends on
  time.
"""
import re
import signal
import time

import pytest

from conftest import (FAILED, QUEUED, RETRYING, STARTED, SUCCEEDED, built_test_modules,
                      pid_alive, state_name, wait_for)
from test_cancel import cancel_modules  # noqa: F401 (a fixture)
from test_cluster import (cluster_name, kill_everything, redis,  # noqa: F401 (a fixture)
                          start_instance)

MASTER_KILL = "did not stop in time; killing it"


def journal_config(tmp_path, extra=None):
    c = {"workers": {"count": 1, "prefetch": 1}, "shutdown_timeout": "1s",
         "queue": {"journal": str(tmp_path / "journal"), "max_attempts": 2}}
    c.update(extra or {})
    return c


def last_of(sub, item_id):
    updates = sub.of(item_id)
    assert updates, f"no update of {item_id}"
    return updates[-1]


def quit_and_wait(d, timeout=15):
    d.send_signal(signal.SIGQUIT)
    status = d.wait_exit(timeout=timeout)
    assert status == 0, f"exit status {status}; log:\n{d.log_tail()}"
    return d.log_text()


@pytest.mark.deadline(90)
def test_unstarted_items_keep_their_attempt_across_graceful_stops(start_daemon, tmp_path):
    """max_attempts 2, one worker: `long` runs through two graceful stops
    that reach shutdown_timeout while two items wait behind it. The waiting
    ones are never charged an attempt: at the third start they run as
    attempt 1 and succeed; `long`, interrupted twice, has spent both."""
    config = journal_config(tmp_path)
    items = [{"id": "long", "kind": "sleep", "params": {"ms": "60000"}},
             {"id": "waiter", "kind": "sleep", "params": {"ms": "10"}},
             {"id": "waiter2", "kind": "sleep", "params": {"ms": "10"}}]
    waiters = ["waiter", "waiter2"]

    d = start_daemon(config, name="first")
    sub = d.client().subscribe(sync=True)
    assert d.client().submit(items).accepted == 3
    sub.wait_state("long", STARTED, timeout=10)
    quit_and_wait(d)
    sub.wait_end(timeout=10)
    for i in waiters:
        u = last_of(sub, i)
        assert u.state == RETRYING and u.attempt == 1, (i, sub.states_of(i))
        assert u.error.startswith("not run: graceful stop reached shutdown_timeout (1000 ms)"), \
            u.error
    u = last_of(sub, "long")
    assert u.state == RETRYING and u.attempt == 1, sub.states_of("long")
    assert u.error.startswith("interrupted: graceful stop reached shutdown_timeout"), u.error

    # Second start: `long` runs again as attempt 2 (the first was spent),
    # the waiters wait behind it, still at attempt 1.
    d2 = start_daemon(config, name="second")
    sub2 = d2.client().subscribe(replay=True)
    sub2.wait_state("long", STARTED, attempt=2, timeout=10)
    got = {i.id: i for i in d2.client().get_items(waiters).items}
    assert {i: (state_name(got[i].state), got[i].attempt) for i in waiters} == \
        {i: ("QUEUED", 1) for i in waiters}, got
    for i in waiters:
        u = sub2.wait_state(i, QUEUED, timeout=10)
        assert u.attempt == 1, (i, u)
        assert RETRYING not in [x.state for x in sub2.of(i)], sub2.states_of(i)
    d2.wait_log(r"journal: took over \S+ of grpc process \d+: 3 items queued again, 0 failed, "
                r"0 unreadable, \d+ finals known again \(2 of them had not started when a "
                r"graceful stop "
                r"ended: no attempt spent\)", timeout=10)
    quit_and_wait(d2)
    sub2.wait_end(timeout=10)
    for i in waiters:
        u = last_of(sub2, i)
        assert u.state == RETRYING and u.attempt == 1, (i, sub2.states_of(i))
        assert u.error.startswith("not run: "), u.error

    # Third start: `long` has no attempt left; the waiters run, attempt 1.
    d3 = start_daemon(config, name="third")
    sub3 = d3.client().subscribe(replay=True)
    finals = sub3.wait_final(["long"] + waiters, timeout=20)
    assert finals["long"].state == FAILED, finals["long"]
    assert "attempt 3 would exceed max_attempts 2" in finals["long"].error, finals["long"].error
    for i in waiters:
        assert (finals[i].state, finals[i].attempt) == (SUCCEEDED, 1), (i, finals[i])
    d3.wait_log(r"journal: took over \S+ of grpc process \d+: 2 items queued again, 1 failed",
                timeout=10)


def exec_config(tmp_path, script, grace="5s", journal=False):
    c = {"workers": {"count": 1, "prefetch": 2}, "shutdown_timeout": "1s",
         "handlers": {"default": "sleep", "sleep": {"builtin": "sleep"},
                      "echo": {"builtin": "echo"},
                      "prog": {"exec": ["sh", "-c", script], "cancel_grace": grace}}}
    if journal:
        c["queue"] = {"journal": str(tmp_path / "journal")}
    return c


def wait_file(path, timeout=10):
    wait_for(lambda: path.exists() and path.read_text().strip() != "", timeout, f"{path}")
    return path.read_text().strip()


@pytest.mark.deadline(60)
@pytest.mark.parametrize("mode", ["memory", "journal"])
def test_a_running_exec_program_is_stopped_before_its_last_update(start_daemon, tmp_path,
                                                                  mode):
    """The program runs far past the deadline. It gets SIGTERM (its trap
    writes `stopped`), and only then is its last update published; it never
    reaches its side effect. An item prefetched behind it is not run."""
    pid_file, stopped, side = tmp_path / "pid", tmp_path / "stopped", tmp_path / "side-effect"
    script = (f"trap 'echo term > {stopped}; exit 143' TERM; echo $$ > {pid_file}; "
              f"sleep 30 & wait $!; date +%s.%N > {side}")
    d = start_daemon(exec_config(tmp_path, script, journal=mode == "journal"))
    sub = d.client().subscribe(sync=True)
    assert d.client().submit([{"id": "P", "kind": "prog"},
                              {"id": "behind", "kind": "sleep",
                               "params": {"ms": "10"}}]).accepted == 2
    sub.wait_state("P", STARTED, timeout=10)
    sub.wait_state("behind", QUEUED, timeout=10)
    pid = int(wait_file(pid_file))
    t0 = time.monotonic()
    d.send_signal(signal.SIGQUIT)
    expected = FAILED if mode == "memory" else RETRYING

    def last_update():
        updates = sub.of("P")
        if updates and updates[-1].state == expected:
            # Seen by the subscriber: the program must be gone by now.
            return (stopped.exists(), pid_alive(pid))
        return None
    seen = sub.wait(lambda s: last_update(), 15, "P's last update")
    assert seen == (True, False), f"when P's last update came: (stopped, alive) = {seen}"
    u = last_of(sub, "P")
    assert u.error.startswith("interrupted: graceful stop reached shutdown_timeout (1000 ms)"), \
        u.error
    status = d.wait_exit(timeout=15)
    elapsed = time.monotonic() - t0
    assert status == 0, d.log_tail()
    assert MASTER_KILL not in d.log_text(), d.log_text()
    assert elapsed < 4.5, f"exited {elapsed:.1f} s after QUIT (shutdown_timeout 1s)"
    b = last_of(sub, "behind")
    assert b.state == (FAILED if mode == "memory" else RETRYING), sub.states_of("behind")
    assert b.error.startswith("not run: "), b.error
    assert STARTED not in [x.state for x in sub.of("behind")], sub.states_of("behind")
    assert not side.exists(), "the program ran on after its last update"


@pytest.mark.deadline(60)
@pytest.mark.parametrize("mode", ["memory", "journal"])
def test_a_program_that_ignores_sigterm_is_killed_2s_after_the_deadline(start_daemon,
                                                                        tmp_path, mode):
    """cancel_grace 60s and SIGTERM ignored: the worker is killed (and the
    program with it) 2 s after the deadline; the last update comes after
    that, and the daemon exits without the master's last-resort kill."""
    pid_file = tmp_path / "pid"
    script = f"trap '' TERM; echo $$ > {pid_file}; sleep 30"
    d = start_daemon(exec_config(tmp_path, script, grace="60s", journal=mode == "journal"))
    worker = d.worker_pids()[0]
    sub = d.client().subscribe(sync=True)
    assert d.client().submit([{"id": "P", "kind": "prog"}]).accepted == 1
    sub.wait_state("P", STARTED, timeout=10)
    pid = int(wait_file(pid_file))
    t0 = time.monotonic()
    d.send_signal(signal.SIGQUIT)
    expected = FAILED if mode == "memory" else RETRYING
    sub.wait(lambda s: s.by_id.get("P", [None])[-1] is not None and
             s.by_id["P"][-1].state == expected, 15, "P's last update")
    assert not pid_alive(worker), "the last update came before the worker was stopped"
    u = last_of(sub, "P")
    assert u.error.startswith("interrupted: graceful stop reached shutdown_timeout"), u.error
    status = d.wait_exit(timeout=15)
    elapsed = time.monotonic() - t0
    assert status == 0, d.log_tail()
    log = d.log_text()
    assert MASTER_KILL not in log, log
    assert "did not stop its items within 2000 ms of the graceful stop's deadline" in log, log
    assert elapsed < 5, f"exited {elapsed:.1f} s after QUIT (shutdown_timeout 1s)"
    wait_for(lambda: not pid_alive(pid), 5, "the program gone")


@pytest.mark.deadline(60)
def test_cluster_a_running_exec_program_is_stopped_at_the_deadline(redis, start_daemon,
                                                                   tmp_path):
    """Cluster mode publishes nothing for what it leaves (it stays in Redis
    for the other instances, after the lease) and its grpc process stops
    fast at the deadline; its workers stop what they run once it is gone,
    as a cancel would, instead of running on until the master kills them."""
    stopped = tmp_path / "stopped"
    script = f"trap 'echo term > {stopped}; exit 143' TERM; sleep 30 & wait $!"
    overrides = exec_config(tmp_path, script)
    d = start_instance(start_daemon, redis, cluster_name(), "inst", workers=1,
                       overrides=overrides)
    sub = d.client().subscribe()
    assert d.client().submit([{"id": "P", "kind": "prog"}]).accepted == 1
    sub.wait_state("P", STARTED, timeout=10)
    t0 = time.monotonic()
    d.send_signal(signal.SIGQUIT)
    status = d.wait_exit(timeout=15)
    elapsed = time.monotonic() - t0
    assert status == 0, d.log_tail()
    log = d.log_text()
    assert MASTER_KILL not in log, log
    assert stopped.exists(), "the program was not stopped (SIGTERM)"
    assert elapsed < 4.5, f"exited {elapsed:.1f} s after QUIT (shutdown_timeout 1s)"


@pytest.mark.deadline(60)
@pytest.mark.parametrize("mode", ["memory", "journal"])
def test_a_module_that_cannot_be_interrupted_has_its_worker_killed(start_daemon, tmp_path,
                                                                   cancel_modules, mode):
    """A module without DS_MODULE_CANCELLABLE cannot be stopped: its worker
    is killed at the deadline (not 2 s later), and then the item gets its
    last update; the item it held behind it was not run."""
    c = exec_config(tmp_path, "true", journal=mode == "journal")
    c["handlers"]["plain"] = {"module": str(cancel_modules["plain"])}
    d = start_daemon(c)
    worker = d.worker_pids()[0]
    sub = d.client().subscribe(sync=True)
    assert d.client().submit([
        {"id": "M", "kind": "plain", "params": {"ms": "60000", "steps": "1"}},
        {"id": "behind", "kind": "plain", "params": {"ms": "10"}, "payload": b"p"}]
    ).accepted == 2
    sub.wait_state("M", STARTED, timeout=10)
    sub.wait_state("behind", QUEUED, timeout=10)
    t0 = time.monotonic()
    d.send_signal(signal.SIGQUIT)
    expected = FAILED if mode == "memory" else RETRYING
    sub.wait(lambda s: s.by_id["M"][-1].state == expected, 15, "M's last update")
    assert not pid_alive(worker), "the last update came before the worker was stopped"
    assert last_of(sub, "M").error.startswith("interrupted: "), sub.of("M")
    assert last_of(sub, "behind").error.startswith("not run: "), sub.of("behind")
    assert d.wait_exit(timeout=15) == 0, d.log_tail()
    elapsed = time.monotonic() - t0
    log = d.log_text()
    assert MASTER_KILL not in log and "did not stop its items" not in log, log
    assert elapsed < 3, f"exited {elapsed:.1f} s after QUIT (shutdown_timeout 1s)"
    # Killed at the deadline, it is not replaced: past it the grpc process
    # gives a worker nothing (before, one more started, to be let go at once).
    assert len(re.findall(r"started worker \S+, pid", log)) == 1, log


@pytest.fixture
def quick_modules():
    """The test module flagged DS_MODULE_QUICK, plain and cancellable."""
    yield from built_test_modules("quick", "quick_cancel")


@pytest.mark.deadline(60)
@pytest.mark.parametrize("mode", ["memory", "journal"])
@pytest.mark.parametrize("module", ["quick_cancel", "quick"])
def test_a_started_that_happened_comes_before_the_last_update(start_daemon, tmp_path,
                                                              quick_modules, mode, module):
    """A quick item's STARTED waits in its worker's batch until its end. A
    graceful stop's deadline asks it to stop: the cancellable module does,
    and its STARTED comes with its end, after the ask; the other has its
    worker killed, and the STARTED with it. Either way it ran, and the
    subscriber sees QUEUED, STARTED, then its last update (the STARTED was
    dropped: QUEUED then "interrupted")."""
    mark = tmp_path / "mark"
    c = exec_config(tmp_path, "true", journal=mode == "journal")
    c["handlers"]["q"] = {"module": str(quick_modules[module])}
    d = start_daemon(c)
    sub = d.client().subscribe(sync=True)
    # Steps of 1.5 s: the cancellable one looks at its cancel after the
    # first, past the deadline, before any PROGRESS (which would flush).
    assert d.client().submit([{"id": "Q", "kind": "q", "params": {
        "ms": "60000", "steps": "40", "mark": str(mark)}}]).accepted == 1
    wait_for(mark.exists, 10, "the module to start Q")
    d.send_signal(signal.SIGQUIT)
    expected = FAILED if mode == "memory" else RETRYING
    sub.wait(lambda s: s.by_id.get("Q") and s.by_id["Q"][-1].state == expected, 15,
             "Q's last update")
    assert sub.states_of("Q") == ["QUEUED", "STARTED", state_name(expected)], sub.of("Q")
    assert last_of(sub, "Q").error.startswith("interrupted: "), sub.of("Q")
    assert d.wait_exit(timeout=15) == 0, d.log_tail()


def holding_three_and_b(redis, start_daemon, name, lease, max_attempts):  # noqa: F811
    """Instance a (shutdown_timeout 1s) holding three items w0..w2 of a
    paused kind (pulled from Redis: every entry pending at a, waiting at
    the kind's gate), and instance b that can run them, with a subscriber:
    (a, b, ids, b's subscriber)."""
    held = {"handlers": {"default": "echo", "echo": {"builtin": "echo"},
                         "work": {"builtin": "sleep", "paused": True}},
            "shutdown_timeout": "1s"}
    a = start_instance(start_daemon, redis, name, "a", workers=1, lease=lease, overrides=held)
    sub = a.client().subscribe(sync=True, name="sub-a")
    ids = [f"w{i}" for i in range(3)]
    assert a.client().submit([{"id": i, "kind": "work", "params": {"ms": "1"},
                               "max_attempts": max_attempts} for i in ids]).accepted == 3
    sub.wait(lambda s: all(i in s.by_id for i in ids), 10, "every QUEUED")
    wait_for(lambda: len(redis.command("XPENDING", f"{{{name}}}:work", "dosomethingd",
                                       "-", "+", 10)) == 3, 10, "a holding the three entries")
    b = start_instance(start_daemon, redis, name, "b", workers=1, lease=lease,
                       overrides={"handlers": {"default": "echo", "echo": {"builtin": "echo"},
                                               "work": {"builtin": "sleep"}}})
    return a, b, ids, b.client().subscribe(sync=True, name="sub-b")


@pytest.mark.deadline(60)
def test_cluster_items_waiting_at_the_deadline_go_back_at_their_attempt(redis, start_daemon):
    """Instance a holds items of a paused kind (pulled from Redis, waiting
    at the kind's gate) when a graceful stop reaches shutdown_timeout: it
    hands their entries back (script_hand_back), so instance b claims them
    at once as the attempt they were at: no RETRYING, attempt 1 (before,
    after the lease, each as one more attempt: a deploy whose stop reached
    its deadline every time could fail items that never ran)."""
    name = cluster_name()
    a, b, ids, watch = holding_three_and_b(redis, start_daemon, name, "9s", 2)
    log = quit_and_wait(a)
    # b takes them at its next claim pass (every lease/2), before a's 9 s lease.
    finals = watch.wait_final(ids, timeout=20)
    for i in ids:
        assert state_name(finals[i].state) == "SUCCEEDED", watch.states_of(i)
        assert finals[i].attempt == 1, watch.states_of(i)
        assert RETRYING not in [u.state for u in watch.of(i)], watch.states_of(i)
    assert "handing 3 items waiting here back to the other instances" in log, log
    for i in ids:
        assert redis.command("HGET", f"{{{name}}}:item:{i}", "hu") is None, i


@pytest.mark.deadline(60)
def test_cluster_a_stale_hand_back_mark_spends_the_attempt_as_any_takeover(redis, start_daemon):
    """A hand-back mark names its entry and count: one left behind (a claim
    by an older version does not delete it) or written by hand does not
    make a later takeover free. a runs the item and dies; b claims it after
    the lease as attempt 2 with RETRYING, and deletes the mark."""
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a", workers=1)
    on_a = a.client().subscribe(sync=True, name="sub-a")
    assert a.client().submit([{"id": "S", "kind": "sleep", "params": {"ms": "2000"},
                               "max_attempts": 3}]).accepted == 1
    on_a.wait_state("S", STARTED, timeout=10)
    # b only now: the item runs on a.
    b = start_instance(start_daemon, redis, name, "b", workers=1)
    watch = b.client().subscribe(sync=True, name="sub-b")
    redis.command("HSET", f"{{{name}}}:item:S", "hu", "0-999999 1")
    kill_everything(a)
    final = watch.wait_final(["S"], timeout=20)["S"]
    assert state_name(final.state) == "SUCCEEDED" and final.attempt == 2, watch.states_of("S")
    assert RETRYING in [u.state for u in watch.of("S")], watch.states_of("S")
    assert redis.command("HGET", f"{{{name}}}:item:S", "hu") is None


@pytest.mark.deadline(60)
def test_cluster_without_redis_at_the_deadline_says_so_and_stops_on_time(redis, start_daemon):
    """Redis dies just before the deadline, the instance holding items of a
    paused kind: nothing can be handed back. The stop ends within the
    deadline's bound and says what becomes of the items (before: nothing,
    though the docs promise them back at once)."""
    name = cluster_name()
    held = {"handlers": {"default": "echo", "echo": {"builtin": "echo"},
                         "work": {"builtin": "sleep", "paused": True}},
            "shutdown_timeout": "1s"}
    a = start_instance(start_daemon, redis, name, "a", workers=1, lease="9s", overrides=held)
    sub = a.client().subscribe(sync=True, name="sub-a")
    ids = [f"w{i}" for i in range(3)]
    assert a.client().submit([{"id": i, "kind": "work", "params": {"ms": "1"}}
                              for i in ids]).accepted == 3
    sub.wait(lambda s: all(i in s.by_id for i in ids), 10, "every QUEUED")
    a.send_signal(signal.SIGQUIT)
    t0 = time.monotonic()
    a.wait_log(r"graceful stop: \d+ items to finish", timeout=5)
    redis.kill()
    assert a.wait_exit(timeout=15) == 0, a.log_tail()
    elapsed = time.monotonic() - t0
    log = a.log_text()
    assert elapsed < 4, f"exited {elapsed:.1f} s after QUIT (shutdown_timeout 1s); log:\n{log}"
    assert MASTER_KILL not in log, log
    assert "cluster: no Redis session at the deadline: nothing can be handed back; the other " \
           "instances take the 3 items here over after the lease (9000 ms), each as its next " \
           "attempt" in log, log


@pytest.mark.deadline(60)
def test_cluster_a_hand_back_cut_off_says_so_and_the_items_are_taken_over(redis, start_daemon):
    """The hand-back script waits behind CLIENT PAUSE WRITE when the
    connection is killed: it never ran. The stop ends on time and says the
    hand-back got no answer (before: nothing), and b takes the items over
    after the lease, none lost."""
    name = cluster_name()
    a, b, ids, watch = holding_three_and_b(redis, start_daemon, name, "2s", 3)
    a.send_signal(signal.SIGQUIT)
    t0 = time.monotonic()
    a.wait_log(r"graceful stop: \d+ items to finish", timeout=5)
    redis.command("CLIENT", "PAUSE", "1500", "WRITE")
    a.wait_log(r"cluster: handing 3 items waiting here back to the other instances", timeout=5)
    redis.command("CLIENT", "KILL", "TYPE", "normal")
    assert a.wait_exit(timeout=15) == 0, a.log_tail()
    assert time.monotonic() - t0 < 5, a.log_tail()
    log = a.log_text()
    assert MASTER_KILL not in log, log
    assert "cluster: handing back the items waiting here got no answer (the connection to " \
           "redis is gone); unless it ran, the other instances take them over after the " \
           "lease" in log, log
    finals = watch.wait_final(ids, timeout=20)
    assert all(state_name(f.state) == "SUCCEEDED" for f in finals.values()), \
        {i: watch.states_of(i) for i in ids}
