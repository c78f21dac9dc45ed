"""Forwarding between brokers (cluster/forward.py, store/cluster.py Outbox/Inbox): the packed form
round-trips every field; with a real redis-server and three in-process brokers a message reaches each
broker with a matching subscriber once, in order per publisher and topic, in one stream entry per
destination per event-loop iteration; QoS 1/2 messages survive the receiving broker's Redis connection
being killed for a few seconds (none lost, none twice), and batches re-sent by the sender are skipped;
a broker away longer than its inbox holds gets the newest messages and counts what it missed."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.cluster.forward import PackError, RemoteMessage, Sequencer, pack, pack_one, unpack
from tests.cluster.helpers import Node
from tests.helpers.wait import until_async

# -- the packed form ------------------------------------------------------------------------------

messages = st.builds(
    RemoteMessage,
    topic=st.text(st.characters(blacklist_characters="\x00+#", blacklist_categories=("Cs",)), min_size=1, max_size=30),
    payload=st.binary(max_size=300),
    qos=st.integers(0, 2),
    retain=st.booleans(),
    properties=st.binary(max_size=40),
    expiry=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    client_id=st.text(max_size=23),
    username=st.one_of(st.none(), st.text(max_size=20)),
    origin=st.just("b-origin"),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, min_size=1, max_size=20))
def test_a_batch_round_trips_every_field_in_order(batch: list[RemoteMessage]) -> None:
    assert unpack(pack([pack_one(m) for m in batch]), "b-origin") == batch


def test_an_unreadable_batch_is_refused_not_misread() -> None:
    good = pack([pack_one(RemoteMessage("a/b", b"x", 1))])
    with pytest.raises(PackError):
        unpack(b"\x09" + good[1:], "o")  # a future format
    with pytest.raises(PackError):
        unpack(good[:-1], "o")  # truncated
    with pytest.raises(PackError):
        unpack(b"", "o")


def test_the_sequencer_skips_resent_batches_and_counts_missing_ones() -> None:
    s = Sequencer()
    assert s.check("a", 1) == 0 and s.check("a", 2) == 0
    assert s.check("a", 2) == -1 and s.check("a", 1) == -1  # sent again
    assert s.check("a", 5) == 2  # 3 and 4 were lost
    assert s.check("b", 1) == 0  # per sender


# -- through Redis ------------------------------------------------------------------------------


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def test_a_message_reaches_each_broker_with_a_subscriber_once_in_order(redis_server, prefix):
    async def body() -> None:
        a, b, c = [await Node(redis_server.url, prefix, n).start() for n in "abc"]
        try:
            b.subscribe("s/+/t")
            b.subscribe("s/#")  # overlapping filters on one broker: still one copy for b
            c.subscribe("s/1/t")
            c.subscribe("$share/g/s/2/t")
            await until_async(lambda: a.table.brokers_for("s/2/t") == {b.broker_id, c.broker_id})
            for i in range(500):  # one event-loop iteration
                a.publish(f"s/{i % 3}/t", str(i).encode(), qos=i % 3, client_id="pub-1", username="alice")
            assert a.publish("other", b"nobody") == 0
            await until_async(lambda: len(b.received) == 500 and len(c.received) == 333, timeout=10)
            assert await a.outbox.flush()
            assert a.outbox.entries == 2 and a.outbox.round_trips == 1  # one XADD per destination
            assert [m.payload for m in b.received] == [str(i).encode() for i in range(500)]
            assert [m.payload for m in c.received] == [str(i).encode() for i in range(500) if i % 3 in (1, 2)]
            m = b.received[7]
            assert (m.topic, m.qos, m.client_id, m.username, m.origin) == ("s/1/t", 1, "pub-1", "alice", a.broker_id)
            # a message that came from another broker is never forwarded again
            assert b.cluster.forward(m) == 0
            # many iterations: order kept across batches
            for i in range(300):
                a.publish("s/1/t", b"n%d" % i, qos=1)
                if i % 7 == 0:
                    await asyncio.sleep(0)
            await until_async(lambda: len(c.received) == 633, timeout=10)
            assert [m.payload for m in c.received[333:]] == [b"n%d" % i for i in range(300)]
            assert b.inbox.duplicates == c.inbox.duplicates == 0 and not b.inbox.missed
        finally:
            for n in (a, b, c):
                await n.stop()

    asyncio.run(body())


def test_qos1_messages_survive_the_receivers_redis_connection_being_killed(redis_server, prefix):
    """The receiver's connection is killed again and again for ~3 s (CLIENT KILL) while 1,000 QoS 1
    messages are forwarded in many iterations: after it reconnects it has every message once, in order."""
    kill = _client(redis_server.url)

    async def body() -> None:
        a = await Node(redis_server.url, prefix, "a").start()
        b = await Node(redis_server.url, prefix, "b", retry_interval=1.0).start()
        try:
            b.subscribe("q/#")
            await until_async(lambda: a.table.brokers_for("q/1") == {b.broker_id})
            await until_async(lambda: b.inbox.connected.is_set())
            end = time.monotonic() + 2.5
            sent = 0
            killed = 0
            while sent < 1000:
                for _ in range(10):
                    a.publish(f"q/{sent % 4}", b"%d" % sent, qos=1)
                    sent += 1
                if time.monotonic() < end and b.inbox.connected.is_set():
                    for client in kill.client_list():
                        if client.get("name") == b.inbox.name:
                            kill.client_kill_filter(_id=client["id"])
                            killed += 1
                await asyncio.sleep(0.03)  # 100 iterations of 10 messages over ~3 s
            assert killed >= 2 and b.inbox.reconnects >= 2
            await until_async(lambda: len(b.received) >= 1000, timeout=15)
            await asyncio.sleep(0.3)
            assert [m.payload for m in b.received] == [b"%d" % i for i in range(1000)]  # all, once, in order
            assert b.inbox.duplicates == 0 and b.inbox.missed == 0
        finally:
            await a.stop()
            await b.stop()

    try:
        asyncio.run(body())
    finally:
        kill.close()


def test_batches_sent_again_by_the_sender_are_delivered_once(redis_server, prefix):
    """The sender's connection is killed while it writes (its batches are sent again when it does not
    know whether Redis took them), and a batch is written twice on purpose: nothing arrives twice."""
    kill = _client(redis_server.url)

    async def body() -> None:
        a, b = [await Node(redis_server.url, prefix, n).start() for n in "ab"]
        try:
            b.subscribe("r")
            await until_async(lambda: a.table.brokers_for("r") == {b.broker_id})
            for i in range(1000):
                a.publish("r", b"%d" % i, qos=2)
                if i % 50 == 0:
                    await asyncio.sleep(0)
                    for client in kill.client_list():
                        if client.get("name") == f"mqg-cluster-out-{a.broker_id}":
                            kill.client_kill_filter(_id=client["id"])
            await until_async(lambda: len(b.received) >= 1000, timeout=15)
            inbox = a.keys.cluster_inbox(b.broker_id)
            kill.xadd(inbox, {"o": a.broker_id, "s": 1, "m": pack([pack_one(RemoteMessage("r", b"again", 1))])})
            await asyncio.sleep(0.5)
            assert [m.payload for m in b.received] == [b"%d" % i for i in range(1000)]
            assert b.inbox.duplicates >= 1
        finally:
            await a.stop()
            await b.stop()

    try:
        asyncio.run(body())
    finally:
        kill.close()


def test_a_broker_away_longer_than_its_inbox_holds_gets_the_newest_and_counts_the_rest(redis_server, prefix):
    async def body() -> None:
        a = await Node(redis_server.url, prefix, "a", inbox_maxlen=10).start()
        b = await Node(redis_server.url, prefix, "b").start()
        try:
            b.subscribe("long")
            await until_async(lambda: a.table.brokers_for("long") == {b.broker_id})
            await b.inbox.stop()  # b stops reading (its heartbeat goes on: it is alive, only away)
            for i in range(1000):  # 1,000 iterations: 1,000 entries, trimmed to about the newest 100
                a.publish("long", b"%d" % i, qos=1)
                await asyncio.sleep(0)
            assert await a.outbox.flush()
            b.inbox.start()
            await until_async(lambda: b.received and b.received[-1].payload == b"999", timeout=10)
            got = [int(m.payload) for m in b.received]
            assert got == sorted(got) and len(got) < 1000  # the newest, in order; the oldest trimmed
            assert b.inbox.missed == 1000 - len(got)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(body())


def test_what_was_read_is_trimmed_from_the_inbox(redis_server, prefix, rds):
    async def body() -> None:
        a, b = [await Node(redis_server.url, prefix, n).start() for n in "ab"]
        b.inbox.trim_interval = 0.1
        try:
            b.subscribe("x")
            await until_async(lambda: a.table.brokers_for("x") == {b.broker_id})
            for i in range(20):
                a.publish("x", b"%d" % i)
                await asyncio.sleep(0.01)
            await until_async(lambda: len(b.received) == 20)
            assert await until_async(lambda: rds.xlen(b.keys.cluster_inbox(b.broker_id)) == 0, timeout=5)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(body())


def test_each_publishers_order_is_kept_when_several_brokers_send_to_one(redis_server, prefix):
    async def body() -> None:
        a, b, c = [await Node(redis_server.url, prefix, n).start() for n in "abc"]
        try:
            b.subscribe("t/#")
            await until_async(lambda: a.table.brokers_for("t/x") == c.table.brokers_for("t/x") == {b.broker_id})
            for i in range(600):
                a.publish(f"t/{i % 2}", b"%d" % i, qos=1, client_id="pa")
                c.publish(f"t/{i % 2}", b"%d" % i, qos=2, client_id="pc")
                if i % 40 == 0:
                    await asyncio.sleep(0)
            await until_async(lambda: len(b.received) == 1200, timeout=10)
            for pub, origin in (("pa", a.broker_id), ("pc", c.broker_id)):
                for topic in ("t/0", "t/1"):
                    got = [int(m.payload) for m in b.received if m.client_id == pub and m.topic == topic]
                    assert got == [i for i in range(600) if f"t/{i % 2}" == topic]
                    assert {m.origin for m in b.received if m.client_id == pub} == {origin}
        finally:
            for n in (a, b, c):
                await n.stop()

    asyncio.run(body())


def test_a_late_broker_gets_what_is_forwarded_after_it_is_back(redis_server, prefix):
    """Declared dead (heartbeat late), then back before being reaped: the sender dropped what waited for
    it, and what it forwards afterwards is new to the receiver (not taken for re-sent batches)."""

    async def body() -> None:
        a, b = [await Node(redis_server.url, prefix, n).start() for n in "ab"]
        try:
            b.subscribe("l")
            await until_async(lambda: a.table.brokers_for("l") == {b.broker_id})
            for i in range(10):
                a.publish("l", b"before%d" % i, qos=1)
                await asyncio.sleep(0)
            await until_async(lambda: len(b.received) == 10)
            await b._stop_beating()
            assert await until_async(lambda: a.table.brokers_for("l") == set())
            assert a.publish("l", b"while dead", qos=1) == 0
            await b.beat_once()
            assert await until_async(lambda: a.table.brokers_for("l") == {b.broker_id})
            for i in range(10):
                a.publish("l", b"after%d" % i, qos=1)
                await asyncio.sleep(0)
            await until_async(lambda: len(b.received) == 20)
            assert [m.payload for m in b.received[10:]] == [b"after%d" % i for i in range(10)]
            assert b.inbox.duplicates == 0
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(body())


def test_while_redis_is_away_qos1_waits_and_qos0_past_the_buffer_is_dropped(prefix):
    """Redis stops (and comes back empty): the sender keeps its QoS 1 messages and sends them once Redis
    is back; QoS 0 messages past `buffer_limit` are dropped and counted."""
    from tests.helpers.servers import RedisServer

    server = RedisServer().start()

    async def body() -> None:
        a = await Node(server.url, prefix, "a", buffer_limit=20).start()
        b = await Node(server.url, prefix, "b").start()
        try:
            b.subscribe("w")
            await until_async(lambda: a.table.brokers_for("w") == {b.broker_id})
            server.stop()
            for i in range(10):
                a.publish("w", b"q1-%d" % i, qos=1)
            for i in range(50):
                a.publish("w", b"q0-%d" % i, qos=0)
            await asyncio.sleep(0.5)
            assert a.outbox.lost == 40 and a.outbox.pending == 20
            server.start()
            await until_async(lambda: len(b.received) >= 20, timeout=15)
            await asyncio.sleep(0.3)
            assert [m.payload for m in b.received] == [b"q1-%d" % i for i in range(10)] + [
                b"q0-%d" % i for i in range(10)
            ]
        finally:
            await a.stop()
            await b.stop()

    try:
        asyncio.run(body())
    finally:
        server.cleanup()


def test_a_batch_of_an_unknown_format_is_skipped_and_counted_and_the_rest_delivered(redis_server, prefix, rds):
    async def body() -> None:
        a, b = [await Node(redis_server.url, prefix, n).start() for n in "ab"]
        try:
            b.subscribe("f")
            await until_async(lambda: a.table.brokers_for("f") == {b.broker_id})
            good = pack([pack_one(RemoteMessage("f", b"from a newer broker", 1))])
            rds.xadd(b.keys.cluster_inbox(b.broker_id), {"o": "newer", "s": 1, "m": b"\x02" + good[1:]})
            a.publish("f", b"ok", qos=1)
            await until_async(lambda: len(b.received) == 1)
            assert b.received[0].payload == b"ok"
            counters = b.cluster.counters()
            assert counters["cluster_batches_unreadable"] == 1 and counters["cluster_received"] == 1
            assert a.cluster.counters()["cluster_forwarded"] == 1
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(body())
