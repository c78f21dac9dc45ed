"""Metering for billing: per user, per API and per UTC day, the events and bytes in and out (pure).

What is counted is what the quota counts already (`ClientQuota.usage`: admitted PUBLISHes in,
deliveries out; `UserQuota.api_meter`: the same per API, quota/allowance.py): nothing more is done per
message. At every heartbeat (quota/heartbeat.py) the broker folds the counts since the last fold into
`Meter.pending`, keyed by the day of the fold, and writes them to Redis in one script
(`store/meter.py`): one hash per user per month, `usage:<YYYY-MM>:<user>`, field `<DD>:<api>:<kind>`
(api empty: all traffic; kind `ei`, `bi`, `eo`, `bo`: events in, bytes in, events out, bytes out).

Bound (docs/plans.md "Metering"): exact across brokers (each adds its own counts) and across Redis and
broker restarts (a broker that stops reports first; a batch carries an id, so a retried one is not
counted twice), except that a broker killed outright loses what it counted since its last fold (at most
one `quota.sync_interval` of its traffic), and a message counted just before midnight UTC may land on
the next day (at most one `sync_interval` late).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Protocol

KINDS = ("ei", "bi", "eo", "bo")  # events in, bytes in, events out, bytes out
USAGE_FIELDS = ("events_in", "bytes_in", "events_out", "bytes_out")  # the same, as ClientQuota.usage names them
Key = tuple[str, str, str]  # (day "YYYY-MM-DD", username, api ("": all traffic))


class Counted(Protocol):
    """What the meter reads of a client: its cumulative usage and the part already folded."""

    @property
    def usage(self) -> dict[str, int]: ...

    @property
    def metered(self) -> dict[str, int]: ...


def day_of(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def field_of(day: str, api: str, kind: str) -> str:
    """The field of one counter in the month's hash: `<DD>:<api>:<kind>`."""
    return f"{day[8:10]}:{api}:{kind}"


def parse_field(name: str) -> tuple[int, str, str] | None:
    """(day of month, api, kind) of a usage hash field; None for anything else."""
    day, sep, rest = name.partition(":")
    api, sep2, kind = rest.rpartition(":")
    if not sep or not sep2 or not day.isdigit() or kind not in KINDS:
        return None
    return int(day), api, kind


class Meter:
    """Counts folded but not yet written to Redis."""

    __slots__ = ("pending", "clock", "seq", "inflight")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.pending: dict[Key, list[int]] = {}
        self.clock = clock
        self.seq = 0  # batches taken (the batch id, with the broker id)
        self.inflight: tuple[int, dict[Key, list[int]]] | None = None  # taken, not known to be written

    def _add(self, key: Key, counts: list[int]) -> None:
        if not any(counts):
            return
        have = self.pending.get(key)
        if have is None:
            self.pending[key] = list(counts)
        else:
            for i, n in enumerate(counts):
                have[i] += n

    def fold_client(self, username: str | None, cq: Counted) -> None:
        """Add what the client carried since the last fold (all traffic, api "")."""
        usage, metered = cq.usage, cq.metered
        counts = [usage[f] - metered.get(f, 0) for f in USAGE_FIELDS]
        metered.update(usage)
        if username is not None:
            self._add((day_of(self.clock()), username, ""), counts)

    def fold_apis(self, username: str, api_meter: dict[str, list[int]]) -> None:
        """Add a user's per-API counts (and zero them)."""
        day = day_of(self.clock())
        for api, counts in api_meter.items():
            self._add((day, username, api), counts)
        api_meter.clear()

    def take(self) -> tuple[int, dict[Key, list[int]]] | None:
        """The batch to write: the one whose write failed, again under the same id (Redis may have
        applied it: the id makes the retry a no-op then), else everything pending under a new id; None
        when there is nothing. `done` once written."""
        if self.inflight is None and self.pending:
            self.seq += 1
            self.inflight, self.pending = (self.seq, self.pending), {}
        return self.inflight

    def done(self) -> None:
        self.inflight = None


def increments(batch: dict[Key, list[int]]) -> Iterator[tuple[str, str, str, int]]:
    """(month `YYYY-MM`, username, field, amount) of every non-zero counter of a batch."""
    for (day, username, api), counts in batch.items():
        for kind, n in zip(KINDS, counts, strict=True):
            if n:
                yield day[:7], username, field_of(day, api, kind), n
