"""The in-process guard: one object per broker process that owns the Redis connection and the state
the plugins decide from (users, and later ACLs, quotas and counters).

Plugins reach it through `guard_of(context)`; they never open Redis connections of their own, so
one broker has one connection pool and one invalidation listener however many plugins it loads.
"""

from __future__ import annotations

import logging
from typing import Any

from .auth.authenticator import Authenticator
from .config import GuardConfig
from .store.connection import make_async_client
from .store.keys import Keys
from .store.users import UserStore

log = logging.getLogger("mqtt_guard")


class Guard:
    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.keys = Keys(config.redis.prefix)
        self.redis = make_async_client(config.redis.url)
        self.users = UserStore(self.redis, self.keys)
        self.authenticator = Authenticator(self.users, config.auth)

    async def start(self) -> None:
        """Check Redis once so a wrong URL is reported at start; a Redis that is down is not fatal."""
        try:
            await self.redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure here is only reported
            log.warning("Redis at %s is not reachable yet (%s); CONNECTs follow auth.on_redis_down=%s",
                        _safe_url(self.config.redis.url), exc, self.config.auth.on_redis_down)

    async def close(self) -> None:
        self.authenticator.close()
        await self.redis.aclose()


def _safe_url(url: str) -> str:
    """The Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def guard_of(context: Any) -> Guard:
    """The Guard of the broker a plugin runs in (the one sanctioned reach into amqtt's context)."""
    guard = getattr(context._broker_instance, "guard", None)  # noqa: SLF001
    if guard is None:
        raise RuntimeError("mqtt-guard plugins need mqtt_guard.engine.broker.GuardedBroker")
    return guard
