"""The cluster core against one broker: the same random scenario (clients with wildcard and overlapping
subscriptions spread over three in-process brokers, QoS 0/1/2 messages from clients on every broker)
delivers to every client exactly what a single broker would (each matching message once, in order per
publisher and topic). Local delivery here is a stand-in for the engine's: a client gets a message when
one of its filters matches (acl/topics.py `topic_matches`), once however many match."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

from mqtt_guard.acl.topics import topic_matches
from mqtt_guard.cluster.forward import RemoteMessage
from tests.cluster.helpers import Node
from tests.helpers.wait import until_async

FILTERS = ["#", "+/+", "a/#", "a/+", "a/b", "+/b/#", "c/+/d", "$SYS/#", "a/b/c", "+/+/+"]
TOPICS = ["a", "a/b", "a/c", "x/b", "a/b/c", "c/z/d", "x/b/y", "$SYS/load", "q/r/s", "b/b"]

Got = tuple[str, str, bytes]  # (publisher, topic, payload)


class Broker:
    """A Node plus local clients and the stand-in local delivery."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.clients: dict[str, set[str]] = {}
        self.inbox: dict[str, list[Got]] = defaultdict(list)
        node.inbox.on_remote = self.deliver

    def subscribe(self, client: str, entry: str) -> None:
        mine = self.clients.setdefault(client, set())
        if entry not in mine:  # a re-SUBSCRIBE is not a new subscription
            mine.add(entry)
            self.node.subscribe(entry)

    def unsubscribe(self, client: str, entry: str) -> None:
        if entry in self.clients.get(client, set()):
            self.clients[client].discard(entry)
            self.node.unsubscribe(entry)

    def deliver(self, m: RemoteMessage) -> None:
        for client, filters in self.clients.items():
            if any(topic_matches(f, m.topic) for f in filters):
                self.inbox[client].append((m.client_id, m.topic, m.payload))

    def publish(self, client: str, topic: str, payload: bytes, qos: int) -> None:
        m = RemoteMessage(topic, payload, qos, client_id=client)
        self.deliver(m)
        self.node.cluster.forward(m)


def oracle(subs: dict[str, set[str]], published: list[Got]) -> dict[str, list[Got]]:
    out: dict[str, list[Got]] = defaultdict(list)
    for pub, topic, payload in published:
        for client, filters in subs.items():
            if any(topic_matches(f, topic) for f in filters):
                out[client].append((pub, topic, payload))
    return out


def per_stream(got: list[Got]) -> dict[tuple[str, str], list[bytes]]:
    """Messages by (publisher, topic), in the order received: what MQTT orders."""
    out: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for pub, topic, payload in got:
        out[(pub, topic)].append(payload)
    return dict(out)


def test_three_brokers_deliver_what_one_broker_would(redis_server, prefix):
    rng = random.Random(1818)

    def settled(brokers: list[Broker]) -> bool:
        return all(
            b.node.table.entries(o.node.broker_id) == o.node.filters.entries()
            for b in brokers
            for o in brokers
            if o is not b
        )

    async def body() -> None:
        brokers = [Broker(await Node(redis_server.url, prefix, n).start()) for n in "abc"]
        home: dict[str, Broker] = {}
        try:
            for i in range(15):
                client = f"c{i}"
                home[client] = brokers[i % 3]
                for entry in rng.sample(FILTERS, rng.randint(1, 3)):
                    home[client].subscribe(client, entry)
            for phase in range(2):
                assert await until_async(lambda: settled(brokers), timeout=10)
                subs = {c: set(f) for b in brokers for c, f in b.clients.items()}
                before = {c: len(b.inbox[c]) for b in brokers for c in b.clients}
                published: list[Got] = []
                for n in range(400):
                    client = f"c{rng.randrange(15)}"
                    topic = rng.choice(TOPICS)
                    payload = b"%d-%d" % (phase, n)
                    home[client].publish(client, topic, payload, rng.randrange(3))
                    published.append((client, topic, payload))
                    if rng.random() < 0.1:
                        await asyncio.sleep(0)
                want = oracle(subs, published)

                def done(before: dict[str, int] = before, want: dict[str, list[Got]] = want) -> bool:
                    return all(len(home[c].inbox[c]) - before.get(c, 0) == len(want.get(c, [])) for c in want)

                assert await until_async(done, timeout=15)
                await asyncio.sleep(0.2)  # nothing more arrives (no duplicates late)
                for c in subs:
                    got = home[c].inbox[c][before.get(c, 0) :]
                    assert sorted(got) == sorted(want.get(c, [])), c  # each matching message, once
                    assert per_stream(got) == per_stream(want.get(c, [])), c  # order per publisher and topic
                # phase 2: subscriptions change (some clients drop filters, others add), then publish again
                for i in range(15):
                    client = f"c{i}"
                    if rng.random() < 0.5 and home[client].clients[client]:
                        home[client].unsubscribe(client, rng.choice(sorted(home[client].clients[client])))
                    else:
                        home[client].subscribe(client, rng.choice(FILTERS))
        finally:
            for b in brokers:
                await b.node.stop()

    asyncio.run(body())
