"""Per-message quota decisions of the Guard (what the engine calls), against a real Redis.

Each Guard is what one broker process holds; two Guards on one prefix are two brokers sharing a
quota. These tests call `admit_publish` / `admit_delivery` the way the engine does after its ACL
check, and read the results back from Redis.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from mqtt_guard.metrics import counters as C
from mqtt_guard.quota.enforcer import QuotaRefusal
from mqtt_guard.reasons import Reason
from mqtt_guard.store.quota import QuotaStore, SyncRequest
from tests.quota.helpers import attach, eventually, fresh_window, guards, make_config


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def config(redis_server, prefix):
    return make_config(redis_server.url, prefix)


def usage(rds, prefix, user, metric, window):
    start = int(time.time() // window * window)
    return rds.hgetall(f"{prefix}quota:usage:{user}:{metric}:{start}")


def test_eleventh_publish_is_dropped_and_with_disconnect_the_user_is_blocked_until_the_window_resets(
    config, rds, prefix
):
    rds.hset(f"{prefix}quota:user:d17", mapping={"events": "10/1m", "on_exceed": "disconnect"})

    async def body():
        await fresh_window(60, 15)
        async with guards(config) as [g]:
            c = await attach(g, "d17-a", "d17")
            assert [g.admit_publish(c, "t", 10, 1) for _ in range(11)] == [True] * 10 + [False]
            assert g.counters.client("d17-a").get(C.OVER_QUOTA) == 1
            assert await eventually(lambda: g.kicks.of("d17-a"))  # through the broker's own kick queue
            assert "events quota 10/1m used up until" in g.kicks.of("d17-a")[0]
            assert not g.admit_publish(c, "t", 10, 1)  # still connected until the kick lands: still dropped
            assert len(g.kicks.of("d17-a")) == 1  # kicked once, not once per message
            assert g.kicks.codes("d17-a") == [Reason.QUOTA_EXCEEDED]  # through the kick record in Redis
            block = rds.hgetall(f"{prefix}block:user:d17")
            window_end = (time.time() // 60 + 1) * 60
            assert "events quota 10/1m" in block["reason"] and int(block["until"]) == window_end
            assert 0 < rds.pttl(f"{prefix}block:user:d17") <= (window_end - time.time()) * 1000 + 50
            g.detach(c)
            with pytest.raises(QuotaRefusal, match="blocked for .* more .*events quota 10/1m used up") as refused:
                await attach(g, "d17-b", "d17")
            assert refused.value.code == Reason.QUOTA_EXCEEDED  # a quota's block, not an admin's
            audit = [e for _, e in rds.xrange(f"{prefix}audit")]
            assert [e["action"] for e in audit] == ["block", "kick"]
            assert audit[1]["client_id"] == "d17-a" and audit[1]["by"] == g.quota.broker_id
            await QuotaStore(g.redis, g.keys).reset("d17")  # `mqtt-guard quota reset d17`
            await asyncio.sleep(0.05)  # its invalidation reaches the broker (before any real client's CONNECT)
            c2 = await attach(g, "d17-b", "d17")
            assert await eventually(lambda: g.admit_publish(c2, "t", 10, 1))
        used = usage(rds, prefix, "d17", "events", 60)
        assert used["used"] == "1"  # after the reset, only the new publish counts

    run(body())


def test_drop_mode_drops_but_does_not_disconnect(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:u", "events", "3/1h")

    async def body():
        async with guards(config) as [g]:
            c = await attach(g, "u-1", "u")
            assert [g.admit_publish(c, "t", 1, 0) for _ in range(5)] == [True] * 3 + [False] * 2
            await asyncio.sleep(0.3)
            assert g.kicks.calls == [] and not rds.exists(f"{prefix}block:user:u")
            assert g.counters.client("u-1").get(C.OVER_QUOTA) == 2

    run(body())


def test_direction_out_counts_deliveries_only_and_in_counts_publishes_only(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:reader", mapping={"events": "3/1h", "events_direction": "out"})
    rds.hset(f"{prefix}quota:user:writer", mapping={"events": "3/1h", "events_direction": "in"})

    async def body():
        async with guards(config) as [g]:
            r = await attach(g, "r", "reader")
            w = await attach(g, "w", "writer")
            assert all(g.admit_publish(r, "t", 1, 0) for _ in range(10))
            assert [g.admit_delivery(r, "t", 1) for _ in range(4)] == [True, True, True, False]
            assert all(g.admit_delivery(w, "t", 1) for _ in range(10))
            assert [g.admit_publish(w, "t", 1, 0) for _ in range(4)] == [True, True, True, False]

    run(body())


def test_both_directions_share_one_allowance(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:u", "events", "4/1h")

    async def body():
        async with guards(config) as [g]:
            c = await attach(g, "c", "u")
            assert g.admit_publish(c, "t", 1, 0) and g.admit_delivery(c, "t", 1)
            assert g.admit_publish(c, "t", 1, 0) and g.admit_delivery(c, "t", 1)
            assert not g.admit_publish(c, "t", 1, 0) and not g.admit_delivery(c, "t", 1)

    run(body())


def test_bytes_quota_counts_payload_bytes(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:u", "bytes", "100/1h")

    async def body():
        async with guards(config) as [g]:
            c = await attach(g, "c", "u")
            assert g.admit_publish(c, "t", 60, 1)
            assert not g.admit_publish(c, "t", 50, 1)  # only 40 left: a 50-byte message does not fit
            assert g.admit_publish(c, "t", 40, 1)
            assert not g.admit_publish(c, "t", 1, 1)
            await eventually(lambda: usage(rds, prefix, "u", "bytes", 3600).get("used") == "100")

    run(body())


def test_rate_is_a_token_bucket_per_connection(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:u", mapping={"rate": "1/s:3"})

    async def body():
        async with guards(config) as [g]:
            a = await attach(g, "a", "u")
            b = await attach(g, "b", "u")
            assert [g.admit_publish(a, "t", 1, 0) for _ in range(4)] == [True, True, True, False]
            assert g.admit_publish(b, "t", 1, 0)  # another connection has its own bucket
            assert g.admit_delivery(a, "t", 1)  # rate limits publishes only
            assert g.counters.client("a").get(C.OVER_QUOTA) == 1

    run(body())


def test_rate_with_disconnect_kicks_without_a_block(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:u", mapping={"rate": "1/s:2", "on_exceed": "disconnect"})

    async def body():
        async with guards(config) as [g]:
            c = await attach(g, "c", "u")
            assert [g.admit_publish(c, "t", 1, 0) for _ in range(3)] == [True, True, False]
            assert await eventually(lambda: g.kicks.of("c"))
            assert "rate" in g.kicks.of("c")[0]
            assert g.kicks.codes("c") == [Reason.MESSAGE_RATE_TOO_HIGH]
            assert not rds.exists(f"{prefix}block:user:u")

    run(body())


def test_one_quota_shared_by_two_brokers_is_never_overspent_and_fully_usable(redis_server, prefix, rds):
    # Small leases so that both brokers keep coming back to Redis and contend for the tail.
    config = make_config(redis_server.url, prefix, lease_min_events=3, lease_fraction=0.05)
    rds.hset(f"{prefix}quota:user:fleet", "events", "60/1h")

    async def body():
        async with guards(config, 2) as [g1, g2]:
            a = await attach(g1, "dev-a", "fleet")
            b = await attach(g2, "dev-b", "fleet")
            admitted = {"a": 0, "b": 0}
            for _ in range(150):
                admitted["a"] += g1.admit_publish(a, "t", 1, 0)
                admitted["b"] += g2.admit_publish(b, "t", 1, 0)
                await asyncio.sleep(0.01)
            assert admitted["a"] + admitted["b"] <= 60  # the bound: exact while brokers run
            assert admitted["a"] > 0 and admitted["b"] > 0
            # Keep going until the allowance parked on either broker has been handed over and spent.
            for _ in range(300):
                if admitted["a"] + admitted["b"] == 60:
                    break
                admitted["a"] += g1.admit_publish(a, "t", 1, 0)
                admitted["b"] += g2.admit_publish(b, "t", 1, 0)
                await asyncio.sleep(0.01)
            assert admitted["a"] + admitted["b"] == 60
            await eventually(lambda: usage(rds, prefix, "fleet", "events", 3600).get("used") == "60")

    run(body())


def test_reconnecting_to_another_broker_does_not_renew_the_allowance(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:u", "events", "5/1h")

    async def body():
        async with guards(config, 2) as [g1, g2]:
            c = await attach(g1, "dev", "u")
            assert sum(g1.admit_publish(c, "t", 1, 0) for _ in range(8)) == 5
            g1.detach(c)
            c = await attach(g2, "dev", "u")
            assert not g2.admit_publish(c, "t", 1, 0)

    run(body())


def test_unused_lease_is_returned_on_disconnect_and_taken_by_the_other_broker(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:u", "events", "50/1h")

    async def body():
        async with guards(config, 2) as [g1, g2]:
            c = await attach(g1, "dev", "u")
            assert sum(g1.admit_publish(c, "t", 1, 0) for _ in range(7)) == 7
            key = f"{prefix}quota:usage:u:events:{int(time.time() // 3600 * 3600)}"
            assert rds.hget(key, f"lease:{g1.quota.broker_id}") == "50"  # a limit under lease_min: all of it
            g1.detach(c)
            await eventually(lambda: rds.hget(key, f"lease:{g1.quota.broker_id}") == "0")
            assert rds.hget(key, "used") == "7"
            c = await attach(g2, "dev", "u")
            assert sum(g2.admit_publish(c, "t", 1, 0) for _ in range(50)) == 43

    run(body())


def test_heartbeat_reports_every_connection_across_slices_while_clients_come_and_go(config, rds, prefix):
    """The report pass gives the loop back every REPORT_SLICE connections: with more connections than
    that, every one is reported, and connections that leave meanwhile are not brought back."""
    from mqtt_guard.quota.heartbeat import REPORT_SLICE

    n = 2 * REPORT_SLICE + 50

    async def body():
        async with guards(config) as [g]:
            clients = [await attach(g, f"d{i}", f"u{i % 7}") for i in range(n)]
            for i, c in enumerate(clients):
                g.admit_publish(c, "t", i + 1, 0)
            leaving = clients[-10:]
            for c in leaving:
                g.detach(c)
            last = n - 11
            assert await eventually(lambda: rds.hget(f"{prefix}session:d{last}", "bytes_in") == str(last + 1))
            assert rds.hget(f"{prefix}session:d0", "bytes_in") == "1"
            assert rds.hget(f"{prefix}session:d{REPORT_SLICE}", "events_in") == "1"
            assert await eventually(lambda: not any(rds.exists(f"{prefix}session:{c.client_id}") for c in leaving))

    run(body())


def test_sessions_limit_is_global_across_brokers(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:u", "sessions", "2")

    async def body():
        async with guards(config, 2) as [g1, g2]:
            await attach(g1, "one", "u")
            two = await attach(g2, "two", "u")
            with pytest.raises(QuotaRefusal, match="too many sessions: user 'u' has 2 connected") as refused:
                await attach(g1, "three", "u")
            assert refused.value.code == Reason.QUOTA_EXCEEDED
            # The same client id again (a reconnect, here on the other broker) is not an extra session;
            # the old connection is kicked through Redis on the broker holding it.
            await attach(g2, "one", "u")
            assert await eventually(lambda: g1.kicks.of("one"))
            assert "connected again on broker" in g1.kicks.of("one")[0]
            assert g1.kicks.codes("one") == [Reason.SESSION_TAKEN_OVER]  # pushed by the other broker
            g2.detach(two)
            assert await eventually(lambda: not rds.hexists(f"{prefix}sessions:user:u", "two"))
            await attach(g1, "three", "u")

    run(body())


def test_session_registry_records_broker_since_and_usage_and_forgets_on_disconnect(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:u", "events", "100/1d")

    async def body():
        async with guards(config) as [g]:
            before = time.time()
            c = await attach(g, "dev", "u")
            g.admit_publish(c, "t", 7, 0)
            g.admit_delivery(c, "t", 5)
            await eventually(lambda: rds.hget(f"{prefix}session:dev", "bytes_out") == "5")
            s = rds.hgetall(f"{prefix}session:dev")
            assert s["broker"] == g.quota.broker_id and s["username"] == "u" and s["client_id"] == "dev"
            assert before - 1 <= float(s["since"]) <= time.time()
            assert (s["events_in"], s["bytes_in"], s["events_out"]) == ("1", "7", "1")
            assert rds.hget(f"{prefix}sessions:user:u", "dev").startswith(g.quota.broker_id + "/")
            assert rds.zscore(f"{prefix}brokers", g.quota.broker_id) > time.time() * 1000
            g.detach(c)
            await eventually(lambda: not rds.exists(f"{prefix}session:dev"))
            assert not rds.hexists(f"{prefix}sessions:user:u", "dev")
            assert rds.smembers(f"{prefix}broker:{g.quota.broker_id}:sessions") == set()
        # A clean shutdown takes the broker out of the registry.
        assert rds.zscore(f"{prefix}brokers", g.quota.broker_id) is None

    run(body())


def test_limit_changes_apply_without_restart(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:u", "events", "5/1h")

    async def body():
        async with guards(config) as [g]:
            c = await attach(g, "c", "u")
            assert sum(g.admit_publish(c, "t", 1, 0) for _ in range(10)) == 5
            rds.hset(f"{prefix}quota:user:u", "events", "8/1h")  # as redis-cli or `quota set` would
            assert await eventually(lambda: g.admit_publish(c, "t", 1, 0))
            assert sum(g.admit_publish(c, "t", 1, 0) for _ in range(10)) == 2
            rds.hset(f"{prefix}quota:default", "rate", "1/s:1")  # the default applies to everybody
            await eventually(lambda: g.quota.users["u"].limits.rate is not None)
            rds.hset(f"{prefix}quota:user:u", "events", "none")
            await eventually(lambda: g.quota.users["u"].limits.events is None)
            assert [g.admit_publish(c, "t", 1, 0) for _ in range(2)] == [True, False]  # only the rate is left

    run(body())


def test_a_retried_sync_never_counts_twice(config, rds, prefix):
    async def body():
        async with guards(config) as [g]:
            store = QuotaStore(g.redis, g.keys)
            key = g.keys.quota_usage("u", "events", 0)
            req = SyncRequest(key, "", 4, 0, 10, 100, int(time.time()) + 60)
            first = (await store.sync("b1", [req]))[0]
            again = (await store.sync("b1", [SyncRequest(key, first.gen, 4, 0, 10, 100, req.expire_at)]))[0]
            assert (first.used, again.used) == (4, 4)
            later = (await store.sync("b1", [SyncRequest(key, first.gen, 9, 0, 10, 100, req.expire_at)]))[0]
            assert later.used == 9

    run(body())


def test_window_rollover_uses_the_next_windows_lease_without_waiting(config, rds, prefix):
    rds.hset(f"{prefix}quota:user:u", "events", "2/2s")

    async def body():
        async with guards(config) as [g]:
            await fresh_window(2, 1.2)
            c = await attach(g, "c", "u")
            assert [g.admit_publish(c, "t", 1, 0) for _ in range(3)] == [True, True, False]
            await asyncio.sleep(2 - time.time() % 2 + 0.01)  # just after the boundary
            assert g.admit_publish(c, "t", 1, 0)  # prefetched: no drop while the new lease is fetched
            assert g.admit_publish(c, "t", 1, 0) and not g.admit_publish(c, "t", 1, 0)
            await asyncio.sleep(2 - time.time() % 2 + 2.01)  # a whole window without a message, then the next
            assert g.admit_publish(c, "t", 1, 0)

    run(body())


def test_killed_broker_loses_at_most_its_last_batch_and_its_lease_is_reclaimed(redis_server, prefix, rds):
    config = make_config(redis_server.url, prefix, sync_interval=0.1, broker_dead_after=0.5)
    rds.hset(f"{prefix}quota:user:u", "events", "100/1h")
    key = f"{prefix}quota:usage:u:events:{int(time.time() // 3600 * 3600)}"

    async def body():
        from tests.quota.helpers import crash

        async with guards(config, 2) as [g1, g2]:
            c = await attach(g1, "dev", "u")
            assert sum(g1.admit_publish(c, "t", 1, 0) for _ in range(30)) == 30
            await eventually(lambda: rds.hget(key, "used") == "30")  # reported by a heartbeat
            assert sum(g1.admit_publish(c, "t", 1, 0) for _ in range(5)) == 5  # not reported yet...
            await crash(g1)  # ...when the process dies
            # g2 finds g1 dead (no heartbeat for broker_dead_after) and reaps it.
            assert await eventually(lambda: not rds.exists(f"{prefix}session:dev"), timeout=5)
            assert rds.hget(key, f"lease:{g1.quota.broker_id}") is None
            # Lost: the 5 of the last batch, no more (none, when a heartbeat that was under way as the
            # crash came reported them: its Redis call may run on through the cancellation).
            used = int(rds.hget(key, "used"))
            assert used in (30, 35)
            c2 = await attach(g2, "dev", "u")
            assert sum(g2.admit_publish(c2, "t", 1, 0) for _ in range(100)) == 100 - used

    run(body())


@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "empty-restart"])
def test_redis_restart_loses_no_counted_usage(prefix, persistent):
    from tests.helpers.servers import RedisServer

    server = RedisServer(persistent=persistent).start()
    config = make_config(server.url, prefix, sync_interval=0.1)
    rds = server.client()
    rds.hset(f"{prefix}quota:user:u", "events", "100/1h")
    key = f"{prefix}quota:usage:u:events:{int(time.time() // 3600 * 3600)}"

    async def body():
        async with guards(config) as [g]:
            c = await attach(g, "dev", "u")
            assert sum(g.admit_publish(c, "t", 1, 0) for _ in range(20)) == 20
            await eventually(lambda: rds.hget(key, "used") == "20")
            server.stop()
            assert sum(g.admit_publish(c, "t", 1, 0) for _ in range(15)) == 15  # spent from the lease
            await asyncio.sleep(0.3)
            server.start()
            if not persistent:
                rds.hset(f"{prefix}quota:user:u", "events", "100/1h")
            # The broker reports its cumulative count again: nothing is lost, nothing counted twice.
            assert await eventually(lambda: rds.hget(key, "used") == "35", timeout=10)
            assert await eventually(lambda: rds.hget(f"{prefix}session:dev", "broker") == g.quota.broker_id)
            assert sum(g.admit_publish(c, "t", 1, 0) for _ in range(100)) == 65

    try:
        run(body())
    finally:
        rds.close()
        server.cleanup()


@pytest.mark.parametrize("policy", ["deny", "allow"])
def test_lease_spent_while_redis_is_down_follows_on_redis_down(prefix, policy):
    from tests.helpers.servers import RedisServer

    server = RedisServer(persistent=True).start()
    config = make_config(server.url, prefix, lease_min_events=5, lease_fraction=0.01, on_redis_down=policy)
    rds = server.client()
    rds.hset(f"{prefix}quota:user:u", "events", "100/1h")
    key = f"{prefix}quota:usage:u:events:{int(time.time() // 3600 * 3600)}"

    async def body():
        async with guards(config) as [g]:
            c = await attach(g, "dev", "u")
            server.stop()
            assert await eventually(lambda: not g.quota.redis_ok)  # noticed at the next sync (one interval)
            results = [g.admit_publish(c, "t", 1, 0) for _ in range(8)]
            if policy == "deny":
                assert results == [True] * 5 + [False] * 3  # the lease it held, no more
            else:
                assert results == [True] * 8  # counted on credit...
            server.start()
            # ...and reported once Redis is back, like everything spent meanwhile
            assert await eventually(lambda: rds.hget(key, "used") == str(results.count(True)), timeout=10)

    try:
        run(body())
    finally:
        rds.close()
        server.cleanup()


def test_take_over_on_the_same_broker_keeps_the_registry_right(config, rds, prefix):
    async def body():
        async with guards(config) as [g]:
            first = await attach(g, "shared-id", "alice")
            second = await attach(g, "shared-id", "bob")  # same client id, another user, same broker
            g.detach(first)  # the old connection ends after the new one was admitted
            await g.quota.registry.drain()  # registrations and closes go out in batches
            assert not rds.hexists(f"{prefix}sessions:user:alice", "shared-id")
            assert rds.hget(f"{prefix}session:shared-id", "username") == "bob"
            assert rds.hexists(f"{prefix}sessions:user:bob", "shared-id")
            assert await eventually(lambda: "alice" not in g.quota.users)  # after quota.linger
            g.detach(second)
            await eventually(lambda: not rds.exists(f"{prefix}session:shared-id"))

    run(body())
