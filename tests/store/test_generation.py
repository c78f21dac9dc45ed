"""A Redis that loses this deployment's data while brokers run (issue 15 item 7): an outage in the
configured fail mode, not "everyone deleted"; trusted again once its marker comes back or after
`mqtt-guard store adopt` (mqtt_guard/store/generation.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqtt_guard.store.generation import Generation, accepts
from tests.helpers.mqtt import CONNACK_SERVER_UNAVAILABLE, connect
from tests.helpers.servers import RedisServer, run_cli
from tests.helpers.wait import until

LOST = "Redis lost this deployment's data"
BACK = "Redis holds this deployment's data again"

markers = st.builds(Generation, st.sampled_from(["a", "b", "c"]), st.floats(0, 10), st.booleans())


@given(markers, st.none() | markers)
def test_accepts_the_known_marker_or_a_later_adopted_one(known, current):
    """A missing marker is never trusted; the known token always is; a different one only when written
    by `store adopt` after the known one was created (an old backup's adopted marker is not enough)."""
    want = current is not None and (
        current.token == known.token or (current.adopted and current.created > known.created)
    )
    assert accepts(known, current) is want


def test_a_marker_not_written_by_us_reads_as_a_change():
    assert Generation.decode("garbage").token == "garbage"
    marker = Generation.new(by="x", adopted=True)
    assert Generation.decode(marker.encode()) == marker


@pytest.fixture
def own_redis():
    server = RedisServer().start()
    yield server
    server.cleanup()


def _deployment(redis, prefix, start_broker, tmp_path):
    def cli(*args, input=None):
        result = run_cli(redis.url, prefix, *args, input=input)
        assert result.returncode == 0, result.stderr
        return result

    cli("user", "add", "dev", "--password-stdin", input="pw\n")
    cli("user", "add", "other", "--password-stdin", input="pw2\n")
    cli("acl", "allow", "--user", "dev", "t/#", "readwrite")
    config = tmp_path / "guard.yaml"
    config.write_text("auth:\n  on_redis_down: cached\nacl:\n  default: deny\n")
    broker = start_broker("--config", str(config), redis_url=redis.url)
    online = connect(broker.port, "dev", "pw")
    assert online.rc == 0 and online.subscribe(("t/#", 1)) == [1]
    seen = connect(broker.port, "other", "pw2")  # verified once: remembered for on_redis_down: cached
    assert seen.rc == 0
    seen.close()
    return cli, broker, online


def _still_served_by_the_old_rules(broker, online):
    broker.wait_log(LOST)
    online.publish("t/after", b"kept", qos=1)
    assert online.receive().payload == b"kept"  # not dropped: the rules in memory still apply
    assert connect(broker.port, "other", "pw2").rc == 0  # on_redis_down: cached
    assert connect(broker.port, "other", "wrong").rc == CONNACK_SERVER_UNAVAILABLE
    log = broker.log()
    lost = [line for line in log.splitlines() if LOST in line]
    assert len(lost) == 1 and " ERROR mqtt_guard.store.generation: " in lost[0]  # once, as an ERROR
    assert "user deleted" not in log and not online.disconnected.is_set()


@pytest.mark.parametrize("loss", ["flushall", "restart empty"])
def test_lost_data_is_an_outage_until_adopted(own_redis, prefix, start_broker, tmp_path, loss):
    cli, broker, online = _deployment(own_redis, prefix, start_broker, tmp_path)
    if loss == "flushall":
        own_redis.client().flushall()
    else:  # the same address, nothing kept (no persistence): the broker's channel reconnects
        own_redis.stop()
        own_redis.start()
    _still_served_by_the_old_rules(broker, online)
    # The admin recreates the data (new rules: u/# instead of t/#) and adopts it.
    cli("user", "add", "dev", "--password-stdin", input="pw\n")
    cli("acl", "allow", "--user", "dev", "u/#", "readwrite")
    assert LOST in broker.log() and BACK not in broker.log()  # writing a fresh marker is not adopting
    assert "none" not in cli("store", "show").stdout
    assert "adopted" in cli("store", "adopt").stdout
    broker.wait_log(BACK)
    assert until(lambda: online.subscribe(("u/#", 1)) == [1])  # once the rules are reloaded
    online.publish("u/new", b"new", qos=1)
    assert online.receive().payload == b"new"
    online.publish("t/old", b"old", qos=1)
    assert online.received(0.3) == []  # the old grant is gone
    assert connect(broker.port, "other", "pw2").rc == 5  # and so is the user nobody recreated
    online.close()


def test_restored_backup_is_trusted_again(own_redis, prefix, start_broker, tmp_path):
    _, broker, online = _deployment(own_redis, prefix, start_broker, tmp_path)
    rds = own_redis.client()
    backup = {key: rds.dump(key) for key in rds.keys(f"{prefix}*")}
    rds.flushall()
    _still_served_by_the_old_rules(broker, online)
    for key, value in backup.items():
        rds.restore(key, 0, value)
    broker.wait_log(BACK)
    assert connect(broker.port, "other", "wrong").rc == 5  # Redis answers again: a wrong password is refused
    online.publish("t/restored", b"r", qos=1)
    assert online.receive().payload == b"r"
    online.close()
