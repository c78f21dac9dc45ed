"""Issue 21, items 4 and 6: the broker and the sidecar started exactly as the image, the compose stack,
the Kubernetes pods and the systemd units start them (the same command and arguments, the same
environment, the shipped config with its ports moved to free ones), against a real redis-server; their
probes answer, /readyz follows Redis under `on_redis_down: deny` while /livez stays 200, the TLS
listener of the Kubernetes config opens, and the systemd broker says READY=1 once it listens."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.deploy.files import (
    DEPLOY,
    dockerfile,
    image_command,
    image_env,
    local_command,
    moved_config,
    unit,
    unit_environment,
    yaml_documents,
)
from tests.helpers import rawmqtt as raw
from tests.helpers.certs import make_pki
from tests.helpers.http import http_get, status, wait_http
from tests.helpers.servers import ROOT, RedisServer, run_cli, wait_port
from tests.helpers.wait import expect


@contextmanager
def process(argv: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Run `argv` with exactly `env` on top of this test's (PATH and the interpreter stay ours)."""
    fd, log = tempfile.mkstemp(prefix="mqg-deploy-", suffix=".log")
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **env})
    try:
        yield proc, Path(log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        os.unlink(log)


def image_environment(redis_url: str, prefix: str) -> dict[str, str]:
    """The image's ENV, with the test's Redis (compose and the pods set MQTT_GUARD_REDIS_URL the same way)."""
    env = {k: v for k, v in image_env(dockerfile()).items() if k != "PATH"}  # /opt/mqtt-guard/bin is not here
    assert "MQTT_GUARD_REDIS_URL" in env
    return {**env, "MQTT_GUARD_REDIS_URL": redis_url, "MQTT_GUARD_PREFIX": prefix}


@pytest.fixture
def own_redis():
    server = RedisServer(persistent=True).start()  # its data survives the restart (generation marker)
    yield server
    server.cleanup()


def add_user(redis_url: str, prefix: str) -> None:
    result = run_cli(redis_url, prefix, "user", "add", "dev", "--password-stdin", input="pw\n")
    assert result.returncode == 0, result.stderr


def test_the_image_s_entrypoint_serves_mqtt_and_probes_and_readiness_follows_redis(own_redis, prefix, tmp_path):
    config, ports = moved_config(tmp_path)
    argv = local_command(image_command(dockerfile()), config)
    add_user(own_redis.url, prefix)
    with process(argv, image_environment(own_redis.url, prefix)) as (proc, log):
        wait_port(ports[1883], proc=proc)
        wait_http(ports[9883], "/livez")
        expect(lambda: status(ports[9883], "/readyz") == 200)
        with raw.connected(ports[1883], "dev-1", username="dev", password="pw")[0]:
            pass
        wait_port(ports[8083], proc=proc)  # the WebSocket listener
        own_redis.stop()
        expect(lambda: status(ports[9883], "/readyz") == 503)  # on_redis_down: deny refuses CONNECTs now
        assert "redis unreachable" in http_get(ports[9883], "/readyz")[2]
        assert status(ports[9883], "/livez") == 200  # an outage restarts nothing
        own_redis.start()
        expect(lambda: status(ports[9883], "/readyz") == 200, timeout=20)
        proc.send_signal(signal.SIGTERM)  # no client left: the drain ends at once
        assert proc.wait(15) == 0, log.read_text()
        assert "drain" in log.read_text()


def test_the_systemd_unit_s_command_says_ready_once_listening(redis_server, prefix, tmp_path):
    service = unit(DEPLOY / "systemd/mqtt-guard.service")["Service"]
    config, ports = moved_config(tmp_path)
    argv = local_command(shlex.split(service["ExecStart"]), config)
    # EnvironmentFile=-/etc/mqtt-guard/env as docs/deploy.md writes it
    env = {**unit_environment(service), "MQTT_GUARD_REDIS_URL": redis_server.url, "MQTT_GUARD_PREFIX": prefix}
    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(notify))
        systemd.settimeout(20)
        with process(argv, {**env, "NOTIFY_SOCKET": str(notify)}) as (proc, log):
            assert systemd.recv(64) == b"READY=1", log.read_text()
            socket.create_connection(("127.0.0.1", ports[1883]), timeout=2).close()  # listening when READY=1
            expect(lambda: status(ports[9883], "/readyz") == 200)
            proc.send_signal(signal.SIGTERM)
            assert systemd.recv(64) == b"STOPPING=1"
            assert proc.wait(15) == 0


@pytest.mark.parametrize("how", ["compose", "systemd", "kubernetes"])
def test_the_sidecar_as_deployed_serves_its_probes(redis_server, prefix, tmp_path, how):
    config, ports = moved_config(tmp_path)
    if how == "compose":
        command = ["mqtt-guard", *yaml_documents(DEPLOY / "compose.yaml")[0]["services"]["sidecar"]["command"]]
    elif how == "systemd":
        command = shlex.split(unit(DEPLOY / "systemd/mqtt-guard-sidecar.service")["Service"]["ExecStart"])
    else:
        pod = yaml_documents(DEPLOY / "k8s/sidecar-deployment.yaml")[0]["spec"]["template"]["spec"]
        command = ["mqtt-guard", *pod["containers"][0]["args"]]
    with process(local_command(command, config), image_environment(redis_server.url, prefix)) as (proc, log):
        wait_http(ports[9884], "/livez", timeout=20)
        expect(lambda: status(ports[9884], "/readyz") == 200)
        assert http_get(ports[9884], "/metrics")[0] == 200


def test_the_kubernetes_pod_serves_tls_and_probes(redis_server, prefix, tmp_path):
    """The broker container's args and environment (the Redis Secret's url) with the ConfigMap's config;
    the TLS certificate of the mounted Secret is a test one here."""
    pod = yaml_documents(DEPLOY / "k8s/broker-deployment.yaml")[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    data = yaml.safe_load(yaml_documents(DEPLOY / "k8s/configmap.yaml")[0]["data"]["mqtt-guard.yaml"])
    pki = make_pki(tmp_path)
    for listener in data["listeners"]:
        if listener["type"] == "tls":
            listener["certfile"], listener["keyfile"] = str(pki.server_cert), str(pki.server_key)
    config, ports = moved_config(tmp_path, data=data)
    env = {e["name"]: redis_server.url for e in container["env"] if e["name"] == "MQTT_GUARD_REDIS_URL"}
    assert env, "the Redis URL comes from the Secret"
    image = image_environment(redis_server.url, prefix)
    with process(local_command(["mqtt-guard", *container["args"]], config), {**image, **env}) as (proc, log):
        probe = next(
            p["containerPort"]
            for p in container["ports"]
            if p["name"] == container["readinessProbe"]["httpGet"]["port"]
        )
        wait_http(ports[probe], container["livenessProbe"]["httpGet"]["path"], timeout=20)
        expect(lambda: status(ports[probe], container["readinessProbe"]["httpGet"]["path"]) == 200)
        import ssl

        ctx = ssl.create_default_context(cafile=str(pki.ca))
        with socket.create_connection(("127.0.0.1", ports[8883]), timeout=5) as sock:
            with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
                assert tls.version() is not None
