"""A GuardedBroker running in this test process (on its own event loop thread), for tests that look at
broker internals (sessions, queue depths, counters) while real clients use real sockets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from mqtt_guard.config import GuardConfig, LimitsConfig, ListenerConfig
from mqtt_guard.engine.broker import GuardedBroker
from mqtt_guard.guard import Guard
from tests.helpers.servers import free_port


class InProcessBroker:
    def __init__(
        self,
        redis_url: str,
        prefix: str,
        *,
        limits: LimitsConfig | None = None,
        allow_anonymous: bool = True,
        acl_default: str = "allow",
    ) -> None:
        self.port = free_port()
        self.config = GuardConfig(listeners=[ListenerConfig(bind=f"127.0.0.1:{self.port}")])
        self.config.redis.url = redis_url
        self.config.redis.prefix = prefix
        self.config.auth.allow_anonymous = allow_anonymous
        self.config.acl.default = acl_default  # type: ignore[assignment]  # the tests pass a plain str
        if limits is not None:
            self.config.limits = limits
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.broker: GuardedBroker | None = None
        self.guard: Guard | None = None

    def start(self) -> InProcessBroker:
        self.thread.start()

        async def boot() -> None:
            self.guard = Guard(self.config)
            await self.guard.start()
            self.broker = GuardedBroker(self.config, self.guard)
            await self.broker.start()

        self.run(boot())
        return self

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any], timeout: float = 10) -> Any:
        """Run a plain function on the broker's loop (so it sees a consistent state)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def go() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(go)
        return fut.result(timeout)

    def stop(self) -> None:
        async def down() -> None:
            if self.broker is not None:
                await self.broker.shutdown()
            if self.guard is not None:
                await self.guard.close()

        try:
            self.run(down())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
