"""GuardedHandler: amqtt's BrokerProtocolHandler with a strict buffered reader and one writer loop.

What it replaces in amqtt 0.12.1 and why:
- Reader. amqtt reads each packet with several awaited reads, swallows decoding errors mid-packet
  (the stream then desynchronises), never enforces keep-alive, and hands each packet to a new Task
  and every PUBLISH to an unbounded per-session queue that the broker drains in another Task; a
  DISCONNECT then discards whatever that queue still held, PUBACKed QoS 1 included. Here the reader
  takes whole packets from a buffer (size checked against `limits.max_packet_size` from the fixed
  header, before the body is read), validates them (engine/protocol.py) and acts on each one in
  order, in the reader's own task: a PUBLISH is routed into the subscribers' queues before its
  PUBACK/PUBREC is sent and before any later packet (DISCONNECT included) is looked at. A protocol
  violation closes the connection with one log line naming the client and the reason.
- Keep-alive. One timer per connection, re-armed lazily (never per packet): a client silent for
  1.5 x its keep-alive is disconnected and its will published [MQTT-3.1.2-24].
- Writer. Deliveries to a client whose socket keeps up are encoded at once and coalesced into one
  write() per loop iteration (`emit`); when its transport buffer is above the high-water mark they
  wait in the session's bounded OutQueue (engine/queues.py), which one writer loop per connection
  drains in batches as the socket drains. There is no Task per delivery and no PUBACK timeout that
  silently drops a message.
The handler keeps amqtt's interface (`attach`, `start`, `stop`, `handle_connection_closed`,
`wait_disconnect`, `mqtt_connack_authorize`, `_send_packet`), so amqtt code and plugins that kick a
client through it keep working.

The handler knows the broker only as a `Router` (below), as a queue knows its connection only as a
`Port` (queues.py): the broker decides, the handler reads, writes and keeps time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from amqtt.adapters import BufferReader, StreamReaderAdapter, StreamWriterAdapter, WebSocketsReader
from amqtt.errors import ProtocolHandlerError
from amqtt.events import MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.publish import PublishPacket
from websockets import ConnectionClosed

from ..metrics import counters as C
from ..reasons import KEEP_ALIVE, Reason, reason_string
from . import mqtt5
from .deadlines import Wheel, wheel_for
from .mqtt5 import Client5, Message5, encode_disconnect
from .packets import MQTT5, parse_subscribe, parse_unsubscribe
from .protocol import (
    AUTH,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP_BYTES,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    TYPE_NAMES,
    UNSUBACK,
    UNSUBSCRIBE,
    Cursor,
    Incomplete,
    ProtocolViolation,
    check_topic_levels,
    check_topic_name,
    decode_utf8,
    encode_ack,
    parse_fixed_header,
    too_large,
)
from .queues import OutQueue
from .session_info import GuardedSession, lazy
from .transport import TcpReader

if TYPE_CHECKING:
    from ..guard_client import GuardClient
    from ..ports import Counting, Stretch

log = logging.getLogger("mqtt_guard.broker")

READ_CHUNK = 65536
TOPIC_CACHE = 256  # validated PUBLISH topics remembered per connection
WRITE_BATCH = 65536  # bytes of PUBLISH frames per write() in the writer loop
CLOSE_GRACE = 2.0  # seconds a closing socket may take to flush before it is aborted
WITH_WILL = 2  # `_dispatch`: an MQTT 5 DISCONNECT with reason 0x04 (1: any other DISCONNECT)


_AMQTT_LOG = logging.getLogger("amqtt.mqtt.protocol.handler")


_HIGH_WATER: dict[type, int] = {}


def _high_water(transport: asyncio.WriteTransport) -> int:
    """The transport's write high-water mark (the same for every transport of a kind: looked up once)."""
    mark = _HIGH_WATER.get(type(transport))
    if mark is None:
        mark = _HIGH_WATER[type(transport)] = transport.get_write_buffer_limits()[1] or 65536
    return mark


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


Held = list[asyncio.Event] | None
"""What routing one message returns: the Events of subscribers it left over their hold mark (flow
control: the publisher's reader waits on them before its next packet), or None. It may also hold the
Futures of Redis writes the message's acknowledgement waits for (a QoS 1/2 message for a persistent
session, engine/durable.py): the reader puts a `Gate` in front of that acknowledgement."""


class Gate:
    """In a connection's coalesced writes (`_co`): nothing after it is written until every write in
    `futures` is confirmed by Redis (issue 17 item 3: a message bound for a persistent session is
    acknowledged to its publisher only once it is in Redis; every later ack of the connection keeps
    its order behind it)."""

    __slots__ = ("futures", "armed")

    def __init__(self, futures: list[asyncio.Future[None]]) -> None:
        self.futures = futures
        self.armed = False

    def done(self) -> bool:
        futures = self.futures
        while futures and futures[-1].done():
            _retrieve(futures.pop())
        return not futures

    def pending(self) -> asyncio.Future[None]:
        return self.futures[-1]


def _retrieve(fut: asyncio.Future[None]) -> None:
    """A write's outcome is looked at (the journal logs a failed write: the ack goes out anyway, the
    message is still in memory)."""
    if not fut.cancelled():
        fut.exception()


async def _written(fut: asyncio.Future[None]) -> None:
    try:
        await asyncio.shield(fut)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - logged by the journal; the delivery goes on from memory
        pass


def _split_writes(held: list[Any]) -> tuple[list[asyncio.Event] | None, list[asyncio.Future[None]] | None]:
    """The flow-control Events and the write Futures of a Held list."""
    events: list[asyncio.Event] = []
    writes: list[asyncio.Future[None]] = []
    for x in held:
        if type(x) is asyncio.Event:
            events.append(x)
        else:
            writes.append(x)
    return events or None, writes or None


class NotStored(Exception):
    """A PUBLISH that must be in Redis before its acknowledgement (a QoS 1/2 retained message,
    docs/durability.md) is not: a Redis command error (MQTT 5: PUBACK/PUBREC 0x80; 3.1.1 has no negative
    acknowledgement: the connection is closed), or Redis did not take it within
    `limits.backpressure_max_stall` (`timeout`: the connection is closed, MQTT 5 with DISCONNECT 0x89).
    The client was not acknowledged: it may publish again."""

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.timeout = timeout


class Router(Protocol):
    """What a connection's reader asks of the broker (GuardedBroker). The broker decides every PUBLISH,
    SUBSCRIBE and UNSUBSCRIBE; the reader only parses, validates and acknowledges.

    `no_match`: set when a message just routed matched no subscription (the router clears it only before
    the awaited routing's last synchronous step, and puts it back after awaiting a retained message's
    write): an MQTT 5 reader clears it before a synchronous `publish` of QoS 1/2 and reads it right after
    `publish` or `handle_publish`, to acknowledge 0x10 No matching subscribers (mosquitto's answer; the
    message is still accepted, retained and counted)."""

    no_match: bool

    @property
    def fast_publish(self) -> bool:
        """`publish` may be called synchronously from the reader (no plugin has to be awaited)."""
        ...

    def publish(
        self,
        session: GuardedSession,
        topic: str,
        topic_raw: bytes,
        payload: bytes | None,
        plen: int,
        qos: int,
        frame0: bytes | None,
        props: Message5 | None = None,
    ) -> Held:
        """Route a PUBLISH QoS 0/1 without RETAIN now (when `fast_publish`). `payload` may be None when
        `frame0` (the QoS 0 frame as received, shared by every subscriber of the publisher's protocol
        level) is given: a 3.1.1 frame when `props` is None, else an MQTT 5 frame with an empty property
        block (then `props` is the connection's plain Message5). `props`: the MQTT 5 side of the message
        (given for every PUBLISH of an MQTT 5 client). None is also what a refused
        PUBLISH returns: then an MQTT 5 client's `session.v5.refused` says why (reasons.py: 0x87 denied,
        0x97 over quota), which its reader clears before asking when it acknowledges (QoS 1/2)."""
        ...

    async def handle_publish(
        self,
        session: GuardedSession,
        topic: str,
        topic_raw: bytes,
        payload: bytes,
        qos: int,
        retain: bool,
        props: Message5 | None = None,
    ) -> Held:
        """Route any other PUBLISH (QoS 2, RETAIN, or plugins that must be awaited)."""
        ...

    async def handle_subscribe(
        self,
        session: GuardedSession,
        conn: GuardedHandler,
        packet_id: int,
        filters: list[tuple[str, int]],
        sub_id: int = 0,
    ) -> None:
        """Subscribe, send the SUBACK through `conn`, then the retained messages. `filters`: (filter,
        options byte); `sub_id`: an MQTT 5 Subscription Identifier (0: none)."""
        ...

    async def handle_unsubscribe(self, session: GuardedSession, filters: list[str]) -> list[bool]:
        """Unsubscribe; whether each filter had been subscribed."""
        ...

    def open_stretch(self, client: GuardClient | None, remaining: int) -> Stretch | None:
        """Open the quota stretch of a synchronous run over `remaining` bytes (None: none opened)."""
        ...

    def collect_writes(self, held: Held) -> Held:
        """`held` with the Redis write Futures made since routing last collected them (an inbound QoS 2
        packet id of a persistent session)."""
        ...

    def settle_stretch(self, st: Stretch) -> None:
        """Close it: called before the reader awaits anything."""
        ...


class GuardedHandler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt has no type information
    logger = _AMQTT_LOG  # amqtt's per-session LoggerAdapter (and its getLogger calls) are not built

    # Every attribute `__init__` sets is a slot (issue 15, memory): past 30 attributes CPython gives each
    # instance a dict of its own (1.6 KB per connection here); slots are ~0.4 KB and read as fast (amqtt's
    # base class has no `__slots__`, so `__dict__` stays for the `lazy` attributes and anything else).
    __slots__ = (
        "session",
        "reader",
        "writer",
        "plugins_manager",
        "_loop",
        "_reader_task",
        "_keepalive_task",
        "_reader_ready",
        "_disconnect_waiter",
        "keepalive_timeout",
        "_router",
        "_counters",
        "_route_now",
        "queue",
        "where",
        "client_id",
        "end_reason",
        "publish_will",
        "_clean",
        "_done_waiter",
        "_closing",
        "_writer_task",
        "_inline",
        "_leftover",
        "_last_rx",
        "_idle",
        "_ka_slot",
        "_ka_wheel",
        "_ka_limit",
        "_transport",
        "_stream_writer",
        "_max_packet",
        "_high_water",
        "_co",
        "_co_bytes",
        "_co_n",
        "_co_payload",
        "_co_scheduled",
        "_must_drain",
        "_stall_timer",
        "_max_stall",
        "_topics",
        "_n_in",
        "_b_in",
        "_stretch",
        "_ws_dirty",
        "_ws_draining",
        "_fire_rx",
        "_fire_tx",
        "level",
        "_msg5",
        "_aliases",
        "_alias_max",
        "_receive_max",
        "_max_levels",
        "_gates",
    )

    def __init__(self, plugins_manager: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # amqtt's constructors are not called: they build an Event, a Lock and two Queues per connection
        # that the engine does not use (the `lazy` class attributes below make them if something asks).
        self.session: GuardedSession | None = None
        self.reader: Any = None  # amqtt's ReaderAdapter / WriterAdapter
        self.writer: Any = None
        self.plugins_manager = plugins_manager
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._reader_task: asyncio.Task[Any] | None = None
        self._keepalive_task: asyncio.Task[Any] | None = None
        self._reader_ready = None
        self._disconnect_waiter = None
        self.keepalive_timeout: int | None = None
        self._router: Router | None = None
        self._counters: Counting | None = None
        # `router.publish` while PUBLISH QoS 0/1 without RETAIN may be routed synchronously, else None
        self._route_now: Any = None
        self.queue: OutQueue | None = None
        self.where = ""
        self.client_id = ""
        self.end_reason: str | None = None  # why the connection ended (None: the client sent DISCONNECT)
        self.publish_will = True  # False when the broker shuts down
        # How the connection ended (None: not yet; True: the client's DISCONNECT). A Future only for a
        # `wait_disconnect` caller (the engine has none): ~0.15 KB less per idle connection (issue 15 item 4)
        self._clean: bool | None = None
        self._done_waiter: asyncio.Future[bool] | None = None
        self._closing = False
        self._writer_task: asyncio.Task[None] | None = None
        self._inline = False  # the reader runs in the connection's task (`serve`)
        self._leftover = b""  # bytes read with the CONNECT, for the reader
        self._last_rx = 0.0
        self._idle = False  # the reader waits for bytes (only then can keep-alive expire)
        self._ka_slot = -1  # the keep-alive wheel's slot this connection waits in (-1: none)
        self._ka_wheel: Wheel | None = None
        self._ka_limit = 0.0
        self._transport: asyncio.WriteTransport | None = None
        self._stream_writer: asyncio.StreamWriter | None = None
        self._max_packet = 0
        self._high_water = 65536
        self._co: list[Any] = []  # frames emitted in this loop iteration, written together (and Gates)
        self._co_bytes = 0
        self._co_n = 0  # PUBLISH frames among them (the rest are acks)
        self._co_payload = 0
        self._co_scheduled = False
        self._must_drain = False  # acks written past the high-water mark: the reader waits for the socket
        # Flow control (docs/engine.md): publishers wait on `_drained` while this client's queue is over its
        # hold mark, for at most `_max_stall` seconds per episode. (`_drained` is made on first use.)
        self._stall_timer: asyncio.TimerHandle | None = None
        self._max_stall = 0.0
        # Reader state for PUBLISH: validated topics, counts not yet added to the counters
        self._topics: dict[bytes, str] = {}
        self._n_in = 0
        self._b_in = 0
        self._stretch: Stretch | None = None  # the quota stretch of the current synchronous run
        self._ws_dirty = False  # websockets: coalesced frames written to the adapter, not yet sent
        self._ws_draining = False
        events = plugins_manager._event_plugin_callbacks  # noqa: SLF001 - amqtt offers no public view of its listeners
        self._fire_rx = bool(events.get(MQTTEvents.PACKET_RECEIVED))
        self._fire_tx = bool(events.get(MQTTEvents.PACKET_SENT))
        self.level = 4  # the client's protocol level (5: MQTT 5 packets and server-sent DISCONNECT)
        # MQTT 5: the Message5 of this client's PUBLISH packets without properties (one per connection),
        # its topic aliases (alias -> topic, raw topic), and what the CONNACK announced
        self._msg5: Message5 | None = None
        self._aliases: dict[int, tuple[str, bytes]] | None = None
        self._alias_max = 0
        self._receive_max = 65535
        self._max_levels = 0  # limits.max_topic_levels (0: no limit)
        self._gates = 0  # Gates in `_co`: acks waiting for Redis writes (persistent sessions)

    # amqtt's state the engine does not use, made on first access (a class-level `__getattr__` would do the
    # same, but it turns off CPython's attribute-access specialisation for every handler attribute: the
    # delivery path got 15-20 % slower)
    _wake_event = lazy(asyncio.Event)  # the writer loop waits on it (made when the loop first runs)
    _drained = lazy(_set_event)  # cleared while this client holds publishers (flow control)
    _reader_stopped = lazy(asyncio.Event)
    _write_lock = lazy(asyncio.Lock)
    _pending_subscriptions: lazy[asyncio.Queue[Any]] = lazy(asyncio.Queue)
    _pending_unsubscriptions: lazy[asyncio.Queue[Any]] = lazy(asyncio.Queue)
    _puback_waiters: lazy[dict[int, Any]] = lazy(dict)
    _pubrec_waiters: lazy[dict[int, Any]] = lazy(dict)
    _pubrel_waiters: lazy[dict[int, Any]] = lazy(dict)
    _pubcomp_waiters: lazy[dict[int, Any]] = lazy(dict)

    # -- set-up --------------------------------------------------------------------------------
    def attach(self, session: GuardedSession, reader: Any, writer: Any) -> None:
        """amqtt's attach without its per-session LoggerAdapter."""
        if self.session:
            raise ProtocolHandlerError("Handler is already attached to a session")
        self.session = session
        self.keepalive_timeout = session.keep_alive if session.keep_alive > 0 else None
        self.reader = reader
        self.writer = writer

    def bind(
        self,
        router: Router,
        queue: OutQueue,
        where: str,
        counters: Counting,
        *,
        max_packet: int,
        max_stall: float,
        alias_max: int = 0,
        receive_max: int = 0,
        max_levels: int = 0,
    ) -> None:
        """After `attach`: who decides (`router`), the session's queue, and the limits of the connection
        (for an MQTT 5 client also the Topic Alias Maximum and Receive Maximum its CONNACK announces;
        `receive_max` 0: 65535; `max_levels`: limits.max_topic_levels)."""
        self._max_levels = max_levels
        self._router = router
        self._counters = counters
        self.queue = queue
        self.where = where
        self.client_id = self.session.client_id if self.session else ""
        self.level = self.session.protocol_level if self.session else 4
        self._max_packet = max_packet
        self._max_stall = max_stall
        if self.level == MQTT5:
            self._msg5 = Message5(b"", 0.0, queue)
            self._alias_max = alias_max
            self._receive_max = max(1, min(receive_max, 65535)) if receive_max else 65535
        # Plugins listening to packets need every packet awaited (the fast path writes acks unseen)
        if router.fast_publish and not self._fire_rx and not self._fire_tx:
            self._route_now = router.publish
        if isinstance(self.writer, StreamWriterAdapter):
            self._stream_writer = self.writer._writer  # noqa: SLF001 - amqtt's adapter keeps the asyncio writer
            self._transport = self._stream_writer.transport
            self._high_water = _high_water(self._transport)

    async def start(self) -> None:
        """amqtt's interface: connect the queue and read in a Task of its own (`serve` reads inline)."""
        self._connect_queue()
        self._reader_task = self._loop.create_task(self._reader_loop())

    def serve(self, leftover: bytes = b"") -> Coroutine[Any, Any, bool]:
        """Connect the queue; the reader, for the calling task to await until the connection ends: True
        if it ended with the client's DISCONNECT. `leftover`: bytes that came after the CONNECT in its read.

        The broker serves every connection this way: no reader Task, and no writer Task until there is
        something to write (see `wake`), so a CONNECT costs no Task beyond the connection's own. (The
        reader's coroutine itself is returned, not awaited in one of this method's: an idle connection
        holds one suspended frame less, issue 15 item 4.)"""
        self._leftover = leftover
        self._connect_queue()
        return self._reader_loop(inline=True)

    def _connect_queue(self) -> None:
        """The session's queue is served by this connection from now on. A resumed session's unacknowledged
        or offline-queued messages are sent by the writer loop at once; otherwise the queue emits straight
        to the socket and the writer loop starts the first time messages wait (`wake`)."""
        assert self.session is not None and self.queue is not None
        q = self.queue
        self._last_rx = self._loop.time()
        q.online = True
        q.slow = False
        if q.inflight or q.pending:
            self._writer_task = self._loop.create_task(self._writer_loop(resend=True))
        else:
            q.port = self
        if self.session.keep_alive > 0:
            self._ka_limit = self.session.keep_alive * 1.5
            wheel = self._ka_wheel = wheel_for(self._loop)  # one timer for every connection's keep-alive
            self._ka_slot = wheel.add(self, self._last_rx + self._ka_limit)

    async def wait_disconnect(self) -> bool:
        """Until the connection ends; True if it ended with the client's DISCONNECT."""
        if self._clean is not None:
            return self._clean
        if self._done_waiter is None:
            self._done_waiter = self._loop.create_future()
        return await asyncio.shield(self._done_waiter)

    def _ended(self, clean: bool) -> None:
        """The connection is over (the first word counts): tell a `wait_disconnect` caller."""
        if self._clean is None:
            self._clean = clean
            waiter = self._done_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(clean)

    def close(self, reason: str, code: int = 0, server_reference: str | None = None) -> None:
        """End the connection from the server side (kick, take-over, keep-alive, protocol error). `code`:
        the MQTT 5 reason code (mqtt_guard/reasons.py) an MQTT 5 client is sent in a DISCONNECT first
        (after everything already written, and nothing after it [MQTT-3.14.2-1]), with the code's short
        Reason String (a DISCONNECT carries one whatever Request Problem Information says) and
        `server_reference` (0x9C/0x9D), within the client's Maximum Packet Size; 0 sends none. A 3.1.1
        client's socket is just closed, as before."""
        if self._closing:
            return
        self._closing = True
        if code and self.level == MQTT5:
            c5 = self.session.v5 if self.session is not None else None
            max_packet = c5.max_packet if c5 is not None else 0
            self._co.append(encode_disconnect(code, reason_string(code), server_reference, max_packet))
            if not self._co_scheduled:
                self._co_scheduled = True
                self._loop.call_soon(self._flush_coalesced)
        self.end_reason = reason
        self._keepalive_off()
        self._release()  # publishers waiting for this client go on
        task = self._reader_task
        if task is not None and not task.done() and task is not asyncio.current_task(self._loop):
            task.cancel()  # an inline reader (`serve`) catches it and un-cancels its task
        elif task is None:
            self._ended(False)

    async def handle_connection_closed(self) -> None:
        self.close("disconnected by the server")

    async def stop(self) -> None:
        """Close and wait until the reader and writer have finished and the socket is closed."""
        self.close("disconnected by the server")
        current = asyncio.current_task(self._loop)
        tasks = [
            t for t in (self._reader_task, self._writer_task) if t is not None and t is not current and not t.done()
        ]
        if self._writer_task is not None and self._writer_task is not current:
            self._writer_task.cancel()
        if tasks:
            # wait, not gather: if this stop() is cancelled, an inline reader's task (the connection's own,
            # still ending its session) must not be cancelled with it
            await asyncio.wait(tasks)
            for t in tasks:
                if not t.cancelled():
                    t.exception()  # retrieved (the loops log their own errors)
        if self.queue is not None and self.queue.port is self:
            self.queue.port = None
        self._flush_coalesced()
        if self._transport is not None:
            self._close_transport()
        else:
            await self._close_socket()
        self._ended(False)

    def _close_transport(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():
                self._loop.call_later(CLOSE_GRACE, transport.abort)  # a peer that never reads

    async def _close_socket(self) -> None:
        if self._transport is not None:
            self._close_transport()
            return
        if self.writer is not None:
            try:
                if self._ws_dirty:  # (an MQTT 5 client's DISCONNECT, written by `close`)
                    self._ws_dirty = False
                    await asyncio.wait_for(self.writer.drain(), CLOSE_GRACE)
                await asyncio.wait_for(self.writer.close(), CLOSE_GRACE)
            except Exception:  # noqa: BLE001 - the peer may be gone already
                pass

    async def flush(self, deadline: float) -> None:
        """Before a shutdown closes the socket: let the writer send what is queued, until `deadline`."""
        q = self.queue
        while q is not None and self._writer_task is not None and not self._writer_task.done():
            if (
                not q.ready()
                and not self._co
                and not self._ws_dirty
                and not (self._transport is not None and self._transport.get_write_buffer_size())
            ):
                return
            if self._loop.time() >= deadline:
                return
            await asyncio.sleep(0.01)

    # -- writing -------------------------------------------------------------------------------
    def writable(self) -> bool:
        """Port: the socket keeps up, so a delivery may be emitted now instead of queued."""
        if self._closing or self._fire_tx:
            return False
        transport = self._transport
        if transport is not None:
            return transport.get_write_buffer_size() + self._co_bytes < self._high_water
        return self.writer is not None and not self._ws_draining and self._co_bytes < self._high_water

    def emit(self, frame: bytes, payload_len: int) -> None:
        """Port: write `frame` at the end of this loop iteration, with everything else emitted in it."""
        self._co.append(frame)
        self._co_bytes += len(frame)
        self._co_n += 1
        self._co_payload += payload_len
        if not self._co_scheduled:
            self._co_scheduled = True
            self._loop.call_soon(self._flush_coalesced)

    def _ack(self, data: bytes) -> None:
        """A PUBACK (or another small control packet) from the reader's fast path: coalesced with this
        loop iteration's other writes. Past the high-water mark the reader waits (`_must_drain`)."""
        self._co.append(data)
        self._co_bytes += len(data)
        if not self._co_scheduled:
            self._co_scheduled = True
            self._loop.call_soon(self._flush_coalesced)
        transport = self._transport
        if (transport.get_write_buffer_size() if transport is not None else 0) + self._co_bytes > self._high_water:
            self._must_drain = True

    # -- flow control (docs/engine.md) ------------------------------------------------------------
    def hold(self) -> asyncio.Event | None:
        """Port: this client's queue is over its hold mark; the Event a publisher feeding it waits on
        (None: do not wait). The first hold of an episode starts the stall timer."""
        if self._closing or self._max_stall <= 0:
            return None
        ev = self._drained
        if ev.is_set():
            ev.clear()
            self._stall_timer = self._loop.call_later(self._max_stall, self._stall_expired)
        return ev

    def _release(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        drained = self.__dict__.get("_drained")  # (not made just to be found set)
        if drained is not None and not drained.is_set():
            drained.set()

    def _stall_expired(self) -> None:
        """The client kept publishers waiting for `backpressure_max_stall`: it is a slow consumer now.
        Publishers no longer wait for it; its queue fills and drops (counted), the slow-consumer policy
        of the quota (max_queue, queue_grace) may disconnect it. It holds publishers again only once it
        has caught up (its queue empty)."""
        self._stall_timer = None
        q = self.queue
        if q is not None and not self._drained.is_set():
            q.slow = True
            messages, size = q.depth()
            log.warning(
                "client %r (%s) kept publishers waiting for %g s (%d messages, %d bytes queued): "
                "a slow consumer now, its queue limits apply",
                self.client_id,
                self.where,
                self._max_stall,
                messages,
                size,
            )
        self._drained.set()

    def _caught_up(self) -> None:
        q = self.queue
        if q is not None and q.slow:
            q.slow = False
            log.info("client %r (%s) caught up: its queue is empty again", self.client_id, self.where)

    def wake(self) -> None:
        """Port: the queue has pending messages (or websocket frames wait to be sent) for the writer loop,
        which is started the first time it is needed."""
        if self._writer_task is None:
            # (an acknowledgement with nothing waiting behind it needs no writer loop)
            if not self._closing and (self._ws_dirty or (self.queue is not None and self.queue.pending)):
                self._writer_task = self._loop.create_task(self._writer_loop())
        else:
            self._wake_event.set()

    def _flush_coalesced(self) -> None:
        self._co_scheduled = False
        frames = self._co
        if not frames:
            return
        if self._gates and not self._open_gates():
            return
        frames = self._co
        n, payload = self._co_n, self._co_payload
        self._co = []
        self._co_bytes = self._co_payload = self._co_n = 0
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        transport = self._transport
        if transport is not None:
            if transport.is_closing():
                return
            transport.write(data)
        elif self.writer is not None:  # websockets: the adapter buffers; the writer loop sends it
            self.writer.write(data)
            self._ws_dirty = True
            self.wake()
        else:
            return
        counters = self._counters
        if n and counters is not None:
            counters.incr(self.client_id, C.MSGS_OUT, n)
            counters.incr(self.client_id, C.BYTES_OUT, payload)

    def _open_gates(self) -> bool:
        """Before a flush with Gates in `_co`: write what comes before the first Gate whose writes are
        not all confirmed, keep the rest for when they are. True when no Gate is left (flush the rest)."""
        frames = self._co
        for i, item in enumerate(frames):
            if type(item) is not Gate:
                continue
            if item.done():
                continue
            head = [f for f in frames[:i] if type(f) is not Gate]
            rest = frames[i:]
            self._gates = sum(1 for f in rest if type(f) is Gate)
            if not item.armed:
                item.armed = True
                item.pending().add_done_callback(self._gate_moved)
            if head:
                data = b"".join(head)
                transport = self._transport
                if transport is not None:
                    if not transport.is_closing():
                        transport.write(data)
                elif self.writer is not None:
                    self.writer.write(data)
                    self._ws_dirty = True
                    self.wake()
            self._co = rest
            self._co_bytes = sum(len(f) for f in rest if type(f) is not Gate)
            return False
        self._gates = 0
        self._co = [f for f in frames if type(f) is not Gate]
        return True

    def _gate_moved(self, _: asyncio.Future[None]) -> None:
        """A write a Gate waits for is confirmed: look again (the Gate may have more, or be open now)."""
        for item in self._co:
            if type(item) is Gate:
                item.armed = False
                break
        if not self._co_scheduled and self._co:
            self._co_scheduled = True
            self._loop.call_soon(self._flush_coalesced)

    def _gate(self, writes: list[asyncio.Future[None]], before_last: bool) -> None:
        """Nothing more of this connection is written until `writes` are confirmed: a Gate before the
        ack just coalesced (`before_last`), else at the end. After `backpressure_max_stall` without
        Redis confirming, the connection is closed: the publisher is never acknowledged-and-lost."""
        gate = Gate(writes)
        co = self._co
        if before_last and co:
            co.insert(len(co) - 1, gate)
        else:
            co.append(gate)
        self._gates += 1
        if not self._co_scheduled:
            self._co_scheduled = True
            self._loop.call_soon(self._flush_coalesced)
        if self._max_stall > 0:
            self._loop.call_later(self._max_stall, self._gate_stalled, gate)

    def _gate_stalled(self, gate: Gate) -> None:
        if gate.done() or self._closing or gate not in self._co:
            return
        log.warning(
            "client %r (%s): Redis did not confirm the writes of its messages for persistent sessions "
            "within backpressure_max_stall (%g s): disconnecting it, its unacknowledged messages are not lost",
            self.client_id,
            self.where,
            self._max_stall,
        )
        self.close("Redis did not confirm the persistent writes within backpressure_max_stall")

    async def _ws_drain(self) -> None:
        self._ws_dirty = False
        self._ws_draining = True
        try:
            async with self._write_lock:
                await self.writer.drain()
        finally:
            self._ws_draining = False

    def send_now(self, data: bytes) -> bool:
        """`send` without awaiting, for a TCP/TLS connection whose socket is not backed up; False (nothing
        written) when `send` must be awaited instead."""
        transport = self._transport
        if transport is None or self._co or transport.get_write_buffer_size() > self._high_water:
            return False
        if not transport.is_closing():
            transport.write(data)
        return True

    async def send(self, data: bytes) -> None:
        """Write a control packet (CONNACK, SUBACK, PUBACK, PINGRESP...). Waits only when the client
        does not read: then its own reading stops too (TCP backpressure)."""
        if self._gates:  # behind acks waiting for Redis writes: keeps its order
            self._co.append(data)
            self._co_bytes += len(data)
            if not self._co_scheduled:
                self._co_scheduled = True
                self._loop.call_soon(self._flush_coalesced)
            return
        transport = self._transport
        if transport is not None:
            if transport.is_closing():
                return
            if self._co:
                self._flush_coalesced()
            transport.write(data)
            if transport.get_write_buffer_size() > self._high_water and self._stream_writer is not None:
                await self._stream_writer.drain()
            return
        if self.writer is None:
            return
        async with self._write_lock:
            if self._co:
                self._flush_coalesced()
            self.writer.write(data)
            await self.writer.drain()

    async def _send_packet(self, packet: Any) -> None:  # amqtt's CONNACK/SUBACK/... path
        await self.send(packet.to_bytes())
        if self._fire_tx:
            await self.plugins_manager.fire_event(MQTTEvents.PACKET_SENT, packet=packet, session=self.session)

    async def _writer_loop(self, resend: bool = False) -> None:
        """Sends what waits in the queue as the socket drains. `resend`: started with the connection of
        a resumed session, it first re-sends the unacknowledged messages, then connects the queue."""
        q = self.queue
        counters = self._counters
        assert q is not None and counters is not None
        cid = self.client_id
        try:
            if resend:
                frames = q.resend_frames()
                if frames:
                    log.info("client %r: re-sending %d unacknowledged message(s) of its session", cid, len(frames))
                    await self._write_frames(frames)
                q.port = self
            while True:
                if self._ws_dirty:
                    await self._ws_drain()
                    continue
                if not q.ready():
                    if not self._drained.is_set() and q.under_release():
                        self._release()
                    if not q.pending and q.slow:
                        self._caught_up()
                    self._wake_event.clear()
                    await self._wake_event.wait()
                    continue
                frames, n, payload_bytes = q.take(WRITE_BATCH)
                barrier = q.barrier
                if barrier is not None:  # a persistent session's packet ids, written first (engine/durable.py)
                    q.barrier = None
                    await _written(barrier)
                if not self._drained.is_set() and q.under_release():
                    self._release()  # publishers go on while this batch is written
                if n:
                    counters.incr(cid, C.MSGS_OUT, n)
                    counters.incr(cid, C.BYTES_OUT, payload_bytes)
                    await self._write_frames(frames)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as exc:
            self.close(f"connection lost while writing ({exc or type(exc).__name__})")

    async def _write_frames(self, frames: list[bytes]) -> None:
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        transport = self._transport
        if transport is not None:
            if transport.is_closing():
                raise ConnectionResetError("socket closed")
            if self._co:
                self._flush_coalesced()
            transport.write(data)
            if self._stream_writer is not None:
                await self._stream_writer.drain()
        else:
            if self._co:
                self._flush_coalesced()
            self.writer.write(data)
            await self._ws_drain()
        if self._fire_tx:
            for frame in frames:
                packet = await PublishPacket.from_stream(BufferReader(frame))
                await self.plugins_manager.fire_event(MQTTEvents.PACKET_SENT, packet=packet, session=self.session)

    # -- keep-alive ----------------------------------------------------------------------------
    def due(self) -> None:
        """The keep-alive wheel's call (engine/deadlines.py Wheel): the connection's keep-alive time has come."""
        self._ka_slot = -1
        wheel = self._ka_wheel
        if self._closing or wheel is None:
            return
        now = self._loop.time()
        deadline = self._last_rx + self._ka_limit
        if now >= deadline and self._idle:
            ka = self.session.keep_alive if self.session else 0
            self.close(
                f"keep-alive timeout: nothing received for {self._ka_limit:g} s (1.5 x keep-alive {ka} s)", KEEP_ALIVE
            )
            return
        self._ka_slot = wheel.add(self, max(deadline, now + 0.5))

    def _keepalive_off(self) -> None:
        if self._ka_slot >= 0 and self._ka_wheel is not None:
            self._ka_wheel.remove(self, self._ka_slot)
        self._ka_slot = -1

    # -- reading -------------------------------------------------------------------------------
    async def _read_chunk(self) -> bytes:
        if self._leftover:
            chunk, self._leftover = self._leftover, b""
            return chunk
        reader = self.reader
        data: bytes
        if isinstance(reader, StreamReaderAdapter):
            data = await reader._reader.read(READ_CHUNK)  # noqa: SLF001 - amqtt's adapter wraps the stream
            return data
        if isinstance(reader, WebSocketsReader):
            data = reader._stream.read()  # noqa: SLF001 - bytes that came with the CONNECT's message
            if data:
                return data
            try:
                message = await reader._protocol.recv()  # noqa: SLF001 - amqtt's adapter wraps the connection
            except ConnectionClosed:
                return b""
            return message.encode() if isinstance(message, str) else bytes(message)
        data = await reader.read(READ_CHUNK)
        return data

    async def _reader_loop(self, inline: bool = False) -> bool:
        """Read chunks, act on every whole packet in them, in order. Every PUBLISH goes through `_publish`
        (QoS 0/1 without RETAIN routed by a plain call, no coroutine per packet), a PUBACK is handled
        inline, every other packet goes through `_dispatch`. After a PUBLISH the reader waits while a
        subscriber it fed is over its hold mark (flow control), before it looks at the next packet.
        `inline`: it runs in the connection's own task (`serve`); True if the connection ended with the
        client's DISCONNECT.

        A TCP/TLS connection's bytes are taken straight from its MqttStream (`take`), and while none are
        buffered the reader awaits the stream's Future in this frame: no coroutine per chunk, and an
        idle connection suspended in two frames fewer (issue 15 item 4)."""
        if inline:
            if self._closing:  # closed (kick, take-over) before it started
                return False
            self._reader_task = asyncio.current_task(self._loop)
            self._inline = True
        reader = self.reader
        stream = reader._reader if type(reader) is TcpReader else None  # noqa: SLF001 - our MqttStream inside
        clean = False
        buf = bytearray()  # the incomplete packet left over from the previous chunk
        max_packet = self._max_packet
        router = self._router
        session = self.session
        assert router is not None and session is not None and self.queue is not None
        fast = self._route_now is not None  # runs of synchronous PUBLISH routing: quota stretches
        whole = not self._fire_rx  # no PACKET_RECEIVED listener to await before each PUBLISH
        queue = self.queue
        publish = self._publish5 if self.level == MQTT5 else self._publish
        open_stretch = router.open_stretch
        client = session.guard_client
        try:
            while True:
                if stream is not None and not self._leftover:
                    chunk = stream.take(READ_CHUNK)
                    if chunk is None:
                        self._idle = True
                        while chunk is None:
                            await stream.readable()
                            chunk = stream.take(READ_CHUNK)
                        self._idle = False
                else:
                    self._idle = True
                    chunk = await self._read_chunk()
                    self._idle = False
                if not chunk:
                    self.end_reason = self.end_reason or "connection closed by the client without DISCONNECT"
                    return False
                self._last_rx = self._loop.time()
                if buf:
                    buf += chunk
                    data: bytes | bytearray = buf
                else:
                    data = chunk
                pos, end = 0, len(data)
                if fast:
                    self._stretch = open_stretch(client, end)
                while pos < end:
                    if pos + 1 < end and data[pos + 1] < 0x80:  # remaining length in one byte
                        first, length, hlen = data[pos], data[pos + 1], 2
                    else:
                        try:
                            first, length, hlen = parse_fixed_header(data, pos)
                        except Incomplete:
                            break
                    if max_packet and hlen + length > max_packet:
                        raise too_large(first, hlen + length, max_packet)
                    start = pos + hlen
                    stop = start + length
                    if stop > end:
                        break
                    if (first & 0xF0) == 0x30 and whole:  # PUBLISH
                        held = publish(first, data, pos, start, stop)
                        pos = stop
                        if held is not None or self._must_drain:
                            self._flush_in()
                            if isinstance(held, list):
                                held = self._gate_writes(held)  # (its ack is the last coalesced frame)
                            elif held is not None:
                                held = await held  # the rest of a PUBLISH that is not routed synchronously
                            await self._wait_held(held)
                            if fast:
                                self._stretch = open_stretch(client, end - pos)
                        continue
                    if first == 0x40 and length == 2:  # PUBACK
                        if queue.acked((data[start] << 8) | data[start + 1]):
                            self.wake()
                        pos = stop
                        continue
                    body = bytes(data[start:stop])
                    pos = stop
                    self._flush_in()
                    ended = await self._dispatch(first, body)
                    if ended:
                        if ended == WITH_WILL:  # MQTT 5 DISCONNECT 0x04: ends as if the link were lost
                            self.end_reason = "DISCONNECT with will message (0x04)"
                            return False
                        clean = True
                        self.end_reason = None
                        return True
                if pos >= end:
                    buf = bytearray()
                elif data is buf:
                    del buf[:pos]
                else:
                    buf = bytearray(data[pos:])
                if self._n_in or self._stretch is not None:
                    self._flush_in()
        except ProtocolViolation as exc:
            self._protocol_error(exc.reason)
            if self.level == MQTT5:  # told why first [MQTT-4.13.1-1]
                self.close(f"protocol violation: {exc.reason}", exc.code)
        except asyncio.CancelledError:
            self.end_reason = self.end_reason or "disconnected by the server"
            if self._inline:  # the reader runs in the connection's own task
                if not self._closing:
                    raise  # cancelled from outside: the task ends (its session still ends cleanly)
                task = asyncio.current_task()  # close() cancelled it to stop the reading: it goes on
                if task is not None:
                    task.uncancel()
        except (ConnectionError, OSError) as exc:
            self.end_reason = f"connection lost ({exc or type(exc).__name__})"
        except Exception as exc:  # a bug must end this connection, not the broker
            log.exception("client %r: internal error while handling its packets", self.client_id)
            self.end_reason = f"internal error ({type(exc).__name__})"
        finally:
            self._flush_in()
            self._idle = False
            self._closing = True
            self._release()
            self._keepalive_off()
            self._ended(clean)
            if inline:
                self._inline = False
                self._reader_task = None  # the task goes on with the session's end: close() must not cancel it
        return bool(self._clean)

    def _flush_in(self) -> None:
        """Settle the run's quota stretch and add the PUBLISH counts of the reader to the counters (once
        per chunk, not per message). Called before the reader awaits anything."""
        st = self._stretch
        if st is not None:
            self._stretch = None
            if self._router is not None:
                self._router.settle_stretch(st)
        n = self._n_in
        if n and self._counters is not None:
            counters = self._counters
            counters.incr(self.client_id, C.MSGS_IN, n)
            counters.incr(self.client_id, C.BYTES_IN, self._b_in)
            self._n_in = self._b_in = 0

    def _publish(
        self, first: int, data: bytes | bytearray, pos: int, start: int, stop: int
    ) -> Held | Coroutine[Any, Any, Held]:
        """Every PUBLISH, whole in `data[pos:stop]` (its body from `start`): the one place the reader
        parses and validates one. QoS 0/1 without RETAIN is routed here by a plain call when the broker
        allows it (`Router.publish`), and a QoS 1 PUBACK coalesced with the connection's writes; then the
        result is the Events of subscribers over their hold mark (flow control), or None. Anything else
        returns the coroutine (`_publish_awaited`) the reader awaits, once it has settled its run."""
        if stop - start < 2:
            raise ProtocolViolation("malformed PUBLISH: truncated")
        ts = start + 2
        te = ts + ((data[start] << 8) | data[start + 1])
        if te > stop:
            raise ProtocolViolation("malformed PUBLISH: a length field runs past the end of the packet")
        topic_raw = bytes(data[ts:te])
        topic = self._topics.get(topic_raw)
        if topic is None:
            topic = self._new_topic(topic_raw)
        if first & 0x06:  # QoS 1 or 2: a packet identifier follows the topic
            if first & 0x06 == 0x06:
                raise ProtocolViolation("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
            if te + 2 > stop:
                raise ProtocolViolation("malformed PUBLISH: truncated")
            pid = (data[te] << 8) | data[te + 1]
            if pid == 0:
                raise ProtocolViolation("PUBLISH with packet identifier 0 [MQTT-2.3.1-1]")
            plen = stop - te - 2
            self._n_in += 1
            self._b_in += plen
            route = self._route_now
            if route is None or first & 0x05:  # QoS 2, RETAIN, or plugins to await
                return self._publish_awaited(topic, topic_raw, bytes(data[te + 2 : stop]), (first >> 1) & 3, pid, first)
            held: Held = route(self.session, topic, topic_raw, bytes(data[te + 2 : stop]), plen, 1, None)
            self._ack(bytes((0x40, 2, pid >> 8, pid & 0xFF)))  # PUBACK
            return held
        plen = stop - te
        self._n_in += 1
        self._b_in += plen
        route = self._route_now
        if route is None or first & 0x01:  # RETAIN, or plugins to await
            return self._publish_awaited(topic, topic_raw, bytes(data[te:stop]), 0, 0, first)
        if first == 0x30:  # the packet as received is the QoS 0 frame every subscriber gets
            held = route(self.session, topic, topic_raw, None, plen, 0, bytes(data[pos:stop]))
            return held
        held = route(self.session, topic, topic_raw, bytes(data[te:stop]), plen, 0, None)
        return held

    def _publish5(
        self, first: int, data: bytes | bytearray, pos: int, start: int, stop: int
    ) -> Held | Coroutine[Any, Any, Held]:
        """`_publish` for an MQTT 5 client (chosen once per connection: the 3.1.1 path has no test of the
        level). Its property block follows the packet id: when empty (one zero byte, most messages) it is
        skipped and the connection's shared Message5 goes with the message; otherwise it is parsed and
        validated (engine/mqtt5.py), a Topic Alias resolved or set, a payload that is not the UTF-8 its
        Payload Format Indicator claims is refused (PUBACK/PUBREC 0x99, dropped at QoS 0 [MQTT-3.3.2-4])."""
        if stop - start < 2:
            raise ProtocolViolation("malformed PUBLISH: truncated")
        ts = start + 2
        te = ts + ((data[start] << 8) | data[start + 1])
        if te > stop:
            raise ProtocolViolation("malformed PUBLISH: a length field runs past the end of the packet")
        qos = (first >> 1) & 3
        pid = 0
        p = te
        if qos:
            if qos == 3:
                raise ProtocolViolation("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
            if te + 2 > stop:
                raise ProtocolViolation("malformed PUBLISH: truncated")
            pid = (data[te] << 8) | data[te + 1]
            if pid == 0:
                raise ProtocolViolation("PUBLISH with packet identifier 0 [MQTT-2.3.1-1]")
            p = te + 2
        if p >= stop:
            raise ProtocolViolation("malformed PUBLISH: no property length")
        msg = self._msg5
        plain = data[p] == 0
        if plain:  # no properties (most messages)
            body = p + 1
            if te == ts:
                raise mqtt5.protocol_error("PUBLISH with an empty topic and no Topic Alias [MQTT-3.3.2-1]")
            topic_raw = bytes(data[ts:te])
            topic = self._topics.get(topic_raw)
            if topic is None:
                topic = self._new_topic(topic_raw)
        else:
            c = Cursor(data[p:stop], "PUBLISH")
            props = mqtt5.read_properties(c, "PUBLISH")
            body = p + c.pos
            alias = props.get(mqtt5.TOPIC_ALIAS)
            if alias is not None:
                topic, topic_raw = self._alias(alias, data[ts:te])
            else:
                if te == ts:
                    raise mqtt5.protocol_error("PUBLISH with an empty topic and no Topic Alias [MQTT-3.3.2-1]")
                topic_raw = bytes(data[ts:te])
                topic = self._topics.get(topic_raw) or self._new_topic(topic_raw)
            if props.get(mqtt5.PAYLOAD_FORMAT) == 1:
                try:
                    bytes(data[body:stop]).decode("utf-8")
                except UnicodeDecodeError:
                    self._n_in += 1
                    self._b_in += stop - body
                    if qos:
                        kind = PUBACK if qos == 1 else PUBREC
                        self._ack(self._refusal_ack(kind, pid, Reason.PAYLOAD_FORMAT_INVALID))
                    return None
            q = p + 1  # the property list starts after its length
            while data[q - 1] & 0x80:
                q += 1
            carried = mqtt5.message_of(props, self.queue, bytes(data[q:body]))
            if carried is not None:
                msg = carried
        plen = stop - body
        self._n_in += 1
        self._b_in += plen
        route = self._route_now
        if route is None or first & 0x05:  # QoS 2, RETAIN, or plugins to await
            return self._publish_awaited(topic, topic_raw, bytes(data[body:stop]), qos, pid, first, msg)
        held: Held
        if not qos:
            if first == 0x30 and plain:  # the packet as received is the MQTT 5 QoS 0 frame (see Router.publish)
                held = route(self.session, topic, topic_raw, None, plen, 0, bytes(data[pos:stop]), msg)
                return held
            held = route(self.session, topic, topic_raw, bytes(data[body:stop]), plen, 0, None, msg)
            return held
        # the broker says in the session's Client5 why it refused the message (0x87 denied, 0x97 over quota),
        # and whether nothing matched it (`Router.no_match`: 0x10 No matching subscribers)
        c5: Client5 = self.session.v5  # type: ignore[union-attr,assignment]  # both set on an MQTT 5 connection
        c5.refused = 0
        router = self._router
        router.no_match = False  # type: ignore[union-attr]  # set with _route_now
        held = route(self.session, topic, topic_raw, bytes(data[body:stop]), plen, qos, None, msg)
        code = c5.refused or (Reason.NO_MATCHING_SUBSCRIBERS if router.no_match else 0)  # type: ignore[union-attr]
        self._ack(self._refusal_ack(PUBACK, pid, code) if code else bytes((0x40, 2, pid >> 8, pid & 0xFF)))
        return held

    def _refusal_ack(self, kind: int, pid: int, code: int) -> bytes:
        """An MQTT 5 PUBACK/PUBREC/PUBCOMP with reason `code`: a failure (>= 0x80) carries its short Reason
        String unless the client set Request Problem Information 0 [MQTT-3.1.2-29] or the packet would
        exceed its Maximum Packet Size [MQTT-3.1.2-25]. (Off the hot path: only refusals come here, and
        0x10 No matching subscribers, which has no Reason String.)"""
        c5 = self.session.v5 if self.session is not None else None
        if c5 is None or not c5.problem_info or code < 0x80:
            return mqtt5.encode_ack(kind, pid, code)
        return mqtt5.encode_ack(kind, pid, code, reason_string(code), c5.max_packet)

    def _alias(self, alias: int, raw: bytes | bytearray) -> tuple[str, bytes]:
        """An MQTT 5 Topic Alias (client to server, per connection, 3.3.2.3.4): with a topic it is set,
        without one it stands for the topic set last. (mosquitto's reason codes: 0x94 for an alias above
        the maximum, 0x82 for one never set.)"""
        if alias > self._alias_max:
            raise ProtocolViolation(
                f"PUBLISH Topic Alias {alias} above the Topic Alias Maximum {self._alias_max} [MQTT-3.3.2-9]",
                code=Reason.TOPIC_ALIAS_INVALID,
            )
        aliases = self._aliases
        if aliases is None:
            aliases = self._aliases = {}
        if raw:
            topic_raw = bytes(raw)
            topic = self._topics.get(topic_raw) or self._new_topic(topic_raw)
            aliases[alias] = (topic, topic_raw)
            return topic, topic_raw
        known = aliases.get(alias)
        if known is None:
            raise mqtt5.protocol_error(f"PUBLISH with Topic Alias {alias} that was never set (3.3.2.3.4)")
        return known

    async def _publish_awaited(
        self,
        topic: str,
        topic_raw: bytes,
        payload: bytes,
        qos: int,
        pid: int,
        first: int,
        props: Message5 | None = None,
    ) -> Held:
        """A PUBLISH `_publish` validated that is routed through the broker's awaited path (QoS 2,
        RETAIN, plugins that must be awaited), then acknowledged. An inbound QoS 2 message is routed when
        it arrives; its packet id is remembered until PUBREL, so a re-sent PUBLISH (DUP) is not routed
        twice."""
        router, q, session = self._router, self.queue, self.session
        assert router is not None and q is not None and session is not None
        retain = bool(first & 0x01)
        c5 = session.v5 if props is not None else None  # an MQTT 5 client: the broker says why it refused
        if c5 is not None:
            c5.refused = 0
        if qos == 2:
            held = None
            co = self._co
            mark = len(co)
            if pid not in q.qos2_in:
                if props is not None and len(q.qos2_in) >= self._receive_max:
                    raise ProtocolViolation(
                        f"more than Receive Maximum {self._receive_max} QoS 2 PUBLISH unacknowledged [MQTT-3.3.4-9]",
                        code=Reason.RECEIVE_MAXIMUM_EXCEEDED,
                    )
                try:
                    held = await router.handle_publish(session, topic, topic_raw, payload, 2, retain, props)
                except NotStored as exc:
                    return self._not_stored(exc, PUBREC, pid, props)
                if c5 is not None and c5.refused:  # PUBREC 0x87/0x97 ends the exchange: the id is free again
                    await self.send(self._refusal_ack(PUBREC, pid, c5.refused))
                    return self._gate_writes(held, False) if held else held
                q.qos2_in.add(pid)
                held = router.collect_writes(held)
                unmatched = c5 is not None and router.no_match
            else:
                unmatched = False  # (a re-sent PUBLISH: routed the first time only, its PUBREC said it then)
            # The PUBREC goes ahead of what routing coalesced (`emit`): a client subscribed to its own
            # topic gets it before the delivery of its message, as from mosquitto (which routes at PUBREL).
            # Acks coalesced before stay before it [MQTT-4.6.0-3]; a list flushed meanwhile held none.
            # (0x10 No matching subscribers is a success: the exchange goes on with PUBREL.)
            self._ack(
                mqtt5.encode_ack(PUBREC, pid, Reason.NO_MATCHING_SUBSCRIBERS) if unmatched else encode_ack(PUBREC, pid)
            )
            if self._co is not co:
                co, mark = self._co, 0
            if self._gates:  # (behind an earlier Gate: it stays last)
                mark = len(co) - 1
            if len(co) - 1 > mark:
                co.insert(mark, co.pop())
            if held:
                events, writes = _split_writes(held)
                if writes:  # the PUBREC waits for the writes (persistent subscribers, its packet id)
                    gate = Gate(writes)
                    co.insert(mark, gate)
                    self._gates += 1
                    if self._max_stall > 0:
                        self._loop.call_later(self._max_stall, self._gate_stalled, gate)
                held = events
            return held
        try:
            held = await router.handle_publish(session, topic, topic_raw, payload, qos, retain, props)
        except NotStored as exc:
            return self._not_stored(exc, PUBACK, pid, props)
        if held:
            events, writes = _split_writes(held)
            if writes:
                self._gate(writes, False)
            held = events
        if qos == 1:
            code = 0
            if c5 is not None:
                code = c5.refused or (Reason.NO_MATCHING_SUBSCRIBERS if router.no_match else 0)
            await self.send(self._refusal_ack(PUBACK, pid, code) if code else encode_ack(PUBACK, pid))
        return held

    def _not_stored(self, exc: NotStored, kind: int, pid: int, props: Message5 | None) -> Held:
        """A QoS 1/2 PUBLISH not written to Redis (NotStored): never acknowledged as accepted."""
        if props is not None and not exc.timeout:
            self._ack(self._refusal_ack(kind, pid, Reason.UNSPECIFIED_ERROR))
        else:  # (from outside the reader's task, so that close() stops the reader, as a kick does)
            self._loop.call_soon(self.close, str(exc), Reason.SERVER_BUSY)
        return None

    def _new_topic(self, topic_raw: bytes) -> str:
        topic = decode_utf8(topic_raw, "PUBLISH topic")
        check_topic_name(topic, "PUBLISH topic")
        check_topic_levels(topic, "PUBLISH topic", self._max_levels, Reason.PROTOCOL_ERROR)
        if len(self._topics) >= TOPIC_CACHE:
            self._topics.clear()
        self._topics[topic_raw] = topic
        return topic

    def _gate_writes(self, held: list[Any], before_last: bool = True) -> Held:
        """A synchronously routed PUBLISH whose `held` has Redis write Futures: its ack (the last frame
        coalesced) waits behind a Gate. Returns the flow-control Events."""
        for x in held:
            if type(x) is not asyncio.Event:
                break
        else:
            return held
        events, writes = _split_writes(held)
        if writes:
            self._gate(writes, before_last)
        return events

    async def _wait_held(self, held: Held) -> None:
        """Flow control: wait until every subscriber in `held` is back under its release mark (or is
        declared a slow consumer, or goes away); and until acks written past the high-water mark are out
        (acks behind a Gate: until Redis confirmed the writes, or the stall timer closes the connection)."""
        if held:
            for ev in held:
                if not ev.is_set():
                    await ev.wait()
        if self._must_drain:
            while self._gates and not self._closing:
                for item in self._co:
                    if type(item) is Gate and not item.done():
                        await _written(item.pending())
                        break
                else:
                    break
                self._flush_coalesced()
            self._must_drain = False
            self._flush_coalesced()
            if self._stream_writer is not None and self._transport is not None and not self._transport.is_closing():
                await self._stream_writer.drain()

    def _protocol_error(self, reason: str) -> None:
        self.end_reason = f"protocol violation: {reason}"
        if self._counters is not None:
            self._counters.incr(self.client_id, C.PROTOCOL_ERRORS)

    async def _dispatch(self, first: int, body: bytes) -> int:
        """Act on one complete packet other than PUBACK (and PUBLISH, unless PACKET_RECEIVED listeners
        must see it first); 1 when it was a DISCONNECT, WITH_WILL when an MQTT 5 one asked for the will."""
        ptype = first >> 4
        flags = first & 0x0F
        if self._fire_rx:
            await self._fire_received(first, body)
        if ptype == PUBLISH:  # (`_route_now` is None while packets are fired: `_publish` returns a coroutine)
            publish = self._publish5 if self.level == MQTT5 else self._publish
            pending = publish(first, body, 0, 0, len(body))
            self._flush_in()
            held = await pending if pending is not None and not isinstance(pending, list) else pending
            await self._wait_held(held)
            return False
        name = TYPE_NAMES.get(ptype, "?")
        if flags != (0x02 if ptype in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0):
            raise ProtocolViolation(f"{name} with invalid fixed-header flags {flags:#x} [MQTT-2.2.2-2]")
        q, router, session = self.queue, self._router, self.session
        assert q is not None and router is not None and session is not None
        v5 = self.level == MQTT5
        if ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            reason = 0
            if len(body) == 2:
                pid = (body[0] << 8) | body[1]
            elif v5 and len(body) > 2:  # reason code and properties (3.4.2): read, validated, accepted
                pid, reason = mqtt5.parse_ack(body, name)
            else:
                raise ProtocolViolation(f"malformed {name}: remaining length {len(body)}, expected 2")
            if ptype == PUBACK:
                if q.acked(pid):
                    self.wake()
            elif ptype == PUBREC:
                if reason >= 0x80:  # the subscriber refused it: the QoS 2 flow ends here [MQTT-4.3.3-4]
                    if q.rejected(pid):
                        self.wake()
                else:
                    q.received(pid)  # (an unknown id is answered too, as mosquitto does)
                    await self.send(encode_ack(PUBREL, pid))
            elif ptype == PUBCOMP:
                if q.completed(pid):
                    self.wake()
            elif v5 and pid not in q.qos2_in:  # PUBREL of an id we do not know
                await self.send(self._refusal_ack(PUBCOMP, pid, Reason.PACKET_IDENTIFIER_NOT_FOUND))
            else:  # PUBREL: the inbound QoS 2 message was routed when it arrived
                q.qos2_in.discard(pid)
                await self.send(encode_ack(PUBCOMP, pid))
            return False
        if ptype == DISCONNECT and v5:
            return self._disconnect5(body)
        if ptype == PINGREQ or ptype == DISCONNECT:
            if body:
                raise ProtocolViolation(f"malformed {name}: remaining length {len(body)}, expected 0")
            if ptype == DISCONNECT:
                return True
            await self.send(PINGRESP_BYTES)
            return False
        if ptype == SUBSCRIBE:
            sub = parse_subscribe(body, self.level)
            for topic_filter, _ in sub.filters:
                check_topic_levels(topic_filter, "SUBSCRIBE topic filter", self._max_levels)
            await router.handle_subscribe(session, self, sub.packet_id, sub.filters, sub.sub_id)
            return False
        if ptype == UNSUBSCRIBE:
            pid, topic_filters = parse_unsubscribe(body, self.level)
            for topic_filter in topic_filters:
                check_topic_levels(topic_filter, "UNSUBSCRIBE topic filter", self._max_levels)
            existed = await router.handle_unsubscribe(session, topic_filters)
            if v5:
                codes: list[int] = [Reason.SUCCESS if e else Reason.NO_SUBSCRIPTION_EXISTED for e in existed]
                await self.send(mqtt5.encode_unsuback(pid, codes))
            else:
                await self.send(encode_ack(UNSUBACK, pid))
            return False
        if ptype == AUTH and v5:  # no enhanced authentication was agreed in the CONNECT (4.12)
            raise mqtt5.protocol_error("AUTH without an Authentication Method in the CONNECT")
        if ptype == CONNECT:
            raise ProtocolViolation("second CONNECT on a connection [MQTT-3.1.0-2]", code=Reason.PROTOCOL_ERROR)
        raise ProtocolViolation(f"{name} is not a packet a client may send")

    def _disconnect5(self, body: bytes) -> int:
        """An MQTT 5 client's DISCONNECT (3.14): reason 0x04 asks for the will (as mosquitto, any other
        reason discards it); a Session Expiry Interval replaces the CONNECT's, but not a 0 there
        [MQTT-3.14.2-2]; 0 now ends the session with the connection."""
        reason, props = mqtt5.parse_disconnect(body)
        expiry = props.get(mqtt5.SESSION_EXPIRY)
        c5 = self.session.v5 if self.session is not None else None
        if expiry is not None and c5 is not None:
            if expiry and not c5.session_expiry:
                raise mqtt5.protocol_error("DISCONNECT sets a Session Expiry Interval after 0 [MQTT-3.14.2-2]")
            c5.session_expiry = expiry  # (the broker applies it when the connection ends)
        return WITH_WILL if reason == Reason.DISCONNECT_WITH_WILL else 1

    async def _fire_received(self, first: int, body: bytes) -> None:
        """PACKET_RECEIVED for plugins that listen to it (amqtt packet objects are built only then)."""
        try:
            header = MQTTFixedHeader(first >> 4, first & 0x0F, len(body))
            packet = await packet_class(header).from_stream(BufferReader(body), fixed_header=header)
        except Exception:  # noqa: BLE001 - invalid packets are rejected by the reader itself
            return
        await self.plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet, session=self.session)
