"""`mqtt-guard store show|adopt`: the generation marker that tells brokers this Redis holds their data.

A broker that sees the marker it started with disappear or change (Redis restarted empty, flushed,
replaced) treats Redis as unavailable until the marker comes back (a restored backup) or an admin
accepts what Redis holds now with `store adopt` (store/generation.py, docs/redis-schema.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..store import generation
from ..store.keys import Keys
from .common import admin_id, run_with_redis


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("store", help="the generation marker of this deployment's data in Redis")
    cmds = p.add_subparsers(dest="store_command", required=True)
    show = cmds.add_parser("show", help="print the generation marker (exit 1 if there is none)")
    show.set_defaults(func=cmd_show)
    adopt = cmds.add_parser(
        "adopt",
        help="accept what Redis holds now as this deployment's data: brokers that stopped trusting Redis "
        "(marker missing or changed) trust it again and reload users, rules and quotas",
    )
    adopt.set_defaults(func=cmd_adopt)


def cmd_show(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        marker = await generation.read(redis, keys)
        if marker is None:
            print(f"{keys.generation()}: none (brokers that knew one treat this Redis as unavailable)")
            return 1
        print(f"{keys.generation()}: {marker.describe()}")
        return 0

    return run_with_redis(args, body)


def cmd_adopt(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        old = await generation.read(redis, keys)
        new = await generation.adopt(redis, keys, by=admin_id())
        print(f"{keys.generation()}: {new.describe()}" + (f" (was {old.describe()})" if old else " (there was none)"))
        print("running brokers trust this Redis again and reload users, ACL rules and quotas from it")
        return 0

    return run_with_redis(args, body)
