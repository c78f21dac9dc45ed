"""`mqtt-guard broker -c mosquitto.conf`: everything between the parsed file and a running broker.

The broker glue never parses files: this module builds the GuardConfig, loads the password and ACL
files into a `MosquittoSecurity`, and hands it to the Guard through its narrow interface
(`auth_backends`, `acl_sources`; SIGHUP calls `Guard.reload`). It also honours the process keys of
mosquitto.conf: `log_dest`/`log_type`/`log_timestamp*`/`log_facility`, `pid_file` and `user`.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any

from ..config import ConfigError, GuardConfig, ListenerConfig, split_bind
from .conf import MosquittoConfError, MosquittoConfig, parse_mosquitto_conf, to_guard_config
from .security import MosquittoSecurity, SecurityLoadError, SourceHost

log = logging.getLogger("mqtt_guard.compat")

__all__ = ["LaunchError", "check_files", "load", "run_mosquitto_conf", "setup_logging"]


class LaunchError(ValueError):
    pass


def load(
    path: str,
    base: GuardConfig,
    *,
    binds: list[str] | None = None,
    allow_anonymous: bool | None = None,
    log_level: str | None = None,
) -> tuple[MosquittoConfig, GuardConfig, MosquittoSecurity]:
    """Parse `path`, build the GuardConfig (Redis settings from `base`) and load the files.

    Raises LaunchError with a message naming the key/file/line at fault."""
    try:
        conf = parse_mosquitto_conf(path)
    except MosquittoConfError as exc:
        raise LaunchError(str(exc)) from None
    config = to_guard_config(conf, base)
    if binds:
        if conf.per_listener_settings:
            raise LaunchError(
                "--bind cannot replace the listeners of a mosquitto.conf with per_listener_settings "
                "true (each listener has its own security settings)"
            )
        for bind in binds:
            split_bind(bind, "--bind")
        config.listeners = [ListenerConfig(type="tcp", bind=b) for b in binds]
    if allow_anonymous:
        if conf.per_listener_settings:
            for lst in conf.listeners + [conf.default]:
                lst.security.allow_anonymous = True
        else:
            conf.security.allow_anonymous = True
        config.auth.allow_anonymous = True
    if log_level:
        config.log.level = log_level  # type: ignore[assignment]  # one of the CLI's --log-level choices
    try:
        config.check()
    except ConfigError as exc:
        raise LaunchError(f"{path}: {exc}") from None
    if conf.user and os.geteuid() == 0 and conf.user != "root":
        import pwd

        try:
            pwd.getpwnam(conf.user)
        except KeyError:
            raise LaunchError(
                f"{path}: user: no such user {conf.user!r} to switch to (create it, or set `user root`)"
            ) from None
    try:
        security = MosquittoSecurity(conf, config.listeners)
    except SecurityLoadError as exc:
        raise LaunchError(str(exc)) from None
    return conf, config, security


_FACILITY = {i: getattr(logging.handlers.SysLogHandler, f"LOG_LOCAL{i}") for i in range(8)}


def setup_logging(conf: MosquittoConfig, level: str) -> None:
    """Root logging as log_dest/log_type/log_timestamp ask (before the runner's basicConfig, which then
    leaves it alone)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if conf.log_timestamp:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        datefmt = conf.log_timestamp_format
    else:
        fmt, datefmt = "%(levelname)s %(name)s: %(message)s", None
    formatter = logging.Formatter(fmt, datefmt)
    dests = conf.log_dest or [("stderr", None)]
    handlers: list[logging.Handler] = []
    for kind, target in dests:
        if kind == "stdout":
            handlers.append(logging.StreamHandler(sys.stdout))
        elif kind == "stderr":
            handlers.append(logging.StreamHandler(sys.stderr))
        elif kind == "file" and target:
            try:
                handlers.append(logging.FileHandler(target))
            except OSError as exc:
                raise LaunchError(f"log_dest file {target}: cannot open: {exc.strerror}") from None
        elif kind == "syslog":
            address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
            facility = _FACILITY.get(conf.log_facility or 3, logging.handlers.SysLogHandler.LOG_DAEMON)
            handlers.append(logging.handlers.SysLogHandler(address=address, facility=facility))
    if not handlers:  # log_dest none
        handlers.append(logging.NullHandler())
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())


def _unwritable(path: str) -> str | None:
    """Why `path` cannot be opened for writing (created if missing), or None; without creating it.

    `os.access` asks with the real uid, which is who opens the files here (before any `user` switch)."""
    if os.path.isdir(path):
        return "is a directory"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "permission denied"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"permission denied in {parent}"
    return None


def check_files(conf: MosquittoConfig) -> None:
    """Refuse, with every problem named, a configuration whose pid_file or log files cannot be written,
    before anything is created: a failed start must not leave a root-owned log file behind."""
    targets = [("log_dest file", target) for kind, target in conf.log_dest if kind == "file" and target]
    if conf.pid_file:
        targets.append(("pid_file", conf.pid_file))
    problems = [f"{what} {path}: cannot write: {why}" for what, path in targets if (why := _unwritable(path))]
    if problems:
        raise LaunchError("; ".join(problems))


def _write_pid(path: str) -> None:
    try:
        Path(path).write_text(f"{os.getpid()}\n")
    except OSError as exc:
        raise LaunchError(f"pid_file {path}: cannot write: {exc.strerror}") from None


def _drop_privileges(user: str) -> None:
    import grp
    import pwd

    entry = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    os.setgroups(sorted({entry.pw_gid, *groups}))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("now running as user %r", user)


def run_mosquitto_conf(path: str, base: GuardConfig, **options: Any) -> int:
    conf, config, security = load(path, base, **options)
    check_files(conf)
    for warning in conf.warnings:
        print(f"mqtt-guard: warning: {warning}", file=sys.stderr)
    setup_logging(conf, config.log.level)
    for warning in conf.warnings:
        log.warning("%s", warning)
    from ..engine.runner import run  # late: amqtt is heavy

    async def prepare(guard: SourceHost) -> None:
        security.install(guard)
        log.info(
            "mosquitto configuration %s: %d listener(s); %s",
            path,
            len(config.listeners),
            "; ".join(
                f"{s.name}: allow_anonymous {str(s.allow_anonymous).lower()}, password_file "
                f"{s.password_file or 'none'}, acl_file {s.acl_file or 'none'}"
                for s in security.scopes
            ),
        )

    async def ready(guard: Any) -> None:
        if conf.user and os.geteuid() == 0 and conf.user != "root":
            _drop_privileges(conf.user)

    if conf.pid_file:
        _write_pid(conf.pid_file)
    try:
        return run(config, prepare, ready)
    finally:
        if conf.pid_file:
            try:
                os.unlink(conf.pid_file)
            except OSError:
                pass
