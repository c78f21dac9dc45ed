"""Every /api request needs a bearer token; read-only tokens are refused on writes; TLS with a cert."""

from __future__ import annotations

import re
import ssl

import pytest

from mqtt_guard.admin.api import ROUTES
from tests.admin.helpers import AdminProcess, Api, create_token
from tests.helpers.certs import make_pki


def _concrete(path: str) -> str:
    return re.sub(r"{\w+}", "x", path)


def test_no_token_bad_token_and_wrong_scheme_get_401(admin):
    for api in (admin.anon, admin.api.with_token("mqga_not-a-token"), admin.api.with_token("")):
        reply = api.get("/api/users")
        assert reply.status == 401, reply.body
        assert reply.body["error"] == "unauthorized" and reply.body["detail"]
        assert reply.headers.get("WWW-Authenticate") == "Bearer"
    for r in ROUTES:  # every route, also the writes and unknown paths: 401 before anything else
        if r.public:  # the dashboard's login takes its token in the body (tests/admin/test_session.py)
            continue
        assert admin.anon.call(r.method, _concrete(r.path), {}).status == 401, r.path
    assert admin.anon.get("/api/no-such-route").status == 401


def test_probes_and_openapi_need_no_token(admin):
    for path in ("/livez", "/readyz", "/healthz", "/openapi.json"):
        assert admin.anon.get(path).status == 200, path


@pytest.mark.parametrize("r", [r for r in ROUTES if r.writes], ids=lambda r: f"{r.method} {r.path}")
def test_read_only_token_is_refused_on_every_write(admin, r):
    reply = admin.ro.call(r.method, _concrete(r.path), {})
    assert reply.status == 403, reply.body
    assert reply.body == {"error": "forbidden", "detail": "token 'dash' is read-only"}


def test_read_only_token_reads(admin):
    admin.api.ok("POST", "/api/users", {"username": "alice", "password": "pw"}, 201)
    assert admin.ro.ok("GET", "/api/users")["items"][0]["username"] == "alice"


def test_revoked_token_is_refused_at_once(admin, cli):
    assert admin.api.get("/api/users").status == 200
    assert cli("admin", "token", "revoke", "ops").returncode == 0
    assert admin.api.get("/api/users").status == 401


def test_tls_when_a_cert_is_configured(redis_server, prefix, tmp_path):
    pki = make_pki(tmp_path)
    token, _ = create_token(redis_server.url, prefix, "tls")
    process = AdminProcess(
        redis_server.url, prefix, "--certfile", str(pki.server_cert), "--keyfile", str(pki.server_key)
    ).start()
    try:
        context = ssl.create_default_context(cafile=str(pki.ca))
        api = Api(f"https://127.0.0.1:{process.port}", token, context)
        assert api.ok("GET", "/api/users")["items"] == []
        assert "https://127.0.0.1" in process.log()
        with pytest.raises(Exception):  # noqa: B017 - no plain HTTP on the TLS port (a reset or a bad status line)
            Api(f"http://127.0.0.1:{process.port}", token).get("/api/users")
    finally:
        process.stop()


def test_read_only_token_may_ask_acl_check(admin):
    reply = admin.ro.call(
        "POST", "/api/acl/check", {"username": None, "client_id": "c", "topic": "a", "action": "publish"}
    )
    assert reply.status == 200 and reply.body["allowed"] is False
