"""`mqtt-guard admin`: serve the admin HTTP API; `mqtt-guard admin token ...`: its bearer tokens."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import signal
import sys
from typing import Any

from ..config import ConfigError, GuardConfig, load_config
from ..store import schema
from ..store.connection import REDIS_ERRORS, RedisUrlError, make_async_client, redact
from ..store.keys import Keys
from ..store.quota import QuotaStore
from ..store.tokens import TokenStore
from .common import CliError, admin_id, apply_redis_overrides, run_with_redis


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("admin", help="serve the admin HTTP API (docs/admin-api.md); 'admin token': its tokens")
    p.add_argument("-c", "--config", help="YAML configuration file (its redis: and admin: sections)")
    p.add_argument("--bind", metavar="HOST:PORT", help="listen here (default admin.bind, 127.0.0.1:9884)")
    p.add_argument("--certfile", help="serve HTTPS with this certificate chain (with --keyfile)")
    p.add_argument("--keyfile", help="the certificate's private key")
    p.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="replaces log.level of the config file"
    )
    p.set_defaults(func=cmd_serve)
    tokens = p.add_subparsers(dest="admin_cmd").add_parser("token", help="admin API tokens (stored hashed)")
    t = tokens.add_subparsers(dest="token_cmd", required=True)
    c = t.add_parser("create", help="create a token; it is printed once, as the last word of the output")
    c.add_argument("name", help="who or what uses it (recorded in the audit stream with each change)")
    c.add_argument("--read-only", action="store_true", help="GET requests only (dashboards, monitoring)")
    c.set_defaults(func=cmd_token_create)
    ls = t.add_parser("list", help="token names, read-only flags, when and by whom created (never the token)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_token_list)
    r = t.add_parser("revoke", help="delete a token: requests with it get 401 at once")
    r.add_argument("name", help="the name given at create")
    r.set_defaults(func=cmd_token_revoke)


def resolve_config(args: argparse.Namespace) -> GuardConfig:
    try:
        config = load_config(args.config)
        apply_redis_overrides(config, args)
        if args.bind:
            config.admin.bind = args.bind
        if args.certfile or args.keyfile:
            config.admin.certfile, config.admin.keyfile = args.certfile, args.keyfile
        if args.log_level:
            config.log.level = args.log_level
        config.admin.check()
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    logging.basicConfig(level=config.log.level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..admin.api import Ctx  # aiohttp is imported by the server only
    from ..admin.server import serve

    async def main() -> int:
        try:
            redis = make_async_client(config.redis.url)
        except RedisUrlError as exc:
            raise CliError(str(exc)) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        keys = Keys(config.redis.prefix)
        try:
            await schema.check(redis, keys)  # a layout newer than this release: refuse (store/schema.py)
        except schema.SchemaMismatch as exc:
            await redis.aclose()
            raise CliError(f"admin server refuses to start: {exc}") from None
        except REDIS_ERRORS:
            pass  # (Redis down at start: the API answers 503 until it is back, as before)
        ctx = Ctx(redis, keys, audit_maxlen=config.quota.audit_maxlen)
        try:
            await serve(ctx, config.admin, stop)
        except OSError as exc:
            raise CliError(f"cannot serve the admin API on {config.admin.bind}: {exc.strerror or exc}") from None
        finally:
            await redis.aclose()
        return 0

    try:
        return asyncio.run(main())
    except REDIS_ERRORS as exc:
        raise CliError(f"cannot reach Redis at {redact(config.redis.url)}: {exc}") from None


def cmd_token_create(args: argparse.Namespace) -> int:
    by = admin_id()

    async def body(redis: Any, keys: Keys) -> int:
        token = await TokenStore(redis, keys).create(args.name, read_only=args.read_only, by=by)
        if token is None:
            raise CliError(f"a token named {args.name!r} exists already (admin token revoke {args.name} first)")
        await QuotaStore(redis, keys).audit(action="admin-token.create", name=args.name, by=by)
        kind = "read-only " if args.read_only else ""
        print(f"{kind}admin token {args.name!r} created; it is shown only this once: {token}")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_token_list(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: Keys) -> int:
        tokens = await TokenStore(redis, keys).list()
        rows = [{"name": t.name, "read_only": t.read_only, "created": t.created, "by": t.by} for t in tokens]
        if args.json:
            json.dump(rows, sys.stdout)
            print()
            return 0
        for t in tokens:
            when = dt.datetime.fromtimestamp(t.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            print(f"{t.name}  {'read-only' if t.read_only else 'read-write'}  created {when} by {t.by}")
        if not tokens:
            print("no admin tokens (mqtt-guard admin token create NAME)")
        return 0

    return run_with_redis(args, body)


def cmd_token_revoke(args: argparse.Namespace) -> int:
    by = admin_id()

    async def body(redis: Any, keys: Keys) -> int:
        if not await TokenStore(redis, keys).revoke(args.name):
            raise CliError(f"no admin token named {args.name!r}")
        await QuotaStore(redis, keys).audit(action="admin-token.revoke", name=args.name, by=by)
        print(f"admin token {args.name!r} revoked")
        return 0

    return run_with_redis(args, body, writes=True)
