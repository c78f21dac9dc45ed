"""The sidecar's /metrics: the fleet's totals from Redis, each broker's liveness, the sidecar's loop lag."""

from __future__ import annotations

import subprocess
import urllib.request

from tests.helpers.mqtt import connect
from tests.helpers.servers import ROOT, free_port, guard_cmd, wait_port
from tests.helpers.wait import until


def test_sidecar_serves_fleet_metrics(redis_server, prefix, start_broker, add_user, rds):
    add_user("m1", "pw")
    rds.hset(f"{prefix}acl:user:m1", "m/#", "readwrite")
    broker = start_broker()
    client = connect(broker.port, "m1", "pw")
    client.subscribe("m/#")
    for _ in range(5):
        client.publish("m/t", b"x", qos=1)
    port = free_port()
    proc = subprocess.Popen(
        guard_cmd(
            "--redis-url",
            redis_server.url,
            "--prefix",
            prefix,
            "sidecar",
            "--interval",
            "0.2",
            "--metrics-bind",
            f"127.0.0.1:{port}",
        ),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc=proc)
        text = ""

        def counted() -> bool:
            nonlocal text
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            received = [
                line for line in text.splitlines() if line.startswith("mqtt_guard_fleet_messages_received_total")
            ]
            return bool(received) and float(received[0].split()[-1]) >= 5

        assert until(counted, 15, interval=0.3), text
        assert "mqtt_guard_sidecar_loop_lag_seconds" in text
        assert "mqtt_guard_fleet_broker_up" in text
        for probe in ("/livez", "/readyz", "/healthz"):  # the same probes as the broker's (issue 22)
            answer = urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=5)
            assert (answer.status, answer.read()) == (200, b"ok\n"), probe
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        client.close()
