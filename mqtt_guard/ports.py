"""The seams between the Guard (auth, ACL, quotas, analytics) and the engine (amqtt underneath), as
Protocols. Both sides import this module and never each other, so the services below the Guard stay
free of the broker and the broker free of the Guard's internals (issue 14)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

Kick = Callable[[str, str], Awaitable[bool]]
"""Close a client's connection from the server side: (client id, reason) -> False when no such client
was connected here."""


class QueueDepths(Protocol):
    """What the engine holds for each session, read by the quota heartbeat (slow consumers) and by
    the analytics (queue-depth gauges)."""

    def queue_depth(self, client_id: str) -> tuple[int, int]:
        """(messages, bytes) held for one session: queued plus sent-but-unacknowledged; (0, 0) if none."""
        ...

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """queue_depth of every session the engine holds, connected or offline-persistent."""
        ...


class Engine(QueueDepths, Protocol):
    """The broker as the Guard sees it: it can disconnect a client and report queue depths."""

    async def kick(self, client_id: str, reason: str) -> bool: ...
