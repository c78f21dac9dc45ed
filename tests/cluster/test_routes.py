"""Filter sets between brokers through a real redis-server (store/cluster.py RouteLink): two or three
in-process brokers (the cluster classes, registered by the real liveness write) see each other's
filters within milliseconds, removals, a clean leave, a death by missed heartbeats and the reaping, a
lost publication (resync), and a Redis restart (every set published and read whole again)."""

from __future__ import annotations

import asyncio

from mqtt_guard.store.connection import make_async_client
from mqtt_guard.store.keys import Keys
from mqtt_guard.store.quota import QuotaStore
from tests.cluster.helpers import Node
from tests.helpers.servers import RedisServer
from tests.helpers.wait import until_async


async def routed(node: Node, topic: str, expected: set[str], timeout: float = 5.0) -> bool:
    return bool(await until_async(lambda: node.table.brokers_for(topic) == expected, timeout))


def test_a_filter_added_on_one_broker_is_routable_on_the_others_and_removal(redis_server, prefix):
    async def body() -> None:
        a, b, c = [await Node(redis_server.url, prefix, n).start() for n in "abc"]
        try:
            b.subscribe("sensors/+/temp")
            b.subscribe("sensors/+/temp")  # a second subscriber: no change for the cluster
            c.subscribe("sensors/#")
            assert await routed(a, "sensors/k1/temp", {b.broker_id, c.broker_id})
            assert await routed(b, "sensors/k1/temp", {c.broker_id})  # a broker never routes to itself
            assert await routed(c, "sensors/k1/temp", {b.broker_id})
            assert a.table.brokers_for("#") == set() and a.table.brokers_for("$SYS/x") == set()
            b.unsubscribe("sensors/+/temp")
            await asyncio.sleep(0.3)
            assert a.table.brokers_for("sensors/k1/temp") == {b.broker_id, c.broker_id}  # one subscriber left
            b.unsubscribe("sensors/+/temp")
            assert await routed(a, "sensors/k1/temp", {c.broker_id})
            assert await routed(c, "sensors/k1/temp", set())
            # many changes in one iteration: one publication
            before = b.link.published
            for i in range(100):
                b.subscribe(f"bulk/{i}")
            assert await routed(a, "bulk/99", {b.broker_id})
            assert b.link.published == before + 1
        finally:
            for n in (a, b, c):
                await n.stop()

    asyncio.run(body())


def test_a_broker_that_starts_later_reads_everything_and_a_clean_leave_is_seen_at_once(redis_server, prefix, rds):
    async def body() -> None:
        a = await Node(redis_server.url, prefix, "a").start()
        try:
            a.subscribe("x/+")
            await until_async(lambda: a.link.published >= 2)
            b = await Node(redis_server.url, prefix, "b").start()
            assert await routed(b, "x/1", {a.broker_id})
            b.subscribe("y")
            assert await routed(a, "y", {b.broker_id})
            # b leaves the cluster while its heartbeat goes on: only the leave can take it out of a's table
            assert await until_async(lambda: b.broker_id in a.link.live)
            await b.cluster.stop()
            assert await routed(a, "y", set())
            assert b.broker_id in a.link.live  # still alive in the registry
            assert not rds.exists(Keys(prefix).cluster_filters(b.broker_id))
            await b._stop_beating()
            await b._redis.aclose()
        finally:
            await a.stop()

    asyncio.run(body())


def test_a_dead_broker_disappears_from_the_table_and_its_keys_go_when_it_is_reaped(redis_server, prefix, rds):
    async def body() -> None:
        a, b = [await Node(redis_server.url, prefix, n).start() for n in "ab"]
        keys = Keys(prefix)
        try:
            b.subscribe("t/#")
            assert await routed(a, "t/1", {b.broker_id})
            await b.die()  # killed: no leave, heartbeats stop
            assert await routed(a, "t/1", set(), timeout=5.0)  # its heartbeat ran out (1 s)
            assert rds.exists(keys.cluster_filters(b.broker_id))  # dead, not reaped yet
            redis = make_async_client(redis_server.url)
            reaped = await QuotaStore(redis, keys).reap_dead(by="test")
            await redis.aclose()
            assert b.broker_id in reaped
            assert await until_async(lambda: not rds.exists(keys.cluster_filters(b.broker_id)))
            assert b.broker_id not in rds.smembers(keys.cluster_members())
        finally:
            await a.stop()

    asyncio.run(body())


def test_a_late_broker_comes_back_into_the_table(redis_server, prefix):
    async def body() -> None:
        a, b = [await Node(redis_server.url, prefix, n).start() for n in "ab"]
        try:
            b.subscribe("late/+")
            assert await routed(a, "late/1", {b.broker_id})
            await b._stop_beating()  # alive, but its heartbeat runs out
            assert await routed(a, "late/1", set())
            await b.beat_once()  # back before anybody reaped it
            assert await routed(a, "late/1", {b.broker_id})
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(body())


def test_a_lost_publication_makes_the_readers_resync(redis_server, prefix, rds):
    async def body() -> None:
        a, b = [await Node(redis_server.url, prefix, n).start() for n in "ab"]
        try:
            b.subscribe("one")
            assert await routed(a, "one", {b.broker_id})
            resyncs = a.link.resyncs
            rds.incr(Keys(prefix).cluster_routes_seq())  # a publication a never sees (as if trimmed away)
            b.subscribe("two")
            assert await routed(a, "two", {b.broker_id})
            assert a.link.resyncs == resyncs + 1
            assert a.table.entries(b.broker_id) == {"one", "two"}
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(body())


def test_after_a_redis_restart_every_set_is_published_and_read_whole_again(prefix):
    server = RedisServer().start()

    async def body() -> None:
        a, b = [await Node(server.url, prefix, n).start() for n in "ab"]
        try:
            a.subscribe("from/a")
            b.subscribe("from/b/#")
            assert await routed(a, "from/b/1", {b.broker_id})
            assert await routed(b, "from/a", {a.broker_id})
            server.stop()
            await asyncio.sleep(0.5)
            b.subscribe("while/down")  # changed while Redis is away
            server.start()  # empty: no registry, no sets
            assert await routed(a, "while/down", {b.broker_id}, timeout=10)
            assert await routed(b, "from/a", {a.broker_id}, timeout=10)
            assert a.table.entries(b.broker_id) == {"from/b/#", "while/down"}
            a.subscribe("after")
            assert await routed(b, "after", {a.broker_id})
        finally:
            await a.stop()
            await b.stop()

    try:
        asyncio.run(body())
    finally:
        server.cleanup()


def test_random_changes_on_three_brokers_converge_while_readers_are_cut(redis_server, prefix, rds):
    """A seeded random run: 600 subscribe/unsubscribe calls spread over three brokers and many event-loop
    iterations, while the route readers' connections are killed now and then (CLIENT KILL). Once it
    settles, every broker's table holds exactly each other broker's set (the oracle: their LocalFilters)."""
    import random

    rng = random.Random(18)
    entries = ["a/#", "a/+", "+/b", "#", "$SYS/#", "c", "c/d/e", "$share/g/a/+", "$share/h/#", "x/+/y"]

    async def body() -> None:
        nodes = [await Node(redis_server.url, prefix, n).start() for n in "abc"]
        held: list[list[str]] = [[], [], []]
        killed = 0
        try:
            for step in range(600):
                i = rng.randrange(3)
                if held[i] and rng.random() < 0.45:
                    entry = held[i].pop(rng.randrange(len(held[i])))
                    nodes[i].unsubscribe(entry)
                else:
                    entry = rng.choice(entries)
                    held[i].append(entry)
                    nodes[i].subscribe(entry)
                if step % 10 == 0:
                    await asyncio.sleep(rng.choice([0, 0, 0.002, 0.01]))
                if step % 150 == 75:
                    victim = nodes[rng.randrange(3)]
                    for client in rds.client_list():
                        if client.get("name") == f"mqg-cluster-routes-{victim.broker_id}":
                            rds.client_kill_filter(_id=client["id"])
                            killed += 1

            def settled() -> bool:
                return all(
                    n.table.entries(m.broker_id) == m.filters.entries()
                    and n.table.brokers() <= {m.broker_id for m in nodes}
                    for n in nodes
                    for m in nodes
                    if m is not n
                )

            assert await until_async(settled, timeout=10)
            assert killed == 4 and sum(n.link.resyncs for n in nodes) >= 3 + killed  # the cut readers resynced
            for n, mine in zip(nodes, held, strict=True):
                assert n.filters.entries() == set(mine)
            topics = ["a/b", "a", "z/b", "$SYS/x", "c/d/e", "x/1/y", "q"]
            for n in nodes:
                for topic in topics:
                    want = {
                        m.broker_id
                        for m in nodes
                        if m is not n and any(_matches(e, topic) for e in m.filters.entries())
                    }
                    assert n.table.brokers_for(topic) == want, (topic, n.broker_id)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(body())


def _matches(entry: str, topic: str) -> bool:
    from mqtt_guard.acl.topics import topic_matches
    from mqtt_guard.cluster.filters import routing_filter

    return topic_matches(routing_filter(entry), topic)


def test_a_broker_never_seen_in_the_registry_is_forgotten_after_the_grace(redis_server, prefix, rds):
    """Its set is used at first (a starting broker publishes before its first heartbeat), and dropped
    and deleted once it has been missing from the registry for `absent_grace`."""

    async def body() -> None:
        a = await Node(redis_server.url, prefix, "a", absent_grace=1.0).start()
        ghost = await Node(redis_server.url, prefix, "ghost").start(register=False)
        try:
            ghost.subscribe("g/#")
            assert await routed(a, "g/1", {ghost.broker_id})
            await ghost.die()  # never registered, now gone
            assert await routed(a, "g/1", set(), timeout=5)
            assert await until_async(lambda: not rds.exists(Keys(prefix).cluster_filters(ghost.broker_id)))
        finally:
            await a.stop()

    asyncio.run(body())
