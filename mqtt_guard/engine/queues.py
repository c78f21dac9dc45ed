"""Per-session delivery state: the bounded outgoing queue, the in-flight window and inbound QoS 2 ids.

amqtt has no outgoing queue object: every delivery is its own asyncio Task waiting on the handler's
write lock, so a subscriber that stops reading grows the broker without bound (research: +133 MB for
one stalled socket), and QoS 1 deliveries are dropped after a hard-coded 5 s PUBACK timeout.

Here each session owns one `OutQueue`. Routing offers each delivery to it synchronously. While the
client's socket keeps up (its transport buffer below the high-water mark) and nothing is waiting, the
delivery is encoded at once and handed to the connection (`port.emit`), which coalesces everything
emitted in one loop iteration into one write(). Otherwise it waits in `pending`, and the session's
single writer loop (engine/handler.py) takes whole batches from there as the socket drains; nothing
else holds messages, so `pending` is the real backlog of a slow consumer. The queue lives on the
Session, not on the connection, so a persistent session (clean_session=0) keeps its QoS 1/2 messages
and its unacknowledged in-flight messages across a reconnect, where the in-flight ones are sent again
with DUP [MQTT-4.4.0-1].

Limits (mosquitto semantics): `max_queued_messages` / `max_queued_bytes` bound the messages waiting
to be sent, above the in-flight window of `max_inflight_messages` QoS 1/2 messages sent but not yet
acknowledged. Past a limit a message is dropped and the caller counts it. An offline session queues
only QoS 1/2 (as mosquitto with queue_qos0_messages false).

Flow control (docs/engine.md): once half the limits wait (`over_hold`), the router asks the connection
to hold the publishers that feed it (`port.hold()`); the writer loop releases them once the queue is
down to a quarter of that (`under_release`). A session that held publishers longer than
`limits.backpressure_max_stall` is `slow`: it holds nobody until its queue has drained completely.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from typing import Protocol

from ..reasons import Reason
from . import mqtt5
from .protocol import PUBREL, ProtocolViolation, encode_ack, encode_publish

# Backpressure marks when the queue limits do not give smaller ones (see OutQueue.hold_messages)
HOLD_MESSAGES = 1000
HOLD_BYTES = 1024 * 1024

# Delivery states
QUEUED = 0
WAIT_ACK = 1  # QoS 1 sent, waiting for PUBACK; QoS 2 sent, waiting for PUBREC
WAIT_COMP = 2  # QoS 2 PUBREL sent, waiting for PUBCOMP


class Delivery:
    __slots__ = ("payload", "qos", "retain", "packet_id", "state", "topic", "size", "frame", "plen")

    def __init__(self, topic: bytes, payload: bytes, qos: int, retain: bool) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.packet_id = 0
        self.state = QUEUED
        self.size = len(payload) + len(topic)
        self.frame: bytes | None = None  # QoS 0: the encoded PUBLISH, shared by every subscriber
        self.plen = len(payload)


class Delivery5(Delivery):
    """A delivery to an MQTT 5 subscriber: its property list (`props`: the forwarded properties and
    the subscription identifiers, without the length) and the message's expiry deadline (`expires`,
    `time.monotonic()`; 0.0: none), whose time left is added when the frame is encoded."""

    __slots__ = ("props", "expires")

    def __init__(self, topic: bytes, payload: bytes, qos: int, retain: bool, props: bytes, expires: float) -> None:
        super().__init__(topic, payload, qos, retain)
        self.props = props
        self.expires = expires


def _publish_size(d: Delivery, now: float) -> int:
    """The size of `d`'s MQTT 5 PUBLISH (its frame when already encoded)."""
    return len(d.frame) if d.frame else len(encode5(d, False, now))


def encode5(d: Delivery, dup: bool, now: float = 0.0) -> bytes:
    """The MQTT 5 PUBLISH of `d` (a plain Delivery has no properties: one queued while the session was
    3.1.1, or a message with nothing of its own, `offer5`). `now`: `time.monotonic()`, read here when 0.0
    and the message has an expiry."""
    props = b""
    if type(d) is Delivery5:
        props = d.props
        if d.expires:
            props += mqtt5.expiry_property(d.expires, now or time.monotonic())
    return mqtt5.encode_publish(d.topic, d.payload, d.qos, d.retain, dup, d.packet_id, props)


# The `pending` of every queue that never had to wait (most of them): a deque allocates a 64-entry block
# (~0.6 KB) when made, so each queue gets its own only when a message first has to wait (`offer`, `offer0`).
# Nothing is ever appended to this one (maxlen 0 would drop it silently): those two replace it first.
_NO_PENDING: deque[Delivery] = deque(maxlen=0)


class Port(Protocol):
    """What a connected session's handler offers its queue."""

    def writable(self) -> bool: ...  # the socket keeps up: emit now instead of queueing

    def emit(self, frame: bytes, payload_len: int) -> None: ...  # write soon (coalesced)

    def wake(self) -> None: ...  # pending has work for the writer loop

    def hold(self) -> asyncio.Event | None: ...  # over the hold mark: the Event publishers wait on (routing asks)


class OutQueue:
    """Messages for one session. Not thread-safe; everything runs on the broker's event loop."""

    __slots__ = (
        "pending",
        "inflight",
        "pending_bytes",
        "inflight_bytes",
        "max_messages",
        "max_bytes",
        "max_inflight",
        "_next_id",
        "port",
        "online",
        "qos2_in",
        "hold_messages",
        "hold_bytes",
        "release_messages",
        "release_bytes",
        "slow",
        "limit_inflight",
        "level5",
        "max_packet",
        "expired",
        "barrier",
        "held",
        "window",
    )

    def __init__(self, max_messages: int, max_bytes: int, max_inflight: int) -> None:
        self.pending: deque[Delivery] = _NO_PENDING  # a deque of its own once something waits
        self.inflight: OrderedDict[int, Delivery] = OrderedDict()
        self.pending_bytes = 0
        self.inflight_bytes = 0
        self.max_messages = max_messages  # 0 = unlimited
        self.max_bytes = max_bytes  # 0 = unlimited
        self.max_inflight = max(1, min(max_inflight, 65535)) if max_inflight else 65535
        self._next_id = 0
        self.port: Port | None = None  # set while a connection serves the queue
        self.online = False
        self.qos2_in: set[int] = set()  # inbound QoS 2 ids routed and PUBREC'd, waiting for PUBREL
        # Backpressure (docs/engine.md, "Flow control"): with this much waiting, the publishers that feed
        # the session pause until it is back under the release marks; half the queue limits (so the
        # pause starts well before anything is dropped), and at most 1000 messages / 1 MiB.
        self.hold_messages = max(1, max_messages // 2) if max_messages else HOLD_MESSAGES
        self.hold_bytes = max(1, max_bytes // 2) if max_bytes else HOLD_BYTES
        self.hold_messages = min(self.hold_messages, HOLD_MESSAGES)
        self.hold_bytes = min(self.hold_bytes, HOLD_BYTES)
        self.release_messages = self.hold_messages // 4
        self.release_bytes = self.hold_bytes // 4
        self.slow = False  # held publishers longer than limits.backpressure_max_stall: no longer holds them
        # MQTT 5 (set by each connection that serves the queue, `serve_level`): frames in the v5 form, the
        # in-flight window bounded by the client's Receive Maximum too, its Maximum Packet Size (0: none)
        self.limit_inflight = self.max_inflight
        self.level5 = False
        self.max_packet = 0
        self.expired = 0  # messages whose expiry interval ran out while they waited (dropped)
        # A persistent session's queue (engine/durable.py): the Redis write the frames `take` just returned
        # must wait for (a QoS 2 delivery's packet id); the writer loop awaits it before writing them.
        self.barrier: asyncio.Future[None] | None = None
        # A resumed session with more unacknowledged QoS 1/2 PUBLISHes than the new connection's window
        # (its Receive Maximum [MQTT-3.3.4-9]): the ones not yet re-sent, in order (`resend_frames`); while
        # any wait, `max_inflight` is 0 (nothing new goes out ahead of them) and `window` the real one.
        self.held: deque[Delivery] = _NO_PENDING
        self.window = 0

    def serve_level(self, level5: bool, receive_max: int = 65535, max_packet: int = 0) -> None:
        """A connection of this protocol level serves the queue from now on: an MQTT 5 client's Receive
        Maximum bounds the in-flight window below `max_inflight_messages` [MQTT-3.3.4-7], and nothing
        larger than its Maximum Packet Size is sent to it (the broker drops such deliveries, counted)."""
        self.level5 = level5
        self.max_inflight = min(self.limit_inflight, receive_max) if level5 else self.limit_inflight
        self.max_packet = max_packet if level5 else 0
        self.held = _NO_PENDING

    def drop_too_large(self) -> int:
        """A resumed session's new connection accepts at most `max_packet` bytes a packet: messages held
        for it (queued, or sent and unacknowledged before the PUBREC) whose PUBLISH is larger are dropped
        as if sent [MQTT-3.1.2-24/25] (`forget`: a persistent session's copy leaves Redis too). Returns how
        many (the broker counts them as `dropped_too_large`). A QoS 2 message whose PUBREC came only needs
        its PUBREL, and is kept."""
        limit = self.max_packet
        if not limit:
            return 0
        now = time.monotonic()
        dropped = 0
        if self.pending:
            kept: deque[Delivery] = deque()
            for d in self.pending:
                if _publish_size(d, now) > limit:
                    self.pending_bytes -= d.size
                    self.forget(d)
                    dropped += 1
                else:
                    kept.append(d)
            if dropped:
                self.pending = kept
        for pid, d in list(self.inflight.items()):
            if d.state != WAIT_COMP and _publish_size(d, now) > limit:
                del self.inflight[pid]
                self.inflight_bytes -= d.size
                self.forget(d)
                dropped += 1
        return dropped

    def forget(self, d: Delivery) -> None:
        """`d` left the queue without being delivered (a persistent session removes it from Redis)."""

    # -- producer side (routing) -----------------------------------------------------------------
    def offer(self, topic: bytes, payload: bytes, qos: int, retain: bool) -> bool:
        """Queue a message; False when it was dropped because the queue is full. QoS 0 for an offline
        session is not queued and not reported as a drop (it would never be delivered anyway)."""
        if not self.online and qos == 0:
            return True
        size = len(payload) + len(topic)
        port = self.port
        if (
            port is not None
            and not self.pending
            and (qos == 0 or len(self.inflight) < self.max_inflight)
            and port.writable()
        ):
            packet_id = 0
            if qos:
                d = Delivery(topic, payload, qos, retain)
                packet_id = d.packet_id = self._allocate_id()
                d.state = WAIT_ACK
                self.inflight[packet_id] = d
                self.inflight_bytes += size
            port.emit(encode_publish(topic, payload, qos, retain, False, packet_id), len(payload))
            return True
        if (self.max_messages and len(self.pending) >= self.max_messages) or (
            self.max_bytes and self.pending_bytes + size > self.max_bytes
        ):
            return False
        pending = self.pending
        if pending is _NO_PENDING:
            pending = self.pending = deque()
        pending.append(Delivery(topic, payload, qos, retain))
        self.pending_bytes += size
        if port is not None:
            port.wake()
        return True

    def offer0(self, frame: bytes, payload_len: int, size: int) -> bool:
        """`offer` of a QoS 0 message already encoded (`frame`, shared by every subscriber of the
        message; `size` = topic + payload bytes, as the limits count)."""
        if not self.online:
            return True
        port = self.port
        if port is not None and not self.pending and port.writable():
            port.emit(frame, payload_len)
            return True
        if (self.max_messages and len(self.pending) >= self.max_messages) or (
            self.max_bytes and self.pending_bytes + size > self.max_bytes
        ):
            return False
        d = Delivery(b"", b"", 0, False)
        d.frame = frame
        d.size = size
        d.plen = payload_len
        pending = self.pending
        if pending is _NO_PENDING:
            pending = self.pending = deque()
        pending.append(d)
        self.pending_bytes += size
        if port is not None:
            port.wake()
        return True

    def offer5(self, topic: bytes, payload: bytes, qos: int, retain: bool, props: bytes, expires: float) -> bool:
        """`offer` to an MQTT 5 session: the frame carries `props` (forwarded properties and
        subscription identifiers) and the time left of `expires` (0.0: no expiry). The broker has
        checked the size against the client's Maximum Packet Size. (A message without properties or expiry
        is a plain Delivery: `encode5` sends it in the MQTT 5 form all the same.)"""
        if not self.online and qos == 0:
            return True
        size = len(payload) + len(topic)
        port = self.port
        if (
            port is not None
            and not self.pending
            and (qos == 0 or len(self.inflight) < self.max_inflight)
            and port.writable()
        ):
            d = (
                Delivery5(topic, payload, qos, retain, props, expires)
                if props or expires
                else Delivery(topic, payload, qos, retain)
            )
            if qos:
                d.packet_id = self._allocate_id()
                d.state = WAIT_ACK
                self.inflight[d.packet_id] = d
                self.inflight_bytes += size
            port.emit(encode5(d, False), len(payload))
            return True
        if (self.max_messages and len(self.pending) >= self.max_messages) or (
            self.max_bytes and self.pending_bytes + size > self.max_bytes
        ):
            return False
        pending = self.pending
        if pending is _NO_PENDING:
            pending = self.pending = deque()
        pending.append(
            Delivery5(topic, payload, qos, retain, props, expires)
            if props or expires
            else Delivery(topic, payload, qos, retain)
        )
        self.pending_bytes += size
        if port is not None:
            port.wake()
        return True

    def offer_expiring(self, topic: bytes, payload: bytes, qos: int, expires: float) -> bool:
        """`offer` to a 3.1.1 session of an MQTT 5 message with a Message Expiry Interval: sent now if it
        can be, else queued and dropped if it is still waiting when it expires [MQTT-3.3.2-5] (the
        3.1.1 frame has no room for the time left)."""
        port = self.port
        if (
            port is not None
            and not self.pending
            and (qos == 0 or len(self.inflight) < self.max_inflight)
            and port.writable()
        ) or (not self.online and qos == 0):
            return self.offer(topic, payload, qos, False)
        size = len(payload) + len(topic)
        if (self.max_messages and len(self.pending) >= self.max_messages) or (
            self.max_bytes and self.pending_bytes + size > self.max_bytes
        ):
            return False
        pending = self.pending
        if pending is _NO_PENDING:
            pending = self.pending = deque()
        pending.append(Delivery5(topic, payload, qos, False, b"", expires))
        self.pending_bytes += size
        if port is not None:
            port.wake()
        return True

    def over_hold(self) -> bool:
        """Enough is waiting that the publishers feeding this session should pause (not once slow)."""
        return not self.slow and (len(self.pending) >= self.hold_messages or self.pending_bytes >= self.hold_bytes)

    def under_release(self) -> bool:
        return len(self.pending) <= self.release_messages and self.pending_bytes <= self.release_bytes

    def depth(self) -> tuple[int, int]:
        """(messages, bytes) held for the session: waiting to be sent plus sent and unacknowledged."""
        return len(self.pending) + len(self.inflight), self.pending_bytes + self.inflight_bytes

    # -- consumer side (the writer loop) ---------------------------------------------------------
    def ready(self) -> bool:
        if self.held:
            return self._held_ready()
        if not self.pending:
            return False
        return self.pending[0].qos == 0 or len(self.inflight) < self.max_inflight

    def take(self, max_bytes: int) -> tuple[list[bytes], int, int]:
        """Encoded PUBLISH frames for up to about `max_bytes`, in order; QoS 1/2 ones move into the
        in-flight window. Stops at a QoS 1/2 message when the window is full, so order is kept.
        Returns (frames, messages, payload bytes)."""
        frames: list[bytes] = []
        total = payload_total = 0
        pending, inflight = self.pending, self.inflight
        level5 = self.level5
        now = time.monotonic()
        if self.held:
            total = self._take_held(frames, now)
        d5 = Delivery5
        while pending and total < max_bytes:
            d = pending[0]
            if type(d) is d5 and d.expires and d.expires <= now:
                pending.popleft()  # its Message Expiry Interval ran out while it waited [MQTT-3.3.2-5]
                self.pending_bytes -= d.size
                self.expired += 1
                continue
            if d.qos:
                if len(inflight) >= self.max_inflight:
                    break
                d.packet_id = self._allocate_id()
                d.state = WAIT_ACK
                inflight[d.packet_id] = d
                self.inflight_bytes += d.size
            pending.popleft()
            self.pending_bytes -= d.size
            if d.frame:
                frame = d.frame
            elif level5:
                frame = encode5(d, False, now)
            else:
                frame = encode_publish(d.topic, d.payload, d.qos, d.retain, False, d.packet_id)
            frames.append(frame)
            total += len(frame)
            payload_total += d.plen
        return frames, len(frames), payload_total

    def resend_frames(self) -> list[bytes]:
        """On a resumed session: the unacknowledged QoS 1/2 PUBLISHes again with DUP set and their packet
        ids, and PUBREL for QoS 2 messages whose PUBREC had arrived, in their original order
        [MQTT-4.4.0-1]. At most the new connection's window of PUBLISHes [MQTT-3.3.4-9]: the rest are held
        and go, in order, as acknowledgements free the window (`take`); nothing new goes before them."""
        frames = []
        now = time.monotonic()
        window = self.max_inflight
        held: deque[Delivery] = deque()
        sent = 0
        for d in self.inflight.values():
            if d.state == WAIT_COMP:
                frames.append(encode_ack(PUBREL, d.packet_id))
            elif sent >= window:
                held.append(d)
            else:
                sent += 1
                frames.append(self._dup_frame(d, now))
        if held:
            self.held = held
            self.window = window
            self.max_inflight = 0
        return frames

    def _dup_frame(self, d: Delivery, now: float) -> bytes:
        if self.level5:
            return encode5(d, True, now)
        return encode_publish(d.topic, d.payload, d.qos, d.retain, True, d.packet_id)

    def _prune_held(self) -> None:
        inflight = self.inflight
        held = self.held
        if any(inflight.get(d.packet_id) is not d for d in held):  # acknowledged before it was re-sent
            self.held = held = deque(d for d in held if inflight.get(d.packet_id) is d)
        if not held:
            self.held = _NO_PENDING
            self.max_inflight = self.window

    def _held_ready(self) -> bool:
        self._prune_held()
        if not self.held:
            return self.ready()
        return len(self.inflight) - len(self.held) < self.window

    def _take_held(self, frames: list[bytes], now: float) -> int:
        """Held re-sends (DUP, their packet ids) while the window has room; their bytes."""
        self._prune_held()
        total = 0
        held = self.held
        while held and len(self.inflight) - len(held) < self.window:
            frame = self._dup_frame(held.popleft(), now)
            frames.append(frame)
            total += len(frame)
        if not held:
            self.held = _NO_PENDING
            self.max_inflight = self.window
        return total

    def _allocate_id(self) -> int:
        nid = self._next_id
        inflight = self.inflight
        for _ in range(65536):
            nid = nid % 65535 + 1
            if nid not in inflight:
                self._next_id = nid
                return nid
        raise RuntimeError("no free packet id")  # unreachable: max_inflight <= 65535

    # An ack of the wrong kind for a delivery in flight is a protocol violation (the connection is closed);
    # one for an id not in flight is ignored. Both as mosquitto 2.0.11 (measured, docs/engine.md).
    def acked(self, packet_id: int) -> bool:
        """PUBACK: True if it completed a QoS 1 delivery."""
        d = self.inflight.get(packet_id)
        if d is None:
            return False
        if d.qos != 1:
            raise _wrong_ack("PUBACK", d)
        del self.inflight[packet_id]
        self.inflight_bytes -= d.size
        return True

    def received(self, packet_id: int) -> bool:
        """PUBREC: True if it matched a QoS 2 delivery waiting for it (now waiting for PUBCOMP)."""
        d = self.inflight.get(packet_id)
        if d is None:
            return False
        if d.qos != 2:
            raise _wrong_ack("PUBREC", d)
        if d.state == WAIT_ACK:
            d.state = WAIT_COMP
            self.inflight_bytes -= d.size  # the payload is no longer needed
            d.payload = b""
            d.size = 0
        return True

    def rejected(self, packet_id: int) -> bool:
        """An MQTT 5 PUBREC with a failure reason code: the QoS 2 delivery ends there, no PUBREL
        [MQTT-4.3.3-4]. True if it freed a place in the in-flight window."""
        d = self.inflight.get(packet_id)
        if d is None:
            return False
        if d.qos != 2 or d.state != WAIT_ACK:
            raise _wrong_ack("PUBREC", d)  # (one rule with `received`: the wrong kind of ack closes)
        del self.inflight[packet_id]
        self.inflight_bytes -= d.size
        return True

    def completed(self, packet_id: int) -> bool:
        """PUBCOMP: True if it completed a QoS 2 delivery."""
        d = self.inflight.get(packet_id)
        if d is None:
            return False
        if d.qos != 2 or d.state != WAIT_COMP:
            raise _wrong_ack("PUBCOMP", d)
        del self.inflight[packet_id]
        self.inflight_bytes -= d.size
        return True

    # -- connection changes ----------------------------------------------------------------------
    def go_offline(self) -> None:
        """The connection ended and the session persists: QoS 0 messages not yet sent are dropped."""
        self.online = False
        self.port = None
        self.slow = False
        if any(d.qos == 0 for d in self.pending):
            kept = deque(d for d in self.pending if d.qos)
            self.pending = kept
            self.pending_bytes = sum(d.size for d in kept)

    def clear(self) -> None:
        if self.held:
            self.held = _NO_PENDING
            self.max_inflight = self.window
        self.pending.clear()
        self.inflight.clear()
        self.pending_bytes = self.inflight_bytes = 0
        self.qos2_in.clear()
        self.online = False
        self.port = None
        self.slow = False


def _wrong_ack(kind: str, d: Delivery) -> ProtocolViolation:
    """The violation for `kind` answering delivery `d` (QoS 1; QoS 2 before or after its PUBREC)."""
    state = "" if d.qos == 1 else (" waiting for PUBREC" if d.state == WAIT_ACK else " waiting for PUBCOMP")
    return ProtocolViolation(
        f"{kind} for a QoS {d.qos} delivery{state} (packet id {d.packet_id})", code=Reason.PROTOCOL_ERROR
    )
