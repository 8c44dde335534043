"""
Poison items and what an item leaves behind.

- A module that segfaults on some payloads fails those items (RETRYING,
  then FAILED with "killed by signal 11"), and never trips the crash-loop
  breaker (respawn.crash_limit), which counts only workers that cannot
  start: the daemon keeps serving every good item.
- A module calling exit(2) mid-item is a crash of that item, not the
  "fatal boot error" status that stops the daemon.
- Processes an item starts (a module's fork(), an exec program's `setsid`
  grandchild) do not outlive it, nor the worker, nor the daemon.
"""
import os
import random
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import (FAILED, REPO, RETRYING, SUCCEEDED, all_pids, pid_alive, proc_title,
                      wait_for)

ECHO = {"default": "echo", "echo": {"builtin": "echo"}}

# A module that misbehaves on demand. Payload:
#   boom          segfaults (a real NULL store)
#   exit2         exit(2), the status a worker uses for "fatal boot error"
#   fork SECONDS  leaves two processes running `sleep SECONDS`: a child of
#                 the worker, and a grandchild in a session of its own whose
#                 parent has exited
#   anything else the payload is the result
POISON_MODULE = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <dosomething/handler.h>

static void
run_sleep(const char *seconds)
{
    execlp("sleep", "sleep", seconds, (char *)NULL);
    _exit(127);
}

static int
poison_process(void *state, const struct ds_module_item *item, struct ds_module_result *out,
               const struct ds_module_host *host)
{
    char p[128];
    size_t n = item->payload_len < sizeof p - 1 ? item->payload_len : sizeof p - 1;
    memcpy(p, item->payload, n);
    p[n] = '\0';
    if (strcmp(p, "boom") == 0) {
        int *volatile nowhere = NULL;
        *nowhere = 1;
    }
    if (strcmp(p, "exit2") == 0)
        exit(2);
    if (strncmp(p, "fork ", 5) == 0) {
        if (fork() == 0)
            run_sleep(p + 5);
        pid_t middle = fork();
        if (middle == 0) {
            setsid();
            if (fork() == 0)
                run_sleep(p + 5);
            _exit(0);
        }
        waitpid(middle, NULL, 0);
    }
    out->data = item->payload;
    out->len = item->payload_len;
    return 0;
}

const struct ds_module dosomething_module = {
    .abi_version = DS_HANDLER_ABI_VERSION,
#ifdef POISON_QUICK
    .flags = DS_MODULE_QUICK,
#endif
    .name = "poison",
    .process = poison_process,
};
"""


@pytest.fixture(scope="module")
def poison_modules():
    """{'plain': path, 'quick': path (flagged DS_MODULE_QUICK)}, in a
    directory every user can read."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("no C compiler to build the poison module")
    out = Path(tempfile.mkdtemp(prefix="ds-poison-"))
    out.chmod(0o755)
    source = out / "poison.c"
    source.write_text(POISON_MODULE)
    try:
        paths = {}
        for key, flags in (("plain", []), ("quick", ["-DPOISON_QUICK"])):
            paths[key] = out / f"poison_{key}.so"
            subprocess.run([cc, "-std=gnu11", "-O2", "-shared", "-fPIC", "-D_GNU_SOURCE",
                            f"-I{REPO / 'include'}", *flags, "-o", str(paths[key]),
                            str(source)], check=True)
        yield paths
    finally:
        shutil.rmtree(out, ignore_errors=True)


def sleep_marker():
    """A `sleep` argument no other process on the machine uses: 1000.NNNNNN s."""
    return f"1000.{random.randrange(10**8, 10**9)}"


def sleepers(marker):
    """Live processes running `sleep MARKER`."""
    want = f"sleep {marker}"
    return [pid for pid in all_pids() if proc_title(pid) == want and pid_alive(pid)]


def assert_no_sleepers(marker, when, timeout=5):
    try:
        wait_for(lambda: not sleepers(marker), timeout, f"no `sleep {marker}` {when}")
    except AssertionError:
        left = sleepers(marker)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"`sleep {marker}` still running {when}: pids {left}") from None


@pytest.mark.deadline(120)
@pytest.mark.parametrize("flavour", ["plain", "quick"])
def test_poison_items_fail_without_stopping_the_daemon(start_daemon, poison_modules, flavour):
    d = start_daemon({
        "queue": {"max_attempts": 2},
        "respawn": {"crash_limit": 3},
        "handlers": {**ECHO, "p": {"module": str(poison_modules[flavour])}},
    })
    boom = [f"boom-{i}" for i in range(20)]
    good = [f"good-{i}" for i in range(200)]
    items = []
    for i, item_id in enumerate(good):
        items.append({"id": item_id, "kind": "p", "payload": item_id.encode()})
        if i % 10 == 0:
            items.append({"id": boom[i // 10], "kind": "p", "payload": b"boom"})
    reply, sub = d.client().run_items(items, timeout=90)
    assert reply.accepted == len(items), reply

    assert d.proc.poll() is None, f"the daemon exited; log:\n{d.log_tail()}"
    wrong = {i: (sub.final[i].state, sub.final[i].error) for i in good
             if sub.final[i].state != SUCCEEDED or sub.final[i].result != i.encode()}
    assert not wrong, f"good items not SUCCEEDED with their payload: {list(wrong.items())[:5]}"
    for i in boom:
        f = sub.final[i]
        assert f.state == FAILED and f.attempt == 2, (i, f)
        assert "killed by signal 11" in f.error, (i, f.error)
        assert RETRYING in [u.state for u in sub.of(i)], i
    assert "giving up" not in d.log_text()
    d.wait_ready()


def test_a_worker_that_cannot_start_still_trips_the_breaker(start_daemon, poison_modules):
    """The breaker still works for what it is for: a worker killed while
    idle, again and again, stops the daemon (exit status 1)."""
    d = start_daemon({
        "respawn": {"backoff_min": "10ms", "backoff_max": "20ms", "crash_limit": 2},
        "workers": {"count": 1},
        "handlers": {**ECHO, "p": {"module": str(poison_modules["plain"])}},
    })
    for _ in range(2):
        pid = wait_for(lambda: d.workers().get(1) if d.proc.poll() is None else "exited", 5,
                       "worker 1")
        if pid == "exited":
            break
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: d.proc.poll() is not None or d.workers().get(1) not in (None, pid), 5,
                 "a respawn or the master's exit")
    assert d.wait_exit(timeout=10) == 1, d.log_tail()
    assert "crashed 2 times in a row" in d.log_text()


def test_module_exit_2_fails_the_item_and_the_daemon_serves_on(start_daemon, poison_modules):
    d = start_daemon({
        "queue": {"max_attempts": 2},
        "respawn": {"crash_limit": 1},
        "handlers": {**ECHO, "p": {"module": str(poison_modules["plain"])}},
    })
    c = d.client()
    reply, sub = c.run_items([{"id": "x", "kind": "p", "payload": b"exit2"}])
    x = sub.final["x"]
    assert x.state == FAILED and x.attempt == 2, x
    assert "exited with status 2" in x.error, x.error
    assert RETRYING in [u.state for u in sub.of("x")]
    assert d.proc.poll() is None, f"the daemon exited; log:\n{d.log_tail()}"
    reply, sub = c.run_items([{"id": "after", "kind": "p", "payload": b"still here"}])
    assert sub.final["after"].state == SUCCEEDED
    d.wait_ready()


def test_processes_a_module_forks_end_with_its_item(start_daemon, poison_modules):
    d = start_daemon({"handlers": {**ECHO, "p": {"module": str(poison_modules["plain"])}}})
    marker = sleep_marker()
    c = d.client()
    reply, sub = c.run_items([{"id": "f", "kind": "p", "payload": f"fork {marker}".encode()}])
    assert sub.final["f"].state == SUCCEEDED, sub.final["f"]
    assert_no_sleepers(marker, "after the item is final")
    # The worker goes on taking items.
    reply, sub = c.run_items([{"id": f"n{i}", "kind": "p", "payload": b"n"} for i in range(20)])
    assert all(sub.final[f"n{i}"].state == SUCCEEDED for i in range(20))
    assert d.stop() == 0


def test_exec_setsid_grandchild_ends_with_its_item(start_daemon, tmp_path):
    """`setsid sleep & echo done`, where the program waits (through a fifo)
    until its job has left for a session of its own, so the job cannot be
    caught in the program's process group by luck."""
    marker = sleep_marker()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    d = start_daemon({"handlers": {**ECHO, "x": {
        "exec": ["sh", "-c", f"setsid sh -c 'echo > {fifo}; exec sleep {marker}' & "
                             f"read x < {fifo}; echo done"]}}})
    reply, sub = d.client().run_items([{"id": "s", "kind": "x"}])
    s = sub.final["s"]
    assert (s.state, s.result) == (SUCCEEDED, b"done\n"), s
    assert_no_sleepers(marker, "after the item is final")
    assert d.stop() == 0


def test_exec_setsid_grandchild_ends_with_a_killed_worker(start_daemon):
    """An item that times out gets its worker SIGKILLed: what its program
    started in a session of its own is killed too."""
    marker = sleep_marker()
    d = start_daemon({
        "queue": {"max_attempts": 1},
        "handlers": {**ECHO, "x": {
            "exec": ["sh", "-c", f"setsid sleep {marker} & sleep 60"], "timeout": "700ms"}}})
    reply, sub = d.client().run_items([{"id": "t", "kind": "x"}])
    assert sub.final["t"].state == FAILED
    assert "timed out" in sub.final["t"].error
    assert_no_sleepers(marker, "after its worker was killed")
    d.wait_ready()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGQUIT])
def test_exec_setsid_grandchild_ends_with_the_daemon(start_daemon, how):
    """A fast stop kills the worker mid-item; a graceful one kills it at
    shutdown_timeout. (A SIGKILLed master can do nothing: that is the init
    system's job, e.g. systemd's default KillMode=control-group.)"""
    marker = sleep_marker()
    d = start_daemon({"shutdown_timeout": "1s", "handlers": {**ECHO, "x": {
        "exec": ["sh", "-c", f"setsid sleep {marker} & sleep 60"]}}})
    c = d.client()
    reply = c.submit([{"id": "r", "kind": "x"}])
    assert reply.accepted == 1
    wait_for(lambda: sleepers(marker), 10, f"`sleep {marker}` to start")
    assert d.stop(how) == 0, d.log_tail()
    assert_no_sleepers(marker, "after the daemon stopped")
