"""Issue 16 item 5: a topic name or filter deeper than `limits.max_topic_levels` (default 201, mosquitto's
limit) closes the connection: PUBLISH (any QoS, retained too), SUBSCRIBE, UNSUBSCRIBE; a CONNECT whose
will topic is that deep is closed without CONNACK. Raw MQTT 3.1.1 packets, against mqtt-guard and the
real mosquitto 2.0.11: mosquitto refuses more than 200 `/` (TOPIC_HIERARCHY_LIMIT), so 201 levels pass
and 202 do not, empty levels included."""

from __future__ import annotations

import uuid

import pytest

from tests.engine.conftest import vs_mosquitto
from tests.helpers import rawmqtt as raw


def _deep(levels: int) -> str:
    return "/".join(["a"] * levels)


def _packets(levels: int) -> list[tuple[str, bytes, int | None]]:
    """(name, packet, the packet type it is answered with when accepted; None: none)."""
    return [
        ("PUBLISH QoS 0", raw.publish(_deep(levels), b"x"), None),
        ("PUBLISH QoS 1", raw.publish(_deep(levels), b"x", qos=1, packet_id=3), raw.PUBACK),
        ("PUBLISH retained", raw.publish(_deep(levels), b"x", retain=True), None),
        ("PUBLISH empty levels", raw.publish("/" * (levels - 1), b"x", qos=1, packet_id=3), raw.PUBACK),
        ("SUBSCRIBE", raw.subscribe(4, (_deep(levels), 0)), raw.SUBACK),
        ("SUBSCRIBE wildcards", raw.subscribe(4, ("/".join(["+"] * (levels - 1) + ["#"]), 0)), raw.SUBACK),
        ("UNSUBSCRIBE", raw.unsubscribe(4, _deep(levels)), raw.UNSUBACK),
    ]


NAMES = [name for name, _, _ in _packets(2)]


def _alive(client: raw.RawClient) -> bool:
    client.send(raw.PINGREQ_BYTES)
    try:
        pkt = client.read(3)
    except TimeoutError:
        return False
    return pkt is not None and pkt.type == raw.PINGRESP


@pytest.mark.parametrize("target", vs_mosquitto(), indirect=True)
@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
def test_201_levels_pass_202_close_the_connection(target, index):
    name, packet, answer = _packets(201)[index]
    with raw.connected(target.port, f"lv-{uuid.uuid4().hex[:8]}")[0] as c:
        c.send(packet)
        if answer is not None:
            assert c.expect(answer).type == answer
        assert _alive(c), f"{name} of 201 levels closed the connection"
    name, packet, _ = _packets(202)[index]
    cid = f"lv-{uuid.uuid4().hex[:8]}"
    with raw.connected(target.port, cid)[0] as c:
        c.send(packet)
        assert c.closed_by_peer(3), f"{name} of 202 levels: connection left open"
    if hasattr(target, "wait_log"):
        log = target.wait_log(f"closed connection of client '{cid}'")
        assert "202 levels, more than limits.max_topic_levels 201" in log


@pytest.mark.parametrize("target", vs_mosquitto(), indirect=True)
def test_a_will_topic_of_202_levels_is_closed_without_connack(target):
    with raw.RawClient(target.port) as c:
        c.send(raw.connect("deep-will", will=(_deep(201), b"w", 0, False)))
        assert c.connack() == (0, 0)
    with raw.RawClient(target.port) as c:
        c.send(raw.connect("deep-will", will=(_deep(202), b"w", 0, False)))
        assert c.read(3) is None, "expected a close without CONNACK"


@pytest.mark.parametrize("target", vs_mosquitto(), indirect=True)
def test_mqtt31_clients_have_the_same_limit(target):
    for levels, closed in ((201, False), (202, True)):
        with raw.RawClient(target.port) as c:
            c.send(raw.connect(f"lv31-{uuid.uuid4().hex[:8]}", name="MQIsdp", level=3))
            assert c.connack() == (0, 0)
            c.send(raw.publish(_deep(levels), b"x", qos=1, packet_id=3))
            if closed:
                assert c.closed_by_peer(3)
            else:
                assert c.expect(raw.PUBACK).packet_id == 3


def test_the_limit_is_configurable_and_0_turns_it_off(anon_broker):
    broker = anon_broker("limits:\n  max_topic_levels: 3\n")
    with raw.connected(broker.port, "three")[0] as c:
        c.send(raw.subscribe(1, ("a/+/#", 1)))
        c.expect(raw.SUBACK)
        c.send(raw.publish("a/b/c", b"ok", qos=1, packet_id=1))
        got = {p.type for p in (c.expect_any(), c.expect_any())}
        assert got == {raw.PUBLISH, raw.PUBACK}
        c.send(raw.publish("a/b/c/d", b"deep", qos=1, packet_id=2))
        assert c.closed_by_peer(3)
    line = next(ln for ln in broker.log().splitlines() if "closed connection of client 'three'" in ln)
    assert "protocol violation: PUBLISH topic has 4 levels, more than limits.max_topic_levels 3" in line
    with raw.connected(broker.port, "three-sub")[0] as c:
        c.send(raw.subscribe(1, ("a/b/c/#", 0)))
        assert c.closed_by_peer(3)
    broker.wait_log("SUBSCRIBE topic filter has 4 levels")

    unlimited = anon_broker("limits:\n  max_topic_levels: 0\n")
    with raw.connected(unlimited.port, "deep")[0] as c:
        c.send(raw.subscribe(1, (_deep(1000), 1)))
        c.expect(raw.SUBACK)
        c.send(raw.publish(_deep(1000), b"far", qos=1, packet_id=1))
        got = {p.type: p for p in (c.expect_any(), c.expect_any())}
        assert got[raw.PUBLISH].payload == b"far" and raw.PUBACK in got
