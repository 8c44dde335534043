"""
The status endpoint (status.listen): /metrics read with prometheus_client's
own text parser, /status JSON, /healthz, 404/405/HEAD, failing to bind at
start, and moving it on reload.

Needs python3-prometheus-client (Debian).
"""
import http.client
import json
import os
import re
import signal
import socket

import pytest

from conftest import STRICT_DEPS, STARTED, SUCCEEDED, free_port, wait_for

if STRICT_DEPS:     # make test installs it: a missing one is a broken set-up
    import prometheus_client.parser as prometheus_parser
else:
    prometheus_parser = pytest.importorskip(
        "prometheus_client.parser", reason="python3-prometheus-client is not installed")

LATENCY_BOUNDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300]
APPLIED = re.compile(r"grpc \d+: config generation \d+ applied")
KIND_COUNTERS = ("accepted", "rejected", "succeeded", "failed", "retried")


# ---- helpers ---------------------------------------------------------------

def start_with_status(start_daemon, overrides=None, **kwargs):
    """A daemon with status.listen on a free port, kept in d.status_address."""
    address = f"127.0.0.1:{free_port()}"
    d = start_daemon({**(overrides or {}), "status": {"listen": address}}, **kwargs)
    d.status_address = address
    return d


def request(address, path, method="GET", timeout=5):
    """(status, headers {lowercase name: value}, body) of one HTTP request."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def refused(address):
    try:
        request(address, "/healthz", timeout=1)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except OSError:
        return False
    return False


def healthz(address):
    """(status, body), or None if nothing answers."""
    try:
        status, _, body = request(address, "/healthz", timeout=2)
    except OSError:
        return None
    return status, body


class Scrape:
    """One GET /metrics, parsed by prometheus_client."""

    def __init__(self, address):
        status, headers, body = request(address, "/metrics")
        assert status == 200, f"/metrics answered {status}: {body[:200]!r}"
        assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
        self.text = body.decode()
        self.families = {f.name: f for f in prometheus_parser.text_string_to_metric_families(self.text)}
        self.samples = {}
        for family in self.families.values():
            for s in family.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def get(self, name, **labels):
        key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
        assert key in self.samples, f"no sample {name}{labels} in /metrics:\n{self.text}"
        return self.samples[key]

    def labelled(self, name):
        """[(labels, value)] of every sample called name."""
        return [(dict(labels), v) for (n, labels), v in self.samples.items() if n == name]

    def buckets(self, kind):
        """[(le, cumulative count)] of kind's latency histogram, in exposition order."""
        family = self.families["dosomething_item_latency_seconds"]
        return [(s.labels["le"], s.value) for s in family.samples
                if s.name.endswith("_bucket") and s.labels["kind"] == kind]


def delta(after, before, name, **labels):
    return after.get(name, **labels) - before.get(name, **labels)


def status_json(address):
    status, headers, body = request(address, "/status")
    assert status == 200, f"/status answered {status}: {body[:200]!r}"
    assert headers["content-type"] == "application/json", headers
    return json.loads(body)


def reload(d, overrides):
    """Rewrite the config with overrides, SIGHUP, wait until the grpc process applied it."""
    applied = len(APPLIED.findall(d.log_text()))
    d.write_config(overrides)
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: len(APPLIED.findall(d.log_text())) > applied, 10,
             "the grpc process to apply the new config")


# ---- /metrics ----------------------------------------------------------------

def test_metrics_format(start_daemon):
    d = start_with_status(start_daemon, {"workers": {"count": 3}})
    m = Scrape(d.status_address)
    for line in m.text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP dosomething_", "# TYPE dosomething_")), line
        else:
            assert line.startswith("dosomething_"), line
    for name, family in m.families.items():
        assert name.startswith("dosomething_"), name
        assert family.documentation, f"{name} has no HELP"
        assert family.type in ("counter", "gauge", "histogram"), f"{name} is {family.type}"
    expected = {
        "dosomething_items_accepted": "counter", "dosomething_items_rejected": "counter",
        "dosomething_items_succeeded": "counter", "dosomething_items_failed": "counter",
        "dosomething_items_retried": "counter",
        "dosomething_items_rejected_unknown_kind": "counter",
        "dosomething_item_latency_seconds": "histogram",
        "dosomething_queue_depth": "gauge", "dosomething_queue_waiting": "gauge",
        "dosomething_queue_delayed": "gauge",
        "dosomething_queue_capacity": "gauge", "dosomething_worker_in_flight": "gauge",
        "dosomething_subscribers": "gauge", "dosomething_subscribers_dropped": "counter",
        "dosomething_update_seq": "gauge", "dosomething_worker_exits": "counter",
        "dosomething_config_generation": "gauge", "dosomething_calls": "counter",
        "dosomething_process_resident_memory_bytes": "gauge",
        "dosomething_process_cpu_seconds": "counter",
    }
    for name, kind in expected.items():
        assert name in m.families, f"{name} missing; have {sorted(m.families)}"
        assert m.families[name].type == kind, f"{name} is {m.families[name].type}, not {kind}"

    # Every configured kind shows up before its first item.
    for kind in ("echo", "sha256", "sleep"):
        for counter in KIND_COUNTERS:
            assert m.get(f"dosomething_items_{counter}_total", kind=kind) == 0
    assert m.get("dosomething_queue_capacity") == 10000
    assert m.get("dosomething_queue_depth") == 0
    assert m.get("dosomething_config_generation") >= 1

    workers = d.workers()
    in_flight = m.labelled("dosomething_worker_in_flight")
    assert sorted((int(l["slot"]), int(l["pid"])) for l, _ in in_flight) == sorted(workers.items())
    assert all(v == 0 for _, v in in_flight)
    rss = {(l["role"], int(l["pid"])): v
           for l, v in m.labelled("dosomething_process_resident_memory_bytes")}
    expected_procs = {("grpc", d.grpc_pid()), ("master", d.master_pid)} | \
        {("worker", pid) for pid in workers.values()}
    assert set(rss) == expected_procs, f"processes in /metrics {sorted(rss)}"
    assert all(v > 0 for v in rss.values()), rss
    cpu = {(l["role"], int(l["pid"])) for l, _ in m.labelled("dosomething_process_cpu_seconds_total")}
    assert cpu == expected_procs


def test_counters_move_by_exactly_the_items_run(start_daemon):
    d = start_with_status(start_daemon)
    client = d.client()
    sub = client.subscribe(sync=True)      # its probe items run before the first scrape
    before = Scrape(d.status_address)
    items = [{"id": f"e{i}", "kind": "echo", "payload": b"e"} for i in range(7)] + \
            [{"id": f"h{i}", "kind": "sha256", "payload": b"h"} for i in range(4)]
    reply = client.submit(items)
    assert (reply.accepted, reply.rejected) == (11, 0), reply
    finals = sub.wait_final([i["id"] for i in items])
    assert all(u.state == SUCCEEDED for u in finals.values())
    after = Scrape(d.status_address)

    for kind, n in (("echo", 7), ("sha256", 4), ("sleep", 0)):
        for counter, want in (("accepted", n), ("succeeded", n), ("failed", 0),
                              ("rejected", 0), ("retried", 0)):
            got = delta(after, before, f"dosomething_items_{counter}_total", kind=kind)
            assert got == want, f"{counter}{{kind={kind}}} moved by {got}, not {want}"
        assert delta(after, before, "dosomething_item_latency_seconds_count", kind=kind) == n
        assert delta(after, before, "dosomething_item_latency_seconds_bucket",
                     kind=kind, le="+Inf") == n
    assert delta(after, before, "dosomething_items_rejected_unknown_kind_total") == 0
    assert delta(after, before, "dosomething_calls_total", method="doSomething") == 1
    assert delta(after, before, "dosomething_calls_total", method="getUpdates") == 0
    assert after.get("dosomething_queue_depth") == 0
    assert after.get("dosomething_subscribers") == 1
    # QUEUED, STARTED, SUCCEEDED each (sha256 with 1 round reports no progress).
    assert delta(after, before, "dosomething_update_seq") == 3 * 11


def test_rejections_are_counted(start_daemon):
    d = start_with_status(start_daemon)
    client = d.client()
    before = Scrape(d.status_address)
    reply = client.submit([
        {"id": "u1", "kind": "no-such-kind"},
        {"id": "u2", "kind": "nor-this-one"},
        {"id": "u3", "kind": "no-such-kind"},
        {"id": "b1", "kind": "sha256", "params": {"rounds": "x"}},
        {"id": "b2", "kind": "sha256", "params": {"bogus": "1"}},
        {"id": "ok", "kind": "echo"},
    ])
    assert (reply.accepted, reply.rejected) == (1, 5), reply
    after = Scrape(d.status_address)
    assert delta(after, before, "dosomething_items_rejected_unknown_kind_total") == 3
    assert delta(after, before, "dosomething_items_rejected_total", kind="sha256") == 2
    assert delta(after, before, "dosomething_items_accepted_total", kind="sha256") == 0
    assert delta(after, before, "dosomething_items_rejected_total", kind="echo") == 0
    assert delta(after, before, "dosomething_items_accepted_total", kind="echo") == 1
    assert not any(labels.get("kind") in ("no-such-kind", "nor-this-one")
                   for labels, _ in after.labelled("dosomething_items_rejected_total")), \
        "a client-chosen kind became a label value"


def test_retry_after_a_worker_is_killed(start_daemon):
    d = start_with_status(start_daemon)
    client = d.client()
    sub = client.subscribe(sync=True)
    before = Scrape(d.status_address)
    item_id = 'k1 "quoted" \\ back\nslash é😀'       # and /status escapes it
    reply = client.submit([{"id": item_id, "kind": "sleep", "params": {"ms": "1500"}}])
    assert reply.accepted == 1, reply
    pid = sub.wait_state(item_id, STARTED, timeout=5).worker_pid

    during = Scrape(d.status_address)
    assert during.get("dosomething_queue_depth") == 1
    assert during.get("dosomething_queue_waiting") == 0
    slot = {p: s for s, p in d.workers().items()}[pid]
    assert during.get("dosomething_worker_in_flight", pid=pid, slot=slot) == 1
    rows = {p["pid"]: p for p in status_json(d.status_address)["processes"]}
    assert rows[pid]["current_item"] == item_id and rows[pid]["in_flight"] == 1, rows[pid]

    os.kill(pid, signal.SIGKILL)
    final = sub.wait_final([item_id], timeout=15)[item_id]
    assert final.state == SUCCEEDED and final.attempt == 2, final
    after = Scrape(d.status_address)
    for counter, want in (("accepted", 1), ("retried", 1), ("succeeded", 1), ("failed", 0)):
        got = delta(after, before, f"dosomething_items_{counter}_total", kind="sleep")
        assert got == want, f"{counter}{{kind=sleep}} moved by {got}, not {want}"
    assert delta(after, before, "dosomething_worker_exits_total") == 1
    assert after.get("dosomething_queue_depth") == 0
    assert str(pid) not in {l["pid"] for l, _ in after.labelled("dosomething_worker_in_flight")}


def test_latency_histogram_is_cumulative(start_daemon):
    d = start_with_status(start_daemon)
    client = d.client()
    items = [{"id": f"s{ms}", "kind": "sleep", "params": {"ms": str(ms)}} for ms in (1, 30, 300)]
    client.run_items(items)
    m = Scrape(d.status_address)
    buckets = m.buckets("sleep")
    les = [le for le, _ in buckets]
    assert les[-1] == "+Inf" and [float(le) for le in les[:-1]] == LATENCY_BOUNDS, les
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"buckets not cumulative: {buckets}"
    assert counts[-1] == m.get("dosomething_item_latency_seconds_count", kind="sleep") == 3
    assert dict(buckets)["0.0005"] == 0, buckets                 # each slept >= 1 ms
    assert dict(buckets)["0.25"] <= 2, buckets                   # one slept 300 ms
    assert m.get("dosomething_item_latency_seconds_sum", kind="sleep") >= 0.331

    latency = status_json(d.status_address)["kinds"]["sleep"]["latency_seconds"]
    assert latency["count"] == 3
    assert [(b["le"], b["count"]) for b in latency["buckets"]] == \
        [(float(le), v) for le, v in buckets[:-1]]


# ---- /status -----------------------------------------------------------------

def test_status_json(start_daemon):
    d = start_with_status(start_daemon, {"workers": {"count": 3}})
    client = d.client()
    client.run_items([{"id": f"j{i}", "kind": "echo"} for i in range(5)])
    doc = status_json(d.status_address)

    for key, kind in (("version", str), ("generation", int), ("config_reloads", int),
                      ("draining", bool), ("stopping", bool), ("queue", dict),
                      ("subscribers", dict), ("update_seq", int), ("worker_exits", int),
                      ("calls", dict), ("rejected_unknown_kind", int), ("kinds", dict),
                      ("processes", list)):
        assert isinstance(doc.get(key), kind), f"{key}: {doc.get(key)!r}"
    assert doc["draining"] is False and doc["generation"] >= 1
    assert doc["queue"] == {"depth": 0, "waiting": 0, "delayed": 0, "capacity": 10000}
    assert set(doc["kinds"]) == {"echo", "sha256", "sleep"}
    for counters in doc["kinds"].values():
        assert all(isinstance(counters[c], int) for c in KIND_COUNTERS), counters
    assert doc["kinds"]["echo"]["succeeded"] >= 5

    by_role = {}
    for p in doc["processes"]:
        by_role.setdefault(p["role"], []).append(p)
        for key in ("pid", "uptime_seconds", "resident_memory_bytes", "cpu_seconds",
                    "items_done", "current_item"):
            assert key in p, f"{key} missing from {p}"
        assert 0 < p["uptime_seconds"] < 300 and p["resident_memory_bytes"] > 0, p
        assert p["cpu_seconds"] >= 0 and p["current_item"] is None, p
    assert sorted(by_role) == ["grpc", "master", "worker"], by_role
    (grpc_row,), (master_row,) = by_role["grpc"], by_role["master"]
    assert grpc_row["pid"] == d.grpc_pid()
    assert master_row["pid"] == d.master_pid and master_row["items_done"] is None
    assert {p["slot"]: p["pid"] for p in by_role["worker"]} == d.workers()
    # Every item finished went through the grpc process; the workers ran them.
    done = sum(k["succeeded"] + k["failed"] for k in doc["kinds"].values())
    assert grpc_row["items_done"] == done >= 5
    assert sum(p["items_done"] for p in by_role["worker"]) == done
    assert all(p["in_flight"] == 0 and p["retiring"] is False for p in by_role["worker"])
    # The same numbers as /metrics.
    m = Scrape(d.status_address)
    assert m.get("dosomething_items_succeeded_total", kind="echo") == \
        doc["kinds"]["echo"]["succeeded"]
    assert m.get("dosomething_config_generation") == doc["generation"]


# ---- /healthz, paths, methods ------------------------------------------------

def test_paths_and_methods(start_daemon):
    d = start_with_status(start_daemon)
    a = d.status_address
    status, headers, body = request(a, "/healthz")
    assert (status, body) == (200, b"ok\n") and headers["content-type"].startswith("text/plain")
    assert request(a, "/metrics?x=1")[0] == 200
    for path in ("/metric", "/metrics/", "/status.json", "/healthz/x", "/favicon.ico", "/index.html"):
        status, _, body = request(a, path)
        assert (status, body) == (404, b"not found\n"), f"GET {path}: {status} {body!r}"
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/metrics", "/status", "/healthz"):
            status, headers, _ = request(a, path, method)
            assert status == 405, f"{method} {path}: {status}"
            assert headers.get("allow") == "GET, HEAD", f"{method} {path}: {headers}"
        assert request(a, "/nowhere", method)[0] == 404

    # HEAD: the headers of GET, no body; the connection stays usable.
    host, port = a.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        for path in ("/metrics", "/status", "/healthz"):
            conn.request("HEAD", path)
            r = conn.getresponse()
            assert r.status == 200 and int(r.getheader("Content-Length")) > 0
            assert r.read() == b""
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"ok\n")
    finally:
        conn.close()


@pytest.mark.deadline(60)
def test_healthz_503_during_graceful_stop(start_daemon):
    d = start_with_status(start_daemon, {"shutdown_timeout": "3s"})
    a = d.status_address
    assert healthz(a) == (200, b"ok\n")
    client = d.client()
    sub = client.subscribe(sync=True)
    assert client.submit([{"id": "long", "kind": "sleep", "params": {"ms": "30000"}}]).accepted == 1
    sub.wait_state("long", STARTED, timeout=5)
    d.send_signal(signal.SIGQUIT)
    assert wait_for(lambda: healthz(a) == (503, b"draining\n"), 5, "/healthz 503") is True
    doc = status_json(a)
    assert doc["draining"] is True and doc["queue"]["depth"] == 1, doc
    assert Scrape(a).get("dosomething_draining") == 1
    d.wait_exit(timeout=15)
    assert refused(a), "the status endpoint outlived the daemon"


# ---- binding ---------------------------------------------------------------------

def test_status_listen_in_use_at_start_is_fatal(start_daemon):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        d = start_daemon({"status": {"listen": address}}, wait=False)
        status = d.wait_exit(timeout=15)
    assert status == 1, f"master exited {status}; log:\n{d.log_tail()}"
    log = d.log_text()
    # Held without SO_REUSEPORT: the master's check finds it before any bind.
    assert f"status.listen {address} is in use by another process (bind() without " \
           "SO_REUSEPORT failed: Address already in use); not starting" in log, log


def test_status_listen_not_of_this_machine_at_start_is_fatal(start_daemon):
    """An address no interface has (TEST-NET-1): the grpc process's bind
    fails, a boot error (status 2): the master does not respawn it."""
    address = f"192.0.2.1:{free_port()}"
    d = start_daemon({"status": {"listen": address}}, wait=False)
    status = d.wait_exit(timeout=15)
    assert status == 1, f"master exited {status}; log:\n{d.log_tail()}"
    log = d.log_text()
    assert f"status.listen: cannot listen on {address}: bind() failed: Cannot assign " \
           "requested address" in log, log
    assert "exited with status 2" in log, log


@pytest.mark.deadline(90)
def test_reload_moves_the_status_endpoint(start_daemon):
    d = start_with_status(start_daemon)
    first = d.status_address
    generation = status_json(first)["generation"]

    # A new address: bound, then the old one closed.
    port = free_port()
    second = f"127.0.0.1:{port}"
    reload(d, {"status": {"listen": second}})
    wait_for(lambda: healthz(second) == (200, b"ok\n"), 5, f"/healthz on {second}")
    wait_for(lambda: refused(first), 5, f"{first} to close")
    doc = status_json(second)
    assert doc["generation"] == generation + 1 and doc["config_reloads"] == 1, doc
    assert Scrape(second).get("dosomething_config_reloads_total") == 1

    # An address in use: logged, the old one keeps serving.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        reload(d, {"status": {"listen": taken}})
        d.wait_log(rf"reload: status\.listen: cannot listen on {taken}: bind\(\) failed: "
                   rf"Address already in use; keeping {second}")
        assert healthz(second) == (200, b"ok\n")
        assert status_json(second)["generation"] == generation + 2

    # The same port on another host: the old socket gives way to the new one.
    reload(d, {"status": {"listen": f"0.0.0.0:{port}"}})
    d.wait_log(rf"status endpoint listening on 0\.0\.0\.0:{port}")
    assert healthz(second) == (200, b"ok\n")
    assert status_json(second)["generation"] == generation + 3

    # Off, and on again.
    reload(d, {"status": {"listen": False}})
    wait_for(lambda: refused(second), 5, f"{second} to close")
    reload(d, {"status": {"listen": first}})
    wait_for(lambda: healthz(first) == (200, b"ok\n"), 5, f"/healthz on {first}")
    assert status_json(first)["config_reloads"] == 5


@pytest.mark.deadline(90)
def test_reload_resolves_a_status_host_name_without_blocking(start_daemon):
    """On reload a host name in status.listen is looked up off the loop
    (evdns: /etc/hosts, then DNS); a name that does not resolve is logged
    and what served before keeps serving; a name replaced by another reload
    before its answer came is dropped (whichever comes first, the last
    reload's address serves)."""
    d = start_with_status(start_daemon)
    first = d.status_address
    port = free_port()
    named = f"localhost:{port}"
    reload(d, {"status": {"listen": named}})
    d.wait_log(rf"status endpoint listening on localhost:{port} \(127\.0\.0\.1:{port}\)")
    wait_for(lambda: healthz(f"127.0.0.1:{port}") == (200, b"ok\n"), 5, f"/healthz on {named}")
    wait_for(lambda: refused(first), 5, f"{first} to close")

    bad = f"no-such-host.invalid:{free_port()}"
    reload(d, {"status": {"listen": bad}})
    d.wait_log(rf"reload: status\.listen: cannot listen on {re.escape(bad)}: cannot resolve "
               rf"its host name: .*; keeping localhost:{port}", timeout=30)
    assert healthz(f"127.0.0.1:{port}") == (200, b"ok\n")
    client = d.client()
    reply, _ = client.run_items([{"id": "after-bad-name", "kind": "echo", "payload": b"x"}])
    assert reply.accepted == 1

    # Two reloads in a row: the second's address wins.
    reload(d, {"status": {"listen": f"localhost:{free_port()}"}})
    third = f"127.0.0.1:{free_port()}"
    reload(d, {"status": {"listen": third}})
    wait_for(lambda: healthz(third) == (200, b"ok\n"), 10, f"/healthz on {third}")
    doc = status_json(third)
    assert doc["config_reloads"] == 4, doc
