"""GuardedBroker: amqtt's Broker with the connection path made safe.

This module (with the handler classes next to it) is the only place that touches amqtt internals.
What it changes in amqtt 0.12.1, and why:
- Authentication runs before anything touches `_sessions`. amqtt deletes or overwrites an existing
  client's session while parsing the CONNECT, so a failed login with a victim's client id could
  silence or kick the victim. Here a refused CONNECT leaves no trace in broker state.
- A refused CONNECT gets CONNACK with session-present 0 and the guard's return code (5 not
  authorised, 3 server unavailable when Redis is down) and the socket is closed.
- A socket that sends no CONNECT within `limits.connect_timeout` is closed.
- `max_connections` refuses the extra connection instead of parking it without a CONNACK.
- No retained messages are sent at CONNECT: amqtt sent every retained message matching any
  client's subscription to every new client.
- A session take-over waits until the old connection has fully finished, so the old connection's
  clean-up cannot mark the resumed session disconnected after the new one started.
- Plugin exceptions in authentication deny that CONNECT instead of dropping it unanswered.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.contexts import ListenerConfig as AmqttListenerConfig
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session
from amqtt.utils import gen_client_id
from transitions import MachineError

from ..auth.authenticator import CONNACK_NOT_AUTHORIZED, CONNACK_SERVER_UNAVAILABLE
from ..config import GuardConfig, ListenerConfig
from ..guard import Guard
from ..logutil import RateLimitedLog
from .session_info import AUTH_RESULT, CLIENT, LISTENER, auth_result_of

log = logging.getLogger("mqtt_guard.broker")
plugin_log = RateLimitedLog(logging.getLogger("mqtt_guard.plugins"))

GUARD_PLUGINS = {
    "mqtt_guard.plugins.auth.GuardAuthPlugin": {},
    "mqtt_guard.plugins.acl.GuardAclPlugin": {},
}


def amqtt_config(config: GuardConfig, extra_plugins: dict[str, Any] | None = None) -> dict[str, Any]:
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
    return {"listeners": listeners, "plugins": {**GUARD_PLUGINS, **(extra_plugins or {})}}


class GuardedBroker(Broker):
    def __init__(
        self,
        config: GuardConfig,
        guard: Guard,
        *,
        extra_plugins: dict[str, Any] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.guard = guard  # set before amqtt builds the plugins: they look it up at init
        self.guard_config = config
        self._guard_listeners: dict[str, ListenerConfig] = {}
        self._connections: dict[str, asyncio.Event] = {}  # client id -> set when its connection has ended
        super().__init__(amqtt_config(config, extra_plugins), loop=loop)
        guard.kicker = self.kick
        for (name, theirs), ours in zip(self.listeners_config.items(), config.listeners, strict=True):
            self._guard_listeners[name] = ours
            # amqtt copies the default listener's fields into the others ("apply"); undo that.
            theirs.ssl = bool(ours.certfile)
            theirs.max_connections = 0  # we refuse over-limit connections ourselves

    # -- listeners -----------------------------------------------------------------------------
    def _create_ssl_context(self, listener: AmqttListenerConfig) -> ssl.SSLContext:  # type: ignore[override]
        ours = next((self._guard_listeners[n] for n, l in self.listeners_config.items() if l is listener), None)
        context = Broker._create_ssl_context(listener)
        if ours is not None and ours.require_certificate:
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    # -- connection path -----------------------------------------------------------------------
    async def _client_connected(self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter) -> None:
        server = self._servers.get(listener_name)
        listener = self._guard_listeners.get(listener_name)
        if server is None or listener is None:
            await writer.close()
            return
        peer = writer.get_peer_info()
        where = f"{peer[0]}:{peer[1]}" if peer else "unknown peer"
        if listener.max_connections and server.conn_count >= listener.max_connections:
            log.warning("refused connection from %s: listener %s is at max_connections=%d",
                        where, listener.bind, listener.max_connections)
            await writer.close()
            return
        await server.acquire_connection()
        try:
            await self._serve_connection(listener, reader, writer, where)
        finally:
            server.release_connection()

    async def _serve_connection(self, listener: ListenerConfig, reader: ReaderAdapter,
                                writer: WriterAdapter, where: str) -> None:
        incoming = await self._read_connect(reader, writer, where)
        if incoming is None:
            return
        handler, session = incoming
        session.attributes[LISTENER] = listener
        client_id = session.client_id = session.client_id or gen_client_id()
        code = await self._check_connect(session, listener, where)
        if code:
            self._detach(session)
            await self._refuse(writer, code)
            return
        done = asyncio.Event()
        previous = self._connections.get(client_id)
        self._connections[client_id] = done
        try:
            await self._take_over(client_id, previous)
            session = self._adopt_session(session)
            await self._run_session(reader, writer, session, handler)
        finally:
            self._detach(session)
            done.set()
            if self._connections.get(client_id) is done:
                del self._connections[client_id]

    def _detach(self, session: Session) -> None:
        client = session.attributes.pop(CLIENT, None)
        if client is not None:
            self.guard.detach(client)

    async def kick(self, client_id: str, reason: str) -> bool:
        """Close a client's connection from the server side (its will is published, as on a lost link)."""
        entry = self._sessions.get(client_id)
        if entry is None or entry[0].transitions.state != "connected":
            return False
        log.warning("disconnecting client %r: %s", client_id, reason)
        handler = entry[1]
        await handler.handle_connection_closed()
        await handler.stop()
        return True

    async def _read_connect(self, reader: ReaderAdapter, writer: WriterAdapter,
                            where: str) -> tuple[BrokerProtocolHandler, Session] | None:
        timeout = self.guard_config.limits.connect_timeout
        try:
            return await asyncio.wait_for(
                BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager), timeout)
        except TimeoutError:
            log.warning("closed connection from %s: no CONNECT within %.1f s", where, timeout)
        except (AMQTTError, MQTTError, NoDataError, ValueError, UnicodeDecodeError) as exc:
            log.warning("closed connection from %s: invalid CONNECT: %s", where, exc or type(exc).__name__)
        await _close_quietly(writer)
        return None

    async def _check_connect(self, session: Session, listener: ListenerConfig, where: str) -> int:
        """0 to accept, else the CONNACK return code. Every auth plugin must say yes."""
        try:
            ok = await self._authenticate(session, listener)  # type: ignore[arg-type]
        except Exception:
            log.exception("auth plugin failed for client %r from %s; refusing", session.client_id, where)
            return CONNACK_NOT_AUTHORIZED
        result = auth_result_of(session)
        if ok:
            if result is not None:
                session.is_anonymous = result.anonymous
                log.info("client %r connected from %s as %s (%s)", session.client_id, where,
                         result.username or "anonymous", result.outcome.value)
            return 0
        reason = result.outcome.value if result is not None else "refused by an auth plugin"
        code = result.connack_code if result is not None else CONNACK_NOT_AUTHORIZED
        log.warning("refused CONNECT of client %r from %s, username %r: %s (CONNACK %d)",
                    session.client_id, where, session.username, reason, code)
        return code or CONNACK_NOT_AUTHORIZED

    async def _authenticate(self, session: Session, _: Any) -> bool:
        """Like amqtt's, but a plugin that raises counts as a 'no' instead of killing the CONNECT."""
        results = []
        for plugin in self.plugins_manager._auth_plugins:  # noqa: SLF001
            try:
                result = await plugin.authenticate(session=session)
            except Exception:
                log.exception("auth plugin %s raised; treating it as a denial", type(plugin).__name__)
                result = False
            if result is not None:
                results.append(result)
        return bool(results) and all(results)

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        """Every topic plugin must allow. Ours answer synchronously (`check`), third-party ones are
        awaited one by one instead of through amqtt's Task-per-plugin gather; a plugin that raises
        or returns None denies that one check and is logged, the connection and the message for
        other subscribers are unaffected."""
        for plugin in self.plugins_manager._topic_plugins:  # noqa: SLF001
            try:
                check = getattr(plugin, "check", None)
                if check is not None:
                    allowed = check(session, topic, action)
                else:
                    allowed = await plugin.topic_filtering(session=session, topic=topic, action=action)
            except Exception:
                plugin_log.log(logging.ERROR, (type(plugin).__name__, action),
                               "topic plugin %s raised on %s %r; denying", type(plugin).__name__, action, topic,
                               exc_info=True)
                allowed = False
            if not allowed:
                if action is Action.PUBLISH and self.guard_config.acl.deny_publish_action == "disconnect":
                    asyncio.get_running_loop().create_task(self.kick(session.client_id, f"denied PUBLISH to {topic!r}"))
                return False
        return True

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        """Retained messages on SUBSCRIBE pass the receiver's RECEIVE check (amqtt skipped it) and go
        out at min(subscription QoS, message QoS)."""
        topic_filter, qos = subscription
        handler = self._get_handler(session)
        if handler is None:
            return
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic, Action.RECEIVE):
                continue
            await handler.mqtt_publish(retained.topic, retained.data, min(qos, retained.qos or 0), retain=True)

    @staticmethod
    async def _refuse(writer: WriterAdapter, code: int) -> None:
        try:
            await ConnackPacket.build(0, code).to_stream(writer)  # session present is always 0 on refusal
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass
        await _close_quietly(writer)

    async def _take_over(self, client_id: str, previous: asyncio.Event | None) -> None:
        """Disconnect a live connection with the same client id and wait until it has cleaned up."""
        entry = self._sessions.get(client_id)
        if entry is not None and entry[0].transitions.state == "connected":
            log.info("client %r connected again: closing its previous connection (take-over)", client_id)
            old_handler = entry[1]
            await old_handler.handle_connection_closed()
            await old_handler.stop()
        if previous is not None and not previous.is_set():
            try:
                await asyncio.wait_for(previous.wait(), 10)
            except TimeoutError:
                log.warning("previous connection of %r did not finish within 10 s", client_id)

    def _adopt_session(self, incoming: Session) -> Session:
        """amqtt's clean-session rules, applied only after authentication succeeded."""
        client_id = incoming.client_id
        existing = self._sessions.get(client_id, (None, None))[0]
        if incoming.clean_session or existing is None or existing.clean_session:
            if existing is not None:
                self._sessions.pop(client_id, None)
                self._forget_subscriptions(existing)
            incoming.parent = 0
            return incoming
        for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                     "username", "password", "remote_address", "remote_port", "ssl_object", "is_anonymous"):
            setattr(existing, name, getattr(incoming, name))
        existing.attributes.update(incoming.attributes)
        existing.parent = 1
        return existing

    def _forget_subscriptions(self, session: Session) -> None:
        for topic_filter in list(self._subscriptions):
            self._del_subscription(topic_filter, session)
            if not self._subscriptions[topic_filter]:
                del self._subscriptions[topic_filter]
        session.clear_queues()

    async def _run_session(self, reader: ReaderAdapter, writer: WriterAdapter, session: Session,
                           handler: BrokerProtocolHandler) -> None:
        try:
            session.transitions.connect()
        except (MachineError, ValueError):
            # A resumed session left in "connected" by an abrupt end: reset it.
            session.transitions.disconnect()
            session.transitions.connect()
        handler.attach(session, reader, writer)
        self._sessions[session.client_id] = (session, handler)
        await handler.mqtt_connack_authorize(True)
        await self.plugins_manager.fire_event(BrokerEvents.CLIENT_CONNECTED,
                                              client_id=session.client_id, client_session=session)
        await handler.start()
        await self._publish_session_retained_messages(session)
        try:
            await self._client_message_loop(session, handler)
        except (AMQTTError, MQTTError, NoDataError) as exc:
            log.warning("client %r: connection error: %s", session.client_id, exc)


async def _close_quietly(writer: WriterAdapter) -> None:
    try:
        await writer.close()
    except Exception:  # noqa: BLE001
        pass


__all__ = ["GuardedBroker", "amqtt_config", "AUTH_RESULT", "CONNACK_SERVER_UNAVAILABLE"]
