"""Redis Sentinel URLs: the broker and the CLI find the master through the sentinels."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers.mqtt import connect
from tests.helpers.servers import RedisServer, free_port, run_cli, wait_port
from tests.helpers.wait import until


@pytest.fixture
def sentinel_url():
    master = RedisServer().start()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="mqg-sentinel-"))
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\nsentinel monitor guardmaster 127.0.0.1 {master.port} 1\n"
    )
    proc = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port, proc=proc)
        yield f"redis+sentinel://127.0.0.1:{port}/guardmaster/0", master
    finally:
        proc.terminate()
        proc.wait(10)
        master.cleanup()


def test_broker_and_cli_work_through_sentinel(sentinel_url, start_broker, prefix):
    url, master = sentinel_url
    r = run_cli(url, prefix, "user", "add", "s1", "--password-stdin", input="pw\n")
    assert r.returncode == 0, r.stderr
    assert master.client().hget(f"{prefix}user:s1", "password").startswith("$7$")
    broker = start_broker(redis_url=url)
    client = connect(broker.port, "s1", "pw")
    assert client.rc == 0
    assert client.subscribe("s/#") == [128]
    master.client().hset(f"{prefix}acl:user:s1", "s/#", "read")  # live edit reaches the broker too
    assert until(lambda: client.subscribe("s/#") == [0], 5, 0.05), "ACL edit did not reach the broker through sentinel"
    client.close()


def test_bad_sentinel_urls_are_refused(prefix):
    for url, text in (
        ("redis+sentinel://127.0.0.1:1", "service name is missing"),
        ("redis+sentinel://nohost/svc", "must be host:port"),
        ("redis+cluster://127.0.0.1:7000", "unsupported Redis URL scheme"),
        ("redis+sentinel://127.0.0.1:1", "service name is missing"),
    ):
        r = run_cli(url, prefix, "user", "list")
        assert r.returncode == 1 and text in r.stderr and "Traceback" not in r.stderr, (url, r.stderr)
