"""`mqtt-guard kick`: disconnect a client (or every client of a user) wherever it is connected.

The kick goes through Redis to the broker holding the session (the same path the sidecar uses), is
recorded in the audit stream, and with `--block` the client id (or the user) gets CONNACK 5 until
the block expires.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import parse_duration
from ..ops import kick as ops
from ..store.keys import Keys
from . import timefmt
from .common import CliError, admin_id, run_with_redis


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("kick", help="disconnect a client (or all clients of a user) on whichever broker holds it")
    p.add_argument("client_id", nargs="?", help="the client id to disconnect (or give --user)")
    p.add_argument("--user", metavar="U", help="disconnect every client of user U instead")
    p.add_argument("--reason", default="kicked by an admin", help="recorded in the audit stream and broker log")
    p.add_argument(
        "--block",
        metavar="DURATION",
        help="also refuse reconnects (CONNACK 5) for this long, e.g. 10m (the client id, or the user)",
    )
    p.set_defaults(func=cmd_kick)


def cmd_kick(args: argparse.Namespace) -> int:
    if bool(args.client_id) == bool(args.user):
        raise CliError("give a CLIENTID or --user U (one of them)")
    block = 0.0
    if args.block is not None:
        try:
            block = parse_duration(args.block)
        except ValueError as exc:
            raise CliError(f"--block: {exc}") from None
        if block <= 0:
            raise CliError("--block must be above 0")
    by = admin_id()

    async def body(redis: Any, keys: Keys) -> int:
        reason = args.reason
        if args.user:
            result = await ops.kick_user(redis, keys, args.user, reason, by, block=block)
            if block:
                print(f"user {args.user!r} blocked for {args.block} (until {timefmt.until(result.blocked_until)})")
            kicked = 0
            for sent in result.kicks:
                if sent.ok:
                    kicked += 1
                    print(f"kick of client {sent.client_id!r} sent to broker {sent.detail}")
                else:
                    print(f"client {sent.client_id!r}: {sent.detail}")
            if not result.kicks:
                print(f"user {args.user!r} has no connected client")
            return 0 if kicked or block else 1
        client_id = args.client_id
        result = await ops.kick_client(redis, keys, client_id, reason, by, block=block)
        if not result.connected:
            if block:
                print(f"client {client_id!r} is not connected; blocked for {args.block}")
                return 0
            print(f"client {client_id!r} is not connected (no session registered)")
            return 1
        sent = result.kicks[0]
        if not result.broker_alive:
            print(f"warning: broker {result.broker} holding {client_id!r} is not heartbeating; the kick waits for it")
        if not sent.ok:
            print(f"client {client_id!r}: {sent.detail}")
            return 1
        print(
            f"kick of client {client_id!r} sent to broker {sent.detail}"
            + (f"; blocked for {args.block}" if block else "")
        )
        return 0

    return run_with_redis(args, body, writes=True)
