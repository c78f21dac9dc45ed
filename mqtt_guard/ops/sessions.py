"""Dropping a client's session (`mqtt-guard session drop`, `DELETE /api/sessions/{client_id}`).

Under `auth.client_id_policy: owner` a persistent session keeps its client id for its user while the
client is offline; dropping it frees the id earlier. Offline sessions live in the memory of the broker
the client last used, not in Redis, so the request goes to every live broker through its kick queue
(the path kicks use); the broker holding the session discards it: a connected client is disconnected
(its will is published, as on a lost link) and its session discarded instead of kept; an offline
session goes at once with its subscriptions and queued messages. The request is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..store.keys import Keys
from ..store.quota import QuotaStore
from . import NotFound


@dataclass(frozen=True)
class Dropped:
    client_id: str
    brokers: int  # live brokers the request went to
    connected_on: str | None  # the broker the client was connected to, if it was


async def drop_session(
    redis: Any, keys: Keys, client_id: str, reason: str, by: str, *, audit_maxlen: int = 100_000
) -> Dropped:
    """Send the drop to every live broker; NotFound when no broker runs (nothing can hold the session)."""
    store = QuotaStore(redis, keys, audit_maxlen=audit_maxlen)
    brokers = await store.live_brokers()
    if not brokers:
        raise NotFound(f"no broker is running: nothing holds a session of {client_id!r}")
    online = (await store.session(client_id)).get("broker")
    for broker in brokers:
        await store.push(broker, {"drop": client_id, "reason": reason, "by": by})
    await store.audit(action="session_drop", client_id=client_id, reason=reason, by=by)
    return Dropped(client_id, len(brokers), online or None)
