"""`mqtt-guard sidecar`: run the process that disconnects clients over their time, count or queue limits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from ..config import ConfigError, GuardConfig, load_config, parse_duration
from ..store.schema import SchemaMismatch
from .common import CliError, apply_redis_overrides


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sidecar", help="evaluate sessions and kick those over session_time, quota, expiry or queue")
    p.add_argument("-c", "--config", help="YAML configuration file (the brokers' file: redis, quota, sidecar)")
    p.add_argument("--interval", help="evaluation interval (default 1s; sidecar.interval in the file)")
    p.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="replaces log.level of the config file"
    )
    p.add_argument(
        "--metrics-bind",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics (fleet totals, broker liveness, loop lag) here",
    )
    p.add_argument(
        "--health-bind",
        metavar="HOST:PORT",
        help="serve only the probes /livez and /readyz here (sidecar.health_bind; no /metrics)",
    )
    p.set_defaults(func=cmd_sidecar)


def resolve_config(args: argparse.Namespace) -> GuardConfig:
    try:
        config = load_config(args.config)
        apply_redis_overrides(config, args)
        if args.interval is not None:
            try:
                config.sidecar.interval = parse_duration(args.interval)
            except ValueError as exc:
                raise ConfigError(f"--interval: {exc}") from None
            # A short interval with the default leader TTL is fine; a long one needs a longer TTL.
            config.sidecar.leader_ttl = max(config.sidecar.leader_ttl, 3 * config.sidecar.interval)
            config.sidecar.sweep_interval = max(config.sidecar.sweep_interval, config.sidecar.interval)
        if args.log_level:
            config.log.level = args.log_level
        if args.metrics_bind:
            config.sidecar.prometheus_bind = args.metrics_bind
        if args.health_bind:
            config.sidecar.health_bind = args.health_bind
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
        try:
            await Sidecar(config).run(stop)
        except SchemaMismatch as exc:
            raise CliError(f"sidecar refuses to start: {exc}") from None
        return 0

    return asyncio.run(main())
