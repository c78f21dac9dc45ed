"""Password hashing and verification compatible with mosquitto password files.

Why this module exists: mqtt-guard must accept the password files operators
already have (written by ``mosquitto_passwd``) *and* store stronger hashes in
Redis. So it understands mosquitto's own two formats -- ``$7$`` (PBKDF2-HMAC-
SHA512) and the legacy ``$6$`` (one round of salted SHA512) -- and adds bcrypt
and argon2id for new deployments.

Design rules:

* Everything here is pure and synchronous. Callers run :func:`verify_password`
  in a thread pool; ``hashlib.pbkdf2_hmac``, bcrypt and argon2 all release the
  GIL, so that actually parallelises.
* Passwords are encoded as UTF-8 bytes with no Unicode normalisation, because
  mosquitto compares raw bytes and we must agree with it.
* A plaintext password never appears in a log record or an exception message
  (nor in an exception's ``__context__``). Error messages describe the
  *encoding* that was wrong, never its inputs.
* A malformed stored hash raises :class:`HashFormatError` instead of returning
  ``False``: a corrupt password file is an operator problem that should be
  loud, not a silent "everybody's password is wrong".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Final

import bcrypt
from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "DEFAULT_ARGON2_MEMORY_COST",
    "DEFAULT_ARGON2_PARALLELISM",
    "DEFAULT_ARGON2_TIME_COST",
    "DEFAULT_BCRYPT_ROUNDS",
    "DEFAULT_PBKDF2_ITERATIONS",
    "MAX_PBKDF2_ITERATIONS",
    "MOSQUITTO_20_SALT_LEN",
    "NEW_SALT_LEN",
    "HashFormatError",
    "format_passwd_line",
    "hash_password",
    "identify",
    "parse_passwd_line",
    "verify_password",
]

# mosquitto_passwd 2.0 defaults to 101 iterations, which is far too cheap for
# an offline attacker; 10k keeps a CONNECT well under 10 ms on one core.
DEFAULT_PBKDF2_ITERATIONS: Final = 10_000
# Upper bound on the iteration count we are willing to *run*. A stored hash
# claiming more is treated as malformed so a corrupt or hostile entry cannot
# pin a worker thread for minutes.
MAX_PBKDF2_ITERATIONS: Final = 10_000_000
# mosquitto 2.0 refuses to load $7$ lines whose salt is not exactly 12 bytes,
# so password files meant for a real mosquitto 2.0 must use this length.
MOSQUITTO_20_SALT_LEN: Final = 12
# Salt length for hashes we store in Redis; matches mosquitto 2.1.
NEW_SALT_LEN: Final = 64
# bcrypt cost 12 is the bcrypt package's own default.
DEFAULT_BCRYPT_ROUNDS: Final = 12
# argon2-cffi's defaults (RFC 9106 "low memory" profile): 64 MiB, t=3, p=4.
DEFAULT_ARGON2_TIME_COST: Final = 3
DEFAULT_ARGON2_MEMORY_COST: Final = 65_536  # KiB
DEFAULT_ARGON2_PARALLELISM: Final = 4

_PBKDF2_HASH_LEN: Final = 64  # SHA512 digest size; mosquitto uses dkLen = 64
_SHA512_HASH_LEN: Final = 64
_ALLOWED_PBKDF2_SALT_LENS: Final = frozenset({MOSQUITTO_20_SALT_LEN, NEW_SALT_LEN})
_BCRYPT_MAX_PASSWORD_BYTES: Final = 72
_BCRYPT_RE: Final = re.compile(r"\$2[aby]\$(?:0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_ARGON2ID_PREFIX: Final = "$argon2id$"

_SCHEMES: Final = ("pbkdf2-sha512", "sha512", "bcrypt", "argon2id")

# Parameters are read from each encoded hash on verify, so one shared,
# stateless (and thread-safe) instance is enough.
_ARGON2_VERIFIER: Final = PasswordHasher()


class HashFormatError(ValueError):
    """An encoded hash (or password-file line) is unrecognised or malformed.

    Subclasses :class:`ValueError` so generic input-validation handlers still
    catch it. The message says what is wrong with the *format* and never
    contains a password or the offending text.
    """


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _password_bytes(password: str) -> bytes | None:
    """The password's bytes; ``None`` if it has none.

    MQTT passwords are binary data: the engine decodes them as UTF-8 with ``surrogateescape``, so any
    byte string arrives as a str and encodes back to exactly the bytes the client sent. Only a str
    holding a lone surrogate outside that escape range has no bytes. Returning ``None`` instead of
    raising keeps the UnicodeEncodeError -- whose ``.object`` is the full password -- out of any later
    exception chain.
    """
    if not isinstance(password, str):
        raise TypeError("password must be str")
    try:
        return password.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


def _require_password_bytes(password: str) -> bytes:
    """Like :func:`_password_bytes` but raise a password-free ValueError."""
    pw = _password_bytes(password)
    if pw is None:
        raise ValueError("password is not encodable as UTF-8 (lone surrogate?)")
    return pw


def _b64encode(data: bytes) -> str:
    """Standard base64 with ``=`` padding, as mosquitto_passwd writes it."""
    return base64.b64encode(data).decode("ascii")


def _b64decode(field: str, what: str) -> bytes:
    """Strictly decode a standard-base64 field or raise HashFormatError."""
    try:
        return base64.b64decode(field, validate=True)
    except (binascii.Error, ValueError):
        raise HashFormatError(f"{what} is not valid base64") from None


def _parse_iterations(field: str) -> int:
    """Parse the ``$7$`` iteration count: ASCII digits only, 1..MAX."""
    if not (field.isascii() and field.isdigit()):
        raise HashFormatError("$7$ iteration count is not a positive integer")
    iterations = int(field)
    if iterations < 1:
        raise HashFormatError("$7$ iteration count is not a positive integer")
    if iterations > MAX_PBKDF2_ITERATIONS:
        raise HashFormatError(f"$7$ iteration count exceeds the supported maximum of {MAX_PBKDF2_ITERATIONS}")
    return iterations


def _parse_pbkdf2(encoded: str) -> tuple[int, bytes, bytes]:
    """Split ``$7$<iter>$<salt>$<hash>`` into (iterations, salt, hash)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        raise HashFormatError("$7$ hash must have the form $7$<iterations>$<salt>$<hash>")
    iterations = _parse_iterations(parts[2])
    salt = _b64decode(parts[3], "$7$ salt")
    if len(salt) not in _ALLOWED_PBKDF2_SALT_LENS:
        raise HashFormatError(f"$7$ salt must be {MOSQUITTO_20_SALT_LEN} or {NEW_SALT_LEN} bytes, got {len(salt)}")
    digest = _b64decode(parts[4], "$7$ hash")
    if len(digest) != _PBKDF2_HASH_LEN:
        raise HashFormatError(f"$7$ hash must be {_PBKDF2_HASH_LEN} bytes, got {len(digest)}")
    return iterations, salt, digest


def _parse_sha512(encoded: str) -> tuple[bytes, bytes]:
    """Split legacy ``$6$<salt>$<hash>`` into (salt, hash).

    Any non-empty salt is accepted: mosquitto writes 12 bytes, but older
    third-party generators exist and the digest does not depend on the length.
    """
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != "" or parts[1] != "6":
        raise HashFormatError("$6$ hash must have the form $6$<salt>$<hash>")
    salt = _b64decode(parts[2], "$6$ salt")
    if not salt:
        raise HashFormatError("$6$ salt is empty")
    digest = _b64decode(parts[3], "$6$ hash")
    if len(digest) != _SHA512_HASH_LEN:
        raise HashFormatError(f"$6$ hash must be {_SHA512_HASH_LEN} bytes, got {len(digest)}")
    return salt, digest


def _check_bcrypt(encoded: str) -> None:
    """Validate the shape of a ``$2a$``/``$2b$``/``$2y$`` modular-crypt hash."""
    if _BCRYPT_RE.fullmatch(encoded) is None:
        raise HashFormatError("bcrypt hash must look like $2b$<cost 04-31>$<53 chars of ./A-Za-z0-9>")


def _check_argon2id(encoded: str) -> None:
    """Validate an argon2id PHC string without hashing anything."""
    if not encoded.isascii():
        raise HashFormatError("argon2id hash contains non-ASCII characters")
    try:
        params = extract_parameters(encoded)
    except (InvalidHashError, ValueError):
        raise HashFormatError("argon2id hash is malformed") from None
    if params.type is not Type.ID:
        raise HashFormatError("argon2 hash is not argon2id")


def _pbkdf2(pw: bytes, salt: bytes, iterations: int) -> bytes:
    """PBKDF2-HMAC-SHA512 with mosquitto's 64-byte output length."""
    return hashlib.pbkdf2_hmac("sha512", pw, salt, iterations, _PBKDF2_HASH_LEN)


def _sha512_salted(pw: bytes, salt: bytes) -> bytes:
    """mosquitto's legacy $6$ digest: SHA512(password || salt), one round."""
    return hashlib.sha512(pw + salt).digest()


# --------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------


def _validate_pbkdf2_params(iterations: int, salt_len: int) -> None:
    """Refuse to *write* a $7$ hash that :func:`verify_password` would reject."""
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError("iterations must be int")
    if not 1 <= iterations <= MAX_PBKDF2_ITERATIONS:
        raise ValueError(f"iterations must be between 1 and {MAX_PBKDF2_ITERATIONS}")
    if salt_len not in _ALLOWED_PBKDF2_SALT_LENS:
        raise ValueError(f"salt_len must be {MOSQUITTO_20_SALT_LEN} or {NEW_SALT_LEN}")


def _hash_pbkdf2(pw: bytes, iterations: int, salt_len: int) -> str:
    """Produce ``$7$<iter>$<b64 salt>$<b64 hash>`` exactly as mosquitto_passwd does."""
    _validate_pbkdf2_params(iterations, salt_len)
    salt = secrets.token_bytes(salt_len)
    digest = _pbkdf2(pw, salt, iterations)
    return f"$7${iterations}${_b64encode(salt)}${_b64encode(digest)}"


def _hash_sha512(pw: bytes) -> str:
    """Produce legacy ``$6$`` with a 12-byte salt, as ``mosquitto_passwd -H sha512``."""
    salt = secrets.token_bytes(MOSQUITTO_20_SALT_LEN)
    return f"$6${_b64encode(salt)}${_b64encode(_sha512_salted(pw, salt))}"


def _hash_bcrypt(pw: bytes, rounds: int) -> str:
    """Produce ``$2b$``; refuse >72-byte passwords rather than truncating silently."""
    if len(pw) > _BCRYPT_MAX_PASSWORD_BYTES:
        raise ValueError(f"bcrypt passwords are limited to {_BCRYPT_MAX_PASSWORD_BYTES} UTF-8 bytes")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 4 <= rounds <= 31:
        raise ValueError("bcrypt_rounds must be an int between 4 and 31")
    return bcrypt.hashpw(pw, bcrypt.gensalt(rounds=rounds, prefix=b"2b")).decode("ascii")


def _hash_argon2id(pw: bytes, time_cost: int, memory_cost: int, parallelism: int) -> str:
    """Produce ``$argon2id$v=19$...`` via argon2-cffi's PasswordHasher."""
    hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=Type.ID)
    return hasher.hash(pw)


def hash_password(
    password: str,
    *,
    scheme: str = "pbkdf2-sha512",
    iterations: int = DEFAULT_PBKDF2_ITERATIONS,
    salt_len: int = NEW_SALT_LEN,
    bcrypt_rounds: int = DEFAULT_BCRYPT_ROUNDS,
    argon2_time_cost: int = DEFAULT_ARGON2_TIME_COST,
    argon2_memory_cost: int = DEFAULT_ARGON2_MEMORY_COST,
    argon2_parallelism: int = DEFAULT_ARGON2_PARALLELISM,
) -> str:
    """Hash ``password`` with a fresh random salt and return the encoded string.

    ``scheme`` is one of ``"pbkdf2-sha512"`` (``$7$``, the default),
    ``"sha512"`` (legacy ``$6$``, only for interop with mosquitto < 1.6.x
    tooling), ``"bcrypt"`` or ``"argon2id"``.

    ``iterations`` and ``salt_len`` apply to ``pbkdf2-sha512`` only; pass
    ``salt_len=MOSQUITTO_20_SALT_LEN`` for a line a mosquitto 2.0 broker can
    load. ``$6$`` always uses a 12-byte salt, as mosquitto does. The
    ``bcrypt_*`` / ``argon2_*`` keywords apply to their scheme only and exist
    mainly so tests can use cheap costs.

    Raises ValueError for an unknown scheme or out-of-range parameters, and for
    a password that is not UTF-8 encodable (or >72 bytes with bcrypt); the
    message never contains the password.
    """
    pw = _require_password_bytes(password)
    if scheme == "pbkdf2-sha512":
        return _hash_pbkdf2(pw, iterations, salt_len)
    if scheme == "sha512":
        return _hash_sha512(pw)
    if scheme == "bcrypt":
        return _hash_bcrypt(pw, bcrypt_rounds)
    if scheme == "argon2id":
        return _hash_argon2id(pw, argon2_time_cost, argon2_memory_cost, argon2_parallelism)
    raise ValueError(f"unknown hash scheme {scheme!r}; expected one of {', '.join(_SCHEMES)}")


# --------------------------------------------------------------------------
# identification and verification
# --------------------------------------------------------------------------


def identify(encoded: str) -> str:
    """Return the scheme name of ``encoded`` after validating its structure.

    Returns ``"pbkdf2-sha512"``, ``"sha512"``, ``"bcrypt"`` or ``"argon2id"``.
    The whole encoding is checked (cheaply, no hashing), so callers can use
    this to reject a bad hash *before* storing it. Raises HashFormatError.
    """
    if not isinstance(encoded, str):
        raise HashFormatError("encoded hash must be str")
    if encoded.startswith("$7$"):
        _parse_pbkdf2(encoded)
        return "pbkdf2-sha512"
    if encoded.startswith("$6$"):
        _parse_sha512(encoded)
        return "sha512"
    if encoded.startswith(("$2a$", "$2b$", "$2y$")):
        _check_bcrypt(encoded)
        return "bcrypt"
    if encoded.startswith(_ARGON2ID_PREFIX):
        _check_argon2id(encoded)
        return "argon2id"
    raise HashFormatError("unrecognised hash format (expected $7$, $6$, $2a$/$2b$/$2y$ or $argon2id$)")


def _verify_pbkdf2(pw: bytes, encoded: str) -> bool:
    iterations, salt, expected = _parse_pbkdf2(encoded)
    return hmac.compare_digest(_pbkdf2(pw, salt, iterations), expected)


def _verify_sha512(pw: bytes, encoded: str) -> bool:
    salt, expected = _parse_sha512(encoded)
    return hmac.compare_digest(_sha512_salted(pw, salt), expected)


def _verify_bcrypt(pw: bytes, encoded: str) -> bool:
    """bcrypt.checkpw, with >72-byte passwords treated as a mismatch.

    bcrypt 5 refuses such passwords instead of truncating. They can never have
    been hashed by :func:`hash_password`, and truncating here would quietly
    reintroduce the weakness bcrypt 5 removed, so the answer is simply False.
    """
    _check_bcrypt(encoded)
    if len(pw) > _BCRYPT_MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(pw, encoded.encode("ascii"))
    except ValueError:
        raise HashFormatError("bcrypt hash is malformed") from None


def _verify_argon2id(pw: bytes, encoded: str) -> bool:
    _check_argon2id(encoded)
    try:
        return _ARGON2_VERIFIER.verify(encoded, pw)
    except VerifyMismatchError:
        return False
    except (VerificationError, ValueError):
        raise HashFormatError("argon2id hash is malformed") from None


def verify_password(password: str, encoded: str) -> bool:
    """Return True iff ``password`` matches ``encoded``.

    Digest comparison is constant-time (``hmac.compare_digest`` for ``$7$``
    and ``$6$``; bcrypt and argon2 compare internally). A password that cannot
    be UTF-8 encoded simply does not match. Raises HashFormatError when
    ``encoded`` is unrecognised or malformed -- a broken stored hash is a
    configuration error, not a wrong password.
    """
    scheme = identify(encoded)
    pw = _password_bytes(password)
    if pw is None:
        return False
    if scheme == "pbkdf2-sha512":
        return _verify_pbkdf2(pw, encoded)
    if scheme == "sha512":
        return _verify_sha512(pw, encoded)
    if scheme == "bcrypt":
        return _verify_bcrypt(pw, encoded)
    return _verify_argon2id(pw, encoded)


# --------------------------------------------------------------------------
# mosquitto password_file lines
# --------------------------------------------------------------------------


def parse_passwd_line(line: str) -> tuple[str, str] | None:
    """Parse one mosquitto ``password_file`` line into ``(username, encoded)``.

    Returns None for blank (or whitespace-only) lines and ``#`` comments.
    Splits on the *first* ``:`` because usernames cannot contain one while
    the encoded part is opaque. Only trailing CR/LF is stripped. The hash is
    not validated here; use :func:`identify`.

    Raises HashFormatError for a line without ``:`` or with an empty username
    or hash. The message never quotes the line: an unconverted plaintext
    password file would otherwise leak passwords into logs.
    """
    stripped = line.rstrip("\r\n")
    if not stripped.strip() or stripped.startswith("#"):
        return None
    username, sep, encoded = stripped.partition(":")
    if not sep:
        raise HashFormatError("password file line has no ':' separator")
    if not username:
        raise HashFormatError("password file line has an empty username")
    if not encoded:
        raise HashFormatError("password file line has an empty password hash")
    return username, encoded


def format_passwd_line(username: str, encoded: str) -> str:
    """Render ``username:encoded`` (no trailing newline) for a password_file.

    Rejects anything that would make the file parse differently from what was
    intended: a ``:`` or line break in the username, an empty username, or a
    line break in ``encoded``. Raises ValueError.
    """
    if not username:
        raise ValueError("username must not be empty")
    if any(ch in username for ch in ":\r\n"):
        raise ValueError("username must not contain ':' or a line break")
    if "\r" in encoded or "\n" in encoded:
        raise ValueError("encoded hash must not contain a line break")
    return f"{username}:{encoded}"
