"""A minimal MQTT 3.1.1 client on raw asyncio sockets, made for measuring brokers, not for devices.

It records exactly what a broker answers (CONNACK return code, SUBACK codes, every PUBLISH received
with its QoS and retain flag, whether the broker closed the connection) and acknowledges QoS 1
messages. paho would hide some of this and is much slower to start per connection.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 10, 11, 12, 13, 14


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + _varint(len(body)) + body


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    client_id: str
    rc: int | None = None
    messages: list[Received] = field(default_factory=list)
    closed: bool = False
    _next_id: int = 0
    _waiters: dict[tuple[int, int], asyncio.Future] = field(default_factory=dict)
    _pings: list[asyncio.Future] = field(default_factory=list)
    _task: asyncio.Task | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    # -- lifecycle --------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        *,
        keepalive: int = 60,
        clean: bool = True,
        host: str = "127.0.0.1",
        timeout: float = 5.0,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> Client:
        """Connect and read the CONNACK. `rc` is its return code; -1 if the broker closed without one."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        c = cls(reader, writer, client_id)
        flags = 0x02 if clean else 0
        payload = _str(client_id)
        if will is not None:
            topic, message, qos, retain = will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _str(topic) + _str(message)
        if username is not None:
            flags |= 0x80
            payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
        body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
        writer.write(_packet(CONNECT, 0, body))
        try:
            kind, _, data = await asyncio.wait_for(c._read_packet(), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            c.rc = -1
            c.closed = True
            writer.close()
            return c
        if kind != CONNACK or len(data) != 2:
            raise RuntimeError(f"expected CONNACK, got packet type {kind}")
        c.rc = data[1]
        if c.rc != 0:
            c.closed = True
            writer.close()
            return c
        c._task = asyncio.get_running_loop().create_task(c._read_loop())
        return c

    async def close(self) -> None:
        if not self.closed:
            try:
                self.writer.write(_packet(DISCONNECT, 0, b""))
                await self.writer.drain()
            except ConnectionError:
                pass
        self.closed = True
        self.writer.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - a reader ends however its socket ends
                pass

    async def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT (the will is published)."""
        self.closed = True
        self.writer.transport.abort()
        if self._task is not None:
            self._task.cancel()

    # -- packets ----------------------------------------------------------------------------
    async def _read_packet(self) -> tuple[int, int, bytes]:
        head = await self.reader.readexactly(1)
        n, mult = 0, 1
        while True:
            b = (await self.reader.readexactly(1))[0]
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        data = await self.reader.readexactly(n) if n else b""
        return head[0] >> 4, head[0] & 0x0F, data

    async def _read_loop(self) -> None:
        try:
            while True:
                kind, flags, data = await self._read_packet()
                if kind == PUBLISH:
                    qos = (flags >> 1) & 3
                    (tlen,) = struct.unpack("!H", data[:2])
                    topic = data[2 : 2 + tlen].decode()
                    pos = 2 + tlen
                    if qos:
                        (pid,) = struct.unpack("!H", data[pos : pos + 2])
                        pos += 2
                        if qos == 1:
                            self.writer.write(_packet(PUBACK, 0, struct.pack("!H", pid)))
                        else:
                            self.writer.write(_packet(5, 0, struct.pack("!H", pid)))  # PUBREC
                    self.messages.append(Received(topic, data[pos:], qos, bool(flags & 1)))
                    self._arrived.set()
                elif kind == 6:  # PUBREL (we never publish QoS 2, but answer a broker that does)
                    self.writer.write(_packet(7, 0, data[:2]))
                elif kind == 5:  # PUBREC for a QoS 2 publish of ours
                    self.writer.write(_packet(6, 2, data[:2]))
                elif kind in (PUBACK, SUBACK, UNSUBACK, 7):
                    (pid,) = struct.unpack("!H", data[:2])
                    fut = self._waiters.pop((kind, pid), None)
                    if fut is not None and not fut.done():
                        fut.set_result(data[2:])
                elif kind == PINGRESP:
                    if self._pings:
                        fut = self._pings.pop(0)
                        if not fut.done():
                            fut.set_result(None)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed = True
            self._arrived.set()
            for fut in [*self._waiters.values(), *self._pings]:
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed by the broker"))

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _expect(self, kind: int, pid: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiters[(kind, pid)] = fut
        return fut

    async def subscribe(self, filters: list[tuple[str, int]], timeout: float = 5.0) -> list[int]:
        """SUBSCRIBE in one packet; the SUBACK return codes (0-2 granted QoS, 128 failure)."""
        pid = self._packet_id()
        body = struct.pack("!H", pid) + b"".join(_str(f) + bytes([q]) for f, q in filters)
        fut = self._expect(SUBACK, pid)
        self.writer.write(_packet(SUBSCRIBE, 2, body))
        return list(await asyncio.wait_for(fut, timeout))

    async def unsubscribe(self, filters: list[str], timeout: float = 5.0) -> None:
        pid = self._packet_id()
        fut = self._expect(UNSUBACK, pid)
        self.writer.write(_packet(UNSUBSCRIBE, 2, struct.pack("!H", pid) + b"".join(_str(f) for f in filters)))
        await asyncio.wait_for(fut, timeout)

    async def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, timeout: float = 5.0
    ) -> None:
        """PUBLISH; for QoS 1 wait for the PUBACK, for QoS 2 for the PUBCOMP."""
        flags = (qos << 1) | (1 if retain else 0)
        if qos == 0:
            self.writer.write(_packet(PUBLISH, flags, _str(topic) + payload))
            await self.writer.drain()
            return
        pid = self._packet_id()
        fut = self._expect(PUBACK if qos == 1 else 7, pid)
        self.writer.write(_packet(PUBLISH, flags, _str(topic) + struct.pack("!H", pid) + payload))
        await asyncio.wait_for(fut, timeout)

    async def ping(self, timeout: float = 5.0) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._pings.append(fut)
        self.writer.write(_packet(PINGREQ, 0, b""))
        await asyncio.wait_for(fut, timeout)

    async def wait_until(self, predicate, timeout: float) -> bool:
        """Wait until `predicate()` holds after some message arrived (or the connection closed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate() and not self.closed:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return False
        return predicate()

    async def wait_messages(self, count: int, timeout: float) -> bool:
        """Wait until at least `count` messages arrived (or the connection closed); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.messages) < count and not self.closed:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return False
        return len(self.messages) >= count
