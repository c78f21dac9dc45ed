"""A failed login must not disturb anybody else's session (amqtt 0.12.1 deleted or took it over)."""

from __future__ import annotations

import signal
import socket

import pytest

from tests.helpers.mqtt import CONNACK_NOT_AUTHORIZED, connect


@pytest.fixture
def broker(start_broker, add_user, rds, prefix):
    add_user("victim", "victim-pw")
    add_user("pub", "pub-pw")
    rds.hset(f"{prefix}acl:user:victim", mapping={"v/#": "read", "t": "read"})
    rds.hset(f"{prefix}acl:user:pub", "v/#", "write")
    return start_broker()


@pytest.mark.parametrize("clean_session", [True, False])
def test_failed_login_with_victims_client_id_changes_nothing(broker, clean_session):
    victim = connect(broker.port, "victim", "victim-pw", client_id="device-1", clean_session=False)
    assert victim.rc == 0
    assert victim.subscribe(("v/#", 1)) == [1]

    attacker = connect(broker.port, "victim", "guessed", client_id="device-1", clean_session=clean_session)
    assert attacker.rc == CONNACK_NOT_AUTHORIZED

    # The victim stays connected and keeps its subscription.
    assert not victim.disconnected.wait(1.0)
    pub = connect(broker.port, "pub", "pub-pw")
    pub.publish("v/1", b"still here", qos=1)
    assert victim.receive().payload == b"still here"
    victim.close()
    pub.close()


def test_valid_take_over_disconnects_the_old_connection(broker):
    first = connect(broker.port, "victim", "victim-pw", client_id="device-2")
    assert first.rc == 0
    second = connect(broker.port, "victim", "victim-pw", client_id="device-2")
    assert second.rc == 0
    assert first.disconnected.wait(5)
    assert second.subscribe("t") == [0]
    second.close()


def test_socket_without_connect_is_closed(start_broker, tmp_path):
    config = tmp_path / "guard.yaml"
    config.write_text("limits:\n  connect_timeout: 1s\n")
    broker = start_broker("--config", str(config))
    with socket.create_connection(("127.0.0.1", broker.port)) as s:
        s.settimeout(5)  # a broker that does not close it makes recv raise
        assert s.recv(10) == b""  # closed by the broker, not by our timeout
    broker.wait_log("no CONNECT within 1.0 s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(start_broker, sig):
    broker = start_broker("--allow-anonymous")
    client = connect(broker.port)
    assert client.rc == 0
    assert broker.stop(sig) == 0
    assert client.disconnected.wait(5)
    assert "stopped" in broker.log()
