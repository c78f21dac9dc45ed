"""The pure allowance core (mqtt_guard/quota/allowance.py, stretch.py): no Redis, no event loop.

What Redis lends a broker is simulated by raising an entry's `held` (as a sync would); the clock is
injected. The property tests compare the book with a naive model that keeps, per metric and window,
what was lent and what was spent, and admits a take when what is left covers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.acl.policy import Subject
from mqtt_guard.config import QuotaConfig
from mqtt_guard.guard_client import GuardClient
from mqtt_guard.metrics import counters as C
from mqtt_guard.metrics.counters import Counters
from mqtt_guard.quota.allowance import HEADROOM, Allowances, ClientQuota, UserQuota
from mqtt_guard.quota.bucket import TokenBucket
from mqtt_guard.quota.ledger import Entry
from mqtt_guard.quota.limits import parse_limits
from mqtt_guard.quota.stretch import DeliveryGroup, open_stretch, settle_stretch
from mqtt_guard.reasons import Reason
from mqtt_guard.store.keys import Keys

WINDOW = 10  # seconds: the limits below are per 10 s window
T0 = 1_700_000_000.0  # a multiple of WINDOW


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Book:
    """An Allowances with a fake clock, and what its callbacks were asked."""

    book: Allowances
    clock: Clock
    wakes: list[int] = field(default_factory=list)
    exceeded: list[tuple[str, str, float]] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)
    codes: list[int] = field(default_factory=list)  # the DISCONNECT reason of each `exceeded`


def make_book(now: float = T0) -> Book:
    clock = Clock(now)
    counters = Counters()
    wakes: list[int] = []
    exceeded: list[tuple[str, str, float]] = []
    codes: list[int] = []
    book = Allowances(
        QuotaConfig(),
        Keys("t:"),
        counters,
        lambda: wakes.append(1),
        lambda cq, reason, until, code: (exceeded.append((cq.client.client_id, reason, until)), codes.append(code)),
        clock,
    )
    return Book(book, clock, wakes, exceeded, counters, codes)


def add_user(b: Book, username: str, fields: dict[str, str], clients: int = 1) -> tuple[UserQuota, list[GuardClient]]:
    """A user with `clients` clients attached as the enforcer binds them (without Redis)."""
    book = b.book
    user = book.users[username] = UserQuota(username, parse_limits(fields, {}))
    book.set_entries(user, b.clock.now)
    out = []
    for i in range(clients):
        client = GuardClient(f"{username}-{i}", username, Subject(username=username, client_id=f"{username}-{i}"))
        cq = ClientQuota(client, f"conn{i}", b.clock.now, user=user)
        book.clients[client.client_id] = user.clients[client.client_id] = cq
        out.append(client)
    book.version += 1
    return user, out


def entry(b: Book, user: UserQuota, metric: str, at: float | None = None) -> Entry:
    """The entry of `metric` for the window containing `at` (default: the book's now), created as a
    roll or a prefetch would."""
    allowance = user.limits.allowance(metric)
    assert allowance is not None
    window = allowance.window
    start = window.start(b.clock.now if at is None else at)
    found = b.book.entries.get(b.book.keys.quota_usage(user.username, metric, start))
    return found or b.book.entry(user.username, metric, allowance.limit, start, window.seconds)


def lend(b: Book, user: UserQuota, metric: str, amount: int, at: float | None = None) -> None:
    """What a sync does when Redis grants `amount` more to this broker (nothing reported meanwhile)."""
    e = entry(b, user, metric, at)
    e.held += amount
    e.synced = True
    e.joined = True


# -- examples -------------------------------------------------------------------------------------------
def test_take_is_all_or_nothing_over_both_metrics() -> None:
    b = make_book()
    user, _ = add_user(b, "u", {"events": f"100/{WINDOW}s", "bytes": f"1000/{WINDOW}s"})
    lend(b, user, "events", 3)
    lend(b, user, "bytes", 100)
    assert b.book.take(user, 1, 60)
    assert not b.book.take(user, 1, 41)  # bytes short: the event is not spent either
    assert user.current["events"].total == 1 and user.current["bytes"].total == 60
    assert b.book.take(user, 2, 40)
    assert not b.book.take(user, 1, 0)  # events short
    assert user.current["events"].available == 0 and user.current["bytes"].available == 0


def test_a_reservation_needs_headroom_and_release_keeps_what_was_used() -> None:
    b = make_book()
    user, _ = add_user(b, "u", {"events": f"1000/{WINDOW}s"})
    lend(b, user, "events", 10)
    assert b.book.take(user, 6, 0, True) is None  # 6 fit, but not HEADROOM x 6
    assert user.current["events"].total == 0
    reservation = b.book.take(user, 5, 0, True)
    ev = user.current["events"]
    assert reservation == (ev, None, 5, 0) and ev.total == 5
    b.book.release(reservation, 2, 0)
    assert ev.total == 2 and ev.available == 8


def test_the_window_rolls_to_a_fresh_entry_that_holds_nothing_yet() -> None:
    b = make_book()
    user, [client] = add_user(b, "u", {"events": f"100/{WINDOW}s", "events_direction": "in"})
    lend(b, user, "events", 5)
    assert b.book.admit_publish(client, "t", 1, 0)
    old = user.current["events"]
    b.clock.now += WINDOW
    assert not b.book.admit_publish(client, "t", 1, 0)  # not held here yet: refused (short), refill asked
    new = user.current["events"]
    assert new is not old and old.release and old.key in b.book.urgent and new.key in b.book.urgent
    assert new.start == old.end and b.wakes
    assert b.counters.totals[C.OVER_QUOTA] == 1 and not b.exceeded  # short: never a kick


def test_used_up_allowance_with_on_exceed_disconnect_asks_for_a_kick_and_a_block_once() -> None:
    b = make_book()
    user, [client] = add_user(b, "u", {"events": f"2/{WINDOW}s", "on_exceed": "disconnect"})
    lend(b, user, "events", 2)
    ev = user.current["events"]
    assert b.book.admit_publish(client, "t", 1, 0) and b.book.admit_publish(client, "t", 1, 0)
    assert not b.book.admit_publish(client, "t", 1, 0)
    assert not b.book.admit_delivery(client, "t", 1)
    assert b.exceeded == [("u-0", f"events quota 2/{WINDOW}s used up until 2023-11-14T22:13:30Z", float(ev.end))]
    assert b.codes == [Reason.QUOTA_EXCEEDED]
    assert b.counters.totals[C.OVER_QUOTA] == 2


def test_over_rate_with_on_exceed_disconnect_asks_for_a_kick_with_message_rate_too_high() -> None:
    b = make_book()
    _, [client] = add_user(b, "u", {"rate": "1/h:1", "on_exceed": "disconnect"})
    b.book.clients[client.client_id].bucket = TokenBucket(1 / 3600, 1, clock=lambda: 0.0)
    assert b.book.admit_publish(client, "t", 1, 0)
    assert not b.book.admit_publish(client, "t", 1, 0)
    assert [e[0] for e in b.exceeded] == ["u-0"] and b.exceeded[0][1].startswith("rate ")
    assert b.codes == [Reason.MESSAGE_RATE_TOO_HIGH]


def test_redis_down_with_on_redis_down_allow_spends_on_credit() -> None:
    b = make_book()
    b.book.config.on_redis_down = "allow"
    user, [client] = add_user(b, "u", {"events": f"100/{WINDOW}s"})
    entry(b, user, "events").synced = True  # nothing held, and the allowance may be held elsewhere
    entry(b, user, "events").others = 5
    assert not b.book.admit_publish(client, "t", 1, 0)  # Redis reachable: short, refused
    b.book.redis_ok = False
    assert b.book.admit_publish(client, "t", 1, 0)
    assert user.current["events"].total == 1


def test_a_rate_refusal_spends_no_allowance_and_an_allowance_refusal_gives_the_token_back() -> None:
    b = make_book()
    user, [client] = add_user(b, "u", {"events": f"100/{WINDOW}s", "rate": "1/h:2"})

    cq = b.book.clients[client.client_id]
    cq.bucket = TokenBucket(1 / 3600, 2, clock=lambda: 0.0)
    lend(b, user, "events", 1)
    assert b.book.admit_publish(client, "t", 1, 0)
    assert not b.book.admit_publish(client, "t", 1, 0)  # allowance: token given back
    assert cq.bucket.tokens == 1
    lend(b, user, "events", 5)
    assert b.book.admit_publish(client, "t", 1, 0)
    assert not b.book.admit_publish(client, "t", 1, 0)  # rate
    assert user.current["events"].total == 2


def test_a_stretch_prepays_the_publisher_and_settles_exactly() -> None:
    b = make_book()
    user, [client] = add_user(b, "u", {"events": f"100000/{WINDOW}s", "bytes": f"10MB/{WINDOW}s"})
    lend(b, user, "events", 10_000)
    lend(b, user, "bytes", 1_000_000)
    s = open_stretch(b.book, client, 820, 4096)
    assert s.pub_ok and user.current["events"].total == 820
    s.n, s.b = 3, 300
    settle_stretch(b.book, s)
    assert user.current["events"].total == 3 and user.current["bytes"].total == 300
    assert b.book.clients[client.client_id].usage["events_in"] == 3
    lend(b, user, "events", -9_000)  # too little left for twice the bound: each message is checked
    s = open_stretch(b.book, client, 820, 4096)
    assert not s.pub_ok and user.current["events"].total == 3


# -- properties against a naive model ---------------------------------------------------------------------
@dataclass
class Model:
    """Per (metric, window start): lent and spent. A take fits when lent - spent covers it."""

    lent: dict[tuple[str, int], int] = field(default_factory=dict)
    spent: dict[tuple[str, int], int] = field(default_factory=dict)

    def left(self, metric: str, start: int) -> int:
        return self.lent.get((metric, start), 0) - self.spent.get((metric, start), 0)

    def take(self, amounts: dict[str, int], start: int, factor: int = 1) -> bool:
        if any(self.left(m, start) < factor * n for m, n in amounts.items()):
            return False
        for m, n in amounts.items():
            self.spent[(m, start)] = self.spent.get((m, start), 0) + n
        return True


LIMIT = {"events": 40, "bytes": 2000}
steps = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.integers(1, 3), st.integers(0, 300)),
        st.tuples(st.just("lend"), st.sampled_from(["events", "bytes"]), st.integers(0, 30)),
        st.tuples(st.just("clock"), st.one_of(st.floats(0, 2.5 * WINDOW), st.integers(0, 25)), st.just(0)),
        st.tuples(st.just("run"), st.integers(1, 12), st.integers(0, 400)),
        st.tuples(st.just("to the window's end"), st.just(0), st.just(0)),
        st.tuples(st.just("prefetch"), st.just(0), st.just(0)),
        st.tuples(st.just("lend next"), st.sampled_from(["events", "bytes"]), st.integers(0, 30)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from([("events",), ("bytes",), ("events", "bytes")]), st.data())
def test_the_book_admits_exactly_what_the_model_admits_and_never_more_than_the_limit(
    steps: list[tuple[str, Any, Any]], metrics: tuple[str, ...], data: st.DataObject
) -> None:
    b = make_book()
    b.book.config.sync_interval = 3.0  # a prefetch (horizon 3 intervals + 1 s) always finds the next window
    fields = {m: f"{LIMIT[m]}/{WINDOW}s" for m in metrics}
    user, _ = add_user(b, "u", fields)
    model = Model()

    def start() -> int:
        return int(b.clock.now // WINDOW * WINDOW)

    def amounts(events: int, nbytes: int) -> dict[str, int]:
        return {m: n for m, n in (("events", events), ("bytes", nbytes)) if m in metrics}

    for kind, x, y in steps:
        if kind == "clock":
            b.clock.now += x
        elif kind == "to the window's end":  # exactly when the next window begins
            b.clock.now = start() + WINDOW
        elif kind == "prefetch":  # the heartbeat: the next window's entry shortly before it begins
            b.book.prefetch(b.clock.now)
        elif kind in ("lend", "lend next"):
            metric, at = x, start() + (WINDOW if kind == "lend next" else 0)
            if metric in metrics:
                # Redis never lends more than the limit of a window, whatever the brokers ask.
                n = min(y, LIMIT[metric] - model.lent.get((metric, at), 0))
                lend(b, user, metric, n, at)
                model.lent[(metric, at)] = model.lent.get((metric, at), 0) + n
        elif kind == "take":
            events, nbytes = x, y
            assert b.book.take(user, events, nbytes) == model.take(amounts(events, nbytes), start())
        else:  # a reader's run: a reservation, exact takes meanwhile, then what was used is kept
            events, nbytes = x, y
            reservation = b.book.take(user, events, nbytes, True)
            ok = reservation is not None
            assert ok == model.take(amounts(events, nbytes), start(), HEADROOM)
            inner = data.draw(st.lists(st.tuples(st.integers(1, 2), st.integers(0, 100)), max_size=4))
            for e, n in inner:
                assert b.book.take(user, e, n) == model.take(amounts(e, n), start())
            if reservation is not None:
                assert reservation == (user.current.get("events"), user.current.get("bytes"), events, nbytes)
                used_e = data.draw(st.integers(0, events))
                used_b = data.draw(st.integers(0, nbytes))
                b.book.release(reservation, used_e, used_b)
                for m, gave in (("events", events - used_e), ("bytes", nbytes - used_b)):
                    if m in metrics:
                        model.spent[(m, start())] -= gave
        for metric in metrics:
            e = user.current[metric]
            if kind in ("take", "run"):  # a take spends in the window of its time, rolled if need be
                assert e.start <= b.clock.now < e.end
            if e.start == start():
                assert e.total == model.spent.get((metric, e.start), 0)
                assert e.total <= model.lent.get((metric, e.start), 0) <= LIMIT[metric]
    for e in b.book.entries.values():
        assert e.total == model.spent.get((e.metric, e.start), 0) <= LIMIT[e.metric]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(0, 20),
    st.integers(0, 600),
    st.lists(st.integers(0, 120), min_size=1, max_size=8),
    st.sampled_from(["drop", "disconnect"]),
)
def test_a_delivery_group_decides_and_counts_as_admit_delivery_for_each_client(
    clients: int, events: int, nbytes: int, payloads: list[int], on_exceed: str
) -> None:
    fields = {"events": f"1000/{WINDOW}s", "bytes": f"100000/{WINDOW}s", "on_exceed": on_exceed}
    group_book, one_book = make_book(), make_book()
    results = []
    for b in (group_book, one_book):
        user, cs = add_user(b, "u", fields, clients)
        _, anon = add_user(b, "v", {}, 1)  # a user without limits in the same group: counted, never refused
        lend(b, user, "events", events)
        lend(b, user, "bytes", nbytes)
        results.append((b, user, cs + anon))
    (gb, guser, gclients), (ob, ouser, oclients) = results
    group = DeliveryGroup(gb.book, gclients)
    for p in payloads:
        refused = group.admit("t", p) or set()
        expected = {c.client_id for c in oclients if not ob.book.admit_delivery(c, "t", p)}
        assert refused == expected
    for metric in ("events", "bytes"):
        assert guser.current[metric].total == ouser.current[metric].total
    for c in gclients:
        assert gb.book.clients[c.client_id].usage == ob.book.clients[c.client_id].usage
    assert gb.counters.totals == ob.counters.totals
    assert gb.exceeded == ob.exceeded


@pytest.mark.parametrize("reserved", [True, False])
def test_a_delivery_group_reservation_settles_to_what_admit_would_have_spent(reserved: bool) -> None:
    b = make_book()
    user, cs = add_user(b, "u", {"events": f"100000/{WINDOW}s"}, 3)
    lend(b, user, "events", 10_000 if reserved else 1_000)
    group = DeliveryGroup(b.book, cs)
    s = open_stretch(b.book, None, 820, 4096)
    assert group.reserve(s) is reserved
    if reserved:
        group.n, group.b = 4, 40
    else:
        for _ in range(4):
            assert group.admit("t", 10) is None
    settle_stretch(b.book, s)
    assert user.current["events"].total == 12
    assert all(b.book.clients[c.client_id].usage["events_out"] == 4 for c in cs)
