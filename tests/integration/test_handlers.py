"""
Handlers people plug in, end to end: exec (result, environment, failures,
timeouts that take the whole process group, output limits, no leaks over 10k
items), modules (the gzip example, progress, errors, ABI checks by -t, init
failures), and worker hygiene (recycling with workers.max_items without
losing or re-attempting anything, user:, cpu_affinity, nice, rlimits).
"""
import gzip
import http.client
import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import (BINARY, FAILED, PROGRESS, RETRYING, STARTED, SUCCEEDED, built_test_modules,
                      free_port, missing_dependency, pid_alive, proc_stat, proc_title, run_cli, state_name,
                      wait_for)

BUILD = Path(BINARY).resolve().parent
GZIP_MODULE = BUILD / "modules" / "gzip.so"
ECHO = {"default": "echo", "echo": {"builtin": "echo"}}


def handlers(**kinds):
    return {**ECHO, **kinds}


@pytest.fixture(scope="session")
def test_modules():
    """The test module four ways: {'ok': path, 'abi99': path, 'nosym': path,
    'quick': path (flagged DS_MODULE_QUICK)} (conftest.TEST_MODULES)."""
    yield from built_test_modules("ok", "abi99", "nosym", "quick")


@pytest.fixture
def gzip_module():
    if not GZIP_MODULE.exists():
        missing_dependency(f"{GZIP_MODULE} not built; run `make`")
    return GZIP_MODULE


def final_of(sub, item_id):
    return sub.final[item_id]


def states(sub, item_id):
    return [state_name(u.state) for u in sub.of(item_id) if u.state != PROGRESS]


def proc_status(pid):
    """/proc/PID/status as {field: value}."""
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def children_of(pid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[1] == pid:
                out.append((int(name), st[0]))
    return out


# ---- exec ---------------------------------------------------------------------------

def test_exec_result_environment_and_params(start_daemon):
    d = start_daemon({"handlers": handlers(
        upper={"exec": ["tr", "a-z", "A-Z"]},
        show={"exec": ["sh", "-c", 'printf "%s|%s|%s|%s|%s" "$DS_ITEM_ID" "$DS_ATTEMPT" '
                                   '"$DS_KIND" "$DS_PARAM_MY_KEY" "$GREETING"'],
              "env": {"GREETING": "hello"}})})
    c = d.client()
    reply, sub = c.run_items([
        {"id": "u1", "kind": "upper", "payload": b"shout it"},
        {"id": "s1", "kind": "show", "params": {"my-key": "v 1"}},
    ])
    assert reply.accepted == 2
    assert final_of(sub, "u1").state == SUCCEEDED, final_of(sub, "u1").error
    assert final_of(sub, "u1").result == b"SHOUT IT"
    assert final_of(sub, "s1").result == b"s1|1|show|v 1|hello"
    # Exec items are not quick: STARTED comes first, and from a worker.
    assert states(sub, "u1") == ["QUEUED", "STARTED", "SUCCEEDED"]
    started = [u for u in sub.of("u1") if u.state == STARTED][0]
    assert started.worker_pid in d.worker_pids()

    # Params whose environment names would clash are rejected up front.
    reply = c.submit([{"id": "clash", "kind": "show", "params": {"a-b": "1", "A_B": "2"}}])
    assert reply.rejected == 1
    assert "would both be DS_PARAM_A_B" in reply.rejections[0].reason


def test_exec_failure_is_final_with_status_and_stderr(start_daemon):
    d = start_daemon({"handlers": handlers(
        bad={"exec": ["sh", "-c", 'echo "warming up" >&2; echo "bad input: x" >&2; exit 3']},
        sig={"exec": ["sh", "-c", "kill -KILL $$"]},
        missing={"exec": ["no-such-program-dosomething"]})})
    reply, sub = d.client().run_items([{"id": "b", "kind": "bad"}, {"id": "k", "kind": "sig"},
                                       {"id": "m", "kind": "missing"}])
    assert reply.accepted == 3
    b, k, m = final_of(sub, "b"), final_of(sub, "k"), final_of(sub, "m")
    assert (b.state, b.error, b.attempt) == (FAILED, "sh exited with status 3: bad input: x", 1)
    assert (k.state, k.error) == (FAILED, "sh killed by signal 9 (SIGKILL)")
    assert (m.state, m.error) == \
        (FAILED, "cannot execute no-such-program-dosomething: No such file or directory")
    # A handler's own failure is not retried.
    for i in ("b", "k", "m"):
        assert RETRYING not in [u.state for u in sub.of(i)]


def test_exec_stderr_control_characters_become_spaces(start_daemon):
    # C1 controls (U+0080..U+009F) are valid UTF-8, but a terminal acts on
    # them (U+009B is CSI): each becomes one space in the error, as C0 ones do.
    script = r"printf 'caf\303\251 \302\23331mred\302\2330m\033[1m\tx\302\205y\n' >&2; exit 1"
    d = start_daemon({"handlers": handlers(c1={"exec": ["sh", "-c", script]})})
    reply, sub = d.client().run_items([{"id": "c", "kind": "c1"}])
    assert reply.accepted == 1
    c = final_of(sub, "c")
    assert (c.state, c.error) == (FAILED, "sh exited with status 1: caf\u00e9  31mred 0m [1m x y")


@pytest.mark.deadline(60)
def test_exec_timeout_kills_the_whole_process_group(start_daemon, tmp_path):
    pids = tmp_path / "pids"
    d = start_daemon({
        "queue": {"max_attempts": 1},
        "handlers": handlers(hang={
            "exec": ["sh", "-c", f'sleep 60 & echo $$ $! > {pids}.tmp && mv {pids}.tmp {pids}; wait'],
            "timeout": "700ms"})})
    workers_before = set(d.worker_pids())
    reply, sub = d.client().run_items([{"id": "h", "kind": "hang"}], timeout=30)
    h = final_of(sub, "h")
    assert h.state == FAILED
    assert h.error == "timed out after 700 ms (attempt 1 of 1)", h.error
    program, grandchild = map(int, pids.read_text().split())
    # The worker was killed; the program died with it (PR_SET_PDEATHSIG) and
    # the guard took its background job too.
    wait_for(lambda: not pid_alive(program), 5, f"program {program} to die")
    wait_for(lambda: not pid_alive(grandchild), 5, f"its child {grandchild} to die")
    wait_for(lambda: set(d.worker_pids()) != workers_before, 5, "a new worker")
    d.wait_ready()


def test_exec_output_larger_than_max_result_size_fails(start_daemon):
    d = start_daemon({"handlers": handlers(
        max_result_size="64KiB",
        big={"exec": ["head", "-c", "100000", "/dev/zero"]},
        endless={"exec": ["cat", "/dev/zero"]},
        fits={"exec": ["head", "-c", "60000", "/dev/zero"]})})
    reply, sub = d.client().run_items([{"id": "big", "kind": "big"},
                                       {"id": "endless", "kind": "endless"},
                                       {"id": "fits", "kind": "fits"}])
    for i in ("big", "endless"):
        u = final_of(sub, i)
        assert (u.state, u.error) == (FAILED, "output exceeds handlers.max_result_size "
                                     "(65536 bytes)"), (i, u.error)
    assert final_of(sub, "fits").state == SUCCEEDED
    assert final_of(sub, "fits").result == bytes(60000)


@pytest.mark.deadline(240)
def test_exec_3k_items_leak_nothing(start_daemon):
    d = start_daemon({"workers": {"count": 2}, "queue": {"capacity": 20000},
                      "handlers": handlers(cat={"exec": ["cat"]})})
    c = d.client()
    # Warm up: the guards exist after this.
    c.run_items([{"id": f"w{i}", "kind": "cat", "payload": b"w"} for i in range(20)])
    workers = d.workers()
    before = {pid: fd_count(pid) for pid in workers.values()}

    # A descriptor or a child leaked per item shows as thousands here.
    n = 3000
    items = [{"id": f"c{i}", "kind": "cat", "payload": b"item %d" % i} for i in range(n)]
    t0 = time.monotonic()
    reply, sub = c.run_items(items, timeout=200)
    elapsed = time.monotonic() - t0
    assert reply.accepted == n
    bad = [(i["id"], state_name(sub.final[i["id"]].state), sub.final[i["id"]].error)
           for i in items if sub.final[i["id"]].result != i["payload"]]
    assert not bad, f"{len(bad)} wrong, e.g. {bad[:3]}"
    print(f"{n} exec items: {elapsed:.1f} s ({n / elapsed:.0f}/s)")

    assert d.workers() == workers, "a worker was replaced"
    after = {pid: fd_count(pid) for pid in workers.values()}
    assert after == before, f"descriptors per worker: before {before}, after {after}"
    for pid in workers.values():
        kids = children_of(pid)
        zombies = [k for k, state in kids if state in ("Z", "X")]
        assert not zombies, f"worker {pid} has zombies {zombies}"
        guards = [k for k, _ in kids if "exec guard" in (proc_title(k) or "")]
        assert len(kids) == 1 and len(guards) == 1, \
            f"worker {pid} should have just its guard, has {[(k, proc_title(k)) for k, _ in kids]}"


# ---- modules ------------------------------------------------------------------------

def test_gzip_module_round_trip(start_daemon, gzip_module):
    d = start_daemon({"handlers": handlers(
        gz={"module": str(gzip_module), "options": {"level": 9}},
        gunzip={"module": str(gzip_module), "options": {"mode": "decompress"}})})
    data = b"".join(b"line %d of something compressible\n" % i for i in range(20000))
    c = d.client()
    reply, sub = c.run_items([{"id": "z", "kind": "gz", "payload": data},
                              {"id": "fast", "kind": "gz", "payload": data,
                               "params": {"level": "1"}},
                              {"id": "junk", "kind": "gunzip", "payload": b"not gzip at all"},
                              {"id": "lvl", "kind": "gz", "params": {"level": "x"}}])
    z = final_of(sub, "z")
    assert z.state == SUCCEEDED, z.error
    assert len(z.result) < len(data) // 5
    assert gzip.decompress(z.result) == data
    assert gzip.decompress(final_of(sub, "fast").result) == data
    junk = final_of(sub, "junk")
    assert (junk.state, junk.error) == (FAILED, "not gzip data: incorrect header check")
    assert final_of(sub, "lvl").error == "param level=x: must be 0..9"

    reply, sub = c.run_items([{"id": "back", "kind": "gunzip", "payload": z.result}])
    assert final_of(sub, "back").result == data


def test_module_progress_error_and_item_fields(start_daemon, test_modules):
    d = start_daemon({"handlers": handlers(
        t={"module": str(test_modules["ok"]), "options": {"prefix": "P:"}})})
    reply, sub = d.client().run_items([
        {"id": "slow", "kind": "t", "params": {"ms": "400", "steps": "4"}},
        {"id": "err", "kind": "t", "params": {"error": "boom"}},
        {"id": "silent", "kind": "t", "params": {"silent": ""}},
        {"id": "plain", "kind": "t", "payload": b"data"},
    ])
    assert reply.accepted == 4
    slow = sub.of("slow")
    progress = [u.progress for u in slow if u.state == PROGRESS]
    assert [state_name(u.state) for u in slow] == \
        ["QUEUED", "STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCEEDED"]
    assert progress == sorted(progress) and 0 < progress[0] < progress[-1] < 1, progress
    assert (final_of(sub, "err").state, final_of(sub, "err").error) == (FAILED, "error: boom")
    assert final_of(sub, "silent").error == "module test failed without saying why"
    plain = final_of(sub, "plain")
    assert re.fullmatch(rb"P:data\|attempt=1\|id=plain\|kind=t\|n=\d+", plain.result), plain.result


def test_module_crash_is_retried_like_a_worker_death(start_daemon, test_modules):
    d = start_daemon({"queue": {"max_attempts": 2},
                      "handlers": handlers(t={"module": str(test_modules["ok"])})})
    reply, sub = d.client().run_items([{"id": "c", "kind": "t", "params": {"crash": ""}}])
    c = final_of(sub, "c")
    assert c.state == FAILED and c.attempt == 2
    assert "killed by signal 6" in c.error, c.error
    assert RETRYING in [u.state for u in sub.of("c")]
    d.wait_ready()


def test_module_abi_mismatch_and_missing_symbol_are_config_errors(make_daemon, test_modules):
    d = make_daemon({"handlers": handlers(m={"module": str(test_modules["abi99"])})})
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode != 0
    line = next(i for i, l in enumerate(d.config_path.read_text().splitlines(), 1)
                if "module:" in l)
    assert re.search(rf"{re.escape(str(d.config_path))}:{line}:\d+: handlers\.m\.module: "
                     rf".*test_module_abi99\.so was built for handler ABI version 99; this "
                     rf"dosomethingd loads version 1", r.stderr), r.stderr

    d.write_config({"handlers": handlers(m={"module": str(test_modules["nosym"])})})
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode != 0
    assert "does not export dosomething_module" in r.stderr, r.stderr

    d.write_config({"handlers": handlers(m={"module": str(test_modules["ok"])})})
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode == 0, r.stderr


def test_reload_with_a_bad_module_keeps_running(start_daemon, test_modules):
    d = start_daemon({"handlers": handlers(m={"module": str(test_modules["ok"])})})
    workers = d.workers()
    d.write_config({**d.config, "handlers": handlers(m={"module": str(test_modules["abi99"])})})
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reload failed: .*handlers\.m\.module: .*ABI version 99")
    assert d.workers() == workers
    reply, sub = d.client().run_items([{"id": "still", "kind": "m", "payload": b"x"}])
    assert final_of(sub, "still").state == SUCCEEDED


def worker_in_flight(status_address):
    """{pid: in_flight} of the workers, from /status."""
    host, port = status_address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/status")
        rows = json.loads(conn.getresponse().read())["processes"]
    finally:
        conn.close()
    return {r["pid"]: r["in_flight"] for r in rows if "in_flight" in r}


@pytest.mark.deadline(90)
def test_quick_module_items_are_weighed_as_quick_in_dispatch(start_daemon, test_modules):
    """A module flagged DS_MODULE_QUICK: the grpc process (which never loads
    it) learns the flag from the master, at start and on reload, and lets a
    worker hold 16 x workers.prefetch of its items instead of prefetch."""
    status = f"127.0.0.1:{free_port()}"
    d = start_daemon({"workers": {"count": 1, "prefetch": 1}, "status": {"listen": status},
                      "handlers": handlers(q={"module": str(test_modules["quick"])})})
    c = d.client()

    def fill(tag):
        # The first item keeps the worker busy while the others queue behind it.
        items = [{"id": f"{tag}-block", "kind": "q", "params": {"ms": "60000", "steps": "600"}}]
        items += [{"id": f"{tag}-{i}", "kind": "q"} for i in range(20)]
        assert c.submit(items).accepted == len(items)

    fill("a")
    first = d.workers()[1]
    wait_for(lambda: worker_in_flight(status).get(first) == 16, 10,
             f"worker {first} holding 16 quick items")

    d.send_signal(signal.SIGHUP)
    d.wait_log(r"config generation 2 applied")
    # The old worker still holds its items (it retires when they are done).
    second = wait_for(lambda: next((p for p in d.worker_slots().get(1, []) if p != first), None),
                      10, "the worker of generation 2")
    fill("b")
    wait_for(lambda: worker_in_flight(status).get(second) == 16, 10,
             f"worker {second} holding 16 quick items after the reload")


def test_module_init_failure_is_fatal(start_daemon, test_modules):
    d = start_daemon({"handlers": handlers(
        m={"module": str(test_modules["ok"]), "options": {"fail_init": "no database"}})},
        wait=False)
    status = d.wait_exit(timeout=15)
    assert status not in (0, None)
    d.wait_log(r'module test \(.*test_module\.so\) for kind "m": init failed: no database')
    d.wait_log(r"reported a fatal error")


# ---- hygiene -------------------------------------------------------------------------

@pytest.mark.deadline(120)
def test_recycling_under_load_loses_nothing(start_daemon, test_modules, tmp_path):
    fini = tmp_path / "fini"
    d = start_daemon({
        "workers": {"count": 2, "prefetch": 8, "max_items": 40},
        "handlers": handlers(sleep={"builtin": "sleep"},
                             t={"module": str(test_modules["ok"]),
                                "options": {"fini_file": str(fini)}})})
    first = set(d.worker_pids())
    n = 1000
    items = []
    for i in range(n):
        if i % 3 == 0:
            items.append({"id": f"r{i}", "kind": "sleep", "params": {"ms": "1"}})
        elif i % 3 == 1:
            items.append({"id": f"r{i}", "kind": "t", "payload": b"%d" % i})
        else:
            items.append({"id": f"r{i}", "kind": "echo", "payload": b"%d" % i})
    reply, sub = d.client().run_items(items, timeout=90)
    assert reply.accepted == n
    time.sleep(0.3)                      # room for duplicates to show up
    finals = Counter(u.item_id for u in sub.snapshot() if u.state in (SUCCEEDED, FAILED))
    mine = [i["id"] for i in items]
    assert all(finals[i] == 1 for i in mine), \
        f"items with != 1 final update: {[(i, finals[i]) for i in mine if finals[i] != 1][:5]}"
    failed = [(i, sub.final[i].error) for i in mine if sub.final[i].state != SUCCEEDED]
    assert not failed, failed[:5]
    retried = [i for i in mine if any(u.state == RETRYING for u in sub.of(i))]
    assert not retried, f"items retried: {retried[:5]}"
    extra = [(i, u.attempt) for i in mine for u in sub.of(i) if u.attempt != 1]
    assert not extra, f"updates with an attempt other than 1: {extra[:5]}"

    recycled = [int(m) for m in re.findall(r"recycling after (\d+) items \(workers\.max_items 40\)",
                                           d.log_text())]
    assert len(recycled) >= n // 44 - 2, f"{len(recycled)} recycles"
    assert all(40 <= r <= 44 for r in recycled), recycled
    assert not re.search(r"\[warn\].*worker \d+ \(pid \d+\)", d.log_text()), \
        "a worker exit was logged as a crash"
    d.wait_ready()
    assert not first & set(d.worker_pids())
    # Each recycled worker unloaded its module: fini ran.
    assert fini.exists() and len(fini.read_text().splitlines()) >= 1


def test_worker_hygiene_settings(start_daemon):
    d = start_daemon({"workers": {"count": 2, "cpu_affinity": "auto", "nice": 5,
                                  "rlimit_nofile": 1234, "core_dumps": "off"}})
    allowed = sorted(os.sched_getaffinity(d.master_pid))
    for slot, pid in d.workers().items():
        status = proc_status(pid)
        assert status["Cpus_allowed_list"] == str(allowed[(slot - 1) % len(allowed)]), \
            (slot, status["Cpus_allowed_list"])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert int(fields[16]) == 5, f"nice of worker {slot} is {fields[16]}"
        with open(f"/proc/{pid}/limits") as f:
            limits = f.read()
        assert re.search(r"Max open files\s+1234\s", limits), limits
        assert re.search(r"Max core file size\s+0\s", limits), limits
    # The master and the grpc process keep theirs.
    with open(f"/proc/{d.master_pid}/limits") as f:
        assert not re.search(r"Max open files\s+1234\s", f.read())
    reply, sub = d.client().run_items([{"id": "ok", "payload": b"fine"}])
    assert final_of(sub, "ok").result == b"fine"


def uids(pid):
    return [int(x) for x in proc_status(pid)["Uid"].split()]


def gids(pid):
    return [int(x) for x in proc_status(pid)["Gid"].split()]


def test_workers_drop_to_user(start_daemon, test_modules, nobody_user):
    pw = nobody_user
    d = start_daemon({"user": "nobody", "handlers": handlers(
        whoami={"exec": ["sh", "-c", "printf '%s %s %s' $(id -u) $(id -g) \"$HOME\""]},
        m={"module": str(test_modules["ok"])})})
    for pid in d.worker_pids():
        assert uids(pid) == [pw.pw_uid] * 4, f"worker {pid}: Uid {uids(pid)}"
        assert gids(pid) == [pw.pw_gid] * 4, f"worker {pid}: Gid {gids(pid)}"
    assert uids(d.master_pid)[1] == 0, "the master keeps root"
    reply, sub = d.client().run_items([{"id": "who", "kind": "whoami"},
                                       {"id": "mod", "kind": "m", "payload": b"x"}])
    assert final_of(sub, "who").result == f"{pw.pw_uid} {pw.pw_gid} {pw.pw_dir}".encode()
    assert final_of(sub, "mod").state == SUCCEEDED
    # A dropped worker still dies with the master (PR_SET_PDEATHSIG survives the drop).
    workers = d.worker_pids()
    os.kill(d.master_pid, signal.SIGKILL)
    for pid in workers:
        wait_for(lambda: not pid_alive(pid), 5, f"worker {pid} to die with the master")


def test_grpc_process_drops_to_user(start_daemon, nobody_user):
    """Needs privileges_drop() called in the master's child_setup for the grpc process."""
    pw = nobody_user
    d = start_daemon({"user": "nobody"})
    grpc_pid = d.grpc_pid()
    assert uids(grpc_pid) == [pw.pw_uid] * 4, f"grpc process: Uid {uids(grpc_pid)}"
    reply, sub = d.client().run_items([{"id": "ok", "payload": b"x"}])
    assert final_of(sub, "ok").state == SUCCEEDED


def test_unknown_user_is_a_config_error(make_daemon):
    d = make_daemon({"user": "no-such-user-dosomething"})
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode != 0
    assert re.search(r':\d+:\d+: user: no such user "no-such-user-dosomething"', r.stderr), r.stderr
