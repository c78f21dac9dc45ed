"""Issue 9 item 2: flow control. A publisher that bursts faster than a subscriber reads is slowed down
(the broker stops reading from it while the subscriber's queue is over its hold mark) instead of the
subscriber's bounded queue dropping messages; a subscriber that stops reading holds publishers for at
most `limits.backpressure_max_stall`, then it is a slow consumer whose queue limits drop (counted) while
everybody else goes on. No assertion here depends on timing: only on counts and states.
"""

from __future__ import annotations

import functools
import threading
import time

import pytest

from mqtt_guard.metrics import counters as C
from tests.helpers import rawmqtt as raw
from tests.helpers.wait import until

PAYLOAD = b"p" * 512


class SlowReader(threading.Thread):
    """A subscriber that reads, but slowly: small reads with a pause after each."""

    def __init__(self, port: int, cid: str, topic: str, qos: int = 0, pause: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.client, _ = raw.connected(port, cid, keepalive=0, rcvbuf=8192)
        self.client.send(raw.subscribe(1, (topic, qos)))
        self.client.expect(raw.SUBACK)
        self.pause = pause
        self.count = 0
        self.payloads_ok = True

    def run(self) -> None:
        while True:
            try:
                pkt = self.client.read(30)
            except OSError:
                return
            if pkt is None:
                return
            if pkt.type == raw.PUBLISH:
                self.count += 1
                if pkt.payload != PAYLOAD:
                    self.payloads_ok = False
                if pkt.qos == 1:
                    self.client.send(raw.ack(raw.PUBACK, pkt.packet_id))
                if self.count % 20 == 0:
                    time.sleep(self.pause)


_wait = functools.partial(until, timeout=60.0, interval=0.01)


def _burst(port: int, cid: str, n: int, qos: int = 0) -> None:
    """Send `n` PUBLISHes in one go (the socket blocks while the broker does not read), then wait for
    the broker to have routed them all (PINGRESP)."""
    pub, _ = raw.connected(port, cid, keepalive=0)
    with pub:
        pub.sock.settimeout(120)
        data = b"".join(raw.publish("burst/t", PAYLOAD, qos=qos, packet_id=i % 65000 + 1) for i in range(n))
        sender = threading.Thread(target=pub.sock.sendall, args=(data + raw.PINGREQ_BYTES,), daemon=True)
        sender.start()
        acks = 0
        while True:
            pkt = pub.expect_any(timeout=120)
            if pkt.type == raw.PINGRESP:
                break
            acks += pkt.type == raw.PUBACK
        sender.join(10)
        assert acks == (n if qos else 0)


@pytest.mark.parametrize("qos", [0, 1])
def test_a_burst_is_slowed_to_the_subscribers_pace_and_nothing_is_dropped(inproc, qos):
    """20,000 messages against a queue limit of 100: without flow control almost all would be dropped."""
    n = 20000
    broker = inproc(max_queued_messages=100, max_inflight_messages=20, backpressure_max_stall=30)
    slow = SlowReader(broker.port, "reader", "burst/#", qos)
    slow.start()
    try:
        _burst(broker.port, "bursty", n, qos)
        assert _wait(lambda: slow.count >= n), f"subscriber got {slow.count}/{n}"
        counts = broker.call(lambda: broker.guard.counters.client("reader"))
        assert counts.get(C.DROPPED_QUEUE_FULL, 0) == 0
        assert slow.count == n and slow.payloads_ok
        # the queue never held more than its limit (it is bounded, and nothing had to be dropped)
        assert broker.call(lambda: broker.broker.queue_depth("reader"))[0] <= 100 + 20
    finally:
        slow.client.close()


def test_a_stalled_subscriber_holds_publishers_only_for_the_max_stall(inproc):
    """A subscriber that never reads: the publisher waits for it once, then it is a slow consumer (its
    queue fills, drops are counted for it alone) and a healthy subscriber of the same topic gets all."""
    n = 20000  # 10 MB: more than the kernel's socket buffers take for the stalled client
    broker = inproc(max_queued_messages=100, backpressure_max_stall=0.5)
    stalled, _ = raw.connected(broker.port, "stalled", keepalive=0, rcvbuf=4096)
    stalled.send(raw.subscribe(1, ("burst/#", 0)))
    stalled.expect(raw.SUBACK)
    healthy = SlowReader(broker.port, "healthy", "burst/#", 0, pause=0)
    healthy.start()
    try:
        _burst(broker.port, "bursty", n)
        assert _wait(lambda: healthy.count >= n), f"healthy subscriber got {healthy.count}/{n}"
        assert healthy.count == n
        entry = broker.call(lambda: broker.broker._sessions["stalled"])
        from mqtt_guard.engine.session_info import queue_of

        assert broker.call(lambda: queue_of(entry[0]).slow)
        assert broker.call(lambda: broker.guard.counters.client("stalled")).get(C.DROPPED_QUEUE_FULL, 0) > 0
        assert broker.call(lambda: broker.guard.counters.client("healthy")).get(C.DROPPED_QUEUE_FULL, 0) == 0
        # more messages now go on without waiting for the stalled one again
        _burst(broker.port, "bursty", n)
        assert _wait(lambda: healthy.count >= 2 * n)
    finally:
        stalled.close()
        healthy.client.close()


def test_a_subscriber_that_goes_away_releases_the_publisher(inproc):
    """A publisher held by a subscriber goes on at once when that subscriber disconnects."""
    broker = inproc(max_queued_messages=50, backpressure_max_stall=3600)  # only the disconnect can release
    stalled, _ = raw.connected(broker.port, "stalled", keepalive=0, rcvbuf=4096)
    stalled.send(raw.subscribe(1, ("burst/#", 0)))
    stalled.expect(raw.SUBACK)
    pub, _ = raw.connected(broker.port, "bursty", keepalive=0)
    with pub:
        data = b"".join(raw.publish("burst/t", PAYLOAD) for _ in range(20000))
        sender = threading.Thread(target=pub.sock.sendall, args=(data + raw.PINGREQ_BYTES,), daemon=True)
        sender.start()
        # the publisher is held: its reader waits for the stalled subscriber
        assert _wait(lambda: broker.call(lambda: not broker.broker._sessions["stalled"][1]._drained.is_set()))
        stalled.close()
        while pub.expect_any(timeout=30).type != raw.PINGRESP:
            pass
        sender.join(10)


def test_flow_control_can_be_turned_off(inproc):
    """backpressure_max_stall 0: publishers are never held (a full queue drops, as before)."""
    broker = inproc(max_queued_messages=20, backpressure_max_stall=0)
    stalled, _ = raw.connected(broker.port, "stalled", keepalive=0, rcvbuf=4096)
    stalled.send(raw.subscribe(1, ("burst/#", 0)))
    stalled.expect(raw.SUBACK)
    try:
        _burst(broker.port, "bursty", 20000)
        assert broker.call(lambda: broker.guard.counters.client("stalled")).get(C.DROPPED_QUEUE_FULL, 0) > 0
        assert broker.call(lambda: broker.broker._sessions["stalled"][1]._drained.is_set())
    finally:
        stalled.close()
