"""Engine fixtures: an anonymous, allow-all mqtt-guard broker, plain amqtt 0.12.1 for comparison, and
the same scenario parametrised over both (`target`).

Tests written with `target` run against mqtt-guard and against plain amqtt (`.venv/bin/amqtt -c
cfg.yaml`, anonymous). The amqtt case is marked xfail(strict=True): it shows the flaw the test
guards against, and it would turn red if a future amqtt fixed it without us noticing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.servers import ROOT, BrokerProcess, free_port, wait_port

AMQTT = Path(sys.executable).with_name("amqtt")


@dataclass
class PlainAmqtt:
    port: int
    proc: subprocess.Popen
    log_path: str

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_plain_amqtt(tmp_path: Path, plugins: dict | None = None) -> PlainAmqtt:
    if not AMQTT.exists():
        pytest.skip("amqtt CLI not found next to the interpreter")
    port = free_port()
    import yaml

    cfg = tmp_path / f"amqtt-{port}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                "plugins": plugins or {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
        )
    )
    fd, log_path = tempfile.mkstemp(prefix="amqtt-", suffix=".log")
    log = os.fdopen(fd, "ab")
    proc = subprocess.Popen(
        [str(AMQTT), "-c", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    log.close()
    try:
        wait_port(port, proc=proc)
    except Exception:
        proc.kill()
        raise
    return PlainAmqtt(port, proc, log_path)


@pytest.fixture
def guard_config(tmp_path) -> Callable[..., str]:
    """Write a config file: anonymous clients allowed, ACL default allow, plus `extra` YAML."""

    def write(extra: str = "") -> str:
        path = tmp_path / f"guard-{free_port()}.yaml"
        path.write_text("auth:\n  allow_anonymous: true\nacl:\n  default: allow\n" + extra)
        return str(path)

    return write


@pytest.fixture
def anon_broker(start_broker, guard_config) -> Callable[..., BrokerProcess]:
    """An mqtt-guard broker anyone may use fully; `extra` is appended to its YAML config."""

    def start(extra: str = "") -> BrokerProcess:
        return start_broker("--config", guard_config(extra))

    return start


@pytest.fixture
def plain_amqtt(tmp_path) -> Iterator[Callable[..., PlainAmqtt]]:
    started: list[PlainAmqtt] = []

    def start(plugins: dict | None = None) -> PlainAmqtt:
        broker = start_plain_amqtt(tmp_path, plugins)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


def both(reason: str) -> list:
    """Parametrisation for `target`: mqtt-guard must pass, plain amqtt 0.12.1 must fail (reason)."""
    return ["mqtt-guard", pytest.param("amqtt", marks=pytest.mark.xfail(strict=True, reason=f"amqtt 0.12.1: {reason}"))]


def vs_mosquitto() -> list:
    """Parametrisation for `target`: the same raw packets to mqtt-guard and to the real mosquitto 2.0, the
    reference whose behaviour mqtt-guard copies (that case is skipped where mosquitto is not installed)."""
    from tests.compat.harness import needs_mosquitto

    return ["mqtt-guard", pytest.param("mosquitto", marks=needs_mosquitto)]


@pytest.fixture
def target(request, anon_broker, plain_amqtt, tmp_path):
    """The broker under test, by name: 'mqtt-guard' (anonymous, allow-all), 'amqtt' (plain) or
    'mosquitto' (the real one, anonymous; tests/compat/harness.py)."""
    extra = getattr(request, "param_extra", "")
    if request.param == "amqtt":
        yield plain_amqtt()
    elif request.param == "mosquitto":
        from tests.compat.harness import Mosquitto

        with Mosquitto(tmp_path, "allow_anonymous true") as broker:
            yield broker
    else:
        yield anon_broker(extra)


@pytest.fixture
def inproc(redis_server, prefix):
    """GuardedBroker running in a thread of the test process (for inspecting internals); stopped at teardown.
    Keyword arguments other than allow_anonymous/acl_default are `limits:` settings."""
    from mqtt_guard.config import LimitsConfig
    from tests.engine.inproc import InProcessBroker

    started: list[InProcessBroker] = []

    def start(*, allow_anonymous: bool = True, acl_default: str = "allow", **limits):
        broker = InProcessBroker(
            redis_server.url,
            prefix,
            limits=LimitsConfig(**limits),
            allow_anonymous=allow_anonymous,
            acl_default=acl_default,
        ).start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()
