"""What every CLI command shares: the Redis connection from global options, password input, errors."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ..ops.plans import api_exists
from ..store import generation, schema
from ..store.connection import DEFAULT_REDIS_URL, REDIS_ERRORS, RedisUrlError, make_async_client, redact
from ..store.keys import DEFAULT_PREFIX, Keys
from ..store.users import UserStore

ENV_REDIS_URL = "MQTT_GUARD_REDIS_URL"
ENV_PREFIX = "MQTT_GUARD_PREFIX"


class CliError(Exception):
    """A user-facing failure: printed as 'error: ...' with exit code 1."""


def redis_url(args: argparse.Namespace, fallback: str | None = None) -> str:
    return args.redis_url or os.environ.get(ENV_REDIS_URL) or fallback or DEFAULT_REDIS_URL


def key_prefix(args: argparse.Namespace, fallback: str | None = None) -> str:
    return args.prefix or os.environ.get(ENV_PREFIX) or fallback or DEFAULT_PREFIX


def apply_redis_overrides(config: Any, args: argparse.Namespace) -> None:
    """Redis URL and prefix: config file < environment < command line (broker and sidecar alike)."""
    if os.environ.get(ENV_REDIS_URL):
        config.redis.url = os.environ[ENV_REDIS_URL]
    if os.environ.get(ENV_PREFIX):
        config.redis.prefix = os.environ[ENV_PREFIX]
    if args.redis_url:
        config.redis.url = args.redis_url
    if args.prefix:
        config.redis.prefix = args.prefix


def admin_id() -> str:
    """Who runs this command, as recorded in Redis (audit stream, generation marker)."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        user = "?"
    return f"cli:{user}@{socket.gethostname()}"


def run_with_redis(
    args: argparse.Namespace,
    body: Callable[[Any, Keys], Awaitable[int]],
    *,
    writes: bool = False,
    any_layout: bool = False,
) -> int:
    """Run `body(redis, keys)` with a client built from the global options; report Redis errors plainly.

    `writes`: the command writes this deployment's data, so a Redis without a generation marker gets
    one first (a new deployment; store/generation.py). The key layout must be one this release reads
    (store/schema.py), unless `any_layout` (the `store` commands that inspect or migrate it)."""
    url = redis_url(args)

    async def main() -> int:
        try:
            client = make_async_client(url)
        except RedisUrlError as exc:
            raise CliError(str(exc)) from None
        keys = Keys(key_prefix(args))
        try:
            if not any_layout:
                await schema.check(client, keys)
            result = await body(client, keys)
            if writes:  # after the body: a refused command (CliError) writes nothing at all
                await ensure_generation(client, keys)
            return result
        except REDIS_ERRORS as exc:
            raise CliError(f"cannot reach Redis at {redact(url)}: {exc}") from None
        except schema.SchemaMismatch as exc:
            raise CliError(str(exc)) from None
        finally:
            await client.aclose()

    return asyncio.run(main())


async def ensure_generation(redis: Any, keys: Keys) -> None:
    """The first writer on a Redis without a generation marker creates it (store/generation.py)."""
    await generation.ensure(redis, keys, by=admin_id())


def add_strict_option(
    p: argparse.ArgumentParser, what: str = "the user does not exist (or --api names no API)"
) -> None:
    p.add_argument("--strict", action="store_true", help=f"refuse (exit 1) when {what}, instead of warning")


async def check_api_known(redis: Any, keys: Keys, api: str, *, strict: bool) -> None:
    """Warn on stderr (or, with --strict, fail) when `--api NAME` names no API (`mqtt-guard api add`):
    the limits are stored and apply once the API is defined, but a typo would otherwise count nothing."""
    if await api_exists(redis, keys, api):
        return
    if strict:
        raise CliError(f"no API {api!r} (mqtt-guard api add); nothing written (--strict)")
    print(
        f"mqtt-guard: warning: no API {api!r} (yet): its limits are stored and apply once `mqtt-guard api add "
        f"{api} FILTER...` defines it; check the spelling (mqtt-guard api list; --strict refuses unknown APIs)",
        file=sys.stderr,
    )


async def check_user_known(
    redis: Any,
    keys: Keys,
    username: str,
    *,
    strict: bool,
    what: str,
    applies: str = "applies once the user exists",
) -> None:
    """Warn on stderr (or, with --strict, fail) when `username` has no user record.

    Rules and quotas for a user created later are legitimate, so the default stays exit 0; but a typo
    in a name would otherwise pass silently and the admin would wonder why nothing applies."""
    if await UserStore(redis, keys).exists(username):
        return
    if strict:
        raise CliError(f"no user {username!r} in Redis; nothing written (--strict)")
    print(
        f"mqtt-guard: warning: no user {username!r} in Redis (yet): the {what} is stored and {applies}; "
        "check the spelling (--strict refuses unknown users)",
        file=sys.stderr,
    )


def read_password(from_stdin: bool, *, confirm: bool = True, path: str | None = None) -> str:
    """A password from a file, stdin (one line) or an interactive prompt; never from argv.

    MQTT passwords are binary: stdin and files are read as bytes and decoded with `surrogateescape`, so a
    password that is not UTF-8 is hashed as exactly the bytes a device will send (issue 15). A file's
    content is the password, less one trailing newline."""
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise CliError(f"cannot read the password file {path!r}: {exc.strerror or exc}") from None
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        password = raw.decode("utf-8", "surrogateescape")
    elif from_stdin:
        line = sys.stdin.buffer.readline().decode("utf-8", "surrogateescape")
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    else:
        if not sys.stdin.isatty():
            raise CliError("no terminal to prompt for a password: pass --password-stdin and pipe it in")
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Repeat password: ") != password:
            raise CliError("passwords do not match")
    if not password:
        raise CliError("empty password refused")
    return password
