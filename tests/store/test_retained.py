"""Retained messages in Redis (store/retained.py) against a real redis-server: what the ops write is
what the reads return, a Message Expiry Interval becomes the key's own expiry, and keys that cannot be
used (another type, a bad value) are reported, never raised past the reader."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from mqtt_guard.store import retained as store
from mqtt_guard.store.batch import BatchWriter
from mqtt_guard.store.keys import Keys


def test_records_survive_their_encoding():
    for rec in (
        store.RetainedRecord(b"\x00\xffpayload", 2),
        store.RetainedRecord(b"x", 0, b"\x03\x00\x04text", 1_767_225_600_123),
    ):
        assert store.decode(store.encode(rec)) == rec


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01\x01",
        b"\x09" + bytes(13) + b"x",
        b"\x01\x03" + bytes(12) + b"x",
        b"\x01\x00" + bytes(8) + b"\x00\x00\x00\x09ab",
    ],
)
def test_undecodable_values_are_corrupt(raw):
    with pytest.raises(store.Corrupt):
        store.decode(raw)


def test_ops_write_what_reads_return(redis_server, prefix, rds):
    keys = Keys(prefix)
    expires_at = int((time.time() + 60) * 1000)

    async def body() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        writer = BatchWriter(client)
        try:
            await writer.submit(store.set_op(keys, "a/b", store.RetainedRecord(b"one", 1)), name="t")  # type: ignore[misc]
            await writer.submit(store.set_op(keys, "a/c", store.RetainedRecord(b"two", 2, b"", expires_at)), name="t")  # type: ignore[misc]
            await writer.submit(store.set_op(keys, "gone", store.RetainedRecord(b"three", 0)), name="t")  # type: ignore[misc]
            await writer.submit(store.clear_op(keys, "gone"), name="t")  # type: ignore[misc]
            assert await store.read_one(client, keys, "a/b") == store.RetainedRecord(b"one", 1)
            assert await store.read_one(client, keys, "gone") is None
            records, bad = await store.load_all(client, keys)
            assert records == {
                "a/b": store.RetainedRecord(b"one", 1),
                "a/c": store.RetainedRecord(b"two", 2, b"", expires_at),
            }
            assert bad == {}
        finally:
            await writer.close()
            await client.aclose()

    asyncio.run(body())
    # Redis drops the message at its expiry by itself
    assert abs(rds.pexpiretime(keys.retained("a/c")) - expires_at) <= 1
    assert rds.ttl(keys.retained("a/b")) == -1


def test_keys_that_cannot_be_used_are_reported(redis_server, prefix, rds):
    keys = Keys(prefix)
    rds.hset(keys.retained("hash"), "payload", "x")
    rds.set(keys.retained("junk"), "not a record")
    rds.set(keys.retained("fine"), store.encode(store.RetainedRecord(b"ok", 0)))

    async def body() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            records, bad = await store.load_all(client, keys)
            assert records == {"fine": store.RetainedRecord(b"ok", 0)}
            assert set(bad) == {"hash", "junk"}
            assert "hash key" in bad["hash"]
            with pytest.raises(store.Corrupt):
                await store.read_one(client, keys, "hash")
            with pytest.raises(store.Corrupt):
                await store.read_one(client, keys, "junk")
        finally:
            await client.aclose()

    asyncio.run(body())
