"""`mqtt-guard user ...` and `mqtt-guard hash`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from ..auth import hashes
from ..config import parse_duration
from ..store import keys as k
from ..store.users import UserStore
from . import timefmt
from .common import CliError, read_password, run_with_redis

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


def _check_name(name: str) -> None:
    if not name or any(c in name for c in "\0\n\r"):
        raise CliError(f"invalid user name {name!r}")


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
    _check_name(args.name)
    password = read_password(args.password_stdin, path=args.password_file)
    encoded = hashes.hash_password(password)
    expires = parse_expiry(args.expires) if args.expires else None

    async def body(redis: Any, keys: k.Keys) -> int:
        users = UserStore(redis, keys)
        if not await users.create(args.name, encoded, superuser=args.superuser):
            raise CliError(f"user {args.name!r} already exists (use 'user passwd' to change the password)")
        if expires is not None:
            await users.set_fields(args.name, **{k.USER_EXPIRES_AT: str(int(expires))})
        for group in args.group:
            await users.add_group(args.name, group)
        print(f"user {args.name!r} created")
        return 0

    return run_with_redis(args, body, writes=True)


def _require(users: UserStore, name: str) -> Any:
    async def check() -> None:
        if not await users.exists(name):
            raise CliError(f"no such user {name!r}")

    return check()


def cmd_passwd(args: argparse.Namespace) -> int:
    password = read_password(args.password_stdin, path=args.password_file)
    encoded = hashes.hash_password(password)

    async def body(redis: Any, keys: k.Keys) -> int:
        users = UserStore(redis, keys)
        await _require(users, args.name)
        await users.set_fields(args.name, **{k.USER_PASSWORD: encoded})
        print(f"password of {args.name!r} changed")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_del(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: k.Keys) -> int:
        if not await UserStore(redis, keys).delete(args.name):
            raise CliError(f"no such user {args.name!r}")
        print(f"user {args.name!r} deleted")
        return 0

    return run_with_redis(args, body, writes=True)


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    async def body(redis: Any, keys: k.Keys) -> int:
        users = UserStore(redis, keys)
        await _require(users, args.name)
        await users.set_fields(args.name, **{k.USER_DISABLED: "1" if disabled else "0"})
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
        users = UserStore(redis, keys)
        await _require(users, args.name)
        if args.superuser is not None:
            await users.set_fields(args.name, **{k.USER_SUPERUSER: "1" if args.superuser else "0"})
        if expires is not None:
            await users.set_fields(args.name, **{k.USER_EXPIRES_AT: str(int(expires))})
        if args.no_expiry:
            await users.del_field(args.name, k.USER_EXPIRES_AT)
        print(f"user {args.name!r} updated")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_list(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: k.Keys) -> int:
        names = await UserStore(redis, keys).list()
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
        user = await UserStore(redis, keys).get(args.name)
        if user is None:
            raise CliError(f"no such user {args.name!r}")
        try:
            scheme = hashes.identify(user.password) if user.password else "none"
        except hashes.HashFormatError:
            scheme = "unrecognised"
        info: dict[str, Any] = {
            "username": user.username,
            "password": scheme,
            "superuser": user.superuser,
            "disabled": user.disabled,
            "expires_at": user.expires_at,
            "expired": user.expired(),
            "groups": sorted(user.groups),
        }
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
