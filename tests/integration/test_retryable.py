"""
Retryable failures (issue 17): a handler asks for another attempt. An exec
program exits with a status of handlers.<kind>.retry_exit_codes (default
[75], EX_TEMPFAIL; [] turns it off); a module flagged DS_MODULE_RETRYABLE
returns DS_MODULE_RETRY. The attempt ends RETRYING with the handler's error
and the item runs again, up to max_attempts, then FAILED saying no attempts
were left; any other failure is FAILED at once. In memory, journal and
cluster modes; the config checks; reload.
"""
import http.client
import re
import signal
from pathlib import Path

import pytest
import yaml

from conftest import (BINARY, FAILED, RETRYING, STARTED, SUCCEEDED, built_test_modules, free_port,
                      run_cli, state_name, wait_for)
from test_cluster import cluster_name, redis, start_instance  # noqa: F401

BUILD = Path(BINARY).resolve().parent
ECHO = {"default": "echo", "echo": {"builtin": "echo"}}


def handlers(**kinds):
    return {**ECHO, **kinds}


def counting(directory, fail_until, status):
    """An exec handler that counts its runs per item in DIRECTORY (a file
    named after the item's id) and exits STATUS, with "busy N" on stderr,
    while the count is under FAIL_UNTIL; then prints "ok N"."""
    script = (f'f="{directory}/$DS_ITEM_ID"; n=$(cat "$f" 2>/dev/null || echo 0); '
              f'n=$((n+1)); echo $n > "$f"; '
              f'if [ $n -lt {fail_until} ]; then echo "busy $n" >&2; exit {status}; fi; '
              f'printf "ok $n"')
    return {"exec": ["sh", "-c", script]}


def runs(directory, item_id):
    return int((Path(directory) / item_id).read_text())


def states(sub, item_id):
    return [state_name(u.state) for u in sub.of(item_id)]


def metric(address, name, kind):
    conn = http.client.HTTPConnection(*address.rsplit(":", 1), timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    m = re.search(rf'^dosomething_{name}{{kind="{kind}"}} (\d+)$', text, re.M)
    assert m, f"no {name} for {kind} in /metrics"
    return int(m.group(1))


def check_retry_then_success_and_exhaustion(d, counts):
    """The three cases every mode must get right; COUNTS is the directory the
    scripts count in."""
    reply, sub = d.client().run_items([
        {"id": "once", "kind": "flaky"},            # 75 once, then ok
        {"id": "always", "kind": "down"},           # 75 every time
        {"id": "broken", "kind": "broken"},         # exit 1: FAILED at once
    ])
    assert reply.accepted == 3
    once = sub.final["once"]
    assert (once.state, once.attempt, once.result) == (SUCCEEDED, 2, b"ok 2"), once
    assert states(sub, "once") == ["QUEUED", "STARTED", "RETRYING", "QUEUED", "STARTED",
                                   "SUCCEEDED"] or \
        states(sub, "once") == ["QUEUED", "STARTED", "RETRYING", "STARTED", "SUCCEEDED"], \
        states(sub, "once")
    retrying = [u for u in sub.of("once") if u.state == RETRYING]
    assert len(retrying) == 1 and retrying[0].attempt == 1
    assert retrying[0].error == "sh exited with status 75 (retryable): busy 1", retrying[0].error
    assert runs(counts, "once") == 2

    always = sub.final["always"]
    assert (always.state, always.attempt) == (FAILED, 3), always
    assert always.error == "attempt 1: sh exited with status 75 (retryable): busy 1; " \
                           "attempt 2: sh exited with status 75 (retryable): busy 2; " \
                           "attempt 3: sh exited with status 75 (retryable): busy 3 " \
                           "(attempt 3 of 3: no attempts left)", always.error
    assert [u.attempt for u in sub.of("always") if u.state == RETRYING] == [1, 2]
    assert runs(counts, "always") == 3

    broken = sub.final["broken"]
    assert (broken.state, broken.attempt) == (FAILED, 1), broken
    assert broken.error == "sh exited with status 1: busy 1", broken.error
    assert RETRYING not in [u.state for u in sub.of("broken")]
    assert runs(counts, "broken") == 1
    return sub


def retry_kinds(counts):
    return handlers(flaky=counting(counts, 2, 75), down=counting(counts, 99, 75),
                    broken=counting(counts, 99, 1))


# ---- memory ------------------------------------------------------------------------

def test_exec_75_retries_until_success_or_no_attempts_left(start_daemon, tmp_path):
    counts = tmp_path / "counts"
    counts.mkdir()
    status = f"127.0.0.1:{free_port()}"
    d = start_daemon({"queue": {"max_attempts": 3}, "status": {"listen": status},
                      "handlers": retry_kinds(counts)})
    check_retry_then_success_and_exhaustion(d, counts)
    # Retries by reason: every one here was asked by the handler.
    assert metric(status, "items_retried_total", "flaky") == 1
    assert metric(status, "items_retried_asked_total", "flaky") == 1
    assert metric(status, "items_retried_total", "down") == 2
    assert metric(status, "items_retried_asked_total", "down") == 2
    assert metric(status, "items_retried_asked_total", "broken") == 0
    # The item's own max_attempts bounds it too.
    reply, sub = d.client().run_items([{"id": "one-try", "kind": "down", "max_attempts": 1}])
    f = sub.final["one-try"]
    assert (f.state, f.attempt) == (FAILED, 1) and f.error.endswith(
        "(attempt 1 of 1: no attempts left)"), f
    assert RETRYING not in [u.state for u in sub.of("one-try")]


def test_custom_and_empty_retry_exit_codes(start_daemon, tmp_path):
    counts = tmp_path / "counts"
    counts.mkdir()
    d = start_daemon({"queue": {"max_attempts": 3}, "handlers": handlers(
        three={**counting(counts, 2, 3), "retry_exit_codes": [3]},
        three_75={**counting(counts, 2, 75), "retry_exit_codes": [3]},
        off={**counting(counts, 2, 75), "retry_exit_codes": []},
        many={**counting(counts, 2, 255), "retry_exit_codes": [1, 255]})})
    reply, sub = d.client().run_items([
        {"id": "a", "kind": "three"}, {"id": "b", "kind": "three_75"},
        {"id": "c", "kind": "off"}, {"id": "e", "kind": "many"}])
    assert reply.accepted == 4
    a = sub.final["a"]
    assert (a.state, a.attempt, a.result) == (SUCCEEDED, 2, b"ok 2"), a
    assert [u.error for u in sub.of("a") if u.state == RETRYING] == \
        ["sh exited with status 3 (retryable): busy 1"]
    # 75 is not in [3]: an ordinary failure.
    b = sub.final["b"]
    assert (b.state, b.attempt, b.error) == (FAILED, 1, "sh exited with status 75: busy 1"), b
    # []: nothing retries.
    c = sub.final["c"]
    assert (c.state, c.attempt, c.error) == (FAILED, 1, "sh exited with status 75: busy 1"), c
    e = sub.final["e"]
    assert (e.state, e.attempt) == (SUCCEEDED, 2), e


def test_a_signal_is_not_a_retry_exit_code(start_daemon, tmp_path):
    """A program killed by a signal has no exit status: retry_exit_codes
    never match it, not even 128+N as a shell would report it."""
    d = start_daemon({"queue": {"max_attempts": 3}, "handlers": handlers(
        sig={"exec": ["sh", "-c", "kill -TERM $$"], "retry_exit_codes": [15, 143]})})
    reply, sub = d.client().run_items([{"id": "s", "kind": "sig"}])
    s = sub.final["s"]
    assert (s.state, s.attempt) == (FAILED, 1), s
    assert "killed by signal 15" in s.error, s.error


def test_reload_applies_retry_exit_codes(start_daemon, tmp_path):
    counts = tmp_path / "counts"
    counts.mkdir()
    d = start_daemon({"queue": {"max_attempts": 3},
                      "handlers": handlers(flaky=counting(counts, 2, 75))})
    reply, sub = d.client().run_items([{"id": "before", "kind": "flaky"}])
    assert (sub.final["before"].state, sub.final["before"].attempt) == (SUCCEEDED, 2)

    old = set(d.worker_pids())
    d.write_config({"queue": {"max_attempts": 3}, "handlers": handlers(
        flaky={**counting(counts, 2, 75), "retry_exit_codes": []})})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reload.*generation 2\b")
    # Old workers finish what they hold and leave: wait until none is left,
    # so the next item surely runs under the new config.
    wait_for(lambda: not (set(d.worker_pids()) & old) and len(d.worker_pids()) == 2, 20,
             "the reload's new workers")
    reply, sub = d.client().run_items([{"id": "after", "kind": "flaky"}])
    after = sub.final["after"]
    assert (after.state, after.attempt) == (FAILED, 1), after
    assert after.error == "sh exited with status 75: busy 1"


# ---- modules -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def retry_modules():
    """The test module plain and flagged DS_MODULE_RETRYABLE
    (conftest.TEST_MODULES)."""
    for paths in built_test_modules("ok", "retry"):
        yield {"plain": paths["ok"], "retry": paths["retry"]}


def test_module_retry(start_daemon, retry_modules):
    d = start_daemon({"queue": {"max_attempts": 3}, "handlers": handlers(
        r={"module": str(retry_modules["retry"])},
        old={"module": str(retry_modules["plain"])})})
    reply, sub = d.client().run_items([
        {"id": "twice", "kind": "r", "params": {"retry_until": "3"}},
        {"id": "never", "kind": "r", "params": {"retry_until": "9"}},
        # A module that does not declare DS_MODULE_RETRYABLE (as one built
        # before ABI minor 2): its DS_MODULE_RETRY is a plain failure.
        {"id": "old", "kind": "old", "params": {"retry_until": "9"}},
    ])
    assert reply.accepted == 3
    twice = sub.final["twice"]
    assert (twice.state, twice.attempt) == (SUCCEEDED, 3), twice
    assert b"|attempt=3|" in twice.result
    assert [u.error for u in sub.of("twice") if u.state == RETRYING] == \
        ["busy at attempt 1", "busy at attempt 2"]
    never = sub.final["never"]
    assert (never.state, never.attempt, never.error) == \
        (FAILED, 3, "attempt 1: busy at attempt 1; attempt 2: busy at attempt 2; "
                    "attempt 3: busy at attempt 3 (attempt 3 of 3: no attempts left)"), never
    old = sub.final["old"]
    assert (old.state, old.attempt, old.error) == (FAILED, 1, "busy at attempt 1"), old


# ---- journal and cluster -----------------------------------------------------------

def test_journal_mode(start_daemon, tmp_path):
    counts = tmp_path / "counts"
    counts.mkdir()
    d = start_daemon({"queue": {"max_attempts": 3, "journal": str(tmp_path / "journal")},
                      "handlers": retry_kinds(counts)})
    check_retry_then_success_and_exhaustion(d, counts)


def test_journal_keeps_a_retried_item_across_sigkill(start_daemon, tmp_path):
    """A retry the handler asked for is an attempt spent in the journal:
    after SIGKILL of everything the item runs again at attempt 3, not 1."""
    counts = tmp_path / "counts"
    counts.mkdir()
    gate = tmp_path / "gate"
    script = (f'f="{counts}/$DS_ITEM_ID"; n=$(cat "$f" 2>/dev/null || echo 0); n=$((n+1)); '
              f'echo $n > "$f"; if [ $n -lt 3 ]; then exit 75; fi; '
              f'while [ ! -e "{gate}" ]; do sleep 0.05; done; printf "ok $DS_ATTEMPT"')
    config = {"queue": {"max_attempts": 5, "journal": str(tmp_path / "journal")},
              "handlers": handlers(slow={"exec": ["sh", "-c", script]})}
    d = start_daemon(config)
    c = d.client()
    sub = c.subscribe(sync=True)
    c.submit([{"id": "j", "kind": "slow"}])
    sub.wait_state("j", RETRYING, attempt=2, timeout=20)
    wait_for(lambda: (counts / "j").exists() and runs(counts, "j") == 3, 20, "the third run")
    d.kill_all()
    gate.touch()
    d2 = start_daemon(config, name="again")
    reply, sub2 = d2.client().run_items([{"id": "probe", "kind": "echo"}])
    got = d2.client().subscribe(replay=True, item_ids=["j"])
    final = got.wait_final(["j"], timeout=30)["j"]
    assert final.state == SUCCEEDED and final.attempt >= 3, final


def test_cluster_mode(redis, start_daemon, tmp_path):  # noqa: F811
    counts = tmp_path / "counts"
    counts.mkdir()
    name = cluster_name()
    d = start_instance(start_daemon, redis, name, "a", overrides={
        "queue": {"max_attempts": 3}, "handlers": retry_kinds(counts)})
    check_retry_then_success_and_exhaustion(d, counts)


def test_cluster_retry_backoff(redis, start_daemon, tmp_path):  # noqa: F811
    """With queue.retry_backoff in cluster mode, the instance holding an item
    that asked for a retry waits the backoff before its next attempt (its
    lease renewed meanwhile), and the item still ends once, SUCCEEDED."""
    counts = tmp_path / "counts"
    counts.mkdir()
    name = cluster_name()
    d = start_instance(start_daemon, redis, name, "a", overrides={
        "queue": {"max_attempts": 3, "retry_backoff": {"min": "1s", "max": "2s"}},
        "handlers": retry_kinds(counts)})
    c = d.client()
    sub = c.subscribe(sync=True)
    c.submit([{"id": "bk", "kind": "flaky"}])
    final = sub.wait_final(["bk"], timeout=30)["bk"]
    assert final.state == SUCCEEDED and final.attempt == 2, final
    retrying = [u for u in sub.of("bk") if u.state == RETRYING][0]
    again = [u for u in sub.of("bk") if u.state == STARTED and u.attempt == 2][0]
    assert again.time_unix_nano >= retrying.time_unix_nano + 1_000_000_000, \
        f"retried {(again.time_unix_nano - retrying.time_unix_nano) / 1e6:.0f} ms after RETRYING"
    assert runs(counts, "bk") == 2


def test_cluster_two_instances(redis, start_daemon, tmp_path):  # noqa: F811
    """Items asking for a retry on two instances sharing a queue: each runs
    exactly twice (on either), ends SUCCEEDED at attempt 2, and a subscriber
    on the other instance sees each RETRYING."""
    counts = tmp_path / "counts"
    counts.mkdir()
    name = cluster_name()
    extra = {"queue": {"max_attempts": 3}, "handlers": retry_kinds(counts)}
    a = start_instance(start_daemon, redis, name, "a", overrides=extra)
    b = start_instance(start_daemon, redis, name, "b", overrides=extra)
    watch = b.client().subscribe(replay=True, kinds=["flaky"])
    ids = [f"f{i}" for i in range(20)]
    reply, sub = a.client().run_items([{"id": i, "kind": "flaky"} for i in ids], timeout=60)
    assert reply.accepted == 20
    for i in ids:
        f = sub.final[i]
        assert (f.state, f.attempt, f.result) == (SUCCEEDED, 2, b"ok 2"), f
        assert runs(counts, i) == 2
    watch.wait(lambda s: all(i in s.final for i in ids), 30, "b's finals")
    for i in ids:
        assert [u.attempt for u in watch.of(i) if u.state == RETRYING] == [1], watch.of(i)


# ---- config ------------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    (75, r"handlers\.x\.retry_exit_codes: must be a list of exit statuses 1\.\.255"),
    ("75", r"handlers\.x\.retry_exit_codes: must be a list"),
    ([0], r"handlers\.x\.retry_exit_codes\[0\]: must be an exit status 1\.\.255, got 0"),
    ([75, 256], r"handlers\.x\.retry_exit_codes\[1\]: must be an exit status 1\.\.255, got 256"),
    ([-1], r"handlers\.x\.retry_exit_codes\[0\]: must be an exit status 1\.\.255, got -1"),
    (["tempfail"], r"retry_exit_codes\[0\]: must be an exit status 1\.\.255, got tempfail"),
    ([75, 75], r"handlers\.x\.retry_exit_codes\[1\]: duplicate exit status 75"),
    ([[75]], r"handlers\.x\.retry_exit_codes\[0\]: "),
    ({"a": 75}, r"handlers\.x\.retry_exit_codes: must be a list"),
    (None, r"handlers\.x\.retry_exit_codes: must be a list"),
])
def test_bad_retry_exit_codes_are_config_errors(make_daemon, value, message):
    d = make_daemon({"handlers": handlers(x={"exec": ["true"], "retry_exit_codes": value})})
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode != 0, f"-t accepted retry_exit_codes: {value!r}"
    assert re.search(message, r.stderr), r.stderr


def test_retry_exit_codes_only_for_exec_and_printed(make_daemon):
    d = make_daemon({"handlers": handlers(s={"builtin": "sleep", "retry_exit_codes": [75]})})
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode != 0 and re.search(r"handlers\.s\.retry_exit_codes: only for exec",
                                           r.stderr), r.stderr
    d = make_daemon({"handlers": handlers(a={"exec": ["true"]},
                                          b={"exec": ["true"], "retry_exit_codes": []},
                                          c={"exec": ["true"], "retry_exit_codes": [200, 3]})},
                    name="printed")
    r = run_cli("-T", "-c", d.config_path)
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)["handlers"]
    assert printed["a"]["retry_exit_codes"] == [75]
    assert printed["b"]["retry_exit_codes"] == []
    assert printed["c"]["retry_exit_codes"] == [3, 200]
    assert "retry_exit_codes" not in printed["echo"]
