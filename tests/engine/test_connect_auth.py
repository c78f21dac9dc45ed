"""CONNECT as a device sees it: who gets in, who gets CONNACK 5, and what the log says."""

from __future__ import annotations

import time

import pytest

from mqtt_guard.auth import hashes
from tests.helpers.mqtt import CONNACK_NOT_AUTHORIZED, connect


@pytest.fixture
def broker(start_broker, add_user, rds, prefix):
    add_user("alice", "alice-pw")
    rds.hset(f"{prefix}acl:user:alice", "a/#", "readwrite")
    return start_broker()


def test_right_password_connects_and_messages_flow(broker):
    sub = connect(broker.port, "alice", "alice-pw")
    assert sub.rc == 0
    assert sub.subscribe("a/#") == [0]
    pub = connect(broker.port, "alice", "alice-pw")
    pub.publish("a/b", b"hello")
    msg = sub.receive()
    assert (msg.topic, msg.payload) == ("a/b", b"hello")
    sub.close()
    pub.close()


@pytest.mark.parametrize(
    "username,password,reason",
    [
        ("alice", "nope", "wrong password"),
        ("mallory", "x", "unknown user"),
        (None, None, "anonymous clients are not allowed"),
        ("alice", None, "no password given"),
    ],
)
def test_refusals_get_connack_5_and_a_log_line_without_the_password(broker, username, password, reason):
    client = connect(broker.port, username, password)
    assert client.rc == CONNACK_NOT_AUTHORIZED
    log = broker.wait_log(reason)
    assert "nope" not in log and "alice-pw" not in log


def test_disabled_user_is_refused_until_enabled_without_restart(broker, cli):
    assert cli("user", "disable", "alice").returncode == 0
    assert connect(broker.port, "alice", "alice-pw").rc == CONNACK_NOT_AUTHORIZED
    broker.wait_log("user disabled")
    assert cli("user", "enable", "alice").returncode == 0
    client = connect(broker.port, "alice", "alice-pw")
    assert client.rc == 0
    client.close()


def test_expired_user_is_refused(broker, rds, prefix):
    rds.hset(f"{prefix}user:alice", "expires_at", int(time.time()) - 1)
    assert connect(broker.port, "alice", "alice-pw").rc == CONNACK_NOT_AUTHORIZED
    broker.wait_log("user expired")
    rds.hset(f"{prefix}user:alice", "expires_at", int(time.time()) + 3600)
    client = connect(broker.port, "alice", "alice-pw")
    assert client.rc == 0
    client.close()


def test_password_change_applies_to_the_next_connect(broker, cli):
    first = connect(broker.port, "alice", "alice-pw")  # also fills the verified-credentials cache
    assert first.rc == 0
    first.close()
    assert cli("user", "passwd", "alice", "--password-stdin", input="new-pw\n").returncode == 0
    assert connect(broker.port, "alice", "alice-pw").rc == CONNACK_NOT_AUTHORIZED
    client = connect(broker.port, "alice", "new-pw")
    assert client.rc == 0
    client.close()


@pytest.mark.parametrize("scheme", ["pbkdf2-sha512", "sha512", "bcrypt", "argon2id"])
def test_user_created_with_redis_cli_alone_connects(start_broker, rds, prefix, scheme):
    """An admin with only redis-cli and `mqtt-guard hash` can create a working user."""
    encoded = hashes.hash_password(
        "pw-" + scheme, scheme=scheme, bcrypt_rounds=4, argon2_time_cost=1, argon2_memory_cost=1024
    )
    rds.hset(f"{prefix}user:dev1", mapping={"password": encoded})
    broker = start_broker()
    client = connect(broker.port, "dev1", "pw-" + scheme)
    assert client.rc == 0
    client.close()
    assert connect(broker.port, "dev1", "other").rc == CONNACK_NOT_AUTHORIZED


def test_mosquitto_passwd_line_works_as_a_redis_user(start_broker, rds, prefix, tmp_path):
    import shutil
    import subprocess

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed")
    pw_file = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw_file), "dev2", "from-mosquitto"], check=True)
    user, encoded = hashes.parse_passwd_line(pw_file.read_text().splitlines()[0])
    rds.hset(f"{prefix}user:{user}", "password", encoded)
    broker = start_broker()
    client = connect(broker.port, "dev2", "from-mosquitto")
    assert client.rc == 0
    client.close()


def test_anonymous_allowed_with_flag(start_broker):
    broker = start_broker("--allow-anonymous")
    client = connect(broker.port)
    assert client.rc == 0
    client.close()


def test_mosquitto_clients_see_not_authorised(broker):
    import shutil
    import subprocess

    if shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto-clients not installed")
    ok = subprocess.run(
        ["mosquitto_pub", "-p", str(broker.port), "-u", "alice", "-P", "alice-pw", "-t", "x", "-m", "1"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        ["mosquitto_pub", "-p", str(broker.port), "-u", "alice", "-P", "bad", "-t", "x", "-m", "1"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert bad.returncode != 0
    assert "not authorised" in bad.stderr


@pytest.mark.parametrize("pieces", [1, 3], ids=["one-write", "split-mid-packet"])
def test_packets_sent_right_behind_the_connect_are_acted_on(broker, pieces):
    """A client may send SUBSCRIBE, PUBLISH and DISCONNECT without waiting for its CONNACK. Whatever came
    in the CONNECT's own read (or split across reads mid-packet) is handled, in order, after the CONNACK."""
    from tests.helpers import rawmqtt as raw

    data = (
        raw.connect("eager", username="alice", password="alice-pw", keepalive=0)
        + raw.subscribe(1, ("a/eager", 1))
        + raw.publish("a/eager", b"to-myself", qos=1, packet_id=7)
    )
    step = -(-len(data) // pieces)
    with raw.RawClient(broker.port) as c:
        for i in range(0, len(data), step):
            c.send(data[i : i + step])
            time.sleep(0.05)
        assert c.connack() == (0, 0)
        assert c.expect(raw.SUBACK).body == b"\x00\x01\x01"
        got = {}
        for _ in range(2):  # its PUBACK and the delivery of its own message, in either order
            pkt = c.expect_any()
            got[pkt.type] = pkt
        assert got[raw.PUBACK].packet_id == 7
        assert got[raw.PUBLISH].payload == b"to-myself"
        c.send(raw.DISCONNECT_BYTES)
        assert c.closed_by_peer()
