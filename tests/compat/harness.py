"""Imports the differential harness from mosquitto-compat/ (not a package of its own)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

COMPAT = Path(__file__).resolve().parents[2] / "mosquitto-compat"
if str(COMPAT) not in sys.path:
    sys.path.insert(0, str(COMPAT))

from diffharness import brokers, gen, mqtt, run  # noqa: E402

MOSQUITTO = brokers.mosquitto_binary()
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto broker not installed")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")

__all__ = ["MOSQUITTO", "MOSQUITTO_PASSWD", "brokers", "gen", "mqtt", "needs_mosquitto", "run"]
