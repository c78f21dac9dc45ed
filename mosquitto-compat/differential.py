#!/usr/bin/env python3
"""Differential test: the same randomized scenarios against a real mosquitto 2.0 and mqtt-guard.

    .venv/bin/python mosquitto-compat/differential.py [--seed N] [--pairs 4] [--epochs 2] [--scenarios 60]
                                                      [--redis-url URL] [--keep DIR]
                                                      [--mqtt5] [--mosquitto-only]
    .venv/bin/python mosquitto-compat/differential.py --shared [--case NAME] [--mosquitto-only]

--mqtt5 mixes MQTT 5 clients (paho) with 3.1.1 ones; --mosquitto-only runs the scenarios against mosquitto
alone and prints what it answered (measuring mode: nothing is compared). --shared runs the fixed shared
subscription cases of SHARED.md instead of random scenarios.

Without --redis-url a private redis-server is started. Prints a summary and every difference (with
the seed, the generated files and the scenario); exits 1 if there is any. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from diffharness import shared  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from diffharness.brokers import RedisProc  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from diffharness.run import run  # noqa: E402 - after the sys.path set-up that lets the script run on its own


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    p.add_argument("--pairs", type=int, default=4, help="broker pairs (each with its own random files)")
    p.add_argument("--epochs", type=int, default=2, help="worlds per pair; later ones are applied with SIGHUP")
    p.add_argument("--scenarios", type=int, default=60, help="scenarios per epoch")
    p.add_argument("--concurrency", type=int, default=2, help="pairs running at the same time")
    p.add_argument("--max-differences", type=int, default=5, help="stop after this many differences")
    p.add_argument("--redis-url", help="Redis for mqtt-guard (default: start a private redis-server)")
    p.add_argument("--keep", metavar="DIR", help="write the generated files and broker logs under DIR")
    p.add_argument("--mqtt5", action="store_true", help="mix MQTT 5 clients with 3.1.1 ones")
    p.add_argument("--mosquitto-only", action="store_true", help="measure mosquitto alone; print its answers")
    p.add_argument("--shared", action="store_true", help="the shared subscription cases (SHARED.md)")
    p.add_argument("--case", help="with --shared: only this case")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    redis = None
    observations: list | None = [] if args.mosquitto_only else None
    if args.redis_url is None:
        redis = RedisProc(Path(tempfile.mkdtemp(prefix="mqg-diff-redis-"))).start()
    try:
        if args.shared:
            results = asyncio.run(
                shared.run(
                    redis_url=args.redis_url or redis.url,
                    prefix="shared:",
                    guard=not args.mosquitto_only,
                    workdir=args.keep,
                    only=args.case,
                )
            )
            text, differing = shared.report(results)
            print(text)
            print(f"{differing} case(s) differ" if differing else "no differences")
            return 1 if differing else 0
        stats, differences = asyncio.run(
            run(
                seed,
                redis_url=args.redis_url or redis.url,
                prefix=f"diff{seed}:",
                pairs=args.pairs,
                epochs=args.epochs,
                scenarios=args.scenarios,
                workdir=args.keep,
                concurrency=args.concurrency,
                max_differences=args.max_differences,
                mqtt5=args.mqtt5,
                guard=not args.mosquitto_only,
                observations=observations,
            )
        )
    finally:
        if redis is not None:
            redis.stop()
    for world, sc, seen in observations or []:
        print(f"world:\n{world.describe()}\nscenario:\n{sc.describe()}")
        print("\n".join(f"  {key}: {value}" for key, value in sorted(seen.items())))
    print(f"seed {seed}: {stats.summary()} in {stats.elapsed:.1f}s")
    for d in differences:
        print(d.report())
    if differences:
        print(f"{len(differences)} difference(s); reproduce with --seed {seed}")
        return 1
    print("no differences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
