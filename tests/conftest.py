"""Fixtures: one real redis-server per test session, a fresh key prefix per test, broker processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.servers import BrokerProcess, RedisServer, run_cli


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own per test, so tests share one Redis without seeing each other."""
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def rds(redis_server: RedisServer):
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def cli(redis_server: RedisServer, prefix: str) -> Callable[..., object]:
    def run(*args: str, input: str | None = None):
        return run_cli(redis_server.url, prefix, *args, input=input)

    return run


@pytest.fixture
def add_user(cli) -> Callable[..., None]:
    def add(name: str, password: str, *extra: str) -> None:
        result = cli("user", "add", name, "--password-stdin", *extra, input=password + "\n")
        assert result.returncode == 0, result.stderr

    return add


@pytest.fixture
def start_broker(redis_server: RedisServer, prefix: str) -> Iterator[Callable[..., BrokerProcess]]:
    started: list[BrokerProcess] = []

    def start(
        *args: str,
        redis_url: str | None = None,
        bind: bool = True,
        port: int | None = None,
        wait_for_port: int | None = None,
    ) -> BrokerProcess:
        broker = BrokerProcess(redis_url or redis_server.url, prefix, args=list(args), bind=bind, port=port)
        started.append(broker)
        return broker.start(wait_for_port=wait_for_port)

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def start_sidecar(redis_server: RedisServer, prefix: str):
    """`mqtt-guard sidecar` subprocesses against the test's Redis and prefix, stopped at teardown."""
    from tests.sidecar.helpers import SidecarProcess

    started: list[SidecarProcess] = []

    def start(*args: str) -> SidecarProcess:
        sidecar = SidecarProcess(redis_server.url, prefix, *args)
        started.append(sidecar)
        return sidecar.start()

    yield start
    for sidecar in started:
        sidecar.stop()
