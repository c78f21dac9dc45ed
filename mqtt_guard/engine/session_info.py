"""What the engine keeps on an amqtt Session (`GuardedSession`), and the light state machine it uses."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from amqtt.session import Session
from transitions import MachineError

if TYPE_CHECKING:
    from ..config import ListenerConfig
    from ..guard_client import GuardClient
    from .mqtt5 import Client5
    from .queues import OutQueue


T = TypeVar("T")


def queue_of(session: Any) -> OutQueue | None:
    """The session's outgoing queue (None for a session the engine did not make)."""
    return session.out_queue if isinstance(session, GuardedSession) else None


class SessionState:
    """What amqtt's per-session `transitions.Machine` offers and amqtt's code uses (`state`, the
    `connect`/`disconnect` triggers with their enter callbacks, `is_<state>()`), without building a
    Machine with five transitions for every CONNECT (about 130 us, the biggest share of the engine's own
    CONNECT cost). Invalid triggers raise transitions' MachineError as the Machine did.

    It refers to its session weakly: a strong reference back made every session a reference cycle
    (session -> state -> session), which reference counting cannot free, so each closed connection's
    session, queues and dicts (~3.7 KB) waited for a full garbage collection, which the runner makes rare
    (engine/runner.py GC_THRESHOLDS): RSS grew ~37 MB per 10,000 connect/disconnects (issue 15)."""

    __slots__ = ("state", "_session")

    def __init__(self, session: GuardedSession) -> None:
        self.state = "new"
        self._session = weakref.ref(session)

    def connect(self) -> bool:
        if self.state == "connected":
            raise MachineError("Can't trigger event connect from state connected!")
        self.state = "connected"
        session = self._session()
        if session is not None:
            session.on_enter_connected()
        return True

    def disconnect(self) -> bool:  # from any state (amqtt: new, connected and disconnected)
        self.state = "disconnected"
        session = self._session()
        if session is not None:
            session.on_enter_disconnected()
        return True

    def is_new(self) -> bool:
        return self.state == "new"

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"


NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5 Session Expiry Interval: the session does not expire (3.1.2.11.2)


def session_expiry(requested: int | None, cap: float | None) -> float | None:
    """How long a session outlives its connection, s (0.0: not at all; None: until it is discarded),
    the one rule of both protocol levels. `requested`: the MQTT 5 Session Expiry Interval (from the
    CONNECT, or the DISCONNECT that changed it; 0xFFFFFFFF: never), or None for a 3.1.1 persistent
    session (clean session 0), which asks for no limit (a 3.1.1 clean session is 0). `cap`:
    `limits.persistent_session_expiry` (None: no cap), which bounds what MQTT 5 clients ask as
    mosquitto's `persistent_client_expiration` does."""
    if requested == 0:
        return 0.0
    if requested is None or requested == NEVER_EXPIRES:
        return cap
    return float(requested) if cap is None or requested < cap else cap


_LAZY_QUEUES = ("retained_messages", "delivered_message_queue")


class lazy(Generic[T]):  # used like a decorator-made attribute
    """A class attribute whose value is made per instance on first access and then stored in the
    instance (a non-data descriptor: the instance's own attribute wins from then on). Unlike a class
    `__getattr__`, it leaves CPython's attribute-access specialisation on for the class."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self.factory = factory
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> lazy[T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object, objtype: type | None = None) -> T | lazy[T]:
        if obj is None:
            return self
        value = self.factory()
        obj.__dict__[self.name] = value
        return value


class GuardedSession(Session):  # type: ignore[misc]  # amqtt has no type information: Session is Any
    """amqtt's Session with the light `SessionState` in place of its transitions Machine, and amqtt's two
    per-session asyncio Queues (offline messages, delivered messages) created only if something asks for
    them: the engine keeps a session's messages in its OutQueue, so for it they stay empty, and two Queues
    per CONNECT were ~5 % of a CONNECT's CPU. Third-party plugins that use them get them on first access.

    The engine's own state of the session is in typed attributes (not amqtt's `attributes` dict): set by
    GuardedBroker, read on the hot path.

    Every attribute `__init__` sets is a slot (issue 15, memory): with more than 30 attributes CPython
    gives up the shared-key instance dict and makes each session a 1.6 KB dict of its own; slots are
    ~0.3 KB. (amqtt's Session has no `__slots__`, so `__dict__` stays for whatever else is set.)"""

    __slots__ = (
        "transitions",
        "remote_address",
        "remote_port",
        "client_id",
        "clean_session",
        "will_flag",
        "will_message",
        "will_qos",
        "will_retain",
        "will_topic",
        "keep_alive",
        "publish_retry_delay",
        "broker_uri",
        "username",
        "password",
        "cafile",
        "capath",
        "cadata",
        "_packet_id",
        "parent",
        "last_connect_time",
        "ssl_object",
        "last_disconnect_time",
        "attributes",
        "is_anonymous",
        "guard_client",
        "listener",
        "out_queue",
        "pub_ok",
        "pub_epoch",
        "protocol_level",
        "v5",
        "expiry",
    )

    def __init__(self) -> None:  # amqtt's Session.__init__, minus the Queues
        self.transitions = SessionState(self)
        self.remote_address: str | None = None
        self.remote_port: int | None = None
        self.client_id = ""  # set from the CONNECT (or generated) before anything else sees the session
        self.clean_session: bool | None = None
        self.will_flag = False
        self.will_message: bytes | bytearray | None = None
        self.will_qos: int | None = None
        self.will_retain: bool | None = None
        self.will_topic: str | None = None
        self.keep_alive = 0
        self.publish_retry_delay = 0
        self.broker_uri: str | None = None
        self.username: str | None = None
        self.password: str | None = None
        self.cafile: str | None = None
        self.capath: str | None = None
        self.cadata: bytes | None = None
        self._packet_id = 0
        self.parent = 0
        self.last_connect_time: int | None = None
        self.ssl_object: Any = None
        self.last_disconnect_time: int | None = None
        self.attributes: dict[str, Any] = {}
        self.is_anonymous = False
        # the engine's
        self.guard_client: GuardClient | None = None  # identity and ACL subject; None until admitted
        self.listener: ListenerConfig | None = None  # the listener the client came in on
        self.out_queue: OutQueue | None = None  # outgoing messages, kept across reconnects (persistent)
        # The broker's cache of this client's PUBLISH decisions: topics the ACL allowed, valid while
        # `pub_epoch` is the broker's `acl_epoch` (emptied when the session is resumed)
        self.pub_ok: dict[str, bool] = {}
        self.pub_epoch = -1
        self.protocol_level = 4  # of the connection that serves it: 3 (MQTT 3.1), 4 (3.1.1) or 5
        self.v5: Client5 | None = None  # MQTT 5: what the client's CONNECT asked of the server
        # How long the session outlives its connection, s: 0.0 ends it with the connection, None keeps it
        # until discarded. `clean_session` is only the CONNECT's "discard at start" (MQTT 5 Clean Start);
        # both levels set this one rule (GuardedBroker `_session_from`, `session_expiry`).
        self.expiry: float | None = 0.0

    retained_messages: lazy[asyncio.Queue[Any]] = lazy(asyncio.Queue)
    delivered_message_queue: lazy[asyncio.Queue[Any]] = lazy(asyncio.Queue)
    # amqtt's in-flight tables: the engine keeps in-flight messages in the OutQueue
    inflight_out: lazy[OrderedDict[int, Any]] = lazy(OrderedDict)
    inflight_in: lazy[OrderedDict[int, Any]] = lazy(OrderedDict)

    def clear_queues(self) -> None:
        for name in _LAZY_QUEUES:
            queue = self.__dict__.get(name)
            while queue is not None and not queue.empty():
                queue.get_nowait()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in _LAZY_QUEUES:
            state.pop(name, None)
        for name in GuardedSession.__slots__:
            if name != "transitions" and hasattr(self, name):
                state[name] = getattr(self, name)
        state["state"] = self.transitions.state  # (its weak reference cannot be pickled)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.transitions = SessionState(self)
        self.transitions.state = state.pop("state", "new")
        for name, value in state.items():
            setattr(self, name, value)

    # amqtt's _on_enter_* (which its transitions Machine called), without the DEBUG f-strings they build
    def on_enter_connected(self) -> None:
        self.last_connect_time = int(time.time())
        self.last_disconnect_time = None

    def on_enter_disconnected(self) -> None:
        self.last_disconnect_time = int(time.time())
