"""Item 3: a client silent for 1.5 x its keep-alive is disconnected and its will published; a client that
keeps talking is not. (The CONNECT timeout is tested in test_session_safety.py.)"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.engine.conftest import both
from tests.helpers import rawmqtt as raw
from tests.helpers.mqtt import connect


@pytest.mark.parametrize(
    "target",
    both("keep-alive is not enforced: handle_read_timeout is a no-op (docs/amqtt-proofs/p2_denials.py section G)"),
    indirect=True,
)
def test_silent_client_is_disconnected_and_its_will_published(target):
    watcher = connect(target.port)
    assert watcher.subscribe(("status/#", 0)) == [0]
    cid = f"silent-{uuid.uuid4().hex[:6]}"
    c = raw.RawClient(target.port)
    with c:
        c.send(raw.connect(cid, keepalive=1, will=("status/" + cid, b"offline", 0, False)))
        assert c.connack() == (0, 0)
        started = time.monotonic()
        assert c.closed_by_peer(6), "silent client still connected"
        assert time.monotonic() - started >= 1.4  # not before 1.5 x keep-alive
    msg = watcher.receive(timeout=3)
    assert (msg.topic, msg.payload) == ("status/" + cid, b"offline")
    if hasattr(target, "wait_log"):
        target.wait_log(f"client '{cid}'")
        assert "keep-alive timeout" in target.wait_log("keep-alive timeout")
    watcher.close()


def test_client_that_pings_stays_connected(anon_broker):
    broker = anon_broker()
    c, _ = raw.connected(broker.port, "pinger", keepalive=1)
    with c:
        for _ in range(8):  # 4 s, well past 1.5 s
            time.sleep(0.5)
            c.send(raw.PINGREQ_BYTES)
            assert c.expect(raw.PINGRESP, timeout=3)
    assert "keep-alive timeout" not in broker.log()


def test_any_packet_counts_as_activity(anon_broker):
    broker = anon_broker()
    c, _ = raw.connected(broker.port, "chatty", keepalive=1)
    with c:
        for i in range(6):  # 3 s of PUBLISH QoS 1 only, no PINGREQ
            time.sleep(0.5)
            c.send(raw.publish("chat/x", b"hi", qos=1, packet_id=i + 1))
            assert c.expect(raw.PUBACK, timeout=3).packet_id == i + 1


def test_keepalive_zero_means_no_timeout(anon_broker):
    broker = anon_broker()
    c, _ = raw.connected(broker.port, "forever", keepalive=0)
    with c:
        assert not c.closed_by_peer(2.5)
        c.send(raw.PINGREQ_BYTES)
        assert c.expect(raw.PINGRESP)
