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


async def _storm(port: int, logins: list[tuple[str, str, str]]) -> list[object]:
    """Open one raw connection per (source address, username, password) at once; the CONNACK codes."""

    async def one(i: int, source: str, username: str, password: str) -> object:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 30
            )
            writer.write(rawmqtt.connect(f"c-{i}", username=username, password=password))
            connack = await asyncio.wait_for(reader.readexactly(4), 60)
            writer.close()
            return connack[3]
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            return type(exc).__name__

    return list(await asyncio.gather(*(one(i, *login) for i, login in enumerate(logins))))


def _users(rds, prefix: str, names: list[str], iterations: int) -> None:
    encoded = hash_password("pw", iterations=iterations)
    keys = Keys(prefix)
    pipe = rds.pipeline()
    for name in names:
        pipe.hset(keys.user(name), mapping={USER_PASSWORD: encoded})
    pipe.execute()


def test_a_full_check_queue_sheds_unknown_users_never_a_known_users_first_check(rds, prefix, start_broker, tmp_path):
    # One hash worker, a queue of 10, hashes of a few ms: 200 unknown-user CONNECTs from one address and
    # 100 known devices from another at once. Throttling is off: this is about the queue alone.
    devices = [f"dev-{i}" for i in range(100)]
    _users(rds, prefix, devices, iterations=5_000)
    config = tmp_path / "queue.yaml"
    config.write_text("auth:\n  hash_workers: 1\n  hash_queue: 10\n  throttle:\n    enabled: false\n")
    broker = start_broker("--config", str(config))
    logins = [("127.0.0.2", f"nobody-{i}", "guess") for i in range(200)]
    logins[::3] = [("127.0.0.3", name, "pw") for name in devices][: len(logins[::3])]
    rest = devices[len(logins[::3]) :]
    logins += [("127.0.0.3", name, "pw") for name in rest]
    codes = asyncio.run(_storm(broker.port, logins))
    known = [c for (source, _, _), c in zip(logins, codes, strict=True) if source == "127.0.0.3"]
    unknown = Counter(c for (source, _, _), c in zip(logins, codes, strict=True) if source == "127.0.0.2")
    assert known == [0] * len(devices)
    assert unknown[3] > 0, unknown  # shed: server busy, devices retry
    assert set(unknown) <= {3, 5}, unknown
    assert "password checks queued beyond auth.hash_queue=10" in broker.wait_log("auth.hash_queue=10")


def test_guesses_queued_before_the_ban_are_answered_without_a_hash(rds, prefix, start_broker, tmp_path):
    # 300 guesses at once from one address: past max_failures the address is banned, and the guesses
    # still queued are refused when their turn comes, not hashed; another address's devices all get in.
    devices = [f"dev-{i}" for i in range(50)]
    _users(rds, prefix, devices, iterations=5_000)
    config = tmp_path / "ban.yaml"
    config.write_text("auth:\n  hash_workers: 1\n  throttle:\n    max_failures: 10\n")
    broker = start_broker("--config", str(config))
    # a password spray: each guess at another user, so only the address's count reaches its limit
    logins = [("127.0.0.2", devices[i % len(devices)], f"guess-{i}") for i in range(300)] + [
        ("127.0.0.3", name, "pw") for name in devices
    ]
    codes = asyncio.run(_storm(broker.port, logins))
    assert codes[300:] == [0] * len(devices)
    assert set(codes[:300]) == {5}
    log = broker.wait_log("refusing address 127.0.0.2")
    assert log.count("wrong password") <= 12, log.count("wrong password")  # 10, and the check(s) then running
    # the right password from the banned address is refused without a check
    assert asyncio.run(_storm(broker.port, [("127.0.0.2", "dev-0", "pw")])) == [5]
