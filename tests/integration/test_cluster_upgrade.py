"""
"serving" means the store takes items: a USR2 upgrade in cluster mode (and
with queue.journal) hands over only once the new instance can take work.

Before, the grpc process told its master it was ready as soon as its
listeners were bound, before its Redis session was open (connect, script
load, the update stream read): the master said "serving", sent QUIT to the
old master of an upgrade, which drained, while the new instance answered
every doSomething UNAVAILABLE ("cluster: redis ... unreachable"); with
Redis unreachable for the new instance, the old one (which could serve)
drained away and nothing served. Now:

- at an upgrade, the new instance binds its listeners only once its store
  serves, and the old one drains only then: a client submitting through the
  whole handover never meets UNAVAILABLE, and every item it got accepted
  gets its final;
- if the new instance's store never serves, the upgrade fails after its
  timeout (DS_UPGRADE_TIMEOUT_MS here) and the old instance keeps serving;
  the same for a journal the new instance cannot open;
- a plain start with Redis down still starts (systemd hears READY=1, with a
  STATUS saying it is not serving yet, and the log says so), and says
  "serving" (STATUS=serving) once Redis is there.

Redis is reached through a small TCP proxy in this test, which can hold new
connections back for a while (a slow network, a slow sentinel) or refuse
them (Redis unreachable for a new instance while the old one keeps its
connections).
"""
import os
import re
import signal
import socket
import threading
import time
import uuid

import grpc
import pytest

import conftest
from conftest import SUCCEEDED, kill_tree, pid_alive, wait_for
from test_cluster import (cluster_config, cluster_name, redis, stream_updates,  # noqa: F401
                          wait_serving)
from test_deploy_failures import FAILED_LINE, copied_binary, install, real_binary
from test_journal_hardening import fill, small_disk

HOLD_S = 2.0        # how long the proxy holds a new connection back


class RedisProxy:
    """127.0.0.1:PORT -> Redis. New connections are held back `hold` seconds
    before they reach Redis, or closed at once while `refuse` is set;
    connections already made are left alone."""

    def __init__(self, redis_port):
        self.redis_port = redis_port
        self.hold = 0.0
        self.refuse = False
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        self.sockets = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client, self.hold, self.refuse),
                             daemon=True).start()

    def _serve(self, client, hold, refuse):
        if refuse:
            client.close()
            return
        time.sleep(hold)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.redis_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self.lock:
            self.sockets += [client, upstream]
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """Close every connection made (Redis lost for whoever used them)."""
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.close()
                except OSError:
                    pass


def expect_notification(sock, word, d):
    """The first systemd notification on SOCK (a datagram socket) holding
    WORD, within 20 s; else fail with what came and D's log."""
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        seen.append(msg)
        if word in msg:
            return msg
    raise AssertionError(f"no {word} notification (had {seen}); log:\n{d.log_tail()}")


@pytest.fixture
def proxy(redis):  # noqa: F811 - the fixture imported above
    p = RedisProxy(redis.port)
    yield p
    p.close()


class Submitter:
    """Submits one echo item at a time, each call on a channel of its own
    (a new connection, which the kernel gives to either instance's
    listener), waiting for a connection if there is none (wait_for_ready:
    a connection refused or reset before the call was sent is no answer of
    the daemon's). Every call's outcome is kept."""

    def __init__(self, address, tag):
        self.address = address
        self.tag = tag
        self.accepted = []
        self.errors = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        n = 0
        while not self.stopping.is_set() and n < 2000:
            item = conftest.pb.WorkItem(id=f"{self.tag}-{n}", kind="echo", payload=b"%d" % n)
            n += 1
            channel = grpc.insecure_channel(self.address, options=conftest.CHANNEL_OPTIONS + [
                ("grpc.use_local_subchannel_pool", 1)])
            try:
                stub = conftest.pb_grpc.DoSomethingServiceStub(channel)
                reply = stub.doSomething(iter([item]), timeout=20, wait_for_ready=True)
                if reply.accepted == 1:
                    self.accepted.append(item.id)
                else:
                    self.errors.append(f"{item.id}: rejected: {list(reply.rejections)}")
            except grpc.RpcError as e:
                self.errors.append(f"{item.id}: {e.code()}: {e.details()}")
            finally:
                channel.close()
            time.sleep(0.02)

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=40)
        assert not self.thread.is_alive(), "the submitter did not stop"


def usr2(d, tmp_path, binary):
    """Install the real executable and send USR2; the new master's pid."""
    old_master = d.master_pid
    install(tmp_path, binary, source=real_binary())
    d.send_signal(signal.SIGUSR2)
    started = d.wait_log(r"binary upgrade: started \S+ as pid (\d+)")
    new_master = int(started.group(1))
    d.known_pids.add(new_master)
    assert new_master != old_master
    return new_master


def finals_in_redis(redis, name, ids):  # noqa: F811
    done = {}
    for _, item_id, state in stream_updates(redis, name):
        if item_id in ids and state == SUCCEEDED:
            done[item_id] = done.get(item_id, 0) + 1
    return done


@pytest.mark.deadline(150)
def test_usr2_hands_over_once_the_new_instance_has_its_redis_session(
        redis, proxy, start_daemon, monkeypatch, tmp_path):  # noqa: F811
    """Redis answers the new instance's connections 2 s late: the old
    instance serves until the new one has its session; a client submitting
    all along never gets UNAVAILABLE, and every accepted item succeeds once."""
    binary = copied_binary(tmp_path, monkeypatch)
    name = cluster_name()
    config = cluster_config(redis, name, overrides={"shutdown_timeout": "10s"})
    config["cluster"]["redis"] = proxy.url
    d = start_daemon(config, name="a")
    wait_serving(d)
    old_master = d.master_pid
    new_master = None
    submitter = Submitter(d.address, "h")
    try:
        time.sleep(0.5)
        proxy.hold = HOLD_S
        new_master = usr2(d, tmp_path, binary)
        d.wait_log(rf"binary upgrade: taking over from pid {old_master}, which now drains",
                   timeout=30)
        assert d.wait_exit(timeout=30) == 0, "the old master did not drain and exit"
        time.sleep(1.0)                 # and on with the new instance alone
        submitter.stop()
        log = d.log_text()
        assert submitter.errors == [], \
            f"{len(submitter.errors)} calls failed: {submitter.errors[:5]}; log:\n{d.log_tail()}"
        assert len(submitter.accepted) > 20, submitter.accepted
        # The new one waited for its session before it listened.
        assert "binary upgrade: listening once the store serves" in log, log
        assert pid_alive(new_master)
        ids = set(submitter.accepted)
        try:
            wait_for(lambda: len(finals_in_redis(redis, name, ids)) == len(ids), 30,
                     "every accepted item's SUCCEEDED")
        except AssertionError:
            missing = ids - set(finals_in_redis(redis, name, ids))
            raise AssertionError(f"{len(missing)} accepted items have no final: "
                                 f"{sorted(missing)[:5]}") from None
        assert all(n == 1 for n in finals_in_redis(redis, name, ids).values())
    finally:
        submitter.stopping.set()
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(150)
def test_usr2_with_redis_unreachable_for_the_new_instance_keeps_the_old_one(
        redis, proxy, start_daemon, monkeypatch, tmp_path):  # noqa: F811
    """The new instance cannot reach Redis (the old one keeps its
    connections): the old one is never told to drain, it serves all along,
    the upgrade fails after its timeout; with Redis reachable again the
    next USR2 goes through."""
    binary = copied_binary(tmp_path, monkeypatch)
    monkeypatch.setenv("DS_UPGRADE_TIMEOUT_MS", "4000")
    name = cluster_name()
    config = cluster_config(redis, name, overrides={"shutdown_timeout": "10s"})
    config["cluster"]["redis"] = proxy.url
    d = start_daemon(config, name="a")
    wait_serving(d)
    old_master = d.master_pid
    new_master = None
    submitter = Submitter(d.address, "u")
    try:
        proxy.refuse = True
        failed = usr2(d, tmp_path, binary)
        m = d.wait_log(FAILED_LINE, timeout=30)
        assert int(m.group("pid")) == failed, m.group(0)
        log = d.log_text()
        assert f"binary upgrade: the new master (pid {failed}) does not serve after 4000 ms" \
            in log, log
        assert "taking over" not in log, log
        assert "binary upgrade: listening once the store serves" in log, log
        assert pid_alive(old_master) and d.proc.poll() is None, "the old master stopped"
        wait_for(lambda: d.read_pid_file() == old_master, 5, "the pid file back")
        time.sleep(0.5)
        submitter.stop()
        assert submitter.errors == [], \
            f"{len(submitter.errors)} calls failed: {submitter.errors[:5]}; log:\n{d.log_tail()}"
        assert len(submitter.accepted) > 10, submitter.accepted
        ids = set(submitter.accepted)
        wait_for(lambda: len(finals_in_redis(redis, name, ids)) == len(ids), 30,
                 "every accepted item's SUCCEEDED")

        # Redis reachable again: the next upgrade hands over.
        proxy.refuse = False
        new_master = usr2(d, tmp_path, binary)
        d.wait_log(rf"binary upgrade: taking over from pid {old_master}, which now drains",
                   timeout=30)
        assert d.wait_exit(timeout=30) == 0, "the old master did not drain and exit"
        d.master_pid, d.proc = new_master, None
        wait_serving(d)
    finally:
        submitter.stopping.set()
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(90)
def test_a_start_with_redis_down_is_ready_but_says_serving_only_with_redis(
        redis, proxy, start_daemon, monkeypatch, tmp_path):  # noqa: F811
    """systemd hears READY=1 (the daemon started) with a STATUS saying it
    does not serve yet and why, the log says the same; "serving" (log and
    STATUS) follows once Redis is reachable."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    name = cluster_name()
    config = cluster_config(redis, name)
    config["cluster"]["redis"] = proxy.url
    proxy.refuse = True
    try:
        d = start_daemon(config, name="a")

        def expect(word):
            return expect_notification(sock, word, d)

        msg = expect("READY=1")
        assert re.search(r"STATUS=listening, not serving yet: cluster: redis \S+ is "
                         r"unreachable", msg), msg
        d.wait_log(r"listening \(generation 1\), but not serving yet: cluster: redis")
        assert not re.search(r"serving \(generation", d.log_text()), d.log_text()

        proxy.refuse = False
        msg = expect("STATUS=serving")
        assert "STATUS=serving, generation 1" in msg, msg
        d.wait_log(r"serving \(generation 1\)", timeout=5)
        wait_serving(d)
        assert d.stop() == 0
    finally:
        sock.close()


@pytest.mark.deadline(120)
def test_usr2_with_a_journal_the_new_instance_cannot_open_keeps_the_old_one(
        start_daemon, monkeypatch, tmp_path):
    """queue.journal: each grpc process has its own directory under it,
    made at its start. The new instance cannot make its own (the disk is
    full): the old one is never told to drain, the upgrade fails after its
    timeout; with room again the next USR2 goes through."""
    binary = copied_binary(tmp_path, monkeypatch)
    monkeypatch.setenv("DS_UPGRADE_TIMEOUT_MS", "4000")
    with small_disk(tmp_path / "small") as disk:
        d = start_daemon({"queue": {"journal": str(disk / "journal")},
                          "shutdown_timeout": "10s"})
        old_master = d.master_pid
        new_master = None
        try:
            c = d.client()
            assert c.submit([{"id": "before", "kind": "echo", "payload": b"x"}]).accepted == 1
            filler = fill(disk)
            failed = usr2(d, tmp_path, binary)
            m = d.wait_log(FAILED_LINE, timeout=30)
            assert int(m.group("pid")) == failed, m.group(0)
            log = d.log_text()
            assert "taking over" not in log, log
            assert re.search(r"binary upgrade: listening once the store serves \(journal "
                             r"unavailable: ", log), log
            assert pid_alive(old_master) and d.proc.poll() is None, "the old master stopped"
            wait_for(lambda: d.read_pid_file() == old_master, 5, "the pid file back")

            filler.unlink()
            sub = c.subscribe(sync=True, name="after-failed")
            reply = c.submit([{"id": "after-failed", "kind": "echo", "payload": b"y"}])
            assert reply.accepted == 1, reply
            assert sub.wait_final(["after-failed"], timeout=10)["after-failed"].state == SUCCEEDED
            sub.cancel()
            new_master = usr2(d, tmp_path, binary)
            d.wait_log(rf"binary upgrade: taking over from pid {old_master}, which now drains",
                       timeout=30)
            assert d.wait_exit(timeout=30) == 0, "the old master did not drain and exit"
        finally:
            if new_master is not None:
                kill_tree(new_master)
            d.kill_all()


def grpc_child(master):
    """The grpc process of a master (by its title), or None."""
    for pid in conftest.descendants(master):
        if "dosomethingd: grpc" in (conftest.proc_title(pid) or ""):
            return pid
    return None


@pytest.mark.deadline(150)
def test_usr2_whose_old_master_dies_while_the_new_one_waits_listens_at_once(
        redis, proxy, start_daemon, monkeypatch, tmp_path):  # noqa: F811
    """The old master dies (SIGKILL) while the new one waits for its store
    to serve: the new one stops waiting, listens at once (answering NOT
    SERVING until Redis is reachable), never signals the old pid, and serves
    once Redis is reachable; it does not stop at the upgrade's timeout."""
    binary = copied_binary(tmp_path, monkeypatch)
    monkeypatch.setenv("DS_UPGRADE_TIMEOUT_MS", "600000")
    name = cluster_name()
    config = cluster_config(redis, name, overrides={"shutdown_timeout": "10s"})
    config["cluster"]["redis"] = proxy.url
    d = start_daemon(config, name="a")
    wait_serving(d)
    old_master = d.master_pid
    new_master = None
    try:
        proxy.refuse = True
        new_master = usr2(d, tmp_path, binary)
        d.wait_log(r"binary upgrade: listening once the store serves", timeout=30)
        os.kill(old_master, signal.SIGKILL)
        d.wait_exit(timeout=10)
        wait_for(lambda: grpc_child(old_master) is None and not pid_alive(old_master), 10,
                 "the old instance gone")
        d.master_pid, d.proc = new_master, None
        d.wait_log(rf"binary upgrade: the old master \(pid {old_master}\) is gone", timeout=10)
        wait_for(lambda: conftest.owns_listener(grpc_child(new_master), d.port), 20,
                 "the new instance listening")
        proxy.refuse = False
        wait_serving(d)
        d.wait_log(r"serving \(generation 1\)", timeout=10)
        log = d.log_text()
        assert "taking over from pid" not in log, log
        assert f"kill({old_master}, SIGQUIT)" not in log, log
        assert pid_alive(new_master)
    finally:
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(150)
def test_usr2_reload_while_the_new_instance_waits_does_not_open_the_status_endpoint(
        redis, proxy, start_daemon, monkeypatch, tmp_path):  # noqa: F811
    """A HUP to the new master while its grpc process waits for its store
    applies the config there, but binds nothing: the status endpoint opens
    with the gRPC listeners, once the store serves (as the user of the
    config), on the address of the config then in force."""
    binary = copied_binary(tmp_path, monkeypatch)
    monkeypatch.setenv("DS_UPGRADE_TIMEOUT_MS", "600000")
    name = cluster_name()
    config = cluster_config(redis, name, overrides={"shutdown_timeout": "10s"})
    config["cluster"]["redis"] = proxy.url
    status_port = conftest.free_port()
    config["status"] = {"listen": f"127.0.0.1:{status_port}"}
    d = start_daemon(config, name="a")
    wait_serving(d)
    old_master = d.master_pid
    new_master = None
    try:
        proxy.refuse = True
        new_master = usr2(d, tmp_path, binary)
        d.wait_log(r"binary upgrade: listening once the store serves", timeout=30)
        new_grpc = grpc_child(new_master)
        assert new_grpc is not None
        os.kill(new_master, signal.SIGHUP)
        d.wait_log(r"config generation 2 applied", timeout=10)
        assert not conftest.owns_listener(new_grpc, status_port), \
            f"the waiting instance bound status.listen; log:\n{d.log_tail()}"
        assert not conftest.owns_listener(new_grpc, d.port)
        proxy.refuse = False
        d.wait_log(rf"binary upgrade: taking over from pid {old_master}, which now drains",
                   timeout=30)
        assert d.wait_exit(timeout=30) == 0, "the old master did not drain and exit"
        wait_for(lambda: conftest.owns_listener(new_grpc, status_port), 10,
                 "the status endpoint bound with the listeners")
    finally:
        if new_master is not None:
            kill_tree(new_master)


@pytest.mark.deadline(90)
def test_losing_redis_after_serving_is_reported_to_the_master(
        redis, proxy, start_daemon, monkeypatch, tmp_path):  # noqa: F811
    """IPC_READY is a state report: the grpc process tells its master when
    its store stops serving too, not only the first time it serves. The
    master logs and tells systemd "not serving" (and would not hand an
    upgrade over on the stale "serving"), then "serving" again."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    name = cluster_name()
    config = cluster_config(redis, name)
    config["cluster"]["redis"] = proxy.url
    try:
        d = start_daemon(config, name="a")
        wait_serving(d)

        def expect(word):
            return expect_notification(sock, word, d)

        expect("STATUS=serving, generation 1")
        proxy.refuse = True
        proxy.cut()
        msg = expect("STATUS=not serving")
        assert re.search(r"STATUS=not serving: cluster: redis \S+ is unreachable", msg), msg
        d.wait_log(r"not serving \(generation 1\): cluster: redis", timeout=5)
        proxy.refuse = False
        expect("STATUS=serving, generation 1")
        wait_serving(d)
        assert len(re.findall(r"master \d+: serving \(generation 1\)", d.log_text())) == 2, \
            d.log_text()
        assert d.stop() == 0
    finally:
        sock.close()


@pytest.mark.deadline(90)
def test_a_ready_left_by_a_dead_grpc_process_is_not_announced(
        redis, proxy, start_daemon, monkeypatch, tmp_path):  # noqa: F811
    """The grpc process reports its store serving again and dies before
    the master read that: the master, reading what the dead process left
    (a seq reservation matters), does not announce "serving" for it; the
    next grpc process's own report does."""
    name = cluster_name()
    config = cluster_config(redis, name)
    config["cluster"]["redis"] = proxy.url
    d = start_daemon(config, name="a")
    wait_serving(d)
    first = d.grpc_pid()
    proxy.refuse = True
    proxy.cut()
    d.wait_log(r"not serving \(generation 1\)", timeout=20)
    worker = d.worker_pids()[0]
    os.kill(d.master_pid, signal.SIGSTOP)
    try:
        # A child's death first, so that the master, resumed, reaps the
        # grpc process before it reads that one's channel: the frames are
        # read then by process_exited().
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: not pid_alive(worker), 10, "the worker dead")
        proxy.refuse = False
        # Its READY(1) waits unread in the master's channel.
        wait_for(lambda: d.log_text().count(f"grpc {first}: cluster: connected to redis") == 2,
                 20, "the grpc process connected again")
        time.sleep(0.5)     # and its report sent
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: not pid_alive(first), 10, "the grpc process dead")
    finally:
        os.kill(d.master_pid, signal.SIGCONT)
    d.wait_log(rf"started grpc process, pid (?!{first}\b)\d+", timeout=20)
    wait_serving(d)
    log = d.log_text()
    died = log.index(f"grpc process (pid {first})")
    respawned = re.search(r"started grpc process, pid \d+", log[died:]).start() + died
    assert not re.search(r"master \d+: serving \(generation", log[died:respawned]), \
        log[died - 300:respawned + 100]
    assert d.stop() == 0
