"""Every mosquitto 2.0 configuration key, with what mqtt-guard does with it.

The list of keys was measured, not remembered: each candidate was put in a mosquitto.conf and fed to
the real mosquitto 2.0.11, which answers "Unknown configuration variable" for anything it does not
know. `mosquitto-compat/KEYS.md` is this table in prose; tests/compat/test_keys_doc.py keeps the two
equal.

Status:
- ``supported``: honoured as mosquitto does.
- ``partial``: some values honoured; the others stop the broker with a message saying what to do.
- ``ignored``: accepted with a warning; no effect on what MQTT 3.1.1 clients observe (or logging
  details only).
- ``unsupported``: the broker refuses to start, naming the key, the file and line, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED, PARTIAL, IGNORED, UNSUPPORTED = "supported", "partial", "ignored", "unsupported"


@dataclass(frozen=True)
class KeyInfo:
    scope: str  # global | listener | security | bridge
    status: str
    note: str
    reload: str = ""  # what a SIGHUP does with it in mqtt-guard ("" = read at start only)


_BRIDGE_NOTE = (
    "bridges are not supported: keep a small mosquitto for the bridge next to mqtt-guard, "
    "or remove the `connection` section"
)
_BRIDGE_KEYS = [
    "connection",
    "address",
    "addresses",
    "topic",
    "bridge_alpn",
    "bridge_attempt_unsubscribe",
    "bridge_bind_address",
    "bridge_cafile",
    "bridge_capath",
    "bridge_certfile",
    "bridge_identity",
    "bridge_insecure",
    "bridge_keyfile",
    "bridge_max_packet_size",
    "bridge_outgoing_retain",
    "bridge_protocol_version",
    "bridge_psk",
    "bridge_require_ocsp",
    "bridge_tls_version",
    "cleansession",
    "clientid",
    "idle_timeout",
    "keepalive_interval",
    "local_cleansession",
    "local_clientid",
    "local_password",
    "local_username",
    "notification_topic",
    "notifications",
    "notifications_local_only",
    "password",
    "remote_clientid",
    "remote_password",
    "remote_username",
    "restart_timeout",
    "round_robin",
    "start_type",
    "threshold",
    "try_private",
    "username",
]

_PLUGIN_NOTE = (
    "mosquitto plugins cannot be loaded; users and ACLs of mosquitto-go-auth move to Redis with "
    "`mqtt-guard import go-auth`, others need an amqtt plugin (`plugins:` in a YAML config)"
)

KEYS: dict[str, KeyInfo] = {
    # -- listeners ----------------------------------------------------------------------------
    "listener": KeyInfo(
        "listener",
        PARTIAL,
        "`listener PORT [ADDRESS]`: TCP port and bind address (default all "
        "IPv4 interfaces); port 0 / unix sockets are refused",
    ),
    "port": KeyInfo("listener", SUPPORTED, "deprecated form of the default listener's port"),
    "bind_address": KeyInfo("listener", SUPPORTED, "deprecated form of the default listener's address"),
    "protocol": KeyInfo("listener", SUPPORTED, "`mqtt` or `websockets` (with certfile: wss)"),
    "max_connections": KeyInfo("listener", SUPPORTED, "-1 = unlimited; over the limit the connection is closed"),
    "socket_domain": KeyInfo(
        "listener",
        PARTIAL,
        "`ipv4` is what mqtt-guard binds anyway; `ipv6` is refused "
        "(give an IPv6 address in `listener PORT ADDRESS` instead)",
    ),
    "bind_interface": KeyInfo("listener", UNSUPPORTED, "give the interface's address in `listener PORT ADDRESS`"),
    "mount_point": KeyInfo("listener", UNSUPPORTED, "topic prefixes per listener are not supported; remove it"),
    "http_dir": KeyInfo("listener", UNSUPPORTED, "mqtt-guard serves no HTTP files; use a web server"),
    "max_qos": KeyInfo("listener", PARTIAL, "only 2 (the default) is supported; remove the line"),
    "maximum_qos": KeyInfo("listener", PARTIAL, "same as max_qos: only 2 is supported"),
    "max_topic_alias": KeyInfo(
        "listener",
        PARTIAL,
        "topic aliases an MQTT 5 client may set (CONNACK Topic Alias Maximum; default 10, 0 = none); "
        "one value for all listeners (listeners that differ are refused)",
    ),
    "use_username_as_clientid": KeyInfo("listener", PARTIAL, "only `false` is supported"),
    "websockets_log_level": KeyInfo("listener", IGNORED, "libwebsockets logging"),
    "websockets_headers_size": KeyInfo("listener", IGNORED, "libwebsockets buffer size"),
    # -- TLS ----------------------------------------------------------------------------------
    "cafile": KeyInfo("listener", SUPPORTED, "CA for client certificates"),
    "certfile": KeyInfo("listener", SUPPORTED, "server certificate: makes the listener TLS (or wss)"),
    "keyfile": KeyInfo("listener", SUPPORTED, "server key"),
    "require_certificate": KeyInfo("listener", SUPPORTED, "clients must present a certificate signed by cafile"),
    "use_identity_as_username": KeyInfo("listener", SUPPORTED, "the certificate's CN is the username"),
    "use_subject_as_username": KeyInfo("listener", PARTIAL, "only `false`; use use_identity_as_username (CN)"),
    "capath": KeyInfo("listener", UNSUPPORTED, "concatenate the CA certificates into one file and use cafile"),
    "crlfile": KeyInfo(
        "listener",
        UNSUPPORTED,
        "revocation lists are not supported; remove revoked users' access with `mqtt-guard user disable`",
    ),
    "ciphers": KeyInfo("listener", UNSUPPORTED, "mqtt-guard uses Python's default TLS ciphers; remove the line"),
    "ciphers_tls1.3": KeyInfo("listener", UNSUPPORTED, "mqtt-guard uses Python's default TLS 1.3 suites"),
    "dhparamfile": KeyInfo("listener", IGNORED, "Python's TLS uses ECDHE key exchange; DH parameters are unused"),
    "tls_version": KeyInfo(
        "listener",
        PARTIAL,
        "`tlsv1.2` (the minimum mqtt-guard accepts anyway) is supported; tlsv1.3 and tlsv1.1 are refused",
    ),
    "tls_engine": KeyInfo("listener", UNSUPPORTED, "hardware TLS engines are not supported"),
    "tls_engine_kpass_sha1": KeyInfo("listener", UNSUPPORTED, "hardware TLS engines are not supported"),
    "tls_keyform": KeyInfo("listener", PARTIAL, "only `pem`"),
    "psk_hint": KeyInfo("listener", UNSUPPORTED, "TLS-PSK is not supported; use certificates or passwords"),
    # -- authentication and ACLs ----------------------------------------------------------------
    "allow_anonymous": KeyInfo("security", SUPPORTED, "clients without a username", "reloaded"),
    "password_file": KeyInfo(
        "security",
        SUPPORTED,
        "mosquitto_passwd files ($7$/$6$); users not in the file are looked up in Redis",
        "reloaded",
    ),
    "acl_file": KeyInfo(
        "security",
        SUPPORTED,
        "mosquitto's exact ACL semantics; Redis deny rules still apply and Redis grants add to it",
        "reloaded",
    ),
    "per_listener_settings": KeyInfo("global", SUPPORTED, "security settings per listener"),
    "psk_file": KeyInfo("security", UNSUPPORTED, "TLS-PSK is not supported; use certificates or passwords"),
    "auth_plugin": KeyInfo("security", UNSUPPORTED, _PLUGIN_NOTE),
    "plugin": KeyInfo("security", UNSUPPORTED, _PLUGIN_NOTE),
    "auth_opt_": KeyInfo("security", UNSUPPORTED, _PLUGIN_NOTE + " (auth_opt_* keys)"),
    "plugin_opt_": KeyInfo("security", UNSUPPORTED, _PLUGIN_NOTE + " (plugin_opt_* keys)"),
    "auth_plugin_deny_special_chars": KeyInfo("security", UNSUPPORTED, _PLUGIN_NOTE),
    "allow_zero_length_clientid": KeyInfo(
        "security", PARTIAL, "only `true` (the default): mqtt-guard names clients that send an empty id"
    ),
    "auto_id_prefix": KeyInfo("security", UNSUPPORTED, "mqtt-guard names clients without an id itself; remove it"),
    "clientid_prefixes": KeyInfo(
        "global",
        SUPPORTED,
        "client ids must start with it (the rest of the line), else CONNACK 5 as mosquitto answers (measured); "
        "deprecated by mosquitto 2.0",
    ),
    # -- limits and queues -------------------------------------------------------------------
    "max_inflight_messages": KeyInfo("global", SUPPORTED, "QoS 1/2 messages in flight per client (0 = no limit)"),
    "max_inflight_bytes": KeyInfo("global", PARTIAL, "only 0 (no byte limit)"),
    "max_queued_messages": KeyInfo("global", SUPPORTED, "messages queued per client; 0 = no limit"),
    "max_queued_bytes": KeyInfo("global", SUPPORTED, "bytes queued per client; 0 = no limit"),
    "queue_qos0_messages": KeyInfo(
        "global",
        SUPPORTED,
        "`durable.queue_qos0_messages`: QoS 0 queued for offline persistent sessions, with them in Redis "
        "(needs durable state, `persistence true`)",
    ),
    "message_size_limit": KeyInfo(
        "global",
        SUPPORTED,
        "PUBLISHes with a larger payload are dropped, QoS 1 still acknowledged (measured); 0 = no limit",
        "reloaded",
    ),
    "max_packet_size": KeyInfo("global", SUPPORTED, "larger packets close the connection"),
    "max_keepalive": KeyInfo(
        "global",
        SUPPORTED,
        "MQTT 5 clients asking for more, or for 0, are told this Server Keep Alive (default 65535); "
        "3.1.1 clients keep theirs, as in mosquitto 2.0.11 (measured)",
    ),
    "memory_limit": KeyInfo("global", PARTIAL, "only 0; use max_queued_messages/max_queued_bytes"),
    "retain_available": KeyInfo("global", PARTIAL, "only `true`"),
    "upgrade_outgoing_qos": KeyInfo("global", PARTIAL, "only `false`"),
    "check_retain_source": KeyInfo("global", PARTIAL, "only `false`"),
    "persistent_client_expiration": KeyInfo(
        "global",
        SUPPORTED,
        "offline persistent sessions are discarded after it (and it caps an MQTT 5 client's Session Expiry"
        " Interval): a number and h, d, w, m (30 days) or y (365 days)",
    ),
    "set_tcp_nodelay": KeyInfo("global", IGNORED, "socket tuning"),
    "sys_interval": KeyInfo(
        "global", SUPPORTED, "period of the $SYS/broker/... topics (0 = none); the topic set is mqtt-guard's"
    ),
    "allow_duplicate_messages": KeyInfo("global", IGNORED, "deprecated; no effect in mosquitto 2.0"),
    "retry_interval": KeyInfo("global", IGNORED, "deprecated; no effect in mosquitto 2.0"),
    # -- persistence (restarts only) -------------------------------------------------------------
    "persistence": KeyInfo(
        "global",
        SUPPORTED,
        "`true` keeps retained messages (and persistent sessions) in Redis (`--redis-url`), shared by every "
        "broker on it and written before the acknowledgement (docs/durability.md); a broker that finds no Redis "
        "at start still starts, logs an ERROR and persists once Redis answers",
    ),
    "retained_persistence": KeyInfo("global", SUPPORTED, "same as persistence"),
    "persistence_file": KeyInfo("global", IGNORED, "state is in Redis, not in a file"),
    "persistence_location": KeyInfo("global", IGNORED, "state is in Redis, not in a file"),
    "autosave_interval": KeyInfo("global", IGNORED, "every change is written to Redis as it happens"),
    "autosave_on_changes": KeyInfo("global", IGNORED, "every change is written to Redis as it happens"),
    # -- process and logging -----------------------------------------------------------------
    "include_dir": KeyInfo(
        "global",
        SUPPORTED,
        "*.conf files in mosquitto's order (case-insensitive, then upper case first); only in the main file",
    ),
    "pid_file": KeyInfo("global", SUPPORTED, "written at start, removed at exit"),
    "user": KeyInfo(
        "global",
        SUPPORTED,
        "when started as root, mqtt-guard switches to this user after reading its files and opening its log",
    ),
    "log_dest": KeyInfo(
        "global",
        PARTIAL,
        "stdout, stderr, file PATH, syslog, none; topic and dlt are accepted with a warning (not published)",
    ),
    "log_type": KeyInfo(
        "global", SUPPORTED, "mapped to a log level (debug/all, information/notice, warning, error, none)", "reloaded"
    ),
    "log_facility": KeyInfo("global", SUPPORTED, "syslog facility local0-7"),
    "log_timestamp": KeyInfo("global", SUPPORTED, "timestamps on log lines (default true)"),
    "log_timestamp_format": KeyInfo("global", SUPPORTED, "strftime format of the timestamp"),
    "connection_messages": KeyInfo("global", IGNORED, "logging detail: connect/disconnect lines are always logged"),
}
for _k in _BRIDGE_KEYS:
    KEYS[_k] = KeyInfo("bridge", UNSUPPORTED, _BRIDGE_NOTE)

PREFIX_KEYS = ("auth_opt_", "plugin_opt_")


def lookup(key: str) -> KeyInfo | None:
    if key in KEYS:
        return KEYS[key]
    for prefix in PREFIX_KEYS:
        if key.startswith(prefix) and len(key) > len(prefix):
            return KEYS[prefix]
    return None
