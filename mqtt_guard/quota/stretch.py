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

Pure and synchronous like allowance.py, whose `take` does the spending (`reserve=True` here).
"""

from __future__ import annotations

from ..guard_client import GuardClient
from .allowance import Allowances, ClientQuota, Reservation, UserQuota

MIN_PUBLISH = 5  # bytes: fixed header (2) + topic length (2) + a one-character topic, no payload
# Below this many bytes a run holds a handful of packets: the per-message path is as cheap (iot case).
MIN_STRETCH = 1024


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


def open_stretch(book: Allowances, client: GuardClient | None, events: int, nbytes: int) -> Stretch:
    """A stretch for a run of at most `events` PUBLISHes carrying at most `nbytes` of payload from
    `client`; its publisher side is prepaid when the client's bucket and allowance cover the bound."""
    st = Stretch(events, nbytes)
    if client is None or book.apis is not None:
        return st  # (APIs defined: every PUBLISH is looked at, for its topic's APIs, by admit_publish)
    cq = book.clients.get(client.client_id)
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
        reservation = book.take(user, events, nbytes, True)
        if reservation is None:
            if bucket is not None:
                bucket.tokens += events
                st.tokens = 0
            return st
        st.reservation = reservation
    st.cq = cq
    st.pub_ok = True
    return st


def settle_stretch(book: Allowances, st: Stretch) -> None:
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
        book.release(st.reservation, n, b)
        st.reservation = None
    if n:
        usage = cq.usage
        usage["events_in"] += n
        usage["bytes_in"] += b


Group = tuple[UserQuota | None, list[ClientQuota], list[dict[str, int]], int]
"""The clients of one user in a DeliveryGroup (user None: anonymous clients), their usage dicts, how many."""


def group_reserve(
    book: Allowances, groups: list[Group], events: int, nbytes: int
) -> list[tuple[Reservation, int]] | None:
    """Reservations for `events` deliveries of at most `nbytes` bytes in all to every client of each
    counting user of a group; None, with nothing reserved, when one does not fit."""
    taken: list[tuple[Reservation, int]] = []
    for user, _, _, k in groups:
        if user is None or not user.current or not user.limits.counts_out:
            continue
        reservation = book.take(user, events * k, nbytes * k, True)
        if reservation is None:
            for r, _k in taken:
                book.release(r, 0, 0)
            return None
        taken.append((reservation, k))
    return taken


class DeliveryGroup:
    """Delivery accounting for one message to a fixed set of clients (the engine keeps one per cached
    topic route): the same decisions and counts as calling `admit_delivery` for each client in turn,
    but the allowance of a user is spent once for all of its clients when it covers them all, which
    is what makes a fan-out to many clients of one user cheap. Valid while `version` equals the
    book's (clients attached, detached, taken over: rebuild)."""

    __slots__ = ("book", "take", "version", "groups", "usages", "stretch", "ok", "n", "b", "reserved", "apis", "exact")

    def __init__(self, book: Allowances, clients: list[GuardClient], topic: str = "") -> None:
        self.book = book
        # The APIs of the group's topic (quota/apis.py, matched once per route): counted per API at
        # settle; when a receiver has limits on one of them, every delivery takes the exact path.
        self.apis = book.apis.match(topic) if book.apis is not None and topic else ()
        self.take = book.take
        self.version = book.version
        # Per read batch (quota/stretch.py): the Stretch this group last reserved for, whether it could,
        # and the deliveries counted since (n messages, b payload bytes, to every client).
        self.stretch: Stretch | None = None
        self.ok = False
        self.n = 0
        self.b = 0
        self.reserved: list[tuple[Reservation, int]] = []
        by_user: dict[UserQuota | None, list[ClientQuota]] = {}
        get = book.clients.get
        for client in clients:
            cq = get(client.client_id)
            if cq is None or cq.client is not client:
                continue  # not tracked by the quota: admitted, not counted (as admit_delivery)
            by_user.setdefault(cq.user, []).append(cq)
        self.groups: list[Group] = [(user, cqs, [cq.usage for cq in cqs], len(cqs)) for user, cqs in by_user.items()]
        self.usages = [usage for _, _, usages, _ in self.groups for usage in usages]  # every client's, for settle
        self.exact = bool(self.apis) and any(
            user is not None and any(api in user.api_slots for api in self.apis) for user, _, _, _ in self.groups
        )

    def current(self) -> bool:
        return self.version == self.book.version

    def reserve(self, st: Stretch) -> bool:
        """Reserve the allowance of every delivery `st` can make through this group (then the engine
        only counts them: `n += 1; b += payload_len`); False: use `admit` for each message of `st`."""
        self.stretch = st
        if self.exact:
            self.ok = False
            return False
        taken = group_reserve(self.book, self.groups, st.events, st.nbytes)
        if taken is None:
            self.ok = False
            return False
        self.ok = True
        self.n = self.b = 0
        self.reserved = taken
        st.groups.append(self)
        return True

    def settle(self) -> None:
        """Spend the deliveries counted since `reserve` (exactly what `admit` would have), give back the rest."""
        n, b = self.n, self.b
        release = self.book.release
        for reservation, k in self.reserved:
            release(reservation, n * k, b * k)
        self.reserved = []
        self.stretch = None
        self.ok = False
        if n:
            for usage in self.usages:
                usage["events_out"] += n
                usage["bytes_out"] += b
            if self.apis:
                self.meter_apis(n, b)
        self.n = self.b = 0

    def meter_apis(self, n: int, b: int) -> None:
        """Count `n` deliveries (`b` bytes each) to every client per API of the topic (quota/meter.py)."""
        for user, _, _, k in self.groups:
            if user is not None:
                self.meter_user(user, n * k, b * k)

    def meter_user(self, user: UserQuota, n: int, b: int) -> None:
        """Count `n` deliveries of `b` bytes in all to clients of `user` per API of the topic."""
        meter = user.api_meter
        for api in self.apis:
            counts = meter.get(api)
            if counts is None:
                counts = meter[api] = [0, 0, 0, 0]
            counts[2] += n
            counts[3] += b

    def admit(self, topic: str, payload_len: int) -> set[str] | None:
        """None when every client may have the delivery; else the ids of those it is withheld from."""
        refused: set[str] | None = None
        if self.exact:  # a receiver has limits on the topic's APIs: per client (Allowances.admit_api)
            admit = self.book.admit_delivery
            for _, cqs, _, _ in self.groups:
                for cq in cqs:
                    if not admit(cq.client, topic, payload_len):
                        if refused is None:
                            refused = set()
                        refused.add(cq.client.client_id)
            return refused
        apis = self.apis
        for user, cqs, usages, k in self.groups:
            if user is not None and user.current and user.limits.counts_out:
                if not self.take(user, k, k * payload_len):  # exact per client when not all of them fit
                    take, overdraft = self.take, self.book.overdraft
                    ok = 0
                    for cq in cqs:
                        if take(user, 1, payload_len) or overdraft(cq, user, topic, 1, payload_len):
                            usage = cq.usage
                            usage["events_out"] += 1
                            usage["bytes_out"] += payload_len
                            ok += 1
                        else:
                            if refused is None:
                                refused = set()
                            refused.add(cq.client.client_id)
                    if apis and ok:
                        self.meter_user(user, ok, ok * payload_len)
                    continue
            for usage in usages:
                usage["events_out"] += 1
                usage["bytes_out"] += payload_len
            if apis and user is not None:
                self.meter_user(user, k, k * payload_len)
        return refused
