"""TLS listeners: a verified client certificate's CN becomes the username (use_identity_as_username)."""

from __future__ import annotations

import ssl

import pytest

from tests.helpers.certs import make_pki
from tests.helpers.mqtt import CONNACK_NOT_AUTHORIZED, connect
from tests.helpers.servers import free_port


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


def _client_ctx(pki, cert=None):
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


@pytest.fixture
def tls_broker(start_broker, pki, tmp_path):
    port = free_port()
    config = tmp_path / "guard.yaml"
    config.write_text(f"""
listeners:
  - type: tls
    bind: 127.0.0.1:{port}
    certfile: {pki.server_cert}
    keyfile: {pki.server_key}
    cafile: {pki.ca}
    require_certificate: true
    use_identity_as_username: true
""")
    broker = start_broker("--config", str(config), bind=False, wait_for_port=port)
    broker.port = port
    return broker


def test_certificate_cn_logs_in_without_password(tls_broker, pki):
    client = connect(tls_broker.port, tls=_client_ctx(pki, pki.client("sensor-7")))
    assert client.rc == 0
    tls_broker.wait_log("as sensor-7")
    client.close()


def test_disabled_identity_is_refused(tls_broker, pki, cli, add_user):
    add_user("sensor-8", "unused")
    assert cli("user", "disable", "sensor-8").returncode == 0
    client = connect(tls_broker.port, tls=_client_ctx(pki, pki.client("sensor-8")))
    assert client.rc == CONNACK_NOT_AUTHORIZED


def test_no_or_foreign_certificate_cannot_connect(tls_broker, pki):
    for cert in (None, pki.client("intruder", signed_by_ca=False)):
        with pytest.raises((ssl.SSLError, OSError, TimeoutError)):
            client = connect(tls_broker.port, tls=_client_ctx(pki, cert), timeout=3)
            if client.rc != 0:
                raise OSError(f"refused with {client.rc}")


def test_password_login_over_tls_without_client_cert(start_broker, pki, tmp_path, add_user):
    add_user("carol", "carol-pw")
    port = free_port()
    config = tmp_path / "guard.yaml"
    config.write_text(
        f"listeners:\n  - type: tls\n    bind: 127.0.0.1:{port}\n"
        f"    certfile: {pki.server_cert}\n    keyfile: {pki.server_key}\n"
    )
    start_broker("--config", str(config), bind=False, wait_for_port=port)
    client = connect(port, "carol", "carol-pw", tls=_client_ctx(pki))
    assert client.rc == 0
    client.close()
    assert connect(port, "carol", "bad", tls=_client_ctx(pki)).rc == CONNACK_NOT_AUTHORIZED
