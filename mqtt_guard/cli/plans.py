"""`mqtt-guard plan|group|api|usage ...`: plans, group plans, APIs and metered usage (docs/plans.md).

The work is in mqtt_guard/ops/plans.py (shared with the admin API); this module parses and prints.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from ..ops import plans as ops
from ..quota.limits import FIELDS
from ..store.keys import Keys
from .common import CliError, add_strict_option, check_api_known, run_with_redis

COUNTS = ("events_in", "bytes_in", "events_out", "bytes_out")


def add_limit_options(p: argparse.ArgumentParser) -> None:
    """The limit options of `plan set` (those of `quota set`)."""
    p.add_argument(
        "--events", metavar="N/WINDOW[,...]", help="events per window, e.g. 100/1m,10000/1d,200000/1mo (UTC)"
    )
    p.add_argument("--bytes", metavar="SIZE/WINDOW[,...]", help="payload bytes per window, e.g. 50MB/1d,1GB/1mo")
    p.add_argument("--events-direction", choices=["in", "out", "both"], help="what counts (default both)")
    p.add_argument("--rate", metavar="R[/s][:BURST]", help="publishes per second, token bucket")
    p.add_argument("--session-time", metavar="DURATION", help="longest one connection may last")
    p.add_argument("--sessions", metavar="N", help="concurrent connections of the user")
    p.add_argument("--max-queue", metavar="N", help="queued deliveries above which a client counts as slow")
    p.add_argument("--queue-grace", metavar="DURATION", help="how long a client may stay above --max-queue")
    p.add_argument("--on-exceed", choices=["drop", "disconnect"], help="over events/bytes/rate: drop, or disconnect")


def limit_values(args: argparse.Namespace) -> dict[str, str]:
    """The limit options given; with `--api NAME` (events and bytes only) as that API's fields."""
    # (each option's dest is its quota field's name)
    values = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    api = getattr(args, "api", None)
    return ops.api_fields(api, values) if api else values


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = sub.add_parser("plan", help="plans: named quota templates").add_subparsers(dest="plan_cmd", required=True)
    p = plan.add_parser("set", help="create or change a plan (unchanged fields keep their value; 'none' = no limit)")
    p.add_argument("name", help="plan name (letters, digits, _ . -)")
    add_limit_options(p)
    p.add_argument("--api", metavar="NAME", help="set --events/--bytes for this API (mqtt-guard api add) instead")
    add_strict_option(p, "--api names no API")
    p.set_defaults(func=cmd_plan_set)
    p = plan.add_parser("list", help="the plans and their fields")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plan_list)
    p = plan.add_parser("show", help="one plan")
    p.add_argument("name", help="plan name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plan_show)
    p = plan.add_parser("delete", help="delete a plan (its users fall back to the next rule of the precedence)")
    p.add_argument("name", help="plan name")
    p.set_defaults(func=cmd_plan_delete)

    api = sub.add_parser("api", help="APIs: named sets of topic filters").add_subparsers(dest="api_cmd", required=True)
    p = api.add_parser("add", help="define (or redefine) an API")
    p.add_argument("name", help="API name (letters, digits, _ . -)")
    p.add_argument("filters", nargs="+", metavar="FILTER", help="topic filters of the API, e.g. 'stocks/#'")
    p.set_defaults(func=cmd_api_add)
    p = api.add_parser("list", help="the APIs and their filters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_api_list)
    p = api.add_parser("remove", help="delete an API")
    p.add_argument("name", help="API name")
    p.set_defaults(func=cmd_api_remove)

    p = sub.add_parser(
        "usage", help="metered usage: `usage USER [--month YYYY-MM]`, `usage export --month YYYY-MM --format csv|json`"
    )
    p.add_argument("target", metavar="USER|export", help="a username, or `export` for every user of the month")
    p.add_argument("--user", dest="as_user", action="store_true", help="TARGET is a username even if it is `export`")
    p.add_argument("--month", metavar="YYYY-MM", help="UTC month (default: the current one)")
    p.add_argument("--json", action="store_true", help="machine-readable output (USER)")
    p.add_argument("--format", choices=["csv", "json"], default="csv", help="export format (default csv)")
    p.set_defaults(func=cmd_usage)


def register_group_set(group: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`group set NAME --plan P`, under cli/acl.py's `group` command."""
    p = group.add_parser("set", help="put a group's users on a plan (docs/plans.md)")
    p.add_argument("name", help="group name")
    p.add_argument("--plan", required=True, help="a plan name, or none")
    p.set_defaults(func=cmd_group_set)


def _dump(data: Any) -> None:
    json.dump(data, sys.stdout, indent=1)
    print()


def cmd_plan_set(args: argparse.Namespace) -> int:
    values = limit_values(args)

    async def body(redis: Any, keys: Keys) -> int:
        if args.api:
            await check_api_known(redis, keys, args.api, strict=args.strict)
        fields = await ops.set_plan(redis, keys, args.name, values)
        print(f"plan {args.name!r}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_plan_list(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        plans = await ops.list_plans(redis, keys)
        if args.json:
            _dump(plans)
            return 0
        if not plans:
            print("no plans")
        for name, fields in plans.items():
            print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(fields.items())))
        return 0

    return run_with_redis(args, body)


def cmd_plan_show(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        info = await ops.show_plan(redis, keys, args.name)
        if args.json:
            _dump(info)
            return 0
        print(f"plan {info['plan']}")
        for k, v in sorted(info["fields"].items()):
            print(f"  {k:<20} {v}")
        for problem in info["problems"]:
            print(f"  ! ignored: {problem}")
        return 0

    return run_with_redis(args, body)


def cmd_plan_delete(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        await ops.delete_plan(redis, keys, args.name)
        print(f"plan {args.name!r} deleted")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_group_set(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        plan = await ops.set_group_plan(redis, keys, args.name, args.plan)
        print(f"group {args.name!r}: " + (f"plan {plan}" if plan else "no plan"))
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_api_add(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        filters = await ops.add_api(redis, keys, args.name, args.filters)
        print(f"API {args.name!r}: " + " ".join(filters))
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_api_list(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        apis = await ops.list_apis(redis, keys)
        if args.json:
            _dump(apis)
            return 0
        if not apis:
            print("no APIs")
        for name, filters in apis.items():
            print(f"{name}: " + " ".join(filters))
        return 0

    return run_with_redis(args, body)


def cmd_api_remove(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        await ops.remove_api(redis, keys, args.name)
        print(f"API {args.name!r} removed")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_usage(args: argparse.Namespace) -> int:
    if args.target == "export" and not args.as_user:
        return _export(args)

    async def body(redis: Any, keys: Keys) -> int:
        info = await ops.usage_of(redis, keys, args.target, args.month)
        if args.json:
            _dump(info)
            return 0
        print(f"usage of {info['user']!r} in {info['month']} (UTC)")
        if not info["total"]:
            print("  nothing metered")
        for api, c in info["total"].items():
            label = f"API {api}" if api else "all traffic"
            print(
                f"  {label:<20} in {c['events_in']} events / {c['bytes_in']} B   "
                f"out {c['events_out']} events / {c['bytes_out']} B"
            )
        return 0

    return run_with_redis(args, body)


def _export(args: argparse.Namespace) -> int:
    if args.month is None:
        raise CliError("usage export needs --month YYYY-MM")

    async def body(redis: Any, keys: Keys) -> int:
        rows = await ops.export(redis, keys, args.month)
        if args.format == "json":
            _dump(rows)
            return 0
        writer = csv.DictWriter(sys.stdout, fieldnames=["month", "day", "user", "api", *COUNTS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return 0

    return run_with_redis(args, body)
