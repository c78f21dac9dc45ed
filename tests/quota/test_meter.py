"""Metering (quota/meter.py): folds, batches, retries under the same id, fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from mqtt_guard.quota.meter import Meter, increments, parse_field


@dataclass
class Client:
    usage: dict[str, int] = field(
        default_factory=lambda: {"events_in": 0, "bytes_in": 0, "events_out": 0, "bytes_out": 0}
    )
    metered: dict[str, int] = field(default_factory=dict)


def test_folds_count_each_message_once_and_keep_the_day_of_the_fold():
    now = [1_796_083_200.0 - 1]  # 2026-12-01 00:00 UTC minus a second
    m = Meter(clock=lambda: now[0])
    c = Client()
    c.usage.update(events_in=3, bytes_in=30)
    m.fold_client("u", c)
    m.fold_client("u", c)  # nothing new
    now[0] += 2
    c.usage.update(events_in=5, bytes_in=50, events_out=1, bytes_out=7)
    m.fold_client("u", c)
    api = {"stocks": [1, 10, 0, 0]}
    m.fold_apis("u", api)
    assert api == {}
    seq, batch = m.take()
    assert seq == 1
    assert batch == {
        ("2026-11-30", "u", ""): [3, 30, 0, 0],
        ("2026-12-01", "u", ""): [2, 20, 1, 7],
        ("2026-12-01", "u", "stocks"): [1, 10, 0, 0],
    }
    assert sorted(increments(batch))[:2] == [("2026-11", "u", "30::bi", 30), ("2026-11", "u", "30::ei", 3)]
    m.fold_client(None, c)  # anonymous: not metered
    assert m.take() == (1, batch)  # not done: the same batch again, same id (the retry is a no-op in Redis)
    m.done()
    assert m.take() is None


def test_fields():
    assert parse_field("07:stocks:ei") == (7, "stocks", "ei")
    assert parse_field("31::bo") == (31, "", "bo")
    assert parse_field("used") is None and parse_field("07:x:zz") is None
