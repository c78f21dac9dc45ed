"""Issue 21, item 4: the probes. /livez never looks at Redis; /readyz means "listeners open, not draining,
and Redis reachable or the configured fail mode still admitting clients"; both are served with /metrics
or alone on `metrics.health_bind` (prometheus_client is then never imported)."""

from __future__ import annotations

import pytest
import yaml

from mqtt_guard.metrics.health import BrokerReadiness
from tests.helpers.http import http_get, status, wait_http
from tests.helpers.servers import RedisServer, free_port
from tests.helpers.wait import expect


def test_readiness_reasons_in_order():
    redis = [False]
    deny = BrokerReadiness(lambda: redis[0], serves_without_redis=False)
    assert deny() == "starting: listeners not open yet\n"
    deny.listening = True
    assert deny() == "redis unreachable (auth.on_redis_down: deny)\n"
    redis[0] = True
    assert deny() is None
    deny.draining = True
    assert deny() == "draining: shutting down\n"
    cached = BrokerReadiness(lambda: None, serves_without_redis=True)  # None: Redis not tried yet
    cached.listening = True
    assert cached() is None


def test_health_bind_serves_the_probes_without_metrics(start_broker, tmp_path):
    hport = free_port()
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump({"metrics": {"health_bind": f"127.0.0.1:{hport}", "flush_interval": "0.2s"}}))
    broker = start_broker("-c", str(cfg))
    wait_http(hport, "/livez")
    assert http_get(hport, "/livez")[::2] == (200, "ok\n")
    expect(lambda: status(hport, "/readyz") == 200)
    assert status(hport, "/healthz") == 200
    assert http_get(hport, "/metrics")[0] == 404  # metrics stay off
    assert f"serving health probes on http://127.0.0.1:{hport}" in broker.log()
    assert "Prometheus" not in broker.log()


@pytest.fixture
def own_redis():
    server = RedisServer(persistent=True).start()  # its data survives the restart (generation marker)
    yield server
    server.cleanup()


@pytest.mark.parametrize("mode,ready_while_down", [("deny", 503), ("cached", 200)])
def test_readiness_in_a_redis_outage_follows_the_fail_mode(start_broker, own_redis, tmp_path, mode, ready_while_down):
    """Under `deny` a broker without Redis refuses every CONNECT: not ready. Under `cached` it still admits
    clients it verified recently: ready. /livez is 200 either way (an outage must not restart brokers)."""
    mport = free_port()
    cfg = tmp_path / "b.yaml"
    # the probes on the metrics port too, with health_bind equal to it (one server)
    section = {"prometheus_bind": f"127.0.0.1:{mport}", "health_bind": f"127.0.0.1:{mport}", "flush_interval": "0.2s"}
    cfg.write_text(yaml.safe_dump({"metrics": section, "auth": {"on_redis_down": mode}}))
    start_broker("-c", str(cfg), redis_url=own_redis.url)
    wait_http(mport)
    expect(lambda: status(mport, "/readyz") == 200)
    own_redis.stop()
    from tests.metrics.conftest import metric, scrape

    expect(lambda: metric(scrape(mport), "mqtt_guard_redis_up") == 0)
    assert status(mport, "/readyz") == ready_while_down
    assert status(mport, "/livez") == 200
    if mode == "deny":
        assert "redis unreachable" in http_get(mport, "/readyz")[2]
    own_redis.start()
    expect(lambda: status(mport, "/readyz") == 200, timeout=20)
