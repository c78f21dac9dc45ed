"""Windows: calendar months against a datetime oracle, several windows per limit, slots (#19 item 4)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.quota.limits import api_of, base_metric, parse_limits, parse_windows, slot_names
from mqtt_guard.quota.windows import parse_window


def oracle_month_start(ts: float, count: int) -> dt.datetime:
    """The naive model: walk to the 1st of the month, then back to a multiple of `count` months since 1970."""
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    index = (d.year - 1970) * 12 + d.month - 1
    index -= index % count
    return dt.datetime(1970 + index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def add_months(d: dt.datetime, n: int) -> dt.datetime:
    index = d.year * 12 + d.month - 1 + n
    return d.replace(year=index // 12, month=index % 12 + 1)


instants = st.integers(min_value=0, max_value=4_102_444_800)  # 1970 .. 2100


@settings(max_examples=400, deadline=None)
@given(instants, st.sampled_from([1, 2, 3, 6, 12]))
def test_month_windows_match_the_calendar(ts, count):
    w = parse_window(f"{count}mo")
    start = oracle_month_start(ts, count)
    assert w.start(ts) == start.timestamp()
    assert w.end(ts) == add_months(start, count).timestamp()
    assert w.start(ts) <= ts < w.end(ts)
    assert w.start(w.end(ts)) == w.end(ts)  # the next window begins where this one ends


@pytest.mark.parametrize(
    "now,start,end",
    [
        ("2026-02-14T10:00:00", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
        ("2024-02-29T23:59:59", "2024-02-01T00:00:00", "2024-03-01T00:00:00"),  # leap day
        ("2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("2027-01-01T00:00:00", "2027-01-01T00:00:00", "2027-02-01T00:00:00"),
    ],
)
def test_one_month(now, start, end):
    def ts(text: str) -> float:
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()

    w = parse_window("1mo")
    assert (w.start(ts(now)), w.end(ts(now))) == (ts(start), ts(end))


def test_several_windows_per_limit():
    ws = parse_windows("100/1m,10000/1d,200000/1mo")
    assert [str(a) for a in ws] == ["100/1m", "10000/1d", "200000/1mo"]
    assert [s for s, _ in slot_names("events", ws)] == ["events", "events@1d", "events@1mo"]
    limits = parse_limits({"events": "100/1m,10000/1d", "bytes": "1MB/1h", "api:stocks:events": "5/1m,50/1d"}, None)
    assert str(limits.events) == "100/1m" and str(limits.bytes) == "1000000/1h"
    assert [s for s, _ in limits.slots()] == [
        "events",
        "bytes",
        "api:stocks:events",
        "api:stocks:events@1d",
        "events@1d",
    ]
    assert str(limits.allowance("events@1d")) == "10000/1d" and limits.apis == {"stocks"}
    assert base_metric("api:x:bytes@1d") == "bytes" and base_metric("events@1mo") == "events"
    assert api_of("api:x:bytes@1d") == "x" and api_of("events") is None


@pytest.mark.parametrize(
    "bad,reason",
    [
        ("100/1m,", "comma-separated"),
        ("100/1m,200/1m", "given twice"),
        ("100/1y", "1mo"),
        ("100/0mo", "1mo"),
        ("lots/1d", "N/WINDOW"),
    ],
)
def test_a_window_that_does_not_parse_says_why(bad, reason):
    with pytest.raises(ValueError, match=reason):
        parse_windows(bad)
