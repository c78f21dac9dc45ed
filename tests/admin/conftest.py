"""An admin API server per test (real process, real Redis) with a read-write and a read-only token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.admin.helpers import AdminProcess, Api, create_token
from tests.helpers.servers import RedisServer


@dataclass
class AdminServer:
    process: AdminProcess
    api: Api  # read-write token "ops"
    ro: Api  # read-only token "dash"
    anon: Api  # no token


@pytest.fixture
def admin(redis_server: RedisServer, prefix: str) -> Iterator[AdminServer]:
    rw, _ = create_token(redis_server.url, prefix, "ops")
    ro, _ = create_token(redis_server.url, prefix, "dash", "--read-only")
    process = AdminProcess(redis_server.url, prefix).start()
    base = f"http://127.0.0.1:{process.port}"
    yield AdminServer(process, Api(base, rw), Api(base, ro), Api(base, None))
    process.stop()
