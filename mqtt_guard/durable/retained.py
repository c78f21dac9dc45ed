"""The retained messages a broker serves, shared through Redis by every broker on the same Redis.

Each broker keeps a local copy (`RetainedSet.messages`): a SUBSCRIBE is matched against memory, never
with a Redis round trip on a warm broker. The copy is loaded at start and kept fresh the way ACL rules
are: the Guard's invalidation listener tracks the prefix `<prefix>retained:m:` (Redis client tracking,
broadcast mode), and each changed key is read again (a reconnect or a FLUSHALL reloads everything). A
retained PUBLISH updates the local copy at once (local subscribers see it immediately) and is written
through the BatchWriter: QoS 1/2 as an acknowledged write the caller awaits before its PUBACK/PUBREC,
QoS 0 as a no-ack write (buffered while Redis is away, up to `durable.buffer_limit`).

Rules (docs/durability.md "Retained messages"):
- an empty payload clears the topic [MQTT-3.3.1-10/11];
- a message with a Message Expiry Interval is stored with its absolute end (Redis drops it then: `SET
  PXAT`) and is never served after it; the time left is forwarded to MQTT 5 subscribers;
- `$SYS/...` messages are this broker's own ($SYS plugin): kept locally, never written to Redis;
- a key that cannot be used (another type, a bad encoding) is logged once and skipped;
- while a write of this broker to a topic is in flight, what is read back from Redis for that topic does
  not replace the local copy (it may predate the write); the topic is read again once the write is done.

Without Redis (`durable.enabled: false`) the same object is a plain in-memory store.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from ..acl.topics import topic_matches
from ..store import retained as store
from ..store.connection import REDIS_ERRORS
from ..store.keys import Keys
from ..tasks import cancel_and_wait

log = logging.getLogger("mqtt_guard.durable")

RETRY = 0.5  # s between attempts to read Redis after a failure
LOCAL_ONLY = "$SYS/"  # topics of this broker alone

Op = Callable[[Any], None]  # adds idempotent commands to a pipeline (store/batch.py)


class Writer(Protocol):
    """The BatchWriter as this module uses it (store/batch.py)."""

    def submit(self, op: Op, *, name: str, ack: bool = True) -> asyncio.Future[None] | None: ...


@dataclass(slots=True)
class Retained:
    """One retained message as the engine serves it: `forwarded`, its encoded MQTT 5 properties;
    `expires`, the `time.monotonic()` deadline of its Message Expiry Interval (0.0: none)."""

    payload: bytes
    qos: int
    forwarded: bytes = b""
    expires: float = 0.0

    def expired(self, now: float) -> bool:
        return bool(self.expires) and self.expires <= now


def to_record(msg: Retained, now_mono: float, now_wall: float) -> store.RetainedRecord:
    """The Redis record of `msg`: its monotonic deadline as unix milliseconds (rounded up: a message
    is never served past its end because of the conversion)."""
    at = math.ceil((now_wall + (msg.expires - now_mono)) * 1000) if msg.expires else 0
    return store.RetainedRecord(msg.payload, msg.qos, msg.forwarded, max(at, 1) if msg.expires else 0)


def from_record(rec: store.RetainedRecord, now_mono: float, now_wall: float) -> Retained:
    expires = now_mono + (rec.expires_at / 1000 - now_wall) if rec.expires_at else 0.0
    return Retained(rec.payload, rec.qos, rec.props, expires)


def props_valid(block: bytes) -> bool:
    """Whether `block` is a property list the broker may forward in a PUBLISH (what it wrote itself
    always is; a value edited by hand might not be)."""
    if not block:
        return True
    from ..engine import mqtt5  # the codec (a leaf module: no amqtt)
    from ..engine.protocol import Cursor, ProtocolViolation

    try:
        c = Cursor(mqtt5.encode_varint(len(block)) + block, "retained")
        mqtt5.read_properties(c, "PUBLISH")
    except (ProtocolViolation, ValueError, IndexError):
        return False
    return c.pos == len(c.body)


def _matches(topic: str, topic_filter: str) -> bool:
    return topic_matches(topic_filter, topic)


class RetainedSet:
    """The local copy of the retained messages (see the module docstring). With `redis`, `keys` and
    `writer` it is durable; without, memory only. `redis` must return bytes (decode_responses off)."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis | None = None,
        keys: Keys | None = None,
        writer: Writer | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.messages: dict[str, Retained] = {}
        self._redis = redis
        self._keys = keys
        self._writer = writer
        self._clock = clock
        self._wall = wall
        self.durable = redis is not None and keys is not None and writer is not None
        self._pending: dict[str, int] = {}  # topic -> acknowledged writes of ours in flight
        self._suppressed: set[str] = set()  # topics read back while a write of ours was in flight
        self._dirty: set[str] = set()  # topics to read again
        self._reload = False  # everything to read again
        self._task: asyncio.Task[None] | None = None
        self._reported: set[str] = set()  # corrupt keys already logged
        self._down = False  # the last read failed (logged once per outage)
        self.loaded = asyncio.Event()  # the first full load is done (or there is nothing to load)
        self._attempted = asyncio.Event()  # a first read of Redis was tried
        if not self.durable:
            self.loaded.set()

    # -- what the engine calls ------------------------------------------------------------------
    def set(
        self, topic: str, payload: bytes, qos: int, forwarded: bytes = b"", expires: float = 0.0
    ) -> asyncio.Future[None] | None:
        """A retained PUBLISH (or will) on `topic`: the local copy changes now; the Redis write is
        submitted. Returns the write's Future for QoS 1/2 (await it before the acknowledgement; it
        fails with the Redis command error), None when there is nothing to wait for."""
        if not payload:
            return self.clear(topic, qos)
        msg = Retained(bytes(payload), qos, forwarded, expires)
        self.messages[topic] = msg
        if not self.durable or topic.startswith(LOCAL_ONLY):
            return None
        assert self._keys is not None
        op = store.set_op(self._keys, topic, to_record(msg, self._clock(), self._wall()))
        return self._submit(topic, op, "retained.set", qos)

    def clear(self, topic: str, qos: int = 0) -> asyncio.Future[None] | None:
        """An empty retained PUBLISH: no retained message on `topic` any more, here and in Redis."""
        self.messages.pop(topic, None)
        if not self.durable or topic.startswith(LOCAL_ONLY):
            return None
        assert self._keys is not None
        return self._submit(topic, store.clear_op(self._keys, topic), "retained.clear", qos)

    def get(self, topic: str) -> Retained | None:
        msg = self.messages.get(topic)
        if msg is not None and msg.expired(self._clock()):
            del self.messages[topic]  # (Redis drops it by itself: PXAT)
            return None
        return msg

    def matching(
        self, topic_filter: str, matches: Callable[[str, str], bool] | None = None
    ) -> list[tuple[str, Retained]]:
        """The retained messages a subscription to `topic_filter` gets, expired ones left out (and
        forgotten). `matches(topic, filter)`: the engine's matcher (default: acl.topics')."""
        if "+" not in topic_filter and "#" not in topic_filter:  # a device's own topic: one lookup, no scan
            msg = self.get(topic_filter)
            return [(topic_filter, msg)] if msg is not None else []
        if matches is None:
            matches = _matches
        now = self._clock()
        out: list[tuple[str, Retained]] = []
        expired: list[str] = []
        for topic, msg in self.messages.items():
            if not matches(topic, topic_filter):
                continue
            if msg.expired(now):
                expired.append(topic)
            else:
                out.append((topic, msg))
        for topic in expired:
            del self.messages[topic]
        return out

    # -- kept fresh from Redis ------------------------------------------------------------------
    async def start(self) -> None:
        """Load every retained message (waits for the first load while Redis answers; when it does not,
        logs an ERROR and goes on loading in the background)."""
        if not self.durable:
            return
        self._reload = True
        self._wake()
        await self._attempted.wait()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def on_keys(self, keys: Iterable[str]) -> None:
        """Redis reported changes (store/invalidation.py): read the changed retained topics again."""
        if not self.durable:
            return
        assert self._keys is not None
        topics = {t for t in map(self._keys.retained_topic_of, keys) if t is not None}
        if topics:
            self._dirty |= topics
            self._wake()

    def on_reset(self) -> None:
        """Changes may have been missed (the invalidation channel reconnected, FLUSHALL, Redis trusted
        again): read everything again."""
        if self.durable:
            self._reload = True
            self._wake()

    def _wake(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh(), name="mqtt-guard-retained")

    async def _refresh(self) -> None:
        """One task reads Redis at a time, so a read that started after an invalidation always lands
        after the reads that started before it."""
        while self._reload or self._dirty:
            reload, self._reload = self._reload, False
            dirty, self._dirty = (set(), set()) if reload else (self._dirty, set())
            try:
                if reload:
                    await self._load_all()
                else:
                    await self._read(dirty)
            except REDIS_ERRORS + (aioredis.RedisError,) as exc:
                if reload:
                    self._reload = True
                else:
                    self._dirty |= dirty
                if not self._down:
                    self._down = True
                    log.error(
                        "retained messages: Redis unreachable (%s): serving the ones in memory, reading again "
                        "every %.1fs",
                        exc,
                        RETRY,
                    )
                self._attempted.set()
                await asyncio.sleep(RETRY)
                continue
            self._attempted.set()
            if self._down:
                self._down = False
                log.info("retained messages: Redis answers again; local copy refreshed")

    async def _load_all(self) -> None:
        assert self._redis is not None and self._keys is not None
        records, bad = await store.load_all(self._redis, self._keys)
        now, wall = self._clock(), self._wall()
        fresh: dict[str, Retained] = {}
        for topic, rec in records.items():
            msg = self._usable(topic, rec, now, wall)
            if msg is not None:
                fresh[topic] = msg
        for topic, why in bad.items():
            self._corrupt(topic, why)
        for topic, msg in self.messages.items():  # what Redis cannot have right yet
            if topic.startswith(LOCAL_ONLY) or self._pending.get(topic):
                fresh[topic] = msg
                if not topic.startswith(LOCAL_ONLY):
                    self._suppressed.add(topic)
        for topic in list(self._pending):
            if topic not in self.messages:  # a clear of ours in flight
                fresh.pop(topic, None)
                self._suppressed.add(topic)
        self.messages = fresh
        if not self.loaded.is_set():
            log.info("retained messages: %d loaded from Redis", len(fresh))
            self.loaded.set()

    async def _read(self, topics: builtins.set[str]) -> None:
        assert self._redis is not None and self._keys is not None
        found, bad = await store.read_many(self._redis, self._keys, sorted(topics))
        now, wall = self._clock(), self._wall()
        for topic, rec in found.items():
            if self._pending.get(topic):
                self._suppressed.add(topic)
                continue
            msg = self._usable(topic, rec, now, wall) if rec is not None else None
            if msg is None:
                self.messages.pop(topic, None)
            else:
                self.messages[topic] = msg
        for topic, why in bad.items():
            if not self._pending.get(topic):
                self._corrupt(topic, why)

    def _usable(self, topic: str, rec: store.RetainedRecord, now: float, wall: float) -> Retained | None:
        if not props_valid(rec.props):
            self._corrupt(topic, "its MQTT 5 properties do not parse")
            return None
        self._reported.discard(topic)
        msg = from_record(rec, now, wall)
        return None if msg.expired(now) else msg

    def _corrupt(self, topic: str, why: str) -> None:
        self.messages.pop(topic, None)
        if topic not in self._reported:
            self._reported.add(topic)
            log.warning(
                "retained message of topic %r skipped: its Redis key is unusable (%s); a retained PUBLISH to "
                "the topic replaces it, deleting the key removes it",
                topic,
                why,
            )

    # -- writes ---------------------------------------------------------------------------------
    def _submit(self, topic: str, op: Op, name: str, qos: int) -> asyncio.Future[None] | None:
        assert self._writer is not None
        if not qos:
            self._writer.submit(op, name=name, ack=False)
            return None
        fut = self._writer.submit(op, name=name)
        if fut is None:
            return None
        self._pending[topic] = self._pending.get(topic, 0) + 1
        fut.add_done_callback(lambda f: self._written(topic, f))
        return fut

    def _written(self, topic: str, fut: asyncio.Future[None]) -> None:
        left = self._pending.get(topic, 1) - 1
        if left > 0:
            self._pending[topic] = left
            return
        self._pending.pop(topic, None)
        failed = not fut.cancelled() and fut.exception() is not None
        if topic in self._suppressed or failed:
            self._suppressed.discard(topic)
            self._dirty.add(topic)  # what Redis holds now wins (a failed write left it unchanged)
            self._wake()
