"""`mqtt-guard broker`: load and validate the configuration, then run the guarded broker."""

from __future__ import annotations

import argparse

from ..config import ConfigError, GuardConfig, ListenerConfig, load_config, parse_workers, split_bind
from ..store.connection import RedisUrlError, make_async_client
from .common import CliError, apply_redis_overrides


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broker", help="run the guarded MQTT broker")
    p.add_argument("-c", "--config", help="YAML configuration file, or a mosquitto.conf (detected)")
    p.add_argument(
        "--mosquitto-conf",
        metavar="FILE",
        help="a mosquitto 2.0 mosquitto.conf: listeners, password_file, acl_file... (mosquitto-compat/)",
    )
    p.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="TCP listener (repeatable); replaces the listeners of the config file",
    )
    p.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=None,
        help="let clients without a username in (anonymous ACL rules apply)",
    )
    p.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="replaces log.level of the config file"
    )
    p.add_argument(
        "--workers",
        metavar="N|auto",
        help="run N broker processes on the same ports (auto: one per core); replaces `workers:` of the config",
    )
    p.set_defaults(func=cmd_broker)


def resolve_config(args: argparse.Namespace) -> GuardConfig:
    """File < environment < command line, then validate the result as a whole."""
    try:
        config = load_config(args.config)
        apply_redis_overrides(config, args)
        if args.bind:
            for bind in args.bind:
                split_bind(bind, "--bind")
            config.listeners = [ListenerConfig(type="tcp", bind=b) for b in args.bind]
        if args.allow_anonymous:
            config.auth.allow_anonymous = True
        if args.log_level:
            config.log.level = args.log_level
        apply_workers(config, args)
        config.check()
        make_async_client(config.redis.url)  # refuses an unsupported URL before anything starts
    except RedisUrlError as exc:
        raise CliError(str(exc)) from None
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    return config


def apply_workers(config: GuardConfig, args: argparse.Namespace) -> None:
    if args.workers is not None:
        try:
            config.workers = parse_workers(args.workers)
        except ValueError as exc:
            raise ConfigError(f"--workers: {exc}") from None


def cmd_broker(args: argparse.Namespace) -> int:
    from ..compat.conf import looks_like_mosquitto_conf

    mosquitto_conf = args.mosquitto_conf or (
        args.config if args.config and looks_like_mosquitto_conf(args.config) else None
    )
    if mosquitto_conf:
        return _run_mosquitto_conf(args, mosquitto_conf)
    config = resolve_config(args)
    from ..engine.runner import run  # imported late: amqtt is heavy and other commands do not need it

    return run(config)


def _run_mosquitto_conf(args: argparse.Namespace, path: str) -> int:
    """The mosquitto.conf branch (mqtt_guard/compat/launch.py): Redis settings from options/environment."""
    from ..compat.launch import LaunchError, run_mosquitto_conf

    if args.mosquitto_conf and args.config:
        raise CliError("give either -c/--config or --mosquitto-conf, not both")
    base = GuardConfig()
    apply_redis_overrides(base, args)
    try:
        apply_workers(base, args)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    try:
        return run_mosquitto_conf(
            path, base, binds=args.bind, allow_anonymous=args.allow_anonymous, log_level=args.log_level
        )
    except LaunchError as exc:
        raise CliError(str(exc)) from None
