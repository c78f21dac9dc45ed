"""`mqtt-guard broker --workers N` (mqtt_guard/workers.py, issue 18 item 4): N broker processes on one
port, seen from outside as one broker: probes answered for all of them, a worker that dies started
again, SIGTERM stopping everything with exit code 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from mqtt_guard import workers as workers_mod
from mqtt_guard.config import ConfigError, GuardConfig, load_config, parse_workers
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
    def __init__(
        self,
        redis_url: str,
        prefix: str,
        tmp_path: Path,
        workers: int,
        extra: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.port, self.health = free_port(), free_port()
        config = tmp_path / "guard.yaml"
        config.write_text(f"workers: {workers}\nmetrics:\n  health_bind: 127.0.0.1:{self.health}\n{extra}")
        fd, self.log_path = tempfile.mkstemp(prefix="mqg-workers-", suffix=".log")
        self.log_file = os.fdopen(fd, "w")
        cmd = guard_cmd("--redis-url", redis_url, "--prefix", prefix, "broker", "--config", str(config))
        self.proc = subprocess.Popen(
            [*cmd, "--bind", f"127.0.0.1:{self.port}"], stderr=self.log_file, env={**os.environ, **(env or {})}
        )

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

    def start(workers: int, extra: str = "", env: dict[str, str] | None = None) -> Supervised:
        s = Supervised(redis_server.url, prefix, tmp_path, workers, extra, env)
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


def test_systemd_hears_from_the_supervisor_and_readyz_fails_while_draining(supervised, add_user, tmp_path):
    """READY=1 once every worker listens, STOPPING=1 at SIGTERM (the workers say nothing to systemd), and
    /readyz answers 503 "draining" for the whole drain, so a load balancer stops sending clients."""
    add_user("dev", "pw")
    path = str(tmp_path / "notify")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(path)
    systemd.settimeout(60)
    broker = supervised(2, "shutdown:\n  drain_grace: 30s\n", {"NOTIFY_SOCKET": path})
    assert systemd.recv(100) == b"READY=1"
    expect(broker.ready, timeout=60)
    stayer = connect(broker.port, "dev", "pw")  # a client keeps the drains going
    assert stayer.rc == 0
    broker.proc.send_signal(signal.SIGTERM)
    assert systemd.recv(100) == b"STOPPING=1"
    code, _, body = http_get(broker.health, "/readyz")
    assert code == 503 and "draining" in body
    broker.proc.send_signal(signal.SIGTERM)  # a second signal cuts the drains short
    assert broker.stop() == 0
    systemd.settimeout(0.5)
    with pytest.raises(TimeoutError):
        systemd.recv(100)  # nothing more: one READY=1, one STOPPING=1, none from the workers
    systemd.close()
    stayer.close()


def test_livez_fails_only_for_a_running_worker_whose_loop_stopped_answering():
    """The rule behind the supervisor's /livez (pure): a worker past its start-up grace that has not
    answered /livez for STUCK_AFTER fails it; a worker being restarted or just started does not."""
    sup = workers_mod.Supervisor(GuardConfig(workers=3), argv=["true"])
    now = time.monotonic()

    class Running:
        returncode = None

    for w in sup.workers:
        w.proc = Running()  # type: ignore[assignment]
        w.started = now - 100
        w.last_live = now - 1
    assert sup.liveness() is None
    sup.workers[1].last_live = now - workers_mod.STUCK_AFTER - 1
    assert sup.liveness() == "workers not answering: 1\n"
    sup.workers[1].started = now - 1  # just (re)started: given its grace
    assert sup.liveness() is None
    sup.workers[2].proc = None  # not running (being restarted): the supervisor's job, not a stuck loop
    sup.workers[2].last_live = 0.0
    assert sup.liveness() is None
