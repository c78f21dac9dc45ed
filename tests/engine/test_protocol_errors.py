"""Items 6 and 8: protocol violations close the connection cleanly, with a log line naming the client and
the reason; MQTT 5 gets CONNACK 1; MQTT 3.1 is accepted (as mosquitto). Raw bytes over real sockets.

Every expectation here was first checked against mosquitto 2.0.11 with the same bytes."""

from __future__ import annotations

import uuid

import pytest

from tests.engine.conftest import both
from tests.helpers import rawmqtt as raw
from tests.helpers.mqtt import connect


def _cid() -> str:
    return f"c-{uuid.uuid4().hex[:8]}"


def _still_serves(port: int) -> None:
    """Another client can still connect, subscribe and receive: the broker is unaffected."""
    with raw.connected(port, _cid())[0] as sub:
        sub.send(raw.subscribe(1, ("ok/#", 0)))
        sub.expect(raw.SUBACK)
        with raw.connected(port, _cid())[0] as pub:
            pub.send(raw.publish("ok/x", b"fine"))
            assert sub.expect(raw.PUBLISH).payload == b"fine"


# -- the zombie / desynchronisation cases that plain amqtt gets wrong --------------------------------
AMQTT_FAILS = [
    ("wildcard +", raw.publish("a/+/b", b"x"), "contains a wildcard"),
    ("wildcard #", raw.publish("a/#", b"x", qos=1), "contains a wildcard"),
    ("invalid utf-8 topic", raw.publish(b"a/\xff\xfe", b"x"), "PUBLISH topic is not valid UTF-8"),
]


@pytest.mark.parametrize(
    "target",
    both(
        "the connection stays open (zombie or desynchronised stream), "
        "see docs/amqtt-proofs/p2d_invalid_publish_topic.py"
    ),
    indirect=True,
)
@pytest.mark.parametrize("name,packet,reason", AMQTT_FAILS, ids=[c[0] for c in AMQTT_FAILS])
def test_invalid_publish_topic_closes_the_connection(target, name, packet, reason):
    cid = _cid()
    client, _ = raw.connected(target.port, cid)
    with client:
        client.send(packet)
        assert client.closed_by_peer(3), f"{name}: connection left open"
    if hasattr(target, "wait_log"):
        log = target.wait_log(f"closed connection of client '{cid}'")
        assert reason in log
    _still_serves(target.port)


@pytest.mark.parametrize(
    "target", both("no packet size limit: a 1 MiB + 1 KiB PUBLISH is read and routed"), indirect=True
)
def test_packet_over_default_max_packet_size_closes(target):
    cid = _cid()
    client, _ = raw.connected(target.port, cid)
    with client:
        client.send(raw.publish("big/x", b"x" * (1024 * 1024 + 1024)))
        assert client.closed_by_peer(5)
    if hasattr(target, "wait_log"):
        assert "exceeds max_packet_size 1048576" in target.wait_log(f"closed connection of client '{cid}'")


# -- the full list, mqtt-guard only ------------------------------------------------------------------
VIOLATIONS = [
    ("empty topic", raw.publish("", b"x"), "PUBLISH topic is empty"),
    ("NUL in topic", raw.publish("a\x00b", b"x"), "contains U+0000"),
    ("QoS 3", raw.packet(0x36, raw.s("a") + b"\x00\x01x"), "QoS 3"),
    ("packet id 0", raw.publish("a", b"x", qos=1, packet_id=0), "packet identifier 0"),
    ("truncated publish", raw.packet(0x30, b"\x00\x09abc"), "malformed PUBLISH"),
    ("second CONNECT", raw.connect("again"), "second CONNECT"),
    ("SUBSCRIBE bad flags", raw.packet(0x80, b"\x00\x01" + raw.s("a") + b"\x00"), "invalid fixed-header flags"),
    ("SUBSCRIBE no filter", raw.packet(0x82, b"\x00\x01"), "SUBSCRIBE without a topic filter"),
    ("SUBSCRIBE QoS 3", raw.subscribe(1, ("a", 3)), "requested QoS byte"),
    ("SUBSCRIBE bad filter", raw.subscribe(1, ("a/#/b", 0)), "invalid topic filter"),
    ("SUBSCRIBE utf-8", raw.subscribe(1, (b"a/\xc3", 0)), "topic filter is not valid UTF-8"),
    ("UNSUBSCRIBE no filter", raw.packet(0xA2, b"\x00\x01"), "UNSUBSCRIBE without a topic filter"),
    ("PUBACK too long", raw.packet(0x40, b"\x00\x01\x00"), "malformed PUBACK"),
    ("PINGREQ with body", raw.packet(0xC0, b"\x00"), "malformed PINGREQ"),
    ("CONNACK from client", raw.packet(0x20, b"\x00\x00"), "CONNACK is not a packet a client may send"),
    ("reserved type 15", raw.packet(0xF0, b""), "reserved type 15"),
    ("remaining length 5 bytes", b"\x30\xff\xff\xff\xff\x01", "malformed remaining length"),
]


@pytest.mark.parametrize("name,packet,reason", VIOLATIONS, ids=[c[0] for c in VIOLATIONS])
def test_protocol_violation_closes_with_a_log_line(anon_broker, name, packet, reason):
    broker = anon_broker()
    cid = _cid()
    client, _ = raw.connected(broker.port, cid)
    with client:
        client.send(packet)
        assert client.closed_by_peer(3), f"{name}: connection left open"
    log = broker.wait_log(f"closed connection of client '{cid}'")
    line = next(ln for ln in log.splitlines() if f"closed connection of client '{cid}'" in ln)
    assert "protocol violation" in line and reason in line
    _still_serves(broker.port)


def test_small_max_packet_size_closes_before_reading_the_body(anon_broker):
    broker = anon_broker("limits:\n  max_packet_size: 2KiB\n")
    cid = _cid()
    client, _ = raw.connected(broker.port, cid)
    with client:
        client.send(raw.publish("t", b"x" * 1000))  # fits
        # Announce 10 MB but send only the header: the broker must not wait for (or buffer) the body.
        client.send(b"\x30" + raw.remaining_length(10_000_000))
        assert client.closed_by_peer(3)
    assert "exceeds max_packet_size 2048" in broker.wait_log(f"closed connection of client '{cid}'")
    # An oversized CONNECT is refused too.
    with raw.RawClient(broker.port) as c:
        c.send(raw.connect("big", username="u", password=b"p" * 5000))
        assert c.closed_by_peer(3)
    broker.wait_log("invalid CONNECT: CONNECT packet of")


CONNECT_VIOLATIONS = [
    ("invalid utf-8 client id", raw.connect(b"id-\xff"), "client identifier is not valid UTF-8"),
    ("invalid utf-8 username", raw.connect("u8", username=b"\xc3(", password=b"x"), "username is not valid UTF-8"),
    ("password without username", raw.connect("pw", password=b"x"), "password flag without username"),
    ("will topic wildcard", raw.connect("w", will=("a/#", b"x", 0, False)), "will topic"),
    ("reserved flag", raw.connect("r", flags_extra=0x01), "reserved flag"),
    ("will QoS 3", raw.connect("q", will=("a", b"x", 3, False)), "will QoS 3"),
    ("unknown protocol name", raw.connect("n", name="MQTX"), "unknown protocol name"),
    ("not a CONNECT first", raw.subscribe(1, ("a", 0)), "first packet is SUBSCRIBE"),
    (
        "CONNECT fixed-header flags",
        b"\x11" + raw.connect("f")[1:],
        "CONNECT with reserved fixed-header flags 0x1 (must be 0) [MQTT-2.2.2-2]",
    ),
    (
        "trailing bytes",
        raw.connect("t")[:1] + bytes([raw.connect("t")[1] + 1]) + raw.connect("t")[2:] + b"\x00",
        "bytes after the payload",
    ),
]


@pytest.mark.parametrize("name,packet,reason", CONNECT_VIOLATIONS, ids=[c[0] for c in CONNECT_VIOLATIONS])
def test_invalid_connect_is_closed_without_connack(anon_broker, name, packet, reason):
    broker = anon_broker()
    with raw.RawClient(broker.port) as c:
        c.send(packet)
        assert c.read(3) is None, f"{name}: expected a close without CONNACK"
    log = broker.wait_log("invalid CONNECT")
    assert reason in log


@pytest.mark.parametrize("target", both("accepts a CONNECT whose client id is not UTF-8"), indirect=True)
def test_client_id_that_is_not_utf8_is_refused(target):
    with raw.RawClient(target.port) as c:
        c.send(raw.connect(b"dev-\xff\xfe"))
        pkt = c.read(3)
        assert pkt is None or pkt.body[1] != 0, "CONNECT with an invalid UTF-8 client id was accepted"


# -- item 8: protocol versions -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    both("an MQTT 5 CONNECT with credentials is mis-parsed and hangs (docs/amqtt-proofs/p2_denials.py section D)"),
    indirect=True,
)
def test_mqtt5_connect_with_credentials_is_answered_with_a_v5_connack(target):
    """(Until issue 16 the broker refused MQTT 5 with CONNACK 1.) Unknown credentials on an anonymous
    broker: CONNACK 0x86 Bad User Name or Password (docs/reason-codes.md; 3.1.1: 5), then the close."""
    with raw.RawClient(target.port) as c:
        c.send(
            raw.connect(
                "v5",
                level=5,
                username="user",
                password=b"secret",
                properties=b"\x11\x00\x00\x00\x3c",
                will=("v5/will", b"w", 1, False),
            )
        )
        pkt = c.read(3)
        reason = b"bad user name or password"
        props = b"\x1f" + len(reason).to_bytes(2, "big") + reason  # the Reason String (mqtt_guard/reasons.py)
        assert pkt is not None and pkt.type == raw.CONNACK
        assert pkt.body == b"\x00\x86" + bytes([len(props)]) + props  # a v5 CONNACK: 0x86 and its properties
        assert c.closed_by_peer(3)


def test_mqtt5_connect_without_credentials_is_accepted(anon_broker):
    broker = anon_broker()
    with raw.RawClient(broker.port) as c:
        c.send(raw.connect("v5", level=5, properties=b""))
        pkt = c.expect(raw.CONNACK)
        assert pkt.body[:2] == b"\x00\x00"  # then the CONNACK properties


def test_protocol_level_6_gets_connack_1(anon_broker):
    broker = anon_broker()
    with raw.RawClient(broker.port) as c:
        c.send(raw.connect("v6", level=6, properties=b""))
        assert c.connack() == (0, 1)
        assert c.closed_by_peer(3)
    broker.wait_log("unsupported protocol level 6")


@pytest.mark.parametrize("target", both("MQTT 3.1 (MQIsdp) is closed without CONNACK"), indirect=True)
def test_mqtt31_client_is_accepted_and_works(target):
    with raw.RawClient(target.port) as c:
        c.send(raw.connect("old-device", name="MQIsdp", level=3))
        assert c.connack() == (0, 0)
        c.send(raw.subscribe(1, ("legacy/#", 1)))
        assert c.expect(raw.SUBACK).body == b"\x00\x01\x01"
        c.send(raw.publish("legacy/t", b"3.1", qos=1, packet_id=7))
        got = {}
        for _ in range(2):
            pkt = c.read(3)
            got[pkt.type] = pkt
        assert got[raw.PUBLISH].payload == b"3.1"
        assert got[raw.PUBACK].packet_id == 7


def test_mqtt31_empty_client_id_is_rejected_with_code_2(anon_broker):
    broker = anon_broker()
    with raw.RawClient(broker.port) as c:
        c.send(raw.connect("", name="MQIsdp", level=3))
        assert c.connack() == (0, 2)
        assert c.closed_by_peer(3)


def test_dollar_topics_are_allowed_but_clients_cannot_publish_to_sys(anon_broker):
    """As mosquitto: `$foo/...` is an ordinary topic (not matched by `#`); `$SYS/...` from a client is
    acknowledged and dropped. Neither closes the connection (amqtt made the client a zombie)."""
    broker = anon_broker()
    watcher = connect(broker.port)
    assert watcher.subscribe(("$app/#", 0), ("$SYS/#", 0), ("#", 0)) == [0, 0, 0]
    with raw.connected(broker.port, _cid())[0] as c:
        c.send(raw.publish("$app/x", b"dollar", qos=1, packet_id=3))
        assert c.expect(raw.PUBACK).packet_id == 3
        c.send(raw.publish("$SYS/fake", b"sys", qos=1, packet_id=4))
        assert c.expect(raw.PUBACK).packet_id == 4
        c.send(raw.PINGREQ_BYTES)
        assert c.expect(raw.PINGRESP)
    got = watcher.received(1.0)
    # the broker's own $SYS/broker/... topics (published by default) reach the watcher; the forged one not
    assert [(m.topic, m.payload) for m in got if not m.topic.startswith("$SYS/broker/")] == [("$app/x", b"dollar")]
    watcher.close()


def test_a_device_retrying_a_refused_connect_is_logged_once_a_minute(anon_broker):
    """A refusal the packet itself earns (here: an empty client id without clean session, CONNACK 2) is
    logged once per source host and reason a minute, not once per attempt (issue 22 item 9)."""
    broker = anon_broker()
    for _ in range(4):
        with raw.RawClient(broker.port) as c:
            c.send(raw.connect("", clean=False))
            assert c.connack() == (0, 2)
    broker.wait_log("refused CONNECT from")
    assert broker.log().count("empty client identifier without clean session") == 1
