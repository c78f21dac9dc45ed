"""Passwords are bytes (MQTT 3.1.1 3.1.3.5: binary data; issue 15 item 6): a password that is not UTF-8
can be set with the CLI (stdin or a file, as raw bytes) and logs in; any other byte string is simply a
wrong password, with no traceback in the broker log."""

from __future__ import annotations

import subprocess

from tests.helpers import rawmqtt
from tests.helpers.servers import ROOT, guard_cmd

BINARY = b"\xff\xfe\x00bin\x80\x01"  # not UTF-8, with a NUL inside
CONNACK_ACCEPTED, CONNACK_NOT_AUTHORIZED = 0, 5


def _connack(port: int, username: str, password: bytes) -> int:
    with rawmqtt.RawClient(port) as c:
        c.send(rawmqtt.connect(f"{username}-dev", username=username, password=password))
        return c.connack()[1]


def _cli_bytes(redis_server, prefix: str, *args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        guard_cmd("--redis-url", redis_server.url, "--prefix", prefix, *args),
        input=data,
        capture_output=True,
        timeout=30,
        cwd=ROOT,
    )


def test_a_binary_password_set_on_stdin_logs_in_and_others_are_refused_cleanly(redis_server, prefix, start_broker):
    done = _cli_bytes(redis_server, prefix, "user", "add", "bin", "--password-stdin", data=BINARY + b"\n")
    assert done.returncode == 0, done.stderr
    broker = start_broker()
    assert _connack(broker.port, "bin", BINARY) == CONNACK_ACCEPTED
    assert _connack(broker.port, "bin", BINARY) == CONNACK_ACCEPTED  # the remembered check, too
    for wrong in (b"\xff\xfe", b"\xed\xa0\x80", BINARY + b"x", b"\x00"):
        assert _connack(broker.port, "bin", wrong) == CONNACK_NOT_AUTHORIZED, wrong
    assert "Traceback" not in broker.log()


def test_a_binary_password_from_a_file(redis_server, prefix, start_broker, tmp_path):
    secret = tmp_path / "pw"
    secret.write_bytes(BINARY + b"\n")  # one trailing newline is dropped, as an editor adds it
    done = _cli_bytes(redis_server, prefix, "user", "add", "filed", "--password-file", str(secret), data=b"")
    assert done.returncode == 0, done.stderr
    secret.write_bytes(BINARY + b"2")
    done = _cli_bytes(redis_server, prefix, "user", "passwd", "filed", "--password-file", str(secret), data=b"")
    assert done.returncode == 0, done.stderr
    broker = start_broker()
    assert _connack(broker.port, "filed", BINARY + b"2") == CONNACK_ACCEPTED
    assert _connack(broker.port, "filed", BINARY) == CONNACK_NOT_AUTHORIZED
