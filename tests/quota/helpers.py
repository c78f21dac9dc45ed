"""In-process Guards on the test Redis: the quota logic exercised exactly as the engine will call it.

A Guard here is the real object a broker process builds (real Redis, real Lua, real heartbeat and
kick consumer); only the broker around it is absent: a `FakeEngine` records the kicks it is asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mqtt_guard.auth.authenticator import AuthResult, Outcome
from mqtt_guard.config import GuardConfig
from mqtt_guard.guard import Guard
from mqtt_guard.guard_client import GuardClient
from mqtt_guard.store.users import UserRecord
from tests.helpers.wait import until_async as eventually  # noqa: F401 - the quota tests import it from here


def make_config(url: str, prefix: str, **quota: Any) -> GuardConfig:
    config = GuardConfig()
    config.redis.url = url
    config.redis.prefix = prefix
    config.quota.sync_interval = quota.pop("sync_interval", 0.1)
    config.quota.broker_dead_after = quota.pop("broker_dead_after", 2.0)
    for name, value in quota.items():
        setattr(config.quota, name, value)
    return config


class Kicks:
    """The engine a Guard is bound to in these tests (`mqtt_guard.ports.Engine`): it records kicks and
    holds no queues."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    async def kick(self, client_id: str, reason: str, code: int = 0x98) -> bool:
        self.calls.append((client_id, reason, code))
        return True

    def queue_depth(self, client_id: str) -> tuple[int, int]:
        return (0, 0)

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        return {}

    def of(self, client_id: str) -> list[str]:
        return [r for c, r, _ in self.calls if c == client_id]

    def codes(self, client_id: str) -> list[int]:
        """The MQTT 5 DISCONNECT reason of each kick of `client_id`."""
        return [code for c, _, code in self.calls if c == client_id]


@asynccontextmanager
async def guards(config: GuardConfig, n: int = 1) -> AsyncIterator[list[Guard]]:
    started = []
    try:
        for _ in range(n):
            g = Guard(config)
            kicks = Kicks()
            g.kicks = kicks  # type: ignore[attr-defined]  # the tests read the kicks from here
            g.bind_engine(kicks)
            await g.start()
            started.append(g)
        yield started
    finally:
        for g in started:
            if not getattr(g, "_crashed", False):
                await g.close()


def user(name: str) -> AuthResult:
    return AuthResult(Outcome.OK, name, UserRecord(name))


async def attach(g: Guard, client_id: str, username: str) -> GuardClient:
    return await g.attach(client_id, user(username))


async def fresh_window(seconds: int, need: float) -> None:
    """Wait, if needed, so that at least `need` seconds remain in the current UTC-aligned window."""
    left = seconds - time.time() % seconds
    if left < need:
        await asyncio.sleep(left + 0.02)


async def crash(g: Guard) -> None:
    """Stop a Guard the way a killed process stops: no goodbye to Redis (leases, sessions stay)."""
    # (its tasks are re-cancelled until they end, tasks.cancel_and_wait: a cancellation that lands
    # inside a redis-py call can be swallowed; a plain cancel + gather hung here once in CI)
    await g.quota.halt()
    await g.listener.stop()
    metrics = getattr(g, "metrics", None)
    if metrics is not None:
        await metrics.close()
    g.authenticator.close()
    await g.redis.aclose()
    g._crashed = True  # type: ignore[attr-defined]  # guards() closes every Guard not marked so
