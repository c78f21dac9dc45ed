"""Issue 16 item 5: a session taken over by a new connection with the same client id has its will
published, as mosquitto 2.0 does, unless the new connection resumes it (both connections with
clean session 0: the will is then discarded, not published). Raw MQTT 3.1.1 packets, run against
mqtt-guard and the real mosquitto 2.0.11 side by side.

Measured on mosquitto 2.0.11 (handle__connect: `context__send_will` when the old session was clean,
or the new connection asks for a clean one):

    old clean  new clean  will published
        1          1          yes
        1          0          yes
        0          1          yes
        0          0          no (session resumed, session present 1)
"""

from __future__ import annotations

import uuid

import pytest

from tests.engine.conftest import vs_mosquitto
from tests.helpers import rawmqtt as raw

CASES = [(True, True, True), (True, False, True), (False, True, True), (False, False, False)]


@pytest.mark.parametrize("target", vs_mosquitto(), indirect=True)
@pytest.mark.parametrize("will_qos", [0, 1])
@pytest.mark.parametrize("old_clean,new_clean,published", CASES, ids=[f"old{int(o)}-new{int(n)}" for o, n, _ in CASES])
def test_take_over_publishes_the_will_unless_the_session_is_resumed(target, will_qos, old_clean, new_clean, published):
    cid = f"to-{uuid.uuid4().hex[:8]}"
    with raw.connected(target.port, f"w-{cid}")[0] as watcher:
        watcher.send(raw.subscribe(1, ("will/#", 1)))
        watcher.expect(raw.SUBACK)
        old, _ = raw.connected(target.port, cid, clean=old_clean, will=(f"will/{cid}", b"bye", will_qos, False))
        with old:
            new, present = raw.connected(target.port, cid, clean=new_clean)
            with new:
                assert present == (not old_clean and not new_clean)
                assert old.closed_by_peer(3), "the old connection was not closed"
                got = [(p.topic, p.payload) for p in raw.drain(watcher, 0.7) if p.type == raw.PUBLISH]
                assert got == ([(f"will/{cid}", b"bye")] if published else [])
                new.send(raw.DISCONNECT_BYTES)
        # a resumed session's will was discarded with the take-over: not published later either
        assert raw.drain(watcher, 0.3) == []
