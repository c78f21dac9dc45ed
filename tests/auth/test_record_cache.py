"""User records kept in process: a CONNECT of a recently seen user reads nothing from Redis, and any
change made in Redis (CLI or redis-cli) still applies to the very next CONNECT once Redis has told
the broker about it (within milliseconds; tests poll briefly, as a device would retry).

Two kinds of tests: a real broker process with real MQTT clients, counting the commands Redis itself
executed (`INFO commandstats`); and an in-process Guard (real Redis, real invalidation listener) for
what a broker process cannot show deterministically: a change landing while a read is in flight, and
the listener being down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis

from mqtt_guard.auth import hashes
from mqtt_guard.auth.authenticator import AuthResult, Outcome
from mqtt_guard.config import GuardConfig
from mqtt_guard.guard import Guard
from mqtt_guard.store.users import UserRecord
from tests.helpers.mqtt import CONNACK_NOT_AUTHORIZED, connect
from tests.helpers.servers import RedisServer
from tests.helpers.wait import until, until_async

# -- helpers -----------------------------------------------------------------------------------------


def smembers_calls(rds: redis.Redis) -> int:
    """SMEMBERS executed by Redis since the last CONFIG RESETSTAT. On a CONNECT only the user record
    read (UserStore.get: HGETALL user + SMEMBERS its groups, one pipelined round trip) issues one."""
    return int(rds.info("commandstats").get("cmdstat_smembers", {}).get("calls", 0))


def put_user(rds: redis.Redis, prefix: str, name: str, password: str, **fields: str) -> None:
    """Create a user the way an admin with only redis-cli would (docs/redis-schema.md)."""
    rds.hset(
        f"{prefix}user:{name}",
        mapping={"password": hashes.hash_password(password, iterations=1000), "disabled": "0", **fields},
    )


def connects(port: int, username: str, password: str) -> int:
    """CONNECT once; the CONNACK code (the client is closed again if it got in)."""
    client = connect(port, username, password)
    if client.rc == 0:
        client.close()
    return client.rc


def kept(port: int, username: str, password: str, rds: redis.Redis, timeout: float = 5.0) -> None:
    """CONNECT until one is answered without reading the record: the broker's invalidation listener
    connects in the background at start, and records read before that are not kept."""

    def unread() -> bool:
        rds.config_resetstat()
        assert connects(port, username, password) == 0
        return smembers_calls(rds) == 0

    assert until(unread, timeout, interval=0.05), "the user record is never kept"


def eventually_rc(port: int, username: str, password: str, want: int, timeout: float = 3.0) -> int:
    """Retry the CONNECT until it gets `want`: the invalidation reaches the broker within ms, not at once."""
    rc = -1

    def answered() -> bool:
        nonlocal rc
        rc = connects(port, username, password)
        return rc == want

    until(answered, timeout)
    return rc


@asynccontextmanager
async def running_guard(url: str, prefix: str, **auth: Any) -> AsyncIterator[Guard]:
    """The Guard a broker process builds (real Redis, real invalidation listener), listener connected."""
    config = GuardConfig()
    config.redis.url = url
    config.redis.prefix = prefix
    for name, value in auth.items():
        setattr(config.auth, name, value)
    guard = Guard(config)
    await guard.start()
    try:
        assert await until_async(guard.listener.connected.is_set), "invalidation listener did not connect"
        yield guard
    finally:
        await guard.close()


async def login(guard: Guard, username: str, password: str | None = "pw") -> AuthResult:
    return await guard.authenticate(username=username, password=password)


def kill_listener(rds: redis.Redis) -> int:
    """Close the invalidation listener's subscriber connection from the Redis side (CLIENT KILL)."""
    ids = [c["id"] for c in rds.client_list(_type="pubsub") if c.get("name", "").startswith("mqtt-guard-inval-")]
    for cid in ids:
        rds.client_kill_filter(_id=cid)
    return len(ids)


# -- a real broker, counted by Redis ------------------------------------------------------------------


@pytest.fixture
def broker(start_broker, add_user, rds, prefix):
    add_user("alice", "alice-pw")
    rds.hset(f"{prefix}acl:user:alice", "a/#", "readwrite")
    return start_broker()


def test_connects_of_a_known_user_make_no_redis_read_of_its_record(broker, rds, prefix):
    n = 10
    for i in range(n):
        put_user(rds, prefix, f"new{i}", "pw")
    kept(broker.port, "alice", "alice-pw", rds)
    rds.config_resetstat()
    for _ in range(n):
        assert connects(broker.port, "alice", "alice-pw") == 0
    known = smembers_calls(rds)
    rds.config_resetstat()
    for i in range(n):  # control: users never seen before are read, one SMEMBERS each
        assert connects(broker.port, f"new{i}", "pw") == 0
    new = smembers_calls(rds)
    assert new - known == n, (known, new)
    assert known == 0, f"{known} SMEMBERS for {n} CONNECTs of a user seen before"


def test_password_change_disable_delete_apply_to_the_next_connect(broker, cli, rds, prefix):
    kept(broker.port, "alice", "alice-pw", rds)  # answered from memory: the changes below must reach it

    assert cli("user", "passwd", "alice", "--password-stdin", input="new-pw\n").returncode == 0
    assert eventually_rc(broker.port, "alice", "alice-pw", CONNACK_NOT_AUTHORIZED) == CONNACK_NOT_AUTHORIZED
    assert connects(broker.port, "alice", "new-pw") == 0

    assert cli("user", "disable", "alice").returncode == 0
    assert eventually_rc(broker.port, "alice", "new-pw", CONNACK_NOT_AUTHORIZED) == CONNACK_NOT_AUTHORIZED
    broker.wait_log("user disabled")
    assert cli("user", "enable", "alice").returncode == 0
    assert eventually_rc(broker.port, "alice", "new-pw", 0) == 0

    rds.delete(f"{prefix}user:alice")  # plain redis-cli DEL
    assert eventually_rc(broker.port, "alice", "new-pw", CONNACK_NOT_AUTHORIZED) == CONNACK_NOT_AUTHORIZED
    broker.wait_log("unknown user")
    put_user(rds, prefix, "alice", "third-pw")  # and back, with redis-cli HSET
    assert eventually_rc(broker.port, "alice", "third-pw", 0) == 0
    assert connects(broker.port, "alice", "new-pw") == CONNACK_NOT_AUTHORIZED


def test_group_change_applies_to_the_next_connect(broker, cli, rds, prefix):
    rds.hset(f"{prefix}acl:group:ops", "ops/#", "readwrite")
    kept(broker.port, "alice", "alice-pw", rds)
    first = connect(broker.port, "alice", "alice-pw")
    assert first.subscribe("ops/x") == [128]  # not in the group yet
    first.close()
    assert cli("group", "add-user", "ops", "alice").returncode == 0

    def granted() -> list[int]:
        client = connect(broker.port, "alice", "alice-pw")
        try:
            return client.subscribe("ops/x")
        finally:
            client.close()

    assert until(lambda: granted() == [0], timeout=3)


def test_expiry_is_checked_on_the_kept_record(broker, rds, prefix):
    expires = time.time() + 3.0
    rds.hset(f"{prefix}user:alice", "expires_at", f"{expires:.3f}")
    kept(broker.port, "alice", "alice-pw", rds)
    time.sleep(max(0.0, expires - time.time()) + 0.1)
    assert connects(broker.port, "alice", "alice-pw") == CONNACK_NOT_AUTHORIZED
    broker.wait_log("user expired")
    assert smembers_calls(rds) == 0  # no write, no read: the kept record's expires_at did it


# -- in process: races, listener down, bounds ---------------------------------------------------------


def test_a_change_landing_while_the_read_is_in_flight_is_not_trusted(redis_server, rds, prefix):
    """Redis answers the read, then an admin disables the user and the invalidation arrives before the
    read's result is stored: that result may serve this CONNECT, but never the next one."""
    put_user(rds, prefix, "alice", "pw")

    async def main() -> None:
        async with running_guard(redis_server.url, prefix) as guard:
            auth = guard.authenticator
            assert (await login(guard, "alice")).outcome is Outcome.OK
            hits = auth.record_hits
            assert (await login(guard, "alice")).outcome is Outcome.OK
            assert auth.record_hits == hits + 1  # control: without a change the record is kept

            forgotten = asyncio.Event()
            real_forget, real_get = auth.forget, guard.users.get
            race = {"on": True}

            def forget(username: str) -> None:
                real_forget(username)
                forgotten.set()

            async def get(username: str) -> UserRecord | None:
                record = await real_get(username)
                if race["on"]:
                    race["on"] = False
                    rds.hset(f"{prefix}user:alice", "disabled", "1")
                    await asyncio.wait_for(forgotten.wait(), 5)  # the invalidation, via the real listener
                return record

            auth.forget = forget  # type: ignore[method-assign]  # instrumented for the race under test
            guard.users.get = get  # type: ignore[method-assign]  # instrumented for the race under test
            rds.hset(f"{prefix}user:alice", "superuser", "0")  # any change: the next read goes to Redis
            assert await until_async(lambda: forgotten.is_set())
            forgotten.clear()
            reads = auth.record_reads
            assert (await login(guard, "alice")).outcome is Outcome.OK  # read before the disable
            assert auth.record_reads == reads + 1
            assert (await login(guard, "alice")).outcome is Outcome.DISABLED
            assert auth.record_reads == reads + 2
            hits = auth.record_hits
            assert (await login(guard, "alice")).outcome is Outcome.DISABLED
            assert auth.record_hits == hits + 1  # the fresh record is kept again

    asyncio.run(main())


def test_a_listener_reconnect_during_the_read_is_not_trusted(redis_server, rds, prefix):
    """Invalidations may be lost while the listener reconnects: a read spanning that is not kept."""
    put_user(rds, prefix, "alice", "pw")

    async def main() -> None:
        async with running_guard(redis_server.url, prefix) as guard:
            auth, listener = guard.authenticator, guard.listener
            real_get = guard.users.get
            race = {"on": True}

            async def get(username: str) -> UserRecord | None:
                record = await real_get(username)
                if race["on"]:
                    race["on"] = False
                    generation = listener.generation
                    assert kill_listener(rds) >= 1
                    assert await until_async(lambda: listener.connected.is_set() and listener.generation > generation)
                return record

            guard.users.get = get  # type: ignore[method-assign]  # instrumented for the race under test
            assert (await login(guard, "alice")).outcome is Outcome.OK
            reads = auth.record_reads
            assert (await login(guard, "alice")).outcome is Outcome.OK
            assert auth.record_reads == reads + 1  # not trusted: read again
            hits = auth.record_hits
            assert (await login(guard, "alice")).outcome is Outcome.OK
            assert auth.record_hits == hits + 1

    asyncio.run(main())


def test_nothing_is_trusted_while_the_listener_is_down(redis_server, rds, prefix):
    put_user(rds, prefix, "alice", "pw")

    async def main() -> None:
        async with running_guard(redis_server.url, prefix) as guard:
            auth, listener = guard.authenticator, guard.listener
            assert (await login(guard, "alice")).outcome is Outcome.OK
            hits = auth.record_hits
            assert (await login(guard, "alice")).outcome is Outcome.OK
            assert auth.record_hits == hits + 1
            listener.retry_interval = 3.0  # stay down long enough to look
            assert kill_listener(rds) >= 1
            assert await until_async(lambda: not listener.connected.is_set())
            reads = auth.record_reads
            for _ in range(3):
                assert (await login(guard, "alice")).outcome is Outcome.OK
            assert auth.record_reads == reads + 3  # every CONNECT read Redis
            assert auth.record_hits == hits + 1
            assert await until_async(listener.connected.is_set, timeout=10)
            assert (await login(guard, "alice")).outcome is Outcome.OK  # read before the reconnect: read again
            assert auth.record_reads == reads + 4
            assert (await login(guard, "alice")).outcome is Outcome.OK
            assert auth.record_hits == hits + 2

    asyncio.run(main())


@pytest.mark.parametrize("mode,expected", [("deny", Outcome.REDIS_DOWN), ("cached", Outcome.OK_CACHED_REDIS_DOWN)])
def test_redis_gone_means_on_redis_down_applies_not_the_kept_record(prefix, mode, expected):
    server = RedisServer().start()
    try:
        client = server.client()
        put_user(client, prefix, "alice", "pw")
        client.close()

        async def main() -> None:
            async with running_guard(server.url, prefix, on_redis_down=mode) as guard:
                assert (await login(guard, "alice")).outcome is Outcome.OK
                hits = guard.authenticator.record_hits
                assert (await login(guard, "alice")).outcome is Outcome.OK
                assert guard.authenticator.record_hits == hits + 1
                server.stop()
                assert await until_async(lambda: not guard.listener.connected.is_set())
                assert (await login(guard, "alice")).outcome is expected
                assert (await login(guard, "alice", "wrong")).outcome is Outcome.REDIS_DOWN

        asyncio.run(main())
    finally:
        server.cleanup()


def test_unknown_user_is_kept_but_still_costs_a_hash(redis_server, rds, prefix):
    async def main() -> None:
        async with running_guard(redis_server.url, prefix) as guard:
            auth = guard.authenticator
            hashed: list[str] = []
            real_verify = auth._verify

            async def verify(password: str, encoded: str, *args: Any, **kwargs: Any) -> bool:
                hashed.append(encoded)
                return await real_verify(password, encoded, *args, **kwargs)

            auth._verify = verify  # type: ignore[method-assign]  # instrumented for the race under test
            assert (await login(guard, "ghost")).outcome is Outcome.UNKNOWN_USER
            hits = auth.record_hits
            assert (await login(guard, "ghost")).outcome is Outcome.UNKNOWN_USER
            assert auth.record_hits == hits + 1  # "no such user" kept too
            assert len(hashed) == 2  # a decoy hash each time: timing does not tell
            put_user(rds, prefix, "ghost", "pw")  # created: the kept "no such user" goes with it
            assert await until_async(lambda: login_is(guard, "ghost", Outcome.OK))

    asyncio.run(main())


def test_certificate_identities_use_the_kept_record(redis_server, rds, prefix):
    put_user(rds, prefix, "dev-1", "unused")

    async def main() -> None:
        async with running_guard(redis_server.url, prefix) as guard:
            auth = guard.authenticator

            async def cert(identity: str) -> Outcome:
                result = await guard.authenticate(
                    username=None, password=None, cert_identity=identity, identity_as_username=True
                )
                return result.outcome

            assert await cert("dev-1") is Outcome.OK
            assert await cert("no-record") is Outcome.OK  # a verified certificate needs no record
            hits = auth.record_hits
            assert await cert("dev-1") is Outcome.OK
            assert await cert("no-record") is Outcome.OK
            assert auth.record_hits == hits + 2
            rds.hset(f"{prefix}user:dev-1", "disabled", "1")
            assert await until_async(lambda: cert_is(cert, "dev-1", Outcome.DISABLED))
            rds.hset(f"{prefix}user:no-record", "disabled", "1")
            assert await until_async(lambda: cert_is(cert, "no-record", Outcome.DISABLED))

    asyncio.run(main())


async def login_is(guard: Guard, username: str, outcome: Outcome) -> bool:
    return (await login(guard, username)).outcome is outcome


async def cert_is(cert: Callable[[str], Any], identity: str, outcome: Outcome) -> bool:
    return await cert(identity) is outcome


def test_kept_records_are_bounded_and_hold_no_plaintext(redis_server, rds, prefix):
    for i in range(6):
        put_user(rds, prefix, f"u{i}", f"secret-{i}")

    async def main() -> None:
        async with running_guard(redis_server.url, prefix) as guard:
            auth = guard.authenticator
            auth._max_cache = 3
            for i in range(6):
                assert (await login(guard, f"u{i}", f"secret-{i}")).outcome is Outcome.OK
            assert list(auth._records) == ["u3", "u4", "u5"]  # least recently used went first
            assert len(auth._verified) == 3
            kept = repr(auth._records) + repr(auth._verified)
            assert not any(f"secret-{i}" in kept for i in range(6))
            assert not any(f"secret-{i}".encode().hex() in kept for i in range(6))

    asyncio.run(main())


def test_a_password_change_during_the_hash_is_not_remembered_for_redis_outages(prefix):
    """The old password was right when the record was read, so this CONNECT gets in; but the check
    must not be remembered, or `on_redis_down: cached` would admit the old password later."""
    server = RedisServer().start()
    try:
        client = server.client()
        put_user(client, prefix, "alice", "old-pw")

        async def main() -> None:
            async with running_guard(server.url, prefix, on_redis_down="cached") as guard:
                auth = guard.authenticator
                forgotten = asyncio.Event()
                real_forget, real_verify = auth.forget, auth._verify

                def forget(username: str) -> None:
                    real_forget(username)
                    forgotten.set()

                async def verify(password: str, encoded: str, *args: Any, **kwargs: Any) -> bool:
                    ok = await real_verify(password, encoded, *args, **kwargs)
                    put_user(client, prefix, "alice", "new-pw")  # the admin's passwd lands meanwhile
                    await asyncio.wait_for(forgotten.wait(), 5)
                    return ok

                auth.forget = forget  # type: ignore[method-assign]  # instrumented for the race under test
                auth._verify = verify  # type: ignore[method-assign]  # instrumented for the race under test
                assert (await login(guard, "alice", "old-pw")).outcome is Outcome.OK
                auth._verify = real_verify  # type: ignore[method-assign]  # instrumented for the race under test
                server.stop()
                assert await until_async(lambda: not guard.listener.connected.is_set())
                assert (await login(guard, "alice", "old-pw")).outcome is Outcome.REDIS_DOWN

        asyncio.run(main())
    finally:
        client.close()
        server.cleanup()
