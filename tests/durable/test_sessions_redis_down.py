"""Persistent sessions while Redis is away (issue 17 item 5): traffic between connected clean sessions
keeps flowing; a QoS 1 PUBLISH that reaches a persistent session is acknowledged only once its write is
in Redis (after Redis is back), or its publisher is disconnected after `backpressure_max_stall`, never
acknowledged-and-lost. Real redis-server stopped and started again, real broker, paho clients."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.durable.test_persistent_sessions import Sub311
from tests.helpers.mqtt import connect
from tests.helpers.servers import RedisServer
from tests.helpers.wait import until


@pytest.fixture
def own_redis():
    server = RedisServer(persistent=True).start()  # the generation marker survives the restart
    yield server
    server.cleanup()


def _broker(start_broker, tmp_path, own_redis, stall: str):
    config = tmp_path / "guard.yaml"
    config.write_text(
        "auth:\n  allow_anonymous: true\n  on_redis_down: cached\nacl:\n  default: allow\n"
        f"limits:\n  backpressure_max_stall: {stall}\n"
    )
    return start_broker("--config", str(config), redis_url=own_redis.url)


def test_clean_sessions_flow_and_persistent_acks_wait_for_redis(own_redis, start_broker, tmp_path):
    broker = _broker(start_broker, tmp_path, own_redis, "60s")
    durable = Sub311(broker.port, f"dsub-{uuid.uuid4().hex[:6]}")
    durable.subscribe("down/durable/#", 1)
    clean_sub = connect(broker.port, client_id=f"csub-{uuid.uuid4().hex[:6]}")
    assert clean_sub.subscribe(("down/clean/#", 1)) == [1]
    pub = connect(broker.port, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    own_redis.stop()
    broker.wait_log("invalidation channel lost")
    # between clean sessions: acknowledged and delivered as ever
    info = pub.paho.publish("down/clean/a", b"flows", qos=1)
    info.wait_for_publish(10)
    assert info.is_published()
    assert clean_sub.receive(10).payload == b"flows"
    # towards a persistent session: not acknowledged while its write cannot reach Redis
    held = pub.paho.publish("down/durable/a", b"kept", qos=1)
    time.sleep(1.5)
    assert not held.is_published()
    # and the acks after it on that connection keep their order: a clean one waits behind it
    behind = pub.paho.publish("down/clean/b", b"behind", qos=1)
    time.sleep(0.5)
    assert not behind.is_published()
    own_redis.start()
    held.wait_for_publish(30)
    behind.wait_for_publish(30)
    assert held.is_published() and behind.is_published()
    assert durable.payloads(1, 10) == [b"kept"]
    for c in (pub, clean_sub):
        c.close()
    durable.close()


def test_a_publisher_waiting_past_the_stall_is_disconnected_not_acknowledged(own_redis, start_broker, tmp_path):
    broker = _broker(start_broker, tmp_path, own_redis, "1s")
    cid = f"dsub-{uuid.uuid4().hex[:6]}"
    durable = Sub311(broker.port, cid)
    durable.subscribe("stall/#", 1)
    durable.close()
    broker.wait_log(f"client '{cid}' (")
    pub = connect(broker.port, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    own_redis.stop()
    broker.wait_log("invalidation channel lost")
    info = pub.paho.publish("stall/a", b"never acked", qos=1)
    assert pub.disconnected.wait(15), "the publisher was not disconnected"
    assert not info.is_published()
    broker.wait_log("Redis did not confirm the writes of its messages for persistent sessions")
    own_redis.start()
    assert until(lambda: "Redis answers again" in broker.log(), 15)
