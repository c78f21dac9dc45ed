"""Access tokens with MQTT 5 clients (issue 19 item 1, with the reason codes of docs/reason-codes.md):
real Redis and broker processes, paho MQTT 5 clients and raw MQTT 5 packets on real sockets.

A bad token gets CONNACK 0x86 (Bad User Name or Password), a revoked one CONNACK 0x87 (Not authorized);
a connected client whose token expires is disconnected by the broker with DISCONNECT 0xA0 (Maximum
connect time), one whose token is revoked with DISCONNECT 0x87. MQTT 5 also lets the token be the
password alone, without a username."""

from __future__ import annotations

import pytest

from tests.helpers import mqtt5 as m5
from tests.helpers import rawmqtt as raw
from tests.helpers import tokens as T
from tests.helpers.mqtt5 import V5

BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
MAXIMUM_CONNECT_TIME = 0xA0


@pytest.fixture
def broker(start_broker, tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(T.jwt_config(T.HS_JWT) + "acl:\n  default: allow\n")
    return start_broker("--config", str(path))


def _token(sub: str = "alice", **extra: object) -> str:
    return T.hs_token(T.claims(sub, aud="mqtt", **extra))


def test_bad_tokens_get_connack_0x86_and_a_revoked_one_0x87(broker, rds, prefix):
    bad = {
        "bad signature": T.hs_token(T.claims(aud="mqtt"), secret="y" * 40),
        "access token expired": _token(ttl=-5),
        "alg: none": T.unsigned(T.claims(aud="mqtt")),
        "audience": T.hs_token(T.claims(aud="web")),
        "malformed token": "eyJhbGciOiJIUzI1NiJ9.!!!.x",
    }
    for words, token in bad.items():
        c = V5(broker.port, username="", password=token)
        assert c.reason == BAD_USER_NAME_OR_PASSWORD, words
        broker.wait_log(words)
    assert V5(broker.port, username="mallory", password=_token()).reason == BAD_USER_NAME_OR_PASSWORD
    rds.set(f"{prefix}revoked:j-gone", "{}")
    assert V5(broker.port, username="", password=_token(jti="j-gone")).reason == NOT_AUTHORIZED
    broker.wait_log("access token revoked")
    good = V5(broker.port, username="alice", password=_token())
    assert good.reason == 0
    good.close()


def test_the_token_may_be_the_password_alone(broker):
    """MQTT 5 allows a password without a username (3.1.1 does not): the identity is the token's."""
    c = raw.RawClient(broker.port)
    c.send(m5.connect("alone-5", password=_token("bob")))
    assert c.expect(raw.CONNACK).body[1] == 0
    broker.wait_log("client 'alone-5' connected")
    c.close()
    c = raw.RawClient(broker.port)
    c.send(m5.connect("alone-bad", password=_token("bob", ttl=-5)))
    assert c.expect(raw.CONNACK).body[1] == BAD_USER_NAME_OR_PASSWORD
    c.close()


def test_token_expiry_disconnects_with_0xa0(broker):
    c = V5(broker.port, "expiring-5", username="", password=_token(ttl=2))
    assert c.reason == 0
    assert c.disconnected.wait(10), broker.log()
    assert c.disconnect_reason == MAXIMUM_CONNECT_TIME
    broker.wait_log("access token expired")
    c.close()


def test_revocation_disconnects_with_0x87(broker, cli):
    c = V5(broker.port, "revoked-5", username="", password=_token(jti="j-v5"))
    other = V5(broker.port, "kept-5", username="", password=_token(jti="j-v5-other"))
    assert c.reason == 0 and other.reason == 0
    assert cli("token", "revoke", "j-v5").returncode == 0
    assert c.disconnected.wait(5), broker.log()
    assert c.disconnect_reason == NOT_AUTHORIZED
    assert not other.disconnected.is_set()
    assert V5(broker.port, username="", password=_token(jti="j-v5")).reason == NOT_AUTHORIZED
    other.close()
    c.close()
