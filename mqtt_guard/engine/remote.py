"""The engine's side of the cluster (issue 18, docs/scaling.md "Engine integration"): what a message of a
local client becomes when it is forwarded to other brokers, and what a message another broker forwarded
becomes here. Pure conversions; GuardedBroker (broker.py) calls them at its few hook points:

- subscriptions: the broker's topic trie tells the cluster when a filter enters or leaves this broker's
  set (`TopicTrie.watch`): every subscription of every session, offline persistent ones included,
  passes through it, so one hook covers SUBSCRIBE, UNSUBSCRIBE, a session's end, drop, take-over,
  expiry and a session restored from Redis;
- publishing: after the publisher's PUBLISH ACL and quota (counted once, here), `cluster.destinations`
  (cached per topic by the cluster's table until it changes) and, when another broker has a matching
  subscriber, `cluster.forward(outgoing(...))`: for a client's PUBLISH, a retained message and a will;
- receiving: `GuardedBroker.on_remote` delivers a forwarded message as a local PUBLISH of its publisher
  (each receiver's RECEIVE check, quota and analytics, granted QoS, MQTT 5 options), with `incoming`'s
  Message5; it is never forwarded again.
"""

from __future__ import annotations

import math
import time

from ..cluster import RemoteMessage
from .mqtt5 import Message5

__all__ = ["incoming", "outgoing"]


def outgoing(
    client_id: str, username: str | None, topic: str, payload: bytes, qos: int, retain: bool, props: Message5 | None
) -> RemoteMessage | None:
    """The RemoteMessage of a message published here; None when its Message Expiry Interval has passed
    (nobody may receive it any more). The expiry travels as the whole seconds left, rounded up as in the
    Message Expiry Interval a subscriber is sent (mqtt5.expiry_property)."""
    if props is None:
        return RemoteMessage(topic, payload, qos, retain, b"", None, client_id, username)
    expiry = None
    if props.expires:
        left = props.expires - time.monotonic()
        if left <= 0:
            return None
        expiry = math.ceil(left)
    return RemoteMessage(topic, payload, qos, retain, props.forwarded, expiry, client_id, username)


def incoming(message: RemoteMessage, origin: object) -> Message5 | None:
    """The Message5 a forwarded message is delivered with here: its properties, its expiry counted from
    now, RETAIN as published (for Retain As Published subscribers), and `origin`, the queue of a session
    here with the publisher's client id (None: none), so that a No Local subscription of that session is
    not sent its own message [MQTT-3.8.3-3]. None when there is nothing of the kind (the plain path)."""
    expiry = message.expiry
    if not message.properties and expiry is None and not message.retain and origin is None:
        return None
    return Message5(
        message.properties,
        time.monotonic() + expiry if expiry is not None else 0.0,
        origin,
        message.retain,
    )
