"""A graceful stop (QUIT) that reaches shutdown_timeout, with items left.

- With queue.journal, an item that had not started when the stop ended
  keeps its attempt: the journal records it as not started, so the next
  start runs it at the same attempt, however many graceful stops it waits
  through. One that was running was interrupted: that attempt is spent, as
  in a worker's death.
"""
import signal

import pytest

from conftest import FAILED, QUEUED, RETRYING, STARTED, SUCCEEDED, state_name


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
