"""
dosomething, the command-line client, against the real daemon: what a user
typing it sees (stdout, stderr, exit status), and what the daemon got.

The client is build/dosomething beside DS_BINARY (or DS_CLI). The daemon
comes from conftest.py's `daemon` fixture (2 workers, a free port, files in
the test's tmp directory, everything SIGKILLed at teardown).
"""
import array
import base64
import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest

from conftest import BINARY, REPO, SUCCEEDED, free_port, pb, wait_for

CLI = os.environ.get("DS_CLI") or str(Path(BINARY).with_name("dosomething"))

# Exit statuses, as dosomething(1) documents them.
EXIT_OK, EXIT_NEGATIVE, EXIT_USAGE, EXIT_RPC = 0, 1, 2, 3

UPDATE_KEYS = {"seq", "item_id", "kind", "state", "attempt", "worker_pid", "time_unix_nano",
               "cpu_usec", "max_rss_kib", "cached", "batch", "progress", "error", "result_b64"}


def run(*args, target=None, input=None, timeout=30, env=None):
    """Run the client; return CompletedProcess (text). target: a Daemon or an address."""
    assert os.access(CLI, os.X_OK), f"{CLI} not built: make -f Makefile -f mk/cli.mk cli"
    argv = [CLI]
    if target is not None:
        argv += ["--target", target if isinstance(target, str) else target.address]
    argv += [str(a) for a in args]
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                          env=env)


def explain(r):
    return f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def counts(stdout):
    """{'accepted': n, 'rejected': n, 'succeeded': n, 'failed': n} from the report."""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(accepted|rejected|succeeded|failed) (\d+)$", stdout, re.M)}


def bytes_waiting(pipe):
    """How many bytes wait in a pipe, without reading them."""
    buf = array.array("i", [0])
    fcntl.ioctl(pipe.fileno(), termios.FIONREAD, buf, True)
    return buf[0]


def json_lines(items):
    return "".join(json.dumps(i) + "\n" for i in items)


def sha256_rounds(data, rounds):
    d = hashlib.sha256(data).digest()
    for _ in range(rounds - 1):
        d = hashlib.sha256(d).digest()
    return d


def final_updates(client, ids, timeout=10):
    """{id: final Update} of items that are over, read back through replay."""
    sub = client.subscribe(replay=True, after_seq=0, item_ids=ids, states=[SUCCEEDED, pb.FAILED])
    return sub.wait_final(ids, timeout=timeout)


# ---- submit ------------------------------------------------------------------

def test_submit_plain_lines_from_stdin(daemon):
    r = run("submit", "--id-prefix", "plain", target=daemon, input="one\ntwo\n\nfour\n")
    assert r.returncode == EXIT_OK, explain(r)
    assert counts(r.stdout) == {"accepted": 4, "rejected": 0}, explain(r)

    # Each line, without its newline, is one payload; ids are PREFIX-N.
    finals = final_updates(daemon.client(), ["plain-1", "plain-2", "plain-3", "plain-4"])
    assert [finals[f"plain-{n}"].result for n in (1, 2, 3, 4)] == [b"one", b"two", b"", b"four"]


def test_submit_files_in_order(daemon, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a1\na2\n")
    b.write_bytes(b"b1\nb2")            # the last line needs no newline
    r = run("submit", "--id-prefix", "files", a, b, target=daemon)
    assert r.returncode == EXIT_OK, explain(r)
    assert counts(r.stdout)["accepted"] == 4, explain(r)
    finals = final_updates(daemon.client(), [f"files-{n}" for n in range(1, 5)])
    assert [finals[f"files-{n}"].result for n in range(1, 5)] == [b"a1", b"a2", b"b1", b"b2"]


def test_submit_json_with_params_and_wait(daemon):
    items = [{"id": f"hash-{n}", "kind": "sha256", "payload": f"text {n}",
              "params": {"rounds": 1000 + n}} for n in range(5)]
    items.append({"id": "bytes", "kind": "echo",
                  "payload_b64": base64.b64encode(b"\x00\x01\xfe\xff").decode()})
    r = run("submit", "--json", "--wait", target=daemon, input=json_lines(items))
    assert r.returncode == EXIT_OK, explain(r)
    assert counts(r.stdout) == {"accepted": 6, "rejected": 0, "succeeded": 6, "failed": 0}, \
        explain(r)

    finals = final_updates(daemon.client(), [i["id"] for i in items])
    for n in range(5):
        assert finals[f"hash-{n}"].result == sha256_rounds(f"text {n}".encode(), 1000 + n)
    assert finals["bytes"].result == b"\x00\x01\xfe\xff"


def test_submit_param_option_and_json_override(daemon):
    items = [{"id": "p-default", "payload": "x"},
             {"id": "p-own", "payload": "x", "params": {"rounds": 7}}]
    r = run("submit", "--json", "--wait", "--kind", "sha256", "--param", "rounds=3",
            target=daemon, input=json_lines(items))
    assert r.returncode == EXIT_OK, explain(r)
    finals = final_updates(daemon.client(), ["p-default", "p-own"])
    assert finals["p-default"].result == sha256_rounds(b"x", 3)
    assert finals["p-own"].result == sha256_rounds(b"x", 7)


def test_submit_wait_names_the_failed_item_and_exits_1(daemon):
    items = [{"id": "fine", "kind": "echo", "payload": "ok"},
             {"id": "too-slow", "kind": "sleep", "params": {"ms": 2000}, "timeout_ms": 100,
              "max_attempts": 1}]
    started = time.monotonic()
    r = run("submit", "--json", "--wait", target=daemon, input=json_lines(items))
    assert r.returncode == EXIT_NEGATIVE, explain(r)
    assert time.monotonic() - started < 10, "the timeout, not the sleep, should end it"
    assert counts(r.stdout) == {"accepted": 2, "rejected": 0, "succeeded": 1, "failed": 1}, \
        explain(r)
    assert re.search(r"^  too-slow: .*time", r.stdout, re.M | re.I), explain(r)
    assert "fine:" not in r.stdout


def test_submit_unknown_kind_shows_the_rejection(daemon):
    r = run("submit", "--kind", "no-such-kind", "--id-prefix", "rej", target=daemon,
            input="payload\n")
    assert r.returncode == EXIT_NEGATIVE, explain(r)
    assert counts(r.stdout) == {"accepted": 0, "rejected": 1}, explain(r)
    assert re.search(r'^  0 rej-1: unknown kind "no-such-kind"$', r.stdout, re.M), explain(r)


def test_submit_wait_with_rejections_waits_for_the_rest(daemon):
    items = [{"id": "good", "kind": "echo", "payload": "a"},
             {"id": "bad", "kind": "no-such-kind", "payload": "b"}]
    r = run("submit", "--json", "--wait", target=daemon, input=json_lines(items), timeout=20)
    assert r.returncode == EXIT_NEGATIVE, explain(r)
    assert counts(r.stdout) == {"accepted": 1, "rejected": 1, "succeeded": 1, "failed": 0}, \
        explain(r)


def test_submit_wait_large_input_is_watched_by_batch(daemon):
    """More than 1000 items: --wait labels them with a generated batch."""
    n = 3000
    r = run("--timeout", "60s", "submit", "--wait", "--id-prefix", "big", target=daemon,
            input="".join(f"item {i}\n" for i in range(n)), timeout=90)
    assert r.returncode == EXIT_OK, explain(r)
    assert counts(r.stdout) == {"accepted": n, "rejected": 0, "succeeded": n, "failed": 0}, \
        explain(r)
    sub = daemon.client().subscribe(replay=True, after_seq=0)
    batch = sub.wait_final(["big-1"])["big-1"].batch
    assert batch, "a large --wait submission should carry a generated batch"


def test_submit_bad_json_line_is_skipped_and_named(daemon):
    text = ('{"id": "j1", "payload": "a"}\n'
            'this is not json\n'
            '{"id": "j3", "payload": "c", "colour": "red"}\n'
            '\n'
            '{"id": "j5", "payload": "e"}\n')
    r = run("submit", "--json", target=daemon, input=text)
    assert r.returncode == EXIT_USAGE, explain(r)
    assert counts(r.stdout) == {"accepted": 2, "rejected": 0}, explain(r)
    assert "stdin:2:" in r.stderr and "stdin:3:" in r.stderr, explain(r)
    assert 'unknown key "colour"' in r.stderr, explain(r)


# ---- watch ---------------------------------------------------------------------

def test_watch_count_prints_json_lines(daemon):
    r = run("submit", "--wait", "--batch", "watched", "--id-prefix", "w", target=daemon,
            input="a\nb\nc\n")
    assert r.returncode == EXIT_OK, explain(r)

    # Replay from the start: QUEUED, STARTED, SUCCEEDED of 3 items, at least.
    w = run("watch", "--after-seq", "0", "--batch", "watched", "--count", "7", target=daemon,
            timeout=20)
    assert w.returncode == EXIT_OK, explain(w)
    lines = w.stdout.splitlines()
    assert len(lines) == 7, explain(w)
    updates = [json.loads(line) for line in lines]
    for u in updates:
        assert set(u) == UPDATE_KEYS, u
        assert u["batch"] == "watched" and u["item_id"] in ("w-1", "w-2", "w-3"), u
    seqs = [u["seq"] for u in updates]
    assert seqs == sorted(seqs) and len(set(seqs)) == 7
    done = [u for u in updates if u["state"] == "SUCCEEDED"]
    for u in done:
        payload = {"w-1": b"a", "w-2": b"b", "w-3": b"c"}[u["item_id"]]
        assert base64.b64decode(u["result_b64"]) == payload
        assert u["worker_pid"] > 0 and u["attempt"] == 1 and u["progress"] == 1


def test_watch_filters_by_state(daemon):
    r = run("submit", "--wait", "--batch", "states", target=daemon, input="a\nb\n")
    assert r.returncode == EXIT_OK, explain(r)
    w = run("watch", "--after-seq", "0", "--batch", "states", "--state", "succeeded",
            "--count", "2", target=daemon, timeout=20)
    assert w.returncode == EXIT_OK, explain(w)
    assert [json.loads(line)["state"] for line in w.stdout.splitlines()] == ["SUCCEEDED"] * 2


def test_watch_replay_of_one_item_among_many(daemon):
    """--after-seq with a filter that skips most of the log still shows the
    item's updates, final one included, at once."""
    r = run("submit", "--wait", "--id-prefix", "many", target=daemon,
            input="".join(f"{i}\n" for i in range(2000)))
    assert r.returncode == EXIT_OK, explain(r)
    w = run("--timeout", "5s", "watch", "--after-seq", "0", "--item", "many-1", "--count", "3",
            target=daemon, timeout=20)
    assert w.returncode == EXIT_OK, explain(w)
    states = [json.loads(line)["state"] for line in w.stdout.splitlines()]
    assert states == ["QUEUED", "STARTED", "SUCCEEDED"], explain(w)


def test_watch_live_until_interrupted(daemon):
    proc = subprocess.Popen([CLI, "--target", daemon.address, "watch", "--batch", "live"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The watcher subscribes some time after it starts: submit one item
        # a round until one shows.
        def printed():
            run("submit", "--batch", "live", target=daemon, input="x\n")
            return bytes_waiting(proc.stdout)
        wait_for(printed, 15, "the live watcher to print an update", interval=0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_OK, f"exit {proc.returncode}\n{out}\n{err}"
    lines = out.splitlines()
    assert lines and all(json.loads(line)["batch"] == "live" for line in lines)


def test_watch_timeout_without_count_is_a_normal_end(daemon):
    started = time.monotonic()
    w = run("--timeout", "1s", "watch", "--batch", "nothing-here", target=daemon, timeout=20)
    assert w.returncode == EXIT_OK, explain(w)
    assert w.stdout == ""
    assert time.monotonic() - started < 10


# ---- health --------------------------------------------------------------------

def test_health_prints_serving(daemon):
    r = run("health", target=daemon)
    assert r.returncode == EXIT_OK, explain(r)
    assert r.stdout == "SERVING\n"


# ---- errors --------------------------------------------------------------------

@pytest.mark.parametrize("command", [["submit"], ["health"], ["watch", "--count", "1"]])
def test_closed_port_is_a_clear_unavailable(command):
    port = free_port()                   # bound once, closed again: nothing listens
    started = time.monotonic()
    r = run("--timeout", "5s", *command, target=f"127.0.0.1:{port}", input="x\n", timeout=20)
    elapsed = time.monotonic() - started
    assert r.returncode == EXIT_RPC, explain(r)
    assert f"(to 127.0.0.1:{port}): UNAVAILABLE" in r.stderr, explain(r)
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert r.stdout == ""


def test_target_from_the_environment(daemon):
    env = dict(os.environ, DOSOMETHING_TARGET=daemon.address)
    r = run("submit", input="a\n", env=env)
    assert r.returncode == EXIT_OK, explain(r)
    assert counts(r.stdout)["accepted"] == 1


@pytest.mark.parametrize("args", [["submit", "--param", "novalue"], ["--timeout", "5", "health"],
                                  ["watch", "--state", "DONE"], ["frobnicate"],
                                  ["submit", "--no-such-option"], ["watch", "--count", "0"]])
def test_usage_errors_exit_2(args):
    r = run(*args, target="127.0.0.1:1", input="")
    assert r.returncode == EXIT_USAGE, explain(r)
    assert r.stderr.startswith("dosomething: ") or "Try 'dosomething" in r.stderr, explain(r)


def test_missing_file_exits_2_before_connecting(tmp_path):
    r = run("submit", tmp_path / "nope.txt", target="127.0.0.1:1")
    assert r.returncode == EXIT_USAGE, explain(r)
    assert "nope.txt" in r.stderr


# ---- what a user can get wrong: input -------------------------------------------
#
# Each ends with a message naming what was wrong and an exit status, never a
# crash (a negative returncode) or a hang (every run is bounded).

LINE_MAX = 64 << 20         # input.c's LINE_MAX_LEN (DS_MESSAGE_SIZE_MAX)


def run_bytes(*args, target=None, input=b"", timeout=30):
    """run() for input that is not text: bytes in, bytes out."""
    argv = [CLI]
    if target is not None:
        argv += ["--target", target if isinstance(target, str) else target.address]
    argv += [str(a) for a in args]
    return subprocess.run(argv, input=input, capture_output=True, timeout=timeout)


def said(r):
    """stderr as text: it must be UTF-8 without control characters but newlines,
    whatever the input held (it goes to the user's terminal)."""
    assert r.returncode >= 0, f"killed by signal {-r.returncode}: {r.stderr!r}"
    err = r.stderr.decode("utf-8")
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", err), f"control characters in {err!r}"
    return err


def json_line(size, pad=b"a"):
    """A JSON item line of exactly SIZE bytes (without the newline)."""
    head, tail = b'{"payload": "', b'"}'
    return head + pad * (size - len(head) - len(tail)) + tail


def test_submit_json_bad_escape_byte_is_named_in_hex(daemon):
    """fuzz regression cli/json-unknown-escape-byte: the byte after the
    backslash went to the terminal as it was."""
    r = run_bytes("submit", "--json", target=daemon, input=b'{"payload": "\\\x83"}\n'
                  b'{"payload": "\\\x1b[2J"}\n')
    err = said(r)
    assert r.returncode == EXIT_USAGE, err
    assert "stdin:1: at column 15: unknown escape: byte 0x83 after a backslash" in err, err
    assert "stdin:2: at column 15: unknown escape: byte 0x1b after a backslash" in err, err
    assert counts(r.stdout.decode()) == {"accepted": 0, "rejected": 0}


def test_submit_json_unknown_key_with_null_is_refused(daemon):
    """fuzz regression cli/item-unknown-key-null: a misspelt key was dropped
    when its value was null."""
    r = run("submit", "--json", target=daemon,
            input='{"payload": "x", "prority": null}\n{"payload": "y", "priority": null}\n')
    assert r.returncode == EXIT_USAGE, explain(r)
    assert 'stdin:1: unknown key "prority" (there are id, kind,' in r.stderr, explain(r)
    assert "stdin:2" not in r.stderr, explain(r)         # a known key may be null
    assert counts(r.stdout) == {"accepted": 1, "rejected": 0}, explain(r)


def test_submit_json_key_with_nul_is_unknown(daemon):
    """fuzz regression cli/item-key-with-nul: "id\\u0000x" was taken for "id"."""
    r = run("submit", "--json", target=daemon,
            input='{"id\\u0000x": "taken", "payload": "p"}\n')
    assert r.returncode == EXIT_USAGE, explain(r)
    assert 'stdin:1: unknown key "id\\u0000x"' in r.stderr, explain(r)
    assert counts(r.stdout) == {"accepted": 0, "rejected": 0}, explain(r)


def test_submit_json_key_control_characters_are_escaped(daemon):
    """fuzz regression cli/item-key-control-characters: a key's escape
    sequence reached the terminal raw; a long key is cut between characters."""
    long_key = "\u00e9" * 40                    # 80 bytes: cut at 64, not inside a character
    r = run_bytes("submit", "--json", target=daemon, input=(
        '{"a\\u001b[2Jb": 1}\n'
        '{"params": {"x\\u001b[31m": []}}\n'
        + json.dumps({long_key: 1}) + "\n").encode())
    err = said(r)
    assert r.returncode == EXIT_USAGE, err
    assert 'stdin:1: unknown key "a\\u001b[2Jb"' in err, err
    assert "stdin:2: params.x\\u001b[31m must be a string, got an array" in err, err
    assert f'stdin:3: unknown key "{long_key[:32]}..."' in err, err


def test_submit_json_invalid_utf8_is_named(daemon):
    r = run_bytes("submit", "--json", target=daemon,
                  input=b'{"payload": "\xc3\x28"}\n{"\xff": 1}\n{"payload": "\xed\xa0\x80"}\n')
    err = said(r)
    assert r.returncode == EXIT_USAGE, err
    assert "stdin:1: at column 14: invalid UTF-8 in a string" in err, err
    assert "stdin:2: at column 3: invalid UTF-8 in a string" in err, err
    assert "stdin:3: at column 14: invalid UTF-8 in a string" in err, err   # a surrogate
    assert "3 input lines skipped" in err, err


def test_submit_plain_lines_are_bytes_nul_and_invalid_utf8_too(daemon):
    """A plain line is the payload byte for byte: not UTF-8, a NUL, a CR."""
    payloads = [b"\xff\xfe", b"a\x00b", b"\x00", b"\xc3\x28 \r"]
    r = run_bytes("submit", "--id-prefix", "raw", target=daemon,
                  input=b"".join(p + b"\n" for p in payloads))
    assert r.returncode == EXIT_OK, said(r)
    ids = [f"raw-{n}" for n in range(1, len(payloads) + 1)]
    finals = final_updates(daemon.client(), ids)
    assert [finals[i].result for i in ids] == payloads


def test_submit_json_nul_byte_in_a_line(daemon):
    r = run_bytes("submit", "--json", target=daemon, input=(
        b'{"payload": "a\x00b"}\n'             # raw NUL in a string
        b'{"payload": "a"}\x00\n'              # after the value
        b'\x00\n'
        b'{"id": "nul-ok", "payload": "a\\u0000b"}\n'))   # escaped, in bytes: fine
    err = said(r)
    assert r.returncode == EXIT_USAGE, err
    assert "stdin:1: at column 15: control character in a string (escape it)" in err, err
    assert "stdin:2: at column 17: text after the value" in err, err
    assert "stdin:3: at column 1: unexpected byte 0x00" in err, err
    assert counts(r.stdout.decode()) == {"accepted": 1, "rejected": 0}, err
    assert final_updates(daemon.client(), ["nul-ok"])["nul-ok"].result == b"a\x00b"


def test_submit_json_id_with_nul_is_refused(daemon):
    r = run("submit", "--json", target=daemon, input='{"id": "a\\u0000b", "payload": "x"}\n')
    assert r.returncode == EXIT_USAGE, explain(r)
    assert "stdin:1: id must not contain \\u0000" in r.stderr, explain(r)


def test_submit_json_line_that_is_not_an_object(daemon):
    r = run("submit", "--json", target=daemon,
            input='[{"payload": "x"}]\n42\n"text"\nnull\ntrue\n-1e999\n')
    assert r.returncode == EXIT_USAGE, explain(r)
    for n, what in enumerate(["an array", "a number", "a string", "null", "a boolean",
                              "a number"], 1):
        assert f"stdin:{n}: a line must be a JSON object, got {what}; line skipped" in r.stderr, \
            explain(r)
    assert counts(r.stdout) == {"accepted": 0, "rejected": 0}, explain(r)


@pytest.mark.parametrize("field, value, words", [
    ("priority", "2147483648", "priority must be an integer -2147483648..2147483647"),
    ("priority", "-2147483649", "priority must be an integer -2147483648..2147483647"),
    ("priority", "99999999999999999999999999", "priority must be an integer"),
    ("priority", "1e400", "priority must be an integer"),
    ("priority", "1.0", "priority must be an integer"),
    ("priority", '"5"', "priority must be an integer"),
    ("delay_ms", "4294967296", "delay_ms must be an integer 0..4294967295"),
    ("delay_ms", "-1", "delay_ms must be an integer 0..4294967295"),
    ("delay_ms", "18446744073709551616", "delay_ms must be an integer 0..4294967295"),
    ("timeout_ms", "-0.5", "timeout_ms must be an integer 0..4294967295"),
    ("max_attempts", "1e3", "max_attempts must be an integer 0..4294967295"),
    ("params", '{"n": {"deep": 1}}', "params.n must be a string, got an object"),
])
def test_submit_json_numbers_out_of_range(daemon, field, value, words):
    r = run("submit", "--json", target=daemon,
            input=f'{{"payload": "x", "{field}": {value}}}\n', timeout=20)
    assert r.returncode == EXIT_USAGE, explain(r)
    assert f"stdin:1: {words}" in r.stderr, explain(r)
    assert counts(r.stdout) == {"accepted": 0, "rejected": 0}, explain(r)


def test_submit_json_numbers_at_their_limits(daemon):
    """The extremes the client takes; the daemon has the last word on
    max_attempts (1000) and delay_ms (30 days), and says so per item."""
    items = [{"id": "lo", "payload": "x", "priority": -2147483648, "timeout_ms": 4294967295},
             {"id": "hi", "payload": "x", "priority": 2147483647, "max_attempts": 4294967295},
             {"id": "late", "payload": "x", "delay_ms": 4294967295}]
    r = run("submit", "--json", target=daemon, input=json_lines(items))
    assert r.returncode == EXIT_NEGATIVE, explain(r)
    assert counts(r.stdout) == {"accepted": 1, "rejected": 2}, explain(r)
    assert re.search(r"^  1 hi: max_attempts 4294967295 is over 1000$", r.stdout, re.M), explain(r)
    assert re.search(r"^  2 late: delay_ms 4294967295 is over 2592000000 \(30 days\)$",
                     r.stdout, re.M), explain(r)


def test_submit_line_over_the_max_is_refused(daemon, tmp_path):
    """A line one byte over the client's limit stops the input with a message
    naming where; what came before it is sent. From stdin and from a file,
    where the line's end comes in the same read() as its last bytes."""
    good = b'{"id": "before", "payload": "x"}\n'
    big = good + json_line(LINE_MAX + 1) + b"\n" + b'{"id": "after", "payload": "y"}\n'
    r = run_bytes("submit", "--json", target=daemon, input=big, timeout=60)
    err = said(r)
    assert r.returncode == EXIT_USAGE, err
    assert f"stdin:2: line longer than {LINE_MAX} bytes" in err, err
    assert counts(r.stdout.decode()) == {"accepted": 1, "rejected": 0}, err

    path = tmp_path / "big.jsonl"
    path.write_bytes(big)
    r = run_bytes("submit", "--json", path, target=daemon, timeout=60)
    err = said(r)
    assert r.returncode == EXIT_USAGE, err
    assert f"big.jsonl:2: line longer than {LINE_MAX} bytes" in err, err


def test_submit_line_at_the_max_goes_to_the_server(daemon):
    """Exactly at the limit the client takes the line; this daemon's
    max_message_size (4 MiB) is what refuses it, and the client says so."""
    r = run_bytes("submit", "--json", target=daemon, input=json_line(LINE_MAX) + b"\n",
                  timeout=60)
    err = said(r)
    assert "longer than" not in err, err
    assert r.returncode == EXIT_RPC, err
    assert "doSomething" in err and "RESOURCE_EXHAUSTED" in err and "larger than max" in err, err


# ---- what a user can get wrong: options -----------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--timeout", "soon", "health"], '--timeout takes a duration such as 500ms'),
    (["--timeout", "-5s", "health"], '--timeout takes a duration such as 500ms'),
    (["--timeout", "", "health"], '--timeout takes a duration such as 500ms'),
    (["--timeout", "1.5s", "submit"], '--timeout takes a duration such as 500ms'),
    (["--timeout", "5S", "watch"], '--timeout takes a duration such as 500ms'),
    (["--timeout", "99999999999999999999s", "health"],
     '--timeout "99999999999999999999s" is too long'),
    (["--timeout", "9223372036854775807ms", "health"],
     '--timeout "9223372036854775807ms" is too long'),
    (["--timeout", "2562047788016h", "health"], '--timeout "2562047788016h" is too long'),
    (["--timeout", "99999999999999999999x", "health"], '--timeout takes a duration'),
    (["submit", "--timeout", "-1ms"], '--timeout takes a duration'),
    (["submit", "--delay", "721h"], "--delay takes a duration up to 720h (30 days)"),
    (["submit", "--delay", "-1s"], "--delay takes a duration up to 720h (30 days)"),
    (["submit", "--delay", "99999999999999999999h"], "--delay takes a duration up to 720h"),
    (["submit", "--delay", "5"], "--delay takes a duration up to 720h"),
    (["submit", "--priority", "2147483648"], "--priority takes an integer -2147483648..2147483647"),
    (["submit", "--priority", "-2147483649"], "--priority takes an integer"),
    (["submit", "--priority", "1e3"], "--priority takes an integer"),
    (["submit", "--priority", "-"], "--priority takes an integer"),
    (["watch", "--after-seq", "-1"], "--after-seq takes a seq number"),
    (["watch", "--after-seq", "18446744073709551616"], "--after-seq takes a seq number"),
    (["watch", "--count", "18446744073709551616"], "--count takes a number >= 1"),
    (["watch", "--count", "-3"], "--count takes a number >= 1"),
    (["watch", "--state", "succeeded\x1b"], "--state takes QUEUED"),
    (["list", "--limit", "99999999999999999999"], "--limit takes 1 to"),
])
def test_bad_numbers_and_durations_are_usage_errors(args, words):
    r = run(*args, target="127.0.0.1:1", input="", timeout=10)
    assert r.returncode == EXIT_USAGE, explain(r)
    assert r.stderr.startswith("dosomething: ") and words in r.stderr, explain(r)
    assert r.stdout == "", explain(r)


@pytest.mark.parametrize("command", ["health", "submit", "watch", "get", "list", "cancel",
                                     "retry"])
def test_unreadable_tls_file_is_a_usage_error(tmp_path, command):
    """man 1: an unreadable file is exit 2, whichever command reads it."""
    args = {"get": ["get", "x"], "cancel": ["cancel", "x"], "retry": ["retry", "x"]}
    for path in (tmp_path / "missing.pem", tmp_path):
        r = run("--ca", str(path), *args.get(command, [command]), target="127.0.0.1:1",
                input="x\n", timeout=10)
        assert r.returncode == EXIT_USAGE, explain(r)
        assert f"cannot open {path}" in r.stderr or f"{path}:" in r.stderr, explain(r)


def test_unknown_command_names_every_command():
    r = run("bogus", target="127.0.0.1:1", timeout=10)
    assert r.returncode == EXIT_USAGE, explain(r)
    for name in ("submit", "watch", "health", "get", "list", "cancel", "retry", "help"):
        assert name in r.stderr, explain(r)


def test_health_of_an_unknown_service_is_service_unknown(daemon):
    r = run("health", "--service", "no.such.Service", target=daemon)
    assert r.returncode == EXIT_NEGATIVE, explain(r)
    assert r.stdout == "SERVICE_UNKNOWN\n", explain(r)


def test_deadline_hint_names_no_wrong_default(daemon):
    """get --wait has no deadline by default: the hint after a
    DEADLINE_EXCEEDED must not claim one."""
    client_reply = run("submit", "--json", target=daemon,
                       input='{"id": "slow", "kind": "sleep", "params": {"ms": "5000"}}\n')
    assert client_reply.returncode == EXIT_OK, explain(client_reply)
    r = run("--timeout", "300ms", "get", "--wait", "slow", target=daemon)
    assert r.returncode == EXIT_RPC, explain(r)
    assert "DEADLINE_EXCEEDED" in r.stderr, explain(r)
    assert "default 30s" not in r.stderr, explain(r)
    assert "the deadline is --timeout" in r.stderr, explain(r)


def test_largest_timeout_is_taken_without_overflow(daemon):
    """The largest --timeout the client takes (INT64_MAX / 2 ms) is a
    deadline far away, not one that wrapped into the past."""
    largest = f"{(2**63 - 1) // 2}ms"
    r = run("--timeout", largest, "health", target=daemon, timeout=20)
    assert r.returncode == EXIT_OK and r.stdout == "SERVING\n", explain(r)
    r = run("--timeout", largest, "submit", "--wait", target=daemon, input="x\n", timeout=20)
    assert r.returncode == EXIT_OK, explain(r)
    assert counts(r.stdout) == {"accepted": 1, "rejected": 0, "succeeded": 1, "failed": 0}, \
        explain(r)


# ---- help and the manual -------------------------------------------------------

@pytest.mark.parametrize("command", ["submit", "watch", "health"])
def test_help_names_only_options_the_manual_documents(command):
    r = run(command, "-h")
    assert r.returncode == EXIT_OK and r.stdout.startswith(f"usage: dosomething {command}")
    overview = run("--help").stdout
    manual = (REPO / "man" / "dosomething.1").read_text().replace("\\-", "-")
    for option in set(re.findall(r"(--[a-z][a-z-]*)", r.stdout + overview)):
        assert option in manual, f"{option} in `dosomething {command} -h` but not in dosomething(1)"


def test_version():
    r = run("--version")
    assert r.returncode == EXIT_OK and re.fullmatch(r"dosomething \d+\.\d+\.\d+\n", r.stdout)


def test_a_message_quoting_what_the_user_typed_shows_control_bytes_escaped():
    """An option's value goes into the usage error: its control characters
    (an ESC that would clear the screen) and the bytes that are not UTF-8
    (or a character a "%.32s" cut in half) reach the terminal as \\xHH; what
    is valid UTF-8 stays as it is."""
    value = os.fsencode("X\x1b[2Jq") + b"\xc3"
    r = subprocess.run([CLI, "watch", "--state", value], capture_output=True, timeout=30)
    assert r.returncode == EXIT_USAGE, r
    assert b"\x1b" not in r.stderr and b"\xc3" not in r.stderr, r.stderr
    assert b'not "X\\x1b[2Jq\\xc3"' in r.stderr, r.stderr
    r = subprocess.run([CLI, "submit", "--delay", "caf\u00e9\x01".encode()],
                       capture_output=True, timeout=30)
    assert r.returncode == EXIT_USAGE, r
    assert 'got "caf\u00e9\\x01"'.encode() in r.stderr, r.stderr
    r = subprocess.run([CLI, "submit", "--delay", b"\xc2\x9b2J"], capture_output=True,
                       timeout=30)             # C1 CSI
    assert b'got "\\xc2\\x9b2J"' in r.stderr, r.stderr


def test_json_output_escapes_c1_control_characters(daemon):
    """Strings in the JSON lines (an item's id, batch, error) with C1
    controls (U+0080..U+009F; U+009B is a CSI a terminal acts on) are
    written escaped, \\u009b, like C0's, not as their raw UTF-8 bytes; the
    line still decodes to the same string."""
    item_id = "c1-\u009b2J-\u0085-\u0080\u009f-caf\u00e9"
    batch = "b\u009b31m"
    line = json.dumps({"id": item_id, "payload": "x", "batch": batch})
    r = run_bytes("submit", "--json", "--wait", target=daemon, input=(line + "\n").encode())
    assert r.returncode == EXIT_OK, r
    w = run_bytes("watch", "--after-seq", "0", "--item", item_id, "--count", "1",
                  target=daemon, timeout=20)
    assert w.returncode == EXIT_OK, w
    out = w.stdout
    for raw in (b"\xc2\x80", b"\xc2\x85", b"\xc2\x9b", b"\xc2\x9f"):
        assert raw not in out, out
    assert b'"c1-\\u009b2J-\\u0085-\\u0080\\u009f-caf\xc3\xa9"' in out, out
    assert b'"b\\u009b31m"' in out, out
    u = json.loads(out.decode("utf-8"))
    assert u["item_id"] == item_id and u["batch"] == batch, u


def test_plain_text_output_shows_control_characters_escaped(start_daemon):
    """Ids, errors and rejection reasons come from clients and programs: the
    plain-text outputs (submit's rejections, --wait's failures, get's table)
    show their control characters (C0, DEL, C1: U+009B is a CSI) as \\xHH
    instead of sending them to the terminal."""
    d = start_daemon({"handlers": {"default": "echo", "echo": {"builtin": "echo"},
                                   "bad": {"exec": ["/bin/sh", "-c",
                                                    "printf 'x\\302\\233z' >&2; exit 1"]}}})
    lines = [{"id": "f\u001bi\u009b", "kind": "bad"}, {"id": "r\u001b", "kind": "no\u009bsuch"}]
    raw = re.compile("[\x00-\x09\x0b-\x1f\x7f\u0080-\u009f]")
    r = run_bytes("submit", "--json", "--wait", target=d,
                  input="".join(json.dumps(x) + "\n" for x in lines).encode())
    out = r.stdout.decode("utf-8")
    assert r.returncode == EXIT_NEGATIVE, (r.returncode, out, r.stderr)
    assert '  1 r\\x1b: unknown kind "no\\xc2\\x9bsuch"' in out, out
    # (the daemon turns the program's C1 into a space: docs/handlers.md)
    assert "  f\\x1bi\\xc2\\x9b: sh exited with status 1: x z" in out, out
    assert not raw.search(out), repr(out)
    for args in (["get", "f\u001bi\u009b"], ["list", "--state", "FAILED"]):
        r = run_bytes(*args, target=d)
        out = r.stdout.decode("utf-8")
        assert r.returncode == EXIT_OK, (args, out, r.stderr)
        assert "f\\x1bi\\xc2\\x9b" in out and "x z" in out, out
        assert not raw.search(out), repr(out)
        # The escapes count in the columns: the cells after the id line up.
        header, row = out.splitlines()[:2]
        assert row.index("FAILED") == header.index("STATE"), out
