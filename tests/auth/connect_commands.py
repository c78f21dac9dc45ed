"""Redis commands per CONNECT of a known user, counted by the Redis server itself (not timed).

Why counting and not timing: every Redis round trip costs the broker ~100 µs of redis-py CPU, so the
number of commands a CONNECT makes is what limits the connection rate, and a count is not disturbed
by other work on a busy machine the way a timing is.

    .venv/bin/python -m tests.auth.connect_commands [--n 200]

Starts its own redis-server and broker, connects once (warm-up: fills the caches), resets
`INFO commandstats`, makes N sequential CONNECT+DISCONNECTs of the same user with a password, and
prints the calls of each command divided by N. An idle period as long as the run is measured the same
way first, so background work (heartbeats) can be told apart; the window after the run lasts until
the analytics flush of the run's clients is in. Not collected by
pytest (no `test_` prefix).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import redis

from tests.helpers.mqtt import connect
from tests.helpers.servers import BrokerProcess, RedisServer, run_cli


def commandstats(client: redis.Redis) -> dict[str, int]:
    """calls per command since the last CONFIG RESETSTAT (the CONFIG and INFO of this script excluded)."""
    raw = client.info("commandstats")
    out = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in raw.items()}
    for ours in ("config|resetstat", "info", "config"):
        out.pop(ours, None)
    return {k: v for k, v in out.items() if v}


def io_stats(client: redis.Redis) -> dict[str, int]:
    """Commands sent by clients (not those run inside Lua scripts) and read events (~ round trips:
    a pipeline usually arrives in one read)."""
    raw = client.info("stats")
    return {k: int(raw[k]) for k in ("total_commands_processed", "total_reads_processed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="CONNECTs to count (default 200)")
    args = parser.parse_args()
    server = RedisServer().start()
    prefix = "cc:"
    broker = None
    try:
        added = run_cli(server.url, prefix, "user", "add", "dev", "--password-stdin", input="pw\n")
        assert added.returncode == 0, added.stderr
        client = server.client()
        client.hset(f"{prefix}acl:user:dev", "dev/#", "readwrite")
        config = Path(tempfile.mkdtemp(prefix="mqg-cc-")) / "guard.yaml"
        config.write_text("acl:\n  default: deny\n")
        broker = BrokerProcess(server.url, prefix, args=["--config", str(config)]).start()
        warm = connect(broker.port, "dev", "pw")
        assert warm.rc == 0, warm.rc
        warm.close()
        time.sleep(1.0)  # let the warm-up's disconnect and first flush settle

        t0 = time.monotonic()
        for _ in range(args.n):
            c = connect(broker.port, "dev", "pw")
            assert c.rc == 0, c.rc
            c.close()
        elapsed = time.monotonic() - t0

        settle = 2.5  # the analytics flush (every 1 s) of the run's clients lands in the window
        time.sleep(settle)  # that run's own flush goes before the idle window
        client.config_resetstat()
        time.sleep(elapsed + settle)
        idle = commandstats(client)
        idle_io = io_stats(client)

        client.config_resetstat()
        for _ in range(args.n):
            c = connect(broker.port, "dev", "pw")
            assert c.rc == 0, c.rc
            c.close()
        time.sleep(settle)
        busy = commandstats(client)
        busy_io = io_stats(client)

        print(f"{args.n} CONNECT+DISCONNECT of one user with a password, {elapsed:.2f} s per run")
        print(f"{'command':24} {'calls':>7} {'idle':>7} {'per CONNECT':>12}")
        total = 0.0
        for name in sorted(set(busy) | set(idle)):
            per = (busy.get(name, 0) - idle.get(name, 0)) / args.n
            total += per
            print(f"{name:24} {busy.get(name, 0):7d} {idle.get(name, 0):7d} {per:12.2f}")
        print(f"{'total':24} {sum(busy.values()):7d} {sum(idle.values()):7d} {total:12.2f}")
        for name in busy_io:  # both include this script's own INFO/CONFIG calls (a few, over N)
            per = (busy_io[name] - idle_io[name]) / args.n
            print(f"{name:24} {busy_io[name]:7d} {idle_io[name]:7d} {per:12.2f}")
        client.close()
    finally:
        if broker is not None:
            broker.stop()
        server.cleanup()


if __name__ == "__main__":
    main()
