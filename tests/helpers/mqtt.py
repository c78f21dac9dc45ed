"""paho-mqtt clients as a device would use them, wrapped so tests read as behaviour."""

from __future__ import annotations

import queue
import ssl
import threading
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

CONNACK_NOT_AUTHORIZED = 5
CONNACK_SERVER_UNAVAILABLE = 3


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Client:
    """A connected (or refused) paho client; `messages` collects what it receives."""

    paho: paho.Client
    rc: int
    messages: queue.Queue[Message] = field(default_factory=queue.Queue)
    disconnected: threading.Event = field(default_factory=threading.Event)
    subacks: queue.Queue[list[int]] = field(default_factory=queue.Queue)

    def subscribe(self, *filters: str | tuple[str, int], timeout: float = 5.0) -> list[int]:
        topics = [(f, 0) if isinstance(f, str) else f for f in filters]
        self.paho.subscribe(topics)
        return self.subacks.get(timeout=timeout)

    def publish(
        self, topic: str, payload: bytes | str = b"x", qos: int = 0, retain: bool = False, timeout: float = 5.0
    ) -> None:
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)

    def receive(self, timeout: float = 5.0) -> Message:
        return self.messages.get(timeout=timeout)

    def received(self, wait: float = 0.5) -> list[Message]:
        """Everything that arrives within `wait` seconds (for asserting absence)."""
        out = []
        try:
            while True:
                out.append(self.messages.get(timeout=wait))
        except queue.Empty:
            return out

    def close(self) -> None:
        try:
            self.paho.disconnect()
        finally:
            self.paho.loop_stop()


def connect(
    port: int,
    username: str | None = None,
    password: str | None = None,
    *,
    client_id: str | None = None,
    clean_session: bool = True,
    keepalive: int = 60,
    tls: ssl.SSLContext | None = None,
    timeout: float = 10.0,
    will: tuple[str, bytes] | None = None,
) -> Client:
    """Connect and wait for the CONNACK; `rc` is its return code (0 accepted, 5 not authorised...)."""
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"t-{uuid.uuid4().hex[:10]}",
        clean_session=clean_session,
        protocol=paho.MQTTv311,
    )
    if username is not None:
        c.username_pw_set(username, password)
    if tls is not None:
        c.tls_set_context(tls)
    if will is not None:
        c.will_set(will[0], will[1])
    c.reconnect_delay_set(60, 120)
    result: queue.Queue[int] = queue.Queue()
    client = Client(c, -1)

    def on_connect(_c, _u, _flags, reason_code, _props):
        result.put(reason_code.value if hasattr(reason_code, "value") else int(reason_code))

    def on_message(_c, _u, msg):
        client.messages.put(Message(msg.topic, msg.payload, msg.qos, bool(msg.retain)))

    def on_subscribe(_c, _u, _mid, reason_codes, _props):
        client.subacks.put([rc.value for rc in reason_codes])

    def on_disconnect(_c, _u, _flags, _rc, _props):
        client.disconnected.set()
        if result.empty():
            result.put(-1)

    c.on_connect = on_connect
    c.on_message = on_message
    c.on_subscribe = on_subscribe
    c.on_disconnect = on_disconnect
    c.connect("127.0.0.1", port, keepalive=keepalive)
    c.loop_start()
    try:
        rc = result.get(timeout=timeout)
    except queue.Empty:
        c.loop_stop()
        raise TimeoutError("no CONNACK") from None
    # paho v2 maps v3 CONNACK codes to v5 reason codes; bring them back to MQTT 3.1.1 numbers.
    client.rc = {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}.get(rc, rc)
    if client.rc != 0:
        c.loop_stop()
    return client


def retained_on(port: int, topic_filter: str, wait: float = 0.5) -> dict[str, bytes]:
    """What a fresh subscriber to `topic_filter` gets as retained messages (topic -> payload)."""
    c = connect(port)
    try:
        c.subscribe((topic_filter, 1))
        return {m.topic: m.payload for m in c.received(wait) if m.retain}
    finally:
        c.close()
