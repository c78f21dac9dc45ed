"""A raw-socket MQTT 3.1.1 client for byte-exact tests: build any packet (valid or not), read packets.

Blocking sockets with timeouts; every socket is closed by its owner (use `with RawClient(...)`).
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(x: str | bytes) -> bytes:
    """An MQTT length-prefixed string; bytes are sent as given (for invalid UTF-8)."""
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("!H", len(b)) + b


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + remaining_length(len(body)) + body


def connect(
    client_id: str | bytes = "",
    *,
    username: str | bytes | None = None,
    password: bytes | str | None = None,
    clean: bool = True,
    keepalive: int = 60,
    level: int = 4,
    name: str = "MQTT",
    will: tuple[str | bytes, bytes, int, bool] | None = None,
    properties: bytes | None = None,
    flags_extra: int = 0,
) -> bytes:
    """`properties` (MQTT 5 only) is inserted after keep-alive and after the will flag position."""
    flags = (0x02 if clean else 0) | flags_extra
    payload = s(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += (b"\x00" if properties is not None else b"") + s(topic) + s(message)
    if username is not None:
        flags |= 0x80
        payload += s(username)
    if password is not None:
        flags |= 0x40
        payload += s(password)
    vh = s(name) + bytes([level, flags]) + struct.pack("!H", keepalive)
    if properties is not None:
        vh += remaining_length(len(properties)) + properties
    return packet(0x10, vh + payload)


def subscribe(packet_id: int, *filters: tuple[str | bytes, int]) -> bytes:
    return packet(0x82, struct.pack("!H", packet_id) + b"".join(s(f) + bytes([q]) for f, q in filters))


def unsubscribe(packet_id: int, *filters: str) -> bytes:
    return packet(0xA2, struct.pack("!H", packet_id) + b"".join(s(f) for f in filters))


def publish(
    topic: str | bytes, payload: bytes = b"x", qos: int = 0, packet_id: int = 1, retain: bool = False, dup: bool = False
) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return packet(first, s(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload)


def ack(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0x2) or PUBCOMP."""
    return packet((kind << 4) | (0x02 if kind == PUBREL else 0), struct.pack("!H", packet_id))


PINGREQ_BYTES = b"\xc0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 3

    @property
    def dup(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def retain(self) -> bool:
        return bool(self.flags & 0x01)

    @property
    def topic(self) -> str:
        (n,) = struct.unpack("!H", self.body[:2])
        return self.body[2 : 2 + n].decode()

    @property
    def packet_id(self) -> int:
        if self.type == PUBLISH:
            (n,) = struct.unpack("!H", self.body[:2])
            return struct.unpack("!H", self.body[2 + n : 4 + n])[0]
        return struct.unpack("!H", self.body[:2])[0]

    @property
    def payload(self) -> bytes:
        (n,) = struct.unpack("!H", self.body[:2])
        return self.body[2 + n + (2 if self.qos else 0) :]

    def raw(self) -> bytes:
        return packet((self.type << 4) | self.flags, self.body)


class RawClient:
    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        timeout: float = 5.0,
        rcvbuf: int | None = None,
        source: str | None = None,
    ) -> None:
        """`source`: the local address to connect from (any 127.0.0.x works on Linux's loopback)."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self._buf = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _need(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self._buf += chunk
        return True

    def read(self, timeout: float | None = 5.0) -> Packet | None:
        """The next packet; None on EOF/reset. socket.timeout if nothing arrives in time."""
        self.sock.settimeout(timeout)
        try:
            if not self._need(2):
                return None
            mult, length, i = 1, 0, 1
            while True:
                if not self._need(i + 1):
                    return None
                b = self._buf[i]
                length += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            if not self._need(i + length):
                return None
        except ConnectionResetError:
            return None
        first = self._buf[0]
        pkt = Packet(first >> 4, first & 0x0F, self._buf[i : i + length])
        self._buf = self._buf[i + length :]
        return pkt

    def expect(self, kind: int, timeout: float = 5.0) -> Packet:
        pkt = self.read(timeout)
        assert pkt is not None, f"connection closed while waiting for packet type {kind}"
        assert pkt.type == kind, f"expected packet type {kind}, got {pkt}"
        return pkt

    def expect_any(self, timeout: float = 5.0) -> Packet:
        pkt = self.read(timeout)
        assert pkt is not None, "connection closed while waiting for a packet"
        return pkt

    def connack(self, timeout: float = 5.0) -> tuple[int, int]:
        """(session present, return code)."""
        pkt = self.expect(CONNACK, timeout)
        return pkt.body[0], pkt.body[1]

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the peer closes the connection within `timeout` (packets before the close are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                if self.read(left) is None:
                    return True
            except TimeoutError:
                return False
            except OSError:
                return True


def connected(
    port: int,
    client_id: str,
    *,
    clean: bool = True,
    keepalive: int = 60,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes, int, bool] | None = None,
    rcvbuf: int | None = None,
) -> tuple[RawClient, int]:
    """A RawClient after CONNECT/CONNACK accepted; returns (client, session present)."""
    c = RawClient(port, rcvbuf=rcvbuf)
    c.send(connect(client_id, username=username, password=password, clean=clean, keepalive=keepalive, will=will))
    present, rc = c.connack()
    assert rc == 0, f"CONNACK {rc}"
    return c, present


def drain(client: RawClient, wait: float = 1.0) -> list[Packet]:
    """Every packet that arrives until the connection is quiet for `wait` seconds (or closes)."""
    out = []
    while True:
        try:
            pkt = client.read(wait)
        except TimeoutError:
            return out
        if pkt is None:
            return out
        out.append(pkt)
