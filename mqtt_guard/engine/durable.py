"""The engine's side of persistent sessions in Redis (issue 17 item 2, docs/durability.md).

A persistent session's OutQueue is a `DurableQueue`: the same queue (memory stays what delivers), which
also journals every QoS 1/2 message it takes and what becomes of it, through a `Journal`
(durable/session_journal.py, which builds the Redis ops and submits them to the BatchWriter):

- a message offered to it is written (an acknowledged write); the write's Future goes into the broker's
  `acks` list, which routing hands to the publisher's reader: its PUBACK/PUBREC waits for it;
- a delivery sent gets its packet id written; a QoS 2 one before its PUBLISH leaves (`barrier`: the
  writer loop awaits it), so a re-send after a restart carries the same id and the client sees it once;
- PUBREC marks it released (only the PUBREL is owed); PUBACK/PUBCOMP (or a refusing PUBREC) removes it;
- inbound QoS 2 packet ids waiting for PUBREL (`qos2_in`) are written too.

Clean sessions keep the plain OutQueue: routing to them does nothing more than before.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Protocol

from ..durable.sessions import StoredMessage
from .queues import _NO_PENDING, QUEUED, WAIT_ACK, WAIT_COMP, Delivery, Delivery5, OutQueue


class Journal(Protocol):
    """What a DurableQueue writes through (durable/session_journal.py `SessionJournal`)."""

    queue_qos0: bool

    def add(self, client_id: str, seq: int, message: StoredMessage, ack: bool) -> asyncio.Future[None] | None: ...

    def update(
        self, client_id: str, seq: int, message: StoredMessage, ack: bool = False
    ) -> asyncio.Future[None] | None: ...

    def remove(self, client_id: str, seq: int) -> None: ...

    def inbound(self, client_id: str, packet_id: int, present: bool) -> asyncio.Future[None] | None: ...


def stored_of(d: Delivery) -> StoredMessage:
    """The stored form of a delivery (the expiry as a wall-clock time)."""
    if type(d) is Delivery5:
        expires = d.expires - time.monotonic() + time.time() if d.expires else 0.0
        return StoredMessage(
            d.topic, d.payload, d.qos, d.retain, d.packet_id, d.state == WAIT_COMP, True, d.props, max(0.0, expires)
        )
    return StoredMessage(d.topic, d.payload, d.qos, d.retain, d.packet_id, d.state == WAIT_COMP)


def delivery_of(m: StoredMessage) -> Delivery:
    """A delivery again from its stored form."""
    d: Delivery
    if m.v5 or m.expires:
        expires = m.expires - time.time() + time.monotonic() if m.expires else 0.0
        d = Delivery5(m.topic, m.payload, m.qos, m.retain, m.props, max(expires, 1e-9) if m.expires else 0.0)
    else:
        d = Delivery(m.topic, m.payload, m.qos, m.retain)
    d.packet_id = m.packet_id
    if m.packet_id:
        d.state = WAIT_COMP if m.released else WAIT_ACK
    if m.released:
        d.size = 0
    return d


class JournaledIds(set[int]):
    """`OutQueue.qos2_in` of a persistent session: inbound QoS 2 packet ids written as they come and go;
    an added id's write Future goes to the queue's `acks` (the PUBREC waits for it)."""

    __slots__ = ("queue",)

    def __init__(self, queue: DurableQueue, ids: set[int] | None = None) -> None:
        super().__init__(ids or ())
        self.queue = queue

    def add(self, pid: int) -> None:
        if pid in self:
            return
        super().add(pid)
        q = self.queue
        fut = q.journal.inbound(q.client_id, pid, True)
        if fut is not None:
            q.acks.append(fut)

    def discard(self, pid: object) -> None:
        if not isinstance(pid, int) or pid not in self:
            return
        super().discard(pid)
        q = self.queue
        q.journal.inbound(q.client_id, pid, False)

    def clear(self) -> None:
        super().clear()


class DurableQueue(OutQueue):
    """The OutQueue of a persistent session, journalled to Redis (see the module's docstring)."""

    __slots__ = ("journal", "client_id", "seq", "mids", "acks", "_inner", "max_stored", "dropped_stored")

    def __init__(
        self,
        max_messages: int,
        max_bytes: int,
        max_inflight: int,
        *,
        journal: Journal,
        client_id: str,
        acks: list[asyncio.Future[None]],
        seq: int = 1,
    ) -> None:
        super().__init__(max_messages, max_bytes, max_inflight)
        self.journal = journal
        self.client_id = client_id
        self.seq = seq  # the next message's sequence number (its field in Redis)
        self.mids: dict[Delivery, int] = {}  # delivery -> its sequence number, while stored
        self.acks = acks  # the broker's list of write Futures the publisher's ack waits for
        self._inner = False
        self.qos2_in = JournaledIds(self)
        self.dropped_stored = 0

    # -- restore -------------------------------------------------------------------------------------
    def restore(self, messages: list[tuple[int, StoredMessage]], inbound: set[int], next_seq: int) -> int:
        """Refill from Redis (a resume on a broker that did not hold the session): in-flight messages
        into the window (re-sent with DUP or as PUBREL at the connection), queued ones pending. Messages
        whose expiry passed are removed. Returns how many were restored."""
        now = time.time()
        restored = 0
        for seq, m in messages:
            if m.expires and m.expires <= now and not m.released:
                self.journal.remove(self.client_id, seq)
                continue
            d = delivery_of(m)
            self.mids[d] = seq
            if m.packet_id and m.packet_id not in self.inflight:
                self.inflight[m.packet_id] = d
                self.inflight_bytes += d.size
                self._next_id = max(self._next_id, m.packet_id)
            else:
                d.packet_id = 0
                d.state = QUEUED
                if self.pending is _NO_PENDING:
                    self.pending = deque()
                self.pending.append(d)
                self.pending_bytes += d.size
            restored += 1
        self.seq = max(self.seq, next_seq)
        set.update(self.qos2_in, inbound)
        return restored

    # -- journalling -------------------------------------------------------------------------------
    def _journal_new(self, n_pending: int, last_id: int, ack: bool = True) -> None:
        """A message was just taken (pending grew, or a packet id was allocated): write it."""
        if len(self.pending) > n_pending:
            d = self.pending[-1]
        elif self._next_id != last_id:
            d = self.inflight[self._next_id]
        else:
            return
        seq = self.seq
        self.seq = seq + 1
        self.mids[d] = seq
        fut = self.journal.add(self.client_id, seq, stored_of(d), ack)
        if fut is not None:
            self.acks.append(fut)

    def forget(self, d: Delivery) -> None:
        """`d` left the queue without being delivered (dropped by the broker): removed from Redis."""
        self._forget(d)

    def _forget(self, d: Delivery | None) -> None:
        if d is None:
            return
        seq = self.mids.pop(d, None)
        if seq is not None:
            self.journal.remove(self.client_id, seq)

    # -- producer side ------------------------------------------------------------------------------
    def offer(self, topic: bytes, payload: bytes, qos: int, retain: bool) -> bool:
        if qos == 0:
            if self.online or not self.journal.queue_qos0:
                return super().offer(topic, payload, qos, retain)
            return self._queue_offline0(Delivery(topic, payload, 0, retain))
        n, last = len(self.pending), self._next_id
        port = self.port
        if qos == 2 and port is not None and not self._inner:
            self.port = None  # QoS 2 goes through the writer loop: its packet id is written before it leaves
            ok = super().offer(topic, payload, qos, retain)
            self.port = port
            port.wake()
        else:
            ok = super().offer(topic, payload, qos, retain)
        if ok and not self._inner:
            self._journal_new(n, last)
        return ok

    def offer5(self, topic: bytes, payload: bytes, qos: int, retain: bool, props: bytes, expires: float) -> bool:
        if qos == 0:
            if self.online or not self.journal.queue_qos0:
                return super().offer5(topic, payload, qos, retain, props, expires)
            return self._queue_offline0(Delivery5(topic, payload, 0, retain, props, expires))
        n, last = len(self.pending), self._next_id
        port = self.port
        if qos == 2 and port is not None:
            self.port = None
            ok = super().offer5(topic, payload, qos, retain, props, expires)
            self.port = port
            port.wake()
        else:
            ok = super().offer5(topic, payload, qos, retain, props, expires)
        if ok:
            self._journal_new(n, last)
        return ok

    def offer_expiring(self, topic: bytes, payload: bytes, qos: int, expires: float) -> bool:
        if qos == 0 and not self.online:
            if not self.journal.queue_qos0:
                return True
            return self._queue_offline0(Delivery5(topic, payload, 0, False, b"", expires))
        n, last = len(self.pending), self._next_id
        port = self.port
        self._inner = True
        try:
            if qos == 2 and port is not None:
                self.port = None
                ok = super().offer_expiring(topic, payload, qos, expires)
                self.port = port
                port.wake()
            else:
                ok = super().offer_expiring(topic, payload, qos, expires)
        finally:
            self._inner = False
        if ok and qos:
            self._journal_new(n, last)
        return ok

    def offer0(self, frame: bytes, payload_len: int, size: int) -> bool:
        if self.online or not self.journal.queue_qos0:
            return super().offer0(frame, payload_len, size)
        topic, payload = _split_qos0(frame, payload_len)
        return self._queue_offline0(Delivery(topic, payload, 0, False))

    def _queue_offline0(self, d: Delivery) -> bool:
        """`durable.queue_qos0_messages`: a QoS 0 message for the offline session is queued (bounded like
        the others) and written without acknowledgement."""
        if (self.max_messages and len(self.pending) >= self.max_messages) or (
            self.max_bytes and self.pending_bytes + d.size > self.max_bytes
        ):
            return False
        if self.pending is _NO_PENDING:
            self.pending = deque()
        self.pending.append(d)
        self.pending_bytes += d.size
        seq = self.seq
        self.seq = seq + 1
        self.mids[d] = seq
        self.journal.add(self.client_id, seq, stored_of(d), False)
        return True

    # -- consumer side -------------------------------------------------------------------------------
    def take(self, max_bytes: int) -> tuple[list[bytes], int, int]:
        if not self.mids:
            return super().take(max_bytes)
        before = list(self.pending)
        result = super().take(max_bytes)
        gone = len(before) - len(self.pending)
        inflight = self.inflight
        for d in before[:gone]:
            seq = self.mids.get(d)
            if seq is None:
                continue
            if d.qos and d.packet_id and inflight.get(d.packet_id) is d:
                # sent: its packet id is written; a QoS 2 one before its PUBLISH leaves (barrier)
                fut = self.journal.update(self.client_id, seq, stored_of(d), d.qos == 2)
                if fut is not None:
                    self.barrier = fut
            else:  # a QoS 0 message sent, or one whose expiry passed
                del self.mids[d]
                self.journal.remove(self.client_id, seq)
        return result

    def acked(self, packet_id: int) -> bool:
        d = self.inflight.get(packet_id)
        done = super().acked(packet_id)
        if done and self.mids:
            self._forget(d)
        return done

    def received(self, packet_id: int) -> bool:
        d = self.inflight.get(packet_id)
        state = d.state if d is not None else None
        ok = super().received(packet_id)
        if ok and d is not None and state == WAIT_ACK:
            seq = self.mids.get(d)
            if seq is not None:
                self.journal.update(self.client_id, seq, stored_of(d))
        return ok

    def rejected(self, packet_id: int) -> bool:
        d = self.inflight.get(packet_id)
        done = super().rejected(packet_id)
        if done:
            self._forget(d)
        return done

    def completed(self, packet_id: int) -> bool:
        d = self.inflight.get(packet_id)
        done = super().completed(packet_id)
        if done:
            self._forget(d)
        return done

    def go_offline(self) -> None:
        if not self.journal.queue_qos0:
            for d in self.pending:
                if not d.qos:
                    self._forget(d)
            super().go_offline()
            return
        self.online = False
        self.port = None
        self.slow = False

    def clear(self) -> None:
        super().clear()
        self.mids.clear()
        set.clear(self.qos2_in)


def _split_qos0(frame: bytes, payload_len: int) -> tuple[bytes, bytes]:
    """Topic and payload of a 3.1.1 QoS 0 PUBLISH frame (fixed header, topic length, topic, payload)."""
    pos = 1
    while frame[pos] & 0x80:
        pos += 1
    pos += 1
    tlen = (frame[pos] << 8) | frame[pos + 1]
    topic = frame[pos + 2 : pos + 2 + tlen]
    return bytes(topic), bytes(frame[len(frame) - payload_len :]) if payload_len else b""


def is_durable(queue: Any) -> bool:
    return type(queue) is DurableQueue
