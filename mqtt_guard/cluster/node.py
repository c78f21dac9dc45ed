"""One broker's membership of the cluster: its filters, the table of the others', the routes link and
the inbox/outbox, behind the small interface the engine calls (`mqtt_guard.cluster.Cluster`).

No engine here: the engine integration (next step of issue 18) calls `subscribed`/`unsubscribed` as
subscriptions come and go, `destinations` + `forward` for every message its own clients publish, and
receives the other brokers' messages through `on_remote` (docs/scaling.md "Engine integration")."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis.asyncio as aioredis

from ..store import keys as k
from ..store.cluster import (
    ABSENT_GRACE,
    BUFFER_LIMIT,
    INBOX_MAXLEN,
    LIVENESS_INTERVAL,
    ROUTES_MAXLEN,
    Inbox,
    Outbox,
    RouteLink,
)
from ..store.connection import make_async_client
from . import Cluster
from .filters import LocalFilters
from .forward import RemoteMessage, pack_one
from .table import FilterTable

log = logging.getLogger("mqtt_guard.cluster")


class ClusterNode:
    """Satisfies `mqtt_guard.cluster.Cluster`. `broker_id` must be the broker's id in the quota registry
    (`QuotaEnforcer.broker_id`): the others learn of its death there."""

    def __init__(
        self,
        url: str,
        keys: k.Keys,
        broker_id: str,
        on_remote: Callable[[RemoteMessage], None],
        *,
        routes_maxlen: int = ROUTES_MAXLEN,
        inbox_maxlen: int = INBOX_MAXLEN,
        buffer_limit: int = BUFFER_LIMIT,
        liveness_interval: float = LIVENESS_INTERVAL,
        absent_grace: float = ABSENT_GRACE,
        retry_interval: float = 0.5,
        client: Callable[..., aioredis.Redis] = make_async_client,
    ) -> None:
        """`client(url, **options)` makes each Redis client (the broker passes one that applies its trust
        gate, store/generation.py: a Redis that lost the deployment's data is no cluster fabric either)."""
        self.broker_id = broker_id
        self.filters = LocalFilters()
        self.table = FilterTable()
        self.alone = True  # no other broker has a subscriber to anything (kept by the table)
        self.table.on_empty = self._set_alone
        self.outbox = Outbox(url, keys, broker_id, inbox_maxlen=inbox_maxlen, buffer_limit=buffer_limit, client=client)
        self.inbox = Inbox(url, keys, broker_id, on_remote, retry_interval=retry_interval, client=client)
        self.link = RouteLink(
            url,
            keys,
            broker_id,
            self.filters,
            self.table,
            routes_maxlen=routes_maxlen,
            liveness_interval=liveness_interval,
            absent_grace=absent_grace,
            retry_interval=retry_interval,
            client=client,
            on_gone=self.outbox.forget,
        )

    async def start(self) -> None:
        self.inbox.start()
        self.link.start()

    async def stop(self, timeout: float = 2.0) -> None:
        """Forward what waits (up to `timeout`), leave the cluster (the others stop forwarding here at
        once), stop reading."""
        if not await self.outbox.flush(timeout):
            log.warning("cluster: %d forwarded message(s) not written before shutdown", self.outbox.pending)
        await self.link.stop(leave=True, timeout=timeout)
        await self.inbox.stop()
        await self.outbox.close()

    def _set_alone(self, empty: bool) -> None:
        self.alone = empty

    def subscribed(self, entry: str) -> None:
        if self.filters.subscribe(entry):
            self.link.changed()

    def unsubscribed(self, entry: str) -> None:
        if self.filters.unsubscribe(entry):
            self.link.changed()

    def destinations(self, topic: str) -> frozenset[str]:
        return self.table.brokers_for(topic)

    def forward(self, message: RemoteMessage, destinations: frozenset[str] | None = None) -> int:
        if message.origin and message.origin != self.broker_id:
            return 0  # it came from another broker: forwarded once, by its own broker
        dests = self.table.brokers_for(message.topic) if destinations is None else destinations
        if not dests:
            return 0
        self.outbox.send(pack_one(message), message.qos, dests)
        return len(dests)

    @property
    def table_version(self) -> int:
        return self.table.version

    def counters(self) -> dict[str, int]:
        """What the engine integration exposes as metrics (docs/scaling.md "Engine integration")."""
        out, inbox, link = self.outbox, self.inbox, self.link
        return {
            "cluster_forwarded": out.sent,
            "cluster_forward_entries": out.entries,
            "cluster_forward_pending": out.pending,
            "cluster_forward_lost": out.lost,
            "cluster_forward_failed": out.failed,
            "cluster_received": inbox.received,
            "cluster_duplicates_skipped": inbox.duplicates,
            "cluster_batches_missed": inbox.missed,
            "cluster_batches_unreadable": inbox.unreadable,
            "cluster_inbox_reconnects": inbox.reconnects,
            "cluster_route_resyncs": link.resyncs,
            "cluster_brokers": len(self.table.brokers()),
            "cluster_remote_filters": len(self.table),
        }


def _is_a_cluster(node: ClusterNode) -> Cluster:
    """(mypy checks here that ClusterNode satisfies the engine's seam)"""
    return node
