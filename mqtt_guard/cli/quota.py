"""`mqtt-guard quota ...`: set, show and reset per-user quotas (docs/quotas.md).

Limits are plain fields of `<prefix>quota:user:<u>` / `<prefix>quota:default`; running brokers track
those keys and apply a change at once (no restart), like ACL edits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..ops import quota as ops
from ..ops.plans import api_fields
from ..ops.quota import describe_quota
from ..quota.limits import FIELDS
from ..store.keys import Keys
from ..store.quota import QuotaStore
from . import timefmt
from .common import add_strict_option, check_api_known, check_user_known, run_with_redis

OPTIONS = {  # CLI option -> hash field
    "events": "events",
    "bytes": "bytes",
    "events_direction": "events_direction",
    "rate": "rate",
    "session_time": "session_time",
    "sessions": "sessions",
    "max_queue": "max_queue",
    "queue_grace": "queue_grace",
    "on_exceed": "on_exceed",
}


def _target(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("user", nargs="?", help="username")
    g.add_argument("--default", action="store_true", help="the defaults for users without their own value")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    quota = sub.add_parser("quota", help="per-user quotas").add_subparsers(dest="quota_cmd", required=True)
    p = quota.add_parser("set", help="set limits (unchanged fields keep their value; 'none' = no limit)")
    _target(p)
    p.add_argument(
        "--events",
        metavar="N/WINDOW[,...]",
        help="events per window, e.g. 10000/1d or 100/1m,10000/1d,200000/1mo (windows s,m,h,d,w,mo; UTC)",
    )
    p.add_argument("--api", metavar="NAME", help="set --events/--bytes for this API (mqtt-guard api add) instead")
    p.add_argument(
        "--events-direction",
        choices=["in", "out", "both"],
        help="what counts: publishes sent (in), deliveries received (out), both (default)",
    )
    p.add_argument("--bytes", metavar="SIZE/WINDOW", help="payload bytes per window, e.g. 50MB/1d")
    p.add_argument("--rate", metavar="R[/s][:BURST]", help="publishes per second, token bucket, e.g. 5/s:20")
    p.add_argument("--session-time", metavar="DURATION", help="longest one connection may last, e.g. 1h")
    p.add_argument("--sessions", metavar="N", help="concurrent connections of the user, across all brokers")
    p.add_argument("--max-queue", metavar="N", help="queued deliveries above which a client counts as slow")
    p.add_argument("--queue-grace", metavar="DURATION", help="how long a client may stay above --max-queue")
    p.add_argument(
        "--on-exceed", choices=["drop", "disconnect"], help="over events/bytes/rate: drop, or also disconnect"
    )
    add_strict_option(p)
    p.set_defaults(func=cmd_set)
    p = quota.add_parser("unset", help="remove fields (a user then falls back to the default's value)")
    _target(p)
    p.add_argument(
        "--field",
        dest="fields",
        action="append",
        required=True,
        metavar="FIELD",
        help=f"a field to remove (repeatable): {', '.join(FIELDS)}, api:<NAME>:events|bytes",
    )
    p.set_defaults(func=cmd_unset)
    p = quota.add_parser("show", help="limits, usage in the current window, when it resets, block, sessions")
    _target(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)
    p = quota.add_parser("reset", help="zero the user's usage in its current windows and lift its block")
    p.add_argument("user", help="username")
    p.set_defaults(func=cmd_reset)


def _name(args: argparse.Namespace) -> str | None:
    return None if args.default else args.user


def cmd_set(args: argparse.Namespace) -> int:
    values = {name: getattr(args, option) for option, name in OPTIONS.items() if getattr(args, option) is not None}
    if args.api:
        values = api_fields(args.api, values)
    fields = ops.normalize_limits(values, lambda name: name if ":" in name else f"--{name.replace('_', '-')}")
    ops.check_changes(
        len(fields),
        "--events, --bytes, --rate, --session-time, --sessions, --max-queue, --queue-grace, --events-direction, "
        "--on-exceed",
    )

    async def body(redis: Any, keys: Keys) -> int:
        name = _name(args)
        if args.api:
            await check_api_known(redis, keys, args.api, strict=args.strict)
        if name is not None:
            await check_user_known(redis, keys, name, strict=args.strict, what="quota")
        key = await ops.set_limits(redis, keys, name, fields)
        print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_unset(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        key, removed = await ops.unset_limits(redis, keys, _name(args), args.fields)
        print(f"{key}: removed {removed} field(s)")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_show(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        store = QuotaStore(redis, keys)
        info = await describe_quota(store, keys, _name(args))
        if args.json:
            json.dump(info, sys.stdout, indent=1)
            print()
            return 0
        who = f"user {info['user']!r}" if info["user"] else "the default"
        print(f"quota of {who}")
        if not info["limits"]:
            print("  no limits")
        for name, v in info["limits"].items():
            origin = (
                ""
                if info["user"] is None or v["from"].endswith(f"user:{info['user']}")
                else f"  (plan {v['from'].rpartition('quota:plan:')[2]})"
                if "quota:plan:" in v["from"]
                else "  (default)"
            )
            print(f"  {name:<17} {v['value']}{origin}")
        for p in info["problems"]:
            print(f"  ! ignored: {p}")
        now = time.time()
        for metric, u in info.get("usage", {}).items():
            print(
                f"{metric}: {u['used']} of {u['limit']} used in the window since {u['window_start_utc']} "
                f"({u['left']} left, {u['held_by_brokers']} of it held by brokers, {u['refused']} refused); "
                f"resets at {timefmt.until(u['resets_at'], now)}"
            )
        if info.get("block"):
            b = info["block"]
            print(f"blocked {timefmt.block_until(b['until'], now)}: {b['reason']}")
        if "sessions" in info:
            print(f"sessions: {len(info['sessions'])}")
            for s in info["sessions"]:
                print(
                    f"  {s['client_id']}  on {s['broker']}  connected {timefmt.duration(now - s['since'])}  "
                    f"queue {s['queue_messages']}  in {s['events_in']}/{s['bytes_in']} B  "
                    f"out {s['events_out']}/{s['bytes_out']} B"
                )
        return 0

    return run_with_redis(args, body)


def cmd_reset(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        reset = await ops.reset(redis, keys, args.user)
        print(f"usage of {args.user!r} reset in {len(reset)} window(s); block lifted")
        return 0

    return run_with_redis(args, body, writes=True)
