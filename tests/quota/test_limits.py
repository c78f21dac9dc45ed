"""Quota field syntax, merging user over default, and UTC-aligned windows."""

from __future__ import annotations

import datetime as dt

import pytest

from mqtt_guard.quota.bucket import TokenBucket
from mqtt_guard.quota.ledger import lease_block
from mqtt_guard.quota.limits import normalize, parse_bytes, parse_events, parse_limits, parse_rate
from mqtt_guard.quota.windows import parse_window, utc


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def test_field_syntax():
    e = parse_events("10000/1d")
    assert (e.limit, e.window.seconds, str(e)) == (10000, 86400, "10000/1d")
    assert parse_events("10/m").window.seconds == 60
    b = parse_bytes("50MB/1d")
    assert (b.limit, b.window.seconds) == (50_000_000, 86400)
    assert parse_bytes("1MiB/12h").limit == 1024 * 1024
    r = parse_rate("5/s:20")
    assert (r.per_second, r.burst) == (5, 20)
    assert (parse_rate("5").burst, parse_rate("120/m").per_second, parse_rate("0.5/s").burst) == (5, 2, 1)
    for bad in ("10000", "10/1y", "x/1d", "-1/1d", "10/0d"):
        with pytest.raises(ValueError):
            parse_events(bad)
    for bad in ("fast", "5/s:0", "0/s", "5/d"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_user_fields_override_default_and_none_removes_a_default_limit():
    default = {"events": "1000/1d", "session_time": "1h", "on_exceed": "disconnect", "rate": "5/s"}
    limits = parse_limits({"events": "10/1m", "session_time": "none"}, default)
    assert str(limits.events) == "10/1m" and limits.session_time is None
    assert limits.on_exceed == "disconnect" and limits.rate is not None and limits.rate.per_second == 5
    assert limits.events_direction == "both" and limits.counts_in and limits.counts_out
    only_default = parse_limits(None, default)
    assert str(only_default.events) == "1000/1d" and only_default.session_time == 3600


def test_malformed_user_value_falls_back_to_the_default_and_is_reported():
    limits = parse_limits({"events": "lots", "sessions": "0", "bogus_field": "x"}, {"events": "100/1h"})
    assert str(limits.events) == "100/1h" and limits.sessions is None
    assert len(limits.problems) == 2 and any("events" in p for p in limits.problems)


def test_normalize_is_what_the_cli_accepts():
    assert normalize("events", " 10/1m ") == "10/1m"
    assert normalize("session_time", "NONE") == "none"
    with pytest.raises(ValueError, match="cannot be 'none'"):
        normalize("on_exceed", "none")
    with pytest.raises(ValueError, match="unknown quota field"):
        normalize("speed", "1")
    with pytest.raises(ValueError):
        normalize("events_direction", "sideways")


@pytest.mark.parametrize(
    "window,now,start",
    [
        ("1d", "2026-03-04T17:30:00", "2026-03-04T00:00:00"),
        ("1h", "2026-03-04T17:30:05", "2026-03-04T17:00:00"),
        ("15m", "2026-03-04T17:44:59", "2026-03-04T17:30:00"),
        ("2h", "2026-03-04T17:30:00", "2026-03-04T16:00:00"),
        ("30s", "2026-03-04T17:30:45", "2026-03-04T17:30:30"),
        ("1w", "2026-03-04T17:30:00", "2026-03-02T00:00:00"),  # Wednesday -> Monday 00:00 UTC
        ("1w", "2026-03-02T00:00:00", "2026-03-02T00:00:00"),
        ("1w", "2026-03-01T23:59:59", "2026-02-23T00:00:00"),  # Sunday belongs to the week before
    ],
)
def test_windows_are_aligned_to_utc(window, now, start):
    w = parse_window(window)
    assert w.start(ts(now)) == ts(start)
    assert w.end(ts(now)) == ts(start) + w.seconds
    assert utc(w.start(ts(now))) == start + "Z"


def test_lease_block_takes_a_share_but_all_of_a_small_limit():
    assert lease_block(10, 0.1, 100) == 10
    assert lease_block(10_000, 0.1, 100) == 1000
    assert lease_block(10_000, 0.001, 100) == 100
    assert lease_block(0, 0.1, 100) == 0


def test_token_bucket_burst_then_rate():
    now = [100.0]
    bucket = TokenBucket(2.0, 3.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back at 2/s
    assert bucket.take() and not bucket.take()
    now[0] += 10  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    bucket.give_back()
    assert bucket.take()
    bucket.reconfigure(1.0, 1.0)
    now[0] += 1
    assert bucket.take() and not bucket.take()
