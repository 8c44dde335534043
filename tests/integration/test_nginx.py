"""
nginx as the gRPC front of two dosomethingd instances, with the shipped
contrib/nginx/dosomething.conf (its upstream servers, listen address and log
path rewritten for the test) inside a main config of the test's own: every
file nginx writes is in the test's directory, it runs in the foreground as
a child of the test, and is stopped (and its workers killed) at teardown.

Each instance has its own queue and update log, so the tests collect final
updates by subscribing to each instance directly.

nginx comes from Debian's `nginx` package; if it is missing the tests try to
install it, and are skipped only if that fails.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import grpc
import pytest

import conftest
from conftest import (FAILED, REPO, SUCCEEDED, descendants, missing_dependency, pid_alive,
                      wait_for)
from test_clients import kind, run_client, write_lines  # noqa: F401 (fixtures)

SHIPPED_CONF = REPO / "contrib" / "nginx" / "dosomething.conf"
AFFINITY_HEADER = "x-dosomething-affinity"
NGINX_START_TIMEOUT = 10
APT_TIMEOUT = 600

_nginx_binary = None


def nginx_binary():
    """The nginx binary; installs Debian's nginx package if it is missing,
    skips the test if that cannot be done."""
    global _nginx_binary
    if _nginx_binary:
        return _nginx_binary
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        if os.geteuid() != 0:
            missing_dependency("nginx is not installed and this is not root: apt-get install nginx")
        pid_file = "/run/nginx.pid"
        had_service = os.path.exists(pid_file)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        out = ""
        for cmd in (["apt-get", "install", "-y", "-q", "nginx"],
                    ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "nginx"]):
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                   timeout=APT_TIMEOUT, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                missing_dependency(f"nginx is not installed and `{' '.join(cmd)}` took over "
                            f"{APT_TIMEOUT} s")
            out = r.stdout + r.stderr
            if cmd[1] == "install" and r.returncode == 0:
                break
        found = shutil.which("nginx") or ("/usr/sbin/nginx"
                                          if os.access("/usr/sbin/nginx", os.X_OK) else None)
        if found is None:
            tail = "\n".join(out.strip().splitlines()[-10:])
            missing_dependency(f"nginx is not installed and the nginx package could not be "
                        f"installed:\n{tail}")
        # The package's postinst may have started the system service (port 80);
        # that one we started, so we stop it.
        if not had_service and os.path.exists(pid_file):
            try:
                pid = int(open(pid_file).read().strip())
                if "nginx" in (conftest.proc_title(pid) or ""):
                    os.kill(pid, signal.SIGQUIT)
            except (ValueError, OSError):
                pass
    _nginx_binary = found
    return found


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Nginx:
    """One nginx in `directory`, in front of `upstreams` (two host:port)."""

    def __init__(self, directory, upstreams, fail_timeout=None):
        self.binary = nginx_binary()
        self.fail_timeout = fail_timeout
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = conftest.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.upstreams = list(upstreams)
        self.access_log = self.dir / "access.log"
        self.error_log = self.dir / "error.log"
        self.pid_path = self.dir / "nginx.pid"
        self.conf = self.dir / "nginx.conf"
        self.proc = None
        self.pids = set()
        self.write_config()

    def write_config(self):
        text = SHIPPED_CONF.read_text()
        for old, new in (("server 127.0.0.1:8081 ", f"server {self.upstreams[0]} "),
                         ("server 127.0.0.1:8082 ", f"server {self.upstreams[1]} "),
                         ("listen 8080 http2;", f"listen {self.address} http2;"),
                         ("/var/log/nginx/dosomething.access.log", str(self.access_log))):
            assert text.count(old) == 1, f"{SHIPPED_CONF} no longer has {old!r} exactly once"
            text = text.replace(old, new)
        if self.fail_timeout:
            assert text.count("fail_timeout=10s") == 2, f"{SHIPPED_CONF}: fail_timeout changed"
            text = text.replace("fail_timeout=10s", f"fail_timeout={self.fail_timeout}")
        (self.dir / "dosomething.conf").write_text(text)
        d = self.dir
        user = "user root;\n" if os.geteuid() == 0 else ""   # workers must reach this directory
        self.conf.write_text(f"""\
daemon off;
master_process on;
worker_processes 1;
{user}pid {self.pid_path};
error_log {self.error_log} info;
events {{
    worker_connections 1024;
}}
http {{
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    access_log {d}/access-other.log;
    include {d}/dosomething.conf;
}}
""")

    def command(self, *extra):
        return [self.binary, "-p", f"{self.dir}/", "-c", str(self.conf), "-e",
                str(self.error_log), *extra]

    def start(self):
        r = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=15,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"nginx -t failed:\n{r.stdout}{r.stderr}"
        with open(self.dir / "nginx.stderr", "ab") as err:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=err,
                                         stderr=err)
        self.pids.add(self.proc.pid)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}:\n"
                                     f"{self.log_tail()}")
            return port_open(self.port) and self.pid_path.exists()
        wait_for(ready, NGINX_START_TIMEOUT, f"nginx listening on {self.address}")
        self.pids.update(descendants(self.proc.pid))
        return self

    def log_tail(self, lines=20):
        out = []
        for p in (self.dir / "nginx.stderr", self.error_log):
            if p.exists():
                out += p.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    def stop(self):
        """Fast shutdown; SIGKILL for the master and its workers if it dawdles."""
        if self.proc is None:
            return
        self.pids.update(descendants(self.proc.pid))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pid in self.pids:
            if pid != self.proc.pid and pid_alive(pid) and "nginx" in (conftest.proc_title(pid) or ""):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(pid_alive(p) for p in self.pids), 5, "nginx processes to exit")

    def access_records(self):
        """[(uri, http status, grpc status, upstream list)] of the access log."""
        rx = re.compile(r'"POST (\S+) HTTP/2.0" (\d+) grpc_status=(\S+) upstream=(.*?) '
                        r'request_time=')
        out = []
        if self.access_log.exists():
            for line in self.access_log.read_text().splitlines():
                m = rx.search(line)
                if m:
                    out.append((m.group(1), int(m.group(2)), m.group(3),
                                [u.strip() for u in m.group(4).split(",")]))
        return out


@pytest.fixture
def nginx_front(tmp_path):
    """Factory: nginx_front(upstreams) -> a started Nginx; stopped at teardown."""
    made = []

    def start(upstreams, fail_timeout=None):
        n = Nginx(tmp_path / f"nginx{len(made)}", upstreams, fail_timeout)
        made.append(n)
        return n.start()

    yield start
    for n in made:
        n.stop()


@pytest.fixture
def two_instances(start_daemon):
    """Two daemons with one worker each (the machine has two cores)."""
    return [start_daemon({"workers": {"count": 1}}, name=f"i{n}") for n in (1, 2)]


def final_subscriptions(instances):
    """A live, synced subscription to the final updates of each instance."""
    return [d.client().subscribe(sync=True, states=[SUCCEEDED, FAILED], name=f"sub-{d.name}")
            for d in instances]


def echo_items(prefix, n):
    return [conftest.pb.WorkItem(id=f"{prefix}-{i}", kind="echo", payload=b"%s %d" % (
        prefix.encode(), i)) for i in range(n)]


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------

def test_calls_without_affinity_go_round_robin_over_the_instances(two_instances, nginx_front):
    instances = two_instances
    subs = final_subscriptions(instances)
    front = nginx_front([d.address for d in instances])

    channels = [grpc.insecure_channel(front.address, options=conftest.CHANNEL_OPTIONS)
                for _ in range(4)]
    try:
        ids = []
        for call in range(5):
            for c, ch in enumerate(channels):
                items = echo_items(f"rr-{c}-{call}", 10)
                stub = conftest.pb_grpc.DoSomethingServiceStub(ch)
                reply = stub.doSomething(iter(items), timeout=30)
                assert (reply.accepted, reply.rejected) == (10, 0), reply
                ids += [it.id for it in items]
    finally:
        for ch in channels:
            ch.close()

    def collected():
        return set().union(*({i for i in s.final if i.startswith("rr-")} for s in subs))
    wait_for(lambda: collected() >= set(ids), 30, "every item's final update")
    per_instance = [{i for i in s.final if i.startswith("rr-")} for s in subs]
    assert not per_instance[0] & per_instance[1], "an item ran on both instances"
    assert all(s.final[i].state == SUCCEEDED for s in subs for i in s.final if i.startswith("rr-"))
    # Round robin, call by call: both instances got half of the calls.
    assert [len(p) for p in per_instance] == [100, 100], [len(p) for p in per_instance]

    submits = [r for r in front.access_records() if r[0].endswith("/doSomething")]
    assert len(submits) == 20 and all(r[1] == 200 and r[2] == "0" for r in submits), submits
    assert {r[3][-1] for r in submits} == {d.address for d in instances}


def test_affinity_keeps_a_clients_run_on_one_instance(kind, two_instances, nginx_front,
                                                      run_client, tmp_path):
    """The example clients send x-dosomething-affinity: BATCH, so their
    getUpdates and doSomething calls land on the same instance and the run
    works through nginx."""
    instances = two_instances
    front = nginx_front([d.address for d in instances])
    items = write_lines(tmp_path / "items.txt", [f"p{n}" for n in range(100)])
    c = run_client(kind, front.address, items, "--kind", "echo", "--chunk", "10")
    assert c.rc == 0, c.describe()
    finals = c.finals()
    assert len(finals) == 100 and {r["state"] for r in finals.values()} == {"SUCCEEDED"}
    workers = [set(d.worker_pids()) for d in instances]
    pids = {r["worker_pid"] for r in finals.values()}
    assert pids <= workers[0] or pids <= workers[1], (pids, workers)
    calls = front.access_records()
    assert len({r[3][-1] for r in calls}) == 1, calls      # every call, one upstream


def test_health_and_unknown_services_through_nginx(two_instances, nginx_front):
    front = nginx_front([d.address for d in two_instances])
    ch = grpc.insecure_channel(front.address, options=conftest.CHANNEL_OPTIONS)
    try:
        def raw(method):
            return ch.unary_unary(method, request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
        # HealthCheckRequest{service: ""} -> HealthCheckResponse{status: SERVING (1)}
        assert raw("/grpc.health.v1.Health/Check")(b"", timeout=10) == b"\x08\x01"
        with pytest.raises(grpc.RpcError) as e:
            raw("/no.such.Service/Method")(b"", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        ch.close()


def test_a_stopped_instance_is_skipped(two_instances, nginx_front):
    """Passive health: connections refused by a stopped instance make nginx
    try the other one, and after max_fails it stops trying the dead one."""
    up, down = two_instances
    sub = final_subscriptions([up])[0]
    front = nginx_front([up.address, down.address])
    assert down.stop() == 0

    ch = grpc.insecure_channel(front.address, options=conftest.CHANNEL_OPTIONS)
    try:
        stub = conftest.pb_grpc.DoSomethingServiceStub(ch)
        ids = []
        for call in range(10):
            items = echo_items(f"fo-{call}", 10)
            reply = stub.doSomething(iter(items), timeout=30)
            assert (reply.accepted, reply.rejected) == (10, 0), reply
            ids += [it.id for it in items]
    finally:
        ch.close()
    finals = sub.wait_final(ids, timeout=30)
    assert all(u.state == SUCCEEDED for u in finals.values())
    records = [r for r in front.access_records() if r[0].endswith("/doSomething")]
    assert all(r[3][-1] == up.address for r in records), records
    tried_down = [r for r in records if down.address in r[3]]
    assert 1 <= len(tried_down) <= 2, records          # max_fails=2, then it is left out
    assert "Connection refused" in front.error_log.read_text()


@pytest.mark.deadline(120)
def test_rolling_restart_behind_nginx(kind, two_instances, nginx_front, start_daemon,
                                      run_client, tmp_path):
    """A rolling deploy under a client's run. The instance the run is pinned
    to stops gracefully (QUIT) mid-run: it finishes what it accepted, the
    client resubscribes through nginx, lands on the other instance and goes
    on there. Then the instance comes back on its port and nginx hashes the
    run's calls to it again: the client notices (x-dosomething-instance),
    moves its subscription after them once the other instance's items are
    final, and exits 0 with every item printed once.

    To make it deterministic the client is paused (SIGSTOP) while the
    instance restarts and nginx's fail_timeout (1 s here) runs out."""
    instances = two_instances
    front = nginx_front([d.address for d in instances], fail_timeout="1s")
    items = write_lines(tmp_path / "items.txt", [f"p{n}" for n in range(300)])
    c = run_client(kind, front.address, items, "--kind", "sleep", "--param", "ms=20",
                   "--window", "10", "--chunk", "10", "--deadline", "90", wait=False)
    c.wait_records(30, timeout=20)
    workers = [set(d.worker_pids()) for d in instances]
    first = c.records[0]["worker_pid"]
    pinned = 0 if first in workers[0] else 1
    assert first in workers[pinned], (first, workers)
    old = instances[pinned]

    old.send_signal(signal.SIGQUIT)
    assert len(c.records) < 100, "QUIT came too late to test anything"
    # The run goes on on the other instance.
    wait_for(lambda: any(r["worker_pid"] in workers[1 - pinned] for r in c.records), 30,
             f"finals from the other instance; {c.describe()}")
    # Paused before the old instance's drain ends, however long that takes:
    # the run must not be over by the time the instance is back.
    os.kill(c.proc.pid, signal.SIGSTOP)
    try:
        assert old.wait_exit(timeout=15) == 0
        assert len(c.records) < 250, "the run is nearly over: nothing left to move back"
        back = start_daemon({"workers": {"count": 1}, "grpc": {"listen": [old.address]}},
                            name=f"{old.name}-back", start=False)
        back.port, back.address = old.port, old.address
        back.start()
        time.sleep(1.5)                 # nginx's fail_timeout for the old instance runs out
    finally:
        os.kill(c.proc.pid, signal.SIGCONT)

    assert c.wait(timeout=60) == 0, c.describe()
    finals = c.finals()
    assert len(finals) == 300 and {r["state"] for r in finals.values()} == {"SUCCEEDED"}
    groups = [workers[pinned], workers[1 - pinned], set(back.worker_pids())]
    on = [sum(1 for r in finals.values() if r["worker_pid"] in w) for w in groups]
    # Finals the client looked up with getItems after a reconnect (it missed
    # their updates) name no worker: getItems gives a worker pid only while
    # an item runs.
    looked_up = sum(1 for r in finals.values() if r.get("looked_up"))
    assert on[0] >= 30 and on[1] > 0 and on[2] > 0 and sum(on) + looked_up == 300, (on, looked_up)
    s = c.summary()
    assert s["switches"] >= 1, s
