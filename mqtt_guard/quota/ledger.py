"""The broker's side of the shared allowance: leases taken from Redis, spent in process.

For each (user, metric, window) a broker holds an `Entry`. Redis keeps, in one hash per window
(`keys.quota_usage`), the counted usage and what each broker holds (`lease:<broker>`). A broker
spends only what it holds, so in normal operation the sum of all spending never exceeds the limit.
Every sync (Lua, `store.quota.SYNC_LUA`) reports the broker's *cumulative* spend in the window and
asks for the amount it wants to hold next; a retried sync therefore never counts twice, and a Redis
that lost recent writes is told again what live brokers spent.

Hot path: `Entry.spend()` is arithmetic on local fields; no Redis round trip. Syncs happen in the
background: on every heartbeat for entries that changed, at once when an entry runs low, and with
`want = 0` when the user's last client on this broker leaves.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field

from ..store.lease import SyncRequest, SyncResult


class Verdict(enum.Enum):
    OK = "ok"
    SHORT = "short"  # this broker holds too little right now; the allowance may be held elsewhere
    EXHAUSTED = "exhausted"  # the user's allowance for this window is used up


@dataclass(slots=True)
class Entry:
    key: str
    username: str
    metric: str  # the slot (quota/limits.py): "events", "bytes", "events@1d", "api:stocks:events", ...
    limit: int
    start: int
    end: int
    block: int  # the usual lease size
    gen: str = ""
    total: int = 0  # spent by this broker process in this window
    reported: int = 0  # `total` as of the last successful sync
    held: int = 0  # allowance held after the last sync (already net of `reported`)
    refused: int = 0  # refusals because the allowance was used up (reported to Redis)
    refused_reported: int = 0
    others: int = 0  # what other brokers held at the last sync
    free: int = 0  # what nobody held at the last sync
    used: int = 0  # counted usage at the last sync (all brokers)
    synced: bool = False
    joined: bool = False  # the first sync told us what this broker reported earlier in the window
    in_flight: bool = False
    need: int = 0  # the largest spend refused as SHORT since the last sync
    last_total: int = 0  # `reported` at the previous sync (recent spend estimate)
    last_sync: float = field(default=0.0)  # monotonic
    contended_until: float = 0.0  # monotonic: another broker asked for more than it got
    release: bool = False  # the user has no client here any more: give everything back
    counts_bytes: bool = False  # the slot counts payload bytes (else events)

    @property
    def available(self) -> int:
        return self.held - (self.total - self.reported)

    def refuse(self, n: int) -> Verdict:
        """Why `n` cannot be spent now (call only when `available < n`): used up, or held elsewhere."""
        if self.synced and self.others <= 0 and self.available + max(self.free, 0) < n:
            self.refused += 1
            return Verdict.EXHAUSTED
        if n > self.need:
            self.need = n
        return Verdict.SHORT

    def low(self) -> bool:
        """Worth a refill now rather than at the next heartbeat."""
        return self.available < max(1, self.block // 4) and (self.free > 0 or self.others > 0 or not self.synced)

    def dirty(self) -> bool:
        return (
            self.total != self.reported
            or self.refused != self.refused_reported
            or self.need > 0
            or self.release
            or not self.synced
        )

    def want(self, now: float) -> int:
        if self.release:
            return 0
        if now < self.contended_until:
            # Another broker of the same user is short: keep about what was spent recently.
            recent = self.reported - self.last_total
            return max(self.need, min(self.block, 2 * recent))
        return max(self.block, self.need)

    def request(self, now: float) -> SyncRequest:
        total, refused = (self.total, self.refused) if self.joined else (-1, -1)
        return SyncRequest(
            self.key, self.gen, total, refused, self.want(now), self.limit, expire_at(self.start, self.end)
        )

    def apply(self, req: SyncRequest, res: SyncResult, broker_id: str, now: float, contention_window: float) -> None:
        self.last_total = self.reported
        if not self.joined:
            # Continue from what this broker process reported earlier in the window (the entry was
            # dropped after its user left and the user came back): nothing is counted twice.
            self.total += res.spent
            self.refused += res.refused
            self.reported, self.refused_reported = res.spent, res.refused
            self.last_total = res.spent
            self.joined = True
        else:
            self.reported, self.refused_reported = req.total, req.refused
        self.gen = res.gen
        self.held = res.mine
        self.others = res.others
        self.free = res.free
        self.used = res.used
        self.synced = True
        self.last_sync = now
        if self.need and self.available >= self.need:
            self.need = 0
        who, _, at = res.demand.partition("|")
        if who and who != broker_id and at.isdigit() and res.now_ms - int(at) < contention_window * 1000:
            self.contended_until = now + contention_window


def expire_at(start: int, end: int) -> int:
    """Usage hashes outlive their window a little: late reports at the boundary still land, and
    `quota show` can show the previous window for a while."""
    length = end - start
    return end + max(60, min(length, 3600))


def lease_block(limit: int, fraction: float, minimum: int) -> int:
    return max(0, min(limit, max(minimum, math.ceil(limit * fraction))))


def monotonic() -> float:
    return time.monotonic()
