"""/openapi.json lists exactly the app's routes, validates as OpenAPI 3.1, and docs/admin-api.md matches it."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis
from aiohttp import web
from openapi_spec_validator import validate

from mqtt_guard.admin.api import Ctx
from mqtt_guard.admin.openapi import BEGIN, END, document, markdown
from mqtt_guard.admin.server import make_app
from mqtt_guard.store.keys import Keys

DOC = Path(__file__).resolve().parents[2] / "docs" / "admin-api.md"


def _app_routes() -> set[tuple[str, str]]:
    app = make_app(Ctx(aioredis.Redis(), Keys()))  # never connects: only the router is read
    return {  # the dashboard's static files are files, not API routes (the page itself, /, is documented)
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None and not isinstance(r.resource, web.StaticResource)
    }


def _doc_routes(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


def test_every_route_of_the_app_is_documented_and_nothing_else():
    assert _app_routes() == _doc_routes(document())


def test_the_document_is_valid_openapi_3_1():
    doc = document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_the_served_document_is_the_built_one(admin):
    assert admin.anon.get("/openapi.json").body == document()


def test_docs_page_carries_the_generated_route_reference():
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END) + 1
    assert text[start:end] == markdown(), "run: python -m mqtt_guard.admin.openapi --markdown (and paste it)"


REQUIRED_QUERY = {("DELETE", "/api/acl/rules"): {"subject", "filter"}, ("DELETE", "/api/bans"): {"network"}}


def test_required_query_parameters_are_marked_required_and_the_others_optional():
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            query = {p["name"]: p["required"] for p in op.get("parameters", []) if p["in"] == "query"}
            wanted = REQUIRED_QUERY.get((method.upper(), path), set())
            assert {n for n, req in query.items() if req} == wanted, (method, path, query)


def test_a_request_without_a_required_query_parameter_is_refused(admin):
    for (method, path), names in REQUIRED_QUERY.items():
        reply = admin.api.call(method, path)
        assert reply.status == 422 and reply.body["error"] == "invalid", reply.body
        assert all(n in reply.body["detail"] for n in names), reply.body
