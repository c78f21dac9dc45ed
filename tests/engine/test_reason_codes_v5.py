"""Each row of docs/reason-codes.md with paho-mqtt's MQTT 5 client on real sockets (raw sockets where
paho hides the code: PUBREC, and a silent client for the keep-alive), against broker processes, the
sidecar and a real Redis. What a 3.1.1 client sees for the same decisions is asserted beside it where
the existing tests do not already."""

from __future__ import annotations

import struct
import time
from pathlib import Path

from mqtt_guard.reasons import Reason
from tests.helpers import rawmqtt
from tests.helpers.mqtt import connect
from tests.helpers.mqtt5 import V5
from tests.helpers.servers import RedisServer, run_cli
from tests.helpers.wait import until
from tests.sidecar.helpers import fast_config

OTHER = "127.0.0.2"  # Linux routes all of 127/8 to lo: a second source address on this machine


def connect5(port: int, username: str | None = None, password: str | None = None, **kw: object) -> V5:
    """An MQTT 5 client; `.reason` is its CONNACK's reason code."""
    return V5(port, username=username, password=password, **kw)  # type: ignore[arg-type]


def gone(c: V5, timeout: float = 5.0) -> int | None:
    """Wait until the server closed `c`; the reason code of its DISCONNECT."""
    assert c.disconnected.wait(timeout), "still connected"
    return c.disconnect_reason


def _config(tmp_path: Path, text: str, name: str = "guard.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _raw5(port: int, client_id: str, *, source: str | None = None, keepalive: int = 60, **kw: str) -> rawmqtt.RawClient:
    c = rawmqtt.RawClient(port, source=source) if source else rawmqtt.RawClient(port)
    c.send(rawmqtt.connect(client_id, level=5, properties=b"", keepalive=keepalive, **kw))  # type: ignore[arg-type]
    return c


def _connack5(c: rawmqtt.RawClient) -> int:
    pkt = c.expect(rawmqtt.CONNACK)
    return pkt.body[1]


def _disconnect_code(c: rawmqtt.RawClient, timeout: float = 5.0) -> int | None:
    """The reason code of the DISCONNECT the server sends before closing (None: closed without one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pkt = c.read(max(0.1, deadline - time.monotonic()))
        if pkt is None:
            return None
        if pkt.type == rawmqtt.DISCONNECT:
            return pkt.body[0] if pkt.body else 0
    raise TimeoutError("no DISCONNECT")


# -- CONNECT refused ------------------------------------------------------------------------------------
def test_connect_refusals_by_the_authenticator(start_broker, add_user, cli, rds, prefix, tmp_path):
    add_user("alice", "pw")
    add_user("bob", "pw")
    add_user("carol", "pw")
    add_user("dave", "pw")
    assert cli("user", "disable", "bob").returncode == 0
    rds.hset(f"{prefix}user:carol", "expires_at", str(int(time.time()) - 10))
    rds.hset(f"{prefix}user:dave", "password", "not-a-hash")
    add_user("erin", "pw")
    rds.hdel(f"{prefix}user:erin", "password")  # a user record without a password
    broker = start_broker()
    port = broker.port
    assert connect5(port, "alice", "wrong").reason == Reason.BAD_USER_NAME_OR_PASSWORD
    assert connect5(port, "nobody", "pw").reason == Reason.BAD_USER_NAME_OR_PASSWORD
    assert connect5(port, "alice").reason == Reason.BAD_USER_NAME_OR_PASSWORD  # no password
    assert connect5(port).reason == Reason.NOT_AUTHORIZED  # anonymous, allow_anonymous false
    assert connect5(port, "bob", "pw").reason == Reason.NOT_AUTHORIZED  # disabled
    assert connect5(port, "carol", "pw").reason == Reason.NOT_AUTHORIZED  # expired
    assert connect5(port, "dave", "pw").reason == Reason.UNSPECIFIED_ERROR  # corrupt record
    assert connect5(port, "erin", "pw").reason == Reason.BAD_USER_NAME_OR_PASSWORD  # no password set
    # 3.1.1 clients: CONNACK 5 for all of them, as before
    for user, pw in (
        ("alice", "wrong"),
        ("nobody", "pw"),
        ("bob", "pw"),
        ("carol", "pw"),
        ("dave", "pw"),
        ("erin", "pw"),
    ):
        assert connect(port, user, pw).rc == 5
    ok = connect5(port, "alice", "pw")
    assert ok.reason == 0
    ok.close()


def test_connect_refusals_by_ban_and_throttle(start_broker, add_user, cli, tmp_path):
    add_user("alice", "pw")
    config = _config(tmp_path, "auth:\n  throttle:\n    max_failures: 2\n    max_user_failures: 0\n    window: 60s\n")
    broker = start_broker("--config", config)
    for i in range(2):
        with _raw5(broker.port, f"g{i}", source=OTHER, username="alice", password="guess") as c:
            assert _connack5(c) == Reason.BAD_USER_NAME_OR_PASSWORD
    broker.wait_log("refusing address 127.0.0.2")
    with _raw5(broker.port, "g9", source=OTHER, username="alice", password="pw") as c:
        assert _connack5(c) == Reason.BANNED  # throttled: banned for a while, whatever the rate
    assert cli("ban", "127.0.0.3", "--reason", "abuse").returncode == 0

    def banned() -> bool:  # once the ban reached the broker (the invalidation listener)
        with _raw5(broker.port, "b1", source="127.0.0.3", username="alice", password="pw") as c:
            return _connack5(c) == Reason.BANNED

    assert until(banned)  # an admin's ban
    ok = connect5(broker.port, "alice", "pw")
    assert ok.reason == 0
    ok.close()


def test_connect_refusals_by_the_client_id_policy(start_broker, add_user, tmp_path):
    add_user("alice", "pw")
    add_user("bob", "pw")
    broker = start_broker()
    held = connect5(broker.port, "alice", "pw", client_id="shared")
    assert held.reason == 0
    assert connect5(broker.port, "bob", "pw", client_id="shared").reason == Reason.CLIENT_IDENTIFIER_NOT_VALID
    assert connect(broker.port, "bob", "pw", client_id="shared").rc == 2  # 3.1.1: identifier rejected
    held.close()
    prefixed = start_broker("--config", _config(tmp_path, "auth:\n  client_id_prefixes: [dev-]\n"))
    assert connect5(prefixed.port, "alice", "pw", client_id="x").reason == Reason.NOT_AUTHORIZED
    assert connect(prefixed.port, "alice", "pw", client_id="x").rc == 5


def test_connect_refusals_by_quota_and_blocks(start_broker, add_user, cli, tmp_path):
    add_user("alice", "pw")
    add_user("bob", "pw")
    assert cli("quota", "set", "alice", "--sessions", "1").returncode == 0
    assert cli("quota", "set", "bob", "--events", "2/1h", "--on-exceed", "disconnect").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path, "acl:\n  default: allow\n"))
    one = connect5(broker.port, "alice", "pw", client_id="a1")
    assert one.reason == 0
    assert connect5(broker.port, "alice", "pw", client_id="a2").reason == Reason.QUOTA_EXCEEDED  # over `sessions`
    assert connect(broker.port, "alice", "pw", client_id="a3").rc == 5
    # an admin's kick with --block: DISCONNECT 0x98, then CONNACK 0x8A until the block ends
    assert cli("kick", "a1", "--block", "10m").returncode == 0
    assert gone(one) == Reason.ADMINISTRATIVE_ACTION
    assert until(lambda: connect5(broker.port, "alice", "pw", client_id="a1").reason == Reason.BANNED)
    # over `events` with on_exceed: disconnect: DISCONNECT 0x97, then CONNACK 0x97 until the window ends
    b = connect5(broker.port, "bob", "pw", client_id="b1")
    assert b.reason == 0
    for _ in range(3):
        b.publish("t", qos=0)
    assert gone(b) == Reason.QUOTA_EXCEEDED
    assert until(lambda: connect5(broker.port, "bob", "pw", client_id="b1").reason == Reason.QUOTA_EXCEEDED)
    assert connect(broker.port, "bob", "pw", client_id="b1").rc == 5


# -- PUBLISH and SUBSCRIBE refused --------------------------------------------------------------------------
def test_publish_and_subscribe_refusals(start_broker, add_user, cli, tmp_path):
    add_user("alice", "pw")
    add_user("rater", "pw")
    assert cli("acl", "allow", "--user", "alice", "ok/#", "read,write").returncode == 0
    assert cli("acl", "allow", "--user", "rater", "#", "read,write").returncode == 0
    assert cli("quota", "set", "alice", "--events", "3/1h", "--events-direction", "in").returncode == 0
    assert cli("quota", "set", "rater", "--rate", "1/h:1").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path, "acl:\n  default: deny\n"))
    c = connect5(broker.port, "alice", "pw")
    assert c.reason == 0
    assert c.subscribe("ok/sub", 1) == [1]
    assert c.subscribe("no/x", 1) == [Reason.NOT_AUTHORIZED]
    assert c.publish("no/x", qos=1) == Reason.NOT_AUTHORIZED
    nothing = Reason.NO_MATCHING_SUBSCRIBERS  # (allowed, nobody subscribed to ok/x)
    assert [c.publish("ok/x", qos=1) for _ in range(4)] == [nothing] * 3 + [Reason.QUOTA_EXCEEDED]  # over `events`
    assert not c.disconnected.is_set()  # on_exceed: drop (the default)
    c.close()
    r = connect5(broker.port, "rater", "pw")
    assert r.publish("any", qos=1) == Reason.NO_MATCHING_SUBSCRIBERS  # (allowed; nobody subscribed)
    assert r.publish("any", qos=1) == Reason.QUOTA_EXCEEDED  # over `rate`: 0x97 (0x96 is DISCONNECT-only)
    r.close()
    # QoS 2 denied: PUBREC 0x87 (paho ignores PUBREC reason codes: raw socket)
    with _raw5(broker.port, "raw", username="alice", password="pw") as raw:
        assert _connack5(raw) == 0
        raw.send(rawmqtt.packet(0x34, rawmqtt.s("no/x") + struct.pack("!H", 7) + b"\x00" + b"x"))
        pubrec = raw.expect(rawmqtt.PUBREC)
        assert pubrec.body[:3] == b"\x00\x07\x87"
        # the refused id is free again at once [MQTT-4.3.3-4]: a new PUBLISH with it is decided afresh
        # (here: allowed by the ACL, over alice's `events` quota)
        raw.send(rawmqtt.packet(0x34, rawmqtt.s("ok/y") + struct.pack("!H", 7) + b"\x00" + b"y"))
        assert raw.expect(rawmqtt.PUBREC).body[:3] == b"\x00\x07\x97"
    # 3.1.1: success acknowledgements and SUBACK 0x80, as before
    old = connect(broker.port, "alice", "pw")
    assert old.subscribe(("no/x", 1)) == [0x80]
    assert old.subscribe(("ok/x", 1)) == [1]
    info = old.paho.publish("no/x", b"x", qos=1)
    info.wait_for_publish(5)
    assert info.is_published()
    old.close()


def test_an_allowed_publish_no_subscription_matches_gets_0x10(start_broker, tmp_path):
    """PUBACK/PUBREC 0x10 No matching subscribers (mosquitto 2.0's answer) when nothing is subscribed to
    the topic at all; the message is still accepted (a retained one is kept). A subscriber counts whether
    it is connected or not, and a shared subscription counts; 3.1.1 publishers get the plain PUBACK."""
    config = _config(tmp_path, "auth:\n  allow_anonymous: true\nacl:\n  default: allow\n")
    broker = start_broker("--config", config, bind=True)
    pub = connect5(broker.port)
    sub = connect5(broker.port)
    shared = connect5(broker.port)
    try:
        assert pub.publish("nm/a", qos=1) == Reason.NO_MATCHING_SUBSCRIBERS
        assert pub.publish("nm/kept", b"kept", qos=1, retain=True) == Reason.NO_MATCHING_SUBSCRIBERS
        assert sub.subscribe("nm/#", 1) == [1]
        kept = sub.receive()
        assert (kept.topic, kept.payload, kept.retain) == ("nm/kept", b"kept", True)  # accepted and retained
        assert pub.publish("nm/a", b"seen", qos=1) == Reason.SUCCESS
        assert sub.receive().payload == b"seen"
        assert pub.publish("other/a", qos=1) == Reason.NO_MATCHING_SUBSCRIBERS  # routes are cached per topic
        assert shared.subscribe("$share/g/sh/#", 1) == [1]
        assert pub.publish("sh/x", qos=1) == Reason.SUCCESS
        away = connect5(broker.port, client_id="nm-away", clean_start=False, session_expiry=300)
        assert away.subscribe("away/#", 1) == [1]
        away.close()
        assert pub.publish("away/x", qos=1) == Reason.SUCCESS  # an offline session's subscription matches
        assert pub.publish("nm/b", qos=0) == 0  # (QoS 0 has no acknowledgement)
    finally:
        for c in (pub, sub, shared):
            c.close()
    # QoS 2 (paho hides PUBREC reason codes: raw socket): PUBREC 0x10 is a success, PUBREL/PUBCOMP follow
    with _raw5(broker.port, "nm-raw") as raw:
        assert _connack5(raw) == 0
        raw.send(rawmqtt.packet(0x34, rawmqtt.s("nm2/x") + struct.pack("!H", 9) + b"\x00" + b"x"))
        assert raw.expect(rawmqtt.PUBREC).body[:3] == b"\x00\x09\x10"
        raw.send(rawmqtt.ack(rawmqtt.PUBREL, 9))
        assert raw.expect(rawmqtt.PUBCOMP).body[:2] == b"\x00\x09"
    old, _ = rawmqtt.connected(broker.port, "nm-311")
    with old:
        old.send(rawmqtt.publish("nm3/x", b"x", qos=1, packet_id=5))
        assert old.expect(rawmqtt.PUBACK).body == b"\x00\x05"  # 3.1.1: no reason codes


def test_denied_publish_with_disconnect(start_broker, add_user, cli, tmp_path):
    add_user("alice", "pw")
    config = _config(tmp_path, "acl:\n  default: deny\n  deny_publish_action: disconnect\n")
    broker = start_broker("--config", config)
    c = connect5(broker.port, "alice", "pw")
    assert c.reason == 0
    assert c.publish("no/x", qos=1) == Reason.NOT_AUTHORIZED
    assert gone(c) == Reason.NOT_AUTHORIZED


# -- server-initiated DISCONNECT --------------------------------------------------------------------------------
def test_disconnects_by_admins_and_take_over(start_broker, add_user, cli):
    add_user("alice", "pw")
    broker = start_broker()
    c = connect5(broker.port, "alice", "pw", client_id="k1")
    assert cli("kick", "k1").returncode == 0
    assert gone(c) == Reason.ADMINISTRATIVE_ACTION
    first = connect5(broker.port, "alice", "pw", client_id="same")
    second = connect5(broker.port, "alice", "pw", client_id="same")
    assert second.reason == 0
    assert gone(first) == Reason.SESSION_TAKEN_OVER
    assert cli("user", "disable", "alice").returncode == 0
    assert gone(second) == Reason.NOT_AUTHORIZED


def test_take_over_on_another_broker(start_broker, add_user, tmp_path):
    add_user("alice", "pw")
    config = fast_config(tmp_path)
    one = start_broker("--config", config)
    two = start_broker("--config", config)
    first = connect5(one.port, "alice", "pw", client_id="roam")
    assert first.reason == 0
    second = connect5(two.port, "alice", "pw", client_id="roam")
    assert second.reason == 0
    assert gone(first, 10) == Reason.SESSION_TAKEN_OVER
    second.close()


def test_engine_limits_keep_alive_packet_size_rate_and_shutdown(start_broker, add_user, cli, tmp_path):
    add_user("alice", "pw")
    assert cli("quota", "set", "alice", "--rate", "1/h:1", "--on-exceed", "disconnect").returncode == 0
    config = fast_config(tmp_path, "acl:\n  default: allow\nlimits:\n  max_packet_size: 1KB\n")
    broker = start_broker("--config", config)
    with _raw5(broker.port, "silent", username="alice", password="pw", keepalive=1) as raw:
        assert _connack5(raw) == 0
        assert _disconnect_code(raw, 5) == Reason.KEEP_ALIVE_TIMEOUT  # nothing for 1.5 s
    big = connect5(broker.port, "alice", "pw")
    big.publish("t", b"x" * 2000, qos=0)
    assert gone(big) == Reason.PACKET_TOO_LARGE
    fast = connect5(broker.port, "alice", "pw")
    fast.publish("t", qos=0)
    fast.publish("t", qos=0)
    assert gone(fast) == Reason.MESSAGE_RATE_TOO_HIGH
    stay = connect5(broker.port, "alice", "pw", client_id="stay")
    assert stay.reason == 0
    broker.stop()
    assert gone(stay) == Reason.SERVER_SHUTTING_DOWN


def test_sidecar_disconnects(start_broker, start_sidecar, add_user, cli, tmp_path, rds, prefix):
    add_user("timed", "pw")
    add_user("expiring", "pw")
    assert cli("quota", "set", "timed", "--session-time", "1s").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path))
    start_sidecar("--interval", "0.2")
    timed = connect5(broker.port, "timed", "pw")
    expiring = connect5(broker.port, "expiring", "pw")
    assert timed.reason == 0 and expiring.reason == 0
    assert gone(timed, 5) == Reason.MAXIMUM_CONNECT_TIME
    rds.hset(f"{prefix}user:expiring", "expires_at", str(int(time.time()) + 1))
    assert gone(expiring, 5) == Reason.NOT_AUTHORIZED


def test_redis_down_is_server_unavailable(prefix, start_broker, tmp_path):
    own = RedisServer(persistent=True).start()
    try:
        assert run_cli(own.url, prefix, "user", "add", "dev", "--password-stdin", input="pw\n").returncode == 0
        broker = start_broker("--config", _config(tmp_path, "auth:\n  on_redis_down: deny\n"), redis_url=own.url)
        own.stop()
        broker.wait_log("invalidation channel lost")
        assert connect5(broker.port, "dev", "pw").reason == Reason.SERVER_UNAVAILABLE
        assert connect(broker.port, "dev", "pw").rc == 3  # 3.1.1: server unavailable, as before
    finally:
        own.cleanup()


def test_ban_with_kick_and_session_drop_are_administrative_actions(start_broker, add_user, cli):
    add_user("alice", "pw")
    broker = start_broker()
    dropped = connect5(broker.port, "alice", "pw", client_id="d1")
    assert dropped.reason == 0
    with _raw5(broker.port, "b1", source="127.0.0.3", username="alice", password="pw") as raw:
        assert _connack5(raw) == 0
        assert cli("ban", "127.0.0.3/32", "--kick", "--for", "1m").returncode == 0
        assert _disconnect_code(raw) == Reason.ADMINISTRATIVE_ACTION  # 0x8A Banned is CONNACK-only
    assert not dropped.disconnected.is_set()  # another address
    assert cli("session", "drop", "d1").returncode == 0
    assert gone(dropped) == Reason.ADMINISTRATIVE_ACTION


# -- rows needing a crowd, a plugin, the sidecar or two brokers -------------------------------------------------
def _storm5(port: int, logins: list[tuple[str, str]]) -> list[int | str]:
    """MQTT 5 CONNECTs all at once on raw sockets: each one's CONNACK reason code (or the error)."""
    import asyncio

    async def one(i: int, username: str, password: str) -> int | str:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            packet = rawmqtt.connect(f"s{i}", level=5, properties=b"", username=username, password=password)
            writer.write(packet)
            await writer.drain()
            connack = await asyncio.wait_for(reader.readexactly(4), 60)
            writer.close()
            return connack[3]
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            return type(exc).__name__

    async def everyone() -> list[int | str]:
        return list(await asyncio.gather(*(one(i, *login) for i, login in enumerate(logins))))

    return asyncio.run(everyone())


def test_password_checks_queued_beyond_the_bound_are_server_busy(start_broker, tmp_path):
    config = _config(tmp_path, "auth:\n  hash_workers: 1\n  hash_queue: 2\n  throttle:\n    enabled: false\n")
    broker = start_broker("--config", config)
    codes = _storm5(broker.port, [(f"nobody-{i}", "guess") for i in range(150)])
    assert Reason.SERVER_BUSY in codes, codes  # shed: "retry later"
    assert set(codes) <= {Reason.SERVER_BUSY, Reason.BAD_USER_NAME_OR_PASSWORD}, codes
    broker.wait_log("auth.hash_queue=2")


def test_refused_by_an_auth_plugin_is_not_authorized(start_broker, add_user, tmp_path):
    add_user("denied", "pw")
    add_user("crash", "pw")
    add_user("alice", "pw")
    config = _config(
        tmp_path,
        "plugins:\n  tests.engine.faulty_plugins.DenyAuth: {}\n  tests.engine.faulty_plugins.FaultyAuth: {}\n",
    )
    broker = start_broker("--config", config)
    refused = connect5(broker.port, "denied", "pw")
    assert refused.reason == Reason.NOT_AUTHORIZED  # the plugin said no, whatever the Guard said
    assert refused.connack("ReasonString") == "not authorized"
    assert connect5(broker.port, "crash", "pw").reason == Reason.NOT_AUTHORIZED  # the plugin raised
    assert connect(broker.port, "denied", "pw").rc == 5  # 3.1.1
    ok = connect5(broker.port, "alice", "pw")
    assert ok.reason == 0
    ok.close()


def test_slow_consumer_found_by_the_sidecar_is_quota_exceeded(start_broker, start_sidecar, add_user, cli, tmp_path):
    add_user("slow", "pw")
    add_user("pub", "pw")
    assert cli("quota", "set", "slow", "--max-queue", "5", "--queue-grace", "0.5s").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path, "acl:\n  default: allow\n"))
    start_sidecar("--interval", "0.2")
    # Receive Maximum 1 and no PUBACK ever: one delivery in flight, the rest wait in its queue (the socket is
    # read, so the DISCONNECT is not stuck behind unread bytes)
    with rawmqtt.RawClient(broker.port) as raw:
        raw.send(rawmqtt.connect("slow-5", level=5, properties=b"\x21\x00\x01", username="slow", password="pw"))
        assert _connack5(raw) == 0
        raw.send(rawmqtt.packet(0x82, struct.pack("!H", 1) + b"\x00" + rawmqtt.s("feed/#") + b"\x01"))
        raw.expect(rawmqtt.SUBACK)
        pub = connect5(broker.port, "pub", "pw")
        for i in range(20):
            pub.publish("feed/t", f"m{i}".encode(), qos=1)
        deadline = time.monotonic() + 20
        disconnect = None
        while disconnect is None and time.monotonic() < deadline:
            pkt = raw.read(max(0.1, deadline - time.monotonic()))
            if pkt is None:
                break
            if pkt.type == rawmqtt.DISCONNECT:
                disconnect = pkt
        assert disconnect is not None, "no DISCONNECT"
        assert disconnect.body[0] == Reason.QUOTA_EXCEEDED
        assert b"quota exceeded" in disconnect.body  # its Reason String
        pub.close()
    broker.wait_log("slow consumer")


def test_a_block_the_sidecar_finds_disconnects_with_0x98_then_refuses_with_0x8a(
    start_broker, start_sidecar, add_user, rds, prefix, tmp_path
):
    add_user("alice", "pw")
    broker = start_broker("--config", fast_config(tmp_path))
    sidecar = start_sidecar("--interval", "0.2")
    c = connect5(broker.port, "alice", "pw", client_id="blk")
    assert c.reason == 0
    rds.hset(f"{prefix}block:client:blk", mapping={"reason": "tampering", "until": "0", "by": "ops"})
    rds.expire(f"{prefix}block:client:blk", 60)
    assert gone(c, 10) == Reason.ADMINISTRATIVE_ACTION  # 0x8A Banned is CONNACK-only
    assert c.disconnect_props.ReasonString == "disconnected by an administrator"
    assert until(lambda: connect5(broker.port, "alice", "pw", client_id="blk").reason == Reason.BANNED)
    sidecar.wait_log("kicking client 'blk'")  # the sidecar found the block and kicked


def test_client_id_held_by_another_user_on_another_broker(start_broker, add_user, tmp_path):
    add_user("alice", "pw")
    add_user("bob", "pw")
    config = fast_config(tmp_path)
    one = start_broker("--config", config)
    two = start_broker("--config", config)
    held = connect5(one.port, "alice", "pw", client_id="owned")
    assert held.reason == 0

    def refused_on_two() -> bool:  # once broker one's registration of the id is in Redis
        return connect5(two.port, "bob", "pw", client_id="owned").reason == Reason.CLIENT_IDENTIFIER_NOT_VALID

    assert until(refused_on_two)
    assert connect(two.port, "bob", "pw", client_id="owned").rc == 2  # 3.1.1: identifier rejected
    assert not held.disconnected.is_set()  # the holder stays
    held.close()
