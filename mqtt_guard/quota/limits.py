"""Quota limits: what the `quota:user:<u>` / `quota:default` hashes say, parsed and merged.

Field syntax (docs/quotas.md):

    events            N/WINDOW          10000/1d      (WINDOW: [N]s|m|h|d|w, aligned to UTC, see windows.py)
    bytes             SIZE/WINDOW       50MB/1d       (SIZE as in the config file: 1048576, 512KB, 1MiB)
    events_direction  in|out|both       both
    rate              R[/s|/m|/h][:B]   5/s:10        (token bucket: R per second, burst B, default B = ceil(R))
    session_time      DURATION          1h
    sessions          N                 2
    max_queue         N                 500           (queued deliveries, messages)
    queue_grace       DURATION          10s
    on_exceed         drop|disconnect   drop

A field of the user hash overrides the same field of the default hash; the value `none` in the user
hash removes a default limit for that user. A malformed value is reported (`problems`) and treated
as absent, so the default's value, if any, applies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from ..config import parse_duration, parse_size
from .windows import Window, parse_window

FIELDS = (
    "events",
    "bytes",
    "events_direction",
    "rate",
    "session_time",
    "sessions",
    "max_queue",
    "queue_grace",
    "on_exceed",
)
NONE = "none"

Direction = Literal["in", "out", "both"]
OnExceed = Literal["drop", "disconnect"]


@dataclass(frozen=True, slots=True)
class Allowance:
    """`limit` units (events or bytes) per window."""

    limit: int
    window: Window

    def __str__(self) -> str:
        return f"{self.limit}/{self.window}"


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: float

    def __str__(self) -> str:
        r = f"{self.per_second:g}/s"
        return r if self.burst == max(1.0, math.ceil(self.per_second)) else f"{r}:{self.burst:g}"


@dataclass(frozen=True, slots=True)
class Limits:
    events: Allowance | None = None
    bytes: Allowance | None = None
    events_direction: Direction = "both"
    rate: Rate | None = None
    session_time: float | None = None
    sessions: int | None = None
    max_queue: int | None = None
    queue_grace: float = 0.0
    on_exceed: OnExceed = "drop"
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def counts_in(self) -> bool:
        return self.events_direction in ("in", "both")

    @property
    def counts_out(self) -> bool:
        return self.events_direction in ("out", "both")

    @property
    def empty(self) -> bool:
        return self == NO_LIMITS

    def allowance(self, metric: str) -> Allowance | None:
        return self.events if metric == "events" else self.bytes


NO_LIMITS = Limits()


# -- single fields ---------------------------------------------------------------------------------
def parse_events(value: str) -> Allowance:
    count, sep, window = value.strip().partition("/")
    if not sep or not re.fullmatch(r"\d+", count.strip()):
        raise ValueError(f"expected N/WINDOW like 10000/1d, got {value!r}")
    return Allowance(int(count), parse_window(window))


def parse_bytes(value: str) -> Allowance:
    amount, sep, window = value.strip().rpartition("/")
    if not sep:
        raise ValueError(f"expected SIZE/WINDOW like 50MB/1d, got {value!r}")
    return Allowance(parse_size(amount), parse_window(window))


_RATE_UNITS = {"": 1.0, "s": 1.0, "1s": 1.0, "m": 60.0, "1m": 60.0, "h": 3600.0, "1h": 3600.0}


def parse_rate(value: str) -> Rate:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(1?[smh]))?\s*(?::\s*(\d+(?:\.\d+)?))?\s*", value)
    if not m:
        raise ValueError(f"expected RATE[/s|/m|/h][:BURST] like 5/s or 5/s:20, got {value!r}")
    per_second = float(m.group(1)) / _RATE_UNITS[m.group(2) or ""]
    if per_second <= 0:
        raise ValueError(f"rate must be above 0, got {value!r}")
    burst = float(m.group(3)) if m.group(3) else max(1.0, math.ceil(per_second))
    if burst < 1:
        raise ValueError(f"burst must be at least 1, got {value!r}")
    return Rate(per_second, burst)


def _positive_duration(value: str) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above 0, got {value!r}")
    return seconds


def _count(value: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", value):
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(value)


def _sessions(value: str) -> int:
    n = _count(value)
    if n < 1:
        raise ValueError(f"sessions must be at least 1 (use {NONE!r} for no limit), got {value!r}")
    return n


def _direction(value: str) -> str:
    if value.strip() not in ("in", "out", "both"):
        raise ValueError(f"expected in, out or both, got {value!r}")
    return value.strip()


def _on_exceed(value: str) -> str:
    if value.strip() not in ("drop", "disconnect"):
        raise ValueError(f"expected drop or disconnect, got {value!r}")
    return value.strip()


PARSERS = {
    "events": parse_events,
    "bytes": parse_bytes,
    "events_direction": _direction,
    "rate": parse_rate,
    "session_time": _positive_duration,
    "sessions": _sessions,
    "max_queue": _count,
    "queue_grace": parse_duration,
    "on_exceed": _on_exceed,
}


def normalize(name: str, value: str) -> str:
    """Validate one field value as the CLI writes it; raises ValueError with a readable reason."""
    if name not in PARSERS:
        raise ValueError(f"unknown quota field {name!r} (known: {', '.join(FIELDS)})")
    value = str(value).strip()
    if value.lower() == NONE:
        if name in ("events_direction", "on_exceed", "queue_grace"):
            raise ValueError(f"{name} cannot be {NONE!r}")
        return NONE
    PARSERS[name](value)
    return value


# -- whole hashes ------------------------------------------------------------------------------------
def parse_limits(user: dict[str, str] | None, default: dict[str, str] | None) -> Limits:
    """Merge the user's hash over the default hash. Unknown fields are ignored (other tools may add
    their own); malformed values are listed in `problems` and fall back to the default's value."""
    values: dict[str, object] = {}
    problems: list[str] = []
    for source, h in (("default", default or {}), ("user", user or {})):
        for name in FIELDS:
            raw = h.get(name)
            if raw is None or str(raw).strip() == "":
                continue
            raw = str(raw).strip()
            if raw.lower() == NONE and name in ("events", "bytes", "rate", "session_time", "sessions", "max_queue"):
                values[name] = None
                continue
            try:
                values[name] = PARSERS[name](raw)
            except ValueError as exc:
                problems.append(f"{source} {name}: {exc}")
    return Limits(problems=tuple(problems), **values)  # type: ignore[arg-type]  # each value as its PARSERS entry made it
