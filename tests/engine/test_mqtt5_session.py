"""The MQTT 5 session lifecycle on real sockets against the real broker (issue 16 item 1): Clean Start
and the Session Expiry Interval (3.1.2.4, 3.1.2.11.2; changed by DISCONNECT, capped by
`limits.persistent_session_expiry`), the CONNACK's Session Present, the Will Delay Interval
(3.1.3.2.2), and the Message Expiry Interval of retained messages (3.3.2.3.3). paho's MQTT 5 client
where it shows the behaviour, raw packets where the CONNACK's flags or a session's bytes matter."""

from __future__ import annotations

import time
import uuid

from mqtt_guard.reasons import Reason
from tests.engine.mqtt5_fixtures import listeners  # noqa: F401 - the fixture
from tests.helpers import mqtt as m3
from tests.helpers import mqtt5 as m5
from tests.helpers import rawmqtt as raw

NO_MATCHING_SUBSCRIBERS = Reason.NO_MATCHING_SUBSCRIBERS  # an accepted PUBLISH nothing is subscribed to


def _cid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _expiry(seconds: int) -> bytes:
    """A CONNECT/DISCONNECT Session Expiry Interval property (in a property list, without its length)."""
    return b"\x11" + m5.u32(seconds)


def _join(port: int, cid: str, expiry: int, *, clean: bool = False) -> tuple[raw.RawClient, int]:
    """An MQTT 5 connection of `cid` asking `expiry`: (client, Session Present of its CONNACK)."""
    c = raw.RawClient(port)
    c.send(m5.connect(cid, properties=_expiry(expiry), clean=clean))
    pkt = c.expect(raw.CONNACK)
    assert pkt.body[1] == 0, f"CONNACK reason {pkt.body[1]:#x}"
    return c, pkt.body[0] & 1


def _subscribed(port: int, cid: str, expiry: int, topic_filter: str) -> raw.RawClient:
    c, present = _join(port, cid, expiry, clean=True)
    assert present == 0
    c.send(m5.subscribe(1, (topic_filter, 1)))
    c.expect(raw.SUBACK)
    return c


def _payloads(c: raw.RawClient, wait: float = 0.5) -> list[bytes]:
    return [m5.publish_parts(p)[3] for p in raw.drain(c, wait) if p.type == raw.PUBLISH]


def _publish(net, topic: str, payload: bytes, ack: int = 0) -> None:
    pub = net.v5()
    try:
        assert pub.publish(topic, payload, qos=1) == ack
    finally:
        pub.close()


def test_a_session_is_kept_for_its_expiry_interval_and_gone_after(listeners):  # noqa: F811 - fixture
    net = listeners()
    port, cid = net.ports["tcp"], _cid("kept")
    c = _subscribed(port, cid, 2, "kept/#")
    c.send(m5.disconnect())
    c.close()
    _publish(net, "kept/1", b"while offline")
    c, present = _join(port, cid, 2)  # within the interval: resumed, with what it missed
    try:
        assert present == 1
        assert _payloads(c) == [b"while offline"]
        c.send(m5.disconnect())
    finally:
        c.close()
    _publish(net, "kept/2", b"lost")
    net.broker.wait_log(f"offline session of client '{cid}' (user None) expired after 2 s", timeout=6)
    c, present = _join(port, cid, 2)
    try:
        assert present == 0  # expired: a new session, nothing queued, no subscription
        assert _payloads(c) == []
        c.send(m5.disconnect())
    finally:
        c.close()
    # 0 (the default): the session ends with the connection
    c = _subscribed(port, cid, 0, "kept/#")
    c.send(m5.disconnect())
    c.close()
    c, present = _join(port, cid, 0)
    with c:
        assert present == 0


def test_clean_start_discards_the_session(listeners):  # noqa: F811 - fixture
    net = listeners()
    port, cid = net.ports["tcp"], _cid("clean")
    c = _subscribed(port, cid, 60, "clean/#")
    c.send(m5.disconnect())
    c.close()
    _publish(net, "clean/1", b"discarded")
    c, present = _join(port, cid, 60, clean=True)
    try:
        assert present == 0
        assert _payloads(c) == []
        _publish(net, "clean/2", b"no subscription any more", NO_MATCHING_SUBSCRIBERS)
        assert _payloads(c) == []
    finally:
        c.close()


def test_disconnect_changes_the_session_expiry_interval(listeners):  # noqa: F811 - fixture
    net = listeners()
    port = net.ports["tcp"]
    shorter, longer = _cid("shorter"), _cid("longer")
    c = _subscribed(port, shorter, 60, "x/#")
    c.send(m5.disconnect(0, m5.props((0x11, m5.u32(1)))))  # 60 s -> 1 s
    c.close()
    c = _subscribed(port, longer, 1, "x/#")
    c.send(m5.disconnect(0, m5.props((0x11, m5.u32(60)))))  # 1 s -> 60 s
    c.close()
    net.broker.wait_log(f"offline session of client '{shorter}' (user None) expired after 1 s", timeout=5)
    time.sleep(0.5)
    c, present = _join(port, shorter, 60)
    with c:
        assert present == 0
    c, present = _join(port, longer, 60)
    with c:
        assert present == 1


def test_limits_cap_the_interval_and_the_connack_says_so(listeners):  # noqa: F811 - fixture
    net = listeners("limits:\n  persistent_session_expiry: 1s\n")
    cid = _cid("capped")
    dev = net.v5(client_id=cid, session_expiry=0xFFFFFFFF)
    try:
        assert dev.connack("SessionExpiryInterval") == 1
    finally:
        dev.close()
    asked_less = net.v5(session_expiry=1)  # not above the cap: the CONNACK does not repeat it
    asked_less.close()
    assert asked_less.connack("SessionExpiryInterval") is None
    net.broker.wait_log(f"offline session of client '{cid}' (user None) expired after 1 s", timeout=5)
    c, present = _join(net.ports["tcp"], cid, 60)
    with c:
        assert present == 0


def _will(delay: int) -> m5.Properties:
    props = m5.Properties(m5.PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = delay
    return props


def test_will_delay_interval(listeners):  # noqa: F811 - fixture
    net = listeners()
    watcher = net.v5()
    try:
        watcher.subscribe("wills/#", 1)
        # published once the delay has passed
        late = net.v5(will=("wills/late", b"late", 1, False), will_props=_will(2), session_expiry=60)
        late.close(reason=0x04)  # Disconnect with Will Message: the will follows the rules of a lost link
        t0 = time.monotonic()
        assert watcher.received(1.2) == []
        msg = watcher.receive(timeout=3)
        assert (msg.topic, msg.payload) == ("wills/late", b"late")
        assert 1.9 <= time.monotonic() - t0 <= 3.5
        # not at all when the client comes back (session resumed) before the delay
        cid = _cid("back")
        back = net.v5(client_id=cid, will=("wills/back", b"back", 1, False), will_props=_will(2), session_expiry=60)
        back.close(reason=0x04)
        again = net.v5(client_id=cid, clean_start=False, session_expiry=60)
        assert watcher.received(3) == []
        again.close()
        # at the end of the session when that comes first: the Session Expiry Interval ...
        short = net.v5(will=("wills/short", b"short", 1, False), will_props=_will(60), session_expiry=1)
        short.close(reason=0x04)
        msg = watcher.receive(timeout=4)
        assert (msg.topic, msg.payload) == ("wills/short", b"short")
        # ... or a new connection with Clean Start (the old session is discarded: its will goes out now)
        cid = _cid("fresh")
        old = net.v5(client_id=cid, will=("wills/fresh", b"fresh", 1, False), will_props=_will(60), session_expiry=60)
        old.close(reason=0x04)
        assert watcher.received(0.5) == []
        fresh = net.v5(client_id=cid, clean_start=True)
        msg = watcher.receive(timeout=3)
        assert (msg.topic, msg.payload) == ("wills/fresh", b"fresh")
        fresh.close()
        # a session that ends with its connection (expiry 0) publishes at once, whatever the delay
        now = net.v5(will=("wills/now", b"now", 1, False), will_props=_will(60))
        now.close(reason=0x04)
        msg = watcher.receive(timeout=2)
        assert (msg.topic, msg.payload) == ("wills/now", b"now")
        assert watcher.received(0.3) == []
    finally:
        watcher.close()


def test_retained_message_expiry(listeners):  # noqa: F811 - fixture
    net = listeners()
    pub = net.v5()
    try:
        props = m5.publish_properties(MessageExpiryInterval=2)
        # (nobody subscribed yet: 0x10 No matching subscribers; retained all the same)
        assert pub.publish("ret/short", b"soon gone", qos=1, retain=True, props=props) == NO_MATCHING_SUBSCRIBERS
        assert pub.publish("ret/kept", b"stays", qos=1, retain=True) == NO_MATCHING_SUBSCRIBERS
    finally:
        pub.close()
    will_props = m5.Properties(m5.PacketTypes.WILLMESSAGE)
    will_props.MessageExpiryInterval = 2  # a retained will expires as any retained message
    dev = net.v5(will=("ret/will", b"gone", 1, True), will_props=will_props)
    dev.close(reason=0x04)
    time.sleep(1.1)
    sub = net.v5()
    try:
        sub.subscribe("ret/will", 1)
        msg = sub.receive()
        assert (msg.payload, msg.retain, msg.prop("MessageExpiryInterval")) == (b"gone", True, 1)
        sub.subscribe("ret/short", 1)
        msg = sub.receive()
        assert (msg.payload, msg.retain) == (b"soon gone", True)
        assert msg.prop("MessageExpiryInterval") == 1  # the time left, not the 2 s it was published with
    finally:
        sub.close()
    time.sleep(1.2)  # past its expiry: delivered to no one, and removed
    sub = net.v5()
    old = m3.connect(net.ports["tcp"])
    try:
        sub.subscribe("ret/#", 1)
        assert [m.payload for m in sub.received(0.5)] == [b"stays"]
        old.subscribe(("ret/#", 1))
        assert [m.payload for m in old.received(0.5)] == [b"stays"]
    finally:
        old.close()
        sub.close()


def test_a_take_over_follows_the_will_delay_rule(listeners):  # noqa: F811 - fixture
    net = listeners()
    watcher = net.v5()
    try:
        watcher.subscribe("wills/#", 1)
        cid = _cid("taken")
        first = net.v5(client_id=cid, will=("wills/taken", b"1", 1, False), will_props=_will(60), session_expiry=60)
        resumed = net.v5(client_id=cid, clean_start=False, session_expiry=60)  # the session goes on: no will
        assert first.disconnected.wait(3)
        assert watcher.received(1) == []
        second = net.v5(client_id=cid, will=("wills/taken", b"2", 1, False), will_props=_will(60), session_expiry=60)
        fresh = net.v5(client_id=cid, clean_start=True)  # the session ends: its will goes out now
        msg = watcher.receive(timeout=3)
        assert (msg.topic, msg.payload) == ("wills/taken", b"2")
        for c in (first, resumed, second, fresh):
            c.close()
    finally:
        watcher.close()


def test_session_drop_ends_the_session_and_publishes_its_delayed_will(listeners, cli):  # noqa: F811 - fixture
    net = listeners()
    watcher = net.v5()
    try:
        watcher.subscribe("wills/#", 1)
        cid = _cid("dropped")
        dev = net.v5(client_id=cid, will=("wills/dropped", b"bye", 1, False), will_props=_will(60), session_expiry=60)
        dev.close(reason=0x04)
        assert watcher.received(0.5) == []  # waiting for its delay
        result = cli("session", "drop", cid)
        assert result.returncode == 0 and "(not connected)" in result.stdout, result.stdout + result.stderr
        msg = watcher.receive(timeout=3)
        assert (msg.topic, msg.payload) == ("wills/dropped", b"bye")
        c, present = _join(net.ports["tcp"], cid, 60)
        with c:
            assert present == 0
    finally:
        watcher.close()
