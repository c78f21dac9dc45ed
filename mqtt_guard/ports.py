"""The seams between the Guard (auth, ACL, quotas, analytics) and the engine (amqtt underneath), as
Protocols. Both sides import this module and never each other, so the services below the Guard stay
free of the broker and the broker free of the Guard's internals (issue 14)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .acl.rules import Perm
    from .auth.authenticator import AuthResult
    from .durable.retained import RetainedSet
    from .durable.session_journal import SessionJournal
    from .guard_client import GuardClient


class Kick(Protocol):
    """Close a client's connection from the server side: False when no such client was connected here.
    `code`: the MQTT 5 reason code of the DISCONNECT an MQTT 5 client is sent (mqtt_guard/reasons.py;
    default 0x98 Administrative action); a 3.1.1 client's socket is just closed."""

    def __call__(self, client_id: str, reason: str, code: int = ...) -> Awaitable[bool]: ...


Drop = Callable[[str, str], Awaitable[bool]]
"""Discard a client's session, connected or offline: (client id, reason) -> False when none here."""

Forget = Callable[[str, str], bool]
"""Forget an offline persistent session held in memory, without touching its stored copy (it was resumed
on another broker): (client id, by) -> False when no such offline session here."""


class QueueDepths(Protocol):
    """What the engine holds for each session, read by the quota heartbeat (slow consumers) and by
    the analytics (queue-depth gauges)."""

    def queue_depth(self, client_id: str) -> tuple[int, int]:
        """(messages, bytes) held for one session: queued plus sent-but-unacknowledged; (0, 0) if none."""
        ...

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """queue_depth of every session the engine holds, connected or offline-persistent."""
        ...


class Engine(QueueDepths, Protocol):
    """The broker as the Guard sees it: it can disconnect a client and report queue depths."""

    async def kick(self, client_id: str, reason: str, code: int = ...) -> bool:
        """Close a client's connection; `code`: the MQTT 5 DISCONNECT reason (see `Kick`)."""
        ...

    def forget_session(self, client_id: str, by: str) -> bool:
        """Forget an offline session held here (resumed on broker process `by`); False: none here."""
        ...

    async def drop_session(self, client_id: str, reason: str) -> bool:
        """Discard a client's session, connected (disconnected first) or offline; False: none here."""
        ...


# -- what the engine asks of the Guard -------------------------------------------------------------
# The engine decides nothing about identity, permissions or quotas itself: it calls these directly (not
# through amqtt's plugin manager), on the hot path without Redis calls. `Guard` satisfies `GuardPort`
# structurally; the quota types below are what its quota enforcer hands out (quota/).


class Counting(Protocol):
    """The per-client counters the engine adds to (metrics/counters.py)."""

    def incr(self, client_id: str | None, name: str, n: int = 1) -> None: ...

    def auth_failed(self, username: str | None, outcome: object, *, known_user: bool, address: str | None) -> None:
        """A refused CONNECT (never per client id; per user only for existing users; per source address)."""
        ...


class Stretch(Protocol):
    """The quota reservation of one synchronous run of a connection's reader (quota/stretch.py). While
    `pub_ok`, the run's PUBLISHes are prepaid and the engine only counts them in `n`/`b`."""

    pub_ok: bool
    n: int
    b: int


class DeliveryGroup(Protocol):
    """The quota accounting of one message to a fixed set of receivers (one spend per user)."""

    stretch: Stretch | None  # the run it is reserved in, if any
    ok: bool  # reserved in `stretch`: the engine only counts deliveries in `n`/`b`
    n: int
    b: int

    def current(self) -> bool:
        """False: limits or receivers changed since it was made; make a new group."""
        ...

    def reserve(self, st: Stretch) -> bool:
        """Reserve the receivers' side for the whole run of `st` (then `ok`)."""
        ...

    def admit(self, topic: str, payload_len: int) -> set[str] | None:
        """Spend one delivery for each receiver: None when all may have it, else the client ids refused."""
        ...


class Versioned(Protocol):
    @property
    def version(self) -> int:
        """Bumped whenever a decision the engine may have cached can change."""
        ...


class AclView(Protocol):
    @property
    def policy(self) -> Versioned: ...


class GuardPort(Protocol):
    """The Guard as the engine sees it (engine/broker.py is its only caller)."""

    @property
    def counters(self) -> Counting: ...

    @property
    def acl(self) -> AclView:
        """`acl.policy.version` changes when ACL rules or a client's subject change."""
        ...

    @property
    def acl_epoch(self) -> int:
        """Changes when file-backed ACL sources reload (SIGHUP)."""
        ...

    @property
    def retained(self) -> RetainedSet:
        """The retained messages (durable/retained.py): the engine's only retained store."""
        ...

    @property
    def session_journal(self) -> SessionJournal | None:
        """Persistent sessions in Redis (durable/session_journal.py); None: memory only."""
        ...

    async def authenticate(
        self,
        *,
        username: str | None,
        password: str | None,
        cert_identity: str | None = None,
        identity_as_username: bool = False,
        listener: Any = None,
        address: str | None = None,
        bearer: Any = None,
    ) -> AuthResult:
        """A CONNECT's verdict (bans of `address`, the client's source address; file-backed backends;
        then Redis). `bearer`: the access token verified at its websockets upgrade."""
        ...

    async def verify_bearer(self, token: str | None, address: str | None = None) -> tuple[Any, int, str]:
        """A websockets upgrade's bearer token: (the verified token, 0, "") or (None, HTTP status, reason)."""
        ...

    async def attach(
        self,
        client_id: str,
        result: AuthResult,
        listener: str = "",
        listener_config: Any = None,
        address: str | None = None,
    ) -> GuardClient:
        """Register an admitted client before its CONNACK; raises QuotaRefusal (blocked, too many sessions) or
        ClientIdHeld (another broker holds the client id for another identity). `address`: its source
        address (a ban with `--kick` disconnects by it)."""
        ...

    def detach(self, client: GuardClient) -> None: ...

    def may(self, client: GuardClient, action: Perm, topic: str) -> bool:
        """The ACL decision (counted and logged when it denies)."""
        ...

    def admit_publish(self, client: GuardClient, topic: str, payload_len: int, qos: int) -> bool:
        """Quota of an inbound PUBLISH the ACL allowed: False drops it."""
        ...

    def admit_delivery(self, client: GuardClient, topic: str, payload_len: int) -> bool:
        """Quota of one delivery the RECEIVE ACL allowed: False withholds it."""
        ...

    def delivery_group(self, clients: list[GuardClient], topic: str = "") -> DeliveryGroup: ...

    def open_stretch(self, client: GuardClient | None, remaining: int) -> Stretch | None:
        """Quota reservation for the reader's synchronous run over `remaining` bytes (None: too small)."""
        ...

    def settle_stretch(self, st: Stretch) -> None:
        """Spend what the run carried; before the reader awaits anything."""
        ...

    def bind_engine(self, engine: Engine) -> None: ...

    def session_moved(self, proc: str, client_id: str) -> None:
        """A stored session owned by broker process `proc` was resumed here: that broker forgets its copy."""
        ...
