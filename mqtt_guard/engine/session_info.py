"""What the guard records on an amqtt Session (in `session.attributes`), under names defined once."""

from __future__ import annotations

from typing import TYPE_CHECKING

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


class GuardedSession(Session):
    """amqtt's Session with the light `SessionState` in place of its transitions Machine."""

    def _init_states(self) -> None:
        self.transitions = SessionState(self)  # type: ignore[assignment]
