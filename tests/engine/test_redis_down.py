"""Redis going away: the broker keeps running and answers CONNECTs as `auth.on_redis_down` says."""

from __future__ import annotations

import pytest

from tests.helpers.mqtt import CONNACK_SERVER_UNAVAILABLE, connect
from tests.helpers.servers import RedisServer, run_cli


@pytest.fixture
def own_redis():
    server = RedisServer(persistent=True).start()  # users survive the restart
    yield server
    server.cleanup()


def _setup(own_redis, prefix, start_broker, tmp_path, mode):
    assert run_cli(own_redis.url, prefix, "user", "add", "dev", "--password-stdin", input="pw\n").returncode == 0
    config = tmp_path / "guard.yaml"
    config.write_text(f"auth:\n  on_redis_down: {mode}\nacl:\n  default: allow\n")
    return start_broker("--config", str(config), redis_url=own_redis.url)


def _stop_redis(own_redis, broker):
    """Stop Redis and wait until the broker noticed (its invalidation channel drops, at the latest at its
    1 s health check): until then a CONNECT is rightly decided from what the broker keeps in memory."""
    own_redis.stop()
    broker.wait_log("invalidation channel lost")


def test_default_deny_answers_server_unavailable(own_redis, prefix, start_broker, tmp_path):
    broker = _setup(own_redis, prefix, start_broker, tmp_path, "deny")
    online = connect(broker.port, "dev", "pw")
    assert online.rc == 0
    _stop_redis(own_redis, broker)
    assert connect(broker.port, "dev", "pw").rc == CONNACK_SERVER_UNAVAILABLE
    broker.wait_log("Redis unavailable (CONNACK 3)")
    # The broker itself kept running: the client connected before the outage still works.
    assert online.subscribe("x") == [0]
    online.close()
    own_redis.start()
    again = connect(broker.port, "dev", "pw")
    assert again.rc == 0
    again.close()


def test_cached_mode_admits_recently_verified_credentials_only(own_redis, prefix, start_broker, tmp_path):
    broker = _setup(own_redis, prefix, start_broker, tmp_path, "cached")
    first = connect(broker.port, "dev", "pw")
    assert first.rc == 0
    first.close()
    _stop_redis(own_redis, broker)
    cached = connect(broker.port, "dev", "pw")
    assert cached.rc == 0
    cached.close()
    assert connect(broker.port, "dev", "wrong").rc == CONNACK_SERVER_UNAVAILABLE
    assert connect(broker.port, "other", "pw").rc == CONNACK_SERVER_UNAVAILABLE
