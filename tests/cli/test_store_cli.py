"""`mqtt-guard store show|adopt` and the generation marker the writing commands create
(mqtt_guard/cli/store.py, mqtt_guard/store/generation.py)."""

from __future__ import annotations

import json


def test_the_first_write_creates_the_marker_and_adopt_replaces_it(cli, rds, prefix):
    none = cli("store", "show")
    assert none.returncode == 1 and "none" in none.stdout
    refused = cli("quota", "set", "ghost", "--events", "10/1m", "--strict")
    assert refused.returncode == 1 and not rds.exists(f"{prefix}generation")  # a refused command writes nothing
    assert cli("user", "add", "alice", "--password-stdin", input="pw\n").returncode == 0
    first = json.loads(rds.get(f"{prefix}generation"))
    assert first["by"].startswith("cli:") and not first["adopted"]
    shown = cli("store", "show")
    assert shown.returncode == 0 and first["token"] in shown.stdout
    assert cli("user", "passwd", "alice", "--password-stdin", input="pw2\n").returncode == 0
    assert json.loads(rds.get(f"{prefix}generation")) == first  # created once (SET NX)
    adopted = cli("store", "adopt")
    assert adopted.returncode == 0 and f"was {first['token']}" in adopted.stdout
    new = json.loads(rds.get(f"{prefix}generation"))
    assert new["adopted"] and new["token"] != first["token"] and new["created"] >= first["created"]
