"""The engine over a websockets listener: the same reader, queue and writer loop, and a burst reaches a
subscriber that keeps up without queue drops."""

from __future__ import annotations

import queue
import threading
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.servers import free_port

N = 3000


def _ws_client(port: int, on_message=None) -> paho.Client:
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"ws-{uuid.uuid4().hex[:8]}",
        transport="websockets",
        protocol=paho.MQTTv311,
    )
    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()
    if on_message is not None:
        c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert connected.wait(5), "no CONNACK over websockets"
    return c


def test_websockets_listener_routes_a_burst(start_broker, tmp_path):
    port = free_port()
    cfg = tmp_path / "ws.yaml"
    cfg.write_text(
        f"listeners:\n  - type: websockets\n    bind: 127.0.0.1:{port}\n"
        "auth:\n  allow_anonymous: true\nacl:\n  default: allow\n"
    )
    broker = start_broker("--config", str(cfg), bind=False, wait_for_port=port)
    got: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    sub = _ws_client(port, lambda _c, _u, m: got.put(m.payload))
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.subscribe("ws/#", 1)
    assert subscribed.wait(5)
    pub = _ws_client(port)
    infos = [pub.publish("ws/t", b"%d" % i, qos=1) for i in range(N)]
    for info in infos:
        info.wait_for_publish(10)
    received = [got.get(timeout=10) for _ in range(N)]
    assert received == [b"%d" % i for i in range(N)]
    assert "queue of client" not in broker.log()
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()


def test_a_tcp_listener_after_a_websockets_first_one_stays_tcp(start_broker, tmp_path):
    """amqtt copies the first listener's fields into the others where they hold amqtt's defaults; a tcp
    listener's type is that default, so it used to become a second websockets server."""
    from tests.helpers.mqtt import connect

    ws, tcp = free_port(), free_port()
    cfg = tmp_path / "mixed.yaml"
    cfg.write_text(
        f"listeners:\n  - type: websockets\n    bind: 127.0.0.1:{ws}\n  - type: tcp\n    bind: 127.0.0.1:{tcp}\n"
        "auth:\n  allow_anonymous: true\nacl:\n  default: allow\n"
    )
    broker = start_broker("--config", str(cfg), bind=False, wait_for_port=ws)
    c = connect(tcp)
    assert c.rc == 0, broker.log()
    c.close()
    _ws_client(ws).disconnect()
