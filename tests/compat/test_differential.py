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


# -- MQTT 5 clients (issue 16 item 6) -----------------------------------------------------------------


@needs_mosquitto
@pytest.mark.timeout(120)
def test_mqtt5_scenarios_run_against_mosquitto(redis_server, prefix, tmp_path):
    """The measuring mode: MQTT 5 (paho) and 3.1.1 clients mixed, against mosquitto alone. What mosquitto
    2.0.11 answers MQTT 5 clients under an acl_file (KEYS.md, "MQTT 5 clients"): CONNACK 0x87 for bad or
    missing credentials (not 0x86), PUBACK 0x87 for a denied QoS 1 PUBLISH, 0x10 when nobody subscribes."""
    observations: list = []
    stats, differences = asyncio.run(
        run.run(
            _seed(),
            redis_url=redis_server.url,
            prefix=prefix,
            pairs=3,
            epochs=2,
            scenarios=40,
            workdir=str(tmp_path),
            mqtt5=True,
            guard=False,
            observations=observations,
        )
    )
    assert not differences
    assert stats.scenarios == len(observations) >= 200, stats.summary()
    assert {0, 5, 0x87} <= set(stats.connacks), stats.summary()  # 5: a 3.1.1 client; 0x87: an MQTT 5 one
    assert {0, 0x10, 0x87} <= set(stats.pubacks), stats.summary()
    received = [m for _, sc, seen in observations for k, v in seen.items() if k.startswith("received") for m in v]
    with_props = [m for m in received if len(m) == 5 and any(name == "UserProperty" for name, _ in m[4])]
    assert with_props, stats.summary()  # user properties reach MQTT 5 subscribers


@needs_mosquitto
@pytest.mark.timeout(240)
def test_mosquitto_and_mqtt_guard_agree_with_mqtt5_clients(redis_server, prefix, tmp_path):
    seed = _seed()
    stats, differences = asyncio.run(
        run.run(
            seed,
            redis_url=redis_server.url,
            prefix=prefix,
            pairs=6,
            epochs=2,
            scenarios=40,
            workdir=str(tmp_path),
            mqtt5=True,
            max_differences=5,
        )
    )
    report = "\n\n".join(d.report() for d in differences)
    assert not differences, f"seed {seed}: {len(differences)} difference(s) with MQTT 5 clients:\n{report}"
    assert stats.scenarios >= 400, stats.summary()
