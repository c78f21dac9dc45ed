"""The differential test: randomized scenarios against a real mosquitto 2.0 and mqtt-guard on the same
mosquitto.conf must produce identical observations (mosquitto-compat/README.md).

Seeded: MQG_DIFF_SEED=<n> reproduces a run (the seed is in every failure message); the same run by
hand: `.venv/bin/python mosquitto-compat/differential.py --seed <n> --pairs 6 --epochs 3 --scenarios 40`.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.compat.harness import needs_mosquitto, run

DEFAULT_SEED = 20261127


def _seed() -> int:
    return int(os.environ.get("MQG_DIFF_SEED", DEFAULT_SEED))


@needs_mosquitto
@pytest.mark.timeout(240)
def test_mosquitto_and_mqtt_guard_agree_on_randomized_scenarios(redis_server, prefix, tmp_path):
    seed = _seed()
    stats, differences = asyncio.run(
        run.run(seed, redis_url=redis_server.url, prefix=prefix, pairs=6, epochs=3, scenarios=40, workdir=str(tmp_path))
    )
    report = "\n\n".join(d.report() for d in differences)
    assert not differences, f"seed {seed}: {len(differences)} difference(s) (MQG_DIFF_SEED={seed}):\n{report}"
    print(f"differential seed {seed}: {stats.summary()}")
    assert stats.scenarios >= 500, stats.summary()
    assert stats.reloads >= 6, stats.summary()  # later worlds arrive by SIGHUP on both brokers
    assert stats.delivered >= 200, stats.summary()  # the scenarios deliver, not only deny
    assert set(stats.connacks) >= {0, 5}, stats.summary()


@needs_mosquitto
def test_the_harness_sees_a_difference(redis_server, prefix, rds, tmp_path):
    """A Redis deny rule makes mqtt-guard stricter than mosquitto: the harness must report it."""
    pair_prefix = f"{prefix}p0:"
    rds.hset(f"{pair_prefix}acl:pattern", "#", "deny")
    rds.hset(f"{pair_prefix}acl:anonymous", "#", "deny")
    stats, differences = asyncio.run(
        run.run(
            3,
            redis_url=redis_server.url,
            prefix=prefix,
            pairs=1,
            epochs=1,
            scenarios=40,
            workdir=str(tmp_path),
            max_differences=1,
        )
    )
    assert differences, stats.summary()
    report = differences[0].report()
    assert "mosquitto:" in report and "mqtt-guard:" in report and "seed 3" in report
