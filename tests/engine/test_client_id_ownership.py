"""Client-id ownership (auth.client_id_policy, issue 15 item 2): a client id held by one user, online or by
a persistent session kept offline, cannot be taken over by another; `mqtt-guard session drop` and
`limits.persistent_session_expiry` free it. Real broker processes, real Redis, paho and raw clients."""

from __future__ import annotations

import uuid

import pytest

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
    pub = connect(port, "pub", "pw-pub")
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
    assert connect(broker.port, "mallory", "pw-mallory", client_id=cid).rc == CONNACK_IDENTIFIER_REJECTED
    _publish(broker.port, "inbox/alice", b"lost")
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
