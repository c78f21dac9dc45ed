"""Issue 21, item 5: graceful drain for rolling updates. On SIGTERM with `shutdown.drain_grace`, the
listeners close and /readyz fails at once (/livez stays 200), while the clients already connected are
served on until they leave, the grace period ends, or a second signal cuts it short."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from mqtt_guard.reasons import Reason
from tests.helpers import rawmqtt as raw
from tests.helpers.http import status, wait_http
from tests.helpers.mqtt5 import V5
from tests.helpers.servers import free_port
from tests.helpers.wait import expect


def drain_broker(anon_broker, grace: str):
    hport = free_port()
    broker = anon_broker(f"metrics:\n  health_bind: 127.0.0.1:{hport}\nshutdown:\n  drain_grace: {grace}\n")
    wait_http(hport, "/livez")
    expect(lambda: status(hport, "/readyz") == 200)
    return broker, hport


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_drain_serves_connected_clients_until_they_leave(anon_broker):
    broker, hport = drain_broker(anon_broker, "30s")
    client, _ = raw.connected(broker.port, "stayer", will=("wills/stayer", b"gone", 0, False))
    client.send(raw.subscribe(1, ("echo/#", 0)))
    client.expect(raw.SUBACK)
    broker.proc.send_signal(signal.SIGTERM)
    broker.wait_log("draining: listeners closed, serving 1 connection(s) for up to 30s")
    assert status(hport, "/readyz") == 503  # load balancers stop sending clients here at once...
    assert status(hport, "/livez") == 200  # ...but the process is alive: no restart
    assert refused(broker.port)  # no new connections
    with client:
        client.send(raw.publish("echo/1", b"still served"))  # the connected client is served on
        pkt = client.expect(raw.PUBLISH)
        assert (pkt.topic, pkt.payload) == ("echo/1", b"still served")
        client.send(raw.DISCONNECT_BYTES)
    assert broker.proc.wait(15) == 0  # (a wait of 15 s: it did not wait out the 30 s grace)
    log = broker.log()
    assert "drained: 1 connection(s) left on their own, 0 to close" in log and "stopped" in log


def test_drain_ends_at_the_grace_period_and_closes_without_wills(anon_broker):
    broker, _ = drain_broker(anon_broker, "1s")
    watcher, _ = raw.connected(broker.port, "watcher")
    watcher.send(raw.subscribe(1, ("wills/#", 0)))
    watcher.expect(raw.SUBACK)
    willing, _ = raw.connected(broker.port, "willing", will=("wills/w", b"gone", 0, False))
    started = time.monotonic()
    assert broker.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started >= 1  # it served the 1 s grace (stop() kills after its timeout: rc != 0)
    with watcher, willing:
        assert willing.closed_by_peer(1)
        assert raw.drain(watcher, 0.5) == []  # closed by the shutdown: no will (the clients did nothing wrong)
    assert "drained: 0 connection(s) left on their own, 2 to close" in broker.log()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_cuts_the_drain_short(anon_broker, second):
    broker, _ = drain_broker(anon_broker, "60s")
    client, _ = raw.connected(broker.port, "stayer")
    broker.proc.send_signal(signal.SIGTERM)
    broker.wait_log("draining:")
    # stop() kills the broker (rc != 0) after its own 15 s timeout: a clean exit proves the 60 s grace was cut
    assert broker.stop(second) == 0
    with client:
        assert client.closed_by_peer(1)


def test_without_a_grace_period_nothing_drains(anon_broker):
    broker = anon_broker()
    with raw.connected(broker.port, "c")[0] as client:
        assert broker.stop(signal.SIGTERM) == 0
        assert client.closed_by_peer(1)
    assert "draining" not in broker.log()


def test_mqtt5_clients_are_told_to_use_another_server_and_3_1_1_ones_are_served_on(anon_broker):
    """`shutdown.server_reference`: at SIGTERM every MQTT 5 client gets DISCONNECT 0x9C Use another server
    with the Server Reference (paho reads both) and no will; 3.1.1 clients are served through the drain."""
    hport = free_port()
    broker = anon_broker(
        f"metrics:\n  health_bind: 127.0.0.1:{hport}\n"
        "shutdown:\n  drain_grace: 30s\n  server_reference: mqtt-b.example.com:1883\n"
    )
    wait_http(hport, "/livez")
    watcher, _ = raw.connected(broker.port, "watcher")  # 3.1.1
    watcher.send(raw.subscribe(1, ("wills/#", 0), ("echo/#", 0)))
    watcher.expect(raw.SUBACK)
    moving = V5(broker.port, "moving", will=("wills/moving", b"gone", 0, False))
    assert moving.reason == 0
    broker.proc.send_signal(signal.SIGTERM)
    assert moving.disconnected.wait(10)
    assert moving.disconnect_reason == Reason.USE_ANOTHER_SERVER
    assert moving.disconnect_props.ServerReference == "mqtt-b.example.com:1883"
    assert moving.disconnect_props.ReasonString == "server shutting down, use another server"
    moving.paho.loop_stop()
    broker.wait_log("told 1 MQTT 5 client(s) to use another server (mqtt-b.example.com:1883)")
    with watcher:
        watcher.send(raw.publish("echo/1", b"still served"))  # the 3.1.1 client is served on
        pkt = watcher.expect(raw.PUBLISH)
        assert (pkt.topic, pkt.payload) == ("echo/1", b"still served")  # (and no will came before it)
        watcher.send(raw.DISCONNECT_BYTES)
    assert broker.proc.wait(15) == 0
    assert "left on their own, 0 to close" in broker.log()  # (the moved one ended at once; the other left)


def test_without_a_server_reference_mqtt5_clients_are_served_and_told_shutting_down(anon_broker):
    broker, _ = drain_broker(anon_broker, "1s")
    staying = V5(broker.port, "staying")
    assert staying.reason == 0
    broker.proc.send_signal(signal.SIGTERM)
    broker.wait_log("draining:")
    assert staying.publish("echo/x", b"during the drain", qos=1) == Reason.NO_MATCHING_SUBSCRIBERS  # served on
    assert staying.disconnected.wait(10)
    assert staying.disconnect_reason == Reason.SERVER_SHUTTING_DOWN
    assert getattr(staying.disconnect_props, "ServerReference", None) is None
    staying.paho.loop_stop()
    assert broker.proc.wait(15) == 0
