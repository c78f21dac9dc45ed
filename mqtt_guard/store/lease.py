"""The lease sync's request and reply, as `store/quota.py`'s sync script takes and returns them. Apart
from that module so the pure quota core (quota/ledger.py, quota/allowance.py) can build and read them
without importing the Redis client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SyncResult:
    mine: int  # allowance this broker holds after the sync
    used: int  # counted usage in the window (reported by all brokers)
    others: int  # allowance held by other brokers
    free: int  # allowance nobody holds
    gen: str
    demand: str  # "<broker>|<unix ms>" of the last broker that asked for more than it got
    now_ms: int
    spent: int  # this broker's reported spend in the window (what a joining entry continues from)
    refused: int  # this broker's reported refusals in the window
    holders: tuple[str, ...]  # brokers holding a lease, when this one got less than it wanted

    @classmethod
    def of(cls, raw: list[Any]) -> SyncResult:
        return cls(
            int(raw[0]),
            int(raw[1]),
            int(raw[2]),
            int(raw[3]),
            str(raw[4]),
            str(raw[5]),
            int(raw[6]),
            int(raw[7]),
            int(raw[8]),
            tuple(h for h in str(raw[9]).split(",") if h),
        )


@dataclass(frozen=True, slots=True)
class SyncRequest:
    key: str
    gen: str
    total: int
    refused: int
    want: int
    limit: int
    expire_at: int
