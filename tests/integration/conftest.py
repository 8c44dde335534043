"""
Integration test harness for dosomethingd: the real binary, real processes,
grpcio as the client.

Environment (set by `make integration`):
  DS_BINARY   absolute path of build/dosomethingd
  DS_PYSTUBS  directory holding com/agrounds/dosomething/v1/do_something_pb2*.py

Main pieces:
  Daemon        one daemon under test: config, start, process tree, log, stop,
                and a finalizer that SIGKILLs it and every process it made.
  Client        a gRPC channel to it: submit(), subscribe(), run_items().
  Subscription  one getUpdates call read by a thread into a list.
  wait_for()    the one polling loop; every wait in the suite is bounded.

Fixtures: `start_daemon(overrides)` (factory), `daemon` (started with the
defaults), `client` (connected to `daemon`), `cli(*args)` (runs the binary).
"""
import http.client
import itertools
import os
import pwd
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BINARY = os.environ.get("DS_BINARY") or str(REPO / "build" / "dosomethingd")
PYSTUBS = os.environ.get("DS_PYSTUBS") or str(REPO / "build" / "py")
if PYSTUBS not in sys.path:
    sys.path.insert(0, PYSTUBS)

import grpc  # noqa: E402

try:
    from com.agrounds.dosomething.v1 import do_something_pb2 as pb  # noqa: E402
    from com.agrounds.dosomething.v1 import do_something_pb2_grpc as pb_grpc  # noqa: E402
except ImportError as e:  # pragma: no cover - reported by the skip below
    pb = pb_grpc = None
    _STUB_ERROR = e
else:
    _STUB_ERROR = None

SERVICE = "com.agrounds.dosomething.v1.DoSomethingService"
METHOD_SUBMIT = f"/{SERVICE}/doSomething"
METHOD_UPDATES = f"/{SERVICE}/getUpdates"

DEFAULT_TEST_DEADLINE = 60      # seconds per test, unless @pytest.mark.deadline(N)
READY_TIMEOUT = 10              # seconds for a daemon to serve with all its workers
STOP_TIMEOUT = 10               # seconds for a daemon to exit after TERM/QUIT

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = b"\x08\x01"         # HealthCheckResponse{status: SERVING}
NOT_SERVING = b"\x08\x02"     # HealthCheckResponse{status: NOT_SERVING}

PROBE_PREFIX = "probe-"         # ids of the items subscribe(sync=True) submits

if pb is not None:
    QUEUED, STARTED, PROGRESS = pb.QUEUED, pb.STARTED, pb.PROGRESS
    SUCCEEDED, FAILED, RETRYING = pb.SUCCEEDED, pb.FAILED, pb.RETRYING
    CANCELLED = pb.CANCELLED
    FINAL_STATES = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
else:  # the tests are skipped; the names only have to exist
    QUEUED, STARTED, PROGRESS, SUCCEEDED, FAILED, RETRYING, CANCELLED = range(1, 8)
    FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)


def state_name(state):
    return pb.State.Name(state) if pb is not None else str(state)


# --------------------------------------------------------------------------
# per-test deadline (pytest-timeout is not installed on Debian 12 by default)
# --------------------------------------------------------------------------

class TestDeadlineExceeded(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    marker = item.get_closest_marker("deadline")
    seconds = marker.args[0] if marker else DEFAULT_TEST_DEADLINE

    def on_alarm(signum, frame):
        raise TestDeadlineExceeded(f"test ran longer than its {seconds} s deadline")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def pytest_collection_modifyitems(config, items):
    reason = None
    if _STUB_ERROR is not None:
        reason = f"generated stubs not importable from {PYSTUBS} ({_STUB_ERROR}); run `make pystubs`"
    elif not os.access(BINARY, os.X_OK):
        reason = f"{BINARY} not built; run `make`"
    if reason:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

STRICT_DEPS = os.environ.get("DS_STRICT_DEPS") == "1"
# make check-asan: the daemon runs on ASan's allocator, which keeps freed
# memory in quarantine and ignores malloc_trim, so bounds on RSS say nothing
# there; they are checked by make test.
SANITIZED = os.environ.get("DS_SANITIZED") == "1"


def missing_dependency(reason):
    """A dependency of a test is missing. Under `make test` (DS_STRICT_DEPS=1),
    which installs every dependency itself, that is a broken set-up and the
    test fails; a bare pytest run skips it with REASON."""
    if STRICT_DEPS:
        pytest.fail(f"missing dependency (make test installs it): {reason}", pytrace=False)
    pytest.skip(reason)


# The test module (tests/unit/test_handlers.c built with DS_TEST_MODULE):
# each variant's file under build/tests/modules (mk/handlers.mk) and the
# macros it is built with.
TEST_MODULES = {
    "ok": ("test_module.so", []),
    "abi99": ("test_module_abi99.so", ["-DDS_TEST_MODULE_ABI=99"]),
    "nosym": ("test_module_nosym.so", ["-DDS_TEST_MODULE_NOSYM"]),
    "quick": ("test_module_quick.so", ["-DDS_TEST_MODULE_QUICK"]),
    "cancellable": ("test_module_cancel.so", ["-DDS_TEST_MODULE_CANCEL"]),
    "retry": ("test_module_retry.so", ["-DDS_TEST_MODULE_RETRY"]),
    "quick_retry": ("test_module_quick_retry.so",
                    ["-DDS_TEST_MODULE_QUICK", "-DDS_TEST_MODULE_RETRY"]),
    "quick_cancel": ("test_module_quick_cancel.so",
                     ["-DDS_TEST_MODULE_QUICK", "-DDS_TEST_MODULE_CANCEL"]),
}


def built_test_modules(*variants):
    """A generator for a fixture: {variant: path} of the TEST_MODULES
    VARIANTS, the ones `make` built next to the binary, or else compiled
    here into a temporary directory every user can read (workers may run
    as `user: nobody`), removed afterwards."""
    built = Path(BINARY).resolve().parent / "tests" / "modules"
    if all((built / TEST_MODULES[v][0]).exists() for v in variants):
        yield {v: built / TEST_MODULES[v][0] for v in variants}
        return
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        missing_dependency("no C compiler to build the test module")
    out = Path(tempfile.mkdtemp(prefix="ds-test-modules-"))
    out.chmod(0o755)
    try:
        for v in variants:
            name, flags = TEST_MODULES[v]
            subprocess.run([cc, "-std=gnu11", "-O2", "-shared", "-fPIC", "-D_GNU_SOURCE",
                            f"-I{REPO / 'include'}", "-DDS_TEST_MODULE", *flags, "-o",
                            str(out / name), str(REPO / "tests" / "unit" / "test_handlers.c")],
                           check=True)
            (out / name).chmod(0o755)   # whatever the umask
        yield {v: out / TEST_MODULES[v][0] for v in variants}
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture
def nobody_user():
    """The passwd entry of user nobody, for a test of `user:` (the daemon
    started as root drops to it). Not root, or no such user: a missing
    dependency (make test runs as root, as its apt-get needs)."""
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pw = None
    if os.geteuid() != 0 or pw is None:
        missing_dependency("needs root (to start the daemon with user: nobody) and a user "
                           "nobody")
    return pw


def wait_for(predicate, timeout, what="condition", interval=0.02):
    """Poll predicate() until it returns something truthy; return that value.
    Raise AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def http_get(address, path, timeout=2):
    """(status, body as text) of GET PATH at ADDRESS (host:port), or None if
    nothing answers."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    except OSError:
        return None
    finally:
        conn.close()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


_EPHEMERAL_LOW = _ephemeral_low()
_ports = random.Random()


def _port_range():
    """[LOW, HIGH) of free_port()'s choice: below the ephemeral range, and
    under pytest-xdist (make integration runs two workers) a part of it per
    worker, so that two tests never pick the same port at once."""
    low, high = 10000, _EPHEMERAL_LOW
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")      # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1 and high - low > 2000:
        i, span = int(worker[2:]), (high - low) // count
        low, high = low + i * span, low + (i + 1) * span
    return low, high


_PORT_LOW, _PORT_HIGH = _port_range()


def free_port():
    """A loopback port nothing listens on, from below the ephemeral range
    when there is room there: a port the kernel hands out (bind to 0) is
    also what it picks for the next outgoing connection, which then holds
    it when the daemon binds it."""
    for _ in range(100 if _PORT_HIGH - _PORT_LOW > 1000 else 0):
        port = _ports.randrange(_PORT_LOW, _PORT_HIGH)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_merge(base, override):
    """A copy of base with override merged in; a None value deletes the key."""
    out = dict(base)
    for key, value in (override or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class _ConfigDumper(yaml.SafeDumper):
    """Writes Python booleans as on/off, the words the config documents."""


_ConfigDumper.add_representer(
    bool, lambda d, v: d.represent_scalar("tag:yaml.org,2002:bool", "on" if v else "off"))


def dump_config(config):
    return yaml.dump(config, Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False)


# ---- /proc --------------------------------------------------------------

def proc_stat(pid):
    """(state, ppid) of pid, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def proc_title(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def proc_cwd(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def all_pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def pid_alive(pid):
    """True if pid exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def is_dosomethingd(pid):
    title = proc_title(pid)
    return bool(title) and "dosomethingd" in title


def descendants(root):
    """Every live descendant of root (found by walking ppid links)."""
    children = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st is not None:
            children.setdefault(st[1], []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(root):
    """SIGKILL root and every live descendant of it (a new master a test
    started by an upgrade, and what it forked)."""
    for pid in [root] + descendants(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tcp_listeners(port):
    """The /proc/net/tcp{,6} rows (split) of the sockets listening on TCP
    port (this network namespace)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                yield fields


def listening_inodes(port):
    """Socket inodes listening on TCP port (this network namespace)."""
    return {fields[9] for fields in tcp_listeners(port)}


def listener_uids(port):
    """Owner uids of the sockets listening on TCP port (this network namespace)."""
    return {int(fields[7]) for fields in tcp_listeners(port)}


def owns_listener(pid, port):
    """Does pid hold a socket listening on port?"""
    wanted = {f"socket:[{i}]" for i in listening_inodes(port)}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
        except OSError:
            pass
    return False


WORKER_TITLE = re.compile(r"^dosomethingd: worker (\d+)")


def run_cli(*args, timeout=15, cwd=None):
    """Run the binary with args; return CompletedProcess (text)."""
    return subprocess.run([BINARY, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)


# --------------------------------------------------------------------------
# Daemon
# --------------------------------------------------------------------------

class Daemon:
    """One dosomethingd under test, in its own directory."""

    def __init__(self, directory, overrides=None, name="ds"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config_path = self.dir / f"{name}.yaml"
        self.log_path = self.dir / f"{name}.log"
        self.pid_path = self.dir / f"{name}.pid"
        self.stderr_path = self.dir / f"{name}.stderr"
        self.proc = None
        self.master_pid = None
        self.known_pids = set()      # every dosomethingd pid this daemon ever showed us
        self.clients = []
        self._spent_channels = []
        self.config = None
        self.nofile = None           # (soft, hard) RLIMIT_NOFILE to start under, or None
        self.write_config(overrides)

    # ---- config ---------------------------------------------------------

    def default_config(self):
        return {
            "daemon": False,
            "pid_file": self.pid_path.name,          # relative to the config's directory
            "log": {"level": "info", "file": str(self.log_path)},
            "workers": {"count": 2},
            "grpc": {"listen": [self.address]},
            "status": {"listen": False},
            "respawn": {"backoff_min": "50ms", "backoff_max": "500ms",
                        "stable_after": "10s", "crash_limit": 10},
            "shutdown_timeout": "5s",
        }

    def write_config(self, overrides=None, text=None):
        """Write the config file: defaults merged with overrides, or raw text."""
        if text is None:
            self.config = deep_merge(self.default_config(), overrides)
            text = dump_config(self.config)
        self.config_path.write_text(text)
        return self.config_path

    @property
    def worker_count_configured(self):
        return int(self.config["workers"]["count"])

    # ---- start / stop ---------------------------------------------------

    def start(self, wait=True, workers=None):
        assert self.proc is None, "daemon already started"
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [BINARY, "-c", str(self.config_path)], cwd=self.dir,
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                preexec_fn=self._limit_descriptors if self.nofile else None)
        self.master_pid = self.proc.pid
        self.known_pids.add(self.proc.pid)
        if wait:
            self.wait_ready(workers=workers)
        return self

    def _limit_descriptors(self):
        resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def wait_ready(self, workers=None, timeout=READY_TIMEOUT):
        """Until the gRPC port accepts a channel and `workers` workers run."""
        if workers is None:
            workers = self.worker_count_configured
        deadline = time.monotonic() + timeout
        # Its own subchannel: one shared with earlier channels to this port
        # may still hold the connection state of a process that is gone.
        ch = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS +
                                   [("grpc.use_local_subchannel_pool", 1)])
        # Closed at teardown, not now: grpc's connectivity poller thread may
        # still touch it for a moment and complains if it is closed under it.
        self._spent_channels.append((ch, time.monotonic()))
        ready = grpc.channel_ready_future(ch)
        try:
            while True:
                self._assert_running("while waiting for it to serve")
                try:
                    ready.result(timeout=0.25)
                    break
                except grpc.FutureTimeoutError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.address} not serving after {timeout} s; log:\n{self.log_tail()}")
        finally:
            ready.cancel()
        def settled():
            slots = self.worker_slots()
            grpc_pid = self.grpc_pid()
            return (sorted(slots) == list(range(1, workers + 1))
                    and all(len(p) == 1 for p in slots.values())
                    and grpc_pid is not None
                    # and the port is ours, not another test run's that raced us to it
                    and owns_listener(grpc_pid, self.port))
        try:
            wait_for(settled, max(0.5, deadline - time.monotonic()),
                     f"{workers} workers and a grpc process")
        except AssertionError as e:
            raise AssertionError(f"{e}; have {self.children()}; log:\n{self.log_tail()}") from None
        return self

    def _assert_running(self, when):
        if self.proc is not None and self.proc.pid == self.master_pid \
                and self.proc.poll() is not None:
            raise AssertionError(f"master exited with {self.proc.returncode} {when}; "
                                 f"log:\n{self.log_tail()}")

    def send_signal(self, sig):
        os.kill(self.master_pid, sig)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """Wait for the master to exit; return its exit status (if our child)."""
        if self.proc is not None and self.proc.pid == self.master_pid:
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"master {self.master_pid} still running {timeout} s "
                                     f"later; log:\n{self.log_tail()}") from None
        wait_for(lambda: not pid_alive(self.master_pid), timeout,
                 f"master {self.master_pid} to exit")
        return None

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Signal the master and wait for it; return its exit status."""
        self.close_clients()
        if self.master_pid is None or not pid_alive(self.master_pid):
            return self.proc.poll() if self.proc else None
        self.send_signal(sig)
        return self.wait_exit(timeout)

    def kill_all(self):
        """Finalizer: SIGKILL the master and everything it made, whatever state
        the test left them in, and reap the master."""
        self.close_clients()
        doomed = self._ours()
        if self.master_pid is not None and pid_alive(self.master_pid):
            os.kill(self.master_pid, signal.SIGKILL)     # first: no more respawns
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        doomed |= self._ours()                          # anything forked meanwhile
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(pid_alive(p) for p in doomed):
            time.sleep(0.02)

    def _ours(self):
        """Live dosomethingd processes of this daemon: the master, its
        descendants, every pid seen before, and orphans still in its directory."""
        pids = set(self.known_pids)
        if self.master_pid is not None:
            pids.add(self.master_pid)
            pids.update(descendants(self.master_pid))
        here = str(self.dir.resolve())
        pids.update(pid for pid in all_pids() if proc_cwd(pid) == here)
        me = os.getpid()
        return {p for p in pids if p != me and pid_alive(p) and is_dosomethingd(p)}

    # ---- process tree ---------------------------------------------------

    def children(self):
        """{'grpc': [pid...], 'workers': {slot: [pid...]}, 'other': [pid...]}:
        the master's live children by the title they show."""
        out = {"grpc": [], "workers": {}, "other": []}
        if self.master_pid is None:
            return out
        for pid in all_pids():
            st = proc_stat(pid)
            if st is None or st[1] != self.master_pid or st[0] in ("Z", "X"):
                continue
            title = proc_title(pid) or ""
            m = WORKER_TITLE.match(title)
            if title.startswith("dosomethingd: grpc"):
                out["grpc"].append(pid)
            elif m:
                out["workers"].setdefault(int(m.group(1)), []).append(pid)
            else:
                out["other"].append(pid)      # just forked, not titled yet
                continue
            self.known_pids.add(pid)
        return out

    def worker_slots(self):
        """{slot: [pid...]}: several pids in a slot only while old workers drain."""
        return self.children()["workers"]

    def workers(self):
        """{slot: pid} of the slots that have exactly one worker."""
        return {slot: pids[0] for slot, pids in self.worker_slots().items() if len(pids) == 1}

    def worker_pids(self):
        return [pid for pids in self.children()["workers"].values() for pid in pids]

    def grpc_pid(self):
        pids = self.children()["grpc"]
        return pids[0] if len(pids) == 1 else None

    def all_child_pids(self):
        c = self.children()
        return c["grpc"] + [p for pids in c["workers"].values() for p in pids] + c["other"]

    def read_pid_file(self):
        try:
            text = self.pid_path.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else text

    # ---- log ------------------------------------------------------------

    def log_text(self):
        """The log file and the master's stderr, together."""
        parts = []
        for path in (self.log_path, self.stderr_path):
            try:
                parts.append(path.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def log_tail(self, lines=40):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_log(self, pattern, timeout=10):
        """Until the log matches the regex pattern; return the match."""
        rx = re.compile(pattern)
        try:
            return wait_for(lambda: rx.search(self.log_text()), timeout,
                            f"log line matching {pattern!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}; log:\n{self.log_tail()}") from None

    # ---- clients ---------------------------------------------------------

    def client(self, options=()):
        c = Client(self.address, options)
        self.clients.append(c)
        return c

    def close_clients(self):
        while self.clients:
            self.clients.pop().close()
        while self._spent_channels:
            ch, since = self._spent_channels.pop()
            time.sleep(max(0.0, since + 0.5 - time.monotonic()))   # its poller has gone
            ch.close()


# --------------------------------------------------------------------------
# gRPC client side
# --------------------------------------------------------------------------

CHANNEL_OPTIONS = [
    # A lost connection is retried after 0.1 s. grpc.min_reconnect_backoff_ms is
    # left at gRPC's 20 s: it is also how long one connection attempt may take
    # (TCP and HTTP/2 handshake), and 100 ms failed calls on a busy machine.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.max_receive_message_length", -1),
    ("grpc.enable_retries", 0),
]

_probe_ids = itertools.count(1)


def work_item(d):
    """A dict (WorkItem fields) -> pb.WorkItem; a WorkItem passes through."""
    return d if isinstance(d, pb.WorkItem) else pb.WorkItem(**d)


def is_probe(update_or_id):
    item_id = update_or_id if isinstance(update_or_id, str) else update_or_id.item_id
    return item_id.startswith(PROBE_PREFIX)


class Subscription:
    """One getUpdates call, read by a background thread.

    updates: every Update received, in order.  by_id: item_id -> [Update].
    final: item_id -> its last final (SUCCEEDED/FAILED) update.
    error: the grpc.RpcError that ended the stream (None while it runs, or
    after a cancel() we asked for)."""

    def __init__(self, call, name="sub", start=True):
        self.call = call
        self.name = name
        self.updates = []
        self.by_id = {}
        self.final = {}
        self.error = None
        self.done = False
        self.cancelled = False
        self.seq_violations = []
        self.cond = threading.Condition()
        self.running = threading.Event()    # cleared: the reader stops asking for more
        self.running.set()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        if start:
            self.start()

    def start(self):
        self.thread.start()
        return self

    def pause(self):
        """Stop reading (after the update being read now, if any): from here
        on the server sees a subscriber that does not read."""
        self.running.clear()

    def resume(self):
        self.running.set()

    def _run(self):
        try:
            while True:
                self.running.wait()
                if self.cancelled:
                    break
                try:
                    u = next(self.call)
                except StopIteration:
                    break
                with self.cond:
                    if self.updates and u.seq <= self.updates[-1].seq:
                        self.seq_violations.append((self.updates[-1].seq, u.seq))
                    self.updates.append(u)
                    self.by_id.setdefault(u.item_id, []).append(u)
                    if u.state in FINAL_STATES:
                        self.final[u.item_id] = u
                    self.cond.notify_all()
        except grpc.RpcError as e:
            if not self.cancelled:
                self.error = e
        except Exception as e:  # noqa: BLE001 - reported to the test
            self.error = e
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    # ---- reading --------------------------------------------------------

    def snapshot(self):
        with self.cond:
            return list(self.updates)

    def seqs(self):
        return [u.seq for u in self.snapshot()]

    def last_seq(self):
        with self.cond:
            return self.updates[-1].seq if self.updates else 0

    def of(self, item_id):
        with self.cond:
            return list(self.by_id.get(item_id, []))

    def states_of(self, item_id):
        return [state_name(u.state) for u in self.of(item_id)]

    def status_code(self):
        e = self.error
        return e.code() if isinstance(e, grpc.Call) else None

    def describe_end(self):
        if not self.done:
            return "still open"
        if self.error is None:
            return "ended normally" if not self.cancelled else "cancelled"
        if isinstance(self.error, grpc.Call):
            return f"ended with {self.error.code()}: {self.error.details()}"
        return f"reader failed: {self.error!r}"

    # ---- waiting ----------------------------------------------------------

    def wait(self, predicate, timeout, what):
        """Until predicate(self) is truthy (checked under the lock, whenever
        something arrives and at least every 50 ms). Fails at once if the
        stream ended without it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                if self.done:
                    raise AssertionError(f"{self.name}: stream {self.describe_end()} "
                                         f"before {what} ({len(self.updates)} updates)")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: timed out after {timeout} s "
                                         f"waiting for {what} ({len(self.updates)} updates)")
                self.cond.wait(min(left, 0.05))

    def wait_final(self, ids, timeout=30):
        """Until every id in ids has a final update; return {id: final}."""
        ids = set(ids)

        def all_final(s):
            return ids.issubset(s.final.keys())
        try:
            self.wait(all_final, timeout, f"final updates of {len(ids)} items")
        except AssertionError as e:
            missing = sorted(ids - set(self.final))
            raise AssertionError(f"{e}; {len(missing)} missing, e.g. {missing[:5]}") from None
        with self.cond:
            return {i: self.final[i] for i in ids}

    def wait_state(self, item_id, state, timeout=10, attempt=None):
        """Until item_id has an update in `state` (and attempt); return it."""
        def found(s):
            for u in s.by_id.get(item_id, []):
                if u.state == state and (attempt is None or u.attempt == attempt):
                    return u
            return None
        try:
            return self.wait(found, timeout, f"{item_id} {state_name(state)}")
        except AssertionError as e:
            raise AssertionError(f"{e}; {item_id} went {self.states_of(item_id)}") from None

    def wait_end(self, timeout=10):
        """Until the stream ends; return the RpcError that ended it (or None)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: still open after {timeout} s "
                                         f"({len(self.updates)} updates)")
                self.cond.wait(min(left, 0.05))
        return self.error

    def assert_seq_increasing(self):
        assert not self.seq_violations, \
            f"{self.name}: seq not strictly increasing: (previous, next) = {self.seq_violations[:5]}"

    def cancel(self):
        self.cancelled = True
        self.call.cancel()
        self.running.set()
        if self.thread.ident is not None:
            self.thread.join(timeout=5)


class Client:
    """A channel to a daemon with the calls the tests make."""

    def __init__(self, address, options=()):
        self.address = address
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS + list(options))
        self.stub = pb_grpc.DoSomethingServiceStub(self.channel)
        self.subscriptions = []

    def close(self):
        for s in self.subscriptions:
            if not s.done:
                s.cancel()
        self.channel.close()

    def health(self, timeout=2, wait_for_ready=False):
        """The raw HealthCheckResponse of grpc.health.v1.Health/Check (SERVING,
        NOT_SERVING), or the status code the call ended with. wait_for_ready:
        a channel whose grpc process was just replaced may still be backing
        off its reconnect."""
        call = self.channel.unary_unary(HEALTH_CHECK, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        try:
            return call(b"", timeout=timeout, wait_for_ready=wait_for_ready)
        except grpc.RpcError as e:
            return e.code()

    # ---- getItems, cancel, retry ------------------------------------------

    def get_items(self, ids=(), timeout=10, wait_for_ready=False, **kw):
        """getItems by IDS (and/or the filter in KW: states, batches, wait...).
        wait_for_ready: wait (up to timeout) for a channel still backing off
        from a process that was killed, instead of failing UNAVAILABLE."""
        return self.stub.getItems(pb.ItemsRequest(item_ids=list(ids), **kw), timeout=timeout,
                                  wait_for_ready=wait_for_ready)

    def cancel_items(self, ids=(), timeout=10, **kw):
        return self.stub.cancel(pb.CancelRequest(item_ids=list(ids), **kw), timeout=timeout)

    def retry_items(self, ids=(), timeout=10, **kw):
        return self.stub.retry(pb.RetryRequest(item_ids=list(ids), **kw), timeout=timeout)

    # ---- doSomething ------------------------------------------------------

    def submit(self, items, timeout=60):
        """Stream items (dicts or WorkItems) into doSomething; return the SubmitReply."""
        return self.stub.doSomething((work_item(i) for i in items), timeout=timeout)

    def submit_retrying(self, items, timeout=15):
        """submit(), retrying UNAVAILABLE until timeout (e.g. during a respawn)."""
        items = [work_item(i) for i in items]
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.submit(items, timeout=max(1.0, deadline - time.monotonic()))
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    # ---- getUpdates -------------------------------------------------------

    def subscribe(self, replay=False, after_seq=0, item_ids=(), kinds=(), states=(),
                  batches=(), sync=False, start=True, name="sub"):
        """Open getUpdates. sync=True: only return once the server demonstrably
        delivers live updates to this subscriber (it submits probe echo items
        until one shows up), so nothing submitted afterwards can be missed."""
        req = pb.UpdatesRequest(replay=replay, after_seq=after_seq, item_ids=list(item_ids),
                                kinds=list(kinds), states=list(states), batches=list(batches))
        sub = Subscription(self.stub.getUpdates(req), name=name, start=start)
        self.subscriptions.append(sub)
        if sync:
            assert not item_ids and not batches and kinds in ((), [], ("echo",), ["echo"]) \
                and (not states or SUCCEEDED in states), "sync needs a filter an echo item matches"
            self.sync(sub)
        return sub

    def sync(self, sub, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            probe = f"{PROBE_PREFIX}{next(_probe_ids)}-{uuid.uuid4().hex[:8]}"
            self.submit_retrying([{"id": probe, "kind": "echo", "payload": b"probe"}],
                                 timeout=max(1.0, deadline - time.monotonic()))
            try:
                sub.wait(lambda s: probe in s.final, min(1.0, max(0.05, deadline - time.monotonic())),
                         f"probe {probe}")
                return
            except AssertionError:
                if sub.done or time.monotonic() > deadline:
                    raise

    def updates_call_raw(self, request_bytes=b""):
        """getUpdates as the original Python service's clients declare it:
        google.protobuf.Empty request."""
        method = self.channel.unary_stream(
            METHOD_UPDATES, request_serializer=lambda _: request_bytes,
            response_deserializer=pb.Update.FromString)
        return method(None)

    # ---- all-in-one -------------------------------------------------------

    def run_items(self, items, timeout=30):
        """Submit items (each with an id) with a synced live subscriber open;
        wait for every accepted item's final update. Returns (reply, sub)."""
        items = [work_item(i) for i in items]
        sub = self.subscribe(sync=True, name="run_items")
        reply = self.submit(items)
        rejected = {r.index for r in reply.rejections}
        ids = [it.id for n, it in enumerate(items) if n not in rejected]
        sub.wait_final(ids, timeout=timeout)
        return reply, sub


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture
def start_daemon(tmp_path):
    """Factory: start_daemon(overrides=None, wait=True, name='ds') -> Daemon.
    Every daemon made here is SIGKILLed with all its processes at teardown."""
    made = []

    def start(overrides=None, wait=True, name=None, workers=None, start=True):
        d = Daemon(tmp_path / (name or f"ds{len(made)}"), overrides, name=name or "ds")
        made.append(d)
        if start:
            d.start(wait=wait, workers=workers)
        return d

    yield start
    for d in made:
        d.kill_all()


@pytest.fixture
def make_daemon(start_daemon):
    """Factory like start_daemon, but does not start it."""
    return lambda overrides=None, name=None: start_daemon(overrides, name=name, start=False)


@pytest.fixture
def daemon(start_daemon):
    return start_daemon()


@pytest.fixture
def client(daemon):
    return daemon.client()
