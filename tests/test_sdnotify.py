"""Issue 21, item 3: sd_notify readiness. The test plays systemd: it binds the NOTIFY_SOCKET datagram
socket and reads what the broker sends. READY=1 comes once the listeners are open, STOPPING=1 at SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import tempfile

import pytest

from mqtt_guard import sdnotify
from tests.helpers.servers import BrokerProcess


@pytest.fixture
def notify_socket():
    path = os.path.join(tempfile.mkdtemp(prefix="mqg-notify-"), "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    yield path, sock
    sock.close()
    os.unlink(path)
    os.rmdir(os.path.dirname(path))


def test_notify_sends_one_datagram(notify_socket, monkeypatch):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.notify("READY=1")
    assert sock.recv(256) == b"READY=1"


def test_notify_without_systemd_or_with_a_dead_socket_does_nothing(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert not sdnotify.notify("READY=1")  # logged, never raised
    assert "cannot notify systemd" in caplog.text


def test_the_abstract_namespace(monkeypatch):
    name = f"mqg-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("STOPPING=1")
        assert sock.recv(256) == b"STOPPING=1"


def test_the_broker_says_ready_once_listening_and_stopping_at_sigterm(notify_socket, redis_server, prefix, monkeypatch):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    broker = BrokerProcess(redis_server.url, prefix, args=["--allow-anonymous"]).start()
    try:
        assert sock.recv(256) == b"READY=1"
        assert "broker ready on" in broker.log()  # the listeners were open before READY=1
        broker.proc.send_signal(signal.SIGTERM)
        assert sock.recv(256) == b"STOPPING=1"
        assert broker.proc.wait(15) == 0
    finally:
        broker.stop()
