"""`mqtt-guard broker --workers N` (mqtt_guard/workers.py, issue 18 item 4): N broker processes on one
port, seen from outside as one broker: probes answered for all of them, a worker that dies started
again, SIGTERM stopping everything with exit code 0."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from mqtt_guard.config import ConfigError, load_config, parse_workers
from mqtt_guard.store.keys import Keys
from tests.helpers.http import http_get, status
from tests.helpers.mqtt import connect
from tests.helpers.servers import free_port, guard_cmd
from tests.helpers.wait import expect


def test_workers_count_is_a_number_or_auto(tmp_path):
    assert parse_workers("auto") == (os.cpu_count() or 1)
    assert parse_workers(3) == 3 and parse_workers("2") == 2
    for bad in (0, -1, "many", True, 1000):
        with pytest.raises(ValueError, match="whole number"):
            parse_workers(bad)
    f = tmp_path / "g.yaml"
    f.write_text("workers: auto\n")
    assert load_config(f).workers == (os.cpu_count() or 1)
    f.write_text("workers: zero\n")
    with pytest.raises(ConfigError, match="workers"):
        load_config(f)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


class Supervised:
    def __init__(self, redis_url: str, prefix: str, tmp_path: Path, workers: int) -> None:
        self.port, self.health = free_port(), free_port()
        config = tmp_path / "guard.yaml"
        config.write_text(f"workers: {workers}\nmetrics:\n  health_bind: 127.0.0.1:{self.health}\n")
        fd, self.log_path = tempfile.mkstemp(prefix="mqg-workers-", suffix=".log")
        self.log_file = os.fdopen(fd, "w")
        cmd = guard_cmd("--redis-url", redis_url, "--prefix", prefix, "broker", "--config", str(config))
        self.proc = subprocess.Popen([*cmd, "--bind", f"127.0.0.1:{self.port}"], stderr=self.log_file)

    def log(self) -> str:
        return Path(self.log_path).read_text()

    def ready(self) -> bool:
        return status(self.health, "/readyz") == 200

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log_file.close()
        return code


@pytest.fixture
def supervised(redis_server, prefix, tmp_path):
    started: list[Supervised] = []

    def start(workers: int) -> Supervised:
        s = Supervised(redis_server.url, prefix, tmp_path, workers)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def test_two_workers_serve_one_port_and_answer_the_probes_as_one(supervised, add_user, rds, prefix):
    add_user("dev", "pw")
    broker = supervised(2)
    expect(broker.ready, timeout=60)
    assert http_get(broker.health, "/livez")[0] == 200
    workers = _children(broker.proc.pid)
    assert len(workers) == 2
    clients = [connect(broker.port, "dev", "pw", client_id=f"w-{i}") for i in range(24)]
    assert [c.rc for c in clients] == [0] * 24
    keys = Keys(prefix)
    # each worker is a broker of its own in the session registry, and the kernel spread the clients
    owners = expect(lambda: {rds.hget(keys.session(f"w-{i}"), "broker") for i in range(24)} - {None}, timeout=15)
    assert len(owners) == 2
    for c in clients:
        c.close()
    lines = [line for line in broker.log().splitlines() if "mqtt-guard broker ready" in line]
    assert sorted(line.split()[2] for line in lines) == ["w0", "w1"]  # each worker's lines carry its number
    assert broker.stop() == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # every worker stopped and reaped


def test_a_worker_that_dies_is_started_again(supervised, add_user):
    add_user("dev", "pw")
    broker = supervised(2)
    expect(broker.ready, timeout=60)
    first = _children(broker.proc.pid)
    os.kill(first[0], signal.SIGKILL)
    expect(lambda: "exited unexpectedly with code -9" in broker.log(), timeout=10)
    expect(lambda: len(set(_children(broker.proc.pid)) - set(first)) == 1, timeout=30)
    expect(broker.ready, timeout=60)
    assert connect(broker.port, "dev", "pw").rc == 0
    assert broker.stop() == 0
    assert "all workers stopped" in broker.log()
