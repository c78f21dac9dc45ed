"""In-process counters per client and per broker: the hot path only ever increments a dict entry.

Everything that counts (ACL denials, queue drops, quota refusals, messages in and out) goes through
`Counters.incr`, so the analytics work has a single source to flush to Redis in batches and to export
to Prometheus, and nothing is counted twice.

Three views of the same increments are kept:
- `totals`: everything this process counted since it started (Prometheus broker-level counters, $SYS);
- the pending deltas since the last `drain()`, per client id, which the flusher
  (mqtt_guard/metrics/service.py) adds to Redis with HINCRBY; Redis holds the numbers that survive
  restarts and add up across brokers, per client, per username and in total;
- `client(id)`: a connected client's counts since it connected to this process (the per-client
  Prometheus series); a client's state is dropped at the first `drain()` after it disconnected.

`incr` costs two dict increments; everything per user, per window and per bucket happens in `drain()`.

Refused CONNECTs (`auth_failed`) never count per client: a scanner sending random client ids would
otherwise create a Redis hash per attempt. They count in the broker totals, in the user's own counters
(existing users only) and, per source address and per username, in two bounded per-window tables that
the flusher adds to the day's failure rankings (docs/analytics.md "Refused connections").
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass, field

# Counter names, defined once. They are also the field names of the Redis stats hashes.
MSGS_IN = "messages_in"  # PUBLISH received from the client
BYTES_IN = "bytes_in"
MSGS_OUT = "messages_out"  # PUBLISH delivered to the client
BYTES_OUT = "bytes_out"
DENIED_PUBLISH = "publish_denied"  # ACL refused a PUBLISH of the client
DENIED_SUBSCRIBE = "subscribe_denied"
WITHHELD = "deliveries_withheld"  # receive denied
DROPPED_QUEUE_FULL = "dropped_queue_full"
DROPPED_TOO_LARGE = "dropped_too_large"  # larger than an MQTT 5 client's Maximum Packet Size (#16)
OVER_QUOTA = "over_quota"
PUBLISH_TOO_LARGE = "publish_too_large"  # for the engine: a PUBLISH over limits.max_packet_size
PROTOCOL_ERRORS = "protocol_errors"
PLUGIN_ERRORS = "plugin_errors"
CONNECTS = "connects"  # admitted CONNECTs (counted by Counters.connected)
REFUSED_FD_LIMIT = "connections_refused_fd_limit"  # at the open-files limit (engine/fdlimit.py)
DURABLE_LOST = "durable_writes_lost"  # unacknowledged durable writes dropped while Redis was away (#17)

# Auth failures and kicks carry a reason: the counter name is the prefix plus a fixed slug.
AUTH_FAILED_PREFIX = "auth_failed_"
KICKED_PREFIX = "kicked_"
# Refused CONNECTs whose address or username did not fit in a window's bounded failure tables.
FAILURES_UNTRACKED = "auth_failures_untracked"
# Default bound of the failure tables (metrics.max_failed_addresses); unknown usernames are cut to this
# many characters in them, so a table's memory is bounded too.
MAX_FAILED_DEFAULT = 10_000
FAILED_USERNAME_CHARS = 128

# Kick reasons (the slugs). Callers pass one of these, never free text: each becomes a label value.
KICK_USER_DELETED = "user_deleted"
KICK_USER_DISABLED = "user_disabled"
KICK_USER_EXPIRED = "user_expired"
KICK_DENIED_PUBLISH = "denied_publish"  # acl.deny_publish_action: disconnect
KICK_TAKEN_OVER = "taken_over"  # same client id connected again
KICK_OVER_QUOTA = "over_quota"  # events/bytes/rate quota with on_exceed: disconnect
KICK_SESSION_TIME = "session_time"
KICK_SLOW_CONSUMER = "slow_consumer"
KICK_BLOCKED = "blocked"
KICK_ADMIN = "admin"  # mqtt-guard kick
KICK_TOKEN_EXPIRED = "token_expired"  # the access token's exp passed (docs/tokens.md)
KICK_TOKEN_REVOKED = "token_revoked"  # mqtt-guard token revoke JTI
KICK_OTHER = "other"
KICK_REASONS = (
    KICK_USER_DELETED,
    KICK_USER_DISABLED,
    KICK_USER_EXPIRED,
    KICK_DENIED_PUBLISH,
    KICK_TAKEN_OVER,
    KICK_OVER_QUOTA,
    KICK_SESSION_TIME,
    KICK_SLOW_CONSUMER,
    KICK_BLOCKED,
    KICK_ADMIN,
    KICK_TOKEN_EXPIRED,
    KICK_TOKEN_REVOKED,
    KICK_OTHER,
)
# Free-text kick reasons (as the guard, the quota enforcer, the sidecar and `mqtt-guard kick` word them),
# recognised by their start: first match wins.
_KICK_PATTERNS = (
    ("denied publish", KICK_DENIED_PUBLISH),
    ("blocked", KICK_BLOCKED),
    ("session time", KICK_SESSION_TIME),
    ("slow consumer", KICK_SLOW_CONSUMER),
    ("rate ", KICK_OVER_QUOTA),
    ("events quota", KICK_OVER_QUOTA),
    ("bytes quota", KICK_OVER_QUOTA),
    ("over quota", KICK_OVER_QUOTA),
    ("kicked by an admin", KICK_ADMIN),
    ("taken over", KICK_TAKEN_OVER),
    ("take-over", KICK_TAKEN_OVER),
    ("access token expired", KICK_TOKEN_EXPIRED),
    ("access token revoked", KICK_TOKEN_REVOKED),
)

# Publish errors: the counters that mean "a PUBLISH of this client did not go through", and why.
PUBLISH_ERROR_REASONS = {DENIED_PUBLISH: "acl_denied", OVER_QUOTA: "over_quota", PUBLISH_TOO_LARGE: "too_large"}

# Per-client gauges: written to the client's stats hash with HSET when they change.
G_CONNECTED = "connected"  # 1 / 0
G_CONNECTED_SINCE = "connected_since"  # unix seconds of the current (or last) connection
G_DISCONNECTED_AT = "disconnected_at"
G_QUEUE_DEPTH = "queue_depth"  # messages waiting for the client (offline queue + in flight)
G_BROKER = "broker"  # the broker id the client is (or was last) connected to
G_USERNAME = "username"
G_LAST_SEEN = "last_seen"  # unix seconds of the last flush that carried a count for the client


def slug(text: str) -> str:
    """'user disabled' -> 'user_disabled': a reason as a counter-name suffix / label value."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


# CONNECTs refused after the password check by the quota rules (auth_failed_<reason>).
REFUSED_BLOCKED = "blocked"
REFUSED_TOO_MANY_SESSIONS = "too_many_sessions"
# ... and by the client id policy (auth/ownership.py)
REFUSED_CLIENT_ID_HELD = "client_id_held"
REFUSED_CLIENT_ID_PREFIX = "client_id_prefix"


def quota_refusal(message: str) -> str:
    """The auth-failure reason of a QuotaRefusal, from its message."""
    return REFUSED_TOO_MANY_SESSIONS if message.lower().startswith("too many sessions") else REFUSED_BLOCKED


def kick_reason(reason: str) -> str:
    """One of KICK_REASONS for a kick reason (a slug or the free text of a log line); unknown: 'other'."""
    r = slug(reason)
    if r in KICK_REASONS:
        return r
    text = reason.strip().lower()
    for start, slug_ in _KICK_PATTERNS:
        if text.startswith(start):
            return slug_
    return KICK_OTHER


def kick_name(reason: str) -> str:
    """Counter name of a kick; label sets stay bounded whatever the reason's wording."""
    return KICKED_PREFIX + kick_reason(reason)


def auth_failure_name(outcome: object) -> str:
    """Counter name of a refused CONNECT, from an auth Outcome (its enum name is a fixed set)."""
    name = getattr(outcome, "name", None)
    return AUTH_FAILED_PREFIX + slug(name if isinstance(name, str) else str(outcome))


@dataclass
class Drain:
    """Everything counted since the previous drain, ready to be added to Redis."""

    started: float  # wall clock of the start of the window these deltas were counted in
    ended: float
    clients: dict[tuple[str, str | None], dict[str, int]] = field(default_factory=dict)  # (client, user) -> deltas
    users: dict[str, dict[str, int]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, dict[str, str | int | float]] = field(default_factory=dict)  # client -> changed gauges
    # Connection events in order: ("connect", client, username, since) / ("disconnect", client, None, at)
    events: list[tuple[str, str, str | None, float]] = field(default_factory=list)
    # Refused CONNECTs per source address and per username (bounded: Counters.max_failed entries each)
    failed_addresses: dict[str, int] = field(default_factory=dict)
    failed_users: dict[str, int] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (
            self.clients
            or self.users
            or self.totals
            or self.gauges
            or self.events
            or self.failed_addresses
            or self.failed_users
        )


class Counters:
    def __init__(self, max_failed: int = MAX_FAILED_DEFAULT) -> None:
        self.max_failed = max_failed  # entries per window in each failure table (address, username)
        self.totals: defaultdict[str, int] = defaultdict(int)
        self.usernames: dict[str, str | None] = {}  # connected clients -> username (None: anonymous)
        self.connected_since: dict[str, float] = {}
        self.gauges: dict[str, dict[str, str | int | float]] = {}  # connected clients' current gauge values
        self.started = time.time()
        self.clients_maximum = 0
        # Deltas since the last drain per client id (the hot path); the username is looked up at drain.
        self._pending: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        # Deltas whose username is not the client's current one (refused CONNECTs, a client id taken
        # over by another user before the drain), per (client id, username).
        self._side: dict[tuple[str, str | None], dict[str, int]] = {}
        self._live: dict[str, dict[str, int]] = {}  # connected clients: counts drained since they connected
        self._flushed_totals: dict[str, int] = {}
        self._dirty_gauges: dict[str, dict[str, str | int | float]] = {}
        self._events: list[tuple[str, str, str | None, float]] = []
        self._gone: set[str] = set()
        self._window_start = time.time()
        # Refused CONNECTs since the last drain: per existing user (its counters), per address, per name.
        self._user_failed: dict[str, dict[str, int]] = {}
        self._failed_addresses: dict[str, int] = {}
        self._failed_users: dict[str, int] = {}

    # -- hot path ----------------------------------------------------------------------------------
    def incr(self, client_id: str | None, name: str, n: int = 1) -> None:
        self.totals[name] += n
        if client_id is not None:
            self._pending[client_id][name] += n

    # -- connection lifecycle (Guard.attach / Guard.detach) ------------------------------------------
    def connected(self, client_id: str, username: str | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        pending = self._pending.get(client_id)
        if pending and self.usernames.get(client_id, username) != username:
            self._set_aside(client_id, self.usernames.get(client_id), self._pending.pop(client_id))
        self.usernames[client_id] = username
        self.connected_since[client_id] = now
        self._gone.discard(client_id)
        self._live[client_id] = {}  # a new connection starts its live counts at zero
        self.gauges[client_id] = {}
        self._events.append(("connect", client_id, username, now))
        self.clients_maximum = max(self.clients_maximum, self.connected_count())
        self.incr(client_id, CONNECTS)

    def disconnected(self, client_id: str, now: float | None = None) -> None:
        if client_id not in self.usernames:
            return
        self._events.append(
            ("disconnect", client_id, self.usernames.get(client_id), time.time() if now is None else now)
        )
        self._gone.add(client_id)

    def auth_failed(self, username: str | None, outcome: object, *, known_user: bool, address: str | None) -> None:
        """A refused CONNECT. Never per client id (random ids would each make a Redis key); the broker
        total always counts it, the user's counters only for an existing user (a scanner trying random
        names creates no user keys), and the address and username go to the window's bounded failure
        tables (a name or address that does not fit counts in FAILURES_UNTRACKED)."""
        name = auth_failure_name(outcome)
        totals = self.totals
        totals[name] += 1
        if username is not None:
            if known_user:
                mine = self._user_failed.setdefault(username, {})
                mine[name] = mine.get(name, 0) + 1
            else:
                username = username[:FAILED_USERNAME_CHARS]
            if not _bump(self._failed_users, username, self.max_failed):
                totals[FAILURES_UNTRACKED] += 1
        if address is not None and not _bump(self._failed_addresses, address, self.max_failed):
            totals[FAILURES_UNTRACKED] += 1

    def _set_aside(self, client_id: str, username: str | None, counts: dict[str, int]) -> None:
        side = self._side.setdefault((client_id, username), {})
        for k, v in counts.items():
            side[k] = side.get(k, 0) + v

    def set_gauge(self, client_id: str, name: str, value: str | int | float) -> None:
        """A per-client gauge of a connected client; written to Redis only when it changed."""
        current = self.gauges.get(client_id)
        if current is None:
            return
        if current.get(name) != value:
            current[name] = value
            self._dirty_gauges.setdefault(client_id, {})[name] = value

    # -- reading --------------------------------------------------------------------------------
    def client(self, client_id: str) -> dict[str, int]:
        """A client's counts in this process since it connected (until the drain after it left)."""
        out = dict(self._live.get(client_id, {}))
        for name, v in self._pending.get(client_id, {}).items():
            out[name] = out.get(name, 0) + v
        return out

    def total(self, name: str) -> int:
        return self.totals.get(name, 0)

    def connected_count(self) -> int:
        return len(self.usernames) - len(self._gone)

    # -- flushing ---------------------------------------------------------------------------------
    def drain(self, now: float | None = None) -> Drain:
        """Take the deltas since the last drain; forget the clients that disconnected before it."""
        now = time.time() if now is None else now
        out = Drain(started=self._window_start, ended=now)
        self._window_start = now
        pending, self._pending = self._pending, defaultdict(lambda: defaultdict(int))
        side, self._side = self._side, {}
        clients = out.clients
        for cid, counts in pending.items():
            live = self._live.get(cid)
            if live is not None:
                for name, v in counts.items():
                    live[name] = live.get(name, 0) + v
            clients[(cid, self.usernames.get(cid))] = dict(counts)
        for key, extra in side.items():
            mine = clients.get(key)
            if mine is None:
                clients[key] = extra
            else:
                for name, v in extra.items():
                    mine[name] = mine.get(name, 0) + v
        # the refused CONNECTs of existing users first (taken over: no copy), then the clients' counts
        users, self._user_failed = self._user_failed, {}
        for (_, user), client_counts in clients.items():
            if user is not None:
                u = users.setdefault(user, {})
                for name, v in client_counts.items():
                    u[name] = u.get(name, 0) + v
        out.users = users
        for name, value in self.totals.items():
            delta = value - self._flushed_totals.get(name, 0)
            if delta:
                out.totals[name] = delta
                self._flushed_totals[name] = value
        out.gauges, self._dirty_gauges = self._dirty_gauges, {}
        out.events, self._events = self._events, []
        out.failed_addresses, self._failed_addresses = self._failed_addresses, {}
        out.failed_users, self._failed_users = self._failed_users, {}
        gone, self._gone = self._gone, set()
        for cid in gone:
            self.usernames.pop(cid, None)
            self.connected_since.pop(cid, None)
            self.gauges.pop(cid, None)
            self._live.pop(cid, None)
            out.gauges.pop(cid, None)  # a gauge change after the disconnect no longer matters
        return out


def _bump(table: dict[str, int], key: str, limit: int) -> bool:
    """Count `key` in a table of at most `limit` entries; False when it is full and `key` is not in it."""
    n = table.get(key)
    if n is None:
        if len(table) >= limit:
            return False
        n = 0
    table[key] = n + 1
    return True
