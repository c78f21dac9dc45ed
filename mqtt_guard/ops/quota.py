"""Quotas: set and unset limits, describe limits and usage (`quota show`), reset usage; blocks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from ..quota.limits import FIELDS, build, is_field, normalize, parse_limits, resolve
from ..quota.plans import PLAN_FIELD, layers
from ..quota.windows import utc
from ..store.keys import Keys
from ..store.quota import QuotaStore
from . import Invalid


def normalize_limits(values: dict[str, str], label: Callable[[str], str] = str) -> dict[str, str]:
    """Each field's value as stored (quota/limits.py `normalize`); `label` names a field in the error."""
    fields: dict[str, str] = {}
    for name, value in values.items():
        try:
            fields[name] = normalize(name, value)
        except ValueError as exc:
            raise Invalid(f"{label(name)}: {exc}") from None
    return fields


def check_changes(count: int, names: str) -> None:
    """Refuse a `quota set` (or PATCH) that names no limit: it would change nothing yet be audited.
    `names`: how the caller's user gives a limit (the CLI's options, the API's fields)."""
    if not count:
        raise Invalid(f"nothing to set: give at least one of {names}")


async def set_limits(redis: aioredis.Redis, keys: Keys, username: str | None, fields: dict[str, str]) -> str:
    """Write normalized fields into the user's (None: the default's) limits hash; returns its key."""
    key = QuotaStore(redis, keys).limits_key(username)
    mapping: dict[FieldT, EncodableT] = {f: v for f, v in fields.items()}  # Mapping is invariant in its key
    await redis.hset(key, mapping=mapping)
    return key


async def unset_limits(redis: aioredis.Redis, keys: Keys, username: str | None, names: list[str]) -> tuple[str, int]:
    """Remove fields (the user then falls back to the default's value): (key, how many were there)."""
    unknown = [n for n in names if not is_field(n)]
    if unknown:
        raise Invalid(f"unknown quota field {unknown[0]!r} (known: {', '.join(FIELDS)}, api:<NAME>:events|bytes)")
    key = QuotaStore(redis, keys).limits_key(username)
    return key, int(await redis.hdel(key, *names)) if names else 0


def _field_order(name: str) -> tuple[int, str]:
    return (FIELDS.index(name), "") if name in FIELDS else (len(FIELDS), name)


def _key_of(keys: Keys, username: str, source: str) -> str:
    """The Redis key a resolved field came from (`resolve`'s source labels)."""
    if source == "user":
        return keys.quota_user(username)
    if source == "default":
        return keys.quota_default()
    return keys.quota_plan(source.removeprefix("plan "))


async def reset(redis: aioredis.Redis, keys: Keys, username: str) -> list[str]:
    """Zero the user's usage in its current windows and lift its block; the usage keys reset."""
    return await QuotaStore(redis, keys).reset(username)


async def describe_quota(store: QuotaStore, keys: Keys, username: str | None) -> dict[str, Any]:
    """Limits (each with the key it comes from: the user's hash, a plan, the default; quota/plans.py),
    usage in the current window of every limit, block and sessions."""
    if not username:
        raw_default = await store.load_default()
        limits = parse_limits(None, raw_default)
        out: dict[str, Any] = {"user": None, "limits": {}, "problems": list(limits.problems)}
        for name in sorted(raw_default, key=_field_order):
            if is_field(name):
                out["limits"][name] = {"value": raw_default[name], "from": keys.quota_default()}
        return out
    src = (await store.load_limits([username]))[username]
    lay, missing = layers(src)
    values, sources, problems = resolve(lay)
    limits = build(values, [*missing, *problems])
    now = time.time()
    out = {"user": username, "limits": {}, "problems": list(limits.problems), "plan": src.user.get(PLAN_FIELD)}
    raw_of: dict[str, dict[str, str]] = {}
    for source, raw in lay:
        raw_of.setdefault(source, {}).update(raw or {})
    for name in sorted(sources, key=_field_order):
        source = sources[name]
        out["limits"][name] = {
            "value": (raw_of.get(source) or {}).get(name, ""),
            "from": _key_of(keys, username, source),
        }
    out["usage"] = {}
    for metric, allowance in limits.slots():
        start = allowance.window.start(now)
        end = allowance.window.end_of(start)
        h = await store.usage(keys.quota_usage(username, metric, start))
        held = sum(int(v) for f, v in h.items() if f.startswith("lease:"))
        used = int(h.get("used", 0))
        out["usage"][metric] = {
            "limit": allowance.limit,
            "window": str(allowance.window),
            "used": used,
            "left": max(0, allowance.limit - used),
            "held_by_brokers": held,
            "refused": int(h.get("refused", 0)),
            "window_start": start,
            "window_start_utc": utc(start),
            "resets_at": end,
            "resets_at_utc": utc(end),
            "resets_in": round(end - now, 1),
        }
    block = await store.blocks(username, "")
    user_block = block if block is not None and block.key == keys.block_user(username) else None
    out["block"] = (
        None
        if user_block is None
        else {
            "reason": user_block.reason,
            # a block key without a TTL (set by hand) holds until it is deleted: no moment to show
            "until": None if math.isinf(user_block.until) else round(user_block.until),
            "by": user_block.by,
        }
    )
    sessions = await store.sessions_of_user(username)
    out["sessions"] = [
        {
            "client_id": s.get("client_id"),
            "broker": s.get("broker"),
            "since": float(s.get("since") or 0),
            "queue_messages": int(float(s.get("queue_messages") or 0)),
            "events_in": int(s.get("events_in") or 0),
            "events_out": int(s.get("events_out") or 0),
            "bytes_in": int(s.get("bytes_in") or 0),
            "bytes_out": int(s.get("bytes_out") or 0),
        }
        for s in sessions
    ]
    return out
