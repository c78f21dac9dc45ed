"""The key layout version (issue 18 item 6, mqtt_guard/store/schema.py): a new deployment is stamped,
`store migrate` is idempotent, and brokers, sidecars and the CLI refuse a layout newer than they know
(a running broker treats such a change as a Redis outage in its fail mode)."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from mqtt_guard.store import schema
from mqtt_guard.store.keys import Keys
from tests.helpers.mqtt import connect
from tests.helpers.servers import guard_cmd

NEWER = str(schema.SCHEMA_VERSION + 1)


@given(st.integers(1, 50), st.integers(1, 50), st.integers(0, 10))
def test_a_release_runs_on_the_layouts_between_its_oldest_and_its_own(version, known, span):
    oldest = max(1, known - span)
    verdict = schema.judge(version, known=known, oldest=oldest)
    assert (verdict.problem is None) is (oldest <= version <= known)
    if version > known:
        assert "upgrade mqtt-guard" in (verdict.problem or "")
    elif version < oldest:
        assert "store migrate" in (verdict.problem or "")


def test_a_missing_key_is_the_unversioned_layout_and_garbage_is_refused():
    assert schema.parse(None) == 1
    assert schema.parse(b"3") == 3
    for bad in ("x", "0", "-2"):
        with pytest.raises(schema.SchemaMismatch, match="fix it by hand"):
            schema.parse(bad)


def test_migrate_runs_each_step_once_in_order(redis_server, prefix, rds):
    """Steps are run from the stored version up, the version written after each; a second run (or one
    resumed after a crash) does nothing more; a dry run changes nothing."""
    keys = Keys(prefix)
    ran: list[int] = []

    async def one_to_two(redis: Any, keys: Keys) -> str:
        ran.append(1)
        if await redis.exists(f"{keys.prefix}old"):
            await redis.rename(f"{keys.prefix}old", f"{keys.prefix}new")
        return "renamed old -> new"

    async def two_to_three(redis: Any, keys: Keys) -> str:
        ran.append(2)
        return "nothing"

    steps = {1: one_to_two, 2: two_to_three}
    rds.set(f"{prefix}old", "v")

    async def body() -> tuple[list[str], list[str], list[str]]:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            dry = await schema.migrate(client, keys, steps=steps, to=3, dry_run=True)
            assert await client.get(keys.schema()) is None and ran == []
            first = await schema.migrate(client, keys, steps=steps, to=3)
            again = await schema.migrate(client, keys, steps=steps, to=3)
            with pytest.raises(schema.SchemaMismatch, match="newer"):
                await schema.migrate(client, keys, steps=steps, to=2)  # an older release meets layout 3
            return dry, first, again
        finally:
            await client.aclose()

    dry, first, again = asyncio.run(body())
    assert dry == ["1 -> 2: would run one_to_two", "2 -> 3: would run two_to_three"]
    assert first == ["1 -> 2: renamed old -> new", "2 -> 3: nothing"] and again == []
    assert ran == [1, 2]
    assert rds.get(keys.schema()) == "3" and rds.get(f"{prefix}new") == "v"


def test_a_new_deployment_is_stamped_and_store_migrate_reports_it(redis_server, prefix, rds, cli, add_user):
    keys = Keys(prefix)
    add_user("dev", "pw")  # the first write: generation marker and layout version
    assert rds.get(keys.schema()) == str(schema.SCHEMA_VERSION)
    rds.delete(keys.schema())  # as a Redis written before versioning
    shown = cli("store", "show")
    assert f"{keys.schema()}: 1" in shown.stdout  # type: ignore[attr-defined]
    migrated = cli("store", "migrate")
    assert migrated.returncode == 0 and "nothing to move" in migrated.stdout  # type: ignore[attr-defined]
    assert rds.get(keys.schema()) == str(schema.SCHEMA_VERSION)


def test_the_cli_refuses_a_newer_layout_but_can_still_show_it(redis_server, prefix, rds, cli, add_user):
    add_user("dev", "pw")
    rds.set(Keys(prefix).schema(), NEWER)
    refused = cli("user", "list")
    assert refused.returncode == 1  # type: ignore[attr-defined]
    assert f"newer than this mqtt-guard knows ({schema.SCHEMA_VERSION})" in refused.stderr  # type: ignore[attr-defined]
    assert "upgrade mqtt-guard" in cli("store", "show").stdout  # type: ignore[attr-defined]
    assert cli("store", "migrate").returncode == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["broker", "sidecar", "admin"])
def test_broker_sidecar_and_admin_refuse_to_start_on_a_newer_layout(redis_server, prefix, rds, add_user, command):
    add_user("dev", "pw")
    rds.set(Keys(prefix).schema(), NEWER)
    args = {"broker": ["--bind", "127.0.0.1:0"], "sidecar": [], "admin": ["--bind", "127.0.0.1:0"]}[command]
    result = subprocess.run(
        guard_cmd("--redis-url", redis_server.url, "--prefix", prefix, command, *args),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "refuses to start" in result.stderr and "upgrade mqtt-guard" in result.stderr


def test_a_running_broker_distrusts_redis_while_the_layout_is_newer(redis_server, prefix, rds, add_user, start_broker):
    add_user("dev", "pw")
    add_user("late", "pw")  # never seen by the broker: its login needs Redis
    broker = start_broker()
    assert connect(broker.port, "dev", "pw").rc == 0
    rds.set(Keys(prefix).schema(), NEWER)
    broker.wait_log("upgrade mqtt-guard")
    assert connect(broker.port, "late", "pw").rc == 3  # Redis treated as unavailable (auth.on_redis_down: deny)
    assert " ERROR mqtt_guard.store.generation: " in broker.log()
    rds.set(Keys(prefix).schema(), str(schema.SCHEMA_VERSION))  # (a downgrade of the key, for the test)
    broker.wait_log("Redis holds this deployment's data again")
    assert connect(broker.port, "late", "pw").rc == 0
