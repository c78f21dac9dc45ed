"""What the guard records on an amqtt Session (in `session.attributes`), under names defined once."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from amqtt.session import Session
from transitions import MachineError

if TYPE_CHECKING:
    from ..auth.authenticator import AuthResult
    from ..config import ListenerConfig
    from ..guard_client import GuardClient
    from .queues import OutQueue

AUTH_RESULT = "mqtt_guard.auth"  # AuthResult of the CONNECT
CLIENT = "mqtt_guard.client"  # GuardClient: identity and ACL subject of an admitted client
LISTENER = "mqtt_guard.listener"  # our ListenerConfig the client came in on
OUT_QUEUE = "mqtt_guard.queue"  # OutQueue: the session's outgoing messages (kept across reconnects)


def auth_result_of(session: Session) -> AuthResult | None:
    return session.attributes.get(AUTH_RESULT)


def listener_of(session: Session) -> ListenerConfig | None:
    return session.attributes.get(LISTENER)


def client_of(session: Session) -> GuardClient | None:
    return session.attributes.get(CLIENT)


def queue_of(session: Session) -> OutQueue | None:
    return session.attributes.get(OUT_QUEUE)


class SessionState:
    """What amqtt's per-session `transitions.Machine` offers and amqtt's code uses (`state`, the
    `connect`/`disconnect` triggers with their enter callbacks, `is_<state>()`), without building a
    Machine with five transitions for every CONNECT (about 130 us, the biggest share of the engine's own
    CONNECT cost). Invalid triggers raise transitions' MachineError as the Machine did."""

    __slots__ = ("state", "_session")

    def __init__(self, session: Session) -> None:
        self.state = "new"
        self._session = session

    def connect(self) -> bool:
        if self.state == "connected":
            raise MachineError("Can't trigger event connect from state connected!")
        self.state = "connected"
        self._session._on_enter_connected()  # noqa: SLF001
        return True

    def disconnect(self) -> bool:  # from any state (amqtt: new, connected and disconnected)
        self.state = "disconnected"
        self._session._on_enter_disconnected()  # noqa: SLF001
        return True

    def is_new(self) -> bool:
        return self.state == "new"

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"


_LAZY_QUEUES = ("retained_messages", "delivered_message_queue")


class lazy:  # used like a decorator-made attribute
    """A class attribute whose value is made per instance on first access and then stored in the
    instance (a non-data descriptor: the instance's own attribute wins from then on). Unlike a class
    `__getattr__`, it leaves CPython's attribute-access specialisation on for the class."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        value = self.factory()
        obj.__dict__[self.name] = value
        return value


class GuardedSession(Session):
    """amqtt's Session with the light `SessionState` in place of its transitions Machine, and amqtt's two
    per-session asyncio Queues (offline messages, delivered messages) created only if something asks for
    them: the engine keeps a session's messages in its OutQueue, so for it they stay empty, and two Queues
    per CONNECT were ~5 % of a CONNECT's CPU. Third-party plugins that use them get them on first access."""

    def __init__(self) -> None:  # amqtt's Session.__init__, minus the Queues
        self._init_states()
        self.remote_address: str | None = None
        self.remote_port: int | None = None
        self.client_id: str | None = None  # type: ignore[assignment]
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
        self.ssl_object = None
        self.last_disconnect_time: int | None = None
        self.attributes: dict = {}
        self.inflight_out: OrderedDict = OrderedDict()
        self.inflight_in: OrderedDict = OrderedDict()
        self.is_anonymous = False

    retained_messages = lazy(asyncio.Queue)  # type: ignore[assignment]
    delivered_message_queue = lazy(asyncio.Queue)  # type: ignore[assignment]

    def clear_queues(self) -> None:
        for name in _LAZY_QUEUES:
            queue = self.__dict__.get(name)
            while queue is not None and not queue.empty():
                queue.get_nowait()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in _LAZY_QUEUES:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _init_states(self) -> None:
        self.transitions = SessionState(self)  # type: ignore[assignment]

    # amqtt's, without the DEBUG f-strings they build every time (whether DEBUG is on or not)
    def _on_enter_connected(self) -> None:
        self.last_connect_time = int(time.time())
        self.last_disconnect_time = None

    def _on_enter_disconnected(self) -> None:
        self.last_disconnect_time = int(time.time())
