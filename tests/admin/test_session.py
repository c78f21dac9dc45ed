"""The dashboard's login: a token exchanged once for an HttpOnly, SameSite=Strict session cookie; writes
with that cookie need the CSRF token; the static files are served from the package, no other origin."""

from __future__ import annotations

import json
import re
import tomllib
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from mqtt_guard.admin.api import COOKIE, CSRF_HEADER
from tests.admin.helpers import Reply

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "mqtt_guard" / "admin" / "static"


def call(base: str, method: str, path: str, body: Any = None, **headers: str) -> Reply:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            status, text, hdrs = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        status, text, hdrs = exc.code, exc.read(), exc.headers
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text.decode(errors="replace")
    out = dict(hdrs)
    out["Set-Cookie"] = "\n".join(hdrs.get_all("Set-Cookie") or [])
    return Reply(status, parsed, out)


def login(base: str, token: str) -> tuple[str, str, Reply]:
    reply = call(base, "POST", "/api/session", {"token": token})
    assert reply.status == 201, reply.body
    cookie = SimpleCookie(reply.headers["Set-Cookie"])[COOKIE].value
    return cookie, reply.body["csrf"], reply


def test_login_sets_an_http_only_strict_cookie_and_returns_a_csrf_token(admin):
    base = admin.api.base
    cookie, csrf, reply = login(base, admin.api.token)
    assert reply.body == {**reply.body, "name": "ops", "read_only": False} and len(csrf) > 30
    header = reply.headers["Set-Cookie"]
    assert re.search(r"HttpOnly", header, re.I) and re.search(r"SameSite=Strict", header, re.I)
    assert "Path=/" in header and "Secure" not in header  # plain HTTP here; HTTPS sets Secure
    assert cookie not in json.dumps(reply.body) and admin.api.token not in header
    me = call(base, "GET", "/api/session", Cookie=f"{COOKIE}={cookie}")
    assert me.status == 200 and me.body["csrf"] == csrf and me.body["expires"] > 0
    assert call(base, "GET", "/api/users", Cookie=f"{COOKIE}={cookie}").status == 200
    entry = [e for e in admin.ro.ok("GET", "/api/audit") if e["action"] == "admin-session.open"][-1]
    assert entry["by"] == "admin-api:ops"


def test_a_bad_token_gets_no_session(admin):
    reply = call(admin.api.base, "POST", "/api/session", {"token": "mqga_guess"})
    assert reply.status == 401 and reply.headers["Set-Cookie"] == ""
    bad = call(admin.api.base, "GET", "/api/users", Cookie=f"{COOKIE}=forged")
    assert bad.status == 401 and "log in again" in bad.body["detail"]


def test_writes_with_the_cookie_need_the_csrf_token(admin):
    base = admin.api.base
    cookie, csrf, _ = login(base, admin.api.token)
    body = {"username": "alice", "password": "pw"}
    for headers in ({}, {CSRF_HEADER: "wrong"}, {CSRF_HEADER: ""}):
        reply = call(base, "POST", "/api/users", body, Cookie=f"{COOKIE}={cookie}", **headers)
        assert reply.status == 403 and reply.body["error"] == "csrf", reply.body
    assert admin.ro.get("/api/users").body["items"] == []
    reply = call(base, "POST", "/api/users", body, Cookie=f"{COOKIE}={cookie}", **{CSRF_HEADER: csrf})
    assert reply.status == 201, reply.body
    entry = [e for e in admin.ro.ok("GET", "/api/audit") if e["action"] == "user.create"][-1]
    assert entry["by"] == "admin-api:ops" and entry["username"] == "alice"
    # an Authorization header is judged alone: a bearer request needs no CSRF token, cookie or not
    bearer = {"Authorization": f"Bearer {admin.api.token}", "Cookie": f"{COOKIE}={cookie}"}
    assert call(base, "DELETE", "/api/users/alice", **bearer).status == 200


def test_a_read_only_session_reads_and_is_refused_writes(admin):
    base = admin.api.base
    cookie, csrf, reply = login(base, admin.ro.token)
    assert reply.body["read_only"] is True
    assert call(base, "GET", "/api/sessions", Cookie=f"{COOKIE}={cookie}").status == 200
    refused = call(
        base,
        "POST",
        "/api/users",
        {"username": "x", "password": "y"},
        Cookie=f"{COOKIE}={cookie}",
        **{CSRF_HEADER: csrf},
    )
    assert refused.status == 403 and refused.body == {"error": "forbidden", "detail": "token 'dash' is read-only"}


def test_logout_and_revoke_end_the_session(admin, cli):
    base = admin.api.base
    cookie, csrf, _ = login(base, admin.api.token)
    out = call(base, "DELETE", "/api/session", Cookie=f"{COOKIE}={cookie}", **{CSRF_HEADER: csrf})
    assert out.status == 200 and out.body == {"logged_out": True}
    assert re.search(rf"{COOKIE}=(\"\")?;", out.headers["Set-Cookie"])  # the browser drops it
    assert call(base, "GET", "/api/session", Cookie=f"{COOKIE}={cookie}").status == 401
    cookie, _, _ = login(base, admin.api.token)
    assert cli("admin", "token", "revoke", "ops").returncode == 0
    assert call(base, "GET", "/api/users", Cookie=f"{COOKIE}={cookie}").status == 401


def test_the_dashboard_is_served_from_the_package_with_no_other_origin(admin):
    page = call(admin.api.base, "GET", "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    for name in ("app.js", "app.css"):
        served = call(admin.api.base, "GET", f"/static/{name}")
        assert served.status == 200 and served.body == (STATIC / name).read_text(), name
        assert "default-src 'self'" in served.headers["Content-Security-Policy"]
    assert call(admin.api.base, "GET", "/static/nothing.js").status == 404
    assert call(admin.api.base, "GET", "/static/../api.py").status in (403, 404)
    for path in STATIC.iterdir():  # nothing fetched from elsewhere: no absolute URL, no protocol-relative one
        text = path.read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"'](https?:)?//", text), path.name
        assert not re.search(r"\b(fetch|EventSource)\(\s*[\"'`]https?:", text), path.name
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "static/*" in pyproject["tool"]["setuptools"]["package-data"]["mqtt_guard.admin"]
