"""What the guard records on an amqtt Session (in `session.attributes`), under names defined once."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amqtt.session import Session

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
