"""/openapi.json: an OpenAPI 3.1 document built from the route table (api.ROUTES)."""

from __future__ import annotations

import re
from typing import Any

from .. import __version__
from .api import COOKIE, ROUTES, Route

ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}
ERRORS = {
    "400": "bad request (not JSON: NaN and Infinity are not JSON either; a missing or bad query parameter)",
    "401": "no token, or an unknown or revoked one",
    "403": "a read-only token on a route that changes something; a session cookie without X-CSRF-Token",
    "404": "no such user, rule, plan, API, session, block or route",
    "409": "exists already",
    "422": "the body does not fit the schema (a number past its maximum, too), or a value is invalid",
    "500": "an internal error: the detail names the request, the admin server's log has the traceback",
}
PUBLIC = {
    "/": "the dashboard's page (docs/dashboard.md; its scripts and styles are under /static/)",
    "/livez": "200 while the event loop turns (never looks at Redis)",
    "/readyz": "200 while Redis answers, else 503 with the reason",
    "/healthz": "the older name of /readyz",
    "/openapi.json": "this document",
}


def _operation(r: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": r.handler.__name__,
        "summary": r.summary,
        "tags": [r.tag],
        "responses": {
            str(r.status): {
                "description": "event stream" if r.stream else "OK",
                "content": {"text/event-stream" if r.stream else "application/json": {"schema": {}}},
            },
            **{
                code: {
                    "description": text,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
                for code, text in ERRORS.items()
            },
        },
    }
    if r.public:
        op["security"] = []
    if r.writes:
        op["description"] = "Refused (403) for read-only tokens; written to the audit stream with the token's name."
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", r.path)
    ]
    params += [
        {"name": p.name, "in": "query", "required": p.required, "schema": p.schema, "description": p.description}
        for p in r.query
    ]
    if params:
        op["parameters"] = params
    if r.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": r.body}}}
    return op


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r)
    for path, text in PUBLIC.items():
        paths[path] = {
            "get": {
                "operationId": path.strip("/").replace(".", "_") or "dashboard",
                "summary": text,
                "security": [],
                "tags": ["dashboard" if path == "/" else "health"],
                "responses": {
                    "200": {"description": "OK"},
                    **({"503": {"description": "not ready"}} if "ready" in path or "health" in path else {}),
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mqtt-guard admin API",
            "version": __version__,
            "description": "Users, ACLs, quotas, plans and usage, kicks, sessions, analytics and brokers of an "
            "mqtt-guard deployment (docs/admin-api.md). Every /api route needs `Authorization: Bearer TOKEN` "
            "(`mqtt-guard admin token create NAME [--read-only]`), or the session cookie of the dashboard "
            "(`POST /api/session`; then writes also carry `X-CSRF-Token`).",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                # the dashboard's login (POST /api/session); with it, writes also need X-CSRF-Token
                "session": {"type": "apiKey", "in": "cookie", "name": COOKIE},
            },
            "schemas": {"Error": ERROR},
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
    }


BEGIN = "<!-- routes: generated from /openapi.json by mqtt_guard.admin.openapi.markdown(); tests/admin check it -->"
END = "<!-- end of routes -->"


def markdown() -> str:
    """The route reference of docs/admin-api.md: one table per tag, from the document itself."""
    doc = document()
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            by_tag.setdefault(op["tags"][0], []).append((method.upper(), path, op))
    lines = [BEGIN, ""]
    for tag, rows in by_tag.items():
        lines += [f"### {tag}", "", "| Method | Path | What | Body / query |", "|---|---|---|---|"]
        for method, path, op in rows:
            fields = []
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                required = set(body.get("required", []))
                fields += [f"`{n}`" + ("" if n in required else "?") for n in body.get("properties", {})]
            fields += [
                f"?{p['name']}" + (" (required)" if p["required"] else "")
                for p in op.get("parameters", [])
                if p["in"] == "query"
            ]
            lock = " (write)" if "Refused (403)" in op.get("description", "") else ""
            lines.append(f"| {method} | `{path}` | {op['summary']}{lock} | {', '.join(fields) or '-'} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m mqtt_guard.admin.openapi [--markdown]: print the document
    import json
    import sys

    print(markdown() if "--markdown" in sys.argv else json.dumps(document(), indent=1))
