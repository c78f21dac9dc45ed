"""The engine accounts deliveries through `Guard.delivery_group(clients).admit(topic, size)` (one call
per message for all targets of a cached route, one spend per user). It must decide and count exactly
as `Guard.admit_delivery` called for each client in turn: the same clients refused when a user's
allowance runs out in the middle of a fan-out, the same over-quota counts, the same usage, and a group
built before a client left or came back is not used after.
"""

from __future__ import annotations

import asyncio

import pytest

from mqtt_guard.metrics import counters as C
from tests.quota.helpers import attach, guards, make_config


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def config(redis_server, prefix):
    return make_config(redis_server.url, prefix)


def test_a_group_decides_and_counts_like_one_call_per_client(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:fan", mapping={"events": "25/1h", "bytes": "10KB/1h", "events_direction": "out"})
    rds.hset(f"{prefix}quota:user:ref", mapping={"events": "25/1h", "bytes": "10KB/1h", "events_direction": "out"})

    async def body():
        async with guards(config) as [g]:
            fan = [await attach(g, f"fan-{i}", "fan") for i in range(10)]
            ref = [await attach(g, f"ref-{i}", "ref") for i in range(10)]
            free = await attach(g, "anon-like", "nobody")  # a user without limits: admitted, usage counted
            group = g.delivery_group([*fan, free])
            for _message in range(3):
                refused = group.admit("t", 10)
                expected = {c.client_id for c in ref if not g.admit_delivery(c, "t", 10)}
                assert (refused or set()) == {f"fan-{i}" for i in range(10) if f"ref-{i}" in expected}
                assert group.current()
            # 30 deliveries wanted, 25 allowed: the last 5 clients of the third message were refused
            assert refused == {f"fan-{i}" for i in range(5, 10)}
            for i in range(10):
                assert g.counters.client(f"fan-{i}").get(C.OVER_QUOTA, 0) == g.counters.client(f"ref-{i}").get(
                    C.OVER_QUOTA, 0
                )
                assert g.quota.clients[f"fan-{i}"].usage == g.quota.clients[f"ref-{i}"].usage
            assert g.quota.clients["anon-like"].usage["events_out"] == 3
            # the byte limit refuses the same way (10 KB: 1,000 B messages, 10 fit)
            rds.hset(f"{prefix}quota:user:byt", mapping={"bytes": "10KB/1h", "events_direction": "out"})
            byt = [await attach(g, f"byt-{i}", "byt") for i in range(4)]
            group = g.delivery_group(byt)
            got = [group.admit("t", 1000) for _ in range(3)]
            assert got[:2] == [None, None] and got[2] == {"byt-2", "byt-3"}
            # a client leaving makes the group stale
            g.detach(byt[0])
            assert not group.current()

    run(body())
