"""The admin HTTP API (`mqtt-guard admin`, docs/admin-api.md): JSON over the same operations as the
CLI (mqtt_guard/ops/), bearer tokens stored hashed in Redis (store/tokens.py), an OpenAPI 3.1 document
built from the same route table that serves the requests (so the two cannot drift apart)."""
