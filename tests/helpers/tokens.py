"""Access tokens for tests (issue 19): signing keys of each algorithm, tokens signed with them (joserfc,
the broker's own library, used here only as an issuer would), forged tokens, and a real HTTP server
serving a JWKS whose keys a test rotates."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey

SECRET = "test-secret-of-64-bytes-so-it-serves-HS512-too-(RFC-7518-3.2)!!!"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub: str = "alice", *, ttl: float | None = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"sub": sub, "iat": now, **extra}
    if ttl is not None:
        out["exp"] = now + ttl
    return out


def hs_token(payload: dict[str, Any], secret: str = SECRET, alg: str = "HS256", **header: Any) -> str:
    return jwt.encode({"alg": alg, **header}, payload, OctKey.import_key(secret.encode()), algorithms=[alg])


def new_key(alg: str, kid: str) -> Key:
    params = {"kid": kid}
    if alg == "RS256":
        return RSAKey.generate_key(2048, parameters=params)
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=params)
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519", parameters=params)
    raise ValueError(alg)


def sign(payload: dict[str, Any], key: Key, alg: str, *, kid: bool = True) -> str:
    header: dict[str, Any] = {"alg": alg}
    if kid and key.kid:
        header["kid"] = key.kid
    return jwt.encode(header, payload, key, algorithms=[alg])


def public_pem(key: Key) -> bytes:
    return key.as_pem(private=False)


def unsigned(payload: dict[str, Any]) -> str:
    """`alg: none`: no signature at all."""
    return b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(json.dumps(payload).encode()) + "."


def forged_hs_with_public_key(payload: dict[str, Any], key: Key) -> str:
    """Algorithm confusion: HS256 with the issuer's public key (PEM) as the HMAC secret."""
    import hashlib
    import hmac

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(payload).encode())
    mac = hmac.new(public_pem(key), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


class JwksServer:
    """A JWKS over real HTTP on 127.0.0.1 (a thread); `keys` or `body` can be swapped at any time."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.status = 200
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = server.body
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def publish(self, *keys: Key) -> None:
        self.body = json.dumps({"keys": [k.as_dict(private=False) for k in keys]}).encode()

    def start(self) -> JwksServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


HS_JWT = {"secret": f'"{SECRET}"', "algorithms": "[HS256]", "audience": "mqtt", "leeway": "0s"}
"""`auth.jwt` of a broker verifying `hs_token`s (add `trusted_claims`)."""


def jwt_config(jwt: dict[str, str], *, listeners: list[str] | None = None, extra: str = "") -> str:
    """A broker YAML with this `auth.jwt` section (login throttling off: tests refuse tokens on purpose),
    optional `listeners:` entries (else the broker's `--bind`), and more YAML after it."""
    lines = ["auth:", "  throttle:", "    enabled: false", "  jwt:", *(f"    {k}: {v}" for k, v in jwt.items())]
    if listeners:
        lines = ["listeners:", *listeners, *lines]
    return "\n".join(lines) + "\n" + extra
