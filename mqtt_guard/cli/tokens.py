"""`mqtt-guard token`: revoke access tokens (JWT) by their `jti` (docs/tokens.md "Revocation").

A revocation is a key in Redis: every broker refuses the token's CONNECTs and websockets upgrades from
then on and disconnects its connected clients within milliseconds (the brokers track the key prefix).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import parse_duration
from ..store.keys import Keys
from ..store.revocations import RevocationStore
from .common import CliError, admin_id, run_with_redis


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = sub.add_parser("token", help="revoke access tokens (JWT) by jti").add_subparsers(
        dest="token_cmd", required=True
    )
    p = token.add_parser("revoke", help="refuse a token from now on and disconnect its clients")
    p.add_argument("jti", metavar="JTI", help="the token's jti claim")
    p.add_argument(
        "--for",
        dest="for_",
        metavar="DURATION",
        help="forget the revocation after this long, e.g. 30d (longer than the token lives); default: never",
    )
    p.set_defaults(func=cmd_revoke)
    p = token.add_parser("unrevoke", help="accept a revoked token again")
    p.add_argument("jti", metavar="JTI", help="the token's jti claim")
    p.set_defaults(func=cmd_unrevoke)


def cmd_revoke(args: argparse.Namespace) -> int:
    if not args.jti:
        raise CliError("JTI must not be empty")
    ttl = None
    if args.for_ is not None:
        try:
            ttl = parse_duration(args.for_)
        except ValueError as exc:
            raise CliError(f"--for: {exc}") from None
        if ttl <= 0:
            raise CliError("--for must be above 0")

    async def body(redis: Any, keys: Keys) -> int:
        fresh = await RevocationStore(redis, keys).revoke(args.jti, by=admin_id(), ttl=ttl)
        until = f" for {args.for_}" if ttl is not None else ""
        print(f"token {args.jti!r} revoked{until}" + ("" if fresh else " (it was revoked already)"))
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_unrevoke(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        if await RevocationStore(redis, keys).unrevoke(args.jti):
            print(f"token {args.jti!r} accepted again")
            return 0
        print(f"token {args.jti!r} was not revoked")
        return 1

    return run_with_redis(args, body, writes=True)
