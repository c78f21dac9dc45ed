"""Strict MQTT 3.1.1 wire parsing and encoding for the guarded engine.

amqtt decodes packets field by field with awaited reads and is lenient where the specification is not:
invalid UTF-8 becomes the repr of the bytes, a wildcard in a PUBLISH topic raises half-way through the
packet and desynchronises the stream, and an MQTT 5 CONNECT with credentials is mis-parsed into a hang.
Here every packet is taken whole (its remaining length is known and checked against
`limits.max_packet_size` before the body is read) and validated before anything acts on it. A
violation raises `ProtocolViolation`; the caller closes the connection and logs the reason.

What counts as a violation follows mosquitto 2.0 (checked against mosquitto 2.0.11 with the same raw
packets), see docs/engine.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# packet types
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

TYPE_NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    0: "reserved type 0",
    15: "reserved type 15",
}

# CONNACK return codes
CONNACK_ACCEPTED = 0
CONNACK_BAD_PROTOCOL = 1
CONNACK_ID_REJECTED = 2

PINGRESP_BYTES = b"\xd0\x00"
_H = struct.Struct("!H")


class ProtocolViolation(Exception):
    """The peer broke MQTT 3.1.1: close the connection. `connack` is a return code to send first, if any."""

    def __init__(self, reason: str, connack: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connack = connack


class Incomplete(Exception):
    """Not enough bytes buffered yet."""


def too_large(first: int, size: int, max_packet: int) -> ProtocolViolation:
    """The violation for a packet (whole, header included) over `limits.max_packet_size`."""
    return ProtocolViolation(
        f"{TYPE_NAMES.get(first >> 4, '?')} packet of {size} bytes exceeds max_packet_size {max_packet}"
    )


def parse_fixed_header(buf: bytes | bytearray, pos: int) -> tuple[int, int, int]:
    """(first byte, remaining length, header size) of the packet at `pos`; Incomplete if cut short."""
    end = len(buf)
    if pos >= end:
        raise Incomplete
    value = 0
    mult = 1
    i = pos + 1
    for _ in range(4):
        if i >= end:
            raise Incomplete
        b = buf[i]
        i += 1
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return buf[pos], value, i - pos
        mult *= 128
    raise ProtocolViolation("malformed remaining length (more than 4 bytes)")


def decode_utf8(raw: bytes | bytearray | memoryview, what: str) -> str:
    """An MQTT UTF-8 string: well-formed UTF-8 [MQTT-1.5.3-1] without U+0000 [MQTT-1.5.3-2]."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(f"{what} is not valid UTF-8") from None
    if "\x00" in text:
        raise ProtocolViolation(f"{what} contains U+0000")
    return text


class Cursor:
    """Reads MQTT fields from one packet body; running past the end is a malformed packet."""

    __slots__ = ("body", "pos", "what")

    def __init__(self, body: bytes | bytearray | memoryview, what: str) -> None:
        self.body = body
        self.pos = 0
        self.what = what

    def left(self) -> int:
        return len(self.body) - self.pos

    def u8(self) -> int:
        if self.pos >= len(self.body):
            raise ProtocolViolation(f"malformed {self.what}: truncated")
        b = self.body[self.pos]
        self.pos += 1
        return b

    def u16(self) -> int:
        if self.pos + 2 > len(self.body):
            raise ProtocolViolation(f"malformed {self.what}: truncated")
        v: int = _H.unpack_from(self.body, self.pos)[0]
        self.pos += 2
        return v

    def binary(self) -> bytes:
        n = self.u16()
        if self.pos + n > len(self.body):
            raise ProtocolViolation(f"malformed {self.what}: a length field runs past the end of the packet")
        raw = bytes(self.body[self.pos : self.pos + n])
        self.pos += n
        return raw

    def string(self, field: str) -> str:
        return decode_utf8(self.binary(), f"{self.what} {field}")

    def rest(self) -> bytes:
        raw = bytes(self.body[self.pos :])
        self.pos = len(self.body)
        return raw


def check_topic_name(topic: str, what: str) -> None:
    if not topic:
        raise ProtocolViolation(f"{what} is empty [MQTT-4.7.3-1]")
    if "+" in topic or "#" in topic:
        raise ProtocolViolation(f"{what} {topic!r} contains a wildcard [MQTT-3.3.2-2]")


def check_topic_filter(topic_filter: str) -> None:
    if not topic_filter:
        raise ProtocolViolation("SUBSCRIBE with an empty topic filter [MQTT-4.7.3-1]")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            raise ProtocolViolation(f"invalid topic filter {topic_filter!r} [MQTT-4.7.1-2/3]")


@dataclass(slots=True)
class ConnectInfo:
    protocol: str  # "MQTT" (3.1.1) or "MQIsdp" (3.1)
    level: int
    clean: bool
    keepalive: int
    client_id: str
    will: tuple[str, bytes, int, bool] | None  # topic, message, qos, retain
    username: str | None
    password: str | None


def parse_connect(body: bytes | bytearray) -> ConnectInfo:
    """Validate a CONNECT body (the fixed header was 0x10). MQTT 3.1.1 and 3.1 are accepted; anything
    else named "MQTT" or "MQIsdp" gets CONNACK 1; any other protocol name is closed without CONNACK."""
    c = Cursor(body, "CONNECT")
    name = c.binary()
    level = c.u8()
    if name == b"MQTT":
        if level != 4:  # MQTT 5 (level 5) included: answered in 3.1.1 format, then closed
            raise ProtocolViolation(
                f"unsupported protocol level {level} (MQTT 3.1.1 is level 4)", connack=CONNACK_BAD_PROTOCOL
            )
    elif name == b"MQIsdp":
        if level != 3:
            raise ProtocolViolation(
                f"unsupported protocol level {level} for MQIsdp (MQTT 3.1 is level 3)", connack=CONNACK_BAD_PROTOCOL
            )
    else:
        raise ProtocolViolation(f"unknown protocol name {name[:20]!r} [MQTT-3.1.2-1]")
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
    if has_password and not has_user:
        raise ProtocolViolation("CONNECT password flag without username flag [MQTT-3.1.2-22]")
    client_id = c.string("client identifier")
    will = None
    if will_flag:
        will_topic = c.string("will topic")
        check_topic_name(will_topic, "will topic")
        will = (will_topic, c.binary(), will_qos, will_retain)
    username = c.string("username") if has_user else None
    password = None
    if has_password:
        password = c.binary().decode("utf-8", "surrogateescape")
    if c.left():
        raise ProtocolViolation(f"malformed CONNECT: {c.left()} bytes after the payload")
    clean = bool(flags & 0x02)
    if not client_id and (not clean or name == b"MQIsdp"):
        raise ProtocolViolation(
            "empty client identifier without clean session [MQTT-3.1.3-8]", connack=CONNACK_ID_REJECTED
        )
    return ConnectInfo(name.decode(), level, clean, keepalive, client_id, will, username, password)


def parse_subscribe(body: bytes | bytearray) -> tuple[int, list[tuple[str, int]]]:
    """Validate a SUBSCRIBE body (the fixed header was 0x82): (packet id, [(filter, requested QoS)])."""
    c = Cursor(body, "SUBSCRIBE")
    packet_id = c.u16()
    filters = []
    while c.left():
        topic_filter = c.string("topic filter")
        qos = c.u8()
        if qos > 2:
            raise ProtocolViolation(f"SUBSCRIBE requested QoS byte {qos:#x} [MQTT-3.8.3-4]")
        check_topic_filter(topic_filter)
        filters.append((topic_filter, qos))
    if not filters:
        raise ProtocolViolation("SUBSCRIBE without a topic filter [MQTT-3.8.3-3]")
    return packet_id, filters


def parse_unsubscribe(body: bytes | bytearray) -> tuple[int, list[str]]:
    """Validate an UNSUBSCRIBE body (the fixed header was 0xA2): (packet id, [filter]). The filters are
    not checked beyond UTF-8: unsubscribing from a filter nobody could subscribe to is a no-op."""
    c = Cursor(body, "UNSUBSCRIBE")
    packet_id = c.u16()
    filters = []
    while c.left():
        filters.append(c.string("topic filter"))
    if not filters:
        raise ProtocolViolation("UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]")
    return packet_id, filters


def encode_remaining_length(n: int) -> bytes:
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_publish(
    topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool = False, packet_id: int = 0
) -> bytes:
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    if qos:
        head = _H.pack(len(topic)) + topic + _H.pack(packet_id)
    else:
        head = _H.pack(len(topic)) + topic
    return bytes((first,)) + encode_remaining_length(len(head) + len(payload)) + head + payload


def encode_ack(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0x2), PUBCOMP or UNSUBACK."""
    return bytes(((kind << 4) | (0x02 if kind == PUBREL else 0), 2)) + _H.pack(packet_id)


def encode_suback(packet_id: int, codes: list[int]) -> bytes:
    body = _H.pack(packet_id) + bytes(codes)
    return b"\x90" + encode_remaining_length(len(body)) + body


def encode_connack(session_present: bool, code: int) -> bytes:
    return bytes((0x20, 2, 1 if session_present and code == 0 else 0, code))
