"""GuardedBroker: amqtt's Broker with the connection path, routing and delivery made safe.

This module (with handler.py, queues.py and protocol.py next to it) is the only place that touches
amqtt internals. What it changes in amqtt 0.12.1 and why (docs/engine.md has the full list):
- CONNECT is read whole within `limits.connect_timeout` and validated strictly: MQTT 5, 3.1.1 and
  3.1 (MQIsdp, as mosquitto) are served (amqtt hung on an MQTT 5 CONNECT with credentials), invalid
  UTF-8 or flags close the connection with a log line. MQTT 5 clients get the v5 form of every packet
  and the properties of their messages (docs/protocol.md); a 3.1.1 subscriber of an MQTT 5
  publisher gets the plain message, and the reverse.
- Authentication runs before anything touches `_sessions`. amqtt deleted or overwrote an existing
  client's session while parsing the CONNECT, so a failed login with a victim's client id could
  silence or kick the victim. A refused CONNECT gets CONNACK with session-present 0 and leaves no
  trace in broker state.
- `max_connections` refuses the extra connection instead of parking it without a CONNACK.
- No retained messages at CONNECT (amqtt sent every retained message matching any client's
  subscription to every new client); retained messages on SUBSCRIBE pass the RECEIVE check.
- Inbound PUBLISH is routed in the publisher's reader, in order, before its PUBACK and before a later
  DISCONNECT is read (amqtt discarded a disconnecting publisher's unrouted backlog, PUBACKed QoS 1
  included). Delivery QoS is min(published, granted); overlapping subscriptions of one client get
  one copy at the highest granted QoS (as mosquitto).
- Deliveries go into a bounded per-session queue (engine/queues.py) drained by one writer loop per
  connection: no Task per delivery, and a stalled subscriber costs at most its queue limits.
- Persistent sessions (clean_session 0, or an MQTT 5 Session Expiry Interval; anonymous ones too) keep
  subscriptions, queued QoS 1/2 and unacknowledged messages while offline, for their expiry (one rule
  for both levels: `session_info.session_expiry`); they are re-sent with DUP on reconnect.
- The Guard decides identity, permissions and quotas; the broker asks it directly through its port
  (`ports.GuardPort`: authenticate, attach, may, admit_*), not through amqtt's plugin manager.
  Third-party amqtt plugins (the `plugins:` config) still run after the Guard: auth plugins must
  agree, topic plugins must allow.
- Plugin exceptions deny that one check (logged, counted), never the connection or other deliveries.
- Shutdown stops accepting, flushes queued deliveries for a short while, closes every connection
  once, publishes no wills, and returns.

One path per packet: every PUBLISH is decided by `publish` (the reader's synchronous route, and the
awaited `handle_publish` around it), every delivery by `_fanout`, every topic check by `_check_sync`.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import math
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import websockets
from amqtt.adapters import BufferReader, ReaderAdapter, StreamReaderAdapter, WriterAdapter
from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action, ListenerType
from amqtt.contexts import ListenerConfig as AmqttListenerConfig
from amqtt.events import BrokerEvents, MQTTEvents
from amqtt.mqtt.connect import ConnectPacket
from amqtt.session import IncomingApplicationMessage
from amqtt.utils import gen_client_id
from transitions import MachineError

from ..acl.rules import Perm
from ..acl.topics import topic_matches
from ..auth import ownership
from ..auth.authenticator import CONNACK_NOT_AUTHORIZED, CONNACK_SERVER_UNAVAILABLE
from ..auth.tls import certificate_identity
from ..config import GuardConfig, ListenerConfig
from ..durable.sessions import CorruptSession, SessionRecord, StoredSession, StoredSubscription, StoredWill
from ..logutil import RateLimitedLog
from ..logutil import info as log_info
from ..metrics import counters as C
from ..quota.enforcer import ClientIdHeld, QuotaRefusal
from ..reasons import (
    DENIED_PUBLISH,
    KICKED,
    PUBLISH_DENIED,
    PUBLISH_OVER_QUOTA,
    REFUSED_BY_PLUGIN,
    SHUTDOWN,
    SUBSCRIBE_DENIED,
    TAKEN_OVER,
    USE_ANOTHER_SERVER,
    V5_CONNACK,
    Reason,
    connack_311,
    connack_reason,
    reason_string,
)
from . import mqtt5, remote
from .deadlines import Deadlines, Wheel
from .durable import DurableQueue, is_durable
from .handler import READ_CHUNK, GuardedHandler, Held, NotStored
from .mqtt5 import Client5, Message5, Sub5
from .packets import MQTT5, NO_LOCAL, RETAIN_AS_PUBLISHED, RETAIN_HANDLING, ConnectInfo, parse_connect
from .protocol import (
    CONNECT,
    TYPE_NAMES,
    Incomplete,
    ProtocolViolation,
    check_topic_levels,
    encode_connack,
    encode_publish,
    encode_remaining_length,
    encode_suback,
    parse_fixed_header,
    too_large,
)
from .proxy_listener import ProxyListener, trusted_networks
from .proxy_ws import ProxiedWebSocket
from .queues import OutQueue
from .routing import TopicTrie
from .session_info import GuardedSession, queue_of, session_expiry
from .shared import SHARE_PREFIX, ShareGroup, parse_share
from .transport import MqttStream, TcpReader, serving_as
from .ws_upgrade import UpgradeCheck

if TYPE_CHECKING:
    from ..auth.authenticator import AuthResult
    from ..cluster import Cluster, RemoteMessage
    from ..guard_client import GuardClient
    from ..ports import DeliveryGroup, GuardPort, Stretch

log = logging.getLogger("mqtt_guard.broker")
plugin_log = RateLimitedLog(logging.getLogger("mqtt_guard.plugins"))
queue_log = RateLimitedLog(logging.getLogger("mqtt_guard.broker"))
# A client retrying a refused CONNECT every second writes one line a minute (with the count held back),
# not one per attempt.
refusal_log = RateLimitedLog(logging.getLogger("mqtt_guard.broker"))
withheld_log = RateLimitedLog(logging.getLogger("mqtt_guard.acl"))  # per client and subscription filter

# The Guard's own auth and ACL plugins of earlier versions: the broker asks the Guard directly now, so a
# config that still names them loads nothing for them.
BUILT_IN_PLUGINS = frozenset({"mqtt_guard.plugins.auth.GuardAuthPlugin", "mqtt_guard.plugins.acl.GuardAclPlugin"})
SYS_PLUGIN = "mqtt_guard.plugins.sys.GuardSysPlugin"  # loaded by every broker (amqtt_config)
PERMS = {Action.PUBLISH: Perm.PUBLISH, Action.SUBSCRIBE: Perm.SUBSCRIBE, Action.RECEIVE: Perm.RECEIVE}
SUBACK_FAILURE = 0x80
SHUTDOWN_FLUSH = 3.0  # seconds a shutdown waits for queued deliveries to reach the clients
ROUTE_CACHE = 65536  # topics whose RECEIVE targets are cached
PUB_CACHE = 1024  # PUBLISH topics whose ACL decision a connection remembers
CONNECT_DEADLINE_TICK = 0.25  # s: connect_timeout is enforced within this (one shared timer, none per socket)
WILL_TICK = 0.25  # s: a delayed will goes out within this after its Will Delay Interval (one wheel for all)


def amqtt_config(config: GuardConfig) -> dict[str, Any]:
    """Translate our validated config into the dict amqtt's strict BrokerConfig accepts."""
    listeners: dict[str, Any] = {}
    for i, listener in enumerate(config.listeners):
        name = "default" if i == 0 else f"listener{i}"
        tls = bool(listener.certfile)
        entry: dict[str, Any] = {
            "type": "ws" if listener.type == "websockets" else "tcp",
            "bind": listener.bind,
            "ssl": tls,
        }
        if tls:
            entry.update(certfile=listener.certfile, keyfile=listener.keyfile)
            if listener.cafile:
                entry["cafile"] = listener.cafile
        listeners[name] = entry
    plugins = {k: v or {} for k, v in config.plugins.items() if k not in BUILT_IN_PLUGINS}
    # $SYS/broker/... is published by default, as mosquitto does (`metrics.sys_interval: 0` turns the
    # topics off); the plugin also samples sessions, subscriptions and queues for the /metrics gauges.
    plugins.setdefault(SYS_PLUGIN, {})
    return {"listeners": listeners, "plugins": plugins}


Target = tuple[OutQueue, int, "GuardClient | None", str]
"""One receiver of a topic that passed the RECEIVE check: its queue, its highest granted QoS among the
matching filters, its guard client, its client id. (A plain tuple: unpacking one per delivery is
specialised by CPython only for exact tuples; a NamedTuple cost 15 % on fan-out.)"""
Target5 = tuple[OutQueue, int, "GuardClient | None", str, Sub5]
"""An MQTT 5 receiver: a Target and the options of its subscriptions that match the topic. (Kept in a
list of their own, so the 3.1.1 fan-out loop is the one it was: no test of the level per delivery.)"""


Member = tuple[str, "GuardedSession", int, int, int]
"""One member of a shared subscription group: client id, session, granted QoS, options byte, subscription
identifier (0: none)."""

SharedTarget = tuple[OutQueue, int, "GuardClient | None", str, "Sub5 | None"]
"""A shared subscription member as a receiver: a Target and, for an MQTT 5 member, its options."""

Share = tuple[ShareGroup[Member], dict[str, SharedTarget]]
"""A shared subscription group matching a topic, with its members that passed the RECEIVE check for it."""


def _any_member(_: Member) -> bool:
    return True


def _queued(target_of: Member) -> int:
    """least_loaded: a member's queued and unacknowledged messages."""
    queue = target_of[1].out_queue
    return queue.depth()[0] if queue is not None else 0


class Route:
    """The receivers of one topic, cached per topic while subscriptions, sessions and ACL decisions stay:
    the targets that passed the RECEIVE check, the client ids it withheld (still counted per message),
    the quota's DeliveryGroup of the targets' guard clients (replaced when no longer current), and the
    shared subscription groups the topic matches (one member of each is chosen per message), and whether
    any subscription matches it at all (`matched`, for MQTT 5's 0x10 No matching subscribers: a subscriber
    withheld by the ACL, offline or over its quota still counts, as in mosquitto)."""

    __slots__ = ("targets", "targets5", "withheld", "group", "shares", "matched")

    def __init__(
        self,
        targets: list[Target],
        withheld: list[str],
        group: DeliveryGroup | None,
        targets5: list[Target5],
        shares: list[Share] | None = None,
        matched: bool = True,
    ) -> None:
        self.targets = targets  # 3.1.1 and 3.1 receivers
        self.targets5 = targets5  # MQTT 5 receivers
        self.withheld = withheld
        self.group = group
        self.shares = shares
        self.matched = matched


class ClientIdRefused(Exception):
    """A CONNECT refused by the client id policy (auth/ownership.py), already logged and counted; `code` is
    the MQTT 5 CONNACK reason (mqtt_guard/reasons.py)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Ended:
    """Set when a connection has ended: what a take-over, a drain and a shutdown wait for. An
    `asyncio.Event` per connection carried a deque for its waiters (~0.76 KB per idle connection, issue 15
    item 4); here the Future is made only when something waits."""

    __slots__ = ("ended", "_waiter")

    def __init__(self) -> None:
        self.ended = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self.ended

    def set(self) -> None:
        self.ended = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        if self.ended:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():  # (done: cancelled by a waiter before; shielded since)
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)  # a cancelled waiter (a timed-out take-over) leaves it to the others


class PendingWill:
    """A will waiting out its Will Delay Interval (MQTT 5 3.1.3.2.2) while its session is offline: one
    entry on the broker's will wheel (engine/deadlines.py), no timer or Task of its own. `due` hands it
    back to the broker, which publishes it unless the session was resumed meanwhile."""

    __slots__ = ("session", "slot", "_due")

    def __init__(self, session: GuardedSession, due: Callable[[PendingWill], None]) -> None:
        self.session = session
        self.slot = 0
        self._due = due

    def due(self) -> None:
        self._due(self)


# `publish(..., awaited=True)`: admitted, the caller routes (never mutated)
_ADMITTED: list[asyncio.Event] = []


class GuardedBroker(Broker):  # type: ignore[misc]  # amqtt has no type information
    def __init__(
        self,
        config: GuardConfig,
        guard: GuardPort,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        reuse_port: bool = False,
    ) -> None:
        """`reuse_port`: this broker is one of `--workers` processes sharing its listeners' ports
        (SO_REUSEPORT: the kernel spreads new connections over them)."""
        self.guard = guard  # set before amqtt builds the plugins: GuardSysPlugin looks it up at init (guard_of)
        self.guard_config = config
        self.reuse_port = reuse_port
        self._guard_listeners: dict[str, ListenerConfig] = {}
        self._connections: dict[str, Ended] = {}  # client id -> set when its connection has ended
        self._shutting_down = False  # listeners closed: CONNECTs are refused (a drain may follow)
        self._closing = False  # connections are being closed: flush what is queued, no wills
        self._drain_cut = asyncio.Event()
        self._shutdown_deadline = 0.0
        self._upgrades: dict[str, UpgradeCheck] = {}  # listener name -> its secured websockets upgrade
        super().__init__(amqtt_config(config), loop=loop)
        guard.bind_engine(self)  # kicks, and the queue depths the quota heartbeat and the metrics read
        for (name, theirs), ours in zip(self.listeners_config.items(), config.listeners, strict=True):
            self._guard_listeners[name] = ours
            # amqtt copies the default listener's fields into the others ("apply"); undo that. (A tcp
            # listener after a websockets first one had become a websockets server: its type is tcp,
            # amqtt's default, so it was "not set".)
            theirs.type = ListenerType.WS if ours.type == "websockets" else ListenerType.TCP
            theirs.ssl = bool(ours.certfile)
            theirs.max_connections = 0  # we refuse over-limit connections ourselves
        # Third-party topic checks, after the Guard's, in call order; a synchronous `check` is used if offered
        self._topic_checks = [(p, getattr(p, "check", None)) for p in self.plugins_manager._topic_plugins]  # noqa: SLF001 - amqtt's plugin lists
        events = self.plugins_manager._event_plugin_callbacks  # noqa: SLF001 - amqtt's plugin lists
        self._fire_msg_received = bool(events.get(BrokerEvents.MESSAGE_RECEIVED))
        self._fire_msg_broadcast = bool(events.get(BrokerEvents.MESSAGE_BROADCAST))
        self._fire_connect_received = bool(events.get(MQTTEvents.PACKET_RECEIVED))
        # amqtt's fire_event returns at once when nobody listens, but a coroutine per call is still made
        self._fire_connected = bool(events.get(BrokerEvents.CLIENT_CONNECTED))
        self._fire_disconnected = bool(events.get(BrokerEvents.CLIENT_DISCONNECTED))
        # Hot path (docs/performance.md). With only synchronous topic checks and nobody listening to
        # MESSAGE_RECEIVED/MESSAGE_BROADCAST, a PUBLISH is routed synchronously from the reader. With only
        # the Guard deciding (no third-party topic plugin), decisions are cached: PUBLISH per session and
        # topic, the RECEIVE targets per topic (`_routes`), both dropped when subscriptions, sessions or
        # ACL rules change.
        self._sync_checks = all(check is not None for _, check in self._topic_checks)
        self._cacheable = not self._topic_checks
        self.fast_publish = self._sync_checks and not self._fire_msg_received and not self._fire_msg_broadcast
        self._trie = TopicTrie()
        self._connect_deadlines = Deadlines(CONNECT_DEADLINE_TICK)
        self._filters_of: dict[str, set[str]] = {}  # client id -> its subscribed filters (in _subscriptions)
        self._routes: dict[str, Route] = {}
        self._policy = guard.acl.policy
        self._policy_version = self._policy.version
        self._guard_epoch = guard.acl_epoch
        self.acl_epoch = 0  # sessions' PUBLISH decision caches are valid while this is unchanged
        self._counters = guard.counters
        self._may = guard.may
        self._admit_publish = guard.admit_publish
        self._open_stretch = guard.open_stretch
        # The quota stretch of the reader acting on a chunk right now (opened and settled by the reader
        # around its synchronous run, `open_stretch`/`settle_stretch`; None whenever anything awaits).
        self._stretch: Stretch | None = None
        self._delivery_group = guard.delivery_group
        self._check_errors = 0
        # client id -> the identity its latest connection (in `_connections`) was admitted as (None: anonymous)
        self._holders: dict[str, str | None] = {}
        # client id -> (identity, how many CONNECTs) of CONNECTs admitted by the client id policy and not yet
        # in `_connections` (their attach, the auth plugins are awaited): the id is theirs meanwhile, so two
        # users sending CONNECT with one free id at once cannot both be attached
        self._claims: dict[str, tuple[str | None, int]] = {}
        # Who may use a client id (auth/ownership.py); not asked at all under "any" without prefixes
        self._id_policy = config.auth.client_id_policy
        self._id_prefixes = tuple(config.auth.client_id_prefixes)
        self._id_rule = self._id_policy != "any" or bool(self._id_prefixes)
        # MQTT 5 wrong/missing credentials: 0x86 (the specification) or 0x87 (mosquitto 2.0): auth.mqtt5_bad_credentials
        self._bad_credentials = (
            Reason.NOT_AUTHORIZED
            if config.auth.mqtt5_bad_credentials == "not_authorized"
            else Reason.BAD_USER_NAME_OR_PASSWORD
        )
        # limits.persistent_session_expiry: one heap of (deadline, client id) swept by `_session_monitor`, and
        # each offline session's current deadline (an entry of an earlier offline spell is skipped)
        self._session_expiry = config.limits.persistent_session_expiry
        self._expiry_heap: list[tuple[float, str]] = []
        self._expires: dict[str, float] = {}
        self._expiry_timer: asyncio.TimerHandle | None = None  # at the heap's first deadline
        # MQTT 5 wills waiting for their Will Delay Interval, per client id, on one wheel; the Tasks that
        # publish the ones that came due (held until done)
        self._wills: dict[str, PendingWill] = {}
        self._will_wheel: Wheel | None = None
        self._will_tasks: set[asyncio.Task[None]] = set()
        # MQTT 5: client id -> {filter: (subscription options byte, subscription identifier)} of its
        # subscriptions made at level 5
        self._sub5: dict[str, dict[str, tuple[int, int]]] = {}
        # Shared subscriptions (engine/shared.py): a group per (group name, filter); the groups of a filter
        self._shares: dict[tuple[str, str], ShareGroup[Member]] = {}
        self._shares_of: dict[str, list[ShareGroup[Member]]] = {}
        self._share_strategy = config.limits.shared_subscription_strategy
        # The retained messages (durable/retained.py): a local copy shared through Redis; amqtt's
        # `_retained_messages` is not used. A QoS 1/2 retained PUBLISH is acknowledged once written.
        self._retained = guard.retained
        self._retain_wait = config.limits.backpressure_max_stall or None
        self._fire_retained = bool(events.get(BrokerEvents.RETAINED_MESSAGE))
        # Persistent sessions in Redis (issue 17 item 2, engine/durable.py): None when durable state is off.
        # `_durable_acks`: the Redis writes of the message being routed that its publisher's ack waits for
        # (filled by DurableQueues, handed to the reader with the routing result)
        self._journal = guard.session_journal
        self._durable_acks: list[asyncio.Future[None]] = []
        # Offline sessions restored from Redis at start (`_load_owned_sessions`): no client has been admitted
        # for them yet, so messages are queued for them unchecked and filtered by the RECEIVE check of the
        # client that resumes them
        self._unchecked: set[str] = set()
        # client id -> the broker process that resumed its session while it was still connected here: when
        # the connection ends the session is forgotten here, not kept offline (`forget_session`)
        self._moved: dict[str, str] = {}
        # Set by `_fanout` when no subscription matched the message's topic (never cleared there: the MQTT 5
        # reader clears it before it routes a QoS 1/2 PUBLISH and reads it right after, for 0x10 in its ack)
        self.no_match = False
        # The other brokers (issue 18, engine/remote.py): None when this broker is alone by configuration
        self._cluster: Cluster | None = None
        self._remote_backlog: list[tuple[RemoteMessage, Message5 | None]] = []  # (awaited topic plugins)
        self._remote_task: asyncio.Task[None] | None = None

    # -- queue depth (for the slow-consumer policy) ----------------------------------------------
    def queue_depth(self, client_id: str) -> tuple[int, int]:
        """(messages, bytes) held for a session: queued plus sent-but-unacknowledged. (0, 0) if unknown."""
        entry = self._sessions.get(client_id)
        queue = queue_of(entry[0]) if entry is not None else None
        return queue.depth() if queue is not None else (0, 0)

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """queue_depth of every session the broker holds, connected or offline-persistent."""
        out: dict[str, tuple[int, int]] = {}
        for client_id, (session, _) in self._sessions.items():
            queue = queue_of(session)
            if queue is not None:
                out[client_id] = queue.depth()
        return out

    # -- listeners -----------------------------------------------------------------------------
    def _create_ssl_context(self, listener: AmqttListenerConfig) -> ssl.SSLContext:
        ours = next((self._guard_listeners[n] for n, cfg in self.listeners_config.items() if cfg is listener), None)
        context: ssl.SSLContext = super()._create_ssl_context(listener)
        if ours is not None and ours.require_certificate:
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    # -- connection path -----------------------------------------------------------------------
    async def _create_server_instance(
        self,
        listener_name: str,
        listener_type: ListenerType,
        address: str | None,
        port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> Any:
        """TCP and TLS listeners serve connections through `MqttStream` (engine/transport.py) instead of
        asyncio's streams; websockets stay amqtt's. A `proxy_protocol` listener accepts through
        engine/proxy_listener.py, which reads the PROXY header first and passes on the client's address
        (a websockets one through engine/proxy_ws.py's connections)."""
        ours = self._guard_listeners[listener_name]
        reuse_port = self.reuse_port
        if listener_type != ListenerType.TCP:
            secured = ours.require_token or bool(ours.allowed_origins)
            if ours.proxy_protocol or secured or reuse_port:  # amqtt's websockets server, with our options
                extra: dict[str, Any] = {"reuse_port": True} if reuse_port else {}
                if ours.proxy_protocol:  # connections that read the PROXY header first
                    extra["create_connection"] = functools.partial(
                        ProxiedWebSocket, trusted=trusted_networks(ours.trusted_proxies), name=ours.bind
                    )
                if secured:  # bearer token, Origin and subprotocol checked before the 101 (engine/ws_upgrade.py)
                    check = self._upgrades[listener_name] = UpgradeCheck(
                        self.guard.verify_bearer,
                        name=ours.bind,
                        require_token=ours.require_token,
                        sources=ours.token_sources,
                        origins=ours.allowed_origins,
                    )
                    extra["process_request"] = check
                return await websockets.serve(
                    functools.partial(self.ws_connected, listener_name=listener_name),
                    address,
                    port,
                    ssl=ssl_context,
                    subprotocols=[websockets.Subprotocol("mqtt")],
                    **extra,
                )
            return await super()._create_server_instance(listener_name, listener_type, address, port, ssl_context)
        loop = asyncio.get_running_loop()
        serve = functools.partial(self._client_connected, listener_name)
        limits = self.guard_config.limits
        over_ssl = ssl_context is not None
        deadlines = self._connect_deadlines

        def stream() -> MqttStream:
            return MqttStream(
                loop,
                serve,
                over_ssl=over_ssl,
                deadlines=deadlines,
                connect_timeout=limits.connect_timeout,
                max_packet=limits.max_packet_size,
            )

        if ours.proxy_protocol:

            def proxied(peer: tuple[str, int]) -> MqttStream:  # the client's address, from its PROXY header
                return MqttStream(
                    loop,
                    serving_as(peer, serve),
                    over_ssl=over_ssl,
                    deadlines=deadlines,
                    connect_timeout=limits.connect_timeout,
                    max_packet=limits.max_packet_size,
                )

            return await ProxyListener.start(
                address,
                port,
                proxied,
                ssl_context=ssl_context,
                trusted=trusted_networks(ours.trusted_proxies),
                timeout=limits.connect_timeout,
                deadlines=deadlines,
                name=ours.bind,
                reuse_port=reuse_port,
            )
        return await loop.create_server(
            stream, address, port, reuse_address=True, reuse_port=reuse_port or None, ssl=ssl_context
        )

    async def _client_connected(self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter) -> None:
        server = self._servers.get(listener_name)
        listener = self._guard_listeners.get(listener_name)
        if server is None or listener is None or self._shutting_down:
            await _close_quietly(writer)
            return
        # The one address of the connection's logs, refusals, failure counts and session (remote_address):
        # the socket's, or on a proxy_protocol listener the client's from its header (ProxiedTcpWriter).
        peer = writer.get_peer_info()
        where = f"{peer[0]}:{peer[1]}" if peer else "unknown peer"
        if listener.max_connections and server.conn_count >= listener.max_connections:
            log.warning(
                "refused connection from %s: listener %s is at max_connections=%d",
                where,
                listener.bind,
                listener.max_connections,
            )
            await writer.close()
            return
        # amqtt's Server.acquire/release_connection, without the INFO line they format per connection
        # (filtered out, but built with an f-string every time)
        if server.semaphore is not None:
            await server.semaphore.acquire()
        server.conn_count += 1
        try:
            await self._serve_connection(listener, reader, writer, where, peer)
        finally:
            if server.semaphore is not None:
                server.semaphore.release()
            server.conn_count -= 1

    async def _serve_connection(
        self,
        listener: ListenerConfig,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        where: str,
        peer: tuple[str, int] | None = None,
    ) -> None:
        incoming = await self._read_connect(reader, writer, where, peer)
        if incoming is None:
            return
        handler, session, leftover = incoming
        session.listener = listener
        generated = not session.client_id
        client_id = session.client_id = session.client_id or gen_client_id()
        bearer = None
        if listener.require_token:  # the token its websockets upgrade was let through with
            check = next((c for n, c in self._upgrades.items() if self._guard_listeners[n] is listener), None)
            bearer = check.take(writer._protocol) if check is not None else None  # noqa: SLF001 - amqtt's WebSocketsWriter
            if bearer is None:
                log.warning("closed connection from %s: no access token verified at its upgrade", where)
                await self._refuse(writer, CONNACK_NOT_AUTHORIZED, session.protocol_level, c5=session.v5)
                return
        try:
            code = await self._check_connect(session, listener, where, generated, bearer)
        finally:
            if self._id_rule and session.guard_client is not None:
                # Attached: its claim (made by `_admit`) becomes `_holders` below, nothing awaited between
                self._unclaim(client_id)
        client = session.guard_client
        identity = client.username if client is not None else None
        if code or self._shutting_down:
            self._detach(session)
            await self._refuse(
                writer,
                connack_311(code) if code else CONNACK_SERVER_UNAVAILABLE,
                session.protocol_level,
                code or Reason.SERVER_UNAVAILABLE,
                session.v5,
            )
            return
        if generated and session.v5 is not None:
            session.v5.assigned_id = True
        if self._journal is not None:
            code = await self._stored_session(session, identity, where)
            if code or self._shutting_down:
                self._detach(session)
                await self._refuse(
                    writer,
                    connack_311(code or Reason.SERVER_UNAVAILABLE),
                    session.protocol_level,
                    code or Reason.SERVER_UNAVAILABLE,
                )
                return
        done = Ended()
        previous = self._connections.get(client_id)
        self._connections[client_id] = done
        self._holders[client_id] = identity
        try:
            if previous is not None or client_id in self._sessions:
                await self._take_over(client_id, previous, bool(session.clean_session))
            session = self._adopt_session(session)
            if self._journal is not None and is_durable(session.out_queue):  # (owned by this process now)
                self._journal.save(self._record_of(session))
            await self._run_session(reader, writer, session, handler, where, leftover)
        finally:
            self._detach(session, keep=session.expiry != 0)
            done.set()
            if self._connections.get(client_id) is done:
                del self._connections[client_id]
                del self._holders[client_id]

    def _detach(self, session: GuardedSession, keep: bool = False) -> None:
        """The client's connection is over: the guard stops tracking it. A persistent session keeps its
        GuardClient so messages queued while it is offline still pass its RECEIVE check."""
        client = session.guard_client
        if not keep:
            session.guard_client = None
        if client is not None:
            self.guard.detach(client)

    async def kick(self, client_id: str, reason: str, code: int = KICKED) -> bool:
        """Close a client's connection from the server side (its will is published, as on a lost link);
        an MQTT 5 client is sent DISCONNECT `code` first (mqtt_guard/reasons.py)."""
        entry = self._sessions.get(client_id)
        if entry is None or entry[0].transitions.state != "connected":
            return False
        log.warning("disconnecting client %r: %s", client_id, reason)
        handler = entry[1]
        if isinstance(handler, GuardedHandler):
            handler.close(f"disconnected by the server: {reason}", code)
        await handler.stop()
        return True

    async def _read_connect(
        self, reader: ReaderAdapter, writer: WriterAdapter, where: str, peer: tuple[str, int] | None = None
    ) -> tuple[GuardedHandler, GuardedSession, bytes] | None:
        """The first packet, whole, within connect_timeout; it must be a valid CONNECT. Also returns the
        bytes read after it (a client may send more before its CONNACK), for the connection's reader."""
        limits = self.guard_config.limits
        timeout = limits.connect_timeout
        leftover = body = b""
        stream = reader._reader if type(reader) is TcpReader else None  # noqa: SLF001 - our MqttStream inside
        try:
            if stream is not None and stream.timed_out:
                raise TimeoutError
            if stream is not None and stream.first_ready:  # whole in the buffer: nothing to wait for
                first, body, leftover = _split_first_packet(stream.take_buffered(), limits.max_packet_size)
            else:
                async with self._connect_deadlines.deadline(timeout):
                    if isinstance(reader, StreamReaderAdapter):
                        first, body, leftover = await _read_first_packet(
                            reader._reader,  # noqa: SLF001 - amqtt's adapter wraps the asyncio stream
                            limits.max_packet_size,
                        )
                    else:
                        first, body = await _read_packet(reader, limits.max_packet_size)
            if first != CONNECT << 4:
                raise ProtocolViolation(
                    f"first packet is {TYPE_NAMES.get(first >> 4, '?')}, not CONNECT [MQTT-3.1.0-1]"
                    if first >> 4 != CONNECT
                    else f"CONNECT with reserved fixed-header flags {first & 0x0F:#x} (must be 0) [MQTT-2.2.2-2]"
                )
            info = parse_connect(body)
            _check_connect_limits(info)
            if info.will is not None:
                check_topic_levels(info.will[0], "will topic", limits.max_topic_levels, Reason.PROTOCOL_ERROR)
        except TimeoutError:
            log.warning("closed connection from %s: no CONNECT within %.1f s", where, timeout)
        except ProtocolViolation as exc:
            self._counters.incr(None, C.PROTOCOL_ERRORS)
            level = _connect_level(body)
            if exc.connack is not None or level == MQTT5:  # (MQTT 5: a CONNACK with the reason [MQTT-4.13.1-1])
                refusal_log.log(  # once a minute per source host and reason (a retrying device)
                    logging.WARNING,
                    (where.rpartition(":")[0], exc.reason),
                    "refused CONNECT from %s: %s (CONNACK %#x)" if level == MQTT5 else _REFUSED_LOG,
                    where,
                    exc.reason,
                    exc.code if level == MQTT5 else exc.connack,
                )
                await self._refuse(writer, exc.connack or 0, level, exc.code)
                return None
            log.warning("closed connection from %s: invalid CONNECT: %s", where, exc.reason)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, EOFError):
            log.info("connection from %s closed before a complete CONNECT", where)
        else:
            if self._fire_connect_received:
                packet = await ConnectPacket.from_stream(
                    BufferReader(bytes((first,)) + encode_remaining_length(len(body)) + body)
                )
                await self.plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet)
            if info.protocol != "MQTT":
                log.info("client %r from %s speaks MQTT 3.1 (%s)", info.client_id, where, info.protocol)
            return (
                GuardedHandler(self.plugins_manager, loop=self._loop),
                self._session_from(info, writer, peer),
                leftover,
            )
        await _close_quietly(writer)
        return None

    def _session_from(
        self, info: ConnectInfo, writer: WriterAdapter, peer: tuple[str, int] | None = None
    ) -> GuardedSession:
        session = GuardedSession()
        session.client_id = info.client_id
        session.clean_session = info.clean  # discard an existing session first
        session.expiry = 0.0 if info.clean else self._session_expiry  # (3.1.1; MQTT 5 below)
        if info.will is not None:
            session.will_flag = True
            session.will_topic, session.will_message, session.will_qos, session.will_retain = info.will
        session.username = info.username
        session.password = info.password
        if peer is None:
            peer = writer.get_peer_info()
        if peer is not None:
            session.remote_address, session.remote_port = peer
        session.ssl_object = writer.get_ssl_info()
        session.keep_alive = info.keepalive
        session.protocol_level = info.level
        if info.level == MQTT5:
            c5 = session.v5 = Client5.of(info.props, info.will_props)
            max_keepalive = self.guard_config.limits.max_keepalive
            if max_keepalive and (info.keepalive == 0 or info.keepalive > max_keepalive):
                session.keep_alive = c5.server_keepalive = max_keepalive  # told in the CONNACK [MQTT-3.2.2-21]
            # Clean Start only discards at start; the Session Expiry Interval says how long the session
            # outlives the connection (3.1.2.4, 3.1.2.11.2), capped by limits.persistent_session_expiry
            session.expiry = session_expiry(c5.session_expiry, self._session_expiry)
        return session

    async def _check_connect(
        self, session: GuardedSession, listener: ListenerConfig, where: str, generated: bool = False, bearer: Any = None
    ) -> int:
        """0 to accept, else the MQTT 5 CONNACK reason code of the refusal (docs/reason-codes.md; a 3.1.1
        client is answered `reasons.connack_311` of it, what it always got). The Guard decides first
        (credentials, the client id policy, then the quota's session rules) and admits the client
        (`session.guard_client`); then every third-party auth plugin must agree (they are asked whatever
        the Guard said, as amqtt asks every plugin). `generated`: the broker made the client id up (the
        client sent none)."""
        quota: int = Reason.UNSPECIFIED_ERROR  # a refusal without a verdict: the Guard failed, unless...
        try:
            result = await self._admit(session, listener, where, generated, bearer)
        except ClientIdRefused as refused:
            return refused.code
        except QuotaRefusal as refusal:  # (logged by `_admit`; the plugins are asked all the same)
            result, quota = None, refusal.code
        except Exception:
            self._counters.incr(session.client_id, C.PLUGIN_ERRORS)
            log.exception("authentication of client %r from %s failed; refusing", session.client_id, where)
            result = None
        try:
            ok = await self._authenticate(session, listener) and result is not None and result.ok
        except Exception:
            log.exception("auth plugin failed for client %r from %s; refusing", session.client_id, where)
            return REFUSED_BY_PLUGIN
        if ok:
            assert result is not None
            session.is_anonymous = result.anonymous
            log_info(
                log,
                "client %r connected from %s as %s (%s)",
                session.client_id,
                where,
                result.username or "anonymous",
                result.outcome.value,
            )
            return 0
        if result is None:
            return quota  # a 3.1.1 client: CONNACK 5 either way
        reason = result.outcome.value if not result.ok else "refused by an auth plugin"
        if result.detail:  # an access token's refusal: exactly why (docs/tokens.md)
            reason = f"{reason} ({result.detail})"
        refusal_log.log(
            logging.WARNING,
            (session.remote_address, reason) if result.banned else (session.client_id, session.username, reason),
            "refused CONNECT of client %r from %s, username %r: %s (CONNACK %d)",
            session.client_id,
            where,
            session.username,
            reason,
            result.connack_code or CONNACK_NOT_AUTHORIZED,
        )
        if result.ok:
            return REFUSED_BY_PLUGIN
        code = connack_reason(result.outcome)
        return self._bad_credentials if code == Reason.BAD_USER_NAME_OR_PASSWORD else code

    async def _admit(
        self,
        session: GuardedSession,
        listener: ListenerConfig,
        where: str = "",
        generated: bool = False,
        bearer: Any = None,
    ) -> AuthResult:
        """The Guard's verdict on a CONNECT; when it accepts, the client id policy is asked (before the
        client is attached anywhere: an attach would take the id's quota registration over), then the
        client is attached to the Guard (its ACL rules loaded, its quota session registered) before the
        CONNACK. QuotaRefusal: refused by the quota rules (blocked, too many sessions of the user), logged
        and counted here; ClientIdRefused: refused by the client id policy (logged and counted)."""
        guard = self.guard
        by_identity = listener.use_identity_as_username
        result = await guard.authenticate(
            username=session.username,
            password=session.password,
            cert_identity=certificate_identity(session.ssl_object) if by_identity else None,
            identity_as_username=by_identity,
            listener=listener,
            address=session.remote_address,
            bearer=bearer,
        )
        if not result.ok:
            self._counters.auth_failed(
                result.username, result.outcome, known_user=result.user is not None, address=session.remote_address
            )
        if (by_identity or result.token is not None) and result.username:
            session.username = result.username  # the certificate's or the access token's identity
        if result.ok and session.client_id:
            client_id = session.client_id
            identity = None if result.anonymous else result.username
            if self._id_rule:
                code = self._client_id_refused(session, identity, where, generated, result)
                if code:
                    raise ClientIdRefused(V5_CONNACK[code])
                # Nothing awaited since the check: the id is this CONNECT's until `_serve_connection` holds it
                claim = self._claims.get(client_id)
                self._claims[client_id] = (identity, claim[1] + 1 if claim is not None else 1)
            try:
                try:
                    session.guard_client = await guard.attach(
                        client_id,
                        result,
                        "identity" if by_identity else "",
                        listener_config=listener,
                        address=session.remote_address,
                    )
                except BaseException:
                    if self._id_rule:
                        self._unclaim(client_id)
                    raise
            except ClientIdHeld as held:
                # Held on another broker for another identity (the registry's word): refused as if held here
                raise ClientIdRefused(
                    V5_CONNACK[self._id_refusal(session, identity, where, ownership.HELD_REFUSAL, held.holder, result)]
                ) from None
            except QuotaRefusal as refusal:
                kind = C.quota_refusal(str(refusal))  # the reason without its figures: one log key per kind
                self._counters.auth_failed(
                    result.username, kind, known_user=result.user is not None, address=session.remote_address
                )
                refusal_log.log(
                    logging.WARNING,
                    (session.client_id, result.username, kind),
                    "refused CONNECT of client %r, username %r: %s (CONNACK 5)",
                    session.client_id,
                    result.username,
                    refusal,
                )
                raise
        return result

    def _client_id_refused(
        self,
        session: GuardedSession,
        identity: str | None,
        where: str,
        generated: bool,
        result: AuthResult | None = None,
    ) -> int:
        """0, or the CONNACK code refusing `identity` (None: anonymous) the session's client id
        (auth/ownership.py); a refusal is logged (once a minute per client id, username and kind) and
        counted. The holder is a CONNECT admitted with the id and not yet connected (`_claims`), else the
        latest connection admitted with it, else a persistent session kept offline. (An id held on another
        broker is refused by the registry at the attach: ClientIdHeld.)"""
        client_id = session.client_id
        claim = self._claims.get(client_id)
        if claim is not None:
            held, holder = True, claim[0]
        elif client_id in self._connections:
            held, holder = True, self._holders.get(client_id)
        else:
            entry = self._sessions.get(client_id)
            kept = entry[0] if entry is not None else None
            held = kept is not None and (kept.expiry != 0 or kept.transitions.state == "connected")
            client = kept.guard_client if kept is not None else None
            holder = client.username if client is not None else (kept.username if kept is not None else None)
        refused = ownership.refusal(
            self._id_policy,
            client_id,
            identity,
            held=held,
            holder=holder,
            prefixes=self._id_prefixes,
            generated=generated,
        )
        if refused is None:
            return 0
        return self._id_refusal(session, identity, where, refused, holder, result)

    def _unclaim(self, client_id: str) -> None:
        claim = self._claims.pop(client_id, None)
        if claim is not None and claim[1] > 1:
            self._claims[client_id] = (claim[0], claim[1] - 1)

    def _id_refusal(
        self,
        session: GuardedSession,
        identity: str | None,
        where: str,
        refused: ownership.Refusal,
        holder: str | None,
        result: AuthResult | None,
    ) -> int:
        """Log (once a minute per client id, username and kind) and count a refusal by the client id policy;
        its CONNACK code."""
        client_id = session.client_id
        self._counters.auth_failed(
            identity,
            refused.kind,
            known_user=result.user is not None if result is not None else identity is not None,
            address=session.remote_address,
        )
        if refused.kind == ownership.HELD:
            refusal_log.log(
                logging.WARNING,
                (client_id, identity, refused.kind),
                "refused take-over of client %r from %s by user %r: the client id is held by user %r (CONNACK %d)",
                client_id,
                where,
                identity,
                holder,
                refused.code,
            )
        else:
            refusal_log.log(
                logging.WARNING,
                (client_id, identity, refused.kind),
                "refused CONNECT of client %r from %s, username %r: %s (CONNACK %d)",
                client_id,
                where,
                identity,
                refused.reason,
                refused.code,
            )
        return refused.code

    async def _authenticate(self, session: GuardedSession, _: Any) -> bool:
        """amqtt's, over the third-party auth plugins only: each that does not abstain (None) must say yes;
        a plugin that raises counts as a 'no' instead of killing the CONNECT. Every plugin is asked."""
        ok = True
        for plugin in self.plugins_manager._auth_plugins:  # noqa: SLF001 - amqtt's plugin lists
            try:
                result = await plugin.authenticate(session=session)
            except Exception:
                self._counters.incr(session.client_id, C.PLUGIN_ERRORS)
                log.exception(
                    "auth plugin %s raised for client %r; treating it as a denial",
                    type(plugin).__name__,
                    session.client_id,
                )
                result = False
            if result is not None and not result:
                ok = False
        return ok

    async def _topic_filtering(
        self, session: GuardedSession, topic: str, action: Action, *, enforce: bool = True
    ) -> bool:
        """Every topic check must allow: the Guard's, then each third-party plugin's (`_check_sync` for
        the synchronous ones). Plugins without a synchronous `check` are awaited one by one, instead of
        through amqtt's Task-per-plugin gather."""
        if not self._check_sync(session, topic, action, enforce):
            return False
        if self._sync_checks:
            return True
        for plugin, check in self._topic_checks:
            if check is not None:
                continue  # asked by _check_sync
            try:
                allowed = await plugin.topic_filtering(session=session, topic=topic, action=action)
            except Exception:  # noqa: BLE001 - a failing plugin denies (fail closed) and is logged
                self._plugin_failed(plugin, session, topic, action)
                return False
            if not allowed:
                self._denied(session, topic, action, enforce)
                return False
        return True

    def _check_sync(self, session: GuardedSession, topic: str, action: Action, enforce: bool = True) -> bool:
        """The synchronous topic checks, in order: $SYS is closed to a client's PUBLISH (dropped and
        acknowledged, as mosquitto; a will is not checked for it), then the Guard's ACL (a client the
        Guard did not admit may do nothing), then every third-party plugin with a synchronous `check`.
        A check that raises or returns None denies that one check (logged and counted); the connection
        and the message for other subscribers are unaffected. `enforce`: a denied PUBLISH of the client
        itself (not its will) may disconnect it (`acl.deny_publish_action`)."""
        if (
            enforce
            and action is Action.PUBLISH
            and topic[0] == "$"
            and (topic == "$SYS" or topic.startswith("$SYS/") or topic.startswith(SHARE_PREFIX))
        ):
            return False  # (nobody may publish to a $share/ topic name either: mosquitto-compat/SHARED.md 11)
        client = session.guard_client
        try:
            allowed = client is not None and self._may(client, PERMS[action], topic)
        except Exception:  # noqa: BLE001 - a failing check denies (fail closed) and is logged
            self._plugin_failed(self.guard, session, topic, action)
            return False
        if not allowed:
            self._denied(session, topic, action, enforce)
            return False
        for plugin, check in self._topic_checks:
            if check is None:
                continue  # awaited by _topic_filtering
            try:
                allowed = check(session, topic, action)
            except Exception:  # noqa: BLE001 - a failing plugin denies (fail closed) and is logged
                self._plugin_failed(plugin, session, topic, action)
                return False
            if not allowed:
                self._denied(session, topic, action, enforce)
                return False
        return True

    def _plugin_failed(self, plugin: Any, session: GuardedSession, topic: str, action: Action) -> None:
        self._check_errors += 1
        self._counters.incr(session.client_id if session else None, C.PLUGIN_ERRORS)
        plugin_log.log(
            logging.ERROR,
            (type(plugin).__name__, action),
            "topic plugin %s raised on %s %r for client %r; denying this one check",
            type(plugin).__name__,
            action,
            topic,
            session.client_id if session else None,
            exc_info=True,
        )

    def _denied(self, session: GuardedSession, topic: str, action: Action, enforce: bool) -> None:
        if enforce and action is Action.PUBLISH and self.guard_config.acl.deny_publish_action == "disconnect":
            asyncio.get_running_loop().create_task(
                self.kick(session.client_id, f"denied PUBLISH to {topic!r}", DENIED_PUBLISH)
            )

    @staticmethod
    async def _refuse(
        writer: WriterAdapter, code: int, level: int = 4, reason: int | None = None, c5: Client5 | None = None
    ) -> None:
        """Every refused CONNECT ends here: CONNACK `code` (3.1.1), or for an MQTT 5 client the v5 CONNACK
        with `reason` (default: the v5 code that says what `code` says, reasons.V5_CONNACK), then close.
        `c5`: what the client's CONNECT said (None: it could not be read); with it the CONNACK carries
        the reason's short Reason String, within the client's Maximum Packet Size."""
        if level == MQTT5:
            if reason is None:
                reason = V5_CONNACK.get(code, Reason.UNSPECIFIED_ERROR)
            if c5 is not None:
                frame = mqtt5.encode_refusal(reason, reason_string(reason), c5.max_packet)
            else:
                frame = mqtt5.encode_connack(False, reason)
        else:
            frame = encode_connack(False, code)
        try:
            writer.write(frame)  # session present is always 0 on refusal
            await asyncio.wait_for(writer.drain(), 2)
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass
        await _close_quietly(writer)

    async def _take_over(self, client_id: str, previous: Ended | None, clean: bool = True) -> None:
        """Disconnect a live connection with the same client id and wait until it has cleaned up. Its will
        is published (a connection closed without DISCONNECT), unless the new connection resumes its
        persistent session (both without clean session): mosquitto 2.0 then discards the will (measured
        with 2.0.11, docs/engine.md "Protocol edges"). `clean`: the new connection's clean-session flag."""
        entry = self._sessions.get(client_id)
        if entry is not None and entry[0].transitions.state == "connected":
            log.info("client %r connected again: closing its previous connection (take-over)", client_id)
            old_handler = entry[1]
            if isinstance(old_handler, GuardedHandler):
                if not clean and entry[0].expiry != 0 and entry[0].v5 is None:  # (MQTT 5: the Will Delay rule)
                    old_handler.publish_will = False
                old_handler.close("taken over by a new connection with the same client id", TAKEN_OVER)
            await old_handler.stop()
        if previous is not None and not previous.is_set():
            try:
                await asyncio.wait_for(previous.wait(), 10)
            except TimeoutError:
                log.warning("previous connection of %r did not finish within 10 s", client_id)

    def _adopt_session(self, incoming: GuardedSession) -> GuardedSession:
        """amqtt's clean-session rules, applied only after authentication succeeded. A persistent
        session is resumed only by the same username (else it is discarded and started afresh)."""
        client_id = incoming.client_id
        existing: GuardedSession | None = self._sessions.get(client_id, (None, None))[0]
        resumable = (
            existing is not None
            and not incoming.clean_session
            and existing.expiry != 0
            and existing.out_queue is not None
        )
        if resumable and existing is not None and existing.username != incoming.username:
            log.warning(
                "client %r: persistent session of user %r not resumed by user %r; starting a new one",
                client_id,
                existing.username,
                incoming.username,
            )
            resumable = False
        if not resumable or existing is None:
            if existing is not None:
                self._release_will(client_id)  # its session ends here: a delayed will goes out now
                self._drop_session(client_id, existing)
            incoming.parent = 0
            incoming.out_queue = self._new_queue(incoming)
            return incoming
        for name in (
            "will_flag",
            "will_message",
            "will_topic",
            "will_qos",
            "will_retain",
            "keep_alive",
            "username",
            "password",
            "remote_address",
            "remote_port",
            "ssl_object",
            "is_anonymous",
            "guard_client",
            "protocol_level",
            "v5",
            "listener",
            "clean_session",
            "expiry",
        ):
            setattr(existing, name, getattr(incoming, name))
        self._cancel_will(client_id)  # resumed before its Will Delay Interval: never published (3.1.3.2.2)
        self._expires.pop(client_id, None)
        if self._unchecked and client_id in self._unchecked:
            self._check_unchecked(existing)
        existing.attributes.update(incoming.attributes)
        existing.pub_ok.clear()  # decided for the previous connection's client
        existing.parent = 1
        return existing

    def _drop_session(self, client_id: str, session: GuardedSession) -> None:
        if self._sessions.get(client_id, (None,))[0] is session:
            del self._sessions[client_id]
            self._unchecked.discard(client_id)
        self._forget_subscriptions(session)
        queue = queue_of(session)
        if queue is not None:
            if self._journal is not None and is_durable(queue):
                # its end, expiry or drop: gone from Redis too (unless resumed on another broker since)
                self._journal.discard(client_id, mine=True)
            queue.clear()

    # -- persistent sessions in Redis (issue 17 item 2, engine/durable.py) ---------------------------
    def _new_queue(self, session: GuardedSession) -> OutQueue:
        """A session's queue: journalled to Redis when the session is persistent and durable state is on."""
        limits = self.guard_config.limits
        if self._journal is not None and session.expiry != 0:
            return DurableQueue(
                limits.max_queued_messages,
                limits.max_queued_bytes,
                limits.max_inflight_messages,
                journal=self._journal,
                client_id=session.client_id,
                acks=self._durable_acks,
            )
        return OutQueue(limits.max_queued_messages, limits.max_queued_bytes, limits.max_inflight_messages)

    def collect_writes(self, held: Held) -> Held:
        """`held` with the Redis writes made since routing last collected them (Router protocol)."""
        acks = self._durable_acks
        if not acks:
            return held
        out: list[Any] = list(held) if held else []
        out.extend(acks)
        acks.clear()
        return out

    async def _stored_session(self, session: GuardedSession, identity: str | None, where: str) -> int:
        """At CONNECT (authenticated): a clean start discards the stored session (an unacknowledged write);
        a resume of a session this broker does not hold reads it from Redis (one round trip) and restores
        it here, offline, for `_adopt_session` to resume. 0, or the CONNACK reason of a refusal: Redis
        cannot be read (0x88: the client retries; starting afresh would discard its session), or the
        stored session is another user's under a client id policy that owns ids (0x85)."""
        journal = self._journal
        assert journal is not None
        client_id = session.client_id
        if client_id in self._sessions:
            return 0  # (held here: memory is the session; a clean start drops it, and that discards it)
        if session.clean_session:
            journal.discard(client_id, identity, owned=self._id_policy != "any")
            return 0
        try:
            stored = await journal.load(client_id)
        except CorruptSession as exc:
            log.error("client %r: its stored session is corrupt and is discarded (%s)", client_id, exc)
            journal.discard(client_id)
            return 0
        except Exception as exc:  # noqa: BLE001 - Redis away or distrusted: the client retries later
            log.warning(
                "refused CONNECT of client %r from %s: its persistent session cannot be read from Redis (%s)",
                client_id,
                where,
                exc or type(exc).__name__,
            )
            return Reason.SERVER_UNAVAILABLE
        if stored is None or client_id in self._sessions:
            return 0
        owner = stored.record.username if not stored.record.anonymous else None
        if self._id_policy != "any" and (owner or "") != (identity or ""):
            refusal_log.log(
                logging.WARNING,
                (client_id, identity, "stored"),
                "refused CONNECT of client %r from %s by user %r: "
                "its persistent session belongs to user %r (CONNACK %d)",
                client_id,
                where,
                identity,
                owner,
                Reason.CLIENT_IDENTIFIER_NOT_VALID,
            )
            return Reason.CLIENT_IDENTIFIER_NOT_VALID
        self._restore(stored)
        if stored.record.proc and stored.record.proc != journal.proc:
            self.guard.session_moved(stored.record.proc, client_id)  # its last broker forgets its copy
        return 0

    async def _start_listeners(self) -> None:
        """amqtt's, called by its `start` (after it emptied the session tables): before the listeners
        open, the offline sessions this broker owned come back from Redis (durable state), so messages
        published before their clients reconnect are queued for them."""
        if self._journal is not None:
            await self._load_owned_sessions()
        await super()._start_listeners()

    async def _load_owned_sessions(self) -> None:
        journal = self._journal
        assert journal is not None
        try:
            owned, corrupt = await journal.owned()
        except Exception as exc:  # noqa: BLE001 - Redis away: each session resumes at its client's CONNECT
            log.error(
                "persistent sessions owned by this broker not loaded from Redis (%s): each is restored "
                "when its client reconnects; until then nothing is queued for them",
                exc or type(exc).__name__,
            )
            return
        if corrupt:
            log.error("%d stored session record(s) cannot be decoded: skipped", corrupt)
        restored = 0
        now = time.time()
        for client_id in owned:
            if client_id in self._sessions:
                continue
            try:
                stored = await journal.load(client_id)
            except CorruptSession as exc:
                log.error("client %r: its stored session is corrupt and is discarded (%s)", client_id, exc)
                journal.discard(client_id)
                continue
            except Exception as exc:  # noqa: BLE001 - Redis went away meanwhile: the rest resume at CONNECT
                log.error("loading persistent sessions from Redis stopped: %s", exc or type(exc).__name__)
                break
            if stored is None or client_id in self._sessions:
                continue
            rec = stored.record
            if rec.offline_since is None:  # connected when this broker stopped: offline from now
                left = rec.expiry
            else:
                left = None if rec.expiry is None else rec.expiry - (now - rec.offline_since)
                if left is not None and left <= 0:
                    continue  # (expired: Redis drops its keys)
            session = self._restore(stored, quiet=True)
            self._unchecked.add(client_id)
            # (owned by this process from now on; offline since it went offline, or since now)
            journal.save(self._record_of(session), offline=True, since=rec.offline_since)
            if left is not None:
                self._expire_at(client_id, self._loop.time() + left)
            restored += 1
        if restored:
            log.info(
                "%d offline persistent session(s) this broker owned restored from Redis (of %d stored)",
                restored,
                len(owned),
            )

    def _check_unchecked(self, session: GuardedSession) -> None:
        """A session restored at start is resumed: what was queued for it unchecked passes the RECEIVE
        check of the client resuming it now (denied ones are dropped, counted as withheld)."""
        self._unchecked.discard(session.client_id)
        queue = session.out_queue
        if queue is None or not queue.pending:
            return
        kept = []
        for d in queue.pending:
            topic = d.topic.decode("utf-8", "replace")
            if self._check_sync(session, topic, Action.RECEIVE, False):
                kept.append(d)
                continue
            queue.pending_bytes -= d.size
            if isinstance(queue, DurableQueue):
                queue.forget(d)
        if len(kept) != len(queue.pending):
            queue.pending.clear()
            queue.pending.extend(kept)

    def _restore(self, stored: StoredSession, quiet: bool = False) -> GuardedSession:
        """A stored session made an offline session of this broker: its subscriptions (granted when they
        were made: not checked again; each delivery passes the RECEIVE check of the resuming client), its
        queued and in-flight messages, its inbound QoS 2 packet ids."""
        rec = stored.record
        session = GuardedSession()
        session.client_id = rec.client_id
        session.username = rec.username
        session.is_anonymous = rec.anonymous
        session.expiry = rec.expiry
        session.protocol_level = rec.level
        session.clean_session = False
        queue = self._new_queue(session)
        assert isinstance(queue, DurableQueue)
        restored = queue.restore(stored.messages, stored.inbound, stored.next_seq)
        session.out_queue = queue
        self._sessions[rec.client_id] = (session, None)
        for sub in rec.subscriptions:
            self._restore_subscription(session, sub, rec.level == MQTT5)
        self._invalidate_routes()
        if not quiet:
            log_info(
                log,
                "client %r: persistent session restored from Redis (owner was %s): %d subscription(s), %d message(s)",
                rec.client_id,
                rec.broker or "?",
                len(rec.subscriptions),
                restored,
            )
        return session

    def _restore_subscription(self, session: GuardedSession, sub: StoredSubscription, v5: bool) -> None:
        client_id = session.client_id
        topic_filter = sub.filter
        try:
            share = self._share_of(topic_filter)
        except ProtocolViolation:
            log.warning("client %r: stored subscription %r is not valid here; skipped", client_id, topic_filter)
            return
        if share is not None:
            group = self._shares.get(share)
            if group is None:
                group = self._shares[share] = ShareGroup(share[0], share[1])
                self._shares_of.setdefault(share[1], []).append(group)
            group.add(client_id, (client_id, session, sub.qos, sub.options, sub.sub_id))
            self._trie.add(share[1])
        else:
            entries = self._subscriptions.setdefault(topic_filter, [])
            entries[:] = [e for e in entries if e[0].client_id != client_id]
            entries.append((session, sub.qos))
            self._trie.add(topic_filter)
            if v5:
                self._sub5.setdefault(client_id, {})[topic_filter] = (sub.options, sub.sub_id)
        self._filters_of.setdefault(client_id, set()).add(topic_filter)

    def _record_of(self, session: GuardedSession) -> SessionRecord:
        """What Redis keeps of a persistent session (durable/sessions.py)."""
        client_id = session.client_id
        subs: list[StoredSubscription] = []
        opts = self._sub5.get(client_id, {})
        for topic_filter in sorted(self._filters_of.get(client_id, ())):
            try:
                share = self._share_of(topic_filter)
            except ProtocolViolation:
                share = None
            if share is not None:
                group = self._shares.get(share)
                member = group.members.get(client_id) if group is not None else None
                if member is not None:
                    subs.append(StoredSubscription(topic_filter, member[2], member[3], member[4]))
                continue
            qos = next((q for t, q in self._subscriptions.get(topic_filter, ()) if t.client_id == client_id), 0)
            options, sub_id = opts.get(topic_filter, (qos, 0))
            subs.append(StoredSubscription(topic_filter, qos, options, sub_id))
        will = None
        if session.will_flag and session.will_topic:
            c5 = session.v5
            will = StoredWill(
                session.will_topic,
                bytes(session.will_message or b""),
                session.will_qos or 0,
                bool(session.will_retain),
                c5.will_delay if c5 is not None else 0,
                c5.will_forwarded if c5 is not None else b"",
                c5.will_expiry if c5 is not None else None,
            )
        return SessionRecord(
            client_id,
            session.protocol_level,
            session.username,
            session.is_anonymous,
            session.expiry,
            subs,
            will,
        )

    def _save_subscriptions(self, session: GuardedSession) -> None:
        """After a SUBSCRIBE or UNSUBSCRIBE of a persistent session: its record again."""
        self._durable_acks.clear()  # (retained messages sent on SUBSCRIBE: their writes need no waiting)
        if self._journal is not None and session.expiry != 0 and is_durable(session.out_queue):
            self._journal.save(self._record_of(session))

    def _forget_subscriptions(self, session: GuardedSession) -> None:
        """Only the session's own filters are looked at (not every filter of the broker per disconnect)."""
        for topic_filter in self._filters_of.pop(session.client_id, ()):
            self._unsubscribe(topic_filter, session)
        session.clear_queues()

    async def _run_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        session: GuardedSession,
        handler: GuardedHandler,
        where: str,
        leftover: bytes = b"",
    ) -> None:
        try:
            session.transitions.connect()
        except (MachineError, ValueError):
            # A resumed session left in "connected" by an abrupt end: reset it.
            session.transitions.disconnect()
            session.transitions.connect()
        queue = queue_of(session)
        assert queue is not None
        handler.attach(session, reader, writer)
        limits = self.guard_config.limits
        handler.bind(
            self,
            queue,
            where,
            self._counters,
            max_packet=limits.max_packet_size,
            max_stall=limits.backpressure_max_stall,
            alias_max=limits.max_topic_alias,
            receive_max=limits.max_inflight_messages,
            max_levels=limits.max_topic_levels,
        )
        c5 = session.v5 if session.protocol_level == MQTT5 else None
        if c5 is not None:
            queue.serve_level(True, c5.receive_max, c5.max_packet)
            # a resumed session's messages were offered under the previous connection's limit (or none)
            for _ in range(queue.drop_too_large()):
                self._too_large(session.client_id)
            connack = mqtt5.encode_connack(bool(session.parent), 0, self._connack_properties(session, c5))
        else:
            queue.serve_level(False)
            connack = encode_connack(bool(session.parent), 0)
        self._sessions[session.client_id] = (session, handler)
        if session.client_id in self._filters_of:
            self._invalidate_routes()  # a resumed session's targets now carry its new guard client
        clean = False
        try:
            if not handler.send_now(connack):
                await handler.send(connack)
            if self._fire_connected:
                await self.plugins_manager.fire_event(
                    BrokerEvents.CLIENT_CONNECTED, client_id=session.client_id, client_session=session
                )
            clean = await handler.serve(leftover)  # reads in this task until the connection ends
        except (ConnectionError, OSError) as exc:
            handler.close(f"connection lost ({exc or type(exc).__name__})")
        finally:
            await self._end_session(session, handler, clean)

    def _connack_properties(self, session: GuardedSession, c5: Client5) -> mqtt5.Props:
        """What the CONNACK tells an MQTT 5 client about this server (3.2.2.3)."""
        limits = self.guard_config.limits
        props: mqtt5.Props = {}
        if limits.max_inflight_messages:  # (absent: 65535)
            props[mqtt5.RECEIVE_MAXIMUM] = max(1, min(limits.max_inflight_messages, 65535))
        if limits.max_topic_alias:
            props[mqtt5.TOPIC_ALIAS_MAXIMUM] = limits.max_topic_alias
        if limits.max_packet_size and limits.max_packet_size < mqtt5.MAX_PACKET:  # (absent: the protocol's own)
            props[mqtt5.MAXIMUM_PACKET_SIZE] = limits.max_packet_size
        props[mqtt5.RETAIN_AVAILABLE] = 1
        props[mqtt5.WILDCARD_SUB_AVAILABLE] = 1
        props[mqtt5.SUB_ID_AVAILABLE] = 1
        if c5.assigned_id:
            props[mqtt5.ASSIGNED_CLIENT_ID] = session.client_id
        if c5.server_keepalive is not None:
            props[mqtt5.SERVER_KEEP_ALIVE] = c5.server_keepalive
        if c5.session_expiry and session.expiry != session_expiry(c5.session_expiry, None):
            # capped by limits.persistent_session_expiry: the client is told the interval used (3.2.2.3.2)
            props[mqtt5.SESSION_EXPIRY] = math.ceil(session.expiry or 0)  # (whole seconds: a 0.5 s cap says 1)
        return props

    async def _end_session(self, session: GuardedSession, handler: GuardedHandler, clean: bool) -> None:
        client_id = session.client_id
        if self._closing:
            handler.publish_will = False
            await handler.flush(self._shutdown_deadline)
        await handler.stop()
        reason = handler.end_reason
        if clean:
            log_info(log, "client %r (%s) disconnected", client_id, handler.where)
        elif reason and reason.startswith("protocol violation"):
            log.warning("closed connection of client %r from %s: %s", client_id, handler.where, reason)
        else:
            log_info(log, "client %r (%s) disconnected: %s", client_id, handler.where, reason or "connection lost")
        c5 = session.v5
        if c5 is not None and session.expiry != 0:  # (0 is final: a DISCONNECT may not raise it, nor undo a drop)
            session.expiry = session_expiry(c5.session_expiry, self._session_expiry)  # its DISCONNECT's, if any
        if not clean and session.will_flag and handler.publish_will:
            delay = c5.will_delay if c5 is not None else 0
            ours = self._sessions.get(client_id, (None,))[0] is session
            if delay and ours and session.expiry != 0:  # the session outlives the connection: the will waits
                self._delay_will(session, delay if session.expiry is None else min(delay, session.expiry))
            else:
                await self._publish_will(session)
        try:
            session.transitions.disconnect()
        except (MachineError, ValueError):
            pass
        queue = queue_of(session)
        if self._sessions.get(client_id, (None,))[0] is session:
            if session.expiry == 0:
                self._drop_session(client_id, session)
            elif self._moved and client_id in self._moved:  # resumed on another broker meanwhile
                self.forget_session(client_id, self._moved.pop(client_id))
            elif queue is not None:
                queue.go_offline()
                self._sessions[client_id] = (session, handler)
                if self._journal is not None and is_durable(queue):
                    self._journal.save(self._record_of(session), offline=True)
                if session.expiry is not None:
                    self._expire_at(client_id, self._loop.time() + session.expiry)
                if client_id in self._filters_of:
                    self._invalidate_routes()
        if self._fire_disconnected:
            await self.plugins_manager.fire_event(
                BrokerEvents.CLIENT_DISCONNECTED, client_id=client_id, client_session=session
            )

    async def _publish_will(self, session: GuardedSession) -> None:
        """The will goes out like a PUBLISH of the client: the PUBLISH ACL applies to it."""
        topic, message = session.will_topic, session.will_message or b""
        if not topic:
            return
        if not await self._topic_filtering(session, topic, Action.PUBLISH, enforce=False):
            log.info("will of client %r to %r not published: PUBLISH denied", session.client_id, topic)
            return
        qos = session.will_qos or 0
        props = session.v5.will() if session.v5 is not None else None
        if session.will_retain:
            props = props.retained() if props is not None else Message5(retain=True)
            written = await self._store_retained(session, topic, bytes(message), qos, props)
            if written is not None:  # nobody to acknowledge: a failure is only logged
                written.add_done_callback(functools.partial(_will_written, session.client_id, topic))
        if self._cluster is not None:
            self._forward(session, topic, bytes(message), qos, bool(session.will_retain), props)
        await self._route(topic, topic.encode(), bytes(message), qos, props)

    # -- PUBLISH / SUBSCRIBE from a client (GuardedBroker is the `Router` of GuardedHandler's reader) -----
    def publish(
        self,
        session: GuardedSession,
        topic: str,
        topic_raw: bytes,
        payload: bytes | None,
        plen: int,
        qos: int,
        frame0: bytes | None,
        props: Message5 | None = None,
        awaited: bool = False,
    ) -> Held:
        """The decision on a client's PUBLISH, for every PUBLISH: the topic checks (`_check_sync`,
        remembered per session and topic while the ACL does not change), then the publisher's quota
        (only counted while the reader's stretch has prepaid it), then `_fanout`. None when refused
        (dropped; the reader still acknowledges QoS 1/2).

        The reader calls it for QoS 0/1 without RETAIN when `fast_publish` holds (`payload` may be None
        when `frame0` is given). `handle_publish` calls it for every other PUBLISH with `awaited`: then
        it returns `_ADMITTED` instead of routing, and when a topic plugin has to be awaited the caller
        has made the topic checks. `props`: the MQTT 5 side of the message (an MQTT 5 publisher's
        connection always gives one; None from a 3.1.1 publisher)."""
        if not awaited or self._sync_checks:
            if self._policy.version != self._policy_version or self.guard.acl_epoch != self._guard_epoch:
                self._acl_changed()
            allowed = session.pub_ok
            if session.pub_epoch != self.acl_epoch:
                allowed.clear()
                session.pub_epoch = self.acl_epoch
            if topic not in allowed:
                errors = self._check_errors
                if not self._check_sync(session, topic, Action.PUBLISH):
                    _refused(session, PUBLISH_DENIED)
                    return None
                if self._cacheable and errors == self._check_errors:
                    if len(allowed) >= PUB_CACHE:
                        allowed.clear()
                    allowed[topic] = True
        client = session.guard_client
        if client is not None:
            st = self._stretch
            if st is not None and st.pub_ok:  # prepaid for the reader's run (quota/stretch.py)
                st.n += 1
                st.b += plen
            elif not self._admit_publish(client, topic, plen, qos):
                _refused(session, PUBLISH_OVER_QUOTA)
                return None  # over quota: dropped (a 3.1.1 QoS 1/2 still acknowledged), counted by the quota
        if awaited:
            return _ADMITTED
        cluster = self._cluster  # to the other brokers with a matching subscriber (engine/remote.py)
        if (
            cluster is not None
            and not cluster.alone
            and cluster.destinations(topic)  # (cached per topic)
            and self._forward(session, topic, payload, qos, False, props, frame0, plen)
        ):
            held = self._fanout(topic, topic_raw, payload, plen, qos, frame0, None, props)
            self.no_match = False  # a subscriber elsewhere matched it (no 0x10)
            return held
        return self._fanout(topic, topic_raw, payload, plen, qos, frame0, None, props)

    async def handle_publish(
        self,
        session: GuardedSession,
        topic: str,
        topic_raw: bytes,
        payload: bytes,
        qos: int,
        retain: bool,
        props: Message5 | None = None,
    ) -> Held:
        """A PUBLISH the reader does not route synchronously (QoS 2, RETAIN, or plugins to await).
        `publish` decides it; around that, only what has to be awaited: the MESSAGE_RECEIVED and
        MESSAGE_BROADCAST events, topic plugins without a synchronous check, the retained store.
        Returns the Events of subscribers over their hold mark, for the reader to wait on."""
        message = None
        if self._fire_msg_received or self._fire_msg_broadcast:
            message = IncomingApplicationMessage(None, topic, qos, payload, retain)
        if self._fire_msg_received:
            await self.plugins_manager.fire_event(
                BrokerEvents.MESSAGE_RECEIVED, client_id=session.client_id, message=message
            )
        if not self._sync_checks and not await self._topic_filtering(session, topic, Action.PUBLISH):
            _refused(session, PUBLISH_DENIED)
            return None
        if self.publish(session, topic, topic_raw, payload, len(payload), qos, None, props, True) is None:
            return None
        forwarded = self._forward(session, topic, payload, qos, retain, props) if self._cluster is not None else 0
        if self._fire_msg_broadcast:
            await self.plugins_manager.fire_event(
                BrokerEvents.MESSAGE_BROADCAST, client_id=session.client_id, message=message
            )
        if not retain:
            held = await self._route(topic, topic_raw, payload, qos, props)
            if forwarded:
                self.no_match = False  # a subscriber elsewhere matched it (no 0x10)
            return held
        props = props.retained() if props is not None else Message5(retain=True)
        written = await self._store_retained(session, topic, payload, qos, props)
        held = await self._route(topic, topic_raw, payload, qos, props)
        if forwarded:
            self.no_match = False
        if written is not None:
            no_match = self.no_match  # (other connections route while this one waits for Redis)
            await self._await_written(session, topic, written)
            self.no_match = no_match
        return held

    # -- the other brokers (issue 18, engine/remote.py, docs/scaling.md) --------------------------
    def join_cluster(self, cluster: Cluster) -> None:
        """Route through `cluster` from now on: it learns this broker's filters (those held already too)
        and gets every message a local client publishes that another broker has a subscriber for."""
        self._cluster = cluster
        self._trie.watch(cluster.subscribed, cluster.unsubscribed)
        for topic_filter in self._trie.filters():
            cluster.subscribed(topic_filter)

    def _forward(
        self,
        session: GuardedSession,
        topic: str,
        payload: bytes | None,
        qos: int,
        retain: bool,
        props: Message5 | None,
        frame0: bytes | None = None,
        plen: int = 0,
    ) -> int:
        """A message of a local client (admitted: its ACL and quota are spent here, once) to each other
        broker with a matching subscriber; one cached lookup when there is none. (`payload`, or the frame
        as received, `frame0`, that ends with its `plen` bytes.)"""
        cluster = self._cluster
        assert cluster is not None
        if cluster.alone:
            return 0
        dests = cluster.destinations(topic)
        if not dests:
            return 0
        if payload is None:
            assert frame0 is not None
            payload = frame0[len(frame0) - plen :]
        message = remote.outgoing(session.client_id, session.username, topic, payload, qos, retain, props)
        return cluster.forward(message, dests) if message is not None else 0

    def on_remote(self, message: RemoteMessage) -> None:
        """A message another broker forwarded (`cluster.OnRemote`): delivered as a local PUBLISH of its
        publisher, to the local subscribers only: each one's RECEIVE check, quota and analytics, granted
        QoS and MQTT 5 options; No Local by the publisher's client id. Never forwarded again. A retained
        one also replaces the retained message here when it lives in memory only (`durable.enabled`
        false); in Redis the publishing broker stored it once and every broker's copy follows Redis."""
        if self._closing:
            return
        entry = self._sessions.get(message.client_id)
        props = remote.incoming(message, queue_of(entry[0]) if entry is not None else None)
        if message.retain and not self._retained.durable:
            if props is not None:
                self._retained.set(message.topic, message.payload, message.qos, props.forwarded, props.expires)
            else:
                self._retained.set(message.topic, message.payload, message.qos)
        if self._sync_checks:
            if self._policy.version != self._policy_version or self.guard.acl_epoch != self._guard_epoch:
                self._acl_changed()
            payload = message.payload
            self._fanout(message.topic, message.topic.encode(), payload, len(payload), message.qos, None, None, props)
            return
        self._remote_backlog.append((message, props))  # topic plugins to await: in order, one task
        if self._remote_task is None:
            self._remote_task = self._loop.create_task(self._route_remote())

    async def _route_remote(self) -> None:
        try:
            while self._remote_backlog and not self._closing:
                message, props = self._remote_backlog.pop(0)
                try:
                    await self._route(message.topic, message.topic.encode(), message.payload, message.qos, props)
                except Exception:  # one message's failure must not stop the others
                    log.exception("delivering a message from broker %s on %r failed", message.origin, message.topic)
        finally:
            self._remote_task = None

    # -- retained messages (durable/retained.py; docs/durability.md) ------------------------------
    @property
    def retained_messages(self) -> dict[str, Any]:
        """amqtt's view (the $SYS plugin counts them): the retained set's topics."""
        return self._retained.messages

    async def retain_message(
        self, source_session: Any, topic_name: str | None, data: bytes | bytearray | None, qos: int | None = None
    ) -> None:
        """amqtt's entry point (plugins' `context.retain_message`, e.g. the $SYS plugin): into the retained
        set, written to Redis without acknowledgement ($SYS topics stay local)."""
        if topic_name is not None:
            await self._store_retained(source_session, topic_name, bytes(data or b""), qos or 0, None)

    async def _store_retained(
        self, session: Any, topic: str, payload: bytes, qos: int, props: Message5 | None
    ) -> asyncio.Future[None] | None:
        """Set (or, empty, clear) the retained message of `topic`: local subscribers see it at once; the
        Redis write's Future for QoS 1/2 (None otherwise or without durability)."""
        if props is not None:
            written = self._retained.set(topic, payload, qos, props.forwarded, props.expires)
        else:
            written = self._retained.set(topic, payload, qos)
        if self._fire_retained:
            await self.plugins_manager.fire_event(
                BrokerEvents.RETAINED_MESSAGE,
                client_id=None,
                retained_message=RetainedApplicationMessage(session, topic, payload, qos),
            )
        return written

    async def _await_written(self, session: GuardedSession, topic: str, written: asyncio.Future[None]) -> None:
        """The acknowledgement of a QoS 1/2 retained PUBLISH waits for its Redis write (docs/durability.md):
        up to `limits.backpressure_max_stall` (0: for ever). A write that fails (a Redis command error) or
        takes longer raises NotStored: the reader answers PUBACK/PUBREC 0x80 (MQTT 5) or closes the
        connection (3.1.1, which has no negative acknowledgement). Either way it is never acknowledged;
        a write that only waited is still made when Redis answers."""
        try:
            await asyncio.wait_for(asyncio.shield(written), self._retain_wait)
        except TimeoutError:
            log.warning(
                "retained message of client %r to %r not acknowledged: Redis did not take it within %.1fs "
                "(limits.backpressure_max_stall); it is written when Redis answers",
                session.client_id,
                topic,
                self._retain_wait,
            )
            raise NotStored("retained message not stored in time: Redis unreachable", timeout=True) from None
        except Exception as exc:  # noqa: BLE001 - a Redis command error (OOM, READONLY, ...) or shutdown
            log.error("retained message of client %r to %r not stored in Redis: %s", session.client_id, topic, exc)
            raise NotStored(f"retained message not stored: {exc}") from None

    def open_stretch(self, client: GuardClient | None, remaining: int) -> Stretch | None:
        """The reader's synchronous run over `remaining` bytes starts: the quota stretch `publish` and
        `_fanout` account in until `settle_stretch` (quota/stretch.py)."""
        st = self._open_stretch(client, remaining)
        if st is not None:
            self._stretch = st
        return st

    def settle_stretch(self, st: Stretch) -> None:
        if self._stretch is st:
            self._stretch = None
        self.guard.settle_stretch(st)

    async def _route(
        self, topic: str, topic_raw: bytes, payload: bytes, qos: int | None, props: Message5 | None = None
    ) -> Held:
        """Queue one message for every matching subscriber that may receive it (`_fanout`). `qos` None
        (amqtt's internal broadcast) delivers at the granted QoS. When a topic plugin has to be awaited,
        the RECEIVE checks are awaited first, for every target and every message."""
        if self._sync_checks:
            if self._policy.version != self._policy_version or self.guard.acl_epoch != self._guard_epoch:
                self._acl_changed()
            self.no_match = False  # (read by the awaiting reader with nothing awaited in between)
            return self._fanout(topic, topic_raw, payload, len(payload), qos, None, None, props)
        verdicts: dict[str, bool] = {}
        for client_id, (target, _) in self._match(topic).items():
            if target.out_queue is not None:
                verdicts[client_id] = await self._topic_filtering(target, topic, Action.RECEIVE)
        for group in self._shared_groups(topic):
            for client_id, member, _, _, _ in group.members.values():
                if client_id not in verdicts and member.out_queue is not None:
                    verdicts[client_id] = await self._topic_filtering(member, topic, Action.RECEIVE)
        route = self._make_route(topic, verdicts)
        self.no_match = False
        return self._fanout(topic, topic_raw, payload, len(payload), qos, None, route, props)

    def _match(self, topic: str) -> dict[str, tuple[GuardedSession, int]]:
        """Subscribers of `topic` (through the trie), one per client with its highest granted QoS."""
        targets: dict[str, tuple[GuardedSession, int]] = {}
        subscriptions = self._subscriptions
        for topic_filter in self._trie.match(topic):
            for target, granted in subscriptions.get(topic_filter, ()):
                known = targets.get(target.client_id)
                if known is None or granted > known[1]:
                    targets[target.client_id] = (target, granted)
        return targets

    def _log_withheld(self, session: GuardedSession, topic: str) -> None:
        """A subscriber that may subscribe but not receive `topic` (SUBACK granted, nothing delivered)
        must see why in the log, not only in `stats`: once a minute per client and subscription filter
        (with the count held back), named by the filter that matched. Runs when a route is built, not
        per message (routes are cached)."""
        client_id = session.client_id
        matching = [f for f in self._filters_of.get(client_id, ()) if topic_matches(f, topic)]
        subscribed = min(matching) if matching else topic
        withheld_log.log(
            logging.INFO,
            (client_id, subscribed),
            "withheld a message on %r from client %r (user %r, subscribed to %r): no receive permission for it",
            topic,
            client_id,
            session.username,
            subscribed,
        )

    def _make_route(self, topic: str, verdicts: dict[str, bool] | None = None) -> Route:
        """The Route of `topic`: its targets' RECEIVE checks (`_check_sync`, or `verdicts` awaited by
        `_route`) and the quota's DeliveryGroup of their guard clients; cached when only the Guard
        decides."""
        targets: list[Target] = []
        targets5: list[Target5] = []
        withheld: list[str] = []
        errors = self._check_errors
        unchecked = self._unchecked  # (restored at start: checked when resumed, `_check_unchecked`)
        matches = self._match(topic)
        for client_id, (target, granted) in matches.items():
            queue = target.out_queue
            if queue is None:
                continue
            if (
                verdicts.get(client_id, False)
                if verdicts is not None
                else (client_id in unchecked or self._check_sync(target, topic, Action.RECEIVE, False))
            ):
                if target.protocol_level == MQTT5:
                    targets5.append((queue, granted, target.guard_client, client_id, self._sub5_of(client_id, topic)))
                else:
                    targets.append((queue, granted, target.guard_client, client_id))
            else:
                withheld.append(client_id)
                self._log_withheld(target, topic)
        clients = [t[2] for t in targets if t[2] is not None] + [t[2] for t in targets5 if t[2] is not None]
        shares: list[Share] | None = None
        for share_group in self._shared_groups(topic):
            allowed: dict[str, SharedTarget] = {}
            for client_id, member, granted, options, sub_id in share_group.members.values():
                queue = member.out_queue
                if queue is None:
                    continue
                if (
                    verdicts.get(client_id, False)
                    if verdicts is not None
                    else (client_id in unchecked or self._check_sync(member, topic, Action.RECEIVE, False))
                ):
                    sub5 = None
                    if member.protocol_level == MQTT5:
                        ids = mqtt5.sub_ids_block((sub_id,)) if sub_id else b""
                        sub5 = Sub5(ids, False, bool(options & RETAIN_AS_PUBLISHED))
                    allowed[client_id] = (queue, granted, member.guard_client, client_id, sub5)
            if shares is None:
                shares = []
            shares.append((share_group, allowed))
        group = self._delivery_group(clients, topic) if clients else None
        route = Route(targets, withheld, group, targets5, shares, bool(matches) or shares is not None)
        if verdicts is None and self._cacheable and errors == self._check_errors:
            routes = self._routes
            if len(routes) >= ROUTE_CACHE:
                del routes[next(iter(routes))]
            routes[topic] = route
        return route

    def _shared_groups(self, topic: str) -> list[ShareGroup[Member]]:
        """The shared subscription groups whose FILTER matches `topic` (when a route is made)."""
        if not self._shares_of:
            return []
        shares_of = self._shares_of
        return [g for f in self._trie.match(topic) for g in shares_of.get(f, ())]

    def _pick_shared(self, shares: list[Share], topic: str, plen: int) -> list[SharedTarget]:
        """One member of each shared group for this message (`limits.shared_subscription_strategy`).
        round_robin / least_loaded: among the members that can take it now (allowed to receive it,
        connected, under their hold mark and not a slow consumer; if none is, any connected one), whose
        quota then admits it (a member over its quota is passed over). mosquitto: the next member in
        turn whatever its state; one that may not receive it or is offline loses it (as mosquitto 2.0)."""
        picked: list[SharedTarget] = []
        strategy = self._share_strategy
        guard = self.guard
        for group, allowed in shares:
            if strategy == "mosquitto":
                member = group.pick(_any_member)
                target = allowed.get(member[0]) if member is not None else None
                if target is None:
                    if member is not None:
                        self._counters.incr(member[0], C.WITHHELD)
                    continue
                client = target[2]
                if target[0].online and (client is None or guard.admit_delivery(client, topic, plen)):
                    picked.append(target)
                continue
            target = self._take_member(group, allowed, topic, plen)
            if target is not None:
                picked.append(target)
        return picked

    def _take_member(
        self, group: ShareGroup[Member], allowed: dict[str, SharedTarget], topic: str, plen: int
    ) -> SharedTarget | None:
        """round_robin / least_loaded: the member of `group` that gets this message, its quota spent."""
        load = _queued if self._share_strategy == "least_loaded" else None
        passed: set[str] = set()  # over their quota for this message
        for relaxed in (False, True):

            def can_take(m: Member, relaxed: bool = relaxed) -> bool:
                t = allowed.get(m[0])
                if t is None or m[0] in passed:
                    return False
                q = t[0]
                return q.port is not None and (relaxed or (not q.slow and not q.over_hold()))

            while (member := group.pick(can_take, load)) is not None:
                target = allowed[member[0]]
                client = target[2]
                if client is None or self.guard.admit_delivery(client, topic, plen):
                    return target
                passed.add(member[0])
        return None

    def _sub5_of(self, client_id: str, topic: str) -> Sub5:
        """The options of an MQTT 5 subscriber's subscriptions matching `topic` (for its cached route)."""
        opts = self._sub5.get(client_id, {})
        matching = [opts.get(f, (0, 0)) for f in self._filters_of.get(client_id, ()) if topic_matches(f, topic)]
        ids = sorted({sid for _, sid in matching if sid})
        no_local = bool(matching) and all(o & NO_LOCAL for o, _ in matching)
        rap = any(o & RETAIN_AS_PUBLISHED for o, _ in matching)
        return Sub5(mqtt5.sub_ids_block(ids), no_local, rap)

    def _fanout(
        self,
        topic: str,
        topic_raw: bytes,
        payload: bytes | None,
        plen: int,
        qos: int | None,
        frame0: bytes | None,
        route: Route | None = None,
        props: Message5 | None = None,
    ) -> Held:
        """Deliver one message to the targets of its topic: the cached Route, else a new one (or `route`,
        made for this message by `_route`). Then the receivers' quota, once for the group; a QoS 0
        delivery is one shared encoded frame (one per protocol level); a subscriber whose queue passes
        its hold mark adds its Event to the result. (`payload` or `frame0` is given: `frame0` is the frame as
        received, MQTT 5 when `props` is given, see `Router.publish`.) An MQTT 5 subscriber gets `props`
        (the message's forwarded properties, its expiry) with the identifiers of its matching
        subscriptions, and its No Local and Retain As Published options apply. (The MQTT 5 receivers are
        served in this frame too: a method call per message was a tenth of the MQTT 5 fan-in's cost.)"""
        if route is None:
            route = self._routes.get(topic)
            fresh = route is None
            if route is None:
                route = self._make_route(topic)  # (its checks counted this message's withheld deliveries)
        else:
            fresh = True
        targets, targets5 = route.targets, route.targets5
        if route.shares is not None:
            targets, targets5 = list(targets), list(targets5)
            for queue, granted, client, client_id, sub5 in self._pick_shared(route.shares, topic, plen):
                if sub5 is None:
                    targets.append((queue, granted, client, client_id))
                else:
                    targets5.append((queue, granted, client, client_id, sub5))
        group = route.group
        refused = None
        if group is not None:  # quota accounting of every delivery (one spend per user when it can)
            if not group.current():
                clients = [t[2] for t in route.targets if t[2] is not None]
                clients += [t[2] for t in route.targets5 if t[2] is not None]
                group = route.group = self._delivery_group(clients, topic)
            st = self._stretch
            if st is not None and (group.stretch is st or group.reserve(st)) and group.ok:
                group.n += 1  # reserved for the reader's whole run: only counted (quota/stretch.py)
                group.b += plen
            else:
                refused = group.admit(topic, plen)
        held: list[asyncio.Event] | None = None
        size = len(topic_raw) + plen
        expiring = 0.0  # (an MQTT 5 message's expiry)
        frame5 = None
        if props is not None:
            expiring = props.expires
            if frame0 is not None:  # an MQTT 5 publisher's frame as received (`Router.publish`)
                frame5, frame0 = frame0, None
                if targets:
                    payload = frame5[len(frame5) - plen :]
        for queue, granted, _client, client_id in targets:
            if refused is not None and client_id in refused:
                continue  # over the receiver's quota: withheld
            dq = granted if qos is None else (qos if qos < granted else granted)
            if expiring:
                ok = queue.offer_expiring(topic_raw, payload, dq, expiring)  # type: ignore[arg-type]  # given
            elif dq == 0:
                if frame0 is None:
                    frame0 = encode_publish(topic_raw, payload, 0, False)  # type: ignore[arg-type]  # payload given
                ok = queue.offer0(frame0, plen, size)
            else:
                if payload is None:
                    payload = frame0[len(frame0) - plen :]  # type: ignore[index, arg-type]  # frame0 given
                ok = queue.offer(topic_raw, payload, dq, False)
            if not ok or queue.pending:  # (a delivery written at once needs neither: no call)
                held = self._after_offer(ok, client_id, queue, held)
        if targets5:
            if payload is None and frame5 is None:
                payload = frame0[len(frame0) - plen :]  # type: ignore[index, arg-type]  # frame0 given
            # MQTT 5 receivers: the message's forwarded properties and expiry (None from a 3.1.1 publisher)
            # with the identifiers of each one's matching subscriptions; No Local and Retain As Published
            # apply; nothing larger than a client's Maximum Packet Size is offered. A QoS 0 delivery without
            # anything of its own shares one frame (`frame5`: the publisher's packet when it is that frame).
            forwarded, published_retain, origin = b"", False, None
            if props is not None:
                forwarded, published_retain, origin = props.forwarded, props.retain, props.origin
            # (a message published with RETAIN, sent on to Retain As Published subscribers with it, is
            # encoded per receiver: it comes through the awaited path, not the hot one)
            shared0 = not expiring and not published_retain
            for queue, granted, _client, client_id, sub5 in targets5:
                if refused is not None and client_id in refused:
                    continue  # over the receiver's quota: withheld
                if sub5.no_local and origin is queue:
                    continue  # its own message [MQTT-3.8.3-3]
                dq = granted if qos is None else (qos if qos < granted else granted)
                if dq == 0 and shared0 and not sub5.ids:
                    if frame5 is None:
                        frame5 = mqtt5.encode_publish(topic_raw, payload, 0, False, False, 0, forwarded)  # type: ignore[arg-type]  # given without frame5
                    if queue.max_packet and len(frame5) > queue.max_packet:
                        self._too_large(client_id)
                        continue
                    ok = queue.offer0(frame5, plen, size)
                else:
                    ids = sub5.ids
                    retain = published_retain and sub5.rap
                    if queue.max_packet and queue.max_packet < mqtt5.publish_size(
                        len(topic_raw), plen, dq, len(forwarded) + len(ids) + (5 if expiring else 0)
                    ):
                        self._too_large(client_id)
                        continue
                    if payload is None:
                        payload = frame5[len(frame5) - plen :]  # type: ignore[index, arg-type]  # frame5 given
                    ok = queue.offer5(topic_raw, payload, dq, retain, forwarded + ids if ids else forwarded, expiring)
                if not ok or queue.pending:  # (a delivery written at once needs neither: no call)
                    held = self._after_offer(ok, client_id, queue, held)
        if not fresh and route.withheld:
            incr = self._counters.incr
            for client_id in route.withheld:
                incr(client_id, C.WITHHELD)
        if not route.matched:
            self.no_match = True
        if self._durable_acks:  # (a QoS 1/2 message for a persistent session: its ack waits for Redis)
            return self.collect_writes(held)
        return held

    def _after_offer(
        self, ok: bool, client_id: str, queue: OutQueue, held: list[asyncio.Event] | None
    ) -> list[asyncio.Event] | None:
        """After one delivery was offered (both protocol levels): a drop is counted, and a queue past its
        hold mark adds the Event its publishers wait on to `held` (flow control). Returns `held`."""
        if not ok:
            self._dropped(client_id, queue)
        elif queue.over_hold():
            port = queue.port
            if port is not None:
                ev = port.hold()
                if ev is not None:
                    if held is None:
                        held = [ev]
                    elif ev not in held:
                        held.append(ev)
        return held

    def _too_large(self, client_id: str) -> None:
        """A delivery larger than the MQTT 5 client's Maximum Packet Size is dropped [MQTT-3.1.2-25]."""
        self._counters.incr(client_id, C.DROPPED_TOO_LARGE)
        queue_log.log(
            logging.INFO,
            ("too large", client_id),
            "dropped a message for client %r: larger than the Maximum Packet Size it accepts",
            client_id,
        )

    def _dropped(self, client_id: str, queue: OutQueue) -> None:
        self._counters.incr(client_id, C.DROPPED_QUEUE_FULL)
        queue_log.log(
            logging.WARNING,
            ("queue full", client_id),
            "queue of client %r is full (%d messages, %d bytes): dropping messages for it",
            client_id,
            *queue.depth(),
        )

    def _invalidate_routes(self) -> None:
        """Subscriptions or sessions changed: cached targets are recomputed on the next message."""
        self._routes.clear()

    def _acl_changed(self) -> None:
        """ACL rules, a client's subject or a file-backed source changed: every cached decision goes."""
        self._policy_version = self._policy.version
        self._guard_epoch = self.guard.acl_epoch
        self.acl_epoch += 1
        self._routes.clear()

    async def _broadcast_message(
        self, session: Any, topic: str | None, data: bytes | bytearray | None, force_qos: int | None = None
    ) -> None:
        """amqtt's entry point for internal publishes (plugins' broadcast_message): routed directly."""
        if topic is None or data is None:
            return
        await self._route(topic, topic.encode(), bytes(data), force_qos)

    async def handle_subscribe(
        self,
        session: GuardedSession,
        conn: GuardedHandler,
        packet_id: int,
        filters: list[tuple[str, int]],
        sub_id: int = 0,
    ) -> None:
        """`filters`: (filter, options byte); below MQTT 5 the options are the requested QoS. An MQTT 5
        client's options (No Local, Retain As Published, Retain Handling) and `sub_id` (its Subscription
        Identifier, 0: none) are kept per filter; its SUBACK says 0x87 for a refused filter. A shared
        subscription (`$share/GROUP/FILTER`, any protocol level) joins its group (`_add_shared`)."""
        v5 = conn.level == MQTT5
        codes: list[int] = []
        fresh: list[bool] = []
        shared: list[str | None] = []  # the FILTER of a shared subscription
        for topic_filter, options in filters:
            fresh.append(topic_filter not in self._filters_of.get(session.client_id, ()))
            share = self._share_of(topic_filter)
            shared.append(share[1] if share is not None else None)
            if share is not None:
                code = await self._add_shared(share, topic_filter, options, sub_id, session, v5)
                codes.append(Reason.NOT_AUTHORIZED if v5 and code == SUBACK_FAILURE else code)
                continue
            code = await self.add_subscription((topic_filter, options & 3), session)
            if v5:
                if code == SUBACK_FAILURE:
                    code = SUBSCRIBE_DENIED
                else:
                    self._sub5.setdefault(session.client_id, {})[topic_filter] = (options, sub_id)
            codes.append(code)
        await conn.send(_suback5(packet_id, codes, session.v5) if v5 else encode_suback(packet_id, codes))
        self._save_subscriptions(session)
        for (topic_filter, options), code, new, real in zip(filters, codes, fresh, shared, strict=True):
            if code >= SUBACK_FAILURE:
                continue
            await self.plugins_manager.fire_event(
                BrokerEvents.CLIENT_SUBSCRIBED, client_id=session.client_id, topic=topic_filter, qos=code
            )
            if real is not None:
                if self._share_strategy != "mosquitto":
                    continue  # retained messages are not sent to shared subscriptions (MQTT 5 4.8.2)
                topic_filter = real  # mosquitto 2.0 sends them to each member (SHARED.md 7)
            handling = (options & RETAIN_HANDLING) >> 4 if v5 else 0  # 3.8.3.1: 0 send, 1 if new, 2 never
            if handling == 0 or (handling == 1 and new):
                await self._publish_retained_messages_for_subscription((topic_filter, code), session, sub_id)
        self._durable_acks.clear()  # (retained messages for a persistent session: nobody waits for them)

    def _share_of(self, topic_filter: str) -> tuple[str, str] | None:
        """(group, FILTER) of a shared subscription; None for an ordinary filter. Under the `mosquitto`
        strategy, what mosquitto 2.0 grants without a group and filter (`$share/g`, `$share/g/`) is an
        ordinary filter nothing matches, and an empty group name is a group (SHARED.md 9)."""
        if not topic_filter.startswith(SHARE_PREFIX):
            return None
        if self._share_strategy == "mosquitto":
            group, sep, real = topic_filter[len(SHARE_PREFIX) :].partition("/")
            # (the whole filter passed the reader's checks: FILTER is valid, the group has no wildcard)
            return (group, real) if sep and real else None
        return parse_share(topic_filter)

    async def _add_shared(
        self, share: tuple[str, str], topic_filter: str, options: int, sub_id: int, session: GuardedSession, v5: bool
    ) -> int:
        """Join the group of a shared subscription: the granted QoS, or SUBACK_FAILURE. The ACL decides on
        FILTER (the group is no topic); RECEIVE is checked per delivery as for any subscription."""
        group_name, real = share
        if v5 and options & NO_LOCAL and self._share_strategy != "mosquitto":
            raise ProtocolViolation(
                f"No Local on the shared subscription {topic_filter!r} [MQTT-3.8.3-4]", code=Reason.PROTOCOL_ERROR
            )
        if not await self._topic_filtering(session, real, Action.SUBSCRIBE):
            return SUBACK_FAILURE
        qos = options & 3
        group = self._shares.get(share)
        if group is None:
            group = self._shares[share] = ShareGroup(group_name, real)
            self._shares_of.setdefault(real, []).append(group)
        group.add(session.client_id, (session.client_id, session, qos, options, sub_id))
        self._trie.add(real)
        self._filters_of.setdefault(session.client_id, set()).add(topic_filter)
        self._invalidate_routes()
        return qos

    def _leave_shared(self, share: tuple[str, str], topic_filter: str, session: GuardedSession) -> None:
        group = self._shares.get(share)
        if group is None or not group.remove(session.client_id):
            return
        filters = self._filters_of.get(session.client_id)
        if filters is not None:
            filters.discard(topic_filter)
            if not filters:
                del self._filters_of[session.client_id]
        if not len(group):
            del self._shares[share]
            real = share[1]
            groups = self._shares_of[real]
            groups.remove(group)
            if not groups:
                del self._shares_of[real]
                if not self._subscriptions.get(real):
                    self._trie.remove(real)
        self._invalidate_routes()

    async def handle_unsubscribe(self, session: GuardedSession, filters: list[str]) -> list[bool]:
        """Whether each filter was subscribed (for an MQTT 5 client's UNSUBACK: 0x00 or 0x11)."""
        existed = []
        for topic_filter in filters:
            existed.append(topic_filter in self._filters_of.get(session.client_id, ()))
            self._unsubscribe(topic_filter, session)
            await self.plugins_manager.fire_event(
                BrokerEvents.CLIENT_UNSUBSCRIBED, client_id=session.client_id, topic=topic_filter
            )
        self._save_subscriptions(session)
        return existed

    async def add_subscription(self, subscription: tuple[str, int], session: GuardedSession) -> int:
        """The filter was validated by the reader. A repeated filter replaces the old one, new QoS
        included [MQTT-3.8.4-3] (amqtt kept the old QoS)."""
        topic_filter, qos = subscription
        if not await self._topic_filtering(session, topic_filter, Action.SUBSCRIBE):
            return SUBACK_FAILURE
        entries = self._subscriptions.get(topic_filter)
        if entries is None:
            entries = self._subscriptions[topic_filter] = []
        self._trie.add(topic_filter)  # (also when amqtt code left an empty list behind)
        for i, (existing, _) in enumerate(entries):
            if existing.client_id == session.client_id:
                entries[i] = (session, qos)
                break
        else:
            entries.append((session, qos))
        self._filters_of.setdefault(session.client_id, set()).add(topic_filter)
        self._invalidate_routes()
        return qos

    def _unsubscribe(self, topic_filter: str, session: GuardedSession) -> None:
        """Remove one subscription of `session`; a filter nobody subscribes to any more leaves the trie."""
        if topic_filter.startswith(SHARE_PREFIX):
            try:
                share = self._share_of(topic_filter)
            except ProtocolViolation:
                share = None  # (nobody could have subscribed to it)
            if share is not None:
                self._leave_shared(share, topic_filter, session)
                return
        self._del_subscription(topic_filter, session)
        if topic_filter in self._subscriptions and not self._subscriptions[topic_filter]:
            del self._subscriptions[topic_filter]
            if topic_filter not in self._shares_of:
                self._trie.remove(topic_filter)

    def _del_subscription(self, a_filter: str, session: GuardedSession) -> int:
        """amqtt's, plus: cached routes are recomputed. (Whoever deletes the emptied filter from
        `_subscriptions` also removes it from the trie; a filter left in the trie matches no one.)"""
        deleted: int = super()._del_subscription(a_filter, session)
        if deleted:
            filters = self._filters_of.get(session.client_id)
            if filters is not None:
                filters.discard(a_filter)
                if not filters:
                    del self._filters_of[session.client_id]
            opts = self._sub5.get(session.client_id)
            if opts is not None:
                opts.pop(a_filter, None)
                if not opts:
                    del self._sub5[session.client_id]
            self._invalidate_routes()
        return deleted

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: GuardedSession, sub_id: int = 0
    ) -> None:
        """Retained messages on SUBSCRIBE pass the receiver's RECEIVE check (amqtt skipped it) and go
        out with RETAIN set at min(granted QoS, message QoS); to an MQTT 5 client with their properties
        (the time left of a Message Expiry Interval) and the subscription's identifier (`sub_id`). A
        retained message whose Message Expiry Interval has passed is sent to no one and forgotten
        (3.3.2.3.3; found here, when a subscription would deliver it, as mosquitto does; Redis drops it
        by itself). They come from the broker's local copy (durable/retained.py): no Redis round trip."""
        topic_filter, qos = subscription
        queue = queue_of(session)
        if queue is None:
            return
        store = self._retained
        for topic, retained in store.matching(topic_filter, self._matches):
            if not await self._topic_filtering(session, topic, Action.RECEIVE):
                continue
            client = session.guard_client
            if client is not None and not self.guard.admit_delivery(client, topic, len(retained.payload)):
                continue
            if store.messages.get(topic) != retained:  # replaced or cleared while the checks were awaited
                continue
            data, dq = retained.payload, min(qos, retained.qos)
            if session.protocol_level == MQTT5:
                topic_raw = topic.encode()
                forwarded = retained.forwarded
                if sub_id:
                    forwarded += mqtt5.sub_ids_block((sub_id,))
                expires = retained.expires
                if queue.max_packet and queue.max_packet < mqtt5.publish_size(
                    len(topic_raw), len(data), dq, len(forwarded) + (5 if expires else 0)
                ):
                    self._too_large(session.client_id)
                    continue
                ok = queue.offer5(topic_raw, data, dq, True, forwarded, expires)
            else:
                ok = queue.offer(topic.encode(), data, dq, True)
            if not ok:
                self._counters.incr(session.client_id, C.DROPPED_QUEUE_FULL)

    async def _publish_session_retained_messages(self, session: GuardedSession) -> None:
        """amqtt's offline queue (session.retained_messages) is not used: OutQueue holds those."""

    async def _session_monitor(self) -> None:
        """amqtt dropped disconnected anonymous sessions here (and clean ones after up to 1 s). Here a
        session with expiry 0 is dropped when its connection ends; the others are kept offline for their
        expiry (`session_expiry`: the MQTT 5 Session Expiry Interval, `limits.persistent_session_expiry`
        for 3.1.1 persistent ones; none: until dropped), on one deadline heap with one timer at its first
        deadline (`_expire_at`): no task, no timer per session."""

    def _expire_at(self, client_id: str, deadline: float) -> None:
        """The session of `client_id`, offline now, is discarded at loop time `deadline`."""
        if self._closing:  # (a shutdown discards every session)
            return
        self._expires[client_id] = deadline
        heap = self._expiry_heap
        heapq.heappush(heap, (deadline, client_id))
        timer = self._expiry_timer
        if heap[0][0] == deadline and (timer is None or timer.when() > deadline):
            if timer is not None:
                timer.cancel()
            self._expiry_timer = self._loop.call_at(deadline, self._expiry_due)

    def _expiry_due(self) -> None:
        self._expiry_timer = None
        try:
            self._expire_sessions(self._loop.time())
        except Exception:  # a bug must not end the expiry: the sessions would never expire again
            log.exception("expiring offline sessions failed")
        heap = self._expiry_heap
        if heap and not self._closing:
            self._expiry_timer = self._loop.call_at(heap[0][0], self._expiry_due)

    def _expire_sessions(self, now: float) -> None:
        """Discard the offline sessions whose deadline has come (logged at INFO); their delayed wills go
        out now (the session ends before the Will Delay Interval)."""
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            deadline, client_id = heapq.heappop(heap)
            if self._expires.get(client_id) != deadline:
                continue  # resumed since, or a later offline spell has its own entry
            del self._expires[client_id]
            entry = self._sessions.get(client_id)
            session = entry[0] if entry is not None else None
            if session is None or session.expiry == 0 or session.transitions.state == "connected":
                continue
            queue = queue_of(session)
            messages = queue.depth()[0] if queue is not None else 0
            client = session.guard_client
            if not self._release_will(client_id):  # (the will is checked as the client's: it keeps its guard)
                session.guard_client = None
            self._drop_session(client_id, session)
            log_info(
                log,
                "offline session of client %r (user %r) expired after %.0f s (%s): "
                "discarded with %d queued message(s); the client id is free",
                client_id,
                client.username if client is not None else session.username,
                session.expiry,
                "its Session Expiry Interval" if session.v5 is not None else "limits.persistent_session_expiry",
                messages,
            )

    # -- delayed wills (MQTT 5 Will Delay Interval) ------------------------------------------------
    def _delay_will(self, session: GuardedSession, delay: float) -> None:
        """Publish the will of `session` (offline now) after `delay` s, unless the session is resumed
        first (`_cancel_will`) or ends first (`_release_will`)."""
        loop = asyncio.get_running_loop()
        wheel = self._will_wheel
        if wheel is None:
            wheel = self._will_wheel = Wheel(loop, WILL_TICK)
        self._cancel_will(session.client_id)
        pending = PendingWill(session, self._will_due)
        pending.slot = wheel.add(pending, loop.time() + delay)
        self._wills[session.client_id] = pending

    def _take_will(self, client_id: str) -> PendingWill | None:
        pending = self._wills.pop(client_id, None)
        if pending is not None and self._will_wheel is not None:
            self._will_wheel.remove(pending, pending.slot)
        return pending

    def _cancel_will(self, client_id: str) -> None:
        """The session was resumed (or its client reconnected): its delayed will is discarded."""
        if self._wills:
            self._take_will(client_id)

    def _release_will(self, client_id: str) -> bool:
        """The offline session of `client_id` ends now: its delayed will, if any, is published at once."""
        pending = self._take_will(client_id) if self._wills else None
        if pending is None:
            return False
        self._spawn_will(pending.session)
        return True

    def _will_due(self, pending: PendingWill) -> None:
        """A delayed will's interval has passed (called by the wheel)."""
        client_id = pending.session.client_id
        if self._wills.get(client_id) is pending:
            del self._wills[client_id]
            self._spawn_will(pending.session)

    def _spawn_will(self, session: GuardedSession) -> None:
        if self._closing:  # a shutdown publishes no wills
            return
        task = self._loop.create_task(self._publish_will(session))
        self._will_tasks.add(task)
        task.add_done_callback(self._will_tasks.discard)

    def forget_session(self, client_id: str, by: str) -> bool:
        """The offline session of `client_id` held here was resumed on broker process `by` (it read the
        stored session): this copy goes without touching Redis, and without its delayed will (the
        session lives on). A connected one stays: the registry's take-over closes it."""
        entry = self._sessions.get(client_id)
        if entry is None:
            return False
        session = entry[0]
        if session.transitions.state == "connected":
            # still connected here (the registry's take-over closes it): when it ends it is forgotten
            # instead of going offline here, so this broker never writes over the session B owns now
            self._moved[client_id] = by
            return True
        self._moved.pop(client_id, None)
        if self._wills:
            self._take_will(client_id)
        self._expires.pop(client_id, None)
        del self._sessions[client_id]
        self._unchecked.discard(client_id)
        self._forget_subscriptions(session)
        queue = queue_of(session)
        if queue is not None:
            queue.clear()
        log_info(log, "offline session of client %r resumed on broker %s: forgotten here", client_id, by)
        return True

    async def drop_session(self, client_id: str, reason: str) -> bool:
        """Discard a client's session (`mqtt-guard session drop`): an offline one at once, a connected one
        by closing its connection (its will is published, as on a lost link) and discarding the session
        when it ends instead of keeping it. False: no session of that id here."""
        entry = self._sessions.get(client_id)
        if entry is None:
            return False
        session, handler = entry
        if session.transitions.state == "connected":
            log.warning("dropping the session of connected client %r: %s (disconnecting it)", client_id, reason)
            session.expiry = 0.0  # its end discards the session instead of keeping it offline
            if isinstance(handler, GuardedHandler):
                handler.close(f"session dropped by the server: {reason}", KICKED)
            await handler.stop()
            return True
        queue = queue_of(session)
        messages = queue.depth()[0] if queue is not None else 0
        client = session.guard_client
        if not self._release_will(client_id):  # its session ends: a delayed will goes out now
            session.guard_client = None
        self._drop_session(client_id, session)
        self._expires.pop(client_id, None)
        log.warning(
            "dropped the offline session of client %r (user %r) with %d queued message(s): %s",
            client_id,
            client.username if client is not None else session.username,
            messages,
            reason,
        )
        return True

    # -- shutdown --------------------------------------------------------------------------------
    async def shutdown(self, drain_grace: float = 0.0) -> None:
        """Stop accepting at once; with `drain_grace` (`shutdown.drain_grace`), serve the connected
        clients on for up to that long, or until `end_drain` (a client leaving meanwhile leaves as usual,
        will and all); then give queued deliveries a moment to reach the clients still connected, close
        every connection once (no wills: the clients did nothing wrong), and stop amqtt's machinery."""
        if self._shutting_down:
            return
        self._shutting_down = True
        for server in self._servers.values():
            try:
                if server.instance is not None:
                    server.instance.close()
            except Exception:
                log.debug("closing a listener failed", exc_info=True)
        reference = self.guard_config.shutdown.server_reference
        if reference:
            self._send_elsewhere(reference)
        if drain_grace > 0:
            await self._drain(drain_grace)
        self._closing = True
        self._shutdown_deadline = self._loop.time() + SHUTDOWN_FLUSH
        log.info(
            "shutting down: closing listeners and %d connection(s)",
            sum(1 for s, _ in self._sessions.values() if s.transitions.state == "connected"),
        )
        self._log_discarded_sessions()
        for client_id in list(self._wills):  # no wills at shutdown, delayed ones neither
            self._take_will(client_id)
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        await self.plugins_manager.fire_event(BrokerEvents.PRE_SHUTDOWN, wait=True)
        for _session, handler in list(self._sessions.values()):
            if isinstance(handler, GuardedHandler) and handler.session is not None:
                handler.publish_will = False
                handler.close("broker shutting down", SHUTDOWN)
        pending = [e.wait() for e in self._connections.values() if not e.is_set()]
        if pending:
            done, not_done = await asyncio.wait([asyncio.ensure_future(p) for p in pending], timeout=SHUTDOWN_FLUSH + 5)
            for task in not_done:
                task.cancel()
            if not_done:
                log.warning("%d connection(s) did not close in time", len(not_done))
        self._sessions.clear()
        self._subscriptions.clear()
        self._filters_of.clear()
        self._trie.clear()
        self._invalidate_routes()
        self._retained_messages.clear()
        self.transitions.shutdown()
        await self._shutdown_broadcast_loop()
        if self._session_monitor_task:
            self._session_monitor_task.cancel()
            await asyncio.gather(self._session_monitor_task, return_exceptions=True)
        for server in self._servers.values():
            try:
                await asyncio.wait_for(server.close_instance(), 5)
            except Exception:
                log.debug("closing a listener failed", exc_info=True)
        await self.plugins_manager.wait_fired_events()
        await self.plugins_manager.fire_event(BrokerEvents.POST_SHUTDOWN, wait=True)
        await self.plugins_manager.close()
        self.transitions.stopping_success()

    def _send_elsewhere(self, reference: str) -> None:
        """At shutdown with `shutdown.server_reference`: every connected MQTT 5 client is sent DISCONNECT
        0x9C Use another server with that Server Reference and closed now, without its will (it did nothing
        wrong), so it reconnects elsewhere while the drain serves the rest. MQTT 3.1.1 has no way to ask a
        client to leave: 3.1.1 clients are served until they go or the grace period ends, as before."""
        told = 0
        for session, handler in list(self._sessions.values()):
            if (
                isinstance(handler, GuardedHandler)
                and handler.session is not None
                and session.protocol_level == MQTT5
                and session.transitions.state == "connected"
            ):
                handler.publish_will = False
                handler.close("broker shutting down: told to use another server", USE_ANOTHER_SERVER, reference)
                told += 1
        if told:
            log.info("shutting down: told %d MQTT 5 client(s) to use another server (%s)", told, reference)

    async def _drain(self, grace: float) -> None:
        """Wait up to `grace` seconds (or until `end_drain`) for the connections to end on their own.
        The listeners are closed and CONNECTs still in flight are refused, so none are added meanwhile.
        (MQTT 5 clients were told to use another server first when `shutdown.server_reference` is set.)"""
        pending = [e for e in self._connections.values() if not e.is_set()]
        log.info("draining: listeners closed, serving %d connection(s) for up to %gs", len(pending), grace)
        if not pending:
            return
        everyone = asyncio.gather(*(e.wait() for e in pending))
        cut = asyncio.ensure_future(self._drain_cut.wait())
        either: list[asyncio.Future[Any]] = [everyone, cut]
        try:
            await asyncio.wait(either, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            everyone.cancel()
            cut.cancel()
        left = sum(1 for e in self._connections.values() if not e.is_set())
        log.info("drained: %d connection(s) left on their own, %d to close", len(pending) - left, left)

    def end_drain(self) -> None:
        """Cut a drain short (a second SIGTERM/SIGINT): the connections still open are closed now."""
        self._drain_cut.set()

    def _log_discarded_sessions(self) -> None:
        """Offline persistent sessions: kept in Redis (durable state), or say what a shutdown loses."""
        sessions = messages = 0
        for session, _ in self._sessions.values():
            if session.transitions.state != "connected":
                sessions += 1
                queue = queue_of(session)
                if queue is not None:
                    messages += queue.depth()[0]
        if sessions and self._journal is not None:
            log.info(
                "%d offline session(s) with %d queued message(s) are kept in Redis: any broker resumes them",
                sessions,
                messages,
            )
        elif sessions:
            log.warning(
                "%d offline session(s) with %d queued message(s) are discarded: durable state is off "
                "(durable.enabled false), sessions live in memory only",
                sessions,
                messages,
            )


def _check_connect_limits(info: ConnectInfo) -> None:
    """What the server refuses in a valid CONNECT before anyone is asked: MQTT 5 enhanced
    authentication (no method is offered: CONNACK 0x8C Bad authentication method [MQTT-4.12.0-1])."""
    method = info.props.get(mqtt5.AUTH_METHOD) if info.level == MQTT5 else None
    if method is not None:
        raise ProtocolViolation(
            f"enhanced authentication {method!r} is not supported",
            connack=CONNACK_NOT_AUTHORIZED,
            code=Reason.BAD_AUTHENTICATION_METHOD,
        )


def _connect_level(body: bytes) -> int:
    """The protocol level of a CONNECT body, as far as it can be read (0: unknown); for answering a
    refused MQTT 5 CONNECT in its own form."""
    if len(body) < 7 or body[:6] != b"\x00\x04MQTT":
        return 0
    return body[6]


_REFUSED_LOG = "refused CONNECT from %s: %s (CONNACK %d)"


async def _read_packet(reader: ReaderAdapter, max_packet: int) -> tuple[int, bytes]:
    """One whole packet from an amqtt reader adapter: (first byte, body)."""
    head = await _read_exactly(reader, 1)
    length, mult, header_len = 0, 1, 1
    while True:
        b = (await _read_exactly(reader, 1))[0]
        header_len += 1
        length += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult *= 128
        if header_len > 4:
            raise ProtocolViolation("malformed remaining length (more than 4 bytes)")
    if max_packet and header_len + length > max_packet:
        raise too_large(head[0], header_len + length, max_packet)
    body = await _read_exactly(reader, length) if length else b""
    return head[0], body


async def _read_first_packet(stream: asyncio.StreamReader, max_packet: int) -> tuple[int, bytes, bytes]:
    """One whole packet from a TCP/TLS stream, read in chunks (one read for a typical CONNECT instead of
    one per header byte): (first byte, body, the bytes read after it)."""
    data = await stream.read(READ_CHUNK)
    while True:
        if not data:
            raise EOFError
        try:
            return _split_first_packet(data, max_packet)
        except Incomplete:
            pass
        more = await stream.read(READ_CHUNK)
        if not more:
            raise EOFError
        data += more


def _split_first_packet(data: bytes, max_packet: int) -> tuple[int, bytes, bytes]:
    """(first byte, body, the bytes after it) of the packet at the start of `data`; Incomplete if it is
    not all there (ProtocolViolation: malformed or too large)."""
    first, length, hlen = parse_fixed_header(data, 0)
    if max_packet and hlen + length > max_packet:
        raise too_large(first, hlen + length, max_packet)
    end = hlen + length
    if len(data) < end:
        raise Incomplete
    return first, data[hlen:end], data[end:]


async def _read_exactly(reader: ReaderAdapter, n: int) -> bytes:
    data: bytes | None = await reader.read(n)
    if data is None or len(data) < n:
        raise EOFError
    return data


def _will_written(client_id: str, topic: str, written: asyncio.Future[None]) -> None:
    """A retained will's Redis write ended (nobody waits for it): a failure is logged."""
    if not written.cancelled() and written.exception() is not None:
        log.error("retained will of client %r to %r not stored in Redis: %s", client_id, topic, written.exception())


def _suback5(packet_id: int, codes: list[int], c5: Client5 | None) -> bytes:
    """An MQTT 5 SUBACK: with a refused filter, the Reason String of the first refusal, unless the client
    set Request Problem Information 0 [MQTT-3.1.2-29] (or it would exceed its Maximum Packet Size)."""
    failed = next((code for code in codes if code >= 0x80), 0)
    if not failed or c5 is None or not c5.problem_info:
        return mqtt5.encode_suback(packet_id, codes)
    return mqtt5.encode_suback(packet_id, codes, reason_string(failed), c5.max_packet)


def _refused(session: GuardedSession, code: int) -> None:
    """A PUBLISH refused (dropped): an MQTT 5 client's reader acknowledges it with `code` (reasons.py)."""
    c5 = session.v5
    if c5 is not None:
        c5.refused = code


async def _close_quietly(writer: WriterAdapter) -> None:
    try:
        await asyncio.wait_for(writer.close(), 2)
    except Exception:  # noqa: BLE001 - the peer may be gone already; closing is best effort
        pass


__all__ = ["GuardedBroker", "amqtt_config"]
