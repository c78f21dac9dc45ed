"""Fixtures of the durable-state tests: broker processes with a YAML config, a bytes-reading Redis client."""

from __future__ import annotations

import pytest
import redis

from tests.helpers.servers import free_port


@pytest.fixture
def raw(redis_server):
    """A client of the test's Redis that reads bytes (retained records are binary)."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
def guard(start_broker, tmp_path):
    """`guard(extra_yaml, port=None)`: a broker process with a YAML config (anonymous clients, ACL allow,
    plus `extra_yaml`); the same port again restarts "the same" broker."""
    n = iter(range(100))

    def start(extra: str = "", port: int | None = None, redis_url: str | None = None):
        port = port or free_port()
        conf = tmp_path / f"guard-{next(n)}.yaml"
        conf.write_text(
            f"listeners: [{{bind: '127.0.0.1:{port}'}}]\nauth: {{allow_anonymous: true}}\n"
            f"acl: {{default: allow}}\n{extra}"
        )
        return start_broker("-c", str(conf), bind=False, port=port, wait_for_port=port, redis_url=redis_url)

    return start
