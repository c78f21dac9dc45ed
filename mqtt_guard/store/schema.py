"""The version of the Redis key layout, and the migrations between versions (issue 18 item 6).

Key names change between releases (Redis Cluster needs hash tags in them; new features add keys), and
several brokers, sidecars and CLIs of different releases share one Redis during a rolling upgrade. So
the layout carries a number, `<prefix>schema`, and each release knows two numbers:

- `SCHEMA_VERSION`: the layout it writes and that `mqtt-guard store migrate` brings Redis to;
- `OLDEST_READABLE`: the oldest layout it still runs on, unmigrated.

A process runs against a Redis whose version v satisfies OLDEST_READABLE <= v <= SCHEMA_VERSION. A broker
or sidecar that finds a newer layout at start refuses to run (it would misread keys it does not know);
one that sees the version change under it while running treats Redis as unavailable (the configured
fail modes) and logs an ERROR. The rolling-upgrade rule (docs/redis-schema.md): upgrade every process
first (the new release still runs on the old layout), then run `store migrate` once.

A Redis without the key holds the layout of the releases before versioning: version 1. The first
process on an empty Redis (the one that creates the generation marker) stamps the current version.

Migrations are idempotent steps from version v to v + 1 (`MIGRATIONS[v]`): run twice, or resumed after
a crash, they end in the same state, and the version is written only after its step completed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .keys import Keys

SCHEMA_VERSION = 1
OLDEST_READABLE = 1
UNVERSIONED = 1  # what a Redis without the key holds

Migration = Callable[[Any, Keys], Awaitable[str]]
"""One step v -> v + 1: moves the data, returns a line saying what it did."""

MIGRATIONS: dict[int, Migration] = {}


class SchemaMismatch(RuntimeError):
    """This process cannot run against the layout Redis holds (the message says what to do)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    version: int
    problem: str | None  # None: this release runs on it


def parse(raw: str | bytes | None) -> int:
    """The stored version; a value that is not a positive integer is reported, never guessed at."""
    if raw is None:
        return UNVERSIONED
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        version = int(text)
    except ValueError:
        raise SchemaMismatch(f"the schema version key holds {text!r}, not a number: fix it by hand") from None
    if version < 1:
        raise SchemaMismatch(f"the schema version key holds {version}: fix it by hand")
    return version


def judge(version: int, *, known: int = SCHEMA_VERSION, oldest: int = OLDEST_READABLE) -> Verdict:
    """Whether a release that writes `known` and reads back to `oldest` runs on `version` (pure)."""
    if version > known:
        return Verdict(
            version,
            f"Redis holds key layout version {version}, newer than this mqtt-guard knows ({known}): "
            "upgrade mqtt-guard on this machine (docs/redis-schema.md, rolling upgrades)",
        )
    if version < oldest:
        return Verdict(
            version,
            f"Redis holds key layout version {version}, older than this mqtt-guard reads ({oldest}..{known}): "
            "run `mqtt-guard store migrate` (docs/redis-schema.md)",
        )
    return Verdict(version, None)


async def read(redis: Any, keys: Keys) -> int:
    return parse(await redis.get(keys.schema()))


async def check(redis: Any, keys: Keys) -> int:
    """The version, or SchemaMismatch when this release must not run on it."""
    verdict = judge(await read(redis, keys))
    if verdict.problem is not None:
        raise SchemaMismatch(verdict.problem)
    return verdict.version


async def stamp_new(redis: Any, keys: Keys) -> None:
    """A Redis that has just been given its generation marker (a new deployment) gets the current
    version, unless a concurrent process stamped one first."""
    await redis.set(keys.schema(), str(SCHEMA_VERSION), nx=True)


async def migrate(
    redis: Any, keys: Keys, *, dry_run: bool = False, steps: dict[int, Migration] | None = None, to: int | None = None
) -> list[str]:
    """Bring Redis to `to` (default SCHEMA_VERSION), one idempotent step at a time; what was (or, with
    `dry_run`, would be) done, one line per step. A newer layout is refused (SchemaMismatch)."""
    steps = MIGRATIONS if steps is None else steps
    target = SCHEMA_VERSION if to is None else to
    version = await read(redis, keys)
    if version > target:
        raise SchemaMismatch(judge(version, known=target).problem or "")
    done: list[str] = []
    while version < target:
        step = steps.get(version)
        if step is None:
            raise SchemaMismatch(f"no migration from key layout version {version}: this release cannot move it")
        if dry_run:
            done.append(f"{version} -> {version + 1}: would run {step.__name__}")
        else:
            done.append(f"{version} -> {version + 1}: {await step(redis, keys)}")
            await redis.set(keys.schema(), str(version + 1))
        version += 1
    if not dry_run:
        await redis.set(keys.schema(), str(version))  # (stamps an unversioned Redis explicitly)
    return done
