"""Quota limits: what the `quota:user:<u>` / `quota:default` hashes say, parsed and merged.

Field syntax (docs/quotas.md):

    events            N/WINDOW[,...]    10000/1d      (WINDOW: [N]s|m|h|d|w|mo, aligned to UTC, see windows.py)
    bytes             SIZE/WINDOW[,...] 50MB/1d       (SIZE as in the config file: 1048576, 512KB, 1MiB)
    events_direction  in|out|both       both
    rate              R[/s|/m|/h][:B]   5/s:10        (token bucket: R per second, burst B, default B = ceil(R))
    session_time      DURATION          1h
    sessions          N                 2
    max_queue         N                 500           (queued deliveries, messages)
    queue_grace       DURATION          10s
    on_exceed         drop|disconnect   drop

Several windows per limit (`100/1m,10000/1d,200000/1mo`): each is a limit of its own, any of them
used up means over quota. Per API (quota/apis.py): `api:<NAME>:events` and `api:<NAME>:bytes`, the
same syntax, counted on the messages whose topic the API's filters match. Each window of each limit
is one *slot*, counted by its own lease (`quota:usage:<u>:<slot>:<start>`): the first window of
`events` is the slot `events` (so the keys of a single-window limit are what they always were), the
others `events@1d`, `api:stocks:events@1m`, ...

A field of the user hash overrides the same field of the default hash; the value `none` in the user
hash removes a default limit for that user. A malformed value is reported (`problems`) and treated
as absent, so the default's value, if any, applies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
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
UNLIMITABLE = ("events_direction", "on_exceed", "queue_grace")  # fields that cannot be `none`
API_FIELD = re.compile(r"api:([A-Za-z0-9_.-]{1,64}):(events|bytes)")
SLOT = re.compile(r"(api:[A-Za-z0-9_.-]{1,64}:)?(events|bytes)(@\d+(mo|[smhdw]))?")  # slot names (below)

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
    events: Allowance | None = None  # the first window of `events` (slot "events")
    bytes: Allowance | None = None
    # Every other slot: further windows of events/bytes, and the per-API limits (module docstring).
    extra: tuple[tuple[str, Allowance], ...] = ()
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

    def allowance(self, slot: str) -> Allowance | None:
        if slot == "events":
            return self.events
        if slot == "bytes":
            return self.bytes
        for name, allowance in self.extra:
            if name == slot:
                return allowance
        return None

    def slots(self) -> list[tuple[str, Allowance]]:
        """Every counted window: (slot, allowance), overall ones first."""
        out = [(s, a) for s, a in (("events", self.events), ("bytes", self.bytes)) if a is not None]
        return out + list(self.extra)

    @property
    def apis(self) -> frozenset[str]:
        """Names of the APIs this user has limits for."""
        return frozenset(api_of(slot) or "" for slot, _ in self.extra) - {""}


NO_LIMITS = Limits()


# -- single fields ---------------------------------------------------------------------------------
def parse_events(value: str) -> Allowance:
    count, sep, window = value.strip().partition("/")
    if not sep or not re.fullmatch(r"\d+", count.strip()):
        raise ValueError(f"expected N/WINDOW like 10000/1d, got {value!r}")
    return Allowance(int(count), parse_window(window))


def parse_windows(value: str, one: Callable[[str], Allowance] = parse_events) -> tuple[Allowance, ...]:
    """`100/1m,10000/1d,200000/1mo`: several windows of one limit (each a limit of its own)."""
    parts = value.split(",")
    if any(not p.strip() for p in parts):
        raise ValueError(f"expected one or more comma-separated N/WINDOW like 100/1m,10000/1d, got {value!r}")
    out = tuple(one(p) for p in parts)
    seen: set[Window] = set()
    for a in out:
        if a.window in seen:
            raise ValueError(f"window {a.window} given twice in {value!r}")
        seen.add(a.window)
    return out


def slot_names(field: str, allowances: tuple[Allowance, ...]) -> list[tuple[str, Allowance]]:
    """The slot of each window of a limit field: the first is the field itself, then `field@WINDOW`."""
    return [(field if i == 0 else f"{field}@{a.window}", a) for i, a in enumerate(allowances)]


def base_metric(slot: str) -> str:
    """ "events" or "bytes": what a slot counts."""
    return "bytes" if slot.partition("@")[0].endswith("bytes") else "events"


def api_of(slot: str) -> str | None:
    """The API a slot belongs to (`api:stocks:events@1d` -> "stocks"), None for an overall slot."""
    if not slot.startswith("api:"):
        return None
    return slot.split(":", 2)[1]


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


def _events(value: str) -> tuple[Allowance, ...]:
    return parse_windows(value, parse_events)


def _bytes(value: str) -> tuple[Allowance, ...]:
    return parse_windows(value, parse_bytes)


PARSERS: dict[str, Callable[[str], object]] = {
    "events": _events,
    "bytes": _bytes,
    "events_direction": _direction,
    "rate": parse_rate,
    "session_time": _positive_duration,
    "sessions": _sessions,
    "max_queue": _count,
    "queue_grace": parse_duration,
    "on_exceed": _on_exceed,
}


def parser(name: str) -> Callable[[str], object] | None:
    """The parser of a limit field (an `api:<NAME>:events|bytes` field parses like events/bytes)."""
    found = PARSERS.get(name)
    if found is None:
        m = API_FIELD.fullmatch(name)
        if m:
            found = PARSERS[m.group(2)]
    return found


def is_field(name: str) -> bool:
    return parser(name) is not None


def normalize(name: str, value: str) -> str:
    """Validate one field value as the CLI writes it; raises ValueError with a readable reason."""
    parse = parser(name)
    if parse is None:
        raise ValueError(f"unknown quota field {name!r} (known: {', '.join(FIELDS)}, api:<NAME>:events|bytes)")
    value = str(value).strip()
    if value.lower() == NONE:
        if name in UNLIMITABLE:
            raise ValueError(f"{name} cannot be {NONE!r}")
        return NONE
    parse(value)
    return value


# -- whole hashes ------------------------------------------------------------------------------------
Layer = tuple[str, dict[str, str] | None]
"""(source, raw hash): one place a field may come from (a user's hash, a plan, the default)."""


def resolve(layers: list[Layer]) -> tuple[dict[str, object], dict[str, str], list[str]]:
    """Per field, the first layer that sets it to a valid value (or `none`) wins: (parsed values, the
    source of each, problems). A malformed value is a problem and treated as absent, so the next layer
    applies. Unknown fields are ignored (other tools may add their own)."""
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for source, h in layers:
        for name, raw in (h or {}).items():
            if name in values:
                continue
            parse = parser(name)
            if parse is None or raw is None or str(raw).strip() == "":
                continue
            raw = str(raw).strip()
            if raw.lower() == NONE and name not in UNLIMITABLE:
                values[name] = None
                sources[name] = source
                continue
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                problems.append(f"{source} {name}: {exc}")
                continue
            sources[name] = source
    return values, sources, problems


def build(values: dict[str, object], problems: list[str]) -> Limits:
    """Limits from resolved values (`resolve`)."""
    kwargs: dict[str, object] = {}
    extra: list[tuple[str, Allowance]] = []
    for name in sorted(values):
        value = values[name]
        if name in ("events", "bytes") or API_FIELD.fullmatch(name):
            if value is None:
                continue
            assert isinstance(value, tuple)
            slots = slot_names(name, value)
            if name in ("events", "bytes"):
                kwargs[name] = slots[0][1]
                extra += slots[1:]
            else:
                extra += slots
        else:
            kwargs[name] = value
    return Limits(extra=tuple(extra), problems=tuple(problems), **kwargs)  # type: ignore[arg-type]  # each value as its PARSERS entry made it


def parse_layers(layers: list[Layer]) -> Limits:
    values, _, problems = resolve(layers)
    return build(values, problems)


def parse_limits(user: dict[str, str] | None, default: dict[str, str] | None) -> Limits:
    """Merge the user's hash over the default hash (quota/plans.py puts plans in between)."""
    return parse_layers([("user", user), ("default", default)])
