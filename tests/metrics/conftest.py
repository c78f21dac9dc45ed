"""Brokers with analytics switched on: a YAML config with a `metrics:` section (the $SYS plugin is
loaded by every broker)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.servers import BrokerProcess, free_port
from tests.helpers.wait import until


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


def wait_http(port: int, timeout: float = 10.0) -> None:
    def serving() -> bool:
        try:
            http_get(port, "/metrics")
        except (OSError, urllib.error.URLError):
            return False
        return True

    if not until(serving, timeout, interval=0.05):
        http_get(port, "/metrics")  # once more, so the test fails with the connection error itself


def http_get(port: int, path: str, accept: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


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
