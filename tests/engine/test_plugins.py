"""Item 7: a third-party plugin that raises denies that one check (logged and counted): the connection
stays (auth: a proper CONNACK 5), and the other subscribers still get the message. The plugins are
loaded by dotted path through the `plugins:` section of the config, as a user would load their own."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import rawmqtt as raw

FAULTY = {"tests.engine.faulty_plugins.FaultyTopic": {}, "tests.engine.faulty_plugins.FaultyAuth": {}}
CONFIG = """auth:
  allow_anonymous: true
acl:
  default: allow
  deny_publish_action: disconnect
plugins:
  tests.engine.faulty_plugins.FaultyTopic: {}
  tests.engine.faulty_plugins.FaultyAuth:
"""


@pytest.fixture(
    params=[
        "mqtt-guard",
        pytest.param(
            "amqtt",
            marks=pytest.mark.xfail(
                strict=True,
                reason="amqtt 0.12.1: a raising plugin drops the connection or the message for the other "
                "subscribers (docs/amqtt-proofs/p2b_plugin_exceptions.py)",
            ),
        ),
    ]
)
def faulty(request, start_broker, plain_amqtt, tmp_path):
    if request.param == "amqtt":
        return plain_amqtt({"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}, **FAULTY})
    path = tmp_path / "faulty.yaml"
    path.write_text(CONFIG)
    return start_broker("--config", str(path))


def _cid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_raising_publish_check_keeps_the_connection(faulty):
    watcher, _ = raw.connected(faulty.port, _cid("watch"))
    with watcher:
        watcher.send(raw.subscribe(1, ("#", 0)))
        watcher.expect(raw.SUBACK)
        pub, _ = raw.connected(faulty.port, _cid("pub"))
        with pub:
            pub.send(raw.publish("boom/x", b"denied", qos=1, packet_id=1))
            assert pub.expect(raw.PUBACK).packet_id == 1
            pub.send(raw.publish("fine/x", b"ok", qos=1, packet_id=2))  # the same connection keeps working
            assert pub.expect(raw.PUBACK).packet_id == 2
        assert watcher.expect(raw.PUBLISH).payload == b"ok"
    if hasattr(faulty, "wait_log"):
        log = faulty.wait_log("topic plugin FaultyTopic raised")
        assert "publish 'boom/x'" in log or "boom/x" in log
        assert "disconnecting client" not in log  # a plugin error is not a denial to act on


def test_raising_receive_check_only_affects_that_subscriber(faulty):
    victim, _ = raw.connected(faulty.port, _cid("victim"))  # FaultyTopic raises on its RECEIVE checks
    other, _ = raw.connected(faulty.port, _cid("other"))
    with victim, other:
        for c in (victim, other):  # the victim subscribes first, so it is checked first
            c.send(raw.subscribe(1, ("r/#", 0)))
            c.expect(raw.SUBACK)
        with raw.connected(faulty.port, _cid("pub"))[0] as pub:
            pub.send(raw.publish("r/x", b"for all", qos=1, packet_id=1))
            pub.expect(raw.PUBACK)
        assert other.expect(raw.PUBLISH).payload == b"for all"
        victim.send(raw.PINGREQ_BYTES)
        assert victim.expect_any().type == raw.PINGRESP  # still connected, and got nothing before the PINGRESP


def test_raising_subscribe_check_gives_0x80(faulty):
    c, _ = raw.connected(faulty.port, _cid("sub"))
    with c:
        c.send(raw.subscribe(1, ("boom/#", 0), ("calm/#", 1)))
        assert c.expect(raw.SUBACK).body == b"\x00\x01\x80\x01"


def test_raising_auth_plugin_gives_connack_5(faulty):
    with raw.RawClient(faulty.port) as c:
        c.send(raw.connect(_cid("crash"), username="crash", password=b"x"))
        assert c.connack() == (0, 5)
    # everybody else still gets in
    c, _ = raw.connected(faulty.port, _cid("fine"))
    c.close()
    if hasattr(faulty, "wait_log"):
        faulty.wait_log("auth plugin FaultyAuth raised")
