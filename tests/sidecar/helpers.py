"""`mqtt-guard sidecar` as a subprocess, and a broker config with short quota intervals for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.helpers.servers import ROOT, guard_cmd
from tests.helpers.wait import until_text

FAST_QUOTA = "quota:\n  sync_interval: 0.2s\n  broker_dead_after: 1.5s\n"


def fast_config(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "fast.yaml"
    path.write_text(FAST_QUOTA + extra)
    return str(path)


class SidecarProcess:
    def __init__(self, redis_url: str, prefix: str, *args: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.args = list(args)
        fd, self.log_path = tempfile.mkstemp(prefix="mqg-sidecar-", suffix=".log")
        os.close(fd)
        self.proc: subprocess.Popen | None = None

    def start(self) -> SidecarProcess:
        cmd = guard_cmd("--redis-url", self.redis_url, "--prefix", self.prefix, "sidecar", *self.args)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        self.wait_log("started")
        return self

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        content = until_text(self.log, text, timeout, alive=lambda: self.proc is None or self.proc.poll() is None)
        if content is None:
            raise AssertionError(f"{text!r} not in sidecar log:\n{self.log()}")
        return content

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            rc = self.proc.returncode
            self._log.close()
        self.proc = None
        return rc
