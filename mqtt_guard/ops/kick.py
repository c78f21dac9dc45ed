"""Kicks and blocks: disconnect a client (or every client of a user) on whichever broker holds it.

The kick goes through Redis to the broker holding the session (the path the sidecar uses) and is
recorded in the audit stream atomically with it (store/quota.py KICK_LUA); a block makes the client id
(or the user) get CONNACK 5 until it expires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from ..store.keys import Keys
from ..store.quota import QuotaStore
from . import MAX_SECONDS, NotFound, check_number


@dataclass
class Sent:
    """One kick: queued for `broker` (ok), or why not (`detail`)."""

    client_id: str
    ok: bool
    detail: str


@dataclass
class KickResult:
    kicks: list[Sent] = field(default_factory=list)
    connected: bool = True  # the client (a user: any client) had a registered session
    blocked_until: float = 0.0  # 0: no block set
    broker: str = ""  # the broker holding the client (kick_client)
    broker_alive: bool = True  # that broker heartbeats (else the kick waits for it)


def check_block(seconds: float) -> float:
    """A kick's block duration (0: none), checked before anything is written."""
    return check_number(seconds, "the block duration", 0, MAX_SECONDS)


async def kick_client(
    redis: aioredis.Redis, keys: Keys, client_id: str, reason: str, by: str, *, block: float = 0.0
) -> KickResult:
    """Kick one client id; with `block` seconds its reconnects are refused that long (also when it is
    not connected now)."""
    store = QuotaStore(redis, keys)
    until = time.time() + check_block(block) if block else 0.0
    session = await store.session(client_id)
    if not session:
        if block:
            await store.set_block(keys.block_client(client_id), reason, until, by, client_id=client_id)
        return KickResult(connected=False, blocked_until=until)
    broker = session.get("broker", "")
    alive = await store.broker_alive(broker)
    ok, detail = await store.kick(
        client_id,
        reason,
        by,
        broker_id=broker,
        conn=session.get("conn", ""),
        block_key=keys.block_client(client_id) if block else None,
        block_until=until,
    )
    return KickResult([Sent(client_id, ok, detail)], True, until if ok else 0.0, broker, alive)


async def kick_user(
    redis: aioredis.Redis, keys: Keys, username: str, reason: str, by: str, *, block: float = 0.0
) -> KickResult:
    """Kick every connected client of a user; with `block` the user's CONNECTs are refused that long."""
    store = QuotaStore(redis, keys)
    until = time.time() + check_block(block) if block else 0.0
    sessions = await store.sessions_of_user(username)
    if block:
        await store.set_block(keys.block_user(username), reason, until, by, username=username)
    result = KickResult(connected=bool(sessions), blocked_until=until)
    for s in sessions:
        ok, detail = await store.kick(s["client_id"], reason, by, broker_id=s.get("broker", ""), conn=s.get("conn", ""))
        result.kicks.append(Sent(s["client_id"], ok, detail))
    return result


def block_key(keys: Keys, *, client_id: str | None = None, username: str | None = None) -> str:
    return keys.block_client(client_id) if client_id is not None else keys.block_user(username or "")


async def block(
    redis: aioredis.Redis,
    keys: Keys,
    seconds: float,
    reason: str,
    by: str,
    *,
    client_id: str | None = None,
    username: str | None = None,
    audit_maxlen: int = 100_000,
) -> float:
    """Refuse the CONNECTs of a client id (or a user) for `seconds`, audited; returns when it ends."""
    until = time.time() + check_number(seconds, "a block's duration", 0, MAX_SECONDS, low_open=True)
    who = {"client_id": client_id} if client_id is not None else {"username": username or ""}
    store = QuotaStore(redis, keys, audit_maxlen=audit_maxlen)
    await store.set_block(block_key(keys, client_id=client_id, username=username), reason, until, by, **who)
    return until


async def unblock(
    redis: aioredis.Redis,
    keys: Keys,
    by: str,
    *,
    client_id: str | None = None,
    username: str | None = None,
    audit_maxlen: int = 100_000,
) -> None:
    """Lift a block (brokers track the `block:` prefix and forget it at once), audited."""
    who = {"client_id": client_id} if client_id is not None else {"username": username or ""}
    if not await redis.delete(block_key(keys, client_id=client_id, username=username)):
        raise NotFound(f"no block on {next(iter(who.values()))!r}")
    await QuotaStore(redis, keys, audit_maxlen=audit_maxlen).audit(action="unblock", by=by, **who)
