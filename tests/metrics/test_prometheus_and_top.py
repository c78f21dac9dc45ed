"""Scraping /metrics (label sets bounded by default, top-N, backend health while Redis is down) and
`mqtt-guard top` rendered at a fixed width."""

from __future__ import annotations

import pytest

from tests.helpers.mqtt import connect
from tests.helpers.servers import RedisServer, run_cli
from tests.helpers.wait import expect
from tests.metrics.conftest import cli_json, http_get, metric, scrape


def publish(client, n: int, topic: str = "a/x") -> None:
    for _ in range(n):
        client.publish(topic, b"x", qos=1)


def client_ids(samples: dict) -> set[str]:
    return {dict(labels)["client_id"] for _, labels in samples if "client_id" in dict(labels)}


def test_no_per_client_series_by_default_and_top_n_picks_the_busiest(metrics_broker, add_user, rds, prefix):
    add_user("alice", "pw")
    rds.hset(f"{prefix}acl:user:alice", "a/#", "readwrite")
    plain = metrics_broker()
    c = connect(plain.port, "alice", "pw", client_id="fast-0")
    publish(c, 5)
    expect(lambda: metric(scrape(plain.metrics_port), "mqtt_guard_messages_received_total") == 5)
    assert client_ids(scrape(plain.metrics_port)) == set()
    c.close()

    ranked = metrics_broker(top_n=1)
    fast = connect(ranked.port, "alice", "pw", client_id="fast-1")
    slow = connect(ranked.port, "alice", "pw", client_id="slow-1")
    publish(slow, 1)
    publish(fast, 30)
    expect(lambda: client_ids(scrape(ranked.metrics_port)) == {"fast-1"})
    m = scrape(ranked.metrics_port)
    assert metric(m, "mqtt_guard_client_messages_received_total", client_id="fast-1", username="alice") == 30
    assert metric(m, "mqtt_guard_client_message_rate", client_id="fast-1", username="alice") > 0
    assert metric(m, "mqtt_guard_client_connected_since_seconds", client_id="fast-1", username="alice") > 0
    assert metric(m, "mqtt_guard_client_queue_depth", client_id="fast-1", username="alice") == 0
    fast.close()
    slow.close()


def test_exposition_formats_health_and_errors(metrics_broker):
    broker = metrics_broker()
    status, ctype, body = http_get(broker.metrics_port, "/metrics")
    assert status == 200 and "# TYPE mqtt_guard_messages_received_total counter" in body
    assert "process_cpu_seconds_total" in body  # the process collector comes along
    status, ctype, body = http_get(broker.metrics_port, "/metrics", accept="application/openmetrics-text")
    assert status == 200 and ctype.startswith("application/openmetrics-text") and body.rstrip().endswith("# EOF")
    for probe in ("/livez", "/readyz", "/healthz"):
        assert http_get(broker.metrics_port, probe)[:1] == (200,), probe
    assert http_get(broker.metrics_port, "/nope")[0] == 404
    m = scrape(broker.metrics_port)
    assert metric(m, "mqtt_guard_redis_latency_seconds") >= 0
    assert metric(m, "mqtt_guard_redis_command_duration_seconds_count", op="ping") >= 1
    assert metric(m, "mqtt_guard_event_loop_lag_seconds") is not None
    assert metric(m, "mqtt_guard_load_per_minute", counter="messages_in", window="1min") == 0


@pytest.fixture
def own_redis():
    server = RedisServer(persistent=True).start()
    yield server
    server.cleanup()


def test_redis_outage_shows_in_metrics_and_health_and_counts_arrive_afterwards(
    own_redis, start_broker, prefix, tmp_path
):
    assert run_cli(own_redis.url, prefix, "user", "add", "alice", "--password-stdin", input="pw\n").returncode == 0
    r = own_redis.client()
    r.hset(f"{prefix}acl:user:alice", "a/#", "readwrite")
    import yaml

    from tests.helpers.servers import free_port

    mport = free_port()
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump({"metrics": {"prometheus_bind": f"127.0.0.1:{mport}", "flush_interval": "0.2s"}}))
    broker = start_broker("-c", str(cfg), redis_url=own_redis.url)
    c = connect(broker.port, "alice", "pw", client_id="dev-1")
    publish(c, 3)
    expect(lambda: r.hget(f"{prefix}stats:client:dev-1", "messages_in") == "3")
    r.close()
    own_redis.stop()
    publish(c, 4)  # connected clients keep working while Redis is down
    expect(lambda: metric(scrape(mport), "mqtt_guard_redis_up") == 0)
    m = scrape(mport)
    assert metric(m, "mqtt_guard_stats_backlog") > 0 and metric(m, "mqtt_guard_stats_flush_failures_total") >= 1
    assert http_get(mport, "/healthz")[0] == 503
    assert http_get(mport, "/readyz")[0] == 503  # not ready while Redis is away ...
    assert http_get(mport, "/livez")[0] == 200  # ... but alive: an outage must not get the broker restarted
    own_redis.start()
    r = own_redis.client()
    expect(lambda: r.hget(f"{prefix}stats:client:dev-1", "messages_in") == "7", timeout=20)
    expect(lambda: http_get(mport, "/healthz")[0] == 200)
    assert metric(scrape(mport), "mqtt_guard_stats_backlog") == 0
    r.close()
    c.close()


def test_top_renders_at_a_fixed_width(metrics_broker, add_user, rds, prefix, cli):
    add_user("alice", "pw")
    add_user("bob", "pw")
    rds.hset(f"{prefix}acl:user:alice", "a/#", "readwrite")
    rds.hset(f"{prefix}acl:user:bob", "a/#", "readwrite")
    broker = metrics_broker()
    fast = connect(broker.port, "alice", "pw", client_id="sensor-fast")
    slow = connect(broker.port, "bob", "pw", client_id="sensor-slow")
    publish(fast, 40)
    publish(slow, 4)
    publish(slow, 2, topic="zz/denied")
    expect(lambda: [r["id"] for r in cli_json(cli, "top", "--json")["rows"]] == ["sensor-fast", "sensor-slow"])
    result = cli("top", "--once", "--width", "100")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert lines[0].startswith("busiest clients over the last") and "1/1 brokers alive" in lines[0]
    header = next(line for line in lines if "client" in line and "in/s" in line)
    assert header.split()[:4] == ["client", "user", "in/s", "out/s"]
    rows = [line.split() for line in lines if line.strip().startswith("sensor-")]
    assert [r[0] for r in rows] == ["sensor-fast", "sensor-slow"]
    assert rows[0][1] == "alice" and rows[0][4] == "40" and rows[1][4] == "6"
    assert rows[1][6] == "2"  # acl denied
    users = cli("top", "--once", "--users", "--width", "80")
    assert users.returncode == 0 and [
        ln.split()[0] for ln in users.stdout.splitlines() if ln.strip().startswith(("alice", "bob"))
    ] == ["alice", "bob"]
    human = cli("stats", "sensor-slow")
    assert human.returncode == 0, human.stderr
    text = human.stdout
    assert "client sensor-slow (user bob)" in text and "connected on" in text
    assert any(line.split()[:2] == ["messages_in", "6"] for line in text.splitlines())
    assert "publish error: acl_denied" in text and "rate, last hour [" in text
    fast.close()
    slow.close()


def test_cli_errors_and_empty_views(cli):
    result = cli("stats", "nobody")
    assert result.returncode == 1 and "no stats for client id or username 'nobody'" in result.stderr
    assert cli("stats", "nobody", "--user").stderr.count("username 'nobody'") == 1
    empty = cli("top", "--once", "--width", "90")
    assert empty.returncode == 0 and "(no messages in the last seconds)" in empty.stdout
    assert cli_json(cli, "top", "--json")["rows"] == []
