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

from ..auth.throttle import KIND_MANUAL, Ban, net_id, parse_ban_id, parse_network
from ..config import parse_duration
from ..store.bans import BanStore
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


def _network(text: str) -> Any:
    try:
        return parse_network(text)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def cmd_ban(args: argparse.Namespace) -> int:
    if args.target == "list":
        return _list(args)
    net = _network(args.target)
    until = math.inf
    if args.duration is not None:
        try:
            seconds = parse_duration(args.duration)
        except ValueError as exc:
            raise CliError(f"--for: {exc}") from None
        if seconds <= 0:
            raise CliError("--for must be above 0")
        until = time.time() + seconds
    ban = Ban(KIND_MANUAL, net.with_prefixlen, until, reason=args.reason, by=admin_id(), kick=args.kick)

    async def body(redis: Any, keys: Keys) -> int:
        await BanStore(redis, keys).put(ban)
        how = "until `mqtt-guard unban`" if math.isinf(until) else f"until {timefmt.until(until)}"
        print(f"banned {net.with_prefixlen} {how}: new CONNECTs from it get CONNACK 5 on every broker")
        if args.kick:
            print("clients connected from it are disconnected by the brokers that hold them")
        else:
            print("clients connected from it stay connected (`--kick` disconnects them)")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_unban(args: argparse.Namespace) -> int:
    net = _network(args.target)

    async def body(redis: Any, keys: Keys) -> int:
        store = BanStore(redis, keys)
        ids = [net_id(net)]
        addresses = []
        for ban_id in await store.ids():
            parsed = parse_ban_id(ban_id)
            if parsed is None or parsed[0] == KIND_MANUAL:
                continue
            if _inside(parsed[1], net):
                ids.append(ban_id)
                addresses.append(parsed[1])
        if net.num_addresses == 1:  # failure counts of the address start afresh even without a ban
            addresses.append(str(net.network_address))
        removed = await store.remove(ids, sorted(set(addresses)))
        if not removed:
            print(f"no ban of {net.with_prefixlen} or of an address inside it")
            return 1
        print(f"lifted {removed} ban(s) of {net.with_prefixlen}")
        return 0

    return run_with_redis(args, body)


def _inside(address: str, net: Any) -> bool:
    try:
        ip = parse_network(address).network_address
    except ValueError:
        return False
    return bool(ip.version == net.version and ip in net)


def _list(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        bans = await BanStore(redis, keys).all()
        bans.sort(key=lambda b: (b.kind != KIND_MANUAL, b.network, b.username or ""))
        now = time.time()
        if args.json:
            for b in bans:
                print(
                    json.dumps(
                        {
                            "kind": b.kind,
                            "network": b.network,
                            "username": b.username,
                            "until": None if math.isinf(b.until) else round(b.until, 3),
                            "remaining": None if math.isinf(b.until) else round(max(0.0, b.until - now), 3),
                            "reason": b.reason,
                            "by": b.by,
                        }
                    )
                )
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
