"""`mqtt-guard user ...` and `mqtt-guard hash` as an admin uses them."""

from __future__ import annotations

import json
import time

from mqtt_guard.auth import hashes


def test_add_show_list_del(cli, rds, prefix):
    r = cli(
        "user", "add", "alice", "--password-stdin", "--superuser", "--group", "ops", input="correct horse battery\n"
    )
    assert r.returncode == 0, r.stderr
    stored = rds.hgetall(f"{prefix}user:alice")
    assert stored["superuser"] == "1" and stored["disabled"] == "0"
    assert stored["password"].startswith("$7$10000$") and "correct horse" not in json.dumps(stored)
    assert hashes.verify_password("correct horse battery", stored["password"])
    assert rds.smembers(f"{prefix}user:alice:groups") == {"ops"}

    shown = json.loads(cli("user", "show", "alice", "--json").stdout)
    assert shown == {
        "username": "alice",
        "password": "pbkdf2-sha512",
        "superuser": True,
        "disabled": False,
        "expires_at": None,
        "expired": False,
        "groups": ["ops"],
    }
    assert "correct horse" not in cli("user", "show", "alice").stdout
    assert json.loads(cli("user", "list", "--json").stdout) == ["alice"]

    assert cli("user", "del", "alice").returncode == 0
    assert not rds.exists(f"{prefix}user:alice", f"{prefix}user:alice:groups")
    missing = cli("user", "show", "alice")
    assert missing.returncode == 1 and "no such user 'alice'" in missing.stderr


def test_add_twice_is_an_error(cli):
    assert cli("user", "add", "bob", "--password-stdin", input="a\n").returncode == 0
    again = cli("user", "add", "bob", "--password-stdin", input="b\n")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_passwd_disable_enable_set(cli, rds, prefix):
    cli("user", "add", "dev", "--password-stdin", input="old\n")
    assert cli("user", "passwd", "dev", "--password-stdin", input="new\n").returncode == 0
    assert hashes.verify_password("new", rds.hget(f"{prefix}user:dev", "password"))
    assert cli("user", "disable", "dev").returncode == 0
    assert rds.hget(f"{prefix}user:dev", "disabled") == "1"
    assert cli("user", "enable", "dev").returncode == 0
    assert rds.hget(f"{prefix}user:dev", "disabled") == "0"
    assert cli("user", "set", "dev", "--expires", "+1h").returncode == 0
    assert abs(int(rds.hget(f"{prefix}user:dev", "expires_at")) - (time.time() + 3600)) < 60
    assert cli("user", "set", "dev", "--expires", "2030-01-01T00:00:00").returncode == 0
    assert rds.hget(f"{prefix}user:dev", "expires_at") == "1893456000"
    assert cli("user", "set", "dev", "--no-expiry", "--superuser").returncode == 0
    assert rds.hget(f"{prefix}user:dev", "expires_at") is None
    assert rds.hget(f"{prefix}user:dev", "superuser") == "1"
    assert cli("user", "set", "dev", "--expires", "+1h", "--no-expiry").returncode == 2  # contradictory
    assert cli("user", "passwd", "ghost", "--password-stdin", input="x\n").returncode == 1


def test_password_never_from_argv_or_a_missing_terminal(cli):
    r = cli("user", "add", "eve", input="secret\n")  # no --password-stdin and no terminal
    assert r.returncode == 1 and "--password-stdin" in r.stderr
    assert "secret" not in r.stdout + r.stderr
    assert cli("user", "add", "eve", "--password-stdin", input="\n").returncode == 1  # empty refused


def test_hash_command_output_verifies(cli):
    r = cli("hash", input="hunter2\n")
    assert r.returncode == 0
    encoded = r.stdout.strip()
    assert encoded.startswith("$7$") and hashes.verify_password("hunter2", encoded)
    r12 = cli("hash", "--salt-len", "12", "--iterations", "101", input="hunter2\n").stdout.strip()
    assert r12.startswith("$7$101$") and hashes.verify_password("hunter2", r12)
    assert cli("hash", "--scheme", "bcrypt", input="x\n").stdout.startswith("$2b$")


def test_redis_unreachable_is_a_clear_error():
    from tests.helpers.servers import free_port, run_cli

    r = run_cli(f"redis://127.0.0.1:{free_port()}/0", "x:", "user", "list")
    assert r.returncode == 1 and "cannot reach Redis" in r.stderr
