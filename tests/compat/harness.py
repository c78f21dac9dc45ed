"""Imports the differential harness from mosquitto-compat/ (not a package of its own)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

COMPAT = Path(__file__).resolve().parents[2] / "mosquitto-compat"
if str(COMPAT) not in sys.path:
    sys.path.insert(0, str(COMPAT))

from diffharness import brokers, gen, mqtt, run, shared  # noqa: E402 - importable only after the sys.path line above

MOSQUITTO = brokers.mosquitto_binary()
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto broker not installed")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")

__all__ = ["MOSQUITTO", "MOSQUITTO_PASSWD", "brokers", "gen", "mqtt", "needs_mosquitto", "run", "shared"]


def connack(port: int, username: str | None = None, password: str | None = None, client_id: str = "t") -> int:
    """CONNACK return code of one CONNECT (raw client; -1 if the broker closed without one)."""
    import asyncio

    async def go() -> int:
        c = await mqtt.Client.connect(port, client_id, username, password)
        rc = c.rc
        await c.close()
        return rc  # type: ignore[return-value]  # diffharness is untyped

    return asyncio.run(go())


class Mosquitto:
    """A real mosquitto on a conf written by the test (listener on a free port, run as the current user)."""

    def __init__(self, directory: Path, body: str) -> None:
        self.port = brokers.free_port()
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(f"{brokers.run_as_line()}\nlistener {self.port} 127.0.0.1\n{body}\n")
        self.proc = brokers.mosquitto_proc(self.conf, self.port, directory / "mosquitto.log")

    def __enter__(self) -> Mosquitto:
        import asyncio

        self.proc.start()
        asyncio.run(self.proc.wait_ready())
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()
