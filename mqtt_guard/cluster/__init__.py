"""Several brokers behaving as one, through Redis (issue 18): the engine-independent core.

- `filters.py`: this broker's deduplicated subscription filters, with reference counts and deltas;
- `table.py`: the other brokers' filters in a trie: which brokers want a topic;
- `forward.py`: what a forwarded message carries and how batches are packed and sequenced;
- `node.py`: `ClusterNode`, one broker's membership, which satisfies `Cluster` below;
- store/cluster.py: the Redis side (filter sets and their deltas, the per-broker inboxes).

`Cluster` and `OnRemote` are the seam the engine implements against (docs/scaling.md "Engine
integration" says what the engine must do on each side).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .forward import RemoteMessage

__all__ = ["Cluster", "OnRemote", "RemoteMessage"]

OnRemote = Callable[[RemoteMessage], None]
"""Called by the cluster, on the event loop, for each message another broker forwarded here, in the
order its publisher published on its topic. The engine delivers it to its local subscribers exactly as a
local PUBLISH of `client_id`/`username` (each receiver's ACL RECEIVE check, quota and analytics), but
without the publisher-side checks and counts (done once, on `origin`) and without forwarding it again."""


class Cluster(Protocol):
    """What the engine calls. Every method is synchronous and makes no Redis round trip: the hot path
    stays free of Redis (the writes happen at the end of the event-loop iteration)."""

    broker_id: str
    alone: bool
    """True while no other broker has a subscriber to anything: the engine then skips `destinations`
    (what a broker alone pays per PUBLISH: one attribute read)."""

    async def start(self) -> None: ...

    async def stop(self, timeout: float = ...) -> None:
        """Forward what waits, leave the cluster (the others stop forwarding here at once), stop."""
        ...

    def subscribed(self, entry: str) -> None:
        """A session subscribed to `entry` (a filter or `$share/G/F`), once per session and entry: a
        re-SUBSCRIBE of a filter the session holds is not a new one."""
        ...

    def unsubscribed(self, entry: str) -> None:
        """A session's subscription to `entry` ended (UNSUBSCRIBE, clean session closed, session dropped
        or expired)."""
        ...

    def destinations(self, topic: str) -> frozenset[str]:
        """The other brokers that have a subscriber to `topic` (cached per topic; empty when none): the
        engine can test this before it builds a `RemoteMessage`."""
        ...

    def forward(self, message: RemoteMessage, destinations: frozenset[str] | None = None) -> int:
        """Send a message a local client published (or a will, a retained message) to each broker with a
        matching subscriber, batched per destination and event-loop iteration; returns to how many. A
        message whose `origin` is another broker is never forwarded (returns 0)."""
        ...
