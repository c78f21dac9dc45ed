"""Quota accounting per read batch: one reservation for a run of PUBLISH packets, not one spend each.

Why: the engine's reader acts on every PUBLISH of a received chunk in one synchronous run (a
"stretch": no other task runs until it awaits). Spending the rate bucket, the events and the bytes
allowance per message and per delivery costs ~1.4 µs per fan-in message, as much as the whole
unguarded broker (docs/performance.md). A stretch does it once:

1. `open_stretch` bounds what the run can carry from the bytes it has: at most `len // 5` PUBLISH
   packets (the smallest is 5 bytes) and at most `len` payload bytes. If the publisher's rate bucket
   and the allowance its user holds here cover that bound, the bound is spent provisionally (so any
   other check in the same run sees it as gone) and every PUBLISH of the run is admitted without a
   check; otherwise the publisher's messages take the exact per-message path (`admit_publish`).
2. A `DeliveryGroup` (the receivers of one topic) reserves the same way for all its clients the first
   time the run delivers to it (`reserve`), or falls back to its exact `admit` for this run.
3. `settle_stretch`, before the reader awaits anything, spends what the run really carried and gives
   the rest of every reservation back.

The outcome is that of the per-message checks: a reservation is only taken when twice the whole
bound fits in what is held here, so none of the run's messages would have been refused; when it does
not fit (small limits, a nearly used allowance), every message is checked one by one as before.
Nothing awaits between opening and settling, so no other task ever sees a provisional amount.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..guard_client import GuardClient
    from .enforcer import ClientQuota, DeliveryGroup, QuotaEnforcer, UserQuota
    from .ledger import Entry

MIN_PUBLISH = 5  # bytes: fixed header (2) + topic length (2) + a one-character topic, no payload
# Below this many bytes a run holds a handful of packets: the per-message path is as cheap (iot case).
MIN_STRETCH = 1024

# A reservation takes at most 1/HEADROOM of what is held here: the bound is far above what a run
# really carries, and exact checks later in the same run (a group that could not reserve) must still
# find the allowance they would have found without it.
HEADROOM = 2

Reservation = tuple["Entry | None", "Entry | None", int, int]


class Stretch:
    """One synchronous run of a reader. `pub_ok`: the publisher's side is prepaid (count `n`/`b`)."""

    __slots__ = ("events", "nbytes", "groups", "pub_ok", "n", "b", "cq", "reservation", "tokens")

    def __init__(self, events: int, nbytes: int) -> None:
        self.events = events  # most PUBLISH packets the run can hold
        self.nbytes = nbytes  # most payload bytes the run can hold
        self.groups: list[DeliveryGroup] = []  # groups that reserved for this run (settled with it)
        self.pub_ok = False
        self.n = 0  # admitted PUBLISHes (counted by the engine while pub_ok)
        self.b = 0
        self.cq: ClientQuota | None = None
        self.reservation: Reservation | None = None
        self.tokens = 0  # taken from the publisher's rate bucket


def bound(remaining: int) -> tuple[int, int] | None:
    """(most packets, most payload bytes) of a run over `remaining` buffered bytes; None when too small
    to be worth a reservation."""
    if remaining < MIN_STRETCH:
        return None
    return remaining // MIN_PUBLISH + 1, remaining


def reserve(enforcer: QuotaEnforcer, user: UserQuota, events: int, nbytes: int) -> Reservation | None:
    """Spend `events` and `nbytes` of the user's current windows provisionally, only when what this
    broker holds covers both; None, with nothing spent, otherwise."""
    current = user.current
    now = time.time()
    ev = current.get("events")
    if ev is not None and now >= ev.end:
        ev = enforcer._roll(user, "events", now)  # noqa: SLF001 - the enforcer's own window roll
    by = current.get("bytes")
    if by is not None and now >= by.end:
        by = enforcer._roll(user, "bytes", now)  # noqa: SLF001
    if ev is not None and ev.held - ev.total + ev.reported < HEADROOM * events:
        return None
    if by is not None and by.held - by.total + by.reported < HEADROOM * nbytes:
        return None
    if ev is not None:
        ev.total += events
    if by is not None:
        by.total += nbytes
    return ev, by, events, nbytes


def release(enforcer: QuotaEnforcer, reservation: Reservation, used_events: int, used_bytes: int) -> None:
    """Keep what was used of a reservation, give the rest back, ask for a refill when it runs low."""
    ev, by, events, nbytes = reservation
    if ev is not None:
        ev.total -= events - used_events
        if used_events and ev.low():
            enforcer._want_sync(ev)  # noqa: SLF001
    if by is not None:
        by.total -= nbytes - used_bytes
        if used_bytes and by.low():
            enforcer._want_sync(by)  # noqa: SLF001


def open_stretch(enforcer: QuotaEnforcer, client: GuardClient | None, events: int, nbytes: int) -> Stretch:
    """A stretch for a run of at most `events` PUBLISHes carrying at most `nbytes` of payload from
    `client`; its publisher side is prepaid when the client's bucket and allowance cover the bound."""
    st = Stretch(events, nbytes)
    if client is None:
        return st
    cq = enforcer.clients.get(client.client_id)
    if cq is None or cq.client is not client:
        st.pub_ok = True  # not tracked by the quota: admitted and not counted (as admit_publish)
        return st
    bucket = cq.bucket
    if bucket is not None:
        bucket.take(0)  # bring the level up to date
        if bucket.tokens < events:
            return st
        bucket.tokens -= events
        st.tokens = events
    user = cq.user
    if user is not None and user.current and user.limits.counts_in:
        reservation = reserve(enforcer, user, events, nbytes)
        if reservation is None:
            if bucket is not None:
                bucket.tokens += events
                st.tokens = 0
            return st
        st.reservation = reservation
    st.cq = cq
    st.pub_ok = True
    return st


def settle_stretch(enforcer: QuotaEnforcer, st: Stretch) -> None:
    """Spend what the run carried, give back the rest (publisher first, then every delivery group)."""
    for group in st.groups:
        group.settle()
    st.groups = []
    cq = st.cq
    if cq is None:
        return
    st.cq = None
    n, b = st.n, st.b
    if st.tokens:
        bucket = cq.bucket
        if bucket is not None:
            bucket.tokens = min(bucket.burst, bucket.tokens + st.tokens - n)
        st.tokens = 0
    if st.reservation is not None:
        release(enforcer, st.reservation, n, b)
        st.reservation = None
    if n:
        usage = cq.usage
        usage["events_in"] += n
        usage["bytes_in"] += b


def group_reserve(
    enforcer: QuotaEnforcer, groups: list[tuple[Any, list[Any], list[Any]]], events: int, nbytes: int
) -> list[tuple[Reservation, int]] | None:
    """Reservations for `events` deliveries of at most `nbytes` bytes in all to every client of each
    counting user of a group; None, with nothing reserved, when one does not fit."""
    taken: list[tuple[Reservation, int]] = []
    for user, cqs, _ in groups:
        if user is None or not user.current or not user.limits.counts_out:
            continue
        k = len(cqs)
        reservation = reserve(enforcer, user, events * k, nbytes * k)
        if reservation is None:
            for r, _k in taken:
                release(enforcer, r, 0, 0)
            return None
        taken.append((reservation, k))
    return taken
