#!/usr/bin/python3
"""The dosomethingd benchmark: runs every scenario, prints a markdown table.

    /usr/bin/python3 bench/run.py [--quick] [--only 1,2,...] [--daemon PATH] [--bench PATH]

(`make bench` / `make bench-quick` run it with the paths filled in.)

Each scenario starts a fresh server (dosomethingd with a temporary config,
the seed Python baseline, or the raw gRPC sink of dosomething-bench), runs
build/dosomething-bench against it, stops it, and records the JSON line the
client prints. A scenario that fails is reported in the table and the run
goes on; the exit status is 1 if any failed. Results go to OUT/results.json
and OUT/table.md as well as stdout.

Every measurement runs 3 times and keeps the median (--repeat; 1 with --quick).
Scenarios (N for the full run; --quick divides the daemon's and the sink's N
by 20 and skips 6 and J):
  1  echo, 64 B, N=200k, 2 workers: end-to-end items/s (seed: N=10k; raw sink)
  2  idle latency: one item at a time, p50/p99 (seed: N=300, its 0.1 s poll)
  3  sha256 rounds=10000, N=4000, 1 and 2 workers, vs the same hashes in a
     plain loop in 1 and 2 processes (seed: 2 workers)
  4  echo, 16 KiB payloads, N=50k (raw sink alongside)
  5  fan-out: 100 subscribers vs 1, N=50k (raw sink alongside)
  6  1M accepted items held in the queue (workers busy on a long sleep): RSS of
     the grpc process per queued item
  J  queue.journal: scenario 1's echo load, N=100k, with the journal off and
     journal_sync never, 50ms, always (a fresh journal directory each);
     items/s and the ratio to off; idle latency with always (not in --quick)
  K  the result cache: sha256 rounds=10000, N=4000 (N / 10 quick), every
     second item repeating the one before (client --same 2: 50% repeated),
     handlers.sha256.cache on vs off, a fresh daemon for each run (a warm
     cache would serve a repeat whole), interleaved; items/s and the ratio
  P  scheduling: echo with 5 priorities mixed vs all at 0; 1M items delayed
     by an hour (N / 20 quick): memory per item, CPU while they wait
  C  cluster mode (Redis Streams): scenario 1's echo load, N=100k, on one
     instance without cluster, 1 instance in cluster mode on a fresh
     redis-server, 2 instances on one fresh redis-server (half the calls to
     each, the subscriber on the first); items/s, 1 vs single and 2 vs 1
     (skipped when the build refuses `cluster:` or there is no redis-server)
  D  the status page open: scenario 1's echo load (N=500k) on a daemon without
     status.listen; with it and headless Chromium open on a blank page (the
     browser's own cost); with the page open in headless Chromium (chromium,
     chromium-driver, python3-selenium) polling /status and /rates every
     second and the item lists every 3 s; with 100 connections at once every
     second to the page's JSON endpoints (no browser); all in the same run.
     Server CPU per item and items/s, each against the run without
  I  idle CPU of the whole daemon over 5 s
"""
import argparse
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The seed baseline lives in shared/, beside the repository (DS_SEED_DIR overrides).
SEED_DIR = os.environ.get("DS_SEED_DIR") or next(
    (d for d in (os.path.join(os.path.dirname(ROOT), "shared", "baseline", "seed-python"),
                 "/work/shared/baseline/seed-python") if os.path.isdir(d)),
    "/work/shared/baseline/seed-python")
PYTHON = "/usr/bin/python3"
REDIS = "/usr/bin/redis-server"   # Debian's
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} is not listening on port {port} after {timeout:.0f} s")


# --- /proc ----------------------------------------------------------------

def proc_stat(pid):
    """(ppid, utime+stime ticks) of pid, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def descendants(root):
    """root and every process below it."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None:
                parent[int(name)] = st[0]
    tree = {root} if root in parent else set()
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if pid not in tree and ppid in tree:
                tree.add(pid)
                changed = True
    return sorted(tree)


def cpu_ns(pid):
    """Time on CPU of every thread of pid, in ns (schedstat), or None."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        return None
    return total


def system_busy_s():
    """CPU seconds the whole machine has been busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / CLK_TCK


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def proc_name(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


# --- servers ----------------------------------------------------------------

class Server:
    kind = "?"

    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        self.proc = None
        self.root_pid = None
        self.pids = []

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    @property
    def targets(self):
        """Where the client submits (calls take turns; subscribers on the first)."""
        return [self.target]

    @property
    def measure_pids(self):
        """Roots of the process trees whose CPU and memory count as the server's."""
        return [self.root_pid]

    def _reap(self, pids, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None:
                self.proc.poll()
            alive = [p for p in pids if os.path.exists(f"/proc/{p}") and proc_stat(p) is not None
                     and not _zombie(p)]
            if not alive:
                return []
            time.sleep(0.05)
        return alive


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        return data[data.rindex(")") + 2] == "Z"
    except OSError:
        return True


class Daemon(Server):
    kind = "dosomethingd"

    def __init__(self, workdir, binary, workers=2, capacity=1000000, extra="", queue="",
                 grpc="", status=False):
        super().__init__(workdir)
        d = tempfile.mkdtemp(prefix="ds-", dir=workdir)
        self.dir = d
        self.cfg = os.path.join(d, "dosomething.yaml")
        # status.listen: only where the bench needs /status (cluster: is it serving?)
        self.status_port = free_port() if status else None
        if status:
            extra += f"status: {{listen: \"127.0.0.1:{self.status_port}\"}}\n"
        with open(self.cfg, "w") as f:
            f.write(f"workers: {{count: {workers}}}\n"
                    f"grpc: {{listen: [\"127.0.0.1:{self.port}\"]{grpc}}}\n"
                    f"pid_file: {d}/ds.pid\n"
                    f"log: {{file: {d}/ds.log}}\n"
                    f"queue: {{capacity: {capacity}{queue}}}\n" + extra)
        self.out = open(os.path.join(d, "stderr"), "w")
        self.proc = subprocess.Popen([binary, "-c", self.cfg], stdout=self.out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.root_pid = self.proc.pid
        try:
            wait_port(self.port, self.proc, "dosomethingd")
            # the workers are forked by now or very soon: wait until they are there
            end = time.monotonic() + 10
            while time.monotonic() < end:
                self.pids = descendants(self.root_pid)
                names = [proc_name(p) for p in self.pids]
                if sum("worker" in n for n in names) >= workers and any("grpc" in n for n in names):
                    break
                time.sleep(0.05)
        except BenchError as e:
            self.stop()
            raise BenchError(f"{e}; log: {self.log_tail()}")

    def log_tail(self, n=5):
        lines = []
        for name in ("ds.log", "stderr"):
            try:
                with open(os.path.join(self.dir, name)) as f:
                    lines += f.read().splitlines()[-n:]
            except OSError:
                pass
        return " | ".join(lines[-n:])

    def status(self):
        """GET /status (needs status=True), parsed."""
        url = f"http://127.0.0.1:{self.status_port}/status"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def wait_cluster_serving(self, timeout=20.0):
        """Until /status says cluster.serving: before that the instance answers
        doSomething and getUpdates with UNAVAILABLE."""
        end = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise BenchError(f"dosomethingd exited with status {self.proc.returncode}; "
                                 f"log: {self.log_tail()}")
            try:
                st = self.status()
            except (OSError, ValueError) as e:   # not listening yet, or a torn answer
                last = str(e)
                time.sleep(0.05)
                continue
            cl = st.get("cluster")
            if not isinstance(cl, dict):
                raise BenchError("dosomethingd accepted the cluster: section but its /status has "
                                 "no \"cluster\" object: is cluster mode built? "
                                 f"log: {self.log_tail()}")
            if cl.get("serving"):
                return cl
            last = f"cluster {json.dumps(cl)}"
            time.sleep(0.05)
        raise BenchError(f"dosomethingd is not serving in cluster mode after {timeout:.0f} s "
                         f"({last}); log: {self.log_tail()}")

    def items_done(self):
        """Items its workers have run (from /status), or None."""
        try:
            procs = self.status().get("processes", [])
        except (OSError, ValueError):
            return None
        return sum(p.get("items_done") or 0 for p in procs if p.get("role") == "worker")

    def grpc_pid(self):
        for p in descendants(self.root_pid):
            if proc_name(p).startswith("dosomethingd: grpc"):
                return p
        return None

    def stop(self):
        if self.proc is None:
            return
        pids = descendants(self.root_pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            log(f"dosomethingd {self.root_pid} did not stop in 20 s after SIGTERM: killing it")
        left = self._reap(pids, 5)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.out.close()
        self.proc = None


class Seed(Server):
    kind = "seed-python"

    def __init__(self, workdir, workers=2):
        super().__init__(workdir)
        env = dict(os.environ, WORKERS=str(workers), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([PYTHON, "main.py", str(self.port)], cwd=SEED_DIR, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL)
        self.root_pid = self.proc.pid
        # main.py prints: main pid=.. server pid=.. worker pids=[..] port=..
        line = b""
        end = time.monotonic() + 20
        while not line.endswith(b"\n") and time.monotonic() < end:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        try:
            text = line.decode()
            main = int(text.split("main pid=")[1].split()[0])
            server = int(text.split("server pid=")[1].split()[0])
            workers_ = [int(x) for x in text.split("worker pids=[")[1].split("]")[0].split(",")
                        if x.strip()]
            self.pids = [main, server] + workers_
        except (IndexError, ValueError):
            self.stop()
            raise BenchError(f"seed-python did not report its pids (got {line!r})")
        try:
            wait_port(self.port, self.proc, "seed-python")
        except BenchError:
            self.stop()
            raise

    def stop(self):
        if self.proc is None:
            return
        pids = self.pids or [self.root_pid]
        for p in pids:   # SIGTERM to each: to the main one alone orphans the others
            try:
                os.kill(p, signal.SIGTERM)
            except OSError:
                pass
        left = self._reap(pids, 10)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc.stdout.close()
        self.proc = None


class Sink(Server):
    kind = "raw gRPC sink"

    def __init__(self, workdir, bench):
        super().__init__(workdir)
        self.err = open(os.path.join(workdir, f"sink-{self.port}.log"), "w")
        self.proc = subprocess.Popen([bench, "--sink", self.target], stdout=subprocess.DEVNULL,
                                     stderr=self.err, stdin=subprocess.DEVNULL)
        self.root_pid = self.proc.pid
        self.pids = [self.root_pid]
        try:
            wait_port(self.port, self.proc, "the sink")
        except BenchError:
            self.stop()
            raise

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.err.close()
        self.proc = None


class Redis(Server):
    """Debian's redis-server on a free loopback port, in its own temp dir,
    persistence off (no RDB snapshots, no AOF); stopped with SIGTERM."""
    kind = "redis-server"

    def __init__(self, workdir):
        super().__init__(workdir)
        d = tempfile.mkdtemp(prefix="redis-", dir=workdir)
        self.dir = d
        self.proc = subprocess.Popen(
            [REDIS, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", d, "--logfile", os.path.join(d, "redis.log"),
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.root_pid = self.proc.pid
        self.pids = [self.root_pid]
        try:
            wait_port(self.port, self.proc, "redis-server")
            end = time.monotonic() + 10
            while True:   # answers -LOADING until ready (nothing to load here)
                try:
                    if self.command("PING") == "PONG":
                        break
                except (OSError, BenchError):
                    pass
                if time.monotonic() > end:
                    raise BenchError("redis-server does not answer PING")
                time.sleep(0.05)
        except BenchError as e:
            self.stop()
            raise BenchError(f"{e}; log: {self.log_tail()}")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def log_tail(self, n=5):
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                return " | ".join(f.read().splitlines()[-n:])
        except OSError:
            return ""

    def command(self, *args):
        """One command over RESP; the reply as str, int or list ("-ERR" raises)."""
        req = f"*{len(args)}\r\n".encode()
        for a in args:
            a = str(a).encode()
            req += b"$%d\r\n%s\r\n" % (len(a), a)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(req)
            f = sock.makefile("rb")
            return _resp(f)

    def cpu_s(self):
        """used_cpu_sys + used_cpu_user of INFO cpu: Redis's own CPU so far."""
        info = self.command("INFO", "cpu")
        v = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(v["used_cpu_sys"]) + float(v["used_cpu_user"])

    def commandstats(self, items):
        """INFO commandstats divided by ITEMS: {command: (calls, µs)}, the
        costliest first."""
        out = {}
        for line in self.command("INFO", "commandstats").splitlines():
            if not line.startswith("cmdstat_"):
                continue
            name, rest = line[len("cmdstat_"):].split(":", 1)
            v = dict(kv.split("=", 1) for kv in rest.split(","))
            out[name] = (int(v["calls"]) / items, int(v["usec"]) / items)
        return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"redis-server {self.root_pid} did not stop in 10 s after SIGTERM: killing it")
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None


def _resp(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise BenchError("redis: connection closed mid-reply")
    kind, body = line[:1], line[1:-2].decode()
    if kind == b"+":
        return body
    if kind == b"-":
        raise BenchError(f"redis: {body}")
    if kind == b":":
        return int(body)
    if kind == b"$":
        n = int(body)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(body)
        return None if n < 0 else [_resp(f) for _ in range(n)]
    raise BenchError(f"redis: unexpected reply {line!r}")


class Group:
    """Several servers measured as one (cluster mode: the instances and their
    Redis): the client submits to every instance in `targets` (call i to
    instance i mod T, its subscribers on the first), and the CPU and memory
    of every member count as the server's. The members are started and
    stopped by the Runner; a Group owns no process."""

    def __init__(self, kind, instances, others=()):
        self.kind = kind
        self.instances = list(instances)
        self.others = list(others)

    @property
    def targets(self):
        return [s.target for s in self.instances]

    @property
    def measure_pids(self):
        return [s.root_pid for s in self.instances + self.others]


# --- the client -------------------------------------------------------------

class Runner:
    def __init__(self, args):
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix="dosomething-bench-")
        self.rows = []          # measurement rows
        self.checks = []        # target rows
        self.errors = []
        self.live = []

    def start(self, cls, *a, **kw):
        s = cls(self.workdir, *a, **kw)
        self.live.append(s)
        return s

    def stop(self, s):
        try:
            s.stop()
        finally:
            if s in self.live:
                self.live.remove(s)

    def stop_all(self):
        for s in reversed(list(self.live)):   # the last started first: instances before their Redis
            try:
                self.stop(s)
            except Exception as e:   # keep stopping the others
                log(f"stopping {s.kind}: {e}")

    def client(self, server, n, label, timeout=120, repeat=None, **opts):
        """Run the client `repeat` times (default --repeat) and keep the median run."""
        k = self.args.repeat if repeat is None else repeat
        runs = [self.client_once(server, n, label, timeout, **opts) for _ in range(k)]
        return median_run(runs)

    def client_once(self, server, n, label, timeout, **opts):
        cmd = [self.args.bench]
        for t in server.targets:
            cmd += ["--target", t]
        cmd += ["--items", str(n), "--timeout", str(timeout)]
        for pid in server.measure_pids:
            cmd += ["--server-pid", str(pid)]
        cmd += ["--label", label]
        if isinstance(server, Seed):
            # the seed sends no headers before its first update; its queue keeps
            # the updates until the one subscriber drains them
            cmd += ["--sub-ready", "none"]
        for k, v in opts.items():
            flag = "--" + k.replace("_", "-")
            if isinstance(v, (list, tuple)):
                for x in v:
                    cmd += [flag, str(x)]
            else:
                cmd += [flag, str(v)]
        log(f"  $ {' '.join(cmd[1:])}")
        busy0, child0, wall0 = system_busy_s(), children_cpu_s(), time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{label}: the client did not finish in {timeout + 30} s")
        busy = system_busy_s() - busy0
        child = children_cpu_s() - child0
        wall = time.monotonic() - wall0
        if p.returncode != 0:
            raise BenchError(f"{label}: client failed (status {p.returncode}): "
                             f"{p.stderr.strip()[-600:]}")
        line = p.stdout.strip().splitlines()[-1]
        r = json.loads(line)
        r["server"] = server.kind
        # CPU the rest of the machine used meanwhile (noise: other jobs on the box)
        r["other_cpu_s"] = max(0.0, busy - child - r["server_cpu_s"])
        r["process_wall_s"] = wall
        return r

    def hash_loop(self, n, procs, rounds, label, api="evp"):
        runs = [self.hash_loop_once(n, procs, rounds, label, api) for _ in range(self.args.repeat)]
        return median_run(runs)

    def hash_loop_once(self, n, procs, rounds, label, api):
        cmd = [self.args.bench, "--hash-loop", "--items", str(n), "--procs", str(procs),
               "--rounds", str(rounds), "--label", label, "--timeout", "300", "--hash-api", api]
        log(f"  $ {' '.join(cmd[1:])}")
        busy0, child0, wall0 = system_busy_s(), children_cpu_s(), time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=330)
        busy = system_busy_s() - busy0
        child = children_cpu_s() - child0
        wall = time.monotonic() - wall0
        if p.returncode != 0:
            raise BenchError(f"{label}: hash loop failed: {p.stderr.strip()[-600:]}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["other_cpu_s"] = max(0.0, busy - child)
        r["process_wall_s"] = wall
        r["server"] = f"no daemon, {procs} process{'es' if procs > 1 else ''}"
        if api != "evp":
            r["server"] += f", {api} API"
        return r

    def record(self, scenario, r, note=""):
        r["scenario"] = scenario
        r["note"] = note
        self.rows.append(r)
        if r.get("mode") == "load":
            log(f"  -> {r['items_per_s']:,.0f} items/s end to end, submitted {r['submitted_per_s']:,.0f}/s, "
                f"p50 {r['latency_ms']['p50']:.3f} ms, p99 {r['latency_ms']['p99']:.3f} ms, "
                f"server CPU {r['server_cpu_s']:.2f} s, client CPU {r['client_cpu_s']:.2f} s")
        else:
            log(f"  -> {r['items_per_s']:,.1f} items/s")
        return r

    def check(self, name, target, measured, ok):
        self.checks.append({"target": name, "want": target, "measured": measured, "ok": ok})

    def scenario(self, number, title, fn):
        if self.args.only and str(number) not in self.args.only:
            return
        log(f"== {number}: {title}")
        t0 = time.monotonic()
        try:
            fn()
        except Exception as e:
            msg = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
            log(f"  !! {msg}")
            self.errors.append(f"scenario {number} ({title}): {msg}")
        finally:
            self.stop_all()
        log(f"   ({time.monotonic() - t0:.1f} s)")

    # --- scenarios ------------------------------------------------------------

    def N(self, full, quick_div=20, minimum=100):
        return max(minimum, full // quick_div) if self.args.quick else full

    def daemon(self, workers=2, capacity=1000000, extra="", sub_buffer=None, queue="", grpc="",
               status=False):
        # The client shares the 2 cores with the daemon; at full speed a burst can
        # leave a subscriber far behind (the default bound is 1000000 updates), and the
        # daemon then cuts it off. Throughput scenarios give each subscriber room
        # for every item (sub_buffer=N) so that the run measures delivery.
        if sub_buffer:
            # The subscriber may hold everything: neither the count nor the
            # byte bound (updates.history_bytes) may cut it off mid-run.
            extra += (f"updates: {{subscriber_buffer: {sub_buffer}, history_bytes: 64GiB, "
                      f"subscribers_bytes: 64GiB}}\n")
        return self.start(Daemon, self.args.daemon, workers=workers, capacity=capacity,
                          extra=extra, queue=queue, grpc=grpc, status=status)

    def s1(self):
        calls = self.args.calls
        n = self.N(200000)
        d = self.daemon(sub_buffer=n)
        a = self.record("1 echo 64 B", self.client(d, n, "S1 daemon", calls=calls, payload=64))
        self.stop(d)
        s = self.start(Seed, workers=2)
        b = self.record("1 echo 64 B", self.client(s, self.N(10000, 5), "S1 seed", calls=calls,
                                                   payload=64))
        self.stop(s)
        k = self.start(Sink, self.args.bench)
        c = self.record("1 echo 64 B", self.client(k, n, "S1 raw", calls=calls, payload=64))
        self.stop(k)
        r_seed = a["items_per_s"] / b["items_per_s"]
        r_raw = a["items_per_s"] / c["items_per_s"]
        self.check("S1 echo items/s vs seed", ">= 40x",
                   f"{r_seed:.1f}x ({a['items_per_s']:,.0f} vs {b['items_per_s']:,.0f}/s)",
                   r_seed >= 40)
        self.check("S1 echo items/s vs raw gRPC sink", ">= 50%",
                   f"{100 * r_raw:.0f}% ({a['items_per_s']:,.0f} vs {c['items_per_s']:,.0f}/s)",
                   r_raw >= 0.5)

    def sd(self):
        calls = self.args.calls
        # Longer than scenario 1 (200k take ~1.5 s) so that the page polls
        # several times during each run.
        n = self.N(500000)
        runs = {}

        def one(key, note, status=False, page=None, burst=False):
            d = self.daemon(sub_buffer=n, status=status)
            dash = hammer = None
            try:
                if page is not None:
                    dash = Dashboard(self.workdir, d.status_port, page=page)
                    polls0 = dash.polls() if page else 0
                if burst:
                    hammer = Burst(d.status_port)
                r = self.client(d, n, f"SD {key}", calls=calls, payload=64)
                if page:
                    polls = dash.polls() - polls0
                    note += f" ({polls} polls during the runs)"
                    if polls < 1:
                        raise BenchError("the page did not poll during the run")
                if hammer is not None:
                    note += f" ({hammer.summary()})"
            finally:
                if hammer is not None:
                    hammer.stop()
                if dash is not None:
                    dash.close()
                self.stop(d)
            runs[key] = self.record("D echo 64 B, page", r, note=note)

        one("without", "no status.listen")
        one("blank", "status.listen; headless Chromium open on a blank page", status=True,
            page=False)
        one("page", "the status page open in headless Chromium", status=True, page=True)
        one("burst", "status.listen; every second 100 connections at once to /status, "
            "/rates, /items?state=FAILED and /batches", status=True, burst=True)

        def cpu(r):
            return 1e6 * r["server_cpu_s"] / r["n"]

        base = runs["without"]
        for key, what in (("page", "the status page open"),
                          ("burst", "100-connection bursts on the page's endpoints")):
            r = runs[key]
            self.check(f"D server CPU per item, {what} vs without", "<= 1.05x",
                       f"{cpu(r) / cpu(base):.2f}x ({cpu(r):.1f} vs {cpu(base):.1f} us)",
                       cpu(r) <= 1.05 * cpu(base))
        r = runs["burst"]
        ratio = r["items_per_s"] / base["items_per_s"]
        self.check("D echo items/s with 100-connection bursts vs without", ">= 0.95x",
                   f"{ratio:.2f}x ({r['items_per_s']:,.0f} vs {base['items_per_s']:,.0f}/s)",
                   ratio >= 0.95)
        page, blank = runs["page"], runs["blank"]
        self.check("D echo items/s with the page open vs Chromium on a blank page", "(info)",
                   f"{page['items_per_s'] / blank['items_per_s']:.2f}x "
                   f"({page['items_per_s']:,.0f} vs {blank['items_per_s']:,.0f}/s; without "
                   f"Chromium {base['items_per_s']:,.0f}/s: the browser shares the 2 cores)", None)

    def s2(self):
        d = self.daemon()
        a = self.record("2 idle latency", self.client(d, self.N(1000, 5), "S2 daemon", calls=1,
                                                      window=1))
        self.stop(d)
        s = self.start(Seed, workers=2)
        b = self.record("2 idle latency", self.client(s, self.N(300, 10, 20), "S2 seed",
                                                      calls=1, window=1, timeout=120, repeat=1),
                        note="closed loop: each send lands just after a 0.1 s poll")
        self.stop(s)
        k = self.start(Sink, self.args.bench)
        self.record("2 idle latency", self.client(k, self.N(1000, 5), "S2 raw", calls=1,
                                                  window=1))
        self.stop(k)
        la = a["latency_ms"]
        self.check("S2 idle latency p50", "< 0.2 ms", f"{la['p50']:.3f} ms", la["p50"] < 0.2)
        self.check("S2 idle latency p99", "< 1 ms", f"{la['p99']:.3f} ms", la["p99"] < 1.0)
        self.check("S2 idle latency p50 vs seed", "(info)",
                   f"{b['latency_ms']['p50'] / la['p50']:.0f}x lower "
                   f"({la['p50']:.3f} vs {b['latency_ms']['p50']:.1f} ms)", None)

    def s3(self):
        n = self.N(4000)
        rounds = 10000
        opts = dict(calls=2, kind="sha256", param=[f"rounds={rounds}"], payload=64, timeout=240)
        res = {}
        for w in (1, 2):
            d = self.daemon(workers=w)
            res[w] = self.record("3 sha256 x10000", self.client(d, n, f"S3 daemon {w}w", **opts),
                                 note=f"{w} worker{'s' if w > 1 else ''}")
            self.stop(d)
        loop = {}
        for p in (1, 2):
            loop[p] = self.record("3 sha256 x10000", self.hash_loop(n, p, rounds, f"S3 loop {p}p"))
        fast = self.record("3 sha256 x10000", self.hash_loop(n, 2, rounds, "S3 loop 2p lowlevel",
                                                             api="lowlevel"))
        s = self.start(Seed, workers=2)
        seed = self.record("3 sha256 x10000", self.client(s, n, "S3 seed 2w", **opts),
                           note="2 workers")
        self.stop(s)
        r_loop = res[2]["items_per_s"] / loop[2]["items_per_s"]
        r_scale = res[2]["items_per_s"] / res[1]["items_per_s"]
        self.check("S3 sha256 2 workers vs 2-process loop", ">= 95%",
                   f"{100 * r_loop:.0f}% ({res[2]['items_per_s']:,.1f} vs "
                   f"{loop[2]['items_per_s']:,.1f}/s)", r_loop >= 0.95)
        self.check("S3 sha256 2 workers vs 1 worker", ">= 1.9x",
                   f"{r_scale:.2f}x ({res[2]['items_per_s']:,.1f} vs {res[1]['items_per_s']:,.1f}/s;"
                   f" loop 2p/1p {loop[2]['items_per_s'] / loop[1]['items_per_s']:.2f}x)",
                   r_scale >= 1.9)
        cpu_daemon = res[2]["server_cpu_s"] / n
        cpu_loop = loop[2]["cpu_s"] / n
        self.check("S3 sha256 CPU per item: daemon (all its processes) vs the loop", "(info)",
                   f"{1e3 * cpu_daemon:.2f} vs {1e3 * cpu_loop:.2f} ms: {100 * cpu_loop / cpu_daemon:.0f}% "
                   f"of the daemon's CPU is the hashing itself (immune to other jobs on the box)", None)
        self.check("S3 hashes: SHA256() one-shot (the handler's call) vs SHA256_Init/Update/Final",
                   "(info)", f"the one-shot call is {fast['items_per_s'] / loop[2]['items_per_s']:.1f}x "
                   f"slower ({loop[2]['items_per_s']:,.0f} vs {fast['items_per_s']:,.0f} items/s, "
                   f"2 processes)", None)
        self.check("S3 sha256 2 workers vs seed (2 workers)", "(info)",
                   f"{res[2]['items_per_s'] / seed['items_per_s']:.1f}x", None)

    def s4(self):
        n = self.N(50000)
        d = self.daemon(sub_buffer=n)
        a = self.record("4 echo 16 KiB", self.client(d, n, "S4 daemon", calls=self.args.calls,
                                                     payload=16384))
        self.stop(d)
        k = self.start(Sink, self.args.bench)
        c = self.record("4 echo 16 KiB", self.client(k, n, "S4 raw", calls=self.args.calls,
                                                     payload=16384))
        self.stop(k)
        mb = 16384 * a["items_per_s"] / 2**20
        self.check("S4 16 KiB items/s vs raw gRPC sink", "(info)",
                   f"{100 * a['items_per_s'] / c['items_per_s']:.0f}% "
                   f"({a['items_per_s']:,.0f}/s = {mb:,.0f} MiB/s of payload each way)", None)

    def s5(self):
        n = self.N(50000)
        subs = 100
        res = {}
        for s in (1, subs):
            # 100 subscribers and the calls share one connection: more than the
            # default grpc.max_concurrent_streams (100), and the calls would wait
            # in the client for a stream that never frees (no call ever started)
            d = self.daemon(sub_buffer=n, grpc=", max_concurrent_streams: 1000")
            res[s] = self.record("5 fan-out", self.client(
                d, n, f"S5 daemon {s} sub", calls=self.args.calls, subscribers=s,
                sub_threads=self.args.sub_threads, timeout=150),
                note=f"{s} subscriber{'s' if s > 1 else ''}")
            self.stop(d)
        raw = {}
        for s in (1, subs):
            k = self.start(Sink, self.args.bench)
            raw[s] = self.record("5 fan-out", self.client(
                k, n, f"S5 raw {s} sub", calls=self.args.calls, subscribers=s,
                sub_threads=self.args.sub_threads, timeout=150),
                note=f"{s} subscriber{'s' if s > 1 else ''}")
            self.stop(k)
        ratio = res[subs]["elapsed_s"] / res[1]["elapsed_s"]
        rraw = raw[subs]["elapsed_s"] / raw[1]["elapsed_s"]
        self.check(f"S5 time with {subs} subscribers vs 1", "< 3x",
                   f"{ratio:.2f}x ({res[subs]['elapsed_s']:.2f} vs {res[1]['elapsed_s']:.2f} s; "
                   f"raw sink {rraw:.2f}x)", ratio < 3)

    def s6(self):
        n = 1000000
        payload = 64
        # capacity a little above N: with exactly N the last call's end-of-stream
        # receive waits for queue room that never comes (see bench/README.md)
        d = self.daemon(capacity=n + 1024)
        r = self.record("6 1M queued", self.client(
            d, n, "S6 daemon", calls=self.args.calls, subscribers=0, wait="accepted",
            kind="sleep", param=["ms=100000"], payload=payload, timeout=300, repeat=1),
            note="sleep ms=100000, 2 workers; submit only")
        gp = [p for p in r["server_procs"] if p["name"].startswith("dosomethingd: grpc")]
        if not gp:
            raise BenchError("S6: no grpc process among the server's processes")
        gp = gp[0]
        per_item = (gp["rss_after_kb"] - gp["rss_before_kb"]) * 1024 / n
        overhead = per_item - payload
        r["rss_per_item_bytes"] = per_item
        self.check("S6 grpc RSS per queued item, minus payload", "< 150 B",
                   f"{overhead:.0f} B ({per_item:.0f} B/item incl. {payload} B payload; "
                   f"{gp['rss_before_kb'] / 1024:.0f} -> {gp['rss_after_kb'] / 1024:.0f} MiB)",
                   overhead < 150)
        self.stop(d)

    def sj(self):
        """queue.journal: scenario 1's load with the journal off and each
        journal_sync; then the idle round trip with `always`."""
        calls = self.args.calls
        n = self.N(100000)
        res = {}
        for sync in ("off", "never", "50ms", "always"):
            queue = ""
            if sync != "off":
                jdir = tempfile.mkdtemp(prefix="journal-", dir=self.workdir)
                queue = f", journal: {jdir}, journal_sync: {sync}"
            d = self.daemon(sub_buffer=n, queue=queue)
            res[sync] = self.record("J journal", self.client(
                d, n, f"SJ journal {sync}", calls=calls, payload=64),
                note="queue.journal off" if sync == "off" else f"journal_sync {sync}")
            if sync == "always":
                lat = self.record("J journal", self.client(
                    d, self.N(1000, 5), "SJ idle always", calls=1, window=1),
                    note="idle latency, one item at a time, journal_sync always")
            self.stop(d)
        off = res["off"]["items_per_s"]
        for sync in ("never", "50ms", "always"):
            ips = res[sync]["items_per_s"]
            log(f"  journal {sync}: {ips:,.0f} items/s, {ips / off:.2f}x of off ({off:,.0f})")
            self.check(f"SJ echo items/s, journal_sync {sync} vs off", "(report)",
                       f"{ips / off:.2f}x ({ips:,.0f} vs {off:,.0f}/s)", None)
        la = lat["latency_ms"]
        log(f"  idle latency with always: p50 {la['p50']:.3f} ms, p99 {la['p99']:.3f} ms")
        self.check("SJ idle latency p50, journal_sync always", "(report)",
                   f"{la['p50']:.3f} ms (p99 {la['p99']:.3f} ms)", None)

    def sk(self):
        """The result cache: sha256 rounds=10000 items of which every second
        repeats the one before (50% repeated), with handlers.sha256.cache on
        and off, in the same run; the ratio of items/s."""
        calls = self.args.calls
        n = self.N(4000, 10)
        runs = {"off": [], "on": []}
        # A fresh daemon for each run (a warm cache would serve a repeat whole),
        # cache off and on interleaved so that noise hits both alike.
        for _ in range(self.args.repeat):
            for cache in ("off", "on"):
                setting = "{size: 64MiB, ttl: 1h}" if cache == "on" else "off"
                extra = ("handlers:\n  echo: {builtin: echo}\n"
                         f"  sha256: {{builtin: sha256, timeout: 60s, cache: {setting}}}\n")
                d = self.daemon(sub_buffer=n, extra=extra)
                runs[cache].append(self.client(
                    d, n, f"SK cache {cache}", repeat=1, calls=calls, kind="sha256",
                    param=["rounds=10000"], same=2))
                self.stop(d)
        res = {cache: self.record("K result cache", median_run(runs[cache]),
                                  note=f"sha256 rounds=10000, 50% repeated, cache {cache}")
               for cache in ("off", "on")}
        on, off = res["on"]["items_per_s"], res["off"]["items_per_s"]
        log(f"  cache on: {on:,.0f} items/s, off: {off:,.0f} items/s, {on / off:.2f}x")
        self.check("SK sha256 50% repeated, cache on vs off", "(report)",
                   f"{on / off:.2f}x ({on:,.0f} vs {off:,.0f}/s)", None)

    def cluster_unsupported(self):
        """Why scenario C cannot run here (a str), or None."""
        if not os.access(REDIS, os.X_OK):
            return f"no {REDIS} (Debian package redis-server)"
        return None

    def cluster_daemon(self, redis, n):
        extra = f"cluster: {{redis: \"{redis.url}\", name: bench, lease: 10s}}\n"
        if self.args.c_retention is not None:
            # steady state: past COUNT finals every final forgets the oldest
            extra += f"items: {{retention: {{count: {self.args.c_retention}}}}}\n"
        return self.daemon(sub_buffer=n, status=True, extra=extra)

    def sc(self):
        """cluster mode on Redis Streams: scenario 1's echo load on one
        instance without cluster (the baseline), on 1 instance in cluster mode
        and on 2 instances on the same Redis (a fresh redis-server for each)."""
        why = self.cluster_unsupported()
        if why:
            log(f"  skipped: {why}")
            self.check("SC cluster mode", "(report)", f"skipped: {why}", None)
            return
        calls = max(2, self.args.calls)   # at least one call per instance
        n = self.N(100000)
        d = self.daemon(sub_buffer=n)
        res = {0: self.record("C cluster", self.client(d, n, "SC single", calls=calls, payload=64),
                              note="no cluster")}
        self.stop(d)
        for k in (1, 2):
            redis = self.start(Redis)
            inst = [self.cluster_daemon(redis, n) for _ in range(k)]
            for i in inst:
                i.wait_cluster_serving()
            done0 = [i.items_done() for i in inst]
            kind = f"{k} dosomethingd + redis-server" if k > 1 else "dosomethingd + redis-server"
            repeat = self.args.repeat
            redis.command("CONFIG", "RESETSTAT")
            redis_cpu0 = redis.cpu_s()
            r = self.client(Group(kind, inst, [redis]), n, f"SC cluster {k}", calls=calls,
                            payload=64, repeat=repeat)
            # INFO commandstats over every repeat: where Redis's time goes,
            # per item (the calls inside the scripts are counted too)
            r["redis_commandstats_per_item"] = redis.commandstats(n * repeat)
            # INFO cpu over every repeat (each runs n items): Redis's CPU per item
            r["redis_cpu_us_per_item"] = 1e6 * (redis.cpu_s() - redis_cpu0) / (n * repeat)
            r["cpu_split_us_per_item"] = cpu_split(r, n)
            # an entry goes (XACK, XDEL) once its item is final: give the last ones a moment
            end = time.monotonic() + 2
            while (xlen := redis.command("XLEN", "{bench}:work")) and time.monotonic() < end:
                time.sleep(0.05)
            r["redis_work_xlen_after"] = xlen
            note = "cluster, 1 instance" if k == 1 else (
                f"cluster, {k} instances ({calls // k}{'+' if calls % k else ''} calls to each, "
                f"the subscriber on the first)")
            done = [i.items_done() for i in inst]
            if k > 1 and None not in done + done0:
                runs = [b - a for a, b in zip(done0, done)]
                r["items_run_per_instance"] = runs
                note += ", items run by each: " + " / ".join(f"{x:,}" for x in runs)
                if self.args.repeat > 1:
                    note += f" (all {self.args.repeat} runs)"
            if xlen:
                note += f", {xlen} entries left in the work stream"
            split = r["cpu_split_us_per_item"]
            note += (f", Redis {r['redis_cpu_us_per_item']:.1f} µs/item (INFO cpu), CPU µs/item: "
                     + " / ".join(f"{k} {v:.1f}" for k, v in split.items()))
            log(f"  Redis {r['redis_cpu_us_per_item']:.1f} µs/item; split µs/item {split}")
            log("  Redis commands per item (calls, µs): " + ", ".join(
                f"{c} {v[0]:.2f} {v[1]:.1f}"
                for c, v in r["redis_commandstats_per_item"].items()))
            res[k] = self.record("C cluster", r, note=note)
            for i in inst:
                self.stop(i)
            self.stop(redis)
        a, b, c = (res[k]["items_per_s"] for k in (0, 1, 2))
        log(f"  single {a:,.0f}, cluster 1 instance {b:,.0f} ({b / a:.2f}x), "
            f"2 instances {c:,.0f} items/s ({c / b:.2f}x of 1)")
        self.check("SC echo items/s, cluster 1 instance vs single machine", ">= 0.5x",
                   f"{b / a:.2f}x ({b:,.0f} vs {a:,.0f}/s)", b >= 0.5 * a)
        self.check("SC echo items/s, cluster 2 instances vs 1", ">= 1x",
                   f"{c / b:.2f}x ({c:,.0f} vs {b:,.0f}/s)", c >= b)
        for k in (1, 2):
            us = res[k]["redis_cpu_us_per_item"]
            self.check(f"SC Redis CPU per item, {k} instance{'s' if k > 1 else ''} "
                       "(INFO used_cpu_sys+user)", "<= 5 µs", f"{us:.1f} µs", us <= 5)

    def sb(self):
        """This tree against another build (make bench BASELINE=REV), in the same
        run: scenario 1's echo load, scenario 2's idle round trip, scenario J's
        journal_sync 50ms and scenario C's one cluster instance, each measured
        on both builds in turn, --repeat times, keeping the median."""
        base = self.args.baseline_daemon
        name = self.args.baseline_name or base
        calls = self.args.calls
        n = self.N(100000)
        redis_ok = self.cluster_unsupported() is None

        def measure(binary, what):
            saved, self.args.daemon = self.args.daemon, binary
            redis = None
            try:
                if what == "echo":
                    d = self.daemon(sub_buffer=n)
                    return self.client_once(d, n, "SB echo", 120, calls=calls, payload=64)
                if what == "idle":
                    d = self.daemon()
                    return self.client_once(d, self.N(1000, 5), "SB idle", 120, calls=1, window=1)
                if what == "journal":
                    jdir = tempfile.mkdtemp(prefix="journal-", dir=self.workdir)
                    d = self.daemon(sub_buffer=n, queue=f", journal: {jdir}, journal_sync: 50ms")
                    return self.client_once(d, n, "SB journal", 120, calls=calls, payload=64)
                redis = self.start(Redis)
                d = self.cluster_daemon(redis, n)
                d.wait_cluster_serving()
                return self.client_once(Group("dosomethingd + redis-server", [d], [redis]), n,
                                        "SB cluster", 120, calls=max(2, calls), payload=64)
            finally:
                self.args.daemon = saved
                self.stop_all()

        whats = ["echo", "idle", "journal"] + (["cluster"] if redis_ok else [])
        if self.args.b_only:
            whats = [w for w in whats if w in self.args.b_only]
        for what in whats:
            runs = {"this tree": [], name: []}
            for _ in range(self.args.repeat):       # interleaved: noise hits both alike
                runs["this tree"].append(measure(self.args.daemon, what))
                runs[name].append(measure(base, what))
            res = {}
            for who, rs in runs.items():
                r = median_run(rs)
                r["server"] = f"dosomethingd ({who})"
                res[who] = self.record("B vs baseline", r, note=f"{what}")
            a, b = res["this tree"], res[name]
            if what == "idle":
                pa, pb = a["latency_ms"]["p50"], b["latency_ms"]["p50"]
                self.check(f"SB idle latency p50, this tree vs {name}", "(report)",
                           f"{pa / pb:.2f}x ({pa:.3f} vs {pb:.3f} ms)", None)
            else:
                ia, ib = a["items_per_s"], b["items_per_s"]
                self.check(f"SB {what} items/s, this tree vs {name}", "(report)",
                           f"{ia / ib:.2f}x ({ia:,.0f} vs {ib:,.0f}/s)", None)

    def sp(self):
        """Scheduling: echo with 5 priorities mixed against all at priority 0
        (interleaved, the median of --repeat each); then 1M items delayed by
        an hour (N / 20 with --quick): memory per item, and the CPU of the
        whole daemon while they wait."""
        calls = self.args.calls
        n = self.N(100000)
        runs = {1: [], 5: []}
        for _ in range(self.args.repeat):
            for prios in (1, 5):
                d = self.daemon(sub_buffer=n)
                runs[prios].append(self.client_once(d, n, f"SP priorities {prios}", 120,
                                                    calls=calls, payload=64, priorities=prios))
                self.stop(d)
        flat = self.record("P scheduling", median_run(runs[1]), note="all priority 0")
        mixed = self.record("P scheduling", median_run(runs[5]), note="5 priorities mixed")
        a, b = mixed["items_per_s"], flat["items_per_s"]
        self.check("SP echo items/s, 5 priorities vs all 0", "(report)",
                   f"{a / b:.2f}x ({a:,.0f} vs {b:,.0f}/s)", None)

        n = 1000000 if not self.args.quick else 50000
        payload = 64
        d = self.daemon(capacity=n + 1024)
        r = self.record("P scheduling", self.client(
            d, n, "SP delayed", calls=calls, subscribers=0, wait="accepted",
            payload=payload, delay_ms=3600000, timeout=300, repeat=1),
            note=f"{n:,} echo items, delay_ms 1h; submit only")
        gp = [p for p in r["server_procs"] if p["name"].startswith("dosomethingd: grpc")]
        if not gp:
            raise BenchError("SP: no grpc process among the server's processes")
        gp = gp[0]
        per_item = (gp["rss_after_kb"] - gp["rss_before_kb"]) * 1024 / n
        self.check("SP grpc RSS per delayed item, minus payload", "(report)",
                   f"{per_item - payload:.0f} B ({per_item:.0f} B/item incl. {payload} B payload)",
                   None)
        time.sleep(1.0)
        pids = descendants(d.root_pid)
        n0 = {p: cpu_ns(p) for p in pids}
        w0 = time.monotonic()
        time.sleep(5.0)
        wall = time.monotonic() - w0
        ns = sum(cpu_ns(p) - n0[p] for p in pids if cpu_ns(p) is not None and n0[p] is not None)
        pct = 100.0 * ns / 1e9 / wall
        self.check(f"SP CPU of the daemon while {n:,} delayed items wait", "< 0.1%",
                   f"{pct:.4f}% ({ns / 1e6:.2f} ms in {wall:.1f} s)", pct < 0.1)
        self.stop(d)

    def idle(self):
        d = self.daemon()
        time.sleep(1.0)
        pids = descendants(d.root_pid)
        t0 = {p: proc_stat(p) for p in pids}
        n0 = {p: cpu_ns(p) for p in pids}
        w0 = time.monotonic()
        time.sleep(5.0)
        wall = time.monotonic() - w0
        ticks = sum(proc_stat(p)[1] - t0[p][1] for p in pids
                    if proc_stat(p) is not None and t0[p] is not None)
        ns = sum(cpu_ns(p) - n0[p] for p in pids if cpu_ns(p) is not None and n0[p] is not None)
        pct_ticks = 100.0 * ticks / CLK_TCK / wall
        pct_ns = 100.0 * ns / 1e9 / wall
        self.rows.append({"scenario": "I idle CPU", "server": "dosomethingd", "mode": "idle",
                          "wall_s": wall, "ticks": ticks, "cpu_ns": ns, "procs": len(pids),
                          "note": f"{len(pids)} processes, {wall:.1f} s"})
        log(f"  -> {ticks} ticks, {ns / 1e6:.2f} ms on CPU over {wall:.1f} s ({pct_ns:.4f}%)")
        self.check("idle CPU of the whole daemon", "< 0.1%",
                   f"{pct_ns:.4f}% ({ns / 1e6:.2f} ms in {wall:.1f} s over {len(pids)} processes;"
                   f" {ticks} ticks)", pct_ticks < 0.1 and pct_ns < 0.1)
        self.stop(d)

    # --- output ---------------------------------------------------------------

    def table(self):
        out = []
        mode = "quick (N / 20, no 1M queue)" if self.args.quick else "full"
        if self.args.repeat > 1:
            mode += f", median of {self.args.repeat} runs"
        load = os.getloadavg()
        try:
            head = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                  capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            head = "?"
        built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.stat(self.args.daemon).st_mtime))
        out.append(f"### dosomethingd benchmark ({mode}; {os.cpu_count()} CPUs; "
                   f"{time.strftime('%Y-%m-%d %H:%M')}; load average at the end "
                   f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
        out.append("")
        out.append(f"Tree {head}; {self.args.daemon} built {built}. The daemon's config is "
                   "the default but for workers, listen, queue.capacity 1M, and in scenarios 1, "
                   "4, 5, J, C updates.subscriber_buffer = N and updates.history_bytes = 64GiB "
                   "(5: grpc.max_concurrent_streams 1000; C: cluster, status.listen).")
        out.append("")
        out.append("| scenario | server | N | items/s end to end | submitted/s | p50 ms | p99 ms "
                   "| max ms | client CPU s | server CPU s | server CPU µs/item | other CPU s | peak RSS MiB | note |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for r in self.rows:
            if r.get("mode") == "load":
                lat = r["latency_ms"]
                rss = peak_rss(r)
                ips = r["items_per_s"]
                lats = (f"{lat['p50']:.3f} | {lat['p99']:.3f} | {lat['max']:.3f}" if lat["count"]
                        else "– | – | –")
                out.append(
                    f"| {r['scenario']} | {r['server']} | {r['n']:,} | "
                    f"{ips:,.0f} | {r['submitted_per_s']:,.0f} | {lats} | "
                    f"{r['client_cpu_s']:.2f} | {r['server_cpu_s']:.2f} | "
                    f"{1e6 * r['server_cpu_s'] / r['n']:.1f} | {r['other_cpu_s']:.2f} | {rss} | "
                    f"{describe(r)} |")
            elif r.get("mode") == "hash-loop":
                out.append(f"| {r['scenario']} | {r['server']} | {r['n']:,} | "
                           f"{r['items_per_s']:,.1f} | | | | | {r['cpu_s']:.2f} | | | "
                           f"{r['other_cpu_s']:.2f} | | "
                           + ("OpenSSL EVP with a reused context, the handler's call"
                              if r.get("hash_api") == "evp"
                              else f"OpenSSL {r.get('hash_api')} API, same digests")
                           + (", **noisy**" if noisy(r) else "") + " |")
            elif r.get("mode") == "idle":
                out.append(f"| {r['scenario']} | {r['server']} | | | | | | | | "
                           f"{r['cpu_ns'] / 1e9:.4f} | | | | {r['note']} |")
        out.append("")
        out.append("| target | wanted | measured | met |")
        out.append("|---|---|---|---|")
        for c in self.checks:
            met = "—" if c["ok"] is None else ("yes" if c["ok"] else "**no**")
            out.append(f"| {c['target']} | {c['want']} | {c['measured']} | {met} |")
        for e in self.errors:
            out.append(f"| FAILED | | {e.replace('|', '/')} | **no** |")
        out.append("")
        out.append("Latency: send -> SUCCEEDED on subscriber 0 (under load it includes the time "
                   "queued). Server CPU: utime+stime of all the server's processes during the "
                   "run. Peak RSS: VmHWM, grpc process / largest worker for dosomethingd (the "
                   "largest over the instances, then redis-server, in cluster rows), "
                   "server / largest worker for the seed. Other CPU: what the rest of the machine "
                   "used during the run (noise from other jobs; the client and server excluded); "
                   "**noisy**: more than 0.25 CPU of it on average.")
        return "\n".join(out)


class Dashboard:
    """The status page of the daemon on STATUS_PORT open in headless Chromium
    (selenium + chromedriver), polling as it does for a person; close()
    kills chromedriver and everything it started."""

    def __init__(self, workdir, status_port, page=True):
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError:
            raise BenchError("python3-selenium is not installed (apt-get install chromium "
                             "chromium-driver python3-selenium)")
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1800", "--no-first-run",
                    f"--user-data-dir={os.path.join(workdir, 'chromium')}"):
            opts.add_argument(arg)
        self.service = Service("/usr/bin/chromedriver")
        self.driver = webdriver.Chrome(service=self.service, options=opts)
        self.driver.set_page_load_timeout(30)
        if not page:
            # The browser's own cost on the machine, without the page.
            self.driver.get("data:text/html,<p>blank</p>")
            return
        self.driver.get(f"http://127.0.0.1:{status_port}/")
        deadline = time.monotonic() + 30
        while self.polls() < 2:
            if time.monotonic() > deadline:
                self.close()
                raise BenchError("the status page did not poll within 30 s")
            time.sleep(0.2)

    def polls(self):
        t = self.driver.find_element("id", "polls").text
        return int(t) if t.isdigit() else 0

    def close(self):
        pid = self.service.process.pid if self.service.process else None
        pids = (set(descendants(pid)) | {pid}) if pid else set()
        try:
            self.driver.quit()
        except Exception:   # noqa: BLE001 - killed below anyway
            pass
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Burst:
    """Every second, 100 connections at once to the status endpoint, each
    asking one of the page's JSON endpoints (in turn): one curl --parallel
    (C, cheap on the shared cores) a burst, on a thread, until stop().
    Counts answers and failures."""

    PATHS = ("/status", "/rates", "/items?state=FAILED&limit=50", "/batches")
    CONNECTIONS = 100

    def __init__(self, status_port):
        import threading
        if shutil.which("curl") is None:
            raise BenchError("curl is not installed (apt-get install curl)")
        self.urls = [f"http://127.0.0.1:{status_port}{self.PATHS[i % len(self.PATHS)]}"
                     for i in range(self.CONNECTIONS)]
        self.ok = self.failed = self.bursts = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        cmd = ["curl", "-s", "--parallel", "--parallel-immediate", "--parallel-max",
               str(self.CONNECTIONS), "--max-time", "10", "-w", "%{http_code}\n"]
        for u in self.urls:
            cmd += ["-o", "/dev/null", u]
        while not self.done.is_set():
            t0 = time.monotonic()
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            codes = p.stdout.split()
            self.ok += sum(1 for c in codes if c == "200")
            self.failed += self.CONNECTIONS - sum(1 for c in codes if c == "200")
            self.bursts += 1
            self.done.wait(max(0.0, 1.0 - (time.monotonic() - t0)))

    def summary(self):
        return f"{self.bursts} bursts, {self.ok} answers, {self.failed} failed"

    def stop(self):
        self.done.set()
        self.thread.join(30)


def cpu_split(r, n):
    """The CPU of a run's server processes per item, by role: the grpc
    processes, the workers, redis-server and the rest (masters), in µs."""
    out = {"grpc": 0.0, "workers": 0.0, "redis": 0.0, "master": 0.0}
    for p in r.get("server_procs", []):
        name, cpu = p.get("name") or "", p.get("cpu_s") or 0.0
        role = ("grpc" if "grpc" in name else "workers" if "worker" in name else
                "redis" if "redis" in name else "master")
        out[role] += 1e6 * cpu / n
    return out


def median_run(runs):
    runs = sorted(runs, key=lambda r: r["items_per_s"])
    r = runs[(len(runs) - 1) // 2]
    if len(runs) > 1:
        r["runs_items_per_s"] = [x["items_per_s"] for x in runs]
    return r


def noisy(r):
    """Other jobs used more than 0.25 CPU on average during the run."""
    wall = r.get("process_wall_s", 0)
    return wall > 0.2 and r.get("other_cpu_s", 0) / wall > 0.25


def peak_rss(r):
    procs = r.get("server_procs", [])
    if "dosomethingd" in r["server"]:
        # the largest over the instances of a cluster; then its redis-server
        g = [p["hwm_kb"] for p in procs if "grpc" in p["name"]]
        w = [p["hwm_kb"] for p in procs if "worker" in p["name"]]
        rd = [p["hwm_kb"] for p in procs if "redis-server" in p["name"]]
        return (f"{max(g or [0]) / 1024:.0f} / {max(w or [0]) / 1024:.0f}"
                + (f" / {max(rd) / 1024:.0f}" if rd else ""))
    if r["server"] == "seed-python" and len(procs) >= 2:
        return f"{procs[1]['hwm_kb'] / 1024:.0f} / {max(p['hwm_kb'] for p in procs[2:]) / 1024:.0f}"
    return f"{max([p['hwm_kb'] for p in procs] or [0]) / 1024:.0f}"


def describe(r):
    bits = []
    if r["kind"] != "echo":
        bits.append(r["kind"])
    bits.append(f"{r['payload_bytes']} B")
    bits.append(f"{r['calls']} call{'s' if r['calls'] > 1 else ''}")
    if r["subscribers"] != 1 and f"{r['subscribers']} subscriber" not in r.get("note", ""):
        bits.append(f"{r['subscribers']} subscribers")
    if r["window"]:
        bits.append(f"window {r['window']}")
    if r["wait"] != "final":
        bits.append("wait accepted")
    if r.get("resumes"):
        bits.append(f"subscribers cut off as too slow and resumed {r['resumes']}x")
    if r.get("duplicates"):
        bits.append(f"{r['duplicates']} duplicate finals")
    if r.get("note"):
        bits.append(r["note"])
    if r.get("runs_items_per_s"):
        bits.append("median of " + "/".join(f"{x:,.0f}" for x in r["runs_items_per_s"]) + " items/s")
    if noisy(r):
        bits.append("**noisy**")
    return ", ".join(bits)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N / 20, skip scenarios 6 and J")
    ap.add_argument("--only", type=lambda s: s.split(","), default=None,
                    help="comma-separated scenario numbers (1-6, J, C, I, B)")
    ap.add_argument("--daemon", default=os.path.join(ROOT, "build", "dosomethingd"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "dosomething-bench"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench"))
    ap.add_argument("--calls", type=int, default=4, help="concurrent doSomething calls")
    ap.add_argument("--sub-threads", type=int, default=1, help="client threads for subscribers")
    ap.add_argument("--baseline-daemon", default=None,
                    help="another build's dosomethingd: scenario B compares this tree with it")
    ap.add_argument("--baseline-name", default=None, help="what to call it in the table")
    ap.add_argument("--b-only", type=lambda s: s.split(","), default=None,
                    help="scenario B: only these of echo,idle,journal,cluster")
    ap.add_argument("--c-retention", type=int, default=None, metavar="COUNT",
                    help="cluster instances keep at most COUNT finals (items.retention.count): "
                         "with a COUNT below the items run, every final also forgets an older "
                         "one, as in a cluster that has run for a while")
    ap.add_argument("--repeat", type=int, default=None,
                    help="run each measurement K times, keep the median (default 3, "
                         "1 with --quick; never for scenario 6 and the seed's idle latency)")
    args = ap.parse_args()
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        sys.exit("run.py: --repeat must be at least 1")
    for path in (args.daemon, args.bench) + ((args.baseline_daemon,) if args.baseline_daemon else ()):
        if not os.access(path, os.X_OK):
            sys.exit(f"run.py: {path} is not there (make all bench-bin)")
    if not os.path.isdir(SEED_DIR):
        sys.exit(f"run.py: the seed baseline is not at {SEED_DIR}")

    run = Runner(args)
    started = time.monotonic()

    def on_signal(sig, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        run.scenario(1, "echo 64 B, end-to-end throughput", run.s1)
        run.scenario(2, "idle latency, one item at a time", run.s2)
        run.scenario(3, "sha256 rounds=10000 vs the plain loop", run.s3)
        run.scenario(4, "echo 16 KiB payloads", run.s4)
        run.scenario(5, "fan-out, 100 subscribers vs 1", run.s5)
        if not args.quick:
            run.scenario(6, "1M queued items: memory per item", run.s6)
            run.scenario("J", "queue.journal off / never / 50ms / always", run.sj)
        run.scenario("K", "result cache: sha256 50% repeated, cache on vs off", run.sk)
        run.scenario("C", "cluster mode: 1 instance vs single machine, 2 instances vs 1", run.sc)
        run.scenario("P", "scheduling: 5 priorities mixed; delayed items waiting", run.sp)
        run.scenario("D", "scenario 1 with the status page open, and under 100-connection bursts", run.sd)
        run.scenario("I", "idle CPU", run.idle)
        if args.baseline_daemon:
            run.scenario("B", f"this tree vs {args.baseline_name or args.baseline_daemon}",
                         run.sb)
    except KeyboardInterrupt:
        run.errors.append("interrupted")
    finally:
        run.stop_all()

    table = run.table()
    print(table)
    log(f"total {time.monotonic() - started:.0f} s")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"quick": args.quick, "rows": run.rows, "checks": run.checks,
                   "errors": run.errors}, f, indent=1)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    if run.errors:
        log(f"servers' configs and logs kept in {run.workdir}")
        sys.exit(1)
    shutil.rmtree(run.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
