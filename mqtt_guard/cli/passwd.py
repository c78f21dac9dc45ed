"""`mqtt-guard passwd`: manage a mosquitto password_file, with mosquitto_passwd's usage.

    mqtt-guard passwd [-H sha512-pbkdf2|sha512] [-I ITERATIONS] [-c | -D] FILE USER
    mqtt-guard passwd [-H ...] [-I ITERATIONS] [-c] -b FILE USER PASSWORD
    mqtt-guard passwd -U FILE

Lines are written as mosquitto 2.0 writes them and loads them: ``user:$7$<iterations>$<12-byte salt,
base64>$<64-byte PBKDF2-HMAC-SHA512, base64>`` (or ``$6$`` with ``-H sha512``). The iteration count
defaults to 10,000 (mosquitto_passwd uses 101; ``-I 101`` gives exactly its files).

Differences from mosquitto_passwd, all on the safe side: other lines (comments, other users) are kept
verbatim; updating a user replaces its line in place and removes later duplicates; ``-U`` leaves lines
that already hold a hash alone instead of hashing them again; the file is replaced atomically.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from ..auth import hashes
from ..compat.passwd import read_lines, write_passwd_file
from .common import CliError

_HASHES = {"sha512-pbkdf2": "pbkdf2-sha512", "sha512": "sha512"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "passwd",
        help="manage a mosquitto password_file (mosquitto_passwd's usage)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-b", dest="batch", action="store_true", help="batch mode: the password is an argument")
    p.add_argument("-c", dest="create", action="store_true", help="create a new file (overwrites an existing one)")
    p.add_argument("-D", dest="delete", action="store_true", help="delete the user")
    p.add_argument("-U", dest="upgrade", action="store_true", help="hash the plain-text passwords of FILE")
    p.add_argument(
        "-H",
        dest="hash",
        choices=sorted(_HASHES),
        default="sha512-pbkdf2",
        help="hash: sha512-pbkdf2 ($7$, default) or sha512 ($6$, mosquitto 1.5 style)",
    )
    p.add_argument(
        "-I",
        dest="iterations",
        type=int,
        default=hashes.DEFAULT_PBKDF2_ITERATIONS,
        help="PBKDF2 iterations for sha512-pbkdf2 (default %(default)s; mosquitto_passwd uses 101)",
    )
    p.add_argument("file", help="the password_file")
    p.add_argument("username", nargs="?", help="the user to add, change or delete (-D)")
    p.add_argument("password", nargs="?", help="with -b only: the password (else it is prompted for)")
    p.set_defaults(func=cmd_passwd)


def _hash(args: argparse.Namespace, password: str) -> str:
    try:
        return hashes.hash_password(
            password, scheme=_HASHES[args.hash], iterations=args.iterations, salt_len=hashes.MOSQUITTO_20_SALT_LEN
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _prompt() -> str:
    """Password twice, like mosquitto_passwd: from the terminal, or two lines of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Reenter password: ")
    else:
        first = sys.stdin.readline().rstrip("\r\n")
        second_line = sys.stdin.readline()
        second = second_line.rstrip("\r\n") if second_line else first
    if not first:
        raise CliError("empty password")
    if first != second:
        raise CliError("passwords do not match")
    return first


def _user_of(line: str) -> str | None:
    if not line or line[0] == "#" or ":" not in line:
        return None
    fields = [f for f in line.split(":") if f]
    return fields[0].strip() if fields else None


def _check_username(name: str) -> None:
    if ":" in name:
        raise CliError("username must not contain the ':' character")
    if not name.strip() or any(c in name for c in "\r\n\0"):
        raise CliError(f"invalid username {name!r}")
    if name != name.strip():
        raise CliError("username must not start or end with blanks (mosquitto trims them when it reads the file)")


def _is_hash(value: str) -> bool:
    try:
        hashes.identify(value.strip())
        return True
    except hashes.HashFormatError:
        return False


def cmd_passwd(args: argparse.Namespace) -> int:
    if args.upgrade:
        if args.create or args.delete or args.batch or args.username:
            raise CliError("-U takes only the password file")
        return _upgrade(args)
    if args.create and args.delete:
        raise CliError("-c and -D cannot be used together")
    if not args.username:
        raise CliError("give the password file and a username")
    _check_username(args.username)
    if args.batch and not args.delete:
        if args.password is None:
            raise CliError("-b needs the password as the third argument")
        password = args.password
        if not password:
            raise CliError("empty password")
    elif args.password is not None:
        raise CliError("a password argument needs -b")
    else:
        password = None
    if args.delete:
        return _delete(args)
    if args.create:
        if password is None:
            password = _prompt()
        write_passwd_file(args.file, [f"{args.username}:{_hash(args, password)}"])
        return 0
    if not os.path.exists(args.file):
        raise CliError(f"unable to open password file {args.file}: no such file (use -c to create it)")
    lines = read_lines(args.file)
    if password is None:
        password = _prompt()
    new = f"{args.username}:{_hash(args, password)}"
    out, done = [], False
    for line in lines:
        if _user_of(line) == args.username:
            if not done:
                out.append(new)
                done = True
            continue  # later duplicates would only confuse: mosquitto uses the last usable line
        out.append(line)
    if not done:
        out.append(new)
    write_passwd_file(args.file, out)
    return 0


def _delete(args: argparse.Namespace) -> int:
    if not os.path.exists(args.file):
        raise CliError(f"unable to open password file {args.file}: no such file")
    lines = read_lines(args.file)
    kept = [line for line in lines if _user_of(line) != args.username]
    if len(kept) == len(lines):
        print(f"Warning: User {args.username} not found in password file.", file=sys.stderr)
        return 1
    write_passwd_file(args.file, kept)
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    if not os.path.exists(args.file):
        raise CliError(f"unable to open password file {args.file}: no such file")
    out = []
    for lineno, line in enumerate(read_lines(args.file), 1):
        user = _user_of(line)
        if user is None:
            out.append(line)
            continue
        secret = line.split(":", 1)[1].strip() if ":" in line else ""
        if _is_hash(secret):
            out.append(line)
            continue
        if not secret:
            raise CliError(f"{args.file}:{lineno}: user {user!r} has an empty password")
        out.append(f"{user}:{_hash(args, secret)}")
    write_passwd_file(args.file, out)
    return 0
