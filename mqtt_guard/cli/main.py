"""The `mqtt-guard` command: global options, then one sub-command per admin task."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..ops import OpError
from . import (  # mosquitto compat (mqtt_guard/compat)
    acl,
    ban,
    broker,
    importer,
    kick,
    passwd,
    plans,
    quota,
    sidecar,
    stats,
    users,
)
from . import admin as admin_cmd
from . import store as store_cmd
from . import tokens as tokens_cmd
from .common import CliError
from .session import register as register_session


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mqtt-guard", description="Guarded MQTT broker and its admin tools")
    parser.add_argument("--version", action="version", version=f"mqtt-guard {__version__}")
    parser.add_argument("--redis-url", help="Redis URL (env MQTT_GUARD_REDIS_URL; default redis://127.0.0.1:6379/0)")
    parser.add_argument("--prefix", help="key prefix in Redis (env MQTT_GUARD_PREFIX; default mqg:)")
    sub = parser.add_subparsers(dest="command", required=True)
    broker.register(sub)
    users.register(sub)
    acl.register(sub)
    quota.register(sub)
    kick.register(sub)
    register_session(sub)
    sidecar.register(sub)
    stats.register(sub)
    store_cmd.register(sub)
    ban.register(sub)
    passwd.register(sub)
    importer.register(sub)
    admin_cmd.register(sub)
    tokens_cmd.register(sub)
    plans.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, OpError) as exc:  # OpError: an operation (mqtt_guard/ops) refused
        print(f"mqtt-guard: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
