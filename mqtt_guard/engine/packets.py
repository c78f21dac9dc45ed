"""CONNECT, SUBSCRIBE and UNSUBSCRIBE, parsed and validated for every protocol level.

These three packets are one shape at MQTT 3.1, 3.1.1 and 5 with level-dependent parts (MQTT 5 adds
properties, subscription options and a will's properties); the primitives are engine/protocol.py's,
the properties engine/mqtt5.py's. Every violation raises `ProtocolViolation` with the 3.1.1 CONNACK
return code (`connack`) and the MQTT 5 reason code (`code`) a client of that level is answered with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..reasons import Reason
from . import mqtt5
from .mqtt5 import Props
from .protocol import (
    CONNACK_BAD_PROTOCOL,
    CONNACK_ID_REJECTED,
    Cursor,
    ProtocolViolation,
    check_topic_filter,
    check_topic_name,
)

MQTT5 = 5


@dataclass(slots=True)
class ConnectInfo:
    protocol: str  # "MQTT" (3.1.1 or 5) or "MQIsdp" (3.1)
    level: int  # 3, 4 or 5
    clean: bool  # clean session (3.1.1) / clean start (5)
    keepalive: int
    client_id: str
    will: tuple[str, bytes, int, bool] | None  # topic, message, qos, retain
    username: str | None
    password: str | None
    props: Props = field(default_factory=dict)  # MQTT 5 CONNECT properties
    will_props: Props = field(default_factory=dict)  # MQTT 5 will properties


def parse_connect(body: bytes | bytearray) -> ConnectInfo:
    """Validate a CONNECT body (the fixed header was 0x10). MQTT 5, 3.1.1 and 3.1 are accepted; another
    level named "MQTT" or "MQIsdp" gets CONNACK 1; any other protocol name is closed without CONNACK."""
    c = Cursor(body, "CONNECT")
    name = c.binary()
    level = c.u8()
    if name == b"MQTT":
        if level not in (4, MQTT5):
            raise ProtocolViolation(
                f"unsupported protocol level {level} (MQTT 3.1.1 is level 4, MQTT 5 level 5)",
                connack=CONNACK_BAD_PROTOCOL,
                code=Reason.UNSUPPORTED_PROTOCOL_VERSION,
            )
    elif name == b"MQIsdp":
        if level != 3:
            raise ProtocolViolation(
                f"unsupported protocol level {level} for MQIsdp (MQTT 3.1 is level 3)", connack=CONNACK_BAD_PROTOCOL
            )
    else:
        raise ProtocolViolation(f"unknown protocol name {name[:20]!r} [MQTT-3.1.2-1]")
    v5 = level == MQTT5
    flags = c.u8()
    keepalive = c.u16()
    if flags & 0x01:
        raise ProtocolViolation("CONNECT reserved flag is set [MQTT-3.1.2-3]")
    will_flag, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 3, bool(flags & 0x20)
    if will_qos == 3:
        raise ProtocolViolation("CONNECT will QoS 3 [MQTT-3.1.2-14]")
    if not will_flag and (will_qos or will_retain):
        raise ProtocolViolation("CONNECT will QoS/retain set without the will flag [MQTT-3.1.2-11/13/15]")
    has_user, has_password = bool(flags & 0x80), bool(flags & 0x40)
    if has_password and not has_user and not v5:  # MQTT 5 allows a password alone (3.1.2.9)
        raise ProtocolViolation("CONNECT password flag without username flag [MQTT-3.1.2-22]")
    props = mqtt5.read_properties(c, "CONNECT") if v5 else {}
    client_id = c.string("client identifier")
    will = None
    will_props: Props = {}
    if will_flag:
        if v5:
            will_props = mqtt5.read_properties(c, "WILL")
        will_topic = c.string("will topic")
        check_topic_name(will_topic, "will topic")
        will = (will_topic, c.binary(), will_qos, will_retain)
        if v5:
            mqtt5.check_payload_format(will_props, will[1], "CONNECT will")
    username = c.string("username") if has_user else None
    password = None
    if has_password:
        password = c.binary().decode("utf-8", "surrogateescape")
    if c.left():
        raise ProtocolViolation(f"malformed CONNECT: {c.left()} bytes after the payload")
    clean = bool(flags & 0x02)
    if not client_id and not v5 and (not clean or name == b"MQIsdp"):
        # (MQTT 5: the server assigns an identifier whatever Clean Start says, 3.1.3.1)
        raise ProtocolViolation(
            "empty client identifier without clean session [MQTT-3.1.3-8]",
            connack=CONNACK_ID_REJECTED,
            code=Reason.CLIENT_IDENTIFIER_NOT_VALID,
        )
    return ConnectInfo(name.decode(), level, clean, keepalive, client_id, will, username, password, props, will_props)


# Subscription options byte (3.8.3.1): bits 0-1 QoS, 2 No Local, 3 Retain As Published, 4-5 Retain Handling
NO_LOCAL = 0x04
RETAIN_AS_PUBLISHED = 0x08
RETAIN_HANDLING = 0x30


@dataclass(slots=True)
class Subscribe:
    packet_id: int
    filters: list[tuple[str, int]]  # (filter, options byte: QoS in bits 0-1; MQTT 5 options above)
    sub_id: int = 0  # MQTT 5 Subscription Identifier (0: none)


def parse_subscribe(body: bytes | bytearray, level: int = 4) -> Subscribe:
    """Validate a SUBSCRIBE body (the fixed header was 0x82)."""
    c = Cursor(body, "SUBSCRIBE")
    packet_id = c.u16()
    sub_id = 0
    if level == MQTT5:
        props = mqtt5.read_properties(c, "SUBSCRIBE")
        ids = props.get(mqtt5.SUBSCRIPTION_ID)
        if ids:
            if len(ids) > 1:
                raise mqtt5.protocol_error("SUBSCRIBE with two Subscription Identifiers [MQTT-3.8.2.1.2]")
            sub_id = ids[0]
    reserved = 0xC0 if level == MQTT5 else 0xFC
    filters = []
    while c.left():
        topic_filter = c.string("topic filter")
        options = c.u8()
        if level != MQTT5 and options > 2:
            raise ProtocolViolation(f"SUBSCRIBE requested QoS byte {options:#x} [MQTT-3.8.3-4]")
        if options & reserved or options & 3 == 3 or (options & RETAIN_HANDLING) == RETAIN_HANDLING:
            raise ProtocolViolation(f"SUBSCRIBE options byte {options:#x} [MQTT-3.8.3-4/5]")
        check_topic_filter(topic_filter)
        filters.append((topic_filter, options))
    if not filters:
        raise ProtocolViolation("SUBSCRIBE without a topic filter [MQTT-3.8.3-3]", code=Reason.PROTOCOL_ERROR)
    return Subscribe(packet_id, filters, sub_id)


def parse_unsubscribe(body: bytes | bytearray, level: int = 4) -> tuple[int, list[str]]:
    """Validate an UNSUBSCRIBE body (the fixed header was 0xA2): (packet id, [filter]). The filters are
    not checked beyond UTF-8: unsubscribing from a filter nobody could subscribe to is a no-op."""
    c = Cursor(body, "UNSUBSCRIBE")
    packet_id = c.u16()
    if level == MQTT5:
        mqtt5.read_properties(c, "UNSUBSCRIBE")
    filters = []
    while c.left():
        filters.append(c.string("topic filter"))
    if not filters:
        raise ProtocolViolation("UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]", code=Reason.PROTOCOL_ERROR)
    return packet_id, filters
