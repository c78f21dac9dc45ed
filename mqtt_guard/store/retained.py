"""Retained messages in Redis (issue 17; docs/durability.md, docs/redis-schema.md "Retained messages").

One STRING per topic, `<prefix>retained:m:<topic>` (store/keys.py), so a change invalidates that one
topic at every broker (they track the prefix, store/invalidation.py). The value is a small binary
record (`encode`), written with `SET ... PXAT` when the message has a Message Expiry Interval: Redis
itself drops an expired message, in one atomic command (no window where the key exists without its
expiry). Writes are ops for the BatchWriter (store/batch.py): idempotent, one key each (a batch re-sent
after a lost connection writes the same thing again; Redis Cluster hash tags can be added per topic).

Reads need raw bytes (payloads are binary): they go through a client made with
`decode_responses=False`. A key of another type or a value that does not decode is `Corrupt`: the
caller logs it and skips it, never more.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from .keys import Keys, glob_escape

VERSION = 1
_HEADER = struct.Struct(">BBQI")  # version, qos, expires at (unix ms, 0: never), length of the properties
SCAN_COUNT = 1000
MGET_CHUNK = 500


class Corrupt(ValueError):
    """A retained key holds something this broker cannot use (wrong type, bad encoding)."""


@dataclass(frozen=True, slots=True)
class RetainedRecord:
    """What Redis keeps of one retained message. `props`: the encoded MQTT 5 properties forwarded to
    MQTT 5 subscribers (without the length prefix; empty for most messages); `expires_at`: unix
    milliseconds of its Message Expiry Interval's end, 0 for none."""

    payload: bytes
    qos: int
    props: bytes = b""
    expires_at: int = 0


def encode(record: RetainedRecord) -> bytes:
    """`version:u8 qos:u8 expires_at_ms:u64 props_len:u32 props payload`, big-endian."""
    return _HEADER.pack(VERSION, record.qos, record.expires_at, len(record.props)) + record.props + record.payload


def decode(raw: bytes) -> RetainedRecord:
    if len(raw) < _HEADER.size:
        raise Corrupt(f"value of {len(raw)} bytes, shorter than the {_HEADER.size}-byte header")
    version, qos, expires_at, plen = _HEADER.unpack_from(raw)
    if version != VERSION:
        raise Corrupt(f"unknown record version {version}")
    if qos > 2:
        raise Corrupt(f"QoS {qos}")
    start = _HEADER.size
    if start + plen > len(raw):
        raise Corrupt(f"properties length {plen} runs past the end of the value")
    payload = raw[start + plen :]
    if not payload:
        raise Corrupt("empty payload (an empty retained message is stored as no key)")
    return RetainedRecord(payload, qos, raw[start : start + plen], expires_at)


def set_op(keys: Keys, topic: str, record: RetainedRecord) -> Any:
    """The BatchWriter op that stores `record` as the retained message of `topic` (replacing any value
    of any type: a corrupt key is repaired by the next retained PUBLISH)."""
    key, value, pxat = keys.retained(topic), encode(record), record.expires_at or None

    def op(pipe: Any) -> None:
        pipe.set(key, value, pxat=pxat)

    return op


def clear_op(keys: Keys, topic: str) -> Any:
    """The BatchWriter op that removes the retained message of `topic` (an empty retained PUBLISH)."""
    key = keys.retained(topic)

    def op(pipe: Any) -> None:
        pipe.delete(key)

    return op


async def read_one(redis: aioredis.Redis, keys: Keys, topic: str) -> RetainedRecord | None:
    """The retained message of `topic` (None: there is none). Raises Corrupt, or a Redis error."""
    try:
        raw = await redis.get(keys.retained(topic))
    except aioredis.ResponseError as exc:  # WRONGTYPE
        raise Corrupt(str(exc)) from None
    return None if raw is None else decode(_as_bytes(raw))


async def read_many(
    redis: aioredis.Redis, keys: Keys, topics: list[str]
) -> tuple[dict[str, RetainedRecord | None], dict[str, str]]:
    """The retained messages of `topics` in one MGET per chunk: (topic -> record or None when there is
    none, topic -> why it is corrupt). MGET answers nil for a key of another type, so those nils are
    asked their TYPE (one pipelined round trip)."""
    found: dict[str, RetainedRecord | None] = {}
    bad: dict[str, str] = {}
    for i in range(0, len(topics), MGET_CHUNK):
        chunk = topics[i : i + MGET_CHUNK]
        values = await redis.mget([keys.retained(t) for t in chunk])
        missing: list[str] = []
        for topic, raw in zip(chunk, values, strict=True):
            if raw is None:
                missing.append(topic)
                continue
            try:
                found[topic] = decode(_as_bytes(raw))
            except Corrupt as exc:
                bad[topic] = str(exc)
        if missing:
            async with redis.pipeline(transaction=False) as pipe:
                for topic in missing:
                    pipe.type(keys.retained(topic))
                types = await pipe.execute()
            for topic, kind in zip(missing, types, strict=True):
                kind = _as_bytes(kind).decode()
                if kind == "none":
                    found[topic] = None
                else:
                    bad[topic] = f"a {kind} key, not a string"
    return found, bad


async def load_all(redis: aioredis.Redis, keys: Keys) -> tuple[dict[str, RetainedRecord], dict[str, str]]:
    """Every retained message under the prefix (one SCAN, then MGETs): (topic -> record, topic -> why
    it is corrupt). Expired ones are already gone (PXAT)."""
    head = keys.retained_head()
    topics: list[str] = []
    unreadable: dict[str, str] = {}
    async for key in redis.scan_iter(match=glob_escape(head) + "*", count=SCAN_COUNT):
        raw = _as_bytes(key)
        try:
            topic = keys.retained_topic_of(raw.decode("utf-8"))
        except UnicodeDecodeError:
            unreadable[repr(raw)] = "the key is not UTF-8 (no MQTT topic)"
            continue
        if topic is not None:
            topics.append(topic)
    found, bad = await read_many(redis, keys, topics)
    return {t: r for t, r in found.items() if r is not None}, {**unreadable, **bad}


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
