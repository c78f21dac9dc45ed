"""Fixtures shared by the MQTT 5 tests: one anonymous, allow-all broker with a tcp, a tls and a
websockets listener, and a way to open an MQTT 5 or 3.1.1 paho client on any of them."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers.certs import make_pki
from tests.helpers.mqtt5 import V5
from tests.helpers.servers import BrokerProcess, free_port, wait_port

TRANSPORTS = ["tcp", "tls", "websockets"]


@dataclass
class Listeners:
    broker: BrokerProcess
    ports: dict[str, int]
    tls: ssl.SSLContext

    def v5(self, transport: str = "tcp", client_id: str | None = None, **kw: Any) -> V5:
        return V5(
            self.ports[transport],
            client_id,
            transport="websockets" if transport == "websockets" else "tcp",
            tls=self.tls if transport == "tls" else None,
            **kw,
        )


@pytest.fixture
def listeners(start_broker, tmp_path) -> Callable[..., Listeners]:
    """Start the broker; `extra` is appended to its YAML config (e.g. a `limits:` section)."""

    def start(extra: str = "") -> Listeners:
        pki = make_pki(tmp_path)
        ports = {"tcp": free_port(), "tls": free_port(), "websockets": free_port()}
        config = tmp_path / f"guard-{ports['tcp']}.yaml"
        config.write_text(
            "auth:\n  allow_anonymous: true\nacl:\n  default: allow\nlisteners:\n"
            f"  - bind: 127.0.0.1:{ports['tcp']}\n"
            f"  - type: tls\n    bind: 127.0.0.1:{ports['tls']}\n"
            f"    certfile: {pki.server_cert}\n    keyfile: {pki.server_key}\n"
            f"  - type: websockets\n    bind: 127.0.0.1:{ports['websockets']}\n" + extra
        )
        broker = start_broker("--config", str(config), bind=False, wait_for_port=ports["tcp"])
        wait_port(ports["tls"])
        wait_port(ports["websockets"])
        broker.port = ports["tcp"]
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.check_hostname = False
        return Listeners(broker, ports, context)

    return start
