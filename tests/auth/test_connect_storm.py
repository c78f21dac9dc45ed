"""A reconnect storm (issue 15 item 1): many devices this broker process has never verified connect at
once, as a fleet does after a broker restart. Redis is healthy throughout, so every one gets CONNACK 0:
the Redis work of the CONNECTs queues for a pooled connection instead of failing as "Redis
unavailable" (CONNACK 3), which is what redis-py's default pool did past 100 connections in flight."""

from __future__ import annotations

import asyncio
from collections import Counter

from mqtt_guard.auth.hashes import hash_password
from mqtt_guard.store.keys import USER_PASSWORD, Keys
from tests.helpers import rawmqtt

DEVICES = 1_000  # CI-sized; `make bench`'s connect cases carry the large figures


async def _connect_all(port: int, n: int) -> Counter[object]:
    """Open n raw MQTT connections at once; the CONNACK return code of each (or the error's name)."""
    codes: Counter[object] = Counter()

    async def one(i: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            writer.write(rawmqtt.connect(f"dev-{i}", username=f"dev-{i}", password="pw"))
            connack = await asyncio.wait_for(reader.readexactly(4), 60)
            codes[connack[3]] += 1
            writer.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            codes[type(exc).__name__] += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return codes


def test_a_thousand_never_seen_devices_connecting_at_once_all_get_in(rds, prefix, start_broker):
    # Devices migrated from mosquitto keep their $7$ hashes (mosquitto_passwd's 101 iterations): the
    # storm is about Redis and queueing, not about hashing cost.
    encoded = hash_password("pw", iterations=101)
    keys = Keys(prefix)
    pipe = rds.pipeline()
    for i in range(DEVICES):
        pipe.hset(keys.user(f"dev-{i}"), mapping={USER_PASSWORD: encoded})
    pipe.execute()
    broker = start_broker()
    codes = asyncio.run(_connect_all(broker.port, DEVICES))
    assert codes == Counter({0: DEVICES}), codes
    assert "Redis unavailable" not in broker.log()
