"""auth/throttle.py: failure counting and ban matching, pure (time passed in), against naive oracles."""

from __future__ import annotations

import ipaddress
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.auth.throttle import (
    KIND_AUTO,
    KIND_MANUAL,
    KIND_USER,
    Ban,
    BanTable,
    FailureCounter,
    Verdict,
    canonical_address,
    parse_ban_id,
    parse_network,
)

# -- addresses and networks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # a dual-stack listener's view of an IPv4 client
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("not-an-ip", None),
        ("", None),
        (None, None),
    ],
)
def test_canonical_address(text, canonical):
    assert canonical_address(text) == canonical


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("192.0.2.7", "192.0.2.7/32"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("2001:db8::1/32", "2001:db8::/32"),
        ("::ffff:192.0.2.0/120", "192.0.2.0/24"),
    ],
)
def test_parse_network(text, network):
    assert parse_network(text).with_prefixlen == network


@pytest.mark.parametrize("text", ["300.1.2.3", "10.0.0.0/33", "host.example", ""])
def test_parse_network_refuses_what_is_not_an_address(text):
    with pytest.raises(ValueError, match="not an IP address or CIDR"):
        parse_network(text)


def test_ban_ids_round_trip():
    for ban in (
        Ban(KIND_MANUAL, "10.0.0.0/8", math.inf),
        Ban(KIND_AUTO, "2001:db8::1", 5.0),
        Ban(KIND_USER, "192.0.2.1", 5.0, username="a b:c"),
    ):
        assert parse_ban_id(ban.id) == (ban.kind, ban.network, ban.username)
    assert parse_ban_id("other:x") is None
    assert parse_ban_id("user:192.0.2.1") is None  # a pair needs its username


# -- the ban table against a naive oracle ------------------------------------------------------------

# few distinct addresses, so lookups hit bans often
small_v4 = st.integers(0, 15).map(lambda i: f"10.0.{i // 4}.{i % 4}")
small_v6 = st.integers(0, 7).map(lambda i: str(ipaddress.IPv6Address(f"2001:db8::{i:x}")))  # canonical, as lookups take
addresses = st.one_of(small_v4, small_v6)
usernames = st.sampled_from(["alice", "bob", "x y"])


@st.composite
def bans(draw):
    kind = draw(st.sampled_from([KIND_MANUAL, KIND_AUTO, KIND_USER]))
    address = draw(addresses)
    until = draw(st.sampled_from([math.inf, 5.0, 15.0]))
    if kind == KIND_MANUAL:
        bits = 32 if ":" not in address else 128
        prefix = draw(st.integers(bits - 4, bits))
        net = ipaddress.ip_network(f"{address}/{prefix}", strict=False).with_prefixlen
        return Ban(kind, net, until)
    return Ban(kind, address, until, username=draw(usernames) if kind == KIND_USER else None)


def _oracle(table: list[Ban], address: str, username: str | None, now: float) -> bool:
    ip = ipaddress.ip_address(address)
    for ban in table:
        if ban.until <= now:
            continue
        if ban.kind == KIND_MANUAL:
            net = ipaddress.ip_network(ban.network)
            if net.version == ip.version and ip in net:
                return True
        elif ban.kind == KIND_AUTO and ban.network == address:
            return True
        elif ban.kind == KIND_USER and ban.network == address and ban.username == username:
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(
    st.lists(bans(), max_size=12),
    st.lists(st.tuples(addresses, st.one_of(st.none(), usernames), st.sampled_from([0.0, 10.0, 20.0])), max_size=20),
    st.lists(st.integers(0, 11), max_size=4),
)
def test_ban_table_matches_the_oracle(put, queries, removed):
    table = BanTable()
    by_id: dict[str, Ban] = {}
    for ban in put:
        table.put(ban)
        by_id[ban.id] = ban  # a later ban with the same id replaces the earlier one
    for i in removed:
        if i < len(put):
            table.remove(put[i].id)
            by_id.pop(put[i].id, None)
    for address, username, now in sorted(queries, key=lambda q: q[2]):  # time only moves forward
        found = table.lookup(address, username, now)
        assert (found is not None) == _oracle(list(by_id.values()), address, username, now)
        if found is not None:
            assert found.until > now


def test_lookup_drops_expired_bans():
    table = BanTable()
    table.put(Ban(KIND_AUTO, "192.0.2.1", 10.0))
    table.put(Ban(KIND_MANUAL, "10.0.0.0/8", 10.0))
    assert table.lookup("192.0.2.1", None, 5.0) is not None
    assert table.lookup("10.9.9.9", None, 5.0) is not None
    assert table.lookup("192.0.2.1", None, 10.0) is None
    assert table.lookup("10.9.9.9", None, 10.0) is None
    assert len(table) == 0


# -- failure counting against a naive model -----------------------------------------------------------


class _Model:
    """Each key's failure times; a window opens at a failure outside the open one; one verdict a window."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.start: dict[object, float] = {}
        self.times: dict[object, list[float]] = {}
        self.fired: set[tuple[object, float]] = set()

    def fail(self, key: object, now: float) -> int | None:
        if key not in self.start or now - self.start[key] >= self.window:
            self.start[key] = now
            self.times[key] = []
        self.times[key].append(now)
        n = len(self.times[key])
        mark = (key, self.start[key])
        if self.limit and n >= self.limit and mark not in self.fired:
            self.fired.add(mark)
            return n
        return None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 5),
    st.integers(0, 4),
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["u", "v", None]), st.floats(0, 30)), max_size=60
    ),
)
def test_failure_counter_matches_the_model(max_failures, max_user_failures, events):
    counter = FailureCounter(max_failures=max_failures, max_user_failures=max_user_failures, window=20.0)
    addr_model = _Model(max_failures, 20.0)
    pair_model = _Model(max_user_failures, 20.0)
    now = 0.0
    sent: dict[str, int] = {}
    for address, username, dt in events:
        now += dt
        expected = []
        n = addr_model.fail(address, now)
        if n is not None:
            expected.append(Verdict(address, None, n))
        if username is not None:
            n = pair_model.fail((address, username), now)
            if n is not None:
                expected.append(Verdict(address, username, n))
        assert counter.failed(address, username, now) == expected
        assert counter.recent(address, now)
        sent[address] = sent.get(address, 0) + 1
    addr, _ = counter.drain()
    assert addr == sent
    assert counter.drain() == ({}, {})


def test_merge_adopts_the_cluster_wide_count():
    counter = FailureCounter(max_failures=10, max_user_failures=3, window=60.0)
    assert counter.failed("192.0.2.1", "u", 0.0) == []
    assert counter.merge("192.0.2.1", None, 9, 0.1) is None
    assert counter.failed("192.0.2.1", None, 0.2) == [Verdict("192.0.2.1", None, 10)]
    assert counter.merge("192.0.2.1", "u", 3, 0.3) == Verdict("192.0.2.1", "u", 3)
    assert counter.merge("192.0.2.1", "u", 4, 0.4) is None  # one verdict per window
    assert counter.merge("198.51.100.1", None, 12, 0.5) == Verdict("198.51.100.1", None, 12)  # seen elsewhere only


def test_exempt_networks_are_never_counted():
    counter = FailureCounter(
        max_failures=1, max_user_failures=1, window=60.0, exempt=[parse_network("127.0.0.0/8"), parse_network("::1")]
    )
    assert counter.failed("127.0.0.2", "u", 0.0) == []
    assert counter.failed("::1", "u", 0.0) == []
    assert counter.merge("127.0.0.2", None, 50, 0.0) is None
    assert counter.failed("192.0.2.1", None, 0.0) == [Verdict("192.0.2.1", None, 1)]
    assert not counter.recent("127.0.0.2", 0.0)


def test_counting_state_is_bounded():
    counter = FailureCounter(max_failures=5, max_user_failures=5, window=60.0, max_entries=100)
    for i in range(1000):
        counter.failed(f"10.0.{i // 256}.{i % 256}", f"user{i}", float(i) / 1000)
    addr, pair = counter.drain()
    assert len(addr) <= 100 and len(pair) <= 100
    assert counter.recent("10.0.3.231", 1.0)  # the newest stay
    assert not counter.recent("10.0.0.0", 1.0)  # the oldest went
    counter.restore(addr, pair)
    assert counter.drain() == (addr, pair)
