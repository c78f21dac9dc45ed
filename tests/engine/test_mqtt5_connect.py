"""MQTT 5 CONNECT/CONNACK (issue 16 item 1): served on tcp, tls and websockets, with the CONNACK's
properties; refusals in the v5 form; enhanced authentication refused with 0x8C; limits.max_keepalive."""

from __future__ import annotations

import pytest

from mqtt_guard.reasons import Reason
from tests.engine.mqtt5_fixtures import TRANSPORTS, listeners  # noqa: F401 - the fixture
from tests.helpers import mqtt5 as m5
from tests.helpers import rawmqtt as raw


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_paho_v5_client_connects_and_is_told_the_servers_limits(listeners, transport):  # noqa: F811 - fixture
    net = listeners()
    c = net.v5(transport, "dev-1")
    try:
        assert c.reason == 0
        assert c.connack("ReceiveMaximum") == 20  # limits.max_inflight_messages
        assert c.connack("TopicAliasMaximum") == 10  # limits.max_topic_alias (mosquitto's default)
        assert c.connack("MaximumPacketSize") == 1024 * 1024  # limits.max_packet_size
        assert c.connack("RetainAvailable") == 1
        assert c.connack("WildcardSubscriptionAvailable") == 1
        assert c.connack("SubscriptionIdentifierAvailable") == 1
        assert c.connack("SharedSubscriptionAvailable") is None  # (absent: available)
        assert c.connack("AssignedClientIdentifier") is None  # it sent one
        assert c.connack("ServerKeepAlive") is None  # no limits.max_keepalive
    finally:
        c.close()


def test_limits_are_announced_as_configured(listeners):  # noqa: F811 - fixture
    net = listeners("limits:\n  max_inflight_messages: 7\n  max_topic_alias: 0\n  max_packet_size: 4096\n")
    c = net.v5()
    try:
        assert c.connack("ReceiveMaximum") == 7
        assert c.connack("TopicAliasMaximum") is None  # 0: none (the property's default)
        assert c.connack("MaximumPacketSize") == 4096
    finally:
        c.close()


def test_a_client_without_an_id_is_assigned_one(listeners):  # noqa: F811 - fixture
    net = listeners()
    c = net.v5(client_id="")
    try:
        assigned = c.connack("AssignedClientIdentifier")
        assert assigned
        c.subscribe("mine/#", 1)
        other = net.v5()
        other.publish("mine/x", b"hello", qos=1)
        assert c.receive().payload == b"hello"
        other.close()
    finally:
        c.close()
    net.broker.wait_log(f"client {assigned!r}")


def test_max_keepalive_lowers_an_mqtt5_clients_keepalive_not_a_311_ones(listeners):  # noqa: F811
    net = listeners("limits:\n  max_keepalive: 30\n")
    c = net.v5(keepalive=60)
    try:
        assert c.reason == 0
        assert c.connack("ServerKeepAlive") == 30
    finally:
        c.close()
    c = net.v5(keepalive=0)  # 0 (no keep-alive) is above any limit, as mosquitto has it
    try:
        assert c.connack("ServerKeepAlive") == 30
    finally:
        c.close()
    c = net.v5(keepalive=20)
    try:
        assert c.connack("ServerKeepAlive") is None
    finally:
        c.close()
    with raw.RawClient(net.ports["tcp"]) as old:  # mosquitto 2.0.11 accepts it (measured)
        old.send(raw.connect("old", keepalive=60))
        assert old.connack() == (0, 0)


def test_enhanced_authentication_is_refused_with_bad_authentication_method(listeners):  # noqa: F811
    net = listeners()
    c = net.v5(connect_props={"AuthenticationMethod": "SCRAM-SHA-1"})
    assert c.reason == 0x8C
    with raw.RawClient(net.ports["tcp"]) as r:
        r.send(m5.connect("scram", properties=b"\x15" + raw.s("SCRAM-SHA-1")))
        pkt = r.expect(raw.CONNACK)
        assert pkt.body[:2] == b"\x00\x8c"
        assert r.closed_by_peer(3)


def test_a_refused_v5_connect_gets_the_v5_reason(start_broker, add_user):
    """The refusal's code is the reason-code table's for the decision (docs/reason-codes.md): a wrong
    password is 0x86 Bad User Name or Password for an MQTT 5 client, CONNACK 5 for a 3.1.1 one."""
    add_user("alice", "right-pw")
    broker = start_broker()
    with raw.RawClient(broker.port) as r:
        r.send(raw.connect("a1", username="alice", password=b"wrong-pw"))
        _, code = r.connack()
        assert code == 5
    with raw.RawClient(broker.port) as r:
        r.send(m5.connect("a1", username="alice", password=b"wrong-pw"))
        pkt = r.expect(raw.CONNACK)
        assert pkt.body[:2] == bytes((0, Reason.BAD_USER_NAME_OR_PASSWORD))
        assert b"\x1f\x00\x19bad user name or password" in pkt.body  # its Reason String, nothing more said
        assert r.closed_by_peer(3)


def test_a_malformed_v5_connect_gets_a_connack_with_the_reason(listeners):  # noqa: F811 - fixture
    net = listeners()
    with raw.RawClient(net.ports["tcp"]) as r:
        r.send(m5.connect("bad", properties=b"\x21\x00\x00"))  # Receive Maximum 0: a Protocol Error
        pkt = r.expect(raw.CONNACK)
        assert pkt.body[:2] == b"\x00\x82"
        assert r.closed_by_peer(3)
    with raw.RawClient(net.ports["tcp"]) as r:
        r.send(m5.connect("bad", properties=b"\x01\x01"))  # Payload Format Indicator: not in a CONNECT
        pkt = r.expect(raw.CONNACK)
        assert pkt.body[:2] == b"\x00\x82"


def test_the_mqtt5_limits_keys(tmp_path):
    from mqtt_guard.config import ConfigError, load_config

    limits = load_config(None).limits
    assert (limits.max_topic_alias, limits.max_keepalive) == (10, 0)
    f = tmp_path / "c.yaml"
    f.write_text("limits:\n  max_topic_alias: 0\n  max_keepalive: 120\nlisteners:\n  - bind: 127.0.0.1:1884\n")
    config = load_config(f)
    config.check()
    assert (config.limits.max_topic_alias, config.limits.max_keepalive) == (0, 120)
    for key, value in (("max_topic_alias", 70000), ("max_keepalive", -1)):
        f.write_text(f"limits:\n  {key}: {value}\nlisteners:\n  - bind: 127.0.0.1:1884\n")
        with pytest.raises(ConfigError, match=f"limits.{key} must be between"):
            load_config(f).check()
