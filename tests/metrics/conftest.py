"""Brokers with analytics switched on: a YAML config with a `metrics:` section (the $SYS plugin is
loaded by every broker)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.http import http_get, wait_http
from tests.helpers.servers import BrokerProcess, free_port

__all__ = ["http_get", "wait_http"]  # the tests here import them from this module too


@pytest.fixture
def metrics_broker(start_broker, tmp_path: Path) -> Callable[..., BrokerProcess]:
    """Start a broker whose /metrics port is `broker.metrics_port`; keyword arguments go to `metrics:`."""
    count = [0]

    def start(*, throttle: bool = True, **metrics: Any) -> BrokerProcess:
        """`throttle=False`: login throttling off, for tests of what refused CONNECTs count."""
        count[0] += 1
        mport = free_port()
        section = {"prometheus_bind": f"127.0.0.1:{mport}", "flush_interval": "0.2s", "sys_interval": "1s"}
        section.update(metrics)
        path = tmp_path / f"broker{count[0]}.yaml"
        doc: dict[str, Any] = {"metrics": section}
        if not throttle:
            doc["auth"] = {"throttle": {"enabled": False}}
        path.write_text(yaml.safe_dump(doc))
        broker = start_broker("-c", str(path))
        broker.metrics_port = mport  # type: ignore[attr-defined]  # the test remembers the /metrics port on the broker handle
        wait_http(mport)
        return broker

    return start


def cli_json(cli, *args: str) -> Any:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it with prometheus_client's own parser: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, ctype, body = http_get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))
