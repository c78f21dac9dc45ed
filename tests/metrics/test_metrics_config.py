"""The `metrics:` section is validated as strictly as the rest of the configuration."""

from __future__ import annotations

import pytest

from mqtt_guard.config import ConfigError, ListenerConfig, load_config


def load(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    config = load_config(p)
    config.listeners = [ListenerConfig(bind="127.0.0.1:1883")]
    config.check()
    return config


def test_defaults_and_a_full_section(tmp_path):
    m = load(tmp_path, "{}").metrics
    assert (m.flush_interval, m.prometheus_bind, m.top_n, m.sys_interval) == (1.0, None, 0, 10.0)
    m = load(
        tmp_path,
        """
metrics:
  flush_interval: 500ms
  prometheus_bind: 0.0.0.0:9883
  per_client_allowlist: [gateway-*, line-7]
  per_user_allowlist: [ops]
  top_n: 10
  sys_interval: 30s
  broker_id: edge-1
  stats_ttl: 7d
  max_backlog: 50000
  max_failed_addresses: 500
""",
    ).metrics
    assert m.flush_interval == 0.5 and m.prometheus_bind == "0.0.0.0:9883" and m.stats_ttl == 7 * 86400
    assert m.per_client_allowlist == ["gateway-*", "line-7"] and m.top_n == 10 and m.broker_id == "edge-1"
    assert m.max_failed_addresses == 500 and load(tmp_path, "{}").metrics.max_failed_addresses == 10_000


def test_health_bind_and_drain_grace(tmp_path):
    defaults = load(tmp_path, "{}")
    assert defaults.metrics.health_bind is None and defaults.shutdown.drain_grace == 0
    c = load(tmp_path, "metrics: {health_bind: 0.0.0.0:8080}\nshutdown: {drain_grace: 30s}\n")
    assert c.metrics.health_bind == "0.0.0.0:8080" and c.shutdown.drain_grace == 30


@pytest.mark.parametrize(
    "text,message",
    [
        ("metrics: {flush_intervall: 1}", "unknown key 'metrics.flush_intervall'"),
        ("metrics: {prometheus_bind: 9883}", "metrics.prometheus_bind: must be a string"),
        ("metrics: {prometheus_bind: 'localhost'}", "metrics.prometheus_bind: bind must be HOST:PORT"),
        ("metrics: {flush_interval: 30s}", "metrics.flush_interval: must be between"),
        ("metrics: {top_n: -1}", "top_n must be >= 0"),
        ("metrics: {per_client_allowlist: gateway}", "metrics.per_client_allowlist: must be a list"),
        ("metrics: {sys_interval: 0.5}", "metrics.sys_interval"),
        ("metrics: {max_failed_addresses: 0}", "metrics.max_failed_addresses: at least 1"),
        ("metrics: {health_bind: 'localhost'}", "metrics.health_bind: bind must be HOST:PORT"),
        ("shutdown: {drain_grace: 2h}", "shutdown.drain_grace: between 0 and 1h"),
        ("shutdown: {drain_grace: soon}", "shutdown.drain_grace: expected a duration"),
        ("shutdown: {grace: 1}", "unknown key 'shutdown.grace'"),
    ],
)
def test_mistakes_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load(tmp_path, text)


def test_the_broker_refuses_a_bad_metrics_section(tmp_path, cli):
    p = tmp_path / "c.yaml"
    p.write_text("metrics: {prometheus_bind: nowhere}\n")
    result = cli("broker", "-c", str(p), "--bind", "127.0.0.1:0")
    assert result.returncode == 1 and "metrics.prometheus_bind" in result.stderr
