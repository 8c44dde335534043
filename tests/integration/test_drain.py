"""Drains and memory: what a graceful stop (QUIT), a binary upgrade (USR2)
and stalled subscribers do to accepted work and to the grpc process's memory.

- The backlogs of all subscribers together are bounded
  (updates.subscribers_bytes): the largest is cut with RESOURCE_EXHAUSTED
  and the seq to resume from; RSS stays bounded.
- During a drain no subscriber is cut for being slow.
- At the drain deadline every item not final gets a final update (FAILED
  with the reason), or with the journal a RETRYING saying it runs at the
  next start, which it does.
- A binary upgrade hands the old instance's waiting items to the new one.
- A client that keeps its connection open (gRPC C-core clients do, after
  GOAWAY) does not hold a graceful stop with nothing left to do until
  shutdown_timeout: its connection is closed a second after the drain is
  done, once its client has acknowledged what was written on it. A
  subscriber that stops reading (or whose process is stopped) is not such
  a client: it gets every final and its OK when it reads again, also when
  the grpc process has no descriptor left. A client that is gone (nothing
  acknowledged, the kernel retransmitting) is not waited for.
"""
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

import conftest
from conftest import FAILED, FINAL_STATES, RETRYING, SUCCEEDED, kill_tree, wait_for


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# ---- point 5: the total of all backlogs ----------------------------------

@pytest.mark.deadline(120)
def test_stalled_subscribers_total_backlog_is_bounded(start_daemon):
    # Each backlog alone may hold 16 MiB, the log 16 MiB. Each stalled
    # subscriber watches its own batch, so their backlogs share nothing:
    # without a bound on the total, 8 of them pin 8 x 15 MiB beyond the log.
    # Finals keep their results for getItems (items.retention.bytes, 256 MiB
    # by default): bounded low here, this test measures the backlogs.
    d = start_daemon({"workers": {"count": 2},
                      "updates": {"history_bytes": "16MiB", "subscribers_bytes": "4MiB"},
                      "items": {"retention": {"bytes": "1MiB"}}})
    grpc_pid = d.grpc_pid()
    # A subscriber that keeps up, to small markers only: its backlog is
    # never the largest.
    reader = d.client().subscribe(batches=["marker"], name="reader")
    # Stock clients that never read: a small, fixed flow-control window so
    # that grpcio buffers little on their side.
    stalled = []
    for n in range(8):
        c = d.client(options=[("grpc.http2.bdp_probe", 0),
                              ("grpc.http2.lookahead_bytes", 65536)])
        stalled.append(c.subscribe(start=False, batches=[f"b{n}"], name=f"stalled{n}"))
    time.sleep(0.5)     # every call is in before the first item
    before = rss_kib(grpc_pid)

    client = d.client()
    payload = b"x" * (256 << 10)
    for chunk in range(60):
        items = [{"id": f"big{chunk}-{n}", "batch": f"b{n}", "payload": payload}
                 for n in range(8)]
        items.append({"id": f"marker{chunk}", "batch": "marker", "payload": b"m"})
        assert client.submit(items).accepted == 9
        reader.wait_final([f"marker{chunk}"], timeout=30)
    grown_mib = (rss_kib(grpc_pid) - before) / 1024
    # 480 updates of 256 KiB (120 MiB) published, 16 MiB of them in the log,
    # 4 MiB more in backlogs, a few in flight.
    if not conftest.SANITIZED:
        assert grown_mib < 64, f"grpc process RSS grew {grown_mib:.0f} MiB"

    # The reader kept up: never cut.
    assert reader.error is None and not reader.done, reader.describe_end()

    # The stalled ones: read what reaches them, then their end.
    cut = []
    for s in stalled:
        s.start()
    for s in stalled:
        try:
            s.wait_end(timeout=5)
        except AssertionError:
            s.cancel()      # not cut: its backlog stayed small enough
            continue
        assert s.status_code() == grpc.StatusCode.RESOURCE_EXHAUSTED, s.describe_end()
        details = s.error.details()
        assert "updates.subscribers_bytes" in details, details
        m = re.search(r"last seq sent (\d+); resume with replay=true, after_seq=(\d+)", details)
        assert m and m.group(1) == m.group(2), details
        # It was sent exactly up to the seq it names.
        assert s.last_seq() == int(m.group(1)), (s.last_seq(), details)
        cut.append(s)
    assert len(cut) >= 6, f"only {len(cut)} of 8 stalled subscribers were cut"
    d.wait_log(r"dropping a slow subscriber: the backlogs of all subscribers")


# ---- point 7: slow subscribers during a drain ----------------------------

@pytest.mark.deadline(90)
def test_drain_never_cuts_a_slow_subscriber(start_daemon):
    # A tiny subscriber_buffer makes "slow" easy to be; the drain must not
    # cut for it (the subscriber could not come back: the port is closed).
    d = start_daemon({"workers": {"count": 1, "prefetch": 2}, "shutdown_timeout": "30s",
                      "updates": {"subscriber_buffer": 16}})
    client = d.client()
    sub = d.client(options=[("grpc.http2.bdp_probe", 0)]).subscribe(
        sync=True, states=[SUCCEEDED, FAILED], name="slow")
    # Everything becomes final during the drain: a long item goes first on
    # the only worker.
    items = [{"id": "blocker", "kind": "sleep", "params": {"ms": "1500"}}]
    items += [{"id": f"e{n}", "payload": b"y" * 1024} for n in range(3000)]
    assert client.submit(items).accepted == len(items)
    sub.pause()
    d.send_signal(signal.SIGQUIT)
    d.wait_log(r"graceful stop: \d+ items to finish")
    time.sleep(2.5)     # the finals pile up for the paused subscriber
    sub.resume()
    assert d.wait_exit(timeout=40) == 0
    sub.wait_end(timeout=10)
    assert sub.error is None, f"the slow subscriber {sub.describe_end()}"
    finals = {i: u.state for i, u in sub.final.items() if not conftest.is_probe(i)}
    assert len(finals) == len(items) and set(finals.values()) == {SUCCEEDED}
    assert "dropping a slow subscriber" not in d.log_text()


# ---- a stalled subscriber's tail at a graceful stop ----------------------

def status_json(d):
    got = conftest.http_get(d.status_address, "/status")
    assert got is not None and got[0] == 200, \
        f"/status answered {got!r} (the daemon exited?); log:\n{d.log_tail()}"
    return json.loads(got[1])


def work_done(d):
    """The daemon has no item left, or has exited already."""
    got = conftest.http_get(d.status_address, "/status")
    if got is None:
        return d.proc.poll() is not None
    return got[0] == 200 and json.loads(got[1])["queue"]["depth"] == 0


# A client that lets grpcio buffer as little as it can: no BDP-driven window
# growth, a 64 KiB stream window.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)]


@pytest.mark.deadline(150)
@pytest.mark.parametrize("window", ["small_window", "default_window"])
@pytest.mark.parametrize("reader", ["paused", "never_read"])
def test_graceful_stop_delivers_a_stalled_subscribers_tail(start_daemon, window, reader):
    """A subscriber that stops reading (or never started) while a graceful
    stop finishes the work still gets every final, in full, and the clean
    end (OK) once it reads again: its updates wait behind HTTP/2 flow
    control, and the stop waits for them (bounded by shutdown_timeout)
    instead of closing its connection a second after the work is done, as
    it does an idle client's."""
    status_address = f"127.0.0.1:{conftest.free_port()}"
    d = start_daemon({"workers": {"count": 1, "prefetch": 2}, "shutdown_timeout": "40s",
                      "status": {"listen": status_address}})
    d.status_address = status_address
    sub_client = d.client(options=SMALL_WINDOW if window == "small_window" else [])
    if reader == "paused":
        sub = sub_client.subscribe(sync=True, name="stalled")
        sub.pause()
    else:
        sub = sub_client.subscribe(start=False, name="stalled")
        wait_for(lambda: status_json(d)["subscribers"]["active"] == 1, 10,
                 "the subscriber's call at the server")
    # 240 results of 48 KiB (11 MiB): the 64 KiB window, grpcio's buffers and
    # both sockets' many times over. A long item first on the only worker:
    # most finals are published during the drain.
    size = 48 << 10
    ids = [f"big{n}" for n in range(240)]
    payloads = {i: n.to_bytes(4, "big") * (size // 4) for n, i in enumerate(ids)}
    items = [{"id": "blocker", "kind": "sleep", "params": {"ms": "1000"}}]
    items += [{"id": i, "payload": payloads[i]} for i in ids]
    assert d.client().submit(items).accepted == len(items)
    d.send_signal(signal.SIGQUIT)
    d.wait_log(r"graceful stop: \d+ items to finish")
    # Every item final and the streams told to end: only the stalled
    # subscriber is left. Then well past the second an idle connection gets.
    wait_for(lambda: status_json(d)["queue"]["depth"] == 0 and
             status_json(d)["subscribers"]["active"] == 0, 30, "the work done")
    time.sleep(3)
    # The stop waits for it: its call is still open.
    assert status_json(d)["calls"]["open"] == 1, d.log_tail()
    assert sub.done is False, sub.describe_end()
    if reader == "paused":
        sub.resume()
    else:
        sub.start()
    assert d.wait_exit(timeout=60) == 0, d.log_tail()
    sub.wait_end(timeout=10)
    log = d.log_text()
    assert sub.error is None, f"the stalled subscriber {sub.describe_end()}; log:\n{log[-3000:]}"
    finals = {i: u for i, u in sub.final.items() if not conftest.is_probe(i)}
    missing = sorted(set(ids) - set(finals))
    assert not missing, f"{len(missing)} finals missing, e.g. {missing[:5]}"
    assert finals["blocker"].state == SUCCEEDED
    for i in ids:
        assert finals[i].state == SUCCEEDED and finals[i].result == payloads[i], i
    sub.assert_seq_increasing()
    assert "reached with" not in log, log
    assert "dropping a slow subscriber" not in log, log


# Subscribers in a process of their own, which the test stops (SIGSTOP):
# nothing reads their sockets, not even grpcio's own threads. Each is on
# its own channel (connection), with keepalive pings as clients of
# long-lived streams set them (behind load balancers, say): once the
# process runs again, its first frame may well be a ping. It prints "open"
# once its calls are made, then for each the ids it read and how the
# stream ended.
STOPPED_SUBSCRIBERS = r"""
import json, sys, threading, grpc
from com.agrounds.dosomething.v1 import do_something_pb2 as pb
from com.agrounds.dosomething.v1 import do_something_pb2_grpc as pb_grpc
options = [("grpc.max_receive_message_length", -1),
           ("grpc.keepalive_time_ms", 500), ("grpc.keepalive_timeout_ms", 20000),
           ("grpc.http2.max_pings_without_data", 0),
           ("grpc.keepalive_permit_without_calls", 1),
           ("grpc.use_local_subchannel_pool", 1)]      # a connection each
if sys.argv[2] == "small_window":
    options += [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)]
calls = [pb_grpc.DoSomethingServiceStub(grpc.insecure_channel(sys.argv[1], options=options))
         .getUpdates(pb.UpdatesRequest(states=[pb.SUCCEEDED])) for _ in range(int(sys.argv[3]))]
print("open", flush=True)
results = [None] * len(calls)
def read(n):
    ids, error = [], None
    try:
        for u in calls[n]:
            ids.append(u.item_id)
    except grpc.RpcError as e:
        error = f"{e.code()}: {e.details()}"
    results[n] = {"ids": ids, "error": error}
threads = [threading.Thread(target=read, args=(n,)) for n in range(len(calls))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results), flush=True)
"""


@contextlib.contextmanager
def stopped_subscribers(d, address, window="default_window", streams=2):
    """STREAMS subscribers of D at ADDRESS (STOPPED_SUBSCRIBERS), their
    process stopped (SIGSTOP) once every call is open at the server; yields
    the process, killed at the end if still there."""
    env = dict(os.environ, PYTHONPATH=conftest.PYSTUBS)
    client = subprocess.Popen([sys.executable, "-c", STOPPED_SUBSCRIBERS, address, window,
                               str(streams)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert client.stdout.readline().strip() == "open"
        wait_for(lambda: status_json(d)["subscribers"]["active"] == streams, 10,
                 "the subscribers' calls at the server")
        os.kill(client.pid, signal.SIGSTOP)
        yield client
    finally:
        if client.poll() is None:
            os.kill(client.pid, signal.SIGCONT)
            client.kill()
            client.wait()


def tail_items(prefix, count, size):
    """COUNT items of about SIZE bytes each behind a 300 ms blocker: their
    ids and the items."""
    ids = [f"{prefix}{n}" for n in range(count)]
    items = [{"id": "blocker", "kind": "sleep", "params": {"ms": "300"}}]
    items += [{"id": i, "payload": i.encode() * (size // len(i))} for i in ids]
    return ids, items


def assert_every_tail_received(d, client, ids):
    """The stopped CLIENT runs again: D exits cleanly, and each of its
    subscribers read every final of IDS (and the blocker's) and its clean end."""
    os.kill(client.pid, signal.SIGCONT)
    assert d.wait_exit(timeout=40) == 0, d.log_tail()
    out, _ = client.communicate(timeout=30)
    log = d.log_text()
    for n, result in enumerate(json.loads(out)):
        assert result["error"] is None, \
            f"stopped subscriber {n} ended {result['error']} after " \
            f"{len(result['ids'])} updates; log:\n{log[-3000:]}"
        assert sorted(result["ids"]) == sorted(ids + ["blocker"]), (n, result["ids"])
    assert "reached with" not in log, log


@pytest.mark.deadline(120)
@pytest.mark.parametrize("window", ["default_window", "small_window"])
def test_graceful_stop_tail_reaches_a_stopped_client_process(start_daemon, window):
    """Subscribers whose whole process is stopped (a pause, a debugger, a
    machine under memory pressure) while a graceful stop finishes. Within
    grpcio's default window (about 4 MiB here) gRPC writes everything,
    status included, into the socket and the calls end, but most of it
    still waits in our kernel's send queue (the stopped client's receive
    buffer is full). Closing the connections then, as an idle client's a
    second after the work is done, made the first frame a client sent when
    it ran again (a keepalive ping) meet a closed socket: a reset, the rest
    dropped, UNAVAILABLE "Connection reset by peer" after 1 to 4 of 51
    updates (in 4 runs of 5 before the close waited for the clients to
    acknowledge what is on their connections). Beyond its
    window (64 KiB) the calls stay open and the stop waits anyway. Either
    way each reads every final and the clean end."""
    status_address = f"127.0.0.1:{conftest.free_port()}"
    d = start_daemon({"workers": {"count": 1, "prefetch": 2}, "shutdown_timeout": "40s",
                      "status": {"listen": status_address}})
    d.status_address = status_address
    with stopped_subscribers(d, d.address, window, streams=6) as client:
        # 50 results of 40 KiB (2 MiB) for each: beyond 64 KiB, within 4 MiB.
        ids, items = tail_items("big", 50, 40000)
        assert d.client().submit(items).accepted == len(items)
        d.close_clients()
        d.send_signal(signal.SIGQUIT)
        d.wait_log(r"graceful stop: \d+ items to finish")
        wait_for(lambda: work_done(d), 30, "the work done")
        time.sleep(2.5)     # well past the idle connections' grace
        assert_every_tail_received(d, client, ids)


@pytest.fixture
def far_network():
    """A network namespace joined to ours by a veth pair, for a client the
    test can make vanish without a trace: no iptables or nft here, so
    drop() gives the namespace a blackhole route to us, and nothing its
    kernel sends reaches us any more (no ACK, no reset), as from a machine
    powered off or behind a NAT mapping that expired. Yields an object with
    .ours (our address on the link), .run (the command prefix that runs a
    program in the namespace) and .drop(). Skips where this user cannot
    make namespaces and links (root, iproute2)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and ip(8) for a network namespace")
    pid = os.getpid()
    name = f"dsfar{pid}"
    ours_if, theirs_if = f"dsf{pid}h", f"dsf{pid}c"
    # 198.18.0.0/15: the benchmarking range, in no one's routes here.
    base = f"198.{18 + (pid >> 14) % 2}.{(pid >> 6) & 255}.{(pid & 63) * 4}"
    prefix = base.rsplit(".", 1)[0] + "."
    last = int(base.rsplit(".", 1)[1])
    ours, theirs = prefix + str(last + 1), prefix + str(last + 2)

    def ip(*args):
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")

    class Net:
        pass
    net = Net()
    net.ours, net.run = ours, ["ip", "netns", "exec", name]
    net.drop = lambda: ip("-n", name, "route", "add", "blackhole", f"{ours}/32")
    made = False
    try:
        try:
            ip("netns", "add", name)
            made = True
            ip("link", "add", ours_if, "type", "veth", "peer", "name", theirs_if,
               "netns", name)
            ip("addr", "add", f"{ours}/30", "dev", ours_if)
            ip("link", "set", ours_if, "up")
            ip("-n", name, "addr", "add", f"{theirs}/30", "dev", theirs_if)
            ip("-n", name, "link", "set", theirs_if, "up")
            ip("-n", name, "link", "set", "lo", "up")
        except (RuntimeError, OSError) as e:
            pytest.skip(f"cannot make a network namespace here: {e}")
        yield net
    finally:
        if made:
            # Its end of the pair goes with it, and ours with that.
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


# A client on a connection of its own (keepalive pings, as clients of
# long-lived streams set them) with a subscriber's stream open; it prints
# "open" once its call is made, then waits until killed.
FAR_SUBSCRIBER = r"""
import sys, threading, grpc
from com.agrounds.dosomething.v1 import do_something_pb2 as pb
from com.agrounds.dosomething.v1 import do_something_pb2_grpc as pb_grpc
options = [("grpc.keepalive_time_ms", 500), ("grpc.keepalive_timeout_ms", 20000),
           ("grpc.http2.max_pings_without_data", 0),
           ("grpc.keepalive_permit_without_calls", 1)]
call = pb_grpc.DoSomethingServiceStub(grpc.insecure_channel(sys.argv[1], options=options)) \
    .getUpdates(pb.UpdatesRequest(states=[pb.SUCCEEDED]))
print("open", flush=True)
threading.Thread(target=lambda: [u for u in call], daemon=True).start()
threading.Event().wait()
"""


@pytest.mark.deadline(120)
def test_a_gone_client_does_not_hold_a_graceful_stop(start_daemon, far_network):
    """A client that is gone (its machine off, its NAT mapping expired)
    never acknowledges what the stop writes on its connection (its last
    updates, its stream's OK, GOAWAY, a ping): the kernel retransmits into
    the void. The stop waited for those bytes until shutdown_timeout, or
    20 s when gRPC gave up on the ping it sends with GOAWAY, at every
    restart. It waits for live clients only: one whose connection makes no
    progress for 2 s while the kernel retransmits is closed."""
    status_address = f"127.0.0.1:{conftest.free_port()}"
    far = f"{far_network.ours}:{conftest.free_port()}"
    d = start_daemon(start=False)
    d.write_config({"grpc": {"listen": [d.address, far]}, "shutdown_timeout": "60s",
                    "status": {"listen": status_address}})
    d.start()
    d.status_address = status_address
    env = dict(os.environ, PYTHONPATH=conftest.PYSTUBS)
    client = subprocess.Popen(far_network.run + [sys.executable, "-c", FAR_SUBSCRIBER, far],
                              stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert client.stdout.readline().strip() == "open"
        wait_for(lambda: status_json(d)["subscribers"]["active"] == 1, 10,
                 "the far subscriber's call at the server")
        far_network.drop()
        os.kill(client.pid, signal.SIGSTOP)
        ids = [f"e{i}" for i in range(5)]
        c = d.client()
        assert c.submit([{"id": i, "kind": "echo", "payload": b"x" * 1000}
                         for i in ids]).accepted == 5
        wait_for(lambda: all(i.state == SUCCEEDED for i in c.get_items(ids).items), 10,
                 "every item SUCCEEDED")
        d.close_clients()
        d.send_signal(signal.SIGQUIT)
        t0 = time.monotonic()
        assert d.wait_exit(timeout=70) == 0, d.log_tail()
        elapsed = time.monotonic() - t0
        log = d.log_text()
        # Before, 20 s: gRPC's own close, when the ping it sends with GOAWAY
        # is not answered (else shutdown_timeout, the shorter one).
        assert elapsed < 12, f"exited {elapsed:.1f} s after QUIT; log:\n{log}"
        assert "reached with" not in log, log
        assert re.search(r"graceful stop: not waiting for the \d+ bytes on 1 connection", log), log
    finally:
        if client.poll() is None:
            os.kill(client.pid, signal.SIGCONT)
            client.kill()
            client.wait()


@pytest.mark.deadline(120)
def test_graceful_stop_tail_reaches_a_stopped_client_on_a_unix_socket(make_daemon):
    """The stopped client of the tail test on a unix socket. There nothing
    is acknowledged and a close drops nothing: what waits for the client
    stays readable. But grpcio, running again, may write first (a
    keepalive ping), get EPIPE and fail its streams UNAVAILABLE "Broken
    pipe" before reading what waits: when the stop did not wait for unix
    socket clients, 3 runs of 3 ended so after 0 updates. The stop waits
    until the client has read everything, as for TCP."""
    status_address = f"127.0.0.1:{conftest.free_port()}"
    d = make_daemon()
    d.write_config({"workers": {"count": 1, "prefetch": 2}, "shutdown_timeout": "40s",
                    "status": {"listen": status_address},
                    "grpc": {"listen": [d.address, "unix:ds.sock"]}})
    d.start()
    d.status_address = status_address
    with stopped_subscribers(d, f"unix:{d.dir / 'ds.sock'}") as client:
        # Little enough for the socket's buffers: gRPC writes it all and
        # the calls end.
        ids, items = tail_items("small", 20, 1000)
        assert d.client().submit(items).accepted == len(items)
        d.close_clients()
        d.send_signal(signal.SIGQUIT)
        d.wait_log(r"graceful stop: \d+ items to finish")
        wait_for(lambda: work_done(d), 30, "the work done")
        time.sleep(2.5)     # well past the idle connections' grace
        assert_every_tail_received(d, client, ids)


@contextlib.contextmanager
def descriptors_full(pid):
    """PID's descriptor table kept full for the block: its soft
    RLIMIT_NOFILE at its lowest free descriptor, and again every 20 ms (a
    descriptor it closes makes no lasting room), then back. Skips where
    this user may not (test_descriptors.fd_limit)."""
    from test_descriptors import fd_limit, lowest_free_fd
    done = threading.Event()

    def squeeze():
        while not done.wait(0.02):
            try:
                hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), hard))
            except (ProcessLookupError, FileNotFoundError):
                return
    with fd_limit(pid):
        t = threading.Thread(target=squeeze, daemon=True)
        t.start()
        try:
            yield
        finally:
            done.set()
            t.join()


@pytest.mark.deadline(120)
@pytest.mark.parametrize("full_from", ["the_wait", "the_stop"])
def test_graceful_stop_tail_waits_at_the_descriptor_limit(start_daemon, full_from):
    """The stopped client of the test above, while the grpc process has no
    descriptor left (its table full, as under a flood of connections),
    from the wait for the clients on, or from before the stop: reading
    /proc/self/fd then failed (EMFILE), which counted as "every byte
    acknowledged", and the connections were closed under the stopped
    client. The directory is opened as the stop starts (with a descriptor
    of the reserve if need be) and kept: the stop still waits, and the
    client gets its tail once it runs again."""
    status_address = f"127.0.0.1:{conftest.free_port()}"
    d = start_daemon({"workers": {"count": 1, "prefetch": 2}, "shutdown_timeout": "40s",
                      "status": {"listen": status_address}})
    d.status_address = status_address
    grpc_pid = d.grpc_pid()
    with stopped_subscribers(d, d.address) as client:
        ids, items = tail_items("big", 50, 40000)
        assert d.client().submit(items).accepted == len(items)
        d.close_clients()
        alive = False
        try:
            with contextlib.ExitStack() as full:
                if full_from == "the_stop":
                    full.enter_context(descriptors_full(grpc_pid))
                d.send_signal(signal.SIGQUIT)
                # Not /status: it takes no connection at the limit.
                d.wait_log(r"waiting for clients to receive the \d+ bytes", timeout=30)
                if full_from == "the_wait":
                    full.enter_context(descriptors_full(grpc_pid))
                time.sleep(2.5)     # many looks at the connections
                alive = conftest.pid_alive(grpc_pid)
        except ProcessLookupError:      # gone before its limit could be put back
            pass
        log = d.log_text()
        assert alive, f"the grpc process exited with its clients stopped; log:\n{log}"
        assert "closing the connections clients keep open" not in log, log
        assert "opendir(/proc/self/fd) failed" not in log, log
        assert_every_tail_received(d, client, ids)


# ---- point 17: work left at the drain deadline ---------------------------

def sleep_items(prefix, count, ms):
    return [{"id": f"{prefix}{n}", "kind": "sleep", "params": {"ms": str(ms)}}
            for n in range(count)]


@pytest.mark.deadline(60)
def test_quit_deadline_fails_what_is_left_visibly(start_daemon):
    d = start_daemon({"workers": {"count": 1}, "shutdown_timeout": "2s"})
    client = d.client()
    sub = client.subscribe(sync=True, name="all")
    items = sleep_items("s", 40, 500)
    assert client.submit(items).accepted == 40
    d.send_signal(signal.SIGQUIT)
    assert d.wait_exit(timeout=20) == 0
    sub.wait_end(timeout=10)
    assert sub.error is None, f"the subscriber {sub.describe_end()}"
    ids = [i["id"] for i in items]
    missing = [i for i in ids if i not in sub.final]
    assert missing == [], f"{len(missing)} items got no final update: {missing[:5]}"
    states = [sub.final[i].state for i in ids]
    assert SUCCEEDED in states and FAILED in states
    for i in ids:
        u = sub.final[i]
        if u.state == FAILED:
            assert "graceful stop reached shutdown_timeout (2000 ms)" in u.error, u.error
        assert len([x for x in sub.of(i) if x.state in FINAL_STATES]) == 1
    sub.assert_seq_increasing()
    d.wait_log(r"shutdown_timeout \(2000 ms\) reached with \d+ items unfinished")


@pytest.mark.deadline(90)
def test_quit_deadline_with_journal_runs_the_rest_at_next_start(start_daemon, tmp_path):
    journal = tmp_path / "journal"
    config = {"workers": {"count": 1}, "shutdown_timeout": "2s",
              "queue": {"journal": str(journal)}}
    d = start_daemon(config, name="first")
    client = d.client()
    sub = client.subscribe(sync=True, name="first")
    items = sleep_items("j", 30, 500)
    ids = [i["id"] for i in items]
    assert client.submit(items).accepted == 30
    d.send_signal(signal.SIGQUIT)
    assert d.wait_exit(timeout=20) == 0
    sub.wait_end(timeout=10)
    assert sub.error is None, f"the subscriber {sub.describe_end()}"
    done = {i for i in ids if i in sub.final}
    assert all(sub.final[i].state == SUCCEEDED for i in done)
    left = [i for i in ids if i not in done]
    assert left, "the drain finished everything: the test proves nothing"
    for i in left:
        # Not final: told it stays in the journal for the next start.
        last = sub.of(i)[-1]
        assert last.state == RETRYING, (i, sub.states_of(i))
        assert "graceful stop reached shutdown_timeout (2000 ms)" in last.error, last.error
        assert "next start" in last.error, last.error

    config["workers"]["count"] = 4
    d2 = start_daemon(config, name="second")
    sub2 = d2.client().subscribe(replay=True, after_seq=0, states=list(FINAL_STATES),
                                 name="second")
    finals = sub2.wait_final(left, timeout=40)
    assert all(u.state == SUCCEEDED for u in finals.values()), \
        {i: (u.state, u.error) for i, u in finals.items() if u.state != SUCCEEDED}
    assert not set(sub2.final) & done, "an item final before the stop ran again"


# ---- point 17: a binary upgrade hands the waiting items over -------------

@pytest.mark.deadline(90)
@pytest.mark.parametrize("journal", [False, True], ids=["memory", "journal"])
def test_usr2_hands_waiting_items_to_the_new_instance(start_daemon, monkeypatch, tmp_path,
                                                      journal):
    binary = tmp_path / "dosomethingd"
    shutil.copy(conftest.BINARY, binary)
    monkeypatch.setattr(conftest, "BINARY", str(binary))
    config = {"workers": {"count": 2}, "shutdown_timeout": "2s"}
    if journal:
        config["queue"] = {"journal": str(tmp_path / "journal")}
    d = start_daemon(config)
    old_master = d.master_pid
    client = d.client()
    old_sub = client.subscribe(sync=True, name="old")
    # 40 x 500 ms on 2 workers: 10 s of work, far more than shutdown_timeout.
    items = sleep_items("u", 40, 500)
    ids = [i["id"] for i in items]
    assert client.submit(items).accepted == 40
    new_master = None
    try:
        d.send_signal(signal.SIGUSR2)
        wait_for(lambda: d.read_pid_file() not in (None, old_master), 10,
                 "the new master's pid file")
        new_master = d.read_pid_file()
        d.known_pids.add(new_master)
        assert d.wait_exit(timeout=20) == 0, "the old master did not drain and exit"
        # Only the new instance listens now; its log has all it published.
        new_client = conftest.Client(d.address)
        new_sub = new_client.subscribe(replay=True, after_seq=0, states=list(FINAL_STATES),
                                       name="new")
        old_sub.wait_end(timeout=10)
        assert old_sub.error is None, f"the old instance's subscriber {old_sub.describe_end()}"
        d.wait_log(r"handover: \d+ items handed over to the new instance")

        on_old = {i for i in ids if i in old_sub.final}
        handed = [i for i in ids if i not in on_old]
        assert handed, "the old instance ran everything: no handover to see"
        for i in handed:
            last = old_sub.of(i)[-1]
            assert last.state == RETRYING and "handed over" in last.error, \
                (i, old_sub.states_of(i))
        finals = new_sub.wait_final(handed, timeout=40)
        assert all(u.state == SUCCEEDED for u in finals.values()), \
            {i: (u.state, u.error) for i, u in finals.items() if u.state != SUCCEEDED}
        assert all(old_sub.final[i].state == SUCCEEDED for i in on_old)
        # Each ran once: none of the old instance's finals shows up again.
        assert not on_old & set(new_sub.final)
        new_sub.assert_seq_increasing()
        assert min(u.seq for u in new_sub.snapshot()) > old_sub.last_seq()
        new_client.close()
    finally:
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(60)
def test_an_open_reflection_stream_does_not_hold_a_graceful_stop(start_daemon):
    """A reflection stream (grpcurl, grpcui, evans hold one open) never
    ends by itself: the drain ends it UNAVAILABLE, as it ends subscribers,
    health watches and getItems waits (it held the stop until
    shutdown_timeout, then the fast stop)."""
    d = start_daemon({"shutdown_timeout": "20s"})
    channel = grpc.insecure_channel(d.address)
    done = threading.Event()

    def requests():
        yield b"\x3a\x00"          # list_services: ""
        done.wait(30)

    call = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b, response_deserializer=lambda b: b)(requests(), timeout=30)
    try:
        assert next(call)                # answered: the stream is open
        t0 = time.monotonic()
        d.send_signal(signal.SIGQUIT)
        with pytest.raises(grpc.RpcError) as e:
            next(call)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
        assert d.wait_exit(timeout=30) == 0, d.log_tail()
        elapsed = time.monotonic() - t0
        assert "reached with" not in d.log_text(), d.log_text()
        assert elapsed < 15, f"exited {elapsed:.1f} s after QUIT (shutdown_timeout 20s)"
    finally:
        done.set()
        channel.close()


@pytest.mark.deadline(60)
def test_an_idle_client_connection_does_not_hold_a_graceful_stop(start_daemon):
    """Before, gRPC's server shutdown waited for the client's idle
    connection, which a grpcio client never closes after GOAWAY: every
    graceful stop with a client connected lasted shutdown_timeout (+3 s),
    logging "shutdown_timeout (20000 ms) reached with 0 items unfinished"."""
    d = start_daemon({"shutdown_timeout": "20s"})
    c = d.client()
    ids = [f"e{i}" for i in range(5)]
    assert c.submit([{"id": i, "kind": "echo", "payload": b"x"} for i in ids]).accepted == 5
    # No stream open (a subscriber's, which ends at the drain, takes its
    # connection with it): the connection is idle when GOAWAY comes.
    wait_for(lambda: all(i.state == SUCCEEDED for i in c.get_items(ids).items), 10,
             "every item SUCCEEDED")
    time.sleep(0.5)
    d.send_signal(signal.SIGQUIT)
    t0 = time.monotonic()
    assert d.wait_exit(timeout=30) == 0, d.log_tail()
    elapsed = time.monotonic() - t0
    log = d.log_text()
    assert elapsed < 4, f"exited {elapsed:.1f} s after QUIT; log:\n{log}"
    assert "reached with" not in log, log
    assert "graceful stop: everything is done; closing the connections clients keep open" \
        in log, log
