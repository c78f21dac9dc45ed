"""`mqtt-guard passwd` with mosquitto_passwd's usage: -c, -b, -D, -U, -H, -I."""

from __future__ import annotations

import os
import stat

import pytest

from mqtt_guard.auth import hashes
from mqtt_guard.compat.passwd import read_passwd_file


@pytest.fixture
def passwd(cli):
    def run(*args, input=None):
        return cli("passwd", *args, input=input)

    return run


def verify(path, user, password):
    entry = read_passwd_file(path).get(user)
    return entry is not None and hashes.verify_password(password, entry.encoded)


def test_create_add_update_delete(passwd, tmp_path):
    f = tmp_path / "pw"
    assert passwd("-c", "-b", str(f), "alice", "a1").returncode == 0
    assert passwd("-b", str(f), "bob", "b1").returncode == 0
    assert passwd("-b", str(f), "alice", "a2").returncode == 0  # update in place
    lines = f.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["alice", "bob"]
    assert verify(f, "alice", "a2") and not verify(f, "alice", "a1") and verify(f, "bob", "b1")
    salt = lines[0].split("$")[3]
    assert len(salt) == 16  # 12 bytes, base64: what mosquitto 2.0 requires
    assert lines[0].startswith("alice:$7$10000$")
    assert passwd("-D", str(f), "bob").returncode == 0
    assert [line.split(":")[0] for line in f.read_text().splitlines()] == ["alice"]
    result = passwd("-D", str(f), "bob")
    assert result.returncode == 1 and "User bob not found" in result.stderr
    assert passwd("-c", "-b", str(f), "carol", "c1").returncode == 0  # -c overwrites
    assert [line.split(":")[0] for line in f.read_text().splitlines()] == ["carol"]
    mode = stat.S_IMODE(os.stat(f).st_mode)
    assert mode == 0o666 & ~_umask()


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_iterations_hash_and_prompt(passwd, tmp_path):
    f = tmp_path / "pw"
    assert passwd("-c", "-I", "101", "-b", str(f), "alice", "a").returncode == 0
    assert f.read_text().startswith("alice:$7$101$")
    assert passwd("-H", "sha512", "-b", str(f), "bob", "b").returncode == 0
    assert "\nbob:$6$" in f.read_text()
    assert passwd(str(f), "carol", input="c3\nc3\n").returncode == 0  # the password twice, as prompted
    assert verify(f, "carol", "c3") and verify(f, "bob", "b")
    result = passwd(str(f), "dave", input="x\ny\n")
    assert result.returncode == 1 and "passwords do not match" in result.stderr


def test_comments_and_other_lines_are_kept(passwd, tmp_path):
    f = tmp_path / "pw"
    f.write_text("# users of site 1\nalice:$7$101$old$old\n\nbob:x\nalice:dup\n")
    assert passwd("-b", str(f), "alice", "new").returncode == 0
    lines = f.read_text().splitlines()
    assert lines[0] == "# users of site 1" and lines[2] == "" and lines[3] == "bob:x"
    assert len([line for line in lines if line.startswith("alice:")]) == 1 and verify(f, "alice", "new")


def test_upgrade_plain_text_file(passwd, tmp_path):
    f = tmp_path / "pw"
    existing = hashes.hash_password("keep", salt_len=12, iterations=101)
    f.write_text(f"# plain\nalice:secret\nbob:{existing}\n")
    assert passwd("-U", str(f)).returncode == 0
    assert verify(f, "alice", "secret") and verify(f, "bob", "keep")  # already hashed lines are left alone
    assert f.read_text().startswith("# plain\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-b", "FILE", "a:b", "p"], "must not contain the ':'"),
        (["-c", "-D", "FILE", "a"], "cannot be used together"),
        (["-b", "FILE", "alice"], "-b needs the password"),
        (["FILE", "alice", "pw"], "needs -b"),
        (["-b", "MISSING", "alice", "pw"], "use -c to create it"),
        (["-U", "FILE", "alice"], "-U takes only the password file"),
        (["-c", "-b", "FILE", "alice", ""], "empty password"),
    ],
)
def test_refusals(passwd, tmp_path, args, message):
    f = tmp_path / "pw"
    f.write_text("x:y\n")
    args = [str(f) if a == "FILE" else str(tmp_path / "missing") if a == "MISSING" else a for a in args]
    result = passwd(*args)
    assert result.returncode != 0 and message in result.stderr
    assert f.read_text() == "x:y\n"
