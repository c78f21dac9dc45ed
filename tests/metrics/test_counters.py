"""Counters, drains and the time arithmetic behind rate history and load averages (no I/O)."""

from __future__ import annotations

import math

from mqtt_guard.auth.authenticator import Outcome
from mqtt_guard.metrics import counters as C
from mqtt_guard.metrics.counters import Counters
from mqtt_guard.metrics.rates import LoadAverage, bucket_range, bucket_start, next_boundary, sparkline
from mqtt_guard.store.stats import KIND_CLIENT, KIND_USER, Batch, batch_from_drain


def test_drain_gives_deltas_per_client_user_and_total_once():
    c = Counters()
    c.connected("a1", "alice", now=100.0)
    c.connected("a2", "alice", now=100.0)
    c.connected("anon", None, now=100.0)
    c.incr("a1", C.MSGS_IN, 3)
    c.incr("a2", C.MSGS_IN, 2)
    c.incr("anon", C.MSGS_IN)
    c.incr(None, C.PROTOCOL_ERRORS)
    d = c.drain(now=101.0)
    assert d.clients[("a1", "alice")] == {C.CONNECTS: 1, C.MSGS_IN: 3}
    assert d.clients[("anon", None)] == {C.CONNECTS: 1, C.MSGS_IN: 1}
    assert d.users == {"alice": {C.CONNECTS: 2, C.MSGS_IN: 5}}
    assert d.totals == {C.CONNECTS: 3, C.MSGS_IN: 6, C.PROTOCOL_ERRORS: 1}
    assert [e[0] for e in d.events] == ["connect"] * 3
    assert d.ended == 101.0
    again = c.drain(now=102.0)
    assert again.empty() and again.started == 101.0
    assert c.client("a1") == {C.CONNECTS: 1, C.MSGS_IN: 3}  # the live view keeps counting since connect
    assert c.total(C.MSGS_IN) == 6


def test_disconnected_client_state_is_dropped_after_the_drain_that_carries_its_last_counts():
    c = Counters()
    c.connected("a1", "alice")
    c.incr("a1", C.MSGS_OUT, 4)
    c.disconnected("a1")
    assert c.connected_count() == 0
    assert c.client("a1") == {C.CONNECTS: 1, C.MSGS_OUT: 4}  # not yet flushed
    d = c.drain()
    assert d.clients[("a1", "alice")][C.MSGS_OUT] == 4
    assert [e[0] for e in d.events] == ["connect", "disconnect"]
    assert c.client("a1") == {} and "a1" not in c.usernames and "a1" not in c.gauges and "a1" not in c._live


def test_counts_for_clients_that_are_not_connected_are_flushed_then_forgotten():
    c = Counters()
    c.incr("ghost", C.DROPPED_QUEUE_FULL, 2)  # e.g. a persistent session's queue overflowing while offline
    d = c.drain()
    assert d.clients == {("ghost", None): {C.DROPPED_QUEUE_FULL: 2}}
    assert c.client("ghost") == {} and not c._live


def test_reconnect_with_another_username_keeps_the_counts_apart():
    c = Counters()
    c.connected("dev", "alice")
    c.incr("dev", C.MSGS_IN)
    c.connected("dev", "bob")  # a take-over by another user before the flush
    c.incr("dev", C.MSGS_IN, 5)
    d = c.drain()
    assert d.clients[("dev", "alice")][C.MSGS_IN] == 1
    assert d.clients[("dev", "bob")][C.MSGS_IN] == 5
    assert d.users["alice"][C.MSGS_IN] == 1 and d.users["bob"][C.MSGS_IN] == 5


def test_auth_failures_are_never_per_client_and_per_user_only_for_existing_users():
    c = Counters()
    c.connected("ok", "alice")  # an accepted client keeps its own counters
    c.auth_failed("alice", Outcome.BAD_PASSWORD, known_user=True, address="10.0.0.1")
    c.auth_failed("alice", Outcome.BAD_PASSWORD, known_user=True, address="10.0.0.2")
    c.auth_failed("nobody", Outcome.UNKNOWN_USER, known_user=False, address="10.0.0.1")
    c.auth_failed(None, Outcome.UNKNOWN_USER, known_user=False, address=None)
    d = c.drain()
    assert d.clients == {("ok", "alice"): {C.CONNECTS: 1}}
    assert d.users == {"alice": {"auth_failed_bad_password": 2, C.CONNECTS: 1}}
    assert d.totals == {"auth_failed_bad_password": 2, "auth_failed_unknown_user": 2, C.CONNECTS: 1}
    assert d.failed_addresses == {"10.0.0.1": 2, "10.0.0.2": 1}
    assert d.failed_users == {"alice": 2, "nobody": 1}
    assert c.client("x1") == {} and set(c._live) == {"ok"}  # a refused client is never part of the live view
    d = c.drain()
    assert d.empty()


def test_failure_tables_are_bounded_per_window_and_the_overflow_is_counted():
    c = Counters(max_failed=3)
    for i in range(10):
        c.auth_failed(f"user-{i}" + "x" * 500, Outcome.UNKNOWN_USER, known_user=False, address=f"10.0.0.{i}")
    c.auth_failed("user-0" + "x" * 500, Outcome.UNKNOWN_USER, known_user=False, address="10.0.0.0")  # in: counted
    d = c.drain()
    assert d.failed_addresses == {"10.0.0.0": 2, "10.0.0.1": 1, "10.0.0.2": 1}
    assert len(d.failed_users) == 3 and max(map(len, d.failed_users)) == C.FAILED_USERNAME_CHARS
    assert d.totals[C.FAILURES_UNTRACKED] == 14 and d.totals["auth_failed_unknown_user"] == 11
    assert d.users == {}  # unknown users never get counters of their own
    c.auth_failed("late", Outcome.UNKNOWN_USER, known_user=False, address="10.0.0.9")  # a new window: room again
    assert c.drain().failed_addresses == {"10.0.0.9": 1}


def test_kick_reasons_are_a_fixed_set_whatever_the_wording():
    cases = {
        "user disabled": "user_disabled",
        "denied PUBLISH to 'a/b'": "denied_publish",
        "events quota 10/1d used up until 2026-01-02 00:00:00 UTC": "over_quota",
        "rate 5/s exceeded": "over_quota",
        "session time 60s exceeded (connected 61.0s)": "session_time",
        "slow consumer: 900 messages queued, more than max_queue 500 for 10s": "slow_consumer",
        "blocked: too noisy": "blocked",
        "kicked by an admin": "admin",
        "because I said so": "other",
        C.KICK_TAKEN_OVER: "taken_over",
    }
    for reason, slug in cases.items():
        assert C.kick_name(reason) == C.KICKED_PREFIX + slug, reason
        assert slug in C.KICK_REASONS


def test_gauges_are_emitted_only_when_they_change_and_only_for_connected_clients():
    c = Counters()
    c.connected("a1", "alice")
    c.set_gauge("a1", C.G_QUEUE_DEPTH, 3)
    c.set_gauge("nobody", C.G_QUEUE_DEPTH, 3)
    assert c.drain().gauges == {"a1": {C.G_QUEUE_DEPTH: 3}}
    c.set_gauge("a1", C.G_QUEUE_DEPTH, 3)
    assert c.drain().gauges == {}
    c.set_gauge("a1", C.G_QUEUE_DEPTH, 0)
    assert c.drain().gauges == {"a1": {C.G_QUEUE_DEPTH: 0}}


def test_batch_rates_go_to_the_bucket_the_window_started_in_and_merge_additively():
    c = Counters()
    c.connected("a1", "alice")
    c.drain(now=1_000_000_005.0)
    c.incr("a1", C.MSGS_IN, 7)
    c.incr("a1", C.MSGS_OUT, 2)
    b = batch_from_drain(c.drain(now=1_000_000_009.9))
    assert b.rates == {1_000_000_000: {(KIND_CLIENT, "a1"): [7, 2], (KIND_USER, "alice"): [7, 2]}}
    total = Batch()
    total.merge(b)
    total.merge(b)
    assert total.rates[1_000_000_000][(KIND_CLIENT, "a1")] == [14, 4]
    assert total.clients[("a1", "alice")][C.MSGS_IN] == 14
    assert b.rates[1_000_000_000][(KIND_CLIENT, "a1")] == [7, 2]  # merging copies, never aliases


def test_publish_errors_get_a_rate_history_per_reason_and_client():
    c = Counters()
    c.connected("a1", "alice")
    c.connected("a2", "alice")
    c.drain(now=1_000_000_005.0)
    assert batch_from_drain(c.drain(now=1_000_000_006.0)).rates == {}  # no errors, no messages: nothing
    c.incr("a1", C.DENIED_PUBLISH, 2)
    c.incr("a2", C.MSGS_IN, 1)
    c.incr("a2", C.DROPPED_QUEUE_FULL)
    b = batch_from_drain(c.drain(now=1_000_000_007.0))
    assert b.rates == {
        1_000_000_000: {
            ("error_acl_denied", "a1"): [2, 0],
            ("error_queue_full", "a2"): [1, 0],
            (KIND_CLIENT, "a2"): [1, 0],
            (KIND_USER, "alice"): [1, 0],
        }
    }


def test_bucket_arithmetic():
    assert bucket_start(1234.5, 10) == 1230
    assert next_boundary(1230.0, 10) == 1240
    assert next_boundary(1239.99, 10) == 1240
    r = bucket_range(3605.0, 10, 3600)
    assert len(r) == 360 and r[-1] == 3600 and r[0] == 10


def test_sparkline():
    assert sparkline([0, 0]) == "  "
    assert sparkline([0, 1, 8]) == " ▁█"
    assert len(sparkline(list(range(360)), 60)) == 60


def test_load_average_follows_mosquittos_formula():
    avg = LoadAverage()
    avg.update(0, now=0.0)
    avg.update(600, now=60.0)  # 600 messages in one minute
    e1 = math.exp(-1.0)
    assert math.isclose(avg.one, 600 * (1 - e1))
    assert math.isclose(avg.fifteen, 600 * (1 - math.exp(-60 / 900)))
    for minute in range(2, 30):
        avg.update(600 * minute, now=60.0 * minute)
    assert 590 < avg.one <= 600  # converges to the steady rate per minute
