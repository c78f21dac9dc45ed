"""`mqtt-guard ban ADDR|CIDR [--for D]`, `mqtt-guard unban ADDR|CIDR`, `mqtt-guard ban list`: the admin's
ban list, next to the bans login throttling decides (auth/throttle.py, store/bans.py).

A ban is a Redis key that every broker tracks: it applies to new CONNECTs on running brokers at once
(within the invalidation's round trip), without any password check (CONNACK 5). Clients connected from
the address stay connected unless the ban is given `--kick`: then every broker disconnects them when
it reads the ban.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

from ..auth.throttle import KIND_MANUAL
from ..config import parse_duration
from ..ops import bans as ban_ops
from ..store.keys import Keys
from . import timefmt
from .common import CliError, admin_id, run_with_redis


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ban",
        help="refuse CONNECTs from an address or network (IPv4/IPv6, CIDR) on every broker; "
        "`ban list` shows the bans in force, the admin's and login throttling's",
    )
    p.add_argument("target", metavar="ADDR|CIDR|list", help="an address, a CIDR network, or `list`")
    p.add_argument("--for", dest="duration", metavar="D", help="how long (10m, 2h, 7d); default: until `unban`")
    p.add_argument("--reason", default="banned by an admin", help="recorded with the ban and shown by `ban list`")
    p.add_argument(
        "--kick",
        action="store_true",
        help="also disconnect the clients connected from it now (default: they stay connected)",
    )
    p.add_argument("--json", action="store_true", help="`ban list`: one JSON object per line")
    p.set_defaults(func=cmd_ban)
    u = sub.add_parser(
        "unban",
        help="lift the admin's ban of ADDR|CIDR, and every login-throttling ban of an address inside it",
    )
    u.add_argument("target", metavar="ADDR|CIDR", help="the address or network given to `ban`, or one inside it")
    u.set_defaults(func=cmd_unban)


def cmd_ban(args: argparse.Namespace) -> int:
    if args.target == "list":
        return _list(args)
    ban_ops.network(args.target)  # a bad address fails before Redis is reached
    seconds = None
    if args.duration is not None:
        try:
            seconds = parse_duration(args.duration)
        except ValueError as exc:
            raise CliError(f"--for: {exc}") from None
        if seconds <= 0:
            raise CliError("--for must be above 0")
    by = admin_id()

    async def body(redis: Any, keys: Keys) -> int:
        ban = await ban_ops.ban(redis, keys, args.target, seconds, args.reason, by, kick=args.kick)
        until = ban.until
        how = "until `mqtt-guard unban`" if math.isinf(until) else f"until {timefmt.until(until)}"
        print(f"banned {ban.network} {how}: new CONNECTs from it get CONNACK 5 on every broker")
        if args.kick:
            print("clients connected from it are disconnected by the brokers that hold them")
        else:
            print("clients connected from it stay connected (`--kick` disconnects them)")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_unban(args: argparse.Namespace) -> int:
    ban_ops.network(args.target)

    async def body(redis: Any, keys: Keys) -> int:
        net, removed = await ban_ops.unban(redis, keys, args.target)
        if not removed:
            print(f"no ban of {net} or of an address inside it")
            return 1
        print(f"lifted {removed} ban(s) of {net}")
        return 0

    return run_with_redis(args, body)


def _list(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        bans = await ban_ops.list_bans(redis, keys)
        now = time.time()
        if args.json:
            for b in bans:
                print(json.dumps(ban_ops.ban_view(b, now)))
            return 0
        if not bans:
            print("no bans in force")
            return 0
        for b in bans:
            what = b.network if b.username is None else f"{b.network} as {b.username!r}"
            kind = "admin" if b.kind == KIND_MANUAL else "throttle"
            left = "until unban" if math.isinf(b.until) else f"{timefmt.duration(b.until - now)} left"
            print(f"{kind:8}  {what}  {left}  {b.reason} (by {b.by})")
        return 0

    return run_with_redis(args, body)
