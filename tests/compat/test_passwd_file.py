"""password_file: mosquitto 2.0.11's reading rules, and files written by each side loading in the other."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess

import pytest

from mqtt_guard.auth import hashes
from mqtt_guard.compat.passwd import check_mosquitto20_hash, parse_passwd_text, read_passwd_file
from tests.compat.harness import MOSQUITTO_PASSWD, Mosquitto, connack, needs_mosquitto
from tests.helpers.servers import run_cli

needs_mosquitto_passwd = pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd not installed")


def h7(password: str, salt_len: int = 12, iterations: int = 101) -> str:
    salt = os.urandom(salt_len)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def h6(password: str) -> str:
    salt = os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


# (line, user, password, accepted by mosquitto 2.0.11) - measured with the real broker
QUIRKS = [
    (f"alice:{h7('pa')}", "alice", "pa", False),  # overridden by the later alice line
    (f"  bob  :  {h7('pb')}  ", "bob", "pb", True),  # blanks around both fields are trimmed
    (f"carol:{h7('pc')}:extra", "carol", "pc", True),  # a third field is ignored
    ("dave", "dave", "", False),  # no ':' : skipped
    (f"#eve:{h7('pe')}", "#eve", "pe", False),  # comment
    ("frank:", "frank", "", False),  # no hash: removed
    (f"gina:{h7('pg', 64)}", "gina", "pg", False),  # mosquitto 2.0 wants a 12-byte salt
    ("hank:plaintext", "hank", "plaintext", False),  # not a hash: removed
    (f"iris::{h7('pi')}", "iris", "pi", True),  # empty fields are skipped, like strtok
    (f"alice:{h7('other')}", "alice", "other", True),  # the last usable line wins
    (f"jack:{h6('pj')}", "jack", "pj", True),  # $6$ (sha512) still loads
    (f"kate:{h7('pk')}\r", "kate", "pk", True),  # CRLF
    (f" #lee:{h7('pl')}", "#lee", "pl", True),  # not a comment: '#' is not in the first column
    (f"mo:{h7('pm')}".replace("$7$101$", "$7$0$"), "mo", "pm", False),  # iterations < 1
    (f"oz:{h7('p:z')}", "oz", "p:z", True),
    (f"quinn :{h7('pq')}", "quinn", "pq", True),
    (f"ro se:{h7('pr')}", "ro se", "pr", True),
]


def test_reading_rules():
    pf = parse_passwd_text("\n".join(line for line, *_ in QUIRKS) + "\n", "pw")
    for _, user, password, accepted in QUIRKS:
        entry = pf.get(user)
        ok = entry is not None and hashes.verify_password(password, entry.encoded)
        assert ok is accepted, (user, password)
    assert any("frank" in p for p in pf.problems) and any("gina" in p and "12-byte" in p for p in pf.problems)


def test_a_later_unusable_duplicate_leaves_the_earlier_line():
    pf = parse_passwd_text(f"alice:{h7('good')}\nalice:plaintext\nbob:{h7('b1')}\nbob:{h7('b2')}\n")
    assert hashes.verify_password("good", pf.get("alice").encoded)
    assert hashes.verify_password("b2", pf.get("bob").encoded)


def test_lenient_mode_keeps_what_mqtt_guard_can_verify():
    pf = parse_passwd_text(f"gina:{h7('pg', 64)}\n", strict_20=False)
    assert hashes.verify_password("pg", pf.get("gina").encoded)
    assert check_mosquitto20_hash(h7("x", 64)) is not None and check_mosquitto20_hash(h7("x")) is None


@needs_mosquitto
def test_mosquitto_applies_the_same_rules(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("\n".join(line for line, *_ in QUIRKS) + "\n")
    with Mosquitto(tmp_path, f"allow_anonymous false\npassword_file {pw}") as m:
        for _, user, password, accepted in QUIRKS:
            if user in ("#eve", "dave"):
                continue
            assert (connack(m.port, user, password) == 0) is accepted, (user, password)


@needs_mosquitto
def test_mosquitto_loads_a_file_written_by_mqtt_guard_passwd(tmp_path, redis_server, prefix):
    pw = tmp_path / "pw"
    for args in (
        ["-c", "-b", str(pw), "alice", "s3cret"],
        ["-b", "-I", "101", str(pw), "bob", "pw-b"],
        ["-b", "-H", "sha512", str(pw), "carol", "pw-c"],
    ):
        result = run_cli(redis_server.url, prefix, "passwd", *args)
        assert result.returncode == 0, result.stderr
    with Mosquitto(tmp_path, f"allow_anonymous false\npassword_file {pw}") as m:
        assert connack(m.port, "alice", "s3cret") == 0
        assert connack(m.port, "bob", "pw-b") == 0
        assert connack(m.port, "carol", "pw-c") == 0
        assert connack(m.port, "alice", "wrong") == 5
    assert "Error" not in m.proc.log()


@needs_mosquitto_passwd
def test_mqtt_guard_loads_files_written_by_mosquitto_passwd(tmp_path):
    pw = tmp_path / "pw"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(pw), "alice", "Zürich-pw"], check=True)
    subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), "bob", "pw-b"], check=True)
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-H", "sha512", str(pw), "carol", "pw-c"], check=True)
    pf = read_passwd_file(pw)
    assert not pf.problems
    assert hashes.verify_password("Zürich-pw", pf.get("alice").encoded)
    assert hashes.verify_password("pw-b", pf.get("bob").encoded)
    assert hashes.verify_password("pw-c", pf.get("carol").encoded)
    assert not hashes.verify_password("pw-b", pf.get("alice").encoded)
