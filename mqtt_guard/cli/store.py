"""`mqtt-guard store show|adopt|migrate`: the generation marker that tells brokers this Redis holds their
data, and the version of its key layout.

A broker that sees the marker it started with disappear or change (Redis restarted empty, flushed,
replaced) treats Redis as unavailable until the marker comes back (a restored backup) or an admin
accepts what Redis holds now with `store adopt` (store/generation.py, docs/redis-schema.md).
`store migrate` moves the data to the key layout of this release (store/schema.py), idempotently.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..store import generation, schema
from ..store.keys import Keys
from .common import admin_id, run_with_redis


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("store", help="the generation marker and key layout version of this deployment's data")
    cmds = p.add_subparsers(dest="store_command", required=True)
    show = cmds.add_parser("show", help="print the generation marker (exit 1 if there is none)")
    show.set_defaults(func=cmd_show)
    adopt = cmds.add_parser(
        "adopt",
        help="accept what Redis holds now as this deployment's data: brokers that stopped trusting Redis "
        "(marker missing or changed) trust it again and reload users, rules and quotas",
    )
    adopt.set_defaults(func=cmd_adopt)
    migrate = cmds.add_parser(
        "migrate",
        help="move the data to the key layout of this release (idempotent; run once every broker, sidecar and "
        "CLI runs this release: docs/redis-schema.md)",
    )
    migrate.add_argument("--dry-run", action="store_true", help="print the steps without running them")
    migrate.set_defaults(func=cmd_migrate)


def cmd_show(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        marker = await generation.read(redis, keys)
        verdict = schema.judge(await schema.read(redis, keys))
        print(f"{keys.schema()}: {verdict.version}" + (f" ({verdict.problem})" if verdict.problem else ""))
        if marker is None:
            print(f"{keys.generation()}: none (brokers that knew one treat this Redis as unavailable)")
            return 1
        print(f"{keys.generation()}: {marker.describe()}")
        return 0

    return run_with_redis(args, body, any_layout=True)


def cmd_adopt(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        old = await generation.read(redis, keys)
        new = await generation.adopt(redis, keys, by=admin_id())
        print(f"{keys.generation()}: {new.describe()}" + (f" (was {old.describe()})" if old else " (there was none)"))
        print("running brokers trust this Redis again and reload users, ACL rules and quotas from it")
        return 0

    return run_with_redis(args, body)


def cmd_migrate(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        before = await schema.read(redis, keys)
        steps = await schema.migrate(redis, keys, dry_run=args.dry_run)
        for line in steps:
            print(line)
        target = schema.SCHEMA_VERSION
        if not steps:
            print(f"{keys.schema()}: {before}, the layout of this release: nothing to move")
        elif not args.dry_run:
            print(f"{keys.schema()}: {before} -> {target}")
        return 0

    return run_with_redis(args, body, any_layout=True)
