"""docs/deploy.md: every `mqtt-guard` command it tells an operator to type parses with the CLI, and
every deploy file it names exists."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from mqtt_guard.cli.main import build_parser
from mqtt_guard.config import GuardConfig, build
from tests.helpers.servers import ROOT

DOC = (ROOT / "docs" / "deploy.md").read_text()
LINES = "\n".join(re.findall(r"```sh\n(.*?)```", DOC, re.S)).replace("\\\n", " ").splitlines()


def cli_part(line: str) -> str | None:
    """What follows the program (or the image) on a shell line that runs `mqtt-guard`, without stdin
    redirections and comments; None for lines that only name the units (systemctl)."""
    m = re.search(r"(?:mqtt-guard:0\.1\.0|(?<![\w-])mqtt-guard) +([a-z].*)", line)
    if m is None or line.startswith("systemctl"):
        return None
    return re.sub(r"\s+#\s.*$", "", m.group(1).split("<<<")[0]).strip()


COMMANDS = [c for c in map(cli_part, LINES) if c]


def test_the_commands_were_found():
    assert len(COMMANDS) >= 3, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_cli_command_parses(command):
    args = build_parser().parse_args(shlex.split(command))
    assert args.command


def test_every_named_deploy_file_exists():
    named = set(re.findall(r"`((?:deploy/|Dockerfile|\.dockerignore)[\w./*-]*)`", DOC))
    assert {"Dockerfile", "deploy/compose.yaml", "deploy/k8s/"} <= named
    for path in named:
        assert list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists(), path
    assert "docs/deploy.md" in (ROOT / "README.md").read_text()


YAML_BLOCKS = re.findall(r"```ya?ml\n(.*?)```", DOC, re.S)


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.split(":", 1)[0])
def test_every_config_example_is_accepted(block):
    """An operator copies these into the config file: each must load and pass the checks the broker runs
    (a listener is added to fragments that have none)."""
    data = yaml.safe_load(block)
    data.setdefault("listeners", [{"type": "tcp", "bind": "127.0.0.1:1883"}])
    config = build(GuardConfig, data, "", "docs/deploy.md")
    config.check()
