"""`mqtt-guard import mosquitto` and `mqtt-guard import go-auth` into the Redis schema."""

from __future__ import annotations

import pytest

from mqtt_guard.auth import hashes
from tests.helpers.mqtt import connect

ACL = """topic read public/#
topic read %c/inbox
user alice
topic readwrite alice/#
topic read shared/#
topic write shared/alice
topic deny shared/secret
user bob
topic shared/#
pattern readwrite devices/%c/#
pattern read users/%u/#
pattern deny devices/x%c
"""


@pytest.fixture
def files(tmp_path):
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    pw.write_text(
        f"alice:{hashes.hash_password('pa', salt_len=12, iterations=101)}\n"
        f"bob:{hashes.hash_password('pb', salt_len=12, iterations=101)}\n"
        "carol:plaintext\n"
    )
    acl.write_text(ACL)
    return pw, acl


def test_import_mosquitto(cli, rds, prefix, files):
    pw, acl = files
    dry = cli("import", "mosquitto", "--passwd", str(pw), "--acl", str(acl), "--dry-run")
    assert dry.returncode == 2, dry.stderr  # exit 2: some lines could not be translated
    assert "would write" in dry.stdout and rds.keys(f"{prefix}*") == []  # dry run writes nothing
    assert "$7$" not in dry.stdout  # hashes are never printed
    result = cli("import", "mosquitto", "--passwd", str(pw), "--acl", str(acl))
    assert result.returncode == 2
    # reported, not dropped silently
    assert "carol" in result.stderr and "not imported" in result.stderr
    assert f"{acl}:2: topic read %c/inbox" in result.stderr
    assert f"{acl}:12: pattern deny devices/x%c" in result.stderr
    assert "a user's own grant beats a pattern deny" not in result.stdout  # no pattern deny was imported
    assert "SUBACK 0x80" in result.stdout
    assert rds.hgetall(f"{prefix}acl:anonymous") == {"public/#": "read", "devices/%c/#": "readwrite"}
    assert rds.hgetall(f"{prefix}acl:user:alice") == {
        "alice/#": "readwrite",
        "shared/#": "read",
        "shared/alice": "publish",
        "shared/secret": "deny",
    }
    assert rds.hgetall(f"{prefix}acl:user:bob") == {"shared/#": "readwrite"}
    assert rds.hgetall(f"{prefix}acl:pattern") == {"devices/%c/#": "readwrite", "users/%u/#": "read"}
    user = rds.hgetall(f"{prefix}user:alice")
    assert hashes.verify_password("pa", user["password"]) and user["superuser"] == "0" and user["disabled"] == "0"
    again = cli("import", "mosquitto", "--passwd", str(pw), "--acl", str(acl))
    assert "nothing to change (already imported)" in again.stdout  # idempotent


def test_imported_users_work_in_a_redis_only_broker(cli, files, start_broker):
    pw, acl = files
    cli("import", "mosquitto", "--passwd", str(pw), "--acl", str(acl))
    broker = start_broker()
    alice = connect(broker.port, "alice", "pa", client_id="a1")
    bob = connect(broker.port, "bob", "pb", client_id="b1")
    assert alice.rc == bob.rc == 0
    assert alice.subscribe("shared/#") == [0]
    bob.publish("shared/x", b"1", qos=1)
    bob.publish("shared/secret", b"2", qos=1)
    assert [m.topic for m in alice.received(0.5)] == ["shared/x"]
    alice.close()
    bob.close()


def test_import_refuses_a_file_mosquitto_would_refuse(cli, tmp_path, rds, prefix):
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic READ a\n")
    result = cli("import", "mosquitto", "--acl", str(acl))
    assert result.returncode == 1 and f"{acl}:2" in result.stderr and rds.keys(f"{prefix}*") == []


def test_import_go_auth(cli, rds, prefix):
    src = f"{prefix}goauth:"
    bcrypt_hash = hashes.hash_password("pa", scheme="bcrypt", bcrypt_rounds=4)
    rds.set(f"{src}alice", bcrypt_hash)
    rds.set(f"{src}alice:su", "true")
    rds.set(f"{src}bob", "PBKDF2$sha512$100000$c2FsdHNhbHQ=$aGFzaA==")
    rds.sadd(f"{src}bob:sacls", "sensors/#")
    rds.sadd(f"{src}bob:racls", "sensors/#")
    rds.sadd(f"{src}bob:wacls", "cmd/bob")
    rds.sadd(f"{src}bob:rwacls", "bob/%u")
    rds.sadd(f"{src}common:rwacls", "devices/%c/#", "x%u/y")
    dry = cli("import", "go-auth", "--source-prefix", src, "--dry-run")
    assert dry.returncode == 2 and rds.keys(f"{prefix}user:*") == []
    result = cli("import", "go-auth", "--source-prefix", src)
    assert result.returncode == 2
    assert "user 'bob': password hash format 'PBKDF2'" in result.stderr
    assert "common:rwacls 'x%u/y'" in result.stderr
    alice = rds.hgetall(f"{prefix}user:alice")
    assert alice["password"] == bcrypt_hash and alice["superuser"] == "1"
    assert "password" not in rds.hgetall(f"{prefix}user:bob")  # imported without a password, reported
    assert rds.hgetall(f"{prefix}acl:user:bob") == {
        "sensors/#": "read",
        "cmd/bob": "publish",
        "bob/%u": "receive,publish",
    }
    assert rds.hgetall(f"{prefix}acl:pattern") == {"devices/%c/#": "receive,publish"}
    again = cli("import", "go-auth", "--source-prefix", src)
    assert "nothing to change" in again.stdout
