"""`mqtt-guard admin` as a subprocess, and a small JSON client for its API."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.servers import ROOT, free_port, guard_cmd, run_cli, wait_port


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class AdminProcess:
    """The admin API server as an admin runs it (`mqtt-guard admin --bind ...`), log in a file."""

    def __init__(self, redis_url: str, prefix: str, *args: str) -> None:
        self.redis_url, self.prefix, self.args = redis_url, prefix, list(args)
        self.port = free_port()
        fd, self.log_path = tempfile.mkstemp(prefix="mqg-admin-", suffix=".log")
        os.close(fd)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AdminProcess:
        cmd = guard_cmd("--redis-url", self.redis_url, "--prefix", self.prefix, "admin", *self.args)
        cmd += ["--bind", f"127.0.0.1:{self.port}"]
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            wait_port(self.port, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"admin API did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        rc, self.proc = self.proc.returncode, None
        return rc


def create_token(redis_url: str, prefix: str, name: str, *extra: str) -> tuple[str, str]:
    """(the token: the last word of the output, the whole output)."""
    result = run_cli(redis_url, prefix, "admin", "token", "create", name, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1], result.stdout


class Api:
    """Requests against one admin server with one token (None: no Authorization header)."""

    def __init__(self, base: str, token: str | None, context: ssl.SSLContext | None = None) -> None:
        self.base, self.token, self.context = base, token, context

    def with_token(self, token: str | None) -> Api:
        return Api(self.base, token, self.context)

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> Reply:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15, context=self.context) as resp:
                status, text, headers = resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            status, text, headers = exc.code, exc.read(), dict(exc.headers)
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text.decode(errors="replace")
        return Reply(status, parsed, headers)

    def get(self, path: str) -> Reply:
        return self.call("GET", path)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        reply = self.call(method, path, body)
        assert reply.status == status, (method, path, reply.status, reply.body)
        return reply.body
