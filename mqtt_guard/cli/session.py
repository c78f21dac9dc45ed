"""`mqtt-guard session drop CLIENTID`: discard a client's session on whichever broker holds it
(the operation: ops/sessions.py, shared with `DELETE /api/sessions/{client_id}`).

Under `auth.client_id_policy: owner` a persistent session keeps its client id for its user while the
client is offline (until `limits.persistent_session_expiry`, by default never); this is how an admin
frees the id earlier. Offline sessions live in the memory of the broker the client last used and are not
in Redis, so the request goes to every live broker through its kick queue (the path `mqtt-guard kick`
uses); the broker holding the session discards it: a connected client is disconnected (its will is
published, as on a lost link) and its session discarded instead of kept; an offline session goes at once
with its subscriptions and queued messages. The request is recorded in the audit stream.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..ops import NotFound
from ..ops.sessions import drop_session
from ..store.keys import Keys
from .common import admin_id, run_with_redis


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("session", help="client sessions held by the brokers")
    cmds = p.add_subparsers(dest="session_command", required=True)
    drop = cmds.add_parser(
        "drop",
        help="discard a client's session on whichever broker holds it (a connected client is disconnected); "
        "its client id is free for any user again",
    )
    drop.add_argument("client_id", help="the client id whose session goes")
    drop.add_argument("--reason", default="dropped by an admin", help="recorded in the audit stream and broker log")
    drop.set_defaults(func=cmd_drop)


def cmd_drop(args: argparse.Namespace) -> int:
    by = admin_id()

    async def body(redis: Any, keys: Keys) -> int:
        try:
            done = await drop_session(redis, keys, args.client_id, args.reason, by)
        except NotFound as exc:  # no broker runs
            print(exc)
            return 1
        online = done.connected_on
        where = f"connected on broker {online}: it is disconnected" if online else "not connected"
        print(f"drop of the session of client {done.client_id!r} sent to {done.brokers} broker(s) ({where})")
        if done.stored:
            print("its stored session (Redis) is deleted")
        return 0

    return run_with_redis(args, body, writes=True)
