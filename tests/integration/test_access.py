"""Access control: password, ACL user and TLS on a real redis-server; secrets never leak."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from servers import RedisServer, free_port

from imgsim_lab.store import StoreAuthError, StoreConnectionError, open_store

pytestmark = pytest.mark.integration
SECRET = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("auth"), password=SECRET).start()
    r = redis.Redis(port=server.port, password=SECRET, protocol=2)
    r.execute_command("ACL", "SETUSER", "alice", "on", ">alice-pw", "~*", "+@all")
    r.close()
    yield server
    server.stop()


def test_right_password_works_and_wrong_one_is_a_clear_error(auth_server, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"redis://:{SECRET}@127.0.0.1:{auth_server.port}/0"
    with open_store(url, "acc") as s:
        assert s.count() == 0
        assert SECRET not in s.url and "***" in s.url
    with pytest.raises(StoreAuthError) as exc:
        open_store(f"redis://:wrong-{SECRET}@127.0.0.1:{auth_server.port}/0", "acc")
    assert "wrong user or password" in str(exc.value) and SECRET not in str(exc.value)
    with pytest.raises(StoreAuthError):
        open_store(f"redis://127.0.0.1:{auth_server.port}/0", "acc")  # no password at all
    assert SECRET not in caplog.text


@pytest.mark.kvrocks
def test_kvrocks_password(tmp_path_factory, caplog):
    """Apache Kvrocks with requirepass: right, wrong and missing password."""
    from cluster_fixture import need_kvrocks
    from servers import KvrocksServer

    server = KvrocksServer(tmp_path_factory.mktemp("kv-auth"), password=SECRET, binary=need_kvrocks()).start()
    try:
        caplog.set_level(logging.DEBUG)
        with open_store(f"redis://:{SECRET}@127.0.0.1:{server.port}/0", "acc") as s:
            s.register_model("m", 2, "v")
            assert s.model_info()["m"].dim == 2 and SECRET not in s.url
            s.flush()
        for bad in (f"redis://:wrong-{SECRET}@127.0.0.1:{server.port}/0", f"redis://127.0.0.1:{server.port}/0"):
            with pytest.raises(StoreAuthError) as exc:
                open_store(bad, "acc")
            assert SECRET not in str(exc.value)
        assert SECRET not in caplog.text
    finally:
        server.stop()


def test_acl_user(auth_server):
    with open_store(f"redis://alice:alice-pw@127.0.0.1:{auth_server.port}/0", "acl") as s:
        s.register_model("m", 2, "v")
        assert s.model_info()["m"].dim == 2
        s.flush()
    with pytest.raises(StoreAuthError) as exc:
        open_store(f"redis://alice:nope@127.0.0.1:{auth_server.port}/0", "acl")
    assert "nope" not in str(exc.value)


def test_cli_never_prints_or_logs_the_password(auth_server, tmp_path):
    url = f"redis://:{SECRET}x@127.0.0.1:{auth_server.port}/0"  # wrong password
    env = {**os.environ, "IMGSIM_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "imgsim_lab.cli", "info", "--kv", url], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "wrong user or password" in out.stderr
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "wrong user or password" in logs
    for text in (out.stdout, out.stderr, logs):
        assert SECRET not in text
    down = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    out = subprocess.run([sys.executable, "-m", "imgsim_lab.cli", "info", "--kv", down], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot reach the store" in out.stderr and SECRET not in out.stderr


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: cannot make test certificates")
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=imgsim-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.crt", "-days", "2", "-extfile", "ext")
    port = free_port()
    server = RedisServer(d, port=free_port(), extra=[
        "--tls-port", str(port), "--tls-cert-file", str(d / "srv.crt"), "--tls-key-file", str(d / "srv.key"),
        "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "no"], password=SECRET).start()
    yield port, d / "ca.crt"
    server.stop()


def test_tls_with_password(tls_server):
    port, ca = tls_server
    url = f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    with open_store(url, "tls") as s:
        s.register_model("m", 2, "v")
        assert s.info()["models"]["m"]["dim"] == 2
        s.flush()
    # a server certificate the client does not trust is refused, with the reason
    with pytest.raises(StoreConnectionError) as exc:
        open_store(f"rediss://:{SECRET}@127.0.0.1:{port}/0", "tls")
    assert "CERTIFICATE_VERIFY_FAILED" in str(exc.value) and SECRET not in str(exc.value)
    assert Path(ca).exists()
