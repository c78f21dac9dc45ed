"""Issue 21, items 3 and 6: the systemd units in deploy/systemd/, checked by `systemd-analyze verify`
(Debian's `systemd` package: .ci/run installs it) and for the options the issue asks for. verify also
checks that ExecStart's program exists, so it runs on a copy whose program is this machine's
`mqtt-guard` (the units name /opt/mqtt-guard/bin/mqtt-guard, where docs/deploy.md installs it)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mqtt_guard.cli.main import build_parser
from tests.deploy.files import CONFIG_PATH, DEPLOY, unit

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
INSTALLED = "/opt/mqtt-guard/bin/mqtt-guard"


def test_both_units_are_there():
    assert [u.name for u in UNITS] == ["mqtt-guard-sidecar.service", "mqtt-guard.service"]


def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail(
            "systemd-analyze is missing: apt-get install systemd (.ci/run and deploy/ensure-deps.sh --check do)"
        )
    program = Path(sys.executable).parent / "mqtt-guard"
    assert program.exists(), "the venv's mqtt-guard script"
    copies = []
    for u in UNITS:
        copy = tmp_path / u.name
        copy.write_text(u.read_text().replace(INSTALLED, str(program)))
        copies.append(str(copy))
    result = subprocess.run([exe, "verify", *copies], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values too, and only says so: any line about our units fails
    said = [ln for ln in (result.stdout + result.stderr).splitlines() if "mqtt-guard" in ln]
    assert result.returncode == 0 and not said, result.stdout + result.stderr


def test_verify_has_teeth(tmp_path):
    """A misspelt key in a copy of the unit is reported (so the check above would catch one)."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing")
    copy = tmp_path / "mqtt-guard.service"
    text = (DEPLOY / "systemd/mqtt-guard.service").read_text().replace(INSTALLED, sys.executable)
    copy.write_text(text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    result = subprocess.run([exe, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert "NoNewPrivilege" in result.stderr


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_restart_hardening_and_command(path):
    service = unit(path)["Service"]
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "root")
    assert service["CapabilityBoundingSet"] == ""
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == INSTALLED
    args = build_parser().parse_args(argv[1:])
    assert args.config == CONFIG_PATH
    assert service["EnvironmentFile"] == "-/etc/mqtt-guard/env"  # MQTT_GUARD_REDIS_URL lives there


def test_the_broker_unit_waits_for_readiness_and_leaves_room_for_the_drain():
    from mqtt_guard.config import load_config

    service = unit(DEPLOY / "systemd/mqtt-guard.service")["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"  # READY=1 from mqtt_guard.sdnotify
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP re-reads file-backed sources
    grace = load_config(DEPLOY / "mqtt-guard.yaml").shutdown.drain_grace
    assert int(service["TimeoutStopSec"].rstrip("s")) > grace + 5
