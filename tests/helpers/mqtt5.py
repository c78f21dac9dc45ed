"""paho-mqtt's MQTT 5 client as a device would use it, and raw MQTT 5 packets for byte-exact tests.

`V5` wraps a connected paho client (protocol MQTTv5) so tests read as behaviour: the CONNACK's reason
and properties, SUBACK/UNSUBACK reason codes, received messages with their properties, the server's
DISCONNECT reason. The raw builders extend tests/helpers/rawmqtt.py (3.1.1) with the v5 forms.
"""

from __future__ import annotations

import queue
import ssl
import struct
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.helpers import rawmqtt as raw

AUTH = 15


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: Any  # paho Properties (attributes named as in the spec: UserProperty, ContentType, ...)

    def prop(self, name: str, default: Any = None) -> Any:
        return getattr(self.props, name, default) if self.props is not None else default


def publish_properties(**kw: Any) -> Properties:
    """PUBLISH properties by their paho names, e.g. UserProperty=[("a", "1")], MessageExpiryInterval=5."""
    props = Properties(PacketTypes.PUBLISH)
    for name, value in kw.items():
        setattr(props, name, value)
    return props


class V5:
    """A paho MQTT 5 client, connected on construction (`reason`: the CONNACK reason code)."""

    def __init__(
        self,
        port: int,
        client_id: str | None = None,
        *,
        transport: str = "tcp",
        tls: ssl.SSLContext | None = None,
        clean_start: bool = True,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
        will_props: Properties | None = None,
        session_expiry: int | None = None,
        connect_props: dict[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.client_id = "" if client_id == "" else client_id or f"v5-{uuid.uuid4().hex[:10]}"
        c = self.paho = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5, transport=transport
        )
        if username is not None:
            c.username_pw_set(username, password)
        if tls is not None:
            c.tls_set_context(tls)
        if will is not None:
            c.will_set(will[0], will[1], will[2], will[3], properties=will_props)
        c.reconnect_delay_set(60, 120)
        self.messages: queue.Queue[Message] = queue.Queue()
        self.acks: queue.Queue[list[int]] = queue.Queue()
        self.published: queue.Queue[tuple[int, int]] = queue.Queue()  # (mid, reason code)
        self.disconnected = threading.Event()
        self.disconnect_reason: int | None = None
        self.disconnect_props: Any = None  # the properties of the server's DISCONNECT
        self.ack_props: queue.Queue[Any] = queue.Queue()  # SUBACK/UNSUBACK properties, in order
        self.publish_props: dict[int, Any] = {}  # mid -> the PUBACK's (or PUBREC's) properties
        self.connack_props: Any = None
        connacked: queue.Queue[int] = queue.Queue()

        def on_connect(_c, _u, _flags, reason_code, props):
            self.connack_props = props
            connacked.put(reason_code.value)

        def on_message(_c, _u, msg):
            self.messages.put(Message(msg.topic, msg.payload, msg.qos, bool(msg.retain), msg.properties))

        def on_ack(_c, _u, _mid, reason_codes, props):
            self.ack_props.put(props)
            self.acks.put([rc.value for rc in reason_codes])

        def on_publish(_c, _u, mid, reason_code, props):
            self.publish_props[mid] = props
            self.published.put((mid, reason_code.value))

        def on_disconnect(_c, _u, _flags, reason_code, props):
            self.disconnect_props = props
            self.disconnect_reason = reason_code.value
            self.disconnected.set()
            if connacked.empty():
                connacked.put(-1)

        c.on_connect = on_connect
        c.on_message = on_message
        c.on_subscribe = on_ack
        c.on_unsubscribe = on_ack
        c.on_publish = on_publish
        c.on_disconnect = on_disconnect
        props = Properties(PacketTypes.CONNECT)
        if session_expiry is not None:
            props.SessionExpiryInterval = session_expiry
        for name, value in (connect_props or {}).items():
            setattr(props, name, value)
        c.connect("127.0.0.1", port, keepalive=keepalive, clean_start=clean_start, properties=props)
        c.loop_start()
        try:
            self.reason = connacked.get(timeout=timeout)
        except queue.Empty:
            c.loop_stop()
            raise TimeoutError("no CONNACK") from None
        if self.reason != 0:
            c.loop_stop()

    def connack(self, name: str, default: Any = None) -> Any:
        return getattr(self.connack_props, name, default)

    def publish_with_props(
        self, topic: str, payload: bytes = b"x", qos: int = 1, timeout: float = 5.0
    ) -> tuple[int, Any]:
        """Publish at QoS 1 and wait for the PUBACK: (its reason code, its properties)."""
        info = self.paho.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout)
        while True:
            mid, rc = self.published.get(timeout=timeout)
            if mid == info.mid:
                return rc, self.publish_props.get(mid)

    def subscribe(
        self,
        topic_filter: str,
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        sub_id: int | None = None,
        timeout: float = 5.0,
    ) -> list[int]:
        options = SubscribeOptions(
            qos=qos, noLocal=no_local, retainAsPublished=retain_as_published, retainHandling=retain_handling
        )
        props = None
        if sub_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        self.paho.subscribe(topic_filter, options=options, properties=props)
        return self.acks.get(timeout=timeout)

    def unsubscribe(self, *filters: str, timeout: float = 5.0) -> list[int]:
        self.paho.unsubscribe(list(filters))
        return self.acks.get(timeout=timeout)

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"x",
        qos: int = 0,
        retain: bool = False,
        props: Properties | None = None,
        timeout: float = 5.0,
    ) -> int:
        """Publish and wait until it is done (PUBACK/PUBCOMP for QoS 1/2); the reason code of the ack."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(timeout)
        if qos == 0:
            return 0
        while True:
            mid, rc = self.published.get(timeout=timeout)
            if mid == info.mid:
                return rc

    def receive(self, timeout: float = 5.0) -> Message:
        return self.messages.get(timeout=timeout)

    def received(self, wait: float = 0.5) -> list[Message]:
        out = []
        try:
            while True:
                out.append(self.messages.get(timeout=wait))
        except queue.Empty:
            return out

    def close(self, reason: int = 0, props: Properties | None = None) -> None:
        try:
            if reason or props is not None:
                from paho.mqtt.reasoncodes import ReasonCode

                self.paho.disconnect(ReasonCode(PacketTypes.DISCONNECT, identifier=reason), props)
            else:
                self.paho.disconnect()
        finally:
            self.disconnected.wait(3)
            self.paho.loop_stop()


# -- raw MQTT 5 packets --------------------------------------------------------------------------
def varint(n: int) -> bytes:
    return raw.remaining_length(n)


def props(*items: tuple[int, bytes]) -> bytes:
    """A property block (length first) of (identifier, encoded value) pairs."""
    body = b"".join(varint(i) + v for i, v in items)
    return varint(len(body)) + body


def u16(n: int) -> bytes:
    return struct.pack("!H", n)


def u32(n: int) -> bytes:
    return struct.pack("!I", n)


def connect(client_id: str = "", *, properties: bytes = b"", **kw: Any) -> bytes:
    """An MQTT 5 CONNECT; `properties` is the property list WITHOUT its length."""
    return raw.connect(client_id, level=5, properties=properties, **kw)


def publish(
    topic: str | bytes,
    payload: bytes = b"x",
    qos: int = 0,
    packet_id: int = 1,
    retain: bool = False,
    properties: bytes = b"\x00",
) -> bytes:
    """An MQTT 5 PUBLISH; `properties` is the whole property block (length first)."""
    first = 0x30 | (qos << 1) | (1 if retain else 0)
    return raw.packet(first, raw.s(topic) + (u16(packet_id) if qos else b"") + properties + payload)


def subscribe(packet_id: int, *filters: tuple[str, int], properties: bytes = b"\x00") -> bytes:
    return raw.packet(0x82, u16(packet_id) + properties + b"".join(raw.s(f) + bytes([o]) for f, o in filters))


def ack(kind: int, packet_id: int, reason: int | None = None, properties: bytes | None = None) -> bytes:
    body = u16(packet_id)
    if reason is not None:
        body += bytes([reason])
        if properties is not None:
            body += properties
    return raw.packet((kind << 4) | (0x02 if kind == raw.PUBREL else 0), body)


def disconnect(reason: int = 0, properties: bytes | None = None) -> bytes:
    body = bytes([reason]) + (properties if properties is not None else b"")
    return raw.packet(0xE0, body)


def connected(port: int, client_id: str, *, properties: bytes = b"", **kw: Any) -> raw.RawClient:
    """A RawClient after an accepted MQTT 5 CONNECT (the CONNACK read)."""
    c = raw.RawClient(port)
    c.send(connect(client_id, properties=properties, **kw))
    pkt = c.expect(raw.CONNACK)
    assert pkt.body[1] == 0, f"CONNACK reason {pkt.body[1]:#x}"
    return c


def publish_parts(pkt: raw.Packet) -> tuple[str, int, bytes, bytes]:
    """(topic, packet id, property list without length, payload) of an MQTT 5 PUBLISH read raw."""
    body = pkt.body
    (n,) = struct.unpack("!H", body[:2])
    topic = body[2 : 2 + n].decode()
    pos = 2 + n
    pid = 0
    if pkt.qos:
        (pid,) = struct.unpack("!H", body[pos : pos + 2])
        pos += 2
    length, mult = 0, 1
    while True:
        b = body[pos]
        pos += 1
        length += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return topic, pid, body[pos : pos + length], body[pos + length :]


def disconnect_reason(client: raw.RawClient, timeout: float = 5.0) -> int | None:
    """The reason code of the server's DISCONNECT (packets before it skipped); None if it closed without."""
    while True:
        try:
            pkt = client.read(timeout)
        except TimeoutError:
            return None
        if pkt is None:
            return None
        if pkt.type == raw.DISCONNECT:
            return pkt.body[0] if pkt.body else 0
