"""Issue 9: subscription matching through a topic trie, and the per-topic route cache.

The trie must answer exactly what amqtt's filter-by-filter `Broker._matches` answers (MQTT 3.1.1 4.7,
`$` topics not matched by leading wildcards), for any set of filters, also after removals. The route
cache (targets and their RECEIVE decision per topic) must never outlive a change of subscriptions,
sessions or ACL rules: those cases run against a real broker with real sockets.
"""

from __future__ import annotations

import functools
import logging

from amqtt.broker import Broker
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.engine.routing import TopicTrie
from mqtt_guard.metrics import counters as C
from tests.helpers import rawmqtt as raw
from tests.helpers.wait import until

LEVELS = st.sampled_from(["a", "b", "", "$SYS", "$x", "c d"])
TOPICS = st.lists(LEVELS, min_size=1, max_size=4).map("/".join)
FILTER_LEVELS = st.sampled_from(["a", "b", "", "+", "$SYS", "$x"])


@st.composite
def filters(draw):
    levels = draw(st.lists(FILTER_LEVELS, min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


_AMQTT = Broker.__new__(Broker)  # only for amqtt's own (stateless) matcher
_AMQTT.logger = logging.getLogger("amqtt.broker")


def reference(topic: str, topic_filter: str) -> bool:
    return Broker._matches(_AMQTT, topic, topic_filter)


@settings(max_examples=300, deadline=None)
@given(st.lists(filters(), max_size=12), st.lists(TOPICS, min_size=1, max_size=6), st.data())
def test_trie_matches_what_amqtt_matches(subs, topics, data):
    trie = TopicTrie()
    for f in subs:
        trie.add(f)
    removed = data.draw(st.lists(st.sampled_from(subs), max_size=len(subs))) if subs else []
    for f in removed:
        trie.remove(f)
    live = set(subs) - set(removed)
    assert len(trie) == len(live)
    for topic in topics:
        got = trie.match(topic)
        assert len(got) == len(set(got))
        assert set(got) == {f for f in live if reference(topic, f)}, topic


def test_trie_examples():
    trie = TopicTrie()
    for f in ("#", "a/#", "a/+", "+/+", "a/b", "$SYS/#", "+/b/#"):
        trie.add(f)
    assert set(trie.match("a")) == {"#", "a/#"}
    assert set(trie.match("a/b")) == {"#", "a/#", "a/+", "+/+", "a/b", "+/b/#"}
    assert set(trie.match("$SYS/x")) == {"$SYS/#"}
    trie.remove("a/#")
    trie.remove("a/#")  # twice: no effect
    trie.remove("x/y")  # never added
    assert set(trie.match("a")) == {"#"}
    assert len(trie) == 6


# -- the route cache against a real broker ------------------------------------------------------


_until = functools.partial(until, timeout=15.0)


def _drain_publishes(c: raw.RawClient, quiet: float = 0.3) -> list[bytes]:
    got = []
    while True:
        try:
            pkt = c.read(quiet)
        except TimeoutError:
            return got
        if pkt is None:
            return got
        if pkt.type == raw.PUBLISH:
            got.append(pkt.body)


def _sync(pub: raw.RawClient) -> None:
    """PINGREQ/PINGRESP: everything the publisher sent before has been routed."""
    pub.send(raw.PINGREQ_BYTES)
    while pub.expect_any(timeout=10).type != raw.PINGRESP:
        pass


def test_cached_receive_decisions_follow_acl_changes(inproc, rds, prefix, add_user):
    """A route cached while the subscriber may receive is dropped when a deny rule arrives, and the
    withheld deliveries are counted once each; removing the rule lets messages through again."""
    add_user("watcher", "pw")
    add_user("sender", "pw")
    rds.hset(f"{prefix}acl:user:watcher", "feed/#", "read")
    rds.hset(f"{prefix}acl:user:sender", "feed/#", "write")
    broker = inproc(allow_anonymous=False, acl_default="deny")
    sub, _ = raw.connected(broker.port, "w1", username="watcher", password="pw", keepalive=0)
    sub.send(raw.subscribe(1, ("feed/#", 0)))
    sub.expect(raw.SUBACK)
    pub, _ = raw.connected(broker.port, "s1", username="sender", password="pw", keepalive=0)
    with sub, pub:
        for i in range(3):
            pub.send(raw.publish("feed/x", b"before%d" % i))
        _sync(pub)
        assert len(_drain_publishes(sub)) == 3
        reloads = broker.call(lambda: broker.guard.acl.reloads)
        rds.hset(f"{prefix}acl:user:watcher", "feed/x", "deny-receive")
        assert _until(lambda: broker.call(lambda: broker.guard.acl.reloads) > reloads)
        withheld0 = broker.call(lambda: broker.guard.counters.totals.get(C.WITHHELD, 0))
        for i in range(5):
            pub.send(raw.publish("feed/x", b"after%d" % i))
            pub.send(raw.publish("feed/y", b"other%d" % i))
        _sync(pub)
        got = _drain_publishes(sub)
        assert all(b"after" not in body for body in got) and sum(b"other" in body for body in got) == 5
        assert broker.call(lambda: broker.guard.counters.totals.get(C.WITHHELD, 0)) - withheld0 == 5
        reloads = broker.call(lambda: broker.guard.acl.reloads)
        rds.hdel(f"{prefix}acl:user:watcher", "feed/x")
        assert _until(lambda: broker.call(lambda: broker.guard.acl.reloads) > reloads)
        pub.send(raw.publish("feed/x", b"again"))
        _sync(pub)
        assert [b for b in _drain_publishes(sub) if b.endswith(b"again")]


def test_cached_publish_decisions_follow_acl_changes(inproc, rds, prefix, add_user):
    add_user("watcher", "pw")
    add_user("sender", "pw")
    rds.hset(f"{prefix}acl:user:watcher", "feed/#", "read")
    rds.hset(f"{prefix}acl:user:sender", "feed/#", "write")
    broker = inproc(allow_anonymous=False, acl_default="deny")
    sub, _ = raw.connected(broker.port, "w1", username="watcher", password="pw", keepalive=0)
    sub.send(raw.subscribe(1, ("feed/#", 0)))
    sub.expect(raw.SUBACK)
    pub, _ = raw.connected(broker.port, "s1", username="sender", password="pw", keepalive=0)
    with sub, pub:
        pub.send(raw.publish("feed/x", b"one"))
        _sync(pub)
        assert len(_drain_publishes(sub)) == 1
        reloads = broker.call(lambda: broker.guard.acl.reloads)
        rds.hset(f"{prefix}acl:user:sender", "feed/x", "deny")
        assert _until(lambda: broker.call(lambda: broker.guard.acl.reloads) > reloads)
        pub.send(raw.publish("feed/x", b"two"))
        pub.send(raw.publish("feed/z", b"three"))
        _sync(pub)
        assert [b[-5:] for b in _drain_publishes(sub)] == [b"three"]
        assert broker.call(lambda: broker.guard.counters.client("s1")).get(C.DENIED_PUBLISH) == 1


def test_routes_follow_subscriptions_and_sessions(inproc):
    broker = inproc()
    a, _ = raw.connected(broker.port, "a", keepalive=0)
    a.send(raw.subscribe(1, ("t/#", 0)))
    a.expect(raw.SUBACK)
    pub, _ = raw.connected(broker.port, "p", keepalive=0)
    with a, pub:
        pub.send(raw.publish("t/1", b"x1"))
        _sync(pub)
        assert len(_drain_publishes(a)) == 1
        b, _ = raw.connected(broker.port, "b", keepalive=0)  # a new subscriber of the cached topic
        with b:
            b.send(raw.subscribe(1, ("t/1", 1)))
            b.expect(raw.SUBACK)
            pub.send(raw.publish("t/1", b"x2"))
            _sync(pub)
            assert len(_drain_publishes(a)) == 1 and len(_drain_publishes(b)) == 1
            a.send(raw.unsubscribe(2, "t/#"))
            a.expect(raw.UNSUBACK)
            pub.send(raw.publish("t/1", b"x3"))
            _sync(pub)
            assert _drain_publishes(a) == [] and len(_drain_publishes(b)) == 1
        b.close()
        assert _until(lambda: broker.call(lambda: "b" not in broker.broker._sessions))
        pub.send(raw.publish("t/1", b"x4"))  # b's session is gone: nothing is routed to its queue
        _sync(pub)
        assert broker.call(lambda: broker.broker.queue_depths()).get("b") is None


def test_a_disconnect_removes_exactly_that_clients_subscriptions(inproc):
    """The broker keeps each client's filters (so a disconnect does not scan every filter of the broker):
    a clean session's filters go with it, shared filters stay for the others, and a persistent session
    keeps its filters while offline until it comes back with a clean session."""
    broker = inproc()
    a, _ = raw.connected(broker.port, "a", keepalive=0)
    b, _ = raw.connected(broker.port, "b", keepalive=0)
    p, _ = raw.connected(broker.port, "p", keepalive=0, clean=False)
    a.send(raw.subscribe(1, ("shared/#", 0)))
    a.expect(raw.SUBACK)
    b.send(raw.subscribe(1, ("shared/#", 0), ("only-b/+", 0)))
    b.expect(raw.SUBACK)
    p.send(raw.subscribe(1, ("persistent/t", 1)))
    p.expect(raw.SUBACK)

    def subscribers() -> dict[str, list[str]]:
        return broker.call(
            lambda: {f: sorted(s.client_id for s, _ in entries) for f, entries in broker.broker._subscriptions.items()}
        )

    assert subscribers() == {"shared/#": ["a", "b"], "only-b/+": ["b"], "persistent/t": ["p"]}
    b.close()
    p.close()
    assert _until(lambda: broker.call(lambda: "b" not in broker.broker._sessions))
    assert _until(lambda: broker.call(lambda: broker.broker._sessions["p"][0].transitions.state) == "disconnected")
    assert subscribers() == {"shared/#": ["a"], "persistent/t": ["p"]}
    assert broker.call(lambda: broker.broker._trie.match("only-b/x")) == []  # the emptied filter left the trie
    pub, _ = raw.connected(broker.port, "pub", keepalive=0)
    with a, pub:
        pub.send(raw.publish("shared/1", b"still-routed"))
        _sync(pub)
        assert _drain_publishes(a) == [raw.publish("shared/1", b"still-routed")[2:]]
        p2, _ = raw.connected(broker.port, "p", keepalive=0, clean=True)  # a clean start drops its filters
        with p2:
            assert subscribers() == {"shared/#": ["a"]}
