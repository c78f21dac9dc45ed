"""Tiny MQTT 3.1.1 / 5 encoder/decoder for the benchmark load generator.

Only what the benchmark needs: CONNECT, CONNACK, SUBSCRIBE, SUBACK, PUBLISH,
PUBACK, DISCONNECT (plus PINGREQ/PINGRESP, which are two bytes each). Everything
works on ``bytes``; the caller owns the sockets. No dependencies beyond the
standard library, so the load generator can run with any Python 3.11.

``level`` (4 = MQTT 3.1.1, 5 = MQTT 5) selects the wire format; at level 5 every
packet carries an empty property block (what a plain MQTT 5 client sends), and
the parsers skip the properties the broker sends, so the benchmark measures the
v5 framing without any v5 feature.

Two parsers:

* :class:`PacketReader` - buffered, incremental, generic: feed it whatever
  ``recv()`` returned and iterate over complete packets.
* :class:`FrameCounter` - the fast path for QoS0 subscribers that receive
  frames of one known size and known header+topic prefix. It validates every
  frame's fixed header and topic with C-level strided slice comparisons
  (``buf[j::size]``), so counting 250k msg/s does not cost a core of Python.
  If anything does not match, it falls back to :class:`PacketReader`.
"""

from __future__ import annotations

import socket
import struct
import time

# Packet types (upper nibble of the first byte)
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

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
}

CONNACK_CODES = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class ProtocolError(Exception):
    pass


# --------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------


def encode_remaining_length(n: int) -> bytes:
    if n < 0 or n > 268_435_455:
        raise ValueError(f"remaining length out of range: {n}")
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    if len(b) > 65535:
        raise ValueError("string too long")
    return struct.pack("!H", len(b)) + b


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_remaining_length(len(body)) + body


def encode_connect(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 0,
    clean_session: bool = True,
    level: int = 4,
) -> bytes:
    flags = 0
    if clean_session:
        flags |= 0x02
    payload = _str(client_id)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    elif password is not None:
        raise ValueError("MQTT 3.1.1 forbids a password without a user name")
    var_header = _str("MQTT") + bytes((level, flags)) + struct.pack("!H", keepalive)
    if level >= 5:
        var_header += b"\0"  # property length 0
    return _packet(CONNECT << 4, var_header + payload)


def encode_connack(return_code: int = 0, session_present: bool = False) -> bytes:
    return _packet(CONNACK << 4, bytes((1 if session_present else 0, return_code)))


def encode_subscribe(packet_id: int, topics: list[tuple[str, int]], level: int = 4) -> bytes:
    # v5: property length 0, then each filter's options byte (QoS only: no No Local etc.)
    body = struct.pack("!H", packet_id) + (b"\0" if level >= 5 else b"")
    for topic, qos in topics:
        body += _str(topic) + bytes((qos,))
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def encode_suback(packet_id: int, codes: list[int]) -> bytes:
    return _packet(SUBACK << 4, struct.pack("!H", packet_id) + bytes(codes))


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int = 0,
    packet_id: int | None = None,
    retain: bool = False,
    dup: bool = False,
    level: int = 4,
) -> bytes:
    first = (PUBLISH << 4) | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = _str(topic)
    if qos:
        if not packet_id:
            raise ValueError("QoS>0 PUBLISH needs a packet id 1..65535")
        body += struct.pack("!H", packet_id)
    if level >= 5:
        body += b"\0"  # property length 0
    return _packet(first, body + payload)


def encode_puback(packet_id: int) -> bytes:
    return bytes((PUBACK << 4, 2)) + struct.pack("!H", packet_id)


def encode_pingreq() -> bytes:
    return bytes((PINGREQ << 4, 0))


def encode_disconnect() -> bytes:
    return bytes((DISCONNECT << 4, 0))


class PublishTemplate:
    """Pre-encodes QoS>0 PUBLISH frames fast: only the packet id changes."""

    def __init__(self, topic: str, payload: bytes, qos: int = 1, level: int = 4):
        self.qos = qos
        sample = encode_publish(topic, payload, qos=qos, packet_id=1, level=level)
        tlen = len(topic.encode())
        props = 1 if level >= 5 else 0
        hdr_len = len(sample) - (2 + tlen + 2 + props + len(payload))
        self.head = sample[: hdr_len + 2 + tlen]
        self.tail = sample[len(sample) - len(payload) - props :]
        self.size = len(sample)

    def frame(self, packet_id: int) -> bytes:
        return self.head + struct.pack("!H", packet_id) + self.tail


# --------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------


def decode_remaining_length(buf, pos: int) -> tuple[int, int] | None:
    """Return (remaining_length, header_end) for the packet whose first byte is
    at ``pos``, or None if the length bytes are not complete yet."""
    mult = 1
    value = 0
    i = pos + 1
    n = len(buf)
    for _ in range(4):
        if i >= n:
            return None
        b = buf[i]
        value += (b & 0x7F) * mult
        i += 1
        if not b & 0x80:
            return value, i
        mult *= 128
    raise ProtocolError("malformed remaining length")


class PacketReader:
    """Buffered incremental MQTT parser.

    ``feed(data)`` then iterate ``packets()``; each item is
    ``(ptype, flags, body)`` with ``body`` a ``bytes`` object (variable header +
    payload). Incomplete trailing data stays buffered for the next feed.
    """

    __slots__ = ("buf",)

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def packets(self):
        buf = self.buf
        pos = 0
        n = len(buf)
        try:
            while pos < n:
                rl = decode_remaining_length(buf, pos)
                if rl is None:
                    break
                length, start = rl
                end = start + length
                if end > n:
                    break
                first = buf[pos]
                pkt = (first >> 4, first & 0x0F, bytes(buf[start:end]))
                pos = end  # consumed even if the caller stops iterating after this one
                yield pkt
        finally:
            if pos:
                del buf[:pos]

    def pending(self) -> int:
        return len(self.buf)


def _skip_properties(body: bytes, pos: int) -> int:
    """Position after the v5 property block (a variable byte length, then the properties) at ``pos``."""
    rl = decode_remaining_length(body, pos - 1)  # the length has the same encoding as a remaining length
    if rl is None:
        raise ProtocolError("truncated property length")
    length, start = rl
    return start + length


def parse_connack(body: bytes, level: int = 4) -> tuple[bool, int]:
    """Return (session present, return code); at level 5 the reason code (0 = success, >= 0x80 refused)."""
    if (len(body) != 2) if level < 5 else (len(body) < 3):
        raise ProtocolError(f"CONNACK body length {len(body)}")
    return bool(body[0] & 1), body[1]


def parse_suback(body: bytes, level: int = 4) -> tuple[int, list[int]]:
    (pid,) = struct.unpack_from("!H", body, 0)
    return pid, list(body[_skip_properties(body, 2) if level >= 5 else 2 :])


def parse_puback(body: bytes) -> int:
    return struct.unpack_from("!H", body, 0)[0]


def parse_publish(flags: int, body: bytes, level: int = 4) -> tuple[str, int, int | None, bytes]:
    """Return (topic, qos, packet_id or None, payload); at level 5 the properties are skipped."""
    qos = (flags >> 1) & 0x03
    (tlen,) = struct.unpack_from("!H", body, 0)
    topic = body[2 : 2 + tlen].decode("utf-8")
    pos = 2 + tlen
    pid = None
    if qos:
        (pid,) = struct.unpack_from("!H", body, pos)
        pos += 2
    if level >= 5:
        pos = _skip_properties(body, pos)
    return topic, qos, pid, body[pos:]


def parse_subscribe(body: bytes) -> tuple[int, list[tuple[str, int]]]:
    (pid,) = struct.unpack_from("!H", body, 0)
    pos = 2
    out = []
    while pos < len(body):
        (tlen,) = struct.unpack_from("!H", body, pos)
        out.append((body[pos + 2 : pos + 2 + tlen].decode(), body[pos + 2 + tlen]))
        pos += 3 + tlen
    return pid, out


def parse_connect(body: bytes) -> dict:
    (plen,) = struct.unpack_from("!H", body, 0)
    proto = body[2 : 2 + plen].decode()
    pos = 2 + plen
    level, flags = body[pos], body[pos + 1]
    (keepalive,) = struct.unpack_from("!H", body, pos + 2)
    pos += 4
    fields = []
    while pos < len(body):
        (ln,) = struct.unpack_from("!H", body, pos)
        fields.append(body[pos + 2 : pos + 2 + ln])
        pos += 2 + ln
    out = {
        "protocol": proto,
        "level": level,
        "flags": flags,
        "keepalive": keepalive,
        "client_id": fields[0].decode() if fields else "",
    }
    rest = fields[1:]
    if flags & 0x04:  # will
        rest = rest[2:]
    if flags & 0x80:
        out["username"] = rest.pop(0).decode()
    if flags & 0x40:
        out["password"] = rest.pop(0).decode()
    return out


class FrameCounter:
    """Fast counter for a stream of same-size QoS0 PUBLISH frames.

    ``prefix`` is the exact encoding of the frame up to and including the
    topic (fixed header, remaining length, topic length, topic); positions in
    ``skip`` (e.g. the publisher-index character of the topic) are not checked.
    Frames that do not match (other packet types, other topics, other sizes)
    are handled by a generic :class:`PacketReader` and counted only if they
    are PUBLISH frames whose topic starts with ``topic_prefix``.
    """

    def __init__(self, prefix: bytes, frame_size: int, topic_prefix: str, skip: tuple[int, ...] = (), level: int = 4):
        self.prefix = prefix
        self.level = level
        self.size = frame_size
        self.topic_prefix = topic_prefix
        self.checks = [(j, prefix[j]) for j in range(len(prefix)) if j not in skip]
        self.buf = b""
        self.count = 0
        self.fast_frames = 0
        self.slow_frames = 0
        self.other_packets = 0
        self.other_types: dict[str, int] = {}
        self.foreign_publishes = 0
        self._reader = PacketReader()

    def feed(self, data: bytes) -> int:
        """Consume data; return the number of matching PUBLISH frames in it."""
        if self._reader.pending():
            # already in slow mode with a partial packet buffered
            return self._slow(data)
        buf = self.buf + data if self.buf else data
        size = self.size
        nframes = len(buf) // size
        if nframes:
            end = nframes * size
            ok = True
            for j, b in self.checks:
                if buf[j:end:size].count(b) != nframes:
                    ok = False
                    break
            if ok:
                self.buf = buf[end:]
                self.count += nframes
                self.fast_frames += nframes
                return nframes
            self.buf = b""
            return self._slow(buf)
        self.buf = buf
        return 0

    def _slow(self, data: bytes) -> int:
        r = self._reader
        r.feed(data)
        got = 0
        tp = self.topic_prefix
        for ptype, flags, body in r.packets():
            if ptype == PUBLISH:
                topic, _qos, _pid, _payload = parse_publish(flags, body, self.level)
                if topic.startswith(tp):
                    got += 1
                else:
                    self.foreign_publishes += 1
            else:
                self.other_packets += 1
                name = TYPE_NAMES.get(ptype, str(ptype))
                self.other_types[name] = self.other_types.get(name, 0) + 1
        self.count += got
        self.slow_frames += got
        return got


# --------------------------------------------------------------------------
# blocking socket helpers
# --------------------------------------------------------------------------


def open_socket(
    host: str, port: int, timeout: float = 10.0, nodelay: bool = True, rcvbuf: int | None = None
) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if nodelay:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def read_packet(
    sock: socket.socket, reader: PacketReader, timeout: float = 10.0, want: int | None = None
) -> tuple[int, int, bytes]:
    """Block until one complete packet is available (of type ``want`` if given;
    other packets before it are discarded) and return it."""
    deadline = time.monotonic() + timeout
    while True:
        for pkt in reader.packets():
            if want is None or pkt[0] == want:
                return pkt
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {TYPE_NAMES.get(want, 'packet')} within {timeout}s")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(
                "connection closed by broker" + (f" while waiting for {TYPE_NAMES.get(want)}" if want else "")
            )
        reader.feed(data)


def mqtt_connect(
    host: str,
    port: int,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,
    keepalive: int = 0,
    rcvbuf: int | None = None,
    level: int = 4,
) -> tuple[socket.socket, PacketReader]:
    """Open a socket, send CONNECT (MQTT 3.1.1, or 5 with ``level=5``), wait for CONNACK. Raises on refusal."""
    sock = open_socket(host, port, timeout=timeout, rcvbuf=rcvbuf)
    reader = PacketReader()
    try:
        sock.sendall(encode_connect(client_id, username, password, keepalive=keepalive, level=level))
        _t, _f, body = read_packet(sock, reader, timeout, want=CONNACK)
        _sp, rc = parse_connack(body, level)
        if rc != 0:
            raise ConnectionRefusedError(f"CONNACK return code {rc} ({CONNACK_CODES.get(rc, '?')})")
    except BaseException:
        sock.close()
        raise
    return sock, reader


def mqtt_subscribe(
    sock: socket.socket,
    reader: PacketReader,
    topic: str,
    qos: int,
    packet_id: int = 1,
    timeout: float = 10.0,
    level: int = 4,
) -> int:
    sock.sendall(encode_subscribe(packet_id, [(topic, qos)], level))
    _t, _f, body = read_packet(sock, reader, timeout, want=SUBACK)
    pid, codes = parse_suback(body, level)
    if pid != packet_id or not codes:
        raise ProtocolError(f"bad SUBACK {pid} {codes}")
    if codes[0] >= 0x80:  # 3.1.1: 0x80 failure; 5: every reason code >= 0x80 is a refusal
        raise PermissionError(f"SUBSCRIBE {topic!r} refused by broker (SUBACK {codes[0]:#04x})")
    return codes[0]


def _selftest() -> None:
    for n in (0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455):
        enc = encode_remaining_length(n)
        assert decode_remaining_length(b"\x30" + enc, 0) == (n, 1 + len(enc)), n
    c = encode_connect("cid", "u", "p", keepalive=30)
    r = PacketReader()
    # feed byte by byte: incremental parsing must cope
    got = []
    for i in range(len(c)):
        r.feed(c[i : i + 1])
        got.extend(r.packets())
    assert len(got) == 1 and got[0][0] == CONNECT and r.pending() == 0
    # a consumer that stops after one packet must not see it again
    r.feed(encode_connack(0) + encode_suback(1, [0]))
    for pkt in r.packets():
        assert pkt[0] == CONNACK
        break
    assert [p[0] for p in r.packets()] == [SUBACK]
    info = parse_connect(got[0][2])
    assert info == {
        "protocol": "MQTT",
        "level": 4,
        "flags": 0xC2,
        "keepalive": 30,
        "client_id": "cid",
        "username": "u",
        "password": "p",
    }, info
    assert parse_connack(encode_connack(0)[2:]) == (False, 0)
    s = encode_subscribe(7, [("bench/#", 1)])
    assert s[0] == 0x82 and parse_subscribe(s[2:]) == (7, [("bench/#", 1)])
    assert parse_suback(encode_suback(7, [1])[2:]) == (7, [1])
    payload = bytes(range(64))
    p0 = encode_publish("bench/x", payload)
    p1 = encode_publish("bench/x", payload, qos=1, packet_id=513)
    assert PublishTemplate("bench/x", payload).frame(513) == p1
    r = PacketReader()
    r.feed(p0 + p1 + encode_puback(9) + encode_disconnect() + p0[:5])
    pk = list(r.packets())
    assert [p[0] for p in pk] == [PUBLISH, PUBLISH, PUBACK, DISCONNECT] and r.pending() == 5
    assert parse_publish(pk[0][1], pk[0][2]) == ("bench/x", 0, None, payload)
    assert parse_publish(pk[1][1], pk[1][2]) == ("bench/x", 1, 513, payload)
    assert parse_puback(pk[2][2]) == 9
    big = encode_publish("t", b"x" * 300)
    assert big[1] & 0x80 and parse_publish(0, list(PacketReader.packets(_fed(big)))[0][2])[3] == b"x" * 300
    # frame counter: fast path, split frames, and fallback on a foreign packet
    frames = [encode_publish(f"bench/ab/{i}", payload) for i in range(4)]
    size = len(frames[0])
    prefix = frames[0][: size - 64]
    fc = FrameCounter(prefix, size, "bench/ab/", skip=(len(prefix) - 1,))
    stream = b"".join(frames) * 10
    for i in range(0, len(stream), 333):
        fc.feed(stream[i : i + 333])
    assert fc.count == 40 and fc.slow_frames == 0, vars(fc)
    fc.feed(encode_pingreq() + frames[1] + encode_publish("other/t", payload) + frames[2])
    fc.feed(frames[3] * 3)
    assert fc.count == 45 and fc.other_packets == 1 and fc.foreign_publishes == 1, vars(fc)
    # MQTT 5: empty property blocks out, properties skipped in
    c5 = encode_connect("cid", "u", "p", keepalive=30, level=5)
    assert parse_connect(_first(c5)[2][:10] + _first(c5)[2][11:])["level"] == 5
    assert parse_connack(bytes((0, 0, 3, 0x21, 0, 10)), 5) == (False, 0)  # Receive Maximum 10
    s5 = encode_subscribe(7, [("bench/#", 1)], level=5)
    assert s5[4] == 0 and parse_subscribe(s5[2:4] + s5[5:]) == (7, [("bench/#", 1)])
    assert parse_suback(bytes((0, 7, 2, 0x1F, 0, 1)), 5) == (7, [1])  # empty Reason String, granted QoS1
    p5 = encode_publish("bench/x", payload, qos=1, packet_id=513, level=5)
    assert PublishTemplate("bench/x", payload, level=5).frame(513) == p5
    assert parse_publish(_first(p5)[1], _first(p5)[2], 5) == ("bench/x", 1, 513, payload)
    fwd = _packet(PUBLISH << 4, _str("bench/x") + bytes((2, 0x01, 1)) + payload)  # payload format indicator
    assert parse_publish(0, _first(fwd)[2], 5) == ("bench/x", 0, None, payload)
    f5 = encode_publish("bench/ab/0", payload, level=5)
    fc = FrameCounter(f5[:-64], len(f5), "bench/ab/", level=5)
    fc.feed(f5 * 3)
    fc.feed(fwd + f5 * 2)  # a frame of another shape: the slow path parses the v5 PUBLISH
    assert fc.count == 5 and fc.slow_frames == 2 and fc.foreign_publishes == 1, vars(fc)
    print("mqttraw selftest ok")


def _first(data: bytes) -> tuple[int, int, bytes]:
    return next(_fed(data).packets())


def _fed(data: bytes) -> PacketReader:
    r = PacketReader()
    r.feed(data)
    return r


if __name__ == "__main__":
    _selftest()
