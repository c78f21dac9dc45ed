"""mosquitto's `password_file`: reading it as mosquitto 2.0 does, and writing lines it accepts.

Reading follows `pwfile__parse` + `unpwd__decode_passwords` of mosquitto 2.0.11, as measured with
the real broker (tests/compat/test_passwd_file.py):

* A line whose first character is ``#`` is a comment; a line without ``:`` is skipped.
* The username is the text before the first ``:`` (leading ``:`` are skipped, like strtok), trimmed
  of whitespace on both sides; the hash is the next ``:``-separated field, trimmed. Anything after a
  second ``:`` is ignored.
* Entries whose hash mosquitto 2.0 cannot use are dropped with an error (the user then cannot log
  in): an unknown hash type, a ``$7$`` iteration count below 1, a salt that is not 12 bytes
  (mosquitto 2.1's 64-byte salts are refused by 2.0), a digest that is not 64 bytes, a missing hash.
* Duplicate usernames: the *last* usable line wins (mosquitto's hash table returns the newest entry;
  with hundreds of users its bucket order may differ, so do not rely on duplicates).

mqtt-guard reads the same files but verifies with :mod:`mqtt_guard.auth.hashes` (which also accepts
64-byte salts); `strict_20` reproduces mosquitto 2.0's refusal of anything else, and is what the
broker uses for a mosquitto.conf so the same users get in.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..auth import hashes

__all__ = [
    "PasswdEntry",
    "PasswdFile",
    "PasswdFileError",
    "check_mosquitto20_hash",
    "parse_passwd_text",
    "read_passwd_file",
    "write_passwd_file",
]

_BLANKS = " \t\r\n\v\f"


class PasswdFileError(ValueError):
    """The password file cannot be read at all (missing, unreadable)."""


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    username: str
    encoded: str
    line: int


@dataclass
class PasswdFile:
    path: str = ""
    entries: dict[str, PasswdEntry] = field(default_factory=dict)  # usable entries, last one wins
    problems: list[str] = field(default_factory=list)  # dropped lines, without the hash text
    order: list[str] = field(default_factory=list)  # usernames in file order (first appearance)

    def get(self, username: str) -> PasswdEntry | None:
        return self.entries.get(username)

    def __contains__(self, username: object) -> bool:
        return username in self.entries

    def __len__(self) -> int:
        return len(self.entries)


def _b64(field_: str) -> bytes | None:
    try:
        return base64.b64decode(field_, validate=True)
    except (binascii.Error, ValueError):
        return None


def check_mosquitto20_hash(encoded: str) -> str | None:
    """None if mosquitto 2.0 can use this hash, else why it drops the entry."""
    return _decode_mosquitto20(encoded)[0]


def _decode_mosquitto20(encoded: str) -> tuple[str | None, str]:
    """(why mosquitto 2.0 drops it or None, the hash re-encoded in canonical form for verification)."""
    parts = [p for p in encoded.split("$") if p]  # strtok_r(..., "$") skips empty fields
    if not parts:
        return "missing password hash", ""
    kind = parts[0]
    if kind not in ("6", "7"):
        return "invalid password hash type (mosquitto 2.0 knows $6$ and $7$)", ""
    rest = parts[1:]
    iterations = 0
    if kind == "7":
        if not rest:
            return "invalid password hash", ""
        digits = ""
        for ch in rest[0].lstrip(_BLANKS):  # atoi: optional sign, then digits
            if not ch.isdigit() or not ch.isascii():
                break
            digits += ch
        iterations = int(digits) if digits else 0
        if iterations < 1:
            return "invalid hash iterations", ""
        rest = rest[1:]
    if not rest:
        return "invalid password hash", ""
    salt = _b64(rest[0])
    if salt is None or len(salt) != 12:
        return "unable to decode password salt (mosquitto 2.0 needs a 12-byte salt)", ""
    if len(rest) < 2:
        return "invalid password hash", ""
    digest = _b64(rest[1])
    if digest is None or len(digest) != 64:
        return "unable to decode password", ""
    salt64, hash64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    if kind == "7":
        return None, f"$7${iterations}${salt64}${hash64}"
    return None, f"$6${salt64}${hash64}"


def parse_passwd_text(text: str, path: str = "password_file", *, strict_20: bool = True) -> PasswdFile:
    """Parse password_file content the way mosquitto 2.0 does (see the module docstring)."""
    pf = PasswdFile(path=path)
    seen: set[str] = set()
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw
        if not line or line[0] == "#" or ":" not in line:
            continue
        fields = [f for f in line.split(":") if f]
        if not fields:
            continue
        username = fields[0].strip(_BLANKS)
        if not username:
            pf.problems.append(f"{path}:{lineno}: empty username, line ignored")
            continue
        if len(username.encode("utf-8", "surrogateescape")) > 65535:
            pf.problems.append(f"{path}:{lineno}: username too long, line ignored")
            continue
        encoded = fields[1].strip(_BLANKS) if len(fields) > 1 else ""
        if username not in seen:
            seen.add(username)
            pf.order.append(username)
        if not encoded:
            why: str | None = "missing password hash"
        elif strict_20:
            why, encoded = _decode_mosquitto20(encoded)
        else:
            try:
                hashes.identify(encoded)
                why = None
            except hashes.HashFormatError as exc:
                why = str(exc)
        if why is not None:
            pf.problems.append(f"{path}:{lineno}: user {username!r}: {why}; entry removed")
            continue
        pf.entries[username] = PasswdEntry(username, encoded, lineno)
    return pf


def read_passwd_file(path: str | Path, *, strict_20: bool = True) -> PasswdFile:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PasswdFileError(f"cannot open password_file {str(p)!r}: {exc.strerror}") from None
    return parse_passwd_text(data.decode("utf-8", errors="surrogateescape"), str(p), strict_20=strict_20)


def read_lines(path: str | Path) -> list[str]:
    """The raw lines of an existing file (for in-place edits by `mqtt-guard passwd`)."""
    return Path(path).read_text(encoding="utf-8", errors="surrogateescape").splitlines()


def write_passwd_file(path: str | Path, lines: list[str]) -> None:
    """Replace the file atomically (write a temp file next to it, then rename), keeping its mode."""
    # (the umask probe below is not thread-safe; this runs in CLI processes only)
    p = Path(path)
    if p.exists():
        mode = p.stat().st_mode & 0o7777
    else:  # like mosquitto_passwd: the process umask decides (the broker may run as another user)
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=str(p.parent) or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
            for line in lines:
                f.write(line + "\n")
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
