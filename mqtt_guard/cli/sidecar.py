"""`mqtt-guard sidecar`: run the process that disconnects clients over their time, count or queue limits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from ..config import ConfigError, GuardConfig, load_config, parse_duration
from .common import ENV_PREFIX, ENV_REDIS_URL, CliError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sidecar", help="evaluate sessions and kick those over session_time, quota, expiry or queue")
    p.add_argument("-c", "--config", help="YAML configuration file (the brokers' file: redis, quota, sidecar)")
    p.add_argument("--interval", help="evaluation interval (default 1s; sidecar.interval in the file)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_sidecar)


def resolve_config(args: argparse.Namespace) -> GuardConfig:
    try:
        config = load_config(args.config)
        if os.environ.get(ENV_REDIS_URL):
            config.redis.url = os.environ[ENV_REDIS_URL]
        if os.environ.get(ENV_PREFIX):
            config.redis.prefix = os.environ[ENV_PREFIX]
        if args.redis_url:
            config.redis.url = args.redis_url
        if args.prefix:
            config.redis.prefix = args.prefix
        if args.interval is not None:
            try:
                config.sidecar.interval = parse_duration(args.interval)
            except ValueError as exc:
                raise ConfigError(f"--interval: {exc}") from None
            # A short interval with the default leader TTL is fine; a long one needs a longer TTL.
            config.sidecar.leader_ttl = max(config.sidecar.leader_ttl, 3 * config.sidecar.interval)
        if args.log_level:
            config.log.level = args.log_level
        config.quota.check()
        config.sidecar.check()
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    return config


def cmd_sidecar(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    logging.basicConfig(level=config.log.level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..sidecar.service import Sidecar

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Sidecar(config).run(stop)
        return 0

    return asyncio.run(main())
