"""Tests for mqtt_guard.auth.hashes.

Why these tests look the way they do: the module's whole reason to exist is
byte-for-byte agreement with mosquitto, so expected values are computed
independently (hashlib directly) or produced by the real ``mosquitto_passwd``
/ ``mosquitto`` binaries -- never by the code under test. No mocks.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqtt_guard.auth.hashes import (
    DEFAULT_PBKDF2_ITERATIONS,
    MAX_PBKDF2_ITERATIONS,
    MOSQUITTO_20_SALT_LEN,
    NEW_SALT_LEN,
    HashFormatError,
    format_passwd_line,
    hash_password,
    identify,
    parse_passwd_line,
    verify_password,
)
from tests.helpers.servers import wait_port

# Generated once with mosquitto 2.0.11: `mosquitto_passwd -c -b FILE alice s3cret`
MOSQ_7_ALICE = (
    "$7$101$0dJztXdSoicTwjB/$UFuF8SeN8Gpdgmnobh89EhnqcoH+q+gEnDqp1m0rleAhACymAGA+IvFVVf0m8cqQCntsnX1h/HlkCIbiU1X0LA=="
)
# Generated once with mosquitto 2.0.11: `mosquitto_passwd -H sha512 -c -b FILE alice s3cret`
MOSQ_6_ALICE = (
    "$6$lG5qNBAxkwbbISNY$ULdO/G2pBTnlvNVUxgIPwCMdguf9qvUvvWJYG6Ff/HzcJ0WlSlemjv8AOp5GVcq65ulU+LgxjdxWWNLuSEkDrw=="
)
# Generated once with mosquitto 2.0.11: `mosquitto_passwd -I 2000 -c -b FILE bob pw`
MOSQ_7_BOB_2000 = (
    "$7$2000$/DNirHATe5bPbh3j$pg6tNuuQlUA5Fj3agHQXVfwOT3WOG/5Uc7NFs3+RWGc0bLzCtXrYcVsE9mdGY9YQxXiLiUWcc4vTcDlESVuMeg=="
)

# Cheap costs so the suite stays fast; production defaults are tested by value only.
FAST_BCRYPT = {"bcrypt_rounds": 4}
FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_cost": 8, "argon2_parallelism": 1}
FAST_KWARGS: dict[str, dict[str, int]] = {
    "pbkdf2-sha512": {"iterations": 1_000},
    "sha512": {},
    "bcrypt": FAST_BCRYPT,
    "argon2id": FAST_ARGON2,
}
SCHEMES = list(FAST_KWARGS)

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PUB = shutil.which("mosquitto_pub")

needs_mosquitto_passwd = pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd binary not installed")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def fast_hash(password: str, scheme: str) -> str:
    return hash_password(password, scheme=scheme, **FAST_KWARGS[scheme])


def pbkdf2_line(password: str, salt: bytes, iterations: int) -> str:
    """Independent reference implementation of mosquitto's $7$ encoding."""
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return f"$7${iterations}${b64(salt)}${b64(digest)}"


def sha512_line(password: str, salt: bytes) -> str:
    """Independent reference implementation of mosquitto's legacy $6$ encoding."""
    return f"$6${b64(salt)}${b64(hashlib.sha512(password.encode('utf-8') + salt).digest())}"


# ---------------------------------------------------------------- constants


def test_documented_constants() -> None:
    assert DEFAULT_PBKDF2_ITERATIONS == 10_000
    assert MOSQUITTO_20_SALT_LEN == 12
    assert NEW_SALT_LEN == 64


# ------------------------------------------------------- known-answer tests


@pytest.mark.parametrize(
    ("encoded", "good", "scheme"),
    [
        (MOSQ_7_ALICE, "s3cret", "pbkdf2-sha512"),
        (MOSQ_6_ALICE, "s3cret", "sha512"),
        (MOSQ_7_BOB_2000, "pw", "pbkdf2-sha512"),
    ],
)
def test_literal_mosquitto_passwd_hashes(encoded: str, good: str, scheme: str) -> None:
    assert identify(encoded) == scheme
    assert verify_password(good, encoded) is True
    assert verify_password("wrong", encoded) is False
    assert verify_password("", encoded) is False
    assert verify_password(good + " ", encoded) is False


@pytest.mark.parametrize("salt_len", [MOSQUITTO_20_SALT_LEN, NEW_SALT_LEN])
@pytest.mark.parametrize("iterations", [1, 101, 1_000])
def test_pbkdf2_known_answer_fixed_salt(salt_len: int, iterations: int) -> None:
    salt = bytes(range(salt_len))
    encoded = pbkdf2_line("hunter2", salt, iterations)
    assert verify_password("hunter2", encoded) is True
    assert verify_password("hunter3", encoded) is False


def test_sha512_known_answer_fixed_salt() -> None:
    salt = b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b"
    encoded = sha512_line("hunter2", salt)
    assert verify_password("hunter2", encoded) is True
    assert verify_password("Hunter2", encoded) is False


def test_hash_password_pbkdf2_output_matches_independent_computation() -> None:
    encoded = hash_password("s3cret", iterations=1_000, salt_len=MOSQUITTO_20_SALT_LEN)
    _, tag, iters, salt_b64, hash_b64 = encoded.split("$")
    assert (tag, iters) == ("7", "1000")
    salt = base64.b64decode(salt_b64, validate=True)
    assert len(salt) == MOSQUITTO_20_SALT_LEN
    assert encoded == pbkdf2_line("s3cret", salt, 1_000)


def test_hash_password_sha512_output_matches_independent_computation() -> None:
    encoded = hash_password("s3cret", scheme="sha512")
    _, tag, salt_b64, _hash_b64 = encoded.split("$")
    assert tag == "6"
    salt = base64.b64decode(salt_b64, validate=True)
    assert len(salt) == MOSQUITTO_20_SALT_LEN
    assert encoded == sha512_line("s3cret", salt)


def test_hash_password_default_is_pbkdf2_10k_with_64_byte_salt() -> None:
    encoded = hash_password("s3cret")
    _, tag, iters, salt_b64, hash_b64 = encoded.split("$")
    assert (tag, int(iters)) == ("7", DEFAULT_PBKDF2_ITERATIONS)
    assert len(base64.b64decode(salt_b64)) == NEW_SALT_LEN
    assert len(base64.b64decode(hash_b64)) == 64
    assert salt_b64.endswith("=") or len(salt_b64) % 4 == 0  # standard padded base64
    assert verify_password("s3cret", encoded) is True


# --------------------------------------------------------------- round trips


@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_all_schemes(scheme: str) -> None:
    encoded = fast_hash("correct horse", scheme)
    assert identify(encoded) == scheme
    assert verify_password("correct horse", encoded) is True
    assert verify_password("correct horsf", encoded) is False
    assert verify_password("", encoded) is False


@pytest.mark.parametrize("scheme", SCHEMES)
def test_unicode_password_round_trip(scheme: str) -> None:
    password = "pässwörd-密码-🔑"
    encoded = fast_hash(password, scheme)
    assert verify_password(password, encoded) is True
    # NFD form is different bytes; we deliberately do not normalise (mosquitto doesn't).
    assert verify_password("pa\u0308sswörd-密码-🔑", encoded) is False


def test_unicode_password_is_utf8_bytes() -> None:
    salt = b"\xaa" * 12
    encoded = pbkdf2_line("Grüße", salt, 50)
    assert verify_password("Grüße", encoded) is True
    latin1 = hashlib.pbkdf2_hmac("sha512", "Grüße".encode("latin-1"), salt, 50, 64)
    assert verify_password("Grüße", f"$7$50${b64(salt)}${b64(latin1)}") is False


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fresh_salt_every_time(scheme: str) -> None:
    assert fast_hash("same", scheme) != fast_hash("same", scheme)


@pytest.mark.parametrize("salt_len", [MOSQUITTO_20_SALT_LEN, NEW_SALT_LEN])
def test_pbkdf2_salt_lengths(salt_len: int) -> None:
    encoded = hash_password("pw", iterations=10, salt_len=salt_len)
    assert len(base64.b64decode(encoded.split("$")[3])) == salt_len
    assert verify_password("pw", encoded) is True


def test_bcrypt_uses_2b_and_requested_cost() -> None:
    encoded = hash_password("pw", scheme="bcrypt", bcrypt_rounds=5)
    assert encoded.startswith("$2b$05$")


@pytest.mark.parametrize("prefix", ["$2a$", "$2y$"])
def test_bcrypt_accepts_2a_and_2y(prefix: str) -> None:
    encoded = prefix + hash_password("pw", **FAST_BCRYPT, scheme="bcrypt")[4:]
    assert identify(encoded) == "bcrypt"
    assert verify_password("pw", encoded) is True
    assert verify_password("px", encoded) is False


def test_bcrypt_long_password_rejected_on_hash_and_false_on_verify() -> None:
    secret = "x" * 73
    with pytest.raises(ValueError) as excinfo:
        hash_password(secret, scheme="bcrypt", **FAST_BCRYPT)
    assert secret not in str(excinfo.value)
    encoded = hash_password("x" * 72, scheme="bcrypt", **FAST_BCRYPT)
    assert verify_password("x" * 72, encoded) is True
    assert verify_password(secret, encoded) is False  # no silent truncation


def test_argon2id_uses_requested_parameters() -> None:
    encoded = hash_password("pw", scheme="argon2id", **FAST_ARGON2)
    assert encoded.startswith("$argon2id$v=19$m=8,t=1,p=1$")


def test_unencodable_password() -> None:
    # "\udc80" is the byte 0x80 as the engine decodes a binary password (surrogateescape): it has bytes.
    # A lone surrogate outside that range ("\ud800") has none: it can be neither hashed nor matched.
    encoded = fast_hash("pw", "pbkdf2-sha512")
    assert verify_password("pw\ud800", encoded) is False
    with pytest.raises(ValueError) as excinfo:
        hash_password("pw\ud800")
    assert "\ud800" not in str(excinfo.value)
    assert excinfo.value.__suppress_context__ or excinfo.value.__context__ is None


def test_binary_passwords_hash_and_verify_as_their_bytes() -> None:
    binary = b"\xff\x80pw".decode("utf-8", "surrogateescape")  # as the engine hands it over
    encoded = fast_hash(binary, "pbkdf2-sha512")
    assert verify_password(binary, encoded) is True
    assert verify_password(b"\xff\x81pw".decode("utf-8", "surrogateescape"), encoded) is False
    assert verify_password("pässwörd", fast_hash("pässwörd", "pbkdf2-sha512")) is True  # UTF-8 as before


# ------------------------------------------------------ malformed encodings

_GOOD_SALT12 = b64(b"\x01" * 12)
_GOOD_SALT64 = b64(b"\x01" * 64)
_GOOD_HASH = b64(b"\x02" * 64)


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param("", id="empty"),
        pytest.param("s3cret", id="plaintext"),
        pytest.param("$1$abc$def", id="md5crypt"),
        pytest.param("$5$abc$def", id="sha256crypt"),
        pytest.param("$argon2i$v=19$m=8,t=1,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", id="argon2i"),
        # $7$
        pytest.param(f"$7$101${_GOOD_SALT12}", id="7-missing-field"),
        pytest.param(f"$7$101${_GOOD_SALT12}${_GOOD_HASH}$", id="7-extra-field"),
        pytest.param(f"$7$0${_GOOD_SALT12}${_GOOD_HASH}", id="7-zero-iterations"),
        pytest.param(f"$7$-5${_GOOD_SALT12}${_GOOD_HASH}", id="7-negative-iterations"),
        pytest.param(f"$7$abc${_GOOD_SALT12}${_GOOD_HASH}", id="7-non-numeric-iterations"),
        pytest.param(f"$7$${_GOOD_SALT12}${_GOOD_HASH}", id="7-empty-iterations"),
        pytest.param(f"$7$ 101${_GOOD_SALT12}${_GOOD_HASH}", id="7-space-iterations"),
        pytest.param(f"$7$1e3${_GOOD_SALT12}${_GOOD_HASH}", id="7-float-iterations"),
        pytest.param(f"$7$١٠١${_GOOD_SALT12}${_GOOD_HASH}", id="7-non-ascii-digits"),
        pytest.param(f"$7${MAX_PBKDF2_ITERATIONS + 1}${_GOOD_SALT12}${_GOOD_HASH}", id="7-too-many-iterations"),
        pytest.param(f"$7$101$!!notbase64!!${_GOOD_HASH}", id="7-bad-base64-salt"),
        pytest.param(f"$7$101${_GOOD_SALT12}$%%%%", id="7-bad-base64-hash"),
        pytest.param(f"$7$101${_GOOD_SALT12[:-1]}${_GOOD_HASH}", id="7-truncated-base64"),
        pytest.param(f"$7$101${_GOOD_SALT12}${_GOOD_HASH}\n", id="7-trailing-newline"),
        pytest.param(f"$7$101${b64(b'x' * 16)}${_GOOD_HASH}", id="7-salt-16-bytes"),
        pytest.param(f"$7$101${b64(b'x' * 11)}${_GOOD_HASH}", id="7-salt-11-bytes"),
        pytest.param(f"$7$101$${_GOOD_HASH}", id="7-empty-salt"),
        pytest.param(f"$7$101${_GOOD_SALT64}${b64(b'y' * 32)}", id="7-hash-32-bytes"),
        pytest.param(f"$7$101${_GOOD_SALT64}${b64(b'y' * 65)}", id="7-hash-65-bytes"),
        # $6$
        pytest.param(f"$6${_GOOD_SALT12}", id="6-missing-hash"),
        pytest.param(f"$6$${_GOOD_HASH}", id="6-empty-salt"),
        pytest.param(f"$6$@@@@${_GOOD_HASH}", id="6-bad-base64-salt"),
        pytest.param(f"$6${_GOOD_SALT12}${b64(b'y' * 63)}", id="6-hash-63-bytes"),
        pytest.param(f"$6$101${_GOOD_SALT12}${_GOOD_HASH}", id="6-extra-field"),
        # bcrypt
        pytest.param("$2b$04$short", id="bcrypt-short"),
        pytest.param("$2b$03$" + "a" * 53, id="bcrypt-cost-too-low"),
        pytest.param("$2b$32$" + "a" * 53, id="bcrypt-cost-too-high"),
        pytest.param("$2b$04$" + "!" * 53, id="bcrypt-bad-alphabet"),
        pytest.param("$2x$04$" + "a" * 53, id="bcrypt-2x-unsupported"),
        # argon2id
        pytest.param("$argon2id$", id="argon2id-bare-prefix"),
        pytest.param("$argon2id$v=19$m=8,t=1$AAAA$AAAA", id="argon2id-missing-param"),
        pytest.param("$argon2id$v=19$m=abc,t=1,p=1$AAAA$AAAA", id="argon2id-non-numeric"),
        pytest.param("$argon2id$v=19$m=8,t=1,p=1$é$AAAA", id="argon2id-non-ascii"),
    ],
)
def test_malformed_encodings_raise(encoded: str) -> None:
    with pytest.raises(HashFormatError):
        identify(encoded)
    with pytest.raises(HashFormatError) as excinfo:
        verify_password("hunter2-secret", encoded)
    assert "hunter2-secret" not in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_argon2id_undecodable_body_raises() -> None:
    # Parses as PHC, but the salt/hash fields are not decodable by libargon2.
    encoded = "$argon2id$v=19$m=8,t=1,p=1$xx"
    with pytest.raises(HashFormatError):
        verify_password("pw", encoded)


def test_truncated_real_hashes_raise() -> None:
    for scheme in SCHEMES:
        encoded = fast_hash("pw", scheme)
        with pytest.raises(HashFormatError):
            verify_password("pw", encoded[:-6])


def test_mosquitto_21_style_64_byte_salt_is_accepted() -> None:
    encoded = pbkdf2_line("pw", b"\x07" * 64, 1000)
    assert identify(encoded) == "pbkdf2-sha512"
    assert verify_password("pw", encoded) is True


# ---------------------------------------------------- hash_password errors


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scheme": "md5"},
        {"scheme": "PBKDF2-SHA512"},
        {"iterations": 0},
        {"iterations": -1},
        {"iterations": MAX_PBKDF2_ITERATIONS + 1},
        {"salt_len": 16},
        {"salt_len": 0},
        {"scheme": "bcrypt", "bcrypt_rounds": 3},
        {"scheme": "bcrypt", "bcrypt_rounds": 32},
    ],
)
def test_hash_password_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as excinfo:
        hash_password("topsecret-pw", **kwargs)  # type: ignore[arg-type]  # deliberately bad parameters
    assert "topsecret-pw" not in str(excinfo.value)


def test_hash_password_rejects_non_int_iterations() -> None:
    with pytest.raises(TypeError):
        hash_password("pw", iterations=True)
    with pytest.raises(TypeError):
        hash_password("pw", iterations=10.0)  # type: ignore[arg-type]  # deliberately not an int


def test_non_str_password_is_type_error() -> None:
    with pytest.raises(TypeError):
        hash_password(b"pw")  # type: ignore[arg-type]  # deliberately not a str
    with pytest.raises(TypeError):
        verify_password(b"s3cret", MOSQ_7_ALICE)  # type: ignore[arg-type]  # deliberately not a str


# ------------------------------------------------------------------ identify


def test_identify_each_scheme() -> None:
    assert identify(MOSQ_7_ALICE) == "pbkdf2-sha512"
    assert identify(MOSQ_6_ALICE) == "sha512"
    assert identify(fast_hash("pw", "bcrypt")) == "bcrypt"
    assert identify(fast_hash("pw", "argon2id")) == "argon2id"


def test_identify_non_str_raises() -> None:
    with pytest.raises(HashFormatError):
        identify(None)  # type: ignore[arg-type]  # deliberately not a str


# --------------------------------------------------------- passwd file lines


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"alice:{MOSQ_7_ALICE}", ("alice", MOSQ_7_ALICE)),
        (f"alice:{MOSQ_7_ALICE}\n", ("alice", MOSQ_7_ALICE)),
        (f"alice:{MOSQ_7_ALICE}\r\n", ("alice", MOSQ_7_ALICE)),
        ("bob:a:b:c", ("bob", "a:b:c")),  # split on the FIRST ':'
        ("user with space:$6$x$y", ("user with space", "$6$x$y")),
        ("", None),
        ("\n", None),
        ("\r\n", None),
        ("   \t\n", None),
        ("# a comment", None),
        ("#alice:$7$...", None),
        ("#\n", None),
    ],
)
def test_parse_passwd_line(line: str, expected: tuple[str, str] | None) -> None:
    assert parse_passwd_line(line) == expected


@pytest.mark.parametrize(
    "line",
    ["alice-with-plaintext-pw-and-no-colon", "alice-no-colon\n", ":$7$hash", "alice:", "alice:\n"],
)
def test_parse_passwd_line_malformed(line: str) -> None:
    with pytest.raises(HashFormatError) as excinfo:
        parse_passwd_line(line)
    # Never echo the line: it may be an unconverted plaintext password file.
    assert line.strip() not in str(excinfo.value)


def test_format_passwd_line_round_trip() -> None:
    encoded = hash_password("pw", iterations=10, salt_len=MOSQUITTO_20_SALT_LEN)
    line = format_passwd_line("alice", encoded)
    assert line == f"alice:{encoded}"
    assert "\n" not in line
    assert parse_passwd_line(line) == ("alice", encoded)
    assert parse_passwd_line(line + "\n") == ("alice", encoded)


@pytest.mark.parametrize("username", ["al:ice", "alice\n", "al\nice", "alice\r", ""])
def test_format_passwd_line_rejects_bad_username(username: str) -> None:
    with pytest.raises(ValueError):
        format_passwd_line(username, MOSQ_7_ALICE)


def test_format_passwd_line_rejects_newline_in_hash() -> None:
    with pytest.raises(ValueError):
        format_passwd_line("alice", MOSQ_7_ALICE + "\nmallory:$7$x")


def test_parse_whole_file_with_comments_and_blanks() -> None:
    text = f"# users\n\nalice:{MOSQ_7_ALICE}\n# legacy\nbob:{MOSQ_6_ALICE}\r\n\n"
    entries = [e for e in map(parse_passwd_line, text.splitlines(keepends=True)) if e]
    assert entries == [("alice", MOSQ_7_ALICE), ("bob", MOSQ_6_ALICE)]
    assert all(verify_password("s3cret", enc) for _, enc in entries)


# ------------------------------------------- real mosquitto_passwd at runtime


def _run_mosquitto_passwd(*args: str) -> subprocess.CompletedProcess[str]:
    assert MOSQUITTO_PASSWD is not None
    return subprocess.run([MOSQUITTO_PASSWD, *args], capture_output=True, text=True, timeout=30, check=False)


def _only_entry(path: Path) -> tuple[str, str]:
    entries = [e for e in map(parse_passwd_line, path.read_text().splitlines(keepends=True)) if e]
    assert len(entries) == 1
    return entries[0]


@needs_mosquitto_passwd
def test_runtime_mosquitto_passwd_default(tmp_path: Path) -> None:
    pwfile = tmp_path / "passwd"
    proc = _run_mosquitto_passwd("-c", "-b", str(pwfile), "carol", "Zürich-pw")
    assert proc.returncode == 0, proc.stderr
    user, encoded = _only_entry(pwfile)
    assert user == "carol"
    assert identify(encoded) == "pbkdf2-sha512"
    assert verify_password("Zürich-pw", encoded) is True
    assert verify_password("Zurich-pw", encoded) is False


@needs_mosquitto_passwd
def test_runtime_mosquitto_passwd_custom_iterations(tmp_path: Path) -> None:
    pwfile = tmp_path / "passwd"
    proc = _run_mosquitto_passwd("-I", "2000", "-c", "-b", str(pwfile), "dave", "pw2000")
    if proc.returncode != 0:
        pytest.skip(f"this mosquitto_passwd does not support -I: {proc.stderr.strip()}")
    user, encoded = _only_entry(pwfile)
    assert user == "dave"
    assert encoded.startswith("$7$2000$")
    assert verify_password("pw2000", encoded) is True
    assert verify_password("pw2001", encoded) is False


@needs_mosquitto_passwd
def test_runtime_mosquitto_passwd_sha512(tmp_path: Path) -> None:
    pwfile = tmp_path / "passwd"
    proc = _run_mosquitto_passwd("-H", "sha512", "-c", "-b", str(pwfile), "erin", "legacy")
    if proc.returncode != 0:
        pytest.skip(f"this mosquitto_passwd does not support -H sha512: {proc.stderr.strip()}")
    _, encoded = _only_entry(pwfile)
    assert identify(encoded) == "sha512"
    assert verify_password("legacy", encoded) is True
    assert verify_password("Legacy", encoded) is False


# ------------------------------- our hashes accepted by a real mosquitto 2.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mosquitto_with_our_hashes(tmp_path: Path) -> Iterator[int]:
    """Start a real broker whose password file was written by hash_password."""
    if MOSQUITTO is None or MOSQUITTO_PUB is None:
        pytest.skip("mosquitto broker or mosquitto_pub not installed")
    pwfile = tmp_path / "passwd"
    lines = [
        "# written by mqtt_guard.auth.hashes",
        format_passwd_line("pbkdf", hash_password("pb-pw", iterations=1_000, salt_len=MOSQUITTO_20_SALT_LEN)),
        format_passwd_line("legacy", hash_password("sha-pw", scheme="sha512")),
    ]
    pwfile.write_text("\n".join(lines) + "\n")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    # When started as root, mosquitto drops to user "mosquitto", which cannot
    # read pytest's private tmp dir; stay as the current user instead.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pwfile}\n"
        f"persistence false\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
    )
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as log_fh:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log_fh, stderr=log_fh)
    try:
        try:
            wait_port(port, timeout=10.0, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; broker log:\n{log.read_text()}") from None
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _publish(port: int, user: str, password: str) -> int:
    assert MOSQUITTO_PUB is not None
    return subprocess.run(
        [
            MOSQUITTO_PUB,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-u",
            user,
            "-P",
            password,
            "-t",
            "t",
            "-m",
            "m",
            "-q",
            "1",
        ],
        capture_output=True,
        timeout=15,
        check=False,
    ).returncode


@pytest.mark.parametrize(("user", "good"), [("pbkdf", "pb-pw"), ("legacy", "sha-pw")])
def test_real_mosquitto_accepts_our_hashes(mosquitto_with_our_hashes: int, user: str, good: str) -> None:
    port = mosquitto_with_our_hashes
    assert _publish(port, user, good) == 0
    assert _publish(port, user, good + "x") != 0
