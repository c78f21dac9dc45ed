"""deploy/ensure-deps.sh and the packaging of `make run` (issue 22 items 5 and 6): what a new admin
on a fresh machine is told, run against fake system commands on a PATH of the test's own (so no test
ever runs apt-get or sudo for real)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from tests.helpers.servers import ROOT

SCRIPT = ROOT / "deploy" / "ensure-deps.sh"


def _bin(tmp_path: Path, **scripts: str) -> Path:
    """A directory of fake commands: name -> shell body. `id` says a normal user, `sudo` refuses, and
    `apt-get` fails loudly if anything ever reaches it."""
    scripts = {"id": "echo 1000", "sudo": "exit 1", "apt-get": "echo apt-get was run >&2; exit 99", **scripts}
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, body in scripts.items():
        path = folder / name.replace("_", "-")
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    return folder


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(SCRIPT), *args], env={"PATH": str(folder)}, capture_output=True, text=True, timeout=30
    )


def test_a_python_without_venv_is_named_with_the_package_to_install(tmp_path):
    fake_python = 'for a in "$@"; do [[ "$a" == *ensurepip* ]] && exit 1; done; echo 3.11'
    folder = _bin(tmp_path, python3=fake_python)
    done = _run(folder, "--venv", str(folder / "python3"))
    assert done.returncode == 1
    assert "cannot build the virtual environment" in done.stderr
    assert "sudo apt-get install -y python3-venv" in done.stderr and "apt-get was run" not in done.stderr


def test_make_run_without_mosquitto_clients_says_what_to_install_and_goes_on(tmp_path):
    folder = _bin(tmp_path, redis_server="exit 0")  # redis-server present, mosquitto_pub not
    done = _run(folder, "--run")
    assert done.returncode == 0  # the banner's clients are a convenience, not a requirement
    assert "missing: mosquitto-clients; install them with: sudo apt-get install -y mosquitto-clients" in done.stderr


def test_make_run_installs_no_test_extras_and_the_license_is_an_spdx_string():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # a table made setuptools warn on every install
    makefile = (ROOT / "Makefile").read_text()
    assert "\nrun: venv\n" in makefile  # the runtime install only; `make test` adds the extras
    assert "$(PIP) install -q -e .\n" in makefile


def test_the_test_check_asks_for_systemd_analyze(tmp_path):
    """tests/deploy/test_systemd.py runs systemd-analyze verify: `make test` names the package."""
    done = _run(_bin(tmp_path, redis_server="exit 0", mosquitto="exit 0"), "--check")
    assert done.returncode == 0  # the deploy checks are not needed to run the broker
    assert "missing: systemd mosquitto-clients; install them with: sudo apt-get install -y systemd" in done.stderr
