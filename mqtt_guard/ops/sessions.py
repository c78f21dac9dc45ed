"""Dropping a client's session (`mqtt-guard session drop`, `DELETE /api/sessions/{client_id}`).

Under `auth.client_id_policy: owner` a persistent session keeps its client id for its user while the
client is offline; dropping it frees the id earlier. An offline session lives in the memory of the broker
the client last used and, with durable state on, in Redis (`psession:r:`/`psession:q:`, docs/durability.md),
where any broker resumes it. The stored session is deleted here, and the request goes to every live
broker through its kick queue (the path kicks use); the broker holding the session discards it: a
connected client is disconnected (its will is published, as on a lost link) and its session discarded
instead of kept; an offline session goes at once with its subscriptions and queued messages. The
request is audited.
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
    stored: bool = False  # a stored session (durable state in Redis) was deleted


async def drop_session(
    redis: Any, keys: Keys, client_id: str, reason: str, by: str, *, audit_maxlen: int = 100_000
) -> Dropped:
    """Delete the stored session and send the drop to every live broker; NotFound when no broker runs
    and nothing is stored."""
    store = QuotaStore(redis, keys, audit_maxlen=audit_maxlen)
    stored = bool(await redis.delete(keys.psession(client_id), keys.psession_messages(client_id)))
    brokers = await store.live_brokers()
    if not brokers and not stored:
        raise NotFound(f"no broker is running and no session of {client_id!r} is stored")
    online = (await store.session(client_id)).get("broker") if brokers else None
    for broker in brokers:
        await store.push(broker, {"drop": client_id, "reason": reason, "by": by})
    await store.audit(action="session_drop", client_id=client_id, reason=reason, by=by)
    return Dropped(client_id, len(brokers), online or None, stored)


# HMGET of the same fields from many session hashes in one call: redis-py spends ~50 µs packing and parsing
# each pipelined command, so 10,000 HMGETs cost half a second of the admin server's CPU; one script call
# per INDEX_CHUNK keys returns the same in a fraction, and Redis is busy a few ms per call.
_HMGET_MANY = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HMGET', key, unpack(ARGV)) end
return out
"""
INDEX_CHUNK = 2000


async def session_index(redis: Any, keys: Keys, fields: list[str]) -> list[dict[str, str | None]]:
    """Every session the live brokers registered, with only `fields` (and client_id, broker) of its hash:
    what a page of the session table needs to filter and sort the whole fleet, without reading every
    session hash whole. Entries that moved to another broker are left out, as
    `QuotaStore.all_sessions` does."""
    store = QuotaStore(redis, keys)
    brokers = await store.live_brokers()
    if not brokers:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for b in brokers:
            pipe.smembers(keys.broker_sessions(b))
        members = await pipe.execute()
    wanted = ["broker", *dict.fromkeys(f for f in fields if f not in ("client_id", "broker"))]
    pairs = [(b, cid) for b, ids in zip(brokers, members, strict=True) for cid in sorted(ids)]
    found: list[list[str | None]] = []
    for start in range(0, len(pairs), INDEX_CHUNK):
        chunk = [keys.session(cid) for _, cid in pairs[start : start + INDEX_CHUNK]]
        found += await redis.eval(_HMGET_MANY, len(chunk), *chunk, *wanted)
    out: list[dict[str, str | None]] = []
    for (b, cid), values in zip(pairs, found, strict=True):
        if values[0] != b:  # gone, or registered by another broker since
            continue
        row: dict[str, str | None] = dict(zip(wanted, values, strict=True))
        row["client_id"] = cid
        out.append(row)
    return out
