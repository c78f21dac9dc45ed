"""KEYS.md lists every mosquitto 2.0 key with the status mqtt-guard gives it (mqtt_guard/compat/keys.py)."""

from __future__ import annotations

import re
from pathlib import Path

from mqtt_guard.compat.keys import KEYS, lookup

ROOT = Path(__file__).resolve().parents[2]


def test_every_key_mosquitto_knows_has_a_status():
    measured = set((ROOT / "tests/compat/data/mosquitto-2.0.11-keys.txt").read_text().split())
    assert measured == set(KEYS)
    assert lookup("auth_opt_redis_host") is KEYS["auth_opt_"] and lookup("plugin_opt_x") is KEYS["plugin_opt_"]
    assert lookup("auth_opt_") is KEYS["auth_opt_"] and lookup("no_such_key") is None


def test_keys_md_matches_the_table():
    rows = re.findall(
        r"^\| `([^`]+)` \| (\w+) \| (.*?) \| (.*?) \|$", (ROOT / "mosquitto-compat/KEYS.md").read_text(), re.M
    )
    documented = {key.rstrip("*"): (status, note, reload) for key, status, note, reload in rows}
    assert set(documented) == set(KEYS)
    for key, info in KEYS.items():
        assert documented[key] == (info.status, info.note, info.reload), key
