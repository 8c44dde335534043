#!/usr/bin/python3
"""Write the seed corpora under tests/fuzz/corpus/ (checked in; rerun after
changing this file).

    make pystubs && /usr/bin/python3 tests/fuzz/make_seeds.py

config: the shipped config and a few small ones (every section, exec, module,
        tls, unix listen, flow style, and a few that must be refused).
ipc:    3 control bytes (see fuzz_ipc.c), then frames as a peer sends them.
items:  encoded WorkItems and UpdatesRequests (the target decodes every
        input as both).
cli:    lines as a user gives them to `dosomething submit --json` (and
        base64, numbers, durations, state names: the target reads every
        input as all of them).
"""
import os
import shutil
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, os.environ.get("DS_PYSTUBS") or str(REPO / "build" / "py"))
from com.agrounds.dosomething.v1 import do_something_pb2 as pb  # noqa: E402


def write(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# ---- config ----------------------------------------------------------------

CONFIGS = {
    "minimal.yaml": "workers: {count: 2}\n",
    "empty.yaml": "",
    "handlers.yaml": """\
handlers:
  default: sha256
  echo: {builtin: echo}
  sha256: {builtin: sha256, timeout: 1500ms}
  sleep: {builtin: sleep, timeout: 2m}
  wc:
    exec: [/usr/bin/wc, -c]
    timeout: 10s
    env: {LANG: C, "DEBUG": "1"}
    retry_exit_codes: [75, 3, 255]
  off: {exec: [/bin/false], retry_exit_codes: []}
  mod:
    module: lib/example.so
    options: {level: "3", name: x}
""",
    "listen.yaml": """\
grpc:
  listen: ["127.0.0.1:8080", "[::1]:8081", "unix:/tmp/ds.sock", "unix:relative.sock"]
  max_message_size: 16MiB
  tls: {cert: certs/server.pem, key: certs/server.key, client_ca: certs/ca.pem}
status:
  listen: 127.0.0.1:9090
""",
    "everything.yaml": """\
daemon: on
pid_file: /run/ds/ds.pid
user: nobody
log: {level: debug, file: logs/ds.log, access: logs/access.log}
workers:
  count: auto
  prefetch: 8
  max_items: 1000
  cpu_affinity: auto
  nice: -5
  rlimit_nofile: 65536
  core_dumps: off
queue:
  capacity: 1
  on_full: reject
  max_attempts: 1000
  journal: journal/
  journal_sync: 100ms
updates: {history: 1, subscriber_buffer: 1}
cluster: {redis: "redis://127.0.0.1:6379", name: "ds-test"}
respawn: {backoff_min: 1ms, backoff_max: 1h, stable_after: 0s, crash_limit: 1}
shutdown_timeout: 0ms
""",
    "strings.yaml": 'user: "\\u00e9t\\xe9 \\t \\"q\\" \\\\"\npid_file: \'it\'\'s.pid\'\n'
                    'log: {file: "caf\\u00e9/\\u2028.log"}\n',
    "bad-types.yaml": "workers: {count: many, prefetch: -1}\nqueue: {capacity: 1KiB, on_full: maybe}\n",
    "bad-syntax.yaml": "workers:\n  count: 2\n bad indent: [\n",
    "bad-unknown.yaml": "workerz: 1\nlog: {levle: info}\nhandlers: {x: {builtin: nope}}\n",
    "bad-anchor.yaml": "log: &a {level: info}\nworkers: *a\n",
    "bad-duplicate.yaml": "daemon: off\ndaemon: on\nhandlers: {default: missing}\n",
    "bad-tag.yaml": "shutdown_timeout: !!str 5s\n---\nother: doc\n",
}


def make_config():
    shutil.copy(REPO / "conf" / "dosomething.yaml", HERE / "corpus" / "config" / "dosomething.yaml")
    for name, text in CONFIGS.items():
        write("config", name, text)


# ---- ipc -------------------------------------------------------------------

IPC_WORKER_ATTACH, IPC_WORKER_EXITED, IPC_WORKER_RETIRE, IPC_CONFIG, IPC_DRAIN, \
    IPC_REOPEN_LOGS, IPC_READY, IPC_KILL_WORKER, IPC_SEQ_RESERVE, IPC_FATAL = range(1, 11)
IPC_ITEM, IPC_UPDATE = 64, 65
IPC_FLAG_FD = 1


def frame(ftype, body=b"", flags=0, length=None):
    return struct.pack("<IHH", len(body) if length is None else length, ftype, flags) + body


def control(max_body, close=True, chunk=0):
    return bytes([max_body // 4, 1 if close else 0, chunk])


def ipc_item(key, attempt, kind, item):
    return struct.pack("<QII", key, attempt, len(kind)) + kind + item.SerializeToString()


def ipc_update(key, attempt, state, progress=0.0, extra=b""):
    return struct.pack("<QIB3xfI", key, attempt, state, progress, 0) + extra


def make_ipc():
    item = pb.WorkItem(id="a1", kind="sha256", payload=b"abc", params={"rounds": "3"})
    worker = struct.pack("<iIQ", 4711, 3, 2)
    seeds = {
        "one-item": control(1020) + frame(IPC_ITEM, ipc_item(7, 1, b"sha256", item)),
        "updates": control(256, chunk=5) + b"".join(
            frame(IPC_UPDATE, ipc_update(7, 1, s, p, r))
            for s, p, r in ((2, 0.0, b""), (3, 0.5, b""), (4, 1.0, b"\x01" * 32))),
        "control": control(1020, close=False) + frame(IPC_READY) + frame(IPC_SEQ_RESERVE,
            struct.pack("<Q", 65536)) + frame(IPC_WORKER_EXITED, worker + b"killed by signal 9")
            + frame(IPC_CONFIG, struct.pack("<Q", 2) + b"workers: {count: 3}\n"),
        # A retryable end (RETRYING = 6) with its error, and one with none.
        "updates-retrying": control(256) + frame(IPC_UPDATE, ipc_update(
            7, 1, 6, 0.0, b"sh exited with status 75 (retryable): busy")) + frame(
            IPC_UPDATE, ipc_update(8, 2, 6)),
        "truncated": control(64) + frame(IPC_UPDATE, b"x" * 10)[:12],
        "oversized": control(16) + frame(IPC_UPDATE, b"y" * 17),
        "unknown-type": control(64) + frame(IPC_READY) + frame(20) + frame(IPC_READY),
        "bad-flags": control(64) + frame(IPC_REOPEN_LOGS, flags=0x8000),
        "fd-missing": control(64) + frame(IPC_WORKER_ATTACH, worker, flags=IPC_FLAG_FD),
        "fatal": control(64) + frame(IPC_FATAL, b"boom") + frame(IPC_READY),
        "drain-frees": control(64, chunk=1) + frame(IPC_READY) + frame(IPC_DRAIN) + frame(IPC_READY),
        "zero-max": control(0) + frame(IPC_READY) + frame(IPC_DRAIN) + frame(IPC_ITEM, b"z"),
        "garbage": control(1020) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    for name, data in seeds.items():
        write("ipc", name, data)


# ---- items -----------------------------------------------------------------

def make_items():
    seeds = {
        "echo": pb.WorkItem(id="e1", kind="echo", payload=b"hello", batch="b1"),
        "default-kind": pb.WorkItem(payload=b"no kind, no id"),
        "sha256": pb.WorkItem(id="s1", kind="sha256", payload=b"abc", params={"rounds": "100"}),
        "sha256-bad": pb.WorkItem(id="s2", kind="sha256", params={"rounds": "0x10"}),
        "sleep": pb.WorkItem(id="z1", kind="sleep", params={"ms": "25", "steps": "5"},
                             timeout_ms=1000, max_attempts=5),
        "sleep-unknown-param": pb.WorkItem(kind="sleep", params={"seconds": "1"}),
        "exec-params": pb.WorkItem(kind="cat", params={"a-b": "1", "A_B": "2", "c": "3"}),
        "unknown-kind": pb.WorkItem(id="u1", kind="nope", payload="\u00e9t\u00e9\t\x01".encode()),
        "updates-all": pb.UpdatesRequest(),
        "updates-replay": pb.UpdatesRequest(replay=True, after_seq=12345),
        "updates-filter": pb.UpdatesRequest(item_ids=["b", "a", "c", "a"], kinds=["echo", "sleep"],
                                            states=[pb.SUCCEEDED, pb.FAILED], batches=["b1"]),
        "updates-bad-state": pb.UpdatesRequest(states=[pb.STATE_UNSPECIFIED]),
    }
    for name, msg in seeds.items():
        write("items", name, msg.SerializeToString())
    # A state beyond the enum (open enums keep it) and invalid UTF-8 text.
    write("items", "updates-state-99", b"\x28\x63")
    write("items", "bad-utf8", b"\xc3\x28\xed\xa0\x80\xf4\x90\x80\x80\x7f")


# ---- cli -------------------------------------------------------------------

CLI_SEEDS = {
    "item-full": '{"id": "a1", "kind": "echo", "payload": "hello", "batch": "b", '
                 '"timeout_ms": 5000, "max_attempts": 3, "priority": -7, "delay_ms": 0, '
                 '"params": {"rounds": 10, "verbose": true, "name": "x"}}',
    "item-b64": '{"payload_b64": "AAEC/w==", "kind": "sha256"}',
    "item-null": '{"id": null, "payload": null, "params": null}',
    "item-escapes": '{"payload": "\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/\\b\\f\\r"}',
    "item-nul-id": '{"id": "a\\u0000b"}',
    "item-unknown-key": '{"idd": "x"}',
    "item-twice": '{"id": "a", "id": "b"}',
    "item-both-payloads": '{"payload": "a", "payload_b64": "YQ=="}',
    "item-big-numbers": '{"priority": -2147483649, "timeout_ms": 4294967296, '
                        '"delay_ms": 1e3, "max_attempts": 18446744073709551616}',
    "item-param-twice": '{"params": {"a": 1, "a": 2}}',
    "item-utf8-key": '{"\u00e9t\u00e9": 1, "params": {"\u00e9": [1]}}',
    "json-array": '[1, -0.5e+10, "s", true, false, null, {}, []]',
    "json-deep": "[" * 40 + "]" * 40,
    "json-surrogates": '"\\ud800\\udc00 \\udfff \\ud800x"',
    "json-bad-utf8": b'{"payload": "\xc3\x28\xed\xa0\x80\xf4\x90\x80\x80"}',
    "line-nul": b"plain\x00line",
    "b64-unpadded": "YWJjZA",
    "b64-bad-tail": "YR==",
    "u64-max": "18446744073709551615",
    "u64-over": "18446744073709551616",
    "duration-ms": "500ms",
    "duration-h": "2562047788015h",
    "duration-zero": "0",
    "state": "succeeded",
}


def make_cli():
    for name, text in CLI_SEEDS.items():
        write("cli", name, text)


if __name__ == "__main__":
    (HERE / "corpus" / "config").mkdir(parents=True, exist_ok=True)
    make_config()
    make_ipc()
    make_items()
    make_cli()
    for t in ("config", "ipc", "items", "cli"):
        print(t, len(list((HERE / "corpus" / t).iterdir())), "seeds")
