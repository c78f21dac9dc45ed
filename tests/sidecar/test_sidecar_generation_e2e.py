"""A Redis that loses this deployment's data under a running system (issue 15 item 7): nothing read from
it is acted on. The sidecar reaps no broker and kicks nobody, a broker carries out no kick, both log an
ERROR; after `mqtt-guard store adopt` both act again (sidecar/service.py, quota/kicks.py)."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.mqtt import connect
from tests.helpers.servers import RedisServer, run_cli
from tests.helpers.wait import until
from tests.sidecar.helpers import SidecarProcess, fast_config

LOST = "Redis lost this deployment's data"


@pytest.fixture
def own_redis():
    server = RedisServer().start()
    yield server
    server.cleanup()


def _plant(rds, prefix):
    """What would make a sidecar act: a dead broker holding a session (reap it), a live one holding a
    blocked client (kick it)."""
    rds.zadd(f"{prefix}brokers", {"ghost-dead": 0, "ghost-live": int(time.time() * 1000) + 3_600_000})
    for broker, cid in (("ghost-dead", "x"), ("ghost-live", "y")):
        rds.hset(f"{prefix}broker:{broker}", "pid", "1")
        rds.sadd(f"{prefix}broker:{broker}:sessions", cid)
        rds.hset(f"{prefix}session:{cid}", mapping={"client_id": cid, "broker": broker, "conn": "c1", "username": ""})
    rds.hset(f"{prefix}block:client:y", mapping={"reason": "planted", "until": "0", "by": "test"})
    rds.expire(f"{prefix}block:client:y", 600)


def test_flushall_stops_the_sidecar_and_kicks_until_adopted(own_redis, prefix, start_broker, tmp_path):
    url, rds = own_redis.url, own_redis.client()

    def cli(*args, input=None):
        result = run_cli(url, prefix, *args, input=input)
        assert result.returncode == 0, result.stderr
        return result

    cli("user", "add", "dev", "--password-stdin", input="pw\n")
    config = fast_config(tmp_path, "auth:\n  on_redis_down: cached\n")
    broker = start_broker("--config", config, redis_url=url)
    sidecar = SidecarProcess(url, prefix, "--interval", "0.2").start()
    try:
        dev = connect(broker.port, "dev", "pw", client_id="dev")
        assert dev.rc == 0
        assert until(lambda: rds.hget(f"{prefix}session:dev", "broker"))
        broker_id = rds.hget(f"{prefix}session:dev", "broker")
        conn = rds.hget(f"{prefix}session:dev", "conn")

        rds.flushall()
        broker.wait_log(LOST)
        line = sidecar.wait_log(LOST).splitlines()
        assert any(" ERROR mqtt_guard.sidecar: " in x and LOST in x for x in line)
        _plant(rds, prefix)
        # A kick read from the untrusted Redis: not carried out.
        kick = {"client_id": "dev", "conn": conn, "reason": "planted kick", "by": "test"}
        rds.rpush(f"{prefix}kick:{broker_id}", json.dumps(kick))
        time.sleep(1.5)  # several sidecar intervals, broker heartbeats and kick polls
        assert rds.zscore(f"{prefix}brokers", "ghost-dead") is not None  # not reaped
        assert not rds.exists(f"{prefix}kick:ghost-live") and not rds.exists(f"{prefix}audit")  # nobody kicked
        assert not dev.disconnected.is_set() and "kicking client 'dev'" not in broker.log()
        # (popped by a BLPOP already waiting when trust went, it is dropped; else it waits in the queue)
        assert "kick from Redis not acted on" in broker.log() or rds.llen(f"{prefix}kick:{broker_id}") == 1
        assert sidecar.log().count(LOST) == 1  # logged once
        rds.delete(f"{prefix}kick:{broker_id}")  # (a queued one would be carried out once trusted again)

        cli("user", "add", "dev", "--password-stdin", input="pw\n")  # the admin recreates the data...
        assert "adopted" in cli("store", "adopt").stdout  # ...and adopts it
        sidecar.wait_log("the sidecar acts again")
        assert until(lambda: rds.zscore(f"{prefix}brokers", "ghost-dead") is None)  # reaped now
        assert until(lambda: rds.exists(f"{prefix}kick:ghost-live"))  # the blocked client is kicked
        assert any(e[1].get("client_id") == "y" for e in rds.xrange(f"{prefix}audit"))
        # The broker registers its client again (its record went with the data) and carries kicks out.
        assert until(lambda: rds.hget(f"{prefix}session:dev", "broker") == broker_id, timeout=10)
        cli("kick", "dev")
        assert dev.disconnected.wait(5)
    finally:
        sidecar.stop()
        rds.close()
