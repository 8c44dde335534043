"""
status.auth: HTTP basic auth of the status endpoint from a user file as
nginx's auth_basic_user_file (bcrypt and SHA-512 crypt); /healthz stays
open; a bad file is a config error naming FILE:LINE; a reload reads it
again; a flood of wrong passwords gets 429 and cannot stall the data path;
status.listen beyond loopback without it logs a warning.
"""
import base64
import ctypes
import ctypes.util
import http.client
import re
import subprocess
import threading
import time

import pytest

from conftest import BINARY, SUCCEEDED, free_port, run_cli, wait_for
from test_status import APPLIED

_libcrypt = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
_libcrypt.crypt.restype = ctypes.c_char_p
_libcrypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_libcrypt.crypt_gensalt.restype = ctypes.c_char_p
_libcrypt.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                    ctypes.c_int]


def bcrypt(password, cost=5, prefix="$2b$"):
    salt = _libcrypt.crypt_gensalt(prefix.encode(), cost, None, 0)
    return _libcrypt.crypt(password.encode(), salt).decode()


def sha512_crypt(password):
    """As an operator makes one: openssl passwd -6."""
    r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, text=True,
                       capture_output=True, check=True)
    return r.stdout.strip()


def get(address, path, user=None, password=None, raw_auth=None, timeout=10):
    """(status, headers {lowercase: value}, body) of GET PATH."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {}
    if raw_auth is not None:
        headers["Authorization"] = raw_auth
    elif user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        conn.close()


def write_users(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def start(start_daemon, tmp_path, users_file, **extra):
    address = f"127.0.0.1:{free_port()}"
    d = start_daemon({"status": {"listen": address, "auth": str(users_file)}, **extra})
    d.status_address = address
    return d


def test_none_wrong_and_right_credentials(start_daemon, tmp_path):
    users = write_users(tmp_path / "users", [
        "# operators",
        "",
        f"alice:{bcrypt('wonderland')}",
        f"bob:{sha512_crypt('builder')}",
        f"carol:{bcrypt('c4rol', prefix='$2y$')}:with a comment",
    ])
    d = start(start_daemon, tmp_path, users)
    a = d.status_address
    for path in ("/metrics", "/status", "/nowhere"):
        status, headers, body = get(a, path)
        assert status == 401, (path, status, body)
        assert headers["www-authenticate"].startswith('Basic realm="dosomethingd"'), headers
    assert get(a, "/metrics", "alice", "wrong")[0] == 401
    assert get(a, "/metrics", "bob", "wonderland")[0] == 401
    assert get(a, "/metrics", "nobody", "wonderland")[0] == 401
    assert get(a, "/metrics", "alice", "")[0] == 401
    assert get(a, "/metrics", "alice", "wonderland\x00")[0] == 401
    status, _, body = get(a, "/metrics", "alice", "wonderland")
    assert status == 200 and "dosomething_" in body
    assert get(a, "/status", "bob", "builder")[0] == 200
    assert get(a, "/status", "carol", "c4rol")[0] == 200
    assert get(a, "/nowhere", "alice", "wonderland")[0] == 404
    # Remembered: the same credentials again answer without a check.
    for _ in range(20):
        assert get(a, "/metrics", "alice", "wonderland")[0] == 200
    # Malformed Authorization headers: 401, never a crash.
    for raw in ("Bearer abc", "Basic", "Basic !!!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                "Basic " + "A" * 5000, "basic " + base64.b64encode(b":").decode()):
        assert get(a, "/metrics", raw_auth=raw)[0] == 401, raw
    # /healthz stays open for load balancers.
    status, _, body = get(a, "/healthz")
    assert (status, body) == (200, "ok\n")
    assert d.client().health() == b"\x08\x01"


@pytest.mark.parametrize("lines, line, why", [
    (["alice"], 1, "is not user:hash"),
    ([f"alice:{'$2b$05$' + 'x' * 10}"], 1, "is not a bcrypt hash"),
    (["# ok", "alice:$1$abc$0123456789012345678901"], 2, "is not a supported hash"),
    (["alice:plaintext"], 1, "is not a supported hash"),
    ([f"alice:{bcrypt('x')}", f"alice:{bcrypt('y')}"], 2, 'user "alice" again'),
    ([f":{bcrypt('x')}"], 1, "empty user name"),
    (["alice:$6$rounds=2000000$salt$" + "a" * 86], 1, "more than 1000000"),
    (["alice:$2b$13$" + "a" * 53], 1, "cost over 12"),
    (["alice:$6$salt$short"], 1, "is not a SHA-512 crypt hash"),
])
def test_a_bad_user_file_is_a_config_error(make_daemon, tmp_path, lines, line, why):
    users = write_users(tmp_path / "users", lines)
    d = make_daemon({"status": {"listen": f"127.0.0.1:{free_port()}", "auth": str(users)}})
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode == 2, r.stderr
    assert re.search(rf"status\.auth: {re.escape(str(users))}:{line}: [^\n]*{re.escape(why)}",
                     r.stderr), r.stderr


@pytest.mark.parametrize("content, why", [
    (None, "cannot open: No such file"),
    ("", "names no user"),
    ("# only a comment\n", "names no user"),
    ("a\x00b\n", "NUL byte"),
])
def test_a_missing_or_empty_user_file_is_a_config_error(make_daemon, tmp_path, content, why):
    users = tmp_path / "users"
    if content is not None:
        users.write_text(content)
    d = make_daemon({"status": {"listen": f"127.0.0.1:{free_port()}", "auth": str(users)}})
    r = run_cli("-t", "-c", d.config_path)
    assert r.returncode == 2, r.stderr
    assert f"status.auth: {users}: " in r.stderr and why in r.stderr, r.stderr
    # A start fails the same way.
    p = subprocess.run([BINARY, "-c", str(d.config_path)], capture_output=True, text=True,
                       timeout=20, cwd=tmp_path)
    assert p.returncode != 0 and why in p.stderr, p.stderr


def test_reload_reads_the_file_again(start_daemon, tmp_path):
    users = write_users(tmp_path / "users", [f"alice:{bcrypt('one')}"])
    d = start(start_daemon, tmp_path, users)
    a = d.status_address
    assert get(a, "/metrics", "alice", "one")[0] == 200

    write_users(users, [f"alice:{bcrypt('two')}", f"bob:{sha512_crypt('three')}"])
    applied = len(APPLIED.findall(d.log_text()))
    d.send_signal(1)    # SIGHUP
    wait_for(lambda: len(APPLIED.findall(d.log_text())) > applied, 15, "the reload applied")
    assert get(a, "/metrics", "alice", "one")[0] == 401      # forgotten, even if remembered
    assert get(a, "/metrics", "alice", "two")[0] == 200
    assert get(a, "/metrics", "bob", "three")[0] == 200

    # A bad file fails the reload with FILE:LINE; the users read before stay.
    write_users(users, [f"alice:{bcrypt('four')}", "broken line"])
    d.send_signal(1)
    d.wait_log(rf"reload failed: .*status\.auth: {re.escape(str(users))}:2: is not user:hash",
               timeout=15)
    assert get(a, "/metrics", "alice", "two")[0] == 200
    assert get(a, "/metrics", "alice", "four")[0] == 401


@pytest.mark.deadline(120)
def test_a_flood_of_wrong_passwords_gets_429_and_the_data_path_goes_on(start_daemon, tmp_path):
    users = write_users(tmp_path / "users", [f"alice:{bcrypt('right', cost=10)}"])
    d = start(start_daemon, tmp_path, users)
    a = d.status_address
    assert get(a, "/metrics", "alice", "right")[0] == 200     # remembered from now on
    c = d.client()

    def run_batches(seconds, tag):
        """Sequential batches of 100 echo items for SECONDS: how many were done."""
        done, batch = 0, 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ids = [f"{tag}{batch}-{i}" for i in range(100)]
            reply = c.submit([{"id": i, "kind": "echo", "payload": b"x"} for i in ids])
            assert reply.accepted == 100
            got = c.get_items(ids, wait=True, timeout=30)
            assert all(it.state == SUCCEEDED for it in got.items) and len(got.items) == 100
            done += 100
            batch += 1
        return done

    # For the record only (no timed assertion): the same loop without a flood.
    baseline = run_batches(3, "b")
    stop = threading.Event()
    codes = []
    lock = threading.Lock()

    def flood(n):
        while not stop.is_set():
            try:
                code = get(a, "/metrics", "alice", f"wrong-{n}")[0]
            except OSError:
                code = "error"
            with lock:
                codes.append(code)

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        # The data path while the flood runs: every batch accepted and done.
        done = run_batches(6, "f")
        # A remembered user is not held up by the flood.
        assert get(a, "/metrics", "alice", "right")[0] == 200
        assert get(a, "/healthz")[0] == 200
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    print(f"flood: {len(codes)} answers, {codes.count(401)} checked (401), "
          f"{codes.count(429)} refused (429); {done} items done in 6 s "
          f"(without the flood: {baseline} in 3 s)")
    assert done >= 500, f"only {done} items in 6 s under the flood"
    assert codes.count(429) > 0, f"no 429 in {len(codes)} answers"
    assert set(codes) <= {401, 429}, set(codes)
    # Checks were bounded: about a tenth of the loop (100 ms/s of ~50 ms
    # checks), plus the burst; far fewer than the requests.
    checked = codes.count(401)
    assert checked < len(codes), (checked, len(codes))
    d.wait_log(r"status endpoint: \d+ requests refused for missing or wrong credentials and "
               r"\d+ for too many password checks \(429\)", timeout=20)
    # After the flood, a check is possible again.
    wait_for(lambda: get(a, "/status", "alice", "right")[0] == 200, 10, "a check after the flood")


def test_an_open_endpoint_beyond_loopback_is_warned_about(start_daemon, tmp_path):
    port = free_port()
    d = start_daemon({"status": {"listen": f"0.0.0.0:{port}"}})
    d.wait_log(rf"status\.listen 0\.0\.0\.0:{port} is not a loopback address and status\.auth "
               r"is off")
    assert get(f"127.0.0.1:{port}", "/metrics")[0] == 200
    # Loopback: no warning; with auth beyond loopback: none either.
    users = write_users(tmp_path / "users", [f"alice:{bcrypt('x')}"])
    e = start_daemon({"status": {"listen": f"127.0.0.1:{free_port()}"}}, name="loop")
    f = start_daemon({"status": {"listen": f"0.0.0.0:{free_port()}", "auth": str(users)}},
                     name="authed")
    for x in (e, f):
        x.wait_log(r"status endpoint listening on")
        assert "is not a loopback address" not in x.log_text()
    # On reload, too.
    applied = len(APPLIED.findall(e.log_text()))
    e.write_config({"status": {"listen": f"0.0.0.0:{free_port()}"}})
    e.send_signal(1)
    wait_for(lambda: len(APPLIED.findall(e.log_text())) > applied, 15, "the reload applied")
    e.wait_log(r"status\.listen 0\.0\.0\.0:\d+ is not a loopback address")
