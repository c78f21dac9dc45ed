"""The sidecar's judgement of one session, check by check (pure: no Redis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.quota.limits import Limits, parse_limits
from mqtt_guard.sidecar.evaluate import Usage, evaluate, next_check
from mqtt_guard.store.quota import Block

NOW = 1_800_000_000.0


def session(**fields):
    base = {"client_id": "c", "username": "u", "since": str(NOW - 10), "queue_messages": "0"}
    base.update({k: str(v) for k, v in fields.items()})
    return base


def test_nothing_to_do_within_limits():
    limits = parse_limits({"session_time": "1m", "max_queue": "10", "events": "5/1h", "on_exceed": "disconnect"}, None)
    assert evaluate(session(), limits, now=NOW, usage={"events": Usage(5, 0, 5, int(NOW) + 60)}) is None


def test_session_time():
    limits = parse_limits({"session_time": "10s"}, None)
    d = evaluate(session(since=NOW - 10.2), limits, now=NOW)
    assert d is not None and d.reason.startswith("session time 10s exceeded") and d.block_until == 0
    assert evaluate(session(since=NOW - 9.9), limits, now=NOW) is None


def test_expiry_and_block_come_first():
    limits = parse_limits({"session_time": "1s"}, None)
    assert evaluate(session(), limits, now=NOW, expires_at=NOW - 1).reason == "user expired"
    d = evaluate(session(), limits, now=NOW, expires_at=NOW - 1, block=Block("abuse", NOW + 60, "cli", "k"))
    assert d.reason == "blocked: abuse"
    assert evaluate(session(), parse_limits(None, None), now=NOW, block=Block("old", NOW - 1, "cli", "k")) is None


def test_over_quota_only_with_disconnect_and_only_when_over():
    end = int(NOW) + 30
    disconnect = parse_limits({"events": "5/1m", "on_exceed": "disconnect"}, None)
    exhausted_not_over = {"events": Usage(5, 0, 5, end)}
    assert evaluate(session(), disconnect, now=NOW, usage=exhausted_not_over) is None
    refused = evaluate(session(), disconnect, now=NOW, usage={"events": Usage(5, 1, 5, end)})
    assert refused.block_user and refused.block_until == end and "events quota 5 used up" in refused.reason
    assert evaluate(session(), disconnect, now=NOW, usage={"bytes": Usage(101, 0, 100, end)}).block_user
    drop = parse_limits({"events": "5/1m"}, None)
    assert evaluate(session(), drop, now=NOW, usage={"events": Usage(9, 4, 5, end)}) is None


def test_slow_consumer_after_grace():
    limits = parse_limits({"max_queue": "100", "queue_grace": "5s"}, None)
    assert evaluate(session(queue_messages=500, queue_over_since=NOW - 4), limits, now=NOW) is None
    d = evaluate(session(queue_messages=500, queue_over_since=NOW - 5), limits, now=NOW)
    assert d is not None and d.reason.startswith("slow consumer: 500 messages queued") and not d.block_user
    assert evaluate(session(queue_messages=50, queue_over_since=NOW - 60), limits, now=NOW) is None
    assert evaluate(session(queue_messages=500, queue_over_since=""), limits, now=NOW) is None


def test_next_check_is_the_earliest_deadline():
    limits = parse_limits({"session_time": "1h", "max_queue": "10", "queue_grace": "5s"}, None)
    s = session(since=NOW - 10)
    assert next_check(s, limits, now=NOW) == NOW - 10 + 3600
    assert next_check(s, limits, now=NOW, expires_at=NOW + 60) == NOW + 60
    over = session(since=NOW - 10, queue_messages=11, queue_over_since=NOW - 1)
    assert next_check(over, limits, now=NOW) == NOW + 4
    # only events can change these: no deadline
    assert next_check(session(), parse_limits({"events": "5/1m", "on_exceed": "disconnect"}, None), now=NOW) is None
    assert next_check(session(queue_messages=5, queue_over_since=""), Limits(), now=NOW) is None


@settings(max_examples=300, deadline=None)
@given(
    age=st.floats(0, 100),
    session_time=st.one_of(st.none(), st.integers(1, 100)),
    expires_in=st.one_of(st.none(), st.floats(-5, 100)),
    depth=st.integers(0, 20),
    over_for=st.one_of(st.none(), st.floats(0, 20)),
    max_queue=st.one_of(st.none(), st.integers(0, 15)),
    grace=st.integers(0, 10),
    later=st.floats(0, 1),
)
def test_nothing_changes_before_next_check_and_something_does_at_it(
    age, session_time, expires_in, depth, over_for, max_queue, grace, later
):
    """The deadline path is exact: with no event, `evaluate` decides nothing before `next_check` and
    decides at it (a hair after: float rounding), so the sidecar needs to look at no other time."""
    raw = {"queue_grace": f"{grace}s"}
    if session_time is not None:
        raw["session_time"] = f"{session_time}s"
    if max_queue is not None:
        raw["max_queue"] = str(max_queue)
    limits = parse_limits(raw, None)
    s = session(since=NOW - age, queue_messages=depth, queue_over_since="" if over_for is None else NOW - over_for)
    expires_at = None if expires_in is None else NOW + expires_in
    if evaluate(s, limits, now=NOW, expires_at=expires_at) is not None:
        return
    due = next_check(s, limits, now=NOW, expires_at=expires_at)
    if due is None:
        assert evaluate(s, limits, now=NOW + 1e6, expires_at=expires_at) is None
        return
    assert due >= NOW
    t = NOW + later * (due - NOW)
    if t < due - 1e-6:
        assert evaluate(s, limits, now=t, expires_at=expires_at) is None
    assert evaluate(s, limits, now=due + 1e-3, expires_at=expires_at) is not None


def test_each_decision_carries_its_disconnect_reason():
    end = int(NOW) + 30
    no_limits = parse_limits(None, None)
    assert evaluate(session(), no_limits, now=NOW, block=Block("abuse", NOW + 60, "cli", "k")).code == 0x98
    assert evaluate(session(), no_limits, now=NOW, expires_at=NOW - 1).code == 0x87
    assert evaluate(session(since=NOW - 11), parse_limits({"session_time": "10s"}, None), now=NOW).code == 0xA0
    disconnect = parse_limits({"events": "5/1m", "bytes": "1KB/1m", "on_exceed": "disconnect"}, None)
    assert evaluate(session(), disconnect, now=NOW, usage={"events": Usage(5, 1, 5, end)}).code == 0x97
    assert evaluate(session(), disconnect, now=NOW, usage={"bytes": Usage(2000, 0, 1000, end)}).code == 0x97
    slow = parse_limits({"max_queue": "100", "queue_grace": "5s"}, None)
    assert evaluate(session(queue_messages=500, queue_over_since=NOW - 6), slow, now=NOW).code == 0x97
