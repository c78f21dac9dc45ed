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
