"""Issue 21, items 2 and 6: the Kubernetes manifests under deploy/k8s/. Each document is validated against
the Kubernetes JSON schemas, offline, by `kubernetes-validate` (its schemas come in the wheel; strict:
an unknown field is an error), and the references between them are checked: the kustomization lists
every file, probes and Services use ports the pods name, selectors match the pod labels, the Secret
and ConfigMap the pods use exist, and the ConfigMap's config is a valid mqtt-guard config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from mqtt_guard.cli.main import build_parser
from mqtt_guard.config import GuardConfig, build
from tests.deploy.files import CONFIG_PATH, DEPLOY, yaml_documents
from tests.helpers.certs import make_pki

K8S = DEPLOY / "k8s"
KUBERNETES = "1.33.0"  # the oldest release still supported upstream when this was written; checked with the newest too
FILES = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
APPLIED = [p for p in FILES if not p.name.endswith(".example.yaml")]  # secret.example.yaml: created by hand
DOCS: list[tuple[Path, dict[str, Any]]] = [(p, d) for p in FILES for d in yaml_documents(p)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in of_kind(kind) if d["metadata"]["name"] == name)


@pytest.mark.parametrize("version", [KUBERNETES, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_manifests_match_the_kubernetes_schemas(path, version):
    for doc in yaml_documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_a_wrong_manifest():
    """The check above has teeth: a misspelt field and a wrong type are errors."""
    pdb = named("PodDisruptionBudget", "mqtt-guard-broker")
    typo = {**pdb, "spec": {**pdb["spec"], "maxUnavialable": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES, strict=True)
    wrong = {**pdb, "spec": {**pdb["spec"], "maxUnavailable": [1]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml_documents(K8S / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in APPLIED]


def test_the_issue_s_resources_are_there():
    kinds = sorted(d["kind"] for _, d in DOCS)
    assert kinds.count("Deployment") == 2 and "PodDisruptionBudget" in kinds
    assert {"ConfigMap", "Secret", "Service"} <= set(kinds)
    ports = {p["name"] for s in of_kind("Service") for p in s["spec"]["ports"]}
    assert {"mqtt", "mqtts", "mqtt-ws", "metrics"} <= ports  # MQTT, TLS, WebSocket, metrics


def pods() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, d["spec"]["template"]) for d in of_kind("Deployment")]


def test_deployments_probe_the_health_endpoints_on_named_ports():
    for deployment, template in pods():
        labels = template["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        for c in template["spec"]["containers"]:
            named_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            for probe in ("livenessProbe", "readinessProbe"):
                assert c[probe]["httpGet"]["port"] in named_ports
            args = build_parser().parse_args(c["args"])
            assert args.config == CONFIG_PATH
            for env in c.get("env", []):
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["key"] in named("Secret", ref["name"])["stringData"]
            mounts = {m["name"]: m for m in c["volumeMounts"]}
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            for name, mount in mounts.items():
                volume = volumes[name]
                if "configMap" in volume:
                    data = named("ConfigMap", volume["configMap"]["name"])["data"]
                    assert mount.get("subPath") in data and mount["mountPath"] == CONFIG_PATH


def test_services_and_the_pdb_select_pods_and_target_their_ports():
    templates = [t for _, t in pods()]
    for service in of_kind("Service"):
        matches = [t for t in templates if service["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert len(matches) == 1, service["metadata"]["name"]
        names = {p["name"] for c in matches[0]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, (service["metadata"]["name"], port)
    pdb = named("PodDisruptionBudget", "mqtt-guard-broker")
    broker = named("Deployment", "mqtt-guard-broker")
    assert pdb["spec"]["selector"]["matchLabels"] == broker["spec"]["selector"]["matchLabels"]
    assert broker["spec"]["replicas"] > pdb["spec"]["maxUnavailable"]


def configmap_config(tmp_path: Path) -> GuardConfig:
    """The ConfigMap's config, its TLS files replaced by a test certificate (the pod mounts a Secret)."""
    import yaml

    data = yaml.safe_load(named("ConfigMap", "mqtt-guard-config")["data"]["mqtt-guard.yaml"])
    pki = make_pki(tmp_path)
    for listener in data["listeners"]:
        if listener["type"] == "tls":
            assert listener["certfile"].startswith("/etc/mqtt-guard/tls/")  # where the tls Secret is mounted
            listener["certfile"], listener["keyfile"] = str(pki.server_cert), str(pki.server_key)
    return build(GuardConfig, data, "", "configmap")


def test_the_configmap_is_a_valid_config_whose_ports_the_pods_expose(tmp_path):
    config = configmap_config(tmp_path)
    config.check()
    broker = named("Deployment", "mqtt-guard-broker")["spec"]["template"]["spec"]
    exposed = {p["containerPort"] for c in broker["containers"] for p in c["ports"]}
    binds = [lst.bind for lst in config.listeners] + [config.metrics.health_bind or ""]
    assert {int(b.rpartition(":")[2]) for b in binds} == exposed
    sidecar = named("Deployment", "mqtt-guard-sidecar")["spec"]["template"]["spec"]
    assert config.sidecar.prometheus_bind
    assert {p["containerPort"] for c in sidecar["containers"] for p in c["ports"]} == {
        int(config.sidecar.prometheus_bind.rpartition(":")[2])
    }
    grace = named("Deployment", "mqtt-guard-broker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.shutdown.drain_grace + 5, "Kubernetes must not kill a broker in the middle of its drain"
