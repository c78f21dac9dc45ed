"""Issue 21, items 1 and 6: deploy/compose.yaml, checked without a container runtime. Every service
names an image (and the broker's build context and Dockerfile exist), every file it mounts exists,
every named volume is declared, every published port is one the service really listens on, the
commands parse with the CLI, and Prometheus and Grafana are wired to what the stack serves."""

from __future__ import annotations

import re

import yaml

from mqtt_guard.cli.main import build_parser
from mqtt_guard.config import load_config
from tests.deploy.files import CONFIG, CONFIG_PATH, DEPLOY, yaml_documents

COMPOSE = DEPLOY / "compose.yaml"
STACK = yaml_documents(COMPOSE)[0]
SERVICES = STACK["services"]


def listening_ports(service: str) -> set[int]:
    """The ports a service's process listens on in the stack."""
    if service in ("broker", "sidecar"):
        config = load_config(CONFIG)
        if service == "sidecar":
            binds = [config.sidecar.prometheus_bind]
        else:
            binds = [lst.bind for lst in config.listeners] + [
                config.metrics.prometheus_bind,
                config.metrics.health_bind,
            ]
        return {int(b.rpartition(":")[2]) for b in binds if b}
    return {"redis": {6379}, "prometheus": {9090}, "grafana": {3000}}[service]


def test_the_stack_has_the_services_the_issue_names():
    assert set(SERVICES) == {"redis", "broker", "sidecar", "prometheus", "grafana"}
    redis = SERVICES["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[0] == "redis-data" and v.split(":")[1] == "/data" for v in redis["volumes"])


def test_images_are_pinned_and_the_build_context_exists():
    for name, service in SERVICES.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag"
        if "build" in service:
            context = (COMPOSE.parent / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name


def test_every_mounted_file_exists_and_every_named_volume_is_declared():
    declared = set(STACK.get("volumes") or {})
    used = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), f"{name}: {volume}"
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, "every declared volume is used"


def test_published_ports_are_ports_the_services_listen_on():
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            host, _, container = str(mapping).rpartition(":")
            assert host and int(container) in listening_ports(name), f"{name}: {mapping}"


def test_depends_on_names_services():
    for name, service in SERVICES.items():
        deps = service.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in SERVICES and dep != name, f"{name} depends on {dep}"


def test_commands_parse_and_read_the_mounted_config():
    for name in ("broker", "sidecar"):
        service = SERVICES[name]
        args = build_parser().parse_args(service["command"])
        assert args.command == name and args.config == CONFIG_PATH
        assert f"./mqtt-guard.yaml:{CONFIG_PATH}:ro" in service["volumes"]
        assert service["environment"]["MQTT_GUARD_REDIS_URL"] == "redis://redis:6379/0"  # the redis service
    check = SERVICES["sidecar"]["healthcheck"]["test"]
    assert "http://127.0.0.1:9884/livez" in " ".join(check)  # not the image's broker port
    grace = load_config(CONFIG).shutdown.drain_grace
    assert int(SERVICES["broker"]["stop_grace_period"].rstrip("s")) > grace, "docker must not kill a drain"


def test_prometheus_scrapes_the_broker_and_the_sidecar():
    prom = next(v for v in SERVICES["prometheus"]["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    scrape = yaml.safe_load((COMPOSE.parent / prom.split(":")[0]).read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"broker:9883", "sidecar:9884"}
    for target in targets:
        service, port = target.split(":")
        assert int(port) in listening_ports(service)


def test_grafana_provisions_the_dashboard_and_the_prometheus_datasource():
    mounts = {
        v.split(":")[1]: COMPOSE.parent / v.split(":")[0] for v in SERVICES["grafana"]["volumes"] if v.startswith(".")
    }
    providers = [
        yaml.safe_load(path.read_text()) for target, path in mounts.items() if "/provisioning/dashboards/" in target
    ]
    folder = providers[0]["providers"][0]["options"]["path"]
    dashboards = [path for target, path in mounts.items() if target.startswith(folder + "/")]
    assert [p.name for p in dashboards] == ["mqtt-guard.json"] and dashboards[0].samefile(
        DEPLOY / "grafana/mqtt-guard.json"
    )
    sources = [yaml.safe_load(p.read_text()) for t, p in mounts.items() if "/provisioning/datasources/" in t]
    source = sources[0]["datasources"][0]
    assert source["type"] == "prometheus" and re.fullmatch(r"http://prometheus:9090/?", source["url"])
