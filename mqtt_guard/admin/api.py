"""The routes of the admin API: each one a thin HTTP shell over an operation of mqtt_guard/ops/.

Every route is declared once, with `@route(...)`: its method, path, summary, request body schema and
query parameters. `ROUTES` then serves the requests (server.py), validates the bodies (schema.py) and
builds /openapi.json (openapi.py), so the document always lists exactly what the server does.

A handler gets the `Ctx` (Redis, keys, who is asking), the request, and the validated body; it returns
JSON-able data (status 200, or the route's `status`). An `OpError` from an operation becomes a 4xx
with `{"error": ..., "detail": ...}` (server.py). Every change is written to the audit stream with the
token's name (`by: admin-api:<name>`); kicks and blocks audit themselves atomically (KICK_LUA).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from aiohttp import web

from ..ops import MAX_SECONDS, MAX_TIME, Invalid, NotFound
from ..ops import acl as acl_ops
from ..ops import bans as ban_ops
from ..ops import kick as kick_ops
from ..ops import plans as plan_ops
from ..ops import quota as quota_ops
from ..ops import sessions as session_ops
from ..ops import stats as stats_ops
from ..ops import users as user_ops
from ..quota.limits import FIELDS
from ..store.connection import REDIS_ERRORS
from ..store.keys import Keys
from ..store.quota import QuotaStore
from ..store.stats import (
    HB_FLUSH_FAILURES,
    HB_HOST,
    HB_LOOP_LAG,
    HB_LOOP_LAG_MAX,
    HB_PID,
    HB_REDIS_RTT,
    KIND_CLIENT,
    KIND_USER,
    StatsReader,
)
from ..store.tokens import SESSION_TTL, AdminSession, AdminToken, TokenStore
from .schema import BOOL, NAME, NUMBER, STRING, Schema, array, enum, nullable, obj

MAX_PAGE = 1000
DEFAULT_PAGE = 50


@dataclass
class Ctx:
    """What a handler may use: the Redis client and keys of this deployment, the audit stream's cap, the
    token of the request (set per request by the auth middleware), and the last Redis round trip."""

    redis: aioredis.Redis
    keys: Keys
    audit_maxlen: int = 100_000
    redis_rtt: float | None = None  # seconds, by the readiness pinger; None = the last ping failed
    redis_checked: float = 0.0
    # the session index (fields -> (built at, seconds it took, rows)) shared by every page and event stream
    session_index: dict[tuple[str, ...], tuple[float, float, list[dict[str, str | None]]]] = field(default_factory=dict)
    index_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # every client's rate over the last 10 s (built at, seconds it took, client id -> (in, out)): the sort
    # key of the session table by rate, reused like the index
    fleet_rates: dict[str, tuple[float, float, dict[str, float]]] = field(default_factory=dict)  # by direction

    def quota(self) -> QuotaStore:
        return QuotaStore(self.redis, self.keys, audit_maxlen=self.audit_maxlen)


def by(request: web.Request) -> str:
    token: AdminToken = request["token"]
    return f"admin-api:{token.name}"


async def audit(ctx: Ctx, request: web.Request, action: str, **fields: Any) -> None:
    await ctx.quota().audit(action=action, by=by(request), **{n: v for n, v in fields.items() if v is not None})


Handler = Callable[[Ctx, web.Request, Any], Awaitable[Any]]


@dataclass
class Param:
    name: str
    schema: Schema
    description: str
    required: bool = False  # the route answers 422 without it; /openapi.json says so


@dataclass
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: Schema | None = None
    query: list[Param] = field(default_factory=list)
    status: int = 200
    stream: bool = False  # text/event-stream instead of JSON
    safe: bool = False  # a POST that changes nothing (acl check): read-only tokens may call it
    public: bool = False  # needs no token (the dashboard's login, which takes one in its body)

    @property
    def writes(self) -> bool:
        return self.method not in ("GET", "HEAD") and not self.safe and not self.public


ROUTES: list[Route] = []


def route(
    method: str,
    path: str,
    summary: str,
    *,
    tag: str,
    body: Schema | None = None,
    query: list[Param] | None = None,
    status: int = 200,
    stream: bool = False,
    safe: bool = False,
    public: bool = False,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES.append(Route(method, path, handler, summary, tag, body, query or [], status, stream, safe, public))
        return handler

    return register


# -- query parameters ----------------------------------------------------------------------------------
PAGE = [
    Param("offset", {"type": "integer", "minimum": 0, "default": 0}, "rows to skip"),
    Param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}, "rows to return"),
]
ORDER = Param("order", enum("asc", "desc"), "sort direction (default asc)")


def q_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"query parameter {name}: not an integer: {raw!r}") from None
    if not lo <= value <= hi:
        raise Invalid(f"query parameter {name}: must be between {lo} and {hi}")
    return value


def q_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise Invalid(f"query parameter {name}: true or false, got {raw!r}")


def q_choice(request: web.Request, name: str, choices: list[str], default: str) -> str:
    value = request.query.get(name) or default
    if value not in choices:
        raise Invalid(f"query parameter {name}: one of {', '.join(choices)}, got {value!r}")
    return value


def page(request: web.Request, items: list[Any]) -> dict[str, Any]:
    offset = q_int(request, "offset", 0, 0, 1 << 31)
    limit = q_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    return {"total": len(items), "offset": offset, "limit": limit, "items": items[offset : offset + limit]}


# -- users and groups ----------------------------------------------------------------------------------
EXPIRY: Schema = {**NUMBER, "minimum": 0, "maximum": MAX_TIME}  # unix seconds, up to the end of year 9999
SECONDS: Schema = {**NUMBER, "minimum": 1, "maximum": MAX_SECONDS}  # a block's or ban's duration: ten years at most
USER_CREATE = obj(
    ["username", "password"],
    username=NAME,
    password={**STRING, "minLength": 1, "description": "hashed with the default scheme; never returned"},
    superuser=BOOL,
    groups=array(NAME),
    expires_at=nullable({**EXPIRY, "description": "unix seconds"}),
)
USER_PATCH = obj(superuser=BOOL, disabled=BOOL, expires_at=nullable({**EXPIRY, "description": "null: no expiry"}))
PASSWORD = obj(["password"], password={**STRING, "minLength": 1})


async def user_view(ctx: Ctx, name: str) -> dict[str, Any]:
    """A user as `user show --json` prints it, with the plan it is put on (`user set --plan`)."""
    user = await user_ops.get_user(ctx.redis, ctx.keys, name)
    user["plan"] = (await plan_ops.user_plans(ctx.redis, ctx.keys, [name]))[name]
    return user


@route(
    "GET",
    "/api/users",
    "List users (paged, sorted by name), without password hashes, with their plan",
    tag="users",
    query=PAGE,
)
async def list_users(ctx: Ctx, request: web.Request, _: Any) -> Any:
    result = page(request, await user_ops.list_users(ctx.redis, ctx.keys))
    shown = []
    for name in result["items"]:
        try:
            shown.append(await user_ops.get_user(ctx.redis, ctx.keys, name))
        except NotFound:  # deleted meanwhile
            continue
    plans = await plan_ops.user_plans(ctx.redis, ctx.keys, [u["username"] for u in shown])
    result["items"] = [{**u, "plan": plans[u["username"]]} for u in shown]
    return result


@route("POST", "/api/users", "Create a user", tag="users", body=USER_CREATE, status=201)
async def create_user(ctx: Ctx, request: web.Request, body: Any) -> Any:
    name = body["username"]
    user_ops.check_name(name)
    encoded = await user_ops.hash_password(body["password"])
    await user_ops.create_user(
        ctx.redis,
        ctx.keys,
        name,
        encoded,
        superuser=body.get("superuser", False),
        expires_at=body.get("expires_at"),
        groups=body.get("groups", []),
    )
    await audit(ctx, request, "user.create", username=name)
    return await user_view(ctx, name)


@route("GET", "/api/users/{username}", "A user (the password's scheme, never its hash) and its plan", tag="users")
async def get_user(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await user_view(ctx, request.match_info["username"])


@route(
    "PATCH",
    "/api/users/{username}",
    "Change a user's superuser flag, disabled flag or expiry",
    tag="users",
    body=USER_PATCH,
)
async def patch_user(ctx: Ctx, request: web.Request, body: Any) -> Any:
    name = request.match_info["username"]
    await user_ops.update_user(
        ctx.redis,
        ctx.keys,
        name,
        superuser=body.get("superuser"),
        disabled=body.get("disabled"),
        expires_at=body["expires_at"] if "expires_at" in body else user_ops.NO_CHANGE,
    )
    await audit(ctx, request, "user.update", username=name, fields=",".join(sorted(body)))
    return await user_view(ctx, name)


@route("DELETE", "/api/users/{username}", "Delete a user", tag="users")
async def delete_user(ctx: Ctx, request: web.Request, _: Any) -> Any:
    name = request.match_info["username"]
    await user_ops.delete_user(ctx.redis, ctx.keys, name)
    await audit(ctx, request, "user.delete", username=name)
    return {"deleted": name}


@route("PUT", "/api/users/{username}/password", "Set a user's password", tag="users", body=PASSWORD)
async def set_password(ctx: Ctx, request: web.Request, body: Any) -> Any:
    name = request.match_info["username"]
    encoded = await user_ops.hash_password(body["password"])
    await user_ops.set_password(ctx.redis, ctx.keys, name, encoded)
    await audit(ctx, request, "user.passwd", username=name)
    return {"username": name, "password": "changed"}


@route(
    "GET",
    "/api/groups",
    "Groups with their members (and groups that only have ACL rules or a plan); ?plans=true: rows with their plan",
    tag="users",
    query=[Param("plans", BOOL, "a list of {group, members, plan} (one request for the dashboard's table)")],
)
async def list_groups(ctx: Ctx, request: web.Request, _: Any) -> Any:
    listing = await user_ops.list_groups(ctx.redis, ctx.keys)
    if not q_bool(request, "plans"):
        return listing
    plans = await plan_ops.group_plans(ctx.redis, ctx.keys, list(listing))
    return [{"group": g, "members": members, "plan": plans[g]} for g, members in listing.items()]


async def _membership(ctx: Ctx, request: web.Request, member: bool) -> Any:
    group, name = request.match_info["group"], request.match_info["username"]
    await user_ops.set_membership(ctx.redis, ctx.keys, group, name, member)
    await audit(ctx, request, "group.add" if member else "group.remove", group=group, username=name)
    return {"group": group, "username": name, "member": member}


@route("GET", "/api/groups/{group}", "A group: its members and the plan of its users", tag="users")
async def get_group(ctx: Ctx, request: web.Request, _: Any) -> Any:
    group = request.match_info["group"]
    listing = await user_ops.list_groups(ctx.redis, ctx.keys)
    plan = await plan_ops.group_plan(ctx.redis, ctx.keys, group)
    if group not in listing:
        raise NotFound(f"no group {group!r} (no member, no ACL rule, no plan)")
    return {"group": group, "members": listing.get(group, []), "plan": plan}


PLAN_ASSIGN = obj(["plan"], plan={**STRING, "minLength": 1, "description": "a plan name (it must exist), or none"})


@route(
    "PUT",
    "/api/users/{username}/plan",
    "Put a user on a plan, or none (user set --plan); a token's identity needs no user record",
    tag="users",
    body=PLAN_ASSIGN,
)
async def put_user_plan(ctx: Ctx, request: web.Request, body: Any) -> Any:
    name = request.match_info["username"]
    user_ops.check_name(name)
    plan = await plan_ops.set_user_plan(ctx.redis, ctx.keys, name, body["plan"])
    await audit(ctx, request, "user.plan", username=name, plan=plan or "none")
    return {"username": name, "plan": plan}


@route(
    "PUT",
    "/api/groups/{group}/plan",
    "Put a group's users on a plan, or none (group set --plan)",
    tag="users",
    body=PLAN_ASSIGN,
)
async def put_group_plan(ctx: Ctx, request: web.Request, body: Any) -> Any:
    group = request.match_info["group"]
    plan = await plan_ops.set_group_plan(ctx.redis, ctx.keys, group, body["plan"])
    await audit(ctx, request, "group.plan", group=group, plan=plan or "none")
    return {"group": group, "plan": plan}


@route("PUT", "/api/groups/{group}/members/{username}", "Add a user to a group", tag="users")
async def add_member(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await _membership(ctx, request, True)


@route("DELETE", "/api/groups/{group}/members/{username}", "Remove a user from a group", tag="users")
async def remove_member(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await _membership(ctx, request, False)


# -- ACLs ----------------------------------------------------------------------------------------------
SUBJECT = {
    **STRING,
    "description": "user:NAME, group:NAME, pattern (every authenticated client) or anonymous",
    "minLength": 1,
}
RULE_EDIT = obj(
    ["subject", "filter", "actions"],
    subject=SUBJECT,
    filter={**STRING, "minLength": 1, "description": "MQTT topic filter (+ and # allowed)"},
    actions={**STRING, "description": "comma-separated: publish, subscribe, receive, read, write, readwrite/all"},
    effect=enum("allow", "deny"),
)
ACL_CHECK = obj(
    ["client_id", "topic", "action"],
    username=nullable({**STRING, "description": "null: an anonymous client"}),
    client_id=STRING,
    topic=STRING,
    action=enum(*sorted(acl_ops.CHECK_ACTIONS)),
    default=enum("deny", "allow"),
)


def parse_subject(text: str) -> str:
    kind, _, name = text.partition(":")
    return acl_ops.subject_key(kind, name or None)


@route(
    "GET",
    "/api/acl/rules",
    "ACL rules by subject, with the malformed entries brokers skip",
    tag="acl",
    query=[Param("subject", SUBJECT, "only this subject")],
)
async def list_rules(ctx: Ctx, request: web.Request, _: Any) -> Any:
    only = request.query.get("subject")
    return await acl_ops.list_rules(ctx.redis, ctx.keys, parse_subject(only) if only else None)


@route(
    "POST", "/api/acl/rules", "Grant (effect allow, the default) or deny actions on a filter", tag="acl", body=RULE_EDIT
)
async def edit_rule(ctx: Ctx, request: web.Request, body: Any) -> Any:
    subject = parse_subject(body["subject"])
    perms = acl_ops.parse_actions(body["actions"])
    grant = body.get("effect", "allow") == "allow"
    edit = await acl_ops.edit_rule(ctx.redis, ctx.keys, subject, body["filter"], perms, grant)
    await audit(
        ctx, request, "acl.allow" if grant else "acl.deny", subject=subject, filter=body["filter"], value=edit.value
    )
    return {"subject": subject, "filter": body["filter"], "value": edit.value, "warning": edit.warning}


@route(
    "DELETE",
    "/api/acl/rules",
    "Remove the rule of a subject for a filter",
    tag="acl",
    query=[
        Param("subject", SUBJECT, "the rule's subject", required=True),
        Param("filter", STRING, "the rule's filter, as listed", required=True),
    ],
)
async def remove_rule(ctx: Ctx, request: web.Request, _: Any) -> Any:
    subject_text, topic_filter = request.query.get("subject"), request.query.get("filter")
    if not subject_text or not topic_filter:
        raise Invalid("query parameters subject and filter are required")
    subject = parse_subject(subject_text)
    await acl_ops.remove_rule(ctx.redis, ctx.keys, subject, topic_filter)
    await audit(ctx, request, "acl.remove", subject=subject, filter=topic_filter)
    return {"subject": subject, "filter": topic_filter, "removed": True}


@route(
    "POST",
    "/api/acl/check",
    "Explain the decision a broker would take now (acl check)",
    tag="acl",
    body=ACL_CHECK,
    safe=True,
)
async def check_acl(ctx: Ctx, request: web.Request, body: Any) -> Any:
    result = await acl_ops.check(
        ctx.redis,
        ctx.keys,
        body.get("username"),
        body["client_id"],
        body["topic"],
        body["action"],
        default_allow=body.get("default", "deny") == "allow",
    )
    note = result.receive_note
    return {
        "allowed": result.allowed,
        "user_known": result.user_known,
        "checks": [vars(c) for c in result.checks],
        "receive_note": vars(note) if note else None,
        "problems": result.problems,
    }


# -- quotas --------------------------------------------------------------------------------------------
LIMITS: Schema = {
    **obj(),
    "properties": {f: nullable({**STRING, "description": "as `quota set` takes it; null removes"}) for f in FIELDS},
}


async def _limits(ctx: Ctx, request: web.Request, username: str | None, body: dict[str, Any]) -> Any:
    values = {n: str(v) for n, v in body.items() if v is not None}
    fields = quota_ops.normalize_limits(values)
    gone = [n for n, v in body.items() if v is None]
    quota_ops.check_changes(len(fields) + len(gone), f"{', '.join(FIELDS)} (a value sets, null removes)")
    if fields:
        await quota_ops.set_limits(ctx.redis, ctx.keys, username, fields)
    if gone:
        await quota_ops.unset_limits(ctx.redis, ctx.keys, username, gone)
    changes = ",".join(f"{n}={v}" for n, v in fields.items()) + "".join(f",-{n}" for n in gone)
    await audit(ctx, request, "quota.set", username=username or "(default)", changes=changes.strip(","))
    return await quota_ops.describe_quota(ctx.quota(), ctx.keys, username)


@route("GET", "/api/quotas/default", "The default limits", tag="quotas")
async def get_default_quota(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await quota_ops.describe_quota(ctx.quota(), ctx.keys, None)


@route("PATCH", "/api/quotas/default", "Set (a value) or remove (null) default limits", tag="quotas", body=LIMITS)
async def patch_default_quota(ctx: Ctx, request: web.Request, body: Any) -> Any:
    return await _limits(ctx, request, None, body)


@route(
    "GET",
    "/api/quotas/users/{username}",
    "A user's limits, usage in the current windows, block, sessions",
    tag="quotas",
)
async def get_user_quota(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await quota_ops.describe_quota(ctx.quota(), ctx.keys, request.match_info["username"])


@route(
    "PATCH", "/api/quotas/users/{username}", "Set (a value) or remove (null) a user's limits", tag="quotas", body=LIMITS
)
async def patch_user_quota(ctx: Ctx, request: web.Request, body: Any) -> Any:
    return await _limits(ctx, request, request.match_info["username"], body)


@route(
    "POST",
    "/api/quotas/users/{username}/reset",
    "Zero a user's usage in its current windows, lift its block",
    tag="quotas",
)
async def reset_quota(ctx: Ctx, request: web.Request, _: Any) -> Any:
    name = request.match_info["username"]
    windows = await quota_ops.reset(ctx.redis, ctx.keys, name)
    await audit(ctx, request, "quota.reset", username=name, windows=len(windows))
    return {"username": name, "windows_reset": len(windows)}


# -- plans, APIs, metered usage (issue 19; the CLI's `plan`, `api`, `usage`) --------------------------
PLAN_SET: Schema = {
    **obj(),
    "properties": {
        **{f: {**STRING, "description": "as `plan set` takes it; 'none' = no limit"} for f in FIELDS},
        "api": {**NAME, "description": "set events/bytes for this API (PUT /api/apis/{name}) instead"},
    },
}
API_FILTERS = obj(["filters"], filters=array({**STRING, "minLength": 1, "description": "MQTT topic filter"}))
MONTH = Param("month", {**STRING, "pattern": plan_ops.MONTH.pattern}, "UTC month YYYY-MM (default: the current one)")


@route("GET", "/api/plans", "The plans and their fields", tag="plans")
async def list_plans(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await plan_ops.list_plans(ctx.redis, ctx.keys)


@route("GET", "/api/plans/{name}", "A plan: its fields and the ones brokers ignore", tag="plans")
async def get_plan(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await plan_ops.show_plan(ctx.redis, ctx.keys, request.match_info["name"])


@route(
    "PUT",
    "/api/plans/{name}",
    "Create or change a plan (fields not given keep their value)",
    tag="plans",
    body=PLAN_SET,
)
async def put_plan(ctx: Ctx, request: web.Request, body: Any) -> Any:
    name = request.match_info["name"]
    values = {n: v for n, v in body.items() if n != "api"}
    api = body.get("api")
    fields = await plan_ops.set_plan(ctx.redis, ctx.keys, name, plan_ops.api_fields(api, values) if api else values)
    await audit(ctx, request, "plan.set", plan=name, changes=",".join(f"{n}={v}" for n, v in fields.items()))
    return await plan_ops.show_plan(ctx.redis, ctx.keys, name)


@route("DELETE", "/api/plans/{name}", "Delete a plan (its users fall back to the next rule)", tag="plans")
async def delete_plan(ctx: Ctx, request: web.Request, _: Any) -> Any:
    name = request.match_info["name"]
    await plan_ops.delete_plan(ctx.redis, ctx.keys, name)
    await audit(ctx, request, "plan.delete", plan=name)
    return {"deleted": name}


@route("GET", "/api/apis", "The APIs and their topic filters", tag="plans")
async def list_apis(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await plan_ops.list_apis(ctx.redis, ctx.keys)


@route(
    "PUT", "/api/apis/{name}", "Define (or redefine) an API as a set of topic filters", tag="plans", body=API_FILTERS
)
async def put_api(ctx: Ctx, request: web.Request, body: Any) -> Any:
    name = request.match_info["name"]
    filters = await plan_ops.add_api(ctx.redis, ctx.keys, name, body["filters"])
    await audit(ctx, request, "api.add", api=name, filters=" ".join(filters))
    return {"api": name, "filters": filters}


@route("DELETE", "/api/apis/{name}", "Delete an API", tag="plans")
async def delete_api(ctx: Ctx, request: web.Request, _: Any) -> Any:
    name = request.match_info["name"]
    await plan_ops.remove_api(ctx.redis, ctx.keys, name)
    await audit(ctx, request, "api.remove", api=name)
    return {"deleted": name}


@route(
    "GET",
    "/api/usage/{username}",
    "A user's metered usage in a month: totals and days, per API (api '' = all traffic)",
    tag="plans",
    query=[MONTH],
)
async def get_usage(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await plan_ops.usage_of(ctx.redis, ctx.keys, request.match_info["username"], request.query.get("month"))


@route(
    "GET",
    "/api/usage",
    "The billing export of a month: one row per user, API and day (`usage export --format json`)",
    tag="plans",
    query=[MONTH],
)
async def export_usage(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await plan_ops.export(ctx.redis, ctx.keys, request.query.get("month"))


# -- kicks and blocks ----------------------------------------------------------------------------------
KICK = obj(
    reason={**STRING, "maxLength": 500},
    block_seconds={
        **NUMBER,
        "minimum": 0,
        "maximum": MAX_SECONDS,
        "description": "also refuse reconnects this long (CONNACK 5)",
    },
)
BLOCK = obj(["seconds"], seconds=SECONDS, reason={**STRING, "maxLength": 500})


def _kick_view(result: kick_ops.KickResult) -> dict[str, Any]:
    return {
        "connected": result.connected,
        "kicks": [vars(s) for s in result.kicks],
        "blocked_until": round(result.blocked_until) if result.blocked_until else None,
        "broker_alive": result.broker_alive,
    }


@route(
    "POST", "/api/clients/{client_id}/kick", "Disconnect a client wherever it is connected", tag="clients", body=KICK
)
async def kick_client(ctx: Ctx, request: web.Request, body: Any) -> Any:
    client_id = request.match_info["client_id"]
    result = await kick_ops.kick_client(
        ctx.redis,
        ctx.keys,
        client_id,
        body.get("reason") or "kicked by an admin",
        by(request),
        block=body.get("block_seconds", 0),
    )
    if not result.connected and not result.blocked_until:
        raise NotFound(f"client {client_id!r} is not connected (no session registered)")
    return _kick_view(result)


@route("POST", "/api/users/{username}/kick", "Disconnect every client of a user", tag="clients", body=KICK)
async def kick_user(ctx: Ctx, request: web.Request, body: Any) -> Any:
    name = request.match_info["username"]
    result = await kick_ops.kick_user(
        ctx.redis,
        ctx.keys,
        name,
        body.get("reason") or "kicked by an admin",
        by(request),
        block=body.get("block_seconds", 0),
    )
    return _kick_view(result)


@route("PUT", "/api/blocks/clients/{client_id}", "Refuse a client id's CONNECTs for a while", tag="clients", body=BLOCK)
async def block_client(ctx: Ctx, request: web.Request, body: Any) -> Any:
    cid = request.match_info["client_id"]
    reason = body.get("reason") or "blocked by an admin"
    until = await kick_ops.block(
        ctx.redis, ctx.keys, body["seconds"], reason, by(request), client_id=cid, audit_maxlen=ctx.audit_maxlen
    )
    return {"client_id": cid, "blocked_until": round(until)}


@route("PUT", "/api/blocks/users/{username}", "Refuse a user's CONNECTs for a while", tag="clients", body=BLOCK)
async def block_user(ctx: Ctx, request: web.Request, body: Any) -> Any:
    name = request.match_info["username"]
    reason = body.get("reason") or "blocked by an admin"
    until = await kick_ops.block(
        ctx.redis, ctx.keys, body["seconds"], reason, by(request), username=name, audit_maxlen=ctx.audit_maxlen
    )
    return {"username": name, "blocked_until": round(until)}


@route("DELETE", "/api/blocks/clients/{client_id}", "Lift a client id's block", tag="clients")
async def unblock_client(ctx: Ctx, request: web.Request, _: Any) -> Any:
    cid = request.match_info["client_id"]
    await kick_ops.unblock(ctx.redis, ctx.keys, by(request), client_id=cid, audit_maxlen=ctx.audit_maxlen)
    return {"client_id": cid, "blocked": False}


@route("DELETE", "/api/blocks/users/{username}", "Lift a user's block", tag="clients")
async def unblock_user(ctx: Ctx, request: web.Request, _: Any) -> Any:
    name = request.match_info["username"]
    await kick_ops.unblock(ctx.redis, ctx.keys, by(request), username=name, audit_maxlen=ctx.audit_maxlen)
    return {"username": name, "blocked": False}


@route("GET", "/api/blocks", "Every block in force", tag="clients")
async def list_blocks(ctx: Ctx, request: web.Request, _: Any) -> Any:
    blocks = await ctx.quota().all_blocks()
    head_c, head_u = ctx.keys.block_client(""), ctx.keys.block_user("")
    out = []
    for key, b in sorted(blocks.items()):
        kind, name = ("client", key[len(head_c) :]) if key.startswith(head_c) else ("user", key[len(head_u) :])
        out.append(
            {
                "kind": kind,
                "name": name,
                "reason": b.reason,
                "by": b.by,
                "until": None if math.isinf(b.until) else round(b.until),
            }
        )
    return out


# -- address bans --------------------------------------------------------------------------------------
BAN = obj(
    ["network"],
    network={**STRING, "minLength": 1, "description": "an address or a CIDR network (IPv4 or IPv6)"},
    seconds=nullable({**SECONDS, "description": "how long; absent or null: until lifted"}),
    reason={**STRING, "maxLength": 500},
    kick=BOOL,
)


@route("GET", "/api/bans", "Address bans in force: the admin's, then login throttling's (ban list)", tag="clients")
async def list_bans(ctx: Ctx, request: web.Request, _: Any) -> Any:
    now = time.time()
    return [ban_ops.ban_view(b, now) for b in await ban_ops.list_bans(ctx.redis, ctx.keys)]


@route(
    "POST",
    "/api/bans",
    "Refuse CONNECTs from an address or network on every broker (CONNACK 5); kick: also disconnect its clients",
    tag="clients",
    body=BAN,
    status=201,
)
async def add_ban(ctx: Ctx, request: web.Request, body: Any) -> Any:
    reason = body.get("reason") or "banned by an admin"
    b = await ban_ops.ban(
        ctx.redis, ctx.keys, body["network"], body.get("seconds"), reason, by(request), kick=body.get("kick", False)
    )
    await audit(ctx, request, "ban", network=b.network, reason=reason, kick="1" if b.kick else None)
    return ban_ops.ban_view(b, time.time())


@route(
    "DELETE",
    "/api/bans",
    "Lift the ban of an address or network and the throttling bans of addresses inside it (unban)",
    tag="clients",
    query=[Param("network", STRING, "the address or network banned, or one inside it", required=True)],
)
async def remove_ban(ctx: Ctx, request: web.Request, _: Any) -> Any:
    target = request.query.get("network")
    if not target:
        raise Invalid("query parameter network is required")
    net, removed = await ban_ops.unban(ctx.redis, ctx.keys, target)
    if not removed:
        raise NotFound(f"no ban of {net} or of an address inside it")
    await audit(ctx, request, "unban", network=net, removed=removed)
    return {"network": net, "removed": removed}


# -- sessions and clients ------------------------------------------------------------------------------
SESSION_INTS = ("queue_messages", "queue_bytes", "events_in", "events_out", "bytes_in", "bytes_out")
RATE_SORT = ("rate", "rate_in", "rate_out")  # from the analytics (messages per s over the last 10 s)
SESSION_SORT = ["client_id", "username", "broker", "since", *SESSION_INTS, *RATE_SORT]


def session_view(s: dict[str, str]) -> dict[str, Any]:
    """A session registry entry (store/quota.py REGISTRY_LUA) as the API shows it."""
    out: dict[str, Any] = {
        "client_id": s.get("client_id", ""),
        "username": s.get("username") or None,
        "broker": s.get("broker", ""),
        "since": float(s.get("since") or 0),
    }
    for name in SESSION_INTS:
        try:
            out[name] = int(float(s.get(name) or 0))
        except ValueError:
            out[name] = 0
    return out


SESSION_QUERY = [
    *PAGE,
    Param(
        "sort",
        enum(*SESSION_SORT),
        "sort column (default client_id); rate, rate_in, rate_out: messages per second over the last 10 s",
    ),
    ORDER,
    Param("broker", STRING, "only the sessions of this broker"),
    Param("username", STRING, "only the sessions of this user"),
]


INDEX_MIN_AGE = 1.0  # seconds an index is reused at least...
INDEX_COST_FACTOR = 5.0  # ...and at least 5 times as long as it took to build: at most ~1/6 of a core


async def cached_index(ctx: Ctx, fields: list[str]) -> list[dict[str, str | None]]:
    """The session index, rebuilt when older than INDEX_MIN_AGE, or than INDEX_COST_FACTOR times its own
    build time (a large fleet: 10,000 sessions take ~0.1-0.3 s): however many dashboards watch the table,
    the fleet is read once per period; the rows of a page are read fresh every time."""
    key = tuple(fields)
    async with ctx.index_lock:
        hit = ctx.session_index.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < max(INDEX_MIN_AGE, INDEX_COST_FACTOR * hit[1]):
            return hit[2]
        rows = await session_ops.session_index(ctx.redis, ctx.keys, fields)
        ctx.session_index[key] = (time.monotonic(), time.monotonic() - now, rows)
        return rows


async def cached_rates(ctx: Ctx, direction: str) -> dict[str, float]:
    """Every client's rate (ops/stats.py fleet_rates), reused like the session index (`cached_index`)."""
    async with ctx.index_lock:
        hit = ctx.fleet_rates.get(direction)
        now = time.monotonic()
        if hit is not None and now - hit[0] < max(INDEX_MIN_AGE, INDEX_COST_FACTOR * hit[1]):
            return hit[2]
        rates = await stats_ops.fleet_rates(ctx.redis, ctx.keys, direction)
        ctx.fleet_rates[direction] = (time.monotonic(), time.monotonic() - now, rates)
        return rates


async def session_page(ctx: Ctx, request: web.Request) -> dict[str, Any]:
    """One page of the fleet's sessions: filtered and sorted over every session by the few fields that
    takes (session_index; for a rate, the fleet's rates from the analytics), then the page's rows read
    whole, with their traffic."""
    sort = q_choice(request, "sort", SESSION_SORT, "client_id")
    desc = q_choice(request, "order", ["asc", "desc"], "asc") == "desc"
    broker, username = request.query.get("broker"), request.query.get("username")
    by_rate = sort in RATE_SORT
    index = await cached_index(ctx, ["username"] if by_rate else ["username", sort])
    rows = [session_view({n: v for n, v in s.items() if v is not None}) for s in index]
    rows = [r for r in rows if (not broker or r["broker"] == broker) and (not username or r["username"] == username)]
    if by_rate:
        rates = await cached_rates(ctx, {"rate_in": "in", "rate_out": "out"}.get(sort, "both"))
        for r in rows:
            r[sort] = rates.get(r["client_id"], 0.0)
    rows.sort(key=lambda r: (r[sort] is None, r[sort] if r[sort] is not None else "", r["client_id"]), reverse=desc)
    result = {**page(request, rows), "sort": sort, "order": "desc" if desc else "asc"}
    whole = {s.get("client_id"): s for s in await ctx.quota().sessions([r["client_id"] for r in result["items"]])}
    result["items"] = [session_view(whole[r["client_id"]]) for r in result["items"] if r["client_id"] in whole]
    await stats_ops.with_traffic(ctx.redis, ctx.keys, result["items"])  # the page's rows only
    return result


@route(
    "GET",
    "/api/sessions",
    "Connected clients (the session registry): paged, sorted by the server; each row with its messages and rate",
    tag="clients",
    query=SESSION_QUERY,
)
async def list_sessions(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await session_page(ctx, request)


@route(
    "GET",
    "/api/stream/sessions",
    "The same page as /api/sessions, pushed as server-sent events (event: sessions) every interval",
    tag="clients",
    query=[*SESSION_QUERY, Param("interval", {"type": "number", "minimum": 0.5, "maximum": 60}, "seconds (default 1)")],
    stream=True,
)
async def stream_sessions(ctx: Ctx, request: web.Request, _: Any) -> Any:
    raw = request.query.get("interval") or "1"
    try:
        interval = float(raw)
    except ValueError:
        raise Invalid(f"query parameter interval: not a number: {raw!r}") from None
    if not 0.5 <= interval <= 60:
        raise Invalid("query parameter interval: must be between 0.5 and 60")
    await session_page(ctx, request)  # bad parameters fail here, as a plain 4xx
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        while True:
            try:
                data = json.dumps(await session_page(ctx, request), separators=(",", ":"))
            except REDIS_ERRORS as exc:
                # the response has started: no status can be sent any more. Say why in the stream and end it
                # (an EventSource reconnects and gets the 503 while Redis is away).
                problem = {"error": "redis_unavailable", "detail": f"cannot reach Redis: {exc}"}
                await resp.write(f"event: error\ndata: {json.dumps(problem)}\n\n".encode())
                break
            await resp.write(f"event: sessions\ndata: {data}\n\n".encode())
            await asyncio.sleep(interval)
    except ConnectionResetError:  # the client went away
        pass
    return resp


@route("GET", "/api/sessions/{client_id}", "One connected client's session", tag="clients")
async def get_session(ctx: Ctx, request: web.Request, _: Any) -> Any:
    cid = request.match_info["client_id"]
    s = await ctx.quota().session(cid)
    if not s:
        raise NotFound(f"client {cid!r} is not connected (no session registered)")
    return session_view(s)


@route(
    "DELETE",
    "/api/sessions/{client_id}",
    "Discard a client's session on whichever broker holds it, online or offline (session drop)",
    tag="clients",
    query=[Param("reason", STRING, "recorded in the audit stream and the broker's log")],
)
async def drop_session(ctx: Ctx, request: web.Request, _: Any) -> Any:
    cid = request.match_info["client_id"]
    reason = request.query.get("reason") or "dropped by an admin"
    done = await session_ops.drop_session(ctx.redis, ctx.keys, cid, reason, by(request), audit_maxlen=ctx.audit_maxlen)
    return {"client_id": cid, "brokers": done.brokers, "connected_on": done.connected_on}


STATS_QUERY = [Param("day", BOOL, "also the 1 min history of the last 24 h")]


async def _stats(ctx: Ctx, request: web.Request, ident: str, kind: str) -> Any:
    data = await stats_ops.gather_stats(ctx.redis, ctx.keys, ident, kind, day=q_bool(request, "day"))
    if data is None:
        raise NotFound(f"no stats for {kind} {ident!r}")
    return data


@route(
    "GET",
    "/api/clients/{client_id}/stats",
    "A client's counters, errors by reason, rate history, quota use",
    tag="stats",
    query=STATS_QUERY,
)
async def client_stats(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await _stats(ctx, request, request.match_info["client_id"], KIND_CLIENT)


@route(
    "GET",
    "/api/users/{username}/stats",
    "A user's counters (all its clients), rate history, quota use",
    tag="stats",
    query=STATS_QUERY,
)
async def user_stats(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await _stats(ctx, request, request.match_info["username"], KIND_USER)


@route(
    "GET",
    "/api/top",
    "The busiest clients (or users) by message rate over the last 10 s, all brokers",
    tag="stats",
    query=[
        Param("users", BOOL, "rank usernames"),
        Param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "rows"),
    ],
)
async def top(ctx: Ctx, request: web.Request, _: Any) -> Any:
    limit = q_int(request, "limit", 20, 1, MAX_PAGE)
    return await stats_ops.gather_top(ctx.redis, ctx.keys, users=q_bool(request, "users"), limit=limit)


@route(
    "GET",
    "/api/stats/failures",
    "Refused CONNECTs: top source addresses and usernames, totals by reason",
    tag="stats",
    query=[
        Param("days", {"type": "integer", "minimum": 1, "maximum": 8}, "UTC days"),
        Param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "rows"),
    ],
)
async def failures(ctx: Ctx, request: web.Request, _: Any) -> Any:
    days = q_int(request, "days", 1, 1, 8)
    limit = q_int(request, "limit", 20, 1, MAX_PAGE)
    return await stats_ops.gather_failures(ctx.redis, ctx.keys, limit=limit, days=days)


@route("GET", "/api/stats/totals", "The counters of every broker, added up", tag="stats")
async def totals(ctx: Ctx, request: web.Request, _: Any) -> Any:
    counters, _gauges = stats_ops.split_fields(await StatsReader(ctx.redis, ctx.keys).totals())
    return counters


# -- brokers and health --------------------------------------------------------------------------------
def _broker_view(
    b: str, alive: bool, dead_after: float | None, h: dict[str, str], sessions: int, beat: float | None, now: float
) -> dict[str, Any]:
    return {
        "id": b,
        "alive": alive,
        "dead_after": dead_after,
        "epoch": h.get("epoch"),
        "host": h.get("host"),
        "pid": int(h["pid"]) if h.get("pid", "").isdigit() else None,
        "started": float(h["started"]) if h.get("started") else None,
        "sessions": sessions,
        "stats_heartbeat_age": None if beat is None else round(max(0.0, now - beat), 3),
        "stats": h if beat is not None else {},
    }


HEALTH_FIELDS = (HB_LOOP_LAG, HB_LOOP_LAG_MAX, HB_REDIS_RTT, HB_FLUSH_FAILURES)


def _health(stats: dict[str, str]) -> dict[str, float | None]:
    """The broker's own health from its last analytics heartbeat (None: not reported, e.g. an older broker)."""
    out: dict[str, float | None] = {}
    for name in HEALTH_FIELDS:
        try:
            out[name] = float(stats[name])
        except (KeyError, ValueError):
            out[name] = None
    return out


@route(
    "GET",
    "/api/brokers",
    "Brokers: liveness, fencing epoch, heartbeats, clients, event-loop lag, their Redis round trip and flush "
    "failures; the admin server's Redis round trip",
    tag="brokers",
)
async def brokers(ctx: Ctx, request: web.Request, _: Any) -> Any:
    """Registered brokers (the liveness ZSET: alive while their `dead_after` is ahead of Redis' clock;
    docs/quotas.md "Liveness and fencing"), then brokers only the analytics still remember (stopped)."""
    now = await ctx.quota().now_ms() / 1000
    registry = cast("list[tuple[str, float]]", await ctx.redis.zrange(ctx.keys.brokers(), 0, -1, withscores=True))
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for b, _score in registry:
            pipe.hgetall(ctx.keys.broker(b))
            pipe.scard(ctx.keys.broker_sessions(b))
        found = await pipe.execute()
    # the analytics name a broker HOSTNAME:PORT (metrics.broker_id), the registry by process: same host and pid
    stats = {(h.get(HB_HOST), h.get(HB_PID)): (b, t, h) for b, t, h in await StatsReader(ctx.redis, ctx.keys).brokers()}
    out = []
    for i, (b, score) in enumerate(registry):
        h = found[2 * i]
        stats_id, beat, sh = stats.pop((h.get("host"), h.get("pid")), (None, None, {}))
        view = _broker_view(b, score / 1000 > now, round(score / 1000, 3), h, found[2 * i + 1], beat, now)
        out.append({**view, "registered": True, "stats_id": stats_id, "stats": sh, "health": _health(sh)})
    for stats_id, beat, sh in sorted(stats.values()):  # stopped brokers whose analytics are still kept
        view = _broker_view(stats_id, False, None, sh, 0, beat, now)
        out.append({**view, "registered": False, "stats_id": stats_id, "health": _health(sh)})
    rtt = ctx.redis_rtt
    return {
        "brokers": out,
        "redis": {"reachable": rtt is not None, "rtt_ms": None if rtt is None else round(rtt * 1000, 3)},
    }


@route(
    "GET",
    "/api/audit",
    "The audit stream, oldest first (kicks, blocks, every change made through the API)",
    tag="audit",
    query=[Param("count", {"type": "integer", "minimum": 1, "maximum": 10000}, "entries (default 100)")],
)
async def audit_stream(ctx: Ctx, request: web.Request, _: Any) -> Any:
    count = q_int(request, "count", 100, 1, 10_000)
    entries = await ctx.quota().audit_entries(count)
    return [{"id": i, "time": int(i.split("-")[0]) / 1000, **fields} for i, fields in entries]


# -- dashboard sessions --------------------------------------------------------------------------------
COOKIE = "mqg_session"
CSRF_HEADER = "X-CSRF-Token"
LOGIN = obj(["token"], token={**STRING, "minLength": 1, "maxLength": 200, "description": "an admin token"})


def _whoami(token: AdminToken, session: AdminSession | None) -> dict[str, Any]:
    return {
        "name": token.name,
        "read_only": token.read_only,
        "csrf": session.csrf if session else None,
        "expires": session.expires if session else None,
    }


@route(
    "POST",
    "/api/session",
    "Log in: exchange a token for an HttpOnly, SameSite=Strict session cookie and a CSRF token (the dashboard)",
    tag="session",
    body=LOGIN,
    status=201,
    public=True,
)
async def open_session(ctx: Ctx, request: web.Request, body: Any) -> Any:
    opened = await TokenStore(ctx.redis, ctx.keys).open_session(body["token"].strip())
    if opened is None:
        return web.json_response({"error": "unauthorized", "detail": "unknown or revoked token"}, status=401)
    cookie, session = opened
    await ctx.quota().audit(action="admin-session.open", by=f"admin-api:{session.token.name}")
    resp = web.json_response(_whoami(session.token, session), status=201)
    resp.set_cookie(
        COOKIE, cookie, max_age=SESSION_TTL, path="/", httponly=True, samesite="Strict", secure=request.secure
    )
    return resp


@route(
    "GET",
    "/api/session",
    "Who is asking: the token's name and flag; with a session cookie, its CSRF token and expiry",
    tag="session",
)
async def get_session_info(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return _whoami(request["token"], request.get("session"))


@route("DELETE", "/api/session", "Log out: end the session of the cookie", tag="session", safe=True)
async def close_session(ctx: Ctx, request: web.Request, _: Any) -> Any:
    cookie = request.cookies.get(COOKIE)
    if cookie:
        await TokenStore(ctx.redis, ctx.keys).close_session(cookie)
    resp = web.json_response({"logged_out": bool(cookie)})
    resp.del_cookie(COOKIE, path="/")
    return resp


# -- the dashboard's overview --------------------------------------------------------------------------
@route(
    "GET",
    "/api/overview",
    "Messages in/out per 10 s over the last hour (all brokers, and per broker), errors by reason",
    tag="stats",
)
async def overview(ctx: Ctx, request: web.Request, _: Any) -> Any:
    return await stats_ops.gather_overview(ctx.redis, ctx.keys)


__all__ = ["COOKIE", "CSRF_HEADER", "ROUTES", "Ctx", "Param", "Route"]
