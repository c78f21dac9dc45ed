"""amqtt plugin: publishes $SYS/broker/... every `metrics.sys_interval` and samples what only the broker
knows (sessions, subscriptions, retained messages, per-client queue depth) for the analytics.

Every broker loads it (engine/broker.py `amqtt_config`); `metrics.sys_interval: 0` turns the topics off
and keeps the sampling for /metrics. Topics and their ACL: mqtt_guard/metrics/sys.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from amqtt.broker import BrokerContext
from amqtt.plugins.base import BasePlugin

from ..engine.session_info import queue_of
from ..guard import Guard
from ..metrics.service import BrokerSample
from ..metrics.sys import SysState, sys_topics
from ..tasks import cancel_and_wait

log = logging.getLogger("mqtt_guard.sys")


def queue_depth(session: Any) -> int:
    """Messages waiting for a session: the engine's queue (waiting + in flight), else amqtt's counts."""
    q = queue_of(session)
    if q is not None:
        return q.depth()[0]
    try:
        return int(session.retained_messages_count) + int(session.inflight_out_count)
    except (AttributeError, TypeError):
        return 0


def guard_of(context: BrokerContext) -> Guard:
    """The Guard of the broker this plugin runs in (amqtt gives plugins its context, not the broker)."""
    guard = getattr(context._broker_instance, "guard", None)  # noqa: SLF001 - amqtt's context has no public accessor
    if not isinstance(guard, Guard):
        raise RuntimeError("mqtt-guard plugins need mqtt_guard.engine.broker.GuardedBroker")
    return guard


class GuardSysPlugin(BasePlugin[BrokerContext]):  # type: ignore[misc]  # amqtt has no type information
    @dataclass
    class Config:
        pass

    def __init__(self, context: BrokerContext) -> None:
        super().__init__(context)
        self.guard = guard_of(context)
        self.service = self.guard.metrics
        self.service.probe = self.sample
        self.state = SysState()
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> BrokerSample:
        ctx = self.context
        depths: dict[str, int] = {}
        total = 0
        for session in ctx.sessions:
            total += 1
            if session.client_id in self.guard.clients:
                depths[session.client_id] = queue_depth(session)
        subscriptions = sum(len(subs) for subs in ctx.subscriptions.values())
        retained = sum(1 for topic in ctx.retained_messages if not topic.startswith("$SYS/"))
        return BrokerSample(sessions_total=total, subscriptions=subscriptions, retained=retained, queue_depths=depths)

    async def on_broker_post_start(self, *args: Any, **kwargs: Any) -> None:
        interval = self.guard.config.metrics.sys_interval
        if interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(interval), name="mqtt-guard-sys")

    async def on_broker_pre_shutdown(self, *args: Any, **kwargs: Any) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def publish_once(self) -> int:
        """Publish the $SYS values that changed; returns how many."""
        try:
            sample = self.sample()
        except Exception:
            log.exception("cannot sample broker state for $SYS")
            sample = None
        changed = self.state.changed(sys_topics(self.service, sample))
        for topic, text in changed.items():
            data = text.encode()
            await self.context.retain_message(topic, data)  # for clients that subscribe later
            await self.context.broadcast_message(topic, data)  # for the current subscribers
        return len(changed)

    async def _run(self, interval: float) -> None:
        while True:
            try:
                await self.publish_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # $SYS must never take the broker down
                log.exception("$SYS publishing failed")
            await asyncio.sleep(interval)
