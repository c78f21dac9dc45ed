"""The Redis key schema: every key mqtt-guard reads or writes is named here and nowhere else.

`docs/redis-schema.md` documents the same schema for admins who use `redis-cli`. A key is always
`<prefix><name>`; the prefix (default ``mqg:``) lets several deployments share one Redis and lets
the invalidation listener subscribe to exactly our keys.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "mqg:"

# Fields of the user hash.
USER_PASSWORD = "password"
USER_SUPERUSER = "superuser"
USER_DISABLED = "disabled"
USER_EXPIRES_AT = "expires_at"

# ACL subject kinds; the subject key is "user:<name>", "group:<name>", "pattern" or "anonymous".
SUBJECT_PATTERN = "pattern"
SUBJECT_ANONYMOUS = "anonymous"


def user_subject(username: str) -> str:
    return f"user:{username}"


def group_subject(group: str) -> str:
    return f"group:{group}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix. Cheap to build; callers keep one per store."""

    prefix: str = DEFAULT_PREFIX

    # -- users -------------------------------------------------------------------------------
    def user(self, username: str) -> str:
        return f"{self.prefix}user:{username}"

    def user_groups(self, username: str) -> str:
        return f"{self.prefix}user:{username}:groups"

    def user_pattern(self) -> str:
        """SCAN pattern that lists user hashes (and, filtered out by the caller, group sets)."""
        return f"{self.prefix}user:*"

    def username_of(self, key: str) -> str | None:
        """Inverse of `user()`; None for any other key (including `:groups` sets)."""
        head = f"{self.prefix}user:"
        if not key.startswith(head):
            return None
        rest = key[len(head) :]
        if rest.endswith(":groups"):
            return None
        return rest

    def groups_user_of(self, key: str) -> str | None:
        """Inverse of `user_groups()`; None for any other key."""
        head = f"{self.prefix}user:"
        if key.startswith(head) and key.endswith(":groups"):
            return key[len(head) : -len(":groups")]
        return None

    # -- ACLs --------------------------------------------------------------------------------
    def acl(self, subject: str) -> str:
        """ACL hash of a subject key ("user:alice", "group:ops", "pattern", "anonymous")."""
        return f"{self.prefix}acl:{subject}"

    def acl_subject_of(self, key: str) -> str | None:
        head = f"{self.prefix}acl:"
        return key[len(head) :] if key.startswith(head) else None

    # -- quotas, sessions, audit (quota and sidecar issues) ----------------------------------
    def quota_user(self, username: str) -> str:
        return f"{self.prefix}quota:user:{username}"

    def quota_default(self) -> str:
        return f"{self.prefix}quota:default"

    def audit(self) -> str:
        return f"{self.prefix}audit"

    def quota_usage(self, username: str, metric: str, window_start: int) -> str:
        """HASH: usage of one metric ("events"/"bytes") of a user in the window starting at
        `window_start` (unix seconds): `used`, `gen`, per-broker `spent:<b>`/`lease:<b>`/`refused:<b>`."""
        return f"{self.prefix}quota:usage:{username}:{metric}:{window_start}"

    def quota_reset(self, username: str) -> str:
        """STRING written by `quota reset`: its change tells brokers (tracked prefix) to resync the user."""
        return f"{self.prefix}quota:reset:{username}"

    def quota_user_of(self, key: str) -> str | None:
        """The username of a `quota:user:<u>` or `quota:reset:<u>` key, else None."""
        for head in (f"{self.prefix}quota:user:", f"{self.prefix}quota:reset:"):
            if key.startswith(head):
                return key[len(head) :]
        return None

    # -- plans, APIs, metering (issue 19; quota/plans.py, quota/apis.py, quota/meter.py) ------------
    def quota_plan(self, name: str) -> str:
        """HASH: a plan, the fields of a quota hash (`quota set`) applied to the users on it."""
        return f"{self.prefix}quota:plan:{name}"

    def quota_group(self, group: str) -> str:
        """HASH: a group's quota settings; field `plan`: the plan of the group's users."""
        return f"{self.prefix}quota:group:{group}"

    def quota_apis(self) -> str:
        """HASH API name -> JSON list of its topic filters (`mqtt-guard api add`)."""
        return f"{self.prefix}quota:apis"

    def plan_of(self, key: str) -> str | None:
        """The plan name of a `quota:plan:<name>` key, else None."""
        head = f"{self.prefix}quota:plan:"
        return key[len(head) :] if key.startswith(head) else None

    def usage_month(self, username: str, month: str) -> str:
        """HASH: metered usage of a user in one UTC month (`YYYY-MM`): field `<DD>:<api>:<ei|bi|eo|bo>`
        (api empty: all traffic) -> events or bytes in or out; kept 400+ days (quota/meter.py)."""
        return f"{self.prefix}usage:{month}:{username}"

    def usage_month_pattern(self, month: str) -> str:
        """SCAN pattern of every user's usage hash of one month (`usage export`)."""
        return f"{self.prefix}usage:{glob_escape(month)}:*"

    def usage_batch(self, broker_id: str, seq: int) -> str:
        """STRING with a TTL: a broker's metering batch `seq` was applied (a retried batch is not counted twice)."""
        return f"{self.prefix}usage:batch:{broker_id}:{seq}"

    def block_user(self, username: str) -> str:
        """HASH (reason, until, by, at) with a TTL: the user's CONNECTs get CONNACK 5 until it expires."""
        return f"{self.prefix}block:user:{username}"

    def block_client(self, client_id: str) -> str:
        """HASH like `block_user`, for one client id."""
        return f"{self.prefix}block:client:{client_id}"

    def blocks_head(self) -> str:
        """Prefix of every block key: brokers track it (client-side caching) and scan it at start."""
        return f"{self.prefix}block:"

    def session(self, client_id: str) -> str:
        """HASH: a connected client (broker, conn, username, since, queue depth, usage)."""
        return f"{self.prefix}session:{client_id}"

    def user_sessions(self, username: str) -> str:
        """HASH client id -> broker id: the connected clients of a user, across brokers."""
        return f"{self.prefix}sessions:user:{username}"

    def user_session_slots(self, username: str) -> str:
        """HASH `lease:<broker>` -> session slots the broker reserved for the user (counted against
        `sessions` like registered connections; docs/quotas.md "Sessions")."""
        return f"{self.prefix}sessions:slots:{username}"

    def brokers(self) -> str:
        """ZSET broker id -> unix ms after which the broker counts as dead unless it heartbeats again."""
        return f"{self.prefix}brokers"

    def broker(self, broker_id: str) -> str:
        """HASH: what a broker process reports about itself (host, pid, started, heartbeat) and its
        fencing `epoch` (every session and lease write of the broker checks it)."""
        return f"{self.prefix}broker:{broker_id}"

    def broker_epochs(self) -> str:
        """STRING counter: the last fencing epoch given to a broker registration (INCR)."""
        return f"{self.prefix}brokers:epoch"

    def broker_reaped(self, broker_id: str) -> str:
        """STRING `<by>|<unix ms>` with a TTL: who declared the broker dead, for its own ERROR line when it
        finds itself fenced (docs/quotas.md "Liveness and fencing")."""
        return f"{self.prefix}broker:{broker_id}:reaped"

    def broker_sessions(self, broker_id: str) -> str:
        """SET of the client ids a broker registered (checked against `session()` before use)."""
        return f"{self.prefix}broker:{broker_id}:sessions"

    def broker_leases(self, broker_id: str) -> str:
        """SET of the `quota_usage` keys in which a broker holds a lease."""
        return f"{self.prefix}broker:{broker_id}:leases"

    def kick_queue(self, broker_id: str) -> str:
        """LIST of kick requests (JSON) for one broker; the broker pops them with BLPOP."""
        return f"{self.prefix}kick:{broker_id}"

    def sidecar_due(self) -> str:
        """ZSET client id -> unix seconds at which the sidecar looks at the session next: its next
        deadline (`session_time` end, `expires_at`, `queue_grace` end), or the time of an event (a
        connect, a queue crossing `max_queue`); docs/quotas.md "How the sidecar finds work"."""
        return f"{self.prefix}sidecar:due"

    def sidecar_leader(self) -> str:
        """STRING with a TTL: the id of the sidecar that currently evaluates sessions."""
        return f"{self.prefix}sidecar:leader"

    # -- the cluster: routing between brokers (mqtt_guard/store/cluster.py, docs/scaling.md) ----------
    # The routing keys share the hash tag `{routes}` so that the publication script touches one slot of
    # a Redis Cluster (issue 18 item 5); each inbox is a key of its own (single-key commands only).
    def cluster_routes(self) -> str:
        """STREAM of filter-set publications (`seq`, `b` broker, `kind` full/delta/leave, `add`, `del`:
        entries joined with NUL), capped (MAXLEN ~): how every broker learns of the others' changes."""
        return f"{self.prefix}cluster:{{routes}}"

    def cluster_routes_seq(self) -> str:
        """STRING counter: the `seq` of the last publication (a reader that sees a gap resyncs whole)."""
        return f"{self.prefix}cluster:{{routes}}:seq"

    def cluster_members(self) -> str:
        """SET of the broker ids that published a filter set."""
        return f"{self.prefix}cluster:{{routes}}:members"

    def cluster_filters(self, broker_id: str) -> str:
        """HASH entry -> "1": the deduplicated subscription filters (and `$share/G/F`) of one broker."""
        return f"{self.prefix}cluster:{{routes}}:filters:{broker_id}"

    def cluster_inbox(self, broker_id: str) -> str:
        """STREAM of messages forwarded to one broker: one entry per sender and event-loop iteration
        (`o` origin broker, `s` sequence per origin and destination, `m` the packed messages), capped."""
        return f"{self.prefix}cluster:inbox:{broker_id}"

    # -- login throttling and bans (mqtt_guard/store/bans.py, mqtt_guard/auth/throttle.py) -------
    def ban(self, ban_id: str) -> str:
        """HASH (reason, by, at, failures, kick) with a TTL (none: until `unban`): a ban in force. Ids:
        `net:<cidr>` (`mqtt-guard ban`), `addr:<address>` (automatic, too many failed logins),
        `user:<address> <username>` (automatic, too many failed logins of one username). Brokers track
        the prefix (client-side caching) and SCAN it at start."""
        return f"{self.prefix}ban:{ban_id}"

    def bans_head(self) -> str:
        return f"{self.prefix}ban:"

    def ban_id_of(self, key: str) -> str | None:
        head = self.bans_head()
        return key[len(head) :] if key.startswith(head) else None

    def throttle_addr(self, address: str) -> str:
        """STRING: failed logins from an address (all brokers) in the window that started with the first
        one; expires with the window (`auth.throttle.window`)."""
        return f"{self.prefix}throttle:addr:{address}"

    def throttle_user(self, address: str, username: str) -> str:
        """STRING like `throttle_addr`, for one username from one address (a space between the two)."""
        return f"{self.prefix}throttle:user:{address} {username}"

    def throttle_head(self) -> str:
        return f"{self.prefix}throttle:"

    # -- the generation marker (mqtt_guard/store/generation.py) ---------------------------------
    def generation(self) -> str:
        """STRING (JSON: token, created, adopted, by): which data set this Redis holds; brokers track it."""
        return f"{self.prefix}generation"

    def schema(self) -> str:
        """STRING (an integer): the version of this key layout (store/schema.py); missing means 1."""
        return f"{self.prefix}schema"

    # -- analytics (mqtt_guard/store/stats.py, docs/analytics.md) --------------------------------
    def stats_client(self, client_id: str) -> str:
        """HASH: a client's counters (HINCRBY, all brokers) and gauges (connected, queue_depth, ...)."""
        return f"{self.prefix}stats:client:{client_id}"

    def stats_user(self, username: str) -> str:
        """HASH: the counters of all clients of a user, added up."""
        return f"{self.prefix}stats:user:{username}"

    def stats_total(self) -> str:
        """HASH: the counters of every broker, added up."""
        return f"{self.prefix}stats:total"

    def stats_broker(self, broker_id: str) -> str:
        """HASH: one broker's counters (summed over its restarts) and heartbeat fields."""
        return f"{self.prefix}stats:broker:{broker_id}"

    def stats_brokers(self) -> str:
        """ZSET broker id -> unix seconds of its last stats heartbeat."""
        return f"{self.prefix}stats:brokers"

    def stats_rate(self, resolution: str, kind: str, direction: str, bucket: int) -> str:
        """ZSET member (client id, username or broker id) -> messages in one time bucket; expires with the history.

        resolution "10s" (kept 1 h) or "1m" (kept 24 h); kind "client"/"user"/"broker" (a broker's clients
        added up: the dashboard's deployment chart); direction "in"/"out";
        bucket: unix seconds of the bucket start."""
        return f"{self.prefix}stats:rate:{resolution}:{kind}:{direction}:{bucket}"

    def stats_failed(self, kind: str, day: int) -> str:
        """ZSET source address (kind "addr") or username (kind "user") -> refused CONNECTs on one UTC day
        (`day`: unix seconds of its midnight), at most `metrics.max_failed_addresses` members (a newcomer
        replaces the smallest: store/stats.py record 9); expires a week after the day ends."""
        return f"{self.prefix}stats:auth_failed:{kind}:{day}"

    def stats_tmp(self, name: str) -> str:
        """Short-lived scratch key of a read (e.g. `top`'s ZUNIONSTORE), deleted in the same transaction."""
        return f"{self.prefix}stats:tmp:{name}"

    # -- the admin API (mqtt_guard/store/tokens.py, docs/admin-api.md) ---------------------------
    def admin_token(self, digest: str) -> str:
        """HASH (name, read_only, created, by) of one admin API token, under the SHA-256 hex digest of the
        token: the token itself is never stored."""
        return f"{self.prefix}admin:token:{digest}"

    def admin_tokens(self) -> str:
        """HASH token name -> the digest of its token (`admin token list`, `revoke` by name)."""
        return f"{self.prefix}admin:tokens"

    def admin_session(self, digest: str) -> str:
        """HASH (token: the digest of the token it was opened with, csrf, created) of one dashboard session,
        under the SHA-256 hex digest of the session cookie; expires (store/tokens.py SESSION_TTL)."""
        return f"{self.prefix}admin:session:{digest}"

    # -- access tokens (mqtt_guard/store/revocations.py, docs/tokens.md) ---------------------------
    def revoked(self, jti: str) -> str:
        """STRING (who revoked it, when) of one revoked access token, by its `jti`, with a TTL when the
        revocation was given one (`token revoke --for`). Brokers track the prefix: a new key disconnects
        the token's connected clients at once."""
        return f"{self.prefix}revoked:{jti}"

    def revoked_head(self) -> str:
        return f"{self.prefix}revoked:"

    def jti_of(self, key: str) -> str | None:
        """Inverse of `revoked()`; None for any other key."""
        head = self.revoked_head()
        return key[len(head) :] if key.startswith(head) else None

    # -- durable state (issue 17; mqtt_guard/store/retained.py, docs/durability.md) --------------------
    def retained(self, topic: str) -> str:
        """STRING: the retained message of one topic (store/retained.py's encoding), with a PEXPIREAT
        when it has a Message Expiry Interval. One key per topic, so a change invalidates that topic
        alone at every broker (they track the prefix `retained_head()`)."""
        return f"{self.prefix}retained:m:{topic}"

    def retained_head(self) -> str:
        """Prefix of every retained message key: brokers track it and SCAN it at start."""
        return f"{self.prefix}retained:m:"

    def retained_topic_of(self, key: str) -> str | None:
        """Inverse of `retained()`; None for any other key."""
        head = self.retained_head()
        return key[len(head) :] if key.startswith(head) else None

    # -- persistent sessions (issue 17 item 2; mqtt_guard/store/sessions.py, docs/durability.md) ---------
    # Every key is per client id (the id can become a Redis Cluster hash tag, issue 18).
    def psession(self, client_id: str) -> str:
        """STRING: the persistent session record of a client id (durable/sessions.py's JSON), with a
        PEXPIREAT while the session is offline (its expiry)."""
        return f"{self.prefix}psession:r:{client_id}"

    def psession_head(self) -> str:
        """Prefix of every session record key (SCAN at start: the sessions this broker owns)."""
        return f"{self.prefix}psession:r:"

    def psession_messages(self, client_id: str) -> str:
        """HASH: the session's queued and in-flight messages (`m:<seq>`), its inbound QoS 2 packet ids
        (`i:<id>`), and the counters `~n` (messages) and `~b` (bytes); same expiry as the record."""
        return f"{self.prefix}psession:q:{client_id}"

    def psession_client_of(self, key: str) -> str | None:
        """Inverse of `psession()`; None for any other key."""
        head = self.psession_head()
        return key[len(head) :] if key.startswith(head) else None


def glob_escape(text: str) -> str:
    """`text` as a literal in a SCAN MATCH pattern (a prefix or name may hold `*?[]\\`)."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
