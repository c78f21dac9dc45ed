"""engine/remote.py and the trie's watch (issue 18): what a message becomes on its way to another broker
and back, and how the cluster learns this broker's filters. The end-to-end behaviour, with real brokers
on one Redis, is in tests/cluster/test_brokers_e2e.py."""

from __future__ import annotations

import time

from mqtt_guard.cluster.forward import pack_one, unpack
from mqtt_guard.engine import remote
from mqtt_guard.engine.mqtt5 import Message5
from mqtt_guard.engine.routing import TopicTrie


def test_a_plain_message_travels_plain_and_arrives_without_properties():
    out = remote.outgoing("pub-1", "alice", "a/b", b"x", 1, False, None)
    assert out is not None
    (back,) = unpack(b"\x01" + pack_one(out), "broker-a")
    assert (back.topic, back.payload, back.qos, back.client_id, back.username, back.origin) == (
        "a/b",
        b"x",
        1,
        "pub-1",
        "alice",
        "broker-a",
    )
    assert remote.incoming(back, None) is None  # the 3.1.1 path: nothing to carry


def test_mqtt5_properties_expiry_and_retain_travel_and_expiry_restarts_on_arrival():
    props = Message5(b"\x03\x00\x04text", time.monotonic() + 9.2, origin=object())
    out = remote.outgoing("p", None, "t", b"y", 2, True, props)
    assert out is not None and out.properties == props.forwarded and out.expiry == 10  # seconds left, rounded up
    assert out.retain and out.username is None
    here = remote.incoming(out, None)
    assert here is not None and here.retain and here.forwarded == props.forwarded
    assert 9.0 < here.expires - time.monotonic() <= 10.0


def test_an_expired_message_is_not_forwarded():
    assert remote.outgoing("p", None, "t", b"y", 1, False, Message5(b"", time.monotonic() - 0.1)) is None


def test_no_local_compares_the_publishers_session_here():
    """A session here with the publisher's client id: its queue is the message's origin, so a No Local
    subscription of it is skipped as for its own local PUBLISH (broker._fanout: `origin is queue`)."""
    out = remote.outgoing("me", None, "t", b"y", 0, False, None)
    assert out is not None
    queue = object()
    here = remote.incoming(out, queue)
    assert here is not None and here.origin is queue and not here.retain and here.expires == 0.0


def test_the_trie_tells_its_watcher_each_filter_entering_and_leaving_once():
    trie = TopicTrie()
    trie.add("held/before")
    seen: list[str] = []
    trie.watch(lambda f: seen.append("+" + f), lambda f: seen.append("-" + f))
    assert sorted(trie.filters()) == ["held/before"]
    trie.add("a/+")
    trie.add("a/+")  # already in the set: nothing
    trie.add("a/#")
    trie.remove("a/+")
    trie.remove("a/+")  # gone already: nothing
    trie.remove("never/there")
    assert seen == ["+a/+", "+a/#", "-a/+"]
    assert sorted(trie.filters()) == ["a/#", "held/before"]
