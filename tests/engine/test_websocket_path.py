"""What the README says about websockets listeners: any URL path is served (clients usually use /mqtt),
and the client must offer the `mqtt` subprotocol (Sec-WebSocket-Protocol), as MQTT over WebSockets requires."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.helpers.servers import free_port


def _connack_over(port: int, path: str) -> bool:
    c = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"ws-{uuid.uuid4().hex[:8]}", transport="websockets", protocol=4
    )
    c.ws_set_options(path=path)
    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        return connected.wait(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_any_path_with_the_mqtt_subprotocol(start_broker, tmp_path):
    port = free_port()
    cfg = tmp_path / "ws.yaml"
    cfg.write_text(f"listeners:\n  - type: websockets\n    bind: 127.0.0.1:{port}\nauth:\n  allow_anonymous: true\n")
    start_broker("--config", str(cfg), bind=False, wait_for_port=port)
    for path in ("/mqtt", "/", "/any/path"):
        assert _connack_over(port, path), path
    with pytest.raises(InvalidStatus) as refused:  # no subprotocol offered
        ws_connect(f"ws://127.0.0.1:{port}/mqtt", open_timeout=5).close()
    assert refused.value.response.status_code == 400
    ws_connect(f"ws://127.0.0.1:{port}/mqtt", subprotocols=["mqtt"], open_timeout=5).close()
