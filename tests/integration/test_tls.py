"""TLS and mutual TLS on the gRPC port, with a throwaway CA made by openssl."""
import os
import pwd
import signal
import subprocess

import grpc
import pytest

import conftest
from conftest import SUCCEEDED


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def pki(tmp_path):
    """ca.pem, server.pem/server.key for 127.0.0.1, client.pem/client.key."""
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=d)
    return d


def tls_stub(address, pki, client_cert=False):
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client_cert else None,
        certificate_chain=(pki / "client.pem").read_bytes() if client_cert else None)
    channel = grpc.secure_channel(address, creds)
    return channel, conftest.pb_grpc.DoSomethingServiceStub(channel)


def submit_one(stub, item_id):
    return stub.doSomething(iter([conftest.pb.WorkItem(id=item_id, payload=b"x")]), timeout=10)


def start_tls(start_daemon, pki, client_ca=False):
    tls = {"cert": str(pki / "server.pem"), "key": str(pki / "server.key")}
    if client_ca:
        tls["client_ca"] = str(pki / "ca.pem")
    d = start_daemon({"grpc": {"tls": tls}}, wait=False)
    conftest.wait_for(lambda: "listening on" in d.log_text(), 10, "the TLS listener")
    return d


def test_tls_serves_and_refuses_plaintext(start_daemon, pki):
    d = start_tls(start_daemon, pki)
    channel, stub = tls_stub(d.address, pki)
    try:
        updates = stub.getUpdates(conftest.pb.UpdatesRequest(item_ids=["t1"], states=[SUCCEEDED]))
        assert submit_one(stub, "t1").accepted == 1
        assert next(updates).result == b"x"
        updates.cancel()
    finally:
        channel.close()
    plain = grpc.insecure_channel(d.address)
    try:
        with pytest.raises(grpc.RpcError) as e:
            conftest.pb_grpc.DoSomethingServiceStub(plain).doSomething(
                iter([conftest.pb.WorkItem(id="p")]), timeout=3)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        plain.close()


def test_mutual_tls_requires_a_client_certificate(start_daemon, pki):
    d = start_tls(start_daemon, pki, client_ca=True)
    channel, stub = tls_stub(d.address, pki, client_cert=False)
    try:
        with pytest.raises(grpc.RpcError) as e:
            submit_one(stub, "anon")
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        channel.close()
    channel, stub = tls_stub(d.address, pki, client_cert=True)
    try:
        assert submit_one(stub, "known").accepted == 1
    finally:
        channel.close()


def test_unreadable_certificate_is_a_boot_error(start_daemon, tmp_path):
    d = start_daemon({"grpc": {"tls": {"cert": str(tmp_path / "missing.pem"),
                                       "key": str(tmp_path / "missing.key")}}}, wait=False)
    assert d.wait_exit(timeout=10) != 0
    assert "missing.pem" in d.log_text()


@pytest.mark.parametrize("which", ["cert", "key", "client_ca"])
def test_config_check_reads_the_tls_files(make_daemon, pki, tmp_path, which):
    """-t catches what the start would fail on: a TLS file missing, a
    directory, or no PEM; the error names the key and the file (exit 2, a
    config error, not a start that fails later with 1)."""
    (tmp_path / "not.pem").write_text("just text\n")
    for bad, words in ((tmp_path / "missing.pem", "cannot open"),
                       (tmp_path, "cannot read"),
                       (tmp_path / "not.pem", "is not a PEM file")):
        tls = {"cert": str(pki / "server.pem"), "key": str(pki / "server.key"),
               "client_ca": str(pki / "ca.pem")}
        tls[which] = str(bad)
        d = make_daemon({"grpc": {"tls": tls}})
        for flag in ("-t", None):
            args = [conftest.BINARY, "-c", str(d.config_path)] + ([flag] if flag else [])
            r = subprocess.run(args, capture_output=True, text=True, timeout=15)
            assert r.returncode == 2, f"{flag}: {r.returncode}: {r.stderr}"
            assert f"grpc.tls.{which}: " in r.stderr and words in r.stderr, r.stderr
            assert str(bad) in r.stderr, r.stderr


def test_reload_to_an_unreadable_certificate_keeps_serving(start_daemon, pki, tmp_path):
    d = start_tls(start_daemon, pki)
    channel, stub = tls_stub(d.address, pki)
    try:
        assert submit_one(stub, "before").accepted == 1
        d.write_config({"grpc": {"tls": {"cert": str(tmp_path / "gone.pem"),
                                         "key": str(pki / "server.key")}}})
        d.send_signal(signal.SIGHUP)
        d.wait_log(r"reload failed: .*grpc\.tls\.cert: cannot open .*gone\.pem")
        assert submit_one(stub, "after").accepted == 1
    finally:
        channel.close()


def test_tls_key_only_root_reads_with_user(start_daemon, pki):
    """The usual set-up: started as root with `user:`, a key only root
    reads. The listener is bound with the user's ids (so that a reload and
    an upgrade share its port), but gRPC reads the TLS files as it binds:
    they are read as root then, as before; nothing is refused, the port is
    the user's."""
    if os.geteuid() != 0:
        pytest.skip("needs root (start as root with user:)")
    for f in ("server.key", "server.pem"):
        os.chown(pki / f, 0, 0)
        os.chmod(pki / f, 0o600)
    tls = {"cert": str(pki / "server.pem"), "key": str(pki / "server.key")}
    d = start_daemon({"user": "nobody", "grpc": {"tls": tls}}, wait=False)
    conftest.wait_for(lambda: "listening on" in d.log_text(), 10, "the TLS listener")
    channel, stub = tls_stub(d.address, pki)
    try:
        assert submit_one(stub, "k1").accepted == 1
    finally:
        channel.close()
    log = d.log_text()
    assert "Permission denied" not in log, log
    assert "as root it worked" not in log, log
    port = int(d.address.rsplit(":", 1)[1])
    assert conftest.listener_uids(port) == {pwd.getpwnam("nobody").pw_uid}
