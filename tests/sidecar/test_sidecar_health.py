"""The sidecar's probes without its Prometheus endpoint (`sidecar.health_bind`, issue 21 item 4): /livez
and /readyz answer, /metrics is not served, and /readyz follows the sidecar's own view of Redis while
/livez never does."""

from __future__ import annotations

from tests.helpers.http import http_get, status, wait_http
from tests.helpers.servers import RedisServer, free_port
from tests.helpers.wait import expect
from tests.sidecar.helpers import SidecarProcess


def test_health_bind_serves_the_probes_alone(start_sidecar, tmp_path):
    port = free_port()
    config = tmp_path / "sidecar.yaml"
    config.write_text(f"sidecar:\n  health_bind: 127.0.0.1:{port}\n")
    sidecar = start_sidecar("--config", str(config), "--interval", "0.2")
    wait_http(port, "/livez")
    assert http_get(port, "/livez")[0] == 200
    expect(lambda: status(port, "/readyz") == 200)
    assert status(port, "/healthz") == 200  # the older name of /readyz
    assert status(port, "/metrics") == 404  # no Prometheus endpoint
    assert f"sidecar probes on http://127.0.0.1:{port}/livez" in sidecar.log()


def test_health_bind_readyz_fails_while_redis_is_away_and_livez_stays(prefix):
    own = RedisServer(persistent=True).start()
    port = free_port()
    sidecar = SidecarProcess(own.url, prefix, "--interval", "0.2", "--health-bind", f"127.0.0.1:{port}")
    try:
        sidecar.start()
        wait_http(port, "/livez")
        expect(lambda: status(port, "/readyz") == 200)
        own.stop()
        expect(lambda: status(port, "/readyz") == 503)
        code, _, body = http_get(port, "/readyz")
        assert (code, body) == (503, "redis unreachable\n")
        assert status(port, "/livez") == 200  # an outage must not get the sidecar restarted
        own.start()
        expect(lambda: status(port, "/readyz") == 200, timeout=20)
    finally:
        sidecar.stop()
        own.cleanup()
