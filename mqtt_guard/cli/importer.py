"""`mqtt-guard import mosquitto|go-auth`: move users and ACLs into mqtt-guard's Redis schema.

    mqtt-guard import mosquitto [--passwd FILE] [--acl FILE] [--dry-run]
    mqtt-guard import go-auth [--source-redis-url URL] [--source-prefix P] [--dry-run]

Idempotent: only differences are written, so a second run reports no change. Nothing in Redis is
removed. Whatever cannot be translated is listed (with its file and line, or its key) and the command
exits 2 when there is any, so a script notices; see mqtt_guard/compat/migrate.py for the mapping.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..compat.aclfile import AclFileError, read_acl_file
from ..compat.migrate import Change, Plan, apply_changes, diff_plan, plan_goauth, plan_mosquitto
from ..compat.passwd import PasswdFileError, read_passwd_file
from ..store import keys as k
from ..store.connection import make_async_client
from .common import CliError, ensure_generation, redis_url, run_with_redis

_GOAUTH_KINDS = ("sacls", "racls", "wacls", "rwacls")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser("import", help="import users and ACLs from mosquitto files or mosquitto-go-auth's Redis")
    kinds = imp.add_subparsers(dest="import_kind", required=True)
    p = kinds.add_parser("mosquitto", help="a password_file and/or an acl_file")
    p.add_argument("--passwd", metavar="FILE", help="mosquitto password_file")
    p.add_argument("--acl", metavar="FILE", help="mosquitto acl_file")
    p.add_argument("--dry-run", action="store_true", help="show what would be written, write nothing")
    p.set_defaults(func=cmd_import_mosquitto)
    p = kinds.add_parser("go-auth", help="mosquitto-go-auth's Redis backend")
    p.add_argument(
        "--source-redis-url", metavar="URL", help="the Redis go-auth uses (default: the same as --redis-url)"
    )
    p.add_argument("--source-prefix", metavar="P", default="", help="key prefix of go-auth's keys (default none)")
    p.add_argument("--dry-run", action="store_true", help="show what would be written, write nothing")
    p.set_defaults(func=cmd_import_goauth)


def cmd_import_mosquitto(args: argparse.Namespace) -> int:
    if not args.passwd and not args.acl:
        raise CliError("give --passwd FILE and/or --acl FILE")
    try:
        passwd = read_passwd_file(args.passwd, strict_20=False) if args.passwd else None
        acl = read_acl_file(args.acl) if args.acl else None
    except (PasswdFileError, AclFileError) as exc:
        raise CliError(f"{exc} (mosquitto would refuse it too; nothing imported)") from None
    return _run(args, plan_mosquitto(passwd, acl))


async def _read_goauth(source: Any, prefix: str, exclude: str) -> dict[str, Any]:
    users: dict[str, str | None] = {}
    su: set[str] = set()
    sets: dict[tuple[str, str], list[str]] = {}
    async for key in source.scan_iter(match=f"{k.glob_escape(prefix)}*", count=1000):
        if exclude and key.startswith(exclude):
            continue  # mqtt-guard's own keys in the same Redis
        name = key[len(prefix) :]
        kind = await source.type(key)
        owner, _, suffix = name.rpartition(":")
        if kind == "set" and owner and suffix in _GOAUTH_KINDS:
            sets[(owner, suffix)] = sorted(await source.smembers(key))
        elif kind == "string" and owner and suffix == "su":
            if (await source.get(key) or "").strip().lower() == "true":
                su.add(owner)
        elif kind == "string" and name and not name.startswith("common:"):
            users[name] = await source.get(key)
    return {"users": users, "su": su, "sets": sets}


def cmd_import_goauth(args: argparse.Namespace) -> int:
    source_url = args.source_redis_url or redis_url(args)

    async def read(redis: Any, keys: k.Keys) -> dict[str, Any]:
        client = make_async_client(source_url) if args.source_redis_url else redis
        try:
            # In the same Redis, mqtt-guard's own keys are not go-auth's (unless the prefix says so).
            mine = not args.source_redis_url and not args.source_prefix.startswith(keys.prefix)
            return await _read_goauth(client, args.source_prefix, keys.prefix if mine else "")
        finally:
            if client is not redis:
                await client.aclose()

    async def body(redis: Any, keys: k.Keys) -> int:
        plan = plan_goauth(await read(redis, keys), f"{_safe(source_url)} prefix {args.source_prefix!r}")
        return await _apply(args, plan, redis, keys)

    return run_with_redis(args, body)


def _safe(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _run(args: argparse.Namespace, plan: Plan) -> int:
    async def body(redis: Any, keys: k.Keys) -> int:
        return await _apply(args, plan, redis, keys)

    return run_with_redis(args, body)


def _show(change: Change) -> str:
    if change.field == k.USER_PASSWORD:
        what = "password hash " + ("set" if change.old is None else "replaced")
        return f"HSET {change.key} {change.field}  ({what})"
    old = "" if change.old is None else f"  (was {change.old!r})"
    return f"HSET {change.key} {change.field!r} {change.new!r}{old}"


async def _apply(args: argparse.Namespace, plan: Plan, redis: Any, keys: k.Keys) -> int:
    changes = await diff_plan(plan, redis, keys)
    verb = "would write" if args.dry_run else "writing"
    print(
        f"import from {plan.source}: {len(plan.users)} user(s), "
        f"{sum(len(v) for v in plan.acls.values())} ACL entr(ies) in {len(plan.acls)} rule set(s); "
        f"{verb} {len(changes)} change(s)"
    )
    for change in changes:
        print(f"  {_show(change)}")
    if changes and not args.dry_run:
        await ensure_generation(redis, keys)
        await apply_changes(changes, redis)
    if not changes:
        print("  nothing to change (already imported)")
    for note in plan.notes:
        print(f"note: {note}")
    for problem in plan.problems:
        print(f"not imported: {problem}", file=sys.stderr)
    if plan.problems:
        print(f"{len(plan.problems)} item(s) could not be translated (listed above)", file=sys.stderr)
        return 2
    return 0
