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


def _book(fields: dict[str, str], clients: int):
    import time

    from mqtt_guard.acl.policy import Subject
    from mqtt_guard.config import QuotaConfig
    from mqtt_guard.guard_client import GuardClient
    from mqtt_guard.metrics.counters import Counters
    from mqtt_guard.quota.allowance import Allowances, ClientQuota, UserQuota
    from mqtt_guard.quota.apis import Apis
    from mqtt_guard.quota.limits import parse_limits
    from mqtt_guard.store.keys import Keys

    book = Allowances(QuotaConfig(), Keys("t:"), Counters(), lambda: None, lambda *a: None, time.time)
    book.apis = Apis({"stocks": ("stocks/#",), "all": ("#",)})
    user = book.users["u"] = UserQuota("u", parse_limits(fields, {}))
    book.set_entries(user, time.time())
    for e in user.current.values():
        e.held, e.synced = 1_000_000, True
    out = []
    for i in range(clients):
        c = GuardClient(f"u-{i}", "u", Subject(username="u", client_id=f"u-{i}"))
        book.clients[c.client_id] = user.clients[c.client_id] = ClientQuota(c, f"c{i}", time.time(), user=user)
        out.append(c)
    book.version += 1
    return book, user, out


def test_every_delivery_path_meters_per_api_what_it_admits():
    from mqtt_guard.quota.stretch import DeliveryGroup, open_stretch, settle_stretch

    for fields in ({"events": "1000/1d"}, {"events": "1000/1d", "api:stocks:events": "1000/1d"}):
        book, user, clients = _book(fields, 3)
        group = DeliveryGroup(book, clients, "stocks/x")
        assert group.apis == ("all", "stocks")
        assert group.admit("stocks/x", 10) is None  # exact per message
        st = open_stretch(book, None, 400, 2000)
        if group.reserve(st):  # (never with a per-API limit: exact path)
            group.n += 2
            group.b += 20
        else:
            for _ in range(2):
                assert group.admit("stocks/x", 10) is None
        settle_stretch(book, st)
        assert book.admit_delivery(clients[0], "stocks/y", 5)
        assert user.api_meter == {"all": [0, 0, 10, 95], "stocks": [0, 0, 10, 95]}  # 9 x 10 B + 5 B
        assert sum(cq.usage["events_out"] for cq in user.clients.values()) == 10
