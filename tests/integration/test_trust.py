"""
Isolation between clients (issue 14, point 8): with mutual TLS and
grpc.tls.scope_ids, every item id is scoped to the client certificate's
identity ("IDENTITY/ID"), so one client can neither take another's id nor
see another's updates. Certificates come from a throwaway CA (openssl).
"""
import subprocess

import grpc
import pytest

import conftest
from conftest import BINARY, FINAL_STATES, SUCCEEDED


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def pki(tmp_path):
    """ca.pem; server.pem for 127.0.0.1; alice (a subjectAltName DNS:alice,
    CN alice-cn: the SAN is her identity) and bob (only CN bob)."""
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    exts = {"server": "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
            "alice": "subjectAltName=DNS:alice\n", "bob": None}
    cns = {"server": "server", "alice": "alice-cn", "bob": "bob"}
    for name, ext in exts.items():
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cns[name]}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        extra = []
        if ext is not None:
            (d / f"{name}.ext").write_text(ext)
            extra = ["-extfile", f"{name}.ext"]
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", *extra, "-out", f"{name}.pem", cwd=d)
    return d


class TlsClient(conftest.Client):
    """conftest's Client over mutual TLS as NAME."""

    def __init__(self, address, pki, name):
        self.address = address
        creds = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.pem").read_bytes(),
            private_key=(pki / f"{name}.key").read_bytes(),
            certificate_chain=(pki / f"{name}.pem").read_bytes())
        self.channel = grpc.secure_channel(address, creds, options=conftest.CHANNEL_OPTIONS)
        self.stub = conftest.pb_grpc.DoSomethingServiceStub(self.channel)
        self.subscriptions = []


def tls_config(pki, scope_ids=True, client_ca=True):
    tls = {"cert": str(pki / "server.pem"), "key": str(pki / "server.key")}
    if client_ca:
        tls["client_ca"] = str(pki / "ca.pem")
    if scope_ids is not None:
        tls["scope_ids"] = scope_ids
    return {"grpc": {"tls": tls}}


def start_scoped(start_daemon, pki):
    d = start_daemon(tls_config(pki), wait=False)
    conftest.wait_for(lambda: "serving" in d.log_text(), 10, "the daemon serving")
    return d


def test_scope_ids_needs_client_certificates_and_shows_in_T(make_daemon, pki):
    d = make_daemon(tls_config(pki, client_ca=False))
    r = subprocess.run([BINARY, "-t", "-c", str(d.config_path)], capture_output=True,
                       text=True, timeout=15)
    assert r.returncode != 0
    assert "grpc.tls: scope_ids: on needs client_ca" in r.stderr + r.stdout, r.stderr
    d.write_config(tls_config(pki))
    r = subprocess.run([BINARY, "-T", "-c", str(d.config_path)], capture_output=True,
                       text=True, timeout=15)
    assert r.returncode == 0, r.stderr
    assert "    scope_ids: on\n" in r.stdout, r.stdout


def test_scoped_ids_isolate_clients(start_daemon, pki):
    d = start_scoped(start_daemon, pki)
    alice, bob = TlsClient(d.address, pki, "alice"), TlsClient(d.address, pki, "bob")
    d.clients += [alice, bob]
    alice_all = alice.subscribe(states=list(FINAL_STATES), name="alice-all")
    bob_all = bob.subscribe(states=list(FINAL_STATES), name="bob-all")
    bob_own = bob.subscribe(item_ids=["job-1"], name="bob-job-1")
    # bob asking for alice's scoped id asks for "bob/alice/job-1": nothing.
    bob_spy = bob.subscribe(item_ids=["alice/job-1"], name="bob-spy")

    # The same id from both: two items, neither a duplicate of the other.
    assert bob.submit([{"id": "job-1", "payload": b"from bob"}]).accepted == 1
    assert bob_all.wait_final(["bob/job-1"])["bob/job-1"].result == b"from bob"
    assert bob_own.wait_final(["bob/job-1"])["bob/job-1"].state == SUCCEEDED
    # bob cannot write into alice's scope either: his "alice/job-1" is his own.
    assert bob.submit([{"id": "alice/job-1", "payload": b"forged"}]).accepted == 1
    bob_all.wait_final(["bob/alice/job-1"])
    bob_spy.wait_final(["bob/alice/job-1"])

    assert alice.submit([{"id": "job-1", "payload": b"from alice"},
                         {"payload": b"unnamed"}]).accepted == 2
    final = alice_all.wait_final(["alice/job-1"])["alice/job-1"]
    assert final.result == b"from alice"
    # Every update is delivered in seq order: had alice's stream been sent
    # bob's (earlier) updates, they would be there by now.
    alice_all.wait(lambda s: len(s.final) == 2, 10, "alice's two finals")
    assert all(i.startswith("alice/") for i in alice_all.final), sorted(alice_all.final)
    assert all(i.startswith("bob/") for i in bob_all.final), sorted(bob_all.final)
    assert set(bob_own.final) == {"bob/job-1"}
    assert set(bob_spy.final) == {"bob/alice/job-1"}


def test_scope_ids_off_leaves_ids_alone(start_daemon, pki):
    d = start_daemon(tls_config(pki, scope_ids=False), wait=False)
    conftest.wait_for(lambda: "serving" in d.log_text(), 10, "the daemon serving")
    bob = TlsClient(d.address, pki, "bob")
    d.clients.append(bob)
    sub = bob.subscribe(item_ids=["plain"])
    assert bob.submit([{"id": "plain", "payload": b"x"}]).accepted == 1
    assert sub.wait_final(["plain"])["plain"].state == SUCCEEDED
