"""Edit-to-effect delay of ACL changes: from an HSET in Redis to the broker applying it.

Method: a publisher publishes to a topic it is denied, every 0.5 ms; a superuser subscriber listens.
At t0 the benchmark grants the publisher in Redis (a plain HSET, as redis-cli would); the delay is the
arrival of the first delivered message minus t0 (resolution ~0.5 ms). Then it revokes and repeats.
Writes JSON (median, p99, max over N trials) to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers.mqtt import connect  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from tests.helpers.servers import BrokerProcess, RedisServer, run_cli  # noqa: E402 - after the sys.path set-up that lets the script run on its own


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "tests/bench/results/acl_freshness.json"))
    args = ap.parse_args()
    redis_server = RedisServer().start()
    prefix = "fresh:"
    broker = None
    try:
        for name, flags in (("pub", []), ("root", ["--superuser"])):
            run_cli(redis_server.url, prefix, "user", "add", name, "--password-stdin", *flags, input="pw\n")
        broker = BrokerProcess(redis_server.url, prefix).start()
        r = redis_server.client()
        root = connect(broker.port, "root", "pw")
        root.subscribe("fresh/#")
        pub = connect(broker.port, "pub", "pw")
        stop = threading.Event()

        def publish_loop() -> None:
            while not stop.is_set():
                pub.paho.publish("fresh/t", b"x")
                time.sleep(0.0005)

        threading.Thread(target=publish_loop, daemon=True).start()
        delays = []
        for _ in range(args.trials):
            r.hdel(f"{prefix}acl:user:pub", "fresh/#")
            time.sleep(0.1)
            root.received(0.05)  # drain
            t0 = time.perf_counter()
            r.hset(f"{prefix}acl:user:pub", "fresh/#", "write")
            root.receive(timeout=5)
            delays.append((time.perf_counter() - t0) * 1000)
        stop.set()
        delays.sort()
        result = {
            "trials": len(delays),
            "median_ms": round(statistics.median(delays), 2),
            "p99_ms": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))], 2),
            "max_ms": round(delays[-1], 2),
        }
        print(json.dumps(result))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        pub.close()
        root.close()
    finally:
        if broker is not None:
            broker.stop()
        redis_server.cleanup()


if __name__ == "__main__":
    main()
