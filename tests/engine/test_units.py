"""Unit tests of the engine's pure parts: OutQueue bookkeeping and the strict parsers (fuzzed)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.engine.broker import Ended
from mqtt_guard.engine.packets import parse_connect
from mqtt_guard.engine.protocol import (
    Incomplete,
    ProtocolViolation,
    encode_publish,
    parse_fixed_header,
)
from mqtt_guard.engine.queues import OutQueue
from tests.helpers import rawmqtt as raw


class Port:
    def __init__(self, writable: bool = True) -> None:
        self.can = writable
        self.frames: list[bytes] = []
        self.woken = 0

    def writable(self) -> bool:
        return self.can

    def emit(self, frame: bytes, payload_len: int) -> None:
        self.frames.append(frame)

    def wake(self) -> None:
        self.woken += 1


def test_offer_goes_straight_out_while_the_socket_keeps_up():
    q = OutQueue(10, 0, 2)
    q.online, q.port = True, Port()
    assert q.offer(b"t", b"a", 0, False) and q.offer(b"t", b"b", 1, False)
    assert q.port.frames == [encode_publish(b"t", b"a", 0, False), encode_publish(b"t", b"b", 1, False, False, 1)]
    assert q.depth() == (1, 2)  # the QoS 1 one is in flight until PUBACK
    assert q.acked(1) and q.depth() == (0, 0)


def test_limits_window_and_order():
    q = OutQueue(3, 0, 2)
    port = Port(writable=False)
    q.online, q.port = True, port
    assert all(q.offer(b"t", b"%d" % i, 1, False) for i in range(3))
    assert not q.offer(b"t", b"3", 1, False)  # 3 waiting: full
    frames, n, payload = q.take(1 << 20)
    assert n == 2 and payload == 2  # the in-flight window is 2
    assert q.depth() == (3, 6) and not q.ready()  # topic + payload bytes
    assert q.offer(b"t", b"4", 0, False)  # a QoS 0 waits behind the QoS 1 (order is kept)
    assert not q.ready()
    assert q.acked(1)
    assert q.ready()
    frames, n, _ = q.take(1 << 20)
    assert n == 2  # "2" (QoS 1, id 3) and "4" (QoS 0)


def test_byte_limit_counts_topic_and_payload():
    q = OutQueue(0, 10, 20)
    q.online = True
    assert q.offer(b"tt", b"12345678", 1, False)  # 10 bytes
    assert not q.offer(b"t", b"", 1, False)
    assert q.depth() == (1, 10)


def test_offline_drops_qos0_silently_and_resends_in_flight_with_dup():
    q = OutQueue(10, 0, 5)
    q.online, q.port = True, Port()
    q.offer(b"a", b"1", 1, False)
    q.offer(b"b", b"2", 2, False)
    assert q.received(2)  # PUBREC for the QoS 2 one
    q.port.can = False
    q.offer(b"c", b"0", 0, False)
    q.go_offline()
    assert q.depth()[0] == 2  # the QoS 0 waiting one is gone
    assert q.offer(b"d", b"x", 0, False) and q.depth()[0] == 2  # offline QoS 0: not queued
    assert q.resend_frames() == [encode_publish(b"a", b"1", 1, False, True, 1), raw.ack(raw.PUBREL, 2)]


def test_packet_ids_skip_ids_in_flight():
    q = OutQueue(0, 0, 65535)
    q.online, q.port = True, Port()
    for _ in range(65535):
        q.offer(b"t", b"", 1, False)
    assert len(q.inflight) == 65535
    q.acked(7)
    q.offer(b"t", b"", 1, False)
    assert 7 in q.inflight and len(q.inflight) == 65535


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_connect_parser_only_raises_protocol_violation(body):
    try:
        parse_connect(body)
    except ProtocolViolation:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=12))
def test_fixed_header_parser_only_raises_incomplete_or_violation(data):
    try:
        first, length, hlen = parse_fixed_header(data, 0)
        assert 2 <= hlen <= 5 and length < 268_435_456
    except (Incomplete, ProtocolViolation):
        pass


def test_connect_parser_accepts_what_clients_send():
    body = raw.connect("dev", username="u", password=b"\xff\x00", will=("w/t", b"bye", 1, True), keepalive=30)[2:]
    info = parse_connect(body)
    assert (info.client_id, info.username, info.will, info.keepalive, info.clean) == (
        "dev",
        "u",
        ("w/t", b"bye", 1, True),
        30,
        True,
    )


def test_a_queue_gets_its_own_pending_deque_only_when_something_waits():
    a, b = OutQueue(10, 0, 2), OutQueue(10, 0, 2)
    assert a.pending is b.pending and not a.pending  # shared and empty: no 0.6 KB block per session
    a.online, a.port = True, Port(writable=False)
    assert a.offer(b"t", b"x", 1, False) and a.offer0(b"frame", 1, 2)
    assert a.pending is not b.pending and len(a.pending) == 2 and not b.pending
    b.online, b.port = True, Port(writable=False)
    assert b.offer0(b"frame", 1, 2) and len(b.pending) == 1 and len(a.pending) == 2


def test_ended_wakes_every_waiter_and_a_timed_out_waiter_leaves_the_others_waiting():
    """`Ended` (a connection's take-over marker): a take-over that gave up waiting must not cancel what
    a shutdown or another take-over waits on."""

    async def main() -> None:
        ended = Ended()
        assert not ended.is_set()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ended.wait(), 0.01)
        other = asyncio.ensure_future(ended.wait())
        late = asyncio.ensure_future(ended.wait())
        await asyncio.sleep(0)
        assert not other.done()
        ended.set()
        await asyncio.wait_for(asyncio.gather(other, late), 1)
        assert ended.is_set()
        await asyncio.wait_for(ended.wait(), 0.01)  # set: returns at once

    asyncio.run(main())
