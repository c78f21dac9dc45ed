"""HTTP GETs against the probes and /metrics that brokers and sidecars serve on 127.0.0.1."""

from __future__ import annotations

import urllib.error
import urllib.request

from tests.helpers.wait import until


def http_get(port: int, path: str, accept: str | None = None) -> tuple[int, str, str]:
    """(status, content type, body); an HTTP error status is returned, not raised."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def status(port: int, path: str) -> int | None:
    """The status of GET `path`, None when nothing answers."""
    try:
        return http_get(port, path)[0]
    except (OSError, urllib.error.URLError):
        return None


def wait_http(port: int, path: str = "/metrics", timeout: float = 10.0) -> None:
    """Wait until something answers `path` on `port`; fail with the connection error itself if not."""
    if not until(lambda: status(port, path) is not None, timeout, interval=0.05):
        http_get(port, path)
