"""Broker configuration: a YAML file validated into dataclasses.

Validation is strict on purpose: a typo such as ``allow_anonymus`` must stop the broker with a
message naming the key and the file, not silently fall back to a default that changes who may
connect. Command-line options (`--bind`, `--allow-anonymous`, `--redis-url`) override the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml

from .auth.throttle import parse_network
from .store.connection import DEFAULT_REDIS_URL
from .store.keys import DEFAULT_PREFIX

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

LogLevel = Literal["debug", "info", "warning", "error"]
ClientIdPolicy = Literal["owner", "username-prefix", "any"]  # auth/ownership.py
SharedStrategy = Literal["round_robin", "least_loaded", "mosquitto"]  # engine/shared.py
D = TypeVar("D", bound="DataclassInstance")  # a config section: any dataclass


class ConfigError(ValueError):
    pass


def size(default: int) -> Any:
    """A byte-size field: accepts 1048576, "1MiB", "512KB", "2M"."""
    return field(default=default, metadata={"kind": "size"})


def duration(default: float | None) -> Any:
    """A duration field in seconds: accepts 10, 1.5, "10s", "5m", "1h", "1d"."""
    return field(default=default, metadata={"kind": "duration"})


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size like 1048576 or 1MiB, got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _DURATION_UNITS:
        raise ValueError(f"expected a duration like 10, 10s, 5m, 1h or 1d, got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


@dataclass
class ListenerConfig:
    type: Literal["tcp", "tls", "websockets"] = "tcp"
    bind: str = "0.0.0.0:1883"
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    require_certificate: bool = False
    use_identity_as_username: bool = False
    max_connections: int = 0
    # Behind a load balancer (engine/proxy_listener.py, proxy_ws.py): every connection starts with a PROXY protocol
    # header (v1 or v2) naming the client, accepted only from these CIDRs. Per listener, as the spec
    # wants: a listener either requires the header or never reads one, and each faces its own balancer.
    proxy_protocol: bool = False
    trusted_proxies: list[str] = field(default_factory=list)
    # websockets listeners (docs/tokens.md): a bearer token checked during the HTTP upgrade (401/403 and no
    # WebSocket otherwise), looked for in these places in order; an Origin allow-list (empty: any).
    require_token: bool = False
    token_sources: list[str] = field(default_factory=lambda: ["header"])
    allowed_origins: list[str] = field(default_factory=list)

    def check(self, where: str) -> None:
        tls = self.type == "tls" or (self.type == "websockets" and self.certfile)
        if self.type == "tls" and not (self.certfile and self.keyfile):
            raise ConfigError(f"{where}: a tls listener needs certfile and keyfile")
        if (self.require_certificate or self.use_identity_as_username) and not tls:
            raise ConfigError(f"{where}: require_certificate/use_identity_as_username need a TLS listener")
        if self.use_identity_as_username and not self.require_certificate:
            raise ConfigError(f"{where}: use_identity_as_username needs require_certificate: true")
        if self.require_certificate and not self.cafile:
            raise ConfigError(f"{where}: require_certificate needs cafile (the CA that signs client certificates)")
        for name in ("certfile", "keyfile", "cafile"):
            p = getattr(self, name)
            if p and not Path(p).is_file():
                raise ConfigError(f"{where}.{name}: file not found: {p}")
        split_bind(self.bind, where)
        self._check_proxy(where)
        self._check_upgrade(where)

    def _check_upgrade(self, where: str) -> None:
        if (self.require_token or self.allowed_origins) and self.type != "websockets":
            raise ConfigError(f"{where}: require_token and allowed_origins apply to websockets listeners only")
        if not self.token_sources:
            raise ConfigError(f"{where}.token_sources: name at least one place (header, cookie:NAME, query:NAME)")
        for i, source in enumerate(self.token_sources):
            kind, _, name = source.partition(":")
            if not (source == "header" or (kind in ("cookie", "query") and name)):
                raise ConfigError(
                    f"{where}.token_sources[{i}]: expected header, cookie:NAME or query:NAME, got {source!r}"
                )

    def _check_proxy(self, where: str) -> None:
        if self.proxy_protocol and self.type == "websockets" and self.certfile:
            raise ConfigError(
                f"{where}: proxy_protocol is supported on tcp, tls and plain websockets listeners, not wss"
            )
        if self.proxy_protocol and not self.trusted_proxies:
            raise ConfigError(f"{where}: proxy_protocol needs trusted_proxies (the balancers' addresses or CIDRs)")
        if self.trusted_proxies and not self.proxy_protocol:
            raise ConfigError(f"{where}: trusted_proxies is only used with proxy_protocol: true")
        for i, cidr in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"{where}.trusted_proxies[{i}]: not an address or CIDR: {cidr!r}") from None


def split_bind(bind: str, where: str = "bind") -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: bind must be HOST:PORT, got {bind!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class RedisConfig:
    url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX


@dataclass
class ThrottleConfig:
    """Login throttling (docs/security.md "Login throttling"; mqtt_guard/auth/throttle.py)."""

    enabled: bool = True
    max_failures: int = 10  # failed logins from one address within `window` that ban the address
    max_user_failures: int = 5  # failed logins of one username from one address that refuse that pair
    window: float = duration(60.0)
    ban_for: float = duration(300.0)
    exempt: list[str] = field(default_factory=list)  # addresses / CIDR networks never throttled

    def check(self, where: str = "auth.throttle") -> None:
        if self.max_failures < 0 or self.max_user_failures < 0:
            raise ConfigError(f"{where}: max_failures and max_user_failures must be >= 0 (0: no such limit)")
        if self.window <= 0 or self.ban_for <= 0:
            raise ConfigError(f"{where}: window and ban_for must be above 0")
        for i, text in enumerate(self.exempt):
            try:
                parse_network(text)
            except ValueError as exc:
                raise ConfigError(f"{where}.exempt[{i}]: {exc}") from None


JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA")
JWT_TRUSTED_CLAIMS = ("acl", "plan")


HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2: a secret at least the hash size


def _check_jwks_url(url: str, where: str) -> None:
    """https://, or plain http:// to this machine only (a local issuer or a sidecar proxy): keys fetched
    in clear over a network could be swapped by anyone on the path, and then any token verifies."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise ConfigError(f"{where}: must be an https:// URL, got {url!r}")
    if parsed.scheme == "https":
        return
    host = parsed.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"{where}: plain http:// is accepted only to a loopback address (127.0.0.1, ::1, localhost):"
            f" keys fetched in clear can be replaced on the way; use https://, got {url!r}"
        )


@dataclass
class JwtConfig:
    """Access tokens (JWT) as the CONNECT password and on websockets upgrades (docs/tokens.md)."""

    secret: str | None = None  # HS256/384/512; or public_key_file (PEM or JWK), or jwks_url: one of the three
    public_key_file: str | None = None
    jwks_url: str | None = None
    algorithms: list[str] = field(default_factory=lambda: ["HS256"])
    audience: str | None = None  # checked when set: the token's aud must name it
    issuer: str | None = None  # checked when set: the token's iss must equal it
    username_claim: str = "sub"  # the identity; a non-empty CONNECT username must equal it
    leeway: float = duration(30.0)  # clock skew allowed on exp and nbf
    trusted_claims: list[str] = field(default_factory=list)  # of acl, plan: honoured only when listed
    jwks_refresh: float = duration(300.0)  # the JWKS is fetched again this often (key rotation)
    jwks_min_refresh: float = duration(10.0)  # an unknown kid fetches it at most this often

    def check(self, where: str = "auth.jwt") -> None:
        given = [k for k in ("secret", "public_key_file", "jwks_url") if getattr(self, k)]
        if len(given) != 1:
            raise ConfigError(f"{where}: give exactly one of secret, public_key_file, jwks_url (got {given or 'none'})")
        if not self.algorithms:
            raise ConfigError(f"{where}.algorithms: name at least one algorithm")
        for i, alg in enumerate(self.algorithms):
            if alg not in JWT_ALGORITHMS:
                why = "never accepted (unsigned tokens)" if alg.lower() == "none" else "unknown algorithm"
                raise ConfigError(f"{where}.algorithms[{i}]: {alg!r}: {why}; known: {', '.join(JWT_ALGORITHMS)}")
        hmac_algs = [a for a in self.algorithms if a.startswith("HS")]
        if self.secret and len(hmac_algs) != len(self.algorithms):
            raise ConfigError(f"{where}: a secret verifies HS256/HS384/HS512 only")
        if not self.secret and hmac_algs:
            raise ConfigError(f"{where}: {', '.join(hmac_algs)} need a secret (a public key never serves as one)")
        if self.public_key_file and not Path(self.public_key_file).is_file():
            raise ConfigError(f"{where}.public_key_file: file not found: {self.public_key_file}")
        if self.jwks_url:
            _check_jwks_url(self.jwks_url, f"{where}.jwks_url")
        if not self.username_claim:
            raise ConfigError(f"{where}.username_claim: must name a claim (e.g. sub)")
        if self.leeway < 0 or self.jwks_refresh <= 0 or self.jwks_min_refresh < 0:
            raise ConfigError(f"{where}: leeway and jwks_min_refresh must be >= 0, jwks_refresh above 0")
        for i, claim in enumerate(self.trusted_claims):
            if claim not in JWT_TRUSTED_CLAIMS:
                raise ConfigError(f"{where}.trusted_claims[{i}]: {claim!r}: known: {', '.join(JWT_TRUSTED_CLAIMS)}")
        if self.secret:
            # RFC 7518 3.2: an HMAC key at least as long as the hash output; the longest algorithm decides.
            need = max(HMAC_KEY_BYTES[a] for a in hmac_algs)
            have = len(self.secret.encode())
            if have < need:
                longest = max(hmac_algs, key=HMAC_KEY_BYTES.__getitem__)
                raise ConfigError(
                    f"{where}.secret: {have} bytes is too short for {longest}: it needs {need} bytes or more"
                    " (RFC 7518 3.2: HS256 32, HS384 48, HS512 64)"
                )


@dataclass
class AuthConfig:
    allow_anonymous: bool = False
    # Who may use a client id (auth/ownership.py): "owner" refuses an id held (online, or by a persistent
    # session) by another user with CONNACK 2; "username-prefix" also wants ids like <username>-...;
    # "any" lets anyone take any id over (mosquitto's behaviour, the default under a mosquitto.conf).
    client_id_policy: ClientIdPolicy = "owner"
    client_id_prefixes: list[str] = field(default_factory=list)  # mosquitto's clientid_prefixes: CONNACK 5 otherwise
    # When Redis cannot be reached at CONNECT: "deny" answers CONNACK 3 (server unavailable);
    # "cached" lets in clients whose exact credentials were verified recently (cached_max_age).
    on_redis_down: Literal["deny", "cached"] = "deny"
    cache_ttl: float = duration(300.0)  # how long a successful password check skips re-hashing
    cached_max_age: float = duration(3600.0)  # how old a verification may be to count while Redis is down
    hash_workers: int = 4  # threads that verify password hashes off the event loop
    # Password checks waiting for a hash worker beyond which unknown-user and repeat-failure checks are
    # refused with CONNACK 3 (a known user's first check is never refused); 0 = no bound.
    hash_queue: int = 1000
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    jwt: JwtConfig | None = None  # access tokens (docs/tokens.md); None: passwords only
    # What an MQTT 5 client with wrong or missing credentials is told (docs/reason-codes.md):
    # "bad_credentials", CONNACK 0x86 Bad User Name or Password (the specification's code), or
    # "not_authorized", 0x87 Not authorized (mosquitto 2.0's answer: the default under a mosquitto.conf).
    # 3.1.1 clients get CONNACK 5 either way.
    mqtt5_bad_credentials: Literal["bad_credentials", "not_authorized"] = "bad_credentials"


@dataclass
class AclConfig:
    default: Literal["deny", "allow"] = "deny"
    deny_publish_action: Literal["drop", "disconnect"] = "drop"


@dataclass
class LimitsConfig:
    connect_timeout: float = duration(10.0)
    max_packet_size: int = size(1024 * 1024)
    max_queued_messages: int = 1000  # per session, waiting to be sent (above the in-flight window); 0 = no limit
    max_queued_bytes: int = size(0)  # per session, payload + topic bytes waiting to be sent; 0 = no byte limit
    max_inflight_messages: int = 20  # per session, QoS 1/2 messages sent and not yet acknowledged
    # Flow control: publishers feeding a subscriber whose queue is half full pause until it drains, for
    # at most this long per stalled subscriber; then it is a slow consumer (its queue limits drop). 0 = off.
    backpressure_max_stall: float = duration(2.0)
    # An offline persistent session (its subscriptions, queued messages and its hold on the client id) is
    # discarded after this long offline; None: kept until the broker stops (mosquitto's default).
    persistent_session_expiry: float | None = duration(None)
    # MQTT 5 (mosquitto's keys): topic aliases a client may set per connection (0: none), and the longest
    # keep-alive an MQTT 5 client may use (0: any; it is told the lower one; 3.1.1 clients keep theirs, as mosquitto)
    max_topic_alias: int = 10
    max_keepalive: int = 0
    # Shared subscriptions ($share/GROUP/FILTER): which member gets a message. round_robin / least_loaded:
    # among the members that can take it (connected, allowed to receive it, under their queue limits and
    # quota); retained messages are not sent to shared subscriptions (MQTT 5 4.8.2). mosquitto: mosquitto
    # 2.0's rotation, every member in turn whatever its state (a member that may not receive loses the
    # message), retained messages sent to each member at SUBSCRIBE (the default under a mosquitto.conf).
    shared_subscription_strategy: SharedStrategy = "round_robin"
    # A topic name or filter (PUBLISH, SUBSCRIBE, UNSUBSCRIBE, will) of more levels closes the connection;
    # 201 is mosquitto 2.0's limit (it refuses more than 200 `/`). 0 = no limit.
    max_topic_levels: int = 201

    def check(self, where: str = "limits") -> None:
        if self.persistent_session_expiry is not None and self.persistent_session_expiry <= 0:
            raise ConfigError(f"{where}.persistent_session_expiry must be above 0 (or null: never)")
        if not 0 <= self.max_topic_alias <= 65535:
            raise ConfigError(f"{where}.max_topic_alias must be between 0 and 65535")
        if not 0 <= self.max_keepalive <= 65535:
            raise ConfigError(f"{where}.max_keepalive must be between 0 and 65535 (0: no limit)")
        if self.max_topic_levels < 0:
            raise ConfigError(f"{where}.max_topic_levels must be >= 0 (0: no limit)")


@dataclass
class QuotaConfig:
    """How brokers share quotas through Redis (docs/quotas.md); the limits themselves live in Redis."""

    sync_interval: float = duration(1.0)  # heartbeat: report usage, refresh leases and the session registry
    broker_dead_after: float = duration(10.0)  # no heartbeat for this long: the broker's sessions and leases go
    lease_fraction: float = 0.1  # a broker takes this share of a user's limit at a time...
    lease_min_events: int = 100  # ...but at least this many events (all of a smaller limit)
    lease_min_bytes: int = size(4 * 1024 * 1024)  # ...and at least this many bytes
    on_redis_down: Literal["deny", "allow"] = "deny"  # lease spent and Redis unreachable: drop, or count and allow
    audit_maxlen: int = 100_000  # the audit stream is capped at about this many entries
    # A user's leases, limits and session slots stay on a broker this long after its last client there
    # left, so a client that comes back (reconnects) needs no Redis round trip; 0 = hand back at once.
    linger: float = duration(2.0)

    def check(self, where: str = "quota") -> None:
        if self.sync_interval <= 0:
            raise ConfigError(f"{where}.sync_interval must be above 0")
        if self.broker_dead_after < 2 * self.sync_interval:
            raise ConfigError(f"{where}.broker_dead_after must be at least twice sync_interval")
        if not 0 < self.lease_fraction <= 1:
            raise ConfigError(f"{where}.lease_fraction must be above 0 and at most 1")
        if self.lease_min_events < 1 or self.lease_min_bytes < 1:
            raise ConfigError(f"{where}.lease_min_events and lease_min_bytes must be at least 1")
        if self.audit_maxlen < 1:
            raise ConfigError(f"{where}.audit_maxlen must be at least 1")
        if not 0 <= self.linger <= 3600:
            raise ConfigError(f"{where}.linger must be between 0 and 1h")


@dataclass
class SidecarConfig:
    interval: float = duration(1.0)  # the sidecar's tick: due deadlines, named sessions, a slice of the sweep
    leader_ttl: float = duration(3.0)  # a leader that stops renewing is replaced after this long
    kick_retry: float = duration(10.0)  # a kicked session still registered after this long is kicked again
    sweep_interval: float = duration(600.0)  # every session re-evaluated once per this long, in slices (safety net)
    prometheus_bind: str | None = None  # HOST:PORT for /metrics: fleet totals from Redis, broker liveness, loop lag
    # HOST:PORT serving only /livez, /readyz, /healthz (no /metrics, prometheus_client not imported); the
    # probes come with prometheus_bind too (the same value serves them once)
    health_bind: str | None = None

    def check(self, where: str = "sidecar") -> None:
        if self.prometheus_bind:
            split_bind(self.prometheus_bind, f"{where}.prometheus_bind")
        if self.health_bind:
            split_bind(self.health_bind, f"{where}.health_bind")
        if self.interval <= 0:
            raise ConfigError(f"{where}.interval must be above 0")
        if self.leader_ttl <= self.interval:
            raise ConfigError(f"{where}.leader_ttl must be longer than interval")
        if self.kick_retry <= 0:
            raise ConfigError(f"{where}.kick_retry must be above 0")
        if self.sweep_interval < self.interval:
            raise ConfigError(f"{where}.sweep_interval must be at least interval")


@dataclass
class AdminConfig:
    """The admin HTTP API (`mqtt-guard admin`, docs/admin-api.md): local only unless told otherwise."""

    bind: str = "127.0.0.1:9884"
    certfile: str | None = None  # with keyfile: serve HTTPS
    keyfile: str | None = None

    def check(self, where: str = "admin") -> None:
        split_bind(self.bind, f"{where}.bind")
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError(f"{where}: certfile and keyfile go together")


@dataclass
class LogConfig:
    level: LogLevel = "info"


@dataclass
class ShutdownConfig:
    """SIGTERM (docs/deploy.md): listeners close and /readyz fails at once; connected clients are served
    on for up to `drain_grace` (those that leave meanwhile leave as usual), then every connection is closed."""

    drain_grace: float = duration(0.0)  # 0 = close every connection at once (after the last deliveries)
    # Where MQTT 5 clients are told to go at SIGTERM (DISCONNECT 0x9C Use another server with this Server
    # Reference, e.g. "mqtt.example.com:1883", at the start of the drain); unset: they are served through
    # the drain like 3.1.1 clients and told 0x8B Server shutting down at its end. mosquitto has no such key.
    server_reference: str | None = None

    def check(self) -> None:
        if not 0 <= self.drain_grace <= 3600:
            raise ConfigError("shutdown.drain_grace: between 0 and 1h")
        ref = self.server_reference
        if ref is not None and (not ref.strip() or "\x00" in ref or len(ref.encode()) > 1024):
            raise ConfigError("shutdown.server_reference: a non-empty server name (HOST[:PORT]), at most 1 KiB")


@dataclass
class MetricsConfig:
    """Analytics (docs/analytics.md): counters flushed to Redis, /metrics, $SYS topics."""

    flush_interval: float = duration(1.0)  # how often counts go to Redis in one batch (0.1 s to 10 s)
    prometheus_bind: str | None = None  # HOST:PORT serving /metrics from the broker; unset = no endpoint
    # HOST:PORT serving only /livez, /readyz, /healthz (no /metrics; they come with prometheus_bind too)
    health_bind: str | None = None
    # With `workers: N`, worker i serves its /metrics on this port + i (same host as prometheus_bind);
    # unset: prometheus_bind's port + 10 + i (9893.. for 9883, clear of the sidecar's 9884 and 9885).
    workers_port_from: int | None = None
    per_client_allowlist: list[str] = field(default_factory=list)  # client ids (globs) with their own series
    per_user_allowlist: list[str] = field(default_factory=list)  # usernames (globs) with their own series
    top_n: int = 0  # also give the N busiest clients of this broker their own series
    sys_interval: float = duration(10.0)  # $SYS/broker/... publishing period; 0 = off
    broker_id: str | None = None  # this broker in stats keys and heartbeats; default HOSTNAME:PORT
    stats_ttl: float = duration(30 * 86400)  # per-client/per-user stats hashes expire this long after last use
    max_backlog: int = 200_000  # stats entries kept in memory while Redis is unreachable
    # refused CONNECTs: source addresses (and usernames) kept per day in Redis, and per flush in memory
    max_failed_addresses: int = 10_000

    def check(self) -> None:
        if not 0.1 <= self.flush_interval <= 10:
            raise ConfigError("metrics.flush_interval: must be between 0.1s and 10s")
        if self.prometheus_bind:
            split_bind(self.prometheus_bind, "metrics.prometheus_bind")
        if self.health_bind:
            split_bind(self.health_bind, "metrics.health_bind")
        if self.workers_port_from is not None and not 1 <= self.workers_port_from <= 65535:
            raise ConfigError("metrics.workers_port_from: a port number (1 to 65535)")
        if self.top_n < 0 or self.max_backlog < 1000:
            raise ConfigError("metrics: top_n must be >= 0 and max_backlog >= 1000")
        if self.sys_interval < 0 or 0 < self.sys_interval < 1:
            raise ConfigError("metrics.sys_interval: 0 (off) or at least 1s")
        if self.stats_ttl < 3600:
            raise ConfigError("metrics.stats_ttl: at least 1h")
        if self.max_failed_addresses < 1:
            raise ConfigError("metrics.max_failed_addresses: at least 1")


@dataclass
class DurableConfig:
    """Durable state in Redis (issue 17, docs/durability.md): retained messages (and persistent
    sessions) outlive a broker process and are shared by every broker on the same Redis."""

    enabled: bool = True  # false: kept in memory only, lost on restart (mosquitto.conf `persistence false`)
    # writes that need no acknowledgement (QoS 0 retained, ...) held in memory while Redis is away; beyond
    # it the oldest are dropped, counted and logged as lost
    buffer_limit: int = 100_000
    # persistent sessions: QoS 0 messages are queued (in memory and Redis) for an offline session too
    # (mosquitto's `queue_qos0_messages`), bounded like the others, written without acknowledgement
    queue_qos0_messages: bool = False

    def check(self) -> None:
        if self.buffer_limit < 0:
            raise ConfigError("durable.buffer_limit: must be >= 0")


@dataclass
class ClusterConfig:
    """Several brokers on one Redis behaving as one (issue 18, docs/scaling.md): each broker publishes
    its subscription filters to Redis and forwards a PUBLISH once to each other broker with a matching
    subscriber, through that broker's inbox stream. On by default: a broker alone pays one cached
    lookup per PUBLISH and a few idle Redis reads a second (docs/performance.md), and brokers (or
    `--workers`) sharing a Redis and a prefix then deliver to each other's subscribers."""

    enabled: bool = True  # false: this broker neither forwards nor receives (its clients meet only its own)
    inbox_maxlen: int = 20_000  # stream entries (one per sender and event-loop iteration) an inbox keeps unread
    routes_maxlen: int = 10_000  # filter-set publications kept (a reader further behind reads the sets whole)
    # messages held in memory for Redis while it is away; past it new QoS 0 forwards are dropped (counted)
    buffer_limit: int = 100_000
    liveness_interval: float = duration(1.0)  # between two reads of the broker registry
    absent_grace: float = duration(10.0)  # a broker with a filter set missing from the registry is used this long

    def check(self) -> None:
        if self.inbox_maxlen < 100 or self.routes_maxlen < 100:
            raise ConfigError("cluster.inbox_maxlen and cluster.routes_maxlen: at least 100")
        if self.buffer_limit < 0:
            raise ConfigError("cluster.buffer_limit: must be >= 0")
        if not 0.05 <= self.liveness_interval <= 60:
            raise ConfigError("cluster.liveness_interval: from 50ms to 60s")
        if self.absent_grace < self.liveness_interval:
            raise ConfigError("cluster.absent_grace: at least cluster.liveness_interval")


@dataclass
class GuardConfig:
    listeners: list[ListenerConfig] = field(default_factory=list)
    redis: RedisConfig = field(default_factory=RedisConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    acl: AclConfig = field(default_factory=AclConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    sidecar: SidecarConfig = field(default_factory=SidecarConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    durable: DurableConfig = field(default_factory=DurableConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # Extra amqtt plugins by dotted class path, each with its options (amqtt's own `plugins:` format).
    plugins: dict[str, Any] = field(default_factory=dict)
    # Broker processes sharing the listeners' ports (SO_REUSEPORT; mqtt_guard/workers.py): a number, or
    # "auto" for one per core. 1: this process is the broker.
    workers: int = field(default=1, metadata={"kind": "workers"})

    def check(self) -> None:
        self.limits.check()
        self.quota.check()
        self.sidecar.check()
        self.auth.throttle.check()
        if self.auth.hash_queue < 0:
            raise ConfigError("auth.hash_queue: must be >= 0 (0: no bound)")
        if not self.listeners:
            raise ConfigError("no listener configured: give --bind HOST:PORT or a listeners: section")
        if not isinstance(self.plugins, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, dict)) for k, v in self.plugins.items()
        ):
            raise ConfigError("plugins: must map dotted class paths to option mappings (or nothing)")
        for i, listener in enumerate(self.listeners):
            listener.check(f"listeners[{i}]")
            if listener.require_token and self.auth.jwt is None:
                raise ConfigError(f"listeners[{i}]: require_token needs auth.jwt (how tokens are verified)")
        if self.auth.jwt is not None:
            self.auth.jwt.check()
        self.metrics.check()
        self.shutdown.check()
        self.admin.check()
        self.durable.check()
        self.cluster.check()


WORKERS_MAX = 256


def parse_workers(value: Any) -> int:
    """`workers:` / `--workers`: a count of broker processes, or "auto" (one per core)."""
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= WORKERS_MAX:
        raise ValueError(f'must be a whole number from 1 to {WORKERS_MAX}, or "auto", got {value!r}')
    return value


def load_config(path: str | Path | None) -> GuardConfig:
    """Read and validate a YAML file; None gives the defaults."""
    if path is None:
        return GuardConfig()
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return build(GuardConfig, data, "", str(p))


def build(cls: type[D], data: Any, path: str, source: str) -> D:
    """Turn a mapping into dataclass `cls`, naming the exact key and file on any error."""
    where = path or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {key_path!r} (known keys here: {', '.join(fields)})")
        kwargs[key] = _convert(hints[key], fields[key], value, key_path, source)
    return cls(**kwargs)


def _convert(tp: Any, f: dataclasses.Field[Any] | None, value: Any, path: str, source: str) -> Any:
    kind = f.metadata.get("kind") if f is not None else None
    if value is None and kind is not None and f is not None and f.default is None:
        return None  # an optional size or duration left unset
    try:
        if kind == "workers":
            return parse_workers(value)
        if kind == "size":
            return parse_size(value)
        if kind == "duration":
            return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {path}: {exc}") from None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], f, value, path, source)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {path}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {path}: must be a list")
        return [_convert(args[0], None, v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, path, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {path}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {path}: must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {path}: must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {path}: must be a string, got {value!r}")
        return value
    return value
