"""`mqtt-guard user ...` and `mqtt-guard hash`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from ..auth import hashes
from ..config import parse_duration
from ..ops import users as ops
from ..ops.plans import set_user_plan
from ..store import keys as k
from . import timefmt
from .common import CliError, add_strict_option, check_user_known, read_password, run_with_redis

NAME_HELP = "the username (the MQTT CONNECT username)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("hash", help="read a password on stdin and print its encoded hash")
    p.add_argument(
        "--scheme",
        choices=["pbkdf2-sha512", "sha512", "bcrypt", "argon2id"],
        default="pbkdf2-sha512",
        help="hash scheme (default %(default)s, mosquitto's $7$)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=hashes.DEFAULT_PBKDF2_ITERATIONS,
        help="PBKDF2 iterations for pbkdf2-sha512 (default %(default)s)",
    )
    p.add_argument(
        "--salt-len",
        type=int,
        choices=[12, 64],
        default=hashes.NEW_SALT_LEN,
        help="salt bytes for pbkdf2-sha512; 12 for files mosquitto 2.0 must load",
    )
    p.set_defaults(func=cmd_hash)

    user = sub.add_parser("user", help="manage users in Redis").add_subparsers(dest="user_cmd", required=True)
    p = user.add_parser("add", help="create a user")
    p.add_argument("name", help=NAME_HELP)
    _password_options(p)
    p.add_argument("--superuser", action="store_true", help="passes every ACL check (quotas still apply)")
    p.add_argument("--group", action="append", default=[], help="add to a group (repeatable)")
    p.add_argument("--expires", help="unix seconds, an ISO date/time (UTC if no zone), or +DURATION like +30d")
    p.set_defaults(func=cmd_add)
    p = user.add_parser("passwd", help="set a user's password")
    p.add_argument("name", help=NAME_HELP)
    _password_options(p)
    p.set_defaults(func=cmd_passwd)
    for name, func, help_ in (
        ("del", cmd_del, "delete a user"),
        ("disable", cmd_disable, "refuse the user's CONNECTs"),
        ("enable", cmd_enable, "allow the user's CONNECTs again"),
    ):
        p = user.add_parser(name, help=help_)
        p.add_argument("name", help=NAME_HELP)
        p.set_defaults(func=func)
    p = user.add_parser("set", help="change a user's superuser flag or expiry")
    p.add_argument("name", help=NAME_HELP)
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--superuser",
        dest="superuser",
        action="store_true",
        default=None,
        help="passes every ACL check (quotas still apply)",
    )
    g.add_argument("--no-superuser", dest="superuser", action="store_false", help="obey the ACL rules again")
    g2 = p.add_mutually_exclusive_group()
    g2.add_argument("--expires", help="unix seconds, ISO date/time or +DURATION")
    g2.add_argument("--no-expiry", action="store_true", help="remove the expiry")
    p.add_argument("--plan", help="put the user on a plan (mqtt-guard plan set), or none (docs/plans.md)")
    add_strict_option(p)
    p.set_defaults(func=cmd_set)
    p = user.add_parser("list", help="list users")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = user.add_parser("show", help="show a user (never the password)")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)


def parse_expiry(value: str, now: float | None = None) -> float:
    value = value.strip()
    base = now if now is not None else dt.datetime.now(dt.UTC).timestamp()
    if value.startswith("+"):
        return base + parse_duration(value[1:])
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CliError(f"cannot read expiry {value!r}: use unix seconds, an ISO date/time or +DURATION") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _password_options(p: argparse.ArgumentParser) -> None:
    """Where `user add` and `user passwd` read the password (never argv; an interactive prompt by default)."""
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line, raw bytes)")
    p.add_argument(
        "--password-file",
        metavar="PATH",
        help="read the password from a file (raw bytes, one trailing newline dropped)",
    )


def cmd_hash(args: argparse.Namespace) -> int:
    password = read_password(True)
    print(hashes.hash_password(password, scheme=args.scheme, iterations=args.iterations, salt_len=args.salt_len))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    ops.check_name(args.name)
    password = read_password(args.password_stdin, path=args.password_file)
    encoded = hashes.hash_password(password)
    expires = parse_expiry(args.expires) if args.expires else None

    async def body(redis: Any, keys: k.Keys) -> int:
        await ops.create_user(
            redis, keys, args.name, encoded, superuser=args.superuser, expires_at=expires, groups=args.group
        )
        print(f"user {args.name!r} created")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_passwd(args: argparse.Namespace) -> int:
    password = read_password(args.password_stdin, path=args.password_file)
    encoded = hashes.hash_password(password)

    async def body(redis: Any, keys: k.Keys) -> int:
        await ops.set_password(redis, keys, args.name, encoded)
        print(f"password of {args.name!r} changed")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_del(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: k.Keys) -> int:
        await ops.delete_user(redis, keys, args.name)
        print(f"user {args.name!r} deleted")
        return 0

    return run_with_redis(args, body, writes=True)


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    async def body(redis: Any, keys: k.Keys) -> int:
        await ops.update_user(redis, keys, args.name, disabled=disabled)
        print(f"user {args.name!r} {'disabled' if disabled else 'enabled'}")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_disable(args: argparse.Namespace) -> int:
    return _set_disabled(args, True)


def cmd_enable(args: argparse.Namespace) -> int:
    return _set_disabled(args, False)


def cmd_set(args: argparse.Namespace) -> int:
    expires = parse_expiry(args.expires) if args.expires else None

    async def body(redis: Any, keys: k.Keys) -> int:
        expiry = None if args.no_expiry else ops.NO_CHANGE if expires is None else expires
        if args.superuser is not None or expiry is not ops.NO_CHANGE or args.plan is None:
            await ops.update_user(redis, keys, args.name, superuser=args.superuser, expires_at=expiry)
        elif args.plan != "none":
            # --plan alone: a plan is a quota field, not part of the user record, and a token's identity
            # has no record (as the admin API's PUT /api/users/{u}/plan allows): warn, as `quota set` does.
            await check_user_known(
                redis,
                keys,
                args.name,
                strict=args.strict,
                what="plan",
                applies="applies now to a token identity of that name, and to the user once created",
            )
        if args.plan is not None:
            await set_user_plan(redis, keys, args.name, args.plan)
        print(f"user {args.name!r} updated")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_list(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: k.Keys) -> int:
        names = await ops.list_users(redis, keys)
        if args.json:
            json.dump(names, sys.stdout)
            print()
        else:
            for name in names:
                print(name)
        return 0

    return run_with_redis(args, body)


def cmd_show(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: k.Keys) -> int:
        info = await ops.get_user(redis, keys, args.name)
        if args.json:
            json.dump(info, sys.stdout)
            print()
        else:
            for key, value in info.items():
                if key == "expires_at" and value is not None:
                    value = f"{int(value)} ({timefmt.when(value)})"
                print(f"{key}: {value}")
        return 0

    return run_with_redis(args, body)
