"""File-backed authentication and ACLs for a broker started with a mosquitto.conf.

`MosquittoSecurity` plugs into the Guard behind two narrow interfaces (see `Guard.auth_backends`
and `Guard.acl_sources`) and never touches the broker glue:

* ``authenticate(...)`` answers a CONNECT the way mosquitto 2.0 would, from `allow_anonymous` and
  `password_file` of the listener's scope. A username that is not in the password file is handed to
  the Redis authenticator (`fallback`), so Redis users work next to file users.
* ``check(client, action, topic)`` is mosquitto's ACL decision (`aclfile.py`) for the client's scope.
  The Guard combines it with the Redis rules: a Redis *deny* rule wins, then a grant from either
  side allows (see docs in mosquitto-compat/README.md).
* ``reload()`` (SIGHUP) re-reads mosquitto.conf and applies what mosquitto reloads: allow_anonymous,
  password_file and acl_file (paths and contents), per scope. A file that cannot be read or parsed
  keeps the previous contents in force and is logged; clients stay connected either way.

Scopes are mosquitto's: one global scope, or one per listener with ``per_listener_settings true``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..acl.rules import Perm
from ..auth import hashes
from ..auth.authenticator import AuthResult, Outcome
from ..config import ListenerConfig
from .aclfile import READ, SUBSCRIBE, WRITE, AclFile, AclFileError, check_dollar, read_acl_file
from .conf import MosquittoConfError, MosquittoConfig, Security, log_level, parse_mosquitto_conf
from .passwd import PasswdFile, PasswdFileError, read_passwd_file

log = logging.getLogger("mqtt_guard.compat")

_ACCESS = {Perm.PUBLISH: WRITE, Perm.RECEIVE: READ, Perm.SUBSCRIBE: SUBSCRIBE}
_CACHE_MAX = 200_000


class SecurityLoadError(ValueError):
    """A password_file or acl_file named by the configuration cannot be used."""


@dataclass
class Scope:
    """One mosquitto security scope with its files loaded."""

    name: str
    allow_anonymous: bool
    password_file: str | None = None
    acl_file: str | None = None
    passwd: PasswdFile | None = None
    acl: AclFile | None = None
    cache: dict[tuple[str | None, str, int, str], bool] = field(default_factory=dict)

    def decide(self, username: str | None, client_id: str, access: int, topic: str) -> bool:
        if self.acl is None:
            return True
        key = (username, client_id, access, topic)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        verdict = self.acl.check(username, client_id, access, topic)
        if len(self.cache) >= _CACHE_MAX:
            self.cache.clear()
        self.cache[key] = verdict
        return verdict


@dataclass(frozen=True)
class _State:
    """Everything a reload replaces, swapped in one assignment on the event loop."""

    scopes: list[Scope]
    global_scope: Scope | None
    by_listener: dict[int, Scope]


def _load_files(sec: Security, name: str) -> tuple[PasswdFile | None, AclFile | None]:
    """Read a scope's files. Raises SecurityLoadError naming the file (and line for ACLs)."""
    passwd = acl = None
    if sec.password_file:
        try:
            passwd = read_passwd_file(sec.password_file)
        except PasswdFileError as exc:
            raise SecurityLoadError(f"{name}: {exc} (password_file at {sec.where.get('password_file', '?')})") from None
        for problem in passwd.problems:
            log.error("password_file %s", problem)
    if sec.acl_file:
        try:
            acl = read_acl_file(sec.acl_file)
        except AclFileError as exc:
            raise SecurityLoadError(f"{name}: {exc} (acl_file at {sec.where.get('acl_file', '?')})") from None
        for warning in acl.warnings:
            log.warning("acl_file %s", warning)
    return passwd, acl


class SourceHost(Protocol):
    """What a broker's Guard offers file-backed sources: the lists it asks (auth backends before Redis,
    ACL sources next to it) and mosquitto's `message_size_limit`. Narrow on purpose: the sources see
    nothing else of the Guard."""

    auth_backends: list[Any]
    acl_sources: list[Any]
    message_size_limit: int


class MosquittoSecurity:
    """The file-backed auth backend and ACL source of a broker run from a mosquitto.conf."""

    def __init__(self, conf: MosquittoConfig, listeners: list[ListenerConfig]) -> None:
        """Loads every scope's files now; raises SecurityLoadError with the file (and line) at fault."""
        self.conf = conf
        self.path = conf.path
        self.listeners = listeners  # the GuardConfig listeners built from `conf`, in the same order
        self.state = self._build(conf, None)
        self.reloads = 0
        self.guard: SourceHost | None = None  # set by install(): its message_size_limit follows reloads

    def install(self, guard: SourceHost) -> None:
        """Plug into a Guard: auth backend, ACL source, and the message_size_limit of the configuration."""
        self.guard = guard
        guard.auth_backends.append(self)
        guard.acl_sources.append(self)
        guard.message_size_limit = self.conf.message_size_limit

    @property
    def scopes(self) -> list[Scope]:
        return self.state.scopes

    # -- building scopes -----------------------------------------------------------------------
    def _build(self, conf: MosquittoConfig, old: _State | None) -> _State:
        """Scopes for a parsed configuration, files loaded. At start (old None) a file that fails
        raises SecurityLoadError; on a reload that scope keeps its previous files."""
        effective = conf.effective_listeners()
        previous = {s.name: s for s in old.scopes} if old is not None else {}
        scopes: list[Scope] = []
        by_listener: dict[int, Scope] = {}
        global_scope = None
        if conf.per_listener_settings:
            for i, (lst, ours) in enumerate(zip(effective, self.listeners, strict=False)):
                name = f"listener {ours.bind}"
                prev = previous.get(name)
                sec = conf.security_for(lst)
                if prev is not None and (
                    sec.password_file is None and prev.password_file or sec.acl_file is None and prev.acl_file
                ):
                    # A reload that drops a listener's password_file or acl_file line keeps the file
                    # name it had, and the file is read again: mosquitto 2.0.11 only overwrites
                    # per-listener file names that the new configuration sets (measured; without
                    # per_listener_settings a dropped line means no file).
                    sec = Security(
                        sec.allow_anonymous,
                        sec.password_file or prev.password_file,
                        sec.acl_file or prev.acl_file,
                        dict(sec.where),
                    )
                scope = self._scope(name, sec, conf.allow_anonymous_for(lst), prev, initial=old is None)
                scopes.append(scope)
                by_listener[i] = scope
        else:
            anon = conf.allow_anonymous_for(effective[0]) if effective else False
            global_scope = self._scope("global", conf.security, anon, previous.get("global"), initial=old is None)
            scopes.append(global_scope)
            for i in range(len(self.listeners)):
                by_listener[i] = global_scope
        return _State(scopes, global_scope, by_listener)

    def _scope(
        self, name: str, sec: Security, allow_anonymous: bool, previous: Scope | None, *, initial: bool
    ) -> Scope:
        scope = Scope(name, allow_anonymous, sec.password_file, sec.acl_file)
        try:
            scope.passwd, scope.acl = _load_files(sec, name)
        except SecurityLoadError as exc:
            if initial or previous is None:
                raise
            log.error("reload: %s; the previous password_file and acl_file of %s stay in force", exc, name)
            scope.password_file, scope.acl_file = previous.password_file, previous.acl_file
            scope.passwd, scope.acl = previous.passwd, previous.acl
        return scope

    def scope_for(self, listener: ListenerConfig | None) -> Scope | None:
        state = self.state
        if listener is not None:
            for i, ours in enumerate(self.listeners):
                if ours is listener:
                    return state.by_listener.get(i)
        return state.global_scope

    # -- authentication -----------------------------------------------------------------------
    async def authenticate(
        self,
        *,
        username: str | None,
        password: str | None,
        listener: ListenerConfig | None,
        identity_as_username: bool,
        fallback: Callable[[], Awaitable[AuthResult]],
    ) -> AuthResult | None:
        """mosquitto's CONNECT decision; None leaves it to the next backend (Redis)."""
        if identity_as_username:
            return None  # the certificate is the credential: the Redis authenticator handles identities
        scope = self.scope_for(listener)
        if scope is None:
            return AuthResult(Outcome.ANONYMOUS_REFUSED if username is None else Outcome.UNKNOWN_USER, username)
        if username == "":
            username = None  # mosquitto 2.0.11 treats an empty username as none at all (measured), password or not
        if username is None:
            return AuthResult(Outcome.ANONYMOUS if scope.allow_anonymous else Outcome.ANONYMOUS_REFUSED, None)
        if scope.passwd is not None:
            entry = scope.passwd.get(username)
            if entry is None:
                return await fallback()  # not a file user: maybe a Redis user; else "unknown user"
            if password is None:
                return AuthResult(Outcome.NO_PASSWORD, username)
            try:
                ok = await asyncio.get_running_loop().run_in_executor(
                    None, hashes.verify_password, password, entry.encoded
                )
            except hashes.HashFormatError as exc:
                log.error("password_file user %r: unusable hash: %s", username, exc)
                return AuthResult(Outcome.CORRUPT, username)
            return AuthResult(Outcome.OK if ok else Outcome.BAD_PASSWORD, username)
        result = await fallback()
        if result.outcome is Outcome.UNKNOWN_USER:
            # No password_file: mosquitto admits any username when anonymous clients are allowed.
            return (
                AuthResult(Outcome.OK, username)
                if scope.allow_anonymous
                else AuthResult(Outcome.UNKNOWN_USER, username)
            )
        return result

    # -- ACL ------------------------------------------------------------------------------------
    def check(self, client: Any, action: Perm, topic: str) -> bool | None:
        """mosquitto's decision for this client, or None if the client is not in any scope."""
        scope = self.scope_for(getattr(client, "listener_config", None))
        if scope is None:
            return None
        access = _ACCESS[action]
        if check_dollar(topic, access) is False:
            return False
        if access == SUBSCRIBE:
            return True
        return scope.decide(client.username, client.client_id, access, topic)

    # -- reload ---------------------------------------------------------------------------------
    async def reload(self) -> None:
        """SIGHUP: re-read mosquitto.conf and the files mosquitto reloads. Never raises.

        A configuration that no longer parses keeps the previous settings, and the password_file and
        acl_file they name are read again anyway (mosquitto 2.0.11 does the same, measured)."""
        conf: MosquittoConfig | None = None
        failure = None
        try:
            conf = await asyncio.to_thread(parse_mosquitto_conf, self.path)
        except MosquittoConfError as exc:
            failure = str(exc)
        except Exception as exc:  # noqa: BLE001 - a reload must never take the broker down
            failure = f"cannot read {self.path}: {exc!r}"
        if conf is not None and conf.per_listener_settings != self.conf.per_listener_settings:
            failure, conf = "per_listener_settings changed; it takes effect at the next restart", None
        try:
            state = await asyncio.to_thread(self._build, conf or self.conf, self.state)
        except SecurityLoadError as exc:  # a scope that did not exist before failed to load
            failure, state = failure or str(exc), None
        except Exception as exc:
            log.exception("reload: unexpected error")
            failure, state = failure or repr(exc), None
        if state is not None:
            self.state = state
            self.reloads += 1
        if conf is not None and state is not None:
            self.conf = conf
            logging.getLogger().setLevel(log_level(conf).upper())  # log_type is reloaded too
            if self.guard is not None:
                self.guard.message_size_limit = conf.message_size_limit
        if failure:
            log.error(
                "reload failed: %s; the previous settings stay in force%s",
                failure,
                " (their password_file and acl_file were read again)" if state is not None else "",
            )
            return
        users = sum(len(s.passwd) for s in self.scopes if s.passwd is not None)
        log.info(
            "reloaded %s: %d scope(s), %d password_file user(s), acl_file %s",
            self.path,
            len(self.scopes),
            users,
            ", ".join(s.acl_file or "none" for s in self.scopes),
        )
