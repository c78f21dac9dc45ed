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


def test_default_deny_answers_server_unavailable(own_redis, prefix, start_broker, tmp_path):
    broker = _setup(own_redis, prefix, start_broker, tmp_path, "deny")
    online = connect(broker.port, "dev", "pw")
    assert online.rc == 0
    own_redis.stop()
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
    own_redis.stop()
    cached = connect(broker.port, "dev", "pw")
    assert cached.rc == 0
    cached.close()
    assert connect(broker.port, "dev", "wrong").rc == CONNACK_SERVER_UNAVAILABLE
    assert connect(broker.port, "other", "pw").rc == CONNACK_SERVER_UNAVAILABLE
