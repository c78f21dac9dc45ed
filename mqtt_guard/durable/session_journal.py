"""The journal of persistent sessions: what the broker tells Redis about them, as BatchWriter ops.

One per broker process. The engine (engine/durable.py `DurableQueue`, engine/broker.py) calls it; it
turns each change into an idempotent op (store/sessions.py) and submits it to the BatchWriter
(store/batch.py), so that every write of one loop iteration goes out in one pipeline:

- a QoS 1/2 message for a persistent session: an acknowledged write (its Future is what the
  publisher's PUBACK/PUBREC waits for); a QoS 0 one (`durable.queue_qos0_messages`), a packet id, a
  PUBREC, a removal: unacknowledged writes (a lost one costs at most a duplicate QoS 1 re-send);
- a QoS 2 delivery's packet id: acknowledged, and its PUBLISH waits for it (exactly once across a
  restart);
- the record (subscriptions, will, expiry, owner) at connect, (un)subscribe and disconnect:
  acknowledged writes nobody waits for (they are retried until Redis takes them; never dropped).

A failed write (a command error: a corrupt key) is logged; the broker goes on from memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from .sessions import (
    SessionRecord,
    StoredMessage,
    StoredSession,
    encode_message,
    encode_record,
    inbound_field,
    message_field,
)

log = logging.getLogger("mqtt_guard.durable")


class Writer(Protocol):
    """store/batch.py BatchWriter."""

    def submit(self, op: Any, *, name: str, ack: bool = True) -> asyncio.Future[None] | None: ...


class Store(Protocol):
    """store/sessions.py SessionStore."""

    def save(self, client_id: str, record: str, expire_at_ms: int | None) -> Any: ...

    def add(self, client_id: str, max_messages: int, max_bytes: int) -> Any: ...

    def update(self, client_id: str, field: str, value: bytes) -> Any: ...

    def remove(self, client_id: str) -> Any: ...

    def mark_inbound(self, client_id: str, field: str, present: bool) -> Any: ...

    def discard(
        self, client_id: str, identity: str | None = None, owned: bool = False, proc: str | None = None
    ) -> Any: ...

    async def load(self, client_id: str) -> StoredSession | None: ...

    async def owned_by(self, broker: str) -> tuple[list[str], int]: ...


class SessionJournal:
    def __init__(
        self,
        store: Store,
        writer: Writer,
        *,
        broker: str,
        proc: str,
        queue_qos0: bool,
        max_messages: int,
        max_bytes: int,
    ) -> None:
        self.store = store
        self.writer = writer
        self.broker = broker  # stable id of this broker (metrics.broker_id): the owner in the record
        self.proc = proc  # this process (the quota registry's broker id: its kick queue reaches it)
        self.queue_qos0 = queue_qos0
        # Redis' bound of a session's stored messages: what memory holds (queued + in flight)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        # client id -> its latest record write or discard not yet confirmed: a load of that client id waits
        # for it (a read must not overtake this broker's own write of the same session)
        self._unsettled: dict[str, asyncio.Future[None]] = {}
        # client id -> the last op submitted for it when that is a message add (with its Future) or a removal
        # the writer has not built yet: the next add / removal joins it (one script call per session and
        # batch); any other op of that client id closes it, so the order of its writes is kept
        self._open: dict[str, tuple[str, Any, asyncio.Future[None] | None]] = {}

    def _ack(self, op: Any, name: str) -> asyncio.Future[None] | None:
        fut = self.writer.submit(op, name=name)
        if fut is not None:
            fut.add_done_callback(_log_failure)
        return fut

    # -- messages ---------------------------------------------------------------------------------
    def add(self, client_id: str, seq: int, message: StoredMessage, ack: bool) -> asyncio.Future[None] | None:
        field, value = message_field(seq), encode_message(message)
        if ack:
            joined = self._join(client_id, "add")
            if joined is not None:
                joined[0].items += (field, value)
                return joined[1]
        op = self.store.add(client_id, self.max_messages, self.max_bytes)
        op.items += (field, value)
        if ack:
            fut = self._ack(op, "session.message")
            self._open[client_id] = ("add", op, fut)
            return fut
        self._open.pop(client_id, None)
        self.writer.submit(op, name="session.message.qos0", ack=False)
        return None

    def _join(self, client_id: str, kind: str) -> tuple[Any, asyncio.Future[None] | None] | None:
        """The open op of `kind` for `client_id` that can still take more, if any."""
        open_ = self._open.get(client_id)
        if open_ is None or open_[0] != kind or open_[1].built:
            return None
        return open_[1], open_[2]

    def update(
        self, client_id: str, seq: int, message: StoredMessage, ack: bool = False
    ) -> asyncio.Future[None] | None:
        self._open.pop(client_id, None)
        op = self.store.update(client_id, message_field(seq), encode_message(message))
        if ack:
            return self._ack(op, "session.inflight")
        self.writer.submit(op, name="session.inflight", ack=False)
        return None

    def remove(self, client_id: str, seq: int) -> None:
        joined = self._join(client_id, "remove")
        if joined is not None:
            joined[0].items.append(message_field(seq))
            return
        op = self.store.remove(client_id)
        op.items.append(message_field(seq))
        self._open[client_id] = ("remove", op, None)
        self.writer.submit(op, name="session.delivered", ack=False)

    def inbound(self, client_id: str, packet_id: int, present: bool) -> asyncio.Future[None] | None:
        self._open.pop(client_id, None)
        op = self.store.mark_inbound(client_id, inbound_field(packet_id), present)
        if present:
            return self._ack(op, "session.qos2_in")
        self.writer.submit(op, name="session.qos2_in", ack=False)
        return None

    # -- the record --------------------------------------------------------------------------------
    def save(self, record: SessionRecord, offline: bool = False, since: float | None = None) -> None:
        """Write the record; `offline`: the session is offline (since `since`, unix s; default now),
        both keys expire with it."""
        record.broker, record.proc = self.broker, self.proc
        self._open.pop(record.client_id, None)
        expire_at = None
        if offline:
            now = time.time() if since is None else since
            record.offline_since = now
            if record.expiry is not None:
                expire_at = int((now + max(record.expiry, 0.001)) * 1000)
        else:
            record.offline_since = None
        self._track(
            record.client_id,
            self._ack(self.store.save(record.client_id, encode_record(record), expire_at), "session.record"),
        )

    def discard(self, client_id: str, identity: str | None = None, owned: bool = False, mine: bool = False) -> None:
        """The session is gone (clean start, expiry, drop): its keys are deleted (`owned`: only if it
        is `identity`'s; `mine`: only if this broker process still owns it, i.e. it was not resumed on
        another broker meanwhile)."""
        self._open.pop(client_id, None)
        op = self.store.discard(client_id, identity, owned, self.proc if mine else None)
        self._track(client_id, self._ack(op, "session.discard"))

    def _track(self, client_id: str, fut: asyncio.Future[None] | None) -> None:
        if fut is None or fut.done():
            return
        self._unsettled[client_id] = fut

        def settled(f: asyncio.Future[None]) -> None:
            if self._unsettled.get(client_id) is f:
                del self._unsettled[client_id]

        fut.add_done_callback(settled)

    async def owned(self) -> tuple[list[str], int]:
        """Client ids of the stored sessions this broker owns (and how many records were corrupt)."""
        return await self.store.owned_by(self.broker)

    async def load(self, client_id: str, settle_timeout: float = 5.0) -> StoredSession | None:
        """The stored session (store/sessions.py `load`), once this broker's own pending record write or
        discard of it is confirmed (TimeoutError when Redis does not confirm it within `settle_timeout`)."""
        pending = self._unsettled.get(client_id)
        if pending is not None:
            try:
                await asyncio.wait_for(asyncio.shield(pending), settle_timeout)
            except TimeoutError:
                raise
            except Exception:  # noqa: BLE001 - the write failed (logged): read what Redis has
                pass
        return await self.store.load(client_id)


def _log_failure(fut: asyncio.Future[None]) -> None:
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None:
        log.error("persistent session write failed (the broker goes on from memory): %s", exc)
