"""
The status page's endpoints (issue 18, the page): GET / (the embedded page),
/rates, /items/ID, /items?state=&kind=&batch=&limit=&page=, /batches and
what /status gained (per-worker current kind and running time, latency
quantiles, the last reload's outcome), in memory, journal and cluster
modes; what they answer must be what getItems answers. Then the ways to
break them: bad ids (invalid UTF-8, NUL, over the id length), bad state
names, limits 0 and over the maximum, garbage and overflowing page tokens,
a 100-connection burst, and a client that never reads.

The page in a real browser is test_dashboard.py.
"""
import http.client
import json
import re
import signal
import socket
import threading
import urllib.parse
import uuid

import pytest

from test_cluster import redis  # noqa: F401 (a fixture, for cluster mode)
from conftest import CANCELLED, FAILED, SERVING, free_port, http_get, wait_for

MODES = pytest.mark.parametrize("mode", ["memory", "journal", "cluster"])
HANDLERS = {"default": "echo", "echo": {"builtin": "echo"}, "sleep": {"builtin": "sleep"},
            "bad": {"exec": ["sh", "-c", 'echo "bad input" >&2; exit 3']}}


def http_request(address, path, method="GET", timeout=10):
    """(status, headers {lowercase: value}, body bytes) of one request."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def get_json(address, path):
    status, headers, body = http_request(address, path)
    assert status == 200, f"GET {path}: {status} {body[:300]!r}"
    assert headers["content-type"] == "application/json", headers
    return json.loads(body)


def start_mode(mode, start_daemon, tmp_path, request_fixture, workers=2, overrides=None):
    """A daemon of MODE with status.listen on a free port (d.status_address)."""
    address = f"127.0.0.1:{free_port()}"
    config = {"handlers": HANDLERS, "status": {"listen": address}, "workers": {"count": workers},
              **(overrides or {})}
    if mode == "journal":
        config["queue"] = {"journal": str(tmp_path / "journal")}
    if mode == "cluster":
        from test_cluster import cluster_config, cluster_name, wait_serving
        redis = request_fixture.getfixturevalue("redis")
        config = {**config, **cluster_config(redis, cluster_name(), workers=workers)}
        d = wait_serving(start_daemon(config))
    else:
        d = start_daemon(config)
    d.status_address = address
    return d


def make_items(client, tag):
    """Echo items (text and binary), FAILED items and a CANCELLED one, in
    batches; returns their ids by what they are."""
    ok = [f"ok-{tag}-{i}" for i in range(5)]
    bad = [f"bad-{tag}-{i}" for i in range(3)]
    binary = f"bin-{tag}"
    items = ([{"id": i, "kind": "echo", "batch": f"ok-{tag}", "payload": f"hello {i}".encode()}
              for i in ok] +
             [{"id": binary, "kind": "echo", "batch": f"ok-{tag}", "payload": bytes(range(256)) * 2}] +
             [{"id": i, "kind": "bad", "batch": f"bad-{tag}", "payload": b"x"} for i in bad])
    client.run_items(items)
    cancelled = f"cancelled-{tag}"
    reply = client.submit([{"id": cancelled, "kind": "echo", "batch": f"bad-{tag}",
                            "payload": b"later", "delay_ms": 600000}])
    assert reply.accepted == 1, reply
    client.cancel_items([cancelled])
    wait_for(lambda: client.get_items([cancelled]).items[0].state == CANCELLED, 15,
             f"{cancelled} CANCELLED")
    return {"ok": ok, "bad": bad, "binary": binary, "cancelled": cancelled}


@MODES
@pytest.mark.deadline(120)
def test_items_endpoints_answer_what_get_items_answers(mode, start_daemon, tmp_path, request):
    d = start_mode(mode, start_daemon, tmp_path, request)
    c = d.client()
    tag = uuid.uuid4().hex[:6]
    ids = make_items(c, tag)
    a = d.status_address

    # one item: as getItems has it, with its result's first bytes as text
    got = get_json(a, "/items/" + urllib.parse.quote(ids["ok"][0], safe=""))
    g = c.get_items([ids["ok"][0]], with_results=True).items[0]
    assert got["id"] == g.id and got["state"] == "SUCCEEDED" and got["kind"] == "echo"
    assert got["attempt"] == g.attempt and got["max_attempts"] == g.max_attempts
    assert got["batch"] == f"ok-{tag}" and got["last_seq"] == g.last_seq
    assert got["accepted_unix"] == pytest.approx(g.accepted_unix_nano / 1e9, abs=1e-5)
    assert got["finished_unix"] == pytest.approx(g.finished_unix_nano / 1e9, abs=1e-5)
    assert got["result"] == {"size": len(g.result), "shown": len(g.result),
                             "text": g.result.decode()}
    assert got["error"] is None

    # a binary result: its size and the first 256 bytes in hex
    got = get_json(a, "/items/" + ids["binary"])
    assert got["result"]["size"] == 512 and got["result"]["shown"] == 256
    assert got["result"]["hex"] == bytes(range(256)).hex()

    # a FAILED item with its error
    got = get_json(a, "/items/" + ids["bad"][0])
    assert got["state"] == "FAILED" and got["result"] is None
    assert got["error"] == c.get_items([ids["bad"][0]]).items[0].error
    assert "bad input" in got["error"]

    # the dead-letter list is getItems' FAILED listing
    listing = get_json(a, "/items?state=FAILED")
    grpc_failed = [i.id for i in c.get_items(states=[FAILED]).items]
    assert [i["id"] for i in listing["items"]] == grpc_failed
    assert set(ids["bad"]) <= set(grpc_failed) and listing["next_page"] is None
    assert all(i["state"] == "FAILED" for i in listing["items"])

    # paged one at a time, it gives the same ids, newest first, then ends
    seen, token = [], None
    for _ in range(10):
        path = "/items?state=failed&limit=1" + (f"&page={urllib.parse.quote(token)}" if token else "")
        page = get_json(a, path)
        seen += [i["id"] for i in page["items"]]
        token = page["next_page"]
        if token is None:
            break
    assert seen == grpc_failed

    # several states, a kind, a batch
    both = get_json(a, f"/items?state=FAILED,CANCELLED&batch=bad-{tag}")
    assert {i["id"] for i in both["items"]} == set(ids["bad"]) | {ids["cancelled"]}
    cancelled = get_json(a, "/items?state=CANCELLED&limit=10")
    assert ids["cancelled"] in [i["id"] for i in cancelled["items"]]
    echo = get_json(a, f"/items?kind=echo&batch=ok-{tag}&limit=1000")
    assert {i["id"] for i in echo["items"]} == set(ids["ok"]) | {ids["binary"]}
    assert all(i["result"] is None for i in echo["items"]), "a listing carries no results"

    # per batch, counts by state
    batches = {b["batch"]: b for b in get_json(a, "/batches")["batches"]}
    assert batches[f"ok-{tag}"]["counts"]["SUCCEEDED"] == 6
    assert batches[f"ok-{tag}"]["total"] == 6
    assert batches[f"bad-{tag}"]["counts"]["FAILED"] == 3
    assert batches[f"bad-{tag}"]["counts"]["CANCELLED"] == 1

    # an unknown id
    status, _, body = http_request(a, "/items/no-such-item")
    assert status == 404 and b"not known" in body


@MODES
@pytest.mark.deadline(90)
def test_status_rates_and_page(mode, start_daemon, tmp_path, request):
    d = start_mode(mode, start_daemon, tmp_path, request)
    c = d.client()
    a = d.status_address
    sub = c.subscribe(name="watcher")
    n = 40
    c.run_items([{"id": f"r-{i}", "payload": b"x"} for i in range(n)])

    # the rates of the last seconds add up to what was accepted and ended
    def counted():
        r = get_json(a, "/rates")
        return r if sum(r["succeeded"]) >= n and sum(r["accepted"]) >= n else None
    r = wait_for(counted, 15, "/rates to count the items")
    assert len(r["t"]) == len(r["accepted"]) == len(r["seconds"]) <= r["slots"] == 900
    assert r["t"] == sorted(r["t"]) and sum(r["started"]) >= n
    newer = get_json(a, f"/rates?after={r['t'][-1]}")
    assert all(t > r["t"][-1] for t in newer["t"])

    s = get_json(a, "/status")
    echo = s["kinds"]["echo"]
    assert echo["started"] >= n and echo["succeeded"] >= n
    q = echo["latency_seconds"]["quantiles"]
    assert 0 < q["p50"] <= q["p90"] <= q["p99"] <= 300
    assert s["kinds"]["bad"]["latency_seconds"]["quantiles"] == {"p50": None, "p90": None,
                                                                 "p99": None}
    assert s["subscribers"]["active"] >= 1
    workers = [p for p in s["processes"] if p["role"] == "worker"]
    assert sorted(p["pid"] for p in workers) == sorted(d.worker_pids())
    assert all("current_kind" in p and "current_running_seconds" in p for p in workers)
    sub.cancel()

    # a running item: its worker shows it, its kind, how long it has run
    c.submit([{"id": "long", "kind": "sleep", "params": {"ms": "20000"}, "payload": b""}])

    def running():
        for p in get_json(a, "/status")["processes"]:
            if p.get("current_item") == "long" and p["current_running_seconds"] is not None:
                return p
    p = wait_for(running, 15, "the sleeping item on a worker")
    assert p["current_kind"] == "sleep" and p["current_running_seconds"] >= 0
    c.cancel_items(["long"])

    # the page itself
    status, headers, body = http_request(a, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["content-security-policy"]
    assert b"<canvas" in body and b"/status" in body and b"/rates" in body
    assert b"http://" not in body and b"https://" not in body, "the page fetches nothing else"
    assert int(headers["content-length"]) == len(body)
    status, headers, body = http_request(a, "/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000
    status, headers, _ = http_request(a, "/items", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


@pytest.mark.deadline(60)
def test_last_reload_outcome_in_status(start_daemon, tmp_path, request):
    d = start_mode("memory", start_daemon, tmp_path, request)
    a = d.status_address
    assert get_json(a, "/status")["last_reload"] is None
    good = d.config_path.read_text()
    d.config_path.write_text(good + "no_such_key: 1\n")
    d.send_signal(signal.SIGHUP)
    lr = wait_for(lambda: get_json(a, "/status")["last_reload"], 10, "a failed reload shown")
    assert lr["ok"] is False
    assert re.search(re.escape(str(d.config_path)) + r":\d+:\d+: .*no_such_key", lr["message"]), lr
    gen = get_json(a, "/status")["generation"]
    d.config_path.write_text(good)
    d.send_signal(signal.SIGHUP)
    lr = wait_for(lambda: (get_json(a, "/status")["last_reload"] or {}).get("ok") and
                  get_json(a, "/status")["last_reload"], 10, "a good reload shown")
    assert str(gen + 1) in lr["message"]


BAD_REQUESTS = [
    ("/items/" + "a" * 257, 400, "more than an id has (256)"),
    ("/items/%ff%fe", 400, "not valid UTF-8"),
    ("/items/ab%c3", 400, "not valid UTF-8"),
    ("/items/a%00b", 400, "NUL"),
    ("/items/x?state=FAILED", 400, "takes no parameter"),
    ("/items?state=NOPE", 400, 'state "NOPE" is not one of'),
    ("/items?state=", 400, "state is empty"),
    ("/items?state=FAILED,,", 400, "not one of"),
    ("/items?state=%ff", 400, "not one of"),
    ("/items?limit=0", 400, "from 1 to 1000"),
    ("/items?limit=1001", 400, "from 1 to 1000"),
    ("/items?limit=-1", 400, "from 1 to 1000"),
    ("/items?limit=99999999999999999999", 400, "from 1 to 1000"),
    ("/items?limit=abc", 400, "from 1 to 1000"),
    ("/items?page=garbage", 400, "is not one this"),
    ("/items?page=p0", 400, "is not one this"),
    ("/items?page=p18446744073709551616", 400, "is not one this"),
    ("/items?page=c18446744073709551616", 400, "is not one this"),
    ("/items?page=p99999999999999999999999", 400, "is not one this"),
    ("/items?page=" + "9" * 65, 400, "page is 65 bytes"),
    ("/items?page=%ff", 400, "page is not valid UTF-8"),
    ("/items?kind=" + "k" * 65, 400, "kind is 65 bytes"),
    ("/items?batch=%c3%28", 400, "batch is not valid UTF-8"),
    ("/items?limit=5&limit=6", 400, "limit given twice"),
    ("/items?what=1", 400, 'unknown parameter "what"'),
    ("/batches?state=FAILED", 400, "takes no parameter"),
    ("/rates?after=-1", 400, "after=UNIX_SECONDS"),
    ("/rates?before=1", 400, "after=UNIX_SECONDS"),
]


@MODES
@pytest.mark.deadline(90)
def test_bad_requests_get_400_naming_what_is_wrong(mode, start_daemon, tmp_path, request):
    d = start_mode(mode, start_daemon, tmp_path, request)
    a = d.status_address
    c = d.client()
    c.run_items([{"id": "a" * 256, "payload": b"x"}])
    for path, code, words in BAD_REQUESTS:
        status, headers, body = http_request(a, path)
        assert (status, words) == (code, words) and words in body.decode(), (path, status, body)
        assert headers["content-type"].startswith("text/plain"), path
    # at the limits: an id of 256 bytes, limit 1000
    assert get_json(a, "/items/" + "a" * 256)["id"] == "a" * 256
    assert get_json(a, "/items?limit=1000")["next_page"] is None
    # a token of the other mode is refused too, a good one is taken
    other = "c5" if mode != "cluster" else "p5"
    status, _, body = http_request(a, f"/items?page={other}")
    assert status == 400, body
    # the daemon is unharmed
    assert c.health() == SERVING
    assert http_get(a, "/healthz")[0] == 200


def burst(address, paths, n):
    """N connections at once, each GETting one of PATHS; the statuses."""
    statuses = [None] * n
    start = threading.Barrier(n)

    def one(i):
        try:
            start.wait(timeout=30)
            statuses[i] = http_request(address, paths[i % len(paths)], timeout=30)[0]
        except Exception as e:     # noqa: BLE001 - reported below
            statuses[i] = repr(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a request of the burst never ended"
    return statuses


@MODES
@pytest.mark.deadline(120)
def test_a_100_connection_burst_is_answered(mode, start_daemon, tmp_path, request):
    d = start_mode(mode, start_daemon, tmp_path, request)
    c = d.client()
    ids = make_items(c, "burst")
    paths = ["/items/" + ids["ok"][0], "/items?state=FAILED&limit=50", "/batches", "/status",
             "/rates", "/", "/items/unknown"]
    statuses = burst(d.status_address, paths, 100)
    # every one answered; item lookups waiting for Redis are bounded (503 past 64)
    assert all(s in (200, 404, 503) for s in statuses), statuses
    assert statuses.count(503) <= 100 - 64 and (mode == "cluster" or 503 not in statuses), statuses
    # and the data path still runs
    c.run_items([{"id": f"after-{i}", "payload": b"y"} for i in range(20)])
    assert get_json(d.status_address, "/items/after-19")["state"] == "SUCCEEDED"


@pytest.mark.deadline(90)
def test_a_client_that_never_reads_holds_nothing_up(start_daemon, tmp_path, request):
    d = start_mode("memory", start_daemon, tmp_path, request)
    c = d.client()
    make_items(c, "slow")
    host, port = d.status_address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        # pipelined requests for big answers, never read
        req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /items?limit=1000 HTTP/1.1\r\nHost: x\r\n\r\n"
        s.setblocking(False)
        sent = 0
        for _ in range(400):
            try:
                sent += s.send(req)
            except BlockingIOError:
                break
        assert sent > 0
        # meanwhile everybody else is served
        for i in range(5):
            assert get_json(d.status_address, "/items?state=FAILED")["items"]
            c.run_items([{"id": f"meanwhile-{i}", "payload": b"z"}])
    finally:
        s.close()
    assert http_get(d.status_address, "/healthz")[0] == 200
