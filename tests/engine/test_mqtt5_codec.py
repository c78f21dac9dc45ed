"""The MQTT 5 codec (engine/mqtt5.py, engine/packets.py) against paho-mqtt's own MQTT 5 encoder: what a
real client library sends is read back field by field, and what we encode paho reads back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_guard.engine import mqtt5
from mqtt_guard.engine.packets import parse_connect, parse_subscribe
from mqtt_guard.engine.protocol import PUBACK, Cursor, ProtocolViolation
from mqtt_guard.reasons import Reason


def _paho_props(kind: int, **values: object) -> bytes:
    p = Properties(kind)
    for name, value in values.items():
        setattr(p, name, value)
    return bytes(p.pack())


def test_publish_properties_round_trip_through_paho() -> None:
    raw = _paho_props(
        PacketTypes.PUBLISH,
        PayloadFormatIndicator=1,
        MessageExpiryInterval=30,
        ContentType="text/plain",
        ResponseTopic="reply/to",
        CorrelationData=b"\x00\x01",
        UserProperty=[("a", "1"), ("b", "2")],
        TopicAlias=3,
    )
    props = mqtt5.read_properties(Cursor(raw, "PUBLISH"), "PUBLISH")
    assert props[mqtt5.MESSAGE_EXPIRY] == 30
    assert props[mqtt5.TOPIC_ALIAS] == 3
    assert props[mqtt5.USER_PROPERTY] == [("a", "1"), ("b", "2")]
    block = mqtt5.forwarded_block(props)
    back = Properties(PacketTypes.PUBLISH)
    back.unpack(mqtt5.encode_varint(len(block)) + block)
    assert back.ContentType == "text/plain"
    assert back.ResponseTopic == "reply/to"
    assert back.CorrelationData == b"\x00\x01"
    assert back.UserProperty == [("a", "1"), ("b", "2")]
    assert not hasattr(back, "TopicAlias")  # per connection: never forwarded


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\x02\x23\x00", Reason.MALFORMED_PACKET),  # truncated u16
        (b"\x03\x02\x00\x00", Reason.MALFORMED_PACKET),  # a u32 cut short
        (b"\x02\x01\x02", Reason.PROTOCOL_ERROR),  # payload format 2
        (b"\x03\x23\x00\x00", Reason.PROTOCOL_ERROR),  # topic alias 0
        (b"\x04\x01\x00\x01\x01", Reason.PROTOCOL_ERROR),  # repeated property
        (b"\x02\x11\x00", Reason.PROTOCOL_ERROR),  # session expiry is not a PUBLISH property
        (b"\x02\x7f\x00", Reason.MALFORMED_PACKET),  # unknown identifier
    ],
)
def test_bad_property_blocks_are_refused_with_the_right_reason(raw: bytes, code: int) -> None:
    with pytest.raises(ProtocolViolation) as err:
        mqtt5.read_properties(Cursor(raw, "PUBLISH"), "PUBLISH")
    assert err.value.code == code


@given(st.integers(min_value=0, max_value=mqtt5.MAX_VARINT))
def test_varint_round_trip(n: int) -> None:
    assert mqtt5.read_varint(Cursor(mqtt5.encode_varint(n), "x")) == n


def _connect5(flags: int, props: bytes, payload: bytes) -> bytes:
    return b"\x00\x04MQTT\x05" + bytes((flags,)) + b"\x00\x3c" + props + payload


def test_connect5_with_properties_will_and_password_alone() -> None:
    props = _paho_props(PacketTypes.CONNECT, SessionExpiryInterval=120, ReceiveMaximum=10)
    will_props = _paho_props(PacketTypes.WILLMESSAGE, WillDelayInterval=5)
    payload = b"\x00\x03cid" + will_props + b"\x00\x03w/t\x00\x02hi" + b"\x00\x02pw"
    info = parse_connect(_connect5(0x40 | 0x04 | 0x02, props, payload))
    assert (info.level, info.client_id, info.username, info.password) == (5, "cid", None, "pw")
    assert info.props == {mqtt5.SESSION_EXPIRY: 120, mqtt5.RECEIVE_MAXIMUM: 10}
    assert info.will == ("w/t", b"hi", 0, False)
    assert info.will_props == {mqtt5.WILL_DELAY: 5}


def test_connect5_empty_client_id_without_clean_start_is_accepted() -> None:
    assert parse_connect(_connect5(0x00, b"\x00", b"\x00\x00")).client_id == ""


def test_subscribe5_options_and_identifier() -> None:
    body = b"\x00\x07" + b"\x02\x0b\x05" + b"\x00\x03a/b" + bytes((0x01 | 0x04 | 0x08 | 0x20,))
    sub = parse_subscribe(body, 5)
    assert (sub.packet_id, sub.sub_id, sub.filters) == (7, 5, [("a/b", 0x2D)])
    with pytest.raises(ProtocolViolation):
        parse_subscribe(b"\x00\x07\x00\x00\x03a/b\x30", 5)  # retain handling 3
    with pytest.raises(ProtocolViolation):
        parse_subscribe(b"\x00\x07\x00\x03a/b\x04", 4)  # an MQTT 5 option on 3.1.1


def test_server_packets_decode_in_paho() -> None:
    assert mqtt5.encode_disconnect(Reason.ADMINISTRATIVE_ACTION) == b"\xe0\x01\x98"
    assert mqtt5.encode_ack(4, 9) == b"\x40\x02\x00\x09"
    assert mqtt5.encode_ack(4, 9, Reason.QUOTA_EXCEEDED) == b"\x40\x03\x00\x09\x97"
    frame = mqtt5.encode_publish(b"t", b"x", 1, False, False, 5, mqtt5.delivery_properties(b"", 10, (3,)))
    assert frame == b"\x32\x0e\x00\x01t\x00\x05\x07\x02\x00\x00\x00\x0a\x0b\x03x"
    back = Properties(PacketTypes.PUBLISH)
    back.unpack(frame[7:15])
    assert back.MessageExpiryInterval == 10
    assert back.SubscriptionIdentifier == [3]


def test_reason_strings_are_left_out_before_a_packet_exceeds_the_maximum():
    with_text = mqtt5.encode_ack(PUBACK, 7, Reason.NOT_AUTHORIZED, "not authorized", 100)
    assert with_text == b"\x40\x15\x00\x07\x87\x11\x1f\x00\x0enot authorized"
    assert mqtt5.encode_ack(PUBACK, 7, Reason.NOT_AUTHORIZED, "not authorized", len(with_text)) == with_text
    assert mqtt5.encode_ack(PUBACK, 7, Reason.NOT_AUTHORIZED, "not authorized", len(with_text) - 1) == (
        b"\x40\x03\x00\x07\x87"
    )
    assert mqtt5.encode_suback(1, [0x87], "not authorized", 10) == b"\x90\x04\x00\x01\x00\x87"
    assert mqtt5.encode_refusal(Reason.BANNED, "banned", 5) == mqtt5.encode_connack(False, Reason.BANNED)
    # DISCONNECT: the Reason String goes first, then the Server Reference
    full = mqtt5.encode_disconnect(Reason.USE_ANOTHER_SERVER, "moving", "other:1883")
    no_text = mqtt5.encode_disconnect(Reason.USE_ANOTHER_SERVER, None, "other:1883")
    assert mqtt5.encode_disconnect(Reason.USE_ANOTHER_SERVER, "moving", "other:1883", len(full)) == full
    assert mqtt5.encode_disconnect(Reason.USE_ANOTHER_SERVER, "moving", "other:1883", len(full) - 1) == no_text
    assert mqtt5.encode_disconnect(Reason.USE_ANOTHER_SERVER, "moving", "other:1883", 3) == b"\xe0\x01\x9c"
