"""The TCP (and TLS) side of a connection: one `asyncio.Protocol` object instead of asyncio's streams.

`asyncio.start_server` builds, per connection, a StreamReader, a StreamReaderProtocol and a StreamWriter,
and amqtt wraps them in two adapters (one of which looks its logger up by name every time): about a
tenth of the CPU a CONNECT+DISCONNECT costs. `MqttStream` is reader, writer and protocol in one, with
exactly the stream methods the engine (and amqtt's adapters) use. `TcpReader`/`TcpWriter` are amqtt's
adapter classes, so code that checks for them (ours and amqtt's) still recognises a TCP connection.

The connection's task (`serve`) starts only once the first packet is whole in the buffer (or its fate is
known without more bytes: not a CONNECT, too large, malformed, or the peer went away): a typical CONNECT
then costs no waiting read, no wake-up of the task and no deadline of its own. Until then the socket is
watched by the broker's shared `Deadlines`; at `connect_timeout` the task starts with `timed_out` set.

Semantics kept from asyncio's streams: reading pauses while more than `2 * LIMIT` bytes wait to be
read and resumes at `LIMIT` (TCP backpressure on a publisher the broker cannot keep up with); `drain()`
waits while the transport's write buffer is over its high-water mark and raises ConnectionResetError
once the connection is lost; a half-closed (EOF) plain TCP connection stays writable until closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter

from .deadlines import Deadlines
from .protocol import CONNECT, Incomplete, ProtocolViolation, parse_fixed_header

log = logging.getLogger("mqtt_guard.broker")

LIMIT = 65536  # asyncio's stream default

Serve = Callable[["TcpReader", "TcpWriter"], Coroutine[Any, Any, None]]
Peer = tuple[str, int]


class MqttStream(asyncio.Protocol):
    # slots (asyncio.Protocol has an empty __slots__): no per-connection dict (issue 15, memory)
    __slots__ = (
        "_loop",
        "_serve",
        "_deadlines",
        "_connect_timeout",
        "_max_packet",
        "first_ready",
        "timed_out",
        "transport",
        "_chunks",
        "_pos",
        "_buffered",
        "_eof",
        "_exc",
        "_read_waiter",
        "_reading_paused",
        "_writing_paused",
        "_drain_waiter",
        "_lost",
        "_closed",
        "_over_ssl",
        "_task",
        "_started",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        serve: Serve,
        *,
        over_ssl: bool = False,
        deadlines: Deadlines | None = None,
        connect_timeout: float = 0.0,
        max_packet: int = 0,
    ) -> None:
        """`deadlines`/`connect_timeout`: start `serve` only once the first packet is buffered (or at the
        timeout); without them it starts at once. `max_packet`: a first packet declared larger than this
        need not be waited for."""
        self._loop = loop
        self._serve = serve
        self._deadlines = deadlines if connect_timeout > 0 else None
        self._connect_timeout = connect_timeout
        self._max_packet = max_packet
        self.first_ready = False  # the task started because the first packet is whole in the buffer
        self.timed_out = False  # the task started because no whole first packet came within connect_timeout
        self.transport: Any = None
        self._chunks: list[bytes] = []
        self._pos = 0  # bytes of _chunks[0] already read
        self._buffered = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost = False
        self._closed: asyncio.Future[None] | None = None
        self._over_ssl = over_ssl
        self._task: asyncio.Task[None] | None = None
        self._started = False

    # -- protocol callbacks --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self._deadlines is None:
            self._start()
        else:
            self._deadlines.watch(self, self._connect_timeout)

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._deadlines is not None:
            self._deadlines.unwatch(self)
        self._task = self._loop.create_task(self._serve(TcpReader(self), TcpWriter(self)))
        self._task.add_done_callback(self._served)

    def expire(self) -> None:
        """connect_timeout passed without a whole first packet (called by the Deadlines sweep)."""
        if not self._started:
            self.timed_out = True
            self._start()

    def _first_packet_decided(self) -> bool:
        """Whether the buffered bytes settle what the first packet is: whole, or not a CONNECT, too large
        or malformed (the task reports those)."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            first, length, hlen = parse_fixed_header(data, 0)
        except Incomplete:
            return False
        except ProtocolViolation:
            return True
        if len(data) >= hlen + length:
            self.first_ready = True
            return True
        return first >> 4 != CONNECT or bool(self._max_packet and hlen + length > self._max_packet)

    def _served(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("connection handler failed", exc_info=task.exception())
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if not self._started and self._first_packet_decided():
            self._start()
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._reading_paused and self._buffered > 2 * LIMIT:
            try:
                self.transport.pause_reading()
                self._reading_paused = True
            except NotImplementedError:  # some transports cannot pause: the buffer grows instead
                pass

    def eof_received(self) -> bool:
        self._eof = True
        self._start()  # (if not started: the task reports the missing CONNECT)
        self._wake_reader()
        return not self._over_ssl  # plain TCP stays open for writing (asyncio's streams do the same)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        if exc is not None:
            self._exc = exc
        self._start()
        self._wake_reader()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading (StreamReader's read/readexactly) ---------------------------------------------------------
    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all buffered ones if n < 0), b"" at EOF; waits while nothing is buffered.
        A chunk larger than `n` (uvloop reads up to 256 KiB at a time) is handed out in slices from an
        offset: the rest of it is not copied on every read."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            self._read_waiter = self._loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        chunks = self._chunks
        first = chunks[0]
        pos = self._pos
        left = len(first) - pos
        if n < 0 and len(chunks) > 1:
            data = b"".join([first[pos:] if pos else first, *chunks[1:]])
            chunks.clear()
            self._pos = 0
        elif n < 0 or left <= n:
            data = first[pos:] if pos else first
            del chunks[0]
            self._pos = 0
        else:
            data = first[pos : pos + n]
            self._pos = pos + n
        self._buffered -= len(data)
        if self._reading_paused and self._buffered <= LIMIT:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def take(self, n: int) -> bytes | None:
        """`read(n)` without a coroutine: None when nothing is buffered yet (then await `readable()`),
        b"" at EOF; raises the error the connection was lost with. The connection's reader uses it, so
        an idle connection waits in the reader's own frame on one Future, not in two more coroutines."""
        chunks = self._chunks
        if not chunks:
            if self._exc is not None:
                raise self._exc
            return b"" if self._eof else None
        first = chunks[0]
        pos = self._pos
        if len(first) - pos <= n:
            data = first[pos:] if pos else first
            del chunks[0]
            self._pos = 0
        else:
            data = first[pos : pos + n]
            self._pos = pos + n
        self._buffered -= len(data)
        if self._reading_paused and self._buffered <= LIMIT:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def readable(self) -> asyncio.Future[None]:
        """A Future done when bytes, EOF or an error arrive (after `take` returned None)."""
        waiter = self._read_waiter = self._loop.create_future()
        return waiter

    def take_buffered(self) -> bytes:
        """All buffered bytes, without waiting (b"" if none)."""
        if not self._chunks:
            return b""
        chunks, pos = self._chunks, self._pos
        data = (
            (chunks[0][pos:] if pos else chunks[0])
            if len(chunks) == 1
            else b"".join([chunks[0][pos:] if pos else chunks[0], *chunks[1:]])
        )
        chunks.clear()
        self._pos = 0
        self._buffered = 0
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def readexactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = await self.read(n - len(data))
            if not more:
                raise asyncio.IncompleteReadError(data, n)
            data += more
        return data

    def feed_eof(self) -> None:
        self._eof = True
        self._wake_reader()

    # -- writing (StreamWriter's methods) ---------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.transport.write(data)

    def can_write_eof(self) -> bool:
        return bool(self.transport.can_write_eof())

    def write_eof(self) -> None:
        self.transport.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def close(self) -> None:
        self.transport.close()

    async def wait_closed(self) -> None:
        if self._lost:
            return
        if self._closed is None:
            self._closed = self._loop.create_future()
        await self._closed

    async def drain(self) -> None:
        """Wait while the write buffer is over its high-water mark; ConnectionResetError once lost."""
        if self._exc is not None:
            raise self._exc
        if self.transport.is_closing():
            await asyncio.sleep(0)  # let connection_lost run, as asyncio's StreamWriter.drain does
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if not self._writing_paused:
            return
        self._drain_waiter = self._loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None
        if self._lost:
            raise ConnectionResetError("Connection lost")


class TcpReader(StreamReaderAdapter):  # type: ignore[misc]  # amqtt has no type information
    """amqtt's adapter class over an MqttStream (its `_reader`)."""

    __slots__ = ("_reader",)

    def __init__(self, stream: MqttStream) -> None:  # no super(): nothing else to set up
        self._reader = stream


class TcpWriter(StreamWriterAdapter):  # type: ignore[misc]  # amqtt has no type information
    """amqtt's adapter class over an MqttStream (its `_writer`), without a logger lookup per connection."""

    logger = log
    __slots__ = ("_writer", "is_closed")

    def __init__(self, stream: MqttStream) -> None:
        self._writer = stream
        self.is_closed = False

    def get_peer_info(self) -> tuple[str, int] | None:
        peer = self._writer.transport.get_extra_info("peername")
        return (peer[0], peer[1]) if peer and len(peer) >= 2 else None

    def get_ssl_info(self) -> Any:
        stream = self._writer
        return stream.transport.get_extra_info("ssl_object") if stream._over_ssl else None  # noqa: SLF001 - MqttStream, this module's own


class ProxiedTcpWriter(TcpWriter):
    """The TcpWriter of a connection through a load balancer: its peer is the client the PROXY protocol
    header named (engine/proxy_listener.py), not the balancer the socket comes from."""

    def __init__(self, stream: MqttStream, peer: Peer) -> None:
        super().__init__(stream)
        self.peer = peer

    def get_peer_info(self) -> Peer:
        return self.peer


def serving_as(peer: Peer, serve: Serve) -> Serve:
    """`serve` for connections whose client is `peer`: it gets a ProxiedTcpWriter. (A separate wrapper,
    so the connections of other listeners pay nothing for it.)"""

    def start(reader: TcpReader, writer: TcpWriter) -> Coroutine[Any, Any, None]:
        return serve(reader, ProxiedTcpWriter(writer._writer, peer))  # noqa: SLF001 - TcpWriter, this module's own

    return start
