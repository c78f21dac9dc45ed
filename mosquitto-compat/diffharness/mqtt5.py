"""An MQTT 5 client for the harness: paho-mqtt's (`protocol=MQTTv5`) behind the raw client's interface.

paho is an implementation of MQTT 5 independent of both brokers (and of mqtt-guard's own codec), so
what it decodes is what a real device would see. Each client runs paho's network thread; every
callback is handed to the asyncio loop with `call_soon_threadsafe`, so all the state below is only
touched on the loop's thread. Like `mqtt.Client` it records what the broker answers: the CONNACK
reason code, SUBACK reason codes, the PUBACK reason code of each QoS 1 PUBLISH, every PUBLISH received
(with the MQTT 5 properties that are passed through), and whether the broker closed the connection
(with the DISCONNECT reason code when it sent one).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

# the properties a broker passes through from PUBLISH to delivery (MQTT-3.3.2-*), as paho names them
PASSED = ("UserProperty", "ContentType", "CorrelationData", "ResponseTopic", "PayloadFormatIndicator")


@dataclass
class Received5:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: tuple  # the passed-through properties (name, value) in PASSED order, + ("expiry", present)

    @property
    def observed(self) -> tuple:
        return (self.topic, self.payload.decode(errors="replace"), self.qos, self.retain, self.props)


def properties(kind: int, values: dict[str, Any] | None) -> Properties | None:
    """paho Properties of packet type `kind` from a {paho name: value} dict (None when empty)."""
    if not values:
        return None
    props = Properties(kind)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def _passed(props: Properties | None) -> tuple:
    out = []
    for name in PASSED:
        value = getattr(props, name, None) if props is not None else None
        if value is not None:
            out.append((name, tuple(map(tuple, value)) if name == "UserProperty" else value))
    present = props is not None and getattr(props, "MessageExpiryInterval", None) is not None
    out.append(("expiry", present))
    return tuple(out)


def _code(rc: Any) -> int:
    return rc.value if hasattr(rc, "value") else int(rc)


@dataclass
class Client5:
    client_id: str
    rc: int | None = None
    messages: list[Received5] = field(default_factory=list)
    closed: bool = False
    disconnect_rc: int | None = None  # the reason code of a DISCONNECT the broker sent
    connack_props: dict = field(default_factory=dict)
    filters: list[str] = field(default_factory=list)  # every filter it subscribed (run.py `_one_copy`)
    _paho: paho.Client | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _waiters: dict[tuple[str, int], asyncio.Future] = field(default_factory=dict)
    _done: dict[tuple[str, int], Any] = field(default_factory=dict)
    _connack: asyncio.Future | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        *,
        keepalive: int = 60,
        host: str = "127.0.0.1",
        timeout: float = 5.0,
        will: tuple[str, bytes, int, bool] | None = None,
        props: dict[str, Any] | None = None,
    ) -> Client5:
        """Connect and wait for the CONNACK: `rc` is its reason code, -1 if the broker closed without one."""
        loop = asyncio.get_running_loop()
        c = cls(client_id, _loop=loop)
        c._connack = loop.create_future()
        p = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, reconnect_on_failure=False
        )
        c._paho = p
        if username is not None:
            p.username_pw_set(username, password)
        if will is not None:
            p.will_set(will[0], will[1], will[2], will[3])
        p.on_connect = c._on_connect
        p.on_disconnect = c._on_disconnect
        p.on_message = c._on_message
        p.on_subscribe = c._on_subscribe
        p.on_unsubscribe = c._on_unsubscribe
        p.on_publish = c._on_publish
        try:
            await loop.run_in_executor(
                None,
                lambda: p.connect(
                    host, port, keepalive, clean_start=True, properties=properties(PacketTypes.CONNECT, props)
                ),
            )
        except OSError:
            c.rc, c.closed = -1, True
            return c
        p.loop_start()
        try:
            c.rc = await asyncio.wait_for(asyncio.shield(c._connack), timeout)
        except TimeoutError:
            c.rc = -1
        if c.rc != 0:  # refused: the broker closes the connection (dropping ours wakes paho's thread at once)
            await c.abort()
        return c

    async def close(self) -> None:
        p = self._paho
        if p is None:
            return
        self._paho = None
        if not self.closed:
            p.disconnect()
        self.closed = True
        await asyncio.get_running_loop().run_in_executor(None, p.loop_stop)

    async def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT (the will is published)."""
        p = self._paho
        self.closed = True
        if p is None:
            return
        sock = p.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._paho = None
        await asyncio.get_running_loop().run_in_executor(None, p.loop_stop)

    # -- paho's thread -> the loop -------------------------------------------------------------
    def _call(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client, userdata, flags, reason_code, props) -> None:
        self._call(self._connected, _code(reason_code), props)

    def _connected(self, rc: int, props: Properties | None) -> None:
        if props is not None:
            self.connack_props = {k: v for k, v in props.json().items() if v is not None}
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(rc)

    def _on_disconnect(self, client, userdata, flags, reason_code, props) -> None:
        from_server = bool(getattr(flags, "is_disconnect_packet_from_server", False))
        self._call(self._disconnected, _code(reason_code) if from_server else None)

    def _disconnected(self, rc: int | None) -> None:
        """The connection ended; `rc` is the reason code of the broker's DISCONNECT (None: no DISCONNECT)."""
        if not self.closed and rc is not None:
            self.disconnect_rc = rc
        self.closed = True
        self._arrived.set()
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(-1)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed by the broker"))
        self._waiters.clear()

    def _on_message(self, client, userdata, msg) -> None:
        received = Received5(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), _passed(msg.properties))
        self._call(self._message, received)

    def _message(self, received: Received5) -> None:
        self.messages.append(received)
        self._arrived.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, props) -> None:
        self._call(self._resolve, ("sub", mid), [_code(rc) for rc in reason_codes])

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, props) -> None:
        self._call(self._resolve, ("unsub", mid), [_code(rc) for rc in reason_codes])

    def _on_publish(self, client, userdata, mid, reason_code, props) -> None:
        self._call(self._resolve, ("pub", mid), _code(reason_code))

    def _resolve(self, key: tuple[str, int], value: Any) -> None:
        fut = self._waiters.pop(key, None)
        if fut is None:
            self._done[key] = value
        elif not fut.done():
            fut.set_result(value)

    async def _wait(self, key: tuple[str, int], timeout: float) -> Any:
        if key in self._done:
            return self._done.pop(key)
        if self.closed:
            raise ConnectionError("connection closed by the broker")
        fut = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        return await asyncio.wait_for(fut, timeout)

    # -- requests ---------------------------------------------------------------------------------
    async def subscribe(
        self, filters: list[tuple[str, int]], timeout: float = 5.0, options: dict[str, Any] | None = None
    ) -> list[int]:
        """SUBSCRIBE in one packet; the SUBACK reason codes (0-2 granted QoS, >= 0x80 refused)."""
        if self._paho is None or self.closed:
            raise ConnectionError("not connected")
        subs = [(f, SubscribeOptions(qos=q, **(options or {}))) for f, q in filters]
        self.filters.extend(f for f, _ in filters)
        _, mid = self._paho.subscribe(subs)
        return await self._wait(("sub", mid), timeout)  # type: ignore[arg-type]  # paho returns the mid it sent

    async def unsubscribe(self, filters: list[str], timeout: float = 5.0) -> list[int]:
        if self._paho is None or self.closed:
            raise ConnectionError("not connected")
        _, mid = self._paho.unsubscribe(filters)
        return await self._wait(("unsub", mid), timeout)  # type: ignore[arg-type]  # paho returns the mid it sent

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        timeout: float = 5.0,
        props: dict[str, Any] | None = None,
    ) -> int | None:
        """PUBLISH; for QoS 1/2 wait for the acknowledgement and return its reason code (None for QoS 0)."""
        if self._paho is None or self.closed:
            raise ConnectionError("not connected")
        info = self._paho.publish(topic, payload, qos, retain, properties(PacketTypes.PUBLISH, props))
        if qos == 0:
            return None
        return await self._wait(("pub", info.mid), timeout)

    async def ping(self, timeout: float = 5.0) -> None:
        """Two round trips (UNSUBSCRIBE of a filter never subscribed, answered by UNSUBACK; paho has no
        public PINGREQ). After the first the broker has processed everything this client sent before and
        written what it queued for it, as with the raw client's PINGREQ; the second covers incoming QoS 2:
        paho hands a QoS 2 message over at the PUBREL, which the broker sends only after the PUBREC that
        paho wrote before the second UNSUBSCRIBE."""
        await self.unsubscribe(["harness/round-trip"], timeout)
        await self.unsubscribe(["harness/round-trip"], timeout)

    async def wait_until(self, predicate: Any, timeout: float) -> bool:
        """Wait until `predicate()` holds after some message arrived (or the connection closed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate() and not self.closed:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return False
        return predicate()
