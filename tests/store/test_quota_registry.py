"""The batched session registry script (REGISTRY_LUA) against the real redis-server: the invariant
`registered sessions + reserved slots <= sessions` under every operation, and reaping of slots."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from mqtt_guard.auth import ownership
from mqtt_guard.store.keys import Keys
from mqtt_guard.store.lease import SyncRequest
from mqtt_guard.store.quota import Fenced, QuotaStore, RegistryOp


def run(coro):
    return asyncio.run(coro)


def store_for(redis_server, prefix):
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    return client, QuotaStore(client, Keys(prefix))


def op_open(cid, user="u", limit=4, mode="c", conn=None):
    return RegistryOp("o", cid, conn or f"conn-{cid}", user, time.time(), limit, mode)


def op_close(cid, user="u", limit=4, keep=0, conn=None):
    return RegistryOp("c", cid, conn or f"conn-{cid}", user, limit=limit, extra=str(keep))


def op_slots(want, user="u", limit=4):
    return RegistryOp("l", "", "", user, limit=limit, extra=str(want))


def test_checked_opens_count_the_slots_of_every_broker(redis_server, prefix, rds):
    async def body():
        client, store = store_for(redis_server, prefix)
        try:
            # limit 12, slot block 2: granted only while 2 x 2 places stay free after the grant
            [g1] = await store.registry("b1", [op_slots(2, limit=12)])
            [g2] = await store.registry("b2", [op_slots(2, limit=12)])
            assert (g1.mine, g2.mine, g2.reserved) == (2, 2, 2)
            res = await store.registry("b1", [op_open(f"c{i}", limit=12) for i in range(8)])
            assert all(r.ok for r in res)
            [r] = await store.registry("b3", [op_open("c8", limit=12)])  # 8 + 4 reserved = 12
            assert not r.ok and (r.sessions, r.reserved) == (8, 4) and set(r.holders) == {"b1", "b2"}
            # b2's slots: an 's' open takes one (the count stays 12); without one it is checked.
            res = await store.registry(
                "b2",
                [
                    op_open("s1", limit=12, mode="s"),
                    op_open("s2", limit=12, mode="s"),
                    op_open("s3", limit=12, mode="s"),
                ],
            )
            assert [(r.ok, r.mine) for r in res] == [(True, 1), (True, 0), (False, 0)]
            assert rds.hlen(f"{prefix}sessions:user:u") == 10
            assert rds.hgetall(f"{prefix}sessions:slots:u") == {"lease:b1": "2"}
            # At the limit a broker's checked open uses its own slot.
            [r] = await store.registry("b1", [op_open("own", limit=12)])
            assert r.ok and r.mine == 1
            # A grant near the limit is refused; a return frees the places at once.
            [g] = await store.registry("b2", [op_slots(2, limit=12)])
            assert g.mine == 0
            [r] = await store.registry("b3", [op_open("x", limit=12)])
            assert not r.ok
            await store.registry("b1", [op_slots(0, limit=12)])
            assert not rds.exists(f"{prefix}sessions:slots:u")
            assert rds.smembers(f"{prefix}broker:b1:leases") == set()
            [r] = await store.registry("b3", [op_open("x", limit=12)])
            assert r.ok
            [r] = await store.registry("b3", [op_open("y", limit=12)])
            assert not r.ok and r.sessions == 12
        finally:
            await client.aclose()

    run(body())


def test_a_close_becomes_a_slot_only_far_from_the_limit_and_a_reopen_is_not_an_extra_session(redis_server, prefix, rds):
    async def body():
        client, store = store_for(redis_server, prefix)
        try:
            await store.registry("b1", [op_open(f"c{i}", limit=10) for i in range(4)])
            # 4 registered, limit 10: turning one into a slot leaves 10 - 3 - 1 = 6 >= 2 x 2 free
            [r] = await store.registry("b1", [op_close("c0", limit=10, keep=2)])
            assert r.ok and r.mine == 1
            [r] = await store.registry("b1", [op_close("c1", limit=10, keep=2)])
            assert r.mine == 2  # at most `keep`
            [r] = await store.registry("b1", [op_close("c2", limit=10, keep=2)])
            assert r.mine == 2
            assert rds.hlen(f"{prefix}sessions:user:u") == 1
            # The same client id again (a take-over) is not an extra session and takes no slot.
            [r] = await store.registry("b2", [op_open("c3", limit=10, mode="s", conn="other")])
            assert r.ok and r.prev_broker == "b1" and r.prev_conn == "conn-c3" and r.mine == -1
            # The old connection's close leaves the new registration alone.
            [r] = await store.registry("b1", [op_close("c3", limit=10, keep=2)])
            assert not r.ok and rds.hget(f"{prefix}sessions:user:u", "c3") == "b2/other"
            # In one batch, in order: an open and the close of the same connection.
            res = await store.registry("b1", [op_open("q", limit=10), op_close("q", limit=10)])
            assert res[0].ok and res[1].ok and not rds.exists(f"{prefix}session:q")
            assert rds.smembers(f"{prefix}broker:b1:leases") == {f"{prefix}sessions:slots:u"}
        finally:
            await client.aclose()

    run(body())


def test_reaping_a_dead_broker_drops_its_slots_and_sessions(redis_server, prefix, rds):
    async def body():
        client, store = store_for(redis_server, prefix)
        try:
            await store.heartbeat("dead", 0.001, {"pid": 1})
            await store.registry("dead", [op_open("a", limit=100), op_slots(5, limit=100)])
            await store.registry("alive", [op_slots(5, limit=100)])
            await asyncio.sleep(0.01)
            assert await store.reap("dead") == 1
            assert rds.hgetall(f"{prefix}sessions:slots:u") == {"lease:alive": "5"}
            assert not rds.exists(f"{prefix}session:a") and rds.hlen(f"{prefix}sessions:user:u") == 0
            # the reaped session's sidecar deadline went with it; another client's stays
            assert rds.zscore(f"{prefix}sidecar:due", "a") is None
            assert rds.zscore(f"{prefix}sidecar:due", "other") == 5.0
        finally:
            await client.aclose()

    rds.zadd(f"{prefix}sidecar:due", {"a": 1.0, "other": 5.0})
    run(body())


def test_the_sidecar_reschedule_never_overwrites_an_event(redis_server, prefix, rds):
    """DUE_LUA (issue 23): the sidecar read an entry at one score and evaluated the session; meanwhile an
    event (a connect, a close, a quota change) may have moved or removed it. Only an entry still at the
    score read takes the next deadline; a changed one is left as the event made it; a removed one is not
    brought back; an entry without a score read only moves earlier."""
    due = f"{prefix}sidecar:due"

    async def body():
        client, store = store_for(redis_server, prefix)
        try:
            rds.zadd(due, {"same": 100.0, "moved": 50.0, "later": 300.0, "earlier": 10.0})
            await store.reschedule(
                [
                    ("same", 100.0, 200.0),  # unchanged since read: takes the next deadline
                    ("moved", 100.0, 200.0),  # an event moved it to 50 meanwhile: kept at 50
                    ("gone", 100.0, 200.0),  # removed meanwhile (session closed): not brought back
                    ("done", None, None),  # nothing read, nothing next: nothing happens
                    ("later", None, 200.0),  # not read: only moves earlier (300 -> 200)
                    ("earlier", None, 200.0),  # not read: an earlier deadline stays (10)
                    ("fresh", None, 250.0),  # not in the set: added
                ]
            )
            assert dict(rds.zrange(due, 0, -1, withscores=True)) == {
                "same": 200.0,
                "moved": 50.0,
                "later": 200.0,
                "earlier": 10.0,
                "fresh": 250.0,
            }
            await store.reschedule([("same", 200.0, None)])  # no deadline left: the entry goes
            assert rds.zscore(due, "same") is None
            assert [cid for cid, _ in await store.due(100.0, 10)] == ["earlier", "moved"]
        finally:
            await client.aclose()

    run(body())


def test_a_reaped_broker_is_fenced_until_it_registers_again(redis_server, prefix, rds):
    """Fencing (issue 15 item 8): each registration has an epoch; once the broker was reaped (declared
    dead) its old epoch writes nothing: no session, slot or lease outside a live registration, and its
    heartbeat does not revive the old registration. A new registration gets a higher epoch."""

    async def body():
        client, store = store_for(redis_server, prefix)
        try:
            first = await store.heartbeat("b", 0.001, {"pid": 1})
            assert first.status == 0 and not first.fenced
            store.epoch = first.epoch
            again = await store.heartbeat("b", 0.001, {"pid": 1}, first.epoch)
            assert again.status == 1 and again.epoch == first.epoch
            await store.registry("b", [op_open("a", limit=100)])
            usage = f"{prefix}quota:usage:u:events:0"
            req = SyncRequest(usage, "", 3, 0, 10, 100, int(time.time()) + 60)
            assert (await store.sync("b", [req]))[0].mine == 10
            await asyncio.sleep(0.01)
            assert await store.reap("b", "sidecar:x") == 1
            for write in (
                store.registry("b", [op_open("c", limit=100)]),
                store.registry("b", [op_slots(5, limit=100)]),
                store.sync("b", [SyncRequest(usage, "", 5, 0, 10, 100, int(time.time()) + 60)]),
            ):
                try:
                    await write
                    raise AssertionError("a fenced write went through")
                except Fenced:
                    pass
            assert not rds.exists(f"{prefix}session:c") and not rds.exists(f"{prefix}sessions:slots:u")
            assert rds.hgetall(usage) == {"gen": rds.hget(usage, "gen"), "used": "3", "spent:b": "3"}
            fenced = await store.heartbeat("b", 10, {"pid": 1}, first.epoch)
            assert fenced.fenced and fenced.reaped.startswith("sidecar:x|")
            assert not rds.exists(f"{prefix}broker:b") and rds.zscore(f"{prefix}brokers", "b") is None
            anew = await store.heartbeat("b", 10, {"pid": 1})
            assert anew.status == 0 and int(anew.epoch) > int(first.epoch)
            assert not rds.exists(f"{prefix}broker:b:reaped")
            store.epoch = anew.epoch
            [r] = await store.registry("b", [op_open("c", limit=100, mode="r")])
            assert r.ok and rds.hget(f"{prefix}session:c", "broker") == "b"
            res = await store.sync(
                "b", [SyncRequest(usage, rds.hget(usage, "gen"), 5, 0, 10, 100, int(time.time()) + 60)]
            )
            assert res[0].used == 5 and res[0].mine == 10  # reported once: spent:b was kept by the reap
        finally:
            await client.aclose()

    run(body())


def test_any_client_id_and_username_survive_the_batch_encoding(redis_server, prefix, rds):
    """Ops travel as one length-prefixed string: separators, digits, non-ASCII and empty fields included."""
    odd = ["12:34", "é-ü-漢字", "a:b:c", "", "0:", "x" * 300, "sp ace\ttab"]

    async def body():
        client, store = store_for(redis_server, prefix)
        try:
            res = await store.registry("b1", [op_open(cid, user=f"u:{cid}", limit=0) for cid in odd])
            assert all(r.ok for r in res)
            for cid in odd:
                assert rds.hget(f"{prefix}session:{cid}", "client_id") == cid
                assert rds.hget(f"{prefix}session:{cid}", "username") == f"u:{cid}"
                assert rds.hkeys(f"{prefix}sessions:user:u:{cid}") == [cid]
            res = await store.registry("b1", [op_close(cid, user=f"u:{cid}", limit=0) for cid in odd])
            assert all(r.ok for r in res)
            assert not any(rds.exists(f"{prefix}session:{cid}") for cid in odd)
        finally:
            await client.aclose()

    run(body())


def test_heartbeat_reports_reach_only_the_owning_connections_entries(redis_server, prefix, rds):
    """update_sessions: many connections per script call (more than one part here), values as redis-py
    would have sent them, and an entry taken over by another connection is left alone."""
    from mqtt_guard.store.quota import UPDATES_PART

    n = UPDATES_PART * 2 + 7

    async def body():
        client, store = store_for(redis_server, prefix)
        try:
            await store.registry("b1", [op_open(f"c{i}", limit=0) for i in range(n)] + [op_open("é:1", limit=0)])
            updates = [(f"c{i}", f"conn-c{i}", {"events": i, "bytes": 2 * i}) for i in range(n)]
            updates.append(("é:1", "conn-é:1", {"queue_over_since": "1.500", "ratio": 0.25, "note": "a:b é"}))
            updates.append(("c0", "someone-else", {"events": 999}))  # not the owner: ignored
            await store.update_sessions(updates)
            assert rds.hmget(f"{prefix}session:c0", "events", "bytes") == ["0", "0"]
            assert rds.hmget(f"{prefix}session:c{n - 1}", "events", "bytes") == [str(n - 1), str(2 * (n - 1))]
            assert rds.hmget(f"{prefix}session:é:1", "queue_over_since", "ratio", "note") == ["1.500", "0.25", "a:b é"]
            await store.update_sessions([])  # nothing to send
        finally:
            await client.aclose()

    run(body())


def test_the_owner_flag_refuses_exactly_what_the_owner_rule_refuses(redis_server, prefix, rds):
    """REGISTRY_LUA's owner check (an id registered by another broker for another identity) against the pure
    rule, auth/ownership.py's `owner`, over named and anonymous (None, sent as '') identities; a refused
    open writes nothing (and a folded open-and-close reports no holder to kick), an open of the broker
    holding the id and an open without the flag are not asked."""
    identities = [None, "alice", "bob", "Alice", "alice ", "ä-ß", "alice,b"]

    async def body():
        client, store = store_for(redis_server, prefix)
        try:
            for i, holder in enumerate(identities):
                for j, user in enumerate(identities):
                    cid = f"id-{i}-{j}"
                    [held] = await store.registry("x", [op_open(cid, holder, None, conn="cx")])
                    assert held.ok
                    before = rds.hgetall(f"{prefix}session:{cid}")
                    rule = ownership.refusal("owner", cid, user, held=True, holder=holder)
                    # An open folded with its close ('t'): no take-over (no kick of x) of an id refused
                    [t] = await store.registry("y", [RegistryOp("t", cid, "cy", user, 0.0, None, "c", True)])
                    assert t.prev_broker == ("" if rule is not None else "x"), (holder, user)
                    owner = RegistryOp("o", cid, "cy", user, time.time(), None, "c", True)
                    [res] = await store.registry("y", [owner])
                    assert (res.held_by is not None) == (rule is not None), (holder, user)
                    if rule is not None:
                        assert not res.ok and (res.held_by or None, res.prev_broker) == (holder, "x")
                        assert rds.hgetall(f"{prefix}session:{cid}") == before
                    else:
                        assert res.ok and res.prev_broker == "x"  # the take-over (x is asked to kick it)
                        assert rds.hget(f"{prefix}session:{cid}", "broker") == "y"
            # The same broker (its own rule decided already) and an open without the flag: no refusal.
            await store.registry("x", [op_open("mine", "alice", None, conn="c1")])
            [same] = await store.registry("x", [RegistryOp("o", "mine", "c2", "bob", time.time(), None, "c", True)])
            [any_] = await store.registry("y", [op_open("mine", "carol", None, conn="c3")])
            assert same.ok and same.held_by is None and any_.ok and any_.held_by is None
        finally:
            await client.aclose()

    run(body())
