"""The broker's copy of the retained messages (durable/retained.py): the rules without a broker (expiry,
`$SYS`, clearing), and the copy against a real redis-server through the real BatchWriter: loaded at
start, written through, never turned back by a read that raced its own write, corrupt keys reported once."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from mqtt_guard.durable.retained import Retained, RetainedSet, from_record, props_valid, to_record
from mqtt_guard.store import retained as store
from mqtt_guard.store.batch import BatchWriter
from mqtt_guard.store.keys import Keys


def test_an_expiry_keeps_its_end_through_redis_and_is_never_served_after_it():
    msg = Retained(b"x", 1, b"", expires=1000.5)
    rec = to_record(msg, now_mono=1000.0, now_wall=1_767_225_600.0)
    assert rec.expires_at == 1_767_225_600_500
    # read by a broker whose monotonic clock is elsewhere: the same wall-clock end
    back = from_record(rec, now_mono=50.0, now_wall=1_767_225_600.2)
    assert abs(back.expires - 50.3) < 0.002
    assert to_record(Retained(b"x", 0), 1.0, 2.0).expires_at == 0

    clock = [100.0]
    rs = RetainedSet(clock=lambda: clock[0])
    rs.set("a/b", b"soon", 1, expires=101.0)
    rs.set("a/c", b"stays", 0)
    assert [t for t, _ in rs.matching("a/#")] == ["a/b", "a/c"]
    assert [t for t, _ in rs.matching("a/b")] == ["a/b"]  # a filter without wildcards: one lookup
    clock[0] = 101.0
    assert rs.matching("a/b") == []
    assert [t for t, _ in rs.matching("a/#")] == ["a/c"]
    assert "a/b" not in rs.messages  # forgotten, not only hidden


def test_without_redis_it_is_a_memory_store_with_the_mqtt_rules():
    rs = RetainedSet()
    assert rs.set("$SYS/broker/uptime", b"1", 0) is None
    assert rs.set("t", b"v", 1) is None  # nothing to wait for
    assert [t for t, _ in rs.matching("#")] == ["t"]  # wildcards do not match $ topics
    assert [t for t, _ in rs.matching("$SYS/#")] == ["$SYS/broker/uptime"]
    rs.set("t", b"", 1)  # an empty retained PUBLISH clears
    assert rs.get("t") is None


def test_forwarded_properties_are_checked_before_they_are_served():
    assert props_valid(b"")
    assert props_valid(b"\x03\x00\x04text")  # content type "text"
    assert not props_valid(b"\x03\x00\x09te")  # runs past the end
    assert not props_valid(b"\x7f")  # no such property


def _durable(url: str, keys: Keys) -> tuple[RetainedSet, BatchWriter, aioredis.Redis]:
    client = aioredis.Redis.from_url(url)
    writer = BatchWriter(client)
    return RetainedSet(redis=client, keys=keys, writer=writer), writer, client


def test_it_loads_at_start_writes_through_and_keeps_sys_topics_local(redis_server, prefix):
    keys = Keys(prefix)

    async def body() -> None:
        seed = aioredis.Redis.from_url(redis_server.url)
        await seed.set(keys.retained("old/one"), store.encode(store.RetainedRecord(b"from before", 1)))
        rs, writer, client = _durable(redis_server.url, keys)
        try:
            await rs.start()
            assert rs.get("old/one") == Retained(b"from before", 1)
            written = rs.set("new/one", b"v", 1)
            assert written is not None and rs.get("new/one") is not None  # local at once
            await written
            assert store.decode(await seed.get(keys.retained("new/one"))) == store.RetainedRecord(b"v", 1)
            assert rs.set("$SYS/broker/load", b"1", 1) is None
            rs.set("new/zero", b"q0", 0)
            await writer.flush()
            assert not await seed.exists(keys.retained("$SYS/broker/load"))
            assert await seed.exists(keys.retained("new/zero"))
            rs.on_reset()  # a full reload keeps the broker's own $SYS topics
            await asyncio.sleep(0.2)
            assert set(rs.messages) == {"old/one", "new/one", "new/zero", "$SYS/broker/load"}
        finally:
            await rs.stop()
            await writer.close()
            await client.aclose()
            await seed.aclose()

    asyncio.run(body())


def test_a_read_that_races_its_own_write_does_not_turn_the_copy_back(redis_server, prefix):
    keys = Keys(prefix)

    async def body() -> None:
        seed = aioredis.Redis.from_url(redis_server.url)
        await seed.set(keys.retained("t"), store.encode(store.RetainedRecord(b"old", 1)))
        rs, writer, client = _durable(redis_server.url, keys)
        try:
            await rs.start()
            for i in range(20):
                written = rs.set("t", f"new{i}".encode(), 1)
                rs.on_keys([keys.retained("t")])  # an invalidation arriving while the write is in flight
                await written  # type: ignore[misc]
                for _ in range(50):
                    await asyncio.sleep(0.005)
                    if rs.get("t") == Retained(f"new{i}".encode(), 1) and not rs._dirty:
                        break
                assert rs.get("t") == Retained(f"new{i}".encode(), 1)
        finally:
            await rs.stop()
            await writer.close()
            await client.aclose()
            await seed.aclose()

    asyncio.run(body())


def test_a_corrupt_key_is_reported_once_and_skipped(redis_server, prefix, caplog):
    keys = Keys(prefix)
    caplog.set_level(logging.WARNING, logger="mqtt_guard.durable")

    async def body() -> None:
        seed = aioredis.Redis.from_url(redis_server.url)
        rs, writer, client = _durable(redis_server.url, keys)
        try:
            await rs.start()
            rs.set("bad", b"fine for now", 0)
            await writer.flush()
            await seed.delete(keys.retained("bad"))
            await seed.hset(keys.retained("bad"), "x", "y")  # replaced by a hash (a mistaken edit)
            for _ in range(2):
                rs.on_keys([keys.retained("bad")])
                await asyncio.sleep(0.2)
            assert rs.get("bad") is None
        finally:
            await rs.stop()
            await writer.close()
            await client.aclose()
            await seed.aclose()

    asyncio.run(body())
    lines = [r.getMessage() for r in caplog.records if "'bad' skipped" in r.getMessage()]
    assert len(lines) == 1 and "a hash key" in lines[0]
