"""Readers of the deploy files for the tests in tests/deploy/: the Dockerfile's instructions, the systemd
units' keys, the YAML documents, and the shipped config with its ports moved to free ones, so a test can
start a process exactly as the image or a unit would, on ports of its own."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.servers import ROOT, free_port

DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
CONFIG = DEPLOY / "mqtt-guard.yaml"  # the config file of the image, compose and the systemd units
CONFIG_PATH = "/etc/mqtt-guard/mqtt-guard.yaml"  # where all of them read it


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined
    line: int


def dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions of a Dockerfile, comments dropped and continuation lines joined."""
    out: list[Instruction] = []
    pending = ""
    start = 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    return out


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD (ValueError when it is shell form)."""
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"not an exec-form array: {args}")
    return value


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    """ENV of the final stage (KEY=VALUE pairs; $PATH-style references left as they are)."""
    env: dict[str, str] = {}
    for ins in final_stage(instructions):
        if ins.keyword == "ENV":
            for pair in shlex.split(ins.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last:]


def image_command(instructions: list[Instruction]) -> list[str]:
    """ENTRYPOINT + CMD of the final stage: what `docker run IMAGE` runs."""
    entry = [exec_form(i.args) for i in final_stage(instructions) if i.keyword == "ENTRYPOINT"]
    cmd = [exec_form(i.args) for i in final_stage(instructions) if i.keyword == "CMD"]
    return (entry[-1] if entry else []) + (cmd[-1] if cmd else [])


def unit(path: Path) -> configparser.ConfigParser:
    """A systemd unit file's keys (a key given twice keeps its last value, as systemd does for most)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def unit_environment(service: configparser.SectionProxy) -> dict[str, str]:
    """Environment= of a unit's [Service] (space-separated KEY=VALUE, quotes allowed)."""
    env: dict[str, str] = {}
    for pair in shlex.split(service.get("Environment", "")):
        key, _, value = pair.partition("=")
        env[key] = value
    return env


def yaml_documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def local_command(argv: list[str], config: Path) -> list[str]:
    """`argv` (a command of the image or a unit) to run here: the `mqtt-guard` program is this tree's
    `python -m mqtt_guard` (the same entry point, mqtt_guard.cli.main:main, without the installed
    script, which may belong to another checkout), and the config path is `config`."""
    program = argv[0].rsplit("/", 1)[-1]
    assert program == "mqtt-guard", argv
    return [sys.executable, "-m", "mqtt_guard", *(str(config) if a == CONFIG_PATH else a for a in argv[1:])]


def moved_config(tmp: Path, source: Path = CONFIG, data: dict[str, Any] | None = None) -> tuple[Path, dict[int, int]]:
    """A copy of a config file with every port it binds moved to a free port on 127.0.0.1; returns the
    copy and {shipped port: test port}. Binds naming one port get one test port (e.g. /metrics and the
    probes on one server)."""
    text = source.read_text() if data is None else yaml.safe_dump(data)
    ports: dict[int, int] = {}

    def move(m: re.Match[str]) -> str:
        port = int(m.group(2))
        ports.setdefault(port, free_port())
        return f"{m.group(1)}127.0.0.1:{ports[port]}"

    moved = re.sub(r"(bind: *)[0-9.]+:(\d+)", move, text)
    path = tmp / "mqtt-guard.yaml"
    path.write_text(moved)
    return path, ports
