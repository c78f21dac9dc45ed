"""Broker processes for the differential harness: a real mosquitto and mqtt-guard on the same conf.

The two configuration files differ only in the listener port. Each process logs to its own file,
which is how a reload (SIGHUP) is seen to have happened.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the mqtt-guard checkout


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


_PORTS = random.SystemRandom()  # (not the global generator: scenario generators are seeded on their own)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port free now, chosen below the ephemeral range when possible.

    A broker's port is chosen well before the broker binds it (all pairs are set up first), and meanwhile
    the harness's clients take ephemeral ports by the hundred: a port from that range can be taken by
    a client socket by then ("Address already in use", a broker that dies at start). Ports below the range
    are not handed out to clients.
    """
    low, _ = _ephemeral_range()
    if low > 11000:
        for _ in range(50):
            port = _PORTS.randrange(10000, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_as_line() -> str:
    """mosquitto drops root privileges to user `mosquitto` unless told otherwise; keep the current user
    so it can read the files the harness writes (mqtt-guard honours the same line)."""
    if os.geteuid() == 0:
        return "user root"
    import pwd

    return f"user {pwd.getpwuid(os.geteuid()).pw_name}"


class BrokerProc:
    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.port = port
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> BrokerProc:
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.cwd, env=env)
        return self

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name} not listening on {self.port} after {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def count(self, text: str | tuple[str, ...]) -> int:
        log = self.log()
        return sum(log.count(t) for t in ((text,) if isinstance(text, str) else text))

    async def wait_count(self, text: str | tuple[str, ...], n: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count(text) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: {text!r} seen {self.count(text)} times, expected {n}:\n{self.log()[-3000:]}"
                )
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.02)

    def sighup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()
        self.proc = None


def mosquitto_proc(conf: Path, port: int, log_path: Path) -> BrokerProc:
    exe = mosquitto_binary()
    if exe is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    return BrokerProc("mosquitto", [exe, "-c", str(conf)], port, log_path)


def guard_proc(conf: Path, port: int, log_path: Path, redis_url: str, prefix: str) -> BrokerProc:
    cmd = [sys.executable, "-m", "mqtt_guard", "--redis-url", redis_url, "--prefix", prefix, "broker", "-c", str(conf)]
    return BrokerProc("mqtt-guard", cmd, port, log_path, cwd=ROOT)


class RedisProc:
    """A private redis-server for running the harness by hand (the test suite brings its own)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProc:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
