"""Item 2, internals: refused CONNECTs leave nothing behind (amqtt kept every failed session in
`broker.sessions` in state "connected" for ever and let it delete or take over the victim's session,
docs/amqtt-proofs/p2_denials.py section E). Broker in this process, real clients over real sockets."""

from __future__ import annotations

import pytest

from tests.engine.inproc import InProcessBroker
from tests.helpers import rawmqtt as raw


@pytest.fixture
def broker(redis_server, prefix, add_user, rds):
    add_user("victim", "victim-pw")
    add_user("pub", "pub-pw")
    rds.hset(f"{prefix}acl:user:victim", "v/#", "read")
    rds.hset(f"{prefix}acl:user:pub", "v/#", "write")
    b = InProcessBroker(redis_server.url, prefix, allow_anonymous=False, acl_default="deny").start()
    yield b
    b.stop()


def test_many_refused_connects_leave_no_state_and_the_victim_keeps_working(broker):
    victim, _ = raw.connected(broker.port, "device-1", clean=False, username="victim", password="victim-pw")
    with victim:
        victim.send(raw.subscribe(1, ("v/#", 1)))
        assert victim.expect(raw.SUBACK).body == b"\x00\x01\x01"
        attempts = [
            ("device-1", clean, user, pw)
            for clean in (True, False)
            for user, pw in (("victim", b"guess"), ("nobody", b"x"), (None, None))
        ]
        attempts += [(f"random-{i}", i % 2 == 0, "victim", b"wrong") for i in range(40)]
        for client_id, clean, user, pw in attempts:
            with raw.RawClient(broker.port) as c:
                c.send(raw.connect(client_id, clean=clean, username=user, password=pw))
                assert c.connack() == (0, 5)  # session present 0 on a refusal [MQTT-3.2.2-4]
                assert c.closed_by_peer(3)

        sessions = broker.call(lambda: {cid: s.transitions.state for cid, (s, _) in broker.broker.sessions.items()})
        assert sessions == {"device-1": "connected"}
        assert broker.call(lambda: sorted(broker.guard.clients)) == ["device-1"]
        assert broker.call(lambda: broker.broker.sessions["device-1"][0].username) == "victim"
        assert broker.call(lambda: [f for f, subs in broker.broker.subscriptions.items() if subs]) == ["v/#"]

        # The victim is still connected and subscribed.
        with raw.connected(broker.port, "pub-1", username="pub", password="pub-pw")[0] as pub:
            pub.send(raw.publish("v/1", b"still here", qos=1, packet_id=5))
            pub.expect(raw.PUBACK)
        msg = victim.expect(raw.PUBLISH)
        assert msg.payload == b"still here"
        victim.send(raw.ack(raw.PUBACK, msg.packet_id))
