#!/usr/bin/python3
"""
Redis's own CPU per item for cluster mode's batch scripts, measured alone:

    /usr/bin/python3 bench/cluster_scripts.py [--retention COUNT] [CLUSTER_C ...]

For each file of scripts given (default: src/grpc/cluster_scripts.c; e.g. an
older tree's from `git show REV:src/grpc/cluster_scripts.c > /tmp/old.c`, or
before the scripts had a file of their own, REV:src/grpc/cluster.c), the
accept and update scripts
are taken out of its C string literals and run on a fresh redis-server (a
free loopback port, its own temp dir, killed at the end) the way an instance
batches them: 40 accept scripts of 512 echo items (64 B WorkItems), an
XREADGROUP of their work entries, then update scripts of 256 items' STARTED
and final (64 B results; STARTED folded: by the script, or by the instance,
which then sends it with the final, as each tree's script takes it). INFO cpu
(used_cpu_sys + used_cpu_user) before and after each step, divided by the
items. Three rounds per file, interleaved; docs/scaling.md has the numbers.
--retention COUNT: the update scripts keep at most COUNT finals
(items.retention.count, 1000000 by default): below the 20480 items, every
final past the first COUNT also forgets the oldest one, as in a cluster
that has run past its retention.
"""
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REDIS = "/usr/bin/redis-server"
N, B = 40, 512


def scripts_of(path):
    """{name: Lua text} of every `static const char script_X[]` in PATH (the
    macros of the cluster.h and cluster_scripts.h beside it, if any, included)."""
    src = open(path).read()
    for h in ("cluster.h", "cluster_scripts.h"):    # CLUSTER_LUA_LATEST, UPDATE_FIELDS
        header = os.path.join(os.path.dirname(path), h)
        if os.path.exists(header):
            src = open(header).read() + src
    src = src.replace("\\\n", " ")
    macros = {m.group(1): m.group(2) for m in
              re.finditer(r"^#define (\w+)[ \t]+(.*)$", src, re.M)}

    def text(expr):
        expr = re.sub(r"/\*.*?\*/", "", expr, flags=re.S)
        out = []
        for t in re.findall(r'"(?:[^"\\]|\\.)*"|LUA_NUM\(\w+\)|\w+', expr):
            if t.startswith("LUA_NUM("):      # LUA_NUM(X): X's number as a string
                out.append(macros.get(t[8:-1], t[8:-1]).strip())
            elif t.startswith('"'):
                out.append(t[1:-1].encode().decode("unicode_escape"))
            elif t in macros:
                out.append(text(macros[t]))
        return "".join(out)
    return {m.group(1): text(m.group(2)) for m in
            re.finditer(r"static const char (script_\w+)\[\] =(.*?);\n", src, re.S)}


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.f = self.sock.makefile("rb")

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def read(self):
        line = self.f.readline()
        kind, body = line[:1], line[1:-2]
        if kind == b"-":
            raise RuntimeError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            n = int(body)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if kind == b"*":
            n = int(body)
            return None if n < 0 else [self.read() for _ in range(n)]
        return body

    def cmd(self, *args):
        self.send(*args)
        return self.read()

    def cpu(self):
        info = self.cmd("INFO", "cpu").decode()
        v = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(v["used_cpu_sys"]) + float(v["used_cpu_user"])


def measure(r, path, retention="1000000"):
    s = scripts_of(path)
    acc, upd = s["script_accepts"], s["script_update"]
    new = "KEYS[9]" in upd      # the update script that can fold STARTED
    s0 = "s0 ~= ''" in upd      # ...given with the final (9 fields an update)
    l4 = "latest(r[6]" in upd   # layout 4: {NAME}:latest after the retention's prefix
    sa, su = r.cmd("SCRIPT", "LOAD", acc), r.cmd("SCRIPT", "LOAD", upd)
    uq = b"\x12\x10exp-item-0000000\x1a\x04echo \x01@\x01P\xde\xb5\xc7\xf0\x80\x90\xb1\xf7\x18"
    us = b"\x12\x10exp-item-0000000\x1a\x04echo \x02(\x01@\x01P\xde\xb5\xc7\xf0\x80\x90\xb1\xf7\x18"
    uf = uq + b"\x22\x40" + b"r" * 64
    w = b"\x0a\x10exp-item-0000000\x12\x04echo\x1a\x40" + b"p" * 64
    tag = f"m{time.time_ns()}"
    K = lambda k: f"{{{tag}}}:{k}"  # noqa: E731
    for stream in ("work", "pwork"):
        r.cmd("XGROUP", "CREATE", K(stream), "g", "0", "MKSTREAM")
    c0 = r.cpu()
    for n in range(N):
        keys = [K("work"), K("updates"), K("seq"), K("origin"), K("items"), K("delayed"),
                K("prio")] + ([K("latest")] if "KEYS[8]" in acc else [])
        args = ["EVALSHA", sa, str(len(keys))] + keys + ["0", "65536", K("item:")]
        for i in range(B):
            args += [uq, f"x{n * B + i}", "echo", "", "1", "3", "0", "1", w, "",
                     "1796589754034000000", "", "", ""]
        r.send(*args)
    for n in range(N):
        r.read()
    c1 = r.cpu()
    ents = r.cmd("XREADGROUP", "GROUP", "g", "c", "COUNT", str(N * B), "STREAMS", K("work"), ">")
    ids = [e[0] for e in ents[0][1]]
    c2 = r.cpu()
    keys = [K("work"), K("updates"), K("seq"), K("origin"), K("pwork"), K("items"), K("finals"),
            K("finals_bytes")] + ([K("want_started")] if new else [])
    half = B // 2
    for n in range(2 * N):
        args = ["EVALSHA", su, str(len(keys))] + keys + \
            ["0", "65536", "g", "c", "1796589754034", "0", retention, "1000000000", K("item:")] + \
            ([K("latest")] if l4 else [])
        for i in range(half):
            j = n * half + i
            if s0:      # the instance folds STARTED: it comes with the final
                args += ["0", ids[j], "f", "1", uf, f"x{j}", "4", "1796589754034000000", us]
                continue
            args += ["0", ids[j], "o" if new else "u", "1", us, f"x{j}", "echo", "", "2",
                     "1796589754034000000"]
            args += ["0", ids[j], "f", "1", uf, f"x{j}", "echo", "", "4",
                     "1796589754034000000" if new else ""]
        r.send(*args)
    for n in range(2 * N):
        last = r.read()
    c3 = r.cpu()
    # (since 9118faa its reply ends with the keys it could not read and the byte count's note)
    seqs = [x for x in last if isinstance(x, int)] if isinstance(last, list) else []
    assert seqs and seqs[-1] > 0, f"the update script wrote nothing: {last!r}"
    r.cmd("FLUSHALL")
    it = N * B
    return [1e6 * (b - a) / it for a, b in ((c0, c1), (c1, c2), (c2, c3), (c0, c3))]


@contextlib.contextmanager
def redis_server():
    """A Conn to a fresh redis-server of its own (a free loopback port, a
    temp dir, no persistence), killed and removed at the end."""
    d = tempfile.mkdtemp(prefix="cluster-scripts-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                r = Conn(port)
                break
            except OSError:
                time.sleep(0.05)
        yield r
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


def main():
    args, retention = sys.argv[1:], "1000000"
    if args[:1] == ["--retention"] and len(args) > 1:
        retention, args = args[1], args[2:]
    paths = args or ["src/grpc/cluster_scripts.c"]
    with redis_server() as r:
        print("µs of Redis CPU per item: accept, xreadgroup, started+final, total")
        for _ in range(3):
            for p in paths:
                a, x, u, t = measure(r, p, retention)
                print(f"{p}: {a:6.2f} {x:6.2f} {u:6.2f} {t:6.2f}", flush=True)


if __name__ == "__main__":
    main()
