"""Users and groups: create, change, delete, list, describe (never the password hash)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from ..auth import hashes
from ..store import keys as k
from ..store.acl import AclStore
from ..store.users import UserRecord, UserStore
from . import MAX_TIME, Conflict, Invalid, NotFound, check_number


def check_name(name: str) -> None:
    if not name or any(c in name for c in "\0\n\r"):
        raise Invalid(f"invalid user name {name!r}")


async def hash_password(password: str) -> str:
    """The default scheme's encoded hash, computed off the event loop (PBKDF2 takes ~100 ms)."""
    if not password:
        raise Invalid("empty password refused")
    return await asyncio.to_thread(hashes.hash_password, password)


async def create_user(
    redis: aioredis.Redis,
    keys: k.Keys,
    name: str,
    encoded: str,
    *,
    superuser: bool = False,
    expires_at: float | None = None,
    groups: Iterable[str] = (),
) -> None:
    """Create a user with an already encoded password hash (`hash_password`)."""
    check_name(name)
    if expires_at is not None:
        check_expiry(expires_at)
    users = UserStore(redis, keys)
    if not await users.create(name, encoded, superuser=superuser):
        raise Conflict(f"user {name!r} already exists (use 'user passwd' to change the password)")
    if expires_at is not None:
        await users.set_fields(name, **{k.USER_EXPIRES_AT: str(int(expires_at))})
    for group in groups:
        await users.add_group(name, group)


async def require(users: UserStore, name: str) -> None:
    if not await users.exists(name):
        raise NotFound(f"no such user {name!r}")


async def set_password(redis: aioredis.Redis, keys: k.Keys, name: str, encoded: str) -> None:
    users = UserStore(redis, keys)
    await require(users, name)
    await users.set_fields(name, **{k.USER_PASSWORD: encoded})


async def delete_user(redis: aioredis.Redis, keys: k.Keys, name: str) -> None:
    if not await UserStore(redis, keys).delete(name):
        raise NotFound(f"no such user {name!r}")


def check_expiry(expires_at: float) -> float:
    """An expiry (unix seconds) Redis can store and a broker can compare: finite, 0 to year 9999."""
    return check_number(expires_at, "the expiry", 0, MAX_TIME)


NO_CHANGE: Any = object()
"""`update_user(expires_at=...)` default: leave the expiry as it is (None removes it)."""


async def update_user(
    redis: aioredis.Redis,
    keys: k.Keys,
    name: str,
    *,
    superuser: bool | None = None,
    disabled: bool | None = None,
    expires_at: float | None = NO_CHANGE,
) -> None:
    """Change the flags and the expiry of an existing user; None (and NO_CHANGE for the expiry) keeps a
    field as it is, `expires_at=None` removes the expiry."""
    if expires_at is not NO_CHANGE and expires_at is not None:
        check_expiry(expires_at)
    users = UserStore(redis, keys)
    await require(users, name)
    fields: dict[str, str] = {}
    if superuser is not None:
        fields[k.USER_SUPERUSER] = "1" if superuser else "0"
    if disabled is not None:
        fields[k.USER_DISABLED] = "1" if disabled else "0"
    if expires_at is not NO_CHANGE and expires_at is not None:
        fields[k.USER_EXPIRES_AT] = str(int(expires_at))
    if fields:
        await users.set_fields(name, **fields)
    if expires_at is None:
        await users.del_field(name, k.USER_EXPIRES_AT)


def describe(user: UserRecord) -> dict[str, Any]:
    """A user as `user show --json` prints it: the password's scheme, never its hash."""
    try:
        scheme = hashes.identify(user.password) if user.password else "none"
    except hashes.HashFormatError:
        scheme = "unrecognised"
    return {
        "username": user.username,
        "password": scheme,
        "superuser": user.superuser,
        "disabled": user.disabled,
        "expires_at": user.expires_at,
        "expired": user.expired(),
        "groups": sorted(user.groups),
    }


async def get_user(redis: aioredis.Redis, keys: k.Keys, name: str) -> dict[str, Any]:
    user = await UserStore(redis, keys).get(name)
    if user is None:
        raise NotFound(f"no such user {name!r}")
    return describe(user)


async def list_users(redis: aioredis.Redis, keys: k.Keys) -> list[str]:
    return await UserStore(redis, keys).list()


async def set_membership(redis: aioredis.Redis, keys: k.Keys, group: str, user: str, member: bool) -> None:
    users = UserStore(redis, keys)
    await require(users, user)
    if member:
        await users.add_group(user, group)
    else:
        await users.remove_group(user, group)


async def list_groups(redis: aioredis.Redis, keys: k.Keys) -> dict[str, list[str]]:
    """Groups with their members. Groups live only in the users' group sets (`user:<u>:groups`), in
    `acl:group:<g>` rule hashes and in `quota:group:<g>` hashes (its plan), so all are read: a group with
    rules or a plan and no members is listed too (they apply to nobody, which is worth seeing)."""
    names = await UserStore(redis, keys).list()
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.smembers(keys.user_groups(name))
        memberships = await pipe.execute()
    groups: dict[str, list[str]] = {}
    for name, member_of in zip(names, memberships, strict=True):
        for group in member_of:
            groups.setdefault(group, []).append(name)
    group_prefix = k.group_subject("")
    for subject in await AclStore(redis, keys).subjects():
        if subject.startswith(group_prefix):
            groups.setdefault(subject[len(group_prefix) :], [])
    head = keys.quota_group("")
    async for key in redis.scan_iter(match=k.glob_escape(head) + "*", count=1000):
        groups.setdefault(str(key)[len(head) :], [])
    return {g: sorted(members) for g, members in sorted(groups.items())}
