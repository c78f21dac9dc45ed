"""Plans, several windows, per-API quotas and metering with real processes: Redis, a broker, paho
clients, the CLI (#19 items 3-7)."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from tests.helpers.mqtt import connect
from tests.helpers.wait import until
from tests.sidecar.helpers import fast_config


def wait_window(seconds: int, need: float) -> None:
    left = seconds - time.time() % seconds
    if left < need:
        time.sleep(left + 0.05)


@pytest.fixture
def watcher_of(start_broker, add_user, rds, prefix):
    add_user("root", "pw-root", "--superuser")

    def watch(port: int, filt: str):
        w = connect(port, "root", "pw-root")
        w.subscribe((filt, 1))
        return w

    return watch


def payloads(client, wait: float = 0.8) -> list[bytes]:
    return [m.payload for m in client.received(wait)]


def test_a_plan_change_applies_to_connected_clients_within_a_second(
    start_broker, add_user, cli, rds, prefix, tmp_path, watcher_of
):
    add_user("app", "pw")
    rds.hset(f"{prefix}acl:user:app", "app/#", "readwrite")
    assert cli("plan", "set", "bronze", "--events", "3/1h", "--events-direction", "in").returncode == 0
    assert cli("user", "set", "app", "--plan", "bronze").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path))
    watcher = watcher_of(broker.port, "app/#")
    dev = connect(broker.port, "app", "pw")
    for i in range(5):
        dev.publish("app/t", str(i), qos=1)
    assert payloads(watcher) == [b"0", b"1", b"2"]  # bronze: 3 an hour

    assert cli("plan", "set", "bronze", "--events", "1000/1h").returncode == 0
    n = 0

    def passes() -> bool:
        nonlocal n
        n += 1
        dev.publish("app/t", f"after-{n}", qos=1)
        return bool(watcher.received(0.05))

    assert until(passes, timeout=10, interval=0.02)  # the connected client is refused under the new plan
    info = json.loads(cli("quota", "show", "app", "--json").stdout)
    assert info["plan"] == "bronze" and info["limits"]["events"]["from"] == f"{prefix}quota:plan:bronze"
    dev.close()
    watcher.close()


def test_the_minute_window_trips_before_the_day_window(start_broker, add_user, cli, rds, prefix, tmp_path, watcher_of):
    add_user("m", "pw")
    rds.hset(f"{prefix}acl:user:m", "m/#", "readwrite")
    assert cli("quota", "set", "m", "--events", "3/5s,5/1d", "--events-direction", "in").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path))
    watcher = watcher_of(broker.port, "m/#")
    wait_window(5, 3)
    dev = connect(broker.port, "m", "pw")
    for i in range(5):
        dev.publish("m/t", f"a{i}", qos=1)
    assert payloads(watcher) == [b"a0", b"a1", b"a2"]  # the 5 s window is used up; the day has 2 left
    time.sleep(5 - time.time() % 5 + 0.3)
    for i in range(3):
        dev.publish("m/t", f"b{i}", qos=1)
    assert payloads(watcher) == [b"b0", b"b1"]  # now the day window: 5 in all
    usage = json.loads(cli("quota", "show", "m", "--json").stdout)["usage"]
    assert usage["events@1d"]["used"] >= 3 and usage["events@1d"]["window"] == "1d"
    dev.close()
    watcher.close()


def test_a_per_api_quota_counts_only_the_apis_messages(start_broker, add_user, cli, rds, prefix, tmp_path, watcher_of):
    add_user("t", "pw")
    rds.hset(f"{prefix}acl:user:t", "#", "readwrite")
    assert cli("quota", "set", "t", "--api", "stocks", "--events", "2/1h").returncode == 0
    assert cli("quota", "set", "t", "--events-direction", "in").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path))
    watcher = watcher_of(broker.port, "#")
    dev = connect(broker.port, "t", "pw")
    dev.publish("stocks/early", "early", qos=1)  # no API defined yet: no per-API limit applies
    assert payloads(watcher, 0.3) == [b"early"]
    assert cli("api", "add", "stocks", "stocks/#", "quotes/+/live").returncode == 0  # taken up by the running broker
    time.sleep(0.3)
    for topic in ("stocks/a", "quotes/x/live", "stocks/b", "quotes/y/live", "news/a", "news/b", "news/c"):
        dev.publish(topic, topic, qos=1)
    got = sorted(payloads(watcher))
    assert got == sorted([b"stocks/a", b"quotes/x/live", b"news/a", b"news/b", b"news/c"])
    broker.wait_log("api:stocks:events quota 2/1h used up")
    dev.close()
    watcher.close()


def test_the_export_totals_equal_the_traffic_sent(start_broker, add_user, cli, rds, prefix, tmp_path):
    add_user("a", "pw")
    add_user("b", "pw")
    for u in ("a", "b"):
        rds.hset(f"{prefix}acl:user:{u}", "#", "readwrite")
    assert cli("api", "add", "stocks", "stocks/#").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path))
    sub = connect(broker.port, "b", "pw", client_id="b-sub")
    sub.subscribe(("stocks/#", 1))
    pub = connect(broker.port, "a", "pw", client_id="a-pub")
    sent = {"stocks": (0, 0), "other": (0, 0)}
    for i in range(40):
        topic = "stocks/x" if i % 2 else "other/x"
        payload = b"p" * (i + 1)
        pub.publish(topic, payload, qos=1)
        n, b = sent["stocks" if i % 2 else "other"]
        sent["stocks" if i % 2 else "other"] = (n + 1, b + len(payload))
    until(lambda: sub.messages.qsize() == 20, timeout=5)
    pub.close()
    sub.close()
    broker.stop()  # a broker that stops writes what it counted last
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    rows = json.loads(cli("usage", "export", "--month", month, "--format", "json").stdout)
    total = {(r["user"], r["api"]): r for r in rows}  # (one day: the test runs in well under a day)

    def tot(user: str, api: str, f: str) -> int:
        return sum(r[f] for r in rows if r["user"] == user and r["api"] == api)

    ev_all = sent["stocks"][0] + sent["other"][0]
    by_all = sent["stocks"][1] + sent["other"][1]
    assert (tot("a", "", "events_in"), tot("a", "", "bytes_in")) == (ev_all, by_all)
    assert (tot("a", "stocks", "events_in"), tot("a", "stocks", "bytes_in")) == sent["stocks"]
    assert (tot("b", "", "events_out"), tot("b", "", "bytes_out")) == sent["stocks"]
    assert (tot("b", "stocks", "events_out"), tot("b", "stocks", "bytes_out")) == sent["stocks"]
    assert tot("a", "", "events_out") == 0 and tot("b", "", "events_in") == 0
    assert ("a", "") in total
    csv_out = cli("usage", "export", "--month", month, "--format", "csv").stdout
    assert csv_out.splitlines()[0] == "month,day,user,api,events_in,bytes_in,events_out,bytes_out"
    mine = json.loads(cli("usage", "a", "--month", month, "--json").stdout)
    assert mine["total"][""]["events_in"] == ev_all and mine["total"]["stocks"]["events_in"] == sent["stocks"][0]


def test_metering_adds_up_across_brokers_and_a_broker_restart(start_broker, add_user, cli, rds, prefix, tmp_path):
    """Each broker adds what it counted; a broker that stops writes its last counts, and one started again
    adds to the same month: the export holds every message once."""
    add_user("m", "pw")
    rds.hset(f"{prefix}acl:user:m", "#", "readwrite")
    config = fast_config(tmp_path)
    one, two = start_broker("--config", config), start_broker("--config", config)
    sent = 0
    for broker, n in ((one, 10), (two, 15)):
        c = connect(broker.port, "m", "pw")
        for _ in range(n):
            c.publish("meter/x", b"12345", qos=1)
        sent += n
        c.close()
    one.stop()
    again = start_broker("--config", config)  # a new broker process (its counts start at zero)
    c = connect(again.port, "m", "pw")
    for _ in range(5):
        c.publish("meter/x", b"12345", qos=1)
    sent += 5
    c.close()
    two.stop()
    again.stop()
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    rows = json.loads(cli("usage", "export", "--month", month, "--format", "json").stdout)
    mine = [r for r in rows if r["user"] == "m" and r["api"] == ""]
    assert sum(r["events_in"] for r in mine) == sent == 30
    assert sum(r["bytes_in"] for r in mine) == 5 * sent


def test_bad_input_gets_a_clear_answer(cli, add_user):
    add_user("u", "pw")
    r = cli("user", "set", "u", "--plan", "platinum")
    assert r.returncode == 1 and "plan 'platinum' does not exist" in r.stderr
    r = cli("group", "set", "ops", "--plan", "platinum")
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = cli("plan", "set", "gold", "--events", "100/1fortnight")
    assert r.returncode == 1 and "--events" in r.stderr and "1mo" in r.stderr
    r = cli("quota", "set", "u", "--events", "100/1m,5/1m")
    assert r.returncode == 1 and "given twice" in r.stderr
    r = cli("plan", "show", "nope")
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = cli("quota", "set", "u", "--api", "stocks", "--rate", "5/s")
    assert r.returncode == 1 and "only --events and --bytes" in r.stderr
    r = cli("api", "add", "stocks", "bad/#/x")
    assert r.returncode == 1 and "topic filter" in r.stderr
    r = cli("usage", "u", "--month", "2026-13")
    assert r.returncode == 1 and "YYYY-MM" in r.stderr
    assert cli("plan", "set", "gold", "--events", "100/1m,10000/1d,200000/1mo").returncode == 0
    assert cli("group", "set", "ops", "--plan", "gold").returncode == 0
    assert "200000/1mo" in cli("plan", "show", "gold").stdout
