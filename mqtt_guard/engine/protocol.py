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

from ..reasons import TOO_LARGE

# packet types
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
AUTH = 15  # MQTT 5 only

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
    15: "reserved type 15",  # (AUTH in MQTT 5)
}

# CONNACK return codes
CONNACK_ACCEPTED = 0
CONNACK_BAD_PROTOCOL = 1
CONNACK_ID_REJECTED = 2

PINGRESP_BYTES = b"\xd0\x00"
_H = struct.Struct("!H")
_PUB1 = struct.Struct("!BBH")  # PUBLISH: first byte, one-byte remaining length, topic length


class ProtocolViolation(Exception):
    """The peer broke the protocol: close the connection. `connack` is an MQTT 3.1.1 return code to send
    first, if any; `code` the MQTT 5 reason code of the CONNACK or DISCONNECT an MQTT 5 client is sent
    before the close (engine/mqtt5.py Reason; 0x81 Malformed Packet unless the rule says otherwise)."""

    def __init__(self, reason: str, connack: int | None = None, code: int = 0x81) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connack = connack
        self.code = code


class Incomplete(Exception):
    """Not enough bytes buffered yet."""


def too_large(first: int, size: int, max_packet: int) -> ProtocolViolation:
    """The violation for a packet (whole, header included) over `limits.max_packet_size`."""
    return ProtocolViolation(
        f"{TYPE_NAMES.get(first >> 4, '?')} packet of {size} bytes exceeds max_packet_size {max_packet}",
        code=TOO_LARGE,  # MQTT 5: DISCONNECT Packet too large [MQTT-3.2.2-15]
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


def check_topic_levels(topic: str, what: str, max_levels: int, code: int = 0x81) -> None:
    """A topic name or filter of more than `max_levels` levels (`limits.max_topic_levels`; 0: no limit)
    closes the connection, as mosquitto's TOPIC_HIERARCHY_LIMIT does (it refuses more than 200 `/`, so
    201 levels pass: the default). `code`: the MQTT 5 reason (mosquitto: 0x82 for a PUBLISH topic, 0x81
    Malformed Packet for a filter)."""
    if max_levels and topic.count("/") >= max_levels:
        raise ProtocolViolation(
            f"{what} has {topic.count('/') + 1} levels, more than limits.max_topic_levels {max_levels}", code=code
        )


def check_topic_filter(topic_filter: str) -> None:
    if not topic_filter:
        raise ProtocolViolation("SUBSCRIBE with an empty topic filter [MQTT-4.7.3-1]")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            raise ProtocolViolation(f"invalid topic filter {topic_filter!r} [MQTT-4.7.1-2/3]")


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
    tl = len(topic)
    rl = tl + (4 if qos else 2) + len(payload)
    if rl < 128:  # packed in one go: ~30 % faster than building the header piece by piece
        if qos:
            return _PUB1.pack(first, rl, tl) + topic + _H.pack(packet_id) + payload
        return _PUB1.pack(first, rl, tl) + topic + payload
    if qos:
        head = _H.pack(tl) + topic + _H.pack(packet_id)
    else:
        head = _H.pack(tl) + topic
    return bytes((first,)) + encode_remaining_length(rl) + head + payload


def encode_ack(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0x2), PUBCOMP or UNSUBACK."""
    return bytes(((kind << 4) | (0x02 if kind == PUBREL else 0), 2)) + _H.pack(packet_id)


def encode_suback(packet_id: int, codes: list[int]) -> bytes:
    body = _H.pack(packet_id) + bytes(codes)
    return b"\x90" + encode_remaining_length(len(body)) + body


def encode_connack(session_present: bool, code: int) -> bytes:
    return bytes((0x20, 2, 1 if session_present and code == 0 else 0, code))
