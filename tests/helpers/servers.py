"""Real servers for tests: a redis-server and mqtt-guard broker processes on free ports.

Every process started here is stopped by its owner (fixtures call stop() in teardown), and all
sockets are on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.helpers.wait import until_text

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A private redis-server, configured as an admin would leave it: no keyspace notifications (the
    broker learns of edits through client-side caching invalidations, not through notifications)."""

    def __init__(self, port: int | None = None, *, persistent: bool = False) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="mqg-redis-")
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        args = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
        ]
        args += ["--appendonly", "yes"] if self.persistent else ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def guard_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mqtt_guard", *args]


class BrokerProcess:
    """`mqtt-guard broker` as a subprocess, with its log kept in a file the test can read."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        *,
        args: list[str] | None = None,
        port: int | None = None,
        bind: bool = True,
        preexec_fn: Callable[[], object] | None = None,
    ) -> None:
        """`preexec_fn` runs in the child before the broker starts (e.g. to lower a resource limit)."""
        self.port = port or free_port()
        self.redis_url = redis_url
        self.prefix = prefix
        self.args = args or []
        self.bind = bind
        fd, self.log_path = tempfile.mkstemp(prefix="mqg-broker-", suffix=".log")
        os.close(fd)
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.preexec_fn = preexec_fn

    def start(self, wait_for_port: int | None = None) -> BrokerProcess:
        cmd = guard_cmd("--redis-url", self.redis_url, "--prefix", self.prefix, "broker", *self.args)
        if self.bind:
            cmd += ["--bind", f"127.0.0.1:{self.port}"]
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, preexec_fn=self.preexec_fn
        )
        try:
            wait_port(wait_for_port or self.port, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"broker did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 5.0) -> str:
        content = until_text(self.log, text, timeout)
        if content is None:
            raise AssertionError(f"{text!r} not in broker log:\n{self.log()}")
        return content

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.returncode = self.proc.returncode
            self._log.close()
        self.proc = None
        return self.returncode


def run_cli(
    redis_url: str, prefix: str, *args: str, input: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run `mqtt-guard` as an admin would, against the test's Redis and prefix."""
    return subprocess.run(
        guard_cmd("--redis-url", redis_url, "--prefix", prefix, *args),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
