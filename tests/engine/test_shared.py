"""Shared subscriptions, the pure part (engine/shared.py): the `$share/GROUP/FILTER` name rules and the
choice of a member, against an oracle."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqtt_guard.engine.protocol import ProtocolViolation
from mqtt_guard.engine.shared import ShareGroup, parse_share


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("a/b", None),
        ("$SYS/x", None),
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/g/#", ("g", "#")),
        ("$share/g/+/x", ("g", "+/x")),
        ("$share/g//", ("g", "/")),
    ],
)
def test_share_names_are_parsed(name: str, parsed: tuple[str, str] | None) -> None:
    assert parse_share(name) == parsed


@pytest.mark.parametrize(
    "name", ["$share/", "$share/g", "$share/g/", "$share//a", "$share/+/a", "$share/g#/a", "$share/g/a/#/b"]
)
def test_malformed_share_names_are_protocol_violations(name: str) -> None:
    with pytest.raises(ProtocolViolation):
        parse_share(name)


@given(st.integers(min_value=1, max_value=8), st.integers(min_value=0, max_value=60))
def test_round_robin_gives_every_member_its_turn(n: int, messages: int) -> None:
    group: ShareGroup[str] = ShareGroup("g", "t")
    for i in range(n):
        group.add(f"c{i}", f"c{i}")
    got = [group.pick(lambda e: True) for _ in range(messages)]
    assert got == [f"c{i % n}" for i in range(messages)]  # the oracle: subscription order, cyclically


@given(
    st.lists(st.booleans(), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=5), min_size=8, max_size=8),
    st.integers(min_value=0, max_value=7),
)
def test_only_eligible_members_are_picked_and_least_loaded_is_a_minimum(
    ok: list[bool], loads: list[int], start: int
) -> None:
    group: ShareGroup[int] = ShareGroup("g", "t")
    for i in range(len(ok)):
        group.add(f"c{i}", i)
    for _ in range(start):
        group.pick(lambda e: True)  # (any starting turn)
    eligible = [i for i, good in enumerate(ok) if good]
    rr = group.pick(lambda e: ok[e])
    ll = group.pick(lambda e: ok[e], lambda e: loads[e])
    if not eligible:
        assert rr is None and ll is None
        return
    assert rr in eligible and ll in eligible
    assert loads[ll] == min(loads[i] for i in eligible)


def test_a_member_that_leaves_is_skipped_and_one_that_resubscribes_keeps_its_place() -> None:
    group: ShareGroup[str] = ShareGroup("g", "t")
    for cid in ("a", "b", "c"):
        group.add(cid, cid)
    assert group.pick(lambda e: True) == "a"
    assert group.remove("b") and not group.remove("b")
    assert group.pick(lambda e: True) == "c"
    group.add("a", "a2")  # re-subscribed (new options): same place
    assert [group.pick(lambda e: True) for _ in range(3)] == ["a2", "c", "a2"]
    assert len(group) == 2


def test_the_rotation_goes_on_where_it_was_when_an_earlier_member_leaves() -> None:
    """mosquitto-compat/SHARED.md finding 8: m1, m2 had their turns, m1 leaves: m3 is next, then m2."""
    group: ShareGroup[str] = ShareGroup("g", "t")
    for cid in ("m1", "m2", "m3"):
        group.add(cid, cid)
    assert [group.pick(lambda e: True) for _ in range(2)] == ["m1", "m2"]
    assert group.remove("m1")
    assert [group.pick(lambda e: True) for _ in range(4)] == ["m3", "m2", "m3", "m2"]
    # the last member's turn was next and it leaves: the turn wraps to the first
    group.add("m4", "m4")  # m2, m3, m4; next: m3
    assert group.pick(lambda e: True) == "m3"
    assert group.remove("m4")
    assert group.pick(lambda e: True) == "m2"


@given(st.integers(2, 8), st.integers(0, 20), st.data())
def test_a_leaver_never_costs_the_next_member_its_turn(n: int, picks: int, data: st.DataObject) -> None:
    group: ShareGroup[int] = ShareGroup("g", "t")
    for i in range(n):
        group.add(str(i), i)
    for _ in range(picks):
        group.pick(lambda e: True)
    order = list(range(n))
    nxt = picks % n  # whose turn it is
    leaver = data.draw(st.integers(0, n - 1))
    assert group.remove(str(leaver))
    expected = order[nxt] if leaver != nxt else order[(nxt + 1) % n]
    assert group.pick(lambda e: True) == expected
