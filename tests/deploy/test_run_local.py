"""deploy/run-local.sh (`make run`): the Redis port survives restarts, `.run/env` points the CLI at the
run's Redis and prefix, MQTT_GUARD_PREFIX is honoured, and the broker sees no probe connection.

The functions are tested by sourcing the script; the whole script runs in a temporary copy of the
tree whose `.venv/bin/python` and `.venv/bin/mqtt-guard` run this tree's code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.helpers.mqtt import connect
from tests.helpers.servers import ROOT, free_port
from tests.helpers.wait import until, until_text

SCRIPT = ROOT / "deploy" / "run-local.sh"


def sourced(run_dir: Path, body: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `body` in bash with the script's functions defined, from `run_dir`."""
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"; {body}'],
        cwd=run_dir,
        env={**os.environ, "PY": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_redis_port_of_the_last_run_is_kept_unless_taken(tmp_path):
    saved = free_port()
    (tmp_path / "redis-port").write_text(f"{saved}\n")
    assert sourced(tmp_path, "choose_redis_port .").stdout.strip() == str(saved)
    assert sourced(tmp_path, "choose_redis_port .", REDIS_PORT="4242").stdout.strip() == "4242"
    with socket.socket() as other:  # another program took it meanwhile
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", saved))
        other.listen()
        r = sourced(tmp_path, "choose_redis_port .")
        assert r.stdout.strip() not in ("", str(saved)) and f"port {saved} of the last run is taken" in r.stderr
    (tmp_path / "redis-port").unlink()
    first = sourced(tmp_path, "choose_redis_port .").stdout.strip()
    assert first.isdigit()  # 6379 when free, else any free port
    if sourced(tmp_path, "port_free 6379").returncode == 0:
        assert first == "6379"


def test_env_file_points_the_cli_at_the_run(tmp_path, redis_server, prefix, add_user):
    add_user("alice", "pw")
    assert sourced(tmp_path, f"write_env . {redis_server.port} '{prefix}'").returncode == 0
    assert (tmp_path / "redis-port").read_text().strip() == str(redis_server.port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQTT_GUARD_")}
    listed = subprocess.run(
        ["bash", "-c", f'source {tmp_path}/env && "{sys.executable}" -m mqtt_guard user list'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["alice"]


def test_listening_reads_the_socket_table_without_connecting(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        assert sourced(tmp_path, f"listening {port}").returncode == 1
        server.listen()
        server.setblocking(False)
        assert sourced(tmp_path, f"listening {port}").returncode == 0
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected


def _tree_copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "deploy").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "run-local.sh", tree / "deploy" / "run-local.sh")
    # no apt-get from a test: the programs are there (the suite needs redis-server anyway)
    (tree / "deploy" / "ensure-deps.sh").write_text("#!/bin/sh\nexit 0\n")
    bin_dir = tree / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, tail in (("python", ""), ("mqtt-guard", " -m mqtt_guard")):
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}"{tail} "$@"\n')
        exe.chmod(0o755)
    return tree


class Run:
    """One `make run` (the script) in the background, its output in a file."""

    def __init__(self, tree: Path, **env: str) -> None:
        self.out_path = tree / f"run-{time.monotonic_ns()}.log"
        self.out = open(self.out_path, "w")
        clean = {k: v for k, v in os.environ.items() if k not in ("REDIS_PORT", "MQTT_PORT", "ADMIN_PORT")}
        self.proc = subprocess.Popen(
            ["bash", str(tree / "deploy" / "run-local.sh")],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env={**clean, "PYTHONUNBUFFERED": "1", **env},
            start_new_session=True,
        )

    def text(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_banner(self, timeout: float = 30) -> str:
        # fails at once when the script exits
        banner = until_text(self.text, "Ctrl-C stops everything.", timeout, 0.1, alive=lambda: self.proc.poll() is None)
        if banner is None:
            raise AssertionError(self.text())
        return banner

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.out.close()


def _redis_pid(tree: Path) -> int | None:
    """The pid `make run`'s redis-server wrote, read before the run stops (redis deletes the file as it
    shuts down); None when there is none."""
    try:
        return int((tree / ".run" / "redis.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _wait_gone(pid: int | None) -> None:
    if pid is None:
        return

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert until(gone, 5, interval=0.05), f"redis-server {pid} still running"


def test_make_run_keeps_its_port_and_honours_the_prefix(tmp_path):
    tree = _tree_copy(tmp_path)
    prefix = "t1:"
    first = Run(
        tree,
        REDIS_PORT=str(free_port()),
        MQTT_PORT=str(free_port()),
        ADMIN_PORT=str(free_port()),
        MQTT_GUARD_PREFIX=prefix,
    )
    try:
        banner = first.wait_banner()
        port = int((tree / ".run" / "redis-port").read_text())
        env = (tree / ".run" / "env").read_text()
        assert f"MQTT_GUARD_REDIS_URL=redis://127.0.0.1:{port}/0" in env and f"MQTT_GUARD_PREFIX={prefix}" in env
        assert f"redis://127.0.0.1:{port}/0   prefix {prefix}" in banner and "source .run/env" in banner
        rds = redis.Redis(port=port, decode_responses=True)
        assert rds.hget(f"{prefix}acl:user:demo", "demo/#") == "readwrite"
        assert not rds.keys("mqg:*")
        rds.close()
        mqtt_port = int(banner.split("MQTT:   127.0.0.1:")[1].split()[0])
        password = (tree / ".run" / "demo-password").read_text().strip()
        demo = connect(mqtt_port, "demo", password)
        assert demo.rc == 0 and demo.subscribe("demo/#") == [0]
        demo.publish("demo/hello", b"hi", qos=1)
        assert demo.receive().payload == b"hi"  # the demo rule works under the prefix
        demo.close()
        assert "before a complete CONNECT" not in first.text()
        # the admin API, with the token printed (docs/admin-api.md)
        base = banner.split("Admin API: ")[1].split()[0]
        token = banner.split("Admin token (shown once; a new one each run): ")[1].split()[0]
        req = urllib.request.Request(base + "/users", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert [u["username"] for u in json.load(resp)["items"]] == ["demo"]
        dashboard = banner.split("Dashboard: ")[1].split()[0]  # the dashboard's page, served by the same process
        with urllib.request.urlopen(dashboard, timeout=10) as resp:
            assert b"/static/app.js" in resp.read()
    finally:
        pid = _redis_pid(tree)
        first.stop()
    _wait_gone(pid)

    second = Run(  # no REDIS_PORT this time
        tree, MQTT_PORT=str(free_port()), ADMIN_PORT=str(free_port()), MQTT_GUARD_PREFIX=prefix
    )
    try:
        banner = second.wait_banner()
        assert f"redis://127.0.0.1:{port}/0" in banner  # the commands printed last time still work
        assert token not in banner  # a fresh token each run; the last one is revoked
    finally:
        pid = _redis_pid(tree)
        second.stop()
    _wait_gone(pid)
