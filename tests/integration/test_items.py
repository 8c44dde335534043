"""Items you can address (issue 16): the index of known items behind
idempotent submit (SubmitReply.duplicates), getItems (by id, by filter with
paging, wait) and retry, with items.retention; in memory and journal modes.
"""
import os
import shutil
import signal
import threading
import time

import grpc
import pytest

import conftest
from conftest import pb, wait_for, kill_tree
from test_trust import pki  # noqa: F401 (a fixture)

QUEUED, STARTED, SUCCEEDED, FAILED, RETRYING = (pb.QUEUED, pb.STARTED, pb.SUCCEEDED, pb.FAILED,
                                                pb.RETRYING)
ECHO = {"default": "echo", "echo": {"builtin": "echo"}, "sleep": {"builtin": "sleep"}}
BAD = {"exec": ["sh", "-c", 'echo "bad input" >&2; exit 3']}

MODES = pytest.mark.parametrize("mode", ["memory", "journal"])


def config_for(mode, tmp_path, **extra):
    config = {"handlers": {**ECHO, "bad": BAD}, **extra}
    if mode == "journal":
        config.setdefault("queue", {})["journal"] = str(tmp_path / "journal")
    return config


def get(client, ids=(), timeout=10, **kw):
    return client.get_items(ids, timeout=timeout, **kw)


def by_id(reply):
    return {i.id: i for i in reply.items}


def wait_final(client, ids, timeout=30):
    reply = get(client, ids, wait=True, timeout=timeout)
    assert not reply.not_found, reply.not_found
    return by_id(reply)


def sleep_item(item_id, ms, batch=""):
    return {"id": item_id, "kind": "sleep", "params": {"ms": str(ms)}, "batch": batch}


def sent_equals(reply, n):
    assert reply.accepted + reply.rejected + reply.duplicates == n, reply


# ---- duplicates ------------------------------------------------------------------------

@MODES
def test_same_id_in_one_call_and_across_calls_runs_once(start_daemon, tmp_path, mode):
    d = start_daemon(config_for(mode, tmp_path))
    c = d.client()
    sub = c.subscribe(sync=True)
    reply = c.submit([{"id": "a", "payload": b"1"}] * 3)
    assert (reply.accepted, reply.rejected, reply.duplicates) == (1, 0, 2), reply
    wait_final(c, ["a"])
    # Final and retained: still a duplicate.
    reply = c.submit([{"id": "a", "payload": b"2"}, {"id": "b"}])
    assert (reply.accepted, reply.duplicates) == (1, 1), reply
    sent_equals(reply, 2)
    # Server-assigned ids are never duplicates.
    reply = c.submit([{"payload": b"x"}, {"payload": b"x"}])
    assert (reply.accepted, reply.duplicates) == (2, 0), reply
    wait_final(c, ["b"])
    c.sync(sub)
    states = [u.state for u in sub.of("a")]
    assert states.count(QUEUED) == 1 and states[-1] == SUCCEEDED, states
    assert len([s for s in states if s in (SUCCEEDED, FAILED)]) == 1, states
    assert sub.final["a"].result == b"1"


@MODES
def test_duplicates_while_queued_and_running(start_daemon, tmp_path, mode):
    d = start_daemon(config_for(mode, tmp_path, workers={"count": 1}))
    c = d.client()
    sub = c.subscribe(sync=True)
    assert c.submit([sleep_item("run", 1500), sleep_item("wait", 10)]).accepted == 2
    sub.wait_state("run", STARTED, timeout=10)
    items = by_id(get(c, ["run", "wait"]))
    assert items["run"].state == STARTED and items["wait"].state == QUEUED
    reply = c.submit([sleep_item("run", 10), sleep_item("wait", 10)] * 3)
    assert (reply.accepted, reply.duplicates) == (0, 6), reply
    wait_final(c, ["run", "wait"])
    c.sync(sub)
    assert len([u for u in sub.of("run") if u.state == QUEUED]) == 1
    assert len([u for u in sub.of("wait") if u.state == QUEUED]) == 1


@MODES
def test_duplicates_after_reload(start_daemon, tmp_path, mode):
    d = start_daemon(config_for(mode, tmp_path))
    c = d.client()
    assert c.submit([{"id": "r1"}]).accepted == 1
    wait_final(c, ["r1"])
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reload|configuration", timeout=10)
    time.sleep(0.2)
    reply = d.client().submit_retrying([{"id": "r1"}])
    assert (reply.accepted, reply.duplicates) == (0, 1), reply


@pytest.mark.deadline(90)
@MODES
def test_duplicates_after_usr2_upgrade(start_daemon, monkeypatch, tmp_path, mode):
    binary = tmp_path / "dosomethingd"
    shutil.copy(conftest.BINARY, binary)
    monkeypatch.setattr(conftest, "BINARY", str(binary))
    d = start_daemon(config_for(mode, tmp_path, workers={"count": 1}, shutdown_timeout="2s"))
    c = d.client()
    items = [sleep_item(f"u{i}", 300) for i in range(12)]
    assert c.submit(items).accepted == 12
    old_master = d.master_pid
    new_master = None
    try:
        d.send_signal(signal.SIGUSR2)
        wait_for(lambda: d.read_pid_file() not in (None, old_master), 10, "the new master")
        new_master = d.read_pid_file()
        d.known_pids.add(new_master)
        assert d.wait_exit(timeout=20) == 0
        d.wait_log(r"handover: \d+ items handed over to the new instance")
        nc = conftest.Client(d.address)
        try:
            known = get(nc, [i["id"] for i in items])
            handed = [i.id for i in known.items]
            assert handed, "nothing was handed over"
            # The items handed over are known to the new instance: a resend
            # is a duplicate, and they run once there.
            reply = nc.submit_retrying([sleep_item(i, 10) for i in handed])
            assert (reply.accepted, reply.duplicates) == (0, len(handed)), reply
            finals = wait_final(nc, handed)
            assert all(f.state == SUCCEEDED and f.attempt == 1 for f in finals.values()), finals
        finally:
            nc.close()
    finally:
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(60)
def test_duplicates_after_a_restart_with_the_journal(start_daemon, tmp_path):
    config = config_for("journal", tmp_path, workers={"count": 1})
    d1 = start_daemon(config, name="first")
    c1 = d1.client()
    sub = c1.subscribe(sync=True)
    assert c1.submit([sleep_item("busy", 30000)] + [{"id": f"j{i}"} for i in range(5)]) \
        .accepted == 6
    sub.wait_state("busy", STARTED)
    pids = [d1.grpc_pid(), d1.master_pid] + d1.worker_pids()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    d1.proc.wait(timeout=5)
    d2 = start_daemon(config, name="second")
    d2.wait_log(r"journal: took over", timeout=20)
    c2 = d2.client()
    reply = c2.submit_retrying([sleep_item("busy", 10)] + [{"id": f"j{i}"} for i in range(5)])
    assert (reply.accepted, reply.duplicates) == (0, 6), reply
    items = by_id(get(c2, ["busy", "j0"]))
    assert set(items) == {"busy", "j0"}


# ---- getItems ----------------------------------------------------------------------------

@MODES
def test_get_items_by_id_not_found_and_results(start_daemon, tmp_path, mode):
    d = start_daemon(config_for(mode, tmp_path))
    c = d.client()
    assert c.submit([{"id": "g1", "payload": b"hello", "batch": "B", "priority": 7},
                     {"id": "g2", "kind": "bad"}]).accepted == 2
    finals = wait_final(c, ["g1", "g2"])
    g1, g2 = finals["g1"], finals["g2"]
    assert (g1.state, g1.kind, g1.batch, g1.attempt, g1.priority) == (SUCCEEDED, "echo", "B", 1, 7)
    assert g1.result == b""                       # not asked for
    assert g1.accepted_unix_nano > 0 and g1.finished_unix_nano >= g1.accepted_unix_nano
    assert g1.last_seq > 0
    assert (g2.state, g2.error) == (FAILED, "sh exited with status 3: bad input")
    reply = get(c, ["g1", "nope", "g2"], with_results=True)
    assert list(reply.not_found) == ["nope"]
    assert by_id(reply)["g1"].result == b"hello"
    # last_seq resumes getUpdates: nothing of g1 after it.
    sub = c.subscribe(replay=True, after_seq=g1.last_seq - 1, item_ids=["g1"])
    sub.wait(lambda s: "g1" in s.final, 10, "g1's final replayed")
    assert sub.final["g1"].seq == g1.last_seq


@MODES
def test_get_items_wait(start_daemon, tmp_path, mode):
    d = start_daemon(config_for(mode, tmp_path))
    c = d.client()
    assert c.submit([sleep_item("w1", 800), {"id": "w2"}]).accepted == 2
    t0 = time.monotonic()
    finals = wait_final(c, ["w1", "w2", "unknown"][:2])
    assert finals["w1"].state == SUCCEEDED and finals["w2"].state == SUCCEEDED
    assert time.monotonic() - t0 < 30
    # Not final before the deadline: DEADLINE_EXCEEDED.
    assert c.submit([sleep_item("w3", 20000)]).accepted == 1
    with pytest.raises(grpc.RpcError) as e:
        get(c, ["w3"], wait=True, timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # An unknown id does not hold the wait.
    reply = get(c, ["w1", "nope"], wait=True, timeout=5)
    assert list(reply.not_found) == ["nope"]


@MODES
def test_get_items_by_filter_pages_while_items_arrive(start_daemon, tmp_path, mode):
    d = start_daemon(config_for(mode, tmp_path))
    c = d.client()
    ids = [f"f{i:03d}" for i in range(250)]
    assert c.submit([{"id": i, "batch": "F"} for i in ids]).accepted == 250
    assert c.submit([{"id": "other", "batch": "G"}]).accepted == 1
    stop = threading.Event()

    def more():
        n = 0
        cc = d.client()
        while not stop.is_set() and n < 200:
            cc.submit([{"id": f"late{n}", "batch": "F"}])
            n += 1

    t = threading.Thread(target=more)
    t.start()
    try:
        seen, token, pages = [], "", 0
        while True:
            reply = c.stub.getItems(pb.ItemsRequest(batches=["F"], limit=40, page_token=token),
                                    timeout=10)
            seen += [i.id for i in reply.items]
            pages += 1
            token = reply.next_page_token
            if not token:
                break
    finally:
        stop.set()
        t.join(timeout=20)
    assert len(seen) == len(set(seen)), "an item listed twice"
    assert set(ids) <= set(seen), f"skipped: {sorted(set(ids) - set(seen))[:5]}"
    assert "other" not in seen
    # Newest accepted first.
    assert [s for s in seen if s.startswith("f")] == list(reversed(ids))
    # All given lists must match; default limit 100.
    reply = c.stub.getItems(pb.ItemsRequest(batches=["F"], kinds=["echo"],
                                            states=[SUCCEEDED, QUEUED, STARTED]), timeout=10)
    assert len(reply.items) == 100 and reply.next_page_token
    reply = c.stub.getItems(pb.ItemsRequest(batches=["F"], kinds=["sleep"]), timeout=10)
    assert not reply.items and not reply.next_page_token


@MODES
def test_get_items_invalid_arguments(start_daemon, tmp_path, mode):
    d = start_daemon(config_for(mode, tmp_path))
    c = d.client()

    def code_of(raw=None, **kw):
        try:
            if raw is not None:
                m = c.channel.unary_unary(f"/{conftest.SERVICE}/getItems",
                                          request_serializer=lambda x: x,
                                          response_deserializer=pb.ItemsReply.FromString)
                m(raw, timeout=5)
            else:
                c.stub.getItems(pb.ItemsRequest(**kw), timeout=5)
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, ""

    assert code_of(limit=1000)[0] == grpc.StatusCode.OK
    code, details = code_of(limit=1001)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1001" in details
    code, details = code_of(page_token="garbage")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "garbage" in details
    code, details = code_of(page_token="p99999999999")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details
    # Invalid UTF-8 in item_ids (field 1), kinds (2), batches (4), page_token (6).
    for field in (1, 2, 4, 6):
        raw = bytes([field << 3 | 2, 2, 0xc3, 0x28])
        code, details = code_of(raw=raw)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in details, (field, details)
    code, details = code_of(raw=b"\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, details = code_of(states=[99])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "99" in details
    code, details = code_of(wait=True)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, details = code_of(item_ids=[str(i) for i in range(1001)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# ---- retention ----------------------------------------------------------------------------

@MODES
def test_retention_by_count_forgets_finals_never_live(start_daemon, tmp_path, mode):
    # Two workers: "live" sleeps on one, the others run on the other.
    d = start_daemon(config_for(mode, tmp_path, workers={"count": 2},
                                items={"retention": {"count": 5}}))
    c = d.client()
    assert c.submit([sleep_item("live", 20000)]).accepted == 1
    ids = [f"c{i}" for i in range(20)]
    assert c.submit([{"id": i} for i in ids]).accepted == 20
    wait_for(lambda: not get(c, ["c19"]).not_found and
             get(c, ["c19"]).items[0].state == SUCCEEDED, 30, "c19 final")
    # Which five finals are the newest depends on how the echoes were spread
    # over the workers (some may even wait behind "live", prefetched), and a
    # readiness probe of the fixture's may be one of them: what holds is that
    # five finals are known in all, "live" and any item not final too.
    finals = c.get_items(states=[SUCCEEDED, FAILED])
    assert len(finals.items) == 5, [i.id for i in finals.items]
    reply = get(c, ids + ["live"])
    known = {i.id: i for i in reply.items}
    assert "live" in known, list(reply.not_found)
    assert all(i.state == SUCCEEDED or i.id == "live" or i.state == QUEUED
               for i in known.values()), known
    assert "c0" not in known, known
    # A forgotten id is not a duplicate any more: it runs again.
    assert c.submit([{"id": "c0"}]).accepted == 1


@MODES
def test_retention_by_age_forgets_finals_never_live(start_daemon, tmp_path, mode):
    d = start_daemon(config_for(mode, tmp_path, workers={"count": 2},
                                items={"retention": {"age": "300ms"}}))
    c = d.client()
    assert c.submit([sleep_item("live", 20000), {"id": "old"}]).accepted == 2
    wait_for(lambda: list(get(c, ["old"]).not_found) == ["old"], 20, "old forgotten")
    assert not get(c, ["live"]).not_found


# ---- retry ---------------------------------------------------------------------------------

@MODES
def test_retry_failed_items_and_dead_letters(start_daemon, tmp_path, mode):
    d = start_daemon(config_for(mode, tmp_path))
    c = d.client()
    assert c.submit([{"id": f"x{i}", "kind": "bad", "batch": "X"} for i in range(3)] +
                    [{"id": "ok", "batch": "X"}]).accepted == 4
    finals = wait_final(c, ["x0", "x1", "x2", "ok"])
    assert [finals[f"x{i}"].state for i in range(3)] == [FAILED] * 3
    dead = c.stub.getItems(pb.ItemsRequest(states=[FAILED]), timeout=10)
    assert {i.id for i in dead.items} == {"x0", "x1", "x2"}

    sub = c.subscribe(sync=True)
    r = c.stub.retry(pb.RetryRequest(item_ids=["x0", "ok", "nope"]), timeout=10)
    assert (r.requeued, r.not_retryable, list(r.not_found)) == (1, 1, ["nope"])
    sub.wait(lambda s: any(u.state == QUEUED for u in s.of("x0")), 10, "x0 QUEUED again")
    x0 = wait_final(c, ["x0"])["x0"]
    assert (x0.state, x0.attempt) == (FAILED, 1)
    # With the kind fixed by a reload, a retry by batch succeeds.
    d.write_config(config_for(mode, tmp_path, handlers={**ECHO,
                                                        "bad": {"exec": ["cat"]}}))
    d.send_signal(signal.SIGHUP)
    d.wait_log(r"reload", timeout=10)
    time.sleep(0.5)
    r = c.stub.retry(pb.RetryRequest(batches=["X"]), timeout=10)
    assert r.requeued == 3 and not r.not_found, r
    finals = wait_final(c, ["x0", "x1", "x2"])
    assert all(f.state == SUCCEEDED for f in finals.values()), finals
    dead = c.stub.getItems(pb.ItemsRequest(states=[FAILED]), timeout=10)
    assert not dead.items
    # Invalid UTF-8.
    m = c.channel.unary_unary(f"/{conftest.SERVICE}/retry", request_serializer=lambda x: x,
                              response_deserializer=pb.RetryReply.FromString)
    with pytest.raises(grpc.RpcError) as e:
        m(bytes([0x0a, 2, 0xc3, 0x28]), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- observability -------------------------------------------------------------------------

def test_metrics_and_status_count_items(start_daemon, tmp_path):
    from test_status import Scrape, start_with_status, status_json
    d = start_with_status(start_daemon, config_for("memory", tmp_path))
    c = d.client()
    assert c.submit([{"id": "m1", "payload": b"x" * 1000}, {"id": "m2", "kind": "bad"}]) \
        .accepted == 2
    wait_final(c, ["m1", "m2"])
    assert c.submit([{"id": "m1"}, {"id": "m1"}]).duplicates == 2
    assert c.stub.retry(pb.RetryRequest(item_ids=["m2"]), timeout=10).requeued == 1
    wait_final(c, ["m2"])
    s = Scrape(d.status_address)
    assert s.get("dosomething_items_known", state="succeeded") == 1
    assert s.get("dosomething_items_known", state="failed") == 1
    assert s.get("dosomething_items_known", state="queued") == 0
    assert s.get("dosomething_items_retained_bytes") > 1000
    assert s.get("dosomething_items_duplicates_total") == 2
    assert s.get("dosomething_items_retries_total") == 1
    j = status_json(d.status_address)
    items = j["items"]
    assert items["known"] == 2 and items["by_state"]["succeeded"] == 1, items
    assert items["duplicates"] == 2 and items["retries"] == 1 and items["retained_bytes"] > 1000


@MODES
def test_wait_ends_with_a_graceful_stop(start_daemon, tmp_path, mode):
    # An item a graceful stop cannot finish: FAILED (memory), or kept in the
    # journal for the next start (RETRYING). Either way the waiting call ends.
    d = start_daemon(config_for(mode, tmp_path, shutdown_timeout="1s"))
    c = d.client()
    assert c.submit([sleep_item("long", 30000)]).accepted == 1
    result = {}

    def waiter():
        try:
            result["reply"] = get(c, ["long"], wait=True, timeout=30)
        except grpc.RpcError as e:
            result["error"] = e

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    d.send_signal(signal.SIGQUIT)     # graceful
    t.join(timeout=25)
    assert not t.is_alive(), "the waiting call did not end with the stop"
    if mode == "memory":
        assert "reply" in result, result
        assert result["reply"].items[0].state == FAILED, result["reply"]
    else:
        assert "error" in result, result
        assert result["error"].code() == grpc.StatusCode.UNAVAILABLE, result["error"]
        assert "ask again" in result["error"].details(), result["error"]


def test_replies_stay_within_what_a_client_accepts(start_daemon, tmp_path):
    d = start_daemon(config_for("memory", tmp_path))
    c = d.client()
    big = [{"id": f"big{i}", "batch": "BIG", "payload": bytes([65 + i]) * (1 << 20)}
           for i in range(6)]
    for it in big:      # one per call: a call is bounded by grpc.max_message_size per item
        assert c.submit([it]).accepted == 1
    wait_final(c, [it["id"] for it in big])
    # A stock client (4 MiB receive limit) pages through the results.
    stock = conftest.Client(d.address, options=[("grpc.max_receive_message_length", 4 << 20)])
    try:
        seen, token, pages = {}, "", 0
        while True:
            reply = stock.stub.getItems(pb.ItemsRequest(batches=["BIG"], with_results=True,
                                                        limit=10, page_token=token), timeout=10)
            pages += 1
            for i in reply.items:
                assert i.id not in seen
                seen[i.id] = i.result
            token = reply.next_page_token
            if not token:
                break
        assert pages >= 2
        assert {k: len(v) for k, v in seen.items()} == {it["id"]: 1 << 20 for it in big}
        # By ids, more results than a reply carries: RESOURCE_EXHAUSTED, not a
        # reply the client cannot take; without results they fit.
        with pytest.raises(grpc.RpcError) as e:
            get(stock, [it["id"] for it in big], with_results=True)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fewer ids" in e.value.details()
        assert len(get(stock, [it["id"] for it in big]).items) == 6
    finally:
        stock.close()


# ---- scopes (grpc.tls.scope_ids) ---------------------------------------------------------------

def test_scoped_clients_see_only_their_items(start_daemon, pki):  # noqa: F811
    from test_trust import TlsClient, start_scoped
    d = start_scoped(start_daemon, pki)
    alice, bob = TlsClient(d.address, pki, "alice"), TlsClient(d.address, pki, "bob")
    d.clients += [alice, bob]
    assert alice.submit([{"id": "job-1", "batch": "S"}]).accepted == 1
    # The same id in another scope is another item, not a duplicate.
    assert bob.submit([{"id": "job-1", "batch": "S", "kind": "nope"}]).rejected == 1
    assert bob.submit([{"id": "job-1", "batch": "S"}]).accepted == 1
    assert alice.submit([{"id": "job-1"}]).duplicates == 1
    a = get(alice, ["job-1"], wait=True)
    assert [i.id for i in a.items] == ["alice/job-1"]
    # bob asking for alice's item asks for "bob/alice/job-1": unknown.
    b = get(bob, ["alice/job-1", "job-1"])
    assert list(b.not_found) == ["alice/job-1"] and [i.id for i in b.items] == ["bob/job-1"]
    listed = bob.stub.getItems(pb.ItemsRequest(batches=["S"]), timeout=10)
    assert [i.id for i in listed.items] == ["bob/job-1"]
    r = bob.stub.retry(pb.RetryRequest(item_ids=["alice/job-1"], batches=["S"]), timeout=10)
    assert (r.requeued, list(r.not_found)) == (0, ["alice/job-1"])
    # cancel too: an id is always the scope's, even one that starts with it.
    r = alice.cancel_items(["alice/job-1", "job-1"])
    assert (r.cancelled, r.already_final, list(r.not_found)) == (0, 1, ["alice/job-1"]), r
