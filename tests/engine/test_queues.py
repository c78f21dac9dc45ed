"""Item 9: bounded outgoing queues. A subscriber that stops reading costs at most its queue limits; past
them messages are dropped and counted for that client, and the other subscribers get everything.

Plain amqtt 0.12.1 has no queue to bound: one Task per delivery piles up on the stalled client's write
lock (+133 MB RSS for 20 MB of payload, docs/amqtt-proofs/p5_slow_consumer.py -> p5_slow_consumer_qos0.out),
so there is nothing to compare in-process here; the proof script shows the growth.
"""

from __future__ import annotations

import functools
import threading

import pytest

from mqtt_guard.metrics import counters as C
from tests.helpers import rawmqtt as raw
from tests.helpers.wait import until

N = 10000
PAYLOAD = b"x" * 1024


def _stalled(port: int, cid: str, qos: int) -> raw.RawClient:
    c, _ = raw.connected(port, cid, keepalive=0, rcvbuf=4096)
    c.send(raw.subscribe(1, ("flood/#", qos)))
    c.expect(raw.SUBACK)
    return c  # and never read again


class Counter(threading.Thread):
    """A healthy raw subscriber that counts PUBLISH packets (acking QoS 1)."""

    def __init__(self, port: int, cid: str) -> None:
        super().__init__(daemon=True)
        self.client, _ = raw.connected(port, cid, keepalive=0)
        self.client.send(raw.subscribe(1, ("flood/#", 1)))
        self.client.expect(raw.SUBACK)
        self.count = 0

    def run(self) -> None:
        while True:
            try:
                pkt = self.client.read(10)
            except OSError:
                return
            if pkt is None:
                return
            if pkt.type == raw.PUBLISH:
                self.count += 1
                if pkt.qos == 1:
                    self.client.send(raw.ack(raw.PUBACK, pkt.packet_id))


def _flood(port: int, qos: int, healthy: Counter | None = None) -> None:
    """Publish N messages in batches of 50, each once the healthy subscriber (if any) has received the
    previous ones, and return once the broker has routed all of them (PINGRESP after them)."""
    pub, _ = raw.connected(port, "flooder", keepalive=0)
    with pub:
        batch = []
        for i in range(N):
            batch.append(raw.publish("flood/x", PAYLOAD, qos=qos, packet_id=i % 65000 + 1))
            if len(batch) == 50:
                if healthy is not None:
                    assert _wait(lambda i=i: healthy.count >= i + 1 - 50), f"healthy got {healthy.count}/{i + 1 - 50}"
                pub.send(b"".join(batch))
                batch.clear()
                if qos:
                    for _ in range(50):
                        pub.expect(raw.PUBACK, timeout=30)
        pub.send(raw.PINGREQ_BYTES)
        while pub.expect_any(timeout=30).type != raw.PINGRESP:
            pass


_wait = functools.partial(until, timeout=30.0, interval=0.002)


@pytest.mark.parametrize("qos", [0, 1])
def test_stalled_subscriber_is_bounded_and_drops_are_counted(inproc, qos):
    broker = inproc(max_queued_messages=100, max_inflight_messages=20)
    stalled = _stalled(broker.port, "stalled", qos)
    healthy = Counter(broker.port, "healthy")
    healthy.start()
    try:
        _flood(broker.port, qos, healthy)
        assert _wait(lambda: healthy.count == N), f"healthy subscriber got {healthy.count}/{N}"
        messages, size = broker.call(lambda: broker.broker.queue_depth("stalled"))
        assert messages <= 100 + (20 if qos else 0)
        assert size <= messages * (len(PAYLOAD) + len("flood/x"))
        depths = broker.call(lambda: broker.broker.queue_depths())
        assert depths["stalled"] == (messages, size) and depths["healthy"][0] <= 20
        counts = broker.call(lambda: broker.guard.counters.client("stalled"))
        # Most of the 20 MB could not be sent or queued: dropped and counted for that client only.
        assert counts.get(C.DROPPED_QUEUE_FULL, 0) > N // 2
        assert broker.call(lambda: broker.guard.counters.client("healthy")).get(C.DROPPED_QUEUE_FULL, 0) == 0
    finally:
        stalled.close()
        healthy.client.close()
    # Once the stalled client is gone (clean session) nothing is held for it.
    assert _wait(lambda: broker.call(lambda: broker.broker.queue_depth("stalled")) == (0, 0))


def test_byte_limit(inproc):
    broker = inproc(max_queued_messages=0, max_queued_bytes=64 * 1024)
    stalled = _stalled(broker.port, "stalled", 0)
    try:
        _flood(broker.port, 0)
        messages, size = broker.call(lambda: broker.broker.queue_depth("stalled"))
        assert 0 < size <= 64 * 1024
        assert broker.call(lambda: broker.guard.counters.client("stalled")).get(C.DROPPED_QUEUE_FULL, 0) > N // 2
    finally:
        stalled.close()


def test_queue_depth_of_unknown_client_is_zero(inproc):
    broker = inproc()
    assert broker.call(lambda: broker.broker.queue_depth("nobody")) == (0, 0)
