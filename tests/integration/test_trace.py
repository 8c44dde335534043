"""
W3C trace context across the daemon: a doSomething call's traceparent and
tracestate metadata (or an item's params of those names) stay with each
item, reach its handler (exec: TRACEPARENT/TRACESTATE in the environment;
modules: the item's fields; built-ins: a debug line), show in the access
log and in getItems, survive the journal and live in Redis in cluster mode.
Malformed ones are ignored with a debug line naming what was wrong.
"""
import signal

import grpc
import pytest

from conftest import SUCCEEDED, pb, wait_for
from test_cli import explain
from test_cli import run as run_cli_client
from test_cluster import cluster_name, redis, start_instance  # noqa: F401 (fixture)
from test_handlers import test_modules  # noqa: F401 (fixture)
from test_journal import kill_everything

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TS = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
TP2 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
TS2 = "vendor@tenant=x"

SHOW = {"exec": ["sh", "-c", 'printf "%s|%s" "$TRACEPARENT" "$TRACESTATE"']}


def config(tmp_path, **extra):
    base = {"log": {"level": "debug", "access": str(tmp_path / "access.log")},
            "handlers": {"default": "echo", "echo": {"builtin": "echo"}, "show": SHOW}}
    base.update(extra)
    return base


def submit(client, items, metadata=()):
    return client.stub.doSomething((pb.WorkItem(**i) for i in items), timeout=30,
                                   metadata=list(metadata))


def finals(client, ids, timeout=30):
    reply = client.get_items(ids, wait=True, with_results=True, timeout=timeout)
    assert not reply.not_found, reply.not_found
    by_id = {it.id: it for it in reply.items}
    for i in ids:
        assert by_id[i].state == SUCCEEDED, (i, by_id[i].error)
    return by_id


def test_metadata_reaches_exec_access_log_and_get_items(start_daemon, tmp_path):
    d = start_daemon(config(tmp_path))
    c = d.client()
    reply = submit(c, [
        {"id": "plain", "kind": "show"},
        {"id": "override", "kind": "show", "params": {"traceparent": TP2, "tracestate": TS2}},
        {"id": "state-only", "kind": "show", "params": {"tracestate": TS2}},
        {"id": "bad-param", "kind": "show", "params": {"traceparent": "00-xyz"}},
        {"id": "builtin", "kind": "echo", "payload": b"hi"},
    ], metadata=[("traceparent", TP), ("tracestate", TS)])
    assert (reply.accepted, reply.rejected) == (5, 0), reply
    got = finals(c, ["plain", "override", "state-only", "bad-param", "builtin"])
    assert got["plain"].result == f"{TP}|{TS}".encode()
    assert got["override"].result == f"{TP2}|{TS2}".encode()
    assert got["state-only"].result == f"{TP}|{TS2}".encode()
    assert got["bad-param"].result == f"{TP}|{TS}".encode()
    assert (got["override"].traceparent, got["override"].tracestate) == (TP2, TS2)
    for i in ("plain", "bad-param", "builtin"):
        assert (got[i].traceparent, got[i].tracestate) == (TP, TS), i
    assert got["builtin"].result == b"hi"
    # The malformed param is named; the built-in logs the trace it ran in.
    d.wait_log(r'item "bad-param": param traceparent is not 55 characters long')
    d.wait_log(rf'echo: item "builtin" \(attempt 1\) traceparent={TP} tracestate=')
    access = tmp_path / "access.log"
    wait_for(lambda: access.exists() and f"traceparent={TP}" in access.read_text(), 10,
             "the access-log line with the traceparent")
    line = [ln for ln in access.read_text().splitlines() if "traceparent=" in ln][0]
    assert " doSomething OK items=5/0 " in line, line

    # No metadata: no trace anywhere, and no traceparent= in the access log.
    reply = submit(c, [{"id": "untraced", "kind": "show"}])
    got = finals(c, ["untraced"])
    assert got["untraced"].result == b"|"
    assert (got["untraced"].traceparent, got["untraced"].tracestate) == ("", "")


@pytest.mark.parametrize("bad, why", [
    ("00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01", "upper-case"),
    ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "version other than 00"),
    ("00-00000000000000000000000000000000-b7ad6b7169203331-01", "all-zero trace-id"),
    ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", "all-zero parent-id"),
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-", "not 55 characters"),
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", "not 55 characters"),
    ("00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01", "VERSION-TRACEID"),
    ("00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01", "not a hex digit"),
    ("", "does not start with a version"),
])
def test_malformed_traceparent_is_ignored_with_a_debug_line(start_daemon, tmp_path, bad, why):
    d = start_daemon(config(tmp_path))
    c = d.client()
    reply = submit(c, [{"id": "m", "kind": "show"}], metadata=[("traceparent", bad),
                                                               ("tracestate", TS)])
    assert reply.accepted == 1
    got = finals(c, ["m"])
    assert got["m"].result == b"|"
    assert got["m"].traceparent == "" and got["m"].tracestate == ""
    d.wait_log(rf"doSomething from \S+: traceparent [^\n]*{why}[^\n]*; ignored")


@pytest.mark.parametrize("bad, why", [
    ("a=" + "x" * 511, "longer than 512 bytes"),
    (",".join(f"k{i}=v" for i in range(33)), "more than 32 list-members"),
    ("k=v,k=w", "a key twice"),
    ("Upper=v", "invalid key"),
    ("k=v=w", "invalid value"),
    ("k=", "invalid value"),
    ("novalue", "not KEY=VALUE"),
])
def test_malformed_tracestate_is_dropped_traceparent_kept(start_daemon, tmp_path, bad, why):
    d = start_daemon(config(tmp_path))
    c = d.client()
    reply = submit(c, [{"id": "m", "kind": "show"}], metadata=[("traceparent", TP),
                                                               ("tracestate", bad)])
    assert reply.accepted == 1
    got = finals(c, ["m"])
    assert got["m"].result == f"{TP}|".encode()
    assert (got["m"].traceparent, got["m"].tracestate) == (TP, "")
    d.wait_log(rf"doSomething from \S+: tracestate [^\n]*{why}[^\n]*; ignored")


def test_tracestate_at_the_limits_and_in_several_entries(start_daemon, tmp_path):
    d = start_daemon(config(tmp_path))
    c = d.client()
    at_limit = "a=" + "x" * 256 + ",b=" + "y" * 251          # 512 bytes, values of 256
    assert len(at_limit) == 512
    members = ",".join(f"k{i}=v" for i in range(32))
    reply = submit(c, [{"id": "limit", "kind": "show"}],
                   metadata=[("traceparent", TP), ("tracestate", at_limit)])
    assert reply.accepted == 1
    reply = submit(c, [{"id": "members", "kind": "show"}],
                   metadata=[("traceparent", TP), ("tracestate", members)])
    assert reply.accepted == 1
    # Two tracestate entries are one list (as two HTTP headers would be).
    reply = submit(c, [{"id": "two", "kind": "show"}],
                   metadata=[("traceparent", TP), ("tracestate", "a=1"), ("tracestate", "b=2")])
    assert reply.accepted == 1
    # Two traceparents: neither.
    reply = submit(c, [{"id": "twice", "kind": "show"}],
                   metadata=[("traceparent", TP), ("traceparent", TP2)])
    assert reply.accepted == 1
    got = finals(c, ["limit", "members", "two", "twice"])
    assert got["limit"].tracestate == at_limit
    assert got["members"].tracestate == members
    assert got["two"].tracestate == "a=1,b=2"
    assert got["twice"].traceparent == ""
    d.wait_log(r"traceparent appears more than once; ignored")
    # A param over the limit is rejected like any param only past
    # DS_PARAM_VALUE_MAX; a malformed one is ignored.
    reply = submit(c, [{"id": "p", "kind": "echo", "params": {"tracestate": "a=" + "x" * 600}}],
                   metadata=[("traceparent", TP), ("tracestate", TS)])
    assert reply.accepted == 1
    got = finals(c, ["p"])
    assert (got["p"].traceparent, got["p"].tracestate) == (TP, TS)
    d.wait_log(r'item "p": param tracestate is longer than 512 bytes; ignored')
    assert d.client().health() == b"\x08\x01"


def test_cli_get_shows_the_trace(start_daemon, tmp_path):
    d = start_daemon(config(tmp_path))
    c = d.client()
    submit(c, [{"id": "g", "kind": "echo"}], metadata=[("traceparent", TP), ("tracestate", TS)])
    finals(c, ["g"])
    r = run_cli_client("get", "--json", "g", target=d)
    assert r.returncode == 0, explain(r)
    assert f'"traceparent":"{TP}","tracestate":"{TS}"' in r.stdout, r.stdout
    r = run_cli_client("get", "--trace", "g", target=d)
    assert r.returncode == 0, explain(r)
    header, row = r.stdout.splitlines()[:2]
    assert "TRACEPARENT" in header.split() and TP in row.split(), r.stdout


def test_module_handler_sees_the_trace(start_daemon, tmp_path, test_modules):  # noqa: F811
    d = start_daemon(config(tmp_path, handlers={"default": "echo", "echo": {"builtin": "echo"},
                                                "t": {"module": str(test_modules["ok"])}}))
    c = d.client()
    submit(c, [{"id": "mod", "kind": "t", "params": {"trace": "1"}}],
           metadata=[("traceparent", TP)])
    submit(c, [{"id": "mod-none", "kind": "t", "params": {"trace": "1"}}])
    got = finals(c, ["mod", "mod-none"])
    assert got["mod"].result == f"traceparent={TP}".encode()
    assert got["mod-none"].result == b"traceparent=(none)"


@pytest.mark.deadline(90)
def test_journal_keeps_the_trace_of_live_and_final_items(start_daemon, tmp_path):
    journal = tmp_path / "journal"
    cfg = config(tmp_path, queue={"journal": str(journal)})
    d1 = start_daemon(cfg, name="first")
    c1 = d1.client()
    # Delayed: still live (its ACCEPT only) when the power goes.
    reply = submit(c1, [{"id": "live", "kind": "show", "delay_ms": 3000},
                        {"id": "done", "kind": "show"}],
                   metadata=[("traceparent", TP), ("tracestate", TS)])
    assert reply.accepted == 2
    finals(c1, ["done"])
    kill_everything(d1)

    d2 = start_daemon(cfg, name="second")
    c2 = d2.client()
    got = finals(c2, ["live", "done"])
    assert got["live"].result == f"{TP}|{TS}".encode()
    for i in ("live", "done"):
        assert (got[i].traceparent, got[i].tracestate) == (TP, TS), i
    # A clean stop, then a start: the finals come back from their DONE records.
    assert d2.stop(signal.SIGTERM) == 0
    d3 = start_daemon(cfg, name="third")
    d3.wait_log(r"journal: took over .* finals known again")
    got = finals(d3.client(), ["live", "done"])
    for i in ("live", "done"):
        assert (got[i].traceparent, got[i].tracestate) == (TP, TS), i


@pytest.mark.deadline(90)
def test_cluster_keeps_the_trace(redis, start_daemon, tmp_path):  # noqa: F811
    name = cluster_name()
    a = start_instance(start_daemon, redis, name, "a",
                       overrides={"handlers": {"default": "echo", "echo": {"builtin": "echo"},
                                               "show": SHOW}, "log": {"level": "debug"}})
    c = a.client()
    reply = submit(c, [{"id": "c1", "kind": "show"},
                       {"id": "c2", "kind": "show", "priority": 5},
                       {"id": "c3", "kind": "show", "delay_ms": 300}],
                   metadata=[("traceparent", TP), ("tracestate", TS)])
    assert reply.accepted == 3
    got = finals(c, ["c1", "c2", "c3"])
    for i in ("c1", "c2", "c3"):
        assert got[i].result == f"{TP}|{TS}".encode(), i
        assert (got[i].traceparent, got[i].tracestate) == (TP, TS), i
    # The listing reads the same hash fields.
    listed = {it.id: it for it in c.get_items(limit=50).items}
    assert listed["c1"].traceparent == TP and listed["c1"].tracestate == TS
    # An item without a trace has none in its hash.
    submit(c, [{"id": "c4", "kind": "show"}])
    got = finals(c, ["c4"])
    assert (got["c4"].result, got["c4"].traceparent) == (b"|", "")


def test_a_work_item_naming_the_trace_fields_itself_is_checked(start_daemon, tmp_path):
    """Fields 1000/1001 of a WorkItem (reserved: where the daemon keeps the
    trace) are taken only when valid, as a binary upgrade's handover sends
    them; anything else there is dropped."""
    d = start_daemon(config(tmp_path))
    c = d.client()
    call = c.channel.stream_unary(
        "/com.agrounds.dosomething.v1.DoSomethingService/doSomething",
        request_serializer=lambda b: b, response_deserializer=pb.SubmitReply.FromString)

    def field(number, text):
        data = text.encode()
        tag = (number << 3) | 2
        out = bytearray()
        for v in (tag, len(data)):
            while v >= 0x80:
                out.append((v & 0x7f) | 0x80)
                v >>= 7
            out.append(v)
        return bytes(out) + data

    good = pb.WorkItem(id="f-good", kind="show").SerializeToString() + \
        field(1000, TP) + field(1001, TS)
    bad = pb.WorkItem(id="f-bad", kind="show").SerializeToString() + \
        field(1000, "00-nope") + field(1001, "\x01")
    reply = call(iter([good, bad]), timeout=30)
    assert reply.accepted == 2, reply
    got = finals(c, ["f-good", "f-bad"])
    assert got["f-good"].result == f"{TP}|{TS}".encode()
    assert got["f-bad"].result == b"|" and got["f-bad"].traceparent == ""
    d.wait_log(r"item \"f-bad\": the WorkItem's traceparent field is not 55 characters long")
    # Metadata past gRPC's own bound (8 KiB) ends that call, and gRPC closes
    # its connection: the daemon serves on. (A new connection: grpcio shares
    # one between channels, and a call sent on the closing one fails.)
    try:
        c.stub.doSomething(iter([]), timeout=5, metadata=[("traceparent", "x" * 8000)])
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
    fresh = d.client(options=[("grpc.use_local_subchannel_pool", 1)])
    assert fresh.health(timeout=10, wait_for_ready=True) == b"\x08\x01"


def test_a_retried_item_keeps_its_trace(start_daemon, tmp_path):
    d = start_daemon(config(tmp_path, handlers={
        "default": "echo", "echo": {"builtin": "echo"},
        "fail": {"exec": ["sh", "-c", 'echo "in $TRACEPARENT" >&2; exit 3']}}))
    c = d.client()
    submit(c, [{"id": "r", "kind": "fail", "max_attempts": 1}],
           metadata=[("traceparent", TP), ("tracestate", TS)])
    first = c.get_items(["r"], wait=True, timeout=30).items[0]
    assert first.state == pb.FAILED and f"in {TP}" in first.error, first.error
    assert c.retry_items(["r"]).requeued == 1
    wait_for(lambda: c.get_items(["r"]).items[0].state == pb.FAILED and
             c.get_items(["r"]).items[0].last_seq > first.last_seq, 20, "the retry's end")
    again = c.get_items(["r"]).items[0]
    assert f"in {TP}" in again.error and (again.traceparent, again.tracestate) == (TP, TS)


@pytest.mark.deadline(90)
def test_a_binary_upgrade_hands_the_trace_over(start_daemon, monkeypatch, tmp_path):
    import shutil

    import conftest
    from conftest import kill_tree
    binary = tmp_path / "dosomethingd"
    shutil.copy(conftest.BINARY, binary)
    monkeypatch.setattr(conftest, "BINARY", str(binary))
    slow = {"exec": ["sh", "-c", 'sleep 0.3; printf "%s|%s" "$TRACEPARENT" "$TRACESTATE"']}
    d = start_daemon(config(tmp_path, workers={"count": 1}, shutdown_timeout="2s",
                            handlers={"default": "echo", "echo": {"builtin": "echo"},
                                      "slow": slow}))
    c = d.client()
    ids = [f"u{i}" for i in range(12)]
    reply = submit(c, [{"id": i, "kind": "slow"} for i in ids],
                   metadata=[("traceparent", TP), ("tracestate", TS)])
    assert reply.accepted == 12
    old_master, new_master = d.master_pid, None
    try:
        d.send_signal(signal.SIGUSR2)
        wait_for(lambda: d.read_pid_file() not in (None, old_master), 10, "the new master")
        new_master = d.read_pid_file()
        d.known_pids.add(new_master)
        assert d.wait_exit(timeout=20) == 0
        d.wait_log(r"handover: \d+ items handed over to the new instance")
        nc = conftest.Client(d.address)
        try:
            known = nc.get_items(ids, wait=True, with_results=True, timeout=30)
            assert known.items, "nothing was handed over"
            for it in known.items:
                assert it.state == SUCCEEDED, (it.id, it.error)
                assert (it.traceparent, it.tracestate) == (TP, TS), it.id
                assert it.result == f"{TP}|{TS}".encode(), it.id
        finally:
            nc.close()
    finally:
        if new_master is not None:
            kill_tree(new_master)
