"""Reading a mosquitto 2.0 `mosquitto.conf` and turning it into an mqtt-guard configuration.

Parsing follows mosquitto's `config__read_file_core`, as measured against mosquitto 2.0.11:

* A line whose first character is ``#`` (or an empty line) is skipped; an indented ``# x`` is the
  unknown key ``#``. Words are separated by spaces only (``key<TAB>value`` is the unknown key
  ``key<TAB>value``).
* Booleans are ``true``/``1``/``false``/``0`` (case-sensitive); numbers are read like C's atoi
  (``10abc`` is 10); strings (paths) are the rest of the line, trimmed: ``password_file /x # y``
  names the file ``/x # y``. A string key given twice in one scope is an error ("Duplicate ...").
* ``include_dir DIR`` (main file only; nested ones are ignored as mosquitto does) reads the
  ``*.conf`` files of DIR at that point, sorted like mosquitto: case-insensitively, and at the first
  position where two names differ only in case, upper case first (``A.conf, AB.conf, Ab.conf,
  a.conf, aa.conf, B.conf, b.conf``).
* Listener-scoped keys before the first ``listener`` configure the default listener, which exists
  when ``port`` or such a key is given (port 1883 unless ``port`` says otherwise). With no listener at
  all mosquitto runs in "local only" mode: 127.0.0.1:1883, anonymous clients allowed.
* ``allow_anonymous`` defaults to false once a ``listener``, ``port`` or ``bind_address`` is given
  (true otherwise); with ``per_listener_settings true`` each ``listener`` defaults to false while the
  default listener defaults to true. These rules were measured, see tests/compat/test_conf.py.

Keys mqtt-guard cannot honour stop the broker with a message naming the key, the file and line and
what to do; keys without effect are accepted with a warning (`keys.py` has the full table).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import GuardConfig, ListenerConfig, LogLevel
from . import keys as K
from .words import next_word

__all__ = [
    "MosquittoConfError",
    "MosquittoConfig",
    "Listener",
    "Security",
    "looks_like_mosquitto_conf",
    "mosquitto_sort_key",
    "parse_mosquitto_conf",
    "to_guard_config",
]

MQTT_MAX_PACKET = 268_435_455  # the largest packet MQTT can express: mosquitto's "no limit"
_BLANKS = " \t\r\n\v\f"


class MosquittoConfError(ValueError):
    """The configuration cannot be used; the message names the key, the file and line, and what to do."""


@dataclass
class Security:
    """mosquitto's per-scope security options (global, or one listener with per_listener_settings)."""

    allow_anonymous: bool | None = None
    password_file: str | None = None
    acl_file: str | None = None
    where: dict[str, str] = field(default_factory=dict)  # key -> "file:line" it came from

    @property
    def touched(self) -> bool:
        return self.allow_anonymous is not None or self.password_file is not None or self.acl_file is not None


@dataclass
class Listener:
    port: int | None = None
    address: str | None = None
    where: str = ""
    explicit: bool = True  # False: the default listener (`port`, or settings before any `listener`)
    protocol: str = "mqtt"
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    require_certificate: bool = False
    use_identity_as_username: bool = False
    max_connections: int = -1
    max_topic_alias: int | None = None  # None: mosquitto's default, 10
    security: Security = field(default_factory=Security)
    creates_default: bool = False  # a setting that makes mosquitto open the default listener was given
    strings: set[str] = field(default_factory=set)  # string keys seen (duplicate detection)

    def bind(self, local_only: bool = False) -> str:
        host = self.address or ("127.0.0.1" if local_only else "0.0.0.0")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port or 1883}"


@dataclass
class MosquittoConfig:
    path: str = ""
    per_listener_settings: bool = False
    security: Security = field(default_factory=Security)  # global (per_listener_settings false)
    default: Listener = field(default_factory=lambda: Listener(explicit=False))
    listeners: list[Listener] = field(default_factory=list)
    port_given: bool = False
    bind_address_given: bool = False
    max_inflight_messages: int | None = None
    max_queued_messages: int | None = None
    max_queued_bytes: int | None = None
    max_packet_size: int | None = None
    max_keepalive: int | None = None  # None: mosquitto's default, 65535
    message_size_limit: int = 0
    clientid_prefixes: str | None = None
    persistent_client_expiration: int | None = None  # seconds
    sys_interval: int | None = None
    persistence: bool = False
    queue_qos0_messages: bool = False  # durable.queue_qos0_messages (persistent sessions, docs/durability.md)
    pid_file: str | None = None
    user: str | None = None
    log_dest: list[tuple[str, str | None]] = field(default_factory=list)
    log_types: list[str] = field(default_factory=list)
    log_facility: int | None = None
    log_timestamp: bool = True
    log_timestamp_format: str | None = None
    connection_messages: bool = True
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # every file read, in order
    strings: set[str] = field(default_factory=set)

    # -- derived --------------------------------------------------------------------------------
    @property
    def local_only(self) -> bool:
        """No listener configured at all: mosquitto listens on 127.0.0.1:1883 and lets anyone in."""
        return not self.listeners and not self.default_listener_exists

    @property
    def default_listener_exists(self) -> bool:
        return self.port_given or self.default.creates_default

    def effective_listeners(self) -> list[Listener]:
        """Listeners in mosquitto's order: the explicit ones, then the default listener if it exists."""
        out = list(self.listeners)
        if self.default_listener_exists:
            out.append(self.default)
        elif self.local_only:
            out.append(Listener(port=1883, address="127.0.0.1", where="(local only mode)", explicit=False))
        return out

    def max_topic_alias(self, effective: list[Listener]) -> int:
        """The listeners' max_topic_alias (mosquitto's default 10 where not set; a line before the first
        `listener` sets the default listener's, which explicit listeners do not inherit: measured).
        mqtt-guard has one value for all listeners (`parse_mosquitto_conf` refuses listeners that differ)."""
        values = {10 if lst.max_topic_alias is None else lst.max_topic_alias for lst in effective}
        return min(values) if values else 10

    def security_for(self, listener: Listener) -> Security:
        return listener.security if self.per_listener_settings else self.security

    def allow_anonymous_for(self, listener: Listener) -> bool:
        """The measured allow_anonymous rules of mosquitto 2.0.11 (module docstring)."""
        if self.local_only:
            return True
        sec = self.security_for(listener)
        if sec.allow_anonymous is not None:
            return sec.allow_anonymous
        if self.per_listener_settings:
            return not listener.explicit
        return not (self.listeners or self.port_given or self.bind_address_given)


# -- ordering of include_dir -----------------------------------------------------------------------


def _signed(b: int) -> int:
    return b - 256 if b >= 128 else b


def _upper(c: int) -> int:
    return c - 32 if 97 <= c <= 122 else c


def mosquitto_sort_key(name: str) -> tuple[tuple[int, int], ...]:
    """Sort key reproducing mosquitto's `scmp_p`: case-insensitive, at the first case-only
    difference upper case first; bytes compared as signed C chars (non-ASCII sorts first)."""
    data = name.encode("utf-8", "surrogateescape")
    key = tuple((_upper(_signed(b)), _signed(b)) for b in data)
    return key + ((0, 0),)  # the terminating NUL (a non-ASCII byte, negative as a C char, sorts before it)


def _scmp(a: str, b: str) -> int:
    """mosquitto's scmp_p, literally (used to check mosquitto_sort_key in tests)."""
    x, y = a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(x) and i < len(y):
        c1, c2 = _signed(x[i]), _signed(y[i])
        r = _upper(c1) - _upper(c2)
        if r:
            return r
        if c1 != c2:
            return c1 - c2
        i += 1
    return (_signed(x[i]) if i < len(x) else 0) - (_signed(y[i]) if i < len(y) else 0)


def include_dir_files(directory: str) -> list[str]:
    names = [n for n in os.listdir(directory) if n.endswith(".conf") and len(n) > 5]
    names = [n for n in names if os.path.isfile(os.path.join(directory, n))]
    names.sort(key=mosquitto_sort_key)
    return [os.path.join(directory, n) for n in names]


# -- the parser ---------------------------------------------------------------------------------------


def _atoi(text: str) -> int:
    s = text.lstrip(_BLANKS)
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    digits = ""
    for ch in s:
        if not ("0" <= ch <= "9"):
            break
        digits += ch
    return sign * int(digits) if digits else 0


_LOST = Listener(where="(lost)")  # the current listener after an include_dir that added listeners
_SECURITY_KEYS = {
    "acl_file",
    "allow_anonymous",
    "password_file",
    "psk_file",
    "auth_plugin",
    "plugin",
    "auth_plugin_deny_special_chars",
    "allow_zero_length_clientid",
    "auto_id_prefix",
}
_LOG_TYPES = {
    "debug",
    "error",
    "warning",
    "notice",
    "information",
    "subscribe",
    "unsubscribe",
    "websockets",
    "all",
    "none",
}
_FACILITIES = {0, 1, 2, 3, 4, 5, 6, 7}
_EXPIRATION_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}


class _Parser:
    def __init__(self, main: str) -> None:
        self.conf = MosquittoConfig(path=main)
        self.current: Listener | None = None
        self.security_seen = False

    # -- helpers ------------------------------------------------------------------------------
    def fail(self, where: str, key: str, message: str) -> MosquittoConfError:
        return MosquittoConfError(f"{where}: {key}: {message}")

    def warn(self, where: str, key: str, message: str) -> None:
        self.conf.warnings.append(f"{where}: {key}: {message}")

    def listener(self) -> Listener:
        if self.current is _LOST:
            return Listener(where="(lost)")
        return self.current if self.current is not None else self.conf.default

    def security(self) -> Security:
        if self.conf.per_listener_settings:
            return self.listener().security
        return self.conf.security

    def word(self, line: str, pos: int, key: str, where: str) -> str:
        value, _ = next_word(line, pos)
        if value is None:
            raise self.fail(where, key, f"empty {key} value in configuration (give a value)")
        return value

    def boolean(self, line: str, pos: int, key: str, where: str) -> bool:
        value = self.word(line, pos, key, where)
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        raise self.fail(where, key, f"invalid {key} value ({value}); use true or false")

    def integer(self, line: str, pos: int, key: str, where: str) -> int:
        return _atoi(self.word(line, pos, key, where))

    def string(self, line: str, pos: int, key: str, where: str, seen: set[str]) -> str:
        value = line[pos:].strip(_BLANKS)
        if not value:
            raise self.fail(where, key, f"empty {key} value in configuration (give a value)")
        if key in seen:
            raise self.fail(
                where, key, f"duplicate {key} value in configuration (mosquitto refuses it too); keep one line"
            )
        seen.add(key)
        return value

    # -- files --------------------------------------------------------------------------------
    def read_file(self, path: str, level: int) -> None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise MosquittoConfError(f"cannot open config file {path}: {exc.strerror}") from None
        self.conf.files.append(path)
        text = data.decode("utf-8", errors="surrogateescape")
        for lineno, raw in enumerate(text.split("\n"), 1):
            line = raw.rstrip("\r\n")
            if not line or line[0] in "#\r\n":
                continue
            key, pos = next_word(line, 0)
            if key is None:
                continue
            self.line(f"{path}:{lineno}", key, line, pos, level)

    # -- one line -----------------------------------------------------------------------------
    def line(self, where: str, key: str, line: str, pos: int, level: int) -> None:
        info = K.lookup(key)
        conf = self.conf
        if (
            self.current is _LOST
            and info is not None
            and (info.scope == "listener" or (info.scope == "security" and conf.per_listener_settings))
            and (key not in ("listener", "port", "bind_address"))
        ):
            self.warn(
                where,
                key,
                "ignored: it follows an include_dir whose files define listeners, and mosquitto "
                "2.0.11 then applies it to no listener (measured); move it before the include_dir or into "
                "the included file",
            )
            return
        if info is None:
            raise self.fail(
                where,
                key,
                "unknown configuration variable (mosquitto 2.0 refuses it too); check the spelling or remove the line",
            )
        if key in _SECURITY_KEYS or key.startswith(K.PREFIX_KEYS):
            self.security_seen = True
        if info.status == K.UNSUPPORTED:
            raise self.fail(where, key, f"not supported by mqtt-guard: {info.note}")

        if key == "include_dir":
            directory = line[pos:].strip(_BLANKS)
            if not directory:
                raise self.fail(where, key, "empty include_dir value in configuration (give a directory)")
            if level > 0:
                self.warn(
                    where, key, "include_dir is only read in the main configuration file; ignored (as mosquitto does)"
                )
                return
            if not os.path.isdir(directory):
                raise self.fail(where, key, f"unable to open include_dir {directory!r}")
            saved, before = self.current, len(conf.listeners)
            for f in include_dir_files(directory):
                self.current = None  # every included file starts at the default listener (measured)
                self.read_file(f, level + 1)
            # mosquitto 2.0.11 keeps a pointer into its listener array across the include; when the
            # included files added listeners, listener settings that follow in this file are lost
            # (measured: they reach no listener). mqtt-guard drops them too, with a warning.
            self.current = saved if len(conf.listeners) == before else _LOST
            return

        if info.status == K.IGNORED:
            self.warn(where, key, f"accepted and ignored: {info.note}")
            return

        # -- listeners -----------------------------------------------------------------------
        if key == "listener":
            port_s, p2 = next_word(line, pos)
            if port_s is None:
                raise self.fail(where, key, "empty listener value in configuration (give a port)")
            port = _atoi(port_s)
            if port < 0 or port > 65535:
                raise self.fail(where, key, f"invalid port value ({port})")
            address, _ = next_word(line, p2)
            if port == 0:
                raise self.fail(where, key, "unix socket listeners (port 0) are not supported; use a TCP port")
            listener = Listener(port=port, address=address, where=where)
            conf.listeners.append(listener)
            self.current = listener
            return
        if key == "port":
            port = self.integer(line, pos, key, where)
            if port < 1 or port > 65535:
                raise self.fail(where, key, f"invalid port value ({port})")
            conf.default.port = port
            conf.port_given = True
            conf.default.where = conf.default.where or where
            return
        if key == "bind_address":
            conf.default.address = self.string(line, pos, key, where, conf.default.strings)
            conf.bind_address_given = True
            conf.default.creates_default = True
            return
        if key == "protocol":
            text = self.word(line, pos, key, where)
            if text not in ("mqtt", "websockets"):
                raise self.fail(where, key, f"invalid protocol value ({text}); use mqtt or websockets")
            self.listener().protocol = text
            if text != "mqtt" and self.current is None:
                conf.default.creates_default = True
            return
        if key == "max_connections":
            self.listener().max_connections = self.integer(line, pos, key, where)
            if self.current is None:
                conf.default.creates_default = True
            return
        if key == "socket_domain":
            text = self.word(line, pos, key, where)
            if text not in ("ipv4", "ipv6"):
                raise self.fail(where, key, f"invalid socket_domain value {text!r} in configuration")
            if text == "ipv6":
                raise self.fail(where, key, f"not supported by mqtt-guard: {info.note}")
            if self.current is None:
                conf.default.creates_default = True
            return
        if key in ("max_qos", "maximum_qos"):
            number = self.integer(line, pos, key, where)
            if number < 0 or number > 2:
                raise self.fail(where, key, f"invalid {key} value ({number})")
            if number != 2:
                raise self.fail(where, key, f"not supported by mqtt-guard: {info.note}")
            return
        if key in (
            "use_username_as_clientid",
            "use_subject_as_username",
            "upgrade_outgoing_qos",
            "check_retain_source",
        ):
            if self.boolean(line, pos, key, where):
                raise self.fail(where, key, f"`{key} true` is not supported by mqtt-guard: {info.note}")
            return
        if key in ("retain_available", "allow_zero_length_clientid"):
            if not self.boolean(line, pos, key, where):
                raise self.fail(where, key, f"`{key} false` is not supported by mqtt-guard: {info.note}")
            return
        if key == "message_size_limit":
            number = self.integer(line, pos, key, where)
            if number < 0 or number > MQTT_MAX_PACKET:
                raise self.fail(where, key, f"invalid message_size_limit value ({number})")
            conf.message_size_limit = number
            return
        if key in ("max_inflight_bytes", "memory_limit"):
            if self.integer(line, pos, key, where) != 0:
                raise self.fail(where, key, f"not supported by mqtt-guard: {info.note}")
            return
        if key == "tls_version":
            text = self.string(line, pos, key, where, self.listener().strings)
            if text != "tlsv1.2":
                raise self.fail(where, key, f"`tls_version {text}` is not supported by mqtt-guard: {info.note}")
            return
        if key == "tls_keyform":
            text = self.word(line, pos, key, where)
            if text != "pem":
                raise self.fail(where, key, f"`tls_keyform {text}` is not supported by mqtt-guard: {info.note}")
            return
        if key in ("cafile", "certfile", "keyfile"):
            lst = self.listener()
            setattr(lst, key, self.string(line, pos, key, where, lst.strings))
            if self.current is None:
                conf.default.creates_default = True
            return
        if key in ("require_certificate", "use_identity_as_username"):
            flag = self.boolean(line, pos, key, where)
            setattr(self.listener(), key, flag)
            if flag and self.current is None:
                conf.default.creates_default = True
            return

        # -- security -----------------------------------------------------------------------
        if key == "per_listener_settings":
            flag = self.boolean(line, pos, key, where)
            if flag and self.security_seen:
                raise self.fail(
                    where,
                    key,
                    "per_listener_settings must be set before any other security "
                    "settings (mosquitto refuses this order too); move it up",
                )
            conf.per_listener_settings = flag
            return
        if key == "allow_anonymous":
            sec = self.security()
            sec.allow_anonymous = self.boolean(line, pos, key, where)
            sec.where[key] = where
            return
        if key in ("password_file", "acl_file"):
            sec = self.security()
            seen = self.listener().strings if conf.per_listener_settings else conf.strings
            setattr(sec, key, self.string(line, pos, key, where, seen))
            sec.where[key] = where
            if key == "password_file" and conf.per_listener_settings and self.current is None:
                conf.default.creates_default = True
            return

        # -- limits -------------------------------------------------------------------------
        if key in ("max_inflight_messages", "max_queued_messages", "max_queued_bytes", "max_packet_size"):
            number = self.integer(line, pos, key, where)
            if number < 0:
                raise self.fail(where, key, f"invalid {key} value ({number})")
            if key == "max_packet_size" and 0 < number < 20:
                raise self.fail(where, key, f"invalid {key} value ({number})")
            setattr(conf, key, number)
            return
        if key == "max_keepalive":
            number = self.integer(line, pos, key, where)
            if number < 1 or number > 65535:  # measured: 0, 65536, -5 and `abc` stop mosquitto 2.0.11
                raise self.fail(where, key, f"invalid max_keepalive value ({number})")
            conf.max_keepalive = number
            return
        if key == "max_topic_alias":
            number = self.integer(line, pos, key, where)
            if number < 0 or number > 65535:
                raise self.fail(where, key, "invalid max_topic_alias value in configuration")
            self.listener().max_topic_alias = number
            return
        if key == "clientid_prefixes":
            conf.clientid_prefixes = self.string(line, pos, key, where, conf.strings)
            self.warn(where, key, "deprecated by mosquitto 2.0 (it says so too); honoured")
            return
        if key == "queue_qos0_messages":
            conf.queue_qos0_messages = self.boolean(line, pos, key, where)
            return
        if key == "persistent_client_expiration":
            conf.persistent_client_expiration = self.expiration(line, pos, key, where)
            return
        if key == "sys_interval":
            number = self.integer(line, pos, key, where)
            if number < 0 or number > 65535:
                raise self.fail(where, key, f"invalid sys_interval value ({number})")
            conf.sys_interval = number
            return
        if key in ("persistence", "retained_persistence"):
            conf.persistence = self.boolean(line, pos, key, where)  # durable.enabled (docs/durability.md)
            return

        # -- process and logging -----------------------------------------------------------
        if key == "pid_file":
            conf.pid_file = self.string(line, pos, key, where, conf.strings)
            return
        if key == "user":
            conf.user = self.string(line, pos, key, where, conf.strings)
            return
        if key == "log_dest":
            self.log_dest(line, pos, where)
            return
        if key == "log_type":
            text = self.word(line, pos, key, where)
            if text not in _LOG_TYPES:
                raise self.fail(where, key, f"invalid log_type value ({text})")
            conf.log_types.append(text)
            return
        if key == "log_facility":
            number = self.integer(line, pos, key, where)
            if number not in _FACILITIES:
                raise self.fail(where, key, f"invalid log_facility value ({number}); use 0-7 (local0-local7)")
            conf.log_facility = number
            return
        if key == "log_timestamp":
            conf.log_timestamp = self.boolean(line, pos, key, where)
            return
        if key == "log_timestamp_format":
            conf.log_timestamp_format = self.string(line, pos, key, where, conf.strings)
            return
        raise self.fail(where, key, "internal error: key known but not handled")  # pragma: no cover

    def expiration(self, line: str, pos: int, key: str, where: str) -> int:
        """mosquitto's persistent_client_expiration: atoi of the word without its last character, times the
        unit that character names (h, d, w, m = 30 days, y = 365 days); anything else, or not above 0, is
        refused (measured: `10`, `5s`, `0h` and `2 h` refused, `1.5h` is 1 h)."""
        word = self.word(line, pos, key, where)
        unit = _EXPIRATION_UNITS.get(word[-1])
        seconds = _atoi(word[:-1]) * unit if unit is not None else 0
        if seconds <= 0:
            raise self.fail(where, key, f"invalid {key} duration ({word}); e.g. 12h, 2d, 1w, 1m or 1y")
        return seconds

    def log_dest(self, line: str, pos: int, where: str) -> None:
        kind, p2 = next_word(line, pos)
        if kind is None:
            raise self.fail(where, "log_dest", "empty log_dest value in configuration")
        if kind in ("stdout", "stderr", "syslog", "none"):
            self.conf.log_dest.append((kind, None))
        elif kind == "file":
            target = line[p2:].strip(_BLANKS)
            if not target:
                raise self.fail(where, "log_dest", "log_dest file needs a file name")
            self.conf.log_dest.append(("file", target))
        elif kind in ("topic", "dlt"):
            self.warn(where, "log_dest", f"`log_dest {kind}` is accepted but mqtt-guard does not log there")
        else:
            raise self.fail(where, "log_dest", f"invalid log_dest value ({kind})")


def parse_mosquitto_conf(path: str | Path) -> MosquittoConfig:
    """Parse a mosquitto.conf (and its include_dir files). Raises MosquittoConfError."""
    parser = _Parser(str(path))
    parser.read_file(str(path), 0)
    conf = parser.conf
    effective = conf.effective_listeners()
    if len({conf.max_topic_alias([lst]) for lst in effective}) > 1:
        where = ", ".join(f"{lst.where}: {conf.max_topic_alias([lst])}" for lst in effective)
        raise MosquittoConfError(
            f"max_topic_alias: listeners with different values ({where}) are not supported by mqtt-guard, "
            "which has one value for all listeners; give every listener the same max_topic_alias"
        )
    return conf


def looks_like_mosquitto_conf(path: str | Path) -> bool:
    """True if the file reads as mosquitto's `key value` format rather than YAML.

    A YAML mqtt-guard config has `key:` mappings; a mosquitto.conf has lines whose first word is a
    mosquitto key (and no colon right after it). The first significant line decides.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "---":
            continue
        word = line.split()[0]
        if word.endswith(":") or ":" in word:
            return False
        return K.lookup(word) is not None
    return False


# -- translation ------------------------------------------------------------------------------------

_LEVELS = {
    "debug": 10,
    "all": 10,
    "subscribe": 10,
    "unsubscribe": 10,
    "websockets": 10,
    "information": 20,
    "notice": 20,
    "warning": 30,
    "error": 40,
}
_PY_LEVELS: dict[int, LogLevel] = {10: "debug", 20: "info", 30: "warning", 40: "error"}


def log_level(conf: MosquittoConfig) -> LogLevel:
    """The Python log level matching mosquitto's log_type lines (default: error..information)."""
    types = conf.log_types or ["error", "warning", "notice", "information"]
    if types == ["none"] or all(t == "none" for t in types):
        return "error"
    level = min(_LEVELS[t] for t in types if t != "none")
    return _PY_LEVELS[level]


def to_guard_config(conf: MosquittoConfig, base: GuardConfig | None = None) -> GuardConfig:
    """The mqtt-guard configuration that behaves like this mosquitto.conf (Redis settings from `base`)."""
    config = base or GuardConfig()
    local_only = conf.local_only
    listeners: list[ListenerConfig] = []
    for lst in conf.effective_listeners():
        tls = bool(lst.certfile)
        kind: Literal["tcp", "tls", "websockets"] = (
            "websockets" if lst.protocol == "websockets" else ("tls" if tls else "tcp")
        )
        listeners.append(
            ListenerConfig(
                type=kind,
                bind=lst.bind(local_only),
                certfile=lst.certfile,
                keyfile=lst.keyfile,
                cafile=lst.cafile,
                require_certificate=lst.require_certificate,
                use_identity_as_username=lst.use_identity_as_username,
                max_connections=max(0, lst.max_connections),
            )
        )
    config.listeners = listeners
    effective = conf.effective_listeners()
    config.auth.allow_anonymous = bool(effective) and conf.allow_anonymous_for(effective[0])
    config.auth.throttle.enabled = False  # mosquitto has no login throttling (admin bans still apply)
    config.acl.default = "deny"
    # mosquitto lets any user take any client id over; its own client id rule is clientid_prefixes
    config.auth.client_id_policy = "any"
    config.auth.client_id_prefixes = [conf.clientid_prefixes] if conf.clientid_prefixes is not None else []
    # `persistence true`: retained messages and persistent sessions in Redis (--redis-url), shared by every
    # broker on it; without Redis at start the broker still starts and persists once Redis answers
    config.durable.enabled = conf.persistence
    config.auth.mqtt5_bad_credentials = "not_authorized"  # mosquitto 2.0 answers 0x87, not 0x86 (measured)
    limits = config.limits
    limits.shared_subscription_strategy = "mosquitto"  # mosquitto-compat/SHARED.md
    if conf.max_inflight_messages is not None:
        limits.max_inflight_messages = conf.max_inflight_messages
    if conf.max_queued_messages is not None:
        limits.max_queued_messages = conf.max_queued_messages
    else:
        limits.max_queued_messages = 1000
    if conf.max_queued_bytes is not None:
        limits.max_queued_bytes = conf.max_queued_bytes
    limits.max_packet_size = conf.max_packet_size or MQTT_MAX_PACKET
    # MQTT 5 (mosquitto tells MQTT 5 clients these in CONNACK; 3.1.1 clients are not affected, measured)
    limits.max_keepalive = conf.max_keepalive if conf.max_keepalive is not None else 65535
    limits.max_topic_alias = conf.max_topic_alias(effective)
    if conf.persistent_client_expiration is not None:
        limits.persistent_session_expiry = float(conf.persistent_client_expiration)
    durable = getattr(config, "durable", None)
    if durable is not None:  # QoS 0 queued for offline persistent sessions (kept in Redis with them)
        durable.queue_qos0_messages = conf.queue_qos0_messages
    metrics = getattr(config, "metrics", None)
    if metrics is not None and hasattr(metrics, "sys_interval"):
        metrics.sys_interval = float(conf.sys_interval if conf.sys_interval is not None else 10)
    config.log.level = log_level(conf)
    return config
