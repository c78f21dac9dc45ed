"""Batched, ordered, idempotent Redis writes: the one way durable state (retained messages, persistent
sessions and their queued messages, issue 17) reaches Redis.

Why batched: writing each retained or queued message on its own costs a round trip and ~250 us of
redis-py CPU per message. Everything submitted while the writer is idle, within one event-loop
iteration, and everything submitted while a batch is in flight, goes out as the next single pipeline:
under load the cost is one round trip per batch, not per message.

Why ordered, one batch in flight: a write must never overtake an earlier one (a queued message's
delete before its add, an old retained value after a new one). Ops are applied in submit order.

Why idempotent: when the connection drops after a pipeline was sent its outcome is unknown, so the
batch is sent again whole. Ops therefore only use commands whose repetition changes nothing (SET,
HSET, ZADD, DEL, PEXPIREAT, a Lua script written that way), with every value fixed when the op is
built; never INCR or RPUSH.

Two kinds of writes:
- ack writes (`submit(op)` returns a Future): what the broker acknowledges to a publisher only once it
  is in Redis (a QoS 1/2 message for a persistent session or a retained one). They are never dropped:
  while Redis is away they are retried with a backoff and their futures stay pending, so the publisher's
  acknowledgement waits (its in-flight window fills; `backpressure_max_stall` disconnects it; it is
  never acknowledged-and-lost).
- no-ack writes (`submit(op, ack=False)`): what needs no acknowledgement (QoS 0 retained, QoS 0 queued
  for an offline session, removals after delivery). While Redis is away at most `buffer_limit` of them
  are held; beyond that the oldest are dropped, counted and logged (`on_lost`).

A command error inside a batch (WRONGTYPE on a corrupt key, a script error) fails only the op that
issued it: its future gets the exception (the caller decides what the client is told), a no-ack op's
error is logged; the rest of the batch is unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..logutil import RateLimitedLog
from .connection import REDIS_ERRORS

log = logging.getLogger("mqtt_guard.store.batch")

Op = Callable[[Any], None]
"""Adds idempotent commands to a redis-py (asyncio, non-transactional) pipeline."""

MAX_BATCH = 1000  # ops per pipeline: bounds how long one batch occupies Redis and the reply's size
RETRY_MIN = 0.05  # seconds before the first re-send after a connection error, doubled up to RETRY_MAX
RETRY_MAX = 2.0
BUFFER_LIMIT = 100_000  # no-ack ops held while Redis is away


class _Entry:
    __slots__ = ("op", "name", "future")

    def __init__(self, op: Op, name: str, future: asyncio.Future[None] | None) -> None:
        self.op = op
        self.name = name
        self.future = future


class WriterClosed(ConnectionError):
    """The writer stopped before this write reached Redis (shutdown with Redis away)."""


class BatchWriter:
    """One per process; owns no connection of its own, only a client (any redis-py asyncio client:
    ops write bytes or str, and nothing is read back but the replies' errors)."""

    def __init__(
        self,
        redis: Any,
        *,
        buffer_limit: int = BUFFER_LIMIT,
        max_batch: int = MAX_BATCH,
        on_lost: Callable[[int], None] | None = None,
    ) -> None:
        self.redis = redis
        self.buffer_limit = buffer_limit
        self.max_batch = max_batch
        self.on_lost = on_lost
        self._queue: deque[_Entry] = deque()
        self._noack = 0  # no-ack entries in _queue
        self._inflight = 0  # the head entries of _queue in the pipeline being sent (never shed)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._lost_log = RateLimitedLog(log, interval=10.0)  # a QoS 0 flood during an outage: not a log flood
        self.outage_since: float | None = None  # monotonic time of the first failed send of an outage
        # counters, for metrics and tests
        self.batches = 0
        self.written = 0
        self.lost = 0
        self.failed = 0

    # -- submitting ------------------------------------------------------------------------------

    def submit(self, op: Op, *, name: str, ack: bool = True) -> asyncio.Future[None] | None:
        """Queue `op` for the next batch. `name` says what it is in logs ("retained.set", ...)."""
        if self._closed:
            if not ack:
                self._lose(1, name)
                return None
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_exception(WriterClosed(f"{name}: the durable-state writer is closed"))
            return fut
        future = asyncio.get_running_loop().create_future() if ack else None
        self._queue.append(_Entry(op, name, future))
        if not ack:
            self._noack += 1
            if self._noack > self.buffer_limit and self.outage_since is not None:
                self._shed()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="durable-writer")
        self._wake.set()
        return future

    @property
    def pending(self) -> int:
        """Ops submitted and not yet written (or failed)."""
        return len(self._queue)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted before this call is written; False if `timeout` passed
        first (Redis away)."""
        if not self._queue:
            return True
        fut = self.submit(_nothing, name="flush")
        assert fut is not None
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except (TimeoutError, WriterClosed):
            return False
        return True

    async def close(self, timeout: float = 2.0) -> None:
        """Write what is pending within `timeout`, then stop; ack writes still pending fail with
        `WriterClosed`, no-ack ones are counted as lost."""
        if self._task is None:
            self._closed = True
            return
        await self.flush(timeout)
        self._closed = True
        task, self._task = self._task, None
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        lost = 0
        while self._queue:
            entry = self._queue.popleft()
            if entry.future is None:
                lost += 1
            elif not entry.future.done():
                entry.future.set_exception(WriterClosed(f"{entry.name}: not written before shutdown"))
        self._noack = 0
        if lost:
            self._lose(lost, "shutdown")

    # -- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RETRY_MIN
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(len(self._queue), self.max_batch))]
            pipe, spans = self._build(batch)
            self._inflight = len(batch)
            try:
                replies = await pipe.execute(raise_on_error=False) if spans else []
            except REDIS_ERRORS as exc:
                self._inflight = 0
                self._outage(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception as exc:  # an unexpected reply must not leave futures hanging
                log.exception("durable-state batch of %d writes failed", len(batch))
                self._inflight = 0
                self._settle(batch, [exc] * len(batch), [])
                continue
            self._inflight = 0
            delay = RETRY_MIN
            if self.outage_since is not None:
                log.warning(
                    "Redis answers again: durable-state writes resumed after %.1f s (%d waiting)",
                    time.monotonic() - self.outage_since,
                    len(self._queue),
                )
                self.outage_since = None
            self.batches += 1
            self._settle(batch, spans, replies)

    def _build(self, batch: list[_Entry]) -> tuple[Any, list[tuple[int, int] | BaseException]]:
        """One pipeline for `batch`; per entry, the slice of the pipeline's commands it issued (or the
        exception its op raised while building: a bug in one op fails that op only)."""
        pipe = self.redis.pipeline(transaction=False)
        spans: list[tuple[int, int] | BaseException] = []
        for entry in batch:
            start = len(pipe.command_stack)
            try:
                entry.op(pipe)
            except Exception as exc:  # noqa: BLE001 - reported to that op's owner, never the batch's
                del pipe.command_stack[start:]
                spans.append(exc)
                continue
            spans.append((start, len(pipe.command_stack)))
        return pipe, spans

    def _settle(self, batch: list[_Entry], spans: list[tuple[int, int] | BaseException], replies: list[Any]) -> None:
        for entry, span in zip(batch, spans, strict=True):
            self._queue.popleft()  # (batch is the queue's head, in order: shedding skips in-flight entries)
            if entry.future is None:
                self._noack -= 1
            error = span if isinstance(span, BaseException) else _first_error(replies[span[0] : span[1]])
            if error is None:
                self.written += 1
                if entry.future is not None and not entry.future.done():
                    entry.future.set_result(None)
                continue
            self.failed += 1
            if entry.future is None:
                log.error("durable-state write %s failed: %s", entry.name, error)
            elif not entry.future.done():
                entry.future.set_exception(error)

    # -- Redis away --------------------------------------------------------------------------------

    def _outage(self, exc: BaseException) -> None:
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            log.warning(
                "Redis unreachable (%s): %d durable-state writes wait; acknowledgements that need them wait too",
                exc,
                len(self._queue),
            )
        if self._noack > self.buffer_limit:
            self._shed()

    def _shed(self) -> None:
        """Drop the oldest no-ack ops beyond `buffer_limit` (while Redis is away), never one of the
        batch being sent."""
        excess = self._noack - self.buffer_limit
        if excess <= 0:
            return
        kept: deque[_Entry] = deque()
        dropped = 0
        for i, entry in enumerate(self._queue):
            if i >= self._inflight and entry.future is None and dropped < excess:
                dropped += 1
                continue
            kept.append(entry)
        self._queue = kept
        self._noack -= dropped
        self._lose(dropped, "buffer full while Redis is away")

    def _lose(self, n: int, why: str) -> None:
        self.lost += n
        self._lost_log.log(
            logging.ERROR,
            why,
            "%d durable-state write(s) lost (%s): state written without acknowledgement is gone (%d in all)",
            n,
            why,
            self.lost,
        )
        if self.on_lost is not None:
            self.on_lost(n)


def _nothing(pipe: Any) -> None:
    """The op of `flush`: no command, so its future settles when every earlier op has."""


def _first_error(replies: list[Any]) -> BaseException | None:
    for reply in replies:
        if isinstance(reply, BaseException):
            return reply
    return None
