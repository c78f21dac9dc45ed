"""MQTT 5 answers where mqtt-guard follows mosquitto 2.0 only under a mosquitto.conf, and the one known
difference it keeps (mosquitto-compat/README.md, "Known"), asserted on both brokers side by side."""

from __future__ import annotations

from pathlib import Path

from mqtt_guard.auth.hashes import hash_password
from mqtt_guard.reasons import Reason
from tests.compat.harness import Mosquitto, needs_mosquitto
from tests.helpers.mqtt import connect
from tests.helpers.mqtt5 import V5
from tests.helpers.servers import free_port


def _conf(tmp_path: Path, body: str) -> tuple[Path, int]:
    port = free_port()
    conf = tmp_path / "guard-mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\n{body}\n")
    return conf, port


def _passwd(tmp_path: Path) -> Path:
    pw = tmp_path / "passwd"
    pw.write_text(f"alice:{hash_password('pa', salt_len=12, iterations=101)}\n")
    return pw


def test_bad_credentials_are_0x87_under_a_mosquitto_conf_and_0x86_under_yaml(start_broker, add_user, tmp_path):
    pw = _passwd(tmp_path)
    conf, port = _conf(tmp_path, f"allow_anonymous false\npassword_file {pw}")
    dropin = start_broker("-c", str(conf), bind=False, wait_for_port=port)
    assert V5(port, username="alice", password="wrong").reason == Reason.NOT_AUTHORIZED  # as mosquitto 2.0
    assert V5(port, username="nobody", password="pa").reason == Reason.NOT_AUTHORIZED
    assert V5(port).reason == Reason.NOT_AUTHORIZED  # no credentials
    assert connect(port, "alice", "wrong").rc == 5  # 3.1.1: unchanged
    ok = V5(port, username="alice", password="pa")
    assert ok.reason == 0
    ok.close()
    dropin.stop()
    add_user("alice", "pa")
    native = start_broker()  # YAML defaults: the specification's code
    assert V5(native.port, username="alice", password="wrong").reason == Reason.BAD_USER_NAME_OR_PASSWORD
    assert V5(native.port, username="nobody", password="pa").reason == Reason.BAD_USER_NAME_OR_PASSWORD
    yaml = tmp_path / "guard.yaml"
    yaml.write_text("auth:\n  mqtt5_bad_credentials: not_authorized\n")
    chosen = start_broker("--config", str(yaml))
    assert V5(chosen.port, username="alice", password="wrong").reason == Reason.NOT_AUTHORIZED


@needs_mosquitto
def test_mosquitto_answers_bad_credentials_with_0x87(tmp_path):
    pw = _passwd(tmp_path)
    with Mosquitto(tmp_path, f"allow_anonymous false\npassword_file {pw}") as mosquitto:
        assert V5(mosquitto.port, username="alice", password="wrong").reason == Reason.NOT_AUTHORIZED
        assert V5(mosquitto.port, username="nobody", password="pa").reason == Reason.NOT_AUTHORIZED


def _overlapping(port: int) -> list[tuple[str, list[int]]]:
    """An MQTT 5 client with two subscriptions matching one topic (identifiers 1 and 2) gets one message
    published there: (topic, subscription identifiers) of every copy it receives."""
    sub = V5(port)
    assert sub.reason == 0
    assert sub.subscribe("a/#", 1, sub_id=1) == [1]
    assert sub.subscribe("a/b", 1, sub_id=2) == [1]
    pub = V5(port)
    assert pub.publish("a/b", b"m", qos=1) in (0, Reason.NO_MATCHING_SUBSCRIBERS)
    first = sub.receive()
    copies = [first, *sub.received(1.0)]
    pub.close()
    sub.close()
    return [(m.topic, sorted(m.prop("SubscriptionIdentifier", []))) for m in copies]


def test_overlapping_subscriptions_get_one_copy_with_every_identifier(start_broker, tmp_path):
    """mqtt-guard: one copy carrying every matching subscription's identifier (MQTT-3.3.4-4/5 allow it), in
    drop-in mode as under YAML."""
    conf, port = _conf(tmp_path, "allow_anonymous true")
    start_broker("-c", str(conf), bind=False, wait_for_port=port)
    assert _overlapping(port) == [("a/b", [1, 2])]


@needs_mosquitto
def test_mosquitto_sends_one_copy_per_overlapping_subscription(tmp_path):
    """The known difference, measured: mosquitto 2.0 sends one copy per matching subscription, each with
    its own identifier. mqtt-guard keeps one copy (README "Known"): a device gets each message once, and
    the identifiers still say which subscriptions matched."""
    with Mosquitto(tmp_path, "allow_anonymous true") as mosquitto:
        assert sorted(_overlapping(mosquitto.port)) == [("a/b", [1]), ("a/b", [2])]
