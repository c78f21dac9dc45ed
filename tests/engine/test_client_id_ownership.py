"""Client-id ownership (auth.client_id_policy, issue 15 item 2): a client id held by one user, online or by
a persistent session kept offline, cannot be taken over by another; `mqtt-guard session drop` and
`limits.persistent_session_expiry` free it. Real broker processes, real Redis, paho and raw clients."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from mqtt_guard.store.keys import Keys
from mqtt_guard.store.quota import QuotaStore, RegistryOp
from tests.helpers import rawmqtt as raw
from tests.helpers.mqtt import connect
from tests.helpers.wait import until

CONNACK_IDENTIFIER_REJECTED = 2


def _cid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def users(add_user, rds, prefix):
    for user in ("alice", "mallory", "pub"):
        add_user(user, f"pw-{user}")
    rds.hset(f"{prefix}acl:user:alice", "#", "readwrite")
    rds.hset(f"{prefix}acl:user:mallory", "#", "readwrite")
    rds.hset(f"{prefix}acl:user:pub", "#", "write")


@pytest.fixture
def broker_with(start_broker, tmp_path, users):
    """A broker with `extra` YAML as its config (the default client_id_policy is owner)."""

    def start(extra: str = ""):
        config = tmp_path / f"c-{uuid.uuid4().hex[:6]}.yaml"
        config.write_text(extra)
        return start_broker("--config", str(config))

    return start


def _gone(broker, cid: str, n: int = 1) -> None:
    assert until(lambda: broker.log().count(f"client '{cid}' (") >= n, 5), f"broker did not see {cid} disconnect"


def _publish(port: int, topic: str, *payloads: bytes) -> None:
    pub = connect(port, "pub", "pw-pub", client_id=_cid("pub"))  # (fits username-prefix too)
    assert pub.rc == 0
    for payload in payloads:
        pub.publish(topic, payload, qos=1)
    pub.close()


def test_hijack_of_an_online_client_is_refused_and_the_victim_untouched(broker_with):
    broker = broker_with()
    cid = _cid("alices-device")
    alice = connect(broker.port, "alice", "pw-alice", client_id=cid, clean_session=False)
    assert alice.rc == 0 and alice.subscribe(("inbox/alice", 1)) == [1]

    for clean in (True, False):
        thief = connect(broker.port, "mallory", "pw-mallory", client_id=cid, clean_session=clean)
        assert thief.rc == CONNACK_IDENTIFIER_REJECTED
    assert connect(broker.port, client_id=cid).rc != 0  # anonymous (refused anyway here: no anonymous)

    assert not alice.disconnected.wait(1.0)
    _publish(broker.port, "inbox/alice", b"still yours")
    assert alice.receive().payload == b"still yours"
    line = broker.wait_log(f"refused take-over of client '{cid}' from 127.0.0.1:")
    assert "by user 'mallory': the client id is held by user 'alice' (CONNACK 2)" in line
    alice.close()


def test_offline_persistent_session_keeps_its_id_and_queued_messages(broker_with):
    broker = broker_with()
    cid = _cid("alices-device")
    sub, _ = raw.connected(broker.port, cid, clean=False, username="alice", password="pw-alice")
    with sub:
        sub.send(raw.subscribe(1, ("inbox/alice", 1)))
        sub.expect(raw.SUBACK)
        sub.send(raw.DISCONNECT_BYTES)
    _gone(broker, cid)
    _publish(broker.port, "inbox/alice", b"before")
    thief = connect(broker.port, "mallory", "pw-mallory", client_id=cid, clean_session=True)
    assert thief.rc == CONNACK_IDENTIFIER_REJECTED
    _publish(broker.port, "inbox/alice", b"after")

    back, present = raw.connected(broker.port, cid, clean=False, username="alice", password="pw-alice")
    with back:
        assert present == 1
        got = [p for p in raw.drain(back) if p.type == raw.PUBLISH]
        assert [p.payload for p in got] == [b"before", b"after"]


def test_the_same_user_takes_over(broker_with):
    broker = broker_with()
    cid = _cid("alices-device")
    first = connect(broker.port, "alice", "pw-alice", client_id=cid, clean_session=False)
    assert first.rc == 0 and first.subscribe(("inbox/alice", 1)) == [1]
    second = connect(broker.port, "alice", "pw-alice", client_id=cid, clean_session=False)
    assert second.rc == 0
    assert first.disconnected.wait(5)
    _publish(broker.port, "inbox/alice", b"resumed")
    assert second.receive().payload == b"resumed"  # the session (its subscription) went with the id
    second.close()


def test_username_prefix(broker_with):
    broker = broker_with("auth:\n  client_id_policy: username-prefix\n")
    for cid in ("alice-1", "alice/kitchen", "alice:x", "alice_2"):
        c = connect(broker.port, "alice", "pw-alice", client_id=cid)
        assert c.rc == 0, cid
        c.close()
    for cid in ("mallory-1", "alice", "alice1", "alice.1"):
        assert connect(broker.port, "alice", "pw-alice", client_id=cid).rc == CONNACK_IDENTIFIER_REJECTED, cid
    broker.wait_log("client id must start with the username and one of - / : _ (CONNACK 2)")


def test_any_lets_another_user_take_over_as_before(broker_with):
    broker = broker_with("auth:\n  client_id_policy: any\n")
    cid = _cid("shared")
    alice = connect(broker.port, "alice", "pw-alice", client_id=cid)
    assert alice.rc == 0
    mallory = connect(broker.port, "mallory", "pw-mallory", client_id=cid)
    assert mallory.rc == 0
    assert alice.disconnected.wait(5)
    mallory.close()


def test_session_drop_frees_an_online_and_an_offline_id(broker_with, cli):
    broker = broker_with()
    online, offline = _cid("online"), _cid("offline")
    alice = connect(broker.port, "alice", "pw-alice", client_id=online, clean_session=False)
    assert alice.rc == 0 and alice.subscribe(("inbox/alice", 1)) == [1]
    gone = connect(broker.port, "alice", "pw-alice", client_id=offline, clean_session=False)
    assert gone.rc == 0 and gone.subscribe(("inbox/alice", 1)) == [1]
    gone.close()
    _gone(broker, offline)

    result = cli("session", "drop", online)
    assert result.returncode == 0, result.stderr
    assert "connected on broker" in result.stdout and "it is disconnected" in result.stdout
    assert alice.disconnected.wait(5)
    broker.wait_log(f"dropping the session of connected client '{online}'")
    result = cli("session", "drop", offline)
    assert result.returncode == 0 and "(not connected)" in result.stdout
    broker.wait_log(f"dropped the offline session of client '{offline}' (user 'alice')")

    for cid in (online, offline):
        c, present = raw.connected(broker.port, cid, clean=False, username="mallory", password="pw-mallory")
        with c:
            assert present == 0  # a new session: nothing of alice's came with the id


def test_persistent_session_expiry_frees_the_id(broker_with):
    broker = broker_with("limits:\n  persistent_session_expiry: 1s\n")
    cid = _cid("alices-device")
    alice = connect(broker.port, "alice", "pw-alice", client_id=cid, clean_session=False)
    assert alice.rc == 0 and alice.subscribe(("inbox/alice", 1)) == [1]
    alice.close()
    _gone(broker, cid)
    # (published first: the refused CONNECT below takes the paho helper ~1 s, the session's whole expiry)
    _publish(broker.port, "inbox/alice", b"lost")
    assert connect(broker.port, "mallory", "pw-mallory", client_id=cid).rc == CONNACK_IDENTIFIER_REJECTED
    line = broker.wait_log(f"offline session of client '{cid}' (user 'alice') expired after 1 s", timeout=5)
    assert "discarded with 1 queued message(s)" in line
    c, present = raw.connected(broker.port, cid, clean=False, username="mallory", password="pw-mallory")
    with c:
        assert present == 0
        assert raw.drain(c, 0.5) == []


def test_anonymous_and_named_clients_do_not_take_each_others_ids(broker_with):
    broker = broker_with("auth:\n  allow_anonymous: true\n")
    named, anonymous = _cid("named"), _cid("anon")
    alice = connect(broker.port, "alice", "pw-alice", client_id=named)
    anon = connect(broker.port, client_id=anonymous)
    assert alice.rc == 0 and anon.rc == 0
    assert connect(broker.port, client_id=named).rc == CONNACK_IDENTIFIER_REJECTED
    assert connect(broker.port, "alice", "pw-alice", client_id=anonymous).rc == CONNACK_IDENTIFIER_REJECTED
    assert not alice.disconnected.wait(0.5) and not anon.disconnected.is_set()
    other_anon = connect(broker.port, client_id=anonymous)  # anonymous clients cannot be told apart
    assert other_anon.rc == 0
    assert anon.disconnected.wait(5)
    alice.close()
    other_anon.close()


def test_session_drop_reaches_the_broker_holding_the_session(start_broker, tmp_path, users, cli, rds, prefix):
    """Offline sessions are in the memory of one broker: the drop goes to every live broker sharing the
    Redis, the one holding the session discards it, the other says it has none."""
    config = tmp_path / "owner.yaml"
    config.write_text("auth:\n  client_id_policy: owner\n")
    holder, other = start_broker("--config", str(config)), start_broker("--config", str(config))
    cid = _cid("alices-device")
    alice = connect(holder.port, "alice", "pw-alice", client_id=cid, clean_session=False)
    assert alice.rc == 0 and alice.subscribe(("inbox/alice", 1)) == [1]
    alice.close()
    _gone(holder, cid)
    result = cli("session", "drop", cid, "--reason", "device replaced")
    assert result.returncode == 0 and "sent to 2 broker(s) (not connected)" in result.stdout, result.stdout
    holder.wait_log(f"dropped the offline session of client '{cid}' (user 'alice') with 0 queued message(s)")
    assert "device replaced (by " in holder.log()
    other.wait_log(f"session drop for client '{cid}' (by ")
    audit = rds.xrevrange(f"{prefix}audit", count=1)[0][1]
    assert (audit["action"], audit["client_id"], audit["reason"]) == ("session_drop", cid, "device replaced")
    assert connect(holder.port, "mallory", "pw-mallory", client_id=cid).rc == 0


def test_two_users_connecting_with_one_free_id_at_once(inproc, users, rds, prefix):
    """The second CONNECT arrives while the first awaits its attach (held there for 0.5 s): the id is the
    first's from its check on (a claim), so the second is refused before it is attached anywhere and the
    first stays connected, tracked by the quota and registered in Redis. Broker in this process (to hold
    the attach), real clients on real sockets."""
    broker = inproc(allow_anonymous=False)
    guard = broker.guard
    attach = guard.attach
    entered: list[str | None] = []

    async def held_attach(client_id, result, *args, **kwargs):
        entered.append(result.username)
        await asyncio.sleep(0.5)
        return await attach(client_id, result, *args, **kwargs)

    broker.call(lambda: setattr(guard, "attach", held_attach))
    cid = _cid("contested")
    with raw.RawClient(broker.port) as first, raw.RawClient(broker.port) as second:
        first.send(raw.connect(cid, username="alice", password="pw-alice"))
        assert until(lambda: entered == ["alice"], 5)
        second.send(raw.connect(cid, username="mallory", password="pw-mallory"))
        assert second.connack() == (0, CONNACK_IDENTIFIER_REJECTED)
        assert first.connack() == (0, 0)
        assert entered == ["alice"]  # the second was never attached
        first.send(raw.subscribe(1, ("inbox/alice", 1)))
        first.expect(raw.SUBACK)

        def tracked():
            return (
                guard.clients[cid].username,
                guard.quota.clients[cid].client.username,
                sorted(broker.broker.sessions),
            )

        assert broker.call(tracked) == ("alice", "alice", [cid])
        assert until(lambda: rds.hget(f"{prefix}session:{cid}", "username") == "alice")
        assert cid in rds.hgetall(f"{prefix}sessions:user:alice")
        assert not rds.exists(f"{prefix}sessions:user:mallory")
        _publish(broker.port, "inbox/alice", b"still yours")
        assert first.expect(raw.PUBLISH).payload == b"still yours"


def _broker_ids(rds, prefix, *brokers) -> list[str]:
    """The registry ids of running broker processes, once every one of them is registered."""
    ids: dict[int, str] = {}

    def registered() -> bool:
        for broker_id in rds.zrange(f"{prefix}brokers", 0, -1):
            pid = rds.hget(f"{prefix}broker:{broker_id}", "pid")
            if pid is not None:
                ids[int(pid)] = broker_id
        return all(b.proc.pid in ids for b in brokers)

    assert until(registered, 10)
    return [ids[b.proc.pid] for b in brokers]


@pytest.mark.parametrize("policy", ["owner", "username-prefix"])
def test_an_id_online_on_another_broker_is_refused_to_another_user(broker_with, add_user, rds, prefix, policy):
    """Two brokers on one Redis: an id alice holds on X is refused to another user on Y (the registry
    decides: REGISTRY_LUA's owner check), alice untouched on X; alice herself moves from X to Y as before
    (X is asked to close her old connection). Under username-prefix the thief is a user whose name makes
    the id fit its prefix too (alice-bob for alice-bob-...)."""
    add_user("alice-bob", "pw-alice-bob")
    thief = "alice-bob"
    config = f"auth:\n  client_id_policy: {policy}\n"
    x, y = broker_with(config), broker_with(config)
    x_id, y_id = _broker_ids(rds, prefix, x, y)
    cid = f"alice-bob-{uuid.uuid4().hex[:8]}"
    alice = connect(x.port, "alice", "pw-alice", client_id=cid, clean_session=False)
    assert alice.rc == 0 and alice.subscribe(("inbox/alice", 1)) == [1]
    assert until(lambda: rds.hget(f"{prefix}session:{cid}", "broker") == x_id)

    for clean in (True, False):
        assert connect(y.port, thief, f"pw-{thief}", client_id=cid, clean_session=clean).rc == 2
    line = y.wait_log(f"refused take-over of client '{cid}' from 127.0.0.1:")
    assert f"by user '{thief}': the client id is held by user 'alice' (CONNACK 2)" in line
    assert not alice.disconnected.wait(1.0)
    assert rds.hget(f"{prefix}session:{cid}", "broker") == x_id
    assert f"disconnecting client '{cid}'" not in x.log()  # X was not asked to close it
    _publish(x.port, "inbox/alice", b"still yours")
    assert alice.receive().payload == b"still yours"

    moved = connect(y.port, "alice", "pw-alice", client_id=cid, clean_session=False)
    assert moved.rc == 0
    assert alice.disconnected.wait(5)
    assert until(lambda: rds.hget(f"{prefix}session:{cid}", "broker") == y_id)
    moved.close()


def test_any_keeps_the_take_over_across_brokers(broker_with, rds, prefix):
    config = "auth:\n  client_id_policy: any\n"
    x, y = broker_with(config), broker_with(config)
    _, y_id = _broker_ids(rds, prefix, x, y)
    cid = _cid("shared")
    alice = connect(x.port, "alice", "pw-alice", client_id=cid)
    assert alice.rc == 0
    assert until(lambda: rds.hget(f"{prefix}session:{cid}", "username") == "alice")
    mallory = connect(y.port, "mallory", "pw-mallory", client_id=cid)
    assert mallory.rc == 0
    assert alice.disconnected.wait(5)
    assert until(lambda: rds.hget(f"{prefix}session:{cid}", "broker") == y_id)
    mallory.close()


def test_a_broker_that_took_itself_for_alone_disconnects_the_newcomer(inproc, users, rds, prefix, redis_server):
    """A broker that believes it is the only one registers without awaiting it; if another broker (here an
    entry written as broker 'x' would, unknown to the `brokers` set) holds the id for another user, the
    registry refuses the registration and the newcomer is disconnected: the holder keeps its id."""
    broker = inproc(allow_anonymous=False)
    assert until(lambda: broker.call(lambda: broker.guard.quota.registry.alone), 10)
    cid = _cid("held-on-x")

    async def held_on_x():
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            [res] = await QuotaStore(client, Keys(prefix)).registry(
                "x", [RegistryOp("o", cid, "cx", "alice", 1.0, None, "c")]
            )
            assert res.ok
        finally:
            await client.aclose()

    asyncio.run(held_on_x())
    mallory = connect(broker.port, "mallory", "pw-mallory", client_id=cid)
    assert mallory.rc == 0  # admitted from memory (alone), then
    assert mallory.disconnected.wait(5)
    assert rds.hget(f"{prefix}session:{cid}", "broker") == "x"
    assert rds.hget(f"{prefix}session:{cid}", "username") == "alice"
    assert not rds.exists(f"{prefix}sessions:user:mallory")
    assert broker.call(lambda: cid not in broker.guard.clients)
