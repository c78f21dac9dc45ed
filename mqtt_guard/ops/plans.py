"""Plans, group plans, APIs and metered usage (issue 19): the operations behind `mqtt-guard plan`,
`group set --plan`, `user set --plan`, `api`, `quota set --api` and `usage`.

Plans are quota hashes of their own (`quota:plan:<name>`, quota/plans.py); a user is put on one by the
`plan` field of its quota hash, a group by the `plan` field of `quota:group:<g>`. Brokers track all of
these keys: a change applies to connected clients within milliseconds.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, cast

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from ..quota.apis import check_filters, check_name
from ..quota.limits import NONE, parse_limits
from ..quota.meter import KINDS, parse_field
from ..quota.plans import PLAN_FIELD
from ..store.keys import Keys, glob_escape
from ..store.meter import MeterStore
from . import Invalid, NotFound
from .quota import normalize_limits

PLAN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


def check_plan_name(name: str) -> str:
    if not PLAN_NAME.fullmatch(name):
        raise Invalid(f"plan name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return name


def api_fields(api: str, values: dict[str, str]) -> dict[str, str]:
    """`--api NAME --events ... --bytes ...`: the fields `api:<NAME>:events|bytes`; only those two limits
    exist per API."""
    check_api_name(api)
    other = sorted(set(values) - {"events", "bytes"})
    if other:
        raise Invalid(f"--api {api}: only --events and --bytes can be set per API (not --{other[0].replace('_', '-')})")
    return {f"api:{api}:{name}": value for name, value in values.items()}


def check_api_name(name: str) -> str:
    try:
        return check_name(name)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


async def api_exists(redis: aioredis.Redis, keys: Keys, name: str) -> bool:
    """Whether `api add NAME` defined it: limits for an API defined later are legitimate (stored), but the
    CLI says so, since a misspelt API name would otherwise count nothing, silently."""
    return bool(await redis.hexists(keys.quota_apis(), name))


async def plan_exists(redis: aioredis.Redis, keys: Keys, name: str) -> bool:
    return bool(await redis.exists(keys.quota_plan(name)))


async def set_plan(redis: aioredis.Redis, keys: Keys, name: str, values: dict[str, str]) -> dict[str, str]:
    """Create or change a plan: normalized fields written (unchanged fields keep their value)."""
    check_plan_name(name)
    fields = normalize_limits(values, lambda f: f"--{f.replace('_', '-')}" if ":" not in f else f)
    if not fields:
        raise Invalid("nothing to set: give at least one limit (--events, --bytes, --rate, ...)")
    mapping: dict[FieldT, EncodableT] = {f: v for f, v in fields.items()}  # Mapping is invariant in its key
    await redis.hset(keys.quota_plan(name), mapping=mapping)
    return fields


async def delete_plan(redis: aioredis.Redis, keys: Keys, name: str) -> None:
    if not await redis.delete(keys.quota_plan(check_plan_name(name))):
        raise NotFound(f"plan {name!r} does not exist")


async def list_plans(redis: aioredis.Redis, keys: Keys) -> dict[str, dict[str, str]]:
    head = keys.quota_plan("")
    names = sorted([str(k)[len(head) :] async for k in redis.scan_iter(match=glob_escape(head) + "*", count=1000)])
    out: dict[str, dict[str, str]] = {}
    for name in names:
        out[name] = cast(dict[str, str], await redis.hgetall(keys.quota_plan(name)))
    return out


async def show_plan(redis: aioredis.Redis, keys: Keys, name: str) -> dict[str, Any]:
    raw = cast(dict[str, str], await redis.hgetall(keys.quota_plan(check_plan_name(name))))
    if not raw:
        raise NotFound(f"plan {name!r} does not exist (plan list shows the plans)")
    limits = parse_limits(raw, None)
    return {"plan": name, "fields": raw, "problems": list(limits.problems)}


async def _checked_plan(redis: aioredis.Redis, keys: Keys, plan: str) -> str | None:
    """`none` (no plan) or the name of a plan that exists; anything else is refused."""
    if plan.strip().lower() == NONE:
        return None
    check_plan_name(plan)
    if not await plan_exists(redis, keys, plan):
        raise NotFound(f"plan {plan!r} does not exist (create it with: mqtt-guard plan set {plan} --events ...)")
    return plan


async def set_user_plan(redis: aioredis.Redis, keys: Keys, username: str, plan: str) -> str | None:
    """Put a user on a plan (`none`: off any plan); the plan must exist."""
    name = await _checked_plan(redis, keys, plan)
    key = keys.quota_user(username)
    if name is None:
        await redis.hdel(key, PLAN_FIELD)
    else:
        await redis.hset(key, PLAN_FIELD, name)
    return name


async def set_group_plan(redis: aioredis.Redis, keys: Keys, group: str, plan: str) -> str | None:
    """Put a group's users on a plan (`none`: off it); the plan must exist."""
    if not group or ":" in group:
        raise Invalid(f"group name {group!r}: must be non-empty and hold no ':'")
    name = await _checked_plan(redis, keys, plan)
    key = keys.quota_group(group)
    if name is None:
        await redis.hdel(key, PLAN_FIELD)
    else:
        await redis.hset(key, PLAN_FIELD, name)
    return name


async def user_plans(redis: aioredis.Redis, keys: Keys, usernames: list[str]) -> dict[str, str | None]:
    """The plan each user is put on (`user set --plan`), None for none; one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in usernames:
            pipe.hget(keys.quota_user(name), PLAN_FIELD)
        found = await pipe.execute() if usernames else []
    return {name: (plan or None) for name, plan in zip(usernames, found, strict=True)}


async def group_plan(redis: aioredis.Redis, keys: Keys, group: str) -> str | None:
    """The plan of a group's users (`group set --plan`), None for none."""
    plan = await redis.hget(keys.quota_group(group), PLAN_FIELD)
    return str(plan) if plan else None


async def group_plans(redis: aioredis.Redis, keys: Keys, groups: list[str]) -> dict[str, str | None]:
    """`group_plan` of many groups in one round trip (the dashboard's group table)."""
    async with redis.pipeline(transaction=False) as pipe:
        for group in groups:
            pipe.hget(keys.quota_group(group), PLAN_FIELD)
        found = await pipe.execute()
    return {g: str(p) if p else None for g, p in zip(groups, found, strict=True)}


# -- APIs -----------------------------------------------------------------------------------------------
async def add_api(redis: aioredis.Redis, keys: Keys, name: str, filters: list[str]) -> list[str]:
    """Define (or redefine) an API as a set of topic filters."""
    check_api_name(name)
    try:
        check_filters(filters)
    except ValueError as exc:
        raise Invalid(f"API {name!r}: {exc}") from None
    await redis.hset(keys.quota_apis(), name, json.dumps(filters))
    return filters


async def list_apis(redis: aioredis.Redis, keys: Keys) -> dict[str, list[str]]:
    raw = cast(dict[str, str], await redis.hgetall(keys.quota_apis()))
    return {name: json.loads(text) for name, text in sorted(raw.items())}


async def remove_api(redis: aioredis.Redis, keys: Keys, name: str) -> None:
    if not await redis.hdel(keys.quota_apis(), check_api_name(name)):
        raise NotFound(f"API {name!r} does not exist (api list shows the APIs)")


# -- metered usage --------------------------------------------------------------------------------------
def check_month(month: str | None) -> str:
    """`YYYY-MM` (default: the current UTC month)."""
    if month is None:
        return dt.datetime.now(dt.UTC).strftime("%Y-%m")
    if not MONTH.fullmatch(month):
        raise Invalid(f"month {month!r}: expected YYYY-MM, e.g. 2026-11")
    return month


def summarize(raw: dict[str, str]) -> dict[str, Any]:
    """A month's usage hash as totals and days: {"total": {api: counts}, "days": {DD: {api: counts}}}
    (api "" is all traffic; counts: events_in, bytes_in, events_out, bytes_out)."""
    names = dict(zip(KINDS, ("events_in", "bytes_in", "events_out", "bytes_out"), strict=True))
    total: dict[str, dict[str, int]] = {}
    days: dict[str, dict[str, dict[str, int]]] = {}
    for name, value in raw.items():
        parsed = parse_field(name)
        if parsed is None:
            continue
        day, api, kind = parsed
        n = int(value)
        for bucket in (total.setdefault(api, {}), days.setdefault(f"{day:02d}", {}).setdefault(api, {})):
            bucket[names[kind]] = bucket.get(names[kind], 0) + n
    for counts in (*total.values(), *(c for d in days.values() for c in d.values())):
        for f in names.values():
            counts.setdefault(f, 0)
    return {"total": dict(sorted(total.items())), "days": dict(sorted(days.items()))}


async def usage_of(redis: aioredis.Redis, keys: Keys, username: str, month: str | None) -> dict[str, Any]:
    month = check_month(month)
    raw = await MeterStore(redis, keys).month(username, month)
    return {"user": username, "month": month, **summarize(raw)}


async def export(redis: aioredis.Redis, keys: Keys, month: str | None) -> list[dict[str, Any]]:
    """One row per user, API and day of the month: the billing export."""
    month = check_month(month)
    store = MeterStore(redis, keys)
    rows: list[dict[str, Any]] = []
    for username in await store.users_of_month(month):
        summary = summarize(await store.month(username, month))
        for day, apis in summary["days"].items():
            for api, counts in apis.items():
                rows.append({"month": month, "day": f"{month}-{day}", "user": username, "api": api, **counts})
    return rows
