"""Deploy files and docs point at things that exist: the sidecar's `--metrics-bind` (not an internal
function), and no Redis keyspace-notification set-up (the broker learns of edits through client tracking)."""

from __future__ import annotations

from mqtt_guard.cli.main import build_parser
from tests.helpers.servers import ROOT


def test_prometheus_example_names_the_sidecar_command():
    text = (ROOT / "deploy" / "prometheus.yml").read_text()
    assert "mqtt-guard sidecar --metrics-bind" in text
    assert "mqtt_guard." not in text  # no internal function as the way to run it
    sidecar = build_parser().parse_args(["sidecar", "--metrics-bind", "0.0.0.0:9884"])
    assert sidecar.metrics_bind == "0.0.0.0:9884"


def test_no_keyspace_notification_setup_in_what_admins_read():
    files = [ROOT / "README.md", *sorted((ROOT / "deploy").glob("*.sh")), *sorted((ROOT / "docs").glob("*.md"))]
    offending = [str(f.relative_to(ROOT)) for f in files if "notify-keyspace-events KEA" in f.read_text()]
    assert not offending, offending
