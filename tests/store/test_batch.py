"""The durable-state writer (store/batch.py) against a real redis-server: writes of one loop iteration
go in one round trip and in order, a command error fails only its own op, acknowledged writes wait
through a Redis outage and land when it is back, unacknowledged ones are bounded while it is away."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from mqtt_guard.store.batch import BatchWriter, WriterClosed
from mqtt_guard.store.connection import make_async_client
from tests.helpers.servers import RedisServer


def _set(key: str, value: str) -> Any:
    return lambda pipe: pipe.set(key, value)


def test_writes_of_one_iteration_share_one_round_trip_and_keep_their_order(redis_server, prefix, rds):
    async def body() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        writer = BatchWriter(client)
        try:
            futures = [writer.submit(_set(f"{prefix}k{i}", str(i)), name="test") for i in range(200)]
            futures.append(writer.submit(_set(f"{prefix}k0", "last"), name="test"))  # after the first write of k0
            await asyncio.gather(*futures)  # type: ignore[arg-type]
            assert writer.batches == 1 and writer.written == 201
        finally:
            await writer.close()
            await client.aclose()

    asyncio.run(body())
    assert rds.get(f"{prefix}k0") == "last"
    assert rds.get(f"{prefix}k199") == "199"


def test_a_command_error_fails_only_its_own_write(redis_server, prefix, rds):
    rds.set(f"{prefix}corrupt", "a string where a hash belongs")

    def broken(pipe: Any) -> None:
        raise ValueError("a bug in one op")

    async def body() -> list[BaseException | None]:
        client = aioredis.Redis.from_url(redis_server.url)
        writer = BatchWriter(client)
        try:
            futures = [
                writer.submit(_set(f"{prefix}before", "1"), name="test"),
                writer.submit(lambda pipe: pipe.hset(f"{prefix}corrupt", "f", "v"), name="test"),
                writer.submit(broken, name="test"),
                writer.submit(_set(f"{prefix}after", "1"), name="test"),
            ]
            return await asyncio.gather(*futures, return_exceptions=True)  # type: ignore[arg-type]
        finally:
            await writer.close()
            await client.aclose()

    before, wrongtype, bug, after = asyncio.run(body())
    assert before is None and after is None
    assert isinstance(wrongtype, aioredis.ResponseError) and "WRONGTYPE" in str(wrongtype)
    assert isinstance(bug, ValueError)
    assert rds.get(f"{prefix}before") == "1" and rds.get(f"{prefix}after") == "1"


def test_acknowledged_writes_wait_for_redis_and_unacknowledged_ones_are_bounded(prefix):
    server = RedisServer().start()
    restarted = RedisServer(server.port)  # the same port, started again while the writer waits
    lost: list[int] = []

    async def body() -> None:
        client = make_async_client(server.url, socket_timeout=0.5)
        writer = BatchWriter(client, buffer_limit=10, on_lost=lost.append)
        try:
            assert await writer.flush(5)
            server.stop()
            acked = writer.submit(_set(f"{prefix}acked", "1"), name="test")
            assert acked is not None
            for i in range(25):
                writer.submit(_set(f"{prefix}noack{i}", "1"), name="test", ack=False)
            await asyncio.sleep(1.0)  # several failed sends: the write is still pending, not failed
            assert not acked.done() and writer.outage_since is not None
            assert writer.lost == 15 and sum(lost) == 15  # the oldest no-ack writes beyond the bound
            await asyncio.to_thread(restarted.start)
            await asyncio.wait_for(acked, 30)
            assert await writer.flush(30)
            assert writer.outage_since is None
        finally:
            await writer.close()
            await client.aclose()

    try:
        asyncio.run(body())
        rds = restarted.client()
        assert rds.get(f"{prefix}acked") == "1"
        written = [i for i in range(25) if rds.get(f"{prefix}noack{i}") == "1"]
        assert written == list(range(15, 25))  # the newest ten were kept
    finally:
        server.cleanup()
        restarted.cleanup()


def test_closing_with_redis_away_fails_what_was_not_written(prefix):
    server = RedisServer().start()

    async def body() -> None:
        client = make_async_client(server.url, socket_timeout=0.5)
        writer = BatchWriter(client)
        server.stop()
        acked = writer.submit(_set(f"{prefix}x", "1"), name="test")
        await writer.close(timeout=0.5)
        assert acked is not None and isinstance(acked.exception(), WriterClosed)
        late = writer.submit(_set(f"{prefix}y", "1"), name="test")
        assert late is not None and isinstance(late.exception(), WriterClosed)
        await client.aclose()

    try:
        asyncio.run(body())
    finally:
        server.cleanup()
