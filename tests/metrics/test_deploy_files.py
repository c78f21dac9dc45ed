"""deploy/grafana/mqtt-guard.json and deploy/prometheus.yml only use metrics the exporters really produce."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mqtt_guard.metrics.fleet import FleetCollector, FleetMonitor
from mqtt_guard.metrics.prometheus import LagCollector
from mqtt_guard.metrics.rates import LoopLagMonitor
from mqtt_guard.store.keys import Keys
from tests.helpers.mqtt import connect
from tests.helpers.wait import expect
from tests.metrics.conftest import scrape

ROOT = Path(__file__).resolve().parents[2]


def fleet_names() -> set[str]:
    monitor = FleetMonitor(None, Keys("x:"))
    monitor.totals = {"messages_in": 1, "messages_out": 1}
    monitor.brokers = [("b1", 0.0, {"clients_connected": "1"})]
    monitor.redis_up, monitor.latency, monitor.refreshed = True, 0.001, 1.0
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(monitor))
    registry.register(LagCollector(LoopLagMonitor(), "mqtt_guard_sidecar_loop_lag_seconds"))
    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_metric_in_the_dashboard_exists(metrics_broker, add_user, rds, prefix):
    add_user("alice", "pw")
    rds.hset(f"{prefix}acl:user:alice", "a/#", "readwrite")
    broker = metrics_broker(top_n=5, per_user_allowlist=["alice"])
    c = connect(broker.port, "alice", "pw", client_id="dash-1")
    c.publish("a/x", b"x", qos=1)
    expect(lambda: any(name.startswith("mqtt_guard_user_") for name, _ in scrape(broker.metrics_port)))
    names = {name for name, _ in scrape(broker.metrics_port)} | fleet_names()
    c.close()

    dashboard = json.loads((ROOT / "deploy/grafana/mqtt-guard.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used = set()
    for p in panels:
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p.get("targets", []):
            used |= set(re.findall(r"\bmqtt_guard_[a-z0-9_]+", t["expr"]))
    assert used, "no expressions found"
    missing = sorted(used - names)
    assert not missing, f"dashboard uses metrics nobody exports: {missing}"


def test_prometheus_example_is_valid_yaml_scraping_metrics():
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["mqtt-guard"]["metrics_path"] == "/metrics"
    assert all(":" in t for job in jobs.values() for sc in job["static_configs"] for t in sc["targets"])
